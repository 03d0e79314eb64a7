"""Reading a run directory written by the runner: header, metric events, accuracy matrices, summary.

The directory (its layout is `ewc.experiment.storage.rundir.RunDirectory`) holds ``config.json``
(the resolved config, versions, config hash, data description and task names), ``metrics.jsonl``
(one event per line, `ewc.experiment.storage.events`: ``eval``, ``task_end``, ``train``, ``note``,
``diverged``), ``accuracy/seed{S}_{strategy}.csv`` (the (T+1) × T accuracy matrix R of one seed and
strategy, first row the untrained model; `ewc.experiment.storage.accuracy`) and, once the run has
finished, ``summary.json``.

Only ``config.json`` is required. A run stopped mid-way still has a report: everything else may be
missing or cut short, and what is missing is listed in :attr:`Run.problems` instead of raising.
Unknown event kinds are skipped, so that newer runners stay readable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ewc.experiment.storage.accuracy import read_accuracy_csv
from ewc.experiment.storage.events import (
    DivergedEvent,
    EvalEvent,
    EventError,
    NoteEvent,
    TaskEndEvent,
    parse_event,
)
from ewc.experiment.storage.rundir import Cell, RunDirectory, RunDirectoryError
from ewc.report.rows import count_finished
from ewc.report.text import section


@dataclass(frozen=True)
class Point:
    """One evaluation of every task at ``step``, taken while training ``task`` (0: before any).

    ``boundary`` marks the evaluation at the end of task ``task`` (a ``task_end`` event, or the
    untrained row of the matrix for task 0): the point where the next task's curve starts.
    ``subset``: measured on a fixed subset of at most this many test samples per task; None: on
    the full test sets (always so at a boundary).
    """

    task: int
    step: int
    accuracies: tuple[float | None, ...]
    boundary: bool = False
    subset: int | None = None


@dataclass
class SeedRun:
    """What one (seed, strategy) pair left behind: its evaluations and its accuracy-matrix rows.

    ``rows[i]`` is row i of R (0: the untrained model, i ≥ 1: after training task i).
    """

    seed: int
    strategy: str
    points: list[Point] = field(default_factory=list)
    rows: dict[int, tuple[float | None, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Note:
    """A ``note`` event (e.g. a divergence the runner detected)."""

    seed: int | None
    strategy: str | None
    message: str


@dataclass(frozen=True)
class Run:
    """Everything the report shows, read from one run directory.

    Attributes:
        directory: the run directory.
        header: config.json as written (shown verbatim in the report).
        config: the resolved config, ``header["config"]``.
        tasks: the task names, one per task (T = ``len(tasks)``).
        strategies: strategy names, in config order, then any others found in the results.
        seeds: seeds, in config order, then any others found in the results.
        pairs: the results of each (seed, strategy) that has any.
        summary: summary.json, or None while the run has not finished.
        notes: the ``note`` events, in file order.
        problems: what is missing or was ignored, one sentence each.
        divergences: the ``diverged`` events: cells whose loss became non-finite, in file order.
    """

    directory: Path
    header: dict[str, Any]
    config: dict[str, Any]
    tasks: list[str]
    strategies: list[str]
    seeds: list[int]
    pairs: dict[tuple[int, str], SeedRun]
    summary: dict[str, Any] | None
    notes: list[Note]
    problems: list[str]
    divergences: list[DivergedEvent] = field(default_factory=list)

    @property
    def num_tasks(self) -> int:
        """T, the number of tasks of the benchmark."""
        return len(self.tasks)

    def seed_runs(self, strategy: str) -> list[SeedRun]:
        """The results of ``strategy``, one per seed that has any, in seed order."""
        return [self.pairs[s, strategy] for s in self.seeds if (s, strategy) in self.pairs]


def load_run(run_dir: str | Path) -> Run:
    """Read the run directory ``run_dir``.

    Raises:
        RunDirectoryError: ``run_dir`` is not a directory, or its config.json is missing or is not
            the JSON object the runner writes.
    """
    directory = RunDirectory(run_dir)
    header = _read_header(directory)
    config = header["config"]
    problems: list[str] = []
    pairs: dict[tuple[int, str], SeedRun] = {}
    notes, divergences = _read_events(directory, pairs, problems)
    tasks = _task_names(header, pairs)
    _read_matrices(directory, len(tasks), pairs, problems)
    summary = _read_summary(directory.summary_path, problems)
    strategies = _ordered(_config_strategies(config), [s for _, s in pairs])
    strategies = _ordered(strategies, list(section(summary, "strategies")))
    seeds = _ordered(_config_seeds(config), sorted({s for s, _ in pairs}))
    run = Run(
        directory.path,
        header,
        config,
        tasks,
        strategies,
        seeds,
        pairs,
        summary,
        notes,
        problems,
        divergences,
    )
    problems.extend(_diverged(divergences))
    problems.extend(_completeness(run))
    problems.extend(_summary_incomplete(summary, {Cell(d.seed, d.strategy) for d in divergences}))
    return run


def _read_header(directory: RunDirectory) -> dict[str, Any]:
    """config.json, checked to be an object with a ``config`` object."""
    name = str(directory.path)
    if not directory.path.is_dir():
        raise RunDirectoryError(f"run directory {name!r} does not exist or is no folder")
    path = directory.config_path
    if not path.is_file():
        raise RunDirectoryError(
            f"run directory {name!r} has no config.json; a run directory written by "
            "`ewc run` holds config.json, metrics.jsonl, accuracy/ and summary.json"
        )
    return directory.read_config()


def _event_files(directory: RunDirectory, problems: list[str]) -> list[Path]:
    """metrics.jsonl; before the runner has assembled it, the cells' own event logs."""
    if directory.metrics_path.is_file():
        return [directory.metrics_path]
    cells = directory.cell_event_files()
    if cells:
        problems.append(
            "metrics.jsonl is missing (the run has not finished): the events are read from "
            "cells/*/events.jsonl."
        )
    else:
        problems.append("metrics.jsonl is missing: no training curves.")
    return cells


