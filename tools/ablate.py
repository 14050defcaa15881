#!/usr/bin/env python
"""Ablation study: ``python tools/ablate.py --workdir studies/x -opt BASE.yml --spn SPN.yml --iters N --seeds 0 1 2``.

Trains the baseline, its SPN twin and any ``--variant LABEL [FILE.yml] KEY=VALUE ...`` with each seed through
``python -m mclir_plugin.commands.train`` (one after the other, or ``--launch print`` to print the commands and
``--collect`` later), then writes ``results.csv``, ``results.md``, ``results.png`` and ``study.json`` in the study
folder (mean, std, paired differences over seeds). See ``mclir_plugin/commands/ablate.py`` for the details.
"""
import sys

from mclir_plugin.commands.ablate import main

if __name__ == '__main__':
    sys.exit(main())
