"""Option values checked by type, with one message shape, and one rule for command-line override values."""
from __future__ import annotations

import math
import os
import random
import sys

import numpy as np
import pytest
import torch
import yaml
from basicsr.models import build_model

from conftest import CPU_OVERRIDES, train
from mclir_plugin.studies.plan import build_variants
from mclir_plugin.utils.option_schema import Boolean, Integer, Number, OptionError, check_options
from mclir_plugin.utils.options import parse_override_value
from mclir_plugin.commands import evaluate

EDSR = dict(type='EDSR', num_in_ch=3, num_out_ch=3, num_feat=4, num_block=1, upscale=2, res_scale=1,
            img_range=255., rgb_mean=[0.4488, 0.4371, 0.4040])


def tiny_opt(root: str, vgg16_file: str) -> dict:
    """The options BasicSR's parse_options hands to build_model: EDSR x2 with SPN, on the CPU."""
    paths = {k: os.path.join(root, k) for k in ('models', 'training_states', 'log', 'visualization')}
    return {
        'name': 'checks', 'model_type': 'MCLIRModel', 'scale': 2, 'num_gpu': 0, 'manual_seed': 0,
        'is_train': True, 'dist': False, 'rank': 0, 'world_size': 1,
        'mclir': {'hook': {'neg_iter': [1, 2], 'neg_decay': 0.1, 'neg_start': 0.0}},
        'network_g': dict(EDSR),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None,
                 'experiments_root': root, **paths},
        'train': {'ema_decay': 0, 'optim_g': {'type': 'Adam', 'lr': 1e-3},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5}, 'total_iter': 10,
                  'pixel_opt': {'type': 'SPNLoss', 'neg_weight': 0.1, 'vgg_weights': vgg16_file}},
    }


# (where, key, bad value, what the message must say after "<where>.<key> must be ")
BAD_VALUES = [
    ('mclir.hook', 'update_buffers', 'no', "true or false, got 'no' (text, not a boolean: write it without quotes)"),
    ('mclir.hook', 'fast_forward', 'false', "true or false, got 'false' (text, not a boolean"),
    ('mclir', 'visualize', 'yes', "true or false, got 'yes'"),
    ('mclir', 'visualize', 1, 'true or false, got 1.'),
    ('train.pixel_opt', 'use_input_norm', 'no', "true or false, got 'no'"),
    ('train.pixel_opt', 'uncertainty_weighting', 'true', "true or false, got 'true'"),
    ('train.pixel_opt', 'neg_weight', float('nan'), "a finite number >= 0 or 'auto', got nan."),
    ('train.pixel_opt', 'neg_weight', float('inf'), "a finite number >= 0 or 'auto', got inf."),
    ('train.pixel_opt', 'loss_weight', 'abc', "a finite number >= 0, got 'abc'."),
    ('mclir', 'neg_batch_fraction', float('nan'), 'a finite number in (0, 1] (1 = the whole batch), got nan.'),
    ('mclir.hook', 'neg_start', float('nan'), 'a finite number in [0, 1] (the share of a fresh init at the start), '
                                              'got nan.'),
    ('mclir.hook', 'seed', 'abc', "an integer or ~ (~ = the run's manual_seed), got 'abc'."),
    ('mclir.hook', 'seed', 1.5, "an integer or ~ (~ = the run's manual_seed), got 1.5."),
    ('mclir.hook', 'neg_decay', '0.1', "a finite number in [0, 1) (the share a negative keeps of itself), got '0.1' "
                                       '(text, not a number: write it without quotes).'),
    ('mclir.hook', 'neg_decay', '1e-3', "got '1e-3' (text, not a number: in an option file write 1e-3 with a dot"),
    ('mclir.hook', 'neg_iter', [10, True], 'an integer >= 1'),
]


def _key(where: str, key: str, value) -> str:
    return f'{where}.{key}[1]' if isinstance(value, list) else f'{where}.{key}'


