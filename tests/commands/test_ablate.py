import mclir_plugin  # noqa: F401

# The ablate command end to end on a tiny study: options/demo.yml (baseline), options/demo_spn.yml (spn) and a
# variant whose network does not exist (broken), 2 seeds x 4 iterations of a one-block SwinIR on the CPU. The command
# runs in this process (its CLI is not the point); each run is trained in a subprocess, as in a real study. The
# study is trained once (module fixture); the resume test re-runs it, last.
import csv
import io
import json
import math
import os
import re
import statistics
import struct
from contextlib import redirect_stderr, redirect_stdout

import pytest
import yaml

from conftest import REPO
from mclir_plugin.commands.ablate import main as ablate_main
from mclir_plugin.studies.run_logs import load_run

ITERS, SEEDS, STUDY = 4, (0, 1), 'tiny'
TINY = ['network_g:depths=[2]', 'network_g:num_heads=[2]', 'network_g:embed_dim=8',
        'datasets:train:batch_size_per_gpu=2', 'datasets:train:gt_size=32', 'datasets:train:num_worker_per_gpu=0',
        'datasets:val:val_size=64', 'val:val_freq=2', 'logger:print_freq=1', 'logger:save_checkpoint_freq=2',
        'logger:use_tb_logger=false', 'num_gpu=0']
OPTIONS = [os.path.join(REPO, 'options', 'demo.yml'), os.path.join(REPO, 'options', 'demo_spn.yml')]
VARIANTS = ('baseline', 'spn', 'broken')


def study_args(workdir: str, broken: bool = True) -> list[str]:
    return ['--workdir', workdir, '-opt', OPTIONS[0], '--spn', OPTIONS[1],
            *(['--variant', 'broken', 'network_g:type=NoSuchArch'] if broken else []),
            '--iters', str(ITERS), '--seeds', *map(str, SEEDS), '--override', *TINY]


def ablate(args: list[str]) -> dict:
    """``{'code', 'out', 'err'}`` of the ablate command run here; the trainings it starts get one thread each."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(out), redirect_stderr(err):
        patch.setenv('OMP_NUM_THREADS', '1')
        code = ablate_main(args)
    return {'code': code, 'out': out.getvalue(), 'err': err.getvalue()}


def read_csv(path) -> list[dict]:
    with open(path, newline='', encoding='utf-8') as file:
        return list(csv.DictReader(file))


def without_times(rows: list[dict]) -> list[dict]:
    """The rows without their wall-time columns (a rerun adds an attempt, and so time, to the run it resumes)."""
    return [{k: v for k, v in row.items() if not k.startswith('seconds')} for row in rows]


@pytest.fixture(scope='module')
def study(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('ablate') / 'studies' / STUDY)
    return {'workdir': workdir, **ablate(study_args(workdir))}


def run_dir(study, variant: str, seed: int) -> str:
    return os.path.join(study['workdir'], 'experiments', f'{STUDY}_{variant}_s{seed}')


def last_logged_psnr(folder: str) -> float:
    """The value of the last '# psnr:' line of the run's newest log, read without mclir_plugin.commands.compare."""
    logs = sorted(f for f in os.listdir(folder) if f.startswith('train_') and f.endswith('.log'))
    with open(os.path.join(folder, logs[-1]), encoding='utf-8') as file:
        return float(re.findall(r'# psnr: (\S+)', file.read())[-1])


