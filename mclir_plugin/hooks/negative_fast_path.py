"""Faster forwards for frozen negatives: cache what a window-attention forward rebuilds from constants each call.

A history negative changes only when the hook refreshes it, yet every forward of a window-attention network
rebuilds the same tensors from its weights: SwinIR gathers its relative-position bias from the table and, when the
patch is not ``img_size``, recomputes the shifted-window mask in Python (about 100 small ops per block);
DehazeFormer runs its bias MLP; IDT gathers its bias. :func:`accelerate_negative` swaps the forwards of those
modules, on one negative only, for versions that keep these tensors, and adds SwinIR's bias and mask as one
pre-summed tensor (the eager code adds the mask with a broadcast over a middle dimension, which is slow on CPU).
Measured with ``tools/benchmark_spn.py``: the negatives' forwards of SwinIR-light take about half the time.

Caveats up front:

* Same maths: the attention logits are ``q k^T * scale + (bias + mask)`` instead of ``(q k^T * scale + bias) +
  mask``; the mask is 0 or -100, so the outputs agree to float rounding (tests compare them at 1e-5).
* A cache entry is keyed on the data pointer and version counter of every tensor it was computed from, and on the
  autocast state, so a refresh (in-place ``_foreach`` ops), ``load_state_dict``, ``.to()`` or a new patch size
  invalidates it without the hook having to say so. One entry per module: SwinIR-light's shifted blocks keep
  ``windows * heads * 64^2`` floats each (0.9 MiB at LR 24^2, 6 MiB at LR 64^2, times 12 blocks per negative).
* Only for modules that never need a gradient: the hook applies it to its frozen, eval-mode copies, never to the
  network being trained. Unknown architectures run unchanged (their forwards are still in inference mode).
"""
from __future__ import annotations

import types
from typing import Any, Callable, Hashable, Sequence

import torch
from torch import nn

CACHE_ATTR = '_mclir_fast_cache'


def _state_key(tensors: Sequence[torch.Tensor | None]) -> tuple:
    """Identity of the values of ``tensors`` and of the autocast state: changes whenever a cached result could."""
    key: list[Hashable] = []
    for t in tensors:
        key.append(None if t is None else (t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape)))
    device = next((t.device.type for t in tensors if t is not None), 'cpu')
    key.append(torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None)
    return tuple(key)


def _cached(module: nn.Module, name: str, sources: Sequence[torch.Tensor | None],
            compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()``, once per state of ``sources`` (see :func:`_state_key`); one entry per ``(module, name)``.

    The entry holds the sources' storages, so no new tensor can reuse their addresses while it lives and a matching
    ``(pointer, version)`` really is the same data.
    """
    cache = module.__dict__.setdefault(CACHE_ATTR, {})
    key = _state_key(sources)
    entry = cache.get(name)
    if entry is None or entry[0] != key:
        # a normal tensor (not an inference tensor), so that the negative also runs outside inference mode
        with torch.inference_mode(False), torch.no_grad():
            value = compute()
        entry = (key, value, [t.untyped_storage() for t in sources if t is not None])
        cache[name] = entry
    return entry[1]


def _add_logits(attn: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``attn + bias`` with the eager code's type promotion (fp32 bias on bf16 logits gives fp32), in place if
    the dtypes allow it (the logits are a temporary)."""
    if attn.dtype == torch.result_type(attn, bias):
        return attn.add_(bias)
    return attn + bias


# --------------------------------------------------------------------------- BasicSR SwinIR
def _swinir_attention_forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """BasicSR ``swinir_arch.WindowAttention.forward`` with the bias (+ mask) cached and added once."""
    b_, n, c = x.shape
    heads = self.num_heads
    q, k, v = self.qkv(x).reshape(b_, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)

    def bias_plus_mask() -> torch.Tensor:
        table = self.relative_position_bias_table
        bias = table[self.relative_position_index.view(-1)].view(n, n, heads).permute(2, 0, 1).unsqueeze(0)
        return (bias if mask is None else bias + mask.unsqueeze(1)).contiguous()  # (windows or 1, heads, n, n)

    bias = _cached(self, 'bias', (self.relative_position_bias_table, mask), bias_plus_mask)
    attn = (q * self.scale) @ k.transpose(-2, -1)
    windows = bias.shape[0]
    attn = _add_logits(attn.view(b_ // windows, windows, heads, n, n), bias).view(b_, heads, n, n)
    attn = self.attn_drop(self.softmax(attn))
    return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b_, n, c)))


