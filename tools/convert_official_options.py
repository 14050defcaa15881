#!/usr/bin/env python
"""Convert an official MCLIR option file: ``python tools/convert_official_options.py IN.yml OUT.yml``.

See :mod:`mclir_plugin.commands.convert_official` and the README, "Migrating from the official MCLIR code".
"""
import sys

from mclir_plugin.commands.convert_official import main

if __name__ == '__main__':
    sys.exit(main())
