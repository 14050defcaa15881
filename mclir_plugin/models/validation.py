"""BasicSR validation with the float evaluation protocols and a best checkpoint kept by a named metric.

:func:`install` (called by ``import mclir_plugin``) wraps ``BaseModel.validation``, so every BasicSR model
(``SRModel``, ``SwinIRModel``, ``MCLIRModel``, ...) trained by ``tools/train.py`` or tested by BasicSR's test
pipeline gets both:

**Float metrics.** BasicSR's ``nondist_validation`` rounds the output to uint8 (``tensor2img``) and passes those
images to every metric in ``val.metrics``. For the duration of one validation, :func:`float_metric_inputs` records
the float ``result``/``gt`` that ``get_current_visuals()`` returns for each image and gives them, instead of the
uint8 images, to the metrics marked ``float_protocol`` (:mod:`mclir_plugin.metrics.float_metrics`); the other metrics are
untouched. It replaces the name ``calculate_metric`` in the module(s) whose ``(non)dist_validation`` the model
runs, and restores it afterwards. Files without float metrics validate exactly as before.

**Best checkpoint** (``val.save_best``, upstream DehazeFormer and FFA-Net keep the best model on their test set)::

    val:
      save_best: {metric: psnr_float, dataset: SOTS-indoor}   # or just `save_best: psnr_float`

``metric`` names a key of ``val.metrics``; ``dataset`` a validation set's ``name`` (default: the first one). Higher
is better unless that metric sets BasicSR's ``better: lower``. Whenever a validation of that set beats the best so
far (strictly), rank 0 writes ``models/net_g_best.pth`` (``params``, plus ``params_ema`` with EMA: the weights that
were validated, loadable like any ``net_g_<iter>.pth``, and ``best``: ``{metric, dataset, iter, value, better}``)
and the same record as ``models/net_g_best.json``, both atomically. On resume the best so far is read back from
``net_g_best.pth``, so a resumed run only replaces it with a better model.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from typing import Any, Iterator

from mclir_plugin.metrics.float_metrics import is_float_protocol

BEST_NAME = 'net_g_best'
SAVE_BEST_KEYS = ('metric', 'dataset')
_INSTALLED = False


# ---------------------------------------------------------------------------------------------- float metrics
def _validation_modules(model) -> list:
    """The modules of the classes that define the validation loops ``model`` runs (they import calculate_metric)."""
    modules = []
    for cls in type(model).__mro__:
        if {'nondist_validation', 'dist_validation'} & set(vars(cls)):
            module = sys.modules.get(cls.__module__)
            if module is not None and hasattr(module, 'calculate_metric') and module not in modules:
                modules.append(module)
    return modules


@contextlib.contextmanager
def float_metric_inputs(model) -> Iterator[None]:
    """Within this context, ``model``'s validation gives float-protocol metrics the float output and GT.

    ``get_current_visuals`` is wrapped on the instance to keep the latest ``result``/``gt`` tensors, and the
    validation modules' ``calculate_metric`` passes those to metrics marked ``float_protocol``. Both are restored
    on exit. A no-op when ``val.metrics`` has no float-protocol metric.
    """
    metrics = (model.opt.get('val') or {}).get('metrics') or {}
    if not any(is_float_protocol((m or {}).get('type')) for m in metrics.values()):
        yield
        return
    latest: dict[str, Any] = {}
    get_visuals = model.get_current_visuals
    own_attribute = 'get_current_visuals' in vars(model)

    def recording_visuals():
        visuals = get_visuals()
        latest.clear()
        latest['img'] = visuals['result']
        if 'gt' in visuals:
            latest['img2'] = visuals['gt']
        return visuals

    replaced = []
    for module in _validation_modules(model):
        calculate = module.calculate_metric

        def float_aware(data, opt, _calculate=calculate):
            return _calculate(dict(latest) if latest and is_float_protocol(opt.get('type')) else data, opt)

        replaced.append((module, calculate))
        module.calculate_metric = float_aware
    model.get_current_visuals = recording_visuals
    try:
        yield
    finally:
        for module, calculate in replaced:
            module.calculate_metric = calculate
        if own_attribute:
            model.get_current_visuals = get_visuals
        else:
            del model.get_current_visuals


# ---------------------------------------------------------------------------------------------- best checkpoint
def _validation_set_names(opt: dict[str, Any]) -> list[str]:
    return [block.get('name', key) for key, block in (opt.get('datasets') or {}).items()
            if key.split('_')[0] == 'val' and isinstance(block, dict)]


def read_save_best(opt: dict[str, Any]) -> dict[str, Any] | None:
    """``val.save_best`` checked and completed: ``{metric, dataset, better}``, or None when it is not set.

    Raises:
        KeyError: An unknown key, or a metric that is not in ``val.metrics``.
        ValueError: A dataset that is not a validation set, or a ``better`` other than higher/lower.
    """
    from mclir_plugin.utils.option_schema import Choice
    from mclir_plugin.utils.options import check_keys

    val = opt.get('val') or {}
    spec = val.get('save_best')
    if spec is None or spec is False:
        return None
    if isinstance(spec, str):
        spec = {'metric': spec}
    if not isinstance(spec, dict) or 'metric' not in spec:
        raise ValueError(f'val.save_best: write {{metric: <a key of val.metrics>, dataset: <name>}} or just '
                         f'`save_best: <metric>`, not {spec!r}.')
    check_keys(spec, SAVE_BEST_KEYS, 'val.save_best')
    metrics = val.get('metrics') or {}
    metric = spec['metric']
    if metric not in metrics:
        raise KeyError(f"val.save_best.metric {metric!r} is not a key of val.metrics (it has: "
                       f"{', '.join(metrics) or 'none'}); name one of them, e.g. psnr_float.")
    better = Choice('higher', 'lower')(metrics[metric].get('better', 'higher'), f'val.metrics.{metric}.better')
    names = _validation_set_names(opt)
    dataset = spec.get('dataset') or (names[0] if names else None)
    if opt.get('is_train', True) and names and dataset not in names:
        raise ValueError(f"val.save_best.dataset {dataset!r} is not a validation set; the file's are "
                         f"{', '.join(names)} (datasets.val*.name).")
    return {'metric': metric, 'dataset': dataset, 'better': better}


def _is_better(value: float, best: float | None, better: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value > best if better == 'higher' else value < best


def _load_best_record(model, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The record stored in this run's ``net_g_best.pth`` (a resumed run), if it is for the same metric and set."""
    from basicsr.utils import get_root_logger

    from mclir_plugin.utils.checkpoint import load_weights_file

    path = os.path.join(model.opt['path']['models'], f'{BEST_NAME}.pth')
    if not os.path.isfile(path):
        return None
    record = load_weights_file(path, 'the best checkpoint (val.save_best)', 'Delete it to start the best record '
                               'afresh.', map_location='cpu', weights_only=True).get('best')
    logger = get_root_logger()
    if not record or (record.get('metric'), record.get('dataset')) != (spec['metric'], spec['dataset']):
        logger.warning(f'{path} holds another best record ({record}); val.save_best now tracks '
                       f"{spec['metric']} on {spec['dataset']}, so the file will be replaced by the next validation.")
        return None
    logger.info(f"val.save_best: best {record['metric']} on {record['dataset']} so far {record['value']:.4f} "
                f"@ iter {record['iter']}, restored from {path}.")
    return record


