"""The official MCLIR repository's option files and model types: they train through tools/train.py as written (the
official FFA-Net file's keys on a tiny FFA-Net), follow the official step, and convert to plugin option files."""
from __future__ import annotations

import copy
import math
import os
import re

import cv2
import numpy as np
import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.models import build_model
from basicsr.utils import set_random_seed

from conftest import REPO, run_tool
from mclir_plugin.commands.convert_official import main as convert_main
from mclir_plugin.models.official_models import OFFICIAL_TYPES, translate_official
from mclir_plugin.models.official_step import OfficialStep
from mclir_plugin.archs.presets import network_preset

# The keys, layout and values of the official options/FFANet_RESIDE_IN_fromScratch.yml, except: data paths (this
# test's folders), a tiny FFA-Net, a short run (T_max 2, so the cosine's periodic part shows within 4 iterations),
# two negatives with different decays (so the official pairing matters), no loader workers and logging every step.
OFFICIAL_FFANET = """
name: MCLIR-FFANet_RESIDE_IN_Reproduce_FromScratch
model_type: ImageRestorationModel_FFANet_Neg_Multi
scale: 1
num_gpu: 1
manual_seed: 42

datasets:
  train:
    name: RESIDE-IN
    type: PairedImageDataset
    dataroot_gt: {gt}
    dataroot_lq: {lq}
    filename_tmpl: '{{}}'
    io_backend:
      type: disk

    gt_size: 32
    use_hflip: true
    use_rot: true

    # data loader
    use_shuffle: true
    num_worker_per_gpu: 0
    batch_size_per_gpu: 2
    dataset_enlarge_ratio: 1
    pin_memory: true

  val:
    name: ITS
    type: PairedImageDataset
    dataroot_gt: {gt}
    dataroot_lq: {lq}
    io_backend:
      type: disk

network_g:
  type: FFANet
  gps: 1
  blocks: 1

path:
  pretrain_network_g: ~
  strict_load_g: true
  resume_state: ~

path_neg:
  pretrain_network_g: ~
  strict_load_g: true
  resume_state: ~

train:
  use_grad_norm: 0.05
  ema_decay: 0.999
  neg_decay: [0.1, 0.5]
  neg_iter: [1, 2]
  neg_start: 0.1

  optim_g:
    type: AdamW
    lr: !!float 2e-4
    weight_decay: 0.0
    betas: [0.9, 0.9]

  scheduler:
    type: TrueCosineAnnealingLR
    T_max: 2
    eta_min: !!float 1e-8

  total_iter: 4
  warmup_iter: -1 # no warm up

  pixel_opt:
    type: L1Loss
    loss_weight: 1.0
    reduction: mean
  perceptual_opt:
    type: PerceptualLoss
    layer_weights:
      'relu1_2': 0.2  # before relu
      'relu2_2': 0.3  # before relu
      'relu3_3': 0.5  # before relu
    vgg_type: vgg16
    use_input_norm: true
    range_norm: false
    perceptual_weight: {lam}
    style_weight: 0
    criterion: l1

val:
  val_freq: 4
  save_img: false
  metrics:
    psnr:
      type: calculate_psnr
      crop_border: 0
      test_y_channel: false

logger:
  print_freq: 1
  save_checkpoint_freq: 4
  use_tb_logger: false
  wandb:
    project: ~
    resume_id: ~

dist_params:
  backend: nccl
  port: 29500
"""

EDSR = dict(type='EDSR', num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, upscale=2, res_scale=1,
            img_range=255., rgb_mean=[0.4488, 0.4371, 0.4040])
SWINIR = network_preset('swinir_tiny', upscale=2, img_size=16, depths=[1], embed_dim=12, num_heads=[1],
                        upsampler='pixelshuffle')
FFANET = dict(type='FFANet', gps=1, blocks=1)


