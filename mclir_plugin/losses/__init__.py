"""Losses registered in BasicSR's ``LOSS_REGISTRY``: :class:`SPNLoss` (MCLIR), its peers :class:`ContrastRatioLoss`
(AECR-Net's CR) and :class:`InfoNCELoss` (PCL-SR), all :class:`ContrastiveLoss` subclasses; :class:`SSIMLoss`; the VGG
feature extractor they share; and :class:`ContrastiveCriterion`, the training-step criterion MCLIRModel puts in
``cri_pix``."""
from mclir_plugin.losses.contrast_ratio_loss import ContrastRatioLoss
from mclir_plugin.losses.contrastive_base import ContrastiveLoss, NegativeContrastLoss
from mclir_plugin.losses.contrastive_criterion import ContrastiveCriterion
from mclir_plugin.losses.infonce_loss import InfoNCELoss
from mclir_plugin.losses.spn_loss import SPNLoss
from mclir_plugin.losses.ssim_loss import SSIMLoss
from mclir_plugin.losses.vgg_features import VGGFeatures, vgg_layer_names

__all__ = ['ContrastRatioLoss', 'ContrastiveCriterion', 'ContrastiveLoss', 'InfoNCELoss', 'NegativeContrastLoss',
           'SPNLoss', 'SSIMLoss', 'VGGFeatures', 'vgg_layer_names']
