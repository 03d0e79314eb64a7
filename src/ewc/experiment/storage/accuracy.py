"""The accuracy-matrix CSV files of a run directory (``accuracy/seed0_ewc.csv``), both ways.

R has T + 1 rows and T columns: row 0 is the untrained model, row i the model after training task
i, column j the test accuracy on task j (a fraction in [0, 1]). The file is written and read with
the `csv` module::

    after,task 1,task 2
    untrained,0.100000,0.098000
    task 1,0.971000,0.112000
    task 2,0.902000,0.968000

A run stopped mid-way may have written only the first rows; a missing value reads as None.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

from ewc._atomic import write_text_atomic

Row = tuple[float | None, ...]
_CORNER = "after"
_UNTRAINED = "untrained"


def finite(value: object) -> float | None:
    """``value`` as a float, or None when it is missing, not a number, NaN or infinite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def row_label(index: int) -> str:
    """The label of row ``index`` of R in the file: ``untrained`` or ``task i``."""
    return _UNTRAINED if index == 0 else f"task {index}"


def write_accuracy_csv(path: Path, rows: Sequence[Sequence[float]]) -> None:
    """Write R (rows: untrained, task 1, ..., task T) atomically, six decimals per value."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([_CORNER, *(f"task {j + 1}" for j in range(len(rows[0])))])
    for i, row in enumerate(rows):
        writer.writerow([row_label(i), *(f"{value:.6f}" for value in row)])
    write_text_atomic(path, buffer.getvalue())


def read_accuracy_csv(path: Path, num_tasks: int) -> dict[int, Row]:
    """Rows of R from ``path``, keyed by row index (0 = untrained).

    Raises:
        ValueError: the header or a row does not have T + 1 cells, or a label or value is not one
            the runner writes.
        OSError: the file cannot be read.
    """
    with path.open(encoding="utf-8", newline="") as file:
        lines = csv.reader(file)
        _check_header(next(lines, None), num_tasks)
        rows: dict[int, Row] = {}
        for number, cells in enumerate(lines, start=2):
            if not cells:
                continue
            index = _row_index(cells[0], num_tasks)
            if index is None:
                raise ValueError(
                    f"line {number} is labelled {cells[0]!r}, not 'untrained' or 'task i'"
                )
            if len(cells) != num_tasks + 1:
                raise ValueError(f"line {number} has {len(cells) - 1} values, expected {num_tasks}")
            rows[index] = tuple(_value(cell, number) for cell in cells[1:])
    return rows


def _check_header(header: list[str] | None, num_tasks: int) -> None:
    if not header or header[0].strip() != _CORNER:
        raise ValueError("the first line must be the header 'after,task 1,...,task T'")
    if len(header) != num_tasks + 1:
        raise ValueError(f"the header has {len(header) - 1} tasks but the run has {num_tasks}")


def _row_index(label: str, num_tasks: int) -> int | None:
    label = label.strip()
    if label == _UNTRAINED:
        return 0
    name, _, number = label.partition(" ")
    if name == "task" and number.isdigit() and 1 <= int(number) <= num_tasks:
        return int(number)
    return None


def _value(text: str, number: int) -> float | None:
    if not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"line {number} holds {text!r}, which is not a number") from None
    return finite(value)
