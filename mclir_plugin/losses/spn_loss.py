"""SPN, the Self-Prior guided Negative loss of MCLIR (Wu et al., AAAI 2024).

The restored image is pulled towards the ground truth and pushed away, in VGG feature space, from the outputs of
N *negative* models (lagged copies of the network itself, see :mod:`mclir_plugin.hooks`):

.. math::

    L = w \\, L_{rec}(\\hat y, y) - \\lambda \\frac{1}{N} \\sum_{i=1}^{N} \\sum_{l} \\alpha_l \\,
        \\operatorname{mean} \\lvert \\phi_l(\\hat y) - \\phi_l(n_i) \\rvert

with :math:`\\hat y` the output, :math:`n_i` the i-th negative's output on the same input, :math:`\\phi_l` frozen
VGG16 features after ReLU at layer l (relu1_2, relu2_2, relu3_3 with :math:`\\alpha` = 0.2, 0.3, 0.5 by default),
each distance the mean over B*C*H*W as ``torch.nn.L1Loss`` gives it. This is the official code's loss (the README's
``+`` sign is a typo; ``docs/mclir_method.md`` §2).

Caveats up front:

* The loss needs the negatives' outputs. A plain BasicSR model calls ``cri_pix(output, gt)`` without them; that is
  an error that names ``model_type: MCLIRModel`` (which puts a
  :class:`~mclir_plugin.losses.contrastive_criterion.ContrastiveCriterion` around the loss in ``cri_pix``).
* One :class:`~mclir_plugin.losses.contrastive_base.ContrastiveLoss`: SPN implements only the score
  :meth:`SPNLoss.score` (the VGG distance); ``neg_weight: auto`` and ``uncertainty_weighting`` are options of this
  loss that the criterion applies.
* No gradient reaches the negatives or VGG: their features are computed under ``no_grad`` from detached inputs.
* :math:`\\phi(\\hat y)` is computed once per step whatever N is, and the N negatives go through VGG as one
  batch; the official code recomputes it (and back-propagates through it) once per negative. The gradient is the
  same.
* The negative term is unbounded below; only a small :math:`\\lambda` keeps it in check. The authors tune
  :math:`\\lambda` so that :math:`\\lambda L_{neg}` stays at 0.01-0.1 of :math:`L_{rec}`; MCLIRModel logs that
  ratio as ``l_neg_ratio``.
"""
from __future__ import annotations

from typing import Mapping

import torch
from basicsr.utils.registry import LOSS_REGISTRY

from mclir_plugin.losses.contrastive_base import ContrastiveLoss
from mclir_plugin.utils.option_schema import AnyOf, Boolean, Choice, Integer, Number
from mclir_plugin.utils.precision import precision_context

DEFAULT_LAYER_WEIGHTS = {'relu1_2': 0.2, 'relu2_2': 0.3, 'relu3_3': 0.5}


