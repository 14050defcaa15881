import mclir_plugin  # noqa: F401  (before basicsr: compat shim and registration)

# The compare command and the evaluation mode of tools/test.py, end to end on two tiny real runs: a baseline (stopped
# at 6, resumed from its state at 4 up to 8: two log files) and its SPN twin (8 iterations), trained by
# tools/train.py in subprocesses on PNG folders written here, with a very small SwinIR on the CPU.
import csv
import io
import json
import os
import re
import struct
import subprocess
import sys
from contextlib import redirect_stdout

import cv2
import pytest
import yaml
from basicsr.metrics import calculate_psnr, calculate_ssim

from conftest import REPO, write_paired_folders
from mclir_plugin.commands.compare import main as compare_main
from mclir_plugin.commands.evaluate import EvalError, checkpoint_labels, resolve_metrics, resolve_param_key, select_datasets
from mclir_plugin.studies import StudyError
from mclir_plugin.studies.run_logs import find_log_files, load_run, parse_log_file
from mclir_plugin.archs.presets import network_preset

CROP = 4  # validation: PSNR/SSIM on Y with crop border 4, as the SwinIR benchmarks


def tiny_options(name: str, gt: str, lq: str, spn: bool) -> dict:
    """A BasicSR training option file: SwinIR (one block, 8 channels) x4 on 32x32 crops; its SPN twin."""
    folders = {'dataroot_gt': gt, 'dataroot_lq': lq, 'io_backend': {'type': 'disk'}}
    opt = {
        'name': name, 'model_type': 'SwinIRModel', 'scale': 4, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {
            'train': {'name': 'Tiny', 'type': 'PairedImageDataset', **folders, 'filename_tmpl': '{}', 'gt_size': 32,
                      'use_hflip': True, 'use_rot': True, 'use_shuffle': True, 'num_worker_per_gpu': 0,
                      'batch_size_per_gpu': 2, 'dataset_enlarge_ratio': 1, 'prefetch_mode': None},
            'val': {'name': 'TinyVal', 'type': 'PairedImageDataset', **folders}},
        'network_g': network_preset('swinir_tiny', depths=[1], num_heads=[1], mlp_ratio=1),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0.9, 'optim_g': {'type': 'Adam', 'lr': 2e-3, 'weight_decay': 0, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [1000], 'gamma': 0.5}, 'total_iter': 8,
                  'warmup_iter': -1, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}},
        # val_freq 3 does not divide total_iter 8: validations at 3, 6 and the one after training (at 8)
        'val': {'val_freq': 3, 'save_img': False, 'save_best': {'metric': 'psnr'},
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': CROP, 'test_y_channel': True}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 4, 'use_tb_logger': True,
                   'wandb': {'project': None, 'resume_id': None}},
        'dist_params': {'backend': 'nccl', 'port': 29500},
    }
    if spn:
        opt['model_type'] = 'MCLIRModel'
        opt['mclir'] = {'base_model': 'SwinIRModel', 'hook': {'neg_iter': [1, 2], 'neg_decay': 0.1, 'neg_start': 0.1}}
        opt['train']['pixel_opt'] = {'type': 'SPNLoss', 'loss_weight': 1.0, 'neg_weight': 0.05,
                                     'vgg_fallback': 'random'}
    return opt


