"""MCLIRModel in-process: the official step order, exact resume of the negatives, option errors."""
from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from basicsr.archs import build_network
from basicsr.models import build_model

from mclir_plugin.models import MCLIRMixin
from mclir_plugin.models.official_step import OfficialStep

EDSR = dict(type='EDSR', num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, upscale=2, res_scale=1,
            img_range=255., rgb_mean=[0.4488, 0.4371, 0.4040])


def make_opt(tmp_path, vgg16_file, *, neg_iter=(1, 2, 3), neg_decay=0.1, neg_start=0.0, pairing='natural',
             base_model='SRModel', neg_weight=0.5, ema_decay=0.0, **overrides):
    """An option dict as BasicSR's parse_options would hand it to build_model (training, CPU)."""
    root = str(tmp_path / 'run')
    paths = {k: os.path.join(root, k) for k in ('models', 'training_states', 'log', 'visualization')}
    for p in paths.values():
        os.makedirs(p, exist_ok=True)
    opt = {
        'name': 'unit', 'model_type': 'MCLIRModel', 'scale': 2, 'num_gpu': 0, 'manual_seed': 0,
        'is_train': True, 'dist': False, 'rank': 0, 'world_size': 1, 'root_path': str(tmp_path),
        'mclir': {'base_model': base_model,
                  'hook': {'type': 'HistoryNegativeHook', 'neg_iter': list(neg_iter), 'neg_decay': neg_decay,
                           'neg_start': neg_start, 'pairing': pairing}},
        'network_g': dict(EDSR),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None,
                 'experiments_root': root, **paths},
        'train': {'ema_decay': ema_decay, 'optim_g': {'type': 'Adam', 'lr': 1e-2, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5}, 'total_iter': 10,
                  'pixel_opt': {'type': 'SPNLoss', 'loss_weight': 1.0, 'neg_weight': neg_weight,
                                'vgg_weights': vgg16_file}},
    }
    for key, value in overrides.items():
        opt[key] = value
    return opt


def batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{'lq': torch.rand(2, 3, 12, 12, generator=g), 'gt': torch.rand(2, 3, 24, 24, generator=g)}
            for _ in range(n)]


def official_run(model_opt, init_state, spn, data, neg_iter, neg_decay, lam):
    """The official step (mclir_plugin.models.official_step) from the same initial weights; negatives start as exact copies."""
    net = build_network(copy.deepcopy(model_opt['network_g']))
    net.load_state_dict(init_state)
    negs = [copy.deepcopy(net).eval().requires_grad_(False) for _ in neg_iter]  # neg_start = 0
    step = OfficialStep(net, negs, torch.optim.Adam(net.parameters(), lr=1e-2, betas=(0.9, 0.99)), spn.vgg,
                        spn.layer_weights, lam, neg_iter, neg_decay)
    losses, snapshots = [], []
    for it, batch in enumerate(data, start=1):
        losses.append(step(batch['lq'], batch['gt'], it))
        snapshots.append([[p.clone() for p in neg.parameters()] for neg in negs])
    return losses, snapshots


def test_follows_official_step_order(tmp_path, vgg16_file):
    neg_iter, neg_decay, lam = [1, 2, 3], [0.1, 0.5, 0.9], 0.5
    opt = make_opt(tmp_path, vgg16_file, neg_iter=neg_iter, neg_decay=neg_decay, pairing='official_reversed',
                   neg_weight=lam)
    model = build_model(opt)
    assert isinstance(model, MCLIRMixin) and type(model).__name__ == 'MCLIRSRModel'
    init_state = copy.deepcopy(model.net_g.state_dict())
    data = batches(6)
    ours = []
    for it, batch in enumerate(data, start=1):
        model.feed_data(batch)
        model.optimize_parameters(it)
        log = model.get_current_log()
        assert log['l_neg_ratio'] == pytest.approx(log['l_neg'] / log['l_pix'], rel=1e-5)
        ours.append(((log['l_pix'], log['l_neg']), [[p.clone() for p in neg.parameters()]
                                                     for neg in model.negative_hook.negatives]))
    official_losses, official_negs = official_run(opt, init_state, model.cri_pix, data, neg_iter, neg_decay, lam)
    for (loss, negs), ref_loss, ref_negs in zip(ours, official_losses, official_negs):
        assert loss == pytest.approx(ref_loss, rel=1e-4, abs=1e-7)
        for neg, ref in zip(negs, ref_negs):
            for p, q in zip(neg, ref):
                # Adam amplifies the last-bit differences of summation order (VGG once vs per negative);
                # a wrong order or pairing moves weights by ~1e-2
                assert torch.allclose(p, q, rtol=1e-3, atol=2e-5)
    assert ours[2][0][1] > 0  # the negative term is live (negatives lag behind after the first step)