@pytest.mark.parametrize('where, key, value, says', BAD_VALUES, ids=lambda v: repr(v)[:20])
def test_bad_value_stops_the_build_naming_the_key(tmp_path, vgg16_file, where, key, value, says):
    opt = tiny_opt(str(tmp_path), vgg16_file)
    block = opt
    for part in where.split('.'):
        block = block[part]
    block[key] = value
    with pytest.raises(OptionError) as info:
        build_model(opt)  # before any iteration: the model is not even built
    message = str(info.value)
    assert message.startswith(f'{_key(where, key, value)} must be '), message
    assert says in message, message


def test_non_numeric_layer_weights_stop_the_build_not_iteration_1(tmp_path, vgg16_file):
    opt = tiny_opt(str(tmp_path), vgg16_file)
    opt['train']['pixel_opt']['layer_weights'] = {'relu1_2': 0.5, 'relu2_2': 'half'}
    with pytest.raises(OptionError, match=r"^train\.pixel_opt\.layer_weights\.relu2_2 must be a finite number >= 0, "
                                          r"got 'half'\.$"):
        build_model(opt)


def test_good_values_keep_their_meaning(tmp_path, vgg16_file):
    opt = tiny_opt(str(tmp_path), vgg16_file)
    opt['mclir']['hook'].update(update_buffers=False, fast_forward=False, seed=7)
    opt['mclir']['visualize'] = False
    opt['train']['pixel_opt'].update(neg_weight=1, layer_weights={'relu1_2': 1})  # ints are numbers
    model = build_model(opt)
    hook = model.negative_hook
    assert hook.update_buffers is False and hook.fast_forward is False and hook.seed == 7
    assert model.step_options.visualize is False
    assert model.cri_pix.neg_weight == 1.0 and isinstance(model.cri_pix.neg_weight, float)


@pytest.mark.parametrize('check, good, bad', [
    (Boolean(), [True, False], ['no', 'yes', 'true', 'off', 1, 0, None, 1.0]),
    (Number(low=0), [0, 2, 0.5, 1e300], [float('nan'), float('inf'), -float('inf'), -1e-9, True, '0.1', None]),
    (Integer(low=1), [1, 10**12], [0, 1.0, 10.5, True, '3', float('nan')]),
], ids=['boolean', 'number', 'integer'])
def test_field_checks_take_only_their_type(check, good, bad):
    for value in good:
        assert check(value, 'k') == value
    for value in bad:
        with pytest.raises(OptionError, match=rf"^k must be {check.allowed.split(' (')[0]}.*, got "):
            check(value, 'k')


def test_one_message_shape_under_any_block():
    err = OptionError.of('update_buffers', 'no', 'true or false')
    moved = err.under('mclir.hook')
    assert str(moved) == str(OptionError.of('mclir.hook.update_buffers', 'no', 'true or false'))
    assert (moved.key, moved.value) == ('mclir.hook.update_buffers', 'no')
    assert check_options({'a': Boolean()}, {'a': True, 'other': 'left to check_keys'}, 'blk') == {'a': True}


# ------------------------------------------------------------------ override values: one rule for every tool
OVERRIDES = [('1e6', 1e6), ('1e-3', 1e-3), ('-2.5E+2', -250.0), ('10', 10), ('0.5', 0.5), ('true', True),
             ('no', False), ('~', None), ('[6]', [6]), ('[1e-3, 2]', [1e-3, 2]), ("'abc'", 'abc'), ('abc', 'abc'),
             ("'1e6'", '1e6'), ('!!float 5e3', 5000.0), ('{type: calculate_ssim, crop_border: 4}',
                                                      {'type': 'calculate_ssim', 'crop_border': 4})]


@pytest.fixture(scope='module')
def every_tool_reads(tmp_path_factory):
    """``{text: (train's --force_yml, test's --force_yml, ablate's --override)}`` for every text of OVERRIDES."""
    import basicsr.utils.options as bs_options
    folder = tmp_path_factory.mktemp('overrides')
    opt_file = folder / 'x.yml'
    opt_file.write_text(yaml.safe_dump({'name': 'x', 'values': {f'v{i}': 0 for i in range(len(OVERRIDES))}}))
    entries = [f'values:v{i}={text}' for i, (text, _) in enumerate(OVERRIDES)]
    tested = evaluate.load_options(str(opt_file), entries)['values']
    ablated = build_variants(str(opt_file), None, [], entries, str(folder))[0].opt['values']  # --override
    return {text: (bs_options._postprocess_yml_value(text), tested[f'v{i}'], ablated[f'v{i}'])
            for i, (text, _) in enumerate(OVERRIDES)}


