"""Every shipped option file: its SPN twin differs only in the contract's lines, its network has the published
size, its baseline has the upstream recipe's numbers, and it trains two iterations (validation included) on tiny
stand-in data at the paths it names."""
from __future__ import annotations

import glob
import os

import cv2
import numpy as np
import pytest
import yaml
from basicsr.archs import build_network

from conftest import REPO, run_tool

OPTIONS = os.path.join(REPO, 'options')
PAIRS = sorted(os.path.basename(p)[:-len('_spn.yml')] for p in glob.glob(os.path.join(OPTIONS, '*_spn.yml')))
PARAMS = {  # published / upstream-measured parameter counts (docs/archs_datasets.md §0)
    'demo': None, 'demo_haze': 687_404, 'swinir': 929_628, 'ffanet_its': 4_455_913, 'dehazeformer_t': 687_404,
    'dehazeformer_s': 1_284_884, 'dehazeformer_b': 2_517_612, 'idt_rain200h': 16_416_463, 'idt_spa': 16_416_463,
}
# CPU-sized overrides per network (the shipped sizes are checked by test_network_has_the_published_size)
SHRINK = {'FFANet': ['network_g:blocks=1'], 'IDT': ['network_g:embed_dim=8', 'network_g:depths=[1,1,1,1,1,1,1,1,1]'],
          'SwinIR': ['network_g:depths=[2]', 'network_g:num_heads=[2]', 'network_g:embed_dim=8'], 'DehazeFormer': []}


def load(name: str) -> dict:
    with open(os.path.join(OPTIONS, f'{name}.yml')) as f:
        return yaml.safe_load(f)


def test_every_spn_file_has_a_baseline():
    assert set(PAIRS) == set(PARAMS)
    for name in PAIRS:
        assert os.path.isfile(os.path.join(OPTIONS, f'{name}.yml'))


@pytest.mark.parametrize('name', PAIRS)
def test_spn_twin_differs_only_in_contract_lines(name):
    base, spn = load(name), load(f'{name}_spn')
    assert spn['model_type'] == 'MCLIRModel' and spn['mclir']['base_model'] == base['model_type']
    assert spn['train']['pixel_opt']['type'] == 'SPNLoss'
    for key in set(base) | set(spn):
        if key not in ('name', 'model_type', 'mclir', 'train'):
            assert base.get(key) == spn.get(key), key
    for key in set(base['train']) | set(spn['train']):
        if key != 'pixel_opt':
            assert base['train'].get(key) == spn['train'].get(key), ('train', key)
    base_pix, spn_pix = base['train']['pixel_opt'], spn['train']['pixel_opt']
    rec = {'L1Loss': 'l1', 'SSIMLoss': 'ssim'}[base_pix['type']]
    assert spn_pix.get('rec_loss', 'l1') == rec
    for key, value in base_pix.items():
        if key != 'type':
            assert spn_pix[key] == value, ('pixel_opt', key)


@pytest.mark.parametrize('name', [n for n in PAIRS if PARAMS[n]])
def test_network_has_the_published_size(name):
    net = build_network(dict(load(name)['network_g']))
    assert sum(p.numel() for p in net.parameters()) == PARAMS[name]


