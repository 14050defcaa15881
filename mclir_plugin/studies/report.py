"""The result tables of ``compare`` and ``ablate``: printed, in Markdown and as CSV (:mod:`mclir_plugin.utils.tables`).

Values are printed with 4 decimals, as BasicSR logs them, and written to CSV at full precision.
"""
from __future__ import annotations

import os
from typing import Sequence

from mclir_plugin.studies.plan import Run
from mclir_plugin.studies.run_logs import RunHistory, describe_source
from mclir_plugin.studies.runner import out_file, tail
from mclir_plugin.utils.tables import format_table, number, write_csv

#: Columns of ``compare.csv`` (rows of :func:`mclir_plugin.studies.statistics.compare_rows`).
COMPARE_COLUMNS = ('dataset', 'metric', 'run', 'best', 'best_iter', 'last', 'last_iter', 'delta_best', 'delta_last')
#: Columns of ``results.csv`` (rows of :func:`mclir_plugin.studies.statistics.study_rows`).
STUDY_COLUMNS = ('dataset', 'metric', 'kind', 'variant', 'status', 'n_ok', 'n_runs', 'mean', 'std', 'delta_mean',
                 'paired_mean', 'paired_se', 'paired_n', 'per_seed', 'ref_paired_mean', 'ref_paired_se', 'ref_paired_n',
                 'seconds_mean', 'seconds_per_seed')
STUDY_NOTES = ('final: the last validation of each run; best: its best validation. mean ± std over seeds (sample '
               'std, n - 1). Δ: difference of the means to the baseline (dB for PSNR). paired Δ: mean over seeds of '
               '(variant - baseline) with the same seed, ± its standard error (std / √n). With a few seeds the SE is '
               'itself rough: read |paired Δ| below about 2 SE as no evidence of a difference. vs spn: the same paired '
               'difference to the SPN twin (variant spn) instead of the baseline. time: mean wall time of a run '
               '(training, all attempts).')


# ---------------------------------------------------------------------------------------------- compare
def compare_cells(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the comparison table: best and last per dataset x metric x run, and their deltas."""
    headers = ['dataset', 'metric', 'run', 'best', '@iter', 'last', '@iter', 'Δbest', 'Δlast']
    missing = {True: 'baseline', False: 'n/a'}  # n/a: the baseline has no such dataset or metric
    cells = [[r['dataset'], r['metric'], r['run'], number(r['best']), str(r['best_iter']), number(r['last']),
              str(r['last_iter']), number(r['delta_best'], True) or missing[r['baseline']],
              number(r['delta_last'], True) or missing[r['baseline']]] for r in rows]
    return headers, cells


def write_compare_csv(path: str, rows: Sequence[dict]) -> None:
    """``compare.csv``: :data:`COMPARE_COLUMNS`; deltas empty on the baseline's rows."""
    write_csv(path, COMPARE_COLUMNS, rows)


def write_compare_markdown(path: str, runs: Sequence[RunHistory], rows: Sequence[dict]) -> None:
    """``compare.md``: the runs and their sources, then the table."""
    lines = ['# Run comparison', '', f'Baseline: `{runs[0].label}`. Δ = run − baseline (dB for PSNR).', '']
    lines += [f'- `{run.label}`: {run.path} ({describe_source(run)})' for run in runs]
    lines += ['', format_table(*compare_cells(rows), markdown=True) if rows else '_No validation results._', '']
    with open(path, 'w', encoding='utf-8') as file:
        file.write('\n'.join(lines))


# ---------------------------------------------------------------------------------------------- study
def study_cells(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the study table: one line per dataset x metric x variant, final and best side by side."""
    headers = ['dataset', 'metric', 'variant', 'runs', 'final mean ± std', 'Δ final', 'paired Δ final ± SE',
               'best mean ± std', 'Δ best', 'paired Δ best ± SE']
    with_ref = any(r['ref_paired_n'] for r in rows)
    if with_ref:
        headers += ['vs spn: paired Δ final ± SE']
    headers += ['time']
    by_key = {(r['dataset'], r['metric'], r['variant'], r['kind']): r for r in rows}
    cells = []
    for dataset, metric, variant, kind in by_key:
        if kind != 'final':
            continue
        final, best = by_key[(dataset, metric, variant, 'final')], by_key[(dataset, metric, variant, 'best')]
        runs = f'{final["n_ok"]}/{final["n_runs"]}' + ('' if final['status'] == 'ok' else f' ({final["status"]})')
        cells.append([dataset, metric, variant, runs, *_statistics_cells(final), *_statistics_cells(best),
                      *([_paired_cell(final, 'ref_')] if with_ref else []),
                      f'{final["seconds_mean"]:.0f} s' if final['seconds_mean'] is not None else ''])
    return headers, cells


def _paired_cell(row: dict, prefix: str = '') -> str:
    """``+0.1234 ± 0.0100 (n=3)``: a paired difference with its SE and count ('' without one)."""
    pair = number(row[prefix + 'paired_mean'], True)
    if pair:
        se = row[prefix + 'paired_se']
        pair += (f' ± {se:.4f}' if se is not None else '') + f' (n={row[prefix + "paired_n"]})'
    return pair


def _statistics_cells(row: dict) -> list[str]:
    spread = f' ± {row["std"]:.4f}' if row['std'] is not None else ''
    pair = _paired_cell(row)
    delta = 'baseline' if row['variant'] == 'baseline' else number(row['delta_mean'], True)
    return [number(row['mean']) + spread, delta, pair]


def write_study_csv(path: str, rows: Sequence[dict]) -> None:
    """``results.csv``: :data:`STUDY_COLUMNS` at full precision; ``per_seed`` is ``seed:value@iteration;...``."""
    write_csv(path, STUDY_COLUMNS, rows)


def write_study_markdown(path: str, study: dict, runs: Sequence[Run], rows: Sequence[dict]) -> None:
    """``results.md``: the variants, the table, notes on the statistics, and the failed runs with their log tails."""
    lines = [f'# Ablation study `{study["study"]}`', '',
             f'{study["iters"]} iterations, seeds {", ".join(map(str, study["seeds"]))}.', '']
    lines += [f'- `{v["label"]}`: {v["option_file"]}' + (f' + `{" ".join(v["overrides"])}`' if v['overrides'] else '')
              for v in study['variants']]
    if study.get('overrides'):
        lines.append(f'- every run: `{" ".join(study["overrides"])}`')
    lines += ['', format_table(*study_cells(rows), markdown=True) if rows else '_No results yet._', '',
              STUDY_NOTES, '']
    for run in runs:
        if run.status not in ('ok', 'pending'):
            out = os.path.join(study['workdir'], out_file(run))
            lines += [f'**{run.name}: {run.status}** ({run.detail}). Last lines of `{out}`:', '', '```',
                      tail(out) or '(no output)', '```', '']
    with open(path, 'w', encoding='utf-8') as file:
        file.write('\n'.join(lines))
