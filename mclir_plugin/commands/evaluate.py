"""Test entry point: BasicSR's test pipeline, or an evaluation of checkpoints on the test sets of an option file.

Without ``--checkpoints`` it is BasicSR's ``test_pipeline`` with the plugin registered, unchanged (its flags:
``-opt``, ``--launcher``, ``--force_yml``; results under ``./results/<name>``)::

    python tools/test.py -opt options/test_x.yml

With ``--checkpoints`` it evaluates each checkpoint on each test set of the option file and writes the numbers::

    python tools/test.py -opt options/x.yml --checkpoints experiments/run/models/net_g_400.pth [more.pth ...]
        [--param-key auto|params_ema|params] [--datasets val test_1 Set5 ...] [--save-images]
        [--out results/eval_<name>] [--cpu] [--force_yml key:key=value ...]

* ``-opt``: a training option file (its ``datasets.val*``/``datasets.test*`` blocks; ``datasets.train`` is skipped)
  or a test option file. ``model_type`` builds the model through BasicSR's ``build_model``, and the model's own
  ``test()`` runs (SwinIR's padding, IDT's tiling in eval mode); an ``MCLIRModel`` file is tested as its
  ``mclir.base_model`` (no negatives or VGG are built).
* ``--checkpoints``: ``net_g_<iter>.pth`` files (BasicSR's ``params``/``params_ema`` dicts, or a bare state dict).
* ``--param-key``: ``auto`` (default) takes ``params_ema`` when the file has it, else ``params`` (else the bare
  dict); naming a key the file lacks is an error.
* ``--datasets``: keep these test sets, named by option key (``val``, ``test_1``) or dataset name.
* ``--save-images``: also write the restored images, ``<out>/<label>/<dataset>/<image>.png``.
* ``--out``: output folder, default ``results/eval_<name>``. ``--cpu``: run on the CPU.

Metrics: ``val.metrics`` of the file, computed per image with BasicSR's ``calculate_metric`` on the uint8 images
BasicSR's validation uses, with each metric's ``crop_border``/``test_y_channel``, except the float-protocol metrics
(:mod:`mclir_plugin.metrics.float_metrics`), which get the float output and GT as in training validation. Both protocols are
always reported side by side:

* uint8 (BasicSR's): PSNR and SSIM; a missing one is added with the settings of the other (or, without
  ``val.metrics``, both with ``val.crop_border`` (default: ``scale`` above 1, else 0) and ``val.test_y_channel``
  (default false));
* float (DehazeFormer's and FFA-Net's tables): ``psnr_float`` (``calculate_psnr_float``) and ``ssim_float``
  (``calculate_ssim_dehazeformer``) are added, RGB and uncropped as upstream, unless ``val.metrics`` already has a
  float PSNR / a float SSIM (``calculate_ssim_ffanet`` counts).

Means are BasicSR's (sum / count), so they equal what its validation logs.

Outputs, under ``--out``:

* ``<label>/<dataset>.csv``: one row per image, columns ``image,psnr,ssim,...`` (full precision);
* ``summary.csv``: one row per checkpoint x dataset, columns ``checkpoint,path,param_key,dataset,images,psnr,ssim,...``
  (the means);
* ``summary.json``: the metric settings and, per checkpoint x dataset, the means and the per-image values;
* ``eval_<time>.log``: BasicSR's log of the run (model built, weights loaded with which key).

``<label>`` is the checkpoint's file stem (``net_g_400``); when two stems are equal, the run folder's name is put in
front (``<run>_net_g_latest``). A final table of the means is printed.
"""
from __future__ import annotations

import argparse
import copy
import inspect
import json
import logging
import os
import re
import sys
import time
from collections import OrderedDict
from typing import Any, Sequence

import mclir_plugin  # noqa: F401  (compat shim and registration)
from mclir_plugin.compat import normalise_local_rank_argv
from mclir_plugin.metrics.float_metrics import is_float_protocol
from mclir_plugin.utils.tables import format_table, number, write_csv

