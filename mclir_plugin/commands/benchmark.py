#!/usr/bin/env python
"""Cost of one SPN training step, measured side by side with the plain step, the official step, and the plugin
step under each cheap option.

    python tools/benchmark_spn.py --arch swinir_light --patch 96 --batch 2 --negatives 4
    python tools/benchmark_spn.py --arch swinir_light --negatives 4 --options default bf16 neg_per_step=1
    python tools/benchmark_spn.py -opt options/swinir_spn.yml --negatives 4 --amp bf16 --device cuda

For each N it times, interleaved (one step of each variant per round, in the same rounds) after warm-up, and
prints medians:

  (a) plain    the base BasicSR model's own step with L1 (``SRModel.optimize_parameters``);
  (b) official a re-implementation of the official step (``mclir_plugin.models.official_step``): VGG on the
               output once per negative, each negative through VGG on its own;
  (c) plugin   ``MCLIRModel.optimize_parameters`` with the same options (and ``--amp``, ``--vgg-channels-last``),
               the cost table's ``default`` row;
  (d) parts    what an SPN step cannot avoid: the N negative forwards alone, VGG forward+backward on the output,
               VGG on the N negatives without gradients (in the plugin step's precision, so with ``--amp``
               too); the negative forwards use the hook's ``fast_forward`` (cached attention biases and masks)
               and ``channels_last``, and ``neg_forwards_eager`` times the same forwards without either, for
               comparison (not part of (d));

then the ratios (c)/(a), (b)/(c) and (c)/((a)+(d)), and memory per variant: what autograd saves for backward in
one step (exact, on every device, every row), and the peak (CUDA: max allocated, every row; CPU, with
``--memory``: the peak of the tensors live during one step, from the profiler's memory timeline, for (a), (b) and
(c) only, as the profiler takes seconds per step).

The cost table: ``--options`` names plugin steps to time in the same rounds, one model each (same seed, same
data), and prints for each its median ms per step, (c)/(a), and its speed-up against the plugin default. A row is
``default`` or options joined by ``+``, each ``key=value`` with the key one of ``precision``
(``mclir.hook.precision``), ``neg_per_step``, ``neg_every``, ``neg_batch_fraction`` (``mclir.<key>``); ``bf16``,
``fp16`` and ``fp32`` stand for ``precision=<it>``, and ``all`` for every cheap option at once,
``bf16+neg_per_step=1+neg_every=2+neg_batch_fraction=0.5``. The default table is ``default bf16 neg_per_step=1
neg_every=2 neg_batch_fraction=0.5 bf16+neg_per_step=1 all``; ``default`` is always timed (the reference). A row
the model refuses for this N or device (``neg_per_step`` > N, fp16 negatives on a CPU without fp16 kernels) is
printed as skipped, with the model's message.

Amortised options are timed over whole cycles: a row with ``neg_every: k`` runs k consecutive steps in each round
(iterations 1..k, k+1..2k, ..., each cycle holding exactly one step with the negative term), timed together and
divided by k, so its median is of per-step costs over whole cycles, never of a lucky or unlucky single step. Its
memory is the largest over the cycle's steps. Every variant counts its own iterations (from 1), so the cycles do
not depend on how many variants a round holds. Sampled options (``neg_per_step``, ``neg_batch_fraction``) draw
afresh at every step; the median over the rounds covers the draws.

VGG has random weights unless torchvision's ImageNet file is cached (the cost is the same). Timings on shared
machines move by 10-20% between runs: compare ratios from one run only. Resident memory is not reported: on CPU
the C allocator's caching dominates it.
"""
from __future__ import annotations

import argparse
import collections
import copy
import dataclasses
import os
import statistics
import tempfile
import time
import warnings
from typing import Any

import mclir_plugin  # noqa: F401  (compat shim and registration, before basicsr)
import torch
import yaml
from basicsr.models import build_model

from mclir_plugin.archs.frozen_cache import restore_eager
from mclir_plugin.archs.presets import network_preset
from mclir_plugin.models.official_step import OfficialStep

