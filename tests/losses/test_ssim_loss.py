"""SSIMLoss against scikit-image's SSIM, and as SPNLoss's reconstruction term."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from basicsr.losses import build_loss
from skimage.metrics import structural_similarity

from mclir_plugin import SPNLoss
from mclir_plugin.losses.ssim_loss import gaussian_window, ssim_map


def test_ssim_map_matches_scikit_image_away_from_the_border():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 40, 48, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    ours = ssim_map(x, y, gaussian_window())[0].numpy()
    for c in range(3):
        _, ref = structural_similarity(x[0, c].numpy(), y[0, c].numpy(), data_range=1.0, gaussian_weights=True,
                                       sigma=1.5, use_sample_covariance=False, full=True)
        np.testing.assert_allclose(ours[c, 5:-5, 5:-5], ref[5:-5, 5:-5], atol=2e-5)


def test_loss_value_and_gradient():
    loss = build_loss({'type': 'SSIMLoss', 'loss_weight': 2.0})
    x = torch.rand(2, 3, 24, 24)
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    y = torch.rand(2, 3, 24, 24, requires_grad=True)
    value = loss(y, x)
    value.backward()
    assert 0 < value.item() <= 4 and y.grad.abs().sum() > 0


def test_spn_with_ssim_reconstruction(empty_torch_home):
    spn = SPNLoss(rec_loss='ssim', neg_weight=0.0, vgg_fallback='random')
    x, y = torch.rand(1, 3, 24, 24), torch.rand(1, 3, 24, 24)
    l_rec, _ = spn.terms(x, y, x.unsqueeze(0))
    assert l_rec.item() == pytest.approx(1 - ssim_map(x, y, gaussian_window()).mean().item(), rel=1e-6)