def start(args: list, cwd) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    return subprocess.Popen([sys.executable, *map(str, args)], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return out + err


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """``(cwd, base_dir, spn_dir, spn_option_file, gt_dir, lq_dir)`` after training both runs."""
    cwd = tmp_path_factory.mktemp('eval_tools')
    gt, lq = write_paired_folders(cwd / 'datasets', n=4, gt_size=32, scale=4)
    files = {}
    for name, spn in (('tiny_base', False), ('tiny_spn', True)):
        files[name] = cwd / f'{name}.yml'
        files[name].write_text(yaml.safe_dump(tiny_options(name, gt, lq, spn)))
    train = os.path.join(REPO, 'tools', 'train.py')
    first = start([train, '-opt', files['tiny_base'], '--force_yml', 'train:total_iter=6'], cwd)
    spn = start([train, '-opt', files['tiny_spn']], cwd)
    finish(first)
    # resume from the state at 4 (the log of the first part goes on to 6), logging every 2nd iteration
    resumed = start([train, '-opt', files['tiny_base'], '--auto_resume', '--force_yml', 'logger:print_freq=2'], cwd)
    assert 'Resuming training from epoch' in finish(resumed)
    finish(spn)
    return cwd, cwd / 'experiments' / 'tiny_base', cwd / 'experiments' / 'tiny_spn', files['tiny_spn'], gt, lq


@pytest.fixture(scope='module')
def tool_runs(runs):
    """The compare command (here) and the evaluation mode of tools/test.py (a subprocess), run side by side:
    ``(compare, test)`` output."""
    cwd, base, spn, spn_opt, _, _ = runs
    test = start([os.path.join(REPO, 'tools', 'test.py'), '-opt', spn_opt, '--checkpoints',
                  base / 'models' / 'net_g_8.pth', spn / 'models' / 'net_g_8.pth', spn / 'models' / 'net_g_best.pth',
                  '--save-images', '--out', cwd / 'eval'], cwd)
    output = io.StringIO()
    with redirect_stdout(output):
        assert compare_main([str(base), str(spn), '--out', str(cwd / 'cmp')]) == 0
    return output.getvalue(), finish(test)


def read_csv(path) -> list[dict]:
    with open(path, newline='') as file:
        return list(csv.DictReader(file))


def png_size(path) -> tuple[int, int]:
    with open(path, 'rb') as file:
        head = file.read(24)
    assert head[:8] == b'\x89PNG\r\n\x1a\n' and head[12:16] == b'IHDR', 'not a PNG file'
    return struct.unpack('>II', head[16:24])


def test_resumed_run_logs_are_merged_in_iteration_order(runs):
    _, base, _, _, _, _ = runs
    logs = find_log_files(str(base))
    assert len(logs) == 2
    first, second = (parse_log_file(log) for log in logs)
    assert (first.start, second.start) == (0, 4)
    assert sorted(first.train['l_pix']) == [1, 2, 3, 4, 5, 6]  # print_freq 1 up to 6
    assert sorted(first.val['TinyVal']['psnr']) == [3, 6]     # at 3, 6, and after training (also at 6)
    run = load_run(str(base))
    # the second log (resumed from 4, print_freq 2) replaces what the first logged after 4
    assert list(run.train['l_pix']) == [1, 2, 3, 4, 6, 8]
    assert [run.train['l_pix'][i] for i in (1, 2, 3, 4)] == [first.train['l_pix'][i] for i in (1, 2, 3, 4)]
    assert [run.train['l_pix'][i] for i in (6, 8)] == [second.train['l_pix'][i] for i in (6, 8)]
    assert run.val['TinyVal']['psnr'] == {3: first.val['TinyVal']['psnr'][3], **second.val['TinyVal']['psnr']}
    assert list(run.val['TinyVal']['psnr']) == [3, 6, 8]
    # the values are those BasicSR printed: the last '# psnr:' line of the last log is the validation at 8
    printed = re.findall(r'# psnr: ([0-9.]+)', open(logs[-1]).read())
    assert run.val['TinyVal']['psnr'][8] == float(printed[-1])
    # TensorBoard events of the same run (two event files) agree at the validation iterations
    tb = load_run(str(base), source='tb')
    assert len(tb.files) == 2 and tb.source == 'tb'
    for iteration in (3, 6):
        assert abs(tb.val['TinyVal']['psnr'][iteration] - run.val['TinyVal']['psnr'][iteration]) <= 5.1e-5
    # the events do not say where the run resumed: the first part's iteration 5 stays (the text log drops it)
    assert list(tb.train['l_pix']) == [1, 2, 3, 4, 5, 6, 8]
    assert tb.train['l_pix'][6] == pytest.approx(run.train['l_pix'][6], rel=1e-4)


def test_folder_without_logs_is_a_clear_error(tmp_path, capsys):
    (tmp_path / 'experiments' / 'empty').mkdir(parents=True)
    with pytest.raises(StudyError, match='no BasicSR training log'):
        load_run(str(tmp_path / 'experiments' / 'empty'))
    assert compare_main([str(tmp_path / 'experiments' / 'empty'), str(tmp_path / 'missing')]) == 2
    assert 'tools/compare.py: error:' in capsys.readouterr().err


def test_compare_prints_table_and_writes_csv_markdown_png(runs, tool_runs):
    cwd, base, spn, _, _, _ = runs
    output = tool_runs[0]
    assert re.search(r'dataset\s+metric\s+run\s+best\s+@iter\s+last\s+@iter\s+Δbest\s+Δlast', output)
    assert re.search(r'TinyVal\s+psnr\s+tiny_base\s+[0-9.]+\s+\d+\s+[0-9.]+\s+8\s+baseline', output)
    rows = read_csv(cwd / 'cmp' / 'compare.csv')
    assert [(r['dataset'], r['metric'], r['run']) for r in rows] == [('TinyVal', 'psnr', 'tiny_base'),
                                                                     ('TinyVal', 'psnr', 'tiny_spn')]
    parsed = [load_run(str(base)).val['TinyVal']['psnr'], load_run(str(spn)).val['TinyVal']['psnr']]
    for row, series in zip(rows, parsed):
        assert float(row['last']) == series[8] and row['last_iter'] == '8'
        assert float(row['best']) == max(series.values()) and series[int(row['best_iter'])] == max(series.values())
    assert rows[0]['delta_best'] == rows[0]['delta_last'] == ''
    assert float(rows[1]['delta_last']) == parsed[1][8] - parsed[0][8]
    assert float(rows[1]['delta_best']) == max(parsed[1].values()) - max(parsed[0].values())
    assert '| TinyVal | psnr | tiny_spn |' in (cwd / 'cmp' / 'compare.md').read_text()
    # panels: TinyVal psnr, l_pix, l_neg, l_neg_ratio -> 3 per row, 2 rows of 500 x 350 pixels
    assert png_size(cwd / 'cmp' / 'compare.png') == (1500, 700)
    import matplotlib.image
    assert matplotlib.image.imread(cwd / 'cmp' / 'compare.png').shape[:2] == (700, 1500)


def test_evaluation_writes_basicsr_metrics_per_image_and_means(runs, tool_runs):
    cwd, base, spn, spn_opt, gt_dir, _ = runs
    output = tool_runs[1]
    assert ('psnr (crop_border 4, Y), ssim (crop_border 4, Y; added: not in val.metrics), psnr_float (float '
            'calculate_psnr_float, crop_border 0, RGB; added: float protocol), ssim_float (float '
            'calculate_ssim_dehazeformer, crop_border 0, RGB; added: float protocol)') in output
    assert 'model SwinIRModel (mclir.base_model' in output
    assert re.search(r'tiny_spn_net_g_8\s+params_ema\s+TinyVal\s+4\s+[0-9.]+\s+[0-9.]+', output)
    summary = read_csv(cwd / 'eval' / 'summary.csv')
    assert [(r['checkpoint'], r['dataset'], r['images']) for r in summary] == [
        ('tiny_base_net_g_8', 'TinyVal', '4'), ('tiny_spn_net_g_8', 'TinyVal', '4'), ('net_g_best', 'TinyVal', '4')]
    report = json.loads((cwd / 'eval' / 'summary.json').read_text())
    assert report['model_type'] == 'SwinIRModel' and report['metrics']['ssim']['crop_border'] == CROP
    for row, result, run in zip(summary, report['results'], (base, spn)):
        rows = read_csv(cwd / 'eval' / row['checkpoint'] / 'TinyVal.csv')
        # both protocols side by side; rows in the dataset's (BasicSR's folder scan) order
        assert list(rows[0]) == ['image', 'psnr', 'ssim', 'psnr_float', 'ssim_float']
        assert sorted(r['image'] for r in rows) == ['0000', '0001', '0002', '0003']
        for r in rows:  # BasicSR's metric functions on the written image and the GT file: the same numbers
            restored = cv2.imread(str(cwd / 'eval' / row['checkpoint'] / 'TinyVal' / f"{r['image']}.png"))
            truth = cv2.imread(os.path.join(gt_dir, f"{r['image']}.png"))
            assert float(r['psnr']) == calculate_psnr(restored, truth, CROP, test_y_channel=True)
            assert float(r['ssim']) == calculate_ssim(restored, truth, CROP, test_y_channel=True)
        for metric in ('psnr', 'ssim', 'psnr_float', 'ssim_float'):
            values = [float(r[metric]) for r in rows]
            assert float(row[metric]) == sum(values) / 4 == result[metric]
            assert [v[metric] for v in result['per_image']] == values
        # the mean equals BasicSR's own validation of these weights (params_ema) at iteration 8, as logged
        assert abs(float(row['psnr']) - load_run(str(run)).val['TinyVal']['psnr'][8]) <= 5.1e-5


def test_restored_images_match_the_checkpoint_run_through_basicsr(runs, tool_runs):
    """Golden check: the written image of each test image is the model's own test() output for the checkpoint."""
    import torch
    from basicsr.data import build_dataset
    from basicsr.models import build_model
    from basicsr.utils import tensor2img

    from mclir_plugin.metrics.float_metrics import calculate_psnr_float, calculate_ssim_dehazeformer

    cwd, _, spn, spn_opt, _, _ = runs
    opt = yaml.safe_load(spn_opt.read_text())
    opt.update(model_type='SwinIRModel', is_train=False, dist=False, rank=0, world_size=1)
    opt['path'].update(pretrain_network_g=str(spn / 'models' / 'net_g_8.pth'), param_key_g='params_ema')
    model = build_model(opt)
    dataset = build_dataset({**opt['datasets']['val'], 'phase': 'val', 'scale': 4})
    rows = {r['image']: r for r in read_csv(cwd / 'eval' / 'tiny_spn_net_g_8' / 'TinyVal.csv')}
    for index in range(len(dataset)):
        sample = dataset[index]
        model.feed_data({'lq': sample['lq'][None], 'gt': sample['gt'][None]})
        model.test()
        output = model.output.detach().cpu()
        expected = tensor2img([output])
        name = os.path.splitext(os.path.basename(sample['lq_path']))[0]
        written = cv2.imread(str(cwd / 'eval' / 'tiny_spn_net_g_8' / 'TinyVal' / f'{name}.png'))
        assert written.shape == (32, 32, 3) and torch.equal(torch.from_numpy(written), torch.from_numpy(expected))
        # the float protocol got the float output, not the written uint8 image
        float_psnr = float(rows[name]['psnr_float'])
        assert float_psnr == pytest.approx(calculate_psnr_float(output, sample['gt']), abs=1e-9)
        assert abs(float_psnr - calculate_psnr_float(written, tensor2img([sample['gt']]))) > 1e-6
        assert float(rows[name]['ssim_float']) == pytest.approx(calculate_ssim_dehazeformer(output, sample['gt']),
                                                                abs=1e-9)


def test_best_checkpoint_is_kept_through_resume_and_evaluates_to_its_value(runs, tool_runs):
    """val.save_best: {metric: psnr} in both tiny runs (SwinIRModel resumed once, MCLIRModel)."""
    import torch
    cwd, base, spn, _, _, _ = runs
    for run in (base, spn):
        record = torch.load(run / 'models' / 'net_g_best.pth', weights_only=True)['best']
        assert json.loads((run / 'models' / 'net_g_best.json').read_text())['iter'] == record['iter']
        logged = load_run(str(run)).val['TinyVal']['psnr']  # 4 decimals, as BasicSR prints them
        assert record['metric'] == 'psnr' and record['dataset'] == 'TinyVal' and record['better'] == 'higher'
        assert abs(logged[record['iter']] - record['value']) <= 5.1e-5
        assert max(logged.values()) <= record['value'] + 5.1e-5
    # the resumed baseline read the best of its first part back instead of starting afresh
    first, second = (open(log).read() for log in find_log_files(str(base)))
    restored = re.search(r'val.save_best: best psnr on TinyVal so far ([0-9.]+) @ iter (\d+), restored from', second)
    assert restored and 'restored from' not in first
    first_values = parse_log_file(find_log_files(str(base))[0]).val['TinyVal']['psnr']
    assert int(restored.group(2)) in first_values and float(restored.group(1)) == pytest.approx(
        max(first_values.values()), abs=5.1e-5)
    # tools/test.py on net_g_best.pth (its params_ema) gives the recorded value
    summary = {r['checkpoint']: r for r in read_csv(cwd / 'eval' / 'summary.csv')}
    record = torch.load(spn / 'models' / 'net_g_best.pth', weights_only=True)['best']
    assert summary['net_g_best']['param_key'] == 'params_ema'
    assert float(summary['net_g_best']['psnr']) == pytest.approx(record['value'], abs=1e-9)


def test_checkpoint_keys_labels_datasets_and_metrics(runs, tmp_path):
    import torch
    _, base, spn, spn_opt, _, _ = runs
    latest = str(base / 'models' / 'net_g_8.pth')
    assert resolve_param_key(latest, 'auto') == 'params_ema' and resolve_param_key(latest, 'params') == 'params'
    only_params = tmp_path / 'only_params.pth'
    torch.save({'params': torch.load(latest, weights_only=True)['params']}, only_params)
    assert resolve_param_key(str(only_params), 'auto') == 'params'
    with pytest.raises(EvalError, match="no 'params_ema' weights .* use --param-key params"):
        resolve_param_key(str(only_params), 'params_ema')
    with pytest.raises(EvalError, match='is a training state'):
        resolve_param_key(str(base / 'training_states' / '4.state'), 'auto')
    assert checkpoint_labels([latest, str(spn / 'models' / 'net_g_8.pth'), str(base / 'models' / 'net_g_4.pth')]) \
        == ['tiny_base_net_g_8', 'tiny_spn_net_g_8', 'net_g_4']
    opt = yaml.safe_load(spn_opt.read_text())
    assert [d['name'] for d in select_datasets(opt, None, 'x.yml')] == ['TinyVal']
    with pytest.raises(EvalError, match=r'--datasets Set5: not in x.yml; its test sets are val \(TinyVal\)'):
        select_datasets(opt, ['Set5'], 'x.yml')
    del opt['val']['metrics']
    metrics, notes = resolve_metrics({**opt, 'val': {'crop_border': 2}})
    assert metrics == {'psnr': {'type': 'calculate_psnr', 'crop_border': 2, 'test_y_channel': False},
                       'ssim': {'type': 'calculate_ssim', 'crop_border': 2, 'test_y_channel': False},
                       'psnr_float': {'type': 'calculate_psnr_float', 'crop_border': 0},
                       'ssim_float': {'type': 'calculate_ssim_dehazeformer', 'crop_border': 0}}
    assert len(notes) == 4
    # a file with FFA-Net's float SSIM keeps it as its float SSIM; a name taken by another type is an error
    ffa = {'psnr': {'type': 'calculate_psnr'}, 'ssim_ffanet': {'type': 'calculate_ssim_ffanet'}}
    metrics, _ = resolve_metrics({**opt, 'val': {'metrics': ffa}})
    assert list(metrics) == ['psnr', 'ssim_ffanet', 'ssim', 'psnr_float']
    with pytest.raises(EvalError, match="val.metrics.psnr_float has type 'calculate_psnr'; rename it"):
        resolve_metrics({**opt, 'val': {'metrics': {'psnr_float': {'type': 'calculate_psnr'}}}})
