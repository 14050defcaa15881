"""The common base of the negative-contrast losses: a reconstruction term plus a contrastive term in VGG space.

Every loss of this family has the shape

.. math::

    L = w \\, L_{rec}(\\hat y, y) + \\lambda \\, C(\\hat y, y, \\{n_k\\}_{k=1}^{K})

and reports it as the pair ``(l_rec, l_neg)`` with ``L = l_rec - l_neg``, i.e. ``l_neg = -lambda * C``: the
convention of :class:`~mclir_plugin.losses.spn_loss.SPNLoss` and of ``MCLIRModel``'s logs, where ``l_neg`` is the
amount *subtracted*. SPN's ``C`` is minus a distance (so its ``l_neg`` is positive); the ratio and InfoNCE forms
are positive costs, so their ``l_neg`` is negative.

Caveats up front:

* The negatives ``n_k`` come from the history-negative models (``neg_source='history'``, the MCLIR way), from the
  degraded input (``'input'``, the CR/PCL way) or both. The input is resized to the output's size when they
  differ (super-resolution): torch bicubic interpolation, ``align_corners=False``, clamped to the image range.
  That is not MATLAB's bicubic (antialiased, as BasicSR's datasets downscale with); it is only a negative.
* No gradient reaches the target, the negatives or VGG: their features are computed under ``no_grad``, in one
  VGG batch, from detached inputs. Only the output's features carry a graph.
* Subclasses implement :meth:`NegativeContrastLoss.contrast` on the gathered negatives; everything else (options,
  VGG with its offline weights and ``vgg_fallback``, negative plumbing, errors) lives here.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from basicsr.losses import build_loss
from torch import nn

from mclir_plugin.losses.vgg_features import VGG_LOSS_OPTIONS, VGGFeatures
from mclir_plugin.option_schema import Choice, Number, check_options

NEG_SOURCES = ('history', 'input', 'both')
_REC_LOSSES = {'l1': 'L1Loss', 'mse': 'MSELoss', 'charbonnier': 'CharbonnierLoss'}
Negatives = Optional[Union[torch.Tensor, Sequence[torch.Tensor]]]


class NegativeContrastLoss(nn.Module):
    """Base class: ``w * L_rec(pred, target) + neg_weight * C(pred, target, negatives)``.

    Args:
        layer_weights: ``{vgg layer: weight}`` (layer names as :func:`~mclir_plugin.losses.vgg_layer_names`).
        loss_weight: Weight ``w`` of the reconstruction term. Defaults to 1.0.
        neg_weight: ``lambda``, the weight of the contrastive term; 0 disables it (and skips VGG).
            Defaults to 0.1.
        neg_source: Where the negatives come from: ``'history'`` (the negative models' outputs),
            ``'input'`` (the degraded input ``lq``) or ``'both'``. Defaults to ``'history'``.
        vgg_type: ``'vgg11'``, ``'vgg13'``, ``'vgg16'`` or ``'vgg19'``. Defaults to ``'vgg19'``.
        use_input_norm: Normalise VGG inputs by the ImageNet mean/std. Defaults to False (as CR and PCL do).
        range_norm: Images are in [-1, 1]: map them to [0, 1] for VGG. Defaults to False.
        rec_loss: ``'l1'``, ``'charbonnier'`` or ``'mse'`` (BasicSR's losses). Defaults to ``'l1'``.
        reduction: ``'mean'`` or ``'sum'`` for the reconstruction term. Defaults to ``'mean'``.
        vgg_weights: ``'imagenet'`` (torchvision's cached file) or the path of a local copy.
            Defaults to ``'imagenet'``.
        vgg_fallback: ``'error'`` or, for demos and tests only, ``'random'`` (see :class:`VGGFeatures`).
            Defaults to ``'error'``.
        channels_last: Channels-last VGG: ``true``, ``false`` or ``'auto'`` (on CPU). Defaults to ``'auto'``.
    """

    OPTIONS = {  # the schema of its option block (MCLIRModel checks train.pixel_opt with it)
        **VGG_LOSS_OPTIONS,
        'loss_weight': Number(low=0),
        'neg_weight': Number(low=0),
        'neg_source': Choice(*NEG_SOURCES),
        'rec_loss': Choice(*_REC_LOSSES),
        'reduction': Choice('mean', 'sum', 'none'),
    }

    def __init__(self,
                 layer_weights: Mapping[str, float],
                 loss_weight: float = 1.0,
                 neg_weight: float = 0.1,
                 neg_source: str = 'history',
                 vgg_type: str = 'vgg19',
                 use_input_norm: bool = False,
                 range_norm: bool = False,
                 rec_loss: str = 'l1',
                 reduction: str = 'mean',
                 vgg_weights: str = 'imagenet',
                 vgg_fallback: str = 'error',
                 channels_last: bool | str = 'auto') -> None:
        check_options(NegativeContrastLoss.OPTIONS, locals(), type(self).__name__)  # the arguments, by name
        super().__init__()
        self.layer_weights = dict(layer_weights)
        self.loss_weight = float(loss_weight)
        self.neg_weight = float(neg_weight)
        self.neg_source = neg_source
        self.range_norm = range_norm
        self.cri_rec = build_loss({'type': _REC_LOSSES[rec_loss], 'loss_weight': 1.0, 'reduction': reduction})
        self.vgg = VGGFeatures(self.layer_weights, vgg_type=vgg_type, weights=vgg_weights, fallback=vgg_fallback,
                               use_input_norm=use_input_norm, range_norm=range_norm, channels_last=channels_last)

    @property
    def uses_history(self) -> bool:
        """Whether the loss needs the history-negative models' outputs."""
        return self.neg_source in ('history', 'both')

    def reconstruction(self, pred: torch.Tensor, target: torch.Tensor,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
        """The weighted reconstruction term ``loss_weight * rec_loss(pred, target)``."""
        return self.loss_weight * self.cri_rec(pred, target, weight)

    def gather_negatives(self, pred: torch.Tensor, negatives: Negatives = None,
                         lq: torch.Tensor | None = None) -> torch.Tensor:
        """The K negatives of ``neg_source`` as one detached (K, *pred.shape) tensor.

        Args:
            pred: Output, (B, C, H, W).
            negatives: History negatives' outputs, (N, B, C, H, W) or a sequence of N (B, C, H, W).
            lq: The degraded input, (B, C, h, w); resized bicubically to (H, W) when the sizes differ.
        """
        name, parts = type(self).__name__, []
        if self.uses_history:
            if negatives is None or (not torch.is_tensor(negatives) and len(negatives) == 0):
                raise RuntimeError(f'{name} (neg_source={self.neg_source!r}) was called without the history '
                                   "negatives' outputs: pass hook.forward_negatives(lq) as `negatives` (under "
                                   "BasicSR, use `model_type: MCLIRModel`), or set neg_source: input.")
            negatives = negatives if torch.is_tensor(negatives) else torch.stack(list(negatives))
            if negatives.dim() != pred.dim() + 1 or negatives.shape[1:] != pred.shape or negatives.shape[0] == 0:
                raise ValueError(f'{name}: negatives must have shape (N, {", ".join(map(str, pred.shape))}) with '
                                 f'N >= 1, got {tuple(negatives.shape)}.')
            parts.append(negatives.detach())
        if self.neg_source in ('input', 'both'):
            if lq is None:
                raise RuntimeError(f'{name} (neg_source={self.neg_source!r}) needs the degraded input: pass '
                                   '`lq=` (MCLIRModel must pass its self.lq), or set neg_source: history.')
            parts.append(self.resize_input(lq, pred).unsqueeze(0))
        return torch.cat(parts).to(pred.dtype)

    def resize_input(self, lq: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """``lq`` at ``pred``'s size: bicubic (align_corners=False), clamped to the image range; detached."""
        if lq.shape[:2] != pred.shape[:2]:
            raise ValueError(f'{type(self).__name__}: lq has batch/channels {tuple(lq.shape[:2])} but the output '
                             f'{tuple(pred.shape[:2])}; pass the input of this batch.')
        lq = lq.detach()
        if lq.shape[-2:] == pred.shape[-2:]:
            return lq
        low = -1.0 if self.range_norm else 0.0
        return F.interpolate(lq, size=pred.shape[-2:], mode='bicubic', align_corners=False).clamp_(low, 1.0)

    def features(self, pred: torch.Tensor, target: torch.Tensor,
                 negatives: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                                   dict[str, torch.Tensor]]:
        """VGG features ``(of pred with grad, of target (B, ...), of negatives (K, B, ...))``; one frozen batch."""
        num_neg, batch = negatives.shape[0], pred.shape[0]
        feats = self.vgg(pred)
        with torch.no_grad():  # never part of the graph (no_grad, not inference_mode: they may be saved for backward)
            frozen = self.vgg(torch.cat([target.detach().to(pred.dtype), negatives.flatten(0, 1)]))
        pos = {k: v[:batch] for k, v in frozen.items()}
        neg = {k: v[batch:].unflatten(0, (num_neg, batch)) for k, v in frozen.items()}
        return feats, pos, neg

    def contrast(self, pred: torch.Tensor, target: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """The unweighted contrastive term ``C`` (added to the loss) for gathered negatives (K, *pred.shape)."""
        raise NotImplementedError(f'{type(self).__name__} must implement contrast(pred, target, negatives).')

    def negative_term(self, pred: torch.Tensor, target: torch.Tensor, negatives: Negatives = None,
                      lq: torch.Tensor | None = None) -> torch.Tensor:
        """``l_neg = -neg_weight * C(pred, target, negatives)``, the amount subtracted from the loss (0-d)."""
        if self.neg_weight == 0:
            return pred.new_zeros(())
        gathered = self.gather_negatives(pred, negatives, lq)
        return -self.neg_weight * self.contrast(pred, target, gathered)

    def terms(self,
              pred: torch.Tensor,
              target: torch.Tensor,
              negatives: Negatives = None,
              weight: torch.Tensor | None = None,
              lq: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(l_rec, l_neg)``; the loss is ``l_rec - l_neg``.

        Args:
            pred: Output, (B, C, H, W).
            target: Ground truth, (B, C, H, W).
            negatives: History negatives' outputs on the same input, (N, B, C, H, W) or N x (B, C, H, W);
                needed for ``neg_source`` ``'history'``/``'both'``.
            weight: Optional element-wise weight of the reconstruction term, as in BasicSR's losses.
            lq: The degraded input; needed for ``neg_source`` ``'input'``/``'both'``.
        """
        return self.reconstruction(pred, target, weight), self.negative_term(pred, target, negatives, lq)

    def forward(self,
                pred: torch.Tensor,
                target: torch.Tensor,
                negatives: Negatives = None,
                weight: torch.Tensor | None = None,
                lq: torch.Tensor | None = None) -> torch.Tensor:
        """Return ``l_rec - l_neg`` = ``w * L_rec + neg_weight * C`` (see :meth:`terms`)."""
        l_rec, l_neg = self.terms(pred, target, negatives, weight, lq)
        return l_rec - l_neg

    def extra_repr(self) -> str:
        return (f'loss_weight={self.loss_weight}, neg_weight={self.neg_weight}, neg_source={self.neg_source!r}, '
                f'layer_weights={self.layer_weights}, vgg={self.vgg.vgg_type} ({self.vgg.weights_source})')