PARAM_KEYS = ('auto', 'params_ema', 'params')
DATASET_PHASES = ('val', 'test')


class EvalError(ValueError):
    """An option or file that stops the evaluation; the message names it and the fix."""


# ---------------------------------------------------------------------------------------------- options
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='tools/test.py', description='Evaluate checkpoints on the test sets of a BasicSR option file. Without '
        '--checkpoints, run BasicSR\'s test pipeline instead (flags -opt, --launcher, --force_yml).')
    parser.add_argument('-opt', required=True, help='training or test option file (YAML)')
    parser.add_argument('--checkpoints', nargs='+', required=True, help='network checkpoints net_g_<iter>.pth')
    parser.add_argument('--param-key', choices=PARAM_KEYS, default='auto',
                        help='weights to load: auto = params_ema if present, else params (default auto)')
    parser.add_argument('--datasets', nargs='+', help='test sets to use, by option key (val, test_1) or name')
    parser.add_argument('--save-images', action='store_true', help='write <out>/<label>/<dataset>/<image>.png')
    parser.add_argument('--out', help='output folder (default results/eval_<name>)')
    parser.add_argument('--cpu', action='store_true', help='run on the CPU even with a GPU')
    parser.add_argument('--force_yml', nargs='+', default=None, help='override options, e.g. val:metrics:psnr:'
                        'crop_border=2 (values read as in train\'s --force_yml: 1e-3 is a number)')
    return parser


