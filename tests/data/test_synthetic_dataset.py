import mclir_plugin  # noqa: F401  (before basicsr: installs the compatibility shim)

import os
import pickle

import numpy as np
import pytest
import torch
from basicsr.data import build_dataloader, build_dataset
from basicsr.utils.matlab_functions import imresize
from basicsr.utils.registry import DATASET_REGISTRY

from mclir_plugin.data import SyntheticPairedDataset, add_haze, add_rain, degrade_sr

TASK_SCALES = [('sr', 4), ('haze', 1), ('rain', 1)]


def make_opt(task, scale=1, phase='train', **extra):
    """A dataset option block as BasicSR hands it over (generic keys included, which must be ignored)."""
    opt = dict(name=f'test-{task}', type='SyntheticPairedDataset', task=task, scale=scale, phase=phase,
               images=['chelsea', 'coffee'], gt_size=32, length=8, use_hflip=True, use_rot=True,
               batch_size_per_gpu=4, num_worker_per_gpu=0, dataset_enlarge_ratio=1, prefetch_mode=None,
               pin_memory=False, io_backend=dict(type='disk'))
    opt.update(extra)
    return opt


def as_hwc(tensor):
    return tensor.numpy().transpose(1, 2, 0)


def test_registered_and_built_by_basicsr():
    assert DATASET_REGISTRY.get('SyntheticPairedDataset') is SyntheticPairedDataset
    dataset = build_dataset(make_opt('sr', 4))
    assert isinstance(dataset, SyntheticPairedDataset) and len(dataset) == 8
    assert dataset.opt['name'] == 'test-sr'  # BasicSR's validation logs dataset.opt['name']


