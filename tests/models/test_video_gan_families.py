"""The video GAN models (VideoGANModel, VideoRecurrentGANModel) train with SPN, through BasicSR's own path.

BasicSR 1.4.2 ships no training option file for either, so the two recipes here are CONSTRUCTED, not BasicSR
files: EDVR's and BasicVSR's files of :mod:`basicsr_recipes` with the model type switched to the video GAN model
and what a GAN step reads added (``network_d``, ``optim_d``, ``gan_opt``, ``net_d_iters``/``net_d_init_iters``;
no perceptual loss, which would need a VGG19 file). Then the contract's lines and the size shrink of
:func:`basicsr_recipes.spn_run_options`, and three iterations as ``basicsr/train.py`` runs them, on CPU.
"""
from __future__ import annotations

import copy
import math
import sys

import pytest
import torch
import yaml

import basicsr.train as bs_train
from basicsr.models import build_model
from basicsr.utils import get_root_logger, make_exp_dirs
from basicsr.utils.options import parse_options

from basicsr_recipes import RECIPE_BY_NAME, Recipe, basicsr_iterations, merge, spn_run_options, write_recipe_root
from conftest import VGG16_FILE_NAME

ADAM_D = {'type': 'Adam', 'lr': 1e-4, 'weight_decay': 0, 'betas': [0.9, 0.99]}
GAN_LOSS = {'type': 'GANLoss', 'gan_type': 'vanilla', 'real_label_val': 1.0, 'fake_label_val': 0.0,
            'loss_weight': 5e-3}
GAN_LOGGED = ('l_g_pix', 'l_g_gan', 'l_d_real', 'out_d_real', 'l_d_fake', 'out_d_fake')


def video_gan_recipe(name: str, video: str, model_type: str, network_d: dict, train: dict, tiny: dict) -> Recipe:
    """A constructed recipe: BasicSR's ``video`` recipe as ``model_type`` with a discriminator and GAN settings."""
    base = RECIPE_BY_NAME[video]
    options = copy.deepcopy(base.options)
    options.update(model_type=model_type, name=f'constructed_{name}', network_d=network_d)
    options['train'].update(optim_d=dict(ADAM_D), gan_opt=dict(GAN_LOSS), **train)
    return Recipe(name, f'constructed from {base.source}', options, merge(copy.deepcopy(base.tiny), tiny),
                  GAN_LOGGED, has_net_d=True, notes='not a BasicSR file: BasicSR 1.4.2 ships none for this model')


RECIPES = [
    # EDVR's centre-frame output (4-D); a U-Net discriminator takes EDVR's tiny 32 px patches
    video_gan_recipe('VideoGAN_EDVR', 'EDVR', 'VideoGANModel',
                     {'type': 'UNetDiscriminatorSN', 'num_in_ch': 3, 'num_feat': 8, 'skip_connection': True},
                     {'net_d_iters': 1, 'net_d_init_iters': 0}, {}),
    # BasicVSR's 5-D clips, frames judged one by one by a U-Net discriminator (any size); iteration 1 trains net_d
    # only, so the generator's loss, and with it the SPN term, starts at iteration 2
    video_gan_recipe('VideoRecurrentGAN_BasicVSR', 'BasicVSR', 'VideoRecurrentGANModel',
                     {'type': 'UNetDiscriminatorSN', 'num_in_ch': 3, 'num_feat': 8, 'skip_connection': True},
                     {'net_d_iters': 1, 'net_d_init_iters': 1, 'fix_flow': 0}, {}),
]


@pytest.fixture(scope='module')
def recipe_root(tmp_path_factory, vgg16_file):
    root = tmp_path_factory.mktemp('video_gan_root')
    write_recipe_root(root, vgg16_file, VGG16_FILE_NAME)
    return root


def params(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize('recipe', RECIPES, ids=[r.name for r in RECIPES])
def test_video_gan_model_trains_with_spn_on_cpu(recipe, recipe_root, monkeypatch):
    monkeypatch.chdir(recipe_root)
    monkeypatch.setenv('TORCH_HOME', str(recipe_root / 'torch_home'))
    path = recipe_root / f'{recipe.name}_spn.yml'
    path.write_text(yaml.safe_dump(spn_run_options(recipe), sort_keys=False))
    monkeypatch.setattr(sys, 'argv', ['train.py', '-opt', str(path)])
    opt, _ = parse_options(str(recipe_root), is_train=True)
    make_exp_dirs(opt)
    train_loader, train_sampler = bs_train.create_train_val_dataloader(opt, get_root_logger())[:2]
    model = build_model(opt)
    assert type(model).__name__ == f"MCLIR{recipe.options['model_type']}"
    negative_shapes = []  # each call of the SPN term runs negative 0 on the clip: its output, as net_g's
    model.negative_hook.bank.negatives[0].register_forward_hook(lambda m, i, out: negative_shapes.append(out.shape))
    g_before, d_before = params(model.net_g), params(model.net_d)
    init_iters = opt['train']['net_d_init_iters']
    for current_iter, data in basicsr_iterations(train_loader, train_sampler, 3):
        model.update_learning_rate(current_iter, warmup_iter=-1)
        model.feed_data(data)
        model.optimize_parameters(current_iter)
        log = dict(model.get_current_log())
        assert all(math.isfinite(float(v)) for v in log.values()), log
        assert all(k in log for k in ('l_d_real', 'l_d_fake')), sorted(log)  # net_d trains on every iteration
        if current_iter <= init_iters:  # BasicSR does not update the generator: no SPN term, nothing logged
            assert 'l_neg' not in log and 'l_g_pix' not in log, sorted(log)
            assert all(torch.equal(a, b) for a, b in zip(g_before, model.net_g.parameters()))
        else:
            assert all(k in log for k in recipe.logged) and float(log['l_neg']) > 0, log
    assert len(negative_shapes) == 3 - init_iters
    output_shape = tuple(model.output.shape)
    assert negative_shapes[-1] == output_shape
    assert len(output_shape) == (5 if recipe.options['model_type'] == 'VideoRecurrentGANModel' else 4)
    assert any(not torch.equal(a, b) for a, b in zip(g_before, model.net_g.parameters())), 'net_g never updated'
    assert any(not torch.equal(a, b) for a, b in zip(d_before, model.net_d.parameters())), 'net_d never updated'
    assert model.negative_hook.bank.refresh_count == [3, 1]  # neg_iter [1, 2]: refreshed on schedule