def load_options(path: str, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Read a BasicSR option file and apply ``--force_yml`` entries ``key:key=value``.

    Entries are applied by :func:`mclir_plugin.utils.overrides.apply_override`, values read by
    :func:`mclir_plugin.utils.options.parse_override_value`, as train's ``--force_yml`` reads them.
    """
    import yaml
    from basicsr.utils.options import ordered_yaml
    from mclir_plugin.utils.option_imports import import_option_modules
    from mclir_plugin.utils.overrides import OverrideError, apply_override

    if not os.path.isfile(path):
        raise EvalError(f'Option file {path!r} does not exist.')
    with open(path, encoding='utf-8') as file:
        opt = yaml.load(file, Loader=ordered_yaml()[0])
    try:
        for entry in overrides or ():
            apply_override(opt, entry, '--force_yml')
    except OverrideError as err:
        raise EvalError(f'{err} (option file {path})') from None
    try:
        import_option_modules(opt)  # mclir.import_modules (e.g. realesrgan) before the model is built
    except (ModuleNotFoundError, TypeError) as err:
        raise EvalError(f'{path}: {err}') from None
    return opt


def select_datasets(opt: dict[str, Any], wanted: Sequence[str] | None, opt_path: str) -> list[dict[str, Any]]:
    """The ``datasets.val*``/``datasets.test*`` blocks (filtered by key or name), ready for ``build_dataset``."""
    blocks = [(key, block) for key, block in (opt.get('datasets') or {}).items()
              if key.split('_')[0] in DATASET_PHASES and isinstance(block, dict)]
    if not blocks:
        raise EvalError(f'{opt_path} has no datasets.val* or datasets.test* block: add one (BasicSR\'s layout, e.g. '
                        'datasets: {test_1: {name: Set5, type: PairedImageDataset, dataroot_gt: ..., dataroot_lq: '
                        '...}}).')
    if wanted:
        known = {name for key, block in blocks for name in (key, block.get('name'))}
        unknown = [name for name in wanted if name not in known]
        if unknown:
            listing = ', '.join(f"{key} ({block.get('name')})" for key, block in blocks)
            raise EvalError(f'--datasets {" ".join(unknown)}: not in {opt_path}; its test sets are {listing}.')
        blocks = [(key, block) for key, block in blocks if key in wanted or block.get('name') in wanted]
    selected = []
    for key, block in blocks:
        block = copy.deepcopy(dict(block))
        block['phase'] = key.split('_')[0]
        block.setdefault('name', key)
        if 'scale' in opt:
            block['scale'] = opt['scale']
        for root in ('dataroot_gt', 'dataroot_lq'):
            if isinstance(block.get(root), str):
                block[root] = os.path.expanduser(block[root])
        selected.append(block)
    return selected


def resolve_metrics(opt: dict[str, Any]) -> tuple[OrderedDict, list[str]]:
    """``(metrics, notes)``: ``val.metrics`` with PSNR and SSIM completed (see the module docstring)."""
    from basicsr.utils.registry import METRIC_REGISTRY

    val = opt.get('val') or {}
    metrics = OrderedDict((name, dict(m)) for name, m in (val.get('metrics') or {}).items())
    for name, metric in metrics.items():
        if metric.get('type') not in METRIC_REGISTRY:
            known = ', '.join(sorted(n for n, _ in METRIC_REGISTRY))
            raise EvalError(f"val.metrics.{name}.type {metric.get('type')!r} is not a BasicSR metric; use one of "
                            f'{known}.')
    notes = []
    by_type = {m.get('type'): name for name, m in metrics.items()}
    settings = next((metrics[by_type[t]] for t in ('calculate_psnr', 'calculate_ssim') if t in by_type), None)
    if settings is None:
        scale = int(opt.get('scale') or 1)  # SR benchmarks crop the scale; restoration at scale 1 crops nothing
        settings = {'crop_border': val.get('crop_border', scale if scale > 1 else 0),
                    'test_y_channel': val.get('test_y_channel', False)}
    for name, metric_type in (('psnr', 'calculate_psnr'), ('ssim', 'calculate_ssim')):
        if metric_type not in by_type:
            if name in metrics:
                raise EvalError(f"val.metrics.{name} has type {metrics[name].get('type')!r}; rename it so that "
                                f'{name} can hold {metric_type}.')
            metrics[name] = {'type': metric_type, 'crop_border': settings.get('crop_border', 0),
                             'test_y_channel': settings.get('test_y_channel', False)}
            notes.append(f'{name} added: not in val.metrics')
    float_types = [m.get('type') for m in metrics.values() if is_float_protocol(m.get('type'))]
    for name, metric_type, present in (
            ('psnr_float', 'calculate_psnr_float', 'calculate_psnr_float' in float_types),
            ('ssim_float', 'calculate_ssim_dehazeformer', any(t.startswith('calculate_ssim') for t in float_types))):
        if not present:
            if name in metrics:
                raise EvalError(f"val.metrics.{name} has type {metrics[name].get('type')!r}; rename it so that "
                                f'{name} can hold {metric_type} (the float protocol).')
            metrics[name] = {'type': metric_type, 'crop_border': 0}
            notes.append(f'{name} added: float protocol')
    return metrics, notes


def describe_metrics(metrics: dict[str, dict], notes: Sequence[str]) -> str:
    """E.g. ``psnr (crop_border 4, Y), ssim (crop_border 4, Y; added: not in val.metrics), psnr_float (float
    calculate_psnr_float, crop_border 0, RGB; added: float protocol)``."""
    parts = []
    for name, m in metrics.items():
        extra = [n for n in notes if n.startswith(name + ' ')]
        channel = 'Y' if m.get('test_y_channel') else 'RGB'
        if is_float_protocol(m.get('type')):
            channel = f"float {m['type']}, crop_border {m.get('crop_border', 0)}, {channel}"
            note = '; ' + extra[0][len(name) + 1:] if extra else ''
            parts.append(f'{name} ({channel}{note})')
            continue
        note = '; ' + extra[0][len(name) + 1:] if extra else ''
        parts.append(f"{name} (crop_border {m.get('crop_border', 0)}, {channel}{note})")
    return ', '.join(parts)


def model_options(opt: dict[str, Any], cpu: bool, out: str) -> dict[str, Any]:
    """A test-mode copy of ``opt``: no training, one device, no pretrained weights (loaded per checkpoint)."""
    import torch

    test_opt = copy.deepcopy(dict(opt))
    if test_opt.get('model_type') == 'MCLIRModel':  # test as the base model: no negatives, no VGG
        test_opt['model_type'] = (test_opt.get('mclir') or {}).get('base_model', 'SRModel')
    if 'network_g' not in test_opt:
        raise EvalError('The option file has no network_g block: evaluation needs the network it trains.')
    num_gpu = test_opt.get('num_gpu', 0)
    num_gpu = torch.cuda.device_count() if num_gpu == 'auto' else int(num_gpu or 0)
    use_gpu = not cpu and num_gpu > 0 and torch.cuda.is_available()
    test_opt.update(is_train=False, dist=False, rank=0, world_size=1, num_gpu=1 if use_gpu else 0)
    path = dict(test_opt.get('path') or {})
    path.update(pretrain_network_g=None, results_root=out, log=out, visualization=out)
    test_opt['path'] = path
    return test_opt


# ---------------------------------------------------------------------------------------------- checkpoints
def resolve_param_key(path: str, requested: str) -> str | None:
    """The key of ``path`` to load: ``params_ema``/``params``, or None for a bare state dict."""
    import torch

    if not os.path.isfile(path):
        raise EvalError(f'Checkpoint {path!r} does not exist.')
    if path.endswith('.state'):
        raise EvalError(f'{path} is a training state; pass a network checkpoint, models/net_g_<iter>.pth.')
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:
        raise EvalError(f'Cannot read checkpoint {path!r} ({type(err).__name__}: {str(err)[:300]}).') from err
    if not isinstance(checkpoint, dict):
        raise EvalError(f'{path} holds a {type(checkpoint).__name__}, not a state dict or a BasicSR checkpoint.')
    present = [key for key in PARAM_KEYS[1:] if key in checkpoint]
    if requested != 'auto':
        if requested not in checkpoint:
            hint = f'use --param-key {present[0]}' if present else 'use --param-key auto for a bare state dict'
            raise EvalError(f'{path} has no {requested!r} weights (keys: {", ".join(map(str, checkpoint))}); {hint}.')
        return requested
    if present:
        return present[0]
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return None
    raise EvalError(f'{path} has neither params_ema nor params (keys: {", ".join(map(str, list(checkpoint)[:8]))}): '
                    'pass a BasicSR network checkpoint, models/net_g_<iter>.pth.')


def checkpoint_labels(paths: Sequence[str]) -> list[str]:
    """File stems, with the run folder's name in front where stems repeat (and a counter if still equal)."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    labels = []
    for path, stem in zip(paths, stems):
        if stems.count(stem) > 1:
            folder = os.path.dirname(os.path.abspath(path))
            run = os.path.basename(os.path.dirname(folder)) if os.path.basename(folder) == 'models' else \
                os.path.basename(folder)
            stem = f'{run}_{stem}'
        labels.append(stem)
    return [label if labels.count(label) == 1 else f'{label}_{i}' for i, label in enumerate(labels)]


def safe_name(name: str) -> str:
    """``name`` usable as a file name."""
    return re.sub(r'[^\w.+-]+', '_', str(name)).strip('_') or 'dataset'


# ---------------------------------------------------------------------------------------------- evaluation
def _metric_needs_gt(metric: dict[str, Any]) -> bool:
    from basicsr.utils.registry import METRIC_REGISTRY
    return 'img2' in inspect.signature(METRIC_REGISTRY.get(metric['type'])).parameters


def image_metrics(sr_img, gt_img, metrics: dict[str, dict], sr_float=None, gt_float=None) -> dict[str, float | None]:
    """BasicSR's ``calculate_metric`` per metric (None where a metric needs the missing GT).

    Args:
        sr_img: The output as BasicSR's validation has it, a uint8 BGR image (``tensor2img``).
        gt_img: The ground truth likewise, or None.
        metrics: ``val.metrics``-style entries.
        sr_float: The float output tensor (``get_current_visuals()['result']``), given to the float-protocol
            metrics instead of ``sr_img``. Defaults to None (they then get the uint8 images).
        gt_float: The float ground truth tensor, for the same metrics. Defaults to None.
    """
    from basicsr.metrics import calculate_metric

    values: dict[str, float | None] = {}
    for name, metric in metrics.items():
        img, img2 = sr_img, gt_img
        if is_float_protocol(metric.get('type')) and sr_float is not None:
            img, img2 = sr_float, gt_float
        if _metric_needs_gt(metric):
            values[name] = None if img2 is None else float(calculate_metric({'img': img, 'img2': img2}, metric))
        else:
            values[name] = float(calculate_metric({'img': img}, metric))
    return values


def evaluate_loader(model, loader, metrics: dict[str, dict], save_dir: str | None, desc: str) -> list[dict]:
    """Per-image rows ``{'image': name, <metric>: value}``, the model's ``test()`` on each image of ``loader``."""
    from basicsr.utils import imwrite, tensor2img
    from tqdm import tqdm

    rows = []
    with tqdm(total=len(loader), desc=desc, unit='img', dynamic_ncols=True) as bar:
        for index, data in enumerate(loader):
            image = os.path.splitext(os.path.basename(data['lq_path'][0]))[0] if 'lq_path' in data else f'{index:04d}'
            model.feed_data(data)
            model.test()
            visuals = model.get_current_visuals()
            sr_img = tensor2img([visuals['result']])
            gt_img = tensor2img([visuals['gt']]) if 'gt' in visuals else None
            for attr in ('lq', 'gt', 'output'):  # as BasicSR's validation: no stale GT for the next image
                if hasattr(model, attr):
                    delattr(model, attr)
            if save_dir:
                imwrite(sr_img, os.path.join(save_dir, f'{image}.png'))
            values = image_metrics(sr_img, gt_img, metrics, sr_float=visuals['result'], gt_float=visuals.get('gt'))
            rows.append({'image': image, **values})
            if rows[-1].get('psnr') is not None:
                bar.set_postfix(psnr=f"{rows[-1]['psnr']:.2f}")
            bar.update(1)
    return rows


def mean_values(rows: Sequence[dict], names: Sequence[str]) -> dict[str, float | None]:
    """BasicSR's mean per metric: the sum in image order divided by the count (None if no image has a value)."""
    means = {}
    for name in names:
        values = [r[name] for r in rows if r[name] is not None]
        means[name] = sum(values) / len(values) if values else None
    return means


def _setup_logger(out: str):
    """BasicSR's logger writing INFO to ``<out>/eval_<time>.log`` and only warnings to the console."""
    from basicsr.utils import get_root_logger, get_time_str

    logger = get_root_logger(logger_name='basicsr', log_level=logging.INFO,
                             log_file=os.path.join(out, f'eval_{get_time_str()}.log'))
    for handler in logger.handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)
    return logger