def _write_best(model, record: dict[str, Any]) -> str:
    """Write ``net_g_best.pth`` (validated weights and the record) and ``net_g_best.json``, atomically."""
    from mclir_plugin.utils.checkpoint import atomic_torch_save

    def weights(net):
        state = model.get_bare_model(net).state_dict()
        return {(k[7:] if k.startswith('module.') else k): v.detach().cpu() for k, v in state.items()}

    folder = model.opt['path']['models']
    os.makedirs(folder, exist_ok=True)
    checkpoint = {'params': weights(model.net_g)}
    if hasattr(model, 'net_g_ema'):
        checkpoint['params_ema'] = weights(model.net_g_ema)
    checkpoint['best'] = dict(record)
    path = os.path.join(folder, f'{BEST_NAME}.pth')
    atomic_torch_save(checkpoint, path)
    tmp = os.path.join(folder, f'{BEST_NAME}.json.tmp')
    with open(tmp, 'w', encoding='utf-8') as file:
        json.dump({**record, 'checkpoint': f'{BEST_NAME}.pth', 'param_keys': [k for k in checkpoint if k != 'best']},
                  file, indent=1)
    os.replace(tmp, os.path.join(folder, f'{BEST_NAME}.json'))
    return path


def update_best_checkpoint(model, dataset_name: str, current_iter: int) -> str | None:
    """After a validation of ``dataset_name``: write the best checkpoint if ``val.save_best`` improved. Returns the
    path written, else None. Rank 0 only (BasicSR validates there)."""
    from basicsr.utils import get_root_logger

    spec = read_save_best(model.opt)
    if spec is None or model.opt.get('rank', 0) != 0 or dataset_name != spec['dataset']:
        return None
    if not hasattr(model, 'mclir_best'):
        model.mclir_best = _load_best_record(model, spec)
    value = getattr(model, 'metric_results', {}).get(spec['metric'])
    if value is None:
        get_root_logger().warning(f"val.save_best: no {spec['metric']} value after validating {dataset_name} "
                                  f'({type(model).__name__} did not fill metric_results); nothing saved.')
        return None
    best = model.mclir_best['value'] if model.mclir_best else None
    if not _is_better(float(value), best, spec['better']):
        return None
    total_iter = (model.opt.get('train') or {}).get('total_iter')
    if total_iter is not None:  # BasicSR's validation after training passes total_iter + 1 (or more)
        current_iter = min(int(current_iter), int(total_iter))
    model.mclir_best = {'metric': spec['metric'], 'dataset': dataset_name, 'iter': int(current_iter),
                        'value': float(value), 'better': spec['better']}
    path = _write_best(model, model.mclir_best)
    get_root_logger().info(f"val.save_best: new best {spec['metric']} {value:.4f} on {dataset_name} @ iter "
                           f'{current_iter}: {path}')
    return path


