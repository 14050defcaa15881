"""Learning-rate schedulers for ``train.scheduler``, built from a registry instead of BasicSR's fixed list.

BasicSR 1.4.2's ``BaseModel.setup_schedulers`` knows two types by an if/else (``MultiStepLR``/``MultiStepRestartLR``
and ``CosineAnnealingRestartLR``). :func:`setup_schedulers` replaces it (installed by
:func:`mclir_plugin.compat.patch_basicsr`, BasicSR's files untouched) and builds any class in
:data:`SCHEDULER_REGISTRY`, with the other keys of ``train.scheduler`` as its arguments:

* ``MultiStepLR``/``MultiStepRestartLR``, ``CosineAnnealingRestartLR``: BasicSR's own, unchanged.
* ``TrueCosineAnnealingLR`` (the official MCLIR code's name) and ``CosineAnnealingLR``: torch's
  ``CosineAnnealingLR(T_max, eta_min)``, stepped per iteration. It does not restart: past ``T_max`` the rate
  climbs back to the initial one at ``2 T_max`` and so on (period ``2 T_max``), as in the official FFA-Net run
  (``T_max`` 100k over 500k iterations).
* ``EpochCosineAnnealingLR``: DehazeFormer's schedule, torch's cosine over *epochs* (``T_max`` epochs, rate
  constant within an epoch of ``epoch_length`` iterations).

Every scheduler is a torch ``LRScheduler``: BasicSR saves its ``state_dict()`` in the training state and restores
it on resume, so a resumed run continues the same sequence. BasicSR steps the schedulers at the start of every
iteration but the first, so iteration ``t`` (1-based) runs at the rate after ``t - 1`` steps. Register your own
with ``@SCHEDULER_REGISTRY.register()`` (constructor ``(optimizer, **options)``).
"""
from __future__ import annotations

import math

import torch
from basicsr.models.lr_scheduler import CosineAnnealingRestartLR, MultiStepRestartLR
from basicsr.utils.registry import Registry
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

from mclir_plugin.utils.option_schema import Integer, Number, check_options

SCHEDULER_REGISTRY = Registry('scheduler')
SCHEDULER_REGISTRY.register(MultiStepRestartLR)
SCHEDULER_REGISTRY.register(CosineAnnealingRestartLR)
SCHEDULER_REGISTRY.register(CosineAnnealingLR)  # torch's, under its own name
ALIASES = {'MultiStepLR': 'MultiStepRestartLR'}  # BasicSR's name for its MultiStepRestartLR


def _iterations(unit: str) -> Integer:
    """A count of ``unit`` >= 1; YAML's ``!!float 1e5`` counts as the integer 100000."""
    return Integer(low=1, whole_floats=True, note=unit)


ETA_MIN = Number(low=0, note='the smallest rate')


@SCHEDULER_REGISTRY.register()
class TrueCosineAnnealingLR(CosineAnnealingLR):
    """torch's ``CosineAnnealingLR`` under the official MCLIR code's name, stepped once per iteration.

    ``lr_k = eta_min + (lr_0 - eta_min) (1 + cos(pi k / T_max)) / 2`` after ``k`` steps, for every ``k``: past
    ``T_max`` it rises again (period ``2 T_max``; torch computes it recursively, and this class is torch's).

    Args:
        optimizer: The optimizer.
        T_max: Iterations from the initial rate to ``eta_min`` (half a period).
        eta_min: The smallest rate. Defaults to 0.
        last_epoch: Steps already taken (-1: none). Defaults to -1.
    """

    OPTIONS = {'T_max': _iterations('iterations from the initial rate to eta_min'), 'eta_min': ETA_MIN}

    def __init__(self, optimizer: torch.optim.Optimizer, T_max: int, eta_min: float = 0.,
                 last_epoch: int = -1) -> None:
        checked = check_options(self.OPTIONS, locals(), 'train.scheduler')
        super().__init__(optimizer, **checked, last_epoch=last_epoch)


@SCHEDULER_REGISTRY.register()
class EpochCosineAnnealingLR(LRScheduler):
    """DehazeFormer's schedule: torch's cosine over epochs, the rate held for the ``epoch_length`` iterations of
    each epoch (upstream calls ``CosineAnnealingLR(T_max=epochs, eta_min=lr/100).step()`` after every epoch).

    After ``k`` iteration steps the rate is ``eta_min + (lr_0 - eta_min) (1 + cos(pi e / T_max)) / 2`` with
    ``e = k // epoch_length``. ``epoch_length`` is the number of iterations of one epoch: pairs per process //
    ``batch_size_per_gpu`` (BasicSR drops the last incomplete batch, as DehazeFormer does), e.g. 13,990 // 32 = 437.

    Args:
        optimizer: The optimizer.
        T_max: Epochs from the initial rate to ``eta_min``.
        epoch_length: Iterations per epoch.
        eta_min: The smallest rate. Defaults to 0.
        last_epoch: Iteration steps already taken (-1: none). Defaults to -1.
    """

    OPTIONS = {'T_max': _iterations('epochs from the initial rate to eta_min'),
               'epoch_length': _iterations('iterations per epoch'), 'eta_min': ETA_MIN}

    def __init__(self, optimizer: torch.optim.Optimizer, T_max: int, epoch_length: int, eta_min: float = 0.,
                 last_epoch: int = -1) -> None:
        checked = check_options(self.OPTIONS, locals(), 'train.scheduler')
        self.T_max, self.epoch_length, self.eta_min = checked['T_max'], checked['epoch_length'], checked['eta_min']
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        epoch = self.last_epoch // self.epoch_length
        share = (1 + math.cos(math.pi * epoch / self.T_max)) / 2
        return [self.eta_min + (base_lr - self.eta_min) * share for base_lr in self.base_lrs]


def build_scheduler(optimizer: torch.optim.Optimizer, scheduler_opt: dict) -> LRScheduler:
    """Build ``train.scheduler`` (``type`` and the constructor's keyword arguments) for ``optimizer``."""
    options = dict(scheduler_opt)
    name = options.pop('type', None)
    name = ALIASES.get(name, name)
    if name not in SCHEDULER_REGISTRY:
        known = sorted([*SCHEDULER_REGISTRY.keys(), *ALIASES])
        raise NotImplementedError(f'train.scheduler.type {name!r} is not a registered scheduler; use one of '
                                  f'{", ".join(known)} (or register yours in mclir_plugin.models.lr_schedulers).')
    try:
        return SCHEDULER_REGISTRY.get(name)(optimizer, **options)
    except TypeError as err:  # a misspelt or missing key
        raise TypeError(f'train.scheduler ({name}): {err}. Check the keys of train.scheduler.') from err


def setup_schedulers(self) -> None:
    """``BaseModel.setup_schedulers`` over :data:`SCHEDULER_REGISTRY`; leaves ``opt['train']['scheduler']`` intact
    (BasicSR's version pops its ``type``)."""
    scheduler_opt = self.opt['train']['scheduler']
    for optimizer in self.optimizers:
        self.schedulers.append(build_scheduler(optimizer, scheduler_opt))
