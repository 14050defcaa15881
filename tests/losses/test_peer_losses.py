import mclir_plugin  # noqa: F401

# ContrastRatioLoss (AECR-Net's CR) and InfoNCELoss (PCL): hand computations, gradients, registry, errors, and the
# plain-PyTorch example driving them with history negatives.


import pytest
import torch
import torch.nn.functional as F
from basicsr.losses import build_loss
from basicsr.utils.registry import LOSS_REGISTRY
from torchvision.models import vgg as tv_vgg

from mclir_plugin.losses.contrast_ratio_loss import ContrastRatioLoss
from mclir_plugin.losses.contrastive_base import NegativeContrastLoss
from mclir_plugin.losses.infonce_loss import InfoNCELoss
from conftest import load_example
from mclir_plugin.utils.options import check_call_kwargs

AECR_SLICES = [(0, 2), (2, 7), (7, 12), (12, 21), (21, 30)]  # AECR-Net's/PCL's Vgg19: relu1_1 ... relu5_1


@pytest.fixture(scope='session')
def vgg19_features(tmp_path_factory):
    """Random torchvision VGG19 ``features`` and the same weights saved in torchvision's file layout."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(19)
        features = tv_vgg.make_layers(tv_vgg.cfgs['E']).eval().requires_grad_(False)
    path = tmp_path_factory.mktemp('vgg19') / 'vgg19-dcbb9e9d.pth'
    torch.save({f'features.{k}': v for k, v in features.state_dict().items()}, path)
    return features, str(path)


def aecr_features(features, x):
    """The five AECR-Net slices, applied one after the other (independent of the plugin's layer names)."""
    out = []
    for start, end in AECR_SLICES:
        x = features[start:end](x)
        out.append(x)
    return out


def images(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(2, 3, 16, 16, generator=g)
    gt = torch.rand(2, 3, 16, 16, generator=g)
    negs = torch.rand(2, 2, 3, 16, 16, generator=g)
    lq = torch.rand(2, 3, 8, 8, generator=g)
    return pred, gt, negs, lq


def test_cr_defaults_are_aecr_nets(empty_torch_home):
    loss = ContrastRatioLoss(vgg_fallback='random')
    assert loss.layer_weights == {'relu1_1': 1 / 32, 'relu2_1': 1 / 16, 'relu3_1': 1 / 8, 'relu4_1': 1 / 4,
                                  'relu5_1': 1.0}
    assert loss.eps == 1e-7 and loss.vgg.vgg_type == 'vgg19' and not loss.vgg.use_input_norm
    assert loss.neg_source == 'history' and loss.uses_history
    assert loss.vgg.weights_source.startswith('RANDOM')


@pytest.mark.parametrize('neg_source, channels_last, rtol', [('history', False, 1e-5), ('both', False, 1e-5),
                                                              ('history', 'auto', 1e-4)])
def test_cr_matches_hand_computation(vgg19_features, neg_source, channels_last, rtol):
    """Exact in the default layout; channels-last (the CPU default) sums in another order, 16 layers deep."""
    features, path = vgg19_features
    loss = ContrastRatioLoss(loss_weight=0.5, neg_weight=0.3, neg_source=neg_source, vgg_weights=path,
                             channels_last=channels_last)
    pred, gt, negs, lq = images(1)
    got = loss(pred, gt, negs, lq=lq)
    negatives = list(negs)
    if neg_source == 'both':  # the SR input, upsampled bicubically to the output's size, is one more negative
        negatives.append(F.interpolate(lq, size=(16, 16), mode='bicubic', align_corners=False).clamp(0, 1))
    fa, fp = aecr_features(features, pred), aecr_features(features, gt)
    fn = [aecr_features(features, n) for n in negatives]
    ratio = 0.0
    for i, w in enumerate([1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0]):
        d_ap = F.l1_loss(fa[i], fp[i])
        d_an = sum(F.l1_loss(fa[i], f[i]) for f in fn) / len(fn)
        ratio = ratio + w * d_ap / (d_an + 1e-7)
    expected = 0.5 * F.l1_loss(pred, gt) + 0.3 * ratio
    assert torch.allclose(got, expected, rtol=rtol, atol=0)
    l_rec, l_neg = loss.terms(pred, gt, negs, lq=lq)
    assert torch.allclose(l_neg, -0.3 * ratio, rtol=rtol) and l_neg < 0
    assert torch.allclose(l_rec, 0.5 * F.l1_loss(pred, gt))


@pytest.mark.parametrize('similarity', ['location', 'pooled'])
def test_infonce_matches_hand_computation(vgg19_features, similarity):
    features, path = vgg19_features
    loss = InfoNCELoss(neg_weight=2.0, layer_weights={'relu1_1': 0.25, 'relu3_1': 0.75}, temperature=0.5,
                       similarity=similarity, vgg_weights=path)
    pred, gt, negs, _ = images(2)
    got = loss(pred, gt, negs)
    fa, fp = aecr_features(features, pred), aecr_features(features, gt)
    fn = [aecr_features(features, n) for n in negs]

    def sim(a, b):  # (B,): cosine over channels per location then the spatial mean (PCL), or of pooled features
        if similarity == 'pooled':
            return F.cosine_similarity(a.mean(dim=(2, 3)), b.mean(dim=(2, 3)), dim=1)
        return F.cosine_similarity(a, b, dim=1).mean(dim=(1, 2))

    nce = 0.0
    for i, w in [(0, 0.25), (2, 0.75)]:
        logits = torch.stack([sim(fa[i], fp[i])] + [sim(fa[i], f[i]) for f in fn], dim=1) / 0.5
        nce = nce + w * (-torch.log_softmax(logits, dim=1)[:, 0]).mean()
    assert torch.allclose(got, F.l1_loss(pred, gt) + 2.0 * nce, rtol=1e-5)
    assert loss.terms(pred, gt, negs)[1] < 0


@pytest.mark.parametrize('cls', [ContrastRatioLoss, InfoNCELoss])
def test_no_gradient_to_target_negatives_input_or_vgg(empty_torch_home, cls):
    loss = cls(neg_source='both', layer_weights={'relu1_1': 0.5, 'relu2_1': 0.5}, vgg_fallback='random')
    pred, gt, negs, lq = (t.requires_grad_() for t in images(3))
    loss.negative_term(pred, gt, negs, lq=lq).backward()  # the contrastive term (L1 reconstruction reaches gt)
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert gt.grad is None and negs.grad is None and lq.grad is None
    assert all(p.grad is None and not p.requires_grad for p in loss.vgg.parameters())


def test_contrastive_term_moves_the_gradient(empty_torch_home):
    """The negative term changes the gradient (so it is really part of the loss), and neg_weight 0 removes it."""
    pred, gt, negs, _ = images(4)
    grads = []
    for neg_weight in (0.0, 0.5):
        loss = ContrastRatioLoss(neg_weight=neg_weight, layer_weights={'relu1_1': 1.0}, vgg_fallback='random')
        x = pred.clone().requires_grad_()
        loss(x, gt, None if neg_weight == 0 else negs).backward()  # neg_weight 0 needs no negatives
        grads.append(x.grad)
    assert torch.allclose(grads[0], torch.sign(pred - gt) / pred.numel())
    assert not torch.allclose(grads[0], grads[1])


def test_registered_and_built_by_build_loss(empty_torch_home):
    for name, cls in [('ContrastRatioLoss', ContrastRatioLoss), ('InfoNCELoss', InfoNCELoss)]:
        assert LOSS_REGISTRY.get(name) is cls and issubclass(cls, NegativeContrastLoss)
        opt = {'type': name, 'neg_weight': 0.2, 'neg_source': 'input', 'layer_weights': {'relu2_1': 1.0},
               'vgg_fallback': 'random'}
        check_call_kwargs(cls, opt, 'train.pixel_opt')  # every key is an accepted argument
        loss = build_loss(dict(opt))
        assert type(loss) is cls and loss.neg_weight == 0.2 and not loss.uses_history
        pred, gt, _, lq = images(5)
        assert torch.isfinite(loss(pred, gt, lq=lq))  # input negatives only: no history needed


@pytest.mark.parametrize('kwargs, match', [
    ({'neg_source': 'hazy'}, "neg_source must be one of 'history', 'input', 'both', got 'hazy'"),
    ({'neg_weight': -1}, 'neg_weight must be a finite number >= 0, got -1'),
    ({'rec_loss': 'l3'}, 'rec_loss must be one of'),
    ({'layer_weights': {}}, r'layer_weights must be a non-empty mapping .*, got \{\}'),
    ({'layer_weights': {'relu9_9': 1.0}}, 'Unknown vgg19 layer'),
    ({'vgg_fallback': 'download'}, "vgg_fallback must be one of 'error', 'random', got 'download'"),
])
def test_option_errors_name_the_key(empty_torch_home, kwargs, match):
    for cls in (ContrastRatioLoss, InfoNCELoss):
        with pytest.raises(ValueError, match=match):
            cls(**{'vgg_fallback': 'random', **kwargs})


def test_class_specific_option_errors(empty_torch_home):
    with pytest.raises(ValueError, match=r'ContrastRatioLoss.eps must be a finite number > 0 .*, got 0\.'):
        ContrastRatioLoss(eps=0, vgg_fallback='random')
    with pytest.raises(ValueError, match=r'InfoNCELoss.temperature must be a finite number > 0, got 0\.0\.'):
        InfoNCELoss(temperature=0.0, vgg_fallback='random')
    with pytest.raises(ValueError, match="similarity must be one of 'location', 'pooled', got 'global'"):
        InfoNCELoss(similarity='global', vgg_fallback='random')


def test_missing_vgg19_file_names_it(empty_torch_home):
    with pytest.raises(FileNotFoundError, match=r'vgg19-dcbb9e9d\.pth.*vgg_weights'):
        ContrastRatioLoss()


def test_call_errors_name_the_fix(empty_torch_home):
    history = InfoNCELoss(layer_weights={'relu1_1': 1.0}, vgg_fallback='random')
    pred, gt, negs, lq = images(6)
    with pytest.raises(RuntimeError, match='forward_negatives'):
        history(pred, gt)
    with pytest.raises(RuntimeError, match='forward_negatives'):
        history(pred, gt, [])
    with pytest.raises(ValueError, match=r'negatives must have shape \(N, 2, 3, 16, 16\)'):
        history(pred, gt, negs[:, :1])
    both = ContrastRatioLoss(neg_source='both', layer_weights={'relu1_1': 1.0}, vgg_fallback='random')
    with pytest.raises(RuntimeError, match='needs the degraded input: pass `lq=`'):
        both(pred, gt, negs)
    with pytest.raises(ValueError, match='lq has batch/channels'):
        both(pred, gt, negs, lq=lq[:1])


def test_plain_pytorch_example_trains_with_spn_and_cr(empty_torch_home, tmp_path):
    example = load_example('plain_pytorch_spn')
    ckpt = tmp_path / 'plain.pth'
    run = example.main(iters=4, loss='spn', checkpoint=str(ckpt))
    assert len(run['losses']) == 4 and all(rec > 0 and neg > 0 for rec, neg in run['losses'])
    assert run['bank'].refresh_count == [2, 0] and run['bank'].last_refresh_iter == [4, 0]  # neg_iter [2, 5]
    state = torch.load(ckpt)  # weights-only load: the hook's state holds tensors and numbers only
    assert state['mclir']['refresh_count'] == [2, 0] and state['iter'] == 4
    assert torch.equal(state['mclir']['negatives'][0]['body.0.weight'], run['bank'].negatives[0].body[0].weight)
    # the peer loss through the same loop, with the bank's (inference-mode) negatives
    cr = example.main(iters=2, loss='cr')
    assert all(rec > 0 and neg < 0 for rec, neg in cr['losses'])
    assert isinstance(cr['criterion'], ContrastRatioLoss)
