"""The bank of history negatives: lagged copies of the network that the contrastive losses push the output from.

:class:`HistoryNegatives` is a plain object usable from any loop (a BasicSR model, an mmengine ``Hook``, a
hand-written PyTorch loop). Negative ``i`` starts as a blend of the network and a fresh initialisation and is then
refreshed every ``k_i`` iterations, after ``optimizer.step()``, from the raw (non-EMA) network:

.. math::

    \\theta'_i \\leftarrow s \\, \\theta^{fresh}_i + (1 - s) \\, \\theta
    \\quad\\text{(start, } s = \\text{neg\\_start)}

    \\theta'_i \\leftarrow d_i \\, \\theta'_i + (1 - d_i) \\, \\theta  \\quad\\text{when } t \\bmod k_i = 0
    \\text{ (t = 1-based iteration, } d_i = \\text{neg\\_decay}_i)

so ``d`` is the share the negative keeps of itself (0.1 in the official setting: a refresh is 90% a snapshot).
Parameters are updated with exactly the official arithmetic (``mul_(d).add_(net, alpha=1-d)``), so results can be
compared bit for bit. Each physical negative's interval and decay are held once, in :attr:`HistoryNegatives.schedules`
(one frozen :class:`NegativeSchedule` per negative, built from ``neg_iter``/``neg_decay``/``pairing``).

Caveats up front:

* Pairing: negative ``i`` uses ``neg_iter[i]`` and ``neg_decay[i]``. The official code reverses only the interval
  list (``neg_iter[i]`` goes with ``neg_decay[N-1-i]``); ``pairing='official_reversed'`` reproduces it. With equal
  decays, as in every published setting, the two are the same.
* Buffers: the official code refreshes parameters only. ``update_buffers=True`` (default) also blends floating
  buffers (BatchNorm statistics) with ``lerp``, which leaves constant buffers bit-identical, and copies integer ones.
* The fresh initialisation of negative ``i`` is drawn under its own seed, :func:`negative_seed` ``(seed, i)``, a
  hash of the run's seed and ``i``, inside ``fork_rng``: it is the same on every rank, does not shift the caller's
  random stream (baseline and SPN runs with one seed see the same data and network init), and is independent of
  the network's own initialisation and of the other negatives, as the official code's ``build_network`` calls
  are.
* Not built on mmengine's ``ExponentialMovingAverage``: it rejects ``momentum = 1 - d`` of 1 (an exact copy), warns
  for every official setting (momentum 0.9 > 0.5), and hard-copies on its first update, which would erase the start
  blend. The update itself is two ``_foreach`` calls.
* Inputs may be images (B, C, h, w) or clips (B, T, C, h, w): :meth:`HistoryNegatives.forward` returns
  ``(N, *output shape)`` whatever the network's output shape is.
* ``precision`` (``fp32``, ``bf16``, ``fp16``) runs the forwards under autocast of that dtype whatever the caller's
  autocast (``mclir.amp``) is; ``None`` follows the caller's. The weights stay fp32 (the refresh arithmetic is
  unchanged): autocast over fp32 weights measured faster than a bf16 working copy here
  (:mod:`mclir_plugin.utils.precision` gives the figures). The outputs may come back in that dtype; the losses cast
  them to the output's.
* :meth:`HistoryNegatives.draw` picks ``k`` of the N negatives (``mclir.neg_per_step``) from the bank's own
  ``torch.Generator``, seeded by :func:`draw_seed` of the bank's ``seed``: the same draws on every rank, whatever
  each rank's global random state, and saved in :meth:`HistoryNegatives.state_dict` for an exact resume.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
from typing import Any, Callable, Sequence

import torch
from torch import nn

from mclir_plugin.archs.frozen_cache import accelerate_negative
from mclir_plugin.utils.memory_layout import CHANNELS_LAST_OPTION, use_channels_last
from mclir_plugin.utils.option_schema import (Boolean, Choice, Integer, Number, OneOrList, Optional, OptionError, Text,
                                        check_options)
from mclir_plugin.utils.precision import (PRECISION_NAMES, PRECISION_OPTION, PRECISIONS, check_precision,
                                          precision_context)

logger = logging.getLogger('basicsr')

PAIRINGS = ('natural', 'official_reversed')
# The bank's options and the hook's (README, "The mclir block"); the model reports them under mclir.hook
HOOK_OPTIONS = {
    'neg_iter': OneOrList(Integer(low=1, note='iterations between refreshes')),
    'neg_decay': OneOrList(Number(0, 1, high_open=True, note='the share a negative keeps of itself')),
    'neg_start': Number(0, 1, note='the share of a fresh init at the start'),
    'pairing': Choice(*PAIRINGS),
    'update_buffers': Boolean(),
    'seed': Optional(Integer(), note="~ = the run's manual_seed"),
    'sync_check_interval': Integer(low=0, note='0 = off'),
    'module_key': Optional(Text("an attribute name of runner.model such as 'net'")),
    'adaptive_threshold': Optional(Number(low=0), note='~ = the interval schedule'),
    'adaptive_decay': Number(0, 1, high_open=True),
    'fast_forward': Boolean(),
    'channels_last': CHANNELS_LAST_OPTION,
    'precision': PRECISION_OPTION,
}


def unwrap(net: nn.Module) -> nn.Module:
    """The bare module inside DataParallel/DistributedDataParallel and ``torch.compile`` wrappers."""
    while True:
        if isinstance(net, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            net = net.module
        elif hasattr(net, '_orig_mod'):
            net = net._orig_mod
        else:
            return net


def reinitialised_copy(net: nn.Module) -> nn.Module:
    """A deep copy of ``net`` whose submodules have run ``reset_parameters()`` (a generic fresh initialisation)."""
    fresh = copy.deepcopy(unwrap(net))
    for module in fresh.modules():
        if hasattr(module, 'reset_parameters'):
            module.reset_parameters()
    return fresh


def negative_seed(seed: int, index: int) -> int:
    """The seed of negative ``index``'s fresh initialisation, derived from the run's ``seed``.

    A 63-bit hash of a fixed salt, ``seed`` and ``index``: the same on every rank and in every run with that seed,
    different for each negative, and never ``seed`` itself (nor ``seed + rank``, BasicSR's per-rank seeds), which
    has just initialised the network.
    """
    digest = hashlib.sha256(f'mclir-history-negative/{int(seed)}/{int(index)}'.encode()).digest()
    return int.from_bytes(digest[:8], 'little') >> 1


def draw_seed(seed: int) -> int:
    """The seed of the bank's draw generator (:meth:`HistoryNegatives.draw`), a 63-bit hash of ``seed`` under its
    own salt: independent of the network's init, of the negatives' fresh inits and of every rank's global stream."""
    digest = hashlib.sha256(f'mclir-negative-draw/{int(seed)}'.encode()).digest()
    return int.from_bytes(digest[:8], 'little') >> 1


def _as_list(value: Any, length: int, name: str) -> list[float]:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * length
    if len(values) != length:
        raise OptionError.of(name, value, f'one number, or a list of {length} (one per neg_iter entry)')
    return values


@dataclasses.dataclass(frozen=True)
class NegativeSchedule:
    """When and how one physical negative is refreshed: every ``interval`` iterations, keeping ``decay`` of itself."""
    interval: int
    decay: float


def build_schedules(neg_iter: Sequence[int], neg_decay: Sequence[float], pairing: str) -> tuple[NegativeSchedule, ...]:
    """One :class:`NegativeSchedule` per negative; ``'official_reversed'`` pairs ``neg_iter`` reversed with
    ``neg_decay`` as given (the official code's order)."""
    intervals = list(neg_iter)[::-1] if pairing == 'official_reversed' else list(neg_iter)
    return tuple(NegativeSchedule(int(k), float(d)) for k, d in zip(intervals, neg_decay))


class HistoryNegatives:
    """Keeps N history-negative models of a network and refreshes them on their schedules.

    Use: :meth:`build` once the network is on its device; ``bank(lq)`` (:meth:`forward`) for the negatives'
    outputs; :meth:`step` after each optimizer step; :meth:`state_dict`/:meth:`load_state_dict` in checkpoints.

    Args:
        neg_iter: Refresh interval of each negative, in iterations; one negative per entry.
            Defaults to ``(100, 200, 500, 1000)``.
        neg_decay: Share ``d`` a negative keeps of itself at a refresh, in [0, 1); one number or one per
            negative. Defaults to 0.1.
        neg_start: Share ``s`` of a fresh random initialisation in the start blend, in [0, 1]; 0 starts from an
            exact copy. Defaults to 0.1.
        pairing: ``'natural'`` or ``'official_reversed'`` (see the module notes). Defaults to ``'natural'``.
        update_buffers: Refresh buffers too (floating ones blended, others copied). Defaults to True.
        seed: Seed from which the fresh initialisations are derived, the same on every rank: negative ``i`` is
            drawn under ``torch.manual_seed(negative_seed(seed, i))``. ``None`` lets the owner choose
            (MCLIRModel passes the run's ``manual_seed``, an mmengine runner its seed); otherwise 0.
            Defaults to None.
        sync_check_interval: Debugging aid for multi-process runs: when the negatives are built and every this
            many iterations, compare checksums of the negatives across ranks (two small all-reduces) and raise if
            they differ. 0 turns it off; the negatives need no communication otherwise. Defaults to 0.
        adaptive_threshold: The official repository's adaptive variant (not in the paper): the interval schedule
            is off, and whenever the error spread of the batch, ``s = mean_b std(2 (out - gt))`` (the spread of
            the L2 gradient), exceeds this threshold, one negative is refreshed, round robin, with
            ``adaptive_decay``. ``s`` is averaged over ranks first, so every rank refreshes the same negative.
            Call :meth:`adaptive_step` before backward (the official order). The official value is 0.022.
            ``None`` keeps the interval schedule. Defaults to None.
        adaptive_decay: Decay of an adaptive refresh (official: 0.001, about a copy). Defaults to 0.001.
        fast_forward: Let the negatives' window attention skip work it repeats on every call (see
            :mod:`mclir_plugin.archs.frozen_cache`). Same maths, float rounding aside. Defaults to True.
        channels_last: Keep the negatives (and feed them) in channels-last memory format: ``'auto'`` does so on
            CPU only (see :mod:`mclir_plugin.utils.memory_layout`). Defaults to ``'auto'``.
        precision: ``'fp32'``, ``'bf16'`` or ``'fp16'``: the forwards run under autocast of that dtype (fp32: with
            autocast off), whatever the caller's; the weights stay fp32. ``None`` runs them as the caller does
            (fp32, or ``mclir.amp``'s autocast). Refused at :meth:`build` where it cannot run (see
            :func:`~mclir_plugin.utils.precision.check_precision`). Defaults to None.
    """

    def __init__(self,
                 neg_iter: Sequence[int] | int = (100, 200, 500, 1000),
                 neg_decay: Sequence[float] | float = 0.1,
                 neg_start: float = 0.1,
                 pairing: str = 'natural',
                 update_buffers: bool = True,
                 seed: int | None = None,
                 sync_check_interval: int = 0,
                 adaptive_threshold: float | None = None,
                 adaptive_decay: float = 0.001,
                 fast_forward: bool = True,
                 channels_last: bool | str = 'auto',
                 precision: str | None = None) -> None:
        check_options(HOOK_OPTIONS, locals())  # the arguments, by name: keys and values as the option block has them
        neg_iter = list(neg_iter) if isinstance(neg_iter, (list, tuple)) else [neg_iter]
        self.neg_iter = neg_iter  # the options as given (the schedules below are what is used)
        self.neg_decay = [float(d) for d in _as_list(neg_decay, len(neg_iter), 'neg_decay')]
        self.pairing = pairing
        self.schedules = build_schedules(self.neg_iter, self.neg_decay, pairing)
        self.neg_start = float(neg_start)
        self.update_buffers = bool(update_buffers)
        self.seed = seed
        self.sync_check_interval = sync_check_interval
        self.adaptive_threshold = None if adaptive_threshold is None else float(adaptive_threshold)
        self.adaptive_decay = float(adaptive_decay)
        self.adaptive_count = 0
        self.fast_forward = fast_forward
        self.channels_last = channels_last
        self._negatives_channels_last = False  # decided in build(), from the device
        self.precision = precision
        self.dtype: torch.dtype | None = PRECISIONS.get(precision)
        self.draw_generator: torch.Generator | None = None  # made in build(), once the seed is known
        self.negatives = nn.ModuleList()
        self.refresh_count = [0] * self.num_negatives
        self.last_refresh_iter = [0] * self.num_negatives

    @property
    def intervals(self) -> list[int]:
        """Each physical negative's refresh interval (from :attr:`schedules`)."""
        return [s.interval for s in self.schedules]

    @property
    def decays(self) -> list[float]:
        """Each physical negative's decay (from :attr:`schedules`)."""
        return [s.decay for s in self.schedules]

    @property
    def num_negatives(self) -> int:
        return len(self.schedules)

    @property
    def built(self) -> bool:
        return len(self.negatives) == self.num_negatives

    @property
    def adaptive(self) -> bool:
        return self.adaptive_threshold is not None

    @torch.no_grad()
    def build(self, net: nn.Module, fresh_init: Callable[[], nn.Module] | None = None) -> None:
        """Create the negatives from ``net`` (call it once the network is on its device).

        Args:
            net: The network being trained (wrappers are unwrapped).
            fresh_init: Returns a freshly initialised network of the same architecture (for ``neg_start > 0``).
                Defaults to :func:`reinitialised_copy` of ``net``.
        """
        net = unwrap(net)
        fresh_init = fresh_init or (lambda: reinitialised_copy(net))
        device = next(net.parameters()).device
        check_precision(net, self.dtype, device)
        negatives = []
        seed = 0 if self.seed is None else self.seed
        with torch.random.fork_rng(devices=[]):
            for i in range(self.num_negatives):
                if self.neg_start == 0:
                    neg = copy.deepcopy(net)
                else:  # the official start: blend a fresh network towards the target with decay neg_start
                    torch.manual_seed(negative_seed(seed, i))  # one independent stream per negative
                    neg = fresh_init().to(device)
                    self._blend(neg, net, self.neg_start)
                negatives.append(neg.requires_grad_(False).eval())
        if self.neg_start > 0:
            logger.info('MCLIR: ' + self._start_report(negatives, net))
        if self.fast_forward:
            for neg in negatives:
                accelerate_negative(neg)
        self._negatives_channels_last = use_channels_last(self.channels_last, device)
        if self._negatives_channels_last:
            for neg in negatives:  # 4-D weights only; blends and loads keep the layout (they write in place)
                neg.to(memory_format=torch.channels_last)
        self.negatives = nn.ModuleList(negatives)
        self.refresh_count = [0] * self.num_negatives
        self.last_refresh_iter = [0] * self.num_negatives
        self.draw_generator = torch.Generator().manual_seed(draw_seed(seed))
        if self.sync_check_interval:
            self.check_sync(None)

    @torch.no_grad()
    def _start_report(self, negatives: list[nn.Module], net: nn.Module) -> str:
        """The start blend in numbers: each negative's distance to the network and the smallest distance between
        two negatives, relative to the network's norm (about ``neg_start`` times the spread of a fresh init)."""
        def norm(tensors: list[torch.Tensor]) -> float:  # one module's worth of temporaries at most
            return float(torch.stack(torch._foreach_norm(tensors)).double().norm())

        target = [p.detach() for p in net.parameters()]
        params = [[p.detach() for p in neg.parameters()] for neg in negatives]
        scale = max(norm(target), 1e-12)
        to_net = ' '.join(f'{norm(torch._foreach_sub(q, target)) / scale:.4g}' for q in params)
        report = f'start blend (neg_start {self.neg_start}): relative distance to the network {to_net}'
        if len(params) > 1:
            apart = min(norm(torch._foreach_sub(a, b)) for i, a in enumerate(params) for b in params[i + 1:])
            report += f'; smallest between two negatives {apart / scale:.4g}'
        return report

    @torch.no_grad()
    def _blend(self, neg: nn.Module, net: nn.Module, decay: float) -> None:
        """``neg <- decay * neg + (1 - decay) * net`` over parameters (and buffers when ``update_buffers``)."""
        src = dict(net.named_parameters())
        try:
            pairs = [(p, src[name]) for name, p in neg.named_parameters()]
        except KeyError as err:
            raise RuntimeError(f'Negative and network differ: the network has no parameter {err}.') from None
        dst_p, src_p = [p for p, _ in pairs], [q.detach() for _, q in pairs]
        torch._foreach_mul_(dst_p, decay)
        torch._foreach_add_(dst_p, src_p, alpha=1 - decay)
        if self.update_buffers:
            src_b = dict(net.named_buffers())
            floats = [(b, src_b[name]) for name, b in neg.named_buffers() if b.is_floating_point()]
            if floats:
                torch._foreach_lerp_([b for b, _ in floats], [s for _, s in floats], 1 - decay)
            for name, b in neg.named_buffers():
                if not b.is_floating_point():
                    b.copy_(src_b[name])

    def _refreshed(self, index: int, current_iter: int) -> None:
        self.refresh_count[index] += 1
        self.last_refresh_iter[index] = current_iter

    @torch.no_grad()
    def step(self, net: nn.Module, current_iter: int) -> list[int]:
        """Refresh the negatives due at ``current_iter`` (1-based; call after ``optimizer.step()``).

        Returns:
            The indices of the negatives refreshed.
        """
        self._require_built()
        net = unwrap(net)
        refreshed = []
        for i, schedule in enumerate(self.schedules):
            if not self.adaptive and current_iter % schedule.interval == 0:
                self._blend(self.negatives[i], net, schedule.decay)
                self._refreshed(i, current_iter)
                refreshed.append(i)
        if self.sync_check_interval and current_iter % self.sync_check_interval == 0:
            self.check_sync(current_iter)
        return refreshed

    @torch.no_grad()
    def adaptive_step(self, net: nn.Module, output: torch.Tensor, target: torch.Tensor,
                      current_iter: int) -> int | None:
        """The adaptive refresh (see ``adaptive_threshold``); returns the negative refreshed, or None."""
        self._require_built()
        residual = (2 * (output.detach() - target)).flatten(1).float()
        spread = residual.std(dim=1).mean()
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            spread = spread.cuda() if dist.get_backend() == 'nccl' else spread
            dist.all_reduce(spread)
            spread = spread / dist.get_world_size()
        if spread.item() <= self.adaptive_threshold:
            return None
        index = self.adaptive_count % self.num_negatives
        self._blend(self.negatives[index], unwrap(net), self.adaptive_decay)
        self.adaptive_count += 1
        self._refreshed(index, current_iter)
        return index

    @torch.no_grad()
    def checksums(self) -> torch.Tensor:
        """One float64 number per tensor of every negative (sum of its entries, weighted by position)."""
        sums = []
        for neg in self.negatives:
            for tensor in neg.state_dict().values():
                flat = tensor.detach().flatten().double()
                weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
                sums.append((flat * weights).sum())
        return torch.stack(sums)

    @torch.no_grad()
    def check_sync(self, current_iter: int | None) -> None:
        """Raise if the negatives differ across ranks (no-op without torch.distributed).

        Args:
            current_iter: The iteration, for the messages; ``None`` when the negatives have just been built.
        """
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        local = self.checksums()
        if dist.get_backend() == 'nccl':
            local = local.cuda()
        low, high = local.clone(), local.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        when = 'when built' if current_iter is None else f'at iteration {current_iter}'
        if not torch.equal(low, high):
            raise RuntimeError(f'Negative models differ across ranks {when} (checksums of '
                               f'{int((low != high).sum())} tensors disagree): this is a bug, please report it.')
        logger.info(f'Negative models agree across {dist.get_world_size()} ranks {when}.')

    def draw(self, k: int) -> list[int]:
        """``k`` of the N negatives, uniformly without replacement, in increasing order (``mclir.neg_per_step``).

        Drawn from :attr:`draw_generator` (seeded by :func:`draw_seed` of ``seed``), so every rank draws the same
        and the global random streams are untouched; ``k == N`` returns all without drawing.
        """
        self._require_built()
        if not 1 <= k <= self.num_negatives:
            raise ValueError(f'Cannot draw {k} of {self.num_negatives} negatives: use 1 <= k <= {self.num_negatives}.')
        if k == self.num_negatives:
            return list(range(k))
        return sorted(torch.randperm(self.num_negatives, generator=self.draw_generator)[:k].tolist())

    def forward(self, x: torch.Tensor, indices: Sequence[int] | None = None) -> torch.Tensor:
        """Run the negatives (all, or those of ``indices``) on ``x`` in inference mode, at ``precision``.

        Args:
            x: The network's input, (B, C, h, w) or a clip (B, T, C, h, w).
            indices: Which negatives to run. Defaults to all.

        Returns:
            ``(len(indices) or N, *output shape)``, never part of a graph; in ``precision``'s dtype where the
            network's last operation ran under autocast.
        """
        self._require_built()
        chosen = self.negatives if indices is None else [self.negatives[i] for i in indices]
        with torch.inference_mode(), precision_context(self.dtype, x.device.type):
            if self._negatives_channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            return torch.stack([neg(x) for neg in chosen]).contiguous()

    __call__ = forward

    def _require_built(self) -> None:
        if not self.built:
            raise RuntimeError('HistoryNegativeHook has no negatives yet: call build(net) first.')

    def state_dict(self) -> dict[str, Any]:
        """Negatives (CPU tensors) and counters; everything a resume needs. Safe for ``weights_only`` loads."""
        return {
            'negatives': [{k: v.detach().cpu().clone() for k, v in neg.state_dict().items()} for neg in self.negatives],
            'intervals': self.intervals,
            'decays': self.decays,
            'refresh_count': list(self.refresh_count),
            'last_refresh_iter': list(self.last_refresh_iter),
            'adaptive_count': self.adaptive_count,
            'draw_rng': None if self.draw_generator is None else self.draw_generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into built negatives (on whatever device they are)."""
        self._require_built()
        saved = len(state['negatives'])
        if saved != self.num_negatives:
            raise ValueError(f'The checkpoint holds {saved} negative models but the options ask for '
                             f'{self.num_negatives} (neg_iter {self.neg_iter}); resume with the same neg_iter.')
        if state['intervals'] != self.intervals or state['decays'] != self.decays:
            logger.warning(f"Negative schedule changed on resume: checkpoint intervals {state['intervals']}, decays "
                           f"{state['decays']}; now {self.intervals}, {self.decays}. The negatives' weights are kept.")
        for neg, neg_state in zip(self.negatives, state['negatives']):
            neg.load_state_dict(neg_state, strict=True)
            neg.requires_grad_(False).eval()
        self.refresh_count = list(state['refresh_count'])
        self.last_refresh_iter = list(state['last_refresh_iter'])
        self.adaptive_count = int(state.get('adaptive_count', 0))
        if state.get('draw_rng') is not None:  # (states written before neg_per_step existed have none)
            self.draw_generator.set_state(state['draw_rng'])

    def describe(self) -> str:
        """One line per negative: its schedule and counters, for logs."""
        lines = [f'{self.num_negatives} history negative(s), neg_start={self.neg_start}, pairing={self.pairing}, '
                 f'update_buffers={self.update_buffers}, seed={self.seed}, fast_forward={self.fast_forward}, '
                 f'channels_last={self._negatives_channels_last}, '
                 f'precision={PRECISION_NAMES.get(self.dtype, "as the step")}:']
        if self.adaptive:
            lines.append(f'  adaptive refresh: one negative, round robin, with decay {self.adaptive_decay} when the '
                         f'error spread exceeds {self.adaptive_threshold} ({self.adaptive_count} so far)')
        for i, schedule in enumerate(self.schedules):
            when = ('adaptive' if self.adaptive
                    else f'refreshed every {schedule.interval} it with decay {schedule.decay}')
            lines.append(f'  negative {i}: {when} '
                         f'(refreshes so far {self.refresh_count[i]}, last at it {self.last_refresh_iter[i]})')
        return '\n'.join(lines)
