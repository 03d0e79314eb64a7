"""Named, versioned experiment protocols shipped with the package (``ewc run --preset NAME``).

A preset is a TOML file in this folder: an ordinary run config (the tables of
`ewc.experiment.config`) plus one ``[preset]`` table that is not part of the config:

- ``version``: an integer, raised whenever a change to the file would change its results;
- ``source``: the publication and the reference code it follows, with file paths;
- ``summary``: one line for ``ewc run --preset list``;
- ``published`` (optional): the published numbers it reproduces, strategy → {mean, sem, note};
- ``grid`` (optional): the λ grid the publication searched, strategy → [λ, …], which
  ``benchmarks/reproduce.py`` can sweep.

A preset resolves below a config file and ``key=value`` overrides (`ewc.experiment.config.resolve`),
so a preset plus overrides is an ordinary run, recorded in full in ``config.json``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from ewc.experiment.config import BASE_STRATEGIES, OPTIONAL_STRATEGIES, ConfigError

_META_KEYS = {"version", "source", "summary", "published", "grid"}

#: Every built-in strategy's settings, as a config without a table for it resolves them.
_BUILT_IN = {**BASE_STRATEGIES, **OPTIONAL_STRATEGIES}


@dataclass(frozen=True)
class Preset:
    """One shipped protocol: its metadata and the config tables it sets.

    Attributes:
        name: the file's name without ``.toml``, e.g. ``"vandeven2025-split-mnist"``.
        version: raised whenever the protocol's results would change.
        source: the publication and reference code it follows.
        summary: one line, for listings.
        config: the run config tables (``benchmark``, ``training``, ``strategies``, …).
        published: strategy → {"mean", "sem", "note"} in %, as published (may be empty).
        grid: strategy → the λ values the publication searched (may be empty).
    """

    name: str
    version: int
    source: str
    summary: str
    config: dict[str, Any]
    published: dict[str, dict[str, Any]] = field(default_factory=dict)
    grid: dict[str, list[float]] = field(default_factory=dict)


def names() -> list[str]:
    """The names of every shipped preset, sorted."""
    folder = resources.files(__name__)
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def load(name: str) -> Preset:
    """The shipped preset ``name``.

    Raises:
        ConfigError: no preset has that name (the message lists them), or its file lacks a
            valid ``[preset]`` table.
    """
    if name not in names():
        raise ConfigError(
            f"unknown preset {name!r}; the presets are {', '.join(names())} "
            "(ewc run --preset list describes them)"
        )
    text = resources.files(__name__).joinpath(f"{name}.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    meta = data.pop("preset", None)
    if not isinstance(meta, dict) or not {"version", "source", "summary"} <= set(meta):
        raise ConfigError(f"preset {name!r} needs a [preset] table with version, source, summary")
    unknown = sorted(set(meta) - _META_KEYS)
    if unknown:
        raise ConfigError(f"preset {name!r}: unknown [preset] key {unknown[0]!r}")
    return Preset(
        name=name,
        version=int(meta["version"]),
        source=str(meta["source"]),
        summary=str(meta["summary"]),
        config=data,
        published=dict(meta.get("published", {})),
        grid={k: [float(v) for v in values] for k, values in meta.get("grid", {}).items()},
    )


def listing() -> str:
    """One paragraph per preset: ``name (vN)``, its summary and its source."""
    blocks = []
    for name in names():
        preset = load(name)
        blocks.append(f"{name} (v{preset.version})\n  {preset.summary}\n  source: {preset.source}")
    return "\n".join(blocks)


def strategies_left_at_defaults(
    preset: Preset, compare: Sequence[str], user_tables: Sequence[Mapping[str, Any]]
) -> list[str]:
    """The strategies of ``compare`` that run with the built-in settings, not the preset's.

    A preset sets its own strategies (``vandeven2025-split-mnist``'s ``ewc-exact``, …); a
    built-in name it does not set (``--strategies ewc`` there) runs with `BASE_STRATEGIES` or
    `OPTIONAL_STRATEGIES`' settings, unrelated to the protocol. Returned are those names that
    have settings (``finetune`` has none) and that neither the preset nor ``user_tables`` (the
    user's config file and overrides, as parsed tables) set.
    """
    set_somewhere = set(preset.config.get("strategies", {}))
    for tables in user_tables:
        strategies = tables.get("strategies")
        set_somewhere |= set(strategies) if isinstance(strategies, Mapping) else set()
    return [n for n in compare if _BUILT_IN.get(n) and n not in set_somewhere]


def defaults_note(preset: Preset, names: Sequence[str]) -> str:
    """One line telling that ``names`` run with built-in settings, and what the preset sets."""
    described = "; ".join(
        f"{name} ({', '.join(f'{k} {v}' for k, v in _BUILT_IN[name].items())})" for name in names
    )
    own = ", ".join(sorted(preset.config.get("strategies", {}))) or "none"
    return (
        f"note: preset {preset.name!r} does not set {', '.join(names)}: built-in settings, not "
        f"the protocol's: {described}. The preset's own strategies: {own}"
    )
