"""Compare training runs: validation metrics (best, last, difference to a baseline) and curves.

``python tools/compare.py experiments/baseline experiments/spn [more runs ...]`` (or ``mclir-compare``) reads each
run folder made by ``tools/train.py`` (BasicSR's ``experiments/<name>``) and writes, under ``--out`` (default
``results/compare_<first>_vs_<second>``, or ``..._vs_<k>_runs`` for more than two):

* ``compare.csv``: one row per dataset x metric x run, columns ``dataset, metric, run, best, best_iter, last,
  last_iter, delta_best, delta_last``; the deltas are ``run - baseline`` (the first run given; in dB for PSNR),
  empty on the baseline's own rows and where the baseline lacks that dataset or metric;
* ``compare.md``: the same table in Markdown, with the source of each run;
* ``compare.png``: one panel per validation dataset (``--metric``, PSNR by default, over iterations) and one per
  training loss among ``l_pix``, ``l_neg``, ``l_neg_ratio`` that a run logged; each panel is 500 x 350 pixels, three
  panels per row.

The table is also printed. Options: ``--labels`` (names of the runs in the outputs, default the folder names),
``--source auto|log|tb``, ``--tb-root`` (the ``tb_logger`` folder, default ``<run>/../../tb_logger``),
``--metric`` (the validation metric plotted), ``--out``.

This module is the command line; the work is done by :mod:`mclir_plugin.studies`: the logs and events are read by
:mod:`~mclir_plugin.studies.run_logs` (its docstring says which lines, and how resumed runs are merged), best and
last by :mod:`~mclir_plugin.studies.statistics` (lower is better for the metrics in its ``LOWER_IS_BETTER``),
the table by :mod:`~mclir_plugin.studies.report`, the picture by :mod:`~mclir_plugin.studies.plots`.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from mclir_plugin.studies import StudyError
from mclir_plugin.studies.plots import plot_runs
from mclir_plugin.studies.report import compare_cells, write_compare_csv, write_compare_markdown
from mclir_plugin.studies.run_logs import RunHistory, describe_source, load_run
from mclir_plugin.studies.statistics import compare_rows
from mclir_plugin.utils.tables import format_table


def default_out(runs: Sequence[RunHistory]) -> str:
    """``results/compare_<first>_vs_<second>`` (``_vs_<k>_runs`` for more than two runs)."""
    first = runs[0].label
    if len(runs) == 1:
        return os.path.join('results', f'compare_{first}')
    rest = runs[1].label if len(runs) == 2 else f'{len(runs) - 1}_runs'
    return os.path.join('results', f'compare_{first}_vs_{rest}')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='tools/compare.py', description='Compare the validation metrics and curves of BasicSR training runs.',
        epilog='The first run is the baseline of the differences. Outputs: compare.csv, compare.md, compare.png.')
    parser.add_argument('runs', nargs='+', help='run folders experiments/<name> (or tb_logger/<name> folders)')
    parser.add_argument('--labels', nargs='+', help='names of the runs in the outputs (default: folder names)')
    parser.add_argument('--out', help='output folder (default results/compare_<first>_vs_<second>)')
    parser.add_argument('--source', choices=('auto', 'log', 'tb'), default='auto',
                        help='text logs, TensorBoard events, or auto: logs, else events (default auto)')
    parser.add_argument('--tb-root', help='folder holding tb_logger/<name> event folders '
                                          '(default <run>/../../tb_logger)')
    parser.add_argument('--metric', default='psnr', help='validation metric of the curves (default psnr)')
    return parser


def compare(args: argparse.Namespace) -> str:
    """Read the runs, print the table and write the outputs; return the closing line's list of what was written."""
    if args.labels and len(args.labels) != len(args.runs):
        raise StudyError(f'--labels has {len(args.labels)} names for {len(args.runs)} runs: give one per run.')
    labels = args.labels or [None] * len(args.runs)
    runs = [load_run(path, label, args.source, args.tb_root) for path, label in zip(args.runs, labels)]
    out = args.out or default_out(runs)
    os.makedirs(out, exist_ok=True)
    rows = compare_rows(runs)
    for run in runs:
        print(f'{run.label}: {run.path} ({describe_source(run)})')
    print(f'\nBaseline {runs[0].label}; Δ = run - baseline (dB for PSNR)')
    print(format_table(*compare_cells(rows)) if rows else 'No validation results in these runs.')
    write_compare_csv(os.path.join(out, 'compare.csv'), rows)
    write_compare_markdown(os.path.join(out, 'compare.md'), runs, rows)
    width, height = plot_runs(runs, os.path.join(out, 'compare.png'), args.metric)
    return f'{out}/compare.csv, compare.md and compare.png ({width}x{height} px)'


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison command line (see the module docstring); return the exit status (2: an error)."""
    args = build_parser().parse_args(argv)
    try:
        written = compare(args)
    except StudyError as err:
        print(f'tools/compare.py: error: {err}', file=sys.stderr)
        return 2
    print(f'\nWrote {written}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
