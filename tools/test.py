#!/usr/bin/env python
"""Test a BasicSR test option file with the MCLIR plugin: ``python tools/test.py -opt options/x_test.yml``."""
from mclir_plugin.test import main

if __name__ == '__main__':
    main()
