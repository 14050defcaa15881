"""Faster forwards for frozen negatives: cache what window attention rebuilds from constants on every call.

A history negative changes only when the hook refreshes it, yet each forward of a window-attention network rebuilds
tensors from constants: SwinIR recomputes its shifted-window mask in Python (about 100 small ops per block) whenever
the patch is not ``img_size``, DehazeFormer runs its relative-position MLP, and the eager code allocates new logits
for each bias or mask it adds (on CPU also page faults when the allocator has just given memory back).
:func:`accelerate_negative` turns on, for one frozen network, the cached forward of every module that has one:

* this package's architectures (DehazeFormer, IDT) have a single forward: their attention adds its bias through
  :meth:`FrozenNegativeCache.add_bias`, which on a module frozen by :meth:`~FrozenNegativeCache.freeze_for_negative`
  caches the bias (where it is worth the memory) and adds it to the logits in place, and otherwise runs the eager
  sum. There is no second copy to keep in step with the forward;
* BasicSR's SwinIR cannot be edited, so :mod:`mclir_plugin.archs.swinir_fast_path` holds a table of replacement
  methods, set on the frozen instances only; ``tests/archs/test_fast_paths.py`` checks them against BasicSR's.

Measured with ``mclir-benchmark``: the negatives' forwards of SwinIR-light take 5-10% less time (up to half with a
cold allocator), DehazeFormer-T's about 20% less.

Caveats up front:

* Same maths, same order of operations: the outputs agree with the eager forwards to float rounding (tests compare
  them at 1e-5, and bit for bit under bf16 autocast).
* A cache entry is keyed on the data pointer and version counter of every tensor it was computed from, and on the
  autocast state, so a refresh (in-place ``_foreach`` ops), ``load_state_dict``, ``.to()`` or a new patch size
  invalidates it without the hook having to say so. One entry per module, ``heads * window^4`` floats
  (DehazeFormer-T: 0.4 MiB per negative). Gathering SwinIR's and IDT's bias from their tables costs nothing worth
  keeping memory for, so only the in-place addition is used there.
* Only for modules that never need a gradient: the hook applies it to its frozen, eval-mode copies, never to the
  network being trained. Other architectures run unchanged (their forwards are still in inference mode).
"""
from __future__ import annotations

import types
from typing import Callable, Hashable, Sequence

import torch
from torch import nn

CACHE_ATTR = '_mclir_fast_cache'
FROZEN_ATTR = 'frozen_for_negative'


def _state_key(tensors: Sequence[torch.Tensor | None]) -> tuple:
    """Identity of the values of ``tensors`` and of the autocast state: changes whenever a cached result could."""
    key: list[Hashable] = []
    for t in tensors:
        key.append(None if t is None else (t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape)))
    device = next((t.device.type for t in tensors if t is not None), 'cpu')
    key.append(torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None)
    return tuple(key)


def cached(module: nn.Module, name: str, sources: Sequence[torch.Tensor | None],
           compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()`` made contiguous, once per state of ``sources`` (see :func:`_state_key`); one entry per
    ``(module, name)``.

    The entry holds the sources' storages, so no new tensor can reuse their addresses while it lives and a matching
    ``(pointer, version)`` really is the same data.
    """
    cache = module.__dict__.setdefault(CACHE_ATTR, {})
    key = _state_key(sources)
    entry = cache.get(name)
    if entry is None or entry[0] != key:
        # a normal tensor (not an inference tensor), so that the negative also runs outside inference mode
        with torch.inference_mode(False), torch.no_grad():
            value = compute().contiguous()
        entry = (key, value, [t.untyped_storage() for t in sources if t is not None])
        cache[name] = entry
    return entry[1]


def add_in_place(logits: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``logits + bias`` with the eager type promotion (an fp32 bias on bf16 logits gives fp32), in place where the
    dtypes allow it (the logits are a temporary)."""
    if logits.dtype == torch.result_type(logits, bias):
        return logits.add_(bias)
    return logits + bias


class FrozenNegativeCache:
    """Mixin for an attention module whose forward adds a bias built from its own constants to the logits.

    The forward calls :meth:`add_bias`; nothing else differs between the eager and the frozen-negative path.
    """

    frozen_for_negative: bool = False  # per instance once set by freeze_for_negative

    def freeze_for_negative(self, frozen: bool = True) -> None:
        """Turn the cache and in-place addition on (``frozen=True``, for a network that never needs a gradient) or
        back off, dropping the cache."""
        if frozen:
            self.__dict__[FROZEN_ATTR] = True
        else:
            self.__dict__.pop(FROZEN_ATTR, None)
            self.__dict__.pop(CACHE_ATTR, None)

    def add_bias(self, logits: torch.Tensor, bias: Callable[[], torch.Tensor], cache: bool = False) -> torch.Tensor:
        """``logits + bias()``; frozen, added in place, and with ``cache`` computed once per state of the module's
        parameters and buffers.

        Args:
            logits: The attention logits, a temporary.
            bias: Computes the bias (broadcastable to ``logits``) from the module's own parameters and buffers only.
            cache: Keep the frozen module's bias (worth it when it costs more than a gather). Defaults to False.
        """
        if not self.frozen_for_negative:
            return logits + bias()
        value = cached(self, 'bias', (*self.parameters(), *self.buffers()), bias) if cache else bias()
        return add_in_place(logits, value)


def _swinir_table() -> dict[type, dict[str, Callable]]:
    """The SwinIR table, imported here lazily (it imports this module)."""
    from mclir_plugin.archs.swinir_fast_path import FAST_METHODS
    return FAST_METHODS


def accelerate_negative(net: nn.Module) -> int:
    """Turn on the cached forwards of every submodule of a frozen negative that has one (table entries: exact classes
    only, as a subclass may have changed the forward).

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
    table = _swinir_table()
    changed = 0
    for module in net.modules():
        if isinstance(module, FrozenNegativeCache):
            module.freeze_for_negative()
        for name, function in table.get(type(module), {}).items():
            setattr(module, name, types.MethodType(function, module))
        changed += isinstance(module, FrozenNegativeCache) or type(module) in table
    return changed


def restore_eager(net: nn.Module) -> int:
    """Undo :func:`accelerate_negative` on ``net`` and its submodules (their eager forwards run again, caches are
    dropped); returns how many submodules were changed. For baselines such as the official step's negatives."""
    names = {name for methods in _swinir_table().values() for name in methods} | {FROZEN_ATTR, CACHE_ATTR}
    changed = 0
    for module in net.modules():
        found = [name for name in names if name in module.__dict__]
        for name in found:
            del module.__dict__[name]
        changed += bool(found)
    return changed


def is_accelerated(module: nn.Module) -> bool:
    """Whether :func:`accelerate_negative` changed ``module`` (not its submodules)."""
    if module.__dict__.get(FROZEN_ATTR, False):
        return True
    methods = _swinir_table().get(type(module), {})
    return any(isinstance(module.__dict__.get(name), types.MethodType) for name in methods)
