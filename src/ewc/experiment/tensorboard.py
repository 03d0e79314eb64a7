"""TensorBoard scalars of a run, mirrored from its cells' event logs (``output.tensorboard``).

The run directory stays the source of truth: a cell's scalars are written as its events are
appended to ``events.jsonl`` (`TensorBoardLog`), into ``<run>/tensorboard/<seedS-strategy>/``.
When a resume cuts the log back to its checkpoint, the folder is rewritten from what the log
keeps, so a resumed run never holds a scalar twice, and `export_run` rebuilds the folders from
the logs at any time. Each file starts with a purge at step 0, so a TensorBoard that had loaded
an earlier file drops it instead of showing both. Tags, per cell::

    accuracy/task_<k>   test accuracy of task k (1-based) at every evaluation and task end
    train/loss          mean training loss (task loss + penalty) since the previous point
    train/penalty       mean penalty value since the previous point

Written with ``tensorboardX`` (the ``ewc[tensorboard]`` extra): its ``SummaryWriter`` is the one
``torch.utils.tensorboard`` copies, without TensorBoard's server (``pip install tensorboard`` to
view the files: ``tensorboard --logdir runs/<run>/tensorboard``).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeAlias

from ewc.experiment.storage.events import (
    EvalEvent,
    Event,
    EventLog,
    TaskEndEvent,
    TrainEvent,
    parse_event,
)
from ewc.experiment.storage.rundir import Cell, RunDirectory

__all__ = [
    "Scalar",
    "TensorBoardLog",
    "event_scalars",
    "export_cell",
    "export_run",
    "open_event_log",
    "read_log",
    "require_writer",
    "scalars",
    "tensorboard_dir",
    "write_scalars",
]

#: The package that writes the event files, and the extra that installs it.
WRITER_PACKAGE, EXTRA = "tensorboardX", "tensorboard"

#: ``tensorboardX.SummaryWriter``, imported only when a run asks for TensorBoard.
SummaryWriterLike: TypeAlias = Any


class Scalar(NamedTuple):
    """One TensorBoard point: ``tag`` at optimizer step ``step``."""

    tag: str
    step: int
    value: float


def require_writer() -> None:
    """Check, before a run starts, that the event files can be written.

    Raises:
        ModuleNotFoundError: ``tensorboardX`` is not installed; its ``name`` is the package, and
            the message says to ``pip install 'ewc[tensorboard]'``.
    """
    if importlib.util.find_spec(WRITER_PACKAGE) is None:
        raise ModuleNotFoundError(
            f"--tensorboard (output.tensorboard) needs {WRITER_PACKAGE}, which is not installed; "
            f"install it with `pip install 'ewc[{EXTRA}]'`",
            name=WRITER_PACKAGE,
        )


def tensorboard_dir(run_dir: RunDirectory, cell: Cell) -> Path:
    """``<run>/tensorboard/<seedS-strategy>/``: one TensorBoard run per cell."""
    return run_dir.path / "tensorboard" / cell.key


def scalars(events: Iterable[Event]) -> list[Scalar]:
    """The points of a cell's events, in log order; a (tag, step) seen twice keeps the first.

    An evaluation that falls on a task's last step and that task's row of the accuracy matrix,
    logged after it, measure the same weights and give the same values.
    """
    points: dict[tuple[str, int], float] = {}
    for point in (p for event in events for p in event_scalars(event)):
        points.setdefault((point.tag, point.step), point.value)
    return [Scalar(tag, step, value) for (tag, step), value in points.items()]


def event_scalars(event: Event) -> list[Scalar]:
    """The points of one event: accuracies of eval and task_end, loss and penalty of train."""
    if isinstance(event, EvalEvent | TaskEndEvent):
        return [
            Scalar(f"accuracy/task_{k}", event.step, accuracy)
            for k, accuracy in enumerate(event.accuracies, start=1)
            if accuracy is not None
        ]
    if isinstance(event, TrainEvent):
        return [
            Scalar("train/loss", event.step, event.loss),
            Scalar("train/penalty", event.step, event.penalty),
        ]
    return []


def read_log(path: Path) -> list[Event]:
    """The events of a cell's log; a last line cut short by a kill is left out."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    events = []
    for number, line in enumerate(lines, start=1):
        try:
            event = parse_event(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise
        if event is not None:
            events.append(event)
    return events


def write_scalars(folder: Path, points: Iterable[Scalar]) -> SummaryWriterLike:
    """A fresh writer in ``folder`` (what was there is removed), purged at 0, with ``points``."""
    from tensorboardX import SummaryWriter

    shutil.rmtree(folder, ignore_errors=True)
    writer = SummaryWriter(logdir=str(folder), purge_step=0, flush_secs=10)
    for point in points:
        writer.add_scalar(point.tag, point.value, point.step)
    return writer


class TensorBoardLog(EventLog):
    """A cell's `EventLog` that also writes each event's scalars to TensorBoard when appended.

    `truncate` (a resume going back to its checkpoint) rewrites the cell's TensorBoard folder
    from what the log keeps; `durable_length` (every checkpoint) flushes it.

    Args:
        path: the cell's ``events.jsonl``.
        folder: the cell's TensorBoard folder (`tensorboard_dir`).
    """

    def __init__(self, path: Path, folder: Path):
        super().__init__(path)
        self.folder = folder
        self._writer: SummaryWriterLike | None = None
        self._written: set[tuple[str, int]] = set()  # the points of the newest step

    def append(self, event: Event) -> None:
        """Log ``event``; write its scalars that this step does not hold yet."""
        super().append(event)
        if self._writer is None:
            self._rewrite()  # the log, this event included, becomes the folder
            return
        for point in event_scalars(event):
            key = (point.tag, point.step)
            if key in self._written:
                continue
            if any(step != point.step for _, step in self._written):
                self._written.clear()
            self._written.add(key)
            self._writer.add_scalar(point.tag, point.value, point.step)

    def durable_length(self) -> int:
        """Flush the scalars too; then as `EventLog.durable_length`."""
        if self._writer is not None:
            self._writer.flush()
        return super().durable_length()

    def truncate(self, length: int) -> None:
        """Cut the log back to ``length`` bytes and rewrite the scalars from what it keeps."""
        super().truncate(length)
        self._rewrite()

    def close(self) -> None:
        """Close the log and the event file."""
        super().close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _rewrite(self) -> None:
        self._file.flush()
        if self._writer is not None:
            self._writer.close()
        points = scalars(read_log(self.path))
        self._writer = write_scalars(self.folder, points)
        newest = max((p.step for p in points), default=None)
        self._written = {(p.tag, p.step) for p in points if p.step == newest}


def open_event_log(run_dir: RunDirectory, cell: Cell, tensorboard: bool) -> EventLog:
    """``cell``'s event log; with ``tensorboard``, one that mirrors it as scalars."""
    path = run_dir.events_path(cell)
    return TensorBoardLog(path, tensorboard_dir(run_dir, cell)) if tensorboard else EventLog(path)


def export_cell(run_dir: RunDirectory, cell: Cell) -> Path | None:
    """Write ``cell``'s scalars afresh from its event log; None if it has no log."""
    log = run_dir.events_path(cell)
    if not log.is_file():
        return None
    folder = tensorboard_dir(run_dir, cell)
    write_scalars(folder, scalars(read_log(log))).close()
    return folder


def export_run(
    run_dir: RunDirectory, cells: Sequence[Cell], *, missing_only: bool = False
) -> list[Path]:
    """`export_cell` for every cell of a run (or only those without a folder); the folders written.

    A run's cells write their folders as they train; a cell that did not train in this
    invocation (one that diverged before) has none until this fills it in.
    """
    chosen = [c for c in cells if not (missing_only and tensorboard_dir(run_dir, c).is_dir())]
    written = (export_cell(run_dir, cell) for cell in chosen)
    return [folder for folder in written if folder is not None]
