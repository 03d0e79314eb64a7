"""Run an experiment: every strategy on the same task stream, from the same initial weights.

`run_experiment` loads the data once, then for each seed builds the task stream and trains each
strategy's cell (`.cell`) — one after another, or in ``jobs`` worker processes — and finally
writes the accuracy matrices, ``summary.json``, ``metrics.jsonl`` and the report. A killed run is
continued with ``resume=True``: finished cells are kept, unfinished ones resume from their last
checkpoint, and a config other than the recorded one is refused.
"""

from __future__ import annotations

import hashlib
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
from ewc.experiment import environment
from ewc.experiment.cell import run_cell
from ewc.experiment.config import (
    ConfigError,
    RunConfig,
    config_differences,
    fill_stream_defaults,
    from_dict,
)
from ewc.experiment.distributed import run_team_cell
from ewc.experiment.factories import FactoryError
from ewc.experiment.model_factory import build_factory_model
from ewc.experiment.outcome import CellOutcome
from ewc.experiment.progress import LineProgress, Progress, make_progress
from ewc.experiment.storage.rundir import Cell, RunDirectory, RunDirectoryError
from ewc.experiment.strategies import BUILTIN_STRATEGIES, StrategyFactory, build_strategy
from ewc.experiment.streams.benchmarks import DEFAULTS, TaskStream, build_stream
from ewc.experiment.streams.factory import CustomTasks, stream_fingerprint
from ewc.experiment.streams.protocol import order_classes, pad_images
from ewc.experiment.summary import Summary, summarize
from ewc.experiment.team import ALONE, Team, open_on_main
from ewc.experiment.tensorboard import export_run, require_writer


@dataclass(frozen=True)
class RunResult:
    """What a run produced: its directory, each cell's outcome, and the summary."""

    run_dir: Path
    outcomes: tuple[CellOutcome, ...]
    summary: Summary

    @property
    def matrices(self) -> dict[Cell, list[list[float]]]:
        """The accuracy matrix of every cell that trained every task."""
        return {o.cell: o.rows for o in self.outcomes if o.rows is not None}

    @property
    def diverged(self) -> dict[Cell, str]:
        """Where and why each diverged cell stopped (``task t, epoch e, step s: ...``)."""
        return {o.cell: str(o.divergence) for o in self.outcomes if o.divergence is not None}


def run_experiment(
    config: RunConfig,
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    jobs: int = 1,
    strategies: Mapping[str, StrategyFactory] = BUILTIN_STRATEGIES,
    progress: Progress | None = None,
    data: ImageDataset | CustomTasks | None = None,
    quiet: bool = False,
) -> RunResult:
    """Train every (seed, strategy) cell of ``config`` and write the run directory.

    Args:
        config: the resolved experiment config.
        run_dir: a new (or empty) directory; with ``resume``, the directory of an earlier run.
        resume: continue an interrupted run of the same config.
        jobs: worker processes; cells are independent, so they can train in parallel.
        strategies: strategy type → factory; extend `BUILTIN_STRATEGIES` to plug in new ones.
        progress: where progress goes (default: `make_progress` on stderr: a bar on a terminal,
            plain lines otherwise).
        data: the data set to build tasks from, instead of the one the config names (e.g. your
            own images); its fingerprint is recorded, and a resume must pass the same data.
        quiet: without ``progress``, print only notes (warnings, divergences) and how the run
            was started; worker processes follow it too.

    Inside an initialised process group of several ranks (``torchrun ... -m ewc run``), all
    ranks train each cell together with DistributedDataParallel (`ewc.experiment.distributed`);
    rank 0 alone reports progress and writes the run directory.

    Raises:
        ValueError: a bad ``jobs`` or strategy setting (nothing is created on disk then).
        RunDirectoryError: ``run_dir`` cannot be used as asked.
    """
    _check_jobs(jobs)
    team = Team.current()
    if team.size > 1 and jobs > 1:
        raise ValueError(
            f"jobs={jobs} and {team.size} distributed ranks exclude each other: use one"
        )
    if config.output.tensorboard:
        require_writer()
    progress = (progress or make_progress(quiet=quiet)) if team.is_main else Progress()
    started = time.perf_counter()
    data = data if data is not None else load_data(config)
    _check_strategies(config, strategies)
    _check_model(config, data)
    cells = [Cell(seed, name) for seed in config.seeds for name in config.compare]
    where = environment.describe(_cell_threads(config, jobs, len(cells)), config.training.device)
    directory = open_on_main(
        team, lambda: _open_run_dir(config, data, run_dir, resume, progress, where)
    )
    try:  # the directory's lock is held (on the main rank) until the results are written
        outcomes = _run_cells(
            config, data, directory, cells, strategies, progress, jobs, quiet, team
        )
        if team.is_main:
            _write_results(config, directory, cells, outcomes)
        b = config.benchmark
        wall_time = time.perf_counter() - started
        summary = summarize(
            b.scenario or "", b.name, outcomes, wall_time, resumed=resume, environment=where
        )
        if team.is_main:
            summary.write(directory.summary_path)
    finally:
        directory.release()
    progress.close()
    return RunResult(directory.path, tuple(outcomes), summary)


