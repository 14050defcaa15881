"""Checkpoints on disk are complete or absent; damaged or mismatched ones end in an error naming the file."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from basicsr_recipes import train_in_process
from conftest import CPU_OVERRIDES, SWINIR_SPN_OPTIONS, VGG16_FILE_NAME, write_paired_folders
from mclir_plugin.utils.checkpoint import atomic_torch_save

NAME = 'train_SwinIR_SRx4_scratch_P48W8_DIV2K_500k_B4G8'
OPT_FILE = 'train_SwinIR_SRx4_scratch_spn.yml'


def test_atomic_save_killed_midway_leaves_the_old_file(tmp_path):
    """The kernel ends the saving process in the middle of its write, deterministically: a 1 MiB file size limit
    with SIGXFSZ's default action (terminate; Python ignores it unless told otherwise) kills it, with no chance to
    clean up, at the write that crosses 1 MiB of a 4 MiB checkpoint, as a SIGKILL or a power cut would."""
    path = tmp_path / 'ckpt.pth'
    atomic_torch_save({'version': 1, 'w': torch.ones(3)}, str(path))
    child = subprocess.run([sys.executable, '-c', (
        'import resource, signal, torch; from mclir_plugin.utils.checkpoint import atomic_torch_save; '
        'resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1])); '
        'signal.signal(signal.SIGXFSZ, signal.SIG_DFL); '
        f'atomic_torch_save({{"version": 2, "w": torch.ones(1 << 20)}}, {str(path)!r})')],
        capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGXFSZ, child.stderr[-3000:]  # killed, not a Python error
    tmp = tmp_path / 'ckpt.pth.tmp'
    assert tmp.exists() and 0 < tmp.stat().st_size <= 1 << 20  # killed in the middle of the write
    saved = torch.load(path, weights_only=True)
    assert saved['version'] == 1 and torch.equal(saved['w'], torch.ones(3))


@pytest.fixture(scope='module')
def first_run(tmp_path_factory, vgg16_file):
    """A folder where tools/train.py ran BasicSR's SwinIR SPN file (CPU-sized) for 4 iterations, checkpoints at 2
    and 4; trained once for the module (each test works on a copy)."""
    root = tmp_path_factory.mktemp('first_run')
    gt, lq = write_paired_folders(root / 'datasets', n=4, gt_size=48, scale=4)
    (root / OPT_FILE).write_text(SWINIR_SPN_OPTIONS.format(gt=gt, lq=lq))
    os.makedirs(root / 'torch_home' / 'hub' / 'checkpoints')
    os.symlink(vgg16_file, root / 'torch_home' / 'hub' / 'checkpoints' / VGG16_FILE_NAME)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('TORCH_HOME', str(root / 'torch_home'))
        train(root, overrides=CPU_OVERRIDES + ['train:total_iter=4']).check()
    assert sorted(os.listdir(root / 'experiments' / NAME / 'training_states')) == ['2.state', '4.state']
    return root


@pytest.fixture
def run_copy(first_run, tmp_path, monkeypatch):
    """``(cwd, option file, run folder)``: a copy of the first run's folder and option file, ready to resume."""
    shutil.copytree(first_run / 'experiments', tmp_path / 'experiments')
    shutil.copy(first_run / OPT_FILE, tmp_path / OPT_FILE)
    monkeypatch.setenv('TORCH_HOME', str(first_run / 'torch_home'))
    return tmp_path, tmp_path / OPT_FILE, tmp_path / 'experiments' / NAME


def train(cwd, *extra: str, overrides: list[str]):
    """tools/train.py's entry point in this process (test_train_tools.py starts it as a process)."""
    return train_in_process(cwd, '-opt', str(cwd / OPT_FILE), *extra, '--force_yml', *overrides)


def test_resume_ignores_a_save_cut_short_and_names_damaged_files(run_copy):
    cwd, opt_file, run_dir = run_copy
    # a process killed while saving iteration 6 leaves temporary files only: resume takes iteration 4
    (run_dir / 'training_states' / '6.state.tmp').write_bytes(b'\x80\x02partial')
    (run_dir / 'models' / 'net_g_6.pth.tmp').write_bytes(b'\x80\x02partial')
    resumed = train(cwd, '--auto_resume', overrides=CPU_OVERRIDES + ['train:total_iter=5']).check()
    assert 'Resuming training from epoch' in resumed
    assert 'iter: 4.' in resumed

    # a damaged state (e.g. written by a tool without atomic saves): the error names it and the way out
    (run_dir / 'training_states' / '8.state').write_bytes(b'not a checkpoint')
    damaged = train(cwd, '--auto_resume', overrides=CPU_OVERRIDES + ['train:total_iter=9'])
    assert damaged.error is not None
    assert f"Cannot read the training state '{run_dir / 'training_states' / '8.state'}'" in damaged.out
    assert 'Delete it to resume from the previous checkpoint' in damaged.out


def test_mismatched_network_names_the_checkpoint(run_copy):
    cwd, opt_file, run_dir = run_copy
    mismatched = train(cwd, '--auto_resume',
                       overrides=[o for o in CPU_OVERRIDES if 'embed_dim' not in o] + ['network_g:embed_dim=24',
                                                                                        'train:total_iter=6'])
    assert mismatched.error is not None
    assert f"Cannot load 'params' from '{run_dir / 'models' / 'net_g_4.pth'}' into SwinIR" in mismatched.out
    assert 'Check that network_g matches the checkpoint' in mismatched.out


def test_resume_with_other_negatives_names_the_state(run_copy):
    cwd, opt_file, run_dir = run_copy
    text = opt_file.read_text().replace('neg_iter: [1, 2, 3, 4]', 'neg_iter: [1, 2]')
    opt_file.write_text(text)
    other = train(cwd, '--auto_resume', overrides=CPU_OVERRIDES + ['train:total_iter=6'])
    assert other.error is not None
    assert 'holds 4 negative models but the options ask for 2' in other.out
    assert str(run_dir / 'training_states' / '4.state') in other.out
