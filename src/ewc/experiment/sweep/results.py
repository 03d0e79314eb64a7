"""A sweep's results, read from its study: one row per trial, the table, the best config.

Rows come from the study (not from the run directories), so a worker on any machine writes the
results of every worker's trials. Metrics are the sweep strategy's summary metrics of the trial:
mean ± SEM over the trial's seeds.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any

from ewc.experiment.summary import METRICS
from ewc.experiment.sweep.spec import SweepSpec
from ewc.experiment.sweep.study import killed_trials
from ewc.experiment.sweep.trial import CONFIG_ATTR, METRICS_ATTR, RUN_DIR_ATTR


@dataclass(frozen=True)
class TrialRow:
    """One trial as the results show it.

    Attributes:
        number: the trial's number in the study.
        state: ``complete``, ``pruned``, ``fail``, ``running`` or ``waiting`` (Optuna's states).
        params: dotted config key → value.
        metrics: metric → {"mean", "sem", "values"} of the sweep's strategy (empty unless complete).
        run_dir: the trial's run directory (on the machine of the worker that ran it).
        config: the trial's resolved config (empty before it started).
    """

    number: int
    state: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    run_dir: str
    config: dict[str, Any]


def trial_rows(study: Any) -> list[TrialRow]:
    """Every trial of the study except the killed ones that were re-queued, by number."""
    killed = set(killed_trials(study))
    return [
        TrialRow(
            number=t.number,
            state=t.state.name.lower(),
            params=dict(t.params),
            metrics=t.user_attrs.get(METRICS_ATTR, {}),
            run_dir=t.user_attrs.get(RUN_DIR_ATTR, ""),
            config=t.user_attrs.get(CONFIG_ATTR, {}),
        )
        for t in study.get_trials(deepcopy=False)
        if t.number not in killed
    ]


def best_row(rows: list[TrialRow], spec: SweepSpec) -> TrialRow | None:
    """The complete trial with the best objective (lowest number among equals), or None."""
    metric, sign = spec.objective_choice.metric, _sign(spec)
    complete = [r for r in rows if r.state == "complete" and _mean(r, metric) is not None]
    if not complete:
        return None
    return min(complete, key=lambda r: (-sign * _mean(r, metric), r.number))


def table_markdown(rows: list[TrialRow], spec: SweepSpec) -> str:
    """The results as a Markdown table, best objective first; metrics in % as mean ± SEM."""
    keys = list(spec.space)
    header = ["trial", "state", *keys, *METRICS, "run directory"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in sorted(rows, key=lambda r: _order(r, spec)):
        values = [_text(row.params.get(k, "")) for k in keys]
        metrics = [_percent(row.metrics.get(m)) for m in METRICS]
        cells = [str(row.number), row.state, *values, *metrics, f"`{row.run_dir}`"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_csv(rows: list[TrialRow], spec: SweepSpec) -> str:
    """The results as CSV: params, then each metric's mean and SEM as fractions."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    stats = [f"{m}_{s}" for m in METRICS for s in ("mean", "sem")]
    writer.writerow(["trial", "state", *spec.space, *stats, "run_dir"])
    for row in sorted(rows, key=lambda r: r.number):
        cells = [(row.metrics.get(m) or {}).get(s) for m in METRICS for s in ("mean", "sem")]
        params = [row.params.get(k, "") for k in spec.space]
        writer.writerow(
            [row.number, row.state, *params, *["" if c is None else c for c in cells], row.run_dir]
        )
    return buffer.getvalue()


def _order(row: TrialRow, spec: SweepSpec) -> tuple[int, float, int]:
    mean = _mean(row, spec.objective_choice.metric)
    return (mean is None, 0.0 if mean is None else -_sign(spec) * mean, row.number)


def _sign(spec: SweepSpec) -> int:
    return 1 if spec.objective_choice.direction == "maximize" else -1


def _mean(row: TrialRow, metric: str) -> float | None:
    mean = (row.metrics.get(metric) or {}).get("mean")
    return mean if isinstance(mean, int | float) and math.isfinite(mean) else None


def _text(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _percent(stat: dict[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None:
        return "—"
    mean, sem = stat["mean"], stat.get("sem")
    return f"{100 * mean:.2f}" if sem is None else f"{100 * mean:.2f} ± {100 * sem:.2f}"
