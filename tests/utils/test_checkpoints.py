"""Checkpoints on disk are complete or absent; damaged or mismatched ones end in an error naming the file."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import torch

from conftest import CPU_OVERRIDES, train
from mclir_plugin.utils.checkpoint import atomic_torch_save


def test_atomic_save_killed_midway_leaves_the_old_file(tmp_path):
    path = tmp_path / 'ckpt.pth'
    atomic_torch_save({'version': 1, 'w': torch.ones(3)}, str(path))
    child = subprocess.Popen([sys.executable, '-c', (
        'import torch, sys; from mclir_plugin.utils.checkpoint import atomic_torch_save; '
        f'atomic_torch_save({{"version": 2, "w": torch.ones(256, 1024, 1024)}}, {str(path)!r})')])  # 1 GiB
    tmp = tmp_path / 'ckpt.pth.tmp'
    deadline = time.time() + 120
    while not (tmp.exists() and tmp.stat().st_size > 1 << 20) and time.time() < deadline and child.poll() is None:
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert tmp.exists() and tmp.stat().st_size < 1 << 30  # killed in the middle of the write
    saved = torch.load(path, weights_only=True)
    assert saved['version'] == 1 and torch.equal(saved['w'], torch.ones(3))


def _first_run(swinir_run):
    cwd, opt_file = swinir_run
    result = train(cwd, opt_file, overrides=CPU_OVERRIDES + ['train:total_iter=4'])
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd, opt_file, cwd / 'experiments' / 'train_SwinIR_SRx4_scratch_P48W8_DIV2K_500k_B4G8'


def test_resume_ignores_a_save_cut_short_and_names_damaged_files(swinir_run):
    cwd, opt_file, run_dir = _first_run(swinir_run)
    # a process killed while saving iteration 6 leaves temporary files only: resume takes iteration 4
    (run_dir / 'training_states' / '6.state.tmp').write_bytes(b'\x80\x02partial')
    (run_dir / 'models' / 'net_g_6.pth.tmp').write_bytes(b'\x80\x02partial')
    resumed = train(cwd, opt_file, '--auto_resume', overrides=CPU_OVERRIDES + ['train:total_iter=5'])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'Resuming training from epoch' in resumed.stdout + resumed.stderr
    assert 'iter: 4.' in resumed.stdout + resumed.stderr

    # a damaged state (e.g. written by a tool without atomic saves): the error names it and the way out
    (run_dir / 'training_states' / '8.state').write_bytes(b'not a checkpoint')
    damaged = train(cwd, opt_file, '--auto_resume', overrides=CPU_OVERRIDES + ['train:total_iter=9'])
    assert damaged.returncode != 0
    assert f"Cannot read the training state '{run_dir / 'training_states' / '8.state'}'" in damaged.stderr
    assert 'Delete it to resume from the previous checkpoint' in damaged.stderr


def test_mismatched_network_names_the_checkpoint(swinir_run):
    cwd, opt_file, run_dir = _first_run(swinir_run)
    mismatched = train(cwd, opt_file, '--auto_resume',
                       overrides=[o for o in CPU_OVERRIDES if 'embed_dim' not in o] + ['network_g:embed_dim=24',
                                                                                        'train:total_iter=6'])
    assert mismatched.returncode != 0
    assert f"Cannot load 'params' from '{run_dir / 'models' / 'net_g_4.pth'}' into SwinIR" in mismatched.stderr
    assert 'Check that network_g matches the checkpoint' in mismatched.stderr


def test_resume_with_other_negatives_names_the_state(swinir_run):
    cwd, opt_file, run_dir = _first_run(swinir_run)
    text = opt_file.read_text().replace('neg_iter: [1, 2, 3, 4]', 'neg_iter: [1, 2]')
    opt_file.write_text(text)
    other = train(cwd, opt_file, '--auto_resume', overrides=CPU_OVERRIDES + ['train:total_iter=6'])
    assert other.returncode != 0
    assert 'holds 4 negative models but the options ask for 2' in other.stderr
    assert str(run_dir / 'training_states' / '4.state') in other.stderr
