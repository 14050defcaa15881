"""SPNLoss: the maths against a hand computation, gradient isolation, VGG weight loading and error paths."""
from __future__ import annotations

import copy
import os

import pytest
import torch
import torchvision
from basicsr.losses import build_loss
from basicsr.utils.registry import LOSS_REGISTRY

from mclir_plugin import SPNLoss, VGGFeatures
from mclir_plugin.losses.vgg_features import vgg_layer_names

ALPHA = {'relu1_2': 0.2, 'relu2_2': 0.3, 'relu3_3': 0.5}
TORCHVISION_INDEX = {'relu1_2': 3, 'relu2_2': 8, 'relu3_3': 15}  # positions in torchvision's vgg16().features


def reference_spn(vgg16_file, out, gt, negs, lam, rec=torch.nn.functional.l1_loss):
    """The official formula, written independently: per-negative loop, torchvision's VGG16, ImageNet norm."""
    features = torchvision.models.vgg16(weights=None).features
    features.load_state_dict({k[len('features.'):]: v for k, v in torch.load(vgg16_file).items()})
    features.eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def phi(x):
        x, feats = (x - mean) / std, {}
        for i, layer in enumerate(features[:16]):
            x = layer(x)
            for name, idx in TORCHVISION_INDEX.items():
                if i == idx:
                    feats[name] = x.clone()
        return feats

    l_neg = 0.
    for neg in negs:
        f_out, f_neg = phi(out), phi(neg)
        l_neg += lam * sum(a * torch.nn.functional.l1_loss(f_out[k], f_neg[k]) for k, a in ALPHA.items())
    return rec(out, gt) - l_neg / len(negs)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    out = torch.rand(2, 3, 24, 24, generator=g)
    gt = torch.rand(2, 3, 24, 24, generator=g)
    negs = torch.stack([(out + 0.1 * torch.randn(out.shape, generator=g)).clamp(0, 1) for _ in range(3)])
    return out, gt, negs


def test_registered_and_built_by_basicsr(vgg16_file):
    assert 'SPNLoss' in LOSS_REGISTRY
    loss = build_loss({'type': 'SPNLoss', 'neg_weight': 0.01, 'vgg_weights': vgg16_file})
    assert isinstance(loss, SPNLoss) and loss.neg_weight == 0.01