@pytest.fixture(scope='module')
def hazy_folders(tmp_path_factory) -> tuple[str, str]:
    """Clear images and darker, washed-out 'hazy' ones under the same names (PairedImageDataset's layout)."""
    root = tmp_path_factory.mktemp('reside')
    rng = np.random.default_rng(0)
    gt_dir, lq_dir = root / 'clear', root / 'hazy'
    gt_dir.mkdir()
    lq_dir.mkdir()
    for i in range(4):  # two batches of 2: BasicSR's epochs then hold two iterations
        clear = cv2.resize(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), (40, 40), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(gt_dir / f'{i}.png'), clear)
        cv2.imwrite(str(lq_dir / f'{i}.png'), (clear * 0.6 + 90).astype(np.uint8))
    return str(gt_dir), str(lq_dir)


def official_text(hazy_folders, lam: float = 0.001) -> str:
    gt, lq = hazy_folders
    return OFFICIAL_FFANET.format(gt=gt, lq=lq, lam=lam)


def runtime_opt(official: dict, tmp_path) -> dict:
    """``official`` as BasicSR's parse_options hands it to build_model (training, CPU)."""
    opt = copy.deepcopy(official)
    root = str(tmp_path / 'run')
    paths = {k: os.path.join(root, k) for k in ('models', 'training_states', 'log', 'visualization')}
    for p in paths.values():
        os.makedirs(p, exist_ok=True)
    opt.update(num_gpu=0, is_train=True, dist=False, rank=0, world_size=1, root_path=str(tmp_path))
    opt['path'] = {**opt.get('path', {}), 'experiments_root': root, **paths}
    return opt


def logged(out: str, key: str) -> list[float]:
    return [float(v) for v in re.findall(rf'{key}: ([-0-9.e+]+)', out)]


def test_official_ffanet_file_trains_through_train_py(tmp_path, hazy_folders, torch_home_with_vgg):
    opt_file = tmp_path / 'FFANet_RESIDE_IN_fromScratch.yml'
    opt_file.write_text(official_text(hazy_folders))
    result = run_tool([os.path.join(REPO, 'tools', 'train.py'), '-opt', str(opt_file)], cwd=tmp_path,
                      env={'OMP_NUM_THREADS': '1'})
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert 'Model [MCLIRRawValidationSRModel] is created.' in out
    # the equivalent plugin lines, printed once
    for line in ('model_type: MCLIRModel', 'base_model: RawValidationSRModel', 'neg_iter: [1, 2]',
                 'neg_decay: [0.1, 0.5]', 'pairing: official_reversed', 'type: SPNLoss', 'neg_weight: 0.001'):
        assert line in out, line
    assert re.search(r'WARNING: Official options: train\.use_grad_norm \(0\.05\) is ignored', out)
    l_neg = logged(out, 'l_neg')
    assert len(l_neg) == 4 and all(v > 0 for v in l_neg)
    # torch's CosineAnnealingLR (T_max 2), periodic past T_max; BasicSR steps it before iterations 2, 3, 4
    lrs = [float(v) for v in re.findall(r'lr:\(([0-9.e+-]+),\)', out)]
    expected = [1e-8 + (2e-4 - 1e-8) * (1 + math.cos(math.pi * t / 2)) / 2 for t in range(4)]
    assert lrs == pytest.approx(expected, rel=1e-3)
    assert '# psnr:' in out


