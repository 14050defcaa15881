"""Every shipped option file: its SPN twin differs only in the contract's lines, its network has the published
size, its baseline has the upstream recipe's numbers, and it trains two iterations (validation included) on tiny
stand-in data at the paths it names (through tools/train.py's entry point, in this process)."""
from __future__ import annotations

import glob
import os
import re

import cv2
import numpy as np
import pytest
import yaml
from basicsr.archs import build_network

from basicsr_recipes import train_in_process
from conftest import REPO

OPTIONS = os.path.join(REPO, 'options')
PAIRS = sorted(os.path.basename(p)[:-len('_spn.yml')] for p in glob.glob(os.path.join(OPTIONS, '*_spn.yml')))
PARAMS = {  # published / upstream-measured parameter counts (docs/archs_datasets.md §0)
    'demo': None, 'demo_haze': 687_404, 'swinir': 929_628, 'ffanet_its': 4_455_913, 'dehazeformer_t': 687_404,
    'dehazeformer_s': 1_284_884, 'dehazeformer_b': 2_517_612, 'idt_rain200h': 16_416_463, 'idt_spa': 16_416_463,
    # RRDBNet 23 blocks: the 16.7M of ESRGAN / BasicSR's model zoo; BasicVSR with SPyNet: the 6.3M of the BasicVSR
    # paper (Table 1); both counted with build_network on BasicSR 1.4.2
    'esrgan_x4': 16_697_987, 'realesrgan_x4plus': 16_697_987, 'basicvsr_reds': 6_291_311,
    'demo_gan': None, 'demo_video': None,
}
# CPU-sized overrides per network (the shipped sizes are checked by test_network_has_the_published_size)
SHRINK = {'FFANet': ['network_g:blocks=1'],
          'IDT': ['network_g:embed_dim=8', 'network_g:depths=[1,1,1,1,1,1,1,1,1]', 'network_g:img_size=64'],
          'SwinIR': ['network_g:depths=[2]', 'network_g:num_heads=[2]', 'network_g:embed_dim=8'],
          'DehazeFormer': ['network_g:depths=[1,1,1,1,1]'],  # one block a stage (B has 64, T 16): the variant's widths
          'RRDBNet': ['network_g:num_feat=8', 'network_g:num_block=1', 'network_g:num_grow_ch=4'],
          # spynet_path ~: a random SPyNet (the shipped file names BasicSR's pretrained one)
          'BasicVSR': ['network_g:num_feat=8', 'network_g:num_block=1', 'network_g:spynet_path=~'],
          'VGGStyleDiscriminator': ['network_d:num_feat=4'], 'UNetDiscriminatorSN_basicsr': ['network_d:num_feat=4']}
# GT side of the stand-in training data: VGGStyleDiscriminator takes 128 x 128 only; SPyNet needs LR over 32 pixels
GT_SIDE = {'IDT': 64, 'VGGStyleDiscriminator': 128, 'BasicVSR': 144}
VIDEO_FRAMES = 2  # frames per training clip and per stand-in validation clip


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
    rec = {'L1Loss': 'l1', 'SSIMLoss': 'ssim', 'CharbonnierLoss': 'charbonnier'}[base_pix['type']]
    assert spn_pix.get('rec_loss', 'l1') == rec
    for key, value in base_pix.items():
        if key != 'type':
            assert spn_pix[key] == value, ('pixel_opt', key)


@pytest.mark.parametrize('name', [n for n in PAIRS if PARAMS[n]])
def test_network_has_the_published_size(name):
    opt = dict(load(name)['network_g'])
    if 'spynet_path' in opt:
        opt['spynet_path'] = None  # SPyNet's pretrained file sets its weights, not their number
    net = build_network(opt)
    assert sum(p.numel() for p in net.parameters()) == PARAMS[name]


