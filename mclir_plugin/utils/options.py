"""Checks of user options that end in an error naming the key, the place and the likely fix."""
from __future__ import annotations

import difflib
import inspect
import re
from typing import Any, Callable, Iterable, Mapping


OPTION_FILE: str | None = None  # the -opt file of this process, set by the entry points (tools/train.py, ...)


def remember_option_file(argv: list[str]) -> None:
    """Note the ``-opt`` argument of ``argv`` so that option errors can name the file."""
    global OPTION_FILE
    for flag, value in zip(argv, argv[1:]):
        if flag == '-opt':
            OPTION_FILE = value


def naming_the_file(err: Exception) -> Exception:
    """``err`` again with `` (option file: <path>)`` appended, when the entry point knows the file."""
    message = str(err.args[0]) if err.args else str(err)
    if OPTION_FILE is None or OPTION_FILE in message:
        return err
    return type(err)(f'{message} (option file: {OPTION_FILE})')


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


# YAML 1.2 floats that YAML 1.1 (PyYAML) reads as text: an exponent without a dot, or without a sign (1e6, 1.5e3)
_EXPONENT_FLOAT = re.compile(r'^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9_]+)[eE][-+]?[0-9]+$')
_override_loader: type | None = None


def _loader() -> type:
    """A safe YAML loader that also reads ``1e6`` and ``1e-3`` (plain, unquoted) as floats."""
    global _override_loader
    if _override_loader is None:
        import yaml

        class OverrideLoader(yaml.SafeLoader):
            pass

        OverrideLoader.add_implicit_resolver('tag:yaml.org,2002:float', _EXPONENT_FLOAT, list('-+0123456789.'))
        _override_loader = OverrideLoader
    return _override_loader


def parse_override_value(text: str) -> Any:
    """The value of a command-line override (``--force_yml a:b=VALUE`` of train and test, ``--override`` of ablate).

    One rule for every tool: ``VALUE`` is read as a YAML value, as it would be in the option file, except that a
    number with an exponent is a number even without a dot (``1e6``, ``1e-3``; YAML 1.1 reads them as text).
    So ``10`` is an int, ``1e6`` and ``0.5`` floats, ``true``/``false`` booleans, ``~`` None, ``[6, 6]`` a list,
    ``{type: x}`` a mapping, and ``'abc'`` or ``'1e6'`` (quoted) text.

    Raises:
        ValueError: when ``VALUE`` is not valid YAML, naming it.
    """
    import yaml
    text = text.strip()
    try:
        return yaml.load(text, Loader=_loader())
    except yaml.YAMLError as err:
        detail = ' '.join(str(err).split())
        raise ValueError(f'Override value {text!r} is not a valid YAML value ({detail}); quote text that holds '
                         "YAML punctuation, e.g. 'a: b'.") from None