def test_official_ffanet_step_is_the_official_step(tmp_path, hazy_folders, torch_home_with_vgg, caplog):
    """Losses and weights equal the official step's (reversed pairing, l_neg subtracted); validation uses raw
    net_g although EMA is kept; the picture of the negatives still shows the negatives."""
    lam = 0.5  # large enough that a wrong sign of the negative term moves the weights visibly
    official = yaml.safe_load(official_text(hazy_folders, lam))
    model = build_model(runtime_opt(official, tmp_path))
    assert type(model).__name__ == 'MCLIRRawValidationSRModel'
    assert model.ema_decay == 0.999 and model.negative_hook.pairing == 'official_reversed'
    network_opt = dict(FFANET)
    net = build_network(network_opt)
    net.load_state_dict(model.net_g.state_dict())
    negatives = []
    for neg in model.negative_hook.negatives:  # the plugin's start blend, as plain networks
        copy_ = build_network(network_opt).eval().requires_grad_(False)
        copy_.load_state_dict(neg.state_dict())
        negatives.append(copy_)
    official_step = OfficialStep(net, negatives, torch.optim.AdamW(net.parameters(), 2e-4, betas=(0.9, 0.9),
                                                                   weight_decay=0.0),
                                 model.cri_pix.vgg, {'relu1_2': 0.2, 'relu2_2': 0.3, 'relu3_3': 0.5}, lam,
                                 neg_iter=[1, 2], neg_decay=[0.1, 0.5])
    g = torch.Generator().manual_seed(0)
    for it in range(1, 4):
        lq, gt = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
        model.feed_data({'lq': lq, 'gt': gt})
        model.optimize_parameters(it)
        log = model.get_current_log()
        l_pix, l_neg = official_step(lq, gt, it)
        assert log['l_neg'] > 0
        assert (log['l_pix'], log['l_neg']) == pytest.approx((l_pix, l_neg), rel=1e-4)
    # Adam turns last-bit differences of summation order into steps of up to lr on a few near-zero gradients; a
    # negative term added instead of subtracted moves ~40% of the first layer's weights by more than 1e-4.
    for ours, theirs in [(model.net_g, net), *zip(model.negative_hook.negatives, negatives)]:
        for p, q in zip(ours.parameters(), theirs.parameters()):
            assert ((p - q).abs() > 1e-4).float().mean() < 0.01

    lq = torch.rand(1, 3, 16, 16, generator=g)
    model.feed_data({'lq': lq})
    model.test()
    with torch.no_grad():
        raw, ema = model.net_g.eval()(lq), model.net_g_ema(lq)
    model.net_g.train()
    assert not torch.allclose(raw, ema)
    assert torch.allclose(model.output, raw, atol=1e-6)  # validated: the raw network, as officially
    model.feed_data({'lq': lq})
    with torch.no_grad():
        neg_out = model.negative_hook.negatives[0](lq)
    assert torch.allclose(model._test_with(model.negative_hook.negatives[0]), neg_out, atol=1e-6)
    assert model.net_g_ema is not None and model.is_train


def test_converter_writes_the_same_hook_and_loss(tmp_path, hazy_folders, torch_home_with_vgg):
    src, dst = tmp_path / 'official.yml', tmp_path / 'plugin.yml'
    src.write_text(official_text(hazy_folders))
    assert convert_main([str(src), str(dst)]) == 0
    text = dst.read_text()
    assert 'Dropped: train.use_grad_norm (0.05) is ignored' in text  # in the header
    converted = yaml.safe_load(text)
    assert converted['model_type'] == 'MCLIRModel' and 'path_neg' not in converted
    assert not {'neg_iter', 'neg_decay', 'neg_start', 'perceptual_opt', 'use_grad_norm'} & set(converted['train'])
    assert converted['train']['scheduler'] == {'type': 'TrueCosineAnnealingLR', 'T_max': 2, 'eta_min': 1e-8}
    models = []
    for opt, folder in ((yaml.safe_load(official_text(hazy_folders)), 'a'), (converted, 'b')):
        set_random_seed(opt['manual_seed'])  # as BasicSR's pipeline seeds before build_model
        models.append(build_model(runtime_opt(opt, tmp_path / folder)))
    assert type(models[0]) is type(models[1])
    hooks = [m.negative_hook for m in models]
    assert hooks[0].describe() == hooks[1].describe()
    # physical negative i: interval neg_iter[N-1-i] with decay neg_decay[i], as the official loop pairs them
    assert hooks[0].intervals == [2, 1] and hooks[0].decays == [0.1, 0.5]
    losses = [m.cri_pix for m in models]
    assert losses[0].neg_weight == losses[1].neg_weight == 0.001
    assert losses[0].layer_weights == losses[1].layer_weights == {'relu1_2': 0.2, 'relu2_2': 0.3, 'relu3_3': 0.5}
    for a, b in zip(*(m.negative_hook.negatives for m in models)):
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def sr_official(model_type: str, network: dict, **train) -> dict:
    multi = OFFICIAL_TYPES[model_type].multi
    return {
        'name': 'official', 'model_type': model_type, 'scale': 2, 'num_gpu': 0, 'manual_seed': 0,
        'network_g': dict(network),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'path_neg': {'pretrain_network_g_neg': None},
        'train': {'ema_decay': 0, 'neg_iter': [1, 2] if multi else 2, 'neg_decay': [0.1, 0.5] if multi else 0.5,
                  'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'scheduler': {'type': 'MultiStepLR', 'milestones': [10],
                                                                          'gamma': 0.5},
                  'total_iter': 10, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
                  'perceptual_opt': {'type': 'PerceptualLoss', 'layer_weights': {'relu1_2': 1.0},
                                     'vgg_type': 'vgg16', 'perceptual_weight': 0.01, 'style_weight': 0.,
                                     'criterion': 'l1'}, **train},
        'val': {'metrics': {}},
    }


