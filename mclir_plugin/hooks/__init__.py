"""Hooks: :class:`HistoryNegativeHook`, the history-negative models (registered in mmengine's ``HOOKS``), and the
fast forward of its frozen negatives (:func:`accelerate_negative`)."""
from mclir_plugin.hooks.history_negative_hook import HistoryNegativeHook, reinitialised_copy, unwrap
from mclir_plugin.hooks.negative_fast_path import accelerate_negative, restore_eager

__all__ = ['HistoryNegativeHook', 'accelerate_negative', 'reinitialised_copy', 'restore_eager', 'unwrap']
