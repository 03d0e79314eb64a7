"""Seed averages the report shows: the mean accuracy matrix, final accuracies, training curves.

Means and standard errors are over seeds: SEM = sample standard deviation (n − 1 in the
denominator) / √n, and None for a single seed. ACC, BWT, FWT and forgetting are not computed here:
they come from summary.json, which the runner writes with :mod:`ewc.experiment.metrics`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from ewc.experiment.metrics import mean_and_sem
from ewc.experiment.metrics import mean_matrix as seed_mean_matrix
from ewc.report.rows import Matrix, as_matrix, finite
from ewc.report.run import Point, Run, SeedRun
from ewc.report.text import section


@dataclass(frozen=True)
class Stat:
    """Mean and standard error of the mean of ``n`` values (``sem``: None if n = 1 or unknown)."""

    mean: float
    sem: float | None
    n: int


@dataclass(frozen=True)
class Curve:
    """Test accuracy on one task along training: seed means (and SEMs) at each evaluated step."""

    task: int
    steps: tuple[int, ...]
    mean: tuple[float, ...]
    sem: tuple[float | None, ...]
    n: tuple[int, ...]  # seeds averaged at each step


@dataclass(frozen=True)
class Span:
    """The steps during which ``task`` was trained; ``finished`` is False for a task cut short."""

    task: int
    start: float
    end: float
    finished: bool


def mean_sem(values: Iterable[float | None]) -> Stat | None:
    """Mean and SEM of the values that are not None; None when there are none.

    The numbers are those of `ewc.experiment.metrics.mean_and_sem`.
    """
    present = [v for v in values if v is not None]
    if not present:
        return None
    mean, sem = mean_and_sem(present)
    return Stat(mean, None if math.isnan(sem) else sem, len(present))


def averaged_seed_runs(run: Run, strategy: str) -> list[SeedRun]:
    """The seeds of ``strategy`` that the report's means average: all but those that diverged.

    summary.json leaves a diverged seed out of every metric and matrix; the report's curves and
    matrices of a run still in progress leave it out too, so that no mean mixes it in before its
    divergence and drops it after (the report's problems list names it).
    """
    diverged = {d.seed for d in run.divergences if d.strategy == strategy}
    return [pair for pair in run.seed_runs(strategy) if pair.seed not in diverged]


def mean_matrix(run: Run, strategy: str) -> Matrix:
    """The seed-mean R of ``strategy``: summary.json's if it has one, else the seeds' mean."""
    from_summary = _summary_matrix_of(run, strategy)
    if from_summary is not None:
        return from_summary
    per_seed = _seed_matrices(run, strategy)
    if not per_seed:
        return as_matrix({}, run.num_tasks)
    return [tuple(row) for row in seed_mean_matrix(per_seed)]


def matrix_seed_counts(run: Run, strategy: str) -> tuple[int, ...]:
    """How many seeds each row of :func:`mean_matrix` averages, rows 0 (untrained) to T.

    summary.json's matrix averages the seeds with a complete matrix, as many as its ACC values;
    without it, row i averages the seeds (diverged ones left out) that have reached row i, so the
    count can fall from row to row while a run is in progress.
    """
    rows = range(run.num_tasks + 1)
    if _summary_matrix_of(run, strategy) is not None:
        acc = section(section(run.summary, "strategies"), strategy).get("ACC")
        values = acc.get("values") if isinstance(acc, dict) else None
        n = len(values) if isinstance(values, list) else 0
        return tuple(n for _ in rows)
    per_seed = _seed_matrices(run, strategy)
    return tuple(sum(any(v is not None for v in m[i]) for m in per_seed) for i in rows)


def _seed_matrices(run: Run, strategy: str) -> list[Matrix]:
    """Each averaged seed's (T + 1) × T matrix, rows not reached yet all None."""
    return [as_matrix(pair.rows, run.num_tasks) for pair in averaged_seed_runs(run, strategy)]


def _summary_matrix_of(run: Run, strategy: str) -> Matrix | None:
    """summary.json's mean matrix of ``strategy``, if it has a usable one."""
    return _summary_matrix(section(run.summary, "matrices").get(strategy), run.num_tasks)


def _summary_matrix(value: object, num_tasks: int) -> Matrix | None:
    """summary.json's matrix as (T + 1) × T; one without the untrained row gets an empty one."""
    if not isinstance(value, list) or len(value) not in (num_tasks, num_tasks + 1):
        return None
    if not all(isinstance(row, list) and len(row) == num_tasks for row in value):
        return None
    rows = [tuple(finite(v) for v in row) for row in value]
    return rows if len(rows) == num_tasks + 1 else [(None,) * num_tasks, *rows]


def final_accuracies(run: Run, strategy: str) -> list[Stat | None]:
    """R[T, j] for each task j: mean and SEM over the seeds that finished every task."""
    last = run.num_tasks
    finals = [pair.rows[last] for pair in averaged_seed_runs(run, strategy) if last in pair.rows]
    finals = [row for row in finals if len(row) == run.num_tasks]
    if finals:
        return [mean_sem(row[j] for row in finals) for j in range(run.num_tasks)]
    row, n = mean_matrix(run, strategy)[last], matrix_seed_counts(run, strategy)[last]
    return [None if v is None else Stat(v, None, n) for v in row]


def curves(run: Run, strategy: str) -> list[Curve]:
    """One curve per task, from the evaluation before its training starts to the last one.

    As in Kirkpatrick et al. (2017, Fig. 2A), task j is drawn from the start of its training:
    its first point is the evaluation at the end of task j − 1 (the untrained model for j = 1).
    """
    per_seed = [_points_by_step(pair) for pair in averaged_seed_runs(run, strategy)]
    result = []
    for task in range(1, run.num_tasks + 1):
        series = [
            {step: p.accuracies[task - 1] for step, p in points.items() if _shows(p, task)}
            for points in per_seed
        ]
        steps = sorted({step for values in series for step in values})
        stats = [mean_sem(values.get(step) for values in series) for step in steps]
        kept = [(step, s) for step, s in zip(steps, stats, strict=True) if s is not None]
        result.append(
            Curve(
                task,
                tuple(step for step, _ in kept),
                tuple(s.mean for _, s in kept),
                tuple(s.sem for _, s in kept),
                tuple(s.n for _, s in kept),
            )
        )
    return result


def _shows(point: Point, task: int) -> bool:
    """Whether the curve of ``task`` includes ``point`` (see :func:`curves`)."""
    if len(point.accuracies) < task:
        return False
    return point.task >= task or (point.boundary and point.task == task - 1)


def _points_by_step(pair: SeedRun) -> dict[int, Point]:
    """The seed's evaluations by step; a task_end wins over an eval at the same step."""
    points: dict[int, Point] = {}
    if 0 in pair.rows:
        points[0] = Point(0, 0, pair.rows[0], boundary=True)
    for point in sorted(pair.points, key=lambda p: (p.step, p.boundary)):
        if point.step not in points or point.boundary or not points[point.step].boundary:
            points[point.step] = point
    return points


def spans(run: Run, strategy: str) -> list[Span]:
    """When each task was trained, in seed-mean steps; tasks not started yet are left out."""
    ends: dict[int, list[int]] = {}
    latest: dict[int, list[int]] = {}
    for pair in averaged_seed_runs(run, strategy):
        for point in pair.points:
            (ends if point.boundary else latest).setdefault(point.task, []).append(point.step)
    result: list[Span] = []
    start = 0.0
    for task in range(1, run.num_tasks + 1):
        finished = task in ends
        steps = ends.get(task) or latest.get(task)
        if not steps:
            break
        end = statistics.fmean(steps) if finished else float(max(steps))
        result.append(Span(task, start, end, finished))
        start = end
    return result
