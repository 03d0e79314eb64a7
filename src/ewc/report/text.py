"""How numbers, strategies and the run's setting are written in the report and on the figures."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ewc.experiment.summary import MISSING, mean_sem_text
from ewc.report.rows import finite

_SCENARIOS = {
    "task": "task-incremental",
    "domain": "domain-incremental",
    "class": "class-incremental",
}


_DATASETS = {
    "mnist": "MNIST",
    "fashion-mnist": "Fashion-MNIST",
    "fashion_mnist": "Fashion-MNIST",
    "fashionmnist": "Fashion-MNIST",
}


def dataset_name(dataset: object) -> str:
    """How a data set is spelled in prose: ``mnist`` → ``MNIST``; other names are kept."""
    return _DATASETS.get(str(dataset).lower(), str(dataset))


def plural(count: int, noun: str) -> str:
    """``1 seed``, ``2 seeds``."""
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {noun[:-1]}ies" if noun.endswith("y") else f"{count} {noun}s"


def percent(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage without the sign (``0.9412`` → ``94.1``); ``—`` if missing."""
    return MISSING if value is None else f"{100 * value:.{digits}f}"


def metric_text(metric: object, digits: int = 2) -> str:
    """A summary.json metric ``{"mean", "sem", "values"}`` as ``94.12 ± 0.30`` (in %).

    The ``± SEM`` part is left out when the SEM is null or NaN (a single seed).
    """
    if not isinstance(metric, Mapping):
        return MISSING
    return mean_sem_text(finite(metric.get("mean")), finite(metric.get("sem")), digits)


def number(value: Any) -> str:
    """A config value as a reader expects it: ``1,000``, ``0.001``, ``exact``, ``[400, 400]``."""
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "null"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(number(v) for v in value) + "]"
    return str(value)


def scenario_name(scenario: object) -> str:
    """``domain`` → ``domain-incremental``; other names are kept as they are."""
    return _SCENARIOS.get(str(scenario), str(scenario))


_PENALTIES = {"finetune": "none", "l2": "L2", "ewc": "EWC", "online-ewc": "online EWC"}


def penalty_kind(strategy: str, settings: Mapping[str, Any]) -> str:
    """The penalty of a strategy: that of its ``type`` (default: its name) among the built-in ones.

    A type the report does not know is named as it is, or called EWC when it has a Fisher.
    """
    kind = str(settings.get("type", strategy))
    if kind in _PENALTIES:
        return _PENALTIES[kind]
    return "EWC" if "fisher" in settings else kind


def hyperparameters(settings: Mapping[str, Any]) -> str:
    """A strategy's settings in the papers' notation: ``λ = 100 · exact Fisher, n = 1,000``."""
    parts = []
    if "strength" in settings:
        parts.append(f"λ = {number(settings['strength'])}")
    if "fisher" in settings:
        fisher = f"{number(settings['fisher'])} Fisher"
        if settings.get("fisher_samples") is not None:
            fisher += f", n = {number(settings['fisher_samples'])}"
        parts.append(fisher)
    if "mode" in settings:
        parts.append(f"{number(settings['mode'])} mode")
    if "gamma" in settings:
        parts.append(f"γ = {number(settings['gamma'])}")
    known = {"strength", "fisher", "fisher_samples", "mode", "gamma"}
    parts.extend(f"{key} = {number(v)}" for key, v in settings.items() if key not in known)
    return " · ".join(parts) if parts else "no penalty"


def section(mapping: Mapping[str, Any] | None, key: str) -> dict[str, Any]:
    """``mapping[key]`` when it is a JSON object, else an empty one (a key the run lacks)."""
    value = (mapping or {}).get(key)
    return value if isinstance(value, dict) else {}


def strategy_settings(config: Mapping[str, Any], strategy: str) -> Mapping[str, Any]:
    """The settings of ``strategy`` in the resolved config (empty when it has none)."""
    return section(section(config, "strategies"), strategy)


def row_label(index: int) -> str:
    """The label of row ``index`` of R, as in the accuracy/*.csv files."""
    return "untrained" if index == 0 else f"after task {index}"