@pytest.mark.parametrize('text, meant', OVERRIDES, ids=[t for t, _ in OVERRIDES])
def test_override_value_means_the_same_in_every_tool(every_tool_reads, text, meant):
    assert parse_override_value(text) == meant and type(parse_override_value(text)) is type(meant)
    for read in every_tool_reads[text]:  # train (BasicSR's parse_options, patched), test, ablate
        assert read == meant and type(read) is type(meant), (text, every_tool_reads[text])


def test_force_yml_number_reaches_the_optimizer_as_a_float(tmp_path, vgg16_file, monkeypatch):
    """BasicSR's own parse_options (as tools/train.py runs it) with ``--force_yml train:optim_g:lr=1e-3``."""
    from basicsr.utils.options import parse_options
    opt_file = tmp_path / 'x.yml'
    opt = tiny_opt(str(tmp_path), vgg16_file)
    opt['datasets'] = {}
    opt['train']['optim_g']['lr'] = 0.5
    opt_file.write_text(yaml.safe_dump(opt))
    monkeypatch.setattr(sys, 'argv', ['train.py', '-opt', str(opt_file), '--force_yml', 'train:optim_g:lr=1e-3',
                                      'train:scheduler:milestones=[6]'])
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        parsed, _ = parse_options(str(tmp_path), is_train=True)  # seeds every generator: restored below
    finally:
        random.setstate(states[0]), np.random.set_state(states[1]), torch.set_rng_state(states[2])
    assert parsed['train']['scheduler']['milestones'] == [6]
    model = build_model(parsed)
    lr = model.optimizer_g.param_groups[0]['lr']
    assert type(lr) is float and math.isclose(lr, 1e-3)


def test_bad_force_yml_value_through_tools_train_names_the_key_before_iteration_1(swinir_run):
    cwd, opt_file = swinir_run
    result = train(cwd, opt_file, overrides=CPU_OVERRIDES + ['train:total_iter=2', 'train:pixel_opt:neg_weight=.nan'])
    assert result.returncode != 0
    assert "train.pixel_opt.neg_weight must be a finite number >= 0 or 'auto', got nan." in result.stderr, \
        result.stderr[-2000:]
    assert f'(option file: {opt_file})' in result.stderr
    assert 'Start training' not in result.stdout + result.stderr


# ------------------------------------------------------------------ every migrated check: the same message shape
def _scheduler(kind: str, **options):
    from mclir_plugin.models.lr_schedulers import EpochCosineAnnealingLR, TrueCosineAnnealingLR
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    cls = TrueCosineAnnealingLR if kind == 'true' else EpochCosineAnnealingLR
    return cls(optimizer, **{'T_max': 5, **({} if kind == 'true' else {'epoch_length': 2}), **options})


def _synthetic(**options):
    from mclir_plugin.data.synthetic_dataset import SyntheticPairedDataset
    return SyntheticPairedDataset({'task': 'sr', 'scale': 2, 'images': ['astronaut'], 'gt_size': 32, **options})


def _video(**options):
    from mclir_plugin.data.synthetic_dataset import SyntheticVideoDataset
    return SyntheticVideoDataset({'images': ['astronaut'], 'num_frame': 3, 'gt_size': 32, **options})


def _pair_list(**options):
    from mclir_plugin.data.paired_list_dataset import PairedListDataset
    return PairedListDataset({'name': 'pairs', 'phase': 'train', 'gt_size': 32, **options})


def _degradation(**ranges):
    from mclir_plugin.data.synthetic_dataset import add_haze
    return add_haze(np.zeros((8, 8, 3), np.float32), np.random.default_rng(0), **ranges)


