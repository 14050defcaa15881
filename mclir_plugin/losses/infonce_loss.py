"""The InfoNCE form of PCL-SR (Wu, Jiang, Liu, TNNLS 2023) on VGG features, with history negatives.

G. Wu, J. Jiang, X. Liu, *A Practical Contrastive Learning Framework for Single-Image Super-Resolution*, IEEE
TNNLS 2023 (code https://github.com/Aitical/PCL-SISR, ``src/loss/cl.py``, class ``VGGInfoNCE``, mode
``InfoNCE``). Per layer, the output's features are compared with the ground truth's (the positive) and the K
negatives' by a channel cosine similarity averaged over locations, and the positive is classified among them with a
cross-entropy:

.. math::

    s^{l}_{b}(x) = \\frac{1}{HW} \\sum_{h,w} \\cos\\big(\\phi_l(\\hat y)_{b,:,h,w}, \\phi_l(x)_{b,:,h,w}\\big)

    L = w \\, L_{rec}(\\hat y, y) + \\lambda \\sum_{l} w_l \\frac{1}{B} \\sum_{b} \\ell^{l}_{b}

    \\ell^{l}_{b} = -\\log \\frac{e^{s^{l}_{b}(y) / \\tau}}
        {e^{s^{l}_{b}(y) / \\tau} + \\sum_{k=1}^{K} e^{s^{l}_{b}(n_k) / \\tau}}

with :math:`\\phi_l` frozen VGG19 features (relu1_1, relu3_1, relu5_1 by default), :math:`w_l` their weights
(default 1/3 each) and :math:`\\tau` a temperature. ``similarity='pooled'`` instead takes the cosine of the
spatially averaged features, :math:`\\cos(\\bar\\phi_l(\\hat y)_b, \\bar\\phi_l(x)_b)`.

Caveats up front (how this differs from PCL's code):

* PCL divides by no temperature; the default ``temperature=1.0`` reproduces that. PCL averages the selected VGG
  slices with equal weights (``--cl_layer``, default ``0,2,4,6`` of which 0, 2, 4 exist: relu1_1, relu3_1,
  relu5_1); ``layer_weights`` generalises it. Like PCL, no ImageNet normalisation by default.
* PCL's negatives are the bicubic-upsampled LR input plus randomly blurred HR images (optionally shuffled within
  the batch), and its positives the HR plus sharpened copies. Here the positive is the ground truth alone and the
  negatives are the history models' outputs (``neg_source='history'``), the input (``'input'``, PCL's bicubic
  negative; torch bicubic with ``align_corners=False`` where PCL uses True) or both. Augmented positives,
  blurred and shuffled negatives are not implemented.
* The shipped PCL recipe (``rcanx4_PCL.sh``) embeds with a discriminator (``CL-patchD``), not VGG; this loss is the
  VGG embedding of the same code.
* Similarities and the cross-entropy are computed in float32. The loss is bounded below by 0 and, in the
  family's ``(l_rec, l_neg)`` convention, ``l_neg = -neg_weight * NCE`` is negative.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY

from mclir_plugin.losses.contrastive_base import NEG_SOURCE_OPTION, ContrastCostLoss
from mclir_plugin.utils.option_schema import Choice, Number

INFONCE_LAYER_WEIGHTS = {'relu1_1': 1 / 3, 'relu3_1': 1 / 3, 'relu5_1': 1 / 3}
SIMILARITIES = ('location', 'pooled')


@LOSS_REGISTRY.register()
class InfoNCELoss(ContrastCostLoss):
    """PCL's InfoNCE over VGG cosine similarities (positive: ground truth; negatives: history and/or input).

    Args:
        loss_weight: Weight ``w`` of the reconstruction term. Defaults to 1.0.
        neg_weight: ``lambda``; 0 disables the term. Defaults to 0.1.
        neg_source: ``'history'``, ``'input'`` or ``'both'``. Defaults to ``'history'``.
        layer_weights: ``{vgg layer: w_l}``. Defaults to ``{relu1_1: 1/3, relu3_1: 1/3, relu5_1: 1/3}``.
        temperature: ``tau`` > 0. Defaults to 1.0 (PCL's code: none).
        similarity: ``'location'`` (cosine per location, then the spatial mean: PCL) or ``'pooled'`` (cosine of
            the spatially averaged features). Defaults to ``'location'``.
        use_input_norm: ImageNet mean/std normalisation of VGG inputs. Defaults to False (as PCL).
        vgg_type, range_norm, rec_loss, reduction, vgg_weights, vgg_fallback, channels_last: As
            :class:`~mclir_plugin.losses.contrastive_base.ContrastiveLoss`'s, with its defaults.
    """

    OPTIONS = {**ContrastCostLoss.OPTIONS, **NEG_SOURCE_OPTION, 'temperature': Number(low=0, low_open=True),
               'similarity': Choice(*SIMILARITIES)}
    DEFAULT_LAYER_WEIGHTS = INFONCE_LAYER_WEIGHTS

    def __init__(self, loss_weight: float = 1.0, neg_weight: float = 0.1, neg_source: str = 'history',
                 layer_weights: Mapping[str, float] | None = None, temperature: float = 1.0,
                 similarity: str = 'location', vgg_type: str = 'vgg19', use_input_norm: bool = False,
                 range_norm: bool = False, rec_loss: str = 'l1', reduction: str = 'mean',
                 vgg_weights: str = 'imagenet', vgg_fallback: str = 'error',
                 channels_last: bool | str = 'auto') -> None:
        own, base = self.split_arguments(locals())
        super().__init__(**base)
        self.temperature, self.similarity = own['temperature'], own['similarity']

    def cosine(self, anchor: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """Similarity over the channel axis (dim -3), reduced over locations: shape ``anchor.shape[:-3]``."""
        if self.similarity == 'pooled':
            anchor, other = anchor.mean(dim=(-2, -1), keepdim=True), other.mean(dim=(-2, -1), keepdim=True)
        return (F.normalize(anchor, dim=-3) * F.normalize(other, dim=-3)).sum(dim=-3).mean(dim=(-2, -1))

    def layer_cost(self, anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """``mean_b CE([s(y), s(n_1), ..., s(n_K)] / tau, class 0)``, summed over the layers by
        :meth:`~mclir_plugin.losses.contrastive_base.ContrastCostLoss.contrast`."""
        s_pos = self.cosine(anchor, positive)                   # (B,)
        s_neg = self.cosine(anchor.unsqueeze(0), negatives)     # (K, B)
        logits = torch.cat([s_pos.unsqueeze(1), s_neg.t()], dim=1) / self.temperature
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return F.cross_entropy(logits, labels)
