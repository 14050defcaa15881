"""A study's plan from option files written here: variants, overrides (the one rule of every tool), run files."""
import os

import pytest
import yaml

from mclir_plugin.studies import StudyError
from mclir_plugin.studies.plan import Run, build_variants, check_variants, plan_runs, write_run_options

BASE = {'name': 'base', 'scale': 4, 'model_type': 'SwinIRModel',
        'datasets': {'train': {'type': 'PairedImageDataset', 'dataroot_gt': 'data/gt', 'dataroot_lq': '/abs/lq'},
                     'val': {'type': 'PairedImageDataset', 'dataroot_gt': 'data/val'}},
        'network_g': {'type': 'SwinIR', 'depths': [6, 6]},
        'train': {'total_iter': 100, 'optim_g': {'lr': 2e-4}, 'pixel_opt': {'type': 'L1Loss'}},
        'val': {'val_freq': 10, 'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4}}}}


@pytest.fixture
def files(tmp_path):
    spn = {**BASE, 'name': 'spn', 'model_type': 'MCLIRModel',
           'train': {**BASE['train'], 'pixel_opt': {'type': 'SPNLoss', 'neg_weight': 0.001}}}
    paths = {}
    for name, opt in (('base', BASE), ('spn', spn)):
        paths[name] = str(tmp_path / f'{name}.yml')
        with open(paths[name], 'w', encoding='utf-8') as file:
            yaml.safe_dump(opt, file)
    return paths


def test_overrides_apply_to_every_variant_then_its_own_with_option_file_values(files, tmp_path):
    variants = build_variants(files['base'], files['spn'],
                              [['lam', 'train:pixel_opt:neg_weight=1e-2', 'network_g:depths=[2, 2]'],
                               ['plain', files['base']]],
                              ['train:optim_g:lr=1e-3', 'val:metrics:ssim={type: calculate_ssim}'], str(tmp_path))
    assert [(v.label, os.path.basename(v.option_file)) for v in variants] == [
        ('baseline', 'base.yml'), ('spn', 'spn.yml'), ('lam', 'spn.yml'), ('plain', 'base.yml')]
    for variant in variants:
        lr = variant.opt['train']['optim_g']['lr']
        assert lr == 1e-3 and type(lr) is float  # 1e-3 is a number, as in train's and test's --force_yml
        assert variant.opt['val']['metrics']['ssim'] == {'type': 'calculate_ssim'}
        # relative data paths start from the data root; absolute ones stay
        assert variant.opt['datasets']['train']['dataroot_gt'] == str(tmp_path / 'data' / 'gt')
        assert variant.opt['datasets']['train']['dataroot_lq'] == '/abs/lq'
    lam = variants[2].opt
    assert lam['train']['pixel_opt']['neg_weight'] == 0.01 and lam['network_g']['depths'] == [2, 2]
    assert variants[1].opt['train']['pixel_opt']['neg_weight'] == 0.001
    assert check_variants(variants, None, allow_data_mismatch=False) == 100


@pytest.mark.parametrize('variant, overrides, message', [
    (['typo', 'train:pixel_optt:neg_weight=0.1'], [], "--variant typo 'train:pixel_optt:neg_weight=0.1': there is "
                                                      "no block 'train:pixel_optt' in the option file. Did you mean "
                                                      "'pixel_opt'?"),
    (['bad', 'train:total_iter=[1'], [], "--variant bad 'train:total_iter=[1': Override value '[1' is not a valid"),
    (['ok', 'train:total_iter=5'], ['no_equals_sign'], "--override 'no_equals_sign' is not KEY=VALUE"),
    (['same', 'network_g:depths=[2]'], ['datasets:train:gt_size=48'], None),
])
def test_bad_overrides_name_the_flag_the_entry_and_the_fix(files, tmp_path, variant, overrides, message):
    if message is None:  # the control: good overrides plan
        assert build_variants(files['base'], None, [variant], overrides, str(tmp_path))[1].opt['network_g'][
            'depths'] == [2]
        return
    with pytest.raises(StudyError) as err:
        build_variants(files['base'], None, [variant], overrides, str(tmp_path))
    assert message in str(err.value)


def test_variant_on_other_data_or_length_is_refused(files, tmp_path):
    variants = build_variants(files['base'], None, [['big', 'datasets:val:dataroot_gt=other']], [], str(tmp_path))
    with pytest.raises(StudyError, match=r"'big' .* does not train or validate on the same data"):
        check_variants(variants, None, allow_data_mismatch=False)
    assert check_variants(variants, 7, allow_data_mismatch=True) == 7
    variants = build_variants(files['base'], None, [['long', 'train:total_iter=200']], [], str(tmp_path))
    with pytest.raises(StudyError, match='different numbers of iterations'):
        check_variants(variants, None, allow_data_mismatch=False)


def test_run_files_hold_seed_name_length_and_a_started_run_keeps_its_options(files, tmp_path):
    variants = build_variants(files['base'], files['spn'], [], [], str(tmp_path))
    runs = plan_runs('st', variants, [0, 3], 50)
    assert [(r.name, r.seed, r.option_file) for r in runs][:2] == [
        ('st_baseline_s0', 0, os.path.join('options', 'st_baseline_s0.yml')),
        ('st_baseline_s3', 3, os.path.join('options', 'st_baseline_s3.yml'))]
    workdir = str(tmp_path / 'study')
    write_run_options(workdir, runs[3], 'spn.yml', ['num_gpu=0'])
    with open(os.path.join(workdir, runs[3].option_file), encoding='utf-8') as file:
        text = file.read()
    assert text.startswith('# Written by tools/ablate.py: run st_spn_s3 = spn.yml\n# every run: num_gpu=0;')
    opt = yaml.safe_load(text)
    assert (opt['name'], opt['manual_seed'], opt['train']['total_iter']) == ('st_spn_s3', 3, 50)
    changed = Run(runs[3].name, 'spn', 3, runs[3].option_file, state='resume',
                  opt={**runs[3].opt, 'manual_seed': 4})
    with pytest.raises(StudyError, match=r'st_spn_s3 has started with other options .*\n  manual_seed: 3 -> 4'):
        write_run_options(workdir, changed, 'spn.yml', [])
    write_run_options(workdir, Run(**{**vars(changed), 'state': 'retry'}), 'spn.yml', [])  # not started: rewritten
    with open(os.path.join(workdir, runs[3].option_file), encoding='utf-8') as file:
        assert yaml.safe_load(file)['manual_seed'] == 4
