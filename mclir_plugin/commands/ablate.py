"""Ablation studies: does SPN (or a setting of it) help on my data, beyond the noise between seeds?

``python tools/ablate.py --workdir studies/<study> -opt BASE.yml [--spn SPN.yml] [--variant LABEL [FILE.yml]
KEY=VALUE ...] ... [--iters N] [--seeds 0 1 2] [--override KEY=VALUE ...]`` trains every variant with every seed
through ``tools/train.py`` in subprocesses, then tabulates and plots the validation metrics.

Variants. ``baseline`` is the ``-opt`` file; ``spn`` the ``--spn`` file, if given; each ``--variant LABEL [FILE.yml]
KEY=VALUE ...`` is ``FILE.yml`` (default: the ``--spn`` file, else the baseline) with its overrides. ``--override``
applies to every run (before the variant's own overrides). Keys and values are those of BasicSR's ``--force_yml``
(``train:pixel_opt:neg_weight=0.01``), with values read as YAML, as in an option file (``[2, 2]``, ``~``,
``{type: calculate_ssim, crop_border: 4}``), except that ``1e-3`` is read as a number (YAML 1.1 reads a string).

Runs. Run ``<study>_<variant>_s<seed>`` gets its own option file ``<workdir>/options/<name>.yml``: the variant's
options with ``name``, ``manual_seed`` and ``train:total_iter`` set, relative data and weight paths made absolute
(against ``--data-root``, default the current folder). It is trained as ``cd <workdir> && python tools/train.py -opt
options/<name>.yml`` (stdout and stderr appended to ``<workdir>/logs/<name>.out``), so ``experiments/`` and
``tb_logger/`` are inside the study folder. Files rather than ``--force_yml`` because BasicSR seeds its random
generators with the file's ``manual_seed`` *before* applying ``--force_yml``: overriding the seed there changes the
data loader's seed but not the network's initialisation.

Resume. A run is ``done`` when ``experiments/<name>/models/net_g_latest.pth`` exists (skipped), ``resume`` when it
has training states (continued with ``--auto_resume``), else ``fresh`` (``retry`` after a failed attempt). Running
the same command again continues an interrupted study. A started run whose option file would now differ is an error:
the study would mix settings.

Modes. ``--launch local`` (default) trains the runs one after the other. ``--launch print`` writes the option files
and prints one shell command per unfinished run (with ``--auto_resume``, so a requeued job continues), to submit to
a cluster; ``--collect`` (the same arguments, or only ``--workdir``) later builds the table from what has finished.

Outputs in the study folder: ``results.csv``, ``results.md``, ``results.png`` (see :func:`write_csv`,
:func:`write_markdown`, :func:`plot_study`) and ``study.json`` (the plan, the exact command of every attempt, the
versions and the machine). Exit status: 0 when every run finished, 1 when a run failed or (``--collect``) has not
finished, 2 for an error in the arguments or option files.
"""
from __future__ import annotations

import argparse
import copy
import csv
import difflib
import glob
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from mclir_plugin.commands import compare

STUDY_FILE = 'study.json'
CSV_COLUMNS = ('dataset', 'metric', 'kind', 'variant', 'status', 'n_ok', 'n_runs', 'mean', 'std', 'delta_mean',
               'paired_mean', 'paired_se', 'paired_n', 'per_seed')
#: Option keys holding file or folder paths, made absolute in the run files (``vgg_weights`` unless ``imagenet``).
PATH_KEY = re.compile(r'^(dataroot\w*|meta_info_file|list_file|pretrain_network\w*|vgg_weights)$')
_LABEL = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._+-]*$')
_TAIL_LINES = 15


class AblateError(ValueError):
    """A study that cannot be planned or read; the message names the file or option and the fix."""


@dataclass
class Variant:
    """One arm of the study: an option file plus overrides (``opt``: the options after all overrides)."""

    label: str
    option_file: str
    overrides: list[str]
    opt: dict | None = field(default=None, repr=False)


@dataclass
class Run:
    """One training run: a variant with a seed; ``state`` is the plan, ``status`` the outcome."""

    name: str
    variant: str
    seed: int
    option_file: str                       # relative to the study folder
    state: str = 'fresh'                   # done | resume | fresh | retry
    status: str = 'pending'                # pending | ok | failed | interrupted | incomplete
    detail: str = ''
    attempts: list[dict] = field(default_factory=list)
    opt: dict | None = field(default=None, repr=False)


