"""The SPN step benchmark (``mclir_plugin.commands.benchmark``, ``tools/benchmark_spn.py``) end to end on a tiny
SwinIR: every variant timed, the ratios, the memory columns, and the cost table's rows (each cheap option alone
and combined, a refused one printed as skipped)."""
from __future__ import annotations

import argparse
import contextlib
import io
import re

import pytest
import torch
import yaml

from conftest import VGG16_FILE_NAME

from mclir_plugin.archs.presets import network_preset
from mclir_plugin.commands import benchmark

ROWS = [*benchmark.DEFAULT_ROWS, 'neg_per_step=3']  # the table, and one the model refuses at N = 2


@pytest.fixture(scope='module')
def printed(tmp_path_factory, vgg16_file) -> str:
    """One run (in this process: no second import of torch and BasicSR) at N = 2, with ``--memory``."""
    folder = tmp_path_factory.mktemp('benchmark')
    home = folder / 'torch_home' / 'hub' / 'checkpoints'
    home.mkdir(parents=True)
    (home / VGG16_FILE_NAME).symlink_to(vgg16_file)
    opt = {'model_type': 'MCLIRModel', 'scale': 4, 'network_g': network_preset('swinir_tiny', depths=[1]),
           'mclir': {'base_model': 'SwinIRModel'}, 'train': {'pixel_opt': {'type': 'SPNLoss', 'neg_weight': 0.01}}}
    opt_file = folder / 'tiny.yml'
    opt_file.write_text(yaml.safe_dump(opt))
    out, threads = io.StringIO(), torch.get_num_threads()
    try:
        with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):  # (capsys is per function)
            patch.setenv('TORCH_HOME', str(folder / 'torch_home'))
            benchmark.main(['-opt', str(opt_file), '--patch', '16', '--batch', '2', '--negatives', '2', '--steps',
                            '1', '--warmup', '0', '--threads', '1', '--memory', '--options', *ROWS])
    finally:
        torch.set_num_threads(threads)  # --threads sets this process's
    return out.getvalue()


def test_benchmark_prints_every_variant_ratio_and_memory(printed):
    assert 'SwinIR (SwinIRModel), x4, output patch 16, batch 2' in printed
    block = printed.split('\nN = ')[1]
    assert block.startswith('2:')
    main = block.split('cost table')[0]
    ms = {name: float(v) for name, v in re.findall(r'^  (\w+)\s+([0-9.]+)', main, re.M)}
    assert set(ms) == {'plain', 'official', 'plugin', 'neg_forwards', 'vgg_out_fwd_bwd', 'vgg_negatives',
                       'neg_forwards_eager'} and all(v > 0 for v in ms.values())
    ratios = dict(re.findall(r'^  (\S+)\s+\w+ / \w+\s+([0-9.]+)x', main, re.M))
    assert set(ratios) == {'(c)/(a)', '(b)/(c)', '(c)/((a)+(d))'}
    # the ratios are of the unrounded medians; the printed ms are rounded to 0.1
    parts = ms['plain'] + ms['neg_forwards'] + ms['vgg_out_fwd_bwd'] + ms['vgg_negatives']
    for key, expected in (('(c)/(a)', ms['plugin'] / ms['plain']), ('(b)/(c)', ms['official'] / ms['plugin']),
                          ('(c)/((a)+(d))', ms['plugin'] / parts)):
        assert abs(float(ratios[key]) / expected - 1) < 0.05, (key, ratios[key], expected)
    saved = {n: float(v) for n, v in re.findall(r'^  (\w+)\s+[0-9.]+\s+saved for backward\s+([0-9.]+) MiB', main,
                                                re.M)}
    peak = {n: float(v) for n, v in re.findall(r'^  (\w+)\s+.*peak\s+([0-9.]+) MiB', main, re.M)}
    assert set(saved) == set(peak) == {'plain', 'official', 'plugin'}
    assert all(peak[n] >= saved[n] > 0 for n in saved)
    # with two negatives the official step keeps two VGG graphs of the output for backward, the plugin one
    assert saved['plugin'] < saved['official']


def test_cost_table_prints_every_row_with_parsable_ratios(printed):
    main, table = printed.split('\nN = ')[1].split('cost table')
    plain = float(re.search(r'^  plain\s+([0-9.]+)', main, re.M).group(1))
    row = re.compile(r'^  (\S+)\s+([0-9.]+)\s+([0-9.]+)x\s+([0-9.]+)x\s+saved for backward\s+([0-9.]+) MiB'
                     r'(?:\s+peak\s+([0-9.]+) MiB)?$', re.M)
    rows = {label: tuple(float(v or 0) for v in values) for label, *values in row.findall(table)}
    assert list(rows) == list(benchmark.DEFAULT_ROWS)  # every row of the table, in order, none skipped
    default_ms = rows['default'][0]
    assert re.search(rf'^  plugin\s+{default_ms:.1f}\b', main, re.M)  # the default row is the (c) above
    assert rows['default'][4] >= rows['default'][3]  # on CPU the profiler's peak is measured for the default only
    for label, (ms, over_plain, speed_up, saved, _) in rows.items():
        assert ms > 0 and saved > 0, label
        assert abs(over_plain / (ms / plain) - 1) < 0.05, (label, over_plain, ms / plain)
        assert abs(speed_up / (default_ms / ms) - 1) < 0.05, (label, speed_up, default_ms / ms)
    assert rows['default'][2] == 1.0
    # half the batch through the negatives and VGG keeps less for backward than the whole batch
    assert rows['neg_batch_fraction=0.5'][3] < rows['default'][3]
    skipped = re.search(r'^  neg_per_step=3\s+skipped: (.+)$', table, re.M)
    assert skipped and 'neg_per_step' in skipped.group(1), table
    assert '(all = bf16+neg_per_step=1+neg_every=2+neg_batch_fraction=0.5)' in table


def test_option_rows_parse_into_the_mclir_block():
    row = benchmark.parse_row('bf16+neg_per_step=1+neg_every=2')
    assert row.mclir == {'hook': {'precision': 'bf16'}, 'neg_per_step': 1, 'neg_every': 2} and row.cycle == 2
    assert benchmark.parse_row('all').mclir == {'hook': {'precision': 'bf16'}, 'neg_per_step': 1, 'neg_every': 2,
                                                'neg_batch_fraction': 0.5}
    opt = benchmark.model_opt(network_preset('swinir_tiny'), 4, 'SwinIRModel', {'type': 'SPNLoss'}, 2, 'cpu', True,
                              'none', '/tmp', mclir=row.mclir)
    assert opt['mclir']['hook']['precision'] == 'bf16' and opt['mclir']['hook']['neg_iter'] == [100, 200]
    assert opt['mclir']['neg_per_step'] == 1 and opt['mclir']['neg_every'] == 2
    with pytest.raises(argparse.ArgumentTypeError, match="'neg_weight=2' in 'bf16\\+neg_weight=2' is not a cost"):
        benchmark.parse_row('bf16+neg_weight=2')
    args = benchmark.parse_args(['--options', 'neg_every=2', 'default', 'neg_every=2'])
    assert [r.label for r in args.options] == ['default', 'neg_every=2']  # the default first, each row once
