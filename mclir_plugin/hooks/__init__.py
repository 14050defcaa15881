"""Hooks: :class:`HistoryNegatives`, the bank of history-negative models usable from any loop,
:class:`HistoryNegativeHook`, the thin mmengine ``Hook`` that drives it (registered in mmengine's ``HOOKS``), and the
fast forward of the frozen negatives (:func:`accelerate_negative`)."""
from mclir_plugin.hooks.history_negative_hook import HistoryNegativeHook
from mclir_plugin.hooks.history_negatives import HistoryNegatives, NegativeSchedule, reinitialised_copy, unwrap
from mclir_plugin.hooks.negative_fast_path import accelerate_negative, restore_eager

__all__ = ['HistoryNegativeHook', 'HistoryNegatives', 'NegativeSchedule', 'accelerate_negative', 'reinitialised_copy',
           'restore_eager', 'unwrap']
