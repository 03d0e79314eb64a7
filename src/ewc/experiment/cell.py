"""Training one (seed, strategy) cell of a run through every task, with checkpoints and resume.

A cell starts from the run's initial weights for its seed, trains task 1, 2, …, T in order,
evaluates on every task every ``eval_every`` steps (the curves) and after each task (one row of the
accuracy matrix R, whose row 0 is the untrained model), and lets its strategy consolidate after
each task. It checkpoints after every task and every ``checkpoint_every`` steps: model, optimizer,
strategy state, random generator states, the position in the data and the results so far, so a
resumed cell continues bitwise as if it had never stopped (CPU, same thread count).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ewc._batches import Batch
from ewc.experiment.config import Optimizer, RunConfig
from ewc.experiment.models import build_model
from ewc.experiment.progress import Progress
from ewc.experiment.schedules import lr_factor
from ewc.experiment.storage.checkpoint import CheckpointStore
from ewc.experiment.storage.rundir import Cell, EventLog, RunDirectory, write_json_atomic
from ewc.experiment.strategies import StrategyFactory, TaskContext, build_strategy
from ewc.experiment.streams.benchmarks import TaskStream, TensorBatches
from ewc.training import NonFiniteLossError, evaluate, train_step


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


class CellRun:
    """The state of one cell while it trains (see the module docstring)."""

    def __init__(
        self,
        config: RunConfig,
        stream: TaskStream,
        run_dir: RunDirectory,
        cell: Cell,
        factories: Mapping[str, StrategyFactory],
        progress: Progress,
    ):
        self.config, self.stream, self.run_dir, self.cell = config, stream, run_dir, cell
        self.config_hash = config.hash()
        self.progress = progress
        self.device = torch.device(config.training.device)
        self.model = _initial_model(config, stream, cell.seed).to(self.device)
        self.strategy = build_strategy(
            cell.strategy, config.strategies[cell.strategy], self.model, factories
        )
        self.optimizer = _optimizer(config, self.model)
        self.data_generator = torch.Generator().manual_seed(derived_seed(cell.seed, "data order"))
        self.epoch_generator_state = self.data_generator.get_state()
        self.strategy_generator = torch.Generator().manual_seed(derived_seed(cell.seed, "strategy"))
        self.position = Position()
        self.store = CheckpointStore(run_dir.checkpoint_dir(cell), keep=2)
        self.log = EventLog(run_dir.events_path(cell))

    def run(self) -> list[list[float]]:
        """Train (or finish training) the cell; return its accuracy matrix.

        Raises:
            CellDiverged: the loss became non-finite; a note event and ``diverged.json`` record
                where, and the last good checkpoint is kept.
        """
        try:
            if not self._restore():
                self._start()
            self.progress.cell_started(self.cell, self.stream.num_tasks)
            while self.position.task < self.stream.num_tasks:
                self._train_task()
            return self.position.rows
        except CellDiverged as error:
            self._event("note", message=f"diverged: {error}")
            self.progress.note(self.cell, f"diverged: {error}")
            write_json_atomic(
                self.run_dir.cell_dir(self.cell) / "diverged.json", {"message": str(error)}
            )
            raise
        finally:
            self.log.close()

    def _start(self) -> None:
        self.log.truncate(0)
        self.position.rows.append(self._evaluate_all())
        self._event("task_end", task=0, accuracies=self.position.rows[0])
        self._checkpoint()

    def _train_task(self) -> None:
        task, training = self.position.task, self.config.training
        batches = self._train_batches(task)
        self.model.train()
        while self.position.epoch < training.epochs:
            self.epoch_generator_state = self.data_generator.get_state()
            for index, (inputs, targets) in enumerate(batches):
                if index >= self.position.batch:
                    batch = Batch(index, inputs.to(self.device), targets.to(self.device))
                    self._step(batch, len(batches))
            self.position.epoch, self.position.batch = self.position.epoch + 1, 0
        self._finish_task(task)

    def _step(self, batch: Batch, num_batches: int) -> None:
        position, training = self.position, self.config.training
        self._set_lr(position.epoch * num_batches + batch.index, training.epochs * num_batches)
        try:
            loss = train_step(
                self.model,
                batch,
                self.optimizer,
                penalty=self.strategy.penalty(),
                output_fn=self.stream.output_fn(position.task),
            )
        except NonFiniteLossError as error:
            task, epoch, step = position.task + 1, position.epoch + 1, position.step + 1
            where = f"task {task}, epoch {epoch}, step {step}"
            raise CellDiverged(f"{where}: {error}") from error
        position.step, position.batch = position.step + 1, batch.index + 1
        position.loss_sum += loss.total
        position.penalty_sum += loss.penalty or 0.0
        position.losses += 1
        self.progress.step(
            self.cell, position.task, position.epoch, batch.index, num_batches, loss.total
        )
        if training.eval_every and position.step % training.eval_every == 0:
            self._log_training()
            self._event("eval", task=position.task + 1, accuracies=self._evaluate_all())
        if self.config.checkpoint_every and position.step % self.config.checkpoint_every == 0:
            self._checkpoint()

    def _set_lr(self, step_in_task: int, steps_in_task: int) -> None:
        """The schedule's rate for this step (`.schedules`): a function of the position only."""
        training = self.config.training
        factor = lr_factor(training.lr_schedule, step_in_task, steps_in_task, training.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = training.lr * factor

    def _finish_task(self, task: int) -> None:
        self._log_training()
        row = self._evaluate_all()
        self.position.rows.append(row)
        self._event("task_end", task=task + 1, accuracies=row)
        self.progress.task_done(self.cell, task, row)
        for note in self.strategy.after_task(self._context(task)):
            self._event("note", message=note)
            self.progress.note(self.cell, note)
        self.position.task, self.position.epoch, self.position.batch = task + 1, 0, 0
        self.epoch_generator_state = self.data_generator.get_state()  # the next epoch starts here
        if self.config.training.reset_optimizer:
            self.optimizer = _optimizer(self.config, self.model)
        self._checkpoint()

    def _context(self, task: int) -> TaskContext:
        data = self.stream.tasks[task]
        batches = TensorBatches(
            data.train_inputs,
            data.train_targets,
            batch_size=self.config.training.eval_batch_size,
            shuffle=True,
            generator=self.strategy_generator,
        )
        return TaskContext(
            model=self.model,
            task=task,
            train_batches=batches,
            output_fn=self.stream.output_fn(task),
            generator=self.strategy_generator,
            optimizer=self.config.training.optimizer,
            lr=self.config.training.lr,
        )

    def _train_batches(self, task: int) -> TensorBatches:
        data = self.stream.tasks[task]
        return TensorBatches(
            data.train_inputs,
            data.train_targets,
            batch_size=self.config.training.batch_size,
            shuffle=True,
            generator=self.data_generator,
        )

    def _evaluate_all(self) -> list[float]:
        size = self.config.training.eval_batch_size
        return [
            evaluate(
                self.model,
                TensorBatches(task.test_inputs, task.test_targets, batch_size=size),
                output_fn=self.stream.output_fn(j),
            )
            for j, task in enumerate(self.stream.tasks)
        ]

    def _log_training(self) -> None:
        position = self.position
        if position.losses:
            mean_loss, mean_penalty = (
                position.loss_sum / position.losses,
                position.penalty_sum / position.losses,
            )
            self._event("train", task=position.task + 1, loss=mean_loss, penalty=mean_penalty)
        position.loss_sum, position.penalty_sum, position.losses = 0.0, 0.0, 0

    def _event(self, kind: str, **fields: Any) -> None:
        event = {"event": kind, "seed": self.cell.seed, "strategy": self.cell.strategy}
        self.log.append({**event, "step": self.position.step, **fields})

    def _checkpoint(self) -> None:
        state = {
            "config_hash": self.config_hash,
            "cell": asdict(self.cell),
            "position": asdict(self.position),
            "events_length": self.log.durable_length(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "strategy": self.strategy.state_dict(),
            "rng": {
                "epoch_data": self.epoch_generator_state,
                "strategy": self.strategy_generator.get_state(),
                "torch": torch.get_rng_state(),
            },
        }
        self.store.save(state, self.position.step)

    def _restore(self) -> bool:
        latest = self.store.load_latest()
        if latest is None:
            return False
        _, state = latest
        if state["config_hash"] != self.config_hash:
            raise ValueError(f"checkpoint of cell {self.cell.key} belongs to another config")
        self.position = Position(**state["position"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.strategy.load_state_dict(state["strategy"])
        self.data_generator.set_state(state["rng"]["epoch_data"])
        self.strategy_generator.set_state(state["rng"]["strategy"])
        torch.set_rng_state(state["rng"]["torch"])
        self.log.truncate(state["events_length"])
        return True


class CellDiverged(RuntimeError):
    """Training a cell produced a non-finite loss; the message names the task and step."""


def derived_seed(seed: int, purpose: str) -> int:
    """A seed for one purpose of a run seed, so that generators of different purposes never share
    a stream (seed 0's "strategy" stream is not seed 1's "data order" stream)."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _initial_model(config: RunConfig, stream: TaskStream, seed: int) -> nn.Module:
    """The seed's initial weights: the same for every strategy of the seed."""
    return build_model(
        config.model.name,
        num_outputs=stream.num_outputs,
        heads=stream.heads,
        hidden=tuple(config.model.hidden),
        seed=seed,
    )


_OPTIMIZERS = {Optimizer.ADAM: torch.optim.Adam, Optimizer.SGD: torch.optim.SGD}


def _optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    training = config.training
    return _OPTIMIZERS[Optimizer.parse(training.optimizer)](model.parameters(), lr=training.lr)
