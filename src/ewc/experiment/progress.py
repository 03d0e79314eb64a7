"""Progress output for runs: a live bar on a terminal, plain lines in logs, nothing in a library."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from ewc.experiment.storage.rundir import Cell


class Progress:
    """What the runner reports while it works; this base class stays silent."""

    def cell_started(self, cell: Cell, tasks: int) -> None:
        """A (seed, strategy) cell starts or resumes."""

    def step(
        self, cell: Cell, task: int, epoch: int, batch: int, batches: int, loss: float
    ) -> None:
        """One optimizer step was taken (task, epoch, batch are 0-based)."""

    def task_done(self, cell: Cell, task: int, accuracies: list[float]) -> None:
        """A task finished; ``accuracies`` is the new row of the accuracy matrix."""

    def note(self, cell: Cell, message: str) -> None:
        """Something the user should read (a warning, a divergence)."""

    def close(self) -> None:
        """The run is over."""


class LineProgress(Progress):
    """Plain lines, one per task and note: readable in a log file or CI output."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self._started = time.perf_counter()

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def cell_started(self, cell: Cell, tasks: int) -> None:
        self._print(f"[{self._clock()}] seed {cell.seed} · {cell.strategy}: {tasks} tasks")

    def task_done(self, cell: Cell, task: int, accuracies: list[float]) -> None:
        shown = " ".join(f"{a:.3f}" for a in accuracies[: task + 1])
        self._print(
            f"[{self._clock()}] seed {cell.seed} · {cell.strategy}: task {task + 1} done; "
            f"accuracy on tasks 1..{task + 1}: {shown}"
        )

    def note(self, cell: Cell, message: str) -> None:
        self._print(f"[{self._clock()}] seed {cell.seed} · {cell.strategy}: NOTE {message}")

    def _clock(self) -> str:
        seconds = int(time.perf_counter() - self._started)
        return f"{seconds // 60:02d}:{seconds % 60:02d}"


class BarProgress(LineProgress):
    """`LineProgress` plus a live bar for the task in training, redrawn in place on a terminal."""

    width = 24
    interval = 0.1  # seconds between redraws

    def __init__(self, stream: TextIO | None = None):
        super().__init__(stream)
        self._drawn = 0.0

    def step(
        self, cell: Cell, task: int, epoch: int, batch: int, batches: int, loss: float
    ) -> None:
        now = time.perf_counter()
        if now - self._drawn < self.interval and batch + 1 < batches:
            return
        self._drawn = now
        done = (batch + 1) / batches
        filled = int(done * self.width)
        bar = "█" * filled + "·" * (self.width - filled)
        where = f"{cell.strategy} task {task + 1} epoch {epoch + 1}"
        self.stream.write(f"\r  {where} {bar} {done:4.0%} loss {loss:.3f}\033[K")
        self.stream.flush()

    def _print(self, text: str) -> None:
        self.stream.write("\r\033[K")
        super()._print(text)

    def close(self) -> None:
        self.stream.write("\r\033[K")
        self.stream.flush()


def for_stream(stream: TextIO | None = None) -> Progress:
    """A bar on a terminal, plain lines otherwise."""
    stream = stream or sys.stderr
    return BarProgress(stream) if stream.isatty() else LineProgress(stream)
