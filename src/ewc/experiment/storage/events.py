"""The events of a run's ``metrics.jsonl``: one dataclass per kind, written and read through it.

Every line of ``metrics.jsonl`` (and of a cell's ``events.jsonl``) is one JSON object with an
``event`` key naming its kind, the cell it belongs to (``seed``, ``strategy``) and the optimizer
step it was taken at (steps count from the cell's start, 0 before any training)::

    task_end  task, accuracies    a row of the accuracy matrix R (task 0: the untrained model)
    eval      task, accuracies    every task's test accuracy while training ``task`` (1-based);
              subset              over at most this many test samples per task (null: all)
    train     task, loss, penalty mean loss and penalty since the previous train event
    note      message             something the user should read (a warning, a divergence)
    diverged  task, epoch, message  the loss became non-finite at ``step``; the cell stopped

The writer (`EventLog`) takes these dataclasses and the reader (`parse_event`) returns them, so the
two cannot spell a key differently. Reading is lenient where old run directories need it: a note
may lack its cell or step, accuracies that are not finite numbers read as None, and a kind this
version does not know is skipped (`parse_event` returns None), so newer runners stay readable.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, TypeAlias

from ewc.experiment.storage.accuracy import finite


class EventError(ValueError):
    """An event line has a known kind but a field is missing or of the wrong type."""


@dataclass(frozen=True)
class _AccuracyEvent:
    """The test accuracy on every task at ``step``, while or after training ``task``."""

    kind: ClassVar[str]
    seed: int
    strategy: str
    step: int
    task: int
    accuracies: tuple[float | None, ...]


@dataclass(frozen=True)
class TaskEndEvent(_AccuracyEvent):
    """Row ``task`` of the accuracy matrix R: the accuracy on every task after training it."""

    kind: ClassVar[str] = "task_end"


@dataclass(frozen=True)
class EvalEvent(_AccuracyEvent):
    """Test accuracy on every task at ``step``, while training ``task`` (1-based).

    ``subset``: the accuracies are over a fixed subset of at most this many test samples per
    task (`ewc.experiment.evaluation`); None: over the full test sets (and in runs written before
    subsets existed).
    """

    kind: ClassVar[str] = "eval"
    subset: int | None = None


@dataclass(frozen=True)
class TrainEvent:
    """Mean total loss and mean penalty of the steps since the previous train event."""

    kind: ClassVar[str] = "train"
    seed: int
    strategy: str
    step: int
    task: int
    loss: float
    penalty: float


@dataclass(frozen=True)
class NoteEvent:
    """A message for the user; old run directories may have notes without a cell or step."""

    kind: ClassVar[str] = "note"
    seed: int | None
    strategy: str | None
    step: int | None
    message: str


@dataclass(frozen=True)
class DivergedEvent:
    """The loss became non-finite at ``step`` (task and epoch 1-based); the cell stopped there."""

    kind: ClassVar[str] = "diverged"
    seed: int
    strategy: str
    step: int
    task: int
    epoch: int
    message: str


Event: TypeAlias = TaskEndEvent | EvalEvent | TrainEvent | NoteEvent | DivergedEvent
_KINDS: dict[str, type[Event]] = {
    cls.kind: cls for cls in (TaskEndEvent, EvalEvent, TrainEvent, NoteEvent, DivergedEvent)
}
_OPTIONAL = {
    (NoteEvent, "seed"),
    (NoteEvent, "strategy"),
    (NoteEvent, "step"),
    (EvalEvent, "subset"),
}


def event_to_json(event: Event) -> dict[str, Any]:
    """The JSON object of one event line: ``{"event": kind, "seed": ..., "strategy": ..., ...}``."""
    values = asdict(event)
    if "accuracies" in values:
        values["accuracies"] = list(values["accuracies"])
    return {"event": event.kind, **values}


def parse_event(value: Any) -> Event | None:
    """The event of one decoded JSON line; None for a kind this version does not know.

    Raises:
        EventError: a known kind whose fields are missing or of the wrong type.
    """
    cls = _KINDS.get(value.get("event")) if isinstance(value, dict) else None
    if cls is None:
        return None
    arguments = {}
    for spec in fields(cls):
        raw = value.get(spec.name)
        if raw is None and (cls, spec.name) in _OPTIONAL:
            arguments[spec.name] = None
        else:
            arguments[spec.name] = _field(cls.kind, spec.name, raw)
    return cls(**arguments)


def _field(kind: str, name: str, raw: Any) -> Any:
    """One field of an event, checked by its name's type."""
    if name == "accuracies":
        if not isinstance(raw, list):
            raise EventError(f"{kind} event: accuracies must be a list; got {raw!r}")
        return tuple(finite(v) for v in raw)
    if name in ("strategy", "message"):
        if not isinstance(raw, str):
            raise EventError(f"{kind} event: {name} must be a string; got {raw!r}")
        return raw
    if name in ("loss", "penalty"):
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise EventError(f"{kind} event: {name} must be a number; got {raw!r}")
        return float(raw)
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise EventError(f"{kind} event: {name} must be an integer; got {raw!r}")
    return raw


class EventLog:
    """An append-only JSON-lines file whose length a checkpoint can record and later restore."""

    def __init__(self, path: Path):
        """Open (create) the log at ``path`` for appending."""
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")

    def append(self, event: Event) -> None:
        """Write one event as one line, flushed so that a reader sees it at once."""
        self._file.write(json.dumps(event_to_json(event), allow_nan=True) + "\n")
        self._file.flush()

    def durable_length(self) -> int:
        """Flush and fsync the log; return its length in bytes (what a checkpoint records)."""
        self._file.flush()
        os.fsync(self._file.fileno())
        return self.path.stat().st_size

    def length(self) -> int:
        """Flush the log; return its length in bytes (durable once `sync` has run)."""
        self._file.flush()
        return self.path.stat().st_size

    def sync(self) -> None:
        """Make what was flushed durable (may run in another thread while events are added)."""
        os.fsync(self._file.fileno())

    def truncate(self, length: int) -> None:
        """Cut the log back to ``length`` bytes: events after a checkpoint are written again."""
        self._file.flush()
        self._file.truncate(length)

    def close(self) -> None:
        """Close the file."""
        self._file.close()