def test_negatives_refreshed_after_step_from_raw_weights(tmp_path, vgg16_file):
    """With decay 0 a refresh copies the network: it must be the post-step raw net_g, not the EMA copy."""
    opt = make_opt(tmp_path, vgg16_file, neg_iter=[1], neg_decay=0.0, ema_decay=0.9)
    model = build_model(opt)
    model.feed_data(batches(1)[0])
    model.optimize_parameters(1)
    neg = model.negative_hook.negatives[0]
    assert all(torch.equal(a, b) for a, b in zip(neg.parameters(), model.net_g.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(neg.parameters(), model.net_g_ema.parameters()))


def test_save_and_resume_restore_negatives_exactly(tmp_path, vgg16_file):
    opt = make_opt(tmp_path, vgg16_file, neg_iter=[2, 3], neg_start=0.1)
    data = batches(5)
    model = build_model(copy.deepcopy(opt))
    for it in range(1, 4):
        model.feed_data(data[it - 1])
        model.optimize_parameters(it)
    model.save(epoch=0, current_iter=3)
    state_file = os.path.join(opt['path']['training_states'], '3.state')
    assert sorted(os.listdir(opt['path']['training_states'])) == ['3.state']  # no temporary file left
    state = torch.load(state_file, weights_only=True)  # only tensors and plain containers inside
    assert state['mclir']['refresh_count'] == [1, 1] and len(state['mclir']['negatives']) == 2

    resumed_opt = copy.deepcopy(opt)  # what check_resume does: load net_g from the checkpoint
    resumed_opt['path']['pretrain_network_g'] = os.path.join(opt['path']['models'], 'net_g_3.pth')
    resumed = build_model(resumed_opt)
    resumed.resume_training(state)
    for a, b in zip(model.negative_hook.negatives, resumed.negative_hook.negatives):
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert resumed.negative_hook.refresh_count == [1, 1] and resumed.negative_hook.last_refresh_iter == [2, 3]
    # one more step on both gives the same losses and the same network and negatives
    for m in (model, resumed):
        m.feed_data(data[3])
        m.optimize_parameters(4)
    assert model.get_current_log() == resumed.get_current_log()
    assert all(torch.equal(p, q) for p, q in zip(model.net_g.parameters(), resumed.net_g.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(model.negative_hook.negatives[0].parameters(),
                                                 resumed.negative_hook.negatives[0].parameters()))


def test_resume_from_a_plain_state_warns_and_keeps_training(tmp_path, vgg16_file, caplog):
    opt = make_opt(tmp_path, vgg16_file)
    model = build_model(opt)
    plain = {'epoch': 0, 'iter': 3, 'optimizers': [o.state_dict() for o in model.optimizers],
             'schedulers': [s.state_dict() for s in model.schedulers]}
    model.resume_training(plain)  # a state written by a plain SRModel: negatives start afresh, with a warning
    model.feed_data(batches(1)[0])
    model.optimize_parameters(4)
    assert model.negative_hook.built


@pytest.mark.parametrize('change, error, match', [
    (lambda o: o['mclir'].update(neg_iter=[1]), KeyError, r"Unknown option 'neg_iter' in mclir\."),
    (lambda o: o['mclir']['hook'].update(neg_decya=0.1), KeyError, "Did you mean 'neg_decay'"),
    (lambda o: o['mclir']['hook'].update(neg_iter=[]), ValueError,
     r'mclir\.hook\.neg_iter must be an integer >= 1 .*non-empty list.*, got \[\]'),
    (lambda o: o['mclir'].update(base_model='SwinIRModle'), KeyError, "base_model 'SwinIRModle' is not"),
    (lambda o: o['mclir'].update(base_model='StyleGAN2Model'), TypeError, 'StyleGAN2Model cannot be trained with SPN'),
    (lambda o: o['mclir']['hook'].update(type='EMAHook'), KeyError, 'not a registered history-negative hook'),
    (lambda o: o['train']['pixel_opt'].update(type='L1Loss'), ValueError, 'needs `train.pixel_opt.type: SPNLoss`'),
    (lambda o: o['train']['pixel_opt'].update(neg_wieght=0.1), KeyError,
     "Unknown option 'neg_wieght' in train.pixel_opt. Did you mean 'neg_weight'"),
    (lambda o: o.update(mclir=[1, 2]), TypeError, 'The mclir block must be a mapping'),
])
def test_option_errors_name_the_key(tmp_path, vgg16_file, change, error, match):
    opt = make_opt(tmp_path, vgg16_file)
    change(opt)
    with pytest.raises(error, match=match):
        build_model(opt)


def test_spn_loss_in_a_plain_model_says_use_mclir(tmp_path, vgg16_file):
    opt = make_opt(tmp_path, vgg16_file, model_type='SRModel')
    model = build_model(opt)
    model.feed_data(batches(1)[0])
    with pytest.raises(RuntimeError, match='model_type: MCLIRModel'):
        model.optimize_parameters(1)


def test_missing_mclir_block_uses_defaults(tmp_path, vgg16_file):
    opt = make_opt(tmp_path, vgg16_file)
    del opt['mclir']
    model = build_model(opt)
    assert type(model).__name__ == 'MCLIRSRModel'
    assert model.negative_hook.intervals == [100, 200, 500, 1000] and model.negative_hook.neg_start == 0.1


@pytest.mark.parametrize('amp, dtype', [('bf16', torch.bfloat16), ('fp16', torch.float16)])
def test_mixed_precision_step(tmp_path, vgg16_file, amp, dtype):
    opt = make_opt(tmp_path, vgg16_file, neg_iter=[1, 2], neg_start=0.1)
    opt['mclir']['amp'] = amp
    model = build_model(opt)
    seen = []  # EDSR adds its fp32 mean at the end, so look at a convolution's output
    model.net_g.conv_first.register_forward_hook(lambda m, i, o: seen.append(('net', o.dtype)))
    model.negative_hook.negatives[0].conv_first.register_forward_hook(lambda m, i, o: seen.append(('neg', o.dtype)))
    before = [p.clone() for p in model.net_g.parameters()]
    for it, batch in enumerate(batches(2), start=1):
        model.feed_data(batch)
        model.optimize_parameters(it)
    log = model.get_current_log()
    assert seen == [('net', dtype), ('neg', dtype)] * 2  # network and negatives under autocast
    assert all(torch.isfinite(torch.tensor(v)) for v in log.values()) and log['l_neg'] > 0
    assert all(p.dtype == torch.float32 for p in model.net_g.parameters())  # weights stay fp32
    assert any(not torch.equal(a, b) for a, b in zip(before, model.net_g.parameters()))
    assert model.grad_scaler.is_enabled() == (amp == 'fp16')


def test_negative_term_every_k_steps(tmp_path, vgg16_file):
    opt = make_opt(tmp_path, vgg16_file, neg_iter=[100], neg_start=0.2, neg_weight=0.5)
    opt['mclir']['neg_every'] = 3
    model = build_model(opt)
    calls = []
    model.negative_hook.negatives[0].register_forward_hook(lambda *a: calls.append(1))
    batch = batches(1)[0]
    for it in (1, 2, 3):
        model.feed_data(batch)
        model.optimizer_g.zero_grad()
        model.output = model.net_g(model.lq)
        model.cri_pix.bind(model.lq, it)  # the criterion the base step calls, bound to this batch's input
        total = model.cri_pix(model.output, model.gt)
        l_pix, l_neg = model.cri_pix.parts['l_rec'], model.cri_pix.parts['l_neg']
        assert torch.equal(total.detach(), l_pix - l_neg)
        if it < 3:
            assert l_neg.item() == 0
        else:
            distance = model.cri_pix.negative_distance(model.output, model.negative_hook.forward_negatives(model.lq))
            assert l_neg.item() == pytest.approx(3 * 0.5 * distance.item(), rel=1e-5)
    assert len(calls) == 2  # only at iteration 3 (plus the check above)


def test_negative_term_on_part_of_the_batch(tmp_path, vgg16_file):
    opt = make_opt(tmp_path, vgg16_file, neg_iter=[100], neg_start=0.2)
    opt['mclir']['neg_batch_fraction'] = 0.5
    model = build_model(opt)
    sizes = []
    model.negative_hook.negatives[0].register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    g = torch.Generator().manual_seed(0)
    model.feed_data({'lq': torch.rand(4, 3, 12, 12, generator=g), 'gt': torch.rand(4, 3, 24, 24, generator=g)})
    model.optimize_parameters(1)
    assert sizes == [2] and model.get_current_log()['l_neg'] > 0


@pytest.mark.parametrize('key, value, match', [
    ('amp', 'fp8', 'mclir.amp must be one of'),
    ('neg_every', 0, 'mclir.neg_every must be an integer >= 1'),
    ('neg_batch_fraction', 0.0, r'mclir.neg_batch_fraction must be a finite number in \(0, 1\] .*, got 0\.0\.'),
])
def test_cost_option_errors(tmp_path, vgg16_file, key, value, match):
    opt = make_opt(tmp_path, vgg16_file)
    opt['mclir'][key] = value
    with pytest.raises(ValueError, match=match):
        build_model(opt)


@pytest.mark.parametrize('loss_type, source', [('ContrastRatioLoss', 'history'), ('ContrastRatioLoss', 'both'),
                                               ('InfoNCELoss', 'input')])
def test_peer_losses_train_through_the_wrapper(tmp_path, vgg16_file, empty_torch_home, loss_type, source):
    opt = make_opt(tmp_path, vgg16_file, neg_iter=[1, 2], neg_start=0.2)
    opt['train']['pixel_opt'] = {'type': loss_type, 'neg_weight': 0.01, 'neg_source': source,
                                 'vgg_fallback': 'random'}
    model = build_model(opt)
    calls = []
    model.negative_hook.negatives[0].register_forward_hook(lambda *a: calls.append(1))
    for it, batch in enumerate(batches(2), start=1):
        model.feed_data(batch)
        model.optimize_parameters(it)
    log = model.get_current_log()
    assert log['l_neg'] < 0 and torch.isfinite(torch.tensor(log['l_pix']))  # a contrastive cost: l_neg = -lambda*C
    assert len(calls) == (0 if source == 'input' else 2)  # history negatives run only when the loss uses them


def test_nonfinite_losses_are_skipped_then_stop_the_run(tmp_path, vgg16_file):
    opt = make_opt(tmp_path, vgg16_file, neg_iter=[1])
    opt['mclir']['max_nonfinite_steps'] = 3
    model = build_model(opt)
    good = batches(1)[0]
    model.feed_data(good)
    model.optimize_parameters(1)
    model.save(epoch=0, current_iter=1)
    weights = [p.clone() for p in model.net_g.parameters()]
    negatives = [p.clone() for p in model.negative_hook.negatives[0].parameters()]
    bad = {'lq': good['lq'], 'gt': good['gt'].clone().fill_(float('nan'))}
    for it in (2, 3):
        model.feed_data(bad)
        model.optimize_parameters(it)
        assert all(torch.equal(a, b) for a, b in zip(weights, model.net_g.parameters()))  # no update
        assert all(torch.equal(a, b) for a, b in zip(negatives, model.negative_hook.negatives[0].parameters()))
    assert model.nonfinite_in_a_row == 2
    model.feed_data(good)
    model.optimize_parameters(4)  # a good step resets the count
    assert model.nonfinite_in_a_row == 0
    for it in (5, 6):
        model.feed_data(bad)
        model.optimize_parameters(it)
    model.feed_data(bad)
    with pytest.raises(FloatingPointError, match=r"3 non-finite losses in a row \(iterations 5-7\)\. The last "
                                                 r"checkpoint written before they began is .*1\.state"):
        model.optimize_parameters(7)


def test_validation_saves_a_picture_of_the_negatives(tmp_path, vgg16_file):
    import cv2
    from basicsr.data import build_dataloader, build_dataset
    opt = make_opt(tmp_path, vgg16_file, neg_iter=[1, 2, 3], neg_start=0.3)
    opt['val'] = {'save_img': False, 'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 2}}}
    model = build_model(opt)
    data = {'name': 'v', 'type': 'SyntheticPairedDataset', 'task': 'sr', 'scale': 2, 'phase': 'val',
            'images': ['chelsea'], 'val_size': 48}
    loader = build_dataloader(build_dataset(data), data, num_gpu=0, dist=False)
    state = torch.random.get_rng_state()
    model.validation(loader, current_iter=5, tb_logger=None)
    assert torch.equal(state, torch.random.get_rng_state())
    picture = cv2.imread(os.path.join(opt['path']['visualization'], 'mclir_negatives', '5.png'))
    assert picture.shape == (48, 48 * (1 + 1 + 3 + 1 + 1), 3)  # input, output, 3 negatives, gt, distance
    panels = np.split(picture.astype(int), 7, axis=1)
    assert np.abs(panels[1] - panels[2]).sum() > 0  # the output differs from a negative (neg_start blend)
    assert panels[6].max() == 255  # the distance map is scaled to white at its maximum


def test_auto_neg_weight_calibrates_to_the_target_ratio_and_survives_resume(tmp_path, vgg16_file):
    opt = make_opt(tmp_path, vgg16_file, neg_iter=[100], neg_start=0.3)
    opt['train']['pixel_opt'].update(neg_weight='auto', auto_ratio=0.05, auto_iters=3)
    model = build_model(copy.deepcopy(opt))
    data = batches(5)
    for it in (1, 2, 3):
        model.feed_data(data[it - 1])
        model.optimize_parameters(it)
        assert model.get_current_log()['l_neg'] == 0  # the negative term is off while measuring
    assert model.calibration is None
    lam = model.cri_pix.neg_weight
    assert lam > 0
    model.save(epoch=0, current_iter=3)
    state = torch.load(os.path.join(opt['path']['training_states'], '3.state'), weights_only=True)
    assert state['neg_weight']['value'] == pytest.approx(lam) and state['neg_weight']['calibration'] is None
    model.feed_data(data[3])
    model.optimize_parameters(4)
    log = model.get_current_log()
    assert log['l_neg'] > 0 and 0.005 < log['l_neg_ratio'] < 0.5  # near the 0.05 target, one step later
    resumed_opt = copy.deepcopy(opt)
    resumed_opt['path']['pretrain_network_g'] = os.path.join(opt['path']['models'], 'net_g_3.pth')
    resumed = build_model(resumed_opt)
    resumed.resume_training(state)
    assert resumed.calibration is None and resumed.cri_pix.neg_weight == pytest.approx(lam)


def test_ratio_outside_the_authors_range_warns(tmp_path, vgg16_file, monkeypatch):
    from basicsr.utils import get_root_logger
    opt = make_opt(tmp_path, vgg16_file, neg_iter=[100], neg_start=0.3, neg_weight=1e-6)
    model = build_model(opt)
    monkeypatch.setattr(type(model.cri_pix), 'RATIO_WINDOW', 2)
    messages = []
    monkeypatch.setattr(get_root_logger(), 'warning', lambda msg, *a, **k: messages.append(msg))
    for it, batch in enumerate(batches(2), start=1):
        model.feed_data(batch)
        model.optimize_parameters(it)
    assert len(messages) == 1 and 'outside the authors' in messages[0] and 'neg_weight 1e-06 -> about' in messages[0]


def test_adaptive_refresh_runs_before_the_update(tmp_path, vgg16_file):
    opt = make_opt(tmp_path, vgg16_file, neg_iter=[5, 5], neg_start=0.3)
    opt['mclir']['hook'].update(adaptive_threshold=0.0, adaptive_decay=0.0)  # always refresh, as an exact copy
    model = build_model(opt)
    before = [p.clone() for p in model.net_g.parameters()]
    model.feed_data(batches(1)[0])
    model.optimize_parameters(1)
    negative = list(model.negative_hook.negatives[0].parameters())
    assert all(torch.equal(a, b) for a, b in zip(negative, before))  # the pre-step weights, as officially
    assert not all(torch.equal(a, b) for a, b in zip(negative, model.net_g.parameters()))
    assert model.negative_hook.refresh_count == [1, 0]
