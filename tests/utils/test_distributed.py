"""Two processes through torchrun (gloo on CPU): training, validation, checkpoints, negatives equal on every rank."""
from __future__ import annotations

import os
import re

import torch
import yaml

from conftest import REPO, run_command, tiny_swinir_options, write_paired_folders


def test_two_process_gloo_run_keeps_negatives_in_sync_and_resumes(tmp_path, empty_torch_home):
    gt, lq = write_paired_folders(tmp_path / 'data', n=8, gt_size=48, scale=4)
    opt = tiny_swinir_options('ddp', gt, lq, {'neg_iter': [1, 3], 'neg_decay': [0.1, 0.5], 'neg_start': 0.3,
                                              'sync_check_interval': 1})
    del opt['manual_seed']  # no manual_seed: ranks must agree
    opt['dist_params'] = {'backend': 'nccl', 'port': 29500}  # a GPU file's setting: becomes gloo without CUDA
    (tmp_path / 'opt.yml').write_text(yaml.safe_dump(opt))
    script = os.path.join(REPO, 'tools', 'dist_train.sh')
    one_thread = {'OMP_NUM_THREADS': '1'}  # two processes on two cores
    result = run_command(['bash', script, '2', 'opt.yml'], cwd=tmp_path, env=one_thread)  # the README's launcher
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert 'World size (gpu number): 2' in out
    assert out.count('Negative models agree across 2 ranks at iteration') == 4  # iterations 1-4, logged by rank 0
    # the start blend (seeds differ per rank here): identical on both ranks, apart from the network and each other
    assert out.count('Negative models agree across 2 ranks when built') == 1
    start = re.search(r'start blend \(neg_start 0.3\): relative distance to the network ([\d.e-]+) ([\d.e-]+); '
                      r'smallest between two negatives ([\d.e-]+)', out)
    assert start and all(float(x) > 1e-3 for x in start.groups()), out[-4000:]
    assert '# psnr:' in out
    state = torch.load(tmp_path / 'experiments/ddp/training_states/4.state', weights_only=True)
    assert len(state['progress']) == 2  # both ranks' random states
    assert not torch.equal(state['progress'][0]['rng']['torch'], state['progress'][1]['rng']['torch'])
    assert state['mclir']['refresh_count'] == [4, 1]

    opt['train']['total_iter'] = 6
    (tmp_path / 'opt.yml').write_text(yaml.safe_dump(opt))
    resumed = run_command(['bash', script, '2', 'opt.yml', '--auto_resume'], cwd=tmp_path, env=one_thread)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-4000:]
    assert 'Resuming training from epoch: 1, iter: 4.' in out  # 2 batches an epoch per rank
    assert 'negatives restored from the training state' in out
    assert out.count('Negative models agree across 2 ranks at iteration') == 2


def _sync_check_worker(rank: int, init_file: str, results) -> None:
    """Both cases in one process group (one spawn): identical negatives agree, a 1e-6 difference is caught; and
    the draws of ``mclir.neg_per_step`` are the same on both ranks although their global random streams differ."""
    import torch.distributed as dist
    from torch import nn

    from mclir_plugin import HistoryNegativeHook
    from mclir_plugin.hooks.history_negatives import HistoryNegatives
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    try:
        for perturb in (False, True):
            torch.manual_seed(0)  # the same network on both ranks, as DDP guarantees
            net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
            hook = HistoryNegativeHook(neg_iter=[1], neg_start=0.5, seed=1, sync_check_interval=1)
            hook.build(net)
            if perturb and rank == 1:
                with torch.no_grad():
                    hook.negatives[0][0].weight[0, 0, 0, 0] += 1e-6
            try:
                hook.step(net, 1)
                results[(rank, perturb)] = 'agree'
            except RuntimeError as err:
                results[(rank, perturb)] = str(err)
        torch.manual_seed(100 + rank)  # as BasicSR seeds rank r (seed + r): only the bank's own generator draws
        bank = HistoryNegatives(neg_iter=[1] * 5, neg_start=0, seed=7)
        bank.build(nn.Conv2d(3, 3, 1))
        results[(rank, 'draws')] = [bank.draw(2) for _ in range(6)]
    finally:
        dist.destroy_process_group()


def test_sync_check_detects_a_difference(tmp_path):
    import torch.multiprocessing as mp
    results = mp.Manager().dict()
    mp.spawn(_sync_check_worker, args=(str(tmp_path / 'init'), results), nprocs=2)
    assert [results[(r, False)] for r in (0, 1)] == ['agree', 'agree']
    assert all('Negative models differ across ranks at iteration 1' in results[(r, True)] for r in (0, 1))
    draws = results[(0, 'draws')]
    assert draws == results[(1, 'draws')] and len({tuple(d) for d in draws}) > 1


ADAPTIVE_CASES = ((0.5, 0), (1.5, None))  # (threshold, refreshed negative): rank 1 alone would never refresh,
# rank 0 alone always; only the mean over the ranks counts


def _adaptive_worker(rank: int, init_file: str, results) -> None:
    import torch.distributed as dist
    from torch import nn

    from mclir_plugin import HistoryNegativeHook
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    try:
        for threshold, _ in ADAPTIVE_CASES:
            torch.manual_seed(0)
            net = nn.Conv2d(3, 3, 1)
            hook = HistoryNegativeHook(neg_iter=[1, 1], neg_start=0, adaptive_threshold=threshold)
            hook.build(net)
            target = torch.zeros(2, 3, 4, 4)
            # rank 0 sees a wild batch (spread about 2), rank 1 a calm one (spread 0)
            output = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1)) if rank == 0 else target + 0.1
            results[(rank, threshold)] = hook.adaptive_step(net, output, target, 1)
    finally:
        dist.destroy_process_group()


def test_adaptive_refresh_decision_is_shared_by_the_ranks(tmp_path):
    import torch.multiprocessing as mp
    results = mp.Manager().dict()
    mp.spawn(_adaptive_worker, args=(str(tmp_path / 'init'), results), nprocs=2)
    for threshold, expected in ADAPTIVE_CASES:
        assert [results[(r, threshold)] for r in (0, 1)] == [expected, expected]
