"""The precision of the work an SPN step does without gradient: the negatives' forwards and VGG on their outputs.

``mclir.hook.precision`` (``fp32``, ``bf16``, ``fp16``; ``~`` = the step's own, see the README) names it; the network,
its loss and its gradient keep the step's precision (``mclir.amp``). :func:`precision_context` is the one place
that turns the option into an autocast region, for :class:`~mclir_plugin.hooks.history_negatives.HistoryNegatives`
(the forwards) and :class:`~mclir_plugin.losses.contrastive_base.ContrastiveLoss` (VGG on the negatives).

Caveats up front:

* Autocast over fp32 weights, not a low-precision copy of them: on this project's CPU (avx512_bf16, 1 thread,
  SwinIR-light x4, output 96, batch 2) a negative's forward took 190 ms under bf16 autocast against 235-275 ms with
  a bf16 copy of its weights (also under autocast, which SwinIR's fp32 window masks need) and 255 ms in fp32; VGG
  on the 8 negative images took the same either way (about 180-220 ms, fp32 320-410 ms). So the weights stay fp32:
  the refresh arithmetic is unchanged and no second copy is kept.
* fp16 on CPU needs oneDNN's fp16 kernels (AVX512-FP16 or AMX-FP16). Without them torch still runs fp16
  convolutions and matrix products, about 5x slower than fp32 here (761 against 154 ms a negative), so :func:`check_precision` refuses it.
* torchvision's ``deform_conv2d`` (EDVR's DCNv2) has no bf16/fp16 CPU kernel: :func:`refuse_deformable_convs`.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch
from torch import nn

from mclir_plugin.utils.option_schema import Choice, Optional

PRECISIONS = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
PRECISION_NAMES = {dtype: name for name, dtype in PRECISIONS.items()}
PRECISION_OPTION = Optional(Choice(*PRECISIONS), note="~ = the step's own: fp32, or mclir.amp's dtype")


def precision_context(dtype: torch.dtype | None, device_type: str) -> ContextManager:
    """The region in which no-grad work runs at ``dtype``: ``None`` leaves the caller's autocast state as it is,
    ``float32`` turns autocast off (also inside an ``mclir.amp`` step), bf16/fp16 autocast to that dtype."""
    if dtype is None:
        return contextlib.nullcontext()
    if dtype == torch.float32:
        return torch.autocast(device_type, enabled=False)
    return torch.autocast(device_type, dtype=dtype)


def _cpu_kernels(dtype: torch.dtype) -> bool:
    """Whether oneDNN has native kernels for ``dtype`` on this CPU (False when torch cannot say)."""
    query = {torch.bfloat16: '_is_mkldnn_bf16_supported', torch.float16: '_is_mkldnn_fp16_supported'}[dtype]
    try:
        return bool(getattr(torch.ops.mkldnn, query)())
    except (AttributeError, RuntimeError):
        return False


def refuse_deformable_convs(net: nn.Module, dtype: torch.dtype | None, device: torch.device, key: str,
                            fallback: str) -> None:
    """Raise a ValueError naming ``key`` when ``net`` has deformable convolutions and ``dtype`` is bf16/fp16 on CPU.

    Args:
        net: The network (or a negative copy of it).
        dtype: The precision asked for (None or float32: nothing to refuse).
        device: Where it runs.
        key: The option, as the message names it (``'mclir.amp'``, ``'mclir.hook.precision'``).
        fallback: The value that works on CPU (``'none'``, ``'fp32'``).
    """
    if dtype in (None, torch.float32) or device.type != 'cpu':
        return
    from basicsr.archs.arch_util import ModulatedDeformConvPack
    if any(isinstance(m, ModulatedDeformConvPack) for m in net.modules()):
        raise ValueError(f'{key}: {PRECISION_NAMES[dtype]} on CPU cannot run this network: its deformable '
                         'convolutions (torchvision deform_conv2d, as in EDVR) have no bf16/fp16 CPU kernel. Use '
                         f'`{key}: {fallback}` on CPU (it works on CUDA).')


def check_precision(net: nn.Module, dtype: torch.dtype | None, device: torch.device,
                    key: str = 'mclir.hook.precision') -> None:
    """Refuse a negatives' precision that cannot run (or would run slower than fp32) on ``device``, naming ``key``."""
    if dtype in (None, torch.float32):
        return
    if device.type == 'cpu' and not _cpu_kernels(dtype):
        name = PRECISION_NAMES[dtype]
        instead = 'bf16` (where supported) or `fp32' if dtype == torch.float16 else 'fp32'
        raise ValueError(f'{key}: {name} on this CPU has no native oneDNN kernels (torch.ops.mkldnn reports no '
                         f'{name} support: fp16 needs AVX512-FP16 or AMX-FP16, bf16 AVX512), so the negatives '
                         f'would run several times slower than in fp32. Use `{key}: {instead}` on this CPU; '
                         f'{name} works on CUDA.')
    refuse_deformable_convs(net, dtype, device, key, 'fp32')