def test_table_has_one_row_per_variant_and_kind_with_statistics_of_the_logs(study):
    assert study['code'] == 1, study['out'][-3000:] + study['err'][-3000:]  # 1: a run failed (the broken variant)
    rows = read_csv(os.path.join(study['workdir'], 'results.csv'))
    assert [(r['kind'], r['variant']) for r in rows] == [(k, v) for k in ('final', 'best') for v in VARIANTS]
    assert {(r['dataset'], r['metric']) for r in rows} == {('SyntheticSR-val', 'psnr')}
    for kind in ('final', 'best'):
        values = {}
        for variant in ('baseline', 'spn'):
            runs = [load_run(run_dir(study, variant, s)) for s in SEEDS]
            series = [run.val['SyntheticSR-val']['psnr'] for run in runs]
            values[variant] = [s[max(s)] if kind == 'final' else max(s.values()) for s in series]
        for variant, row in [(r['variant'], r) for r in rows if r['kind'] == kind and r['variant'] != 'broken']:
            assert row['status'] == 'ok' and (row['n_ok'], row['n_runs']) == ('2', '2')
            assert float(row['mean']) == pytest.approx(statistics.mean(values[variant]), abs=1e-12)
            assert float(row['std']) == pytest.approx(statistics.stdev(values[variant]), abs=1e-12)
        spn = next(r for r in rows if r['kind'] == kind and r['variant'] == 'spn')
        diffs = [b - a for a, b in zip(values['baseline'], values['spn'])]
        assert float(spn['delta_mean']) == pytest.approx(statistics.mean(values['spn']) -
                                                         statistics.mean(values['baseline']), abs=1e-12)
        assert float(spn['paired_mean']) == pytest.approx(statistics.mean(diffs), abs=1e-12)
        assert float(spn['paired_se']) == pytest.approx(statistics.stdev(diffs) / math.sqrt(2), abs=1e-12)
        assert spn['paired_n'] == '2'
    # "final" is the last validation in the log, checked without the compare parser; seeds give different runs
    finals = {(r['variant'], int(p.split(':')[0])): float(p.split(':')[1].split('@')[0])
              for r in rows if r['kind'] == 'final' for p in r['per_seed'].split(';') if p}
    for (variant, seed), value in finals.items():
        assert value == last_logged_psnr(run_dir(study, variant, seed))
    assert finals[('baseline', 0)] != finals[('baseline', 1)]
    out = study['out']
    assert re.search(r'SyntheticSR-val\s+psnr\s+spn\s+2/2\s+[\d.]+ ± [\d.]+\s+[+-][\d.]+', out), out[-3000:]


def test_each_run_has_its_exact_option_file_and_study_json_lists_the_commands(study):
    with open(os.path.join(study['workdir'], 'study.json'), encoding='utf-8') as file:
        record = json.load(file)
    assert [(r['variant'], r['seed']) for r in record['runs']] == [(v, s) for v in VARIANTS for s in SEEDS]
    for run in record['runs']:
        command = run['attempts'][-1]['command']
        assert command[1:] == ['-m', 'mclir_plugin.commands.train', '-opt', f'options/{run["name"]}.yml']
        assert run['attempts'][-1]['cwd'] == study['workdir']
        with open(os.path.join(study['workdir'], run['option_file']), encoding='utf-8') as file:
            opt = yaml.safe_load(file)
        assert (opt['name'], opt['manual_seed'], opt['train']['total_iter']) == (run['name'], run['seed'], ITERS)
        assert opt['network_g']['embed_dim'] == 8
        assert opt['network_g']['type'] == ('NoSuchArch' if run['variant'] == 'broken' else 'SwinIR')
        if run['status'] == 'ok':  # BasicSR copied the very file into the run folder
            assert os.path.isfile(os.path.join(run_dir(study, run['variant'], run['seed']), f'{run["name"]}.yml'))
    assert record['versions']['basicsr'] == '1.4.2' and record['versions']['torch']
    assert record['versions']['mclir_plugin'] == mclir_plugin.__version__ and 'mclir_plugin_commit' not in record[
        'versions']  # installed versions only: nothing is read from a checkout
    assert record['machine']['cpu_count'] == os.cpu_count() and record['machine']['platform']
    assert record['invocations'][0]['argv'][1:3] == ['-m', 'mclir_plugin.commands.ablate']
    assert record['invocations'][0]['argv'][-len(TINY):] == TINY


def test_results_png_is_a_real_png(study):
    with open(os.path.join(study['workdir'], 'results.png'), 'rb') as file:
        head = file.read(24)
    assert head[:8] == b'\x89PNG\r\n\x1a\n' and head[12:16] == b'IHDR'
    assert struct.unpack('>II', head[16:24]) == (1000, 350)  # 2 panels of 500 x 350 for one validation set


