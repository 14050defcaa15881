import mclir_plugin  # noqa: F401  (before basicsr: installs the compatibility shim)

import copy
import gc
import importlib
import os

import cv2
import numpy as np
import pytest
import torch
from basicsr.data import build_dataloader, build_dataset
from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.utils.registry import DATASET_REGISTRY

from conftest import REPO, run_tool
from mclir_plugin.data import (LmdbMismatchError, PairedListDataset, check_lmdb, key_to_path, path_to_key,
                               read_meta_info, read_pair_list, scan_layout, write_lmdb, write_pair_list)
from mclir_plugin.data import lmdb_writer
from mclir_plugin.data.lmdb_writer import read_keys
from mclir_plugin.data.pair_layouts import BAD_GT_NAME, BAD_LQ_NAME, BAD_NAME, NO_GT, UNUSED_GT

H, W = 40, 48  # LQ size of every tree; SOTS-indoor's GT has a 10-pixel border more on each side


def load_tool(name):
    return importlib.import_module(f'mclir_plugin.commands.{name}')


make_pair_list = load_tool('make_pair_list')
create_lmdb = load_tool('create_lmdb')


def write(root, rel, rng, size=(H, W)):
    """A random smooth colour image at ``root/rel`` (jpg or png by the name); returns what it decodes to."""
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    small = rng.integers(0, 256, (size[0] // 4, size[1] // 4, 3), dtype=np.uint8)
    assert cv2.imwrite(path, cv2.resize(small, size[::-1], interpolation=cv2.INTER_LINEAR))
    return cv2.imread(path)


def as_tensor(img_bgr, crop_to=None):
    """What the dataset returns for a decoded BGR uint8 image: RGB CHW float32 in [0, 1], centre-cropped."""
    if crop_to is not None and img_bgr.shape[:2] != crop_to:
        top, left = (img_bgr.shape[0] - crop_to[0]) // 2, (img_bgr.shape[1] - crop_to[1]) // 2
        img_bgr = img_bgr[top:top + crop_to[0], left:left + crop_to[1]]
    return torch.from_numpy(np.ascontiguousarray(img_bgr[..., ::-1].transpose(2, 0, 1)).astype(np.float32) / 255)


def opt(phase='val', **extra):
    """A dataset option block as BasicSR hands it over (generic keys included)."""
    block = dict(name=f'list-{phase}', type='PairedListDataset', phase=phase, scale=1, io_backend=dict(type='disk'),
                 gt_size=32, use_hflip=True, use_rot=True, batch_size_per_gpu=2, num_worker_per_gpu=0,
                 dataset_enlarge_ratio=1, prefetch_mode=None, pin_memory=False)
    block.update(extra)
    return block


# Each case: the layout, the root (relative to tmp_path) given to the tool, the files to write (LQ first, then GT;
# (path, size) for a non-default size), the expected pairs in order, and the expected unmatched files by reason.
SOTS_GT = (H + 20, W + 20)
CASES = {
    'reside_its': ('reside_its', 'ITS',
                   ['hazy/1_1_0.90179.png', 'hazy/1_2_0.82193.png', 'hazy/2_1_0.75.png', 'hazy/9_1_0.8.png',
                    'hazy/thumbs.png', 'clear/1.png', 'clear/2.png', 'clear/3.png'],
                   [('hazy/1_1_0.90179.png', 'clear/1.png'), ('hazy/1_2_0.82193.png', 'clear/1.png'),
                    ('hazy/2_1_0.75.png', 'clear/2.png')],
                   {NO_GT: ['hazy/9_1_0.8.png'], BAD_LQ_NAME: ['hazy/thumbs.png'], UNUSED_GT: ['clear/3.png']}),
    'reside_ots': ('reside_ots', 'OTS',
                   ['hazy/part2/0002_0.9_0.1.jpg', 'hazy/part1/0001_1_0.04.jpg', 'hazy/part1/0001_0.8_0.2.jpg',
                    'clear/0001.jpg', 'clear/0002.jpg'],
                   [('hazy/part1/0001_0.8_0.2.jpg', 'clear/0001.jpg'), ('hazy/part1/0001_1_0.04.jpg', 'clear/0001.jpg'),
                    ('hazy/part2/0002_0.9_0.1.jpg', 'clear/0002.jpg')], {}),
    'sots': ('sots', 'SOTS',
             ['indoor/hazy/1400_1.png', 'indoor/hazy/1400_2.png', 'indoor/hazy/1401_1.png',
              'outdoor/hazy/0001_0.8_0.2.jpg', ('indoor/gt/1400.png', SOTS_GT), ('indoor/gt/1401.png', SOTS_GT),
              'outdoor/gt/0001.png', 'outdoor/gt/0002.png'],
             [('indoor/hazy/1400_1.png', 'indoor/gt/1400.png'), ('indoor/hazy/1400_2.png', 'indoor/gt/1400.png'),
              ('indoor/hazy/1401_1.png', 'indoor/gt/1401.png'),
              ('outdoor/hazy/0001_0.8_0.2.jpg', 'outdoor/gt/0001.png')],
             {UNUSED_GT: ['outdoor/gt/0002.png']}),
    'reside6k': ('reside6k', 'RESIDE-6K/train',
                 ['hazy/0001.png', 'hazy/1400_3.png', 'GT/0001.png', 'GT/1400.png'],
                 [('hazy/0001.png', 'GT/0001.png'), ('hazy/1400_3.png', 'GT/1400.png')], {}),
    'rain200h': ('rain_pairs', 'rain_data_train_Heavy',
                 ['rain/X2/norain-10x2.png', 'rain/X2/norain-2x2.png', 'rain/X2/norain-1x2.png', 'norain/norain-1.png',
                  'norain/norain-2.png', 'norain/norain-10.png'],
                 [('rain/X2/norain-1x2.png', 'norain/norain-1.png'), ('rain/X2/norain-2x2.png', 'norain/norain-2.png'),
                  ('rain/X2/norain-10x2.png', 'norain/norain-10.png')], {}),
    'rain100': ('rain_pairs', 'Rain100L',
                ['rainy/rain-001.png', 'rainy/rain-002.png', 'rainy/rain-003.png', 'rainstreak/rainstreak-001.png',
                 'norain/norain-001.png', 'norain/norain-002.png'],
                [('rainy/rain-001.png', 'norain/norain-001.png'), ('rainy/rain-002.png', 'norain/norain-002.png')],
                {NO_GT: ['rainy/rain-003.png'], BAD_NAME: ['rainstreak/rainstreak-001.png']}),
    'spa_train': ('spa', 'SPA/Training',
                  ['real_world/000/000-2/000-2_0_0.png', 'real_world/000/000-1/000-1_0_1.png',
                   'real_world/000/000-1/000-1_0_0.png', 'real_world_gt/000/000_0_0.png',
                   'real_world_gt/000/000_0_1.png'],
                  [('real_world/000/000-1/000-1_0_0.png', 'real_world_gt/000/000_0_0.png'),
                   ('real_world/000/000-1/000-1_0_1.png', 'real_world_gt/000/000_0_1.png'),
                   ('real_world/000/000-2/000-2_0_0.png', 'real_world_gt/000/000_0_0.png')], {}),
    'spa_test': ('spa', 'SPA/Testing/real_test_1000',
                 ['rain/000.png', 'rain/001.png', 'gt/000gt.png', 'gt/001gt.png', 'gt/readme.png'],
                 [('rain/000.png', 'gt/000gt.png'), ('rain/001.png', 'gt/001gt.png')],
                 {BAD_GT_NAME: ['gt/readme.png']}),
    'ddn': ('ddn', 'DDN/training',
            ['rainy_image/1_1.jpg', 'rainy_image/1_2.jpg', 'rainy_image/2_1.jpg', 'ground_truth/1.jpg',
             'ground_truth/2.jpg'],
            [('rainy_image/1_1.jpg', 'ground_truth/1.jpg'), ('rainy_image/1_2.jpg', 'ground_truth/1.jpg'),
             ('rainy_image/2_1.jpg', 'ground_truth/2.jpg')], {}),
    # DDN-Data as its archive unpacks: folder names with spaces (written quoted in the list).
    'ddn_archive': ('ddn', 'DDN-Data/testing',
                    ['rainy image/901_1.jpg', 'rainy image/901_14.jpg', 'rainy image/902_3.jpg',
                     'ground truth/901.jpg', 'ground truth/902.jpg'],
                    [('rainy image/901_1.jpg', 'ground truth/901.jpg'),
                     ('rainy image/901_14.jpg', 'ground truth/901.jpg'),
                     ('rainy image/902_3.jpg', 'ground truth/902.jpg')], {}),
    # DehazeFormer's repacks (data/<set>/{train,test}/{GT,hazy}): equal names on both sides, the GT repeated.
    'dehazeformer_in': ('dehazeformer', 'data/RESIDE-IN/train',
                        ['hazy/1_1_0.90179.png', 'hazy/1_2_0.82193.png', 'hazy/2_1_0.75.png', 'hazy/7_1_0.8.png',
                         'GT/1_1_0.90179.png', 'GT/1_2_0.82193.png', 'GT/2_1_0.75.png'],
                        [('hazy/1_1_0.90179.png', 'GT/1_1_0.90179.png'), ('hazy/1_2_0.82193.png', 'GT/1_2_0.82193.png'),
                         ('hazy/2_1_0.75.png', 'GT/2_1_0.75.png')], {NO_GT: ['hazy/7_1_0.8.png']}),
    'dehazeformer_out': ('dehazeformer', 'data/RESIDE-OUT/test',
                         ['hazy/0001.png', 'hazy/0002.png', 'GT/0001.png', 'GT/0002.png'],
                         [('hazy/0001.png', 'GT/0001.png'), ('hazy/0002.png', 'GT/0002.png')], {}),
    'did': ('did', 'DID', ['input/1.jpg', 'input/2.jpg', 'groundtruth/1.jpg', 'groundtruth/2.jpg'],
            [('input/1.jpg', 'groundtruth/1.jpg'), ('input/2.jpg', 'groundtruth/2.jpg')], {}),
    'folders': ('folders', 'X', ['lq/a.png', 'lq/b.png', 'gt/a.png', 'gt/b.png'],
                [('lq/a.png', 'gt/a.png'), ('lq/b.png', 'gt/b.png')], {}),
}


def build_tree(tmp_path, case, seed=0):
    """Write a case's files; returns (layout, root, expected pairs, expected unmatched, {rel: decoded image})."""
    layout, root, files, pairs, unmatched = CASES[case]
    root = str(tmp_path / root)
    rng = np.random.default_rng(seed)
    images = {}
    for entry in files:
        rel, size = entry if isinstance(entry, tuple) else (entry, (H, W))
        images[rel] = write(root, rel, rng, size)
    return layout, root, pairs, unmatched, images


@pytest.mark.parametrize('case', list(CASES))
def test_layout_pairs_list_tool_and_dataset(case, tmp_path, capsys):
    layout, root, pairs, unmatched, images = build_tree(tmp_path, case)
    scan = scan_layout(layout, root)
    assert scan.pairs == pairs
    assert {why: scan.unmatched_by_reason(why) for why in {w for _, w in scan.unmatched}} == unmatched

    list_file = str(tmp_path / 'pairs.txt')
    assert make_pair_list.main(['--layout', layout, '--root', root, '--out', list_file]) == 0
    out = capsys.readouterr().out
    assert f'{len(pairs)} pairs' in out and f'unmatched: {sum(map(len, unmatched.values()))} files' in out
    assert [(p.lq, p.gt) for p in read_pair_list(list_file)] == pairs

    dataset = build_dataset(opt(dataroot=root, list_file=list_file))
    assert isinstance(dataset, PairedListDataset) and len(dataset) == len(pairs)
    for index, (lq, gt) in enumerate(pairs):  # each LQ comes with the GT the layout names, whole
        item = dataset[index]
        assert item['lq_path'] == os.path.join(root, lq) and item['gt_path'] == os.path.join(root, gt)
        assert torch.equal(item['lq'], as_tensor(images[lq]))
        assert torch.equal(item['gt'], as_tensor(images[gt], crop_to=(H, W)))

    train = build_dataset(opt('train', dataroot=root, list_file=list_file))
    item = train[len(pairs) - 1]
    assert item['lq'].shape == item['gt'].shape == (3, 32, 32) and item['lq'].dtype == torch.float32


def test_sots_indoor_gt_crop_modes(tmp_path):
    _, root, pairs, _, images = build_tree(tmp_path, 'sots')
    list_file = str(tmp_path / 'pairs.txt')
    write_pair_list(list_file, pairs)
    full = images['indoor/gt/1400.png']
    assert full.shape[:2] == SOTS_GT  # the GT really is larger than the hazy image
    centre = build_dataset(opt(dataroot=root, list_file=list_file))[0]['gt']
    assert torch.equal(centre, as_tensor(full[10:10 + H, 10:10 + W]))  # the default, FFA-Net's CenterCrop
    topleft = build_dataset(opt(dataroot=root, list_file=list_file, gt_crop='topleft'))[0]['gt']
    assert torch.equal(topleft, as_tensor(full[:H, :W])) and not torch.equal(topleft, centre)
    with pytest.raises(ValueError, match='gt_crop: center'):
        build_dataset(opt(dataroot=root, list_file=list_file, gt_crop='none'))[0]
    with pytest.raises(ValueError, match='gt_crop must be one of'):
        build_dataset(opt(dataroot=root, list_file=list_file, gt_crop='middle'))


def test_spa_official_list_used_as_is_and_checked(tmp_path, capsys):
    _, root, pairs, _, images = build_tree(tmp_path, 'spa_train')
    official = os.path.join(root, 'real_world.txt')
    with open(official, 'w') as handle:  # SPA's own lists start their paths with '/' or './'
        handle.write(f'/{pairs[0][0]} /{pairs[0][1]}\n./{pairs[2][0]} ./{pairs[2][1]}\n')
        handle.write('/real_world/000/000-9/000-9_0_0.png /real_world_gt/000/000_0_0.png\n')
    converted = str(tmp_path / 'spa.txt')
    assert make_pair_list.main(['--layout', 'spa', '--root', root, '--list', official, '--out', converted]) == 0
    assert 'listed but missing (1)' in capsys.readouterr().out
    assert [(p.lq, p.gt) for p in read_pair_list(converted)] == [pairs[0], pairs[2]]
    with pytest.raises(FileNotFoundError, match=r'line 3: lq file .*000-9_0_0\.png'):
        build_dataset(opt(dataroot=root, list_file=official))
    dataset = build_dataset(opt(dataroot=root, list_file=official, check_files=False))
    assert torch.equal(dataset[1]['gt'], as_tensor(images[pairs[2][1]]))
    with pytest.raises(FileNotFoundError, match=r'line 3'):
        dataset[2]


def test_layout_errors(tmp_path):
    rng = np.random.default_rng(1)
    write(tmp_path / 'Rain', 'train/rain-1.png', rng)
    write(tmp_path / 'Rain', 'test/rain-1.png', rng)
    write(tmp_path / 'Rain', 'norain-1.png', rng)
    with pytest.raises(ValueError, match='one-to-one'):
        scan_layout('rain_pairs', str(tmp_path / 'Rain'))
    write(tmp_path / 'DID', 'Rain_Heavy/1.jpg', rng)
    with pytest.raises(FileNotFoundError, match='side by side'):
        scan_layout('did', str(tmp_path / 'DID'))
    assert make_pair_list.main(['--layout', 'reside_its', '--root', str(tmp_path / 'DID'),
                                '--out', str(tmp_path / 'x.txt')]) == 1
    assert not (tmp_path / 'x.txt').exists()
    with pytest.raises(ValueError, match='double quote, tab or newline'):
        write_pair_list(str(tmp_path / 'y.txt'), [('rainy "image"/1_1.jpg', 'ground truth/1.jpg')])


def test_disk_errors_name_the_key_file_and_line(tmp_path):
    _, root, pairs, _, _ = build_tree(tmp_path, 'folders')
    list_file = str(tmp_path / 'pairs.txt')
    with pytest.raises(FileNotFoundError, match='list file'):
        build_dataset(opt(dataroot=root, list_file=list_file))
    with pytest.raises(KeyError, match='list_file is required'):
        build_dataset(opt(dataroot=root))
    write_pair_list(list_file, pairs)
    with pytest.raises(KeyError, match='set dataroot'):
        build_dataset(opt(list_file=list_file))
    with pytest.raises(KeyError, match='gt_size'):
        build_dataset(opt('train', dataroot=root, list_file=list_file, gt_size=None))
    with open(list_file, 'a') as handle:
        handle.write('# a comment\n\nlq/a.png gt/a.png extra\n')
    with pytest.raises(ValueError, match='line 5'):
        build_dataset(opt(dataroot=root, list_file=list_file))
    write_pair_list(list_file, pairs + [('lq/c.png', 'gt/a.png')])
    with pytest.raises(FileNotFoundError, match=r"line 3: lq file .*lq/c\.png"):
        build_dataset(opt(dataroot=root, list_file=list_file))
    write_pair_list(list_file, pairs)
    with open(os.path.join(root, 'gt/b.png'), 'wb') as handle:
        handle.write(b'not a png at all')
    dataset = build_dataset(opt(dataroot=root, list_file=list_file))
    assert dataset[0]['gt'].shape == (3, H, W)
    with pytest.raises(ValueError, match=r'gt/b\.png.*line 2.*corrupt'):
        dataset[1]


def test_train_batch_through_build_dataloader(tmp_path):
    _, root, pairs, _, _ = build_tree(tmp_path, 'reside_its')
    list_file = str(tmp_path / 'pairs.txt')
    write_pair_list(list_file, pairs)
    dataset_opt = opt('train', dataroot=root, list_file=list_file)
    dataset = build_dataset(dataset_opt)
    assert DATASET_REGISTRY.get('PairedListDataset') is PairedListDataset and dataset.opt['name'] == 'list-train'
    loader = build_dataloader(dataset, dataset_opt, num_gpu=0, dist=False, sampler=None, seed=0)
    batch = next(iter(loader))
    assert batch['lq'].shape == batch['gt'].shape == (2, 3, 32, 32)
    assert len(batch['lq_path']) == 2 and all(p.startswith(root) for p in batch['gt_path'])
    # A training crop is the same window of LQ and GT: with flips and rotations off, find it in the files.
    item = build_dataset(opt('train', dataroot=root, list_file=list_file, use_hflip=False, use_rot=False))[2]
    lq_full, gt_full = as_tensor(cv2.imread(item['lq_path'])), as_tensor(cv2.imread(item['gt_path']))
    hits = [(t, left) for t in range(H - 31) for left in range(W - 31)
            if torch.equal(lq_full[:, t:t + 32, left:left + 32], item['lq'])]
    assert len(hits) == 1 and torch.equal(gt_full[:, hits[0][0]:hits[0][0] + 32, hits[0][1]:hits[0][1] + 32],
                                          item['gt'])


def test_sr_scale_crops_and_val_gt(tmp_path):
    rng = np.random.default_rng(2)
    root = str(tmp_path / 'SR')
    write(root, 'gt/a.png', rng, (2 * H + 1, 2 * W + 3))  # not a multiple of the scale, as in SR benchmarks
    write(root, 'lq/a.png', rng, (H, W))
    list_file = str(tmp_path / 'pairs.txt')
    write_pair_list(list_file, [('lq/a.png', 'gt/a.png')])
    val = build_dataset(opt(dataroot=root, list_file=list_file, scale=2, gt_crop='topleft'))[0]
    assert val['lq'].shape == (3, H, W) and val['gt'].shape == (3, 2 * H, 2 * W)
    train = build_dataset(opt('train', dataroot=root, list_file=list_file, scale=2, gt_size=32))[0]
    assert train['gt'].shape == (3, 32, 32) and train['lq'].shape == (3, 16, 16)


def test_keys_survive_basicsr_meta_parsing():
    assert path_to_key('hazy/1_1_0.90179.png') == 'hazy/1_1_0%2E90179'
    assert path_to_key('/real_world/000/000-1/000-1_0_0.png') == 'real_world/000/000-1/000-1_0_0'
    for rel in ('hazy/1_1_0.90179.png', 'ground truth/1.jpg', 'a%b/é.png', '0001_s001.png'):
        key = path_to_key(rel)
        assert key_to_path(key) == os.path.splitext(rel)[0]
        assert f'{key}.png (1,1,3) 1'.split('.')[0] == key  # BasicSR's paired_paths_from_lmdb rule


def lmdb_items(root, pairs):
    return [(path_to_key(p), os.path.join(root, p)) for pair in pairs for p in pair]


def test_lmdb_round_trip_one_db(tmp_path, capsys):
    _, root, pairs, _, _ = build_tree(tmp_path, 'sots')  # png and jpg, dotted names, GT larger than hazy
    list_file = str(tmp_path / 'pairs.txt')
    write_pair_list(list_file, pairs)
    db = str(tmp_path / 'SOTS.lmdb')
    assert create_lmdb.main(['--list', list_file, '--dataroot', root, '--out', db, '--no-progress']) == 0
    assert '7 images, 7 written, 0 already there' in capsys.readouterr().out  # 4 hazy + 3 GT, repeats stored once
    assert create_lmdb.main(['--list', list_file, '--dataroot', root, '--out', db, '--no-progress']) == 0
    assert '7 images, 0 written, 7 already there' in capsys.readouterr().out  # the same command again resumes
    with open(os.path.join(db, 'meta_info.txt')) as handle:
        lines = handle.read().splitlines()
    assert {line.split('.')[0] for line in lines} == read_keys(db)  # what BasicSR's reader sees is what is stored
    assert 'indoor/gt/1400.png (60,68,3) 1' in lines and 'outdoor/hazy/0001_0%2E8_0%2E2.png (40,48,3) 1' in lines
    disk = build_dataset(opt(dataroot=root, list_file=list_file))
    from_db = build_dataset(opt(dataroot=db, list_file=list_file, io_backend=dict(type='lmdb')))
    assert len(from_db) == len(disk) == 4
    for index in range(len(disk)):
        a, b = disk[index], from_db[index]
        assert torch.equal(a['lq'], b['lq']) and torch.equal(a['gt'], b['gt'])
        assert os.path.basename(a['lq_path']) == os.path.basename(b['lq_path'])
    train_opt = opt('train', dataroot=db, list_file=list_file, io_backend=dict(type='lmdb'), num_worker_per_gpu=1)
    loader = build_dataloader(build_dataset(train_opt), train_opt, num_gpu=0, dist=False, sampler=None, seed=0)
    batch = next(iter(loader))  # read by a forked worker while this process holds the same lmdb open
    assert batch['gt'].shape == batch['lq'].shape == (2, 3, 32, 32)


def test_lmdb_two_dbs_from_folders_and_from_a_list(tmp_path, capsys):
    _, root, pairs, _, _ = build_tree(tmp_path, 'folders')
    lq_db, gt_db = str(tmp_path / 'lq.lmdb'), str(tmp_path / 'gt.lmdb')
    assert create_lmdb.main(['--lq-folder', f'{root}/lq', '--gt-folder', f'{root}/gt', '--out-lq', lq_db,
                             '--out-gt', gt_db, '--no-progress']) == 0
    assert read_keys(lq_db) == read_keys(gt_db) == {'a', 'b'}
    lmdb_opt = opt(dataroot_lq=lq_db, dataroot_gt=gt_db, io_backend=dict(type='lmdb'))
    lmdb_writer.close_shared_envs()  # read_keys' handles: BasicSR's reader opens its own, once per process
    basicsr = PairedImageDataset(copy.deepcopy(lmdb_opt))  # BasicSR's own reader of the same lmdbs
    expected = [basicsr[index] for index in range(2)]
    del basicsr  # it holds its own lmdb handles, which lmdb allows once per process
    gc.collect()
    ours = build_dataset(lmdb_opt)  # no list_file: the keys both lmdbs hold, as BasicSR pairs them
    for index in range(2):
        assert torch.equal(ours[index]['lq'], expected[index]['lq'])
        assert torch.equal(ours[index]['gt'], expected[index]['gt'])

    list_file = str(tmp_path / 'names.txt')  # paths relative to each side's own root
    write_pair_list(list_file, [('a.png', 'b.png'), ('b.png', 'a.png')])
    lq2, gt2 = str(tmp_path / 'lq2.lmdb'), str(tmp_path / 'gt2.lmdb')
    assert create_lmdb.main(['--list', list_file, '--dataroot-lq', f'{root}/lq', '--dataroot-gt', f'{root}/gt',
                             '--out-lq', lq2, '--out-gt', gt2, '--no-progress']) == 0
    disk = build_dataset(opt(dataroot_lq=f'{root}/lq', dataroot_gt=f'{root}/gt', list_file=list_file))
    from_db = build_dataset(opt(dataroot_lq=lq2, dataroot_gt=gt2, list_file=list_file, io_backend=dict(type='lmdb')))
    assert torch.equal(disk[0]['gt'], from_db[0]['gt']) and torch.equal(disk[0]['gt'], ours[1]['gt'])
    with pytest.raises(SystemExit):
        create_lmdb.main(['--list', list_file, '--dataroot-lq', f'{root}/lq'])
    assert 'also needs --dataroot-gt, --out-lq, --out-gt' in capsys.readouterr().err


def test_lmdb_resume_skips_stored_keys_and_never_rewrites(tmp_path):
    _, root, pairs, _, images = build_tree(tmp_path, 'reside_its')
    db = str(tmp_path / 'ITS.lmdb')
    first = write_lmdb(lmdb_items(root, pairs[:2]), db, progress=False)  # "interrupted" after two pairs
    assert (first.total, first.written, first.skipped) == (3, 3, 0)
    old_gt = images['clear/1.png']
    write(root, 'clear/1.png', np.random.default_rng(99))  # changed on disk: a rewrite would store the new one
    second = write_lmdb(lmdb_items(root, pairs), db, progress=False)
    assert (second.total, second.written, second.skipped) == (5, 2, 3)
    meta = check_lmdb(db)
    assert set(meta) == read_keys(db) == {path_to_key(p) for pair in pairs for p in pair}
    list_file = str(tmp_path / 'pairs.txt')
    write_pair_list(list_file, pairs)
    dataset = build_dataset(opt(dataroot=db, list_file=list_file, io_backend=dict(type='lmdb')))
    assert torch.equal(dataset[0]['gt'], as_tensor(old_gt))


def test_lmdb_crash_mid_run_then_resume(tmp_path, monkeypatch):
    _, root, pairs, _, _ = build_tree(tmp_path, 'reside_its')
    db = str(tmp_path / 'ITS.lmdb')
    real_encode, calls = lmdb_writer.encode_image, []

    def crashing_encode(path, level=1):
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt  # Ctrl-C during the 4th image, after a commit at 2 (batch=2)
        return real_encode(path, level)

    monkeypatch.setattr(lmdb_writer, 'encode_image', crashing_encode)
    with pytest.raises(KeyboardInterrupt):
        write_lmdb(lmdb_items(root, pairs), db, batch=2, progress=False)
    assert set(check_lmdb(db)) == read_keys(db) and len(read_keys(db)) == 3  # meta lists what was stored
    monkeypatch.setattr(lmdb_writer, 'encode_image', real_encode)
    report = write_lmdb(lmdb_items(root, pairs), db, batch=2, progress=False)
    assert (report.written, report.skipped) == (2, 3) and len(check_lmdb(db)) == 5


def test_lmdb_mismatches_give_clear_errors(tmp_path):
    _, root, pairs, _, _ = build_tree(tmp_path, 'reside_its')
    db, list_file = str(tmp_path / 'ITS.lmdb'), str(tmp_path / 'pairs.txt')
    write_lmdb(lmdb_items(root, pairs[:2]), db, progress=False)
    lmdb_opt = dict(dataroot=db, list_file=list_file, io_backend=dict(type='lmdb'))
    write_pair_list(list_file, pairs)  # line 3 (after no header) names a pair the lmdb lacks
    with pytest.raises(LmdbMismatchError, match=r"line 3: lq 'hazy/2_1_0\.75\.png' \(lmdb key 'hazy/2_1_0%2E75'\)"):
        build_dataset(opt(**lmdb_opt))
    write_pair_list(list_file, pairs[:2])
    meta_file = os.path.join(db, 'meta_info.txt')
    with open(meta_file) as handle:
        lines = handle.readlines()
    with open(meta_file, 'w') as handle:
        handle.writelines(lines[1:])
    with pytest.raises(LmdbMismatchError, match=r"1 stored keys are not listed \('hazy/1_1_0%2E90179'\)"):
        build_dataset(opt(**lmdb_opt))
    with open(meta_file, 'w') as handle:
        handle.writelines(lines + ['hazy/ghost.png (40,48,3) 1\n'])
    with pytest.raises(LmdbMismatchError, match=r"1 listed keys are not stored \('hazy/ghost'\)"):
        build_dataset(opt(**lmdb_opt))
    with open(meta_file, 'w') as handle:
        handle.writelines([lines[0].replace('(40,48,3)', '(41,48,3)')] + lines[1:])
    assert read_meta_info(db)[path_to_key(pairs[0][0])] == (41, 48, 3)
    dataset = build_dataset(opt(**lmdb_opt))
    with pytest.raises(LmdbMismatchError, match=r'40x48 but meta_info\.txt .* says 41x48'):
        dataset[0]
    os.remove(meta_file)
    with pytest.raises(FileNotFoundError, match='meta_info.txt'):
        build_dataset(opt(**lmdb_opt))


# Both scripts run as __main__ in one fresh interpreter (each start imports torch and BasicSR: seconds).
RUN_SCRIPTS = """
import runpy, sys
for argv in {argvs!r}:
    sys.argv = argv
    try:
        runpy.run_path(argv[0], run_name='__main__')
    except SystemExit as exit_:
        if exit_.code:
            raise
"""


def test_both_tools_run_as_scripts(tmp_path):
    layout, root, pairs, _, _ = build_tree(tmp_path, 'ddn')
    list_file, db = str(tmp_path / 'ddn.txt'), str(tmp_path / 'ddn.lmdb')
    argvs = [[os.path.join(REPO, 'tools', 'make_pair_list.py'), '--layout', layout, '--root', root, '--out', list_file],
             [os.path.join(REPO, 'tools', 'create_lmdb.py'), '--list', list_file, '--dataroot', root, '--out', db]]
    done = run_tool(['-c', RUN_SCRIPTS.format(argvs=argvs)], cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f'ddn: {len(pairs)} pairs (2 distinct GT)' in done.stdout
    assert '5 images, 5 written' in done.stdout and 'write ddn.lmdb' in done.stderr  # tqdm's bar
    assert len(check_lmdb(db)) == 5


# ------------------------------------------------- DehazeFormer's trees, spaces in paths, images below the patch


def test_dehazeformer_tree_reside_its_says_which_layout_fits(tmp_path, capsys):
    _, root, pairs, _, _ = build_tree(tmp_path, 'dehazeformer_in')
    for rel in ('hazy/1400_1.png', 'GT/1400_1.png'):  # the test split beside train, as the archive has it
        write(str(tmp_path / 'data/RESIDE-IN/test'), rel, np.random.default_rng(3))
    out = str(tmp_path / 'its.txt')
    assert make_pair_list.main(['--layout', 'reside_its', '--root', root, '--out', out]) == 1
    err = capsys.readouterr().err
    assert 'no reside_its pairs' in err and '--layout dehazeformer pairs 3 files there' in err
    assert not os.path.exists(out)
    parent = str(tmp_path / 'data/RESIDE-IN')  # the set's top folder: name its splits
    with pytest.raises(FileNotFoundError, match=r"holds the splits test, train: point --root at one"):
        scan_layout('dehazeformer', parent)
    assert make_pair_list.main(['--layout', 'auto', '--root', root, '--out', out]) == 0
    assert 'auto: --layout dehazeformer pairs 3 files' in capsys.readouterr().out
    assert [(p.lq, p.gt) for p in read_pair_list(out)] == pairs


def test_list_paths_with_spaces_quoted_or_tab_separated(tmp_path):
    _, root, pairs, _, images = build_tree(tmp_path, 'ddn_archive')
    list_file = str(tmp_path / 'ddn.txt')
    write_pair_list(list_file, pairs)
    with open(list_file) as handle:
        assert handle.readline() == '"rainy image/901_1.jpg" "ground truth/901.jpg"\n'
    with open(list_file, 'a') as handle:  # the other accepted forms: a tab between the paths, quotes as needed
        handle.write('rainy image/901_14.jpg\tground truth/901.jpg\n"rainy image/902_3.jpg" ./"ground truth"/902.jpg\n')
    with pytest.raises(ValueError, match=r'line 5: unbalanced double quote'):
        read_pair_list(list_file)
    with open(list_file) as handle:
        lines = handle.readlines()[:4]
    with open(list_file, 'w') as handle:
        handle.writelines(lines + ['"rainy image/902_3.jpg"   "ground truth/902.jpg"  \n'])
    assert [(p.line, p.lq, p.gt) for p in read_pair_list(list_file)] == [
        (1, *pairs[0]), (2, *pairs[1]), (3, *pairs[2]), (4, *pairs[1]), (5, *pairs[2])]
    with open(list_file, 'a') as handle:
        handle.write('rainy image/1_1.jpg ground truth/1.jpg\n')
    with pytest.raises(ValueError, match=r'line 6: expected .*4 fields; write a path holding spaces in double quotes'):
        read_pair_list(list_file)
    write_pair_list(list_file, pairs)
    db = str(tmp_path / 'ddn.lmdb')  # keys percent-encode the space; the lmdb reads back the same images
    assert create_lmdb.main(['--list', list_file, '--dataroot', root, '--out', db, '--no-progress']) == 0
    assert path_to_key('rainy image/901_1.jpg') in read_keys(db)
    from_db = build_dataset(opt(dataroot=db, list_file=list_file, io_backend=dict(type='lmdb')))
    assert torch.equal(from_db[1]['lq'], as_tensor(images['rainy image/901_14.jpg']))
    assert torch.equal(from_db[2]['gt'], as_tensor(images['ground truth/902.jpg']))


class Records(list):
    """The messages of BasicSR's logger (it does not propagate, so pytest's caplog misses them)."""

    def __enter__(self):
        import logging
        self.handler = logging.Handler()
        self.handler.emit = lambda record: self.append(record.getMessage())
        logging.getLogger('basicsr').addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        import logging
        logging.getLogger('basicsr').removeHandler(self.handler)


@pytest.fixture(scope='module')
def ots_small(tmp_path_factory):
    """An OTS tree whose part2 images are smaller than the 32-pixel patch, and its list."""
    tmp = tmp_path_factory.mktemp('ots')
    root, rng = str(tmp / 'OTS'), np.random.default_rng(4)
    pairs = []
    for index in range(1, 7):
        size = (24, 48) if index in (2, 5) else (H, W)
        lq, gt = f'hazy/part{1 + index % 2}/{index:04d}_0.8_0.2.jpg', f'clear/{index:04d}.jpg'
        write(root, lq, rng, size)
        write(root, gt, rng, size)
        pairs.append((lq, gt))
    list_file = str(tmp / 'ots.txt')
    write_pair_list(list_file, pairs)
    return root, list_file, pairs


def test_min_size_policy_skip_resample_error(ots_small):
    root, list_file, pairs = ots_small
    small = [pairs[1][0], pairs[4][0]]
    with Records() as records:
        skip = build_dataset(opt('train', dataroot=root, list_file=list_file))  # the default policy
    assert len(skip) == 4 and not {p.lq for p in skip.pairs} & set(small)
    assert len(records) == 1 and '2 of 6 pairs have an LQ image smaller than the 32x32 LQ patch' in records[0]
    assert all(name in records[0] for name in small) and 'line 2' in records[0] and '4 pairs remain' in records[0]
    skip_opt = opt('train', dataroot=root, list_file=list_file, batch_size_per_gpu=4)
    loader = build_dataloader(skip, skip_opt, num_gpu=0, dist=False, sampler=None, seed=0)
    assert [batch['lq'].shape for batch in loader] == [(4, 3, 32, 32)]  # a whole epoch, no crash

    with pytest.raises(ValueError, match=r'2 of 6 pairs .*0002_0\.8_0\.2\.jpg.*line 2.*min_size_policy: skip'):
        build_dataset(opt('train', dataroot=root, list_file=list_file, min_size_policy='error'))
    with pytest.raises(ValueError, match=r'6 of 6 pairs .*Nothing would be left to train on: lower gt_size'):  # nothing would be left
        build_dataset(opt('train', dataroot=root, list_file=list_file, gt_size=48))
    with pytest.raises(ValueError, match='min_size_policy must be one of'):
        build_dataset(opt('train', dataroot=root, list_file=list_file, min_size_policy='drop'))
    assert len(build_dataset(opt(dataroot=root, list_file=list_file))) == 6  # validation keeps whole images

    resample = build_dataset(opt('train', dataroot=root, list_file=list_file, min_size_policy='resample'))
    assert len(resample) == 6
    import random
    random.seed(0)
    with Records() as records:
        items = [resample[index] for index in (1, 4, 1)]
    assert all(item['lq'].shape == (3, 32, 32) and item['lq_path'] not in small for item in items)
    assert len(records) == 2 and 'drawing another pair instead' in records[0] and small[0] in records[0]
    assert '2 such images met so far' in records[1]


def test_zero_byte_and_empty_values_are_named(tmp_path, ots_small):
    _, root, pairs, _, _ = build_tree(tmp_path, 'reside_its')
    list_file, db = str(tmp_path / 'pairs.txt'), str(tmp_path / 'ITS.lmdb')
    write_pair_list(list_file, pairs)
    write_lmdb(lmdb_items(root, pairs), db, progress=False)
    open(os.path.join(root, 'clear/2.png'), 'wb').close()  # a 0-byte GT on disk, line 3
    with pytest.raises(ValueError, match=r"gt '.*clear/2\.png' \(.*pairs\.txt, line 3\): 0 bytes.*remove line 3"):
        build_dataset(opt(dataroot=root, list_file=list_file))[2]
    open(os.path.join(root, 'hazy/1_2_0.82193.png'), 'wb').close()  # a 0-byte LQ: training names it at start
    with pytest.raises(ValueError, match=r"lq '.*hazy/1_2_0\.82193\.png' \(.*line 2\): 0 bytes"):
        build_dataset(opt('train', dataroot=root, list_file=list_file))

    lmdb_writer.close_shared_envs()
    import lmdb
    with lmdb.open(db) as env, env.begin(write=True) as txn:  # an empty lmdb value, as a cut-short copy leaves
        txn.put(b'clear/1', b'')
    dataset = build_dataset(opt(dataroot=db, list_file=list_file, io_backend=dict(type='lmdb')))
    with pytest.raises(ValueError, match=r"lmdb key 'clear/1'\) \(.*line 1\): 0 bytes.*--repair"):
        dataset[0]


def test_basicsr_paired_image_dataset_names_bad_files_and_keys(tmp_path):
    _, root, _, _, _ = build_tree(tmp_path, 'folders')
    folder_opt = dict(name='bs', type='PairedImageDataset', phase='val', scale=1, io_backend=dict(type='disk'),
                      dataroot_gt=f'{root}/gt', dataroot_lq=f'{root}/lq', filename_tmpl='{}')
    open(os.path.join(root, 'lq/b.png'), 'wb').close()
    dataset = PairedImageDataset(copy.deepcopy(folder_opt))
    assert dataset[0]['lq'].shape == (3, H, W)
    with pytest.raises(ValueError, match=r"image file '.*lq/b\.png': 0 bytes .*replace the file"):
        dataset[1]
    with open(os.path.join(root, 'lq/b.png'), 'wb') as handle:
        handle.write(b'\x89PNG\r\n\x1a\n not really')
    with pytest.raises(ValueError, match=r"lq/b\.png': cannot decode 19 bytes: corrupt"):
        PairedImageDataset(copy.deepcopy(folder_opt))[1]

    write(root, 'lq/b.png', np.random.default_rng(5))
    lq_db, gt_db = str(tmp_path / 'lq.lmdb'), str(tmp_path / 'gt.lmdb')
    assert create_lmdb.main(['--lq-folder', f'{root}/lq', '--gt-folder', f'{root}/gt', '--out-lq', lq_db,
                             '--out-gt', gt_db, '--no-progress']) == 0
    lmdb_writer.close_shared_envs()
    import lmdb
    with lmdb.open(gt_db) as env, env.begin(write=True) as txn:
        txn.put(b'a', b'')
        txn.delete(b'b')
    lmdb_opt = dict(folder_opt, dataroot_gt=gt_db, dataroot_lq=lq_db, io_backend=dict(type='lmdb'))
    dataset = PairedImageDataset(copy.deepcopy(lmdb_opt))
    with pytest.raises(ValueError, match=r"lmdb key 'a' of '.*gt\.lmdb': 0 bytes.*--repair"):
        dataset[0]
    with pytest.raises(ValueError, match=r"lmdb key 'b' of '.*gt\.lmdb': not stored"):
        dataset[1]
    del dataset
    gc.collect()
