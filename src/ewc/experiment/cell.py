"""Training one (seed, strategy) cell of a run through every task, with checkpoints and resume.

A cell starts from the run's initial weights for its seed, trains task 1, 2, …, T in order,
evaluates on every task every ``eval_every`` steps (the curves, on a fixed subset of at most
``eval_samples`` test samples per task) and after each task (one row of the accuracy matrix R,
whose row 0 is the untrained model, always on the full test sets), and lets its strategy
consolidate after each task. It checkpoints after every task and every ``checkpoint_every``
steps: model, optimizer, learning-rate schedule, strategy state, random generator states, the
position in the data and the results so far, so a resumed cell continues bitwise as if it had
never stopped (CPU, same thread count). A non-finite loss stops the cell at that step
(`Divergence`); the other cells go on.

The parts, each with one job: `CellState` (what a checkpoint holds), `Evaluator` (accuracy on
every task, `ewc.experiment.evaluation`), `CellLog` (events and progress), `CheckpointPolicy`
(when and what to save, and the restore), and the loop itself, `run_cell` and the functions
below it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from ewc._atomic import write_json_atomic
from ewc._batches import Batch, OutputFn
from ewc.experiment.config import Optimizer, RunConfig
from ewc.experiment.evaluation import Evaluator
from ewc.experiment.model_factory import build_factory_model
from ewc.experiment.models import build_model
from ewc.experiment.outcome import CellOutcome, CellTimings, Divergence
from ewc.experiment.progress import Progress
from ewc.experiment.schedules import task_lr_scheduler
from ewc.experiment.storage.checkpoint import CheckpointStore
from ewc.experiment.storage.digest import model_fingerprint
from ewc.experiment.storage.events import (
    DivergedEvent,
    EvalEvent,
    EventLog,
    NoteEvent,
    TaskEndEvent,
    TrainEvent,
)
from ewc.experiment.storage.rundir import Cell, RunDirectory, RunDirectoryError
from ewc.experiment.strategies import Strategy, StrategyFactory, TaskContext, build_strategy
from ewc.experiment.streams.benchmarks import TaskStream, TensorBatches
from ewc.experiment.tensorboard import open_event_log
from ewc.training import NonFiniteLossError, StepLoss, train_step


@dataclass
class Position:
    """Where a cell is: the next batch to train, and what it has measured so far."""

    task: int = 0  # 0-based task in training; equals the number of tasks when the cell is done
    epoch: int = 0
    batch: int = 0  # next batch of the epoch
    step: int = 0  # optimizer steps since the cell started
    rows: list[list[float]] = field(default_factory=list)  # accuracy matrix rows so far
    loss_sum: float = 0.0  # since the last train event
    penalty_sum: float = 0.0
    losses: int = 0
    # Wall time (s) spent so far in training steps, in the strategy's consolidation after each
    # task (the Fisher, for EWC) and in evaluation; saved with checkpoints, so a resumed cell
    # keeps counting (the time since its last checkpoint is lost with the killed process).
    train_s: float = 0.0
    fisher_s: float = 0.0
    eval_s: float = 0.0


@dataclass
class CellState:
    """Everything that changes while a cell trains, and what a checkpoint saves of it.

    ``scheduler`` is the current task's learning-rate schedule (None between tasks);
    ``scheduler_state`` is a restored schedule waiting for its task to resume.
    """

    model: nn.Module
    strategy: Strategy
    optimizer: torch.optim.Optimizer
    data_generator: torch.Generator
    strategy_generator: torch.Generator
    epoch_generator_state: torch.Tensor
    position: Position = field(default_factory=Position)
    scheduler: LRScheduler | None = None
    scheduler_state: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The training state as a checkpoint tree (`ewc.experiment.storage.checkpoint`)."""
        return {
            "position": asdict(self.position),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "strategy": self.strategy.state_dict(),
            "rng": {
                "epoch_data": self.epoch_generator_state,
                "strategy": self.strategy_generator.get_state(),
                "torch": torch.get_rng_state(),
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict`'s tree; one without a schedule (older runs) derives it."""
        self.position = Position(**state["position"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler_state = state.get("scheduler")
        self.strategy.load_state_dict(state["strategy"])
        self.data_generator.set_state(state["rng"]["epoch_data"])
        self.epoch_generator_state = state["rng"]["epoch_data"]
        self.strategy_generator.set_state(state["rng"]["strategy"])
        torch.set_rng_state(state["rng"]["torch"])


class CellLog:
    """A cell's events: appended to its event log (`.storage.events`) and shown as progress."""

    def __init__(self, log: EventLog, cell: Cell, progress: Progress):
        """Write ``cell``'s events to ``log`` and tell ``progress``."""
        self.log, self.cell, self.progress = log, cell, progress

    def task_end(self, step: int, task: int, row: list[float]) -> None:
        """Row ``task`` of R (0: the untrained model)."""
        self.log.append(TaskEndEvent(self.cell.seed, self.cell.strategy, step, task, tuple(row)))
        if task:
            self.progress.task_done(self.cell, task - 1, row)

    def evaluation(self, step: int, task: int, row: list[float], subset: int | None) -> None:
        """An evaluation while training ``task`` (1-based), on ``subset`` samples per task."""
        seed, strategy = self.cell.seed, self.cell.strategy
        self.log.append(EvalEvent(seed, strategy, step, task, tuple(row), subset))
        self.progress.evaluated(self.cell, task - 1, row)

    def training(self, position: Position) -> None:
        """The mean loss and penalty since the last call, if any step was taken since."""
        if position.losses:
            loss = position.loss_sum / position.losses
            penalty = position.penalty_sum / position.losses
            seed, strategy = self.cell.seed, self.cell.strategy
            self.log.append(
                TrainEvent(seed, strategy, position.step, position.task + 1, loss, penalty)
            )
        position.loss_sum, position.penalty_sum, position.losses = 0.0, 0.0, 0

    def note(self, step: int, message: str) -> None:
        """A message for the user."""
        self.log.append(NoteEvent(self.cell.seed, self.cell.strategy, step, message))
        self.progress.note(self.cell, message)

    def diverged(self, divergence: Divergence) -> None:
        """The cell stops: its loss became non-finite (a note for readers, and the typed event)."""
        self.note(divergence.step, f"diverged: {divergence}")
        seed, strategy = self.cell.seed, self.cell.strategy
        d = divergence
        self.log.append(DivergedEvent(seed, strategy, d.step, d.task, d.epoch, d.message))


class CheckpointPolicy:
    """When a cell checkpoints (every ``every`` steps and after each task) and how it restores.

    A checkpoint records, besides the training state, the fingerprint of the cell's initial model
    and the thread count it trained with; a restore refuses a checkpoint of another model and
    trains on with the recorded thread count (summation order, and so the last bits of every
    result, depends on it), so that a resumed cell ends where an uninterrupted one would.
    """

    def __init__(self, store: CheckpointStore, every: int, config_hash: str, cell: Cell):
        """Save into ``store``; ``every`` = 0 saves only after tasks."""
        self.store, self.every, self.config_hash, self.cell = store, every, config_hash, cell
        self.model_fingerprint: str | None = None  # the initial model's, set by `start`
        self.threads_changed: tuple[int, int] | None = None  # (had, recorded) after a restore

    def start(self, initial_model: nn.Module) -> None:
        """Fingerprint the cell's initial model (before any training or restore)."""
        self.model_fingerprint = model_fingerprint(initial_model)

    def due(self, step: int) -> bool:
        """Whether step ``step`` (1-based count) ends with a checkpoint."""
        return bool(self.every) and step % self.every == 0

    def save(self, state: CellState, log: EventLog) -> None:
        """Checkpoint ``state`` with the event log's length (what a resume cuts it back to).

        Training goes on while the checkpoint is written (`CheckpointStore.save_in_background`):
        the state is copied now, and the writer makes the log durable up to that length before
        it writes the checkpoint, so a checkpoint never counts events that could be lost.
        """
        tree = {
            "config_hash": self.config_hash,
            "cell": asdict(self.cell),
            "events_length": log.length(),
            "model_fingerprint": self.model_fingerprint,
            "threads": torch.get_num_threads(),
            **state.state_dict(),
        }
        self.store.save_in_background(tree, state.position.step, before=log.sync)

    def restore(self, state: CellState, log: EventLog) -> bool:
        """Load the newest readable checkpoint into ``state``; False if there is none.

        Raises:
            RunDirectoryError: the checkpoint belongs to another config or another model, or the
                event log is shorter than the checkpoint recorded.
        """
        latest = self.store.load_latest()
        if latest is None:
            return False
        self._apply(*latest, state, log)
        return True

    def _apply(self, step: int, tree: Mapping[str, Any], state: CellState, log: Any) -> None:
        """Check checkpoint ``step``'s ``tree`` against this cell, load it, cut ``log`` back.

        ``log`` is None where another process writes the events (a distributed cell's ranks).
        """
        where = f"checkpoint {self.store.path(step)} of cell {self.cell.key}"
        if tree["config_hash"] != self.config_hash:
            raise RunDirectoryError(f"{where} belongs to another config")
        recorded = tree.get("model_fingerprint")  # absent in checkpoints of earlier versions
        if recorded is not None and recorded != self.model_fingerprint:
            raise RunDirectoryError(
                f"{where} was trained from another model: the model built now from the config, "
                "the seed and the model code (its layers or its initial weights) is not the one "
                "recorded; resume with the same model code, or start a new run"
            )
        if log is not None and log.length() < tree["events_length"]:
            raise RunDirectoryError(
                f"{log.path} holds {log.length()} bytes but {where} recorded "
                f"{tree['events_length']}: the event log was cut or removed after the checkpoint; "
                f"put it back, or delete {self.store.path(step).parent.parent} to train this cell "
                "again from the start"
            )
        try:
            state.load_state_dict(tree)
        except (RuntimeError, KeyError, ValueError) as error:
            text = " ".join(str(error).split()) or repr(error)
            short = text if len(text) <= 300 else text[:299] + "…"
            raise RunDirectoryError(f"{where} does not fit the model built now: {short}") from error
        if log is not None:
            log.truncate(tree["events_length"])
        self._keep_threads(tree.get("threads"))

    def _keep_threads(self, recorded: Any) -> None:
        """Train on with the checkpoint's thread count, if it recorded one and it differs."""
        had = torch.get_num_threads()
        if isinstance(recorded, int) and recorded >= 1 and recorded != had:
            torch.set_num_threads(recorded)
            self.threads_changed = (had, recorded)


class _Parts(NamedTuple):
    """What the loop functions share: read-only settings and the parts they call."""

    config: RunConfig
    stream: TaskStream
    state: CellState
    evaluate: Evaluator
    log: CellLog
    checkpoints: CheckpointPolicy
    progress: Progress
    step: Callable[..., StepLoss] | None = None  # None: train_step; DDP's own (.distributed)


def run_cell(
    config: RunConfig,
    stream: TaskStream,
    run_dir: RunDirectory,
    cell: Cell,
    factories: Mapping[str, StrategyFactory],
    progress: Progress,
) -> CellOutcome:
    """Train (or finish training, or read the result of) one cell; return its outcome.

    A cell that diverged before (its ``diverged.json``) is not trained again.
    """
    marker = run_dir.diverged_path(cell)
    if marker.exists():
        record = json.loads(marker.read_text(encoding="utf-8"))
        return CellOutcome(cell, divergence=Divergence.from_json(record))
    state = _initial_state(config, stream, cell, factories)
    events = open_event_log(run_dir, cell, tensorboard=config.output.tensorboard)
    store = CheckpointStore(run_dir.checkpoint_dir(cell), keep=2)
    checkpoints = CheckpointPolicy(store, config.checkpoint_every, config.hash(), cell)
    checkpoints.start(state.model)
    training = config.training
    evaluator = Evaluator(
        stream,
        training.eval_batch_size,
        subset=training.eval_samples or None,
        seed=derived_seed(cell.seed, "evaluation subset"),
    )
    log = CellLog(events, cell, progress)
    parts = _Parts(config, stream, state, evaluator, log, checkpoints, progress)
    outcome = _train_cell_and_close(parts, store, events)
    if outcome.divergence is not None:
        write_json_atomic(marker, outcome.divergence.to_json())
    return outcome


def _train_cell_and_close(parts: _Parts, store: CheckpointStore, events: EventLog) -> CellOutcome:
    """`_train_cell`, then the store and log closed and the caller's thread count back.

    That happens also on an error (a restore may pin the checkpoint's thread count for the
    cell); the last checkpoint is on disk, or its writer's error raised, before the outcome
    returns. ``events`` is the cell's log, or any object with its methods (a rank that writes
    nothing).
    """
    threads = torch.get_num_threads()
    try:
        outcome = _train_cell(parts)
        store.wait()
    finally:
        try:
            store.close()
        finally:
            events.close()
            torch.set_num_threads(threads)
    return outcome


def _train_cell(parts: _Parts) -> CellOutcome:
    """The loop over tasks, from the start or from the newest checkpoint."""
    state, cell, events = parts.state, parts.log.cell, parts.log.log
    if not parts.checkpoints.restore(state, events):
        events.truncate(0)
        state.position.rows.append(_evaluate(parts))
        parts.log.task_end(0, 0, state.position.rows[0])
        parts.checkpoints.save(state, parts.log.log)
    elif parts.checkpoints.threads_changed is not None:
        had, recorded = parts.checkpoints.threads_changed
        parts.log.note(
            state.position.step,
            f"resumed with {recorded} threads, as the checkpoint recorded (this process had "
            f"{had}): the sums of every step then run in the same order as before the stop",
        )
    parts.progress.cell_started(cell, parts.stream.num_tasks)
    while state.position.task < parts.stream.num_tasks:
        try:
            _train_task(parts)
        except NonFiniteLossError as error:
            position = state.position
            divergence = Divergence(
                position.task + 1, position.epoch + 1, position.step + 1, str(error)
            )
            parts.log.diverged(divergence)
            return CellOutcome(cell, divergence=divergence)
        _finish_task(parts)
    return CellOutcome(cell, rows=state.position.rows, timings=_timings(state.position))


def _train_task(parts: _Parts) -> None:
    """Train the current task's remaining steps: whole epochs, or ``training.steps`` steps."""
    state, training, position = parts.state, parts.config.training, parts.state.position
    batches = _batches(parts, position.task, training.batch_size, state.data_generator)
    budget = task_budget(training.epochs, training.steps, batches, training.drop_last)
    state.scheduler = scheduler = task_lr_scheduler(
        state.optimizer,
        training.lr_schedule,
        training.lr,
        budget.steps,
        warmup_steps=training.warmup_steps,
        start=position.epoch * budget.per_epoch + position.batch,
        state=state.scheduler_state,
    )
    state.scheduler_state = None
    parts.progress.task_started(parts.log.cell, position.task, budget.steps, scheduler.last_epoch)
    state.model.train()
    device = next(state.model.parameters()).device
    while position.epoch < budget.epochs:
        state.epoch_generator_state = state.data_generator.get_state()
        for index, (inputs, targets) in enumerate(batches):
            if index >= budget.batches_in(position.epoch):
                break
            if index >= position.batch:
                batch = Batch(index, inputs.to(device), targets.to(device))
                _step(parts, scheduler, batch, budget.per_epoch)
        position.epoch, position.batch = position.epoch + 1, 0


def _step(parts: _Parts, scheduler: LRScheduler, batch: Batch, num_batches: int) -> None:
    """One optimizer step, then the evaluation and checkpoint it is due for."""
    state, training = parts.state, parts.config.training
    position = state.position
    started = time.perf_counter()
    loss = (parts.step or train_step)(
        state.model,
        batch,
        state.optimizer,
        penalty=state.strategy.penalty(),
        output_fn=_training_outputs(parts, position.task),
    )
    scheduler.step()
    position.train_s += time.perf_counter() - started
    position.step, position.batch = position.step + 1, batch.index + 1
    position.loss_sum += loss.total
    position.penalty_sum += loss.penalty or 0.0
    position.losses += 1
    parts.progress.step(
        parts.log.cell, position.task, position.epoch, batch.index, num_batches, loss.total
    )
    if training.eval_every and position.step % training.eval_every == 0:
        parts.log.training(position)
        row = _evaluate(parts, curve=True)
        parts.log.evaluation(position.step, position.task + 1, row, parts.evaluate.subset)
    if parts.checkpoints.due(position.step):
        parts.checkpoints.save(state, parts.log.log)


def _finish_task(parts: _Parts) -> None:
    """Evaluate (a row of R), let the strategy consolidate, move to the next task, checkpoint."""
    state, config = parts.state, parts.config
    task, position = state.position.task, state.position
    parts.log.training(position)
    row = _evaluate(parts)
    position.rows.append(row)
    parts.log.task_end(position.step, task + 1, row)
    started = time.perf_counter()
    notes = state.strategy.after_task(_context(parts, task))
    position.fisher_s += time.perf_counter() - started
    for note in notes:
        parts.log.note(position.step, note)
    position.task, position.epoch, position.batch = task + 1, 0, 0
    state.epoch_generator_state = state.data_generator.get_state()  # the next epoch starts here
    state.scheduler = None  # the next task starts its own schedule
    if config.training.reset_optimizer:
        state.optimizer = _optimizer(config, state.model)
    parts.checkpoints.save(state, parts.log.log)


def _evaluate(parts: _Parts, curve: bool = False) -> list[float]:
    """The accuracy on every task now (a curve point: on the subsets), timed into ``eval_s``."""
    started = time.perf_counter()
    model = parts.state.model
    row = parts.evaluate.curve(model) if curve else parts.evaluate(model)
    parts.state.position.eval_s += time.perf_counter() - started
    return row


def _timings(position: Position) -> CellTimings:
    return CellTimings(position.train_s, position.fisher_s, position.eval_s)


class TaskBudget(NamedTuple):
    """How many steps a task trains, in how many passes over its data.

    ``per_epoch`` batches make one pass (without the last, smaller one under ``drop_last``);
    ``epochs`` passes are started, the last of them possibly cut short at ``steps``.
    """

    steps: int
    per_epoch: int
    epochs: int

    def batches_in(self, epoch: int) -> int:
        """The number of batches trained in 0-based pass ``epoch``."""
        return min(self.per_epoch, self.steps - epoch * self.per_epoch)


def task_budget(
    epochs: int, steps: int | None, batches: TensorBatches, drop_last: bool = False
) -> TaskBudget:
    """The task's `TaskBudget`: ``steps`` optimizer steps if set, else ``epochs`` whole passes.

    Raises:
        ValueError: ``drop_last`` leaves no batch (fewer samples than one batch).
    """
    per_epoch = batches.num_samples // batches.batch_size if drop_last else len(batches)
    if per_epoch == 0:
        raise ValueError(
            f"training.drop_last = true leaves no batch: the task has {batches.num_samples} "
            f"training samples, fewer than training.batch_size = {batches.batch_size}; "
            "use a smaller batch or drop_last = false"
        )
    total = epochs * per_epoch if steps is None else steps
    return TaskBudget(total, per_epoch, -(-total // per_epoch))


def _training_outputs(parts: _Parts, task: int) -> OutputFn | None:
    """The logits that training and the strategies see on ``task`` (``benchmark.train_outputs``)."""
    return parts.stream.training_output_fn(task, parts.config.benchmark.train_outputs)


def _context(parts: _Parts, task: int) -> TaskContext:
    """What a strategy sees after ``task``: the model, the task's data, its own generator."""
    state, training = parts.state, parts.config.training
    return TaskContext(
        model=state.model,
        task=task,
        train_batches=_batches(parts, task, training.eval_batch_size, state.strategy_generator),
        batches=functools.partial(_batches, parts, task, generator=state.strategy_generator),
        output_fn=_training_outputs(parts, task),
        generator=state.strategy_generator,
        optimizer=training.optimizer,
        lr=training.lr,
    )


def _batches(parts: _Parts, task: int, size: int, generator: torch.Generator) -> TensorBatches:
    """``task``'s training set in shuffled batches drawn with ``generator``."""
    data = parts.stream.tasks[task]
    return TensorBatches(
        data.train_images,
        data.train_targets,
        batch_size=size,
        shuffle=True,
        generator=generator,
        transform=data.transform,
    )


def _initial_state(
    config: RunConfig, stream: TaskStream, cell: Cell, factories: Mapping[str, StrategyFactory]
) -> CellState:
    """The cell's state before training: the seed's initial weights and fresh generators."""
    model = _initial_model(config, stream, cell.seed)
    strategy = build_strategy(cell.strategy, config.strategies[cell.strategy], model, factories)
    data_generator = torch.Generator().manual_seed(derived_seed(cell.seed, "data order"))
    return CellState(
        model=model,
        strategy=strategy,
        optimizer=_optimizer(config, model),
        data_generator=data_generator,
        strategy_generator=torch.Generator().manual_seed(derived_seed(cell.seed, "strategy")),
        epoch_generator_state=data_generator.get_state(),
    )


def derived_seed(seed: int, purpose: str) -> int:
    """A seed for one purpose of a run seed (SHA-256 of ``"<seed>:<purpose>"``).

    Generators of different purposes never share a stream: seed 0's "strategy" stream is not
    seed 1's "data order" stream.
    """
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _initial_model(config: RunConfig, stream: TaskStream, seed: int) -> nn.Module:
    """The seed's initial weights, on the configured device: the same for every strategy."""
    if config.model.factory is not None:  # your own network (ewc.experiment.model_factory)
        model = build_factory_model(config.model.factory, stream, seed)
    else:
        model = build_model(
            config.model.name,
            num_outputs=stream.num_outputs,
            heads=stream.heads,
            hidden=tuple(config.model.hidden),
            input_shape=tuple(stream.tasks[0].train_inputs.shape[1:]),
            seed=seed,
        )
    return model.to(torch.device(config.training.device))


_OPTIMIZERS = {Optimizer.ADAM: torch.optim.Adam, Optimizer.SGD: torch.optim.SGD}


def _optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer over the model's parameters."""
    training = config.training
    return _OPTIMIZERS[Optimizer.parse(training.optimizer)](model.parameters(), lr=training.lr)
