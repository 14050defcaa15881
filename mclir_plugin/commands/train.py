"""Training entry point: BasicSR's ``train_pipeline`` with the plugin registered and fixed up.

``python tools/train.py -opt options/x.yml`` (or ``python -m mclir_plugin.commands.train``, or ``mclir-train``) accepts
BasicSR's flags (``--launcher none|pytorch|slurm``, ``--auto_resume``, ``--debug``, ``--force_yml``) plus
``--local-rank`` from torch's launchers. The current directory is the root: ``experiments/``, ``tb_logger/``,
relative dataset paths and ``--auto_resume`` all resolve against it. A run holds ``experiments/<name>.lock`` while
it lives (:mod:`mclir_plugin.utils.run_lock`), and ``dist_params.timeout`` bounds the wait for a stalled rank
(:mod:`mclir_plugin.utils.distributed`).
"""
from __future__ import annotations

import os
import sys

import mclir_plugin  # noqa: F401  (compat shim and registration, before basicsr's pipeline)
from mclir_plugin.compat import normalise_local_rank_argv
from mclir_plugin.utils.distributed import naming_the_stall
from mclir_plugin.utils.options import naming_option_file, option_file_in


def main(root_path: str | None = None) -> None:
    """Run BasicSR's training pipeline on the options named by ``-opt`` in ``sys.argv``."""
    from basicsr.train import train_pipeline
    normalise_local_rank_argv()
    # option errors name the -opt file, for this run only; a stalled or dead rank ends the others, naming itself
    with naming_option_file(option_file_in(sys.argv)), naming_the_stall():
        train_pipeline(os.path.abspath(root_path or os.getcwd()))


if __name__ == '__main__':
    main()