@pytest.mark.parametrize('model_type', list(OFFICIAL_TYPES))
def test_every_official_type_builds_and_steps(model_type, tmp_path, torch_home_with_vgg):
    kind = OFFICIAL_TYPES[model_type]
    network = {'SRModel': EDSR, 'SwinIRModel': SWINIR}.get(kind.base_model, FFANET)
    opt = sr_official(model_type, network, **({'neg_t': 0.0} if kind.adaptive else {}))
    if kind.ffanet:
        opt['scale'] = 1
    model = build_model(runtime_opt(opt, tmp_path))
    assert type(model).__name__ == f'MCLIR{kind.base_model}'
    hook = model.negative_hook
    assert hook.pairing == 'official_reversed' and model.cri_pix.neg_weight == 0.01
    assert hook.neg_start == (0.01 if kind.multi else 0.999)  # the official defaults
    assert sorted(hook.intervals) == ([1, 2] if kind.multi else [2])
    assert hook.adaptive == kind.adaptive and (not kind.adaptive or hook.adaptive_decay == 0.001)
    lq = torch.rand(2, 3, 12, 12)
    model.feed_data({'lq': lq, 'gt': torch.rand(2, 3, 12 * opt['scale'], 12 * opt['scale'])})
    model.optimize_parameters(1)
    assert model.get_current_log()['l_neg'] > 0
    if kind.adaptive:  # threshold 0: every step refreshes one negative, round robin
        assert hook.adaptive_count == 1


def test_use_grad_clip_clips_the_gradient_norm(tmp_path, torch_home_with_vgg):
    opt = sr_official('SRNegModel_Multi', EDSR, use_grad_clip=1e-4, optim_g={'type': 'SGD', 'lr': 1.0})
    model = build_model(runtime_opt(opt, tmp_path))
    assert model.step_options.grad_clip == 1e-4
    before = [p.detach().clone() for p in model.net_g.parameters()]
    model.feed_data({'lq': torch.rand(2, 3, 12, 12), 'gt': torch.rand(2, 3, 24, 24)})
    model.optimize_parameters(1)
    step = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(model.net_g.parameters(), before)))
    assert step.item() == pytest.approx(1e-4, rel=1e-3)  # SGD with lr 1: the step is the clipped gradient


