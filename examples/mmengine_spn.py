"""SPN with history negatives under a real mmengine ``Runner`` (CPU is enough): the hook in ``custom_hooks``.

::

    python examples/mmengine_spn.py --work-dir work_dirs/spn --iters 20            # train, checkpoint every 10
    python examples/mmengine_spn.py --work-dir work_dirs/spn --iters 30 --resume   # continue: negatives restored

How the pieces meet (the simplest pattern):

* one :class:`HistoryNegativeHook` instance is given to the model (a plain attribute, not a submodule) and to the
  runner (``custom_hooks=[hook]``); ``module_key='net'`` names the attribute of the model that holds the network,
  so the negatives copy the network only, not the loss's VGG or the model wrapper;
* the runner drives the hook: ``before_train`` builds the negatives from the (loaded or resumed) network,
  ``after_train_iter`` refreshes them after the optimizer step at iteration ``runner.iter + 1``, and checkpoints
  carry them under ``'mclir'``;
* ``forward(mode='loss')`` runs the negatives on the batch and returns ``loss = l_pix - l_neg``, with ``l_pix``
  and ``l_neg`` logged under BasicSR's names (mmengine sums only keys that contain ``loss``);
* mmengine 0.10.7 resumes with a bare ``torch.load``, weights-only by default since torch 2.6, which rejects
  its own checkpoints: ``runner.train()`` runs inside :func:`trusted_mmengine_checkpoints`.

Without the ImageNet VGG16 file, ``--vgg-fallback random`` (the default here) uses random-weight VGG features:
enough to see the machinery, not perceptual.
"""
from __future__ import annotations

import argparse

import mclir_plugin  # noqa: F401  (first: makes basicsr importable and registers the loss and the hook)

import torch
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

from mclir_plugin import HistoryNegativeHook, SPNLoss
from mclir_plugin.compat import trusted_mmengine_checkpoints
from plain_pytorch_spn import TinySR, synthetic_batch  # the plain example's toy network and images (this folder)


class SmoothImages(Dataset):
    """``{'lq', 'gt'}`` pairs: smooth random images (seeded by index) and their 2x average-pooled versions."""

    def __init__(self, length: int = 64, size: int = 32) -> None:
        self.length, self.size = length, size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        lq, gt = synthetic_batch(index, batch=1, size=self.size)
        return {'lq': lq[0], 'gt': gt[0]}


class SPNRestorer(BaseModel):
    """An mmengine model whose training loss is SPN against the hook's negatives.

    Args:
        negative_hook: The hook the runner also holds (``custom_hooks=[hook]``), built with ``module_key='net'``.
        criterion: The SPN loss (frozen VGG inside; its weights are part of the checkpoint's ``state_dict``).
    """

    def __init__(self, negative_hook: HistoryNegativeHook, criterion: SPNLoss) -> None:
        super().__init__()
        self.net = TinySR()
        self.criterion = criterion
        self.negative_hook = negative_hook  # not an nn.Module: a plain reference, outside state_dict

    def forward(self, lq: torch.Tensor, gt: torch.Tensor | None = None, mode: str = 'tensor'):
        out = self.net(lq)
        if mode != 'loss':
            return out
        l_pix, l_neg = self.criterion.terms(out, gt, self.negative_hook.bank(lq))  # the bank's negatives
        # mmengine optimises the sum of the keys containing 'loss' (and smooths only those in its log lines)
        return {'loss': l_pix - l_neg, 'l_pix': l_pix.detach(), 'l_neg': l_neg.detach()}


def build_runner(work_dir: str, iters: int = 20, neg_iter: tuple[int, ...] = (2, 5), checkpoint_interval: int = 10,
                 resume: bool = False, load_from: str | None = None, vgg_fallback: str = 'random',
                 seed: int = 0, experiment_name: str | None = None, log_level: str = 'INFO') -> Runner:
    """An mmengine ``Runner`` training :class:`SPNRestorer` for ``iters`` iterations with the hook.

    Args:
        work_dir: The runner's work folder (checkpoints ``iter_<n>.pth``, logs).
        iters: ``max_iters`` of the iteration-based loop.
        neg_iter: Refresh interval of each negative.
        checkpoint_interval: Save a checkpoint every this many iterations.
        resume: Resume from ``load_from``, or from the newest checkpoint in ``work_dir`` when it is None.
        load_from: A checkpoint to resume (with ``resume``) or to fine-tune from (without).
        vgg_fallback: ``'error'`` or ``'random'`` when the ImageNet VGG16 file is missing.
        seed: The run's seed (network init, data order, the negatives' fresh initialisations).
        experiment_name: mmengine's name of the run (its logger and message hub); None: a timestamp.
        log_level: The runner's log level.
    """
    torch.manual_seed(seed)
    hook = HistoryNegativeHook(neg_iter=list(neg_iter), neg_decay=0.1, neg_start=0.1, module_key='net')
    model = SPNRestorer(hook, SPNLoss(neg_weight=0.01, vgg_fallback=vgg_fallback))
    return Runner(
        model=model,
        work_dir=work_dir,
        train_dataloader=dict(dataset=SmoothImages(), sampler=dict(type='DefaultSampler', shuffle=True),
                              batch_size=4, num_workers=0, collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=iters),
        optim_wrapper=dict(optimizer=dict(type='Adam', lr=1e-3)),
        custom_hooks=[hook],
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=checkpoint_interval, by_epoch=False),
                           logger=dict(type='LoggerHook', interval=5)),
        randomness=dict(seed=seed),
        resume=resume,
        load_from=load_from,
        experiment_name=experiment_name,
        log_level=log_level,
    )


def main(work_dir: str, iters: int = 20, resume: bool = False, **kwargs) -> Runner:
    """Build the runner and train; returns it (``runner.model.negative_hook`` holds the negatives)."""
    runner = build_runner(work_dir, iters, resume=resume, **kwargs)
    with trusted_mmengine_checkpoints():  # mmengine 0.10.7 + torch >= 2.6: lets the resume load its checkpoint
        runner.train()
    return runner


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/mmengine_spn')
    parser.add_argument('--iters', type=int, default=20)
    parser.add_argument('--resume', action='store_true', help='continue from the newest checkpoint in --work-dir')
    parser.add_argument('--vgg-fallback', choices=['error', 'random'], default='random')
    args = parser.parse_args()
    run = main(args.work_dir, args.iters, args.resume, vgg_fallback=args.vgg_fallback)
    print(run.model.negative_hook.bank.describe())
