"""Command-line overrides ``a:b:c=VALUE`` applied to an option dict: ``test``'s ``--force_yml``, ``ablate``'s
``--override`` and ``--variant``.

``train``'s ``--force_yml`` is applied by BasicSR's own ``parse_options``; all three read ``VALUE`` with
:func:`mclir_plugin.utils.options.parse_override_value`, so a value means the same in every tool.
"""
from __future__ import annotations

import difflib
from typing import Any

from mclir_plugin.utils.options import parse_override_value


class OverrideError(ValueError):
    """An override that is not ``KEY=VALUE``, names a block the options lack, or has a value that is not YAML."""


def apply_override(opt: dict[str, Any], entry: str, where: str = '--force_yml') -> None:
    """Apply ``a:b:c=VALUE`` to ``opt`` in place; every key but the last must exist, as with BasicSR's ``--force_yml``.

    Args:
        opt: The options (nested dicts).
        entry: The override as given on the command line.
        where: The flag it came with, for messages (``--force_yml``, ``--override``, ``--variant lam0.1``).
            Defaults to ``'--force_yml'``.

    Raises:
        OverrideError: naming the entry, the missing block (with a close match) or the bad value, and the fix.
    """
    keys, sep, value = entry.partition('=')
    if not sep or not keys.strip():
        raise OverrideError(f'{where} {entry!r} is not KEY=VALUE: write e.g. train:pixel_opt:neg_weight=0.01.')
    path = [k.strip() for k in keys.split(':')]
    node = opt
    for depth, key in enumerate(path[:-1]):
        child = node.get(key) if isinstance(node, dict) else None
        if not isinstance(child, dict):
            close = difflib.get_close_matches(key, [str(k) for k in node] if isinstance(node, dict) else [], n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ''
            raise OverrideError(f"{where} {entry!r}: there is no block '{':'.join(path[:depth + 1])}' in the option "
                                f'file.{hint}')
        node = child
    try:
        node[path[-1]] = parse_override_value(value)
    except ValueError as err:
        raise OverrideError(f'{where} {entry!r}: {err}') from None
