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
from mclir_plugin.commands.ablate import parse_value as ablate_value
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
    return {text: (bs_options._postprocess_yml_value(text), tested[f'v{i}'], ablate_value(text))
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
