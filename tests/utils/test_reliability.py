"""Fail-safe runs: a diverged run is never the checkpoint to resume, a run owns its folder, failed writes and damaged
weight files are named, a stalled rank ends the run. Every scenario runs for real (tools/train.py processes, gloo,
the kernel's file size limit), on a tiny SwinIR."""
from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import yaml

from basicsr_recipes import basicsr_log, train_in_process
from conftest import REPO, run_tool, tiny_swinir_options, write_paired_folders
from mclir_plugin.utils import run_lock
from mclir_plugin.utils.checkpoint import CheckpointWriteError, atomic_torch_save
from mclir_plugin.models.mclir_model import nonfinite_stop_message

TRAIN = os.path.join(REPO, 'tools', 'train.py')


def tiny_options(data_root: str, name: str, **train) -> dict:
    """A SwinIR x4 run of a few hundred parameters that takes well under a second an iteration on a CPU."""
    gt, lq = write_paired_folders(data_root, n=4, gt_size=32, scale=4)
    train = {'ema_decay': 0, 'total_iter': 6, 'pixel_opt': {'type': 'SPNLoss', 'neg_weight': 0.1,
                                                          'vgg_fallback': 'random', 'layer_weights': {'relu1_2': 1.0}},
             **train}
    opt = tiny_swinir_options(name, gt, lq, {'neg_iter': [1, 2]}, validation=False,
                              train_set={'gt_size': 16, 'use_hflip': False, 'use_rot': False},
                              network={'img_size': 4, 'window_size': 2, 'depths': [1]}, **train)
    opt['mclir'].update(max_nonfinite_steps=3, visualize=False)
    opt['train']['scheduler']['milestones'] = [3]
    opt['logger']['save_checkpoint_freq'] = 3
    return opt


def train_with(cwd, opt: dict, *flags: str, file: str = 'opt.yml'):
    (cwd / file).write_text(yaml.safe_dump(opt))
    return run_tool([TRAIN, '-opt', file, *flags], cwd=cwd)


def log_text(run_dir) -> str:
    return ''.join(p.read_text() for p in sorted(run_dir.glob('train_*.log')))


@pytest.fixture(scope='module')
def diverged(tmp_path_factory):
    """The issue's divergence, made tiny: lr x 1e8 after iteration 3, checkpoints every 3 iterations. Iteration 4
    blows the weights up, 5-7 give NaN losses, and the third in a row stops the run (iteration 6 falls in the
    streak)."""
    cwd = tmp_path_factory.mktemp('diverged')
    opt = tiny_options(str(cwd / 'data'), 'diverge', total_iter=9)
    opt['train']['scheduler']['gamma'] = 1e8
    result = train_with(cwd, opt)
    return cwd, opt, cwd / 'experiments' / 'diverge', result


def test_nonfinite_streak_writes_no_checkpoint_and_names_the_one_before(diverged):
    cwd, _, run_dir, result = diverged
    assert result.returncode != 0
    state = run_dir / 'training_states' / '3.state'
    assert (f'3 non-finite losses in a row (iterations 5-7). The last checkpoint written before they began is '
            f'{state} (network: net_g_3.pth') in result.stderr
    assert 'train.resume_lr: options' in result.stderr
    # iteration 6 was due for a checkpoint but fell in the streak: nothing written, with a warning
    assert sorted(os.listdir(run_dir / 'training_states')) == ['3.state']
    assert sorted(os.listdir(run_dir / 'models')) == ['net_g_3.pth']
    assert f'Iteration 6: no checkpoint written, the run is inside a streak of 2 non-finite losses; the newest ' \
           f'checkpoint stays {state}' in log_text(run_dir)
    assert not (cwd / 'experiments' / 'diverge.lock').exists()  # released at exit, even on an error


def test_nonfinite_stop_without_checkpoint_says_there_is_none():
    message = nonfinite_stop_message(3, 4, None)
    assert 'none yet' not in message
    assert 'No checkpoint was written before iteration 2, so there is nothing to resume: start the run afresh ' \
           'with a lower train.optim_g.lr' in message


def test_second_live_run_with_the_same_name_is_refused_before_touching_anything(diverged):
    cwd, opt, run_dir, _ = diverged
    before = sorted(str(p.relative_to(cwd)) for p in (cwd / 'experiments').rglob('*'))
    lock = str(cwd / 'experiments' / 'diverge.lock')
    run_lock.acquire(lock)  # this test process is the live first run
    try:
        second = train_with(cwd, opt, file='second.yml')  # not a resume: BasicSR would rename the folder
    finally:
        run_lock.release(lock)
    assert second.returncode != 0
    assert (f'Another run is using this experiment folder: pid {os.getpid()} on host {socket.gethostname()}, '
            f'started ') in second.stderr
    assert f'holds {lock}' in second.stderr
    assert sorted(str(p.relative_to(cwd)) for p in (cwd / 'experiments').rglob('*')) == before  # no _archived_
    assert not os.path.exists(lock)


