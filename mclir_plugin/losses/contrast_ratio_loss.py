"""CR, the ratio-form contrastive regularisation of AECR-Net (Wu et al., CVPR 2021), with history negatives.

H. Wu et al., *Contrastive Learning for Compact Single Image Dehazing*, CVPR 2021 (arXiv:2104.09367; code
https://github.com/GlassyWu/AECR-Net, ``CR.py``, class ``ContrastLoss``). The output is pulled towards the
ground truth and pushed away from the negatives, layer by layer, as a ratio of VGG distances:

.. math::

    L = w \\, L_{rec}(\\hat y, y) + \\lambda \\sum_{l} w_l \\, \\frac{d^{+}_l}{d^{-}_l + \\epsilon}

    d^{+}_l = d(\\phi_l(\\hat y), \\phi_l(y)), \\quad
    d^{-}_l = \\frac{1}{K} \\sum_{k=1}^{K} d(\\phi_l(\\hat y), \\phi_l(n_k)), \\quad
    d(a, b) = \\operatorname{mean} \\lvert a - b \\rvert

with :math:`\\phi_l` frozen VGG19 features at relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (AECR-Net's slices
``features[0:2], [2:7], [7:12], [12:21], [21:30]``), :math:`w_l` = 1/32, 1/16, 1/8, 1/4, 1 and
:math:`\\epsilon` = 1e-7, as in AECR-Net's code; each ``d`` is the mean over B*C*H*W (``nn.L1Loss``), so the ratio
is taken on batch-averaged distances, not per sample.

Caveats up front:

* Negatives: AECR-Net uses one, the hazy input (``neg_source='input'``); its authors say the paper averaged about
  ten. Here the K negatives are the history models' outputs (``'history'``, default), the input, or both, and their
  distances are **averaged in the denominator** (the input counts as one more negative). For super-resolution the
  input is smaller than the output: it is upsampled bicubically (see :mod:`.contrastive_base`).
* Defaults follow AECR-Net's code, not torchvision's conventions: VGG19 and **no ImageNet normalisation**
  (``use_input_norm=False``). ``neg_weight`` (AECR-Net's beta) defaults to 0.1, the value the paper reports; the
  released script's default is 0. Users of AECR-Net report that CR can dominate L1; watch ``l_neg / l_pix``.
* History negatives sit close to the network (a refresh with decay 0.1 is 90% a snapshot, and the start blend
  keeps 90% of it), so the denominator is small and the ratio large and steep, unlike with the hazy input: start
  with a smaller ``neg_weight`` than AECR-Net's, or use ``'both'`` so that the input keeps the denominator away
  from 0. (In ``examples/plain_pytorch_spn.py --loss cr``, random VGG19, ``neg_weight`` 0.01, the
  reconstruction loss rose over the first 20 iterations.)
* The ratio is computed in float32 whatever the autocast dtype (an eps of 1e-7 underflows in half precision).
* In the ``(l_rec, l_neg)`` convention of the family, ``l_neg = -neg_weight * CR`` is negative: the loss is
  ``l_rec - l_neg`` = ``l_rec + neg_weight * CR``.
"""
from __future__ import annotations

from typing import Mapping

import torch
from basicsr.utils.registry import LOSS_REGISTRY

from mclir_plugin.losses.contrastive_base import NEG_SOURCE_OPTION, ContrastCostLoss
from mclir_plugin.utils.option_schema import Number

CR_LAYER_WEIGHTS = {'relu1_1': 1 / 32, 'relu2_1': 1 / 16, 'relu3_1': 1 / 8, 'relu4_1': 1 / 4, 'relu5_1': 1.0}
CR_EPS = 1e-7


@LOSS_REGISTRY.register()
class ContrastRatioLoss(ContrastCostLoss):
    """AECR-Net's contrastive regularisation (ratio of VGG L1 distances) plus a reconstruction term.

    Args:
        loss_weight: Weight ``w`` of the reconstruction term. Defaults to 1.0.
        neg_weight: ``lambda`` (AECR-Net's beta); 0 disables the term. Defaults to 0.1.
        neg_source: ``'history'``, ``'input'`` (AECR-Net's choice) or ``'both'``. Defaults to ``'history'``.
        layer_weights: ``{vgg layer: w_l}``. Defaults to ``{relu1_1: 1/32, relu2_1: 1/16, relu3_1: 1/8,
            relu4_1: 1/4, relu5_1: 1}``.
        eps: ``epsilon`` of the denominator. Defaults to 1e-7.
        use_input_norm: ImageNet mean/std normalisation of VGG inputs. Defaults to False (as AECR-Net).
        vgg_type, range_norm, rec_loss, reduction, vgg_weights, vgg_fallback, channels_last: As
            :class:`~mclir_plugin.losses.contrastive_base.ContrastiveLoss`'s, with its defaults.
    """

    OPTIONS = {**ContrastCostLoss.OPTIONS, **NEG_SOURCE_OPTION,
               'eps': Number(low=0, low_open=True, note='it keeps the ratio finite')}
    DEFAULT_LAYER_WEIGHTS = CR_LAYER_WEIGHTS

    def __init__(self, loss_weight: float = 1.0, neg_weight: float = 0.1, neg_source: str = 'history',
                 layer_weights: Mapping[str, float] | None = None, eps: float = CR_EPS, vgg_type: str = 'vgg19',
                 use_input_norm: bool = False, range_norm: bool = False, rec_loss: str = 'l1',
                 reduction: str = 'mean', vgg_weights: str = 'imagenet', vgg_fallback: str = 'error',
                 channels_last: bool | str = 'auto') -> None:
        own, base = self.split_arguments(locals())
        super().__init__(**base)
        self.eps = own['eps']

    def layer_cost(self, anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """``d(phi_l(pred), phi_l(target)) / (mean_k d(phi_l(pred), phi_l(n_k)) + eps)``, summed by
        :meth:`~mclir_plugin.losses.contrastive_base.ContrastCostLoss.contrast` into ``CR``."""
        d_pos = (anchor - positive).abs().mean()
        # every negative has the anchor's shape: the mean over (K, B, C, H, W) is the mean of the K distances
        d_neg = (anchor.unsqueeze(0) - negatives).abs().mean()
        return d_pos / (d_neg + self.eps)
