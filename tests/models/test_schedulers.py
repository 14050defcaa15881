"""Registered schedulers through BasicSR's own model setup: torch's periodic cosine (the official
``TrueCosineAnnealingLR``), DehazeFormer's per-epoch cosine, exact resume, and option errors."""
from __future__ import annotations

import copy
import math
import os

import pytest
import torch
from basicsr.models import build_model

from mclir_plugin.models.lr_schedulers import EpochCosineAnnealingLR, TrueCosineAnnealingLR

EDSR = dict(type='EDSR', num_in_ch=3, num_out_ch=3, num_feat=4, num_block=1, upscale=2, res_scale=1,
            img_range=255., rgb_mean=[0.4488, 0.4371, 0.4040])
LR = 2e-4


def make_opt(tmp_path, scheduler: dict) -> dict:
    """A plain SRModel's options as BasicSR's parse_options hands them to build_model (training, CPU)."""
    root = str(tmp_path / 'run')
    paths = {k: os.path.join(root, k) for k in ('models', 'training_states', 'log', 'visualization')}
    for p in paths.values():
        os.makedirs(p, exist_ok=True)
    return {
        'name': 'sched', 'model_type': 'SRModel', 'scale': 2, 'num_gpu': 0, 'manual_seed': 0, 'is_train': True,
        'dist': False, 'rank': 0, 'world_size': 1, 'root_path': str(tmp_path), 'network_g': dict(EDSR),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None, 'experiments_root': root,
                 **paths},
        'train': {'ema_decay': 0, 'optim_g': {'type': 'AdamW', 'lr': LR, 'betas': [0.9, 0.9], 'weight_decay': 0},
                  'scheduler': dict(scheduler), 'total_iter': 100,
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
    }


def run_iterations(model, first: int, last: int) -> list[float]:
    """BasicSR's loop around the model: update_learning_rate(t) then the step, for t = first..last."""
    rates = []
    for current_iter in range(first, last + 1):
        model.update_learning_rate(current_iter, warmup_iter=-1)
        rates.append(model.get_current_learning_rate()[0])
        model.optimizer_g.step()  # no gradients: weights unchanged, step order as in training
    return rates


def torch_rates(make_scheduler, steps: int) -> list[float]:
    """The rate for iteration t = 1..steps (after t - 1 scheduler steps) of a scheduler on a bare optimizer."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    scheduler = make_scheduler(optimizer)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        scheduler.step()
    return rates


def test_true_cosine_is_torchs_periodic_cosine_and_resumes_exactly(tmp_path):
    t_max, eta_min, total = 6, 1e-8, 27  # past 4 T_max: down, up, down, up, and on
    opt = make_opt(tmp_path, {'type': 'TrueCosineAnnealingLR', 'T_max': float(t_max), 'eta_min': eta_min})  # YAML's 6.0
    model = build_model(copy.deepcopy(opt))
    assert isinstance(model.schedulers[0], TrueCosineAnnealingLR)
    straight = run_iterations(model, 1, total)
    expected = torch_rates(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=t_max, eta_min=eta_min),
                           total)
    assert straight == expected  # torch's own arithmetic, bit for bit
    for t, rate in enumerate(straight, start=1):  # and the closed form, periodic beyond T_max
        closed = eta_min + (LR - eta_min) * (1 + math.cos(math.pi * (t - 1) / t_max)) / 2
        assert rate == pytest.approx(closed, rel=1e-9, abs=1e-15)
    assert straight[t_max] == pytest.approx(eta_min) and straight[2 * t_max] == pytest.approx(LR)
    assert straight[t_max + 1] > straight[t_max]  # climbs back after T_max

    # save at iteration 10 (past T_max), resume in a new model from the file, continue to the end
    model = build_model(copy.deepcopy(opt))
    run_iterations(model, 1, 10)
    model.save(epoch=0, current_iter=10)
    state = torch.load(os.path.join(opt['path']['training_states'], '10.state'), weights_only=False)
    resumed = build_model(copy.deepcopy(opt))
    resumed.resume_training(state)
    assert run_iterations(resumed, 11, total) == straight[10:]


def test_epoch_cosine_holds_the_rate_per_epoch_as_dehazeformer_and_resumes_mid_epoch(tmp_path):
    epochs, epoch_length = 4, 3
    opt = make_opt(tmp_path, {'type': 'EpochCosineAnnealingLR', 'T_max': epochs, 'epoch_length': epoch_length,
                              'eta_min': LR * 1e-2})
    model = build_model(copy.deepcopy(opt))
    assert isinstance(model.schedulers[0], EpochCosineAnnealingLR)
    total = (epochs + 1) * epoch_length  # DehazeFormer runs epochs + 1 epochs, the last at eta_min
    straight = run_iterations(model, 1, total)
    per_epoch = torch_rates(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=epochs, eta_min=LR * 1e-2),
                            epochs + 1)  # upstream: one step after every epoch
    assert straight == pytest.approx([r for r in per_epoch for _ in range(epoch_length)], rel=1e-12)
    assert straight[-1] == pytest.approx(LR * 1e-2) and straight[0] == LR

    model = build_model(copy.deepcopy(opt))
    run_iterations(model, 1, 5)  # in the middle of the second epoch
    model.save(epoch=1, current_iter=5)
    resumed = build_model(copy.deepcopy(opt))
    resumed.resume_training(torch.load(os.path.join(opt['path']['training_states'], '5.state'), weights_only=False))
    assert run_iterations(resumed, 6, total) == straight[5:]


def test_basicsr_types_still_build_and_the_options_stay_intact(tmp_path):
    scheduler = {'type': 'MultiStepLR', 'milestones': [2], 'gamma': 0.5}
    opt = make_opt(tmp_path, scheduler)
    model = build_model(opt)
    assert type(model.schedulers[0]).__name__ == 'MultiStepRestartLR'
    assert opt['train']['scheduler'] == scheduler  # BasicSR's own setup pops 'type' from the options
    assert run_iterations(model, 1, 4) == [LR, LR, LR / 2, LR / 2]


@pytest.mark.parametrize('scheduler, error, match', [
    ({'type': 'CosineAnnealingLRR', 'T_max': 5}, NotImplementedError,
     r"train.scheduler.type 'CosineAnnealingLRR' is not a registered scheduler; use one of .*TrueCosineAnnealingLR"),
    ({'type': 'TrueCosineAnnealingLR', 'T_max': 0}, ValueError,
     r'^train.scheduler.T_max must be an integer >= 1 \(iterations from the initial rate to eta_min\), got 0\.$'),
    ({'type': 'TrueCosineAnnealingLR', 'T_max': 5, 'eta_mni': 0}, TypeError,
     r'train.scheduler \(TrueCosineAnnealingLR\).*eta_mni'),
    ({'type': 'EpochCosineAnnealingLR', 'T_max': 5, 'epoch_length': 0}, ValueError,
     r'^train.scheduler.epoch_length must be an integer >= 1 \(iterations per epoch\), got 0\.$'),
])
def test_scheduler_errors_name_the_key(tmp_path, scheduler, error, match):
    with pytest.raises(error, match=match):
        build_model(make_opt(tmp_path, scheduler))
