"""The run directory: where a run's config, events, checkpoints and results live on disk.

Layout (defined here once; the runner writes it and the report reads it)::

    RUN_DIR/
      config.json              resolved config, versions, config hash, data provenance, task names
      metrics.jsonl            every event of every cell, one JSON object per line (`.events`)
      accuracy/seed0_ewc.csv   the (T+1) × T accuracy matrix of one (seed, strategy) cell
      summary.json             metrics per strategy (mean ± SEM over seeds), mean matrices
      plots/*.png, report.html, report.md
      cells/seed0-ewc/         one folder per (seed, strategy) cell:
        events.jsonl           the cell's own events (metrics.jsonl is assembled from these)
        checkpoints/           the cell's checkpoints (ewc.experiment.storage.checkpoint)
        diverged.json          only if its loss became non-finite: where, and the message

      .lock                    held by the process that writes the run (`.lock`)

Each cell writes only inside its own folder, so cells can run in separate processes, and a
resumed cell cuts its event log back to the length its checkpoint recorded. Nothing that exists
is overwritten silently: a new run refuses a non-empty directory, and while one process writes a
run directory (a new run or a resume) it holds the directory's lock, so a second writer is
refused. A directory is usable from its first moment: one that a kill left without a complete
config.json (empty, or holding only the temporary file of that write and the lock file) is
*unstarted*, and both a new run and a resume start it afresh.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ewc._atomic import temporary_files, write_json_atomic, write_text_atomic
from ewc.experiment.storage.accuracy import write_accuracy_csv
from ewc.experiment.storage.lock import LOCK_FILE, FolderLock, holder, is_lock_file

_MATRIX_FILE = re.compile(r"seed(-?\d+)_(.+)\.csv")


class RunDirectoryError(ValueError):
    """The run directory cannot be used as asked (exists already, or belongs to another config)."""


@dataclass(frozen=True)
class Cell:
    """One (seed, strategy) pair of a run: trained independently of every other cell."""

    seed: int
    strategy: str

    @property
    def key(self) -> str:
        """The cell's folder name, e.g. ``seed0-ewc``."""
        return f"seed{self.seed}-{self.strategy}"


