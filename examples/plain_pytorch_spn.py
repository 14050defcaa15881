"""SPN (or a peer contrastive loss) with history negatives in a plain PyTorch loop: no BasicSR model, no runner.

A tiny x2 super-resolution network is trained on synthetic smooth images for a few iterations::

    python examples/plain_pytorch_spn.py --iters 50                  # SPNLoss, the MCLIR loss
    python examples/plain_pytorch_spn.py --iters 50 --loss cr        # AECR-Net's ratio form, history negatives
    python examples/plain_pytorch_spn.py --loss infonce --vgg-fallback error   # needs the ImageNet VGG file

The loop is the whole recipe: build the bank of negatives (:class:`HistoryNegatives`) once the network is on its
device, wrap the loss in a :class:`ContrastiveCriterion` (the same object MCLIRModel puts in a BasicSR model's
``cri_pix``: it runs the negatives on the bound input and applies the cost options), bind it to each batch's input
and iteration, and refresh the negatives after the optimizer step with the 1-based iteration. ``bank.state_dict()``
goes into your checkpoint next to the network and the optimizer. Without the ImageNet VGG file the example uses
random-weight VGG features (``vgg_fallback='random'``, printed): fine to see the machinery, not perceptual.
"""
from __future__ import annotations

import argparse
import os

import mclir_plugin  # noqa: F401  (first: makes basicsr importable and registers the losses)

import torch
import torch.nn.functional as F
from torch import nn

from mclir_plugin.hooks import HistoryNegatives
from mclir_plugin.losses import ContrastiveCriterion, ContrastRatioLoss, InfoNCELoss, SPNLoss

LOSSES = {'spn': SPNLoss, 'cr': ContrastRatioLoss, 'infonce': InfoNCELoss}


class TinySR(nn.Module):
    """x2 super-resolution: bicubic upsampling plus a learned residual (two convolutions and a pixel shuffle)."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, 3 * 4, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode='bicubic', align_corners=False) + self.body(x)


def synthetic_batch(index: int, batch: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lq, gt)``: smooth random images (seeded by ``index``) and their 2x average-pooled versions."""
    g = torch.Generator().manual_seed(index)
    gt = F.interpolate(torch.rand(batch, 3, size // 8, size // 8, generator=g), size=size, mode='bicubic',
                       align_corners=False).clamp(0, 1)
    return F.avg_pool2d(gt, 2), gt


def main(iters: int = 20, loss: str = 'spn', neg_weight: float = 0.01, vgg_fallback: str = 'random',
         checkpoint: str | None = None, seed: int = 0) -> dict:
    """Train for ``iters`` iterations; return ``{'losses': [(l_rec, l_neg), ...], 'net', 'bank', 'criterion'}``
    (``criterion``: the loss; its training-step wrapper is ``'step_criterion'``).

    Args:
        iters: Number of iterations.
        loss: ``'spn'``, ``'cr'`` or ``'infonce'``.
        neg_weight: ``lambda`` of the negative term.
        vgg_fallback: ``'error'`` or ``'random'`` when the ImageNet VGG file is missing.
        checkpoint: If given, save network, optimizer, the negatives' state and iteration there at the end.
        seed: Seed of the network initialisation and of the negatives' fresh initialisations.
    """
    torch.manual_seed(seed)
    net = TinySR()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = LOSSES[loss](neg_weight=neg_weight, vgg_fallback=vgg_fallback)
    print(f'{type(loss_fn).__name__}: {loss_fn.vgg.vgg_type} {loss_fn.vgg.weights_source}')
    bank = HistoryNegatives(neg_iter=[2, 5], neg_decay=0.1, neg_start=0.1, seed=seed)
    bank.build(net)                                   # once the network is on its device
    criterion = ContrastiveCriterion(loss_fn, bank)   # neg_every / neg_batch_fraction would go here
    losses = []
    for it in range(1, iters + 1):
        lq, gt = synthetic_batch(it)
        criterion.bind(lq, it)                        # the negatives run on this input
        out = net(lq)
        total = criterion(out, gt)                    # l_rec - l_neg, one scalar
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        bank.step(net, it)                            # after the optimizer step, 1-based iteration
        l_rec, l_neg = criterion.parts['l_rec'].item(), criterion.parts['l_neg'].item()
        losses.append((l_rec, l_neg))
        if it % 10 == 0 or it == iters:
            print(f'iter {it}: l_rec {l_rec:.4f}  l_neg {l_neg:.5f}')
    if checkpoint:
        torch.save({'net': net.state_dict(), 'optimizer': optimizer.state_dict(), 'mclir': bank.state_dict(),
                    'iter': iters}, checkpoint)
    return {'losses': losses, 'net': net, 'bank': bank, 'criterion': loss_fn, 'step_criterion': criterion}


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--iters', type=int, default=20)
    parser.add_argument('--loss', choices=sorted(LOSSES), default='spn')
    parser.add_argument('--neg-weight', type=float, default=0.01)
    parser.add_argument('--vgg-fallback', choices=['error', 'random'], default='random')
    parser.add_argument('--checkpoint', default=None, help='save network, optimizer and negatives here')
    args = parser.parse_args()
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    main(args.iters, args.loss, args.neg_weight, args.vgg_fallback, args.checkpoint)
