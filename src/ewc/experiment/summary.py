"""A run's results per strategy: metrics over seeds (mean ± SEM), mean accuracy matrices, a table.

The metrics are those of `ewc.experiment.metrics` (ACC, BWT, FWT, forgetting;
shared/REFERENCES.md §4), computed per seed from that seed's accuracy matrix, then averaged
across seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ewc._atomic import write_json_atomic
from ewc.experiment import metrics
from ewc.experiment.metrics import METRICS
from ewc.experiment.outcome import CellOutcome, CellTimings

MISSING = "—"
NOT_APPLICABLE = "n/a"


@dataclass(frozen=True)
class Summary:
    """Per-strategy metrics and mean matrices of a run, as written to ``summary.json``."""

    scenario: str
    benchmark: str
    wall_time_s: float
    strategies: dict[str, dict[str, Any]]  # name → metric → {"mean", "sem", "values"}
    matrices: dict[str, list[list[float]]]  # name → seed-mean accuracy matrix
    incomplete: dict[str, str]  # "seed0-ewc" → why it has no complete matrix
    diverged: dict[str, dict[str, Any]] = field(default_factory=dict)  # key → Divergence JSON
    # name → {"training", "fisher", "evaluation"}: seconds per seed (mean over the seeds measured)
    timings: dict[str, dict[str, float]] = field(default_factory=dict)
    not_applicable: dict[str, str] = field(default_factory=dict)  # metric → why it has no meaning
    resumed: bool = False  # wall_time_s is then the last process's time only
    environment: dict[str, Any] = field(default_factory=dict)  # of the process that wrote it

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``summary.json``."""
        return {
            "scenario": self.scenario,
            "benchmark": self.benchmark,
            "wall_time_s": self.wall_time_s,
            "strategies": self.strategies,
            "matrices": self.matrices,
            "incomplete": self.incomplete,
            "diverged": self.diverged,
            "timings_s": self.timings,
            "not_applicable": self.not_applicable,
            "resumed": self.resumed,
            "environment": self.environment,
        }

    def write(self, path: Path) -> None:
        """Write as JSON; undefined values (NaN) are written as null."""
        write_json_atomic(path, self.to_dict())

    def table(self) -> str:
        """The one-screen text table: one row per strategy, metrics in % as mean ± SEM."""
        header = (
            f"{'strategy':14s}"
            + "".join(f"{name:>16s}" for name in METRICS)
            + "   final accuracy per task"
        )
        lines = [header, "-" * len(header)]
        for name, values in self.strategies.items():
            cells = "".join(f"{self._cell_text(values, m):>16s}" for m in METRICS)
            final = " ".join(f"{100 * a:5.1f}" for a in self.matrices[name][-1])
            lines.append(f"{name:14s}{cells}   {final}")
        for key, why in self.incomplete.items():
            lines.append(f"{key}: incomplete ({why})")
        for metric, why in self.not_applicable.items():
            lines.append(f"{metric} n/a: {why}")
        for name, spent in self.timings.items():
            lines.append(f"{name}: {timings_text(spent)} per seed")
        return "\n".join(lines)

    def _cell_text(self, values: dict[str, Any], metric: str) -> str:
        if metric in self.not_applicable:
            return NOT_APPLICABLE
        return mean_sem_text(values[metric]["mean"], values[metric]["sem"])


def summarize(
    scenario: str,
    benchmark: str,
    outcomes: Sequence[CellOutcome],
    wall_time_s: float,
    resumed: bool = False,
    environment: dict[str, Any] | None = None,
) -> Summary:
    """Metrics per strategy over the seeds whose matrix is complete (T + 1 rows).

    ``wall_time_s`` is the time of the process that writes the summary; ``resumed`` says that
    earlier processes of the run (stopped, then resumed) spent time not counted in it;
    ``environment`` is that process's (`ewc.experiment.environment.describe`).
    """
    complete = [o for o in outcomes if o.rows is not None and _complete(o.rows)]
    per_strategy: dict[str, dict[str, Any]] = {}
    means: dict[str, list[list[float]]] = {}
    for name in dict.fromkeys(o.cell.strategy for o in outcomes):
        rows = [o.rows for o in complete if o.cell.strategy == name and o.rows is not None]
        if rows:
            per_seed = [metrics.summarize(matrix) for matrix in rows]
            per_strategy[name] = {m: _mean_sem([s[m] for s in per_seed]) for m in METRICS}
            means[name] = metrics.mean_matrix(rows)  # type: ignore[assignment]
    reasons = {o.cell.key: str(o.divergence) for o in outcomes if o.divergence is not None}
    reasons.update({o.cell.key: "missing task rows" for o in outcomes if o.rows is not None})
    for o in complete:
        reasons.pop(o.cell.key)
    diverged = {o.cell.key: o.divergence.to_json() for o in outcomes if o.divergence is not None}
    return Summary(
        scenario,
        benchmark,
        wall_time_s,
        per_strategy,
        means,
        reasons,
        diverged,
        timings=_timings(outcomes),
        not_applicable=not_applicable(scenario),
        resumed=resumed,
        environment=dict(environment or {}),
    )


FWT_TASK_IL = (
    "task-incremental: task j's outputs (its own head, or its columns of the shared layer) are "
    "trained only from task j on, so R[j−1, j] − b_j measures an untrained output layer, not "
    "transfer"
)
"""Why FWT is not reported for task-incremental runs (summary.json's ``not_applicable``)."""


def not_applicable(scenario: str) -> dict[str, str]:
    """Metric → why it has no meaning in ``scenario`` (only FWT in task-IL)."""
    return {"FWT": FWT_TASK_IL} if scenario == "task" else {}


def _timings(outcomes: Sequence[CellOutcome]) -> dict[str, dict[str, float]]:
    """Per strategy, the mean over its measured cells of the seconds spent in each part."""
    spent: dict[str, list[CellTimings]] = {}
    for o in outcomes:
        if o.timings is not None:
            spent.setdefault(o.cell.strategy, []).append(o.timings)
    return {
        name: {
            part: sum(getattr(t, part) for t in values) / len(values)
            for part in ("training", "fisher", "evaluation")
        }
        for name, values in spent.items()
    }


def timings_text(spent: dict[str, float]) -> str:
    """``training 41.2 s, Fisher 1.3 s, evaluation 0.8 s``."""
    return ", ".join(
        f"{label} {spent[part]:.1f} s"
        for part, label in (
            ("training", "training"),
            ("fisher", "Fisher"),
            ("evaluation", "evaluation"),
        )
        if isinstance(spent.get(part), (int, float))
    )


def mean_sem_text(mean: float | None, sem: float | None, digits: int = 2) -> str:
    """A fraction's mean ± SEM in %, e.g. ``94.12 ± 0.30``.

    Without ``± …`` when the SEM is missing or NaN (one seed); ``—`` when the mean is.
    """
    if mean is None or not math.isfinite(mean):
        return MISSING
    if sem is None or not math.isfinite(sem):
        return f"{100 * mean:.{digits}f}"
    return f"{100 * mean:.{digits}f} ± {100 * sem:.{digits}f}"


def _complete(rows: list[list[float]]) -> bool:
    return bool(rows) and len(rows) == len(rows[0]) + 1


def _mean_sem(values: list[float]) -> dict[str, Any]:
    stats = metrics.mean_and_sem(values)
    return {"mean": stats.mean, "sem": stats.sem, "values": values}
