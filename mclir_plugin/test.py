"""Test entry point: BasicSR's ``test_pipeline`` with the plugin registered (results under ``./results/<name>``)."""
from __future__ import annotations

import os

import mclir_plugin  # noqa: F401  (compat shim and registration)
from mclir_plugin.compat import normalise_local_rank_argv


def main(root_path: str | None = None) -> None:
    """Run BasicSR's test pipeline on the options named by ``-opt`` in ``sys.argv``."""
    from basicsr.test import test_pipeline
    normalise_local_rank_argv()
    test_pipeline(os.path.abspath(root_path or os.getcwd()))


if __name__ == '__main__':
    main()
