"""Shared fixtures: a random-weight VGG16 file in torchvision's layout, tiny image trees, option builders."""
from __future__ import annotations

import os
import importlib
import sys

import mclir_plugin  # noqa: F401  (before basicsr: compat shim and registration)

import cv2
import numpy as np
import pytest
import torch
import torchvision

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if os.environ.get('PYTEST_XDIST_WORKER'):  # `make test`: two workers share the 2 cores, so one thread each (and
    torch.set_num_threads(1)               # for the processes they start) rather than 4 threads fighting for 2
    os.environ.setdefault('OMP_NUM_THREADS', '1')
VGG16_FILE_NAME = 'vgg16-397923af.pth'  # torchvision's ImageNet file name, looked up in $TORCH_HOME


@pytest.fixture(scope='session')
def vgg16_file(tmp_path_factory) -> str:
    """A torchvision-layout VGG16 state dict with random weights (``features.*`` only, 59 MB)."""
    path = tmp_path_factory.mktemp('vgg') / VGG16_FILE_NAME
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        features = torchvision.models.vgg16(weights=None).features
    torch.save({f'features.{k}': v for k, v in features.state_dict().items()}, path)
    return str(path)


@pytest.fixture
def torch_home_with_vgg(tmp_path, vgg16_file, monkeypatch) -> str:
    """TORCH_HOME pointing at a cache folder that holds the VGG16 file under torchvision's name."""
    home = tmp_path / 'torch_home'
    (home / 'hub' / 'checkpoints').mkdir(parents=True)
    os.symlink(vgg16_file, home / 'hub' / 'checkpoints' / VGG16_FILE_NAME)
    monkeypatch.setenv('TORCH_HOME', str(home))
    return str(home)


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch) -> str:
    home = tmp_path / 'empty_torch_home'
    home.mkdir()
    monkeypatch.setenv('TORCH_HOME', str(home))
    return str(home)


