"""Faster forwards for frozen negatives: cache what a window-attention forward rebuilds from constants each call.

A history negative changes only when the hook refreshes it, yet every forward of a window-attention network
rebuilds tensors from constants: SwinIR recomputes its shifted-window mask in Python (about 100 small ops per
block) whenever the patch is not ``img_size``, and DehazeFormer runs its relative-position MLP. And the eager code
allocates a new logits tensor for each bias or mask it adds, which on CPU also costs page faults when the
allocator has just returned memory to the system. :func:`accelerate_negative` swaps the forwards of those modules,
on one negative only, for versions that keep the mask (shared by all blocks and negatives) and DehazeFormer's
bias, and add biases and masks to the logits in place (SwinIR, DehazeFormer, IDT). Measured with
``tools/benchmark_spn.py``: the negatives' forwards of SwinIR-light take 5-10% less time (up to half with a cold
allocator), DehazeFormer-T's about 20% less.

Caveats up front:

* Same maths, same order of operations: the outputs agree with the class forwards to float rounding (tests compare
  them at 1e-5, and bit for bit under bf16 autocast).
* A cache entry is keyed on the data pointer and version counter of every tensor it was computed from, and on the
  autocast state, so a refresh (in-place ``_foreach`` ops), ``load_state_dict``, ``.to()`` or a new patch size
  invalidates it without the hook having to say so. One entry per module, ``heads * window^4`` floats (DehazeFormer-T:
  0.4 MiB per negative); SwinIR's masks, ``windows * window^4`` floats each, are shared by all blocks and negatives
  (16 at most). Gathering SwinIR's and IDT's bias from their tables costs nothing worth keeping memory for.
* Only for modules that never need a gradient: the hook applies it to its frozen, eval-mode copies, never to the
  network being trained. Unknown architectures run unchanged (their forwards are still in inference mode).
"""
from __future__ import annotations

import types
from collections import OrderedDict
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
    """BasicSR ``swinir_arch.WindowAttention.forward`` with both additions to the logits in place (the mask comes
    from the shared cache of :func:`_swinir_block_calculate_mask`; gathering the bias is cheap and is not cached)."""
    b_, n, c = x.shape
    heads = self.num_heads
    q, k, v = self.qkv(x).reshape(b_, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
    bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, heads)
    attn = _add_logits((q * self.scale) @ k.transpose(-2, -1), bias.permute(2, 0, 1).unsqueeze(0))
    if mask is not None:  # (windows, n, n), the same for every image and head
        windows = mask.shape[0]
        attn = _add_logits(attn.view(b_ // windows, windows, heads, n, n), mask.unsqueeze(1)).view(b_, heads, n, n)
    attn = self.attn_drop(self.softmax(attn))
    return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b_, n, c)))


_SHARED_MASKS: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_SHARED_MASKS_MAX = 16


def _swinir_block_calculate_mask(self, x_size: tuple[int, int]) -> torch.Tensor:
    """BasicSR ``SwinTransformerBlock.calculate_mask``, computed once per patch size, window, shift and device (it
    depends on nothing else) and shared by every block and negative; kept on the block's device, so the caller's
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
    """``idt_arch.WindowAttention.forward`` with the bias added to the logits in place."""
    b, n, c = x.shape
    q, k, v, v_r = self.qkv(x)
    bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
    attn = torch.softmax(_add_logits((q * self.scale) @ k.transpose(-2, -1), bias.permute(2, 0, 1).unsqueeze(0)),
                         dim=-1)
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


def _patched_names() -> set[str]:
    """The method names :func:`accelerate_negative` may replace."""
    return {name for table in _fast_methods().values() for name in table}


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
        names = [name for name in (*_patched_names(), CACHE_ATTR) if name in module.__dict__]
        for name in names:
            del module.__dict__[name]
        changed += bool(names)
    return changed


def is_accelerated(module: nn.Module) -> bool:
    """Whether :func:`accelerate_negative` changed ``module`` (not its submodules)."""
    return any(isinstance(module.__dict__.get(name), types.MethodType) for name in _patched_names())
