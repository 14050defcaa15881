r"""The criterion a base model's own training step calls: one place for every cost and weighting option.

``MCLIRModel`` replaces the base model's ``cri_pix`` (built from ``train.pixel_opt``) by a
:class:`ContrastiveCriterion` around it. The base step keeps calling ``cri_pix(output, target)`` (SRModel, the GAN
models' generator loss, Real-ESRGAN with ``gt_usm``, the video models) and gets back ONE scalar, ``l_rec - l_neg``,
which it adds to its total. Before the step the model binds the criterion to the batch's input (``lq`` as the base
model's ``feed_data`` left it: Real-ESRGAN degrades on the fly) and the iteration, so that the negatives run on
the same input. After the step the model reads the parts (:attr:`ContrastiveCriterion.parts`) for its logs.

The options that decide when and on what the negative term is computed live here and nowhere else:

* ``mclir.neg_every = k``: the negative term on every k-th iteration only, weighted by k (same expectation);
* ``mclir.neg_batch_fraction = f``: on a random subset of ``ceil(f * B)`` samples of the batch;
* ``mclir.neg_per_step = k``: on k of the N negatives, drawn anew at each computation of the term (see below);
* ``mclir.hook.precision``: the bank's precision, which the criterion hands to the loss (``negative_dtype``) so
  that VGG on the negatives runs in it too; the output's features, the loss and its gradient keep the step's;
* ``neg_weight: auto`` (a loss option): the negative term is off for the loss's ``auto_iters`` iterations while
  :class:`LambdaCalibration` measures it, then ``lambda = auto_ratio * R / D`` (the same on every rank);
* ``uncertainty_weighting`` (a loss option): the reconstruction term weighted by the negatives' spread, on the
  steps whose negatives cover the whole batch;
* the adaptive refresh of the bank (``adaptive_threshold``), which needs the pre-step weights: it runs here,
  inside the call, before the base step's backward.

Caveats up front:

* Reading an attribute the criterion lacks reads the loss's (``cri_pix.neg_weight``, ``cri_pix.vgg``), so code
  written when ``cri_pix`` was the loss keeps working; setting one sets it on the criterion: use ``.loss``.
* Called before :meth:`ContrastiveCriterion.bind`, it raises: it cannot know the batch's input.

``neg_per_step = k`` in numbers. The bank draws a set ``D`` of k of the N negatives uniformly without replacement
(:meth:`~mclir_plugin.hooks.history_negatives.HistoryNegatives.draw`: its own generator, the same on every rank,
saved in the training state); only they run forward and through VGG. Each negative is in ``D`` with probability
k/N, so for a score that is a mean over the negatives, ``S = (1/N) sum_i s_i`` (SPN:
``s_i = sum_l alpha_l mean|phi_l(out) - phi_l(n_i)|``),

.. math::

    E_D\\Big[\\frac{1}{k} \\sum_{i \\in D} s_i\\Big] = \\frac{1}{k} \\sum_{i=1}^{N} P(i \\in D) \\, s_i
    = \\frac{1}{k} \\cdot \\frac{k}{N} \\sum_{i=1}^{N} s_i = \\frac{1}{N} \\sum_{i=1}^{N} s_i = S,

so the loss computed on the drawn negatives, weight 1 (not N/k: the score is already a mean), is unbiased for the
full loss, and so is its gradient (the same linear combination of the per-negative gradients). Its variance is
``(sigma^2 / k) (N - k) / (N - 1)`` (``sigma^2`` the spread of the ``s_i`` over the negatives), 0 at ``k = N``,
which runs all negatives without drawing: today's maths exactly. The draws are independent of ``neg_every`` and
``neg_batch_fraction``, so the expectations combine. The ratio form (CR: ``d+ / (mean_k d-_k + eps)``, convex in
the mean) and InfoNCE (``-log`` of a softmax over the negatives' similarities, with a sum over them) are not means
over the negatives: a subset's value is biased (Jensen) whatever its weight, so ``k < N`` is refused for losses
whose ``mean_over_negatives`` is False, and for ``uncertainty_weighting`` (the spread of k negatives is another
weight, not an estimate of it).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

import torch
from basicsr.utils import get_root_logger
from torch import nn

from mclir_plugin.losses.contrastive_base import ContrastiveLoss
from mclir_plugin.utils.option_schema import Integer

if TYPE_CHECKING:
    from mclir_plugin.hooks.history_negatives import HistoryNegatives


class LambdaCalibration:
    """``neg_weight: auto``: sums of the reconstruction term R and the score D over the first iterations, then
    ``lambda = auto_ratio * mean(R) / mean(|D|)`` (means over ranks too, so every rank gets the same lambda)."""

    def __init__(self, loss: ContrastiveLoss) -> None:
        self.loss = loss
        self.sum_rec, self.sum_distance, self.count = 0.0, 0.0, 0

    def add(self, l_rec: torch.Tensor, distance: torch.Tensor) -> None:
        self.sum_rec += float(l_rec.detach())
        self.sum_distance += abs(float(distance))
        self.count += 1

    def finish(self, dist: bool) -> float:
        sums = torch.tensor([self.sum_rec, self.sum_distance], dtype=torch.float64)
        if dist:
            backend_device = 'cuda' if torch.distributed.get_backend() == 'nccl' else 'cpu'
            sums = sums.to(backend_device)
            torch.distributed.all_reduce(sums)
        rec, distance = sums.tolist()
        if distance <= 0:
            raise FloatingPointError('neg_weight auto: the VGG distance to the negatives stayed 0 during calibration '
                                     '(negatives identical to the network?); set neg_weight to a number.')
        self.loss.neg_weight = self.loss.auto_ratio * rec / distance
        get_root_logger().info(
            f'neg_weight auto: lambda = {self.loss.neg_weight:.4g} (target l_neg_ratio {self.loss.auto_ratio}; mean '
            f'reconstruction {rec / self.count:.4g} and VGG distance {distance / self.count:.4g} per rank over '
            f'{self.count} iterations); fixed from now on and stored in the training state.')
        return self.loss.neg_weight

    def state(self) -> list[float]:
        return [self.sum_rec, self.sum_distance, self.count]

    def load(self, state: list[float]) -> None:
        self.sum_rec, self.sum_distance, self.count = state[0], state[1], int(state[2])


def all_ranks_agree(flag: bool, dist: bool) -> bool:
    """``flag`` and-ed over the ranks (one small all-reduce when distributed), so that ranks decide together."""
    value = torch.tensor(float(flag))
    if dist:
        if torch.distributed.get_backend() == 'nccl':
            value = value.cuda()
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
    return bool(value.item())


class ContrastiveCriterion(nn.Module):
    """``cri_pix`` of an MCLIR model: ``criterion(output, target) = l_rec - l_neg`` for the bound batch.

    Args:
        loss: The contrastive loss (``train.pixel_opt``: SPNLoss, ContrastRatioLoss, InfoNCELoss, ...).
        bank: The history negatives (built), or None for a loss that never uses them.
        neg_every: Compute the negative term every this many iterations (weighted by it). Defaults to 1.
        neg_batch_fraction: Share of the batch the negative term is computed on, in (0, 1]. Defaults to 1.0.
        dist: The run is distributed (calibration and the adaptive decision are agreed by all ranks).
            Defaults to False.
        source: Returns the raw network the adaptive refresh copies (``MCLIRModel``: the bare ``net_g``).
            Needed only with an adaptive bank. Defaults to None.
        neg_per_step: Use k of the bank's N negatives per computation of the negative term, drawn uniformly
            without replacement (see the module notes); 1 <= k <= N. None (or N) uses all. Defaults to None.
    """

    RATIO_WINDOW = 1000  # iterations over which l_neg_ratio is averaged before it is compared with the loss's range

    def __init__(self, loss: ContrastiveLoss, bank: HistoryNegatives | None = None, neg_every: int = 1,
                 neg_batch_fraction: float = 1.0, dist: bool = False,
                 source: Callable[[], nn.Module] | None = None, neg_per_step: int | None = None) -> None:
        super().__init__()
        if not isinstance(loss, ContrastiveLoss):
            raise TypeError(f'ContrastiveCriterion needs a ContrastiveLoss (SPNLoss, ContrastRatioLoss, InfoNCELoss), '
                            f'got {type(loss).__name__}.')
        self.loss = loss
        self.bank = bank  # a plain object, not a submodule: the negatives are not this module's parameters
        self.source = source
        self.neg_every, self.neg_batch_fraction, self.dist = neg_every, neg_batch_fraction, dist
        self.calibration = LambdaCalibration(loss) if loss.auto_neg_weight else None
        self.ratio_window: list[float] = []
        self.lq: torch.Tensor | None = None
        self.current_iter: int | None = None
        self.parts: dict[str, torch.Tensor] | None = None  # l_rec, l_neg of the last call of this step
        if bank is not None:
            loss.negative_dtype = bank.dtype  # VGG on the negatives at the bank's precision
        self.neg_per_step = self._check_neg_per_step(neg_per_step)
        self.drawn: list[int] | None = None  # the negatives of the last draw
        self.draw_counts = [0] * (bank.num_negatives if bank is not None else 0)  # since the last draw_report()

    def _check_neg_per_step(self, k: int | None) -> int | None:
        """``k`` when it draws (1 <= k < N), None for all negatives; errors name ``mclir.neg_per_step``."""
        if k is None or self.bank is None or not self.loss.uses_history:
            return None
        n = self.bank.num_negatives
        Integer(low=1, high=n, note=f'there are {n} negatives, one per mclir.hook.neg_iter entry; ~ for all of '
                                    'them')(k, 'mclir.neg_per_step')
        if k == n:
            return None
        if not self.loss.mean_over_negatives:
            raise ValueError(f'mclir.neg_per_step {k} < {n} cannot be used with {type(self.loss).__name__}: its '
                             'negative term is not a mean over the negatives, so a subset would bias it. Use '
                             f'neg_per_step: ~ (all {n}), or SPNLoss.')
        if self.loss.uncertainty_weighting:
            raise ValueError(f'mclir.neg_per_step {k} < {n} cannot be used with uncertainty_weighting, which weights '
                             f'the reconstruction by the spread of all {n} negatives; use neg_per_step: ~.')
        return k

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == 'loss':
                raise
            return getattr(self._modules['loss'], name)

    # ------------------------------------------------------------------ one step
    def bind(self, lq: torch.Tensor, current_iter: int | None = None) -> None:
        """The batch's input (after the base model's ``feed_data``) and, when given, the iteration (1-based), which
        starts a step: the previous step's :attr:`parts` are forgotten."""
        self.lq = lq
        if current_iter is not None:
            self.current_iter, self.parts = current_iter, None

    def forward(self, output: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``l_rec - l_neg`` as one scalar; the parts are kept in :attr:`parts`."""
        if self.lq is None or self.current_iter is None:
            raise RuntimeError('ContrastiveCriterion was called before bind(lq, iteration): the negatives need the '
                               "batch's input. MCLIRModel binds it in feed_data and optimize_parameters.")
        loss, zero = self.loss, output.new_zeros(())
        if self.current_iter % self.neg_every:
            return self._record(loss.reconstruction(output, target, weight), zero)
        lq, out, gt = self.lq, output, target
        if self.neg_batch_fraction < 1:
            keep = torch.randperm(lq.shape[0], device=lq.device)[:math.ceil(self.neg_batch_fraction * lq.shape[0])]
            lq, out, gt = lq[keep], out[keep], gt[keep]
        needed = loss.neg_weight != 0 or self.calibration is not None or loss.uncertainty_weighting
        negatives = self.bank(lq, self._draw()) if loss.uses_history and needed else None
        if weight is None and negatives is not None and self.neg_batch_fraction == 1:
            weight = loss.uncertainty_weight(negatives)  # (a batch fraction covers part of the batch: no weighting)
        l_rec = loss.reconstruction(output, target, weight)
        if self.calibration is not None:  # neg_weight: auto, still measuring: the negative term is off
            with torch.no_grad():
                self.calibration.add(l_rec, loss.negative_score(out, gt, negatives, lq))
            l_neg = zero
        elif loss.neg_weight == 0:
            l_neg = zero
        else:
            l_neg = self.neg_every * loss.neg_weight * loss.negative_score(out, gt, negatives, lq)
        total = self._record(l_rec, l_neg)
        if self.bank is not None and self.bank.adaptive and all_ranks_agree(bool(torch.isfinite(total)), self.dist):
            self.bank.adaptive_step(self.source(), output, target, self.current_iter)  # pre-step weights
        return total

    def _draw(self) -> list[int] | None:
        """The negatives this computation uses (``neg_per_step``), counted for :meth:`draw_report`; None = all."""
        if self.neg_per_step is None:
            return None
        self.drawn = self.bank.draw(self.neg_per_step)
        for i in self.drawn:
            self.draw_counts[i] += 1
        return self.drawn

    def draw_report(self, current_iter: int) -> str:
        """One log line: how often each negative was drawn since the last report, and the last draw; resets the
        counts (``MCLIRModel`` logs it at ``print_freq``)."""
        counts, self.draw_counts = self.draw_counts, [0] * len(self.draw_counts)
        return (f'neg_per_step {self.neg_per_step} of {len(counts)}: draws since the last report, to iteration {current_iter} '
                f'(counts per negative 0..{len(counts) - 1}) {counts}; last draw {self.drawn}.')

    def _record(self, l_rec: torch.Tensor, l_neg: torch.Tensor) -> torch.Tensor:
        self.parts = {'l_rec': l_rec.detach(), 'l_neg': l_neg.detach()}
        return l_rec - l_neg

    def log_terms(self) -> dict[str, torch.Tensor]:
        """``{'l_pix': l_rec, 'l_neg': l_neg, 'l_neg_ratio': l_neg / l_rec}`` of this step (float), or {} when the
        criterion was not called (a GAN iteration that does not update the generator)."""
        if self.parts is None:
            return {}
        l_rec, l_neg = self.parts['l_rec'].float(), self.parts['l_neg'].float()
        return {'l_pix': l_rec, 'l_neg': l_neg, 'l_neg_ratio': l_neg / l_rec}

    def end_step(self, current_iter: int) -> None:
        """After the step: end the calibration when it has its iterations; watch ``l_neg_ratio``."""
        if self.calibration is not None and self.calibration.count >= self.loss.auto_iters:
            self.calibration.finish(self.dist)
            self.calibration = None
            return
        if self.parts is not None:
            self._watch_ratio(current_iter, float(self.parts['l_neg'] / self.parts['l_rec']))

    def _watch_ratio(self, current_iter: int, ratio: float) -> None:
        """Warn when ``l_neg_ratio`` averages outside the loss's ``ratio_range`` over :attr:`RATIO_WINDOW` steps."""
        if self.calibration is not None or ratio == 0:  # calibrating, or no negative term on this step
            return
        self.ratio_window.append(abs(ratio))
        if len(self.ratio_window) < self.RATIO_WINDOW:
            return
        mean = sum(self.ratio_window) / len(self.ratio_window)
        self.ratio_window = []
        low_high = self.loss.ratio_range
        if low_high is not None and not low_high[0] <= mean <= low_high[1]:
            target = getattr(self.loss, 'auto_ratio', None) or (low_high[0] + low_high[1]) / 2
            get_root_logger().warning(
                f'l_neg_ratio averaged {mean:.3g} over the {self.RATIO_WINDOW} iterations before {current_iter}, '
                f'outside the authors\' [{low_high[0]}, {low_high[1]}]: neg_weight {self.loss.neg_weight:.3g} -> '
                f'about {self.loss.neg_weight * target / mean:.3g} would give {target:.2g} (or use neg_weight: auto).')

    # ------------------------------------------------------------------ training state
    def state(self) -> dict[str, Any]:
        """``neg_weight`` (calibrated or not) and the calibration's sums, for the training state."""
        return {'value': float(self.loss.neg_weight),
                'calibration': None if self.calibration is None else self.calibration.state()}

    def load_state(self, saved: dict[str, Any]) -> None:
        """Restore :meth:`state` (only for ``neg_weight: auto``: a fixed weight comes from the option file)."""
        if not self.loss.auto_neg_weight:
            return
        self.loss.neg_weight = saved['value']
        if saved['calibration'] is None:
            self.calibration = None
            get_root_logger().info(f"neg_weight auto: lambda {saved['value']:.4g} restored from the training state.")
        else:
            if self.calibration is None:
                self.calibration = LambdaCalibration(self.loss)
            self.calibration.load(saved['calibration'])

    def extra_repr(self) -> str:
        return (f'neg_every={self.neg_every}, neg_batch_fraction={self.neg_batch_fraction}, '
                f'neg_per_step={self.neg_per_step or "all"}')
