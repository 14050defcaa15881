"""Hooks: :class:`HistoryNegativeHook`, the history-negative models (registered in mmengine's ``HOOKS``)."""
from mclir_plugin.hooks.history_negative_hook import HistoryNegativeHook, reinitialised_copy, unwrap

__all__ = ['HistoryNegativeHook', 'reinitialised_copy', 'unwrap']