def evaluate(args: argparse.Namespace, root_path: str) -> list[dict]:
    """Run the evaluation mode; return the summary rows (one per checkpoint x dataset)."""
    from basicsr.data import build_dataloader, build_dataset
    from basicsr.models import build_model
    from basicsr.utils import set_random_seed

    from mclir_plugin.compat import check_dataset_paths

    opt = load_options(args.opt, args.force_yml)
    datasets = select_datasets(opt, args.datasets, args.opt)
    metrics, notes = resolve_metrics(opt)
    keys = [resolve_param_key(path, args.param_key) for path in args.checkpoints]  # file errors before any work
    labels = checkpoint_labels(args.checkpoints)
    out = args.out or os.path.join(root_path, 'results', f"eval_{safe_name(opt.get('name', 'run'))}")
    os.makedirs(out, exist_ok=True)
    logger = _setup_logger(out)
    test_opt = model_options(opt, args.cpu, out)
    set_random_seed(int(opt.get('manual_seed') or 0))
    loaders = []
    for block in datasets:
        check_dataset_paths(block)
        loaders.append(build_dataloader(build_dataset(block), block, num_gpu=test_opt['num_gpu'], dist=False,
                                        sampler=None, seed=opt.get('manual_seed')))
    model = build_model(test_opt)
    device = 'cuda' if test_opt['num_gpu'] else 'cpu'
    base = ' (mclir.base_model; no negatives or VGG at test time)' if opt.get('model_type') == 'MCLIRModel' else ''
    print(f"Evaluating {len(labels)} checkpoint(s) on {len(loaders)} test set(s) of {args.opt}: model "
          f"{test_opt['model_type']}{base}, network {test_opt['network_g'].get('type')}, {device}")
    print(f'metrics: {describe_metrics(metrics, notes)}')
    names = list(metrics)
    summary, results = [], []
    for path, key, label in zip(args.checkpoints, keys, labels):
        model.load_network(model.net_g, path, test_opt['path'].get('strict_load_g', True), key)
        logger.info(f'Evaluating {path} ({key or "bare state dict"}) as {label}')
        os.makedirs(os.path.join(out, label), exist_ok=True)
        for block, loader in zip(datasets, loaders):
            dataset = safe_name(block['name'])
            save_dir = os.path.join(out, label, dataset) if args.save_images else None
            start = time.time()
            rows = evaluate_loader(model, loader, metrics, save_dir, desc=f'{label} {block["name"]}')
            write_csv(os.path.join(out, label, f'{dataset}.csv'), ['image', *names], rows)
            means = mean_values(rows, names)
            summary.append({'checkpoint': label, 'path': os.path.abspath(path), 'param_key': key or 'none',
                            'dataset': block['name'], 'images': len(rows), **means})
            results.append({**summary[-1], 'seconds': round(time.time() - start, 3), 'per_image': rows})
    write_csv(os.path.join(out, 'summary.csv'), ['checkpoint', 'path', 'param_key', 'dataset', 'images', *names],
                   summary)
    with open(os.path.join(out, 'summary.json'), 'w', encoding='utf-8') as file:
        json.dump({'option_file': os.path.abspath(args.opt), 'model_type': test_opt['model_type'],
                   'metrics': metrics, 'notes': notes, 'results': results}, file, indent=1)
    print_summary(summary, names, out)
    return summary