def write_paired_folders(root, n: int = 6, gt_size: int = 64, scale: int = 4, seed: int = 0) -> tuple[str, str]:
    """Write ``n`` smooth random GT images and their bicubic x``scale`` LQ images as PNG folders."""
    rng = np.random.default_rng(seed)
    gt_dir, lq_dir = os.path.join(root, 'gt'), os.path.join(root, 'lq')
    os.makedirs(gt_dir, exist_ok=True)
    os.makedirs(lq_dir, exist_ok=True)
    for i in range(n):
        small = rng.integers(0, 256, (gt_size // 8, gt_size // 8, 3), dtype=np.uint8)
        gt = cv2.resize(small, (gt_size, gt_size), interpolation=cv2.INTER_CUBIC)
        lq = cv2.resize(gt, (gt_size // scale, gt_size // scale), interpolation=cv2.INTER_AREA)
        cv2.imwrite(os.path.join(gt_dir, f'{i:04d}.png'), gt)
        cv2.imwrite(os.path.join(lq_dir, f'{i:04d}.png'), lq)
    return gt_dir, lq_dir


def run_command(command: list[str], cwd, timeout: int = 600, env: dict | None = None):
    """Run ``command`` in ``cwd`` with this interpreter's environment; return the CompletedProcess."""
    import subprocess
    full_env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='2', PYTHON=sys.executable)
    full_env.update(env or {})
    return subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def run_tool(args: list[str], cwd, timeout: int = 600, env: dict | None = None):
    """Run ``python tools/<...>.py args`` in ``cwd`` with this interpreter; return the CompletedProcess."""
    return run_command([sys.executable, *args], cwd, timeout, env)


def tiny_swinir_options(name: str, gt: str, lq: str, hook: dict, *, validation: bool = True,
                        train_set: dict | None = None, network: dict | None = None, **train) -> dict:
    """Options of a ``tools/train.py`` run on CPU: ``network_preset('swinir_tiny', **network)`` x4 with SPN (random
    VGG), the PNG folders ``gt``/``lq`` (:func:`write_paired_folders`) as training set and, with ``validation``, as
    a PSNR validation set. ``train_set`` changes the training set's keys, ``train`` the ``train`` block's; a test
    changes anything else in the returned dict (manual_seed 0, checkpoints every 2 iterations, 4 iterations)."""
    from mclir_plugin.archs.presets import network_preset
    paired = {'dataroot_gt': gt, 'dataroot_lq': lq, 'io_backend': {'type': 'disk'}}
    opt = {
        'name': name, 'model_type': 'MCLIRModel', 'scale': 4, 'num_gpu': 0, 'manual_seed': 0,
        'mclir': {'base_model': 'SwinIRModel', 'hook': hook},
        'datasets': {'train': {'name': 'tiny', 'type': 'PairedImageDataset', **paired, 'gt_size': 32,
                               'use_hflip': True, 'use_rot': True, 'use_shuffle': True, 'num_worker_per_gpu': 0,
                               'batch_size_per_gpu': 2, 'dataset_enlarge_ratio': 1, 'prefetch_mode': None,
                               **(train_set or {})}},
        'network_g': network_preset('swinir_tiny', **(network or {})),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0.9, 'optim_g': {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5}, 'total_iter': 4,
                  'warmup_iter': -1, 'pixel_opt': {'type': 'SPNLoss', 'neg_weight': 0.5, 'vgg_fallback': 'random'},
                  **train},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False},
    }
    if validation:
        opt['datasets']['val'] = {'name': 'tiny_val', 'type': 'PairedImageDataset', **paired}
        opt['val'] = {'val_freq': 4, 'save_img': False,
                      'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True}}}
    return opt


# The shape of BasicSR's own options/train/SwinIR/train_SwinIR_SRx4_scratch.yml (paths pointing at this test's
# folders), with the contract's lines changed: model_type, the mclir block, and pixel_opt.
SWINIR_SPN_OPTIONS = """
name: train_SwinIR_SRx4_scratch_P48W8_DIV2K_500k_B4G8
model_type: MCLIRModel
scale: 4
num_gpu: auto
manual_seed: 0

mclir:
  base_model: SwinIRModel
  hook:
    type: HistoryNegativeHook
    neg_iter: [1, 2, 3, 4]
    neg_decay: 0.1
    neg_start: 0.1

datasets:
  train:
    name: DIV2K
    type: PairedImageDataset
    dataroot_gt: {gt}
    dataroot_lq: {lq}
    meta_info_file: basicsr/data/meta_info/meta_info_DIV2K800sub_GT.txt
    filename_tmpl: '{{}}'
    io_backend:
      type: disk
    gt_size: 192
    use_hflip: true
    use_rot: true
    use_shuffle: true
    num_worker_per_gpu: 6
    batch_size_per_gpu: 4
    dataset_enlarge_ratio: 1
    prefetch_mode: ~
  val:
    name: Set5
    type: PairedImageDataset
    dataroot_gt: {gt}
    dataroot_lq: {lq}
    io_backend:
      type: disk

network_g:
  type: SwinIR
  upscale: 4
  in_chans: 3
  img_size: 48
  window_size: 8
  img_range: 1.
  depths: [6, 6, 6, 6, 6, 6]
  embed_dim: 180
  num_heads: [6, 6, 6, 6, 6, 6]
  mlp_ratio: 2
  upsampler: 'pixelshuffle'
  resi_connection: '1conv'

path:
  pretrain_network_g: ~
  strict_load_g: true
  resume_state: ~

train:
  ema_decay: 0.999
  optim_g:
    type: Adam
    lr: !!float 2e-4
    weight_decay: 0
    betas: [0.9, 0.99]
  scheduler:
    type: MultiStepLR
    milestones: [250000, 400000, 450000, 475000]
    gamma: 0.5
  total_iter: 500000
  warmup_iter: -1
  pixel_opt:
    type: SPNLoss
    loss_weight: 1.0
    reduction: mean
    neg_weight: 0.001
    layer_weights: {{relu1_2: 0.2, relu2_2: 0.3, relu3_3: 0.5}}
    vgg_type: vgg16

val:
  val_freq: !!float 5e3
  save_img: false
  metrics:
    psnr:
      type: calculate_psnr
      crop_border: 4
      test_y_channel: false

logger:
  print_freq: 100
  save_checkpoint_freq: !!float 5e3
  use_tb_logger: true
  wandb:
    project: ~
    resume_id: ~

dist_params:
  backend: nccl
  port: 29500
"""

CPU_OVERRIDES = ['num_gpu=0', 'datasets:train:meta_info_file=~', 'datasets:train:num_worker_per_gpu=0',
                 'datasets:train:batch_size_per_gpu=2', 'datasets:train:gt_size=32', 'network_g:depths=[2,2]',
                 'network_g:num_heads=[2,2]', 'network_g:embed_dim=16', 'logger:print_freq=1',
                 'logger:save_checkpoint_freq=2', 'val:val_freq=4']


@pytest.fixture
def swinir_run(tmp_path, torch_home_with_vgg):
    """A working folder with paired PNG folders and the SwinIR SPN option file."""
    gt, lq = write_paired_folders(tmp_path / 'datasets', n=4, gt_size=48, scale=4)
    opt_file = tmp_path / 'train_SwinIR_SRx4_scratch_spn.yml'
    opt_file.write_text(SWINIR_SPN_OPTIONS.format(gt=gt, lq=lq))
    return tmp_path, opt_file


def train(cwd, opt_file, *extra, overrides=CPU_OVERRIDES):
    return run_tool([os.path.join(REPO, 'tools', 'train.py'), '-opt', str(opt_file), *extra,
                     '--force_yml', *overrides], cwd=cwd)


def load_example(name: str):
    """``examples/<name>.py`` imported as the module ``<name>`` (the examples folder is not a package)."""
    folder = os.path.join(REPO, 'examples')
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def swinir_model_options(tmp_path, vgg16_file, mclir: dict, **pixel_opt) -> dict:
    """An option dict as BasicSR's ``parse_options`` hands it to ``build_model`` (training, CPU, in-process):
    ``network_preset('swinir_tiny')`` x4 as ``MCLIRModel`` over ``SwinIRModel`` with the ``mclir`` block's keys,
    SPNLoss (``pixel_opt`` changes its keys) on the random VGG16 file, Adam, print_freq 2."""
    from mclir_plugin.archs.presets import network_preset
    root = str(tmp_path / 'run')
    paths = {k: os.path.join(root, k) for k in ('models', 'training_states', 'log', 'visualization')}
    for p in paths.values():
        os.makedirs(p, exist_ok=True)
    return {
        'name': 'unit', 'model_type': 'MCLIRModel', 'scale': 4, 'num_gpu': 0, 'manual_seed': 0,
        'is_train': True, 'dist': False, 'rank': 0, 'world_size': 1, 'root_path': str(tmp_path),
        'mclir': {'base_model': 'SwinIRModel', **mclir},
        'network_g': network_preset('swinir_tiny'),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None,
                 'experiments_root': root, **paths},
        'train': {'ema_decay': 0.0, 'optim_g': {'type': 'Adam', 'lr': 1e-2, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5}, 'total_iter': 10,
                  'pixel_opt': {'type': 'SPNLoss', 'neg_weight': 0.5, 'vgg_weights': vgg16_file, **pixel_opt}},
        'logger': {'print_freq': 2},
    }
