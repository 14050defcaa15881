"""Losses registered in BasicSR's ``LOSS_REGISTRY``: :class:`SPNLoss` (MCLIR), its peers :class:`ContrastRatioLoss`
(AECR-Net's CR) and :class:`InfoNCELoss` (PCL-SR), :class:`SSIMLoss`, and the VGG feature extractor they share."""
from mclir_plugin.losses.contrast_ratio_loss import ContrastRatioLoss
from mclir_plugin.losses.contrastive_base import NegativeContrastLoss
from mclir_plugin.losses.infonce_loss import InfoNCELoss
from mclir_plugin.losses.spn_loss import SPNLoss
from mclir_plugin.losses.ssim_loss import SSIMLoss
from mclir_plugin.losses.vgg_features import VGGFeatures, vgg_layer_names

__all__ = ['ContrastRatioLoss', 'InfoNCELoss', 'NegativeContrastLoss', 'SPNLoss', 'SSIMLoss', 'VGGFeatures',
           'vgg_layer_names']
