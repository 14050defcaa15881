#!/usr/bin/env python
"""Compare BasicSR training runs: ``python tools/compare.py experiments/base experiments/spn [--out DIR]``.

Prints best/last validation metrics per dataset with the difference to the first run (the baseline), and writes
``compare.csv``, ``compare.md`` and ``compare.png`` (validation and loss curves) under ``--out``; see
``mclir_plugin/commands/compare.py`` for the options, the sources read (text logs, TensorBoard events) and the formats.
"""
import sys

from mclir_plugin.commands.compare import main

if __name__ == '__main__':
    sys.exit(main())