# ---------------------------------------------------------------------------------------------- option files
def _yaml():
    """BasicSR's ordered YAML loader and dumper (importing basicsr needs the plugin's compat shim first)."""
    import mclir_plugin  # noqa: F401
    from basicsr.utils.options import ordered_yaml
    return ordered_yaml()


def load_options(path: str, what: str) -> dict:
    """Read an option file as BasicSR does; ``what`` names its argument in errors (``-opt``, ``--spn``)."""
    if not os.path.isfile(path):
        raise AblateError(f'Option file {path!r} ({what}) does not exist: check the path (relative to '
                          f'{os.getcwd()}).')
    import yaml
    try:
        with open(path, encoding='utf-8') as file:
            opt = yaml.load(file, Loader=_yaml()[0])
    except yaml.YAMLError as err:
        raise AblateError(f'Option file {path!r} ({what}) is not valid YAML: {err}') from err
    if not isinstance(opt, dict) or 'name' not in opt:
        raise AblateError(f'Option file {path!r} ({what}) is not a BasicSR option file (no top-level name:).')
    return opt


def parse_value(text: str) -> Any:
    """An override's value: :func:`mclir_plugin.utils.options.parse_override_value`, the rule of every tool."""
    from mclir_plugin.utils.options import parse_override_value
    try:
        return parse_override_value(text)
    except ValueError as err:
        raise AblateError(str(err)) from None


