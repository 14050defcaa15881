"""tools/benchmark_spn.py end to end on a tiny SwinIR: every variant timed, the ratios, and the memory columns."""
from __future__ import annotations

import os
import re

import yaml

from conftest import REPO, run_tool

TINY_SWINIR = {'type': 'SwinIR', 'upscale': 2, 'in_chans': 3, 'img_size': 8, 'window_size': 4, 'img_range': 1.,
               'depths': [2], 'embed_dim': 8, 'num_heads': [2], 'mlp_ratio': 2, 'upsampler': 'pixelshuffledirect',
               'resi_connection': '1conv'}


def test_benchmark_prints_every_variant_ratio_and_memory(tmp_path, torch_home_with_vgg):
    opt = {'model_type': 'MCLIRModel', 'scale': 2, 'network_g': TINY_SWINIR, 'mclir': {'base_model': 'SwinIRModel'},
           'train': {'pixel_opt': {'type': 'SPNLoss', 'neg_weight': 0.01}}}
    opt_file = tmp_path / 'tiny.yml'
    opt_file.write_text(yaml.safe_dump(opt))
    result = run_tool([os.path.join(REPO, 'tools', 'benchmark_spn.py'), '-opt', str(opt_file), '--patch', '24',
                       '--batch', '2', '--negatives', '1', '3', '--steps', '2', '--warmup', '1', '--memory',
                       '--threads', '1'], cwd=tmp_path, env={'TORCH_HOME': str(torch_home_with_vgg)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert 'SwinIR (SwinIRModel), x2, output patch 24, batch 2' in out
    blocks = out.split('\nN = ')[1:]
    assert [b.split(':')[0] for b in blocks] == ['1', '3']
    for block in blocks:
        ms = {name: float(v) for name, v in re.findall(r'^  (\w+)\s+([0-9.]+)', block, re.M)}
        assert set(ms) == {'plain', 'official', 'plugin', 'neg_forwards', 'vgg_out_fwd_bwd', 'vgg_negatives',
                           'neg_forwards_eager'} and all(v > 0 for v in ms.values())
        ratios = dict(re.findall(r'^  (\S+)\s+\w+ / \w+\s+([0-9.]+)x', block, re.M))
        assert set(ratios) == {'(c)/(a)', '(b)/(c)', '(c)/((a)+(d))'}
        # the ratios are of the unrounded medians; the printed ms are rounded to 0.1
        parts = ms['plain'] + ms['neg_forwards'] + ms['vgg_out_fwd_bwd'] + ms['vgg_negatives']
        for key, expected in (('(c)/(a)', ms['plugin'] / ms['plain']), ('(b)/(c)', ms['official'] / ms['plugin']),
                              ('(c)/((a)+(d))', ms['plugin'] / parts)):
            assert abs(float(ratios[key]) / expected - 1) < 0.05, (key, ratios[key], expected)
        saved = {n: float(v) for n, v in re.findall(r'^  (\w+)\s+[0-9.]+\s+saved for backward\s+([0-9.]+) MiB', block,
                                                    re.M)}
        peak = {n: float(v) for n, v in re.findall(r'^  (\w+)\s+.*peak\s+([0-9.]+) MiB', block, re.M)}
        assert set(saved) == set(peak) == {'plain', 'official', 'plugin'}
        assert all(peak[n] >= saved[n] > 0 for n in saved)
    # with three negatives the official step keeps three VGG graphs of the output for backward, the plugin one
    assert saved['plugin'] < saved['official']
