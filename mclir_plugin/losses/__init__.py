"""Losses: :class:`SPNLoss` (registered in BasicSR's ``LOSS_REGISTRY``) and its VGG feature extractor."""
from mclir_plugin.losses.spn_loss import SPNLoss
from mclir_plugin.losses.vgg_features import VGGFeatures, vgg_layer_names

__all__ = ['SPNLoss', 'VGGFeatures', 'vgg_layer_names']
