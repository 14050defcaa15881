"""``train.resume_lr``: which learning rate and schedule a resumed run uses.

BasicSR restores the optimizer and scheduler states of the training state on resume, so ``train.optim_g.lr`` and
``train.scheduler`` of the option file are ignored: after a divergence, resuming "with a lower learning rate" changes
nothing. ``train.resume_lr`` says what wins:

* ``checkpoint`` (default, BasicSR's behaviour): the training state's rates and scheduler. When they differ from
  the option file's, a warning says so and names this key.
* ``options``: every optimizer's rate (``lr`` and ``initial_lr`` of each parameter group) is set to the option
  file's ``train.optim_<net>.lr``, and each scheduler is rebuilt from ``train.scheduler`` and stepped to the resumed
  position, as if the run had used the option file's schedule from the start. The optimizer's moments (Adam's
  averages) are kept. Logged.

:func:`with_resume_lr` wraps ``BaseModel.resume_training`` (installed by :mod:`mclir_plugin.compat`), so it holds
for every model type trained through ``tools/train.py``.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any

from mclir_plugin.utils.option_schema import Choice

logger = logging.getLogger('basicsr')
CHOICES = ('checkpoint', 'options')
RESUME_LR = Choice(*CHOICES, note="checkpoint: the training state's learning rate and scheduler, BasicSR's behaviour; "
                                  "options: the option file's train.optim_g.lr and train.scheduler")


def read_resume_lr(opt: dict[str, Any]) -> str:
    """``train.resume_lr``, checked. Defaults to ``'checkpoint'``."""
    value = (opt.get('train') or {}).get('resume_lr', 'checkpoint')
    if value is None:
        return 'checkpoint'
    return RESUME_LR(value, 'train.resume_lr')


def _option_lrs(model) -> list[float | None]:
    """The option file's rate of each optimizer: ``train.optim_g.lr`` for the first (SRModel-family models have
    only that one), None for any other."""
    lr = (model.opt['train'].get('optim_g') or {}).get('lr')
    return [lr] + [None] * (len(model.optimizers) - 1)


def _scheduler_factory(model, old):
    """Build a scheduler like ``old`` from ``train.scheduler`` (its ``type`` too, when BasicSR left it there)."""
    scheduler_opt = dict(model.opt['train'].get('scheduler') or {})
    if 'type' in scheduler_opt:
        from mclir_plugin.models.lr_schedulers import build_scheduler
        return lambda optimizer: build_scheduler(optimizer, scheduler_opt)
    return lambda optimizer: type(old)(optimizer, **scheduler_opt)


def apply_option_lrs(model, resume_state: dict) -> None:
    """Set the optimizers' rates and rebuild the schedulers from the options (``train.resume_lr: options``)."""
    lrs = _option_lrs(model)
    before = [[g['lr'] for g in o.param_groups] for o in model.optimizers]
    for optimizer, lr in zip(model.optimizers, lrs):
        if lr is None:
            continue
        for group in optimizer.param_groups:
            group['lr'] = group['initial_lr'] = float(lr)
    rebuilt = []
    for optimizer, old in zip(model.optimizers, model.schedulers):
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": this is a fast-forward
            warnings.simplefilter('ignore')
            scheduler = _scheduler_factory(model, old)(optimizer)
            for _ in range(old.last_epoch):
                scheduler.step()
        rebuilt.append(scheduler)
    model.schedulers[:len(rebuilt)] = rebuilt
    after = [[g['lr'] for g in o.param_groups] for o in model.optimizers]
    logger.info(f"train.resume_lr: options: learning rate(s) and scheduler from the option file (lr {lrs}, "
                f"scheduler {dict(model.opt['train'].get('scheduler') or {})}), advanced to iteration "
                f"{resume_state.get('iter')}: lr now {_fmt(after)} (the training state had {_fmt(before)}).")


def warn_if_options_differ(model, resume_state: dict) -> None:
    """Say when the option file's rates or schedule differ from the training state's, which win by default."""
    lrs = _option_lrs(model)
    saved = [[g.get('initial_lr', g['lr']) for g in o.param_groups] for o in model.optimizers]
    differs = any(lr is not None and any(abs(s - float(lr)) > 1e-12 * max(1.0, abs(s)) for s in group)
                  for lr, group in zip(lrs, saved))
    scheduler_opt = {k: v for k, v in (model.opt['train'].get('scheduler') or {}).items() if k != 'type'}
    for old in model.schedulers:
        state = old.state_dict()
        differs = differs or any(k in state and _as_list(state[k]) != _as_list(v) for k, v in scheduler_opt.items())
    if differs:
        logger.warning(f'Resumed with the training state\'s learning rate and scheduler (initial lr {_fmt(saved)}, '
                       f'now {_fmt([[g["lr"] for g in o.param_groups] for o in model.optimizers])}), which differ '
                       'from the option file\'s train.optim_g.lr / train.scheduler. Set `train.resume_lr: options` '
                       'to resume with the option file\'s.')


def _as_list(value: Any) -> Any:
    if isinstance(value, dict):  # torch keeps milestones as a Counter
        return sorted(value)
    return list(value) if isinstance(value, (list, tuple)) else value


def _fmt(groups: list[list[float]]) -> str:
    return ', '.join('(' + ', '.join(f'{v:.3e}' for v in group) + ')' for group in groups)


def with_resume_lr(resume_training):
    """Wrap ``BaseModel.resume_training``: after BasicSR loads the states, apply ``train.resume_lr``."""
    def resume(self, resume_state):
        choice = read_resume_lr(self.opt)
        resume_training(self, resume_state)
        if choice == 'options':
            apply_option_lrs(self, resume_state)
        else:
            warn_if_options_differ(self, resume_state)
    resume.__wrapped__ = resume_training
    return resume
