"""The float evaluation protocols (mclir_plugin/metrics/float_metrics.py) against independent numpy/scipy computations of the
upstream formulas, against BasicSR's uint8 metrics, and through BasicSR validation (val.metrics, val.save_best)."""
import mclir_plugin  # noqa: F401  (before basicsr: compat shim and registration)

import json
import math
import os

import numpy as np
import pytest
import scipy.signal
import torch
from basicsr.metrics import calculate_metric, calculate_psnr, calculate_ssim
from basicsr.utils import tensor2img
from basicsr.utils.registry import METRIC_REGISTRY

from conftest import write_paired_folders
from mclir_plugin.metrics.float_metrics import (calculate_psnr_float, calculate_ssim_dehazeformer, calculate_ssim_ffanet,
                                  is_float_protocol)
from mclir_plugin.models.validation import read_save_best

TOL = 1e-6


# ---------------------------------------------------------------------------------------------- reference formulas
def gaussian_2d(size=11, sigma=1.5) -> np.ndarray:
    taps = np.array([math.exp(-(i - size // 2) ** 2 / (2 * sigma ** 2)) for i in range(size)])
    taps /= taps.sum()
    return np.outer(taps, taps)


def ssim_channel(x: np.ndarray, y: np.ndarray, mode: str) -> np.ndarray:
    """Wang et al.'s SSIM map of one channel, data range 1, 2-D Gaussian by scipy (``valid`` or zero-padded
    ``same``)."""
    k = gaussian_2d()
    filt = lambda a: scipy.signal.correlate2d(a, k, mode=mode, boundary='fill', fillvalue=0)  # noqa: E731
    mx, my = filt(x), filt(y)
    vx, vy, cxy = filt(x * x) - mx * mx, filt(y * y) - my * my, filt(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return (2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def adaptive_avg_pool(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """torch's adaptive average pooling of an (H, W, C) array: cell i spans [floor(i H / n), ceil((i + 1) H / n))."""
    h, w = img.shape[:2]
    r0, r1 = np.arange(out_h) * h // out_h, -(-(np.arange(out_h) + 1) * h // out_h)
    c0, c1 = np.arange(out_w) * w // out_w, -(-(np.arange(out_w) + 1) * w // out_w)
    table = np.zeros((h + 1, w + 1, img.shape[2]))  # summed-area table: any cell's sum from four corners
    table[1:, 1:] = img.cumsum(0).cumsum(1)
    sums = (table[r1][:, c1] - table[r0][:, c1] - table[r1][:, c0] + table[r0][:, c0])
    return sums / ((r1 - r0)[:, None, None] * (c1 - c0)[None, :, None])


def ref_psnr(out: np.ndarray, gt: np.ndarray) -> float:
    """DehazeFormer's test.py: 10 log10(1 / MSE) on the output clamped to [0, 1], all RGB values."""
    return 10 * math.log10(1 / np.mean((np.clip(out, 0, 1) - gt) ** 2))


def ref_ssim_dehazeformer(out: np.ndarray, gt: np.ndarray) -> float:
    """DehazeFormer's test.py: pool by round(min side / 256), then pytorch_msssim's SSIM (valid, channel mean)."""
    out, gt = np.clip(out, 0, 1), np.clip(gt, 0, 1)
    h, w = out.shape[:2]
    ratio = max(1, round(min(h, w) / 256))
    if ratio > 1:
        out, gt = (adaptive_avg_pool(a, int(h / ratio), int(w / ratio)) for a in (out, gt))
    return float(np.mean([ssim_channel(out[..., c], gt[..., c], 'valid').mean() for c in range(out.shape[2])]))


def ref_ssim_ffanet(out: np.ndarray, gt: np.ndarray) -> float:
    """FFA-Net's metrics.ssim: clamped, 11x11 Gaussian with zero padding 5 ('same'), mean of the whole map."""
    out, gt = np.clip(out, 0, 1), np.clip(gt, 0, 1)
    return float(np.mean([ssim_channel(out[..., c], gt[..., c], 'same') for c in range(out.shape[2])]))


def image_pair(h: int, w: int, seed: int, noise: float = 0.06) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth float GT in [0, 1] and an output with noise, some of it outside [0, 1] (clamping matters)."""
    g = torch.Generator().manual_seed(seed)
    gt = torch.nn.functional.interpolate(torch.rand(1, 3, h // 6 + 2, w // 6 + 2, generator=g), size=(h, w),
                                         mode='bilinear', align_corners=False).clamp(0, 1)
    out = gt + noise * torch.randn(1, 3, h, w, generator=g) + 0.02
    return out, gt


def hwc(t: torch.Tensor) -> np.ndarray:
    return t[0].permute(1, 2, 0).double().numpy()


# ---------------------------------------------------------------------------------------------- formulas
@pytest.mark.parametrize('size', [(37, 45), (397, 517)])  # 397 x 517: pooled by 2 to 198 x 258, unequal cells
def test_float_metrics_equal_the_reimplemented_upstream_formulas(size):
    out, gt = image_pair(*size, seed=size[0])
    assert out.min() < 0 and out.max() > 1
    assert abs(calculate_psnr_float(out, gt) - ref_psnr(hwc(out), hwc(gt))) < TOL
    assert abs(calculate_ssim_dehazeformer(out, gt) - ref_ssim_dehazeformer(hwc(out), hwc(gt))) < TOL
    if size[0] < 100:  # full-resolution 2-D correlation in scipy is slow; the small pair covers FFA-Net's formula
        assert abs(calculate_ssim_ffanet(out, gt) - ref_ssim_ffanet(hwc(out), hwc(gt))) < TOL
    # the same values from (C, H, W) tensors and from (H, W, C) float arrays
    for metric in (calculate_psnr_float, calculate_ssim_dehazeformer):
        assert metric(out[0], gt[0]) == pytest.approx(metric(out, gt), abs=1e-12)
        assert metric(hwc(out), hwc(gt)) == pytest.approx(metric(out, gt), abs=1e-12)


def test_float_metrics_against_basicsr_uint8_metrics():
    out, gt = image_pair(48, 56, seed=1)
    q_out, q_gt = tensor2img([out]), tensor2img([gt])  # BasicSR's uint8 BGR images, as its validation has them
    # on the quantised images the float PSNR is BasicSR's PSNR, and DehazeFormer's SSIM (no pooling under 384
    # pixels) is BasicSR's SSIM: same Gaussian, constants and valid window
    assert abs(calculate_psnr_float(q_out, q_gt) - calculate_psnr(q_out, q_gt, 0)) < TOL
    assert abs(calculate_ssim_dehazeformer(q_out, q_gt) - calculate_ssim(q_out, q_gt, 0)) < TOL
    # FFA-Net's zero padding counts the darkened borders: a different number on the same images
    assert abs(calculate_ssim_ffanet(q_out, q_gt) - calculate_ssim(q_out, q_gt, 0)) > 1e-4
    # on the float output the protocols differ from the uint8 numbers by the rounding, a small amount
    for float_value, uint8_value in ((calculate_psnr_float(out, gt), calculate_psnr(q_out, q_gt, 0)),
                                     (calculate_ssim_dehazeformer(out, gt), calculate_ssim(q_out, q_gt, 0))):
        assert 1e-6 < abs(float_value - uint8_value) < 0.05 * abs(uint8_value)
    assert calculate_psnr_float(gt, gt) == math.inf


def test_registered_marked_and_checked():
    for name in ('calculate_psnr_float', 'calculate_ssim_dehazeformer', 'calculate_ssim_ffanet'):
        assert name in METRIC_REGISTRY and is_float_protocol(name)
    assert not is_float_protocol('calculate_psnr') and not is_float_protocol('no_such_metric')
    out, gt = image_pair(24, 24, seed=2)
    # BasicSR's calculate_metric passes the option keys, `better` included
    value = calculate_metric({'img': out, 'img2': gt}, {'type': 'calculate_psnr_float', 'better': 'higher'})
    assert value == calculate_psnr_float(out, gt)
    cropped = calculate_metric({'img': out, 'img2': gt}, {'type': 'calculate_psnr_float', 'crop_border': 4})
    assert cropped == pytest.approx(ref_psnr(hwc(out)[4:-4, 4:-4], hwc(gt)[4:-4, 4:-4]), abs=TOL)
    with pytest.raises(ValueError, match='test_y_channel is not part of this protocol'):
        calculate_ssim_ffanet(out, gt, test_y_channel=True)
    with pytest.raises(ValueError, match='shapes differ'):
        calculate_psnr_float(out, gt[..., :20])


# ---------------------------------------------------------------------------------------------- through validation
def model_options(root, model_type='SRModel', save_best=None) -> dict:
    gt, lq = write_paired_folders(root / 'data', n=2, gt_size=24, scale=1)
    val = {'name': 'TinyVal', 'type': 'PairedImageDataset', 'dataroot_gt': gt, 'dataroot_lq': lq,
           'io_backend': {'type': 'disk'}, 'phase': 'val', 'scale': 1}
    opt = {
        'name': 'float_protocols', 'model_type': model_type, 'scale': 1, 'num_gpu': 0, 'manual_seed': 0,
        'is_train': True, 'dist': False, 'rank': 0, 'world_size': 1, 'datasets': {'val': val},
        'network_g': {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 4, 'num_block': 1, 'upscale': 1},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None,
                 'models': str(root / 'models'), 'visualization': str(root / 'visualization')},
        'train': {'optim_g': {'type': 'Adam', 'lr': 1e-4}, 'scheduler': {'type': 'MultiStepLR', 'milestones': [10],
                  'gamma': 0.5}, 'total_iter': 10, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
        'val': {'val_freq': 1, 'save_img': False, 'metrics': {
            'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False},
            'psnr_float': {'type': 'calculate_psnr_float'},
            'ssim_float': {'type': 'calculate_ssim_dehazeformer'},
            'ssim_ffanet': {'type': 'calculate_ssim_ffanet'}}},
    }
    if save_best is not None:
        opt['val']['save_best'] = save_best
    if model_type == 'MCLIRModel':
        opt['mclir'] = {'base_model': 'SRModel', 'visualize': False,
                        'hook': {'neg_iter': [1], 'neg_decay': 0.1, 'neg_start': 0.1}}
        opt['train']['pixel_opt'] = {'type': 'SPNLoss', 'neg_weight': 0.01, 'vgg_fallback': 'random'}
    return opt


def build(opt):
    from basicsr.data import build_dataloader, build_dataset
    from basicsr.models import build_model
    loader = build_dataloader(build_dataset(opt['datasets']['val']), opt['datasets']['val'], num_gpu=0, dist=False)
    return build_model(opt), loader


def expected_values(model, loader) -> dict:
    """Each metric computed here from the model's float output (float metrics) or its uint8 image (BasicSR)."""
    import basicsr.models.sr_model as sr_model
    sums = {'psnr': 0., 'psnr_float': 0., 'ssim_float': 0., 'ssim_ffanet': 0., 'psnr_float_on_uint8': 0.}
    for data in loader:
        model.feed_data(data)
        model.test()
        out, gt = model.output.detach().cpu(), data['gt']
        sums['psnr'] += calculate_psnr(tensor2img([out]), tensor2img([gt]), 0)
        sums['psnr_float'] += calculate_psnr_float(out, gt)
        sums['ssim_float'] += calculate_ssim_dehazeformer(out, gt)
        sums['ssim_ffanet'] += calculate_ssim_ffanet(out, gt)
        sums['psnr_float_on_uint8'] += calculate_psnr_float(tensor2img([out]), tensor2img([gt]))
    assert sr_model.calculate_metric is calculate_metric  # validation restored BasicSR's function
    return {k: v / len(loader) for k, v in sums.items()}


@pytest.mark.parametrize('model_type', ['SRModel', 'MCLIRModel'])
def test_validation_gives_float_metrics_the_float_output(model_type, tmp_path):
    model, loader = build(model_options(tmp_path, model_type, save_best='psnr_float'))
    assert type(model).__name__ == ('MCLIRSRModel' if model_type == 'MCLIRModel' else 'SRModel')
    model.validation(loader, 1, None)
    results = dict(model.metric_results)
    assert 'get_current_visuals' not in vars(model)
    expected = expected_values(model, loader)
    for name in ('psnr', 'psnr_float', 'ssim_float', 'ssim_ffanet'):
        assert results[name] == pytest.approx(expected[name], abs=1e-9), name
    # the float PSNR is not the number the uint8 images would give (the bridge, not tensor2img, fed it)
    assert abs(results['psnr_float'] - expected['psnr_float_on_uint8']) > 1e-6
    record = json.loads((tmp_path / 'models' / 'net_g_best.json').read_text())
    assert record['metric'] == 'psnr_float' and record['dataset'] == 'TinyVal' and record['iter'] == 1
    assert record['value'] == results['psnr_float'] and record['better'] == 'higher'


def test_best_checkpoint_keeps_the_best_and_survives_a_new_model(tmp_path):
    """bad (1) -> better (2) -> bad (3): the file holds 2; a new model on the same folder (what a resumed run
    builds) restores that record and does not replace it with a worse validation."""
    opt = model_options(tmp_path, save_best={'metric': 'psnr_float', 'dataset': 'TinyVal'})
    model, loader = build(opt)
    last = model.net_g.conv_last
    with torch.no_grad():
        last.weight.mul_(1e4)  # saturated noise: a few dB
    bad = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()  # the constant mean colour: better
    better = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    path = tmp_path / 'models' / 'net_g_best.pth'
    values = {}
    for iteration, weights in ((1, bad), (2, better), (3, bad)):
        model.net_g.load_state_dict(weights)
        model.validation(loader, iteration, None)
        values[iteration] = model.metric_results['psnr_float']
        saved = torch.load(path, weights_only=True)
        assert saved['best']['iter'] == (1 if iteration == 1 else 2)
    assert values[2] > values[1] + 1 and values[3] < values[2]
    assert saved['best']['value'] == values[2] and torch.equal(saved['params']['conv_last.weight'],
                                                               better['conv_last.weight'])
    assert json.loads((tmp_path / 'models' / 'net_g_best.json').read_text())['iter'] == 2
    resumed, _ = build(opt)
    resumed.net_g.load_state_dict(bad)
    resumed.validation(loader, 4, None)
    assert resumed.mclir_best['iter'] == 2 and torch.load(path, weights_only=True)['best']['iter'] == 2
    # `better: lower` keeps the minimum instead
    opt_lower = model_options(tmp_path / 'lower', save_best='psnr_float')
    opt_lower['val']['metrics']['psnr_float']['better'] = 'lower'
    low, loader = build(opt_lower)
    for iteration, weights in ((1, better), (2, bad)):
        low.net_g.load_state_dict(weights)
        low.validation(loader, iteration, None)
    assert low.mclir_best['iter'] == 2 and not os.path.exists(tmp_path / 'lower' / 'models' / 'net_g_best.pth.tmp')


def test_save_best_option_errors(tmp_path):
    import basicsr.train
    opt = model_options(tmp_path)
    assert read_save_best(opt) is None
    assert read_save_best({**opt, 'val': {**opt['val'], 'save_best': 'ssim_float'}}) == {
        'metric': 'ssim_float', 'dataset': 'TinyVal', 'better': 'higher'}
    for spec, error, message in (
            ({'metric': 'psnr_flaot'}, KeyError, "val.save_best.metric 'psnr_flaot' is not a key of val.metrics"),
            ({'metric': 'psnr', 'datset': 'TinyVal'}, KeyError, "Did you mean 'dataset'"),
            ({'metric': 'psnr', 'dataset': 'SOTS'}, ValueError, "val.save_best.dataset 'SOTS' is not a validation set"),
            ([1], ValueError, 'val.save_best: write')):
        bad = {**opt, 'val': {**opt['val'], 'save_best': spec}}
        with pytest.raises(error, match=message):
            read_save_best(bad)
    # tools/train.py's pipeline checks it when it builds the model, before training
    with pytest.raises(KeyError, match='psnr_flaot'):
        basicsr.train.build_model({**opt, 'val': {**opt['val'], 'save_best': 'psnr_flaot'}})
