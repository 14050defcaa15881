"""The numbers of the result tables: best and last values of a run, and statistics over the seeds of a study.

"Best" is the highest value, or the lowest for metrics where lower is better (names in :data:`LOWER_IS_BETTER`); on
ties the earliest iteration. Over seeds: mean and sample standard deviation (n - 1), the difference of the means to
the baseline, and the paired difference (mean over common seeds of variant - baseline, with its standard error
std / sqrt(n)); with a reference variant (``ablate``: the SPN twin), the paired difference to it too, so that a
cheaper variant of SPN is compared with full SPN as well as with the baseline. Each row also carries the wall time
of its runs (the seconds of their training attempts, as ``study.json`` records them).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from mclir_plugin.studies.plan import Run
from mclir_plugin.studies.run_logs import RunHistory, Series, ordered_union

#: Validation metrics where a smaller value is better (matched on the metric's name in ``val.metrics``).
LOWER_IS_BETTER = frozenset({'niqe', 'lpips', 'fid', 'dists', 'brisque', 'pi', 'mse', 'mae'})


def best_point(series: Series, metric: str) -> tuple[int, float]:
    """``(iteration, value)`` of the best point of ``series`` for ``metric`` (the earliest on ties)."""
    lower = metric.lower() in LOWER_IS_BETTER
    best_iter = min(series, key=lambda i: (series[i] if lower else -series[i], i))
    return best_iter, series[best_iter]


def compare_rows(runs: Sequence[RunHistory]) -> list[dict]:
    """One row per dataset x metric x run: best and last with their iterations, and deltas against ``runs[0]``.

    Returns:
        list[dict]: Keys ``dataset, metric, run, baseline, best, best_iter, last, last_iter, delta_best,
        delta_last``; the deltas are None on the baseline's rows and where the baseline lacks the dataset or metric.
    """
    rows = []
    for dataset in ordered_union(run.val for run in runs):
        for metric in ordered_union(run.val.get(dataset, {}) for run in runs):
            base = runs[0].val.get(dataset, {}).get(metric)
            base_best, base_last = (best_point(base, metric)[1], base[max(base)]) if base else (None, None)
            for index, run in enumerate(runs):
                series = run.val.get(dataset, {}).get(metric)
                if not series:
                    continue
                best_iter, best = best_point(series, metric)
                last_iter = max(series)
                compared = index > 0 and base is not None
                rows.append({'dataset': dataset, 'metric': metric, 'run': run.label, 'baseline': index == 0,
                             'best': best, 'best_iter': best_iter, 'last': series[last_iter], 'last_iter': last_iter,
                             'delta_best': best - base_best if compared else None,
                             'delta_last': series[last_iter] - base_last if compared else None})
    return rows


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1; None below two values); ``(None, None)`` for no value."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def paired_difference(base: Mapping[int, float], other: Mapping[int, float]) -> tuple[float | None, float | None, int]:
    """Mean of the per-seed differences ``other - base`` over the common seeds, its standard error, and n."""
    diffs = [other[s] - base[s] for s in sorted(set(base) & set(other))]
    mean, std = mean_std(diffs)
    return mean, (std / math.sqrt(len(diffs)) if std is not None else None), len(diffs)


def final_and_best(history: RunHistory) -> dict[tuple[str, str], dict[str, tuple[float, int]]]:
    """``{(dataset, metric): {'final': (value, iter), 'best': (value, iter)}}`` of one run."""
    return {(row['dataset'], row['metric']): {'final': (row['last'], row['last_iter']),
                                              'best': (row['best'], row['best_iter'])}
            for row in compare_rows([history])}


def study_rows(variants: Sequence[str], runs: Sequence[Run], histories: Mapping[str, RunHistory],
               reference: str | None = None) -> list[dict]:
    """The rows of a study: one per dataset x metric x kind (``final``, ``best``) x variant.

    Args:
        variants: The variant labels, the baseline first.
        runs: Every run of the study (those without a history count in ``n_runs`` and ``status``).
        histories: The histories of the finished runs, by run name.
        reference: A second variant to pair the others with (not the baseline, nor itself). Defaults to None.

    Returns:
        list[dict]: Keys ``dataset, metric, kind, variant, status, n_ok, n_runs, mean, std, delta_mean,
        paired_mean, paired_se, paired_n, per_seed`` (``per_seed``: ``seed:value@iteration;...``),
        ``ref_paired_mean, ref_paired_se, ref_paired_n`` (None, None, 0 without a reference, on the baseline and on
        the reference), ``seconds_mean`` and ``seconds_per_seed`` (``seed:seconds;...``, training time of each
        run summed over its attempts).
    """
    values = {run.name: final_and_best(h) for run in runs if (h := histories.get(run.name))}
    rows = []
    for dataset, metric in ordered_union([list(v) for v in values.values()]):
        for kind in ('final', 'best'):
            seeds = {label: {r.seed: values[r.name][(dataset, metric)][kind] for r in runs
                             if r.variant == label and (dataset, metric) in values.get(r.name, {})}
                     for label in variants}
            base = {s: v for s, (v, _) in seeds[variants[0]].items()}
            ref = {s: v for s, (v, _) in seeds[reference].items()} if reference in seeds else None
            for label in variants:
                variant_runs = [r for r in runs if r.variant == label]
                mine = {s: v for s, (v, _) in seeds[label].items()}
                paired_to_ref = ref is not None and label not in (variants[0], reference)
                r_mean, r_se, r_n = paired_difference(ref, mine) if paired_to_ref else (None, None, 0)
                rows.append({'dataset': dataset, 'metric': metric, 'kind': kind, 'variant': label,
                             'status': variant_status(variant_runs), 'n_runs': len(variant_runs),
                             **_seed_statistics(seeds[label], base, baseline=label == variants[0]),
                             'ref_paired_mean': r_mean, 'ref_paired_se': r_se, 'ref_paired_n': r_n,
                             **_run_seconds(variant_runs)})
    return rows


def _run_seconds(runs: Sequence[Run]) -> dict:
    """``seconds_mean`` and ``seconds_per_seed`` of the runs that have timed attempts (None and '' if none has)."""
    seconds = {r.seed: sum(a['seconds'] for a in r.attempts if a.get('seconds') is not None)
               for r in runs if any(a.get('seconds') is not None for a in r.attempts)}
    return {'seconds_mean': mean_std(list(seconds.values()))[0],
            'seconds_per_seed': ';'.join(f'{s}:{t:.1f}' for s, t in sorted(seconds.items()))}


def _seed_statistics(seeds: Mapping[int, tuple[float, int]], base: Mapping[int, float], baseline: bool) -> dict:
    """The statistics columns of one variant's row from its ``{seed: (value, iteration)}``."""
    mine = {s: v for s, (v, _) in seeds.items()}
    mean, std = mean_std(list(mine.values()))
    base_mean = mean_std(list(base.values()))[0]
    p_mean, p_se, p_n = paired_difference(base, mine) if not baseline else (None, None, 0)
    return {'n_ok': len(mine), 'mean': mean, 'std': std,
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
