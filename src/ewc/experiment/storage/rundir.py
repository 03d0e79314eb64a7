"""The run directory: where a run's config, events, checkpoints and results live on disk.

Layout (the report reads the first five; the runner owns all of them)::

    RUN_DIR/
      config.json              resolved config, versions, config hash, data provenance, task names
      metrics.jsonl            every event of every cell, one JSON object per line
      accuracy/seed0_ewc.csv   the (T+1) × T accuracy matrix of one (seed, strategy) cell
      summary.json             metrics per strategy (mean ± SEM over seeds), mean matrices
      plots/, report.html, report.md
      cells/seed0-ewc/         one folder per (seed, strategy) cell:
        events.jsonl           the cell's own events (metrics.jsonl is assembled from these)
        checkpoints/           the cell's checkpoints (ewc.experiment.storage.checkpoint)

Each cell writes only inside its own folder, so cells can run in separate processes, and a
resumed cell cuts its event log back to the length its checkpoint recorded. Nothing that exists
is overwritten silently: a new run refuses a non-empty directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ewc._atomic import temporary_files, write_text_atomic


class RunDirectoryError(ValueError):
    """The run directory cannot be used as asked (exists already, or belongs to another config)."""


@dataclass(frozen=True)
class Cell:
    """One (seed, strategy) pair of a run: trained independently of every other cell."""

    seed: int
    strategy: str

    @property
    def key(self) -> str:
        """The cell's folder and file name stem, e.g. ``seed0-ewc``."""
        return f"seed{self.seed}-{self.strategy}"


class RunDirectory:
    """Paths and files of one run directory (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | os.PathLike[str], config_record: Mapping[str, Any]) -> RunDirectory:
        """Make a new run directory and write ``config.json``; refuse one that has content."""
        run = cls(path)
        for leftover in temporary_files(run.config_path):  # a create killed mid-write
            leftover.unlink()
        if run.path.exists() and (not run.path.is_dir() or any(run.path.iterdir())):
            raise RunDirectoryError(
                f"{run.path} already exists and is not empty; continue it with "
                f"`ewc run --resume {run.path}` or choose another --out"
            )
        run.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run.config_path, config_record)
        return run

    @classmethod
    def open(cls, path: str | os.PathLike[str], config_hash: str | None = None) -> RunDirectory:
        """Open an existing run directory; with ``config_hash``, refuse one of another config."""
        run = cls(path)
        if not run.config_path.is_file():
            raise RunDirectoryError(f"{run.path} is not a run directory: it has no config.json")
        recorded = run.read_config().get("config_hash")
        if config_hash is not None and recorded != config_hash:
            raise RunDirectoryError(
                f"{run.path} was run with another config (hash {str(recorded)[:12]}…, this one "
                f"{config_hash[:12]}…); resume it with the same config, or start a new run"
            )
        return run

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    def read_config(self) -> dict[str, Any]:
        """The content of ``config.json``."""
        return json.loads(self.config_path.read_text(encoding="utf-8"))

    def cell_dir(self, cell: Cell) -> Path:
        return self.path / "cells" / cell.key

    def events_path(self, cell: Cell) -> Path:
        return self.cell_dir(cell) / "events.jsonl"

    def checkpoint_dir(self, cell: Cell) -> Path:
        return self.cell_dir(cell) / "checkpoints"

    def matrix_path(self, cell: Cell) -> Path:
        return self.path / "accuracy" / f"seed{cell.seed}_{cell.strategy}.csv"

    def assemble_metrics(self, cells: list[Cell]) -> Path:
        """Concatenate the cells' event logs, in the given order, into ``metrics.jsonl``."""
        target = self.path / "metrics.jsonl"
        logs = [self.events_path(cell) for cell in cells if self.events_path(cell).exists()]
        write_text_atomic(target, "".join(log.read_text(encoding="utf-8") for log in logs))
        return target

    def write_matrix(self, cell: Cell, rows: list[list[float]]) -> Path:
        """Write a cell's accuracy matrix as CSV (rows: untrained, task 1, ..., task T)."""
        path = self.matrix_path(cell)
        path.parent.mkdir(parents=True, exist_ok=True)
        num_tasks = len(rows[0])
        lines = ["after," + ",".join(f"task {j + 1}" for j in range(num_tasks))]
        for i, row in enumerate(rows):
            label = "untrained" if i == 0 else f"task {i}"
            lines.append(label + "," + ",".join(f"{value:.6f}" for value in row))
        write_text_atomic(path, "\n".join(lines) + "\n")
        return path


class EventLog:
    """An append-only JSON-lines file whose length a checkpoint can record and later restore."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")

    def append(self, event: Mapping[str, Any]) -> None:
        """Write one event as one line, flushed so that a reader sees it at once."""
        self._file.write(json.dumps(event, allow_nan=True) + "\n")
        self._file.flush()

    def durable_length(self) -> int:
        """fsync the log and return its length in bytes (what a checkpoint records)."""
        self._file.flush()
        os.fsync(self._file.fileno())
        return self.path.stat().st_size

    def truncate(self, length: int) -> None:
        """Cut the log back to ``length`` bytes: events after a checkpoint are written again."""
        self._file.flush()
        self._file.truncate(length)

    def close(self) -> None:
        self._file.close()


def write_json_atomic(path: Path, data: Any) -> None:
    """`write_text_atomic` of pretty-printed JSON."""
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=True) + "\n")
