"""Hooks: :class:`HistoryNegatives`, the bank of history-negative models usable from any loop,
:class:`HistoryNegativeHook`, the thin mmengine ``Hook`` that drives it (registered in mmengine's ``HOOKS``), and the
fast forward of the frozen negatives (:func:`accelerate_negative`, from :mod:`mclir_plugin.archs.frozen_cache`)."""
from mclir_plugin.archs.frozen_cache import accelerate_negative, restore_eager
from mclir_plugin.hooks.history_negative_hook import HistoryNegativeHook
from mclir_plugin.hooks.history_negatives import HistoryNegatives, NegativeSchedule, reinitialised_copy, unwrap

__all__ = ['HistoryNegativeHook', 'HistoryNegatives', 'NegativeSchedule', 'accelerate_negative', 'reinitialised_copy',
           'restore_eager', 'unwrap']
