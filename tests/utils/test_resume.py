"""Exact resume: N+M steps straight equal N steps, stop, resume, M steps (losses, weights, negatives)."""
from __future__ import annotations

import os
import re

import pytest
import torch
import yaml

from conftest import REPO, run_tool, write_paired_folders


def options(gt: str, lq: str, workers: int) -> dict:
    """A tiny SwinIR x4 SPN run; SwinIR's drop-path and the random crops both draw random numbers."""
    return {
        'name': 'resume', 'model_type': 'MCLIRModel', 'scale': 4, 'num_gpu': 0, 'manual_seed': 3,
        'mclir': {'base_model': 'SwinIRModel',
                  'hook': {'neg_iter': [2, 5], 'neg_decay': 0.1, 'neg_start': 0.1}},
        'datasets': {
            'train': {'name': 'tiny', 'type': 'PairedImageDataset', 'dataroot_gt': gt, 'dataroot_lq': lq,
                      'io_backend': {'type': 'disk'}, 'gt_size': 32, 'use_hflip': True, 'use_rot': True,
                      'use_shuffle': True, 'num_worker_per_gpu': workers, 'batch_size_per_gpu': 2,
                      'dataset_enlarge_ratio': 1, 'prefetch_mode': None},
            'val': {'name': 'tiny_val', 'type': 'PairedImageDataset', 'dataroot_gt': gt, 'dataroot_lq': lq,
                    'io_backend': {'type': 'disk'}}},
        'network_g': {'type': 'SwinIR', 'upscale': 4, 'in_chans': 3, 'img_size': 8, 'window_size': 4,
                      'img_range': 1., 'depths': [2], 'embed_dim': 8, 'num_heads': [2], 'mlp_ratio': 2,
                      'upsampler': 'pixelshuffledirect', 'resi_connection': '1conv', 'drop_path_rate': 0.2},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0.9, 'optim_g': {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [4], 'gamma': 0.5}, 'total_iter': 7,
                  'warmup_iter': -1,
                  'pixel_opt': {'type': 'SPNLoss', 'neg_weight': 0.5, 'vgg_fallback': 'random'}},
        'val': {'val_freq': 3, 'save_img': False,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 3, 'use_tb_logger': False},
    }


def losses_by_iter(text: str) -> dict[int, tuple[str, str]]:
    """``{iter: (l_pix, l_neg)}`` as printed (5 significant digits) in a BasicSR log."""
    return {int(m[0]): (m[1], m[2]) for m in re.findall(r'iter:\s+(\d+),.*?l_pix: (\S+) l_neg: (\S+)', text)}


def train(cwd, *extra):
    result = run_tool([os.path.join(REPO, 'tools', 'train.py'), '-opt', 'opt.yml', *extra], cwd=cwd,
                      env={'CUBLAS_WORKSPACE_CONFIG': ':4096:8'})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.parametrize('workers', [0, 2])
def test_resume_continues_exactly(tmp_path, empty_torch_home, workers):
    gt, lq = write_paired_folders(tmp_path / 'data', n=8, gt_size=48, scale=4)  # 4 batches an epoch
    runs = {}
    for kind in ('straight', 'stopped'):
        cwd = tmp_path / kind
        cwd.mkdir()
        opt = options(gt, lq, workers)
        if kind == 'stopped':
            opt['train']['total_iter'] = 3  # stops at a checkpoint in the middle of epoch 0, after a validation
        (cwd / 'opt.yml').write_text(yaml.safe_dump(opt))
        runs[kind] = (cwd, train(cwd))
    straight_cwd, straight_log = runs['straight']
    stopped_cwd, _ = runs['stopped']
    opt = yaml.safe_load((stopped_cwd / 'opt.yml').read_text())
    opt['train']['total_iter'] = 7
    (stopped_cwd / 'opt.yml').write_text(yaml.safe_dump(opt))
    resumed_log = train(stopped_cwd, '--auto_resume')
    assert 'Resuming training from epoch: 0, iter: 3.' in resumed_log
    assert 'replayed 3 batch(es) of the interrupted epoch' in resumed_log

    straight, resumed = losses_by_iter(straight_log), losses_by_iter(resumed_log)
    assert sorted(resumed) == [4, 5, 6, 7]
    assert {it: straight[it] for it in resumed} == resumed  # iterations 4-7, across the epoch boundary at 4
    runs_dir = 'experiments/resume'
    a = torch.load(straight_cwd / runs_dir / 'models' / 'net_g_6.pth')
    b = torch.load(stopped_cwd / runs_dir / 'models' / 'net_g_6.pth')
    for key in ('params', 'params_ema'):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    sa = torch.load(straight_cwd / runs_dir / 'training_states' / '6.state', weights_only=True)
    sb = torch.load(stopped_cwd / runs_dir / 'training_states' / '6.state', weights_only=True)
    for neg_a, neg_b in zip(sa['mclir']['negatives'], sb['mclir']['negatives']):
        assert all(torch.equal(neg_a[k], neg_b[k]) for k in neg_a)
    assert sa['mclir']['refresh_count'] == sb['mclir']['refresh_count'] == [3, 1]
    assert torch.equal(sa['progress'][0]['rng']['torch'], sb['progress'][0]['rng']['torch'])
