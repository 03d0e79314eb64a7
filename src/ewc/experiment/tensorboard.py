"""TensorBoard scalars of a run, derived from its cells' event logs (``output.tensorboard``).

The run directory stays the source of truth: the scalars are written from each cell's
``events.jsonl`` when the cell finishes (and again for every cell when the run ends), into
``<run>/tensorboard/<seedS-strategy>/``, replacing what an earlier export of that cell wrote. A
resumed run therefore never holds a scalar twice, and the files can be deleted and rebuilt at
any time (`export_run`). Each new file starts with a purge at step 0, so a TensorBoard that had
loaded the earlier export drops it instead of showing both. Tags, per cell::

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
from typing import NamedTuple

from ewc.experiment.storage.events import EvalEvent, Event, TaskEndEvent, TrainEvent, parse_event
from ewc.experiment.storage.rundir import Cell, RunDirectory

__all__ = ["Scalar", "export_cell", "export_run", "require_writer", "scalars", "tensorboard_dir"]

#: The package that writes the event files, and the extra that installs it.
WRITER_PACKAGE, EXTRA = "tensorboardX", "tensorboard"


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
    """The points of a cell's events, in log order; a (tag, step) seen twice keeps the last.

    An evaluation that falls on a task's last step and that task's row of the accuracy matrix
    measure the same weights; the row, logged after it, is kept.
    """
    points: dict[tuple[str, int], float] = {}
    for event in events:
        if isinstance(event, EvalEvent | TaskEndEvent):
            for k, accuracy in enumerate(event.accuracies, start=1):
                if accuracy is not None:
                    points[(f"accuracy/task_{k}", event.step)] = accuracy
        elif isinstance(event, TrainEvent):
            points[("train/loss", event.step)] = event.loss
            points[("train/penalty", event.step)] = event.penalty
    return [Scalar(tag, step, value) for (tag, step), value in points.items()]


def export_cell(run_dir: RunDirectory, cell: Cell) -> Path | None:
    """Write ``cell``'s scalars afresh from its event log; None if it has no log yet."""
    log = run_dir.events_path(cell)
    if not log.is_file():
        return None
    events = [parse_event(json.loads(line)) for line in log.read_text("utf-8").splitlines()]
    points = scalars(event for event in events if event is not None)
    folder = tensorboard_dir(run_dir, cell)
    shutil.rmtree(folder, ignore_errors=True)
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(logdir=str(folder), purge_step=0)
    try:
        for point in points:
            writer.add_scalar(point.tag, point.value, point.step)
    finally:
        writer.close()
    return folder


def export_run(run_dir: RunDirectory, cells: Sequence[Cell]) -> list[Path]:
    """`export_cell` for every cell of a run; the folders written."""
    written = (export_cell(run_dir, cell) for cell in cells)
    return [folder for folder in written if folder is not None]