def _write_results(
    config: RunConfig, directory: RunDirectory, cells: list[Cell], outcomes: list[CellOutcome]
) -> None:
    """Write the accuracy matrices and the assembled metrics (and TensorBoard's missing cells)."""
    for outcome in outcomes:
        if outcome.rows is not None:
            directory.write_matrix(outcome.cell, outcome.rows)
    directory.assemble_metrics(cells)
    if config.output.tensorboard:
        export_run(directory, cells, missing_only=True)  # cells that did not train now


def load_data(config: RunConfig) -> ImageDataset | CustomTasks:
    """The data set the benchmark draws its tasks from (your own tasks: their factory)."""
    b = config.benchmark
    if b.factory is not None:
        return CustomTasks(b.factory)
    return load_dataset(b.dataset, source=b.source, data_dir=b.data_dir)


def stream_for(config: RunConfig, data: ImageDataset | CustomTasks, seed: int) -> TaskStream:
    """The task stream of one seed (the same for every strategy of that seed)."""
    b = config.benchmark
    if isinstance(data, CustomTasks):
        return data.stream(
            seed=seed,
            scenario=b.scenario or DEFAULTS[b.name].scenario,
            multi_head=bool(b.multi_head),
            num_tasks=b.num_tasks,
            train_samples=b.train_samples,
            test_samples=b.test_samples,
        )
    return build_stream(
        b.name,
        pad_images(order_classes(data, b.class_order.value, seed), b.pad),
        num_tasks=b.num_tasks,
        scenario=b.scenario,
        multi_head=b.multi_head,
        seed=seed,
        classes_per_task=b.classes_per_task,
        angles=None if b.angles is None else tuple(b.angles),
        train_samples=b.train_samples,
        test_samples=b.test_samples,
        normalize=None if b.normalize is None else tuple(b.normalize),
    )


def _check_strategies(config: RunConfig, factories: Mapping[str, StrategyFactory]) -> None:
    """Build every defined strategy once on a throw-away model, so bad settings fail first.

    The strategies not compared are built too: a misspelt name (``strategies.onlinewc.strength``)
    would otherwise sit in config.json unused while the run trains the unchanged one.
    """
    missing = [name for name in config.compare if name not in config.strategies]
    if missing:
        defined = ", ".join(repr(n) for n in config.strategies)
        raise ValueError(
            f"compare names {missing} but only {defined} are defined under [strategies]"
        )
    probe = torch.nn.Linear(1, 1)
    for name in config.strategies:
        build_strategy(name, config.strategies[name], probe, factories)


