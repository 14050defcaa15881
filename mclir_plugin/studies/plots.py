"""The result pictures: ``compare.png`` (curves of runs) and ``results.png`` (a study over seeds).

A panel is :data:`PANEL_SIZE` inches at :data:`DPI`: 500 x 350 pixels. Drawn with matplotlib's Agg canvas (no
display needed).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from mclir_plugin.studies.errors import StudyError
from mclir_plugin.studies.plan import Run
from mclir_plugin.studies.run_logs import RunHistory, Series, ordered_union
from mclir_plugin.studies.statistics import mean_std

#: Training curves plotted, in this order, when a run logged them.
TRAIN_KEYS = ('l_pix', 'l_neg', 'l_neg_ratio')
#: Size of one plot panel in inches, and the resolution: a panel is 500 x 350 pixels.
PANEL_SIZE = (5.0, 3.5)
DPI = 100
PANELS_PER_ROW = 3


def _figure(cols: int, rows: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str) -> tuple[int, int]:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    width, height = figure.get_size_inches() * DPI
    return round(width), round(height)


def plot_runs(runs: Sequence[RunHistory], path: str, metric: str = 'psnr') -> tuple[int, int]:
    """``compare.png``: write the curves to a PNG; return its size ``(width, height)`` in pixels.

    One panel per validation dataset (``metric`` if a run has it there, else that dataset's first metric), then one
    per training key of :data:`TRAIN_KEYS` that some run logged; each run is one line, :data:`PANELS_PER_ROW` panels
    per row.

    Raises:
        StudyError: when no run has anything to plot.
    """
    panels = []
    for dataset in ordered_union(run.val for run in runs):
        names = ordered_union(run.val.get(dataset, {}) for run in runs)
        shown = metric if metric in names else names[0]
        panels.append((f'{dataset}: {shown}', [run.val.get(dataset, {}).get(shown, {}) for run in runs]))
    panels += [(key, [run.train.get(key, {}) for run in runs]) for key in TRAIN_KEYS
               if any(run.train.get(key) for run in runs)]
    if not panels:
        raise StudyError('Nothing to plot: no run has validation results or training losses in its logs.')
    cols = min(PANELS_PER_ROW, len(panels))
    rows = math.ceil(len(panels) / cols)
    figure = _figure(cols, rows)
    for index, (title, curves) in enumerate(panels, start=1):
        axes = figure.add_subplot(rows, cols, index)
        for colour, (run, series) in enumerate(zip(runs, curves)):
            if series:  # colour by run index: a run keeps its colour in panels where others have no curve
                axes.plot(list(series), list(series.values()), marker='o' if len(series) <= 30 else None,
                          markersize=3, color=f'C{colour % 10}', label=run.label)
        axes.set_title(title, fontsize=10)
        axes.set_xlabel('iteration', fontsize=9)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    return _save(figure, path)


def plot_study(path: str, variants: Sequence[str], runs: Sequence[Run], histories: Mapping[str, RunHistory],
               wanted: str = 'psnr') -> tuple[int, int]:
    """``results.png``: per validation set, the metric's curves (mean ± std over seeds) and the final value per seed.

    Args:
        path: The PNG to write.
        variants: The variant labels, the baseline first.
        runs: Every run of the study.
        histories: The histories of the finished runs, by run name.
        wanted: The metric drawn where a validation set has it, else its first metric. Defaults to ``'psnr'``.

    Returns:
        tuple[int, int]: The picture's size in pixels.
    """
    datasets = ordered_union([list(h.val) for h in histories.values()])
    figure = _figure(2, len(datasets))
    for row, dataset in enumerate(datasets):
        metrics = ordered_union([list(h.val.get(dataset, {})) for h in histories.values()])
        metric = wanted if wanted in metrics else metrics[0]
        curves = {label: [histories[r.name].val.get(dataset, {}).get(metric, {}) for r in runs
                          if r.variant == label and r.name in histories] for label in variants}
        _plot_curves(figure.add_subplot(len(datasets), 2, 2 * row + 1), curves, f'{dataset}: {metric}')
        _plot_seeds(figure.add_subplot(len(datasets), 2, 2 * row + 2), variants, runs, histories, dataset, metric)
    return _save(figure, path)


def _plot_curves(axes, curves: Mapping[str, list[Series]], title: str) -> None:
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


def _plot_seeds(axes, variants: Sequence[str], runs: Sequence[Run], histories: Mapping[str, RunHistory],
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
