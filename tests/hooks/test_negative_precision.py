"""``mclir.hook.precision``: the negatives (and VGG on them) at their own precision, the network at the step's."""
from __future__ import annotations

import pytest
import torch
from basicsr.archs import build_network
from basicsr.models import build_model

from conftest import swinir_model_options
from mclir_plugin.archs.presets import network_preset
from mclir_plugin.hooks.history_negatives import HistoryNegatives
from mclir_plugin.utils.option_schema import OptionError
from mclir_plugin.utils.precision import _cpu_kernels

# bf16 keeps 8 significant bits: each rounding is off by at most 2^-9 of the value, 2^-8 with the roundings of
# inputs and weights together. Through the tiny SwinIR's dozen matrix products, convolutions and softmaxes a few
# such errors add up at the scale of the output (measured: max 0.007 and mean 0.0011 for outputs up to 1.6, i.e.
# 1.1 and 0.2 units of 2^-8 * scale), so allow 4 units at most and 1 on average; fp32 rounding is 2^16 times smaller.
BF16_UNIT = 2.0 ** -8


@pytest.fixture(scope='module')
def tiny():
    """The tiny SwinIR x4, an input whose size is not img_size (SwinIR computes its shifted-window masks), and
    two banks of the same two negatives (same seed), in fp32 and bf16."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_network(network_preset('swinir_tiny'))
        x = torch.rand(2, 3, 12, 12)
    banks = {}
    for precision in (None, 'fp32', 'bf16'):
        banks[precision] = HistoryNegatives(neg_iter=[1, 2], neg_start=0.1, seed=3, precision=precision)
        banks[precision].build(net)
    return net, x, banks


def linear_dtypes(bank: HistoryNegatives) -> tuple[list, list]:
    """A list that a forward hook on each negative's first qkv projection fills with its output dtype."""
    seen, handles = [], []
    for neg in bank.negatives:
        linear = neg.layers[0].residual_group.blocks[0].attn.qkv
        handles.append(linear.register_forward_hook(lambda m, i, o: seen.append(o.dtype)))
    return seen, handles


def test_bf16_negatives_match_fp32_within_bf16_rounding(tiny):
    _, x, banks = tiny
    seen, handles = linear_dtypes(banks['bf16'])
    try:
        low = banks['bf16'](x)
    finally:
        for handle in handles:
            handle.remove()
    full = banks[None](x)
    assert seen == [torch.bfloat16, torch.bfloat16]  # the forwards really ran in bf16
    assert all(p.dtype == torch.float32 for neg in banks['bf16'].negatives for p in neg.parameters())  # fp32 weights
    scale = float(full.abs().max())
    error = (low.float() - full).abs()
    assert 0 < float(error.max()) <= 4 * BF16_UNIT * scale, (float(error.max()), scale)
    assert float(error.mean()) <= BF16_UNIT * scale, (float(error.mean()), scale)


def test_fp32_turns_the_step_autocast_off_and_none_follows_it(tiny):
    _, x, banks = tiny
    seen, handles = linear_dtypes(banks['fp32'])
    try:
        with torch.autocast('cpu', dtype=torch.bfloat16):  # an `mclir.amp: bf16` step around the call
            forced = banks['fp32'](x)
            following = banks[None](x)
    finally:
        for handle in handles:
            handle.remove()
    assert seen == [torch.float32, torch.float32]
    assert torch.equal(forced, banks[None](x))  # fp32 under an outer autocast is the plain fp32 forward
    assert not torch.equal(following.float(), forced)  # None keeps today's behaviour: the step's autocast


def test_model_step_keeps_the_network_in_fp32_and_runs_negative_work_in_bf16(tmp_path, vgg16_file):
    opt = swinir_model_options(tmp_path, vgg16_file, {'hook': {'neg_iter': [1, 2], 'neg_start': 0.3,
                                                               'precision': 'bf16'}})
    model = build_model(opt)
    seen = []
    model.net_g.conv_first.register_forward_hook(lambda m, i, o: seen.append(('net', o.dtype)))
    model.negative_hook.negatives[0].conv_first.register_forward_hook(lambda m, i, o: seen.append(('neg', o.dtype)))
    model.cri_pix.loss.vgg.features[0].register_forward_hook(lambda m, i, o: seen.append(('vgg', o.dtype)))
    g = torch.Generator().manual_seed(0)
    model.feed_data({'lq': torch.rand(2, 3, 8, 8, generator=g), 'gt': torch.rand(2, 3, 32, 32, generator=g)})
    model.optimize_parameters(1)
    # the network and VGG on its output in fp32; the negatives and VGG on their outputs in bf16
    assert seen == [('net', torch.float32), ('neg', torch.bfloat16), ('vgg', torch.float32), ('vgg', torch.bfloat16)]
    grads = [p.grad for p in model.net_g.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert all(p.dtype == torch.float32 for p in model.net_g.parameters())
    assert model.get_current_log()['l_neg'] > 0


def test_fp16_on_cpu_is_refused_without_native_kernels(tiny):
    net, x, _ = tiny
    bank = HistoryNegatives(neg_iter=[1], neg_start=0, precision='fp16')
    if _cpu_kernels(torch.float16):  # a CPU with AVX512-FP16/AMX-FP16: it runs
        bank.build(net)
        assert torch.isfinite(bank(x)).all()
    else:  # this project's machine (avx512_bf16 only): torch would emulate fp16 about 4x slower than fp32
        with pytest.raises(ValueError, match=r'mclir\.hook\.precision: fp16 on this CPU has no native oneDNN kernels'
                                             r'.*`mclir\.hook\.precision: bf16` \(where supported\) or `fp32`'):
            bank.build(net)


def test_deformable_convolutions_refuse_low_precision_on_cpu():
    edvr = build_network({'type': 'EDVR', 'num_feat': 8, 'num_frame': 3, 'deformable_groups': 1,
                          'num_extract_block': 1, 'num_reconstruct_block': 1, 'with_tsa': False})
    with pytest.raises(ValueError, match=r'mclir\.hook\.precision: bf16 on CPU cannot run this network: its '
                                         r'deformable convolutions .*`mclir\.hook\.precision: fp32`'):
        HistoryNegatives(neg_iter=[1], neg_start=0, precision='bf16').build(edvr)
    HistoryNegatives(neg_iter=[1], neg_start=0, precision='fp32').build(edvr)  # fp32 is fine


def test_unknown_precision_names_the_key(tmp_path, vgg16_file):
    with pytest.raises(OptionError, match=r"precision must be one of 'fp32', 'bf16', 'fp16' or ~ .*got 'fp64'"):
        HistoryNegatives(precision='fp64')
    opt = swinir_model_options(tmp_path, vgg16_file, {'hook': {'precision': 'half'}})
    with pytest.raises(ValueError, match=r"mclir\.hook\.precision must be one of 'fp32', 'bf16', 'fp16' or ~ "
                                         r".*got 'half'"):
        build_model(opt)