def print_summary(summary: Sequence[dict], names: Sequence[str], out: str) -> None:
    """The final table of means (4 decimals, as BasicSR logs them)."""
    headers = ['checkpoint', 'param_key', 'dataset', 'images', *names]
    cells = [[r['checkpoint'], r['param_key'], r['dataset'], str(r['images']),
              *(number(r[n]) for n in names)] for r in summary]
    print('\n' + format_table(headers, cells))
    print(f'\nWrote {out}: <checkpoint>/<dataset>.csv per image, summary.csv and summary.json')


def is_evaluation(argv: Sequence[str]) -> bool:
    """Whether the command line asks for the evaluation mode (or for help, which describes both modes)."""
    return any(a == '--checkpoints' or a.startswith('--checkpoints=') or a in ('-h', '--help') for a in argv)


def main(root_path: str | None = None, argv: Sequence[str] | None = None) -> None:
    """``--checkpoints``: evaluate them; otherwise BasicSR's test pipeline on ``-opt`` (see the module docstring)."""
    root_path = os.path.abspath(root_path or os.getcwd())
    if argv is None:
        argv = sys.argv[1:]
    if not is_evaluation(argv):
        from basicsr.test import test_pipeline
        normalise_local_rank_argv()
        test_pipeline(root_path)
        return
    args = build_parser().parse_args(argv)
    try:
        evaluate(args, root_path)
    except (EvalError, FileNotFoundError) as err:
        sys.exit(f'tools/test.py: error: {err}')


if __name__ == '__main__':
    main()
