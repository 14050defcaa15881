"""Evaluation metrics registered in BasicSR's ``METRIC_REGISTRY``: the papers' float protocols."""
from mclir_plugin.metrics.float_metrics import (calculate_psnr_float, calculate_ssim_dehazeformer,
                                                calculate_ssim_ffanet, is_float_protocol)

__all__ = ['calculate_psnr_float', 'calculate_ssim_dehazeformer', 'calculate_ssim_ffanet', 'is_float_protocol']