def apply_override(opt: dict, entry: str, where: str) -> None:
    """Apply ``a:b:c=value`` to ``opt`` in place; every key but the last must exist (as with ``--force_yml``)."""
    keys, sep, value = entry.partition('=')
    if not sep or not keys.strip():
        raise AblateError(f'Override {entry!r} ({where}) is not KEY=VALUE: write e.g. train:pixel_opt:neg_weight=0.01.')
    path = [k.strip() for k in keys.split(':')]
    node = opt
    for depth, key in enumerate(path[:-1]):
        child = node.get(key) if isinstance(node, dict) else None
        if not isinstance(child, dict):
            close = difflib.get_close_matches(key, list(node) if isinstance(node, dict) else [], n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ''
            raise AblateError(f"Override {entry!r} ({where}): there is no block '{':'.join(path[:depth + 1])}' in "
                              f'the option file.{hint}')
        node = child
    node[path[-1]] = parse_value(value)


def flatten(opt: Any, prefix: str = '') -> dict[str, Any]:
    """``{'a:b:c': value}`` of a nested option dict (lists are values)."""
    if not isinstance(opt, dict) or not opt:
        return {prefix: opt}
    flat: dict[str, Any] = {}
    for key, value in opt.items():
        flat.update(flatten(value, f'{prefix}:{key}' if prefix else str(key)))
    return flat


def differences(a: Any, b: Any, limit: int = 5) -> list[str]:
    """Up to ``limit`` lines ``key: a -> b`` where two option trees differ."""
    fa, fb = flatten(a), flatten(b)
    keys = [k for k in dict.fromkeys([*fa, *fb]) if fa.get(k, '<absent>') != fb.get(k, '<absent>')]
    return [f'{k or "(value)"}: {fa.get(k, "<absent>")!r} -> {fb.get(k, "<absent>")!r}' for k in keys[:limit]]


def absolutise_paths(opt: Any, base: str) -> None:
    """Make relative data/weight paths absolute against ``base`` (runs start in the study folder), in place."""
    if isinstance(opt, list):
        for item in opt:
            absolutise_paths(item, base)
    if not isinstance(opt, dict):
        return
    for key, value in opt.items():
        if isinstance(value, str) and PATH_KEY.match(str(key)) and value != 'imagenet':
            value = os.path.expanduser(value)
            opt[key] = value if os.path.isabs(value) else os.path.normpath(os.path.join(base, value))
        else:
            absolutise_paths(value, base)


def data_settings(opt: dict) -> dict:
    """What must agree between variants for their metrics to be comparable: data, scale and metric settings."""
    return {'datasets': opt.get('datasets'), 'scale': opt.get('scale'),
            'val:metrics': (opt.get('val') or {}).get('metrics')}


# ---------------------------------------------------------------------------------------------- the plan
def build_variants(baseline: str, spn: str | None, variant_args: Sequence[Sequence[str]],
                   overrides: Sequence[str], data_root: str) -> list[Variant]:
    """The variants, each with its options after ``overrides`` (all runs) and its own (see the module docstring)."""
    variants = [Variant('baseline', baseline, [])]
    if spn:
        variants.append(Variant('spn', spn, []))
    for items in variant_args:
        label, rest = items[0], list(items[1:])
        source = rest.pop(0) if rest and '=' not in rest[0] and rest[0].endswith(('.yml', '.yaml')) else \
            (spn or baseline)
        variants.append(Variant(label, source, rest))
    seen: set[str] = set()
    for variant in variants:
        check_label(variant.label, seen)
        what = {'baseline': '-opt', 'spn': '--spn'}.get(variant.label, f'--variant {variant.label}')
        variant.opt = load_options(variant.option_file, what)
        variant.option_file = os.path.abspath(variant.option_file)
        for entry in overrides:
            apply_override(variant.opt, entry, '--override')
        for entry in variant.overrides:
            apply_override(variant.opt, entry, f'--variant {variant.label}')
        absolutise_paths(variant.opt, data_root)
    return variants


def check_label(label: str, seen: set[str], what: str = 'Variant label') -> None:
    """Labels name folders and runs: simple, unique, and without ``debug`` (BasicSR's debug mode by name)."""
    if not _LABEL.match(label):
        raise AblateError(f'{what} {label!r} must be letters, digits and . _ + - (it is part of run names).')
    if 'debug' in label.lower():
        raise AblateError(f"{what} {label!r} contains 'debug': BasicSR switches a run whose name contains "
                          "'debug' to debug mode (val_freq 8, print_freq 1). Choose another name.")
    if label in seen:
        raise AblateError(f'{what} {label!r} is given twice: labels must be unique.')
    seen.add(label)


def check_variants(variants: Sequence[Variant], iters: int | None, allow_data_mismatch: bool) -> int:
    """Check that the variants validate, agree on data and length; return the number of iterations."""
    base = variants[0]
    for variant in variants:
        opt = variant.opt
        if not any(str(k).startswith('val') for k in opt.get('datasets', {})) or not opt.get('val'):
            raise AblateError(f'Variant {variant.label!r} ({variant.option_file}) has no validation (datasets:val '
                              'and val:): the study compares validation metrics. Add a validation set.')
        if (opt.get('path') or {}).get('resume_state'):
            raise AblateError(f'Variant {variant.label!r} ({variant.option_file}) sets path:resume_state: every '
                              'run of a study starts from scratch. Use --override path:resume_state=~.')
        diff = differences(data_settings(base.opt), data_settings(opt))
        if diff and not allow_data_mismatch:
            raise AblateError(
                f'Variant {variant.label!r} ({variant.option_file} + {variant.overrides}) does not train or validate '
                f'on the same data as the baseline ({base.option_file}):\n  ' + '\n  '.join(diff) +
                '\nMake the datasets and val:metrics equal (shared changes go in --override), or pass '
                '--allow-data-mismatch.')
    if iters is not None:
        return iters
    lengths = {v.label: (v.opt.get('train') or {}).get('total_iter') for v in variants}
    if len(set(lengths.values())) != 1 or None in lengths.values():
        raise AblateError(f'The variants train for different numbers of iterations ({lengths}): pass --iters N.')
    return int(next(iter(lengths.values())))


def plan_runs(study: str, variants: Sequence[Variant], seeds: Sequence[int], iters: int) -> list[Run]:
    """One run per variant and seed, with its complete option dict."""
    runs = []
    for variant in variants:
        for seed in seeds:
            name = f'{study}_{variant.label}_s{seed}'
            opt = copy.deepcopy(variant.opt)
            opt['name'], opt['manual_seed'] = name, int(seed)
            opt.setdefault('train', {})['total_iter'] = int(iters)
            runs.append(Run(name, variant.label, int(seed), os.path.join('options', f'{name}.yml'), opt=opt))
    return runs


def _plain(value: Any) -> Any:
    """Ordered dicts as plain dicts, for comparisons that ignore key order."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def write_run_options(workdir: str, run: Run, source: str, overrides: Sequence[str]) -> None:
    """Write the run's option file, refusing to change the options of a run that has started.

    Args:
        workdir: The study folder.
        run: The run, with its options.
        source: The variant's option file (and its overrides), for the header comment.
        overrides: The overrides of every run, for the header comment.
    """
    import yaml
    path = os.path.join(workdir, run.option_file)
    if os.path.isfile(path) and run.state in ('done', 'resume'):
        with open(path, encoding='utf-8') as file:
            old = yaml.load(file, Loader=_yaml()[0])
        if _plain(old) != _plain(run.opt):
            raise AblateError(
                f'Run {run.name} has started with other options ({path}):\n  ' +
                '\n  '.join(differences(_plain(old), _plain(run.opt))) +
                f'\nUse a new --workdir for new settings, or delete {os.path.join(workdir, "experiments", run.name)} '
                'to retrain this run.')
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    header = (f'# Written by tools/ablate.py: run {run.name} = {source}\n# every run: '
              f'{" ".join(overrides) or "no overrides"}; then name, manual_seed, train:total_iter of this run.\n')
    with open(path, 'w', encoding='utf-8') as file:
        file.write(header + yaml.dump(run.opt, Dumper=_yaml()[1], default_flow_style=None, sort_keys=False))


def run_state(workdir: str, name: str) -> tuple[str, str]:
    """``('done'|'resume'|'fresh', detail)`` from the run's files (see the module docstring)."""
    root = os.path.join(workdir, 'experiments', name)
    if os.path.isfile(os.path.join(root, 'models', 'net_g_latest.pth')):
        return 'done', 'net_g_latest.pth exists'
    states = glob.glob(os.path.join(glob.escape(root), 'training_states', '*.state'))
    iters = [int(m.group(1)) for m in (re.match(r'(\d+)\.state$', os.path.basename(s)) for s in states) if m]
    return ('resume', f'from iteration {max(iters)}') if iters else ('fresh', '')


def train_command(option_file: str, resume: bool) -> list[str]:
    """The training command (run from the study folder): the repository's tools/train.py, else the module."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools', 'train.py')
    entry = [script] if os.path.isfile(script) else ['-m', 'mclir_plugin.commands.train']
    return [sys.executable, *entry, '-opt', option_file, *(['--auto_resume'] if resume else [])]


def shell_line(workdir: str, run: Run) -> str:
    """A copy-pasteable command for ``--launch print`` (resumes if requeued; output appended to logs/)."""
    command = shlex.join(train_command(run.option_file, resume=True))
    return f'cd {shlex.quote(workdir)} && {command} >> {shlex.quote(_out_file(run))} 2>&1'


def _out_file(run: Run) -> str:
    return os.path.join('logs', f'{run.name}.out')


# ---------------------------------------------------------------------------------------------- training
def tail(path: str, lines: int = _TAIL_LINES) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist)."""
    if not os.path.isfile(path):
        return ''
    with open(path, encoding='utf-8', errors='replace') as file:
        return ''.join(file.readlines()[-lines:]).rstrip()


def train_run(workdir: str, run: Run, index: int, total: int) -> None:
    """Train one run in a subprocess; set ``run.status`` (``ok``/``failed``) and record the attempt."""
    command = train_command(run.option_file, resume=run.state == 'resume')
    out = os.path.join(workdir, _out_file(run))
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


# ---------------------------------------------------------------------------------------------- results
def read_results(workdir: str, runs: Sequence[Run]) -> dict[str, compare.RunHistory]:
    """The parsed logs (``mclir_plugin.commands.compare``) of the finished runs, by run name."""
    histories = {}
    for run in runs:
        if run.status == 'ok':
            histories[run.name] = compare.load_run(os.path.join(workdir, 'experiments', run.name), run.name)
    return histories


def per_run_values(history: compare.RunHistory) -> dict[tuple[str, str], dict[str, tuple[float, int]]]:
    """``{(dataset, metric): {'final': (value, iter), 'best': (value, iter)}}`` via ``compare.summarise``."""
    return {(row['dataset'], row['metric']): {'final': (row['last'], row['last_iter']),
                                              'best': (row['best'], row['best_iter'])}
            for row in compare.summarise([history])}


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1; None below two values)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def paired(base: dict[int, float], other: dict[int, float]) -> tuple[float | None, float | None, int]:
    """Mean of the per-seed differences ``other - base`` over common seeds, its standard error, and n."""
    diffs = [other[s] - base[s] for s in sorted(set(base) & set(other))]
    mean, std = mean_std(diffs)
    return mean, (std / math.sqrt(len(diffs)) if std is not None else None), len(diffs)