def _write_meta(path: str, lines: list[str]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


def _write_clip(gt_dir: str, lq_dir: str, images: list[np.ndarray], scale: int) -> None:
    """One clip as REDS stores it: frames 00000000.png, ... in a GT folder and its bicubic LR folder."""
    os.makedirs(gt_dir, exist_ok=True)
    os.makedirs(lq_dir, exist_ok=True)
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        cv2.imwrite(os.path.join(gt_dir, f'{i:08d}.png'), img)
        cv2.imwrite(os.path.join(lq_dir, f'{i:08d}.png'),
                    cv2.resize(img, (w // scale, h // scale), interpolation=cv2.INTER_AREA))


def write_stand_in_data(opt: dict, root, gt_side: int, val_side: tuple[int, int]) -> list[str]:
    """Images at the file's own dataset paths (list files for PairedListDataset, same names for folders, a meta_info
    list for Real-ESRGAN, REDS clip trees for the video datasets; the synthetic datasets need none)."""
    rng = np.random.default_rng(0)
    scale = opt.get('scale', 1)
    for phase, dataset in opt['datasets'].items():
        h, w = (gt_side, gt_side) if phase == 'train' else val_side
        count = VIDEO_FRAMES + 1 if dataset['type'].startswith(('REDS', 'Video')) else 2
        images = [cv2.resize(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8), (w, h)) for _ in range(count)]
        if dataset['type'] == 'RealESRGANDataset_basicsr':  # GT only: the model degrades on the fly
            os.makedirs(os.path.join(root, dataset['dataroot_gt'], 'gt'), exist_ok=True)
            for i, img in enumerate(images):
                cv2.imwrite(os.path.join(root, dataset['dataroot_gt'], 'gt', f'{i}.png'), img)
            _write_meta(os.path.join(root, dataset['meta_info']), [f'gt/{i}.png' for i in range(len(images))])
        elif dataset['type'] == 'REDSRecurrentDataset':  # clip 001 (000 is in the REDS4 partition it holds out)
            # REDSRecurrentDataset may start a clip at any listed frame: list VIDEO_FRAMES, store one more
            _write_clip(os.path.join(root, dataset['dataroot_gt'], '001'),
                        os.path.join(root, dataset['dataroot_lq'], '001'), images, scale)
            _write_meta(os.path.join(root, dataset['meta_info_file']), [f'001 {VIDEO_FRAMES} ({h},{w},3)'])
        elif dataset['type'] == 'VideoRecurrentTestDataset':
            _write_clip(os.path.join(root, dataset['dataroot_gt'], '000'),
                        os.path.join(root, dataset['dataroot_lq'], '000'), images[:VIDEO_FRAMES], scale)
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


# width variants: the same file as the key's with other network sizes and their optimiser numbers (checked below),
# so training the key's SPN file runs every line they hold; their sizes and recipes are checked above
WIDTH_VARIANTS = {'dehazeformer_t': ('dehazeformer_s', 'dehazeformer_b')}
VARIANT_KEYS = {'name', 'network_g.variant', 'datasets.train.batch_size_per_gpu', 'train.optim_g.lr',
                'train.scheduler.epoch_length', 'train.scheduler.eta_min', 'train.total_iter'}


def _flat(tree: dict, prefix: str = '') -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f'{prefix}{key}.'))
        else:
            out[f'{prefix}{key}'] = value
    return out


@pytest.mark.parametrize('name', [f'{v}{s}' for vs in WIDTH_VARIANTS.values() for v in vs for s in ('', '_spn')])
def test_width_variant_differs_from_its_trained_file_only_in_sizes(name):
    variant = name.removesuffix('_spn')
    trained = next(k for k, vs in WIDTH_VARIANTS.items() if variant in vs) + name[len(variant):]
    a, b = _flat(load(name)), _flat(load(trained))
    assert {k for k in set(a) | set(b) if a.get(k) != b.get(k)} <= VARIANT_KEYS


TRAINED_SPN = [f'{n}_spn' for n in PAIRS
               if n != 'demo' and n not in {v for vs in WIDTH_VARIANTS.values() for v in vs}]


@pytest.mark.parametrize('name', TRAINED_SPN + _first_baseline_per_network())
def test_trains_two_iterations_on_stand_in_data(name, tmp_path, torch_home_with_vgg):
    opt = load(name)
    net_type, net_d_type = opt['network_g']['type'], opt.get('network_d', {}).get('type')
    gt_side = GT_SIDE.get(net_d_type, GT_SIDE.get(net_type, 64))
    val_side = {'IDT': (86, 72), 'BasicVSR': (144, 144)}.get(net_type, (72, 88))
    write_stand_in_data(opt, tmp_path, gt_side, val_side=val_side)
    video = {phase: f'datasets:{phase}:num_frame={VIDEO_FRAMES}' for phase, dataset in opt['datasets'].items()
             if dataset['type'] in ('REDSRecurrentDataset', 'SyntheticVideoDataset')}
    overrides = ['num_gpu=0', 'train:total_iter=2', 'datasets:train:num_worker_per_gpu=0',
                 'datasets:train:batch_size_per_gpu=1', f'datasets:train:gt_size={gt_side}',
                 'val:val_freq=1000',  # only the validation BasicSR runs after the last iteration
                 'logger:print_freq=1', 'logger:save_checkpoint_freq=2', 'logger:use_tb_logger=false',
                 *SHRINK[net_type], *SHRINK.get(net_d_type, []), *video.values(),
                 *([f'gt_size={gt_side}'] if 'gt_size' in opt else []),  # Real-ESRGAN's crop after degrading
                 # built-in validation photographs: a small centre crop (the demo files validate on whole images)
                 *([f'datasets:val:val_size={max(64, gt_side)}'] if 'val_size' in opt['datasets'].get('val', {})
                   else []),
                 # BasicSR's perceptual loss needs the ImageNet VGG19 file (not in the tests' offline cache)
                 *(['train:perceptual_opt=~'] if 'perceptual_opt' in opt['train'] else []),
                 # one negative is enough to run every part of the SPN step (the file's four are checked above)
                 *(['mclir:hook:neg_iter=[1]'] if name.endswith('_spn') else [])]
    # tools/train.py's entry point in this process (test_train_tools.py starts real tools/train.py processes)
    out = train_in_process(tmp_path, '-opt', os.path.join(OPTIONS, f'{name}.yml'), '--force_yml', *overrides).check()
    # one log line per iteration; GAN models log their pixel term as l_g_pix
    assert len(re.findall(r'iter:\s+\d+, lr:\(', out)) == 2 and re.search(r'\bl_(g_)?pix: ', out)
    assert all(f'# {metric}:' in out for metric in opt['val']['metrics'])
    if name.endswith('_spn'):
        # BasicSR registers its Real-ESRGAN classes as <class name>_basicsr: either spelling names the base
        base = re.escape(opt['mclir']['base_model'].removesuffix('_basicsr'))
        assert re.search(rf'Model \[MCLIR{base}(_basicsr)?\] is created\.', out), out[-4000:]
        assert 'l_neg_ratio' in out, out[-4000:]
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
    # BasicSR 1.4.2's train_ESRGAN_x4.yml, train_realesrgan_x4plus.yml, train_BasicVSR_REDS.yml
    'esrgan_x4': {'train.optim_g.lr': 1e-4, 'train.optim_d.lr': 1e-4, 'train.optim_g.betas': [0.9, 0.99],
                  'train.scheduler.milestones': [50_000, 100_000, 200_000, 300_000], 'train.total_iter': 400_000,
                  'train.pixel_opt.loss_weight': 1e-2, 'train.gan_opt.loss_weight': 5e-3, 'train.gan_opt.gan_type':
                  'vanilla', 'datasets.train.gt_size': 128, 'datasets.train.batch_size_per_gpu': 16,
                  'network_g.num_block': 23, 'network_d.type': 'VGGStyleDiscriminator'},
    'realesrgan_x4plus': {'train.optim_g.lr': 1e-4, 'train.optim_d.lr': 1e-4, 'train.total_iter': 400_000,
                          'train.gan_opt.loss_weight': 0.1, 'gt_size': 256, 'queue_size': 180,
                          'datasets.train.batch_size_per_gpu': 12, 'datasets.train.final_sinc_prob': 0.8,
                          'network_d.type': 'UNetDiscriminatorSN_basicsr', 'network_d.skip_connection': True},
    'basicvsr_reds': {'train.optim_g.lr': 2e-4, 'train.scheduler.periods': [300_000], 'train.total_iter': 300_000,
                      'train.fix_flow': 5000, 'train.flow_lr_mul': 0.125, 'datasets.train.num_frame': 15,
                      'datasets.train.gt_size': 256, 'datasets.train.batch_size_per_gpu': 4,
                      'network_g.num_block': 30},
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
    from mclir_plugin.models.lr_schedulers import ALIASES, SCHEDULER_REGISTRY
    for path in glob.glob(os.path.join(OPTIONS, '*.yml')):
        with open(path) as f:
            scheduler_type = yaml.safe_load(f)['train']['scheduler']['type']
        assert ALIASES.get(scheduler_type, scheduler_type) in SCHEDULER_REGISTRY, path
