"""The optional ``realesrgan`` package (a test dependency: ``pip install --no-deps realesrgan==0.3.0``).

Its models register on ``import realesrgan``; an option file names it in ``mclir.import_modules`` and BasicSR's
``parse_options`` (as ``basicsr/train.py`` calls it) imports it. Then the plain names of BasicSR's Real-ESRGAN option
files (``RealESRGANModel``, ``RealESRNetModel``, ``RealESRGANDataset``, ``UNetDiscriminatorSN``) build the package's
classes, which train on CPU like BasicSR's ``*_basicsr`` copies (in-process, tiny networks, as
``tests/models/test_model_families.py``).
"""
from __future__ import annotations

import math
import os
import sys

import pytest
import torch
import yaml

import basicsr.train as bs_train
from basicsr.models import build_model
from basicsr.utils import get_root_logger, make_exp_dirs
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, MODEL_REGISTRY

from basicsr_recipes import RECIPE_BY_NAME, basicsr_iterations, shrink, spn_run_options, write_recipe_data
from mclir_plugin.compat import resolve_model_type

GAN_LOGGED = ('l_g_pix', 'l_g_gan', 'l_d_real', 'out_d_real', 'l_d_fake', 'out_d_fake')


@pytest.fixture(scope='module')
def recipe_root(tmp_path_factory):
    """Recipe data at the option files' paths; the registries restored afterwards.

    Importing the package adds its plain names to BasicSR's registries for the rest of the process: the other test
    files on this pytest worker keep resolving ``RealESRGANModel`` to BasicSR's copy.
    """
    registries = (MODEL_REGISTRY, ARCH_REGISTRY, DATASET_REGISTRY)
    before = [dict(registry._obj_map) for registry in registries]
    modules_before = set(sys.modules)
    root = tmp_path_factory.mktemp('realesrgan_root')
    write_recipe_data(str(root))
    yield root
    for registry, entries in zip(registries, before):
        registry._obj_map.clear()
        registry._obj_map.update(entries)
    for name in set(sys.modules) - modules_before:
        if name == 'realesrgan' or name.startswith('realesrgan.'):
            del sys.modules[name]


@pytest.fixture
def in_root(recipe_root, monkeypatch, torch_home_with_vgg):
    monkeypatch.chdir(recipe_root)  # the files' dataset paths are relative to the root
    return recipe_root


def parsed(root, options: dict, monkeypatch, name: str) -> dict:
    """``options`` written as an option file and read by ``basicsr.train``'s ``parse_options`` (as a run does)."""
    path = os.path.join(root, f'{name}.yml')
    with open(path, 'w') as f:
        yaml.safe_dump(options, f, sort_keys=False)
    monkeypatch.setattr(sys, 'argv', ['train.py', '-opt', path])
    opt, _ = bs_train.parse_options(str(root), is_train=True)
    return opt


def from_package(obj) -> bool:
    cls = obj if isinstance(obj, type) else type(obj)
    return cls.__module__.startswith('realesrgan.')


def test_package_realesrgan_model_trains_with_spn_on_cpu(in_root, monkeypatch):
    options = spn_run_options(RECIPE_BY_NAME['RealESRGAN_x4plus'])
    options['mclir']['import_modules'] = ['realesrgan']
    del options['train']['perceptual_opt']  # VGG19 would need its 80 MB file; test_model_families covers that path
    opt = parsed(in_root, options, monkeypatch, 'realesrgan_package_spn')
    assert 'realesrgan' in sys.modules and resolve_model_type('RealESRGANModel') == 'RealESRGANModel'
    make_exp_dirs(opt)
    loader, sampler = bs_train.create_train_val_dataloader(opt, get_root_logger())[:2]
    assert from_package(loader.dataset)  # RealESRGANDataset: the package's, too
    model = build_model(opt)
    base = type(model).__bases__[-1]  # MCLIR<Base> = (MCLIRMixin, Base)
    assert base is MODEL_REGISTRY.get('RealESRGANModel') and from_package(base), base.__module__
    assert from_package(model.net_d) and model.device.type == 'cpu'
    d_before = [p.detach().clone() for p in model.net_d.parameters()]
    logs = []
    for current_iter, data in basicsr_iterations(loader, sampler, opt['train']['total_iter']):
        model.update_learning_rate(current_iter, warmup_iter=-1)
        model.feed_data(data)  # the package's .cuda() calls, redirected to the CPU
        model.optimize_parameters(current_iter)
        logs.append(dict(model.get_current_log()))
    assert len(logs) == 3 and model.lq.device.type == 'cpu'
    for current_iter, log in enumerate(logs, start=1):
        assert all(math.isfinite(float(v)) for v in log.values()), log
        assert all(k in log for k in GAN_LOGGED), sorted(log)
        assert float(log['l_neg']) > 0 and 'l_neg_ratio' in log, f'iter {current_iter}: {log}'
    assert any(not torch.equal(a, b) for a, b in zip(d_before, model.net_d.parameters())), 'net_d never updated'


def test_package_realesrnet_baseline_degrades_and_steps_on_cpu(in_root, monkeypatch):
    """No MCLIR: ``model_type: RealESRNetModel`` with only ``mclir.import_modules`` builds the package's model."""
    recipe = RECIPE_BY_NAME['RealESRNet_x4plus']
    options = shrink(recipe.options, recipe)
    options['mclir'] = {'import_modules': ['realesrgan']}
    opt = parsed(in_root, options, monkeypatch, 'realesrnet_package_baseline')
    make_exp_dirs(opt)
    loader, sampler = bs_train.create_train_val_dataloader(opt, get_root_logger())[:2]
    model = build_model(opt)
    assert type(model) is MODEL_REGISTRY.get('RealESRNetModel') and from_package(model), type(model).__module__
    assert next(model.jpeger.parameters(), torch.zeros(0)).device.type == 'cpu'
    # queue_size 2, batch 1: fill the queue, then dequeue
    for current_iter, data in basicsr_iterations(loader, sampler, 3):
        model.feed_data(data)
    assert model.lq.shape == (1, 3, 8, 8) and model.lq.device.type == 'cpu'
    assert model.queue_lr.device.type == 'cpu' and model.queue_ptr == 2
    model.optimize_parameters(current_iter)
    assert math.isfinite(float(model.get_current_log()['l_pix']))


@pytest.mark.parametrize('value, error, message', [
    (['no_such_module_xyz'], ModuleNotFoundError,
     r"mclir\.import_modules names 'no_such_module_xyz', which is not installed: install the package that provides "
     r"it, or remove it"),
    ('realesrgan', TypeError, r"mclir\.import_modules must be a list of Python module names, e\.g\. \[realesrgan\]"),
], ids=['not_installed', 'not_a_list'])
def test_bad_import_modules_are_named_before_anything_is_built(value, error, message, in_root, monkeypatch):
    recipe = RECIPE_BY_NAME['RealESRNet_x4plus']
    options = shrink(recipe.options, recipe)
    options['mclir'] = {'import_modules': value}
    with pytest.raises(error, match=message):
        parsed(in_root, options, monkeypatch, 'bad_import_modules')
