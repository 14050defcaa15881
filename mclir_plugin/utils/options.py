"""Checks of user options that end in an error naming the key, the place and the likely fix."""
from __future__ import annotations

import contextlib
import contextvars
import difflib
import inspect
import re
from typing import Any, Callable, Iterable, Iterator, Mapping


# The -opt file of the running command, for option errors: set only inside :func:`naming_option_file`'s block
# (the entry point wraps its whole run in it), so it never outlives the run nor reaches a later one in this process
_OPTION_FILE: contextvars.ContextVar[str | None] = contextvars.ContextVar('mclir_option_file', default=None)


def option_file_in(argv: list[str]) -> str | None:
    """The ``-opt`` argument of ``argv`` (the last one, as argparse keeps it), or None."""
    found = None
    for flag, value in zip(argv, argv[1:]):
        if flag == '-opt':
            found = value
    return found


@contextlib.contextmanager
def naming_option_file(path: str | None) -> Iterator[None]:
    """Inside the block, :func:`naming_the_file` names ``path`` (the run's option file; None names nothing).

    The entry points (``mclir-train``) wrap the whole run in it; when the block ends the previous value (usually
    none) is back, so a later run in the same process cannot inherit this one's file.
    """
    token = _OPTION_FILE.set(path)
    try:
        yield
    finally:
        _OPTION_FILE.reset(token)


def naming_the_file(err: Exception) -> Exception:
    """``err`` again with `` (option file: <path>)`` appended, inside :func:`naming_option_file`'s block."""
    option_file = _OPTION_FILE.get()
    message = str(err.args[0]) if err.args else str(err)
    if option_file is None or option_file in message:
        return err
    return type(err)(f'{message} (option file: {option_file})')


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
