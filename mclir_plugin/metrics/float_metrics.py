"""Upstream dehazing evaluation protocols as BasicSR metrics: PSNR and SSIM on the float output in [0, 1].

BasicSR's ``calculate_psnr``/``calculate_ssim`` work on uint8 images (``tensor2img`` rounds the output first).
DehazeFormer and FFA-Net report their tables on the float output instead; these metrics compute their formulas,
registered in ``METRIC_REGISTRY`` on import and chosen by function name in ``val.metrics``::

    val:
      metrics:
        psnr: {type: calculate_psnr, crop_border: 0, test_y_channel: false}   # BasicSR's uint8 protocol
        psnr_float: {type: calculate_psnr_float}                               # DehazeFormer's and FFA-Net's PSNR
        ssim_float: {type: calculate_ssim_dehazeformer}                        # or calculate_ssim_ffanet

* ``calculate_psnr_float``: ``10 log10(1 / MSE)`` over all pixels and the three RGB channels of the output clamped
  to [0, 1] (DehazeFormer's ``test.py``; FFA-Net's ``psnr`` is the same number, written ``20 log10(1 / RMSE)``).
* ``calculate_ssim_dehazeformer``: DehazeFormer's ``test.py``, i.e. ``pytorch_msssim.ssim(data_range=1)`` (11-tap
  Gaussian, sigma 1.5, K = (0.01, 0.03), "valid" filtering, mean over pixels then channels) on both images first
  averaged down by ``r = max(1, round(min(H, W) / 256))`` with ``adaptive_avg_pool2d`` to ``(int(H / r),
  int(W / r))``: SOTS-indoor's 620x460 images are compared at 310x230.
* ``calculate_ssim_ffanet``: FFA-Net's ``metrics.ssim``: both images clamped to [0, 1], an 11x11 Gaussian window
  (sigma 1.5) applied with zero padding of 5 (so the borders count, darkened by the padding), C1 = 0.01^2,
  C2 = 0.03^2, mean over channels and pixels, at full resolution.

All three work on RGB without a Y conversion (neither upstream converts) and crop nothing by default
(``crop_border`` crops that many pixels off each side first). They compute in float64, so a value does not depend
on the device; upstream's float32 arithmetic agrees to about 1e-5.

**Float inputs.** The metrics take the float output and ground truth as tensors (``(N, C, H, W)`` or ``(C, H, W)``)
or float arrays ``(H, W, C)``, in [0, 1]. During BasicSR validation, :mod:`mclir_plugin.models.validation` hands them the
model's float ``result``/``gt`` instead of the uint8 images (functions marked ``float_protocol``); ``tools/test.py``
does the same. Given a uint8 image (a model whose validation does not go through ``BaseModel.validation``), they
still compute their formula on ``img / 255`` and warn once, since the number is then quantised like BasicSR's.
Channel order does not matter (every formula treats the channels alike), so BasicSR's BGR images are fine.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from basicsr.utils import get_root_logger
from basicsr.utils.registry import METRIC_REGISTRY

WINDOW_SIZE = 11     # both upstreams: 11-tap Gaussian window, sigma 1.5, K = (0.01, 0.03), data range 1
WINDOW_SIGMA = 1.5
C1, C2 = 0.01 ** 2, 0.03 ** 2
_WARNED: set[str] = set()


def float_protocol(func: Callable) -> Callable:
    """Mark a metric function as wanting the float output (read by :func:`is_float_protocol`)."""
    func.float_protocol = True
    return func


def is_float_protocol(metric_type: Any) -> bool:
    """Whether the registered metric named ``metric_type`` takes float images (see the module docstring)."""
    if not isinstance(metric_type, str) or metric_type not in METRIC_REGISTRY:
        return False
    return bool(getattr(METRIC_REGISTRY.get(metric_type), 'float_protocol', False))


def _as_batch(img: Any, metric: str) -> torch.Tensor:
    """``img`` as a float64 ``(N, C, H, W)`` CPU tensor in its own range (uint8 arrays divided by 255, warned)."""
    if isinstance(img, torch.Tensor):
        out = img.detach().to('cpu', torch.float64)
        if out.dim() == 2:
            out = out[None, None]
        elif out.dim() == 3:
            out = out[None]
        if out.dim() != 4:
            raise ValueError(f'{metric}: expected a (N, C, H, W) or (C, H, W) tensor, got shape {tuple(img.shape)}.')
        return out
    array = np.asarray(img)
    if array.dtype.kind in 'ui':
        if metric not in _WARNED:
            _WARNED.add(metric)
            get_root_logger().warning(
                f'{metric} received a uint8 image, so its float protocol is computed on the quantised image '
                '(img / 255). Validate through BasicSR\'s BaseModel.validation or tools/test.py (both pass the '
                'float output), or use calculate_psnr/calculate_ssim for uint8 images.')
        array = array / 255.
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f'{metric}: expected an (H, W, C) image, got shape {array.shape}.')
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float64))[None]


def _pair(img: Any, img2: Any, crop_border: int, test_y_channel: bool, metric: str) -> tuple[torch.Tensor, ...]:
    """Both images as clamped float64 batches of equal shape, ``crop_border`` pixels cut off each side."""
    if test_y_channel:
        raise ValueError(f'{metric}: test_y_channel is not part of this protocol (its upstream evaluates RGB); '
                         'remove it from the metric in val.metrics, or use calculate_psnr/calculate_ssim for Y.')
    x, y = _as_batch(img, metric).clamp(0, 1), _as_batch(img2, metric).clamp(0, 1)
    if x.shape != y.shape:
        raise ValueError(f'{metric}: image shapes differ, {tuple(x.shape)} and {tuple(y.shape)}.')
    if crop_border:
        x = x[..., crop_border:-crop_border, crop_border:-crop_border]
        y = y[..., crop_border:-crop_border, crop_border:-crop_border]
    return x, y


def gaussian_window(size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA) -> torch.Tensor:
    """The normalised 1-D Gaussian both upstreams use: ``exp(-(i - size // 2)^2 / (2 sigma^2))``, float64."""
    offsets = torch.arange(size, dtype=torch.float64) - size // 2
    window = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    return window / window.sum()


def _blur(x: np.ndarray, window: np.ndarray, padding: int) -> np.ndarray:
    """Separable Gaussian filtering of ``(..., H, W)`` along H then W with ``padding`` zeros on each side (0:
    "valid"; a side shorter than the window is then left unfiltered, as pytorch_msssim does). scipy's 1-D
    correlation, exact in float64 and several times faster than torch's float64 convolutions on the CPU."""
    from scipy.ndimage import correlate1d

    half = window.size // 2
    for axis in (-2, -1):
        if padding == 0 and x.shape[axis] < window.size:
            continue
        x = correlate1d(x, window, axis=axis, mode='constant', cval=0.)  # zero padding of half the window
        if padding < half:
            cut = half - padding
            x = x[..., cut:-cut, :] if axis == -2 else x[..., cut:-cut]
    return x


def _ssim_map(x: torch.Tensor, y: torch.Tensor, padding: int) -> torch.Tensor:
    """The SSIM map of Wang et al. with the Gaussian window, data range 1 (the five local means in one pass)."""
    x, y = x.numpy(), y.numpy()
    window = gaussian_window().numpy()
    mu_x, mu_y, xx, yy, xy = np.split(_blur(np.concatenate([x, y, x * x, y * y, x * y], 1), window, padding), 5, 1)
    var_x, var_y, cov = xx - mu_x ** 2, yy - mu_y ** 2, xy - mu_x * mu_y
    luminance = (2 * mu_x * mu_y + C1) / (mu_x ** 2 + mu_y ** 2 + C1)
    return torch.from_numpy(luminance * (2 * cov + C2) / (var_x + var_y + C2))


@METRIC_REGISTRY.register()
@float_protocol
def calculate_psnr_float(img: Any, img2: Any, crop_border: int = 0, test_y_channel: bool = False,
                         **kwargs: Any) -> float:
    """PSNR on the float output clamped to [0, 1], RGB: DehazeFormer's and FFA-Net's ``10 log10(1 / MSE)``.

    Args:
        img: The output, a tensor ``(N, C, H, W)``/``(C, H, W)`` or an ``(H, W, C)`` array in [0, 1].
        img2: The ground truth, same shape.
        crop_border: Pixels cut off each side first. Defaults to 0 (both upstreams).
        test_y_channel: Must stay False (both upstreams evaluate RGB). Defaults to False.
        **kwargs: BasicSR's other metric options (``better``), ignored.

    Returns:
        The PSNR in dB (mean over the batch; ``inf`` for identical images).
    """
    x, y = _pair(img, img2, crop_border, test_y_channel, 'calculate_psnr_float')
    mse = ((x - y) ** 2).flatten(1).mean(1)
    return float(np.mean([math.inf if m == 0 else 10 * math.log10(1 / m) for m in mse.tolist()]))


@METRIC_REGISTRY.register()
@float_protocol
def calculate_ssim_dehazeformer(img: Any, img2: Any, crop_border: int = 0, test_y_channel: bool = False,
                                **kwargs: Any) -> float:
    """SSIM as DehazeFormer's ``test.py`` computes it (see the module docstring): average-pooled by
    ``max(1, round(min(H, W) / 256))``, then ``pytorch_msssim.ssim`` with data range 1 on float RGB.

    Args:
        img: The output, a tensor ``(N, C, H, W)``/``(C, H, W)`` or an ``(H, W, C)`` array in [0, 1].
        img2: The ground truth, same shape.
        crop_border: Pixels cut off each side before pooling. Defaults to 0 (DehazeFormer).
        test_y_channel: Must stay False (DehazeFormer evaluates RGB). Defaults to False.
        **kwargs: BasicSR's other metric options (``better``), ignored.

    Returns:
        The SSIM (mean over pixels, channels and the batch).
    """
    x, y = _pair(img, img2, crop_border, test_y_channel, 'calculate_ssim_dehazeformer')
    height, width = x.shape[-2:]
    ratio = max(1, round(min(height, width) / 256))  # Python's round, as upstream (halves go to even)
    if ratio > 1:
        size = (int(height / ratio), int(width / ratio))
        x, y = F.adaptive_avg_pool2d(x, size), F.adaptive_avg_pool2d(y, size)
    return float(_ssim_map(x, y, padding=0).flatten(1).mean(1).mean())


@METRIC_REGISTRY.register()
@float_protocol
def calculate_ssim_ffanet(img: Any, img2: Any, crop_border: int = 0, test_y_channel: bool = False,
                          **kwargs: Any) -> float:
    """SSIM as FFA-Net's ``metrics.ssim`` computes it: clamped float RGB, 11x11 Gaussian (sigma 1.5) with zero
    padding 5, full resolution, mean over channels and pixels.

    Args:
        img: The output, a tensor ``(N, C, H, W)``/``(C, H, W)`` or an ``(H, W, C)`` array in [0, 1].
        img2: The ground truth, same shape.
        crop_border: Pixels cut off each side first. Defaults to 0 (FFA-Net).
        test_y_channel: Must stay False (FFA-Net evaluates RGB). Defaults to False.
        **kwargs: BasicSR's other metric options (``better``), ignored.

    Returns:
        The SSIM (mean over pixels, channels and the batch).
    """
    x, y = _pair(img, img2, crop_border, test_y_channel, 'calculate_ssim_ffanet')
    return float(_ssim_map(x, y, padding=WINDOW_SIZE // 2).mean())


FLOAT_METRICS = ('calculate_psnr_float', 'calculate_ssim_dehazeformer', 'calculate_ssim_ffanet')
