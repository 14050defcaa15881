"""Exact resume is owned by each run: its loader and model share one progress object, nothing global carries over
to a later run in the same process; the newest complete training state is found by one function."""
from __future__ import annotations

import os
import sys

import torch
import yaml

from conftest import write_paired_folders
from mclir_plugin.archs.presets import network_preset
from mclir_plugin.utils.checkpoint import newest_training_state
from mclir_plugin.utils.options import naming_option_file, naming_the_file, option_file_in


def run_options(name: str, gt: str, lq: str, batch: int, total_iter: int) -> dict:
    """A tiny SwinIR x4 SPN run without validation, saving at its last iteration."""
    return {
        'name': name, 'model_type': 'MCLIRModel', 'scale': 4, 'num_gpu': 0, 'manual_seed': 5,
        'mclir': {'base_model': 'SwinIRModel', 'hook': {'neg_iter': [1]}},
        'datasets': {'train': {'name': 'tiny', 'type': 'PairedImageDataset', 'dataroot_gt': gt, 'dataroot_lq': lq,
                               'io_backend': {'type': 'disk'}, 'gt_size': 16, 'use_hflip': True, 'use_rot': False,
                               'use_shuffle': True, 'num_worker_per_gpu': 0, 'batch_size_per_gpu': batch,
                               'dataset_enlarge_ratio': 1, 'prefetch_mode': None}},
        'network_g': network_preset('swinir_tiny', depths=[1]),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'total_iter': total_iter, 'warmup_iter': -1,
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
                  'pixel_opt': {'type': 'SPNLoss', 'neg_weight': 0.5, 'vgg_fallback': 'random',
                                'layer_weights': {'relu1_1': 1.0}}},
        'logger': {'print_freq': 100, 'save_checkpoint_freq': total_iter, 'use_tb_logger': False},
    }


def train_in_process(root, opt: dict, monkeypatch) -> dict:
    """``mclir-train -opt <root>/opt.yml`` in this process, rooted at ``root``; its last training state."""
    from mclir_plugin.commands.train import main
    root.mkdir()
    (root / 'opt.yml').write_text(yaml.safe_dump(opt))
    monkeypatch.setattr(sys, 'argv', ['mclir-train', '-opt', str(root / 'opt.yml')])
    main(str(root))
    state_dir = root / 'experiments' / opt['name'] / 'training_states'
    return torch.load(newest_training_state(str(state_dir)), weights_only=True)


def test_two_runs_in_one_process_keep_their_own_progress(tmp_path, empty_torch_home, monkeypatch):
    from basicsr.models import build_model
    gt, lq = write_paired_folders(tmp_path / 'data', n=4, gt_size=16, scale=4)
    # run A (4 batches an epoch) stops in the middle of its first epoch, after 3 batches
    first = train_in_process(tmp_path / 'a', run_options('a', gt, lq, batch=1, total_iter=3), monkeypatch)
    (progress,) = first['progress']
    assert progress['batches_in_epoch'] == 3 and progress['batch_size'] == 1  # the model saved its loader's count
    assert progress['epoch_start_rng'] is not None
    # run B, same process, another batch size: its loader and model start from a fresh progress
    second = train_in_process(tmp_path / 'b', run_options('b', gt, lq, batch=2, total_iter=1), monkeypatch)
    (progress,) = second['progress']
    assert progress['batches_in_epoch'] == 1 and progress['batch_size'] == 2
    # a model built outside any pipeline afterwards has its own, untouched progress (no position of run B)
    opt = run_options('c', gt, lq, batch=1, total_iter=1)
    states = tmp_path / 'c' / 'training_states'
    opt.update(is_train=True, dist=False, rank=0, world_size=1)
    opt['path'].update(experiments_root=str(tmp_path / 'c'), training_states=str(states))
    states.mkdir(parents=True)
    build_model(opt).save_training_state(0, 1)
    (progress,) = torch.load(states / '1.state', weights_only=True)['progress']
    assert progress['batches_in_epoch'] == 0 and progress['epoch_start_rng'] is None and progress['batch_size'] is None
    # the option file of a finished run is not named in later errors
    err = KeyError('bad key')
    assert naming_the_file(err) is err


def test_option_file_is_named_only_inside_its_run():
    assert option_file_in(['train.py', '-opt', 'a.yml', '--auto_resume']) == 'a.yml'
    assert option_file_in(['train.py', '--debug']) is None
    with naming_option_file('a.yml'):
        assert str(naming_the_file(ValueError('bad value'))) == 'bad value (option file: a.yml)'
        with naming_option_file('b.yml'):
            assert str(naming_the_file(ValueError('bad'))) == 'bad (option file: b.yml)'
        assert str(naming_the_file(ValueError('bad'))) == 'bad (option file: a.yml)'
        named = ValueError('a.yml: bad')  # already named: unchanged
        assert naming_the_file(named) is named
    assert str(naming_the_file(ValueError('bad'))) == 'bad'


def test_newest_training_state_takes_the_highest_complete_iteration(tmp_path):
    states = tmp_path / 'training_states'
    assert newest_training_state(str(states)) is None  # no folder yet
    states.mkdir()
    assert newest_training_state(str(states)) is None  # empty
    for name in ('9.state', '10.state', '12.state.tmp', 'latest.state', 'x10.state', '11.pth', 'notes.txt'):
        (states / name).write_bytes(b'x')
    (states / '20.state').mkdir()  # a folder, not a state
    assert newest_training_state(str(states)) == os.path.join(str(states), '10.state')  # 10 > 9: as numbers
    (states / '10.state').unlink()
    assert newest_training_state(str(states)) == os.path.join(str(states), '9.state')


def test_auto_resume_uses_the_newest_complete_state(tmp_path):
    """``--auto_resume`` (``compat.load_resume_state``) takes what :func:`newest_training_state` finds."""
    from mclir_plugin.compat import load_resume_state
    states = tmp_path / 'training_states'
    states.mkdir()
    torch.save({'iter': 4, 'epoch': 0}, states / '4.state')
    (states / '8.state.tmp').write_bytes(b'partial')  # a killed save: never taken
    opt = {'auto_resume': True, 'num_gpu': 0, 'path': {'training_states': str(states)}}
    assert load_resume_state(opt)['iter'] == 4
    assert opt['path']['resume_state'] == str(states / '4.state')
    empty = {'auto_resume': True, 'num_gpu': 0, 'path': {'training_states': str(tmp_path / 'none')}}
    assert load_resume_state(empty) is None and 'resume_state' not in empty['path']