def _swinir_block_calculate_mask(self, x_size: tuple[int, int]) -> torch.Tensor:
    """BasicSR ``SwinTransformerBlock.calculate_mask``, computed once per patch size (it depends on nothing else),
    and kept on the block's device (the caller's ``.to(x.device)`` is then free and returns this very tensor)."""
    device = self.norm1.weight.device
    cache = self.__dict__.setdefault(CACHE_ATTR, {})
    entry = cache.get('mask')
    if entry is None or entry[0] != (tuple(x_size), device):
        with torch.inference_mode(False), torch.no_grad():
            mask = type(self).calculate_mask(self, x_size).to(device)
        entry = cache['mask'] = ((tuple(x_size), device), mask)
    return entry[1]


# --------------------------------------------------------------------------- this package's DehazeFormer and IDT
def _dehazeformer_attention_forward(self, qkv: torch.Tensor) -> torch.Tensor:
    """``dehazeformer_arch.WindowAttention.forward`` with the bias MLP's output cached."""
    num_win, n, _ = qkv.shape
    q, k, v = qkv.reshape(num_win, n, 3, self.num_heads, self.dim // self.num_heads).permute(2, 0, 3, 1, 4)
    bias = _cached(self, 'bias', (self.relative_positions, *self.meta.parameters()),
                   lambda: self.meta(self.relative_positions).permute(2, 0, 1).contiguous())
    attn = torch.softmax(_add_logits((q * self.scale) @ k.transpose(-2, -1), bias), dim=-1)
    return (attn @ v).transpose(1, 2).reshape(num_win, n, self.dim)


def _idt_attention_forward(self, x: torch.Tensor) -> torch.Tensor:
    """``idt_arch.WindowAttention.forward`` with the gathered bias cached."""
    b, n, c = x.shape
    q, k, v, v_r = self.qkv(x)
    table = self.relative_position_bias_table
    bias = _cached(self, 'bias', (table, self.relative_position_index),
                   lambda: table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)
                   .unsqueeze(0).contiguous())
    attn = torch.softmax(_add_logits((q * self.scale) @ k.transpose(-2, -1), bias), dim=-1)
    position = self.Position_Extract(v_r).reshape(b, c, n).transpose(1, 2)
    return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c) + position)


def _fast_methods() -> dict[type, dict[str, Callable[..., Any]]]:
    """Module class -> {method name: replacement}; imported lazily so that this module imports without basicsr."""
    from basicsr.archs import swinir_arch

    from mclir_plugin.archs import dehazeformer_arch, idt_arch
    return {
        swinir_arch.WindowAttention: {'forward': _swinir_attention_forward},
        swinir_arch.SwinTransformerBlock: {'calculate_mask': _swinir_block_calculate_mask},
        dehazeformer_arch.WindowAttention: {'forward': _dehazeformer_attention_forward},
        idt_arch.WindowAttention: {'forward': _idt_attention_forward},
    }


def accelerate_negative(net: nn.Module) -> int:
    """Install the cached forwards on every known submodule of a frozen negative (exact classes only: a subclass
    may have changed the forward).

    Args:
        net: A negative model: eval mode, no parameter requiring a gradient.

    Returns:
        How many submodules were changed (0 for architectures without window attention).

    Raises:
        ValueError: If ``net`` is in training mode or has a parameter that requires a gradient.
    """
    if net.training or any(p.requires_grad for p in net.parameters()):
        raise ValueError('accelerate_negative is for frozen negatives: call net.requires_grad_(False).eval() first '
                         '(the cached tensors would be stale after an optimiser step and carry no gradient).')
    methods = _fast_methods()
    changed = 0
    for module in net.modules():
        for name, function in methods.get(type(module), {}).items():
            setattr(module, name, types.MethodType(function, module))
        changed += type(module) in methods
    return changed


def restore_eager(net: nn.Module) -> int:
    """Undo :func:`accelerate_negative` on ``net`` and its submodules (their class methods run again, caches are
    dropped); returns how many submodules were changed. For baselines such as the official step's negatives."""
    changed = 0
    for module in net.modules():
        names = [name for name in ('forward', 'calculate_mask', CACHE_ATTR) if name in module.__dict__]
        for name in names:
            del module.__dict__[name]
        changed += bool(names)
    return changed


def is_accelerated(module: nn.Module) -> bool:
    """Whether :func:`accelerate_negative` changed ``module`` (not its submodules)."""
    return any(isinstance(module.__dict__.get(name), types.MethodType) for name in ('forward', 'calculate_mask'))
