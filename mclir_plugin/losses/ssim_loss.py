"""SSIM as a loss, ``1 - SSIM``: IDT's training loss (IDT minimises ``-SSIM``; the constant changes nothing).

SSIM is Wang et al.'s (TIP 2004) with an 11x11 Gaussian window (sigma 1.5) applied per channel, 'same' padding
with zeros as IDT's training code uses, ``C1 = 0.01^2``, ``C2 = 0.03^2`` for images in [0, 1]:

.. math::

    \\mathrm{SSIM}(x, y) = \\operatorname{mean}
        \\frac{(2 \\mu_x \\mu_y + C_1)(2 \\sigma_{xy} + C_2)}
             {(\\mu_x^2 + \\mu_y^2 + C_1)(\\sigma_x^2 + \\sigma_y^2 + C_2)}

with local means, variances and covariance from the Gaussian window. Evaluation SSIM (BasicSR's
``calculate_ssim``) works on uint8 images with 'valid' filtering, so values differ slightly from this loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """A normalised ``size x size`` Gaussian window."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g).float()


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM of two (B, C, H, W) batches in [0, 1], per channel with ``window`` (k x k)."""
    channels = x.shape[1]
    kernel = window.to(x).expand(channels, 1, *window.shape)
    pad = window.shape[-1] // 2

    def blur(t):
        return F.conv2d(t, kernel, padding=pad, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))


@LOSS_REGISTRY.register()
class SSIMLoss(nn.Module):
    """``loss_weight * (1 - SSIM(pred, target))`` (11x11 Gaussian, sigma 1.5, per channel).

    Args:
        loss_weight: Weight of the loss. Defaults to 1.0.
        reduction: Only ``'mean'`` (SSIM is a mean already). Defaults to ``'mean'``.
    """

    def __init__(self, loss_weight: float = 1.0, reduction: str = 'mean') -> None:
        super().__init__()
        if reduction != 'mean':
            raise ValueError(f"SSIMLoss supports reduction 'mean' only, got {reduction!r}.")
        self.loss_weight = loss_weight
        self.register_buffer('window', gaussian_window(), persistent=False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                **kwargs) -> torch.Tensor:
        if weight is not None:
            raise ValueError('SSIMLoss does not take an element-wise weight.')
        return self.loss_weight * (1 - ssim_map(pred, target, self.window).mean())
