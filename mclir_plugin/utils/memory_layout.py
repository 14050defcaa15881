"""The ``channels_last`` option of VGG (``pixel_opt``) and of the negatives (``mclir.hook``): one policy for both.

``true`` or ``false`` force the layout; ``'auto'`` uses channels-last on CPU, where oneDNN runs these no-grad
convolutions 20-30% faster (measured with ``tools/benchmark_spn.py``), and the default layout on CUDA, where it
has not been measured yet (``tools/gpu_check.sh`` compares both).
"""
from __future__ import annotations

import torch

from mclir_plugin.utils.option_schema import Choice

CHANNELS_LAST_CHOICES = (True, False, 'auto')
CHANNELS_LAST_OPTION = Choice(*CHANNELS_LAST_CHOICES, note="'auto' = on CPU only")


def check_channels_last(value: object, key: str = 'channels_last') -> None:
    """Raise an :class:`~mclir_plugin.utils.option_schema.OptionError` naming ``key`` unless ``value`` is a choice."""
    CHANNELS_LAST_OPTION(value, key)


def use_channels_last(value: bool | str, device: torch.device) -> bool:
    """Whether the ``channels_last`` option ``value`` means channels-last for tensors on ``device``."""
    return value is True or (value == 'auto' and device.type == 'cpu')