class RunDirectory:
    """Paths and files of one run directory (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]):
        """A view of ``path``; nothing is read or created."""
        self.path = Path(path)
        self._lock: FolderLock | None = None

    @classmethod
    def create(cls, path: str | os.PathLike[str], config_record: Mapping[str, Any]) -> RunDirectory:
        """Make a new run directory, lock it and write ``config.json``; refuse one with content.

        An unstarted directory (see the module docstring) is cleared and started afresh. The
        lock is held until `release`.
        """
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise RunDirectoryError(f"{run.path} is a file, not a directory; choose another --out")
        if run.path.is_dir() and not run.config_path.exists() and not run.is_unstarted():
            run._refuse_content()  # someone else's folder: refused before a lock file is made
        run.path.mkdir(parents=True, exist_ok=True)
        run._take_lock()
        try:
            run.clear_unstarted()
            if any(entry.name != LOCK_FILE for entry in run.path.iterdir()):
                run._refuse_content()  # another process wrote it meanwhile
            write_json_atomic(run.config_path, config_record)
        except BaseException:
            run.release()
            raise
        return run

    def _refuse_content(self) -> None:
        """Refuse a folder with content: a run to resume, or someone else's files."""
        if self.config_path.is_file():
            raise RunDirectoryError(
                f"{self.path} already holds a run; continue it with "
                f"`ewc run --resume {self.path}` or choose another --out"
            )
        raise RunDirectoryError(
            f"{self.path} already exists and is not empty (and is not a run directory); "
            "choose another --out"
        )

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, lock: bool = False) -> RunDirectory:
        """Open an existing run directory (its config.json is read and checked).

        ``lock`` takes the directory's lock, for a process that will write it (until `release`).
        """
        run = cls(path)
        if not run.config_path.is_file():
            raise RunDirectoryError(f"{run.path} is not a run directory: it has no config.json")
        run.read_config()
        if lock:
            run._take_lock()
        return run

    def _take_lock(self) -> None:
        """Hold the directory's lock, or refuse: another process writes this run."""
        self._lock = FolderLock.acquire(self.path)
        if self._lock is None:
            raise RunDirectoryError(
                f"{self.path} is in use by another run ({holder(self.path)} holds "
                f"{self.path / LOCK_FILE}); wait for it to end, or choose another --out"
            )

    def release(self) -> None:
        """Give up the directory's lock, if this view holds it."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def is_unstarted(self) -> bool:
        """Whether this is a folder that a run was killed in before config.json was complete."""
        if not self.path.is_dir() or self.config_path.exists():
            return False
        leftovers = set(temporary_files(self.config_path))
        return all(entry in leftovers or is_lock_file(entry) for entry in self.path.iterdir())

    def clear_unstarted(self) -> bool:
        """Remove what a run killed before its config was complete left; True if there was any."""
        leftovers = temporary_files(self.config_path)
        if not self.is_unstarted():
            return False
        for leftover in leftovers:
            leftover.unlink()
        return bool(leftovers)

    @property
    def config_path(self) -> Path:
        """``config.json``."""
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        """``metrics.jsonl``, assembled from the cells' event logs when the run ends."""
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        """``summary.json``, written when the run ends."""
        return self.path / "summary.json"

    @property
    def accuracy_dir(self) -> Path:
        """``accuracy/``, one CSV file per cell."""
        return self.path / "accuracy"

    @property
    def plots_dir(self) -> Path:
        """``plots/``, the report's figures."""
        return self.path / "plots"

    def figure_path(self, name: str) -> Path:
        """``plots/<name>.png``."""
        return self.plots_dir / f"{name}.png"

    @property
    def report_html_path(self) -> Path:
        """``report.html``."""
        return self.path / "report.html"

    @property
    def report_markdown_path(self) -> Path:
        """``report.md``."""
        return self.path / "report.md"

    def cell_dir(self, cell: Cell) -> Path:
        """``cells/<seedS-strategy>/``, the folder a cell writes in."""
        return self.path / "cells" / cell.key

    def events_path(self, cell: Cell) -> Path:
        """The cell's own event log."""
        return self.cell_dir(cell) / "events.jsonl"

    def checkpoint_dir(self, cell: Cell) -> Path:
        """The cell's checkpoints."""
        return self.cell_dir(cell) / "checkpoints"

    def diverged_path(self, cell: Cell) -> Path:
        """The marker a cell whose loss became non-finite leaves."""
        return self.cell_dir(cell) / "diverged.json"

    def matrix_path(self, cell: Cell) -> Path:
        """``accuracy/seed<S>_<strategy>.csv``."""
        return self.accuracy_dir / f"seed{cell.seed}_{cell.strategy}.csv"

    def matrix_files(self) -> list[tuple[Cell, Path]]:
        """The accuracy CSV files present, with the cell each belongs to, in name order."""
        if not self.accuracy_dir.is_dir():
            return []
        found = []
        for path in sorted(self.accuracy_dir.glob("seed*.csv")):
            match = _MATRIX_FILE.fullmatch(path.name)
            if match is not None:
                found.append((Cell(int(match[1]), match[2]), path))
        return found

    def cell_event_files(self) -> list[Path]:
        """The cells' own event logs present, in folder-name order."""
        return sorted((self.path / "cells").glob("*/events.jsonl"))

    def read_config(self) -> dict[str, Any]:
        """The content of ``config.json``, checked to be an object with a ``config`` object.

        Raises:
            RunDirectoryError: the file is not valid JSON, or not the object the runner writes.
        """
        path = self.config_path
        try:
            header = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RunDirectoryError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(header, dict) or not isinstance(header.get("config"), dict):
            raise RunDirectoryError(f"{path} must be a JSON object with a 'config' object")
        return header

    def assemble_metrics(self, cells: Sequence[Cell]) -> Path:
        """Concatenate the cells' event logs, in the given order, into ``metrics.jsonl``."""
        logs = [self.events_path(cell) for cell in cells if self.events_path(cell).exists()]
        text = "".join(log.read_text(encoding="utf-8") for log in logs)
        write_text_atomic(self.metrics_path, text)
        return self.metrics_path

    def write_matrix(self, cell: Cell, rows: Sequence[Sequence[float]]) -> Path:
        """Write a cell's accuracy matrix as CSV (rows: untrained, task 1, ..., task T)."""
        write_accuracy_csv(self.matrix_path(cell), rows)
        return self.matrix_path(cell)