ARCHS = {name: network_preset(name) for name in ('swinir_light', 'edsr_light')}
BASE_MODELS = {'SwinIR': 'SwinIRModel'}
LAYOUTS = {'auto': 'auto', 'true': True, 'false': False}  # the channels_last options
PARTS = ('neg_forwards', 'vgg_out_fwd_bwd', 'vgg_negatives')
REFERENCE = ('plain', 'official')
# the cost-table keys and where each goes in the mclir block
OPTION_KEYS = {'precision': ('hook', 'precision'), 'neg_per_step': ('neg_per_step',), 'neg_every': ('neg_every',),
               'neg_batch_fraction': ('neg_batch_fraction',)}
SHORTHANDS = {'bf16': 'precision=bf16', 'fp16': 'precision=fp16', 'fp32': 'precision=fp32',
              'all': 'bf16+neg_per_step=1+neg_every=2+neg_batch_fraction=0.5'}
DEFAULT_ROWS = ('default', 'bf16', 'neg_per_step=1', 'neg_every=2', 'neg_batch_fraction=0.5', 'bf16+neg_per_step=1',
                'all')


@dataclasses.dataclass(frozen=True)
class Row:
    """One plugin step of the cost table: its label and what it changes in the ``mclir`` block."""
    label: str
    mclir: dict[str, Any]

    @property
    def cycle(self) -> int:
        """Steps per timed round: the ``neg_every`` cycle (1 for every other row)."""
        return int(self.mclir.get('neg_every', 1))


def expand(text: str) -> list[str]:
    """The ``+``-joined tokens of ``text`` with the shorthands replaced (``'all+fp16'`` works: later tokens win)."""
    tokens = SHORTHANDS.get(text, text).split('+')
    return [t for token in tokens for t in (expand(token) if token in SHORTHANDS else [token])]


def parse_row(text: str) -> Row:
    """``'bf16+neg_per_step=1'`` -> ``Row('bf16+neg_per_step=1', {'neg_per_step': 1, 'hook': {'precision': ...}})``.

    Raises:
        argparse.ArgumentTypeError: for a key that is not a cost option or a token without ``=``.
    """
    mclir: dict[str, Any] = {}
    if text == 'default':
        return Row(text, mclir)
    for token in expand(text):
        key, sep, value = token.partition('=')
        if not sep or key not in OPTION_KEYS:
            raise argparse.ArgumentTypeError(
                f"--options: '{token}' in '{text}' is not a cost option; use 'default' or key=value joined by '+' "
                f"with keys {', '.join(OPTION_KEYS)} (or {', '.join(SHORTHANDS)}).")
        *parents, leaf = OPTION_KEYS[key]
        place = mclir
        for parent in parents:
            place = place.setdefault(parent, {})
        place[leaf] = yaml.safe_load(value)
    return Row(text, mclir)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--arch', choices=sorted(ARCHS), default='swinir_light', help='a built-in network preset')
    source.add_argument('-opt', help="an option file: its network_g, scale, mclir.base_model and pixel_opt are used")
    parser.add_argument('--patch', type=int, default=96, help='GT (output) patch side. Default: 96')
    parser.add_argument('--batch', type=int, default=2, help='batch size. Default: 2')
    parser.add_argument('--negatives', type=int, nargs='+', default=[1, 4], help='values of N. Default: 1 4')
    parser.add_argument('--options', type=parse_row, nargs='+', default=None, metavar='ROW',
                        help='the cost table\'s plugin rows: default, or key=value joined by "+" (keys: '
                             f'{", ".join(OPTION_KEYS)}; {", ".join(SHORTHANDS)}). Default: {" ".join(DEFAULT_ROWS)}')
    parser.add_argument('--steps', type=int, default=15, help='timed rounds. Default: 15')
    parser.add_argument('--warmup', type=int, default=3, help='untimed rounds first. Default: 3')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--amp', choices=['none', 'bf16', 'fp16'], default='none',
                        help='mclir.amp of every plugin row')
    parser.add_argument('--vgg-channels-last', choices=LAYOUTS, default='auto',
                        help='SPNLoss\'s channels_last option (VGG). Default: auto (on CPU only)')
    parser.add_argument('--neg-channels-last', choices=LAYOUTS, default='auto',
                        help='the hook\'s channels_last option (the negatives). Default: auto (on CPU only)')
    parser.add_argument('--memory', action='store_true', help='CPU: also measure the peak tensor memory of a step')
    args = parser.parse_args(argv)
    rows = args.options or [parse_row(text) for text in DEFAULT_ROWS]
    unique = {row.label: row for row in [parse_row('default'), *rows]}  # the default first, each row once
    args.options = list(unique.values())
    return args


