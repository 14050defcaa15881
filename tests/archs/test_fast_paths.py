"""The frozen negatives' fast paths (mclir_plugin/archs/frozen_cache.py, swinir_fast_path.py) and channels-last
negatives: every architecture with a fast path gives its class forward's outputs (sizes, bf16, after in-place weight
changes), caches and layouts survive refreshes and loads, and BasicSR's SwinIR still has the methods the table
replaces."""
from __future__ import annotations

import copy
import inspect
import types

import pytest
import torch
from basicsr.archs import build_network

from mclir_plugin import HistoryNegativeHook
from mclir_plugin.archs.frozen_cache import (CACHE_ATTR, FrozenNegativeCache, accelerate_negative, is_accelerated,
                                             restore_eager)
from mclir_plugin.archs.presets import network_preset
from mclir_plugin.archs.swinir_fast_path import FAST_METHODS

# (options, input sizes: the first is the size the network was built for, where it has one, the other one makes
# SwinIR compute its masks and IDT tile; submodules changed by accelerate_negative); FFA-Net has no window attention
ARCHS = {
    'SwinIR': (network_preset('swinir_tiny'), [(8, 8), (12, 16)], 4),
    'DehazeFormer': (dict(type='DehazeFormer', window_size=4, embed_dims=[8, 16, 16, 16, 8], depths=[2, 2, 2, 1, 1],
                          num_heads=[2, 2, 4, 1, 1], mlp_ratios=[2.] * 5, attn_ratio=[0, 1, 0.5, 0, 0],
                          conv_type=['DWConv', 'Conv', 'DWConv', 'Conv', 'DWConv']), [(16, 16), (32, 24)], 3),
    'IDT': (dict(type='IDT', img_size=64, embed_dim=8, mlp_ratio=1., depths=[1] * 9, tile=True), [(64, 64), (48, 80)],
            27),
    'FFANet': (dict(type='FFANet', gps=1, blocks=1), [(16, 16)], 0),
}
FAST = ['DehazeFormer', 'IDT', 'SwinIR']


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """IDT runs hundreds of small ops per pass: on shared cores one thread is many times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def frozen(opt: dict, seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_network(dict(opt))
    return net.requires_grad_(False).eval()


def perturb(net: torch.nn.Module, seed: int) -> None:
    """An in-place change of every weight, as a refresh makes it (``_foreach`` ops, new version counters)."""
    g = torch.Generator().manual_seed(seed)
    params = list(net.parameters())
    with torch.no_grad():
        torch._foreach_add_(params, [0.1 * torch.randn(p.shape, generator=g) for p in params])


@pytest.mark.parametrize('arch', sorted(ARCHS))
def test_fast_path_matches_the_class_forward(arch):
    """1e-5 on both sizes (each twice, so that the second pass reads the caches), outside inference mode too, and
    on both sizes again after an in-place weight change (which must invalidate the caches)."""
    opt, sizes, expected_changes = ARCHS[arch]
    eager = frozen(opt)
    fast = copy.deepcopy(eager)
    assert accelerate_negative(fast) == expected_changes
    g = torch.Generator().manual_seed(1)
    inputs = [torch.rand(1, 3, *size, generator=g) for size in sizes]
    outputs = []
    for x in inputs + inputs[::-1] + inputs:
        if len(outputs) == 2 * len(inputs):
            for net in (eager, fast):
                perturb(net, 7)
        with torch.inference_mode():
            reference, got = eager(x), fast(x)
        torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
        outputs.append(reference)
    assert not torch.allclose(outputs[-1], outputs[len(inputs) - 1])  # the change moved the outputs
    with torch.no_grad():  # the cached tensors are normal tensors, usable outside inference mode
        torch.testing.assert_close(fast(x), eager(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('arch', FAST)
def test_bf16_autocast_is_bit_equal_and_does_not_leak_into_fp32(arch):
    opt, sizes, _ = ARCHS[arch]
    eager = frozen(opt)
    fast = copy.deepcopy(eager)
    accelerate_negative(fast)
    x = torch.rand(1, 3, *sizes[1], generator=torch.Generator().manual_seed(4))
    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
        reference, got = eager(x), fast(x)
    assert got.dtype == reference.dtype
    torch.testing.assert_close(got.float(), reference.float(), rtol=0, atol=0)  # same ops, same roundings
    with torch.inference_mode():  # a bias cached under autocast (bf16) must not be reused in fp32
        torch.testing.assert_close(fast(x), eager(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('arch', ['DehazeFormer', 'IDT'])
def test_our_architectures_keep_one_forward(arch):
    """No replaced method on the instances: the class forward itself takes the frozen path."""
    net = frozen(ARCHS[arch][0])
    accelerate_negative(net)
    attention = [m for m in net.modules() if isinstance(m, FrozenNegativeCache)]
    assert attention and all(is_accelerated(m) and m.frozen_for_negative for m in attention)
    assert not any(isinstance(v, types.MethodType) for m in net.modules() for v in vars(m).values())


def test_swinir_table_matches_basicsr():
    """An upstream change of a replaced method's signature (or a class moving) fails here, not silently."""
    from basicsr.archs import swinir_arch

    def parameters(function) -> list[tuple]:
        return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]

    assert set(FAST_METHODS) == {swinir_arch.WindowAttention, swinir_arch.SwinTransformerBlock}
    for cls, methods in FAST_METHODS.items():
        for name, replacement in methods.items():
            assert parameters(replacement) == parameters(getattr(cls, name)), f'{cls.__name__}.{name}'


