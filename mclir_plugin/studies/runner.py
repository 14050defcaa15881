"""The runs of a study on disk: their state, and their training in subprocesses.

State. A run is ``done`` when ``experiments/<name>/models/net_g_latest.pth`` exists (skipped), ``resume`` when it
has a complete training state (continued with ``--auto_resume``), else ``fresh`` (``retry`` after a failed attempt).

Training. A run is trained as ``cd <workdir> && python -m mclir_plugin.commands.train -opt options/<name>.yml``
(stdout and stderr appended to ``<workdir>/logs/<name>.out``), so ``experiments/`` and ``tb_logger/`` are inside
the study folder. The interpreter is this one (``sys.executable``), so the runs use the installed package.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from typing import Mapping, Sequence

from mclir_plugin.studies.plan import Run
from mclir_plugin.utils.checkpoint import newest_training_state

TAIL_LINES = 15


def run_state(workdir: str, name: str) -> tuple[str, str]:
    """``('done'|'resume'|'fresh', detail)`` of run ``name`` from its files (see the module docstring)."""
    root = os.path.join(workdir, 'experiments', name)
    if os.path.isfile(os.path.join(root, 'models', 'net_g_latest.pth')):
        return 'done', 'net_g_latest.pth exists'
    state = newest_training_state(os.path.join(root, 'training_states'))
    if state is None:
        return 'fresh', ''
    return 'resume', f'from iteration {os.path.splitext(os.path.basename(state))[0]}'


def plan_states(workdir: str, runs: Sequence[Run], previous: Mapping[str, dict]) -> None:
    """Set each run's ``state`` from its files, and carry over its earlier attempts from ``study.json``.

    Args:
        workdir: The study folder.
        runs: The planned runs (changed in place).
        previous: The runs of the previous ``study.json``, by name (empty for a new study).
    """
    for run in runs:
        run.state, run.detail = run_state(workdir, run.name)
        run.attempts = previous.get(run.name, {}).get('attempts', [])
        if run.state == 'fresh' and previous.get(run.name, {}).get('status') in ('failed', 'interrupted'):
            run.state = 'retry'
        run.status = 'ok' if run.state == 'done' else 'pending'


def collect_states(workdir: str, runs: Sequence[Run]) -> None:
    """``--collect``: mark each run ``ok``, ``incomplete`` (started, not finished) or ``pending``, in place."""
    for run in runs:
        state, detail = run_state(workdir, run.name)
        if state == 'done':
            run.status = 'ok'
            continue
        started = tail(os.path.join(workdir, out_file(run)))
        run.status = 'incomplete' if state == 'resume' or started else 'pending'
        run.detail = 'not finished' + (f': training states {detail}' if state == 'resume' else '')


def train_command(option_file: str, resume: bool) -> list[str]:
    """The training command of a run (started in the study folder): this interpreter with the train module."""
    return [sys.executable, '-m', 'mclir_plugin.commands.train', '-opt', option_file,
            *(['--auto_resume'] if resume else [])]


def study_command(argv: Sequence[str]) -> list[str]:
    """The ablate command line with ``argv``: this interpreter with the ablate module."""
    return [sys.executable, '-m', 'mclir_plugin.commands.ablate', *argv]


def out_file(run: Run) -> str:
    """The run's output file, relative to the study folder: ``logs/<name>.out``."""
    return os.path.join('logs', f'{run.name}.out')


def shell_line(workdir: str, run: Run) -> str:
    """A copy-pasteable command for ``--launch print`` (resumes if requeued; output appended to logs/)."""
    command = shlex.join(train_command(run.option_file, resume=True))
    return f'cd {shlex.quote(workdir)} && {command} >> {shlex.quote(out_file(run))} 2>&1'


def tail(path: str, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist)."""
    if not os.path.isfile(path):
        return ''
    with open(path, encoding='utf-8', errors='replace') as file:
        return ''.join(file.readlines()[-lines:]).rstrip()


def train_run(workdir: str, run: Run, index: int, total: int) -> None:
    """Train one run in a subprocess; set ``run.status`` (``ok``/``failed``) and record the attempt.

    Args:
        workdir: The study folder (the subprocess's working folder).
        run: The run; its ``state`` says whether to resume.
        index: Its number among the runs to train, for the progress lines.
        total: The number of runs to train.

    Raises:
        KeyboardInterrupt: after stopping the training (the run is marked ``interrupted``).
    """
    command = train_command(run.option_file, resume=run.state == 'resume')
    out = os.path.join(workdir, out_file(run))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    print(f'[{index}/{total}] {run.name}: training ({run.state}{", " + run.detail if run.detail else ""}); '
          f'output in {out}', flush=True)
    attempt = {'started': time.strftime('%Y-%m-%d %H:%M:%S'), 'mode': run.state, 'cwd': workdir, 'command': command}
    run.attempts.append(attempt)
    start = time.monotonic()
    with open(out, 'a', encoding='utf-8') as file:
        file.write(f'=== {attempt["started"]} cd {workdir} && {shlex.join(command)}\n')
        file.flush()
        process = subprocess.Popen(command, cwd=workdir, stdout=file, stderr=subprocess.STDOUT,
                                   env=dict(os.environ, PYTHONUNBUFFERED='1'))
        try:
            code = process.wait()
        except KeyboardInterrupt:
            _stop(process)
            attempt.update(seconds=round(time.monotonic() - start, 1), returncode=None)
            run.status, run.detail = 'interrupted', 'interrupted by the user'
            raise
    attempt.update(seconds=round(time.monotonic() - start, 1), returncode=code)
    done = run_state(workdir, run.name)[0] == 'done'
    run.status = 'ok' if code == 0 and done else 'failed'
    run.detail = '' if run.status == 'ok' else f'exit code {code}' + ('' if code else ', but no net_g_latest.pth')
    print(f'[{index}/{total}] {run.name}: {run.status} in {attempt["seconds"]:.1f} s' +
          ('' if run.status == 'ok' else f' ({run.detail}); last lines of {out}:\n{tail(out)}'), flush=True)


def _stop(process: subprocess.Popen) -> None:
    """Give the training process 10 s to exit after Ctrl-C (checkpoint files are written atomically), then kill it."""
    try:
        process.wait(timeout=10)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        process.kill()
        process.wait()
