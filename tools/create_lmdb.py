#!/usr/bin/env python
"""Pack image folders (or a dataset's pair list) into lmdb; `--verify` / `--repair` an existing one.

The logic is in ``mclir_plugin/commands/create_lmdb.py`` (also the console script ``mclir-create-lmdb``)."""
import sys

from mclir_plugin.commands.create_lmdb import main

if __name__ == '__main__':
    sys.exit(main())
