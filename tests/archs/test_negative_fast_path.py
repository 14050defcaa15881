"""The negatives' fast forward (cached attention constants, channels-last on CPU): same outputs as the class
forwards in the default layout, caches and layouts that survive refreshes, loads and new sizes."""
from __future__ import annotations

import copy

import pytest
import torch
from basicsr.archs import build_network

from mclir_plugin import HistoryNegativeHook
from mclir_plugin.hooks.negative_fast_path import accelerate_negative, is_accelerated, restore_eager

SWINIR = dict(type='SwinIR', upscale=2, in_chans=3, img_size=8, window_size=4, img_range=1., depths=[2, 2],
              embed_dim=8, num_heads=[2, 2], mlp_ratio=2, upsampler='pixelshuffledirect', resi_connection='1conv')
# (options, input sizes: the first is the size the network was built for, where it has one); FFA-Net has no window
# attention, so nothing changes and the count is 0
ARCHS = {
    'SwinIR': (SWINIR, [(8, 8), (12, 16)], 8),
    'DehazeFormer': (dict(type='DehazeFormer', window_size=4, embed_dims=[8, 16, 16, 16, 8], depths=[2, 2, 2, 1, 1],
                          num_heads=[2, 2, 4, 1, 1], mlp_ratios=[2.] * 5, attn_ratio=[0, 1, 0.5, 0, 0],
                          conv_type=['DWConv', 'Conv', 'DWConv', 'Conv', 'DWConv']), [(16, 16), (32, 24)], 3),
    'IDT': (dict(type='IDT', embed_dim=8, mlp_ratio=1., depths=[1] * 9, tile=True), [(128, 128)], 27),
    'FFANet': (dict(type='FFANet', gps=1, blocks=1), [(16, 16)], 0),
}


def frozen(opt: dict, seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_network(dict(opt))
    return net.requires_grad_(False).eval()


def perturb(net: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize('arch', sorted(ARCHS))
def test_fast_forward_matches_the_class_forward(arch):
    opt, sizes, expected_changes = ARCHS[arch]
    eager = frozen(opt)
    fast = copy.deepcopy(eager)
    assert accelerate_negative(fast) == expected_changes
    g = torch.Generator().manual_seed(1)
    for size in sizes + sizes[::-1]:  # every size twice, so that the second pass reads the caches
        x = torch.rand(2, 3, *size, generator=g)
        with torch.inference_mode():
            reference, got = eager(x), fast(x)
        torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # outside inference mode the cached tensors are normal tensors and still usable
        torch.testing.assert_close(fast(x), eager(x), rtol=1e-5, atol=1e-5)


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


@pytest.mark.parametrize('arch', ['SwinIR', 'DehazeFormer'])
def test_bf16_autocast_matches_the_class_forward_and_does_not_leak_into_fp32(arch):
    opt, sizes, _ = ARCHS[arch]
    eager = frozen(opt)
    fast = copy.deepcopy(eager)
    accelerate_negative(fast)
    x = torch.rand(2, 3, *sizes[1], generator=torch.Generator().manual_seed(4))
    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
        reference, got = eager(x), fast(x)
    assert got.dtype == reference.dtype
    torch.testing.assert_close(got.float(), reference.float(), rtol=0, atol=0)  # same ops, same roundings
    with torch.inference_mode():  # a bias cached under autocast (bf16) must not be reused in fp32
        torch.testing.assert_close(fast(x), eager(x), rtol=1e-5, atol=1e-5)


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


def test_only_frozen_networks_and_restore():
    net = build_network(dict(SWINIR))
    with pytest.raises(ValueError, match='frozen negatives'):
        accelerate_negative(net)
    net.requires_grad_(False).eval()
    changed = accelerate_negative(net)
    with torch.inference_mode():
        net(torch.rand(1, 3, 12, 12))
    assert restore_eager(net) == changed
    assert not any(is_accelerated(m) or '_mclir_fast_cache' in m.__dict__ for m in net.modules())


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


@pytest.mark.parametrize('kwargs, match', [({'fast_forward': 'yes'}, 'fast_forward must be true or false'),
                                           ({'channels_last': 'cpu'}, "channels_last must be one of true, false, 'auto'")])
def test_options_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HistoryNegativeHook(**kwargs)
