"""Every BasicSR 1.4.2 model family trains with SPN from its own training file (issue 12's "Done when").

Each recipe of :mod:`basicsr_recipes` (BasicSR's file restated, the contract's lines added, size shrunk) goes through
BasicSR's own path in-process: ``parse_options`` on the written YAML, ``create_train_val_dataloader`` on tiny data in
the dataset type's real layout, ``build_model``, then three iterations as ``basicsr/train.py`` runs them
(``update_learning_rate``, ``feed_data``, ``optimize_parameters``, ``get_current_log``), on CPU.
"""
from __future__ import annotations

import math
import os
import sys

import pytest
import torch
import yaml
from torchvision.models import vgg as tv_vgg

import basicsr.train as bs_train
from basicsr.models import build_model
from basicsr.utils import get_root_logger, make_exp_dirs
from basicsr.utils.options import parse_options
from basicsr.utils.registry import MODEL_REGISTRY

from basicsr_recipes import RECIPES, basicsr_iterations, spn_run_options, write_recipe_root
from conftest import VGG16_FILE_NAME

VGG19_FILE_NAME = 'vgg19-dcbb9e9d.pth'  # what BasicSR's PerceptualLoss (GAN recipes) asks torchvision for


def write_vgg19_file(path: str) -> None:
    """A torchvision-layout VGG19 file: random ``features`` (seeded) and a classifier stored as broadcast zeros.

    torchvision loads the whole state dict strictly, but PerceptualLoss keeps only ``features``; storing the
    classifier's 124M numbers as three broadcast zeros keeps the file at the features' 80 MB.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(19)
        features = tv_vgg.make_layers(tv_vgg.cfgs['E'])
    state = {f'features.{k}': v for k, v in features.state_dict().items()}
    for index, (n_out, n_in) in {0: (4096, 512 * 7 * 7), 3: (4096, 4096), 6: (1000, 4096)}.items():
        state[f'classifier.{index}.weight'] = torch.zeros(1).expand(n_out, n_in)
        state[f'classifier.{index}.bias'] = torch.zeros(1).expand(n_out)
    torch.save(state, path)


@pytest.fixture(scope='module')
def recipe_root(tmp_path_factory, vgg16_file):
    """A run root holding every recipe's data at its file's paths, and a TORCH_HOME with VGG16 and VGG19 files."""
    root = tmp_path_factory.mktemp('basicsr_root')
    checkpoints = write_recipe_root(root, vgg16_file, VGG16_FILE_NAME)
    write_vgg19_file(os.path.join(checkpoints, VGG19_FILE_NAME))
    return root


@pytest.fixture
def in_root(recipe_root, monkeypatch):
    monkeypatch.chdir(recipe_root)  # the files' dataset paths are relative to the root, as in BasicSR's checkout
    monkeypatch.setenv('TORCH_HOME', str(recipe_root / 'torch_home'))
    return recipe_root


def write_options(root, recipe) -> str:
    path = os.path.join(root, f'{recipe.name}_spn.yml')
    with open(path, 'w') as f:
        yaml.safe_dump(spn_run_options(recipe), f, sort_keys=False)
    return path


def generator_steps(train_opt: dict, current_iter: int) -> bool:
    """Whether BasicSR's GAN step updates the generator at ``current_iter`` (always for non-GAN models)."""
    return current_iter % train_opt.get('net_d_iters', 1) == 0 and current_iter > train_opt.get('net_d_init_iters', 0)


def params(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize('recipe', RECIPES, ids=[r.name for r in RECIPES])
def test_recipe_trains_with_spn_on_cpu(recipe, in_root, monkeypatch):
    monkeypatch.setattr(sys, 'argv', ['train.py', '-opt', write_options(in_root, recipe)])
    opt, _ = parse_options(str(in_root), is_train=True)
    make_exp_dirs(opt)
    logger = get_root_logger()
    train_loader, train_sampler = bs_train.create_train_val_dataloader(opt, logger)[:2]
    model = build_model(opt)
    assert isinstance(model, MODEL_REGISTRY.get(recipe.options['model_type']))  # the file's model keeps its step
    g_before = params(model.net_g)
    d_before = params(model.net_d) if recipe.has_net_d else []
    logs = []
    for current_iter, train_data in basicsr_iterations(train_loader, train_sampler, opt['train']['total_iter']):
        model.update_learning_rate(current_iter, warmup_iter=opt['train'].get('warmup_iter', -1))
        model.feed_data(train_data)
        model.optimize_parameters(current_iter)
        logs.append(dict(model.get_current_log()))
    assert len(logs) == 3
    for current_iter, log in enumerate(logs, start=1):
        assert all(math.isfinite(float(v)) for v in log.values()), log
        missing = [k for k in recipe.logged if k not in log]
        assert not missing, f'{recipe.name}: the base model\'s own log keys {missing} are gone: {sorted(log)}'
        if generator_steps(opt['train'], current_iter):
            assert 'l_neg' in log and 'l_neg_ratio' in log, f'{recipe.name} iter {current_iter}: {sorted(log)}'
            assert float(log['l_neg']) > 0, f'{recipe.name} iter {current_iter}: l_neg = {log["l_neg"]}'
    assert any(not torch.equal(a, b) for a, b in zip(g_before, model.net_g.parameters())), 'net_g never updated'
    if recipe.has_net_d:  # the discriminator still trains, with its own optimizer
        assert any(not torch.equal(a, b) for a, b in zip(d_before, model.net_d.parameters())), 'net_d never updated'



def test_cpu_amp_with_deformable_convolutions_is_refused_before_training(in_root, monkeypatch):
    """EDVR's deformable convolutions have no bf16/fp16 CPU kernel: refused at build time, naming the fix."""
    recipe = next(r for r in RECIPES if r.name == 'EDVR')
    options = spn_run_options(recipe)
    options['mclir']['amp'] = 'bf16'
    path = os.path.join(in_root, 'EDVR_bf16_spn.yml')
    with open(path, 'w') as f:
        yaml.safe_dump(options, f, sort_keys=False)
    monkeypatch.setattr(sys, 'argv', ['train.py', '-opt', path])
    opt, _ = parse_options(str(in_root), is_train=True)
    with pytest.raises(ValueError, match=r"mclir\.amp: bf16 on CPU .*deformable .*`mclir\.amp: none`"):
        build_model(opt)
