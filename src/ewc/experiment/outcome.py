"""What training one (seed, strategy) cell ended with: its accuracy matrix, or where it diverged."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from ewc.experiment.storage.rundir import Cell

_OLD_MESSAGE = re.compile(r"task (\d+), epoch (\d+), step (\d+): (.*)", re.DOTALL)


@dataclass(frozen=True)
class Divergence:
    """Where a cell's loss became non-finite, and the training loop's message.

    ``task`` and ``epoch`` are 1-based; ``step`` counts from the cell's start and is the step that
    was not taken.
    """

    task: int
    epoch: int
    step: int
    message: str

    def __str__(self) -> str:
        """``task 2, epoch 1, step 37: <message>``."""
        return f"task {self.task}, epoch {self.epoch}, step {self.step}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``diverged.json`` and of summary.json's ``diverged`` section."""
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Divergence:
        """Read `to_json`'s object back; also the ``{"message": str(divergence)}`` of older runs.

        Raises:
            ValueError: ``value`` is neither.
        """
        if "task" not in value:
            match = _OLD_MESSAGE.fullmatch(str(value.get("message", "")))
            if match is None:
                raise ValueError(f"not a divergence record: {value!r}")
            return cls(int(match[1]), int(match[2]), int(match[3]), match[4])
        return cls(int(value["task"]), int(value["epoch"]), int(value["step"]), value["message"])


@dataclass(frozen=True)
class CellTimings:
    """Where a cell's wall time went, in seconds (`ewc.experiment.cell` measures it).

    Attributes:
        training: the optimizer steps (forward, backward, penalty, update, schedule).
        fisher: the strategy's consolidation after each task (the Fisher, for EWC).
        evaluation: the test accuracy on every task, at task ends and every ``eval_every`` steps.
    """

    training: float
    fisher: float
    evaluation: float


@dataclass(frozen=True)
class CellOutcome:
    """A cell's result: its accuracy matrix, or where it diverged.

    ``rows`` (the accuracy matrix R, T + 1 rows) if it trained every task, ``divergence`` if its
    loss became non-finite; exactly one of the two is set.
    """

    cell: Cell
    rows: list[list[float]] | None = None
    divergence: Divergence | None = None
    timings: CellTimings | None = None  # None for a cell read back from its diverged.json

    def __post_init__(self) -> None:
        """Check that exactly one of ``rows`` and ``divergence`` is set."""
        if (self.rows is None) == (self.divergence is None):
            raise ValueError(
                f"the outcome of cell {self.cell.key} must have either rows or a divergence"
            )
