"""The numbers of compare's and ablate's tables, on hand-made histories (no training)."""
import math
import statistics

import pytest

from mclir_plugin.studies.plan import Run
from mclir_plugin.studies.report import study_cells
from mclir_plugin.studies.run_logs import RunHistory
from mclir_plugin.studies.statistics import (best_point, compare_rows, mean_std, paired_difference, study_rows,
                                             variant_status)


def history(label: str, val: dict) -> RunHistory:
    return RunHistory(label, f'experiments/{label}', 'log', [], {}, val)


def test_mean_std_is_the_sample_statistics():
    values = [27.1, 27.4, 26.9]
    mean, std = mean_std(values)
    assert mean == pytest.approx(statistics.mean(values), abs=1e-12)
    assert std == pytest.approx(statistics.stdev(values), abs=1e-12)
    assert mean_std([3.0]) == (3.0, None) and mean_std([]) == (None, None)


def test_paired_difference_uses_only_the_seeds_both_have():
    base, other = {0: 27.0, 1: 27.5, 2: 26.8, 3: 30.0}, {0: 27.2, 1: 27.6, 2: 27.1, 7: 0.0}
    mean, se, n = paired_difference(base, other)
    diffs = [0.2, 0.1, 0.3]
    assert n == 3 and mean == pytest.approx(statistics.mean(diffs))
    assert se == pytest.approx(statistics.stdev(diffs) / math.sqrt(3))
    assert paired_difference({0: 1.0}, {0: 2.0}) == (1.0, None, 1)
    assert paired_difference({0: 1.0}, {1: 2.0}) == (None, None, 0)


def test_best_is_the_earliest_highest_or_for_lpips_lowest():
    series = {2: 20.0, 4: 22.0, 6: 22.0, 8: 21.0}
    assert best_point(series, 'psnr') == (4, 22.0)
    assert best_point({2: 0.3, 4: 0.2, 6: 0.2}, 'LPIPS') == (4, 0.2)


def test_compare_rows_give_deltas_to_the_first_run_where_it_has_the_metric():
    runs = [history('base', {'Set5': {'psnr': {5: 30.0, 10: 31.0}}}),
            history('spn', {'Set5': {'psnr': {5: 30.5, 10: 30.9}, 'ssim': {10: 0.9}}})]
    rows = compare_rows(runs)
    assert [(r['metric'], r['run']) for r in rows] == [('psnr', 'base'), ('psnr', 'spn'), ('ssim', 'spn')]
    assert rows[0]['delta_best'] is None and rows[0]['baseline']
    assert (rows[1]['best'], rows[1]['best_iter'], rows[1]['last'], rows[1]['last_iter']) == (30.9, 10, 30.9, 10)
    assert rows[1]['delta_best'] == pytest.approx(-0.1) and rows[1]['delta_last'] == pytest.approx(-0.1)
    assert rows[2]['delta_last'] is None  # the baseline has no ssim


def test_study_rows_count_failed_runs_and_pair_over_common_seeds():
    finals = {('baseline', 0): 27.0, ('baseline', 1): 27.4, ('spn', 0): 27.3}
    runs = [Run(f't_{v}_s{s}', v, s, f'options/t_{v}_s{s}.yml', status='ok' if (v, s) in finals else 'failed')
            for v in ('baseline', 'spn') for s in (0, 1)]
    histories = {f't_{v}_s{s}': history(f't_{v}_s{s}', {'val': {'psnr': {2: value - 1, 4: value}}})
                 for (v, s), value in finals.items()}
    rows = study_rows(['baseline', 'spn'], runs, histories)
    assert [(r['kind'], r['variant']) for r in rows] == [('final', 'baseline'), ('final', 'spn'),
                                                         ('best', 'baseline'), ('best', 'spn')]
    base, spn = rows[0], rows[1]
    assert (base['status'], base['n_ok'], base['n_runs'], base['paired_n']) == ('ok', 2, 2, 0)
    assert base['mean'] == pytest.approx(27.2) and base['std'] == pytest.approx(statistics.stdev([27.0, 27.4]))
    assert (spn['status'], spn['n_ok'], spn['std']) == ('1/2 ok; failed: s1', 1, None)
    assert spn['delta_mean'] == pytest.approx(27.3 - 27.2)
    assert (spn['paired_mean'], spn['paired_se'], spn['paired_n']) == (pytest.approx(0.3), None, 1)
    assert spn['per_seed'] == '0:27.3@4' and base['per_seed'] == '0:27.0@4;1:27.4@4'


def test_study_rows_pair_cheap_variants_with_the_reference_and_carry_wall_times():
    finals = {('baseline', 0): 27.0, ('baseline', 1): 27.4, ('spn', 0): 27.3, ('spn', 1): 27.5,
              ('cheap', 0): 27.1, ('cheap', 1): 27.6}
    runs = [Run(f't_{v}_s{s}', v, s, f'options/t_{v}_s{s}.yml', status='ok',
                attempts=[{'seconds': 10.0 * (s + 1)}, {'seconds': 1.5}] if v == 'cheap' else [])
            for (v, s) in finals]
    histories = {r.name: history(r.name, {'val': {'psnr': {4: finals[(r.variant, r.seed)]}}}) for r in runs}
    rows = study_rows(['baseline', 'spn', 'cheap'], runs, histories, reference='spn')
    final = {r['variant']: r for r in rows if r['kind'] == 'final'}
    cheap = final['cheap']
    diffs = [27.1 - 27.3, 27.6 - 27.5]
    assert cheap['ref_paired_n'] == 2 and cheap['ref_paired_mean'] == pytest.approx(statistics.mean(diffs))
    assert cheap['ref_paired_se'] == pytest.approx(statistics.stdev(diffs) / math.sqrt(2))
    assert cheap['paired_mean'] == pytest.approx(statistics.mean([0.1, 0.2]))  # still against the baseline
    assert final['spn']['ref_paired_n'] == 0 and final['baseline']['ref_paired_mean'] is None
    assert cheap['seconds_per_seed'] == '0:11.5;1:21.5' and cheap['seconds_mean'] == pytest.approx(16.5)
    assert final['spn']['seconds_mean'] is None  # no timed attempt
    headers, cells = study_cells(rows)
    assert headers[-2:] == ['vs spn: paired Δ final ± SE', 'time']
    row = next(c for c in cells if c[2] == 'cheap')
    assert row[-2].startswith('-0.0500 ± ') and row[-2].endswith('(n=2)') and row[-1] == '16 s'


def test_variant_status_names_the_seeds_of_each_outcome():
    runs = [Run('a', 'v', 0, 'x', status='ok'), Run('b', 'v', 1, 'x', status='failed'),
            Run('c', 'v', 2, 'x', status='pending')]
    assert variant_status(runs[:1]) == 'ok'
    assert variant_status(runs) == '1/3 ok; failed: s1; pending: s2'
    assert variant_status(runs[1:2]) == 'failed'
