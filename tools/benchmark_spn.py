#!/usr/bin/env python
"""Cost of one SPN training step against the plain and the official step (`--help`).

The logic is in ``mclir_plugin/commands/benchmark.py`` (also the console script ``mclir-benchmark``)."""
import sys

from mclir_plugin.commands.benchmark import main

if __name__ == '__main__':
    sys.exit(main())
