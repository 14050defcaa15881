"""A study's runs on disk: their state from the files a training leaves, the commands, and study.json."""
import os
import sys

from mclir_plugin.studies.plan import Run
from mclir_plugin.studies.provenance import load_study, recorded_runs, save_study, versions
from mclir_plugin.studies.runner import collect_states, plan_states, run_state, shell_line, train_command


def touch(path) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as file:
        file.write(b'x')


def test_state_follows_the_run_files_and_a_failed_run_is_retried(tmp_path):
    workdir = str(tmp_path)
    runs = [Run(f's_{v}', v, 0, f'options/s_{v}.yml') for v in ('done', 'half', 'new', 'failed')]
    touch(tmp_path / 'experiments' / 's_done' / 'models' / 'net_g_latest.pth')
    for name in ('9.state', '10.state', '11.state.tmp'):  # a save killed at 11 left only its temporary file
        touch(tmp_path / 'experiments' / 's_half' / 'training_states' / name)
    assert run_state(workdir, 's_half') == ('resume', 'from iteration 10')
    plan_states(workdir, runs, {'s_failed': {'status': 'failed', 'attempts': [{'returncode': 1}]}})
    assert [(r.state, r.status) for r in runs] == [('done', 'ok'), ('resume', 'pending'), ('fresh', 'pending'),
                                                   ('retry', 'pending')]
    assert runs[3].attempts == [{'returncode': 1}]
    touch(tmp_path / 'logs' / 's_failed.out')  # it started: collected as incomplete, the untouched one as pending
    collect_states(workdir, runs)
    assert [r.status for r in runs] == ['ok', 'incomplete', 'pending', 'incomplete']
    assert runs[1].detail == 'not finished: training states from iteration 10'


def test_runs_train_through_this_interpreter_and_the_train_module(tmp_path):
    assert train_command('options/a.yml', resume=False) == [sys.executable, '-m', 'mclir_plugin.commands.train',
                                                            '-opt', 'options/a.yml']
    line = shell_line(str(tmp_path / 'my study'), Run('a', 'v', 0, 'options/a.yml'))
    assert line == (f"cd '{tmp_path}/my study' && {sys.executable} -m mclir_plugin.commands.train -opt options/a.yml "
                    '--auto_resume >> logs/a.out 2>&1')


def test_study_json_round_trip_and_versions_without_a_checkout(tmp_path):
    import mclir_plugin
    runs = [Run('a', 'v', 0, 'options/a.yml', status='failed', attempts=[{'returncode': 1}], opt={'big': 1})]
    save_study(str(tmp_path), {'study': 's', 'versions': versions()}, runs)
    study = load_study(str(tmp_path))
    assert study['runs'][0]['shell'].endswith('>> logs/a.out 2>&1') and 'opt' not in study['runs'][0]
    assert recorded_runs(study) == [Run('a', 'v', 0, 'options/a.yml', status='failed', attempts=[{'returncode': 1}])]
    assert study['versions']['mclir_plugin'] == mclir_plugin.__version__ and study['versions']['basicsr'] == '1.4.2'
    assert set(study['versions']) == {'python', 'torch', 'torchvision', 'basicsr', 'numpy', 'mclir_plugin'}
    assert load_study(str(tmp_path / 'none')) is None
