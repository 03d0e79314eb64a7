"""Continual-learning metrics over the accuracy matrix: ACC, BWT, FWT and forgetting.

Every function is pure: it reads an accuracy matrix and returns numbers, nothing is stored.

The accuracy matrix ``R`` has shape ``(T + 1, T)`` for ``T`` tasks trained one after another:

- row 0 holds the untrained model, ``R[0, j] = b_j`` (the baseline of forward transfer);
- row ``i`` (1..T) holds the model just after training task ``i``;
- ``R[i, j]`` is the test accuracy, a fraction in [0, 1], on the task of column ``j``.

Rows count tasks from 1 as in the papers (row ``i`` is "after task i"), columns are 0-based
indices (column ``j - 1`` is task ``j``). The formulas below use task numbers ``i, j = 1..T`` and
write ``R[i, j]`` for the accuracy on task ``j`` after task ``i``, i.e. ``R[i][j - 1]`` in code.

With a single task (``T = 1``) there is no earlier task to forget or to transfer to: backward
transfer, forward transfer and forgetting are undefined and returned as NaN (an empty list for
per-task forgetting), so that a one-task run still has a complete summary. Averages over seeds
(:func:`mean_and_sem`) keep such a NaN, so an undefined metric never turns into a number.

References:
    Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017 (ACC,
    BWT, FWT). Chaudhry, Dokania, Ajanthan & Torr, "Riemannian Walk for Incremental Learning:
    Understanding Forgetting and Intransigence", ECCV 2018 (forgetting).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import NamedTuple, TypeAlias

import torch

METRICS = ("ACC", "BWT", "FWT", "forgetting")
"""The names of the scalar metrics :func:`summarize` returns, in the order tables show them."""

AccuracyMatrix: TypeAlias = torch.Tensor | Sequence[Sequence[float]]
"""A ``(T + 1, T)`` accuracy matrix: a 2-D tensor or a sequence of rows of floats."""


class MeanSEM(NamedTuple):
    """A mean over runs (seeds) and its standard error."""

    mean: float
    sem: float


def average_accuracy(R: AccuracyMatrix) -> float:
    """Average accuracy over all tasks after training the last one.

    ``ACC = (1/T) Σ_{j=1..T} R[T, j]`` (Lopez-Paz & Ranzato 2017, GEM).

    Args:
        R: the accuracy matrix, shape ``(T + 1, T)``, see the module docstring.

    Returns:
        ACC, a fraction in [0, 1].

    Raises:
        TypeError: ``R`` is not a matrix of real numbers.
        ValueError: ``R`` is not ``(T + 1, T)`` with ``T >= 1``, or an entry is not in [0, 1].
    """
    return _average_accuracy(_validated(R))


def _average_accuracy(rows: list[list[float]]) -> float:
    tasks = len(rows) - 1
    return math.fsum(rows[tasks]) / tasks


def backward_transfer(R: AccuracyMatrix) -> float:
    """Backward transfer: how training later tasks changed the accuracy on earlier ones.

    ``BWT = (1/(T−1)) Σ_{j=1..T−1} (R[T, j] − R[j, j])`` (Lopez-Paz & Ranzato 2017, GEM): the
    final accuracy on each earlier task minus its accuracy just after it was trained. Negative
    values are forgetting, positive values mean later tasks helped.

    Args:
        R: the accuracy matrix, shape ``(T + 1, T)``, see the module docstring.

    Returns:
        BWT in [-1, 1]; NaN when ``T = 1`` (no earlier task).

    Raises:
        TypeError: ``R`` is not a matrix of real numbers.
        ValueError: ``R`` is not ``(T + 1, T)`` with ``T >= 1``, or an entry is not in [0, 1].
    """
    return _backward_transfer(_validated(R))


def _backward_transfer(rows: list[list[float]]) -> float:
    tasks = len(rows) - 1
    if tasks == 1:
        return math.nan
    changes = [rows[tasks][j - 1] - rows[j][j - 1] for j in range(1, tasks)]
    return math.fsum(changes) / (tasks - 1)


def forward_transfer(R: AccuracyMatrix) -> float:
    """Forward transfer: accuracy on a task before training it, relative to the untrained model.

    ``FWT = (1/(T−1)) Σ_{j=2..T} (R[j−1, j] − b_j)`` with ``b_j = R[0, j]`` (Lopez-Paz & Ranzato
    2017, GEM): what training tasks ``1..j−1`` did for task ``j`` before it was seen. Task 1 is
    left out since nothing was trained before it.

    Args:
        R: the accuracy matrix, shape ``(T + 1, T)``, see the module docstring.

    Returns:
        FWT in [-1, 1]; NaN when ``T = 1`` (no task after the first).

    Raises:
        TypeError: ``R`` is not a matrix of real numbers.
        ValueError: ``R`` is not ``(T + 1, T)`` with ``T >= 1``, or an entry is not in [0, 1].
    """
    return _forward_transfer(_validated(R))


def _forward_transfer(rows: list[list[float]]) -> float:
    tasks = len(rows) - 1
    if tasks == 1:
        return math.nan
    gains = [rows[j - 1][j - 1] - rows[0][j - 1] for j in range(2, tasks + 1)]
    return math.fsum(gains) / (tasks - 1)


def forgetting(R: AccuracyMatrix, after: int | None = None) -> list[float]:
    """Forgetting of each earlier task after training task ``k`` (Chaudhry et al. 2018).

    ``f_j^k = max_{l=j..k−1} R[l, j] − R[k, j]`` for ``j = 1..k−1``: the best accuracy task ``j``
    ever had between its own training and task ``k``, minus its accuracy after task ``k``. The
    maximum starts at ``l = j``: an accuracy reached before task ``j`` was trained (forward
    transfer) is not counted as something to forget. Unlike a difference to ``R[j, j]`` alone (e.g.
    Avalanche's functional ``forgetting``), a task that kept improving after its training and then
    dropped counts as forgotten from its best. Values are negative when task ``j`` is more
    accurate after task ``k`` than ever before; they are not clipped.

    Args:
        R: the accuracy matrix, shape ``(T + 1, T)``, see the module docstring.
        after: the task ``k`` (1..T) after which forgetting is measured; ``None`` means ``T``.

    Returns:
        ``[f_1^k, ..., f_{k−1}^k]``: item ``j − 1`` is the forgetting of task ``j``; empty when
        ``k = 1``.

    Raises:
        TypeError: ``R`` is not a matrix of real numbers, or ``after`` is not an int.
        ValueError: ``R`` is not ``(T + 1, T)`` with ``T >= 1``, an entry is not in [0, 1], or
            ``after`` is not in 1..T.
    """
    rows = _validated(R)
    return _forgetting(rows, _task_number(after, len(rows) - 1))


def _forgetting(rows: list[list[float]], k: int) -> list[float]:
    return [max(rows[i][j - 1] for i in range(j, k)) - rows[k][j - 1] for j in range(1, k)]


def average_forgetting(R: AccuracyMatrix, after: int | None = None) -> float:
    """Average forgetting after training task ``k`` (Chaudhry et al. 2018).

    ``F_k = (1/(k−1)) Σ_{j=1..k−1} f_j^k`` with ``f_j^k`` as in :func:`forgetting`.

    Args:
        R: the accuracy matrix, shape ``(T + 1, T)``, see the module docstring.
        after: the task ``k`` (1..T) after which forgetting is measured; ``None`` means ``T``.

    Returns:
        ``F_k`` in [-1, 1]; NaN when ``k = 1`` (no earlier task to forget).

    Raises:
        TypeError: ``R`` is not a matrix of real numbers, or ``after`` is not an int.
        ValueError: ``R`` is not ``(T + 1, T)`` with ``T >= 1``, an entry is not in [0, 1], or
            ``after`` is not in 1..T.
    """
    rows = _validated(R)
    return _average_forgetting(rows, _task_number(after, len(rows) - 1))


def _average_forgetting(rows: list[list[float]], k: int) -> float:
    values = _forgetting(rows, k)
    return math.fsum(values) / len(values) if values else math.nan


def summarize(R: AccuracyMatrix) -> dict[str, float]:
    """All scalar metrics of one run after its last task, by name.

    Args:
        R: the accuracy matrix, shape ``(T + 1, T)``, see the module docstring.

    Returns:
        ``{"ACC": ..., "BWT": ..., "FWT": ..., "forgetting": ...}`` where ``forgetting`` is
        ``F_T``, the average forgetting after the last task (:func:`average_forgetting`). BWT, FWT
        and forgetting are NaN when ``T = 1``.

    Raises:
        TypeError: ``R`` is not a matrix of real numbers.
        ValueError: ``R`` is not ``(T + 1, T)`` with ``T >= 1``, or an entry is not in [0, 1].
    """
    rows = _validated(R)  # once: the helpers below trust it
    return {
        "ACC": _average_accuracy(rows),
        "BWT": _backward_transfer(rows),
        "FWT": _forward_transfer(rows),
        "forgetting": _average_forgetting(rows, len(rows) - 1),
    }


def mean_and_sem(values: Iterable[float] | torch.Tensor) -> MeanSEM:
    """Mean and standard error of the mean of a metric over independent runs (seeds).

    ``mean = (1/n) Σ_i x_i`` and ``SEM = s / √n`` with the sample standard deviation
    ``s = √(Σ_i (x_i − mean)² / (n − 1))`` (Bessel's correction). With one value the spread is
    unknown, so the SEM is NaN rather than a misleading 0. A NaN value (an undefined metric, e.g.
    BWT of a one-task run) makes both results NaN.

    Args:
        values: one real number per run, or a 1-D tensor of them.

    Returns:
        ``MeanSEM(mean, sem)``.

    Raises:
        TypeError: a value is not a real number.
        ValueError: there are no values, or a tensor is not 1-dimensional.
    """
    numbers_ = _floats(values)
    count = len(numbers_)
    mean = math.fsum(numbers_) / count
    if count == 1:
        return MeanSEM(mean, math.nan)
    variance = math.fsum((x - mean) ** 2 for x in numbers_) / (count - 1)
    return MeanSEM(mean, math.sqrt(variance / count))


def mean_matrix(
    matrices: Sequence[Sequence[Sequence[float | None]]],
) -> list[list[float | None]]:
    """The entry-wise mean of accuracy matrices of equal shape (one per seed).

    ``mean[i][j] = (1/n) Σ_s R_s[i, j]`` over the ``n`` seeds whose entry is not None (a value a
    run did not reach); None where no seed has one. The sum is exact (`math.fsum`).

    Args:
        matrices: one ``(T + 1, T)`` matrix per seed, rows as sequences; at least one.

    Raises:
        ValueError: there are no matrices, or their shapes differ.
    """
    if not matrices:
        raise ValueError("mean_matrix needs at least one accuracy matrix; got none")
    shape = (len(matrices[0]), len(matrices[0][0]) if matrices[0] else 0)
    for m in matrices:
        if len(m) != shape[0] or any(len(row) != shape[1] for row in m):
            raise ValueError(f"accuracy matrices of different shapes cannot be averaged: {shape}")
    return [
        [_mean_present([m[i][j] for m in matrices]) for j in range(shape[1])]
        for i in range(shape[0])
    ]


def _mean_present(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return math.fsum(present) / len(present) if present else None


def _validated(R: AccuracyMatrix) -> list[list[float]]:
    """The rows of ``R`` as floats, after checking its shape and that entries are accuracies."""
    rows = _rows(R)
    tasks = len(rows) - 1
    if tasks < 1 or any(len(row) != tasks for row in rows):
        lengths = [len(row) for row in rows]
        ragged = len(set(lengths)) > 1
        got = f"rows of lengths {lengths}" if ragged else f"shape ({len(rows)}, {lengths[0]})"
        raise ValueError(
            "the accuracy matrix R must have shape (T + 1, T) with T >= 1 (row 0: the untrained "
            f"model, row i: after training task i); got {got}"
        )
    return [[_accuracy(value, i, j) for j, value in enumerate(row)] for i, row in enumerate(rows)]


def _rows(R: AccuracyMatrix) -> list[list[object]]:
    """``R`` as a list of rows, without checking the entries."""
    if isinstance(R, torch.Tensor):
        if R.dim() != 2:
            raise ValueError(
                "the accuracy matrix R must be 2-dimensional, shape (T + 1, T); got a tensor of "
                f"shape {tuple(R.shape)}"
            )
        return R.tolist()
    if isinstance(R, str | bytes) or not isinstance(R, Iterable):
        raise TypeError(
            f"the accuracy matrix R must be a tensor or a sequence of rows; got {type(R).__name__}"
        )
    rows = list(R)
    for i, row in enumerate(rows):
        if isinstance(row, str | bytes) or not isinstance(row, Iterable):
            kind = type(row).__name__
            raise TypeError(f"row {i} of the accuracy matrix R must be a sequence; got {kind}")
    if not rows:
        raise ValueError("the accuracy matrix R is empty; it must have shape (T + 1, T), T >= 1")
    return [list(row) for row in rows]


def _accuracy(value: object, i: int, j: int) -> float:
    """``R[i, j]`` as a float, checked to be an accuracy."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"R[{i}, {j}] must be a real number; got {type(value).__name__} {value!r}")
    number = float(value)
    if not 0.0 <= number <= 1.0:  # also false for NaN
        hint = " (accuracies are fractions, not percentages)" if 1 < number <= 100 else ""
        raise ValueError(f"R[{i}, {j}] = {number!r} is not an accuracy in [0, 1]{hint}")
    return number


def _task_number(after: int | None, tasks: int) -> int:
    """The task ``k`` that ``after`` names: ``tasks`` for None, else checked to be in 1..tasks."""
    if after is None:
        return tasks
    if isinstance(after, bool) or not isinstance(after, int):
        raise TypeError(f"after must be a task number (int) or None; got {type(after).__name__}")
    if not 1 <= after <= tasks:
        raise ValueError(f"after must be a task number in 1..{tasks} (T = {tasks}); got {after}")
    return after


def _floats(values: Iterable[float] | torch.Tensor) -> list[float]:
    """The values as floats; at least one, each a real number."""
    if isinstance(values, torch.Tensor):
        if values.dim() != 1:
            raise ValueError(
                f"values must be a 1-D tensor (one value per run); got shape {tuple(values.shape)}"
            )
        values = values.tolist()
    result = []
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(
                f"values[{index}] must be a real number; got {type(value).__name__} {value!r}"
            )
        result.append(float(value))
    if not result:
        raise ValueError("mean_and_sem needs at least one value (one per run); got none")
    return result