def network_and_scale(args) -> tuple[dict, int, str, dict]:
    """``(network_g, scale, base model type, pixel_opt)`` from the preset or the option file."""
    pixel = {'type': 'SPNLoss', 'neg_weight': 0.001, 'vgg_fallback': 'random'}
    if args.opt:
        with open(args.opt) as f:
            opt = yaml.safe_load(f)
        pixel.update({k: v for k, v in opt['train']['pixel_opt'].items() if k in ('layer_weights', 'vgg_type')})
        base = (opt.get('mclir') or {}).get('base_model') or opt['model_type']
        return opt['network_g'], int(opt.get('scale', 1)), base, pixel
    net = ARCHS[args.arch]
    return net, int(net.get('upscale', 1)), BASE_MODELS.get(net['type'], 'SRModel'), pixel


def model_opt(network_g: dict, scale: int, base: str, pixel: dict, num_neg: int, device: str, spn: bool,
              amp: str, root: str, vgg_channels_last: str = 'auto', neg_channels_last: str = 'auto',
              mclir: dict[str, Any] | None = None) -> dict:
    """BasicSR options of one benchmark model; ``mclir`` (a :class:`Row`'s) is merged into the ``mclir`` block."""
    paths = {k: os.path.join(root, k) for k in ('models', 'training_states', 'log', 'visualization')}
    opt = {'name': 'bench', 'model_type': 'MCLIRModel' if spn else base, 'scale': scale,
           'num_gpu': 1 if device == 'cuda' else 0, 'manual_seed': 0, 'is_train': True, 'dist': False, 'rank': 0,
           'world_size': 1, 'root_path': root, 'network_g': copy.deepcopy(network_g),
           'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None,
                    'experiments_root': root, **paths},
           'train': {'ema_decay': 0, 'optim_g': {'type': 'Adam', 'lr': 2e-4, 'betas': [0.9, 0.99]},
                     'scheduler': {'type': 'MultiStepLR', 'milestones': [10 ** 9], 'gamma': 0.5},
                     'pixel_opt': dict(pixel, channels_last=LAYOUTS[vgg_channels_last]) if spn else
                     {'type': 'L1Loss', 'loss_weight': 1.0}}}
    if spn:
        mclir = copy.deepcopy(mclir or {})
        hook = {'neg_iter': [100, 200, 500, 1000][:num_neg] + [1000] * max(0, num_neg - 4), 'neg_decay': 0.1,
                'neg_start': 0.1, 'channels_last': LAYOUTS[neg_channels_last], **mclir.pop('hook', {})}
        opt['mclir'] = {'base_model': base, 'amp': amp, 'hook': hook, **mclir}
    return opt


