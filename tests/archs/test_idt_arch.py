import mclir_plugin  # noqa: F401

import os

import pytest
import torch
from basicsr.archs import build_network
from basicsr.utils.registry import ARCH_REGISTRY

from mclir_plugin.archs.idt_arch import IDT, centre_weights, tile_starts

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'golden', 'golden_idt.pt')
PARAMS_E32 = 16_416_463  # docs archs_datasets.md §0, measured on the upstream code


def seeded_idt(seed: int, **kwargs) -> IDT:
    """An IDT whose weights are drawn under ``torch.manual_seed(seed)``, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_network(dict(type='IDT', **kwargs))


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """IDT runs hundreds of small ops per pass; on shared cores, two threads waiting on each other make the file
    many times slower (60 s against 7 s, measured on 2 busy cores), so run it single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def golden() -> dict:
    return torch.load(GOLDEN, weights_only=True)


@pytest.fixture(scope='module')
def upstream_case(golden) -> tuple[IDT, torch.Tensor]:
    """The published configuration under the golden seed, and its output on the golden 128x128 input."""
    ref = golden['plain']
    net = seeded_idt(ref['seed'], **ref['config']).eval()
    with torch.no_grad():
        return net, net(ref['input'].float() / 255)


@pytest.fixture(scope='module')
def narrow_128() -> IDT:
    """The published structure at 128x128, narrowed for CPU speed (E = 8, LeFF ratio 1), tiling on, in eval mode."""
    return seeded_idt(0, embed_dim=8, mlp_ratio=1., tile=True).eval()


def test_registered_and_parameter_count():
    assert ARCH_REGISTRY.get('IDT') is IDT
    net = build_network(dict(type='IDT', img_size=128, embed_dim=32, depths=[3, 3, 2, 2, 1, 1, 2, 2, 3],
                             num_heads=[1, 2, 4, 8, 16, 16, 8, 4, 2]))
    assert isinstance(net, IDT)
    assert sum(p.numel() for p in net.parameters()) == PARAMS_E32
    assert len(net.state_dict()) == 571  # upstream's key count: the index buffers are not saved


def test_output_shape_at_128(upstream_case):
    _, out = upstream_case
    assert out.shape == (1, 3, 128, 128) and torch.isfinite(out).all()


@pytest.mark.parametrize('size', [(96, 128), (256, 256), (100, 77)])
def test_other_sizes_need_the_tile_option(size):
    net = IDT(embed_dim=8).eval()
    with pytest.raises(ValueError, match=r'only on 128x128 inputs.*`tile: true`'):
        net(torch.rand(1, 3, *size))


@pytest.mark.parametrize('bad', [dict(img_size=96), dict(img_size=192), dict(tile_overlap=128), dict(depths=[2] * 8)])
def test_bad_configurations_are_rejected(bad):
    with pytest.raises(ValueError, match='IDT'):
        IDT(embed_dim=8, **bad)


def test_tile_geometry_matches_upstream_rules():
    assert tile_starts(128, 128, 20) == [0]
    assert tile_starts(200, 128, 20) == [0, 72]  # last tile flush with the border
    assert tile_starts(236, 128, 20) == [0, 108]
    assert tile_starts(512, 128, 20) == [0, 108, 216, 324, 384]
    w = centre_weights(128)
    assert w[64, 64] == pytest.approx(1e-3**-0.5) and w[0, 0] == pytest.approx((2 * 64**2 + 1e-3)**-0.5)
    assert w.argmax() == 64 * 128 + 64


@pytest.mark.parametrize('size', [(1, 1), (5, 300), (100, 77), (150, 200), (129, 383)])
def test_tile_merge_is_a_weighted_average(size, monkeypatch):
    """With a stand-in network ``f(x) = 2x + 1`` every tile agrees, so any size must come back as ``2x + 1``."""
    net = IDT(embed_dim=8, tile=True, tile_batch=3)
    calls = []
    monkeypatch.setattr(net, 'forward_patch', lambda t: calls.append(t.shape) or 2 * t + 1)
    x = torch.rand(2, 3, *size)
    out = net(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, 2 * x + 1)
    assert all(shape[-2:] == (128, 128) and shape[0] <= 3 for shape in calls)


@pytest.mark.parametrize('size', [(100, 77), (150, 200)])
def test_tiled_network_returns_the_input_size(narrow_128, size):
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        out = narrow_128(x)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_tiling_a_128_image_equals_the_plain_forward(narrow_128):
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        plain, tiled = narrow_128.forward_patch(x), narrow_128.forward_tiled(x)
    torch.testing.assert_close(tiled, plain, rtol=0, atol=1e-6)


def test_equals_upstream_output(golden, upstream_case):
    """Upstream IDT (jiexiaou/IDT d72510c) under the same seed: same weights, same output on a 128x128 image."""
    net, out = upstream_case
    param_sum = sum(p.double().sum().item() for p in net.parameters())
    assert param_sum == pytest.approx(golden['plain']['param_sum'], rel=1e-9), 'the seeded init no longer matches'
    torch.testing.assert_close(out, golden['plain']['output'], rtol=0, atol=1e-5)


def test_tiled_equals_upstream_full_size_evaluation(golden):
    """Upstream's splitimage/mergeimage (before its clamp) on a 72x84 image with a 64-pixel narrow IDT."""
    ref = golden['tiled']
    net = seeded_idt(ref['seed'], tile=True, **ref['config']).eval()
    assert sum(p.double().sum().item() for p in net.parameters()) == pytest.approx(ref['param_sum'], rel=1e-9)
    with torch.no_grad():
        out = net(ref['input'].float() / 255)
    torch.testing.assert_close(out, ref['output'], rtol=0, atol=1e-5)


def test_training_step_with_spn(empty_torch_home, monkeypatch):
    torch.manual_seed(0)
    net = seeded_idt(1, embed_dim=8, mlp_ratio=1., tile=True).train()
    monkeypatch.setattr(net, 'forward_tiled', lambda x: pytest.fail('128x128 training must not tile'))
    spn = mclir_plugin.SPNLoss(neg_weight=0.1, vgg_fallback='random')
    hook = mclir_plugin.HistoryNegativeHook(neg_iter=[1, 2])
    hook.build(net)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    before = [p.detach().clone() for p in net.parameters()]
    neg_before = [p.clone() for p in hook.negatives[0].parameters()]
    x, gt = torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128)

    out = net(x)
    loss = spn(out, gt, hook.forward_negatives(x))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert hook.step(net, 1) == [0]

    assert torch.isfinite(loss)
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters()))
    assert any(not torch.equal(a, p) for a, p in zip(neg_before, hook.negatives[0].parameters()))