class MeanAbsDistance(torch.autograd.Function):
    """``mean_{i,b,c,h,w} |f - n_i|`` for features ``f`` (B, C, H, W) and constant negatives ``n`` (N, B, C, H, W).

    The mean over (N, B, C, H, W) equals the mean over i of the per-negative L1 means. Written as a function so that
    backward keeps only ``f`` and ``n`` (which exist anyway) rather than N differences of the size of ``f``, as
    autograd through ``abs`` would: ``d/df = sum_i sign(f - n_i) / numel(n)``, computed one negative at a time.
    """

    @staticmethod
    def forward(ctx, feats: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(feats, negatives)
        acc = torch.promote_types(feats.dtype, torch.float32)  # bf16/fp16 features: accumulate in fp32
        total = feats.new_zeros((), dtype=acc)
        for neg in negatives:
            total = total + (feats - neg).abs().sum(dtype=acc)
        return (total / negatives.numel()).to(feats.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        feats, negatives = ctx.saved_tensors
        grad = torch.zeros_like(feats)
        for neg in negatives:
            grad += torch.sign(feats - neg)
        return grad * (grad_output / negatives.numel()), None


@LOSS_REGISTRY.register()
class SPNLoss(ContrastiveLoss):
    """Self-Prior guided Negative loss: reconstruction minus a weighted VGG distance to history negatives.

    Args:
        loss_weight: Weight ``w`` of the reconstruction term, as in BasicSR's ``L1Loss``. Defaults to 1.0.
        neg_weight: ``lambda``, the weight of the negative term (the official FFA-Net setting is 0.001).
            0 disables the term (and skips VGG). ``'auto'``: MCLIRModel measures the mean reconstruction term
            ``R`` and the mean VGG distance ``D`` over the first ``auto_iters`` iterations (the negative term is
            off meanwhile) and fixes ``lambda = auto_ratio * R / D``. Defaults to 0.001.
        layer_weights: ``{vgg layer: alpha}``. Defaults to ``{relu1_2: 0.2, relu2_2: 0.3, relu3_3: 0.5}``.
        vgg_type: ``vgg16`` (the paper's) or ``vgg11``/``vgg13``/``vgg19``. Defaults to ``'vgg16'``.
        use_input_norm: Normalise VGG inputs by the ImageNet mean/std. Defaults to True.
        range_norm: Map VGG inputs from [-1, 1] to [0, 1] first. Defaults to False.
        rec_loss: Reconstruction criterion, ``'l1'``, ``'charbonnier'`` or ``'mse'`` (BasicSR's losses), or
            ``'ssim'`` (``1 - SSIM``, IDT's loss). Defaults to ``'l1'``.
        reduction: ``'mean'`` or ``'sum'`` for the reconstruction term. Defaults to ``'mean'``.
        vgg_weights: ``'imagenet'`` (torchvision's cached file) or a path to a local copy. Defaults to
            ``'imagenet'``.
        vgg_fallback: ``'error'`` or, for demos only, ``'random'``: what to do when the ImageNet file is
            missing (see :class:`VGGFeatures`). Defaults to ``'error'``.
        channels_last: Run VGG in channels-last memory format (same maths): ``true``, ``false``, or ``'auto'``,
            on CPU only, where it is faster (see :class:`VGGFeatures`). Defaults to ``'auto'``.
        auto_ratio: Target ``lambda * D / R`` of ``neg_weight: auto``. Defaults to 0.05.
        auto_iters: Calibration iterations of ``neg_weight: auto``. Defaults to 100.
        uncertainty_weighting: EXPERIMENTAL, not the paper's method. The journal extension of MCLIR describes an
            "uncertainty-aware reconstruction loss" from the negatives' statistics but publishes no formula; this
            is this plugin's guess at it. With N >= 2 negatives, the per-pixel spread
            ``U = mean_c std_i(n_i)`` of their outputs weights the reconstruction term,
            ``w = U / mean(U)`` (no gradient), ``L_rec = sum(w |out - gt|) / sum(w)`` (BasicSR's weighted
            reduction): pixels on which the history disagrees count more. Needs the negatives, so it applies on
            the steps that compute the negative term. Defaults to False.
    """

    OPTIONS = {  # the schema of its option block (MCLIRModel checks train.pixel_opt with it)
        **ContrastiveLoss.OPTIONS,
        'neg_weight': AnyOf(Number(low=0), Choice('auto')),
        'auto_ratio': Number(low=0, low_open=True),
        'auto_iters': Integer(low=1),
        'uncertainty_weighting': Boolean(),
    }
    ratio_range = (0.01, 0.1)  # the authors keep l_neg / l_rec there
    mean_over_negatives = True  # S = (1/N) sum_i s_i: a uniform draw of k negatives gives an unbiased S
    DEFAULT_LAYER_WEIGHTS = DEFAULT_LAYER_WEIGHTS  # the module's, for layer_weights: ~

    def __init__(self, loss_weight: float = 1.0, neg_weight: float = 0.001,
                 layer_weights: Mapping[str, float] | None = None, vgg_type: str = 'vgg16', use_input_norm: bool = True,
                 range_norm: bool = False, rec_loss: str = 'l1', reduction: str = 'mean', vgg_weights: str = 'imagenet',
                 vgg_fallback: str = 'error', channels_last: bool | str = 'auto', auto_ratio: float = 0.05,
                 auto_iters: int = 100, uncertainty_weighting: bool = False) -> None:
        own, base = self.split_arguments(locals())  # the arguments by name, as in the option block
        auto = neg_weight == 'auto'
        if uncertainty_weighting and rec_loss == 'ssim':
            raise ValueError('SPNLoss: uncertainty_weighting needs a per-pixel reconstruction loss (l1, charbonnier '
                             'or mse), not ssim.')
        super().__init__(**{**base, 'neg_weight': 0.0 if auto else neg_weight})  # auto: 0 until calibrated
        self.auto_neg_weight = auto
        self.auto_ratio, self.auto_iters = own['auto_ratio'], own['auto_iters']
        self.uncertainty_weighting = own['uncertainty_weighting']

    def negative_distance(self, pred: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """``(1/N) sum_i sum_l alpha_l mean|phi_l(pred) - phi_l(n_i)|`` for negatives of shape (N, *pred.shape)."""
        num_neg = negatives.shape[0]
        feats = self.vgg(pred)
        # constants of the graph (not inference tensors: MeanAbsDistance saves them), at mclir.hook.precision
        with torch.no_grad(), precision_context(self.negative_dtype, pred.device.type):
            neg_feats = self.vgg(negatives.detach().flatten(0, 1))
        distance = pred.new_zeros(())
        for layer, alpha in self.layer_weights.items():
            neg = neg_feats[layer].unflatten(0, (num_neg, pred.shape[0]))
            distance = distance + alpha * MeanAbsDistance.apply(feats[layer], neg)
        return distance

    def score(self, pred: torch.Tensor, target: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """``S`` = :meth:`negative_distance` (the target plays no part in SPN)."""
        return self.negative_distance(pred, negatives)
