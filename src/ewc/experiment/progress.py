"""Progress output for runs: a tqdm bar on a terminal, plain periodic lines in logs, or quiet.

`make_progress` picks one: `BarProgress` (tqdm, the ``run`` extra) when the stream is a terminal,
`LineProgress` otherwise, and a quiet `LineProgress` (notes only) with ``quiet=True``. Inside a
task both show the step, the loss, the latest accuracy on the task in training and the time left
(the bar per redraw, the lines every ``interval`` seconds); a line is always printed when a cell
starts, when a task ends and for every note. The base class `Progress` stays silent (a library).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from ewc.experiment.storage.rundir import Cell


class Progress:
    """What the runner reports while it works; this base class stays silent."""

    def announce(self, message: str) -> None:
        """Something about the whole run the user should read (e.g. how it was started)."""

    def cell_started(self, cell: Cell, tasks: int) -> None:
        """A (seed, strategy) cell starts or resumes."""

    def task_started(self, cell: Cell, task: int, steps: int, done: int) -> None:
        """Task ``task`` (0-based) of ``steps`` optimizer steps starts, ``done`` already taken."""

    def step(
        self, cell: Cell, task: int, epoch: int, batch: int, batches: int, loss: float
    ) -> None:
        """One optimizer step was taken (task, epoch, batch are 0-based)."""

    def evaluated(self, cell: Cell, task: int, accuracies: list[float]) -> None:
        """An evaluation during task ``task`` (0-based): the accuracy on every task."""

    def task_done(self, cell: Cell, task: int, accuracies: list[float]) -> None:
        """A task finished; ``accuracies`` is the new row of the accuracy matrix."""

    def note(self, cell: Cell, message: str) -> None:
        """Something the user should read (a warning, a divergence)."""

    def close(self) -> None:
        """The run is over."""


@dataclass
class _TaskClock:
    """Where the task in training is, and how fast it goes: for the time left."""

    steps: int
    done: int
    started_at: float
    started_done: int
    accuracy: float | None = None
    loss: float | None = None

    def seconds_left(self, now: float) -> float | None:
        """(steps left) × (seconds per step so far); None before the first step."""
        taken = self.done - self.started_done
        if taken <= 0:
            return None
        return (self.steps - self.done) * (now - self.started_at) / taken


class LineProgress(Progress):
    """Plain lines, readable in a log file or CI output.

    One line per cell start, task end and note, and one every ``interval`` seconds inside a task.
    ``quiet`` keeps only the notes.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        quiet: bool = False,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        """Write to ``stream`` (default stderr); ``clock`` is injectable for tests."""
        self.stream = stream or sys.stderr
        self.quiet, self.interval, self.clock = quiet, interval, clock
        self._started = clock()
        self._last_line = self._started
        self._tasks: dict[Cell, _TaskClock] = {}

    def announce(self, message: str) -> None:
        """Print ``message`` (also when quiet)."""
        self._print(f"[{self._elapsed()}] {message}")

    def cell_started(self, cell: Cell, tasks: int) -> None:
        """Print which cell starts."""
        if not self.quiet:
            self._print(f"[{self._elapsed()}] {_name(cell)}: {tasks} tasks")

    def task_started(self, cell: Cell, task: int, steps: int, done: int) -> None:
        """Start timing the task."""
        self._tasks[cell] = _TaskClock(steps, done, self.clock(), done)

    def step(
        self, cell: Cell, task: int, epoch: int, batch: int, batches: int, loss: float
    ) -> None:
        """Count the step; print a line when ``interval`` seconds passed since the last one."""
        clock = self._tasks.get(cell)
        if clock is None:
            return
        clock.done, clock.loss = clock.done + 1, loss
        now = self.clock()
        if not self.quiet and now - self._last_line >= self.interval:
            self._print(f"[{self._elapsed()}] {_name(cell)}: {_status(task, clock, now)}")

    def evaluated(self, cell: Cell, task: int, accuracies: list[float]) -> None:
        """Remember the accuracy on the task in training."""
        if cell in self._tasks:
            self._tasks[cell].accuracy = accuracies[task]

    def task_done(self, cell: Cell, task: int, accuracies: list[float]) -> None:
        """Print the new row of the accuracy matrix, up to this task."""
        self._tasks.pop(cell, None)
        if not self.quiet:
            shown = " ".join(f"{a:.3f}" for a in accuracies[: task + 1])
            self._print(
                f"[{self._elapsed()}] {_name(cell)}: task {task + 1} done; "
                f"accuracy on tasks 1..{task + 1}: {shown}"
            )

    def note(self, cell: Cell, message: str) -> None:
        """Print the note (also when quiet)."""
        self._print(f"[{self._elapsed()}] {_name(cell)}: NOTE {message}")

    def _print(self, text: str) -> None:
        self._last_line = self.clock()
        print(text, file=self.stream, flush=True)

    def _elapsed(self) -> str:
        return _duration(self.clock() - self._started)


