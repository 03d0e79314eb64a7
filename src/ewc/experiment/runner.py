"""Run an experiment: every strategy on the same task stream, from the same initial weights.

`run_experiment` loads the data once, then for each seed builds the task stream and trains each
strategy's cell (`.cell`) — one after another, or in ``jobs`` worker processes — and finally
writes the accuracy matrices, ``summary.json``, ``metrics.jsonl`` and the report. A killed run is
continued with ``resume=True``: finished cells are kept, unfinished ones resume from their last
checkpoint, and a config other than the recorded one is refused.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ewc._version import __version__
from ewc.data import ImageDataset, load_dataset
from ewc.experiment.cell import CellDiverged, CellRun
from ewc.experiment.config import RunConfig
from ewc.experiment.progress import LineProgress, Progress
from ewc.experiment.storage.rundir import Cell, RunDirectory, RunDirectoryError
from ewc.experiment.strategies import BUILTIN_STRATEGIES, StrategyFactory, build_strategy
from ewc.experiment.streams.benchmarks import TaskStream, build_stream
from ewc.experiment.summary import Summary, summarize


@dataclass(frozen=True)
class RunResult:
    """What a run produced: its directory, the matrices of its finished cells, and the summary."""

    run_dir: Path
    matrices: dict[Cell, list[list[float]]]
    diverged: dict[Cell, str]
    summary: Summary


def run_experiment(
    config: RunConfig,
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    jobs: int = 1,
    strategies: Mapping[str, StrategyFactory] = BUILTIN_STRATEGIES,
    progress: Progress | None = None,
    data: ImageDataset | None = None,
    quiet: bool = False,
) -> RunResult:
    """Train every (seed, strategy) cell of ``config`` and write the run directory.

    Args:
        config: the resolved experiment config.
        run_dir: a new (or empty) directory; with ``resume``, the directory of an earlier run.
        resume: continue an interrupted run of the same config.
        jobs: worker processes; cells are independent, so they can train in parallel.
        strategies: strategy type → factory; extend `BUILTIN_STRATEGIES` to plug in new ones.
        progress: where progress goes (default: plain lines on stderr).
        data: the data set to build tasks from, instead of the one the config names (e.g. your
            own images); its fingerprint is recorded, and a resume must pass the same data.
        quiet: report no progress (``progress`` is ignored then).
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer; got {jobs!r}")
    progress = Progress() if quiet else progress or LineProgress()
    started = time.perf_counter()
    data = data if data is not None else load_data(config)
    _check_strategies(config, strategies)
    directory = _open_run_dir(config, data, run_dir, resume)
    cells = [Cell(seed, name) for seed in config.seeds for name in config.compare]
    outcomes = _run_cells(config, data, directory, cells, strategies, progress, jobs)
    matrices = {cell: rows for cell, rows in outcomes.items() if isinstance(rows, list)}
    diverged = {cell: message for cell, message in outcomes.items() if isinstance(message, str)}
    for cell, rows in matrices.items():
        directory.write_matrix(cell, rows)
    directory.assemble_metrics(cells)
    summary = summarize(config, matrices, diverged, time.perf_counter() - started)
    summary.write(directory.path / "summary.json")
    progress.close()
    return RunResult(directory.path, matrices, diverged, summary)


def load_data(config: RunConfig) -> ImageDataset:
    """The data set the benchmark draws its tasks from."""
    b = config.benchmark
    return load_dataset(b.dataset, source=b.source, data_dir=b.data_dir)


def stream_for(config: RunConfig, data: ImageDataset, seed: int) -> TaskStream:
    """The task stream of one seed (the same for every strategy of that seed)."""
    b = config.benchmark
    return build_stream(
        b.name,
        data,
        num_tasks=b.num_tasks,
        scenario=b.scenario,
        multi_head=b.multi_head,
        seed=seed,
        classes_per_task=b.classes_per_task,
        angles=None if b.angles is None else tuple(b.angles),
        train_samples=b.train_samples,
        test_samples=b.test_samples,
    )


