#!/usr/bin/env python
"""Train a BasicSR option file with the MCLIR plugin: ``python tools/train.py -opt options/demo_spn.yml``.

Flags are BasicSR's: ``--launcher none|pytorch|slurm``, ``--auto_resume``, ``--debug``, ``--force_yml k:k=v``.
Run it from the folder that should hold ``experiments/`` (normally the repository root).
"""
from mclir_plugin.commands.train import main

if __name__ == '__main__':
    main()