def _check_model(config: RunConfig, data: ImageDataset | CustomTasks) -> None:
    """Check the model before the run: your own (``model.factory``) is built once.

    A built-in model on your own tasks needs float32 inputs.

    Raises:
        ConfigError: a built-in model, and your tasks' inputs are not float32 (token ids, float64).
    """
    if config.model.factory is not None:
        seed = config.seeds[0]
        build_factory_model(config.model.factory, stream_for(config, data, seed), seed)
    elif isinstance(data, CustomTasks):
        inputs = stream_for(config, data, config.seeds[0]).tasks[0].train_inputs
        if inputs.dtype != torch.float32:
            raise ConfigError(
                f"your tasks' inputs (benchmark.factory) are {inputs.dtype}, but the built-in "
                f"model.name = {config.model.name.value!r} reads float32: convert them in the "
                "factory, or give your own model.factory (docs/own-model.md)"
            )


def _check_jobs(jobs: int) -> None:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer; got {jobs!r}")


def _open_run_dir(
    config: RunConfig,
    data: ImageDataset | CustomTasks,
    run_dir: Any,
    resume: bool,
    progress: Progress,
    where: dict[str, Any],
) -> RunDirectory:
    """The run directory: opened for a resume, else created with the run's record.

    A resume in another floating-point environment (code, torch, CPU, device) goes on, but
    says so: its remaining steps will not repeat the bits of the first process.
    """
    seeds = _seed_fingerprints(config, data)  # your own tasks: each seed's, as built now
    fingerprint = seeds[str(config.seeds[0])] if seeds else data_fingerprint(data)
    unstarted = RunDirectory(run_dir).is_unstarted()
    if unstarted and (resume or any(Path(run_dir).iterdir())):  # not a fresh empty folder
        progress.announce(
            f"{run_dir} holds no complete config.json: the run that made it was stopped before "
            "it started, so this run starts it afresh"
            + (" (there is nothing to resume)" if resume else "")
        )
    if resume and not unstarted:
        directory = RunDirectory.open(run_dir, lock=True)
        try:
            _check_same_run(directory, config, fingerprint)
        except BaseException:
            directory.release()
            raise
        changed = environment.differences(directory.read_config().get("environment", {}), where)
        if changed:
            progress.announce(
                f"{run_dir} is resumed in another environment than it started in ("
                + "; ".join(changed)
                + "): the steps from here on will not repeat the first process's bits"
            )
        return directory
    record = _config_record(config, data, fingerprint, where)
    if seeds:
        record["data"]["seed_fingerprints"] = seeds
    return RunDirectory.create(run_dir, record)


def _check_same_run(directory: RunDirectory, config: RunConfig, fingerprint: str) -> None:
    """Refuse to resume a run of another config or other data, naming what differs."""
    header = directory.read_config()
    recorded_hash = str(header.get("config_hash"))
    if recorded_hash != config.hash():
        raise RunDirectoryError(
            f"{directory.path} was run with another config (hash {recorded_hash[:12]}…, this "
            f"one {config.hash()[:12]}…{_differences(header['config'], config)}); resume it with "
            "the same config, or start a new run"
        )
    data = header.get("data")
    recorded = data.get("fingerprint") if isinstance(data, dict) else None
    if recorded != fingerprint:
        raise RunDirectoryError(
            f"{directory.path} was run on other data (fingerprint {str(recorded)[:12]}…, "
            f"now {fingerprint[:12]}…); resume it with the same data"
        )


def _differences(recorded: Mapping[str, Any], config: RunConfig) -> str:
    """``; differs: training.lr 0.001 → 0.01, …`` (at most six keys), or nothing if unknown."""
    try:
        keys = config_differences(fill_stream_defaults(from_dict(recorded)), config)
    except ValueError:  # a config this version cannot read: the hashes alone must do
        return ""
    more = f" and {len(keys) - 6} more" if len(keys) > 6 else ""
    return "; differs: " + ", ".join(keys[:6]) + more if keys else ""


