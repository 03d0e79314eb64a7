"""A resolved config written as a TOML file that ``ewc run --config`` reads back to the same config.

Python ships a TOML reader (tomllib) but no writer; a config is nested tables of strings,
numbers, booleans and lists, which this module writes. ``None`` (a key left to its default) is
left out: reading the file back gives the default, which is None for every such key.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)


def config_to_toml(data: Mapping[str, Any], header: str = "") -> str:
    """TOML text of nested plain data (``header`` becomes leading ``#`` comment lines).

    Raises:
        TypeError: a value is not a string, number, boolean, list or table.
    """
    lines = [f"# {line}" for line in header.splitlines()]
    if lines:
        lines.append("")
    lines += _table(data, [])
    return "\n".join(lines).strip("\n") + "\n"


def _table(data: Mapping[str, Any], path: list[str]) -> list[str]:
    lines = [
        f"{_key(key)} = {_value(value)}"
        for key, value in data.items()
        if value is not None and not isinstance(value, Mapping)
    ]
    if path and (lines or not any(isinstance(v, Mapping) for v in data.values())):
        lines.insert(0, f"[{'.'.join(_key(p) for p in path)}]")
    for key, value in data.items():
        if isinstance(value, Mapping):
            lines += ["", *_table(value, [*path, key])]
    return lines


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value if v is not None) + "]"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as a TOML value")