def test_failing_variant_is_reported_and_the_others_still_make_the_table(study):
    out = study['out']
    for seed in SEEDS:
        assert f'{STUDY}_broken_s{seed}: FAILED (exit code 1)' in out
    assert "No object named 'NoSuchArch'" in out
    broken = [r for r in read_csv(os.path.join(study['workdir'], 'results.csv')) if r['variant'] == 'broken']
    assert all(r['status'] == 'failed' and r['n_ok'] == '0' and r['mean'] == '' for r in broken)
    with open(os.path.join(study['workdir'], 'results.md'), encoding='utf-8') as file:
        markdown = file.read()
    assert '| SyntheticSR-val | psnr | broken | 0/2 (failed) |' in markdown and 'NoSuchArch' in markdown


def test_launch_print_prints_one_command_per_run_and_trains_nothing(tmp_path, capsys):
    workdir = tmp_path / 'p'
    code = ablate_main([*study_args(str(workdir)), '--variant', 'lam0.1', 'train:pixel_opt:neg_weight=0.1',
                        '--launch', 'print'])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    commands = [line for line in out.splitlines() if line.startswith('cd ')]
    assert len(commands) == 4 * len(SEEDS)
    for variant in (*VARIANTS, 'lam0.1'):
        for seed in SEEDS:
            assert sum(f'-opt options/p_{variant}_s{seed}.yml --auto_resume' in c for c in commands) == 1
    assert not (workdir / 'experiments').exists()
    assert yaml.safe_load((workdir / 'options' / 'p_lam0.1_s1.yml').read_text())['train']['pixel_opt'][
        'neg_weight'] == 0.1
    assert ablate_main(['--workdir', str(workdir), '--collect']) == 1  # nothing has finished
    assert 'No finished run' in capsys.readouterr().out
    assert not (workdir / 'experiments').exists()


@pytest.mark.parametrize('extra, message', [
    (['--variant', 'big', 'datasets:train:gt_size=48'], 'datasets:train:gt_size: 32 -> 48'),
    (['--variant', 'typo', 'train:pixel_optt:neg_weight=0.1'], "Did you mean 'pixel_opt'?"),
    (['--variant', 'gone', 'options/missing.yml'], "'options/missing.yml' (--variant gone) does not exist"),
    (['--variant', 'debug1', 'train:pixel_opt:neg_weight=0.1'], "contains 'debug'"),
])
def test_bad_studies_stop_before_training_with_the_reason(tmp_path, capsys, extra, message):
    code = ablate_main([*study_args(str(tmp_path / 'w')), *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'w' / 'experiments').exists()


def test_rerun_after_deleting_one_latest_checkpoint_redoes_only_that_run(study):
    """Last in the file: it changes the study folder.

    The same command plans: done runs skipped, the run with training states resumed, failed runs retried (checked
    with --launch print). The rerun then leaves the broken variant out, so that only the resumed run trains.
    """
    results = os.path.join(study['workdir'], 'results.csv')
    before = without_times([r for r in read_csv(results) if r['variant'] != 'broken'])
    latest = {(v, s): os.path.join(run_dir(study, v, s), 'models', 'net_g_latest.pth')
              for v in ('baseline', 'spn') for s in SEEDS}
    os.remove(latest[('spn', 1)])
    mtimes = {key: os.path.getmtime(path) for key, path in latest.items() if key != ('spn', 1)}
    printed = ablate([*study_args(study['workdir']), '--launch', 'print'])
    assert printed['code'] == 0, printed['err'][-3000:]
    plan = dict(re.findall(r'^  (tiny_\S+)\s+(done|resume|fresh|retry)', printed['out'], re.MULTILINE))
    assert plan == {'tiny_baseline_s0': 'done', 'tiny_baseline_s1': 'done', 'tiny_spn_s0': 'done',
                    'tiny_spn_s1': 'resume', 'tiny_broken_s0': 'retry', 'tiny_broken_s1': 'retry'}
    rerun = ablate(study_args(study['workdir'], broken=False))
    assert rerun['code'] == 0, rerun['out'][-3000:] + rerun['err'][-3000:]
    assert '3 run(s) done already, 1 to train.' in rerun['out']
    assert {key: os.path.getmtime(path) for key, path in latest.items() if key != ('spn', 1)} == mtimes
    assert os.path.isfile(latest[('spn', 1)])
    assert len([f for f in os.listdir(run_dir(study, 'spn', 1)) if f.endswith('.log')]) == 2
    assert without_times(read_csv(results)) == before  # the resumed run's final validation is that of the uninterrupted run