def test_resume_with_a_lower_rate_trains_on_over_a_stale_lock(diverged):
    cwd, opt, run_dir, _ = diverged
    # what a kill -9 leaves: the lock of a process that no longer exists, and a partial save
    ended = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    (cwd / 'experiments' / 'diverge.lock').write_text(json.dumps(
        {'pid': int(ended.stdout), 'host': socket.gethostname(), 'started': time.time(), 'command': 'killed'}))
    (run_dir / 'training_states' / '6.state.tmp').write_bytes(b'partial')
    opt = dict(opt, train=dict(opt['train'], optim_g=dict(opt['train']['optim_g'], lr=1e-4), total_iter=6,
                               scheduler={'type': 'MultiStepLR', 'milestones': [3], 'gamma': 0.5},
                               resume_lr='options'))
    (cwd / 'lower_lr.yml').write_text(yaml.safe_dump(opt))
    # tools/train.py's entry point in this process: the lock's owner is another (ended) process all the same
    log = train_in_process(cwd, '-opt', 'lower_lr.yml', '--auto_resume').check()
    assert 'Resuming training from epoch: 1, iter: 3.' in log
    assert f'Took over the stale lock {cwd / "experiments" / "diverge.lock"} of a run that has ended' in log
    assert 'Removed 1 partial file(s) of an interrupted save' in log and not (run_dir / 'training_states' /
                                                                               '6.state.tmp').exists()
    assert 'train.resume_lr: options' in log and 'lr now (1.000e-04) (the training state had (1.000e-03))' in log
    resumed_lines = log[log.index('Resuming training'):]
    losses = [float(v) for v in re.findall(r'l_pix: (\S+)', resumed_lines)]
    assert len(losses) == 3 and all(map(lambda v: v == v and abs(v) < 1, losses))  # finite, iterations 4-6
    assert re.findall(r'iter:\s+4, lr:\((\S+),\)', resumed_lines) == ['5.000e-05']  # the options' schedule
    assert 'non-finite' not in resumed_lines


def test_failed_checkpoint_write_removes_its_partial_file_and_names_the_error(tmp_path):
    path = tmp_path / 'net_g_4.pth'
    atomic_torch_save({'version': 1}, str(path))
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, old_limit[1]))
    try:
        with pytest.raises(CheckpointWriteError) as caught:
            atomic_torch_save({'version': 2, 'w': torch.ones(1 << 20)}, str(path))  # 4 MiB against a 1 MiB limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    message = str(caught.value)
    assert f"Cannot write the checkpoint '{path}': File too large (errno 27)" in message
    assert f"The partial file was removed and '{path}' keeps its previous content" in message
    assert 'unexpected pos' not in message and caught.value.errno == 27
    assert os.listdir(tmp_path) == ['net_g_4.pth']
    assert torch.load(path, weights_only=True) == {'version': 1}


def test_stalled_rank_ends_the_run_naming_rank_and_iteration(tmp_path):
    opt = tiny_options(str(tmp_path / 'data'), 'stall', total_iter=10000)
    opt['dist_params'] = {'backend': 'gloo', 'timeout': 0.1}  # 6 s
    opt['logger']['save_checkpoint_freq'] = 10000
    (tmp_path / 'opt.yml').write_text(yaml.safe_dump(opt))
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    ranks = []
    for rank in (0, 1):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE='2', MASTER_ADDR='127.0.0.1',
                   MASTER_PORT=str(port), OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
        ranks.append(subprocess.Popen([sys.executable, TRAIN, '-opt', 'opt.yml', '--launcher', 'pytorch'],
                                      cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, text=True,
                                      stderr=subprocess.PIPE if rank == 0 else subprocess.DEVNULL))
    try:
        log = tmp_path / 'experiments' / 'stall'
        deadline = time.time() + 120
        while 'iter:       1,' not in (log_text(log) if log.exists() else '') and time.time() < deadline:
            assert ranks[0].poll() is None, ranks[0].stderr.read()[-3000:]
            time.sleep(0.1)
        os.kill(ranks[1].pid, signal.SIGSTOP)  # rank 1 stops answering, as under SIGSTOP or a hung file system
        stopped = time.time()
        _, err = ranks[0].communicate(timeout=60)
        waited = time.time() - stopped
    finally:
        for proc in ranks:
            proc.kill()
            proc.wait()
    assert ranks[0].returncode != 0
    found = re.search(r'StalledRankError: Rank 0 of 2: a collective operation in iteration (\d+) failed: rank 1 did '
                      r'not answer within dist_params.timeout = 0.1 min', err)
    assert found, err[-3000:]
    assert int(found.group(1)) >= 1 and waited < 30
    assert f'iteration {found.group(1)} failed' in log_text(log)  # in the run's log file too


