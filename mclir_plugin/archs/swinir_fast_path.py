"""The frozen-negative fast path of BasicSR's SwinIR, which this package cannot edit: a table of replacement methods.

:func:`mclir_plugin.archs.frozen_cache.accelerate_negative` sets them on the frozen instances only (exact classes).
Each replacement keeps the signature and the order of operations of the BasicSR method it stands for;
``tests/archs/test_fast_paths.py`` fails when BasicSR's signatures or outputs move away from them.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
from basicsr.archs import swinir_arch

from mclir_plugin.archs.frozen_cache import add_in_place


def attention_forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``WindowAttention.forward`` with both additions to the logits in place (the mask comes from the shared cache
    of :func:`block_calculate_mask`; gathering the bias is cheap and is not cached)."""
    b_, n, c = x.shape
    heads = self.num_heads
    q, k, v = self.qkv(x).reshape(b_, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
    bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, heads)
    attn = add_in_place((q * self.scale) @ k.transpose(-2, -1), bias.permute(2, 0, 1).unsqueeze(0))
    if mask is not None:  # (windows, n, n), the same for every image and head
        windows = mask.shape[0]
        attn = add_in_place(attn.view(b_ // windows, windows, heads, n, n), mask.unsqueeze(1)).view(b_, heads, n, n)
    attn = self.attn_drop(self.softmax(attn))
    return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b_, n, c)))


_SHARED_MASKS: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_SHARED_MASKS_MAX = 16  # masks of windows * window^4 floats each


def block_calculate_mask(self, x_size: tuple[int, int]) -> torch.Tensor:
    """``SwinTransformerBlock.calculate_mask``, computed once per patch size, window, shift and device (it depends on
    nothing else) and shared by every block and negative; kept on the block's device, so the caller's
    ``.to(x.device)`` returns this very tensor."""
    device = self.norm1.weight.device
    key = (tuple(x_size), self.window_size, self.shift_size, device)
    mask = _SHARED_MASKS.get(key)
    if mask is None:
        with torch.inference_mode(False), torch.no_grad():
            mask = type(self).calculate_mask(self, x_size).to(device)
        _SHARED_MASKS[key] = mask
        while len(_SHARED_MASKS) > _SHARED_MASKS_MAX:
            _SHARED_MASKS.popitem(last=False)
    _SHARED_MASKS.move_to_end(key)
    return mask


# BasicSR class -> {method name: replacement with the same signature}
FAST_METHODS: dict[type, dict[str, Callable]] = {
    swinir_arch.WindowAttention: {'forward': attention_forward},
    swinir_arch.SwinTransformerBlock: {'calculate_mask': block_calculate_mask},
}
