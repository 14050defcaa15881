"""Ablation studies: does SPN (or a setting of it) help on my data, beyond the noise between seeds?

``python tools/ablate.py --workdir studies/<study> -opt BASE.yml [--spn SPN.yml] [--variant LABEL [FILE.yml]
KEY=VALUE ...] ... [--iters N] [--seeds 0 1 2] [--override KEY=VALUE ...]`` (or ``mclir-ablate``) trains every
variant with every seed in subprocesses (``python -m mclir_plugin.commands.train``), then tabulates and plots the
validation metrics.

Variants. ``baseline`` is the ``-opt`` file; ``spn`` the ``--spn`` file, if given; each ``--variant LABEL [FILE.yml]
KEY=VALUE ...`` is ``FILE.yml`` (default: the ``--spn`` file, else the baseline) with its overrides. ``--override``
applies to every run (before the variant's own overrides). Keys and values are those of ``--force_yml``
(``train:pixel_opt:neg_weight=0.01``), values read by the one rule of every tool
(:func:`mclir_plugin.utils.options.parse_override_value`: as YAML in an option file, ``[2, 2]``, ``~``,
``{type: calculate_ssim, crop_border: 4}``, and ``1e-3`` is a number).

Runs. Run ``<study>_<variant>_s<seed>`` gets its own option file ``<workdir>/options/<name>.yml`` (see
:mod:`mclir_plugin.studies.plan`) and is trained in ``<workdir>``, its output appended to ``logs/<name>.out`` (see
:mod:`mclir_plugin.studies.runner`), so ``experiments/`` and ``tb_logger/`` are inside the study folder.

Resume. A run is ``done`` when ``experiments/<name>/models/net_g_latest.pth`` exists (skipped), ``resume`` when it
has a complete training state (continued with ``--auto_resume``), else ``fresh`` (``retry`` after a failed attempt).
Running the same command again continues an interrupted study. A started run whose option file would now differ is
an error: the study would mix settings.

Modes. ``--launch local`` (default) trains the runs one after the other. ``--launch print`` writes the option files
and prints one shell command per unfinished run (with ``--auto_resume``, so a requeued job continues), to submit to
a cluster; ``--collect`` (the same arguments, or only ``--workdir``) later builds the table from what has finished.

Outputs in the study folder: ``results.csv``, ``results.md`` (:mod:`mclir_plugin.studies.report`), ``results.png``
(:mod:`mclir_plugin.studies.plots`) and ``study.json`` (:mod:`mclir_plugin.studies.provenance`: the plan, the exact
command of every attempt, the installed versions and the machine). Exit status: 0 when every run finished, 1 when a
run failed or (``--collect``) has not finished, 2 for an error in the arguments or option files.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from typing import Sequence

from mclir_plugin.studies import StudyError
from mclir_plugin.studies.plan import Run, build_variants, check_label, check_variants, plan_runs, write_run_options
from mclir_plugin.studies.plots import plot_study
from mclir_plugin.studies.provenance import STUDY_FILE, load_study, machine, recorded_runs, save_study, versions
from mclir_plugin.studies.report import STUDY_NOTES, study_cells, write_study_csv, write_study_markdown
from mclir_plugin.studies.run_logs import RunHistory, load_run
from mclir_plugin.studies.runner import (collect_states, out_file, plan_states, shell_line, study_command, tail,
                                         train_run)
from mclir_plugin.studies.statistics import study_rows
from mclir_plugin.utils.tables import format_table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='tools/ablate.py', description='Train a baseline and SPN variants over several seeds and tabulate '
        'their validation metrics (mean, std, difference, paired difference over seeds).',
        epilog='Example: tools/ablate.py --workdir studies/lam -opt options/demo.yml --spn options/demo_spn.yml '
               '--variant lam0.1 train:pixel_opt:neg_weight=0.1 --iters 400 --seeds 0 1 2')
    parser.add_argument('--workdir', required=True, help='study folder (experiments/, options/, logs/, results)')
    parser.add_argument('-opt', '--baseline', dest='baseline', help='the baseline option file')
    parser.add_argument('--spn', help='its SPN twin (variant "spn"; the default base of --variant)')
    parser.add_argument('--variant', nargs='+', action='append', default=[], metavar='ITEM',
                        help='a variant: LABEL [FILE.yml] KEY=VALUE ... (FILE default: --spn, else -opt); repeatable')
    parser.add_argument('--override', nargs='+', default=[], metavar='KEY=VALUE', help='overrides for every run')
    parser.add_argument('--iters', type=int, help='iterations per run (default: the files\' train:total_iter)')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help='seeds (default 0 1 2)')
    parser.add_argument('--study', help='study name, the prefix of run names (default: the workdir\'s name)')
    parser.add_argument('--data-root', default=os.getcwd(),
                        help='folder that relative data paths in the option files start from (default: here)')
    parser.add_argument('--launch', choices=('local', 'print'), default='local',
                        help='local: train here one run after the other; print: print the commands')
    parser.add_argument('--collect', action='store_true', help='train nothing; tabulate the finished runs')
    parser.add_argument('--allow-data-mismatch', action='store_true',
                        help='allow variants whose datasets or val:metrics differ from the baseline\'s')
    parser.add_argument('--metric', default='psnr', help='metric of the plot (default psnr)')
    return parser


def plan(args: argparse.Namespace, workdir: str, previous: dict | None) -> tuple[dict, list[Run]]:
    """Build (or, for ``--collect`` without option files, reload) the study and its runs; write the run files."""
    if args.baseline is None:
        if not (args.collect and previous):
            raise StudyError('Give the baseline option file with -opt (only --collect on an existing study '
                             f'folder can do without; {os.path.join(workdir, STUDY_FILE)} '
                             f'{"exists" if previous else "does not exist"}).')
        return previous, recorded_runs(previous)
    if not args.spn and not args.variant:
        raise StudyError('Nothing to compare with the baseline: give --spn FILE and/or --variant LABEL ... .')
    study_name = args.study or os.path.basename(workdir)
    check_label(study_name, set(), 'Study name (--study, or the --workdir folder\'s name)')
    data_root = os.path.abspath(args.data_root)
    variants = build_variants(args.baseline, args.spn, args.variant, args.override, data_root)
    iters = check_variants(variants, args.iters, args.allow_data_mismatch)
    runs = plan_runs(study_name, variants, args.seeds, iters)
    plan_states(workdir, runs, {r['name']: r for r in (previous or {}).get('runs', [])})
    sources = {v.label: v.describe() for v in variants}
    for run in runs:
        write_run_options(workdir, run, sources[run.variant], args.override)
    study = {'study': study_name, 'workdir': workdir, 'iters': iters, 'seeds': list(args.seeds),
             'variants': [{'label': v.label, 'option_file': v.option_file, 'overrides': v.overrides}
                          for v in variants],
             'overrides': list(args.override), 'data_root': data_root,
             'invocations': (previous or {}).get('invocations', [])}
    return study, runs


def print_plan(study: dict, runs: Sequence[Run]) -> None:
    """The variants and, per run, what will happen to it."""
    print(f'Study {study["study"]} in {study["workdir"]}: {len(study["variants"])} variants x '
          f'{len(study["seeds"])} seeds = {len(runs)} runs of {study["iters"]} iterations')
    for variant in study['variants']:
        extra = f' + {" ".join(variant["overrides"])}' if variant['overrides'] else ''
        print(f'  variant {variant["label"]}: {variant["option_file"]}{extra}')
    if study.get('overrides'):
        print(f'  every run: {" ".join(study["overrides"])}')
    width = max(len(r.name) for r in runs)
    print('Plan:')
    for run in runs:
        print(f'  {run.name.ljust(width)}  {run.state}{"  (" + run.detail + ")" if run.detail else ""}')


def read_results(workdir: str, runs: Sequence[Run]) -> dict[str, RunHistory]:
    """The parsed logs of the finished runs, by run name."""
    return {run.name: load_run(os.path.join(workdir, 'experiments', run.name), run.name)
            for run in runs if run.status == 'ok'}


def report(workdir: str, study: dict, runs: Sequence[Run], metric: str) -> None:
    """Read the finished runs' logs, print the table and write results.csv/.md/.png."""
    histories = read_results(workdir, runs)
    labels = [v['label'] for v in study['variants']]
    rows = study_rows(labels, runs, histories, reference='spn' if 'spn' in labels[1:] else None)
    print(f'\nValidation metrics, {study["iters"]} iterations, seeds {" ".join(map(str, study["seeds"]))}; '
          f'baseline: {labels[0]}')
    print(format_table(*study_cells(rows)) if rows else 'No finished run has validation results yet.')
    print(STUDY_NOTES)
    write_study_csv(os.path.join(workdir, 'results.csv'), rows)
    write_study_markdown(os.path.join(workdir, 'results.md'), study, runs, rows)
    outputs = 'results.csv and results.md'
    if histories and any(h.val for h in histories.values()):
        width, height = plot_study(os.path.join(workdir, 'results.png'), labels, runs, histories, metric)
        outputs = f'results.csv, results.md and results.png ({width}x{height} px)'
    for run in runs:
        if run.status not in ('ok', 'pending'):
            last = (tail(os.path.join(workdir, out_file(run)), 1) or '(no output)').strip()
            print(f'{run.name}: {run.status.upper()} ({run.detail}): {last}\n  see {out_file(run)}')
    print(f'\nWrote {os.path.join(workdir, "")}{outputs}')


