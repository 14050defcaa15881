import mclir_plugin  # noqa: F401

# DehazeFormer and FFANet: registry, parameter counts, sizes, value ranges, upstream goldens, checkpoints, SPN step.
#
# The goldens in tests/data were written once from the upstream code (IDKiro/DehazeFormer@5af7c34,
# zhilin007/FFA-Net@6651bcf), which is not part of this repository. Cases with a ``seed`` rebuild their weights
# with seeded_parameters(); the stored ``checksum`` catches a change of torch's random stream.
import math
import os

import pytest
import torch
from basicsr.archs import build_network
from basicsr.models.base_model import BaseModel
from basicsr.utils.registry import ARCH_REGISTRY

from mclir_plugin import HistoryNegativeHook, SPNLoss
from mclir_plugin.archs.dehazeformer_arch import DehazeFormer
from mclir_plugin.archs.ffanet_arch import FFA_MEAN, FFA_STD, FFANet

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'golden')
# docs/archs_datasets.md §0, measured on the upstream code
DEHAZEFORMER_PARAMS = {'t': 687_404, 's': 1_284_884, 'b': 2_517_612, 'd': 4_983_068, 'w': 9_686_724,
                       'm': 4_635_952, 'l': 25_451_652}
FFANET_PARAMS = 4_455_913
# every block type: attention with and without shift, DWConv and Conv with and without attention
TINY = dict(window_size=4, embed_dims=[8, 16, 16, 16, 8], depths=[2, 2, 2, 1, 1], num_heads=[2, 2, 4, 1, 1],
            mlp_ratios=[2., 2., 2., 2., 2.], attn_ratio=[0, 1, 0.5, 0, 0],
            conv_type=['DWConv', 'Conv', 'DWConv', 'Conv', 'DWConv'])
SMALL_NETS = [dict(type='DehazeFormer', **TINY), dict(type='DehazeFormer', variant='t'),
              dict(type='FFANet', gps=1, blocks=1)]


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    # on 2 shared cores, OpenMP threads waiting for a busy core make small element-wise ops ~100x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def seeded_parameters(net: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The goldens' weights: parameters in sorted name order, N(0, (0.5/sqrt(fan_in))^2) for >= 2-D, else 0.02."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in sorted(net.named_parameters()):
        std = 0.5 / math.sqrt(p[0].numel()) if p.dim() > 1 else 0.02
        out[name] = torch.randn(p.shape, generator=g) * std
    return out


