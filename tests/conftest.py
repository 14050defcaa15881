"""Shared fixtures: a random-weight VGG16 file in torchvision's layout, tiny image trees, option builders."""
from __future__ import annotations

import os
import sys

import mclir_plugin  # noqa: F401  (before basicsr: compat shim and registration)

import cv2
import numpy as np
import pytest
import torch
import torchvision

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def run_tool(args: list[str], cwd, timeout: int = 600, env: dict | None = None):
    """Run ``python tools/<...>.py args`` in ``cwd`` with this interpreter; return the CompletedProcess."""
    import subprocess
    full_env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='2')
    full_env.update(env or {})
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
