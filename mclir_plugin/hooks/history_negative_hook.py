"""``HistoryNegativeHook``: the thin mmengine ``Hook`` that drives a bank of history negatives.

The negatives themselves, their schedules and their state live in
:class:`~mclir_plugin.hooks.history_negatives.HistoryNegatives` (``hook.bank``), usable from any loop; this class
only builds the bank from an option block (mmengine's ``HOOKS`` registry, BasicSR's ``mclir.hook``) and connects
it to an mmengine ``Runner``:

* ``before_train`` builds the negatives from ``runner.model`` (its ``module_key`` attribute, unwrapped);
* ``after_train_iter`` refreshes them at iteration ``runner.iter + 1``;
* checkpoints carry ``bank.state_dict()`` under the key ``'mclir'``.

The model reaches the negatives through the same hook instance (``hook.bank(lq)``, see
``examples/mmengine_spn.py``). mmengine 0.10.7 loads checkpoints with a bare ``torch.load``, which torch >= 2.6
runs with ``weights_only=True`` and which then fails on mmengine's own objects: resume inside
:func:`mclir_plugin.compat.trusted_mmengine_checkpoints`.

For older code, the hook still answers the bank's runner-free methods and attributes (``build``,
``forward_negatives``, ``step``, ``state_dict``, ``negatives``, ``intervals``, ...) by delegating to ``bank``.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from torch import nn

from mclir_plugin.hooks.history_negatives import (HOOK_OPTIONS, HistoryNegatives, negative_seed,  # noqa: F401
                                                  reinitialised_copy, unwrap)
from mclir_plugin.utils.option_schema import check_options


@HOOKS.register_module()
class HistoryNegativeHook(Hook):
    """mmengine hook around a :class:`~mclir_plugin.hooks.history_negatives.HistoryNegatives` bank (``self.bank``).

    Args:
        module_key: mmengine runners only (MCLIRModel ignores it): the attribute of ``runner.model`` that holds
            the network the negatives copy, dotted for nested ones (``'net'``, ``'generator.backbone'``). ``None``
            copies the whole (unwrapped) ``runner.model``, which is wrong when it also holds a loss with VGG or a
            reference to this hook. Defaults to None.
        **bank_options: The bank's arguments, as :class:`HistoryNegatives` documents them (``neg_iter``,
            ``neg_decay``, ``neg_start``, ``pairing``, ``update_buffers``, ``seed``, ``sync_check_interval``,
            ``adaptive_threshold``, ``adaptive_decay``, ``fast_forward``, ``channels_last``, ``precision``).
    """

    priority = 'NORMAL'
    checkpoint_key = 'mclir'  # where mmengine checkpoints hold the bank's state_dict(), as BasicSR training states do

    def __init__(self, module_key: str | None = None, **bank_options: Any) -> None:
        check_options(HOOK_OPTIONS, {'module_key': module_key}, keys=('module_key',))
        self.module_key = module_key
        self.bank = HistoryNegatives(**bank_options)
        self._pending_state: dict[str, Any] | None = None  # read from a checkpoint before the negatives exist

    def __getattr__(self, name: str) -> Any:
        """The bank's attributes (``negatives``, ``intervals``, ``refresh_count``, ...), read-only, for older code."""
        bank = self.__dict__.get('bank')
        if bank is None or name.startswith('__'):
            raise AttributeError(name)
        return getattr(bank, name)

    @property
    def seed(self) -> int | None:
        return self.bank.seed

    @seed.setter
    def seed(self, value: int | None) -> None:
        self.bank.seed = value

    # ------------------------------------------------------------------ runner-free API (delegated to the bank)
    def build(self, net: nn.Module, fresh_init: Callable[[], nn.Module] | None = None) -> None:
        """:meth:`HistoryNegatives.build`."""
        self.bank.build(net, fresh_init)

    def forward_negatives(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`HistoryNegatives.forward`: (N, *output shape), never part of a graph."""
        return self.bank(x)

    def step(self, net: nn.Module, current_iter: int) -> list[int]:
        """:meth:`HistoryNegatives.step` (after the optimizer step, 1-based iteration)."""
        return self.bank.step(net, current_iter)

    def adaptive_step(self, net: nn.Module, output: torch.Tensor, target: torch.Tensor,
                      current_iter: int) -> int | None:
        """:meth:`HistoryNegatives.adaptive_step`."""
        return self.bank.adaptive_step(net, output, target, current_iter)

    def state_dict(self) -> dict[str, Any]:
        """:meth:`HistoryNegatives.state_dict`."""
        return self.bank.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """:meth:`HistoryNegatives.load_state_dict`."""
        self.bank.load_state_dict(state)

    def describe(self) -> str:
        """:meth:`HistoryNegatives.describe`."""
        return self.bank.describe()

    # ------------------------------------------------------------------ mmengine Runner stages
    def source_module(self, runner: Any) -> nn.Module:
        """The network the negatives copy: ``runner.model`` (unwrapped) or its ``module_key`` attribute."""
        module = unwrap(runner.model)
        for name in (self.module_key.split('.') if self.module_key else []):
            if not isinstance(getattr(module, name, None), nn.Module):
                raise AttributeError(f'HistoryNegativeHook: module_key {self.module_key!r}: {type(module).__name__} '
                                     f'has no submodule {name!r}; name the attribute of runner.model that holds '
                                     "the network (e.g. module_key='net').")
            module = unwrap(getattr(module, name))
        return module

    def before_train(self, runner: Any) -> None:
        """Build the negatives (unless built) from the network as loaded or resumed; restore a resumed state.

        mmengine's ``Runner.train`` calls ``before_run``, initialises the weights, loads or resumes the
        checkpoint (``after_load_checkpoint``), and only then ``before_train``: the network is final here.
        """
        if not self.built:
            if self.seed is None:
                self.seed = int(runner.seed)  # the run's seed, identical on every rank
            self.bank.build(self.source_module(runner))
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self.bank.load_state_dict(state)
            runner.logger.info('MCLIR: negatives restored from the checkpoint.')
        runner.logger.info('MCLIR: ' + self.bank.describe())

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        """Refresh the negatives due at iteration ``runner.iter + 1`` (1-based; after the optimizer step).

        mmengine's train loops call ``after_train_iter`` after ``train_step`` and before they increment
        ``runner.iter``, so ``runner.iter`` is the 0-based index of the iteration just finished. With gradient
        accumulation the schedule still counts iterations, not optimizer steps.
        """
        self.bank.step(self.source_module(runner), runner.iter + 1)

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        """Store :meth:`state_dict` (negatives and counters) under ``checkpoint['mclir']``."""
        if self.built:
            checkpoint[self.checkpoint_key] = self.bank.state_dict()

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        """On resume, restore the negatives from ``checkpoint['mclir']`` (now, or in ``before_train``).

        ``load_from`` without ``resume`` (fine-tuning) keeps nothing: the negatives start from the loaded network,
        as mmengine's ``EMAHook`` does for its average.
        """
        if not getattr(runner, '_resume', False):
            return
        state = checkpoint.get(self.checkpoint_key)
        if state is None:
            runner.logger.warning(f"MCLIR: the checkpoint has no '{self.checkpoint_key}' entry (negative models); "
                                  'they start afresh from the resumed network.')
        elif self.built:
            self.bank.load_state_dict(state)
        else:  # mmengine resumes before before_train, where the negatives are built
            self._pending_state = state
