"""A GAN and a video model through 2 gloo ranks: exact resume, identical negatives, their picture (issue 12).

For each family one uninterrupted 2-process run of 4 iterations (the two ranks ``tools/dist_train.sh`` starts,
launched without torchrun's own process; checkpoints at 2 and 4)
and a second run that resumes its iteration-2 checkpoint in new processes (the run folder copied without what
iterations 3-4 wrote, then ``--auto_resume``) must end with the same networks, negatives, optimizers (``net_d``'s
too) and random states (max |diff| <= 1e-6); the hook's per-iteration checksum comparison must find the negatives
equal on both ranks at every iteration; ``l_neg``/``l_neg_ratio`` are logged and the validation writes the picture
of the negatives (video: the centre frame). Real-ESRGAN's training-pair queue is checked in-process through a
save and a resume.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys

import cv2
import pytest
import torch
import yaml

from basicsr_recipes import drop_after
from conftest import REPO

TOLERANCE = 1e-6
MCLIR = {'hook': {'neg_iter': [1, 3], 'neg_decay': [0.1, 0.5], 'neg_start': 0.3, 'sync_check_interval': 1}}
SPN = {'type': 'SPNLoss', 'neg_weight': 0.5, 'vgg_fallback': 'random'}
ADAM = {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9, 0.99]}
TRAIN = os.path.join(REPO, 'tools', 'train.py')


def common(name: str, base_model: str) -> dict:
    return {
        'name': name, 'model_type': 'MCLIRModel', 'scale': 4, 'num_gpu': 0, 'manual_seed': 5,
        'mclir': {'base_model': base_model, **MCLIR},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False},
        'dist_params': {'backend': 'nccl', 'port': 29500},  # becomes gloo without CUDA
    }


def gan_options() -> dict:
    """ESRGAN (relativistic GAN) with a tiny RRDBNet and U-Net discriminator on the built-in image pairs."""
    data = {'type': 'SyntheticPairedDataset', 'task': 'sr', 'images': ['astronaut', 'coffee']}
    return {
        **common('family_gan', 'ESRGANModel'),
        'datasets': {
            'train': {**data, 'name': 'tiny', 'gt_size': 32, 'length': 16, 'use_shuffle': True,
                      'num_worker_per_gpu': 0, 'batch_size_per_gpu': 2, 'dataset_enlarge_ratio': 1,
                      'prefetch_mode': None},
            'val': {**data, 'name': 'tiny_val', 'images': ['chelsea'], 'val_size': 32}},
        'network_g': {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1,
                      'num_grow_ch': 4},
        'network_d': {'type': 'UNetDiscriminatorSN', 'num_in_ch': 3, 'num_feat': 8},
        'train': {'ema_decay': 0.9, 'optim_g': ADAM, 'optim_d': {**ADAM, 'lr': 1e-4},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [3], 'gamma': 0.5}, 'total_iter': 4,
                  'warmup_iter': -1, 'pixel_opt': {**SPN, 'loss_weight': 0.01},
                  'gan_opt': {'type': 'GANLoss', 'gan_type': 'vanilla', 'loss_weight': 0.1},
                  'net_d_iters': 1, 'net_d_init_iters': 0},
        'val': {'val_freq': 4, 'save_img': False,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True}}},
    }


def video_options() -> dict:
    """BasicVSR (VideoRecurrentModel) with a tiny network and a random SPyNet on built-in 2-frame clips.

    LR frames are 36 pixels a side: SPyNet pads them to a multiple of 32 and halves them 5 times, so 32 or less
    leaves an empty top level. At that size VGG16 up to relu3_3 over every frame would cost seconds an iteration
    on CPU; the first layer keeps the run short (the same loss code runs), and two frames need the fewest of SPyNet's
    flows (its 7x7 convolutions at 64 x 64 cost most of the step)."""
    data = {'type': 'SyntheticVideoDataset', 'images': ['astronaut', 'coffee'], 'num_frame': 2,
            'gt_frames': 'all', 'max_shift': 2}
    return {
        **common('family_video', 'VideoRecurrentModel'),
        'datasets': {
            'train': {**data, 'name': 'tiny', 'gt_size': 144, 'length': 8, 'use_shuffle': True,
                      'num_worker_per_gpu': 0, 'batch_size_per_gpu': 1, 'dataset_enlarge_ratio': 1,
                      'prefetch_mode': None},
            'val': {**data, 'name': 'tiny_val', 'images': ['chelsea'], 'val_size': 144}},
        'network_g': {'type': 'BasicVSR', 'num_feat': 8, 'num_block': 1, 'spynet_path': None},
        'train': {'ema_decay': 0.9, 'optim_g': ADAM, 'flow_lr_mul': 0.125, 'fix_flow': 0,
                  'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [4], 'restart_weights': [1],
                                'eta_min': 1e-5},
                  'total_iter': 4, 'warmup_iter': -1,
                  'pixel_opt': {**SPN, 'rec_loss': 'charbonnier', 'layer_weights': {'relu1_1': 1.0}}},
        'val': {'val_freq': 4, 'save_img': False,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False}}},
        'find_unused_parameters': True,
    }


FAMILIES = {'gan': (gan_options, ('net_g', 'net_d'), 2), 'video': (video_options, ('net_g',), 1)}


def dist_train(cwd, *extra) -> str:
    """``tools/train.py --launcher pytorch`` as 2 gloo ranks, with the environment torchrun gives them (one thread
    each, on two cores); both ranks' output. test_distributed.py runs tools/dist_train.sh itself: here torchrun's
    process (another interpreter importing torch) would only cost time."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    logs = [cwd / f'rank{rank}.out' for rank in (0, 1)]
    ranks = []
    try:
        for rank, log in enumerate(logs):
            env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE='2', LOCAL_WORLD_SIZE='2',
                       MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
            with open(log, 'w') as out:  # files, not pipes: a rank blocked on a full pipe would stall the other
                ranks.append(subprocess.Popen([sys.executable, TRAIN, '-opt', 'opt.yml', '--launcher', 'pytorch',
                                               *extra], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT))
        codes = [proc.wait(timeout=600) for proc in ranks]  # a rank that fails ends the other's collectives
    finally:
        for proc in ranks:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    out = ''.join(log.read_text() for log in logs)
    assert codes == [0, 0], out[-4000:]
    return out


