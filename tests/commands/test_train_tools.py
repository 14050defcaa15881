"""tools/train.py and tools/test.py end to end, in subprocesses, on image folders the test writes; the errors a run
stops with and its command-line flags through tools/train.py's entry point in this process."""
from __future__ import annotations

import glob
import os
import re

import torch
import yaml

from basicsr_recipes import train_in_process
from conftest import CPU_OVERRIDES, REPO, run_tool, train


def logged(stdout: str, key: str) -> list[float]:
    return [float(v) for v in re.findall(rf'{key}: ([-0-9.e+]+)', stdout)]


def train_here(cwd, opt_file, *extra: str, overrides: list[str]):
    """:func:`conftest.train`'s run in this process (no new interpreter to import torch and BasicSR)."""
    return train_in_process(cwd, '-opt', str(opt_file), *extra, '--force_yml', *overrides)


def test_basicsr_swinir_options_train_resume_and_test(swinir_run):
    cwd, opt_file = swinir_run
    name = 'train_SwinIR_SRx4_scratch_P48W8_DIV2K_500k_B4G8'
    result = train(cwd, opt_file, overrides=CPU_OVERRIDES + ['train:total_iter=4'])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert 'Model [MCLIRSwinIRModel] is created.' in out
    assert 'SPNLoss: vgg16 ImageNet weights from' in out
    assert len(logged(out, 'l_pix')) == 4 and len(logged(out, 'l_neg_ratio')) == 4
    assert all(v > 0 for v in logged(out, 'l_neg')[1:])  # negatives lag behind after the first refresh
    assert '# psnr:' in out
    run_dir = cwd / 'experiments' / name
    assert sorted(os.listdir(run_dir / 'training_states')) == ['2.state', '4.state']
    assert {'net_g_2.pth', 'net_g_4.pth', 'net_g_latest.pth'} <= set(os.listdir(run_dir / 'models'))
    state = torch.load(run_dir / 'training_states' / '4.state', weights_only=True)
    assert state['mclir']['refresh_count'] == [4, 2, 1, 1]
    saved_negatives = state['mclir']['negatives']

    # --auto_resume from another working directory would archive the run in BasicSR 1.4.2; the plugin's root is
    # the working directory, so run it from the same one and check it resumed, with the negatives restored.
    resumed = train(cwd, opt_file, '--auto_resume', overrides=CPU_OVERRIDES + ['train:total_iter=6'])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    out2 = resumed.stdout + resumed.stderr
    assert 'Resuming training from epoch: 0, iter: 4.' in out2 or 'Resuming training from epoch: 1, iter: 4.' in out2
    assert 'negatives restored from the training state' in out2
    assert 'refreshes so far 4, last at it 4' in out2
    assert not glob.glob(str(cwd / 'experiments' / '*archived*'))
    state6 = torch.load(run_dir / 'training_states' / '6.state', weights_only=True)
    assert state6['mclir']['refresh_count'] == [6, 3, 2, 1]
    # negative 3 (every 4 it) was not refreshed since iteration 4: unchanged through stop and resume
    assert all(torch.equal(state6['mclir']['negatives'][3][k], v) for k, v in saved_negatives[3].items())

    # tools/test.py on the trained weights, with a BasicSR test option file
    test_opt = {
        'name': 'test_spn', 'model_type': 'SwinIRModel', 'scale': 4, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {'test_1': {'name': 'Tiny', 'type': 'PairedImageDataset', 'dataroot_gt': str(cwd / 'datasets/gt'),
                                'dataroot_lq': str(cwd / 'datasets/lq'), 'io_backend': {'type': 'disk'}}},
        'network_g': {'type': 'SwinIR', 'upscale': 4, 'in_chans': 3, 'img_size': 48, 'window_size': 8,
                      'img_range': 1., 'depths': [2, 2], 'embed_dim': 16, 'num_heads': [2, 2], 'mlp_ratio': 2,
                      'upsampler': 'pixelshuffle', 'resi_connection': '1conv'},
        'path': {'pretrain_network_g': str(run_dir / 'models' / 'net_g_latest.pth'), 'param_key_g': 'params_ema',
                 'strict_load_g': True},
        'val': {'save_img': True, 'suffix': None, 'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4,
                                                       'test_y_channel': True}}},
    }
    (cwd / 'test.yml').write_text(yaml.safe_dump(test_opt))
    tested = run_tool([os.path.join(REPO, 'tools', 'test.py'), '-opt', 'test.yml'], cwd=cwd)
    assert tested.returncode == 0, tested.stdout[-3000:] + tested.stderr[-3000:]
    assert '# psnr:' in tested.stdout + tested.stderr
    assert len(glob.glob(str(cwd / 'results' / 'test_spn' / 'visualization' / 'Tiny' / '*.png'))) == 4


def test_missing_dataset_folder_is_a_clear_error(swinir_run):
    cwd, opt_file = swinir_run
    result = train_here(cwd, opt_file,
                        overrides=CPU_OVERRIDES + ['datasets:train:dataroot_gt=datasets/DIV2K/missing'])
    assert result.error is not None
    assert "dataroot_gt 'datasets/DIV2K/missing' does not exist" in result.out


def test_offline_without_vgg_weights_fails_before_training(swinir_run, empty_torch_home):
    cwd, opt_file = swinir_run
    result = train_here(cwd, opt_file, overrides=CPU_OVERRIDES + ['train:total_iter=2'])
    assert result.error is not None
    assert 'vgg16-397923af.pth' in result.out and 'Start training' not in result.out


def test_local_rank_dash_flag_is_accepted(swinir_run):
    cwd, opt_file = swinir_run
    result = train_here(cwd, opt_file, '--local-rank=0',
                        overrides=CPU_OVERRIDES + ['train:total_iter=1', 'val:val_freq=10'])
    assert result.error is None, result.out[-3000:]


def test_option_errors_name_the_key_and_the_file(swinir_run):
    cwd, opt_file = swinir_run
    result = train_here(cwd, opt_file, overrides=CPU_OVERRIDES + ['mclir:hook:neg_decya=0.1'])
    assert result.error is not None
    assert "Unknown option 'neg_decya' in mclir.hook. Did you mean 'neg_decay'?" in result.out
    assert f'(option file: {opt_file})' in result.out and 'Start training' not in result.out
