"""Typed checks of option values: one small schema per option block, one message shape for all of them.

A schema maps each key of a block to a check (:class:`Boolean`, :class:`Number`, :class:`Integer`,
:class:`Choice`, :class:`Text`, :class:`Interval`, :class:`ListOf`, :class:`OneOrList`, :class:`MappingOf`,
:class:`Optional`, :class:`AnyOf`). :func:`check_options` runs it and every failure reads the same way::

    mclir.hook.update_buffers must be true or false, got 'no' (text, not a boolean: write it without quotes).

that is: the key (its dotted path in the option file), what is allowed, and the value as written (``repr``: a
quoted value is text). Booleans come only from YAML booleans (``'no'`` is text, not false), numbers are finite
(``.nan`` and ``.inf`` are refused) and never booleans, and integers are never floats.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

_MISSING = object()


class OptionError(ValueError):
    """A value that its check refuses: ``<key> must be <allowed>, got <value as written>.``

    Args:
        message: The whole message (use :meth:`of` to build one in the standard shape).
        key: The dotted key, when the message has the standard shape (then :meth:`under` can prefix it).
        value: The refused value.
        allowed: What the key allows, in words.
    """

    def __init__(self, message: str, key: str | None = None, value: Any = None, allowed: str = '') -> None:
        super().__init__(message)
        self.key, self.value, self.allowed = key, value, allowed

    @classmethod
    def of(cls, key: str, value: Any, allowed: str) -> 'OptionError':
        """The error in the standard shape for ``key``."""
        return cls(f'{key} must be {allowed}, got {value!r}{_hint(value, allowed)}.', key, value, allowed)

    def under(self, prefix: str) -> 'OptionError':
        """The same error with the key placed under the block ``prefix`` (``'mclir.hook'``)."""
        if self.key is None:
            return type(self)(f'{prefix}: {self.args[0]}')
        return type(self).of(f'{prefix}.{self.key}', self.value, self.allowed)

    def within(self, place: str) -> 'OptionError':
        """The same error said of ``place`` (a named dataset, a file): ``<place>: <key> must be ...``."""
        return type(self)(f'{place}: {self.args[0]}', self.key, self.value, self.allowed)


def _hint(value: Any, allowed: str) -> str:
    """For text where a boolean or number is due: what YAML would read without quotes, and how to write it."""
    if not isinstance(value, str) or not any(word in allowed for word in ('true or false', 'number', 'integer')):
        return ''
    import yaml
    from mclir_plugin.utils.options import parse_override_value
    try:
        meant = parse_override_value(value)
        plain = yaml.safe_load(value)
    except ValueError:
        return ''
    if isinstance(meant, str) or meant is None:
        return ''
    kind = 'a boolean' if isinstance(meant, bool) else 'a number'
    if isinstance(plain, str):  # YAML 1.1 reads 1e-3 (no dot) as text, even unquoted
        return f' (text, not {kind}: in an option file write {value} with a dot, as in 1.0e-3, or as !!float {value})'
    return f' (text, not {kind}: write it without quotes)'


def _key(key: str, part: Any) -> str:
    return f'{key}[{part}]' if isinstance(part, int) else f'{key}.{part}'


class Check:
    """A check of one value; calling it returns the value (numbers as float) or raises :class:`OptionError`."""

    allowed = 'a value'

    def __call__(self, value: Any, key: str) -> Any:
        if not self.accepts(value):
            raise OptionError.of(key, value, self.allowed)
        return value

    def accepts(self, value: Any) -> bool:
        return True


class Boolean(Check):
    """``true`` or ``false`` as YAML booleans; text such as ``'no'`` is refused, not read as true."""

    allowed = 'true or false'

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)


class Number(Check):
    """A finite number (int or float, not bool) within optional bounds; returned as float.

    Args:
        low: Lower bound, or None. Defaults to None.
        high: Upper bound, or None. Defaults to None.
        low_open: Exclude ``low`` itself. Defaults to False.
        high_open: Exclude ``high`` itself. Defaults to False.
        note: Why, in a few words, appended in parentheses. Defaults to ''.
    """

    kind = 'a finite number'

    def __init__(self, low: float | None = None, high: float | None = None, low_open: bool = False,
                 high_open: bool = False, note: str = '') -> None:
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open
        if low is not None and high is not None:
            bounds = f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif low is not None:
            bounds = f" {'>' if low_open else '>='} {low}"
        elif high is not None:
            bounds = f" {'<' if high_open else '<='} {high}"
        else:
            bounds = ''
        self.allowed = self.kind + bounds + self._more() + (f' ({note})' if note else '')

    def _more(self) -> str:
        """Further conditions, in words, after the bounds (a subclass's)."""
        return ''

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __call__(self, value: Any, key: str) -> float:
        return float(super().__call__(value, key))


class Integer(Number):
    """An integer (not a bool, not a float such as 10.0) within optional bounds; returned as int.

    Args:
        low, high, low_open, high_open, note: As :class:`Number`'s.
        multiple_of: The value must be a multiple of this (a crop side of the scale), or None. Defaults to None.
        whole_floats: Also accept a float with a whole value (YAML 1.1 reads ``1e5`` as text, so users write
            ``!!float 1e5`` for an iteration count), returned as int. Defaults to False.
    """

    kind = 'an integer'

    def __init__(self, low: float | None = None, high: float | None = None, low_open: bool = False,
                 high_open: bool = False, note: str = '', multiple_of: int | None = None,
                 whole_floats: bool = False) -> None:
        self.multiple_of, self.whole_floats = multiple_of, whole_floats
        super().__init__(low, high, low_open, high_open, note)

    def _more(self) -> str:
        return f', a multiple of {self.multiple_of}' if self.multiple_of else ''

    def accepts(self, value: Any) -> bool:
        if self.whole_floats and isinstance(value, float) and value.is_integer():
            value = int(value)
        return isinstance(value, int) and super().accepts(value) and \
            not (self.multiple_of and value % self.multiple_of)

    def __call__(self, value: Any, key: str) -> int:
        return int(Check.__call__(self, value, key))


class Choice(Check):
    """One of fixed values (compared by type too: ``'true'`` is not ``True``)."""

    def __init__(self, *choices: Any, note: str = '') -> None:
        self.choices = choices
        words = ', '.join(_yaml_word(c) for c in choices)
        self.allowed = (f'one of {words}' if len(choices) > 1 else words) + (f' ({note})' if note else '')

    def accepts(self, value: Any) -> bool:
        return any(type(value) is type(c) and value == c for c in self.choices)


def _yaml_word(value: Any) -> str:
    return 'true' if value is True else 'false' if value is False else '~' if value is None else repr(value)


class Text(Check):
    """Non-empty text; ``allowed`` may say more about its meaning."""

    def __init__(self, allowed: str = 'non-empty text') -> None:
        self.allowed = allowed

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and bool(value)


class Optional(Check):
    """``~`` (None) or what ``check`` allows."""

    def __init__(self, check: Check, note: str = '') -> None:
        self.check = check
        self.allowed = f'{check.allowed} or ~' + (f' ({note})' if note else '')

    def __call__(self, value: Any, key: str) -> Any:
        if value is None:
            return None
        try:
            return self.check(value, key)
        except OptionError as err:
            raise OptionError.of(err.key, err.value, err.allowed if err.key != key else self.allowed) from None


class AnyOf(Check):
    """What any of ``checks`` allows (the first that accepts decides the returned value)."""

    def __init__(self, *checks: Check) -> None:
        self.checks = checks
        self.allowed = ' or '.join(c.allowed for c in checks)

    def __call__(self, value: Any, key: str) -> Any:
        for check in self.checks:
            try:
                return check(value, key)
            except OptionError:
                continue
        raise OptionError.of(key, value, self.allowed)


class ListOf(Check):
    """A list of values that ``item`` allows, at least ``min_length`` of them; an entry's key is ``key[i]``."""

    def __init__(self, item: Check, min_length: int = 1) -> None:
        self.item, self.min_length = item, min_length
        self.allowed = f"{'a non-empty ' if min_length else 'a '}list, each entry {item.allowed}"

    def __call__(self, value: Any, key: str) -> list:
        if not isinstance(value, (list, tuple)) or len(value) < self.min_length:
            raise OptionError.of(key, value, self.allowed)
        return [self.item(entry, _key(key, i)) for i, entry in enumerate(value)]


class OneOrList(ListOf):
    """One value that ``item`` allows (for all), or a list of them (one each)."""

    def __init__(self, item: Check) -> None:
        super().__init__(item)
        self.allowed = f'{item.allowed}, or a non-empty list of them'

    def __call__(self, value: Any, key: str) -> Any:
        if isinstance(value, (list, tuple)):
            return super().__call__(value, key)
        return self.item(value, key)


class Interval(Check):
    """A pair ``[min, max]`` of finite numbers with ``low <= min <= max <= high``; returned as a float tuple.

    Args:
        low: Lower bound of both numbers. Defaults to -inf.
        high: Upper bound of both numbers. Defaults to inf.
    """

    def __init__(self, low: float = -math.inf, high: float = math.inf) -> None:
        self.low, self.high = low, high
        bounds = (f'{low} <= ' if math.isfinite(low) else '') + 'min <= max' + \
            (f' <= {high}' if math.isfinite(high) else '')
        self.allowed = f'a pair [min, max] of numbers with {bounds}'

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(Number().accepts(v) for v in value):
            return False
        return self.low <= value[0] <= value[1] <= self.high

    def __call__(self, value: Any, key: str) -> tuple[float, float]:
        low, high = super().__call__(value, key)
        return float(low), float(high)


class MappingOf(Check):
    """A mapping ``{text: value}`` whose values ``item`` allows; an entry's key is ``key.name``."""

    def __init__(self, item: Check, what: str = 'name', min_length: int = 1) -> None:
        self.item, self.min_length = item, min_length
        self.allowed = f"{'a non-empty ' if min_length else 'a '}mapping {{{what}: {item.allowed}}}"

    def __call__(self, value: Any, key: str) -> dict:
        if not isinstance(value, Mapping) or len(value) < self.min_length or \
                not all(isinstance(name, str) for name in value):
            raise OptionError.of(key, value, self.allowed)
        return {name: self.item(entry, _key(key, name)) for name, entry in value.items()}


def check_options(schema: Mapping[str, Check], values: Mapping[str, Any], where: str | None = None,
                  keys: Iterable[str] | None = None) -> dict[str, Any]:
    """Check the keys of ``values`` that ``schema`` knows; return them checked (numbers as float).

    Args:
        schema: ``{key: check}`` of one option block.
        values: The block as given (keys the schema lacks are left to :func:`mclir_plugin.utils.options.check_keys`).
        where: The block's dotted place in the option file (``'mclir.hook'``), prefixed to each key; None for a
            bare key (a class used outside an option file). Defaults to None.
        keys: Check only these keys. Defaults to every key of ``schema``.

    Raises:
        OptionError: for the first value its check refuses.
    """
    checked = {}
    for key in schema if keys is None else keys:
        value = values.get(key, _MISSING)
        if value is not _MISSING:
            checked[key] = schema[key](value, f'{where}.{key}' if where else key)
    return checked