# ---------------------------------------------------------------------------------------------- installation
def _validation_with_protocols(validation):
    """``BaseModel.validation`` run inside :func:`float_metric_inputs`, then the best checkpoint update."""
    def validate(self, dataloader, current_iter, tb_logger, save_img=False):
        with float_metric_inputs(self):
            result = validation(self, dataloader, current_iter, tb_logger, save_img)
        if self.opt.get('is_train') and (self.opt.get('val') or {}).get('save_best') is not None:
            dataset_opt = getattr(getattr(dataloader, 'dataset', None), 'opt', None) or {}
            update_best_checkpoint(self, dataset_opt.get('name'), current_iter)
        return result
    validate.__wrapped__ = validation
    validate.__doc__ = validation.__doc__
    return validate


def _checking_save_best(build_model):
    """``build_model`` that checks ``val.save_best`` first, so a typo stops the run before training."""
    def build(opt):
        if opt.get('is_train'):
            from mclir_plugin.utils.options import naming_the_file
            try:
                read_save_best(opt)
            except (KeyError, ValueError) as err:
                raise naming_the_file(err) from None
        return build_model(opt)
    build.__wrapped__ = build_model
    return build


def install() -> None:
    """Wrap ``BaseModel.validation`` and ``basicsr.train.build_model`` (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    import basicsr.train as bs_train
    from basicsr.models.base_model import BaseModel

    BaseModel.validation = _validation_with_protocols(BaseModel.validation)
    bs_train.build_model = _checking_save_best(bs_train.build_model)
    _INSTALLED = True
