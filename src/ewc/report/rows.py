"""Rows of the accuracy matrix R, as read from events and accuracy/*.csv files.

R has T + 1 rows and T columns: row 0 is the untrained model, row i the model after training task
i, column j the test accuracy on task j (a fraction in [0, 1]). A missing value is None.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

Row = tuple[float | None, ...]
Matrix = list[Row]


def finite(value: object) -> float | None:
    """``value`` as a float, or None when it is missing, not a number, NaN or infinite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def accuracy_row(values: Any) -> Row | None:
    """The ``accuracies`` list of an event as a row (non-numbers → None); None if not a list."""
    if not isinstance(values, list):
        return None
    return tuple(finite(v) for v in values)


def read_matrix_csv(reader: Iterable[list[str]], num_tasks: int) -> dict[int, Row]:
    """Rows of R from the cells of an accuracy/*.csv file, keyed by row index (0 = untrained).

    The file has a header ``after,task 1,...,task T`` and rows labelled ``untrained`` and
    ``task i``; a run stopped mid-way may have written only the first rows.

    Raises:
        ValueError: the header or a row does not have T + 1 cells, or a label or value is not one
            the runner writes.
    """
    lines = iter(reader)
    header = next(lines, None)
    if header is None or not header or header[0].strip() != "after":
        raise ValueError("the first line must be the header 'after,task 1,...,task T'")
    if len(header) != num_tasks + 1:
        raise ValueError(f"the header has {len(header) - 1} tasks but the run has {num_tasks}")
    rows: dict[int, Row] = {}
    for number, cells in enumerate(lines, start=2):
        if not cells:
            continue
        index = _row_index(cells[0], num_tasks)
        if index is None:
            raise ValueError(f"line {number} is labelled {cells[0]!r}, not 'untrained' or 'task i'")
        if len(cells) != num_tasks + 1:
            raise ValueError(f"line {number} has {len(cells) - 1} values, expected {num_tasks}")
        rows[index] = tuple(_cell(cell, number) for cell in cells[1:])
    return rows


def _row_index(label: str, num_tasks: int) -> int | None:
    label = label.strip()
    if label == "untrained":
        return 0
    name, _, number = label.partition(" ")
    if name == "task" and number.isdigit() and 1 <= int(number) <= num_tasks:
        return int(number)
    return None


def _cell(text: str, number: int) -> float | None:
    if not text.strip():
        return None
    try:
        return finite(float(text))
    except ValueError:
        raise ValueError(f"line {number} holds {text!r}, which is not a number") from None


def count_finished(rows: Mapping[int, Row], num_tasks: int) -> int:
    """How many tasks (rows 1..T) have been trained."""
    return sum(1 for i in range(1, num_tasks + 1) if i in rows)


def as_matrix(rows: Mapping[int, Row], num_tasks: int) -> Matrix:
    """The (T + 1) × T matrix of ``rows``; a missing row, or a row of another width, is all None."""
    empty: Row = (None,) * num_tasks
    return [
        rows[i] if i in rows and len(rows[i]) == num_tasks else empty for i in range(num_tasks + 1)
    ]
