"""``mclir.neg_per_step``: k of the N negatives per step, unbiased for a mean over negatives, resumed exactly."""
from __future__ import annotations

import copy
import itertools
import math
import os

import pytest
import torch
from basicsr.archs import build_network
from basicsr.models import build_model
from basicsr.utils import get_root_logger

from conftest import swinir_model_options
from mclir_plugin.archs.presets import network_preset
from mclir_plugin.hooks.history_negatives import HistoryNegatives
from mclir_plugin.losses import ContrastRatioLoss, SPNLoss
from mclir_plugin.losses.contrastive_criterion import ContrastiveCriterion

N = 4


@pytest.fixture(scope='module')
def setup(vgg16_file):
    """Four distinct negatives of the tiny SwinIR x4 (start blend 0.5), SPN on the random VGG16, one batch."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_network(network_preset('swinir_tiny'))
        lq, gt = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 16, 16)
    bank = HistoryNegatives(neg_iter=[1] * N, neg_start=0.5, seed=1)
    bank.build(net)
    with torch.no_grad():
        out = net(lq)
    return bank, SPNLoss(neg_weight=0.5, vgg_weights=vgg16_file), lq, gt, out


def call(criterion: ContrastiveCriterion, lq, out, gt, it: int) -> float:
    criterion.bind(lq, it)
    with torch.no_grad():
        return float(criterion(out, gt).double())


def test_all_negatives_give_exactly_the_full_loss(setup):
    bank, loss, lq, gt, out = setup
    before = bank.draw_generator.get_state()
    full = ContrastiveCriterion(loss, bank)
    every = ContrastiveCriterion(loss, bank, neg_per_step=N)
    assert every.neg_per_step is None  # k = N draws nothing: today's maths
    assert call(full, lq, out, gt, 1) == call(every, lq, out, gt, 1)
    assert torch.equal(bank.draw_generator.get_state(), before)


@pytest.mark.parametrize('k, draws', [(1, 100), (2, 30)])
def test_sampled_loss_is_unbiased(setup, k, draws):
    """The mean of the sampled loss over many draws equals the full loss within 4 standard errors."""
    bank, loss, lq, gt, out = setup
    full = call(ContrastiveCriterion(loss, bank), lq, out, gt, 1)
    sampled = ContrastiveCriterion(loss, bank, neg_per_step=k)
    values = [call(sampled, lq, out, gt, it) for it in range(1, draws + 1)]
    mean = sum(values) / draws
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (draws - 1) / draws)
    assert se > 0 and abs(mean - full) < 4 * se, (mean, full, se)
    counts = sampled.draw_counts
    assert sum(counts) == k * draws and min(counts) > 0  # every negative drawn, k each time
    report = sampled.draw_report(draws)
    assert report.startswith(f'neg_per_step {k} of {N}: draws since the last report, to iteration {draws}')
    assert str(counts) in report
    assert sampled.draw_counts == [0] * N  # the report starts a new count
    if k == 2:  # exactly: the mean over all 6 subsets (each equally likely) is the full loss
        with torch.no_grad():
            subsets = [float(loss(out, gt, negatives=bank(lq, s)).double()) for s in itertools.combinations(range(N), k)]
        assert sum(subsets) / len(subsets) == pytest.approx(full, rel=1e-6)


def test_k_out_of_range_and_biased_losses_are_refused(setup, vgg16_file):
    bank, loss, *_ = setup
    for k in (0, N + 1):
        with pytest.raises(ValueError, match=rf'mclir\.neg_per_step must be an integer in \[1, {N}\] .*got {k}'):
            ContrastiveCriterion(loss, bank, neg_per_step=k)
    ratio = ContrastRatioLoss(vgg_weights=vgg16_file, vgg_type='vgg16',
                              layer_weights={'relu1_1': 1.0, 'relu2_1': 1.0})
    with pytest.raises(ValueError, match=r'neg_per_step 1 < 4 cannot be used with ContrastRatioLoss: .*not a mean'):
        ContrastiveCriterion(ratio, bank, neg_per_step=1)
    assert ContrastiveCriterion(ratio, bank, neg_per_step=N).neg_per_step is None  # all of them: fine
    weighted = SPNLoss(vgg_weights=vgg16_file, uncertainty_weighting=True)
    with pytest.raises(ValueError, match=r'neg_per_step 2 < 4 cannot be used with uncertainty_weighting'):
        ContrastiveCriterion(weighted, bank, neg_per_step=2)


@pytest.mark.parametrize('value, match', [(0, r'mclir\.neg_per_step must be an integer >= 1'),
                                          (3, r'mclir\.neg_per_step must be an integer in \[1, 2\]')])
def test_option_errors_name_the_key(tmp_path, vgg16_file, value, match):
    opt = swinir_model_options(tmp_path, vgg16_file, {'hook': {'neg_iter': [1, 2]}, 'neg_per_step': value})
    with pytest.raises(ValueError, match=match):
        build_model(opt)


def test_exact_resume_with_one_negative_per_step(tmp_path, vgg16_file, monkeypatch):
    opt = swinir_model_options(tmp_path, vgg16_file, {'hook': {'neg_iter': [2, 3, 4, 5], 'neg_start': 0.3},
                                                      'neg_per_step': 1})
    opt['network_g']['drop_path_rate'] = 0.0  # no use of the global random stream in the step
    g = torch.Generator().manual_seed(0)
    data = [{'lq': torch.rand(2, 3, 4, 4, generator=g), 'gt': torch.rand(2, 3, 16, 16, generator=g)} for _ in range(5)]
    lines = []
    monkeypatch.setattr(get_root_logger(), 'info', lambda msg, *a, **k: lines.append(str(msg)))

    def steps(model, first: int, last: int) -> list:
        seen = []
        for it in range(first, last + 1):
            model.feed_data(data[it - 1])
            model.optimize_parameters(it)
            seen.append((it, model.cri_pix.drawn, dict(model.get_current_log())))
        return seen

    straight = build_model(copy.deepcopy(opt))
    first = steps(straight, 1, 2)
    straight.save(epoch=0, current_iter=2)
    rest = steps(straight, 3, 5)
    assert len({tuple(d) for _, d, _ in first + rest}) > 1  # the draws vary
    assert [m for m in lines if 'neg_per_step 1 of 4' in m] == [
        f'MCLIR: neg_per_step 1 of 4: draws since the last report, to iteration {it} (counts per negative 0..3) {counts}; '
        f'last draw {drawn}.' for it, counts, drawn in _reports(first + rest)]

    state = torch.load(os.path.join(opt['path']['training_states'], '2.state'), weights_only=True)
    resumed_opt = copy.deepcopy(opt)
    resumed_opt['path']['pretrain_network_g'] = os.path.join(opt['path']['models'], 'net_g_2.pth')
    resumed = build_model(resumed_opt)
    resumed.resume_training(state)
    torch.manual_seed(1234)  # another global stream: the draws must not depend on it
    assert steps(resumed, 3, 5) == rest
    assert all(torch.equal(p, q) for p, q in zip(straight.net_g.parameters(), resumed.net_g.parameters()))
    for a, b in zip(straight.negative_hook.negatives, resumed.negative_hook.negatives):
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    # without the saved draw state a fresh bank would draw differently after iteration 2
    fresh = HistoryNegatives(neg_iter=[1] * 4, neg_start=0, seed=straight.negative_hook.bank.seed)
    fresh.build(torch.nn.Linear(1, 1))
    assert [fresh.draw(1) for _ in range(3)] != [d for _, d, _ in rest]


def _reports(seen: list) -> list:
    """The (iteration, counts, last draw) of each report at print_freq 2."""
    counts, reports = [0] * 4, []
    for it, drawn, _ in seen:
        for i in drawn:
            counts[i] += 1
        if it % 2 == 0:
            reports.append((it, counts, drawn))
            counts = [0] * 4
    return reports