def _read_events(
    directory: RunDirectory, pairs: dict[tuple[int, str], SeedRun], problems: list[str]
) -> tuple[list[Note], list[DivergedEvent]]:
    """Fill ``pairs`` from the eval / task_end events; return the notes and divergences."""
    notes: list[Note] = []
    divergences: list[DivergedEvent] = []
    for path in _event_files(directory, problems):
        name = path.relative_to(directory.path).as_posix()
        for event in _events_of(path, name, problems):
            if isinstance(event, EvalEvent | TaskEndEvent):
                _add_evaluation(event, pairs)
            elif isinstance(event, NoteEvent):
                notes.append(Note(event.seed, event.strategy, event.message))
            elif isinstance(event, DivergedEvent):
                divergences.append(event)
    return notes, divergences


def _events_of(path: Path, name: str, problems: list[str]) -> list[Any]:
    """The events of the kinds this version knows in one file; a bad line becomes a problem."""
    found = []
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError:
                problems.append(f"{name} line {number} is not valid JSON (cut short?).")
                continue
            try:
                event = parse_event(raw)
            except EventError:
                problems.append(f"{name} line {number}: malformed {raw['event']} event ignored.")
                continue
            if event is not None:
                found.append(event)
    return found


def _add_evaluation(event: EvalEvent | TaskEndEvent, pairs: dict[tuple[int, str], SeedRun]) -> None:
    """Record one eval or task_end event."""
    pair = pairs.setdefault((event.seed, event.strategy), SeedRun(event.seed, event.strategy))
    boundary = isinstance(event, TaskEndEvent)
    subset = event.subset if isinstance(event, EvalEvent) else None
    pair.points.append(Point(event.task, event.step, event.accuracies, boundary, subset))
    if boundary:
        pair.rows[event.task] = event.accuracies


