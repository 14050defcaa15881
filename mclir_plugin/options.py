"""Checks of user options that end in an error naming the key, the place and the likely fix."""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Iterable, Mapping


def check_keys(given: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Raise ``KeyError`` for a key of ``given`` that is not in ``allowed``, with a "did you mean" hint.

    Args:
        given: The user's option block.
        allowed: The keys it may hold.
        where: Where the block sits in the option file, e.g. ``'mclir.hook'``, for the message.
    """
    allowed = list(allowed)
    for key in given:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ''
            raise KeyError(f"Unknown option '{key}' in {where}.{hint} Valid keys: {', '.join(sorted(allowed))}.")


def accepted_kwargs(func: Callable) -> list[str]:
    """Names of the keyword arguments ``func`` (a class or function) accepts."""
    params = inspect.signature(func).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != 'self']


def check_call_kwargs(func: Callable, kwargs: Mapping[str, Any], where: str, ignore: Iterable[str] = ('type',)) -> None:
    """Check that ``func(**kwargs)`` names only accepted arguments (``ignore`` lists registry keys such as type)."""
    check_keys({k: v for k, v in kwargs.items() if k not in set(ignore)}, accepted_kwargs(func), where)
