"""Rows of the accuracy matrix R, as read from events and accuracy/*.csv files.

The files are read by `ewc.experiment.storage.events` and `ewc.experiment.storage.accuracy`.

R has T + 1 rows and T columns: row 0 is the untrained model, row i the model after training task
i, column j the test accuracy on task j (a fraction in [0, 1]). A missing value is None.
"""

from __future__ import annotations

from collections.abc import Mapping

from ewc.experiment.storage.accuracy import Row
from ewc.experiment.storage.accuracy import finite as finite  # re-exported for the report

Matrix = list[Row]


def count_finished(rows: Mapping[int, Row], num_tasks: int) -> int:
    """How many tasks (rows 1..T) have been trained."""
    return sum(1 for i in range(1, num_tasks + 1) if i in rows)


def as_matrix(rows: Mapping[int, Row], num_tasks: int) -> Matrix:
    """The (T + 1) × T matrix of ``rows``; a missing row, or a row of another width, is all None."""
    empty: Row = (None,) * num_tasks
    return [
        rows[i] if i in rows and len(rows[i]) == num_tasks else empty for i in range(num_tasks + 1)
    ]
