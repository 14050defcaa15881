"""A plain re-implementation of the official MCLIR training step, for comparisons (tests and the benchmark).

It follows ``SRNegModel_Multi.optimize_parameters`` of the official code (``docs/mclir_method.md`` §1.7) in
structure as well as in maths: VGG is run on the output once *per negative* and back-propagated through every
copy, the negatives' outputs go through VGG one at a time, and the refresh loop walks the reversed interval list
with the unreversed decay list. It is not used for training; :class:`~mclir_plugin.models.MCLIRModel` computes the
same loss and gradient with VGG on the output once.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def official_spn_terms(out: torch.Tensor, gt: torch.Tensor, neg_outs: Sequence[torch.Tensor], vgg: nn.Module,
                       layer_weights: Mapping[str, float], neg_weight: float,
                       loss_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(l_pix, l_neg)`` as the official code computes them: ``l_neg = (1/N) sum_i lambda * Percep(out, n_i)``.

    ``Percep`` is BasicSR's ``PerceptualLoss`` with ``criterion='l1'``: ``sum_l alpha_l * L1(phi_l(x), phi_l(y))``
    with both feature sets recomputed on every call.
    """
    l_pix = loss_weight * F.l1_loss(out, gt)
    l_neg = out.new_zeros(())
    for neg in neg_outs:
        f_out, f_neg = vgg(out), vgg(neg.detach())
        l_neg = l_neg + neg_weight * sum(alpha * F.l1_loss(f_out[k], f_neg[k].detach())
                                         for k, alpha in layer_weights.items())
    return l_pix, l_neg / len(neg_outs)


class OfficialStep:
    """One official training step (forward, SPN loss, backward, optimizer step, negative refresh).

    Args:
        net: The network being trained.
        negatives: The negative models (eval mode, frozen).
        optimizer: The optimizer of ``net``.
        vgg: A module returning ``{layer: feature}`` (e.g. :class:`~mclir_plugin.losses.VGGFeatures`).
        layer_weights: ``{layer: alpha}``.
        neg_weight: ``lambda``.
        neg_iter: Refresh intervals in configuration order.
        neg_decay: Decays in configuration order (paired with the *reversed* intervals, as officially).
    """

    def __init__(self, net: nn.Module, negatives: Sequence[nn.Module], optimizer: torch.optim.Optimizer,
                 vgg: nn.Module, layer_weights: Mapping[str, float], neg_weight: float, neg_iter: Sequence[int],
                 neg_decay: Sequence[float]) -> None:
        self.net, self.negatives, self.optimizer = net, list(negatives), optimizer
        self.vgg, self.layer_weights, self.neg_weight = vgg, dict(layer_weights), neg_weight
        self.neg_iter, self.neg_decay = list(neg_iter), list(neg_decay)

    def __call__(self, lq: torch.Tensor, gt: torch.Tensor, current_iter: int) -> tuple[float, float]:
        self.optimizer.zero_grad()
        out = self.net(lq)
        with torch.no_grad():
            neg_outs = [neg(lq) for neg in self.negatives]
        l_pix, l_neg = official_spn_terms(out, gt, neg_outs, self.vgg, self.layer_weights, self.neg_weight)
        (l_pix - l_neg).backward()
        self.optimizer.step()
        self.refresh(current_iter)
        return l_pix.item(), l_neg.item()

    @torch.no_grad()
    def refresh(self, current_iter: int) -> None:
        src = dict(self.net.named_parameters())
        for idx, k in enumerate(self.neg_iter[::-1]):
            if current_iter % k == 0:
                for name, p in self.negatives[idx].named_parameters():
                    p.mul_(self.neg_decay[idx]).add_(src[name], alpha=1 - self.neg_decay[idx])