def _config_record(
    config: RunConfig, data: ImageDataset | CustomTasks, fingerprint: str, where: dict[str, Any]
) -> dict[str, Any]:
    """The content of config.json: config, versions, environment, hash, data, task names."""
    first_stream = stream_for(config, data, config.seeds[0])
    return {
        "config": config.to_dict(),
        "versions": {
            "ewc": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "environment": where,
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


def _seed_fingerprints(config: RunConfig, data: ImageDataset | CustomTasks) -> dict[str, str]:
    """Your own tasks: ``{seed: SHA-256 of its stream}``; empty for the image data sets.

    A factory is your code, and nothing but these makes sure that it returns the same tasks
    for a seed in every process that builds them (worker processes, a resume).
    """
    if not isinstance(data, CustomTasks):
        return {}
    return {str(s): stream_fingerprint(stream_for(config, data, s)) for s in config.seeds}


def checked_stream(
    config: RunConfig, data: ImageDataset | CustomTasks, seed: int, directory: RunDirectory
) -> TaskStream:
    """The task stream of ``seed``; for your own tasks, the one the run recorded for it.

    Raises:
        FactoryError: ``benchmark.factory`` returned other tasks for this seed than when the run
            directory was created (a factory that is not deterministic, or was changed).
    """
    stream = stream_for(config, data, seed)
    if isinstance(data, CustomTasks):
        recorded = directory.read_config().get("data", {}).get("seed_fingerprints", {})
        expected = recorded.get(str(seed)) if isinstance(recorded, dict) else None
        built = None if expected is None else stream_fingerprint(stream)
        if built is not None and built != expected:
            raise FactoryError(
                f"benchmark.factory returned other tasks for seed {seed} than when "
                f"{directory.path} was created (SHA-256 {built[:12]}…, "
                f"recorded {expected[:12]}…): a factory must return the same tasks for the same "
                "seed in every process (seed its random draws with the seed it is given)"
            )
    return stream


def data_fingerprint(data: ImageDataset) -> str:
    """SHA-256 over the data set's images and labels: equal data, equal fingerprint."""
    digest = hashlib.sha256()
    for tensor in (data.train_images, data.train_labels, data.test_images, data.test_labels):
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _run_cells(
    config: RunConfig,
    data: ImageDataset | CustomTasks,
    directory: RunDirectory,
    cells: list[Cell],
    factories: Mapping[str, StrategyFactory],
    progress: Progress,
    jobs: int,
    quiet: bool,
    team: Team = ALONE,
) -> list[CellOutcome]:
    """Each cell's outcome, in the order of ``cells``: here, or in ``jobs`` worker processes.

    With a team of several ranks, every rank trains every cell together with the others.
    """
    if jobs == 1 or len(cells) == 1:
        if config.training.threads:
            torch.set_num_threads(config.training.threads)
        streams = {seed: checked_stream(config, data, seed, directory) for seed in config.seeds}
        if team.size > 1:
            return [
                run_team_cell(team, config, streams[c.seed], directory, c, factories, progress)
                for c in cells
            ]
        return [
            run_cell(config, streams[cell.seed], directory, cell, factories, progress)
            for cell in cells
        ]
    threads = _cell_threads(config, jobs, len(cells))
    context = multiprocessing.get_context("spawn")
    with context.Pool(jobs, initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        arguments = [(config, data, directory.path, cell, factories, quiet) for cell in cells]
        return pool.starmap(_run_cell_in_worker, arguments)


def _cell_threads(config: RunConfig, jobs: int, cells: int) -> int:
    """The torch threads of each cell: training.threads (or torch's count), ÷ worker processes.

    One cell, or one job, trains in this process with the whole count.
    """
    threads = config.training.threads or torch.get_num_threads()
    return threads if jobs == 1 or cells == 1 else max(1, threads // jobs)


def _run_cell_in_worker(
    config: RunConfig,
    data: ImageDataset | CustomTasks,
    path: Path,
    cell: Cell,
    factories: Mapping[str, StrategyFactory],
    quiet: bool,
) -> CellOutcome:
    """`run_cell` in a worker process, which builds its own stream and prints plain lines."""
    stream = checked_stream(config, data, cell.seed, RunDirectory(path))
    return run_cell(config, stream, RunDirectory(path), cell, factories, LineProgress(quiet=quiet))