class BarProgress(LineProgress):
    """`LineProgress`'s lines, and a tqdm bar for the task in training (on a terminal)."""

    def __init__(self, stream: TextIO | None = None, *, tqdm: Any = None):
        """Draw on ``stream`` (default stderr) with ``tqdm`` (default: `tqdm.tqdm`)."""
        super().__init__(stream, interval=float("inf"))
        if tqdm is None:
            from tqdm import tqdm
        self._tqdm = tqdm
        self._bar: Any = None

    def task_started(self, cell: Cell, task: int, steps: int, done: int) -> None:
        """Open the task's bar."""
        super().task_started(cell, task, steps, done)
        self._close_bar()
        self._bar = self._tqdm(
            total=steps,
            initial=done,
            desc=f"{_name(cell)} task {task + 1}",
            unit="step",
            file=self.stream,
            leave=False,
            dynamic_ncols=True,
        )

    def step(
        self, cell: Cell, task: int, epoch: int, batch: int, batches: int, loss: float
    ) -> None:
        """Advance the bar; show the loss and the latest accuracy on the task."""
        super().step(cell, task, epoch, batch, batches, loss)
        if self._bar is not None:
            accuracy = self._tasks[cell].accuracy if cell in self._tasks else None
            shown = "" if accuracy is None else f" · accuracy {100 * accuracy:.1f}%"
            self._bar.set_postfix_str(f"loss {loss:.3f}{shown}", refresh=False)
            self._bar.update(1)

    def task_done(self, cell: Cell, task: int, accuracies: list[float]) -> None:
        """Close the bar, then print the task's line."""
        self._close_bar()
        super().task_done(cell, task, accuracies)

    def close(self) -> None:
        """Close the bar."""
        self._close_bar()

    def _print(self, text: str) -> None:
        self._last_line = self.clock()
        self._tqdm.write(text, file=self.stream)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def make_progress(stream: TextIO | None = None, *, quiet: bool = False) -> Progress:
    """The progress for ``stream`` (default stderr), as ``ewc run`` shows it.

    A tqdm bar on a terminal (plain lines if tqdm is not installed), plain lines otherwise; with
    ``quiet``, only notes (warnings, divergences) and run-level messages.
    """
    stream = stream or sys.stderr
    if quiet or not stream.isatty():
        return LineProgress(stream, quiet=quiet)
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return LineProgress(stream)
    return BarProgress(stream)


def _name(cell: Cell) -> str:
    return f"seed {cell.seed} · {cell.strategy}"


def _status(task: int, clock: _TaskClock, now: float) -> str:
    """``task 2 · step 120/400 · loss 0.312 · accuracy 95.4% · 1:23 left``."""
    parts = [f"task {task + 1}", f"step {clock.done}/{clock.steps}"]
    if clock.loss is not None:
        parts.append(f"loss {clock.loss:.3f}")
    if clock.accuracy is not None:
        parts.append(f"accuracy {100 * clock.accuracy:.1f}%")
    left = clock.seconds_left(now)
    if left is not None:
        parts.append(f"{_duration(left)} left")
    return " · ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60:02d}:{seconds % 60:02d}"