def max_difference(a, b, where: str = 'state') -> float:
    """The largest |a - b| over every tensor of two nested states; anything else must be equal."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype, where
        if not a.is_floating_point():
            assert torch.equal(a, b), where
            return 0.
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        return max([max_difference(a[k], b[k], f'{where}[{k!r}]') for k in a], default=0.)
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        return max([max_difference(x, y, f'{where}[{i}]') for i, (x, y) in enumerate(zip(a, b))], default=0.)
    assert a == b, f'{where}: {a!r} != {b!r}'
    return 0.


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_two_rank_run_resumes_exactly_with_identical_negatives(tmp_path, empty_torch_home, family):
    make_options, networks, n_optimizers = FAMILIES[family]
    opt = make_options()
    straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
    straight.mkdir()
    (straight / 'opt.yml').write_text(yaml.safe_dump(opt))
    out = dist_train(straight)
    assert 'World size (gpu number): 2' in out
    assert out.count('Negative models agree across 2 ranks at iteration') == 4, out[-4000:]
    logged = re.findall(r'iter:\s+(\d+),.*? l_neg: (\S+) l_neg_ratio: (\S+)', out)
    assert [int(it) for it, _, _ in logged] == [1, 2, 3, 4], out[-4000:]
    assert all(float(neg) > 0 and float(ratio) > 0 for _, neg, ratio in logged)
    run_dir = f"experiments/{opt['name']}"
    # input | output | 2 negatives | ground truth | distance: six panels of the (centre-frame) validation output
    picture = cv2.imread(str(straight / run_dir / 'visualization' / 'mclir_negatives' / '4.png'))
    assert picture is not None and picture.shape == (32 if family == 'gan' else 144, 6 * picture.shape[0], 3)

    shutil.copytree(straight / 'experiments', resumed / 'experiments')
    shutil.copy(straight / 'opt.yml', resumed / 'opt.yml')
    drop_after(resumed / run_dir, 2)
    out = dist_train(resumed, '--auto_resume')
    assert 'iter: 2.' in re.search(r'Resuming training from epoch: \d+, iter: \d+\.', out)[0]
    assert 'negatives restored from the training state' in out
    assert 'replayed 2 batch(es) of the interrupted epoch' in out  # 4 batches an epoch per rank: mid-epoch
    assert out.count('Negative models agree across 2 ranks at iteration') == 2
    assert (resumed / run_dir / 'visualization' / 'mclir_negatives' / '4.png').is_file()

    for net in networks:
        a = torch.load(straight / run_dir / 'models' / f'{net}_4.pth', weights_only=True)
        b = torch.load(resumed / run_dir / 'models' / f'{net}_4.pth', weights_only=True)
        assert max_difference(a, b, net) <= TOLERANCE, net
    sa = torch.load(straight / run_dir / 'training_states' / '4.state', weights_only=True)
    sb = torch.load(resumed / run_dir / 'training_states' / '4.state', weights_only=True)
    assert len(sa['optimizers']) == n_optimizers and len(sa['mclir']['negatives']) == 2
    assert len(sa['progress']) == 2  # both ranks' random states
    # negatives, optimizers (net_d's too), schedulers, neg_weight, both ranks' random states, epoch position
    assert max_difference(sa, sb) <= TOLERANCE


def test_realesrgan_training_pair_queue_survives_save_and_resume(tmp_path, empty_torch_home):
    """Real-ESRNet's pool of degraded pairs (``realesrgan_queue`` in the training state) is restored, so the batch
    drawn from it after a resume is the uninterrupted run's. In-process: the full run is the same pipeline as above."""
    from basicsr.models import build_model
    from basicsr.utils import set_random_seed

    gt_size, batch = 32, 2
    states = tmp_path / 'training_states'
    states.mkdir()
    opt = {
        'model_type': 'MCLIRModel', 'scale': 4, 'num_gpu': 0, 'is_train': True, 'dist': False, 'rank': 0,
        'world_size': 1, 'manual_seed': 0, 'gt_size': gt_size, 'queue_size': 2 * batch, 'gt_usm': True,
        'mclir': {'base_model': 'RealESRNetModel_basicsr', 'hook': {'neg_iter': [1]}},
        'network_g': {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 4, 'num_block': 1,
                      'num_grow_ch': 4},
        'path': {'experiments_root': str(tmp_path), 'training_states': str(states), 'resume_state': None},
        'train': {'optim_g': ADAM, 'scheduler': {'type': 'MultiStepLR', 'milestones': [10]},
                  'pixel_opt': {**SPN, 'layer_weights': {'relu1_1': 1.0}}},
        # first-order degradation only (second stage switched off): the queue is what is tested
        'resize_prob': [0.2, 0.7, 0.1], 'resize_range': [0.5, 1.5], 'gaussian_noise_prob': 0.5,
        'noise_range': [1, 30], 'poisson_scale_range': [0.05, 3], 'gray_noise_prob': 0.4, 'jpeg_range': [30, 95],
        'second_blur_prob': 0., 'resize_prob2': [0.3, 0.4, 0.3], 'resize_range2': [0.5, 1.2],
        'gaussian_noise_prob2': 0.5, 'noise_range2': [1, 25], 'poisson_scale_range2': [0.05, 2.5],
        'gray_noise_prob2': 0.4, 'jpeg_range2': [30, 95]}
    pulse = torch.zeros(batch, 7, 7)
    pulse[:, 2:5, 2:5] = 1 / 9

    def batch_of(seed: int) -> dict:
        gt = torch.rand(batch, 3, gt_size, gt_size, generator=torch.Generator().manual_seed(seed))
        return {'gt': gt, 'kernel1': pulse, 'kernel2': pulse, 'sinc_kernel': pulse}

    set_random_seed(0)
    model = build_model(opt)
    for seed in range(3):  # fill the queue (2 batches), then the dequeue path swaps one batch in
        model.feed_data(batch_of(seed))
    model.save_training_state(0, 3)
    state = torch.load(states / '3.state', weights_only=True)
    assert state['realesrgan_queue']['ptr'] == 2 * batch
    resumed = build_model(opt)
    resumed.resume_training(state)
    for name in ('queue_lr', 'queue_gt'):
        assert torch.equal(getattr(resumed, name), getattr(model, name)), name
    assert resumed.queue_ptr == model.queue_ptr
    drawn = []
    for m in (model, resumed):  # the next batch: degraded, then exchanged with random queue entries
        set_random_seed(1)  # the degradation draws from random, numpy and torch
        m.feed_data(batch_of(3))
        drawn.append((m.lq, m.gt))
    assert torch.equal(drawn[0][0], drawn[1][0]) and torch.equal(drawn[0][1], drawn[1][1])