def _read_matrices(
    directory: RunDirectory,
    num_tasks: int,
    pairs: dict[tuple[int, str], SeedRun],
    problems: list[str],
) -> None:
    """Fill the matrix rows of ``pairs`` from accuracy/*.csv (the files win over the events)."""
    for cell, path in directory.matrix_files():
        try:
            rows = read_accuracy_csv(path, num_tasks)
        except (ValueError, OSError, UnicodeDecodeError) as err:
            problems.append(f"accuracy/{path.name} ignored: {err}.")
            continue
        key = (cell.seed, cell.strategy)
        pairs.setdefault(key, SeedRun(cell.seed, cell.strategy)).rows.update(rows)


def _read_summary(path: Path, problems: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        problems.append(
            "summary.json is missing (the run has not finished): ACC, BWT, FWT and forgetting "
            "are not shown."
        )
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        problems.append(f"summary.json is not valid JSON ({err}): metrics are not shown.")
        return None
    if not isinstance(summary, dict):
        problems.append("summary.json is not a JSON object: metrics are not shown.")
        return None
    return summary


def _task_names(header: dict[str, Any], pairs: dict[tuple[int, str], SeedRun]) -> list[str]:
    """The task names of config.json; else ``task k`` for as many tasks as the config says."""
    names = header.get("tasks")
    if isinstance(names, list) and names:
        return [str(name) for name in names]
    count = section(header["config"], "benchmark").get("num_tasks")
    if not _is_int(count):
        widths = [len(p.accuracies) for pair in pairs.values() for p in pair.points]
        count = max(widths, default=0)
    return [f"task {k}" for k in range(1, count + 1)]


def _config_strategies(config: dict[str, Any]) -> list[str]:
    """The strategies the run trains: ``compare`` when the config has it, else all it defines."""
    compare = config.get("compare")
    if isinstance(compare, list) and all(isinstance(name, str) for name in compare):
        return compare
    return list(section(config, "strategies"))


def _config_seeds(config: dict[str, Any]) -> list[int]:
    seeds = config.get("seeds")
    if _is_int(seeds):
        return [seeds]
    return [s for s in seeds if _is_int(s)] if isinstance(seeds, list) else []


def _completeness(run: Run) -> list[str]:
    """One sentence per strategy that has not finished every task on every seed."""
    sentences = []
    for strategy in run.strategies:
        gaps = []
        for seed in run.seeds:
            pair = run.pairs.get((seed, strategy))
            finished = count_finished(pair.rows if pair else {}, run.num_tasks)
            if pair is None:
                gaps.append(f"seed {seed} has no results yet")
            elif finished < run.num_tasks:
                gaps.append(f"seed {seed} finished {finished} of {run.num_tasks} tasks")
        if gaps:
            sentences.append(f"Strategy {strategy}: {'; '.join(gaps)}.")
    return sentences


def _diverged(divergences: list[DivergedEvent]) -> list[str]:
    """One sentence per cell whose loss became non-finite."""
    return [
        f"seed {d.seed} · {d.strategy} diverged at task {d.task}, step {d.step} (epoch {d.epoch}):"
        f" the loss became non-finite, so it stopped there and is left out of the metrics."
        for d in divergences
    ]


def _summary_incomplete(summary: dict[str, Any] | None, diverged: set[Cell]) -> list[str]:
    """The cells summary.json lists as incomplete, except the diverged ones (`_diverged`)."""
    said = {cell.key for cell in diverged}
    return [
        f"summary.json leaves out {cell}: {why}."
        for cell, why in section(summary, "incomplete").items()
        if cell not in said
    ]


def _ordered(first: list[Any], more: list[Any]) -> list[Any]:
    """``first`` followed by the items of ``more`` not in it, without duplicates."""
    seen: dict[Any, None] = dict.fromkeys(first)
    seen.update(dict.fromkeys(more))
    return list(seen)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