class Bench:
    """The variants for one N, as callables of one step each: ``plain``, ``official``, the parts, and one plugin
    model per cost-table row (by its label; ``default`` is the (c) of the ratios)."""

    def __init__(self, args, num_neg: int, root: str) -> None:
        network_g, scale, base, pixel = network_and_scale(args)
        self.device = torch.device(args.device)
        g = torch.Generator().manual_seed(0)
        lq_side = args.patch // scale
        self.lq = torch.rand(args.batch, 3, lq_side, lq_side, generator=g).to(self.device)
        self.gt = torch.rand(args.batch, 3, lq_side * scale, lq_side * scale, generator=g).to(self.device)
        torch.manual_seed(0)
        self.plain = build_model(model_opt(network_g, scale, base, pixel, num_neg, args.device, False, 'none', root))
        self.rows = {row.label: row for row in args.options}
        self.plugins, self.skipped = {}, {}
        for row in args.options:
            torch.manual_seed(0)  # every row starts from the same network and negatives
            opt = model_opt(network_g, scale, base, pixel, num_neg, args.device, True, args.amp, root,
                            args.vgg_channels_last, args.neg_channels_last, row.mclir)
            try:
                self.plugins[row.label] = build_model(opt)
            except ValueError as error:  # an option refused here (OptionError too): say so, time the others
                if row.label == 'default':
                    raise
                self.skipped[row.label] = str(error).splitlines()[0]
        self.plugin = self.plugins['default']
        # the official step trains its own copy of the plugin's network, with its own frozen copies as negatives
        spn = self.plugin.cri_pix
        net = copy.deepcopy(self.plugin.get_bare_model(self.plugin.net_g)).train()
        negs = [copy.deepcopy(n) for n in self.plugin.negative_hook.negatives]
        for neg in negs:  # the official negatives: their class's own forward, the default memory layout
            restore_eager(neg)
            neg.to(memory_format=torch.contiguous_format)
        self.eager_negatives = negs
        official_vgg = copy.deepcopy(spn.vgg)  # the official code runs VGG in the default layout
        official_vgg.channels_last = False
        self.official = OfficialStep(net, negs, torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.9, 0.99)),
                                     official_vgg, spn.layer_weights, spn.neg_weight,
                                     self.plugin.negative_hook.neg_iter, self.plugin.negative_hook.neg_decay)
        self.iters: collections.Counter[str] = collections.Counter()  # each variant's own iteration count

    @property
    def variants(self) -> list[str]:
        """What one round times, in order: the references, the plugin rows, the parts, the eager forwards."""
        return [*REFERENCE, *self.plugins, *PARTS, 'neg_forwards_eager']

    def cycle(self, variant: str) -> int:
        """Consecutive steps that make one whole cycle of ``variant`` (``neg_every``; 1 for the others)."""
        return self.rows[variant].cycle if variant in self.plugins else 1

    def step(self, variant: str) -> None:
        self.iters[variant] += 1
        it = self.iters[variant]
        data = {'lq': self.lq, 'gt': self.gt}
        if variant == 'plain':
            self.plain.feed_data(data)
            self.plain.optimize_parameters(it)
        elif variant == 'official':
            self.official(self.lq, self.gt, it)
        elif variant in self.plugins:
            self.plugins[variant].feed_data(data)
            self.plugins[variant].optimize_parameters(it)
        else:  # the parts, in the plugin step's precision
            amp = self.plugin.amp_dtype
            with torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=bool(amp)):
                self.part(variant)
        if self.device.type == 'cuda':
            torch.cuda.synchronize()

    def part(self, variant: str) -> None:
        if variant == 'neg_forwards':
            self.plugin.negative_hook.forward_negatives(self.lq)
        elif variant == 'neg_forwards_eager':  # the same, without the hook's fast_forward (for comparison)
            with torch.inference_mode():
                torch.stack([neg(self.lq) for neg in self.eager_negatives])
        elif variant == 'vgg_out_fwd_bwd':
            out = self.gt.clone().requires_grad_(True)
            feats = self.plugin.cri_pix.vgg(out)
            sum(f.float().mean() for f in feats.values()).backward()
        elif variant == 'vgg_negatives':
            negs = self.gt.unsqueeze(0).expand(len(self.plugin.negative_hook.negatives), *self.gt.shape)
            with torch.inference_mode():
                self.plugin.cri_pix.vgg(negs.flatten(0, 1))


def saved_for_backward_mib(bench: Bench, variant: str) -> float:
    """Memory autograd keeps for backward during one step of ``variant`` (distinct storages), in MiB; the largest
    over a whole cycle of it.

    Deterministic, unlike sampled resident memory: the activations a step holds are what sets its peak.
    """
    def one_step() -> float:
        storages: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            bench.step(variant)
        return sum(storages.values()) / 2 ** 20

    return max(one_step() for _ in range(bench.cycle(variant)))


def timed(bench: Bench, variant: str) -> float:
    """Seconds per step of ``variant``, over one whole cycle of it (see the module docstring)."""
    steps = bench.cycle(variant)
    start = time.perf_counter()
    for _ in range(steps):
        bench.step(variant)
    return (time.perf_counter() - start) / steps


def cuda_peak_mib(bench: Bench, variant: str) -> float:
    """Peak CUDA memory allocated during a whole cycle of ``variant``, in MiB."""
    torch.cuda.reset_peak_memory_stats()
    for _ in range(bench.cycle(variant)):
        bench.step(variant)
    return torch.cuda.max_memory_allocated() / 2 ** 20