def summarise_study(variants: Sequence[str], runs: Sequence[Run],
                    histories: dict[str, compare.RunHistory]) -> list[dict]:
    """Rows of ``CSV_COLUMNS``: one per dataset x metric x kind (final, best) x variant."""
    values = {run.name: per_run_values(h) for run in runs if (h := histories.get(run.name))}
    keys = compare._ordered_union([list(v) for v in values.values()])
    rows = []
    for dataset, metric in keys:
        for kind in ('final', 'best'):
            seeds = {label: {r.seed: values[r.name][(dataset, metric)][kind] for r in runs
                             if r.variant == label and (dataset, metric) in values.get(r.name, {})}
                     for label in variants}
            base = {s: v for s, (v, _) in seeds[variants[0]].items()}
            for label in variants:
                rows.append(_stat_row(dataset, metric, kind, label, seeds[label], base, runs,
                                      baseline=label == variants[0]))
    return rows


def _stat_row(dataset: str, metric: str, kind: str, label: str, seeds: dict[int, tuple[float, int]],
              base: dict[int, float], runs: Sequence[Run], baseline: bool) -> dict:
    mine = {s: v for s, (v, _) in seeds.items()}
    mean, std = mean_std(list(mine.values()))
    base_mean = mean_std(list(base.values()))[0]
    p_mean, p_se, p_n = paired(base, mine) if not baseline else (None, None, 0)
    variant_runs = [r for r in runs if r.variant == label]
    return {'dataset': dataset, 'metric': metric, 'kind': kind, 'variant': label,
            'status': variant_status(variant_runs), 'n_ok': len(mine), 'n_runs': len(variant_runs),
            'mean': mean, 'std': std,
            'delta_mean': None if baseline or mean is None or base_mean is None else mean - base_mean,
            'paired_mean': p_mean, 'paired_se': p_se, 'paired_n': p_n,
            'per_seed': ';'.join(f'{s}:{v!r}@{i}' for s, (v, i) in sorted(seeds.items()))}


