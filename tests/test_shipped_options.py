"""Every shipped option file: its SPN twin differs only in the contract's lines, its network has the published
size, and it trains two iterations (validation included) on tiny stand-in data at the paths it names."""
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


@pytest.mark.parametrize('name', [f'{n}{s}' for n in PAIRS if n != 'demo' for s in ('', '_spn')])
def test_trains_two_iterations_on_stand_in_data(name, tmp_path, torch_home_with_vgg):
    opt = load(name)
    net_type = opt['network_g']['type']
    gt_side = 128 if net_type == 'IDT' else 64
    write_stand_in_data(opt, tmp_path, gt_side, val_side=(72, 88) if net_type != 'IDT' else (150, 136))
    overrides = ['num_gpu=0', 'train:total_iter=2', 'datasets:train:num_worker_per_gpu=0',
                 'datasets:train:batch_size_per_gpu=1', f'datasets:train:gt_size={gt_side}', 'val:val_freq=2',
                 'logger:print_freq=1', 'logger:save_checkpoint_freq=2', 'logger:use_tb_logger=false',
                 *SHRINK[net_type]]
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
