#!/usr/bin/env python
"""Test with the MCLIR plugin.

``python tools/test.py -opt options/x_test.yml``: BasicSR's test pipeline (results under ``results/<name>``).
``python tools/test.py -opt options/x.yml --checkpoints a.pth [b.pth ...] [--param-key auto|params_ema|params]
[--datasets val test_1 ...] [--save-images] [--out results/eval_<name>] [--cpu]``: evaluate checkpoints on the
file's test sets, writing per-image and mean PSNR/SSIM as CSV and JSON (see ``mclir_plugin/commands/evaluate.py``).
"""
from mclir_plugin.commands.evaluate import main

if __name__ == '__main__':
    main()