def cpu_tensor_peak_mib(bench: Bench, variant: str) -> float:
    """Peak of the tensor memory live during one step of ``variant`` on CPU (the largest over a cycle), in MiB,
    from the profiler's memory timeline: every allocation and free of the tensors the step touches (its
    parameters, optimiser state, inputs, activations, temporaries), not the process's resident memory, which the C
    allocator's caching dominates."""
    import json

    from torch.profiler import ProfilerActivity, profile
    peak = 0.0
    for _ in range(bench.cycle(variant)):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                     with_stack=True) as prof:
            bench.step(variant)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, 'timeline.json')
            with warnings.catch_warnings():  # deprecated for CUDA snapshots; still the CPU timeline's only export
                warnings.filterwarnings('ignore', message='`export_memory_timeline` is deprecated')
                prof.export_memory_timeline(path, device='cpu')
            with open(path) as f:
                _, sizes = json.load(f)
        peak = max(peak, max(sum(by_category) for by_category in sizes) / 2 ** 20)
    return peak


def measure(args, num_neg: int) -> tuple[Bench, dict[str, float], dict[str, float], dict[str, float]]:
    """Build the variants for ``num_neg`` and time them: ``(bench, median ms, saved MiB, peak MiB)``."""
    with tempfile.TemporaryDirectory() as root:
        bench = Bench(args, num_neg, root)
        times: dict[str, list[float]] = {v: [] for v in bench.variants}
        for round_ in range(args.warmup + args.steps):
            for variant in bench.variants:  # one step (one cycle) of each per round
                t = timed(bench, variant)
                if round_ >= args.warmup:
                    times[variant].append(t)
        stepped = [*REFERENCE, *bench.plugins]
        saved = {v: saved_for_backward_mib(bench, v) for v in stepped}
        memory = {}
        if args.device == 'cuda':
            memory = {v: cuda_peak_mib(bench, v) for v in stepped}
        elif args.memory:  # the profiler takes seconds per step: the three variants of the ratios only
            memory = {v: cpu_tensor_peak_mib(bench, v) for v in (*REFERENCE, 'default')}
    return bench, {v: statistics.median(ts) * 1e3 for v, ts in times.items()}, saved, memory


def memory_text(variant: str, saved: dict[str, float], memory: dict[str, float]) -> str:
    text = f'   saved for backward {saved[variant]:6.1f} MiB' if variant in saved else ''
    return text + (f'   peak {memory[variant]:6.1f} MiB' if variant in memory else '')


def report(bench: Bench, num_neg: int, steps: int, med: dict[str, float], saved: dict[str, float],
           memory: dict[str, float]) -> None:
    """Print the block of one N: the variants and ratios of the default, then the cost table."""
    print(f'\nN = {num_neg}: median ms per step (medians of {steps} rounds)')
    for variant in [*REFERENCE, 'plugin', *PARTS, 'neg_forwards_eager']:
        key = 'default' if variant == 'plugin' else variant
        print(f'  {variant:16s} {med[key]:9.1f}{memory_text(key, saved, memory)}')
    default, plain = med['default'], med['plain']
    print(f'  (c)/(a)      plugin / plain            {default / plain:.2f}x')
    print(f'  (b)/(c)      official / plugin         {med["official"] / default:.2f}x')
    print(f'  (c)/((a)+(d)) plugin / unavoidable      {default / (plain + sum(med[v] for v in PARTS)):.2f}x')
    print(f'\n  cost table, N = {num_neg}: the plugin step under each option (ms per step; neg_every rows over whole '
          'cycles)')
    width = max(len(label) for label in bench.rows) + 2
    print(f'  {"option":{width}s} {"ms":>9s} {"(c)/(a)":>8s} {"speed-up":>9s}')
    for label, row in bench.rows.items():
        if label in bench.skipped:
            print(f'  {label:{width}s} skipped: {bench.skipped[label]}')
            continue
        print(f'  {label:{width}s} {med[label]:9.1f} {med[label] / plain:7.2f}x {default / med[label]:8.2f}x'
              f'{memory_text(label, saved, memory)}')
    if 'all' in bench.rows:
        print(f'  (all = {SHORTHANDS["all"]})')


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    network_g, scale, base, _ = network_and_scale(args)
    print(f'# SPN step benchmark: {network_g["type"]} ({base}), x{scale}, output patch {args.patch}, batch '
          f'{args.batch}, device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, '
          f'plugin amp={args.amp}, channels_last {args.vgg_channels_last} (VGG) {args.neg_channels_last} (negatives), '
          f'{args.steps} rounds after {args.warmup}; rows: {" ".join(row.label for row in args.options)}')
    for num_neg in args.negatives:
        bench, med, saved, memory = measure(args, num_neg)
        report(bench, num_neg, args.steps, med, saved, memory)


if __name__ == '__main__':
    main()
