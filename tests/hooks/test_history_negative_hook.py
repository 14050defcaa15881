"""HistoryNegativeHook: start blend, refresh schedule and pairing, buffers, eval/frozen, state, errors."""
from __future__ import annotations

import pytest
import torch
from mmengine.registry import HOOKS
from torch import nn

from mclir_plugin import HistoryNegativeHook
from mclir_plugin.archs.presets import network_preset


def small_net(seed: int = 0, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 4, 3, padding=1)] + ([nn.BatchNorm2d(4)] if bn else []) + [nn.ReLU(), nn.Conv2d(4, 3, 1)]
    return nn.Sequential(*layers)


def params(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def perturb(net: nn.Module, seed: int) -> None:
    """Stand-in for an optimizer step: move every parameter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g))


def test_registered_in_mmengine_hooks():
    hook = HOOKS.build({'type': 'HistoryNegativeHook', 'neg_iter': [5, 10]})
    assert isinstance(hook, HistoryNegativeHook) and hook.num_negatives == 2


def test_start_blend_follows_neg_start():
    net = small_net(0)
    fresh_nets = []

    def fresh_init():
        fresh_nets.append(small_net(100 + len(fresh_nets)))
        return fresh_nets[-1]

    hook = HistoryNegativeHook(neg_iter=[1, 2], neg_start=0.1)
    hook.build(net, fresh_init=fresh_init)
    assert len(fresh_nets) == 2
    # 0.1 * fresh + 0.9 * net, with the official arithmetic (fresh.mul_(s).add_(net, alpha=1 - s))
    for i, neg in enumerate(hook.negatives):
        fresh = small_net(100 + i)  # the same fresh init again
        for p_neg, p_fresh, p_net in zip(neg.parameters(), fresh.parameters(), net.parameters()):
            assert torch.equal(p_neg, p_fresh.detach().clone().mul_(0.1).add_(p_net.detach(), alpha=0.9))
            assert not torch.equal(p_neg, p_net)
    assert not torch.equal(params(hook.negatives[0])[0], params(hook.negatives[1])[0])  # own fresh inits


def test_neg_start_zero_is_an_exact_copy():
    net = small_net(0)
    hook = HistoryNegativeHook(neg_iter=[3], neg_start=0)
    hook.build(net)
    assert all(torch.equal(a, b) for a, b in zip(params(hook.negatives[0]), params(net)))
    assert hook.negatives[0] is not net and hook.negatives[0][0].weight.data_ptr() != net[0].weight.data_ptr()


def test_default_fresh_init_is_seeded_and_leaves_global_rng_alone():
    net = small_net(0)
    state = torch.random.get_rng_state()
    a = HistoryNegativeHook(neg_iter=[1], neg_start=0.5, seed=7)
    a.build(net)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = HistoryNegativeHook(neg_iter=[1], neg_start=0.5, seed=7)
    b.build(net)
    c = HistoryNegativeHook(neg_iter=[1], neg_start=0.5, seed=8)
    c.build(net)
    assert all(torch.equal(p, q) for p, q in zip(params(a.negatives[0]), params(b.negatives[0])))
    assert not torch.equal(params(a.negatives[0])[0], params(c.negatives[0])[0])
    assert not torch.equal(params(a.negatives[0])[0], params(net)[0])


def test_refresh_schedule_and_formula():
    net = small_net(0)
    hook = HistoryNegativeHook(neg_iter=[1, 2, 3], neg_decay=[0.1, 0.2, 0.3], neg_start=0)
    hook.build(net)
    expected = [params(neg) for neg in hook.negatives]
    for it in range(1, 7):
        perturb(net, it)
        refreshed = hook.step(net, it)
        assert refreshed == [i for i, k in enumerate([1, 2, 3]) if it % k == 0]
        for i in refreshed:
            d = [0.1, 0.2, 0.3][i]
            expected[i] = [e.mul(d).add_(p, alpha=1 - d) for e, p in zip(expected[i], params(net))]
        for neg, exp in zip(hook.negatives, expected):
            assert all(torch.equal(a, b) for a, b in zip(params(neg), exp))
    assert hook.refresh_count == [6, 3, 2] and hook.last_refresh_iter == [6, 6, 6]


@pytest.mark.parametrize('pairing, intervals, decays', [
    ('natural', [10, 20, 50], [0.1, 0.2, 0.3]),
    ('official_reversed', [50, 20, 10], [0.1, 0.2, 0.3]),  # interval list reversed, decay list not
])
def test_pairing(pairing, intervals, decays):
    hook = HistoryNegativeHook(neg_iter=[10, 20, 50], neg_decay=[0.1, 0.2, 0.3], pairing=pairing)
    assert hook.intervals == intervals and hook.decays == decays


def test_negatives_frozen_in_eval_and_without_grad():
    net = small_net(0, bn=True)
    hook = HistoryNegativeHook(neg_iter=[1, 2])
    hook.build(net.train())
    for neg in hook.negatives:
        assert not neg.training and not any(p.requires_grad for p in neg.parameters())
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    out = hook.forward_negatives(x)
    assert out.shape == (2, 2, 3, 8, 8) and not out.requires_grad
    assert net.training  # the source network is left as it was


@pytest.mark.parametrize('update_buffers', [True, False])
def test_buffers(update_buffers):
    net = small_net(0, bn=True)
    hook = HistoryNegativeHook(neg_iter=[1], neg_decay=0.25, neg_start=0, update_buffers=update_buffers)
    hook.build(net)
    before = hook.negatives[0][1].running_mean.clone()
    net.train()
    net(torch.rand(4, 3, 8, 8) * 5)  # moves BN statistics and num_batches_tracked
    hook.step(net, 1)
    bn_neg, bn_net = hook.negatives[0][1], net[1]
    if update_buffers:
        assert torch.allclose(bn_neg.running_mean, torch.lerp(before, bn_net.running_mean, 0.75))
        assert bn_neg.num_batches_tracked == bn_net.num_batches_tracked == 1
    else:
        assert torch.equal(bn_neg.running_mean, before) and bn_neg.num_batches_tracked == 0


def test_constant_buffers_stay_bit_identical():
    net = small_net(0)
    net.register_buffer('mask', torch.full((5,), -100.0))
    hook = HistoryNegativeHook(neg_iter=[1], neg_decay=0.1, neg_start=0.3)
    hook.build(net)
    for it in range(1, 4):
        hook.step(net, it)
    assert torch.equal(hook.negatives[0].mask, net.mask)


def test_state_dict_round_trip():
    net = small_net(0)
    hook = HistoryNegativeHook(neg_iter=[1, 2], neg_start=0.2)
    hook.build(net)
    for it in range(1, 4):
        perturb(net, it)
        hook.step(net, it)
    state = hook.state_dict()
    other = HistoryNegativeHook(neg_iter=[1, 2], neg_start=0.2)
    other.build(small_net(5))
    other.load_state_dict(state)
    for a, b in zip(hook.negatives, other.negatives):
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
        assert not b.training and not any(p.requires_grad for p in b.parameters())
    assert other.refresh_count == [3, 1] and other.last_refresh_iter == [3, 2]
    three = HistoryNegativeHook(neg_iter=[1, 2, 4])
    three.build(net)
    with pytest.raises(ValueError, match='holds 2 negative models but the options ask for 3'):
        three.load_state_dict(state)


def test_unbuilt_hook_says_so():
    with pytest.raises(RuntimeError, match='call build'):
        HistoryNegativeHook().forward_negatives(torch.rand(1, 3, 4, 4))


@pytest.mark.parametrize('kwargs, match', [
    ({'neg_iter': []}, r'neg_iter must be an integer >= 1 .*non-empty list.*, got \[\]'),
    ({'neg_iter': [10, 0]}, r'neg_iter\[1\] must be an integer >= 1 .*, got 0\.'),
    ({'neg_iter': [10.5]}, r'neg_iter\[0\] must be an integer >= 1 .*, got 10\.5\.'),
    ({'neg_iter': [1, 2], 'neg_decay': [0.1]}, r'neg_decay must be one number, or a list of 2 .*, got \[0\.1\]'),
    ({'neg_decay': 1.0}, r'neg_decay must be a finite number in \[0, 1\) .*, got 1\.0\.'),
    ({'neg_decay': -0.1}, r'neg_decay must be a finite number in \[0, 1\) .*, got -0\.1\.'),
    ({'neg_start': 1.5}, r'neg_start must be a finite number in \[0, 1\] .*, got 1\.5\.'),
    ({'pairing': 'reversed'}, "pairing must be one of 'natural', 'official_reversed', got 'reversed'"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HistoryNegativeHook(**kwargs)


def test_adaptive_refresh_round_robin_above_the_threshold():
    net = small_net(0)
    hook = HistoryNegativeHook(neg_iter=[5, 5, 5], neg_start=0, adaptive_threshold=0.5, adaptive_decay=0.25)
    hook.build(net)
    target = torch.zeros(2, 3, 4, 4)
    calm = torch.full((2, 3, 4, 4), 0.1)  # no spread: 2 * (out - gt) is constant per sample
    g = torch.Generator().manual_seed(0)
    wild = torch.randn(2, 3, 4, 4, generator=g)  # std of 2 * (out - gt) is about 2 > 0.5
    assert hook.adaptive_step(net, calm, target, 1) is None
    expected = [params(neg) for neg in hook.negatives]
    picked = []
    for it in (2, 3, 4, 5):
        perturb(net, it)
        picked.append(hook.adaptive_step(net, wild, target, it))
        i = picked[-1]
        expected[i] = [e.mul(0.25).add_(p, alpha=0.75) for e, p in zip(expected[i], params(net))]
    assert picked == [0, 1, 2, 0] and hook.adaptive_count == 4
    for neg, exp in zip(hook.negatives, expected):
        assert all(torch.equal(a, b) for a, b in zip(params(neg), exp))
    assert hook.step(net, 5) == [] and hook.refresh_count == [2, 1, 1]  # the interval schedule is off
    state = hook.state_dict()
    other = HistoryNegativeHook(neg_iter=[5, 5, 5], adaptive_threshold=0.5)
    other.build(small_net(1))
    other.load_state_dict(state)
    assert other.adaptive_count == 4 and other.adaptive_step(small_net(1), wild, target, 6) == 1


def test_negative_seeds_are_distinct_and_never_the_run_seed():
    from mclir_plugin.hooks.history_negative_hook import negative_seed
    for seed in (0, 1, 42, 10_000):
        seeds = [negative_seed(seed, i) for i in range(8)]
        assert len(set(seeds)) == 8 and all(0 <= s < 2 ** 63 for s in seeds)
        assert not {seed, seed + 1} & set(seeds)  # BasicSR seeds rank r's network init with manual_seed + r
        assert seeds == [negative_seed(seed, i) for i in range(8)]  # a pure function: the same on every rank


TINY_SWINIR = network_preset('swinir_tiny', upscale=2, depths=[1], embed_dim=12)


def swinir_model_opt(tmp_path, vgg16_file, seed: int, neg_start: float) -> dict:
    """MCLIRModel options (SwinIRModel base, tiny SwinIR, three negatives) as BasicSR's parse_options gives them."""
    root = str(tmp_path / f'run_{seed}_{neg_start}')
    paths = {k: f'{root}/{k}' for k in ('models', 'training_states', 'log', 'visualization')}
    return {
        'name': 'blend', 'model_type': 'MCLIRModel', 'scale': 2, 'num_gpu': 0, 'manual_seed': seed,
        'is_train': True, 'dist': False, 'rank': 0, 'world_size': 1, 'root_path': str(tmp_path),
        'mclir': {'base_model': 'SwinIRModel', 'hook': {'neg_iter': [1, 2, 3], 'neg_start': neg_start}},
        'network_g': dict(TINY_SWINIR),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None, 'experiments_root': root,
                 **paths},
        'train': {'ema_decay': 0, 'optim_g': {'type': 'Adam', 'lr': 1e-3},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [10], 'gamma': 0.5}, 'total_iter': 3,
                  'pixel_opt': {'type': 'SPNLoss', 'neg_weight': 0.1, 'vgg_weights': vgg16_file}},
    }