def test_swinir_masks_are_computed_once_and_shared():
    opt, sizes, _ = ARCHS['SwinIR']
    nets = [frozen(opt, seed) for seed in (0, 1)]
    for net in nets:
        accelerate_negative(net)
    blocks = [m for net in nets for m in net.modules() if type(m).__name__ == 'SwinTransformerBlock']
    shifted = [b for b in blocks if b.shift_size > 0]
    masks = [b.calculate_mask(sizes[1]) for b in shifted]
    assert len(shifted) >= 2 and all(m is masks[0] for m in masks)
    torch.testing.assert_close(masks[0], type(shifted[0]).calculate_mask(shifted[0], sizes[1]), rtol=0, atol=0)
    assert shifted[0].calculate_mask(sizes[0]) is not masks[0]  # another size, another mask


@pytest.mark.parametrize('arch', FAST)
def test_only_frozen_networks_and_restore(arch):
    opt, sizes, _ = ARCHS[arch]
    net = build_network(dict(opt))
    with pytest.raises(ValueError, match='frozen negatives'):
        accelerate_negative(net)
    net.requires_grad_(False).eval()
    changed = accelerate_negative(net)
    with torch.inference_mode():
        net(torch.rand(1, 3, *sizes[-1]))
    assert restore_eager(net) == changed
    assert not any(is_accelerated(m) or CACHE_ATTR in m.__dict__ for m in net.modules())


@pytest.mark.parametrize('arch', ['SwinIR', 'DehazeFormer'])
def test_caches_follow_refreshes_and_loads(arch):
    """A hook with the fast path and one without, built from one network, agree after every refresh and a load."""
    opt, sizes, _ = ARCHS[arch]
    net = frozen(opt).train()
    hooks = [HistoryNegativeHook(neg_iter=[1, 2], neg_start=0.5, seed=3, fast_forward=flag) for flag in (True, False)]
    for hook in hooks:
        hook.build(net)
    assert all(is_accelerated(m) for m in hooks[0].negatives.modules() if 'WindowAttention' in type(m).__name__)
    assert not any(is_accelerated(m) for m in hooks[1].negatives.modules())
    x = torch.rand(1, 3, *sizes[-1], generator=torch.Generator().manual_seed(2))
    for it in (1, 2, 3):
        torch.testing.assert_close(hooks[0].forward_negatives(x), hooks[1].forward_negatives(x), rtol=1e-5, atol=1e-5)
        perturb(net, it)
        for hook in hooks:
            hook.step(net, it)
    state = hooks[1].state_dict()
    perturb(net, 9)
    hooks[0].step(net, 4)  # the fast hook's negatives move, then the load must bring back the slow hook's
    before = hooks[0].forward_negatives(x)
    hooks[0].load_state_dict(state)
    after = hooks[0].forward_negatives(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, hooks[1].forward_negatives(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('arch', ['FFANet', 'SwinIR'])
def test_channels_last_negatives_agree_with_default_layout(arch):
    """'auto' on CPU means channels-last; refreshes, the state and loads are the same values as without it."""
    opt, sizes, _ = ARCHS[arch]
    net = frozen(opt).train()
    auto = HistoryNegativeHook(neg_iter=[1, 2], seed=5)
    plain = HistoryNegativeHook(neg_iter=[1, 2], seed=5, channels_last=False, fast_forward=False)
    for hook in (auto, plain):
        hook.build(net)
    convs = [m.weight for m in auto.negatives.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convs
                         if w.shape[-1] > 1)
    assert 'channels_last=True' in auto.describe() and 'channels_last=False' in plain.describe()
    x = torch.rand(2, 3, *sizes[-1], generator=torch.Generator().manual_seed(6))
    for it in (1, 2):
        out = auto.forward_negatives(x)
        assert out.is_contiguous()
        # channels-last convolutions sum in another order: float32 rounding, up to about 1e-5 on these outputs
        torch.testing.assert_close(out, plain.forward_negatives(x), rtol=1e-4, atol=5e-5)
        perturb(net, it)
        for hook in (auto, plain):
            hook.step(net, it)
    for a, b in zip(auto.state_dict()['negatives'], plain.state_dict()['negatives']):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    plain.load_state_dict(auto.state_dict())  # a channels-last state loads into the default layout and back
    auto.load_state_dict(plain.state_dict())
    for a, b in zip(auto.negatives, plain.negatives):
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    # three perturbations later the outputs are larger; the layouts' different summation orders show at 1e-4
    torch.testing.assert_close(auto.forward_negatives(x), plain.forward_negatives(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('kwargs, match', [
    ({'fast_forward': 'yes'}, 'fast_forward must be true or false'),
    ({'channels_last': 'cpu'}, "channels_last must be one of true, false, 'auto'")])
def test_options_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HistoryNegativeHook(**kwargs)
