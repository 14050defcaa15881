"""Writing checkpoints so that a file on disk is either complete or absent."""
from __future__ import annotations

import os
from typing import Any

import torch


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``<path>.tmp``, flush it to disk, then rename it over ``path``.

    A process killed mid-save leaves at most a stale ``.tmp`` file, never a truncated checkpoint under the real
    name (``os.replace`` is atomic on POSIX and Windows within one file system).
    """
    tmp = f'{path}.tmp'
    with open(tmp, 'wb') as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
