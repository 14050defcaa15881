"""The one interface of the contrastive losses: a reconstruction term plus a negative term in VGG space.

Every loss of this family (:class:`~mclir_plugin.losses.spn_loss.SPNLoss`, the peers
:class:`~mclir_plugin.losses.contrast_ratio_loss.ContrastRatioLoss` and
:class:`~mclir_plugin.losses.infonce_loss.InfoNCELoss`, the next paper's) is one subclass of :class:`ContrastiveLoss`
that implements one method, :meth:`ContrastiveLoss.score`, the unweighted negative score ``S``:

.. math::

    L = l_{rec} - l_{neg}, \\quad l_{rec} = w \\, L_{rec}(\\hat y, y), \\quad l_{neg} = \\lambda \\, S(\\hat y, y,
    \\{n_k\\}_{k=1}^{K})

``l_neg`` is the amount *subtracted* (the convention of ``MCLIRModel``'s logs). SPN's ``S`` is a distance to the
negatives (so its ``l_neg`` is positive); the ratio and InfoNCE forms are costs ``C`` with ``S = -C`` (their
``l_neg`` is negative; they subclass :class:`ContrastCostLoss` and implement only the cost at one VGG layer).
Everything else lives here once: the shared options (``loss_weight``, ``neg_weight``, ``layer_weights``, VGG,
``rec_loss``, ``reduction``) and their checks (:meth:`ContrastiveLoss.split_arguments`),
:meth:`ContrastiveLoss.reconstruction`, the negatives' plumbing and shape checks, video clips, and the errors. When and on what the negative term is computed during
training (``neg_every``, ``neg_batch_fraction``, ``neg_weight: auto``, uncertainty weighting) is decided by
:class:`~mclir_plugin.losses.contrastive_criterion.ContrastiveCriterion`, not by the loss.

Caveats up front:

* The negatives ``n_k`` come from the history-negative models (``neg_source='history'``, the MCLIR way), from the
  degraded input (``'input'``, the CR/PCL way) or both (the peers' option; SPN uses history negatives only). The
  input is resized to the output's size when they differ (super-resolution): torch bicubic interpolation,
  ``align_corners=False``, clamped to the image range. That is not MATLAB's bicubic; it is only a negative.
* Video: outputs and targets may be clips (B, T, C, H, W) with negatives (K, B, T, C, H, W); VGG then runs over the
  frames (B*T images). An input clip with a single-frame output (EDVR) gives its centre frame as the input negative.
* No gradient reaches the target, the negatives or VGG: their features are computed under ``no_grad`` from
  detached inputs. Only the output's features carry a graph.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from basicsr.losses import build_loss
from torch import nn

from mclir_plugin.losses import ssim_loss  # noqa: F401  (registers SSIMLoss for rec_loss: ssim)
from mclir_plugin.losses.vgg_features import VGG_LOSS_OPTIONS, VGGFeatures
from mclir_plugin.utils.option_schema import Choice, Number, check_options
from mclir_plugin.utils.precision import precision_context

NEG_SOURCES = ('history', 'input', 'both')
REC_LOSSES = {'l1': 'L1Loss', 'mse': 'MSELoss', 'charbonnier': 'CharbonnierLoss', 'ssim': 'SSIMLoss'}
Negatives = Optional[Union[torch.Tensor, Sequence[torch.Tensor]]]
NEG_SOURCE_OPTION = {'neg_source': Choice(*NEG_SOURCES)}


def frames(x: torch.Tensor) -> torch.Tensor:
    """A clip (B, T, C, H, W) as B*T images; an image batch (B, C, H, W) unchanged."""
    return x.flatten(0, 1) if x.dim() == 5 else x


class ContrastiveLoss(nn.Module):
    """Base class: ``l_rec - l_neg`` with ``l_rec = w * L_rec(pred, target)`` and ``l_neg = neg_weight * S``.

    Subclasses implement :meth:`score` only (and list their own options in ``OPTIONS``).

    Args:
        layer_weights: ``{vgg layer: weight}`` (layer names as :func:`~mclir_plugin.losses.vgg_layer_names`).
        loss_weight: Weight ``w`` of the reconstruction term. Defaults to 1.0.
        neg_weight: ``lambda``, the weight of the negative term; 0 disables it (and skips VGG). Defaults to 0.1.
        neg_source: Where the negatives come from: ``'history'`` (the negative models' outputs),
            ``'input'`` (the degraded input ``lq``) or ``'both'``. Defaults to ``'history'``.
        vgg_type: ``'vgg11'``, ``'vgg13'``, ``'vgg16'`` or ``'vgg19'``. Defaults to ``'vgg19'``.
        use_input_norm: Normalise VGG inputs by the ImageNet mean/std. Defaults to False.
        range_norm: Images are in [-1, 1]: map them to [0, 1] for VGG. Defaults to False.
        rec_loss: ``'l1'``, ``'charbonnier'``, ``'mse'`` (BasicSR's losses) or ``'ssim'`` (``1 - SSIM``).
            Defaults to ``'l1'``.
        reduction: ``'mean'`` or ``'sum'`` for the reconstruction term. Defaults to ``'mean'``.
        vgg_weights: ``'imagenet'`` (torchvision's cached file) or the path of a local copy.
            Defaults to ``'imagenet'``.
        vgg_fallback: ``'error'`` or, for demos and tests only, ``'random'`` (see :class:`VGGFeatures`).
            Defaults to ``'error'``.
        channels_last: Channels-last VGG: ``true``, ``false`` or ``'auto'`` (on CPU). Defaults to ``'auto'``.
    """

    OPTIONS = {  # the shared part of every loss's option schema (MCLIRModel checks train.pixel_opt with it)
        **VGG_LOSS_OPTIONS,
        'loss_weight': Number(low=0),
        'neg_weight': Number(low=0),
        'rec_loss': Choice(*REC_LOSSES),
        'reduction': Choice('mean', 'sum', 'none'),
    }
    # What the criterion reads; a loss that supports them sets them (SPNLoss: neg_weight auto, uncertainty weighting)
    auto_neg_weight = False
    uncertainty_weighting = False
    ratio_range: tuple[float, float] | None = None  # the authors' range of l_neg / l_rec, if they give one
    # Whether S is the mean over the negatives of one score per negative: then S on k negatives drawn uniformly
    # without replacement is unbiased for S on all N (mclir.neg_per_step; ContrastiveCriterion refuses k < N otherwise)
    mean_over_negatives = False
    # The precision of VGG on the negatives (for the ratio and InfoNCE forms also on the target, which shares their
    # frozen batch): the bank's mclir.hook.precision, set by ContrastiveCriterion; None = the caller's autocast
    negative_dtype: torch.dtype | None = None
    DEFAULT_LAYER_WEIGHTS: Mapping[str, float] = {}  # a subclass's layer_weights when it is given none

    def __init__(self, layer_weights: Mapping[str, float], loss_weight: float = 1.0, neg_weight: float = 0.1,
                 neg_source: str = 'history', vgg_type: str = 'vgg19', use_input_norm: bool = False,
                 range_norm: bool = False, rec_loss: str = 'l1', reduction: str = 'mean', vgg_weights: str = 'imagenet',
                 vgg_fallback: str = 'error', channels_last: bool | str = 'auto') -> None:
        check_options({**ContrastiveLoss.OPTIONS, **NEG_SOURCE_OPTION}, locals(), type(self).__name__)
        super().__init__()
        self.layer_weights = dict(layer_weights)
        self.loss_weight = float(loss_weight)
        self.neg_weight = float(neg_weight)
        self.neg_source = neg_source
        self.range_norm = range_norm
        self.cri_rec = build_loss({'type': REC_LOSSES[rec_loss], 'loss_weight': 1.0, 'reduction': reduction})
        self.vgg = VGGFeatures(self.layer_weights, vgg_type=vgg_type, weights=vgg_weights, fallback=vgg_fallback,
                               use_input_norm=use_input_norm, range_norm=range_norm, channels_last=channels_last)

    def split_arguments(self, arguments: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """A subclass's ``__init__`` arguments (its ``locals()``), checked against its ``OPTIONS`` and split.

        Returns:
            ``(own, base)``: the subclass's own options, checked (numbers as float), and the keyword arguments of
            :class:`ContrastiveLoss` among ``arguments``, ``layer_weights`` None replaced by the class's
            ``DEFAULT_LAYER_WEIGHTS``.
        """
        checked = check_options(self.OPTIONS, arguments, type(self).__name__)
        base = {name: arguments[name] for name in BASE_ARGUMENTS if name in arguments}
        if base.get('layer_weights') is None:
            base['layer_weights'] = self.DEFAULT_LAYER_WEIGHTS
        return {name: value for name, value in checked.items() if name not in base}, base

    # ------------------------------------------------------------------ the one method a loss implements
    def score(self, pred: torch.Tensor, target: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """The unweighted negative score ``S`` (0-d), ``l_neg = neg_weight * S``, the amount subtracted.

        Args:
            pred: Output images (B, C, H, W) (clips arrive as B*T frames).
            target: Ground truth, the same shape.
            negatives: The gathered negatives, detached, (K, *pred.shape).
        """
        raise NotImplementedError(f'{type(self).__name__} must implement score(pred, target, negatives).')

    # ------------------------------------------------------------------ shared
    @property
    def uses_history(self) -> bool:
        """Whether the loss needs the history-negative models' outputs."""
        return self.neg_source in ('history', 'both')

    def reconstruction(self, pred: torch.Tensor, target: torch.Tensor,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
        """The weighted reconstruction term ``loss_weight * rec_loss(pred, target)``."""
        if weight is not None and pred.dim() == 5:  # BasicSR's weighted mean reads dim 1 as channels: use frames
            pred, target, weight = frames(pred), frames(target), frames(weight)
        return self.loss_weight * self.cri_rec(pred, target, weight)

    def uncertainty_weight(self, negatives: torch.Tensor) -> torch.Tensor | None:
        """``w = U / mean(U)``, ``U = mean_c std_i(n_i)``, shape (B, [T,] 1, H, W); None without the option or with
        N < 2 negatives (see ``SPNLoss``'s ``uncertainty_weighting``)."""
        if not self.uncertainty_weighting or negatives.shape[0] < 2:
            return None
        with torch.no_grad():
            spread = negatives.float().std(dim=0).mean(dim=-3, keepdim=True)
            return spread / spread.mean().clamp_min(1e-12)

    def _missing_negatives_message(self) -> str:
        return (f'{type(self).__name__} was called without the history negatives\' outputs. Pass '
                '`negatives=bank(lq)` (HistoryNegatives, or hook.forward_negatives(lq)); under BasicSR, set '
                '`model_type: MCLIRModel` and an `mclir:` block naming your previous model type as `base_model` '
                '(README, "Turn a BasicSR option file into an SPN one")'
                + (', or set neg_source: input.' if 'neg_source' in self.OPTIONS else '.'))

    def check_negatives(self, pred: torch.Tensor, negatives: Negatives) -> torch.Tensor:
        """``negatives`` as one (N, *pred.shape) tensor, with errors for missing or misshapen ones."""
        if negatives is None or (not torch.is_tensor(negatives) and len(negatives) == 0):
            raise RuntimeError(self._missing_negatives_message())
        negatives = negatives if torch.is_tensor(negatives) else torch.stack(list(negatives))
        if negatives.dim() != pred.dim() + 1 or negatives.shape[1:] != pred.shape or negatives.shape[0] == 0:
            raise ValueError(f'{type(self).__name__}: negatives must have shape (N, {", ".join(map(str, pred.shape))}) '
                             f'with N >= 1, got {tuple(negatives.shape)}.')
        return negatives

    def gather_negatives(self, pred: torch.Tensor, negatives: Negatives = None,
                         lq: torch.Tensor | None = None) -> torch.Tensor:
        """The K negatives of ``neg_source`` as one detached (K, *pred.shape) tensor.

        Args:
            pred: Output, (B, C, H, W) or (B, T, C, H, W).
            negatives: History negatives' outputs, (N, *pred.shape) or a sequence of N tensors of pred's shape.
            lq: The degraded input, (B, C, h, w) or a clip; resized bicubically to (H, W) when the sizes differ.
        """
        parts = []
        if self.uses_history:
            parts.append(self.check_negatives(pred, negatives).detach())
        if self.neg_source in ('input', 'both'):
            if lq is None:
                raise RuntimeError(f'{type(self).__name__} (neg_source={self.neg_source!r}) needs the degraded input: '
                                   'pass `lq=` (MCLIRModel passes the batch input), or set neg_source: history.')
            parts.append(self.resize_input(lq, pred).unsqueeze(0))
        return torch.cat(parts).to(pred.dtype)

    def resize_input(self, lq: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """``lq`` at ``pred``'s size: bicubic (align_corners=False), clamped to the image range; detached."""
        if lq.dim() == 5 and pred.dim() == 4:  # a clip in, its centre frame out (EDVR)
            lq = lq[:, lq.shape[1] // 2]
        if lq.shape[:pred.dim() - 2] != pred.shape[:pred.dim() - 2]:
            raise ValueError(f'{type(self).__name__}: lq has batch/channels {tuple(lq.shape[:-2])} but the output '
                             f'{tuple(pred.shape[:-2])}; pass the input of this batch.')
        lq = lq.detach()
        if lq.shape[-2:] == pred.shape[-2:]:
            return lq
        low = -1.0 if self.range_norm else 0.0
        resized = F.interpolate(frames(lq), size=pred.shape[-2:], mode='bicubic', align_corners=False)
        return resized.clamp_(low, 1.0).reshape(*lq.shape[:-2], *pred.shape[-2:])

    def features(self, pred: torch.Tensor, target: torch.Tensor,
                 negatives: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                                   dict[str, torch.Tensor]]:
        """VGG features ``(of pred with grad, of target (B, ...), of negatives (K, B, ...))``; one frozen batch."""
        num_neg, batch = negatives.shape[0], pred.shape[0]
        feats = self.vgg(pred)
        # never part of the graph (no_grad, not inference_mode: they may be saved for backward)
        with torch.no_grad(), precision_context(self.negative_dtype, pred.device.type):
            frozen = self.vgg(torch.cat([target.detach().to(pred.dtype), negatives.flatten(0, 1)]))
        pos = {k: v[:batch] for k, v in frozen.items()}
        neg = {k: v[batch:].unflatten(0, (num_neg, batch)) for k, v in frozen.items()}
        return feats, pos, neg

    def negative_score(self, pred: torch.Tensor, target: torch.Tensor, negatives: Negatives = None,
                       lq: torch.Tensor | None = None) -> torch.Tensor:
        """``S`` for raw arguments: the negatives gathered and checked, clips flattened to frames for VGG."""
        gathered = self.gather_negatives(pred, negatives, lq)
        if pred.dim() == 5:
            gathered, pred, target = gathered.flatten(1, 2), frames(pred), frames(target)
        return self.score(pred, target, gathered)

    def negative_term(self, pred: torch.Tensor, target: torch.Tensor, negatives: Negatives = None,
                      lq: torch.Tensor | None = None) -> torch.Tensor:
        """``l_neg = neg_weight * S``, the amount subtracted from the loss (0-d; 0 without computing S when the
        weight is 0)."""
        if self.neg_weight == 0:
            return pred.new_zeros(())
        return self.neg_weight * self.negative_score(pred, target, negatives, lq)

    def terms(self,
              pred: torch.Tensor,
              target: torch.Tensor,
              negatives: Negatives = None,
              weight: torch.Tensor | None = None,
              lq: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(l_rec, l_neg)`` on the whole batch; the loss is ``l_rec - l_neg``.

        Args:
            pred: Output, (B, C, H, W) or a clip (B, T, C, H, W).
            target: Ground truth, pred's shape.
            negatives: History negatives' outputs on the same input, (N, *pred.shape) or N tensors of pred's shape;
                needed for ``neg_source`` ``'history'``/``'both'`` (SPN: always).
            weight: Optional element-wise weight of the reconstruction term, as in BasicSR's losses; by default the
                uncertainty weight when the loss has ``uncertainty_weighting``.
            lq: The degraded input; needed for ``neg_source`` ``'input'``/``'both'``.
        """
        if self.uses_history and (self.neg_weight or self.auto_neg_weight or self.uncertainty_weighting):
            negatives = self.check_negatives(pred, negatives)
        if weight is None and negatives is not None and torch.is_tensor(negatives):
            weight = self.uncertainty_weight(negatives)
        return self.reconstruction(pred, target, weight), self.negative_term(pred, target, negatives, lq)

    def forward(self,
                pred: torch.Tensor,
                target: torch.Tensor,
                negatives: Negatives = None,
                weight: torch.Tensor | None = None,
                lq: torch.Tensor | None = None) -> torch.Tensor:
        """Return ``l_rec - l_neg`` (see :meth:`terms`)."""
        l_rec, l_neg = self.terms(pred, target, negatives, weight, lq)
        return l_rec - l_neg

    def extra_repr(self) -> str:
        source = f', neg_source={self.neg_source!r}' if 'neg_source' in self.OPTIONS else ''
        return (f'loss_weight={self.loss_weight}, neg_weight={self.neg_weight}{source}, '
                f'layer_weights={self.layer_weights}, vgg={self.vgg.vgg_type} ({self.vgg.weights_source})')


BASE_ARGUMENTS = tuple(inspect.signature(ContrastiveLoss.__init__).parameters)[1:]  # all but self


class ContrastCostLoss(ContrastiveLoss):
    """A loss whose negative term is a cost ``C`` to minimise, summed over VGG layers (CR's ratio, InfoNCE).

    ``S = -C`` (so ``l_neg = -neg_weight * C`` is negative and the loss is ``l_rec + neg_weight * C``), with
    ``C = sum_l w_l * layer_cost(phi_l(pred), phi_l(target), phi_l(n_1..K))`` computed in float32 whatever the
    autocast dtype. Subclasses implement :meth:`layer_cost` only.
    """

    def score(self, pred: torch.Tensor, target: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """``S = -C``: the cost is added to the loss, ``l_neg = -neg_weight * C``."""
        return -self.contrast(pred, target, negatives)

    def contrast(self, pred: torch.Tensor, target: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """``C = sum_l w_l * layer_cost(...)`` over ``layer_weights`` (0-d, float32)."""
        feats, pos, neg = self.features(pred, target, negatives)
        total = pred.new_zeros((), dtype=torch.float32)
        for layer, weight in self.layer_weights.items():
            total = total + weight * self.layer_cost(feats[layer].float(), pos[layer].float(), neg[layer].float())
        return total

    def layer_cost(self, anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """The cost at one layer (0-d).

        Args:
            anchor: The output's features (B, C, H, W), with grad.
            positive: The target's features, the same shape, constant.
            negatives: The negatives' features (K, B, C, H, W), constant.
        """
        raise NotImplementedError(f'{type(self).__name__} must implement layer_cost(anchor, positive, negatives).')


NegativeContrastLoss = ContrastiveLoss  # the base's earlier name (kept for older code)
