#!/usr/bin/env python
"""Write the pair list of a dataset tree (`--layout`), or check an existing list.

The logic is in ``mclir_plugin/commands/make_pair_list.py`` (also the console script ``mclir-make-pair-list``)."""
import sys

from mclir_plugin.commands.make_pair_list import main

if __name__ == '__main__':
    sys.exit(main())
