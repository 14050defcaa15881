"""Exact resume: N+M steps straight equal N steps, stop, resume, M steps (losses, weights, negatives)."""
from __future__ import annotations

import os
import re
import shutil

import pytest
import torch
import yaml

from basicsr_recipes import drop_after
from conftest import REPO, run_tool, tiny_swinir_options, write_paired_folders


def options(gt: str, lq: str, workers: int) -> dict:
    """A tiny SwinIR x4 SPN run; SwinIR's drop-path and the random crops both draw random numbers."""
    opt = tiny_swinir_options('resume', gt, lq, {'neg_iter': [2, 5], 'neg_decay': 0.1, 'neg_start': 0.1},
                              train_set={'num_worker_per_gpu': workers}, network={'drop_path_rate': 0.2},
                              total_iter=7)
    opt['manual_seed'] = 3
    opt['train']['scheduler']['milestones'] = [4]
    opt['val']['val_freq'] = opt['logger']['save_checkpoint_freq'] = 3
    return opt


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
    straight_cwd, stopped_cwd = tmp_path / 'straight', tmp_path / 'stopped'
    straight_cwd.mkdir()
    (straight_cwd / 'opt.yml').write_text(yaml.safe_dump(options(gt, lq, workers)))
    straight_log = train(straight_cwd)
    # the run stopped after its checkpoint at iteration 3, in the middle of epoch 0 (after a validation): the
    # straight run's folder without what iterations 4-7 wrote (iterations 1-3 are the same run), resumed in a new
    # process
    shutil.copytree(straight_cwd / 'experiments', stopped_cwd / 'experiments')
    shutil.copy(straight_cwd / 'opt.yml', stopped_cwd / 'opt.yml')
    drop_after(stopped_cwd / 'experiments' / 'resume', 3)
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
