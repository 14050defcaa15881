"""The ``channels_last`` option of VGG (``pixel_opt``) and of the negatives (``mclir.hook``): one policy for both.

``true`` or ``false`` force the layout; ``'auto'`` uses channels-last on CPU, where oneDNN runs these no-grad
convolutions 20-30% faster (measured with ``tools/benchmark_spn.py``), and the default layout on CUDA, where it
has not been measured yet (``tools/gpu_check.sh`` compares both).
"""
from __future__ import annotations

import torch

CHANNELS_LAST_CHOICES = (True, False, 'auto')


def check_channels_last(value: object) -> None:
    """Raise a ValueError naming the choices unless ``value`` is one of them."""
    if value not in CHANNELS_LAST_CHOICES:
        raise ValueError(f"channels_last must be true, false or 'auto' (on CPU only), got {value!r}.")


def use_channels_last(value: bool | str, device: torch.device) -> bool:
    """Whether the ``channels_last`` option ``value`` means channels-last for tensors on ``device``."""
    return value is True or (value == 'auto' and device.type == 'cpu')