@pytest.mark.parametrize('lam', [0.001, 0.5])
def test_matches_hand_computation(vgg16_file, batch, lam):
    out, gt, negs = batch
    loss = SPNLoss(neg_weight=lam, vgg_weights=vgg16_file)
    expected = reference_spn(vgg16_file, out, gt, negs, lam)
    assert torch.allclose(loss(out, gt, negs), expected, rtol=1e-5, atol=1e-7)
    l_rec, l_neg = loss.terms(out, gt, list(negs))  # a list of N tensors works too
    assert torch.allclose(l_rec, torch.nn.functional.l1_loss(out, gt))
    assert l_neg.item() > 0
    assert torch.allclose(l_rec - l_neg, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('rec_loss, reference', [
    ('l1', lambda a, b: (a - b).abs().mean()),
    ('mse', lambda a, b: ((a - b) ** 2).mean()),
    ('charbonnier', lambda a, b: torch.sqrt((a - b) ** 2 + 1e-12).mean()),
])
def test_reconstruction_criteria(vgg16_file, batch, rec_loss, reference):
    out, gt, negs = batch
    loss = SPNLoss(loss_weight=2.0, neg_weight=0.0, rec_loss=rec_loss, vgg_weights=vgg16_file)
    l_rec, l_neg = loss.terms(out, gt, negs)
    assert torch.allclose(l_rec, 2.0 * reference(out, gt), rtol=1e-6)
    assert l_neg.item() == 0


def test_gradient_reaches_output_only(vgg16_file, batch):
    out, gt, negs = batch
    out = out.clone().requires_grad_(True)
    negs = negs.clone().requires_grad_(True)
    loss = SPNLoss(neg_weight=0.5, vgg_weights=vgg16_file)
    loss(out, gt, negs).backward()
    assert out.grad is not None and out.grad.abs().sum() > 0
    assert negs.grad is None
    assert all(p.grad is None and not p.requires_grad for p in loss.vgg.parameters())


def test_negative_term_gradient_pushes_away(vgg16_file, batch):
    """Only the negative term: a small step along -grad increases the VGG distance to the negatives."""
    out, gt, negs = batch
    loss = SPNLoss(neg_weight=1.0, vgg_weights=vgg16_file)
    x = out.clone().requires_grad_(True)
    d0 = loss.negative_distance(x, negs)
    (-d0).backward()
    with torch.no_grad():
        d1 = loss.negative_distance(x - 1e-2 * x.grad.sign(), negs)
    assert d1 > d0


def test_vgg_on_output_once_and_negatives_in_one_batch(vgg16_file, batch):
    out, gt, negs = batch
    loss = SPNLoss(neg_weight=0.1, vgg_weights=vgg16_file)
    calls = []
    loss.vgg.register_forward_hook(lambda m, inp, res: calls.append(inp[0].shape[0]))
    loss(out, gt, negs)
    assert calls == [2, 2 * 3]  # the output once (B=2), then the 3 negatives as one batch


def test_zero_weight_skips_vgg(vgg16_file, batch):
    out, gt, negs = batch
    loss = SPNLoss(neg_weight=0, vgg_weights=vgg16_file)
    calls = []
    loss.vgg.register_forward_hook(lambda *a: calls.append(1))
    assert torch.allclose(loss(out, gt, negs), torch.nn.functional.l1_loss(out, gt))
    assert calls == []


def test_without_negatives_names_the_model_type(vgg16_file, batch):
    out, gt, _ = batch
    loss = SPNLoss(vgg_weights=vgg16_file)
    with pytest.raises(RuntimeError, match='model_type: MCLIRModel'):
        loss(out, gt)
    with pytest.raises(RuntimeError, match='model_type: MCLIRModel'):
        loss(out, gt, [])


def test_bad_negative_shape(vgg16_file, batch):
    out, gt, negs = batch
    loss = SPNLoss(vgg_weights=vgg16_file)
    with pytest.raises(ValueError, match='negatives must have shape'):
        loss(out, gt, negs[:, :1])


@pytest.mark.parametrize('kwargs, match', [
    ({'layer_weights': {'relu3_4': 1.0}}, 'Unknown vgg16 layer'),
    ({'layer_weights': {}}, r'SPNLoss.layer_weights must be a non-empty mapping .*, got \{\}'),
    ({'neg_weight': -0.1}, 'neg_weight must be a finite number >= 0'),
    ({'neg_weight': 'automatic'}, "neg_weight must be a finite number >= 0 or 'auto', got 'automatic'"),
    ({'neg_weight': 'auto', 'auto_iters': 0}, 'auto_iters must be an integer >= 1'),
    ({'rec_loss': 'l2'}, 'rec_loss must be one of'),
    ({'vgg_type': 'vgg17'}, 'vgg_type'),
    ({'vgg_fallback': 'download'}, "vgg_fallback must be one of 'error', 'random', got 'download'"),
])
def test_bad_arguments(vgg16_file, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SPNLoss(vgg_weights=vgg16_file, **kwargs)


def test_imagenet_weights_from_torchvision_cache(torch_home_with_vgg, vgg16_file):
    vgg = VGGFeatures(['relu3_3'])  # default weights='imagenet', fallback='error'
    assert vgg.weights_source.startswith('ImageNet weights from ' + torch_home_with_vgg)
    saved = torch.load(vgg16_file)
    assert torch.equal(vgg.features[14].weight, saved['features.14.weight'])


def test_missing_imagenet_weights_name_the_file(empty_torch_home):
    expected = os.path.join(empty_torch_home, 'hub', 'checkpoints', 'vgg16-397923af.pth')
    with pytest.raises(FileNotFoundError) as err:
        SPNLoss()
    assert expected in str(err.value) and 'vgg_weights' in str(err.value) and 'TORCH_HOME' in str(err.value)


def test_missing_explicit_file_is_an_error_even_with_fallback(empty_torch_home, tmp_path):
    with pytest.raises(FileNotFoundError, match='vgg_weights file'):
        SPNLoss(vgg_weights=str(tmp_path / 'nope.pth'), vgg_fallback='random')


def test_random_fallback_is_announced_and_seeded(empty_torch_home):
    state = torch.random.get_rng_state()
    a = VGGFeatures(['relu2_2'], fallback='random')
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is untouched
    b = VGGFeatures(['relu2_2'], fallback='random')
    assert a.weights_source.startswith('RANDOM weights') and 'demo only' in a.weights_source
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert a.features[0].weight.std() > 0


def test_wrong_file_is_rejected(tmp_path):
    path = tmp_path / 'not_vgg.pth'
    torch.save({'conv.weight': torch.zeros(1)}, path)
    with pytest.raises(ValueError, match='is not a torchvision vgg16 state dict'):
        VGGFeatures(['relu1_2'], weights=str(path))
    torch.save({'features.0.weight': torch.zeros(64, 3, 5, 5), 'features.0.bias': torch.zeros(64),
                'features.2.weight': torch.zeros(64, 64, 3, 3), 'features.2.bias': torch.zeros(64)}, path)
    with pytest.raises(ValueError, match='does not match vgg16'):
        VGGFeatures(['relu1_2'], weights=str(path))


def test_vgg_stays_frozen_in_eval(vgg16_file):
    loss = SPNLoss(vgg_weights=vgg16_file)
    loss.train()
    assert not loss.vgg.training and not any(p.requires_grad for p in loss.vgg.parameters())


@pytest.mark.parametrize('vgg_type', ['vgg11', 'vgg13', 'vgg16', 'vgg19'])
def test_layer_names_match_torchvision(vgg_type):
    features = getattr(torchvision.models, vgg_type)(weights=None).features
    names = vgg_layer_names(vgg_type)
    assert len(names) == len(features)
    for name, module in zip(names, features):
        kind = {'conv': torch.nn.Conv2d, 'relu': torch.nn.ReLU, 'pool': torch.nn.MaxPool2d}[name.rstrip('0123456789_')]
        assert isinstance(module, kind), (name, module)


@pytest.mark.parametrize('num_neg', [1, 4])
def test_same_loss_and_gradient_as_the_official_structure(vgg16_file, num_neg):
    """VGG on the output once (plugin) vs once per negative (official): same value, same gradient."""
    from mclir_plugin.models.official_step import official_spn_terms
    g = torch.Generator().manual_seed(1)
    out = torch.rand(2, 3, 20, 20, generator=g)
    gt = torch.rand(2, 3, 20, 20, generator=g)
    negs = torch.rand(num_neg, 2, 3, 20, 20, generator=g)
    loss = SPNLoss(neg_weight=0.3, vgg_weights=vgg16_file)
    x1, x2 = out.clone().requires_grad_(True), out.clone().requires_grad_(True)
    ours = loss.terms(x1, gt, negs)
    theirs = official_spn_terms(x2, gt, list(negs), loss.vgg, loss.layer_weights, 0.3)
    (ours[0] - ours[1]).backward()
    (theirs[0] - theirs[1]).backward()
    assert torch.allclose(ours[0], theirs[0]) and torch.allclose(ours[1], theirs[1], rtol=1e-5)
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-4, atol=1e-9)


def test_uncertainty_weighting_weights_pixels_where_negatives_disagree(vgg16_file):
    g = torch.Generator().manual_seed(3)
    out, gt = torch.rand(1, 3, 8, 8, generator=g), torch.rand(1, 3, 8, 8, generator=g)
    negs = out.expand(3, 1, 3, 8, 8).clone()
    negs[..., :4] += torch.randn(3, 1, 3, 8, 4, generator=g)  # the negatives disagree on the left half only
    loss = SPNLoss(neg_weight=0.0, vgg_weights=vgg16_file, uncertainty_weighting=True)
    w = loss.uncertainty_weight(negs)
    assert w.shape == (1, 1, 8, 8) and w[..., 4:].abs().max() < 1e-6 and w.mean().item() == pytest.approx(1.0)
    spread = negs.std(0).mean(1, keepdim=True)
    expected = (spread * (out - gt).abs()).sum() / (spread.sum() * 3)  # BasicSR: sum(w * l) / sum(w broadcast)
    l_rec, _ = loss.terms(out, gt, negs)
    assert l_rec.item() == pytest.approx(expected.item(), rel=1e-5)
    assert SPNLoss(neg_weight=0.0, vgg_weights=vgg16_file, uncertainty_weighting=True).uncertainty_weight(
        negs[:1]) is None  # one negative has no spread
    with pytest.raises(ValueError, match='uncertainty_weighting needs a per-pixel'):
        SPNLoss(rec_loss='ssim', uncertainty_weighting=True, vgg_weights=vgg16_file)


def test_mean_abs_distance_gradient():
    from mclir_plugin.losses.spn_loss import MeanAbsDistance
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    negs = torch.randn(3, 2, 3, 4, 5, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: MeanAbsDistance.apply(f, negs), (feats,))
    assert torch.allclose(MeanAbsDistance.apply(feats, negs), (feats.unsqueeze(0) - negs).abs().mean())


def test_channels_last_auto_on_cpu_same_features_and_gradients(vgg16_file):
    """'auto' (the default) runs VGG channels-last on CPU: the same features and input gradients as the default
    layout, also when its first call comes in inference mode (the converted weights must still serve backward)."""
    layers = ['relu1_2', 'relu2_2', 'relu3_3']
    auto = VGGFeatures(layers, weights=vgg16_file)
    plain = VGGFeatures(layers, weights=vgg16_file, channels_last=False)
    assert auto.channels_last == 'auto' and auto.uses_channels_last(torch.device('cpu'))
    assert not auto.uses_channels_last(torch.device('cuda'))
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        first = auto(x)
    assert auto.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not auto.features[0].weight.is_inference()
    for name, feature in first.items():
        torch.testing.assert_close(feature, plain(x)[name], rtol=1e-5, atol=1e-5)
    grads = []
    for vgg, inp in ((auto, x), (plain, x), (copy.deepcopy(plain).double(), x.double())):
        inp = inp.clone().requires_grad_(True)
        sum(f.pow(2).mean() for f in vgg(inp).values()).backward()
        grads.append(inp.grad.double())
    # against float64: rounding can flip a ReLU whose input is about 0 in either layout, so ask channels-last to be
    # no less accurate than the default layout (with this seed the default layout flips one: 5e-4 against 5e-7)
    error = [float((g - grads[2]).norm() / grads[2].norm()) for g in grads[:2]]
    assert error[0] <= max(1e-4, 2 * error[1]), error
    auto.channels_last = False  # the layout follows the option at the next call
    auto(x)
    assert auto.features[0].weight.is_contiguous()
    with pytest.raises(ValueError, match="channels_last must be one of true, false, 'auto'.*, got 'cpu'"):
        VGGFeatures(layers, weights=vgg16_file, channels_last='cpu')