@pytest.mark.parametrize('task,scale', TASK_SCALES)
@pytest.mark.parametrize('phase', ['train', 'val'])
def test_shapes_range_and_paths(task, scale, phase):
    dataset = SyntheticPairedDataset(make_opt(task, scale, phase, val_size=64))
    size = 32 if phase == 'train' else 64
    assert len(dataset) == (8 if phase == 'train' else 2)
    torch.manual_seed(0)
    item = dataset[1]
    assert item['gt'].shape == (3, size, size) and item['lq'].shape == (3, size // scale, size // scale)
    for key in ('lq', 'gt'):
        assert item[key].dtype == torch.float32
        assert 0 <= item[key].min() and item[key].max() <= 1
    assert not torch.equal(item['lq'], item['gt'][:, ::scale, ::scale] if scale > 1 else item['gt'])
    if phase == 'val':
        assert item['lq_path'] == item['gt_path'] == 'coffee'
    else:
        assert item['lq_path'] == item['gt_path'] + '_lq' and item['gt_path'] in ('chelsea', 'coffee')


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_sr_lq_is_matlab_bicubic_of_returned_gt(scale):
    dataset = SyntheticPairedDataset(make_opt('sr', scale, gt_size=12 * scale, length=4))
    torch.manual_seed(0)
    for index in range(4):  # hflip/rot happen before degradation, so the returned gt is the one degraded
        item = dataset[index]
        expected = np.clip(imresize(as_hwc(item['gt']), 1 / scale), 0, 1)
        np.testing.assert_allclose(as_hwc(item['lq']), expected, atol=1e-5)


def test_haze_pulls_pixels_towards_the_atmospheric_light():
    light = 0.9
    dataset = SyntheticPairedDataset(make_opt('haze', degradation=dict(light_range=[light, light])))
    torch.manual_seed(0)
    for index in range(4):
        item = dataset[index]
        lq, gt = item['lq'].numpy(), item['gt'].numpy()
        # |I - A| = t |J - A| with t in (0, 1]: never further from A, and closer on average
        assert np.all(np.abs(lq - light) <= np.abs(gt - light) + 1e-6)
        assert np.abs(lq - light).mean() < 0.9 * np.abs(gt - light).mean()
        assert np.abs(lq.mean() - light) < np.abs(gt.mean() - light)


def test_add_haze_formula_with_fixed_parameters():
    img = 0.5 * np.random.default_rng(1).random((20, 30, 3), dtype=np.float32)  # far from A, for a stable ratio
    hazy = add_haze(img, np.random.default_rng(2), beta_range=(1.0, 1.0), light_range=(0.8, 0.8))
    t = (hazy - 0.8) / (img - 0.8)  # the same transmission in every channel, within [exp(-1), 1]
    assert np.allclose(t, t[..., :1], atol=1e-3)
    assert t.min() >= np.exp(-1) - 1e-3 and t.max() <= 1 + 1e-3 and t.std() > 0.01  # the depth varies


def test_rain_adds_positive_streaks():
    dataset = SyntheticPairedDataset(make_opt('rain'))
    torch.manual_seed(0)
    for index in range(4):
        item = dataset[index]
        diff = (item['lq'] - item['gt']).numpy()
        assert diff.min() >= -1e-6
        assert (diff > 0.05).mean() > 0.005  # visible streaks, not just noise
    img = np.full((64, 64, 3), 0.2, np.float32)
    rainy = add_rain(img, np.random.default_rng(0), angle_range=(0, 0), length_range=(15, 15))
    streak = rainy[..., 0] - 0.2
    assert np.allclose(rainy, rainy[..., :1])  # white rain: same in every channel
    # vertical streaks: neighbouring rows agree far more than neighbouring columns
    assert np.abs(np.diff(streak, axis=0)).mean() < 0.5 * np.abs(np.diff(streak, axis=1)).mean()


def test_degrade_sr_checks_size():
    assert degrade_sr(np.zeros((12, 8, 3), np.float32), 4).shape == (3, 2, 3)
    with pytest.raises(ValueError, match='multiple of scale'):
        degrade_sr(np.zeros((10, 8, 3), np.float32), 4)


@pytest.mark.parametrize('task,scale', TASK_SCALES)
def test_validation_is_deterministic(task, scale):
    dataset = SyntheticPairedDataset(make_opt(task, scale, 'val', val_size=48 if scale == 4 else 40))
    first, second = dataset[0], dataset[0]
    assert torch.equal(first['lq'], second['lq']) and torch.equal(first['gt'], second['gt'])
    if task != 'sr':  # the seed drives the degradation
        other = SyntheticPairedDataset(make_opt(task, scale, 'val', val_size=40, seed=1))[0]
        assert torch.equal(other['gt'], first['gt']) and not torch.equal(other['lq'], first['lq'])


def test_validation_whole_image_and_default_size():
    whole = SyntheticPairedDataset(make_opt('sr', 3, 'val', images=['chelsea'], val_size=None))[0]
    assert whole['gt'].shape == (3, 300, 450) and whole['lq'].shape == (3, 100, 150)  # 451 cut to 450
    assert SyntheticPairedDataset(make_opt('sr', 3, 'val', images=['cat']))[0]['gt'].shape == (3, 126, 126)


@pytest.mark.parametrize('task,scale', TASK_SCALES)
def test_training_is_reproducible_under_a_torch_seed(task, scale):
    dataset = SyntheticPairedDataset(make_opt(task, scale))
    torch.manual_seed(123)
    first = [dataset[i] for i in range(3)]
    torch.manual_seed(123)
    again = [dataset[i] for i in range(3)]
    later = [dataset[i] for i in range(3)]  # a new "epoch": torch's RNG has moved on
    for a, b, c in zip(first, again, later):
        assert torch.equal(a['lq'], b['lq']) and torch.equal(a['gt'], b['gt'])
    assert not all(torch.equal(a['gt'], c['gt']) for a, c in zip(first, later))


def test_training_augmentation_is_basicsr_flips_and_transpose():
    plain = SyntheticPairedDataset(make_opt('haze', use_hflip=False, use_rot=False, length=16))
    augmented = SyntheticPairedDataset(make_opt('haze', length=16))
    used = set()
    for index in range(16):  # same torch draw, so the same image and crop; only the flips differ
        torch.manual_seed(index)
        gt = plain[index]['gt']
        torch.manual_seed(index)
        aug = augmented[index]['gt']
        matches = [(h, v, t) for h in (0, 1) for v in (0, 1) for t in (0, 1)
                   if torch.equal(aug, _flip(gt, h, v, t))]
        assert matches
        used.add(matches[0])
    assert len(used) >= 4 and any(t for _, _, t in used)


def _flip(chw, hflip, vflip, transpose):
    out = chw.flip(2) if hflip else chw
    out = out.flip(1) if vflip else out
    return out.transpose(1, 2) if transpose else out


@pytest.mark.parametrize('changes,message', [
    (dict(task='denoise'), 'task must be one of'),
    (dict(images=['chelsea', 'camera']), r"images\[1\] must be one of 'astronaut', .*, got 'camera'\."),
    (dict(images=[]), 'non-empty'),
    (dict(task='sr', scale=4, gt_size=30), r'gt_size must be an integer >= 1, a multiple of 4 \(the scale\), got 30\.'),
    (dict(task='sr', scale=1), r'scale must be one of 2, 3, 4 \(task sr\), got 1\.'),
    (dict(task='haze', scale=4), 'scale must be 1'),
    (dict(task='rain', gt_size=320), "gt_size 320 needs 320 pixels, more than image 'chelsea' has"),
    (dict(task='sr', scale=2, phase='val', val_size=33), r'val_size must be an integer >= 1, a multiple of 2 .*or ~'),
    (dict(task='haze', degradation=dict(beta=1.0)), r"unknown degradation options \['beta'\]"),
    (dict(task='haze', degradation=dict(light_range=[0.5, 1.5])),
     r'degradation\.light_range must be a pair \[min, max\] of numbers with 0 <= min <= max <= 1, got \[0\.5, 1\.5\]'),
])
def test_bad_options_raise(changes, message):
    opt = make_opt('haze')
    opt.update(changes)
    with pytest.raises(ValueError, match=message):
        SyntheticPairedDataset(opt)


def test_pickles_for_spawned_workers():
    dataset = SyntheticPairedDataset(make_opt('haze', phase='val'))
    clone = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(clone[1]['lq'], dataset[1]['lq'])


@pytest.mark.parametrize('workers', [0, 2])
def test_basicsr_dataloader_collates_and_is_reproducible(workers):
    opt = make_opt('sr', 4, num_worker_per_gpu=workers)
    dataset = build_dataset(opt)
    batches = []
    for _ in range(2):
        torch.manual_seed(7)
        loader = build_dataloader(dataset, opt, num_gpu=1, dist=False, seed=7)
        batches.append(next(iter(loader)))
    first, second = batches
    assert first['lq'].shape == (4, 3, 8, 8) and first['gt'].shape == (4, 3, 32, 32)
    assert len(first['lq_path']) == 4 and all(p.endswith('_lq') for p in first['lq_path'])
    assert torch.equal(first['gt'], second['gt']) and torch.equal(first['lq'], second['lq'])
    flat = first['gt'].flatten(1)
    assert all(not torch.equal(flat[i], flat[j]) for i in range(4) for j in range(i + 1, 4))  # samples differ

    val_opt = make_opt('rain', phase='val', val_size=32)
    val_batch = next(iter(build_dataloader(build_dataset(val_opt), val_opt)))
    assert val_batch['lq'].shape == (1, 3, 32, 32) and val_batch['lq_path'] == ['chelsea']


# ---- SyntheticVideoDataset: clips for BasicSR's video models ----

def video_opt(phase='train', **extra):
    opt = dict(name='REDS4', type='SyntheticVideoDataset', phase=phase, scale=4, images=['chelsea', 'coffee'],
               num_frame=3, gt_size=32, val_size=32, length=4, max_shift=2, batch_size_per_gpu=2,
               num_worker_per_gpu=0, dataset_enlarge_ratio=1, prefetch_mode=None, io_backend=dict(type='disk'))
    opt.update(extra)
    return opt


def clip_velocity(gt, max_shift):
    """The whole-pixel shift (dy, dx) with frame[t + 1][y, x] == frame[t][y + dy, x + dx] for every t."""
    size = gt.shape[-1]
    found = set()
    for t in range(gt.shape[0] - 1):
        a, b = gt[t], gt[t + 1]
        for dy in range(-max_shift, max_shift + 1):
            for dx in range(-max_shift, max_shift + 1):
                ys, yd = (slice(dy, size), slice(0, size - dy)) if dy >= 0 else (slice(0, size + dy), slice(-dy, size))
                xs, xd = (slice(dx, size), slice(0, size - dx)) if dx >= 0 else (slice(0, size + dx), slice(-dx, size))
                if torch.equal(b[:, yd, xd], a[:, ys, xs]):
                    found.add((t, dy, dx))
    velocities = {(dy, dx) for _, dy, dx in found}
    assert {t for t, _, _ in found} == set(range(gt.shape[0] - 1)), 'a frame pair is not a translation'
    return velocities


def test_video_registered_and_shapes_of_each_mode():
    from mclir_plugin.data import SyntheticVideoDataset
    assert DATASET_REGISTRY.get('SyntheticVideoDataset') is SyntheticVideoDataset
    torch.manual_seed(0)
    recurrent = build_dataset(video_opt())[0]
    assert recurrent['lq'].shape == (3, 3, 8, 8) and recurrent['gt'].shape == (3, 3, 32, 32)
    assert recurrent['key'].split('/')[0] in ('chelsea', 'coffee')
    centre = build_dataset(video_opt(gt_frames='center'))[1]
    assert centre['lq'].shape == (3, 3, 8, 8) and centre['gt'].shape == (3, 32, 32)
    val = build_dataset(video_opt('val'))
    assert len(val) == 2 and val[1]['folder'] == 'coffee' and val[1]['gt'].shape == (3, 3, 32, 32)
    assert val.data_info['folder'] == ['chelsea'] * 3 + ['coffee'] * 3  # what BasicSR's validation counts
    val_centre = build_dataset(video_opt('val', gt_frames='center'))
    assert len(val_centre) == 6 and [val_centre[i]['idx'] for i in range(3)] == ['0/3', '1/3', '2/3']


@pytest.mark.parametrize('max_shift', [0, 3])
def test_video_frames_are_one_crop_moving_at_constant_speed(max_shift):
    from mclir_plugin.data import SyntheticVideoDataset
    dataset = SyntheticVideoDataset(video_opt(num_frame=4, max_shift=max_shift, length=6))
    torch.manual_seed(0)
    velocities = set()
    for index in range(6):
        item = dataset[index]
        found = clip_velocity(item['gt'], max_shift)
        assert found, 'frames are not translations of each other'
        velocities |= found
        for t in range(4):  # each lq frame is the MATLAB bicubic of its own GT frame
            np.testing.assert_allclose(as_hwc(item['lq'][t]), np.clip(imresize(as_hwc(item['gt'][t]), 1 / 4), 0, 1),
                                       atol=1e-5)
    if max_shift == 0:
        assert velocities == {(0, 0)}
    else:
        assert len(velocities) > 1 and all(max(abs(dy), abs(dx)) <= max_shift for dy, dx in velocities)


def test_video_noise_and_reproducibility():
    from mclir_plugin.data import SyntheticVideoDataset
    dataset = SyntheticVideoDataset(video_opt(noise_sigma=10, length=2))
    torch.manual_seed(5)
    first = dataset[0]
    torch.manual_seed(5)
    assert torch.equal(dataset[0]['lq'], first['lq'])
    clean = np.stack([np.clip(imresize(as_hwc(f), 1 / 4), 0, 1) for f in first['gt']])
    residual = np.stack([as_hwc(f) for f in first['lq']]) - clean
    assert 0.7 * 10 / 255 < residual.std() < 1.3 * 10 / 255


def test_video_validation_matches_basicsr_video_test_datasets(tmp_path):
    """Written to disk as a REDS4 tree, the clips read back through BasicSR's own test datasets give the same
    items (keys, shapes, folder/idx/border, values up to 8-bit rounding)."""
    from basicsr.data.video_test_dataset import VideoRecurrentTestDataset, VideoTestDataset
    from basicsr.utils import tensor2img
    import cv2
    ours = build_dataset(video_opt('val', gt_frames='center'))
    for clip_index, folder in enumerate(['chelsea', 'coffee']):
        for key in ('gt', 'lq'):
            os.makedirs(tmp_path / key / folder)
        for frame in range(3):
            item = ours[clip_index * 3 + frame]
            cv2.imwrite(str(tmp_path / 'gt' / folder / f'{frame:08d}.png'), tensor2img(item['gt']))
            cv2.imwrite(str(tmp_path / 'lq' / folder / f'{frame:08d}.png'), tensor2img(item['lq'][1]))
    theirs_opt = dict(name='REDS4', dataroot_gt=str(tmp_path / 'gt'), dataroot_lq=str(tmp_path / 'lq'),
                      cache_data=True, io_backend=dict(type='disk'), num_frame=3, padding='reflection_circle')
    theirs = VideoTestDataset(theirs_opt)
    assert len(theirs) == len(ours) and theirs.data_info['folder'] == ours.data_info['folder']
    for index in range(len(ours)):
        a, b = ours[index], theirs[index]
        assert set(b) <= set(a) and all(a[k] == b[k] for k in ('folder', 'idx', 'border'))
        for key in ('lq', 'gt'):
            assert a[key].shape == b[key].shape
            assert (a[key] - b[key]).abs().max() <= 0.5 / 255 + 1e-6
    recurrent, theirs_recurrent = build_dataset(video_opt('val')), VideoRecurrentTestDataset(theirs_opt)
    assert len(recurrent) == len(theirs_recurrent) and recurrent.data_info['folder'] == ours.data_info['folder']
    for index in range(2):
        a, b = recurrent[index], theirs_recurrent[index]
        assert set(b) <= set(a) and a['folder'] == b['folder']
        assert a['gt'].shape == b['gt'].shape and a['lq'].shape == b['lq'].shape
        assert (a['gt'] - b['gt']).abs().max() <= 0.5 / 255 + 1e-6  # the same clip as the per-frame mode


@pytest.mark.parametrize('changes,message', [
    (dict(gt_frames='middle'), 'gt_frames must be one of'),
    (dict(gt_frames='center', num_frame=4), 'odd num_frame'),
    (dict(num_frame=0), 'num_frame must be an integer >= 1'),
    (dict(scale=1), 'scale must be one of'),
    (dict(gt_size=30), r'gt_size must be an integer >= 1, a multiple of 4 \(the scale\), got 30\.'),
    (dict(gt_size=296, max_shift=4), "needs 304 pixels, more than image 'chelsea'"),
    (dict(noise_sigma=-1), r'noise_sigma must be a finite number >= 0 \(8-bit levels\), got -1\.'),
    (dict(phase='val', padding='zeros'), 'padding must be one of'),
])
def test_video_bad_options_raise(changes, message):
    from mclir_plugin.data import SyntheticVideoDataset
    with pytest.raises(ValueError, match=message):
        SyntheticVideoDataset(video_opt(**changes))