def test_start_blend_through_basicsr_seeding_is_independent_of_the_network(tmp_path, vgg16_file):
    """Regression: BasicSR initialises net_g right after set_random_seed(manual_seed); a fresh init drawn under that
    same seed was net_g's own initial weights, so negative 0 started as an exact copy of net_g."""
    from basicsr.archs import build_network
    from basicsr.models import build_model
    from basicsr.utils import set_random_seed

    def flat(net: nn.Module) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in net.parameters()])

    for seed in (0, 7):
        set_random_seed(seed)
        model = build_model(swinir_model_opt(tmp_path, vgg16_file, seed, neg_start=0.1))
        after_spn = torch.random.get_rng_state()
        net = flat(model.get_bare_model(model.net_g))
        set_random_seed(seed)
        assert torch.equal(flat(build_network(dict(TINY_SWINIR))), net)  # net_g is BasicSR's init under the seed
        negatives = [flat(neg) for neg in model.negative_hook.negatives]
        for neg in negatives:
            fresh = (neg - 0.9 * net) / 0.1  # the fresh part of the blend 0.1 * fresh + 0.9 * net
            assert (neg - net).abs().max() > 1e-3 and (fresh - net).abs().max() > 0.1
        assert all((a - b).abs().max() > 1e-3 for i, a in enumerate(negatives) for b in negatives[i + 1:])
    # the fresh initialisations leave the run's random stream where a build without them leaves it
    set_random_seed(7)
    build_model(swinir_model_opt(tmp_path, vgg16_file, 7, neg_start=0.0))
    assert torch.equal(torch.random.get_rng_state(), after_spn)