def variant_status(runs: Sequence[Run]) -> str:
    """``ok``, or e.g. ``1/2 ok; failed: s1`` / ``failed`` / ``pending``."""
    ok = [r for r in runs if r.status == 'ok']
    if len(ok) == len(runs):
        return 'ok'
    others: dict[str, list[str]] = {}
    for run in runs:
        if run.status != 'ok':
            others.setdefault(run.status, []).append(f's{run.seed}')
    if not ok and len(others) == 1:
        return next(iter(others))
    return f'{len(ok)}/{len(runs)} ok; ' + '; '.join(f'{k}: {" ".join(v)}' for k, v in others.items())


# ---------------------------------------------------------------------------------------------- outputs
def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return ''
    return f'{value:+.4f}' if signed else f'{value:.4f}'


def table_cells(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """The printed table: one line per dataset x metric x variant, final and best side by side."""
    headers = ['dataset', 'metric', 'variant', 'runs', 'final mean ± std', 'Δ final', 'paired Δ final ± SE',
               'best mean ± std', 'Δ best', 'paired Δ best ± SE']
    by_key = {(r['dataset'], r['metric'], r['variant'], r['kind']): r for r in rows}
    cells = []
    for dataset, metric, variant, kind in by_key:
        if kind != 'final':
            continue
        final, best = by_key[(dataset, metric, variant, 'final')], by_key[(dataset, metric, variant, 'best')]
        runs = f'{final["n_ok"]}/{final["n_runs"]}' + ('' if final['status'] == 'ok' else f' ({final["status"]})')
        cells.append([dataset, metric, variant, runs, *_stat_cells(final), *_stat_cells(best)])
    return headers, cells


def _stat_cells(row: dict) -> list[str]:
    spread = f' ± {row["std"]:.4f}' if row['std'] is not None else ''
    pair = _num(row['paired_mean'], True)
    if pair:
        pair += (f' ± {row["paired_se"]:.4f}' if row['paired_se'] is not None else '') + f' (n={row["paired_n"]})'
    delta = 'baseline' if row['variant'] == 'baseline' else _num(row['delta_mean'], True)
    return [_num(row['mean']) + spread, delta, pair]


def write_csv(path: str, rows: Sequence[dict]) -> None:
    """``results.csv``: ``CSV_COLUMNS`` at full precision; ``per_seed`` is ``seed:value@iteration;...``."""
    with open(path, 'w', newline='', encoding='utf-8') as file:
        writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows({k: ('' if r[k] is None else r[k]) for k in CSV_COLUMNS} for r in rows)


NOTES = ('final: the last validation of each run; best: its best validation. mean ± std over seeds (sample std, '
         'n - 1). Δ: difference of the means to the baseline (dB for PSNR). paired Δ: mean over seeds of (variant - '
         'baseline) with the same seed, ± its standard error (std / √n). With a few seeds the SE is itself rough: '
         'read |paired Δ| below about 2 SE as no evidence of a difference.')


def write_markdown(path: str, study: dict, runs: Sequence[Run], rows: Sequence[dict]) -> None:
    """``results.md``: the variants, the table, notes on the statistics, and the failed runs with their log tails."""
    lines = [f'# Ablation study `{study["study"]}`', '',
             f'{study["iters"]} iterations, seeds {", ".join(map(str, study["seeds"]))}.', '']
    lines += [f'- `{v["label"]}`: {v["option_file"]}' + (f' + `{" ".join(v["overrides"])}`' if v['overrides'] else '')
              for v in study['variants']]
    if study.get('overrides'):
        lines.append(f'- every run: `{" ".join(study["overrides"])}`')
    lines += ['', compare.format_table(*table_cells(rows), markdown=True) if rows else '_No results yet._', '',
              NOTES, '']
    for run in runs:
        if run.status not in ('ok', 'pending'):
            out = os.path.join(study['workdir'], _out_file(run))
            lines += [f'**{run.name}: {run.status}** ({run.detail}). Last lines of `{out}`:', '', '```',
                      tail(out) or '(no output)', '```', '']
    with open(path, 'w', encoding='utf-8') as file:
        file.write('\n'.join(lines))


def _plotted_metric(metrics: Sequence[str], wanted: str) -> str:
    return wanted if wanted in metrics else metrics[0]


def plot_study(path: str, variants: Sequence[str], runs: Sequence[Run], histories: dict[str, compare.RunHistory],
               wanted: str = 'psnr') -> tuple[int, int]:
    """``results.png``: per validation set, the metric's curves (mean ± std over seeds) and the final value per seed.

    Returns:
        tuple[int, int]: The picture's size in pixels.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    datasets = compare._ordered_union([list(h.val) for h in histories.values()])
    figure = Figure(figsize=(compare.PANEL_SIZE[0] * 2, compare.PANEL_SIZE[1] * len(datasets)), dpi=compare.DPI)
    FigureCanvasAgg(figure)
    for row, dataset in enumerate(datasets):
        metric = _plotted_metric(compare._ordered_union([list(h.val.get(dataset, {})) for h in histories.values()]),
                                 wanted)
        curves = {label: [histories[r.name].val.get(dataset, {}).get(metric, {}) for r in runs
                          if r.variant == label and r.name in histories] for label in variants}
        _plot_curves(figure.add_subplot(len(datasets), 2, 2 * row + 1), curves, f'{dataset}: {metric}')
        _plot_seeds(figure.add_subplot(len(datasets), 2, 2 * row + 2), variants, runs, histories, dataset, metric)
    figure.tight_layout()
    figure.savefig(path, dpi=compare.DPI)
    width, height = figure.get_size_inches() * compare.DPI
    return round(width), round(height)


def _plot_curves(axes, curves: dict[str, list[compare.Series]], title: str) -> None:
    for colour, (label, series) in enumerate(curves.items()):
        series = [s for s in series if s]
        if not series:
            continue
        iters = sorted(set.intersection(*(set(s) for s in series)))
        stats = [mean_std([s[i] for s in series]) for i in iters]
        mean = [m for m, _ in stats]
        axes.plot(iters, mean, marker='o', markersize=3, color=f'C{colour % 10}', label=f'{label} (n={len(series)})')
        if len(series) > 1:
            std = [s or 0.0 for _, s in stats]
            axes.fill_between(iters, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                              color=f'C{colour % 10}', alpha=0.2, linewidth=0)
    axes.set_title(f'{title} (mean ± std over seeds)', fontsize=10)
    axes.set_xlabel('iteration', fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)


def _plot_seeds(axes, variants: Sequence[str], runs: Sequence[Run], histories: dict[str, compare.RunHistory],
                dataset: str, metric: str) -> None:
    """Final value per seed (a marker per seed, a thin line joining a seed across variants) and the mean (bar)."""
    seeds = sorted({r.seed for r in runs})
    markers = 'osD^vP*X'
    final: dict[int, dict[int, float]] = {}  # seed -> {variant index: value}
    for run in runs:
        series = histories[run.name].val.get(dataset, {}).get(metric) if run.name in histories else None
        if series:
            final.setdefault(run.seed, {})[variants.index(run.variant)] = series[max(series)]
    for seed, points in final.items():
        offset = 0.08 * (seeds.index(seed) - (len(seeds) - 1) / 2)
        xs = sorted(points)
        axes.plot([x + offset for x in xs], [points[x] for x in xs], color='grey', linewidth=0.6, alpha=0.6)
        for x in xs:
            axes.plot(x + offset, points[x], markers[seeds.index(seed) % len(markers)], color=f'C{x % 10}',
                      markersize=5)
    for x in range(len(variants)):
        values = [points[x] for points in final.values() if x in points]
        if values:
            axes.hlines(sum(values) / len(values), x - 0.3, x + 0.3, color=f'C{x % 10}', linewidth=2)
    for index, seed in enumerate(seeds):  # legend entries for the seeds' markers
        axes.plot([], [], markers[index % len(markers)], color='grey', label=f'seed {seed}')
    axes.set_xticks(range(len(variants)))
    axes.set_xticklabels([v if any(r.variant == v and r.name in histories for r in runs) else f'{v}\n(no result)'
                          for v in variants], fontsize=8)
    axes.set_xlim(-0.6, len(variants) - 0.4)
    axes.set_title(f'{dataset}: final {metric} per seed (bar: mean)', fontsize=10)
    axes.grid(alpha=0.3, axis='y')
    axes.legend(fontsize=7)


# ---------------------------------------------------------------------------------------------- study.json
def versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide the numbers, and this repository's commit if any."""
    from importlib import metadata
    found: dict[str, str | None] = {'python': platform.python_version()}
    for package in ('torch', 'torchvision', 'basicsr', 'mclir_plugin', 'numpy'):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(['git', '-C', repo, 'rev-parse', 'HEAD'], capture_output=True, text=True, check=False)
        found['mclir_plugin_commit'] = head.stdout.strip() or None
    except OSError:  # no git
        found['mclir_plugin_commit'] = None
    return found


def machine() -> dict[str, Any]:
    """The platform, processor and CPU count (and CUDA devices when torch sees any)."""
    import torch
    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {'platform': platform.platform(), 'machine': platform.machine(), 'processor': platform.processor(),
            'cpu_count': os.cpu_count(), 'cuda_devices': cuda}


def load_study(workdir: str) -> dict | None:
    """The study's ``study.json``, or None."""
    path = os.path.join(workdir, STUDY_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding='utf-8') as file:
        return json.load(file)


def save_study(workdir: str, study: dict, runs: Sequence[Run]) -> None:
    """Write ``study.json`` atomically (it is rewritten after every run)."""
    study['runs'] = [{k: v for k, v in asdict(run).items() if k != 'opt'} | {'shell': shell_line(workdir, run)}
                     for run in runs]
    path = os.path.join(workdir, STUDY_FILE)
    with open(path + '.tmp', 'w', encoding='utf-8') as file:
        json.dump(study, file, indent=2)
    os.replace(path + '.tmp', path)


# ---------------------------------------------------------------------------------------------- command line
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
    """Build (or, for ``--collect`` without option files, reload) the study and its runs."""
    if args.baseline is None:
        if not (args.collect and previous):
            raise AblateError('Give the baseline option file with -opt (only --collect on an existing study '
                              f'folder can do without; {os.path.join(workdir, STUDY_FILE)} '
                              f'{"exists" if previous else "does not exist"}).')
        fields = ('name', 'variant', 'seed', 'option_file', 'state', 'status', 'detail', 'attempts')
        return previous, [Run(**{k: r[k] for k in fields}) for r in previous['runs']]
    if not args.spn and not args.variant:
        raise AblateError('Nothing to compare with the baseline: give --spn FILE and/or --variant LABEL ... .')
    study_name = args.study or os.path.basename(workdir)
    check_label(study_name, set(), 'Study name (--study, or the --workdir folder\'s name)')
    variants = build_variants(args.baseline, args.spn, args.variant, args.override, os.path.abspath(args.data_root))
    iters = check_variants(variants, args.iters, args.allow_data_mismatch)
    runs = plan_runs(study_name, variants, args.seeds, iters)
    old = {r['name']: r for r in (previous or {}).get('runs', [])}
    for run in runs:
        run.state, run.detail = run_state(workdir, run.name)
        run.attempts = old.get(run.name, {}).get('attempts', [])
        if run.state == 'fresh' and old.get(run.name, {}).get('status') in ('failed', 'interrupted'):
            run.state = 'retry'
        run.status = 'ok' if run.state == 'done' else 'pending'
        write_run_options(workdir, run, _describe(next(v for v in variants if v.label == run.variant)),
                          args.override)
    study = {'study': study_name, 'workdir': workdir, 'iters': iters, 'seeds': list(args.seeds),
             'variants': [{'label': v.label, 'option_file': v.option_file, 'overrides': v.overrides}
                          for v in variants],
             'overrides': list(args.override), 'data_root': os.path.abspath(args.data_root),
             'invocations': (previous or {}).get('invocations', [])}
    return study, runs


def _describe(variant: Variant) -> str:
    return variant.option_file + (f' + {" ".join(variant.overrides)}' if variant.overrides else '')


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


def report(workdir: str, study: dict, runs: Sequence[Run], metric: str) -> None:
    """Read the finished runs' logs, print the table and write results.csv/.md/.png."""
    histories = read_results(workdir, runs)
    labels = [v['label'] for v in study['variants']]
    rows = summarise_study(labels, runs, histories)
    print(f'\nValidation metrics, {study["iters"]} iterations, seeds {" ".join(map(str, study["seeds"]))}; '
          f'baseline: {labels[0]}')
    print(compare.format_table(*table_cells(rows)) if rows else 'No finished run has validation results yet.')
    print(NOTES)
    write_csv(os.path.join(workdir, 'results.csv'), rows)
    write_markdown(os.path.join(workdir, 'results.md'), study, runs, rows)
    outputs = 'results.csv and results.md'
    if histories and any(h.val for h in histories.values()):
        width, height = plot_study(os.path.join(workdir, 'results.png'), labels, runs, histories, metric)
        outputs = f'results.csv, results.md and results.png ({width}x{height} px)'
    for run in runs:
        if run.status not in ('ok', 'pending'):
            last = (tail(os.path.join(workdir, _out_file(run)), 1) or '(no output)').strip()
            print(f'{run.name}: {run.status.upper()} ({run.detail}): {last}\n  see {_out_file(run)}')
    print(f'\nWrote {os.path.join(workdir, "")}{outputs}')


def ablate_command(argv: Sequence[str]) -> list[str]:
    """The command line of this tool with ``argv``: the repository's tools/ablate.py, else the module."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools', 'ablate.py')
    return [sys.executable, *([script] if os.path.isfile(script) else ['-m', 'mclir_plugin.commands.ablate']), *argv]


def execute(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Plan, then train, print or collect, then report; return the exit status."""
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    study, runs = plan(args, workdir, load_study(workdir))
    mode = 'collect' if args.collect else args.launch
    study['invocations'].append({'time': time.strftime('%Y-%m-%d %H:%M:%S'), 'mode': mode, 'cwd': os.getcwd(),
                                 'argv': ablate_command(argv)})
    study['versions'], study['machine'] = versions(), machine()
    print_plan(study, runs)
    save_study(workdir, study, runs)
    if mode == 'print':
        return _print_commands(workdir, study, runs)
    if mode == 'collect':
        _mark_unfinished(workdir, runs)
    else:
        _train_all(workdir, study, runs)
    save_study(workdir, study, runs)
    report(workdir, study, runs, args.metric)
    return 0 if all(r.status == 'ok' for r in runs) else 1


def _print_commands(workdir: str, study: dict, runs: Sequence[Run]) -> int:
    print('\nCommands (one per unfinished run; each resumes if requeued):')
    for run in runs:
        print(f'# {run.name}: done' if run.state == 'done' else shell_line(workdir, run))
    print(f'\nWhen they have finished: {shlex.join(ablate_command(["--workdir", workdir, "--collect"]))}')
    return 0


def _mark_unfinished(workdir: str, runs: Sequence[Run]) -> None:
    for run in runs:
        state, detail = run_state(workdir, run.name)
        if state != 'done':
            last = tail(os.path.join(workdir, _out_file(run)))
            run.status = 'incomplete' if state == 'resume' or last else 'pending'
            run.detail = 'not finished' + (f': training states {detail}' if state == 'resume' else '')
        else:
            run.status = 'ok'


def _train_all(workdir: str, study: dict, runs: Sequence[Run]) -> None:
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
    """The command line (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return execute(args, argv)
    except (AblateError, compare.CompareError) as err:
        print(f'tools/ablate.py: error: {err}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == '__main__':
    sys.exit(main())