@pytest.fixture(scope='module')
def truncated_file(tmp_path_factory) -> str:
    """A torch file cut in half, as an interrupted download or copy leaves it."""
    folder = tmp_path_factory.mktemp('truncated')
    torch.save({'features.0.weight': torch.ones(64, 3, 3, 3), 'params': {'weight': torch.ones(4, 3, 1, 1)}},
               folder / 'whole.pth')
    data = (folder / 'whole.pth').read_bytes()
    (folder / 'vgg16-397923af.pth').write_bytes(data[:len(data) // 2])
    return str(folder / 'vgg16-397923af.pth')


def test_truncated_vgg_file_is_named_with_the_fix(truncated_file, tmp_path, monkeypatch):
    from mclir_plugin.losses.vgg_features import VGGFeatures
    with pytest.raises(RuntimeError) as explicit:
        VGGFeatures(['relu1_2'], weights=truncated_file)
    assert f"Cannot read the vgg16 weights file '{truncated_file}' (" in str(explicit.value)
    assert 'the file is truncated or damaged' in str(explicit.value)
    # the same file in torchvision's cache: the message says to delete it and copy it again
    (tmp_path / 'hub' / 'checkpoints').mkdir(parents=True)
    os.symlink(truncated_file, tmp_path / 'hub' / 'checkpoints' / 'vgg16-397923af.pth')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    with pytest.raises(RuntimeError) as cached:
        VGGFeatures(['relu1_2'])
    assert str(tmp_path / 'hub' / 'checkpoints' / 'vgg16-397923af.pth') in str(cached.value)
    assert 'Delete it and copy vgg16-397923af.pth there again' in str(cached.value)


def test_truncated_network_and_training_state_are_named(truncated_file):
    from basicsr.models.base_model import BaseModel
    from mclir_plugin.compat import load_resume_state
    model = BaseModel({'num_gpu': 0, 'is_train': True})  # BasicSR's load_network with the plugin's wrapper
    with pytest.raises(RuntimeError) as network:
        model.load_network(torch.nn.Conv2d(3, 4, 1), truncated_file)
    assert f"Cannot read the network file '{truncated_file}' (" in str(network.value)
    assert 'For path.pretrain_network_g, copy the file again' in str(network.value)
    with pytest.raises(RuntimeError) as state:
        load_resume_state({'auto_resume': False, 'num_gpu': 0, 'path': {'resume_state': truncated_file}})
    assert f"Cannot read the training state '{truncated_file}'" in str(state.value)
    assert 'Delete it to resume from the previous checkpoint' in str(state.value)


def _resumed_model(resume_lr: str | None):
    """BasicSR's BaseModel with one Adam and BasicSR's MultiStepRestartLR, resumed from the state of a run that
    had lr 1e-3 and gamma 1e8 after 3 scheduler steps; the option file now says lr 1e-4, gamma 0.5."""
    from basicsr.models.base_model import BaseModel
    from basicsr.models.lr_scheduler import MultiStepRestartLR

    def model_with(lr, gamma, train_extra):
        model = BaseModel({'num_gpu': 0, 'is_train': True, 'train': {
            'optim_g': {'type': 'Adam', 'lr': lr}, 'scheduler': {'milestones': [3], 'gamma': gamma}, **train_extra}})
        model.optimizers = [torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=lr)]
        model.schedulers = [MultiStepRestartLR(model.optimizers[0], milestones=[3], gamma=gamma)]
        return model

    old = model_with(1e-3, 1e8, {})
    for _ in range(3):
        old.optimizers[0].step()
        old.schedulers[0].step()
    state = {'iter': 4, 'optimizers': [old.optimizers[0].state_dict()],
             'schedulers': [old.schedulers[0].state_dict()]}
    new = model_with(1e-4, 0.5, {} if resume_lr is None else {'resume_lr': resume_lr})
    new.resume_training(state)
    return new


def test_resume_lr_applies_the_option_files_rate_and_schedule():
    with basicsr_log() as lines:  # BasicSR's logger, which stops propagating to caplog once a run initialised it
        kept = _resumed_model(None)  # BasicSR's behaviour, with a warning naming the key
    assert kept.optimizers[0].param_groups[0]['lr'] == pytest.approx(1e5)
    assert 'Set `train.resume_lr: options` to resume with the option file' in '\n'.join(lines)
    applied = _resumed_model('options')
    assert applied.optimizers[0].param_groups[0]['lr'] == pytest.approx(5e-5)  # 1e-4 past the milestone, x 0.5
    assert applied.optimizers[0].param_groups[0]['initial_lr'] == pytest.approx(1e-4)
    assert applied.schedulers[0].last_epoch == 3 and applied.schedulers[0].gamma == 0.5
    applied.update_learning_rate(5)  # the next step keeps the new schedule
    assert applied.optimizers[0].param_groups[0]['lr'] == pytest.approx(5e-5)
    with pytest.raises(ValueError, match="train.resume_lr must be one of 'checkpoint', 'options' \\(checkpoint: "):
        _resumed_model('option')