def execute(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Plan, then train, print or collect, then report; return the exit status."""
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    study, runs = plan(args, workdir, load_study(workdir))
    mode = 'collect' if args.collect else args.launch
    study['invocations'].append({'time': time.strftime('%Y-%m-%d %H:%M:%S'), 'mode': mode, 'cwd': os.getcwd(),
                                 'argv': study_command(argv)})
    study['versions'], study['machine'] = versions(), machine()
    print_plan(study, runs)
    save_study(workdir, study, runs)
    if mode == 'print':
        print('\nCommands (one per unfinished run; each resumes if requeued):')
        for run in runs:
            print(f'# {run.name}: done' if run.state == 'done' else shell_line(workdir, run))
        print(f'\nWhen they have finished: {shlex.join(study_command(["--workdir", workdir, "--collect"]))}')
        return 0
    if mode == 'collect':
        collect_states(workdir, runs)
    else:
        train_all(workdir, study, runs)
    save_study(workdir, study, runs)
    report(workdir, study, runs, args.metric)
    return 0 if all(r.status == 'ok' for r in runs) else 1


def train_all(workdir: str, study: dict, runs: Sequence[Run]) -> None:
    """Train the runs that are not done, one after the other, saving ``study.json`` after each."""
    todo = [r for r in runs if r.state != 'done']
    print(f'\n{len(runs) - len(todo)} run(s) done already, {len(todo)} to train.', flush=True)
    for index, run in enumerate(todo, start=1):
        try:
            train_run(workdir, run, index, len(todo))
        except KeyboardInterrupt:
            save_study(workdir, study, runs)
            print(f'\nInterrupted. Run the same command again to continue ({run.name} resumes from its last '
                  'checkpoint).', file=sys.stderr)
            raise
        save_study(workdir, study, runs)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return execute(args, argv)
    except StudyError as err:
        print(f'tools/ablate.py: error: {err}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == '__main__':
    sys.exit(main())
