#!/usr/bin/env python
"""Cost of one SPN training step, measured side by side with the plain step and the official step.

    python tools/benchmark_spn.py --arch swinir_light --patch 96 --batch 2 --negatives 1 4
    python tools/benchmark_spn.py -opt options/swinir_spn.yml --negatives 4 --amp bf16 --device cuda

For each N it times, interleaved (one step of each variant per round) after warm-up, and prints medians:

  (a) plain    the base BasicSR model's own step with L1 (``SRModel.optimize_parameters``);
  (b) official a re-implementation of the official step (``mclir_plugin.models.official_step``): VGG on the output once per
               negative, each negative through VGG on its own;
  (c) plugin   ``MCLIRModel.optimize_parameters`` with the same options (and ``--amp``, ``--vgg-channels-last``);
  (d) parts    what an SPN step cannot avoid: the N negative forwards alone, VGG forward+backward on the output,
               VGG on the N negatives without gradients (in the plugin step's precision, so with ``--amp``
               too); the negative forwards use the hook's ``fast_forward`` (cached attention biases and masks)
               and ``channels_last``, and ``neg_forwards_eager`` times the same forwards without either, for
               comparison (not part of (d));

then the ratios (c)/(a), (b)/(c) and (c)/((a)+(d)), and memory per variant: what autograd saves for backward in
one step (exact, on every device), and the peak (CUDA: max allocated; CPU, with ``--memory``: the peak of the
tensors live during one step, from the profiler's memory timeline). VGG has random weights unless torchvision's
ImageNet file is cached (the cost is the same). Timings on shared machines move by 10-20% between runs: compare
ratios from one run only. Resident memory is not reported: on CPU the C allocator's caching dominates it.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time

import mclir_plugin  # noqa: F401  (compat shim and registration, before basicsr)
import torch
import yaml
from basicsr.models import build_model

from mclir_plugin.hooks.negative_fast_path import restore_eager
from mclir_plugin.models.official_step import OfficialStep

ARCHS = {
    'swinir_light': dict(type='SwinIR', upscale=4, in_chans=3, img_size=64, window_size=8, img_range=1.,
                         depths=[6, 6, 6, 6], embed_dim=60, num_heads=[6, 6, 6, 6], mlp_ratio=2,
                         upsampler='pixelshuffledirect', resi_connection='1conv'),
    'edsr_light': dict(type='EDSR', num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16, upscale=4, res_scale=1,
                       img_range=255., rgb_mean=[0.4488, 0.4371, 0.4040]),
}
BASE_MODELS = {'SwinIR': 'SwinIRModel'}
VARIANTS = ('plain', 'official', 'plugin', 'neg_forwards', 'vgg_out_fwd_bwd', 'vgg_negatives', 'neg_forwards_eager')
LAYOUTS = {'auto': 'auto', 'true': True, 'false': False}  # the channels_last options
PARTS = ('neg_forwards', 'vgg_out_fwd_bwd', 'vgg_negatives')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--arch', choices=sorted(ARCHS), default='swinir_light', help='a built-in network preset')
    source.add_argument('-opt', help="an option file: its network_g, scale, mclir.base_model and pixel_opt are used")
    parser.add_argument('--patch', type=int, default=96, help='GT (output) patch side. Default: 96')
    parser.add_argument('--batch', type=int, default=2, help='batch size. Default: 2')
    parser.add_argument('--negatives', type=int, nargs='+', default=[1, 4], help='values of N. Default: 1 4')
    parser.add_argument('--steps', type=int, default=15, help='timed rounds. Default: 15')
    parser.add_argument('--warmup', type=int, default=3, help='untimed rounds first. Default: 3')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--amp', choices=['none', 'bf16', 'fp16'], default='none', help='the plugin step\'s amp')
    parser.add_argument('--vgg-channels-last', choices=LAYOUTS, default='auto',
                        help='SPNLoss\'s channels_last option (VGG). Default: auto (on CPU only)')
    parser.add_argument('--neg-channels-last', choices=LAYOUTS, default='auto',
                        help='the hook\'s channels_last option (the negatives). Default: auto (on CPU only)')
    parser.add_argument('--memory', action='store_true', help='CPU: also measure the peak tensor memory of a step')
    return parser.parse_args(argv)


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
              amp: str, root: str, vgg_channels_last: str = 'auto', neg_channels_last: str = 'auto') -> dict:
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
        opt['mclir'] = {'base_model': base, 'amp': amp,
                        'hook': {'neg_iter': [100, 200, 500, 1000][:num_neg] + [1000] * max(0, num_neg - 4),
                                 'neg_decay': 0.1, 'neg_start': 0.1,
                                 'channels_last': LAYOUTS[neg_channels_last]}}
    return opt


class Bench:
    """The variants for one N, as callables of one step each."""

    def __init__(self, args, num_neg: int, root: str) -> None:
        network_g, scale, base, pixel = network_and_scale(args)
        self.device = torch.device(args.device)
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        lq_side = args.patch // scale
        self.lq = torch.rand(args.batch, 3, lq_side, lq_side, generator=g).to(self.device)
        self.gt = torch.rand(args.batch, 3, lq_side * scale, lq_side * scale, generator=g).to(self.device)
        self.plain = build_model(model_opt(network_g, scale, base, pixel, num_neg, args.device, False, 'none', root))
        self.plugin = build_model(model_opt(network_g, scale, base, pixel, num_neg, args.device, True, args.amp, root,
                                            args.vgg_channels_last, args.neg_channels_last))
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
        self.it = 0

    def step(self, variant: str) -> None:
        self.it += 1
        data = {'lq': self.lq, 'gt': self.gt}
        if variant == 'plain':
            self.plain.feed_data(data)
            self.plain.optimize_parameters(self.it)
        elif variant == 'plugin':
            self.plugin.feed_data(data)
            self.plugin.optimize_parameters(self.it)
        elif variant == 'official':
            self.official(self.lq, self.gt, self.it)
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
    """Memory autograd keeps for backward during one step of ``variant`` (distinct storages), in MiB.

    Deterministic, unlike sampled resident memory: the activations a step holds are what sets its peak.
    """
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        bench.step(variant)
    return sum(storages.values()) / 2 ** 20


def timed(bench: Bench, variant: str) -> float:
    start = time.perf_counter()
    bench.step(variant)
    return time.perf_counter() - start


def cpu_tensor_peak_mib(bench: Bench, variant: str) -> float:
    """Peak of the tensor memory live during one step of ``variant`` on CPU, in MiB, from the profiler's memory
    timeline: every allocation and free of the tensors the step touches (its parameters, optimiser state, inputs,
    activations, temporaries), not the process's resident memory, which the C allocator's caching dominates."""
    import json

    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        bench.step(variant)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'timeline.json')
        prof.export_memory_timeline(path, device='cpu')
        with open(path) as f:
            _, sizes = json.load(f)
    return max(sum(by_category) for by_category in sizes) / 2 ** 20


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    network_g, scale, base, _ = network_and_scale(args)
    print(f'# SPN step benchmark: {network_g["type"]} ({base}), x{scale}, output patch {args.patch}, batch '
          f'{args.batch}, device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, '
          f'plugin amp={args.amp}, channels_last {args.vgg_channels_last} (VGG) {args.neg_channels_last} (negatives), '
          f'{args.steps} rounds after {args.warmup}')
    for num_neg in args.negatives:
        with tempfile.TemporaryDirectory() as root:
            bench = Bench(args, num_neg, root)
            times = {v: [] for v in VARIANTS}
            for round_ in range(args.warmup + args.steps):
                for variant in VARIANTS:
                    t = timed(bench, variant)
                    if round_ >= args.warmup:
                        times[variant].append(t)
            saved = {v: saved_for_backward_mib(bench, v) for v in ('plain', 'official', 'plugin')}
        med = {v: statistics.median(ts) * 1e3 for v, ts in times.items()}
        parts = sum(med[v] for v in PARTS)
        memory = {}
        if args.device == 'cuda':
            for variant in ('plain', 'official', 'plugin'):
                torch.cuda.reset_peak_memory_stats()
                bench.step(variant)
                memory[variant] = torch.cuda.max_memory_allocated() / 2 ** 20
        elif args.memory:
            memory = {v: cpu_tensor_peak_mib(bench, v) for v in ('plain', 'official', 'plugin')}
        print(f'\nN = {num_neg}: median ms per step (IQR-free medians of {args.steps})')
        for variant in VARIANTS:
            mem = f'   saved for backward {saved[variant]:6.1f} MiB' if variant in saved else ''
            mem += f'   peak {memory[variant]:6.1f} MiB' if variant in memory else ''
            print(f'  {variant:16s} {med[variant]:9.1f}{mem}')
        print(f'  (c)/(a)      plugin / plain            {med["plugin"] / med["plain"]:.2f}x')
        print(f'  (b)/(c)      official / plugin         {med["official"] / med["plugin"]:.2f}x')
        print(f'  (c)/((a)+(d)) plugin / unavoidable      {med["plugin"] / (med["plain"] + parts):.2f}x')


if __name__ == '__main__':
    main()