def write_stand_in_data(opt: dict, root, gt_side: int, val_side: tuple[int, int]) -> list[str]:
    """Images at the file's own dataset paths (list files for PairedListDataset, same names for folders)."""
    rng = np.random.default_rng(0)
    scale = opt.get('scale', 1)
    for phase, dataset in opt['datasets'].items():
        h, w = (gt_side, gt_side) if phase == 'train' else val_side
        images = [cv2.resize(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8), (w, h)) for _ in range(2)]
        if dataset['type'] == 'PairedListDataset':
            data_root = os.path.join(root, dataset['dataroot'])
            os.makedirs(os.path.join(data_root, 'lq'), exist_ok=True)
            os.makedirs(os.path.join(data_root, 'gt'), exist_ok=True)
            lines = []
            for i, img in enumerate(images):
                cv2.imwrite(os.path.join(data_root, 'gt', f'{i}.png'), img)
                cv2.imwrite(os.path.join(data_root, 'lq', f'{i}.png'), (img * 0.7 + 60).astype(np.uint8))
                lines.append(f'lq/{i}.png gt/{i}.png')
            list_file = os.path.join(root, dataset['list_file'])
            os.makedirs(os.path.dirname(list_file), exist_ok=True)
            with open(list_file, 'w') as f:
                f.write('\n'.join(lines) + '\n')
        elif dataset['type'] == 'PairedImageDataset':
            for key in ('dataroot_gt', 'dataroot_lq'):
                os.makedirs(os.path.join(root, dataset[key]), exist_ok=True)
            for i, img in enumerate(images):
                cv2.imwrite(os.path.join(root, dataset['dataroot_gt'], f'{i}.png'), img)
                cv2.imwrite(os.path.join(root, dataset['dataroot_lq'], f'{i}.png'),
                            cv2.resize(img, (w // scale, h // scale), interpolation=cv2.INTER_AREA))
    return []


def _first_baseline_per_network() -> list[str]:
    """One baseline per network type: a baseline is its SPN twin minus the contract's lines (tested above), so
    training every SPN file and one baseline per network covers every file's settings at a third less time."""
    seen, names = set(), []
    for name in PAIRS:
        net_type = load(name)['network_g']['type']
        if name != 'demo' and net_type not in seen:
            seen.add(net_type)
            names.append(name)
    return names


@pytest.mark.parametrize('name', [f'{n}_spn' for n in PAIRS if n != 'demo'] + _first_baseline_per_network())
def test_trains_two_iterations_on_stand_in_data(name, tmp_path, torch_home_with_vgg):
    opt = load(name)
    net_type = opt['network_g']['type']
    gt_side = 128 if net_type == 'IDT' else 64
    write_stand_in_data(opt, tmp_path, gt_side, val_side=(72, 88) if net_type != 'IDT' else (150, 136))
    overrides = ['num_gpu=0', 'train:total_iter=2', 'datasets:train:num_worker_per_gpu=0',
                 'datasets:train:batch_size_per_gpu=1', f'datasets:train:gt_size={gt_side}',
                 'val:val_freq=1000',  # only the validation BasicSR runs after the last iteration
                 'logger:print_freq=1', 'logger:save_checkpoint_freq=2', 'logger:use_tb_logger=false',
                 *SHRINK[net_type],
                 # one negative is enough to run every part of the SPN step (the file's four are checked above)
                 *(['mclir:hook:neg_iter=[1]'] if name.endswith('_spn') else [])]
    result = run_tool([os.path.join(REPO, 'tools', 'train.py'), '-opt', os.path.join(OPTIONS, f'{name}.yml'),
                       '--force_yml', *overrides], cwd=tmp_path, env={'OMP_NUM_THREADS': '1'})
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert out.count('l_pix: ') == 2 and all(f'# {metric}:' in out for metric in opt['val']['metrics'])
    if name.endswith('_spn'):
        assert 'l_neg_ratio' in out and f"Model [MCLIR{opt['mclir']['base_model']}] is created." in out
    assert glob.glob(str(tmp_path / 'experiments' / opt['name'] / 'models' / 'net_g_2.pth'))


@pytest.mark.parametrize('name', ['demo_cr', 'demo_infonce'])
def test_peer_loss_demos_differ_from_the_spn_demo_only_in_pixel_opt(name):
    peer, spn = load(name), load('demo_spn')
    assert {k for k in set(peer) | set(spn) if peer.get(k) != spn.get(k)} == {'name', 'train'}
    assert {k for k in spn['train'] if peer['train'].get(k) != spn['train'][k]} == {'pixel_opt'}
    assert peer['train']['pixel_opt']['type'] in ('ContrastRatioLoss', 'InfoNCELoss')


def its_epoch(batch: int) -> int:
    return 13_990 // batch  # RESIDE ITS pairs; BasicSR and DehazeFormer drop the last incomplete batch


# upstream recipes (KAIR's SwinIR-light json, FFA-Net's net/main.py, DehazeFormer's configs/indoor + train.py, IDT's
# train_derain.py at 450 iterations an epoch); dotted paths into the baseline option files
RECIPES = {
    'swinir': {'train.optim_g.type': 'Adam', 'train.optim_g.lr': 2e-4, 'train.optim_g.betas': [0.9, 0.999],
               'train.scheduler.milestones': [250_000, 400_000, 450_000, 475_000], 'train.total_iter': 500_000,
               'datasets.train.gt_size': 256},
    'ffanet_its': {'train.optim_g.type': 'Adam', 'train.optim_g.lr': 1e-4, 'train.optim_g.betas': [0.9, 0.999],
                   'train.total_iter': 500_000, 'datasets.train.gt_size': 240, 'datasets.train.batch_size_per_gpu': 2},
    **{f'dehazeformer_{v}': {
        'train.optim_g.type': 'AdamW', 'train.optim_g.lr': lr, 'train.optim_g.weight_decay': 0.01,
        'train.scheduler': {'type': 'EpochCosineAnnealingLR', 'T_max': 300, 'epoch_length': its_epoch(batch),
                            'eta_min': pytest.approx(lr / 100)},
        'train.total_iter': 301 * its_epoch(batch), 'datasets.train.batch_size_per_gpu': batch,
        'datasets.train.gt_size': 256} for v, batch, lr in (('t', 32, 4e-4), ('s', 16, 2e-4), ('b', 16, 2e-4))},
    'idt_rain200h': {'train.optim_g.lr': 1e-4, 'train.scheduler.milestones': [100 * 450, 250 * 450, 350 * 450],
                     'train.total_iter': 400 * 450, 'datasets.train.gt_size': 128,
                     'datasets.train.batch_size_per_gpu': 4},
}


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_baseline_follows_the_upstream_recipe(name):
    opt = load(name)
    for path, expected in RECIPES[name].items():
        value = opt
        for key in path.split('.'):
            value = value[key]
        assert value == expected, path


def test_every_shipped_scheduler_is_registered():
    from mclir_plugin.schedulers import ALIASES, SCHEDULER_REGISTRY
    for path in glob.glob(os.path.join(OPTIONS, '*.yml')):
        with open(path) as f:
            scheduler_type = yaml.safe_load(f)['train']['scheduler']['type']
        assert ALIASES.get(scheduler_type, scheduler_type) in SCHEDULER_REGISTRY, path