def _check_strategies(config: RunConfig, factories: Mapping[str, StrategyFactory]) -> None:
    """Build every compared strategy once on a throw-away model, so bad settings fail first."""
    missing = [name for name in config.compare if name not in config.strategies]
    if missing:
        defined = ", ".join(repr(n) for n in config.strategies)
        raise ValueError(
            f"compare names {missing} but only {defined} are defined under [strategies]"
        )
    probe = torch.nn.Linear(1, 1)
    for name in config.compare:
        build_strategy(name, config.strategies[name], probe, factories)


def _open_run_dir(
    config: RunConfig, data: ImageDataset, run_dir: Any, resume: bool
) -> RunDirectory:
    fingerprint = data_fingerprint(data)
    if resume:
        directory = RunDirectory.open(run_dir, config.hash())
        recorded = directory.read_config().get("data", {}).get("fingerprint")
        if recorded != fingerprint:
            raise RunDirectoryError(
                f"{directory.path} was run on other data (fingerprint {str(recorded)[:12]}…, "
                f"now {fingerprint[:12]}…); resume it with the same data"
            )
        return directory
    first_stream = stream_for(config, data, config.seeds[0])
    record = {
        "config": config.to_dict(),
        "versions": {
            "ewc": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "config_hash": config.hash(),
        "data": {
            "dataset": data.name,
            "source": data.source,
            "is_subset": data.is_subset,
            "fingerprint": fingerprint,
        },
        "tasks": [task.name for task in first_stream.tasks],
        "command": " ".join(sys.argv),
    }
    return RunDirectory.create(run_dir, record)


def data_fingerprint(data: ImageDataset) -> str:
    """SHA-256 over the data set's images and labels: equal data, equal fingerprint."""
    digest = hashlib.sha256()
    for tensor in (data.train_images, data.train_labels, data.test_images, data.test_labels):
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _run_cells(
    config: RunConfig,
    data: ImageDataset,
    directory: RunDirectory,
    cells: list[Cell],
    factories: Mapping[str, StrategyFactory],
    progress: Progress,
    jobs: int,
) -> dict[Cell, list[list[float]] | str]:
    """Each cell's accuracy matrix, or the message of its divergence."""
    if jobs == 1 or len(cells) == 1:
        if config.training.threads:
            torch.set_num_threads(config.training.threads)
        streams = {seed: stream_for(config, data, seed) for seed in config.seeds}
        return {
            cell: _run_cell(config, streams[cell.seed], directory.path, cell, factories, progress)
            for cell in cells
        }
    threads = max(1, (config.training.threads or torch.get_num_threads()) // jobs)
    context = multiprocessing.get_context("spawn")
    with context.Pool(jobs, initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        arguments = [(config, data, directory.path, cell, factories) for cell in cells]
        outcomes = pool.starmap(_run_cell_in_worker, arguments)
    return dict(zip(cells, outcomes, strict=True))


def _run_cell_in_worker(
    config: RunConfig,
    data: ImageDataset,
    path: Path,
    cell: Cell,
    factories: Mapping[str, StrategyFactory],
) -> list[list[float]] | str:
    """`_run_cell` in a worker process, which builds its own stream and prints plain lines."""
    stream = stream_for(config, data, cell.seed)
    return _run_cell(config, stream, path, cell, factories, LineProgress())


def _run_cell(
    config: RunConfig,
    stream: TaskStream,
    path: Path,
    cell: Cell,
    factories: Mapping[str, StrategyFactory],
    progress: Progress,
) -> list[list[float]] | str:
    """Train one cell; the divergence message instead of a matrix if it diverged (now or before)."""
    directory = RunDirectory(path)
    marker = directory.cell_dir(cell) / "diverged.json"
    if marker.exists():
        return json.loads(marker.read_text(encoding="utf-8"))["message"]
    try:
        return CellRun(config, stream, directory, cell, factories, progress).run()
    except CellDiverged as error:
        return str(error)
