"""A run's results per strategy: metrics over seeds (mean ± SEM), mean accuracy matrices, a table.

The metrics are those of `ewc.experiment.metrics` (ACC, BWT, FWT, forgetting;
shared/REFERENCES.md §4), computed per seed from that seed's accuracy matrix, then averaged
across seeds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ewc._atomic import write_text_atomic
from ewc.experiment import metrics
from ewc.experiment.config import RunConfig
from ewc.experiment.storage.rundir import Cell

METRICS = ("ACC", "BWT", "FWT", "forgetting")


@dataclass(frozen=True)
class Summary:
    """Per-strategy metrics and mean matrices of a run, as written to ``summary.json``."""

    scenario: str
    benchmark: str
    wall_time_s: float
    strategies: dict[str, dict[str, Any]]  # name → metric → {"mean", "sem", "values"}
    matrices: dict[str, list[list[float]]]  # name → seed-mean accuracy matrix
    incomplete: dict[str, str]  # "seed0-ewc" → why it has no complete matrix

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "benchmark": self.benchmark,
            "wall_time_s": self.wall_time_s,
            "strategies": self.strategies,
            "matrices": self.matrices,
            "incomplete": self.incomplete,
        }

    def write(self, path: Path) -> None:
        """Write as JSON; undefined values (NaN) are written as null."""
        write_text_atomic(path, json.dumps(_nan_to_none(self.to_dict()), indent=2) + "\n")

    def table(self) -> str:
        """The one-screen text table: one row per strategy, metrics in % as mean ± SEM."""
        header = (
            f"{'strategy':14s}"
            + "".join(f"{name:>16s}" for name in METRICS)
            + "   final accuracy per task"
        )
        lines = [header, "-" * len(header)]
        for name, values in self.strategies.items():
            cells = "".join(f"{_percent(values[m]):>16s}" for m in METRICS)
            final = " ".join(f"{100 * a:5.1f}" for a in self.matrices[name][-1])
            lines.append(f"{name:14s}{cells}   {final}")
        for key, why in self.incomplete.items():
            lines.append(f"{key}: incomplete ({why})")
        return "\n".join(lines)


def summarize(
    config: RunConfig,
    matrices: dict[Cell, list[list[float]]],
    incomplete: dict[Cell, str],
    wall_time_s: float,
) -> Summary:
    """Metrics per strategy over the seeds whose matrix is complete (T + 1 rows)."""
    per_strategy: dict[str, dict[str, Any]] = {}
    means: dict[str, list[list[float]]] = {}
    for name in config.compare:
        complete = [
            rows for cell, rows in matrices.items() if cell.strategy == name and _complete(rows)
        ]
        if not complete:
            continue
        per_seed = [metrics.summarize(rows) for rows in complete]
        per_strategy[name] = {m: _mean_sem([s[m] for s in per_seed]) for m in METRICS}
        means[name] = _mean_matrix(complete)
    reasons = {cell.key: why for cell, why in incomplete.items()}
    reasons.update(
        {cell.key: "missing task rows" for cell, rows in matrices.items() if not _complete(rows)}
    )
    return Summary(
        scenario=config.benchmark.scenario or "",
        benchmark=config.benchmark.name,
        wall_time_s=wall_time_s,
        strategies=per_strategy,
        matrices=means,
        incomplete=reasons,
    )


def _complete(rows: list[list[float]]) -> bool:
    return bool(rows) and len(rows) == len(rows[0]) + 1


def _mean_sem(values: list[float]) -> dict[str, Any]:
    stats = metrics.mean_and_sem(values)
    return {"mean": stats.mean, "sem": stats.sem, "values": values}


def _mean_matrix(matrices: list[list[list[float]]]) -> list[list[float]]:
    count = len(matrices)
    return [
        [math.fsum(m[i][j] for m in matrices) / count for j in range(len(matrices[0][0]))]
        for i in range(len(matrices[0]))
    ]


def _percent(stat: dict[str, Any]) -> str:
    mean, sem = stat["mean"], stat["sem"]
    if mean is None or math.isnan(mean):
        return "—"
    if sem is None or math.isnan(sem):
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * sem:.2f}"


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value
