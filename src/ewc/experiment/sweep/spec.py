"""What a sweep is: its search space, base config, sampler, seeds and objective (`SweepSpec`).

The spec is recorded in the sweep directory (``sweep.json``) and in the study itself, so that a
resumed sweep, and every worker that joins the study from any machine, runs the same search: a
worker whose spec differs is refused with the fields that differ.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ewc._choices import Choice
from ewc.experiment.config import ConfigError, RunConfig, fill_stream_defaults, from_dict, merge
from ewc.experiment.strategies import build_strategy
from ewc.experiment.sweep.space import Dimension, parse_dimension


class Objective(Choice):
    """The summary metric a sweep optimises, for the first compared strategy."""

    __noun__ = ("objective", "objectives")

    ACC = "acc"
    BWT = "bwt"
    FORGETTING = "forgetting"

    @property
    def metric(self) -> str:
        """The metric's name in ``summary.json`` (``ACC``, ``BWT``, ``forgetting``)."""
        return {"acc": "ACC", "bwt": "BWT", "forgetting": "forgetting"}[self.value]

    @property
    def direction(self) -> str:
        """``maximize`` for ACC and BWT (higher is better), ``minimize`` for forgetting."""
        return "minimize" if self is Objective.FORGETTING else "maximize"


class Sampler(Choice):
    """How trials pick their values: every point of a grid once, or TPE (Bergstra et al. 2011)."""

    __noun__ = ("sampler", "samplers")

    GRID = "grid"
    TPE = "tpe"


@dataclass(frozen=True)
class SweepSpec:
    """A sweep, as plain data (see the module docstring).

    Attributes:
        space: dotted config key → its search spec (``log:1..1e12:13``, ``exact,batched``).
        base: the resolved base config (`RunConfig.to_dict`) every trial starts from.
        sampler: ``grid`` or ``tpe``.
        sampler_seed: seeds the sampler (the grid's order, TPE's draws).
        objective: ``acc``, ``bwt`` or ``forgetting`` of the first compared strategy.
        trials: how many trials TPE runs in all (over all workers); the grid runs each point once.
        prune: stop a trial after a task when its running ACC is below the median of earlier
            trials at that point (objective ``acc`` only).
    """

    space: dict[str, str]
    base: dict[str, Any]
    sampler: str = Sampler.GRID.value
    sampler_seed: int = 0
    objective: str = Objective.ACC.value
    trials: int | None = None
    prune: bool = True

    def __post_init__(self) -> None:
        Sampler.parse(self.sampler)
        Objective.parse(self.objective)
        dimensions = self.dimensions()
        if self.sampler == Sampler.GRID and not all(d.finite for d in dimensions):
            bad = next(d for d in dimensions if not d.finite)
            raise ConfigError(
                f"{bad.key}={bad.spec} is a continuous range; the grid sampler needs a number of "
                f"points, e.g. {bad.spec}:13, or use --sampler tpe"
            )
        if self.sampler == Sampler.TPE and (self.trials is None or self.trials < 1):
            raise ConfigError(f"the tpe sampler needs --trials N (N ≥ 1); got {self.trials}")

    def dimensions(self) -> tuple[Dimension, ...]:
        """The parsed search space, in the order given."""
        return tuple(parse_dimension(key, spec) for key, spec in self.space.items())

    @property
    def objective_choice(self) -> Objective:
        """The objective as its enum."""
        return Objective.parse(self.objective)

    @property
    def strategy(self) -> str:
        """The strategy whose metric is the objective: the first compared one."""
        return self.base["compare"][0]

    @property
    def grid_size(self) -> int:
        """The number of points of the grid (the product of the dimensions' sizes)."""
        return math.prod(len(d.values or ()) for d in self.dimensions())

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-able data."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepSpec:
        """The spec recorded by `to_dict`."""
        return cls(**data)

    def differences(self, other: SweepSpec) -> list[str]:
        """The fields in which ``other`` differs from this spec (empty when they are the same)."""
        mine, theirs = _canonical(self.to_dict()), _canonical(other.to_dict())
        return [key for key in mine if mine[key] != theirs.get(key)]


def trial_config(base: Mapping[str, Any], params: Mapping[str, Any]) -> RunConfig:
    """The config of a trial: ``base`` with each dotted key of ``params`` set to its value.

    Raises:
        ConfigError: a key is unknown or a value invalid (the message names the full key).
    """
    update: dict[str, Any] = {}
    for key, value in params.items():
        *parents, leaf = key.split(".")
        target = update
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return fill_stream_defaults(from_dict(merge(base, update)))


def check_space(spec: SweepSpec) -> None:
    """Build the config of every value (or both ends of every range) once.

    An unknown key or a bad value thus fails before any trial runs.
    """
    probe = torch.nn.Linear(1, 1)
    for dimension in spec.dimensions():
        candidates = dimension.values or _range_probes(dimension)
        for value in candidates:
            try:
                config = trial_config(spec.base, {dimension.key: value})
                for name in config.compare:
                    build_strategy(name, config.strategies[name], probe)
            except ConfigError as error:
                raise ConfigError(f"search {dimension.key}={dimension.spec}: {error}") from None
        strategy = dimension.key.split(".")[1] if dimension.key.startswith("strategies.") else None
        if strategy is not None and strategy not in spec.base["compare"]:
            raise ConfigError(
                f"search key {dimension.key} sets strategy {strategy!r}, which the sweep does not "
                f"compare ({', '.join(spec.base['compare'])}); add it with --strategies"
            )
    _check_objective_moves(spec)


def _check_objective_moves(spec: SweepSpec) -> None:
    """Refuse a search whose keys all set strategies other than the objective's (the first).

    Its objective would be the same in every trial, and the "best" trial the first one.
    """
    keys = [d.key for d in spec.dimensions()]
    searched = {k.split(".")[1] for k in keys if k.startswith("strategies.")}
    objective = spec.base["compare"][0]
    if all(k.startswith("strategies.") for k in keys) and objective not in searched:
        raise ConfigError(
            f"every search key sets {', '.join(sorted(searched))}, but the objective is the "
            f"first compared strategy's, {objective!r}, which no key changes; put the searched "
            "strategy first in --strategies"
        )


def _range_probes(dimension: Any) -> tuple[Any, ...]:
    """Both ends of a range and, unless it draws integers, a float inside it.

    A sampler draws floats from a range that is not integer (a ``log:`` range always is not):
    an integer key (``training.batch_size``) must fail here, not in every trial.
    """
    low, high = dimension.low, dimension.high
    if dimension.integer:
        return (low, high)
    inside = math.sqrt(low * high) if dimension.log else (low + high) / 2
    return (low, high, float(inside))


def _canonical(data: Mapping[str, Any]) -> dict[str, str]:
    return {key: json.dumps(value, sort_keys=True) for key, value in data.items()}
