"""The search space of a sweep: ``KEY=SPEC`` over any dotted config key.

Syntax of ``SPEC`` (``KEY`` is a dotted config key, as in ``ewc run`` overrides)::

    log:LOW..HIGH       log-uniform over [LOW, HIGH] (TPE only)
    log:LOW..HIGH:N     N points spaced evenly in log between LOW and HIGH (both included)
    LOW..HIGH           uniform over [LOW, HIGH]; integers if both ends are (TPE only)
                        (a log range is always over floats)
    LOW..HIGH:N         N points spaced evenly between LOW and HIGH (both included)
    A,B,C               these values (TOML values; a word that is not TOML is a string)

The grid sampler needs every dimension to be a finite set of values (a list or a range with N);
TPE takes either. Values are parsed here, without optuna, so a bad space fails before any study
is touched.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

_SYNTAX = "log:LOW..HIGH[:N], LOW..HIGH[:N] or A,B,C"


class SpaceError(ValueError):
    """A search-space entry is malformed; the message names the entry and the valid syntax."""


@dataclass(frozen=True)
class Dimension:
    """One searched config key: a finite set of ``values``, or a continuous range.

    Attributes:
        key: the dotted config key, e.g. ``strategies.ewc.strength``.
        spec: the text the user gave after ``=`` (recorded, compared between workers).
        values: the candidate values when the dimension is finite, else None.
        low, high: the ends of a range (also set for a discretised range).
        log: whether the range is log-uniform (or its points log-spaced).
        integer: whether a continuous range draws integers.
    """

    key: str
    spec: str
    values: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    @property
    def finite(self) -> bool:
        """Whether the dimension is a finite set of values (what the grid sampler needs)."""
        return self.values is not None

    @property
    def numeric(self) -> bool:
        """Whether the values are numbers (so they can be an x axis)."""
        if self.values is None:
            return True
        return all(isinstance(v, int | float) and not isinstance(v, bool) for v in self.values)


def parse_space(entries: Sequence[str]) -> tuple[Dimension, ...]:
    """Parse ``["strategies.ewc.strength=log:1..1e12:13", "strategies.ewc.fisher=exact,batched"]``.

    Raises:
        SpaceError: an entry is not ``KEY=SPEC``, a key repeats, or a spec is malformed.
    """
    dimensions: list[Dimension] = []
    for entry in entries:
        key, sep, spec = entry.partition("=")
        key, spec = key.strip(), spec.strip()
        if not sep or not key or not spec:
            raise SpaceError(f"search entry {entry!r} is not KEY=SPEC with SPEC one of {_SYNTAX}")
        if any(d.key == key for d in dimensions):
            raise SpaceError(f"search key {key!r} is given twice; give each key once")
        dimensions.append(parse_dimension(key, spec))
    if not dimensions:
        raise SpaceError(f"the search space is empty; give at least one KEY=SPEC ({_SYNTAX})")
    return tuple(dimensions)


def parse_dimension(key: str, spec: str) -> Dimension:
    """One dimension from its key and ``SPEC`` (see the module docstring)."""
    if ".." in spec:
        return _parse_range(key, spec)
    values = tuple(_value(part.strip()) for part in spec.split(","))
    if len(values) < 2 or any(v == "" for v in values):
        raise SpaceError(
            f"{key}={spec}: a list needs two or more non-empty values (e.g. 0.7,0.8,0.9); "
            "fix a single value with a plain KEY=VALUE override instead"
        )
    if len({_same(v) for v in values}) != len(values):
        raise SpaceError(f"{key}={spec}: a value repeats; list each value once")
    return Dimension(key, spec, values=values)


def _same(value: Any) -> Any:
    """What makes two listed values the same point: 1 and 1.0 are, "1" and 1 are not."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return ("number", float(value))
    return (type(value).__name__, repr(value))


def _parse_range(key: str, spec: str) -> Dimension:
    log, body = spec.startswith("log:"), spec.removeprefix("log:")
    bounds, _, count = body.partition(":")
    low_text, _, high_text = bounds.partition("..")
    low, high = _number(key, spec, low_text), _number(key, spec, high_text)
    if not low < high:
        raise SpaceError(f"{key}={spec}: LOW must be below HIGH; got {low_text} and {high_text}")
    if log and low <= 0:
        raise SpaceError(f"{key}={spec}: a log range needs LOW > 0; got {low_text}")
    integer = not log and isinstance(low, int) and isinstance(high, int)
    if not count:
        return Dimension(key, spec, low=low, high=high, log=log, integer=integer)
    if not count.isascii() or not count.isdigit() or int(count) < 2:
        raise SpaceError(
            f"{key}={spec}: N (after the last ':') must be an integer ≥ 2; got {count!r}"
        )
    values = _points(low, high, int(count), log)
    if integer:
        values = tuple(dict.fromkeys(math.floor(v + 0.5) for v in values))  # halves up
        if len(values) < int(count):
            raise SpaceError(
                f"{key}={spec}: {low}..{high} holds only {len(values)} distinct integers for "
                f"{count} points; ask for fewer points or widen the range"
            )
    return Dimension(key, spec, values=values, low=low, high=high, log=log, integer=integer)


def _points(low: float, high: float, count: int, log: bool) -> tuple[float, ...]:
    """``count`` points from ``low`` to ``high``, evenly spaced (in log if ``log``), to 12 digits.

    ``log:1..1e12:13`` gives 1, 10, …, 1e12 exactly, not 10.000000000000002.
    """
    if log:
        a, b = math.log10(low), math.log10(high)
        raw = [10 ** (a + (b - a) * i / (count - 1)) for i in range(count)]
    else:
        raw = [low + (high - low) * i / (count - 1) for i in range(count)]
    return tuple(float(f"{v:.12g}") for v in raw)


def _number(key: str, spec: str, text: str) -> int | float:
    value = _value(text.strip())
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SpaceError(f"{key}={spec}: range ends must be finite numbers; got {text.strip()!r}")
    return value


def _value(text: str) -> Any:
    """A TOML value (``1e3``, ``true``, ``"x"``), else the text itself as a string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text