@pytest.mark.parametrize('model_type, change, match', [
    ('ImageRestorationModel_FFANet_Neg_Multi', lambda o: o['train'].update(perceptual_contrastive_opt={'type': 'X'}),
     'train.perceptual_contrastive_opt'),
    ('SRNegModel', lambda o: o['train'].update(contrastive_opt={'type': 'X'}), 'train.contrastive_opt'),
    ('SRNegModel', lambda o: o['path_neg'].update(pretrain_network_g_neg='neg.pth'), 'path_neg.pretrain_network_g_neg'),
    ('SRNegModel', lambda o: o.update(network_g_net=dict(EDSR)), 'network_g_net'),
    ('SRNegModel', lambda o: o['train'].update(neg_iter=[1, 2]), r'train\.neg_iter .*use SRNegModel_Multi'),
    ('SRNegModel_Multi', lambda o: o['train'].update(neg_iter=5), r'train\.neg_iter .*as a list'),
    ('SRNegModel_Multi', lambda o: o['train']['perceptual_opt'].update(style_weight=1.0),
     'train.perceptual_opt.style_weight'),
    ('SRNegModel_Multi', lambda o: o['train']['perceptual_opt'].update(criterion='fro'),
     'train.perceptual_opt.criterion'),
    ('SRNegModel_Multi', lambda o: o['val'].update(ensemble=True), 'val.ensemble'),
    ('ImageRestorationModel_FFANet_Neg_Multi', lambda o: o['val'].update(grids=True), 'val.grids'),
    ('ImageRestorationModel_FFANet_Neg_Multi', lambda o: o.update(network_g=dict(EDSR)), r"network_g\.type 'EDSR'"),
])
def test_unsupported_official_keys_are_errors_naming_the_key(model_type, change, match):
    opt = sr_official(model_type, FFANET if OFFICIAL_TYPES[model_type].ffanet else EDSR)
    change(opt)
    with pytest.raises(ValueError, match=match):
        translate_official(opt)


def test_keys_the_official_code_ignores_are_reported():
    opt = sr_official('SwinIRNegModel_Multi', SWINIR, update_scaling=2.0, use_grad_norm=0.05, neg_t=0.1,
                      perceptual_pos_opt={'type': 'PerceptualLoss'})
    opt['path_neg'] = {'pretrain_network_g': 'neg.pth'}
    result = translate_official(opt)
    for key in ('train.update_scaling', 'train.use_grad_norm', 'train.neg_t', 'train.perceptual_pos_opt', 'path_neg'):
        assert any(line.startswith(key) and 'ignored' in line for line in result.ignored), key
    assert 'perceptual_opt' not in result.opt['train'] and 'adaptive_threshold' not in result.opt['mclir']['hook']


def test_shipped_official_file_has_the_official_numbers(tmp_path, torch_home_with_vgg):
    with open(os.path.join(REPO, 'options', 'ffanet_its_spn_official.yml')) as f:
        opt = yaml.safe_load(f)
    train, data = opt['train'], opt['datasets']['train']
    assert (data['gt_size'], data['batch_size_per_gpu'], opt['manual_seed']) == (128, 4, 42)
    assert train['optim_g'] == {'type': 'AdamW', 'lr': 2e-4, 'weight_decay': 0.0, 'betas': [0.9, 0.9]}
    assert train['scheduler'] == {'type': 'TrueCosineAnnealingLR', 'T_max': 100_000, 'eta_min': 1e-8}
    assert (train['total_iter'], train['ema_decay']) == (500_000, 0.999)
    assert opt['mclir'] == {'base_model': 'RawValidationSRModel', 'hook': {
        'type': 'HistoryNegativeHook', 'neg_iter': [100, 200, 500, 1000], 'neg_decay': [0.1] * 4, 'neg_start': 0.1,
        'pairing': 'official_reversed'}}
    assert train['pixel_opt']['neg_weight'] == 0.001 and train['pixel_opt']['rec_loss'] == 'l1'
    assert sum(p.numel() for p in build_network(dict(opt['network_g'])).parameters()) == 4_455_913
    opt['network_g']['blocks'] = 1
    model = build_model(runtime_opt(opt, tmp_path))
    assert type(model).__name__ == 'MCLIRRawValidationSRModel' and model.ema_decay == 0.999
    model.feed_data({'lq': torch.rand(1, 3, 16, 16), 'gt': torch.rand(1, 3, 16, 16)})
    model.optimize_parameters(1)
    assert model.get_current_log()['l_neg'] > 0