def _timeout(value):
    from mclir_plugin.utils.distributed import read_timeout
    return read_timeout({'dist_params': {'timeout': value}})


def _resume_lr(value):
    from mclir_plugin.utils.resume_lr import read_resume_lr
    return read_resume_lr({'train': {'resume_lr': value}})


def _save_best(better):
    from mclir_plugin.models.validation import read_save_best
    return read_save_best({'is_train': False, 'val': {'save_best': 'psnr', 'metrics': {'psnr': {'better': better}}}})


# (what builds it, the key the message names, the refused value, what may stand before the key)
MIGRATED = [
    (lambda: _scheduler('true', T_max=0), 'train.scheduler.T_max', 0, ''),
    (lambda: _scheduler('true', T_max=2.5), 'train.scheduler.T_max', 2.5, ''),
    (lambda: _scheduler('true', eta_min=-1e-8), 'train.scheduler.eta_min', -1e-8, ''),
    (lambda: _scheduler('epoch', epoch_length=True), 'train.scheduler.epoch_length', True, ''),
    (lambda: _timeout(0), 'dist_params.timeout', 0, ''),
    (lambda: _timeout('30'), 'dist_params.timeout', '30', ''),
    (lambda: _timeout(float('inf')), 'dist_params.timeout', float('inf'), ''),
    (lambda: _synthetic(task='denoise'), 'SyntheticPairedDataset.task', 'denoise', ''),
    (lambda: _synthetic(scale=3.0), 'SyntheticPairedDataset.scale', 3.0, ''),
    (lambda: _synthetic(images=['astronaut', 'camera']), 'SyntheticPairedDataset.images[1]', 'camera', ''),
    (lambda: _synthetic(use_hflip='no'), 'SyntheticPairedDataset.use_hflip', 'no', ''),
    (lambda: _synthetic(length=0), 'SyntheticPairedDataset.length', 0, ''),
    (lambda: _synthetic(seed=1.5), 'SyntheticPairedDataset.seed', 1.5, ''),
    (lambda: _synthetic(gt_size=33), 'SyntheticPairedDataset.gt_size', 33, ''),
    (lambda: _synthetic(task='haze', scale=1, degradation={'beta_range': [2, 1]}),
     'SyntheticPairedDataset.degradation.beta_range', [2, 1], ''),
    (lambda: _degradation(light_range='bright'), 'light_range', 'bright', ''),
    (lambda: _video(num_frame=0), 'SyntheticVideoDataset.num_frame', 0, ''),
    (lambda: _video(max_shift=-1), 'SyntheticVideoDataset.max_shift', -1, ''),
    (lambda: _video(noise_sigma='2'), 'SyntheticVideoDataset.noise_sigma', '2', ''),
    (lambda: _video(gt_size=30), 'SyntheticVideoDataset.gt_size', 30, ''),
    (lambda: _pair_list(gt_crop='middle'), 'gt_crop', 'middle', "dataset 'pairs' (PairedListDataset): "),
    (lambda: _pair_list(min_size_policy='drop'), 'min_size_policy', 'drop', "dataset 'pairs' (PairedListDataset): "),
    (lambda: _pair_list(io_backend={'type': 'hdf5'}), 'io_backend.type', 'hdf5',
     "dataset 'pairs' (PairedListDataset): "),
    (lambda: _pair_list(use_rot='yes'), 'use_rot', 'yes', "dataset 'pairs' (PairedListDataset): "),
    (lambda: _resume_lr('option'), 'train.resume_lr', 'option', ''),
    (lambda: _save_best('up'), 'val.metrics.psnr.better', 'up', ''),
]


@pytest.mark.parametrize('build, key, value, place', MIGRATED, ids=[f'{k}={v!r}' for _, k, v, _ in MIGRATED])
def test_migrated_checks_say_key_allowed_and_value_one_way(build, key, value, place):
    with pytest.raises(OptionError) as info:
        build()
    message = str(info.value)
    assert message.startswith(f'{place}{key} must be '), message
    assert f', got {value!r}' in message and message.endswith('.'), message
    assert (info.value.key, info.value.value) == (key, value)