def load_seeded(net: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    params = seeded_parameters(net, seed)
    net.load_state_dict({**net.state_dict(), **params}, strict=True)
    return params


def golden(name: str) -> dict:
    return torch.load(os.path.join(DATA, f'golden_{name}.pt'), weights_only=True)


# ---------------------------------------------------------------------------------------------- registry and size
@pytest.mark.parametrize('name, cls', [('DehazeFormer', DehazeFormer), ('FFANet', FFANet)])
def test_registered_and_buildable(name, cls):
    assert ARCH_REGISTRY.get(name) is cls
    opt = dict(type=name, **({'variant': 't'} if name == 'DehazeFormer' else {'gps': 1, 'blocks': 1}))
    assert type(build_network(opt)) is cls


@pytest.mark.parametrize('variant', ['t', 'S', 'b', 'D', 'w', 'M', 'l'])  # mixed case: lookup is case-insensitive
def test_dehazeformer_parameter_count(variant):
    net = build_network(dict(type='DehazeFormer', variant=variant))
    assert n_params(net) == DEHAZEFORMER_PARAMS[variant.lower()]


def test_ffanet_parameter_count_and_state_dict():
    net = build_network(dict(type='FFANet'))  # gps 3, blocks 19 by default
    assert n_params(net) == FFANET_PARAMS
    keys = net.state_dict().keys()
    assert {'g3.gp.19.weight', 'g1.gp.0.calayer.ca.2.weight', 'ca.3.weight', 'post.1.bias'} <= set(keys)
    assert 'mean' not in keys and 'std' not in keys  # non-persistent: upstream checkpoints load strictly


def test_explicit_lists_override_the_variant():
    as_t = DehazeFormer(variant='b', depths=[4, 4, 4, 2, 2], attn_ratio=[0, 0.5, 1, 0, 0])
    assert n_params(as_t) == DEHAZEFORMER_PARAMS['t']
    assert sum(block.use_attn for layer in (as_t.layer1, as_t.layer2, as_t.layer3) for block in layer.blocks) == 6
    conv = DehazeFormer(variant='t', conv_type='Conv')  # one string for all stages
    assert all(layer.blocks[0].attn.conv_type == 'Conv' for layer in (conv.layer1, conv.layer5))
    assert 'layer1.blocks.0.attn.V.weight' not in conv.state_dict()  # Conv blocks without attention have no V
    assert n_params(conv) != DEHAZEFORMER_PARAMS['t']


@pytest.mark.parametrize('kwargs', [dict(variant='x'), dict(embed_dims=[24, 48, 96, 32, 24]),
                                    dict(depths=[4, 4, 4, 2]), dict(conv_type='Depthwise'),
                                    dict(norm_layer='LayerNorm'), dict(input_range=[1, 0])])
def test_dehazeformer_rejects_bad_options(kwargs):
    with pytest.raises(ValueError, match='DehazeFormer'):
        DehazeFormer(**{'variant': 't', **kwargs})


def test_ffanet_rejects_bad_options():
    with pytest.raises(ValueError, match='gps'):
        FFANet(gps=0)


@pytest.mark.parametrize('opt', SMALL_NETS, ids=['dehazeformer-tiny', 'dehazeformer-t', 'ffanet-1-1'])
def test_output_shape_equals_input_shape(opt):
    net = build_network(dict(opt)).eval()
    x = torch.rand(2, 3, 37, 53)  # neither side a multiple of 4 or of the window
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_dehazeformer_small_inputs_raise_a_clear_error():
    net = DehazeFormer(variant='t').eval()
    assert net.min_size == 25
    with torch.no_grad():
        assert net(torch.rand(1, 3, 25, 26)).shape == (1, 3, 25, 26)
        with pytest.raises(ValueError, match='at least 25 px'):
            net(torch.rand(1, 3, 24, 40))


def test_dehazeformer_size_check_matches_the_reflect_paddings(monkeypatch):
    net = DehazeFormer(**TINY).eval()
    predicted = {side: net.fits(side) for side in range(9, 17)}
    assert not predicted[12] and predicted[13]
    monkeypatch.setattr(net, 'fits', lambda side: True)  # run unchecked: torch's reflect pad must agree
    for side, fits in predicted.items():
        try:
            with torch.no_grad():
                net(torch.rand(1, 3, side, 20))
            ran = True
        except RuntimeError:
            ran = False
        assert ran == fits, side


# ---------------------------------------------------------------------------------------------- value ranges
def test_dehazeformer_default_range_wraps_the_raw_network():
    raw = DehazeFormer(**TINY, input_range=[-1, 1]).eval()
    load_seeded(raw)
    unit = DehazeFormer(**TINY).eval()  # input_range [0, 1]
    unit.load_state_dict(raw.state_dict(), strict=True)
    byte = DehazeFormer(**TINY, input_range=[0, 255]).eval()
    byte.load_state_dict(raw.state_dict(), strict=True)
    x = torch.rand(1, 3, 21, 30)
    with torch.no_grad():
        expected = (raw(2 * x - 1) + 1) / 2
        torch.testing.assert_close(unit(x), expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(byte(255 * x), 255 * expected, atol=1e-4, rtol=0)
        assert (raw(x) - unit(x)).abs().max() > 1e-2  # the maps matter


def test_ffanet_input_norm_normalises_only_the_input():
    raw = FFANet(gps=1, blocks=1, input_norm=False).eval()
    load_seeded(raw)
    normed = FFANet(gps=1, blocks=1).eval()
    normed.load_state_dict(raw.state_dict(), strict=True)
    x = torch.rand(1, 3, 17, 19)
    mean, std = torch.tensor(FFA_MEAN).view(1, 3, 1, 1), torch.tensor(FFA_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(normed(x), raw((x - mean) / std), atol=1e-6, rtol=0)
        assert (normed(x) - raw(x)).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------- upstream goldens
def test_dehazeformer_matches_upstream_tiny_golden():
    case = golden('dehazeformer')['cases']['tiny']
    assert case['config'] == TINY
    net = DehazeFormer(**case['config'], input_range=[-1, 1]).eval()
    net.load_state_dict(case['state_dict'], strict=True)  # upstream's own state dict: same names and shapes
    with torch.no_grad():
        torch.testing.assert_close(net(case['input']), case['output'], atol=1e-5, rtol=0)


@pytest.mark.parametrize('arch, case_name', [('dehazeformer', 't'), ('ffanet', 'gps3_blocks1')])
def test_matches_upstream_seeded_golden(arch, case_name):
    case = golden(arch)['cases'][case_name]
    if arch == 'dehazeformer':
        net = DehazeFormer(**case['config'], input_range=[-1, 1])
    else:
        net = FFANet(**case['config'], input_norm=False)
    params = load_seeded(net.eval(), case['seed'])
    checksum = sum(v.double().sum() for v in params.values()).item()
    assert checksum == pytest.approx(case['checksum'], rel=1e-9), 'torch random stream changed: regenerate goldens'
    with torch.no_grad():
        torch.testing.assert_close(net(case['input']), case['output'], atol=1e-5, rtol=0)


@pytest.mark.parametrize('opt, param_key', [(dict(type='DehazeFormer', **TINY), 'state_dict'),
                                            (dict(type='FFANet', gps=3, blocks=1), 'model')])
def test_upstream_checkpoint_layout_loads_through_basicsr(tmp_path, opt, param_key):
    source = build_network(dict(opt))
    load_seeded(source)
    path = str(tmp_path / 'upstream.pth')
    # upstream saves a DataParallel state dict ('module.' prefix) under 'state_dict' (DehazeFormer) / 'model' (FFA)
    torch.save({param_key: {f'module.{k}': v for k, v in source.state_dict().items()}, 'step': 1}, path)
    target = build_network(dict(opt))
    BaseModel.load_network(BaseModel.__new__(BaseModel), target, path, strict=True, param_key=param_key)
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


# ---------------------------------------------------------------------------------------------- training with SPN
@pytest.mark.parametrize('opt', [SMALL_NETS[0], SMALL_NETS[2]], ids=['dehazeformer-tiny', 'ffanet-1-1'])
def test_one_spn_training_step(opt, empty_torch_home):
    torch.manual_seed(0)
    net = build_network(dict(opt)).train()
    spn = SPNLoss(neg_weight=0.1, vgg_fallback='random')
    hook = HistoryNegativeHook(neg_iter=[1, 2])
    hook.build(net)
    before = [p.detach().clone() for p in net.parameters()]
    neg_before = [p.clone() for p in hook.negatives[0].parameters()]
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, gt = torch.rand(2, 3, 24, 24), torch.rand(2, 3, 24, 24)

    out = net(x)
    negatives = hook.forward_negatives(x)
    assert negatives.shape == (2, *out.shape) and not negatives.requires_grad
    loss = spn(out, gt, negatives)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    with_grad = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in net.parameters()]
    changed = [not torch.equal(a, p) for a, p in zip(before, net.parameters())]
    assert sum(with_grad) > 0.9 * len(with_grad) and changed == with_grad
    assert hook.step(net, 1) == [0]
    assert any(not torch.equal(a, p) for a, p in zip(neg_before, hook.negatives[0].parameters()))
