"""Metrics on hand-written accuracy matrices; every expected value is worked out in a comment.

Rows: 0 = untrained (b_j), i = after task i. Below, R[i, j] uses task numbers for the column too
(R[i, j] = rows[i][j - 1]), as in the formulas of ewc.experiment.metrics.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ewc.experiment.metrics import (
    MeanSEM,
    average_accuracy,
    average_forgetting,
    backward_transfer,
    forgetting,
    forward_transfer,
    mean_and_sem,
    mean_matrix,
    summarize,
)

# T = 2.
R2 = [
    [0.10, 0.20],  # b
    [0.90, 0.30],  # after task 1
    [0.70, 0.80],  # after task 2
]
# ACC = (0.70 + 0.80) / 2 = 0.75
# BWT = R[2, 1] − R[1, 1] = 0.70 − 0.90 = −0.20
# FWT = R[1, 2] − b_2 = 0.30 − 0.20 = 0.10
# f_1^2 = max(R[1, 1]) − R[2, 1] = 0.90 − 0.70 = 0.20

# T = 3, task 1 learned later: poor after its own training, good only after task 2.
R3 = [
    [0.10, 0.10, 0.10],  # b
    [0.50, 0.20, 0.30],  # after task 1
    [0.90, 0.95, 0.40],  # after task 2
    [0.60, 0.85, 0.92],  # after task 3
]
# ACC = (0.60 + 0.85 + 0.92) / 3 = 2.37 / 3 = 0.79
# BWT = ((0.60 − 0.50) + (0.85 − 0.95)) / 2 = (0.10 − 0.10) / 2 = 0
# FWT = ((R[1, 2] − b_2) + (R[2, 3] − b_3)) / 2 = ((0.20 − 0.10) + (0.40 − 0.10)) / 2 = 0.20
# f_1^3 = max(0.50, 0.90) − 0.60 = 0.30 (the max matters: R[1, 1] − R[3, 1] would be −0.10)
# f_2^3 = max(0.95) − 0.85 = 0.10;  F_3 = (0.30 + 0.10) / 2 = 0.20, although BWT = 0
# f_1^2 = max(0.50) − 0.90 = −0.40 (more accurate than ever: negative, not clipped)

# T = 4, non-monotone histories.
R4 = [
    [0.10, 0.20, 0.10, 0.30],  # b
    [0.80, 0.25, 0.15, 0.30],  # after task 1
    [0.60, 0.90, 0.20, 0.25],  # after task 2
    [0.85, 0.50, 0.85, 0.40],  # after task 3
    [0.40, 0.70, 0.60, 0.95],  # after task 4
]
# ACC = (0.40 + 0.70 + 0.60 + 0.95) / 4 = 2.65 / 4 = 0.6625
# BWT = ((0.40 − 0.80) + (0.70 − 0.90) + (0.60 − 0.85)) / 3 = −0.85 / 3
# FWT = ((0.25 − 0.20) + (0.20 − 0.10) + (0.40 − 0.30)) / 3 = 0.25 / 3
# f_1^4 = max(0.80, 0.60, 0.85) − 0.40 = 0.45 (the best is R[3, 1], after a dip)
# f_2^4 = max(0.90, 0.50) − 0.70 = 0.20 (dropped, then partly recovered)
# f_3^4 = max(0.85) − 0.60 = 0.25;  F_4 = (0.45 + 0.20 + 0.25) / 3 = 0.30
# f_1^3 = max(0.80, 0.60) − 0.85 = −0.05;  f_2^3 = max(0.90) − 0.50 = 0.40;  F_3 = 0.35 / 2
# f_1^2 = max(0.80) − 0.60 = 0.20;  F_2 = 0.20


def close(value: float) -> object:
    return pytest.approx(value, abs=1e-12)


def close_list(values: list[float]) -> object:
    return pytest.approx(values, abs=1e-12)


def test_two_tasks() -> None:
    assert average_accuracy(R2) == close(0.75)
    assert backward_transfer(R2) == close(-0.20)
    assert forward_transfer(R2) == close(0.10)
    assert forgetting(R2) == close_list([0.20])
    assert average_forgetting(R2) == close(0.20)


def test_three_tasks_with_a_task_learned_later() -> None:
    assert average_accuracy(R3) == close(0.79)
    assert backward_transfer(R3) == close(0.0)
    assert forward_transfer(R3) == close(0.20)
    assert forgetting(R3) == close_list([0.30, 0.10])
    assert average_forgetting(R3) == close(0.20)
    assert forgetting(R3, after=2) == close_list([-0.40])
    assert average_forgetting(R3, after=2) == close(-0.40)


def test_four_tasks_with_non_monotone_histories() -> None:
    assert average_accuracy(R4) == close(0.6625)
    assert backward_transfer(R4) == close(-0.85 / 3)
    assert forward_transfer(R4) == close(0.25 / 3)
    assert forgetting(R4) == close_list([0.45, 0.20, 0.25])
    assert forgetting(R4, after=4) == close_list([0.45, 0.20, 0.25])
    assert average_forgetting(R4) == close(0.30)
    assert forgetting(R4, after=3) == close_list([-0.05, 0.40])
    assert average_forgetting(R4, after=3) == close(0.35 / 2)
    assert forgetting(R4, after=2) == close_list([0.20])
    assert average_forgetting(R4, after=2) == close(0.20)


def test_forgetting_ignores_accuracy_before_the_task_was_trained() -> None:
    rows = [
        [0.10, 0.10, 0.10],
        [0.90, 0.95, 0.20],  # task 2 is already at 0.95 before its training (forward transfer)
        [0.90, 0.70, 0.30],
        [0.90, 0.60, 0.90],
    ]
    # f_2^3 = max(R[2, 2]) − R[3, 2] = 0.70 − 0.60 = 0.10, not 0.95 − 0.60 from the row of task 1
    # f_1^3 = max(0.90, 0.90) − 0.90 = 0
    assert forgetting(rows) == close_list([0.0, 0.10])
    # FWT = ((0.95 − 0.10) + (0.30 − 0.10)) / 2 = 0.525
    assert forward_transfer(rows) == close(0.525)


def test_forward_transfer_uses_the_untrained_row_only_as_baseline() -> None:
    rows = [
        [0.50, 0.10],  # b_1 = 0.50 plays no part: nothing is trained before task 1
        [0.90, 0.40],
        [0.80, 0.90],
    ]
    # FWT = R[1, 2] − b_2 = 0.40 − 0.10 = 0.30
    assert forward_transfer(rows) == close(0.30)
    rows[0][0] = 0.0
    assert forward_transfer(rows) == close(0.30)


def test_one_task_has_accuracy_and_undefined_transfer_and_forgetting() -> None:
    rows = [[0.10], [0.90]]
    assert average_accuracy(rows) == close(0.90)
    assert math.isnan(backward_transfer(rows))
    assert math.isnan(forward_transfer(rows))
    assert forgetting(rows) == []
    assert math.isnan(average_forgetting(rows))
    summary = summarize(rows)
    assert summary["ACC"] == close(0.90)
    assert all(math.isnan(summary[name]) for name in ("BWT", "FWT", "forgetting"))


def test_forgetting_after_the_first_task_is_empty() -> None:
    assert forgetting(R4, after=1) == []
    assert math.isnan(average_forgetting(R4, after=1))


def test_summarize_returns_every_metric_by_name() -> None:
    summary = summarize(R4)
    assert set(summary) == {"ACC", "BWT", "FWT", "forgetting"}
    assert summary["ACC"] == close(0.6625)
    assert summary["BWT"] == close(-0.85 / 3)
    assert summary["FWT"] == close(0.25 / 3)
    assert summary["forgetting"] == close(0.30)
    assert all(isinstance(value, float) for value in summary.values())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_tensor_matrix_gives_the_same_metrics(dtype: torch.dtype) -> None:
    summary = summarize(torch.tensor(R4, dtype=dtype))
    expected = summarize(R4)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-6
    assert summary == pytest.approx(expected, abs=tolerance)
    assert forgetting(torch.tensor(R4, dtype=dtype)) == pytest.approx(forgetting(R4), abs=tolerance)


def test_tuples_and_integer_accuracies_are_accepted() -> None:
    rows = ((0, 0), (1, 0), (0, 1))
    # ACC = (0 + 1) / 2;  BWT = 0 − 1;  FWT = 0 − 0;  f_1^2 = 1 − 0
    assert summarize(rows) == {"ACC": 0.5, "BWT": -1.0, "FWT": 0.0, "forgetting": 1.0}


def test_the_input_is_not_modified() -> None:
    rows = [list(row) for row in R3]
    tensor = torch.tensor(R3)
    summarize(rows)
    summarize(tensor)
    assert rows == R3
    assert torch.equal(tensor, torch.tensor(R3))


accuracies = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@st.composite
def matrices(draw: st.DrawFn, monotone: bool = False) -> list[list[float]]:
    """A random (T + 1, T) matrix; ``monotone``: no accuracy rises after the task's training."""
    tasks = draw(st.integers(min_value=2, max_value=6))
    rows = [[draw(accuracies) for _ in range(tasks)] for _ in range(tasks + 1)]
    if monotone:
        for j in range(tasks):
            for i in range(j + 2, tasks + 1):
                rows[i][j] = min(rows[i][j], rows[i - 1][j])
    return rows


@given(matrices(monotone=True))
def test_forgetting_is_minus_bwt_when_no_accuracy_rises_after_training(rows) -> None:
    # With each task at its best right after training, max_{l=j..T−1} R[l, j] = R[j, j].
    assert average_forgetting(rows) == pytest.approx(-backward_transfer(rows), abs=1e-12)


@given(matrices())
def test_forgetting_is_at_least_the_drop_since_training(rows) -> None:
    tasks = len(rows) - 1
    for j, value in enumerate(forgetting(rows), start=1):
        assert value >= rows[j][j - 1] - rows[tasks][j - 1] - 1e-15
        assert -1.0 <= value <= 1.0
    assert 0.0 <= average_accuracy(rows) <= 1.0


def test_mean_and_sem_of_three_seeds() -> None:
    # mean = 0.9; s² = (0.01 + 0 + 0.01) / (3 − 1) = 0.01; SEM = 0.1 / √3
    result = mean_and_sem([0.8, 0.9, 1.0])
    assert isinstance(result, MeanSEM)
    assert result.mean == close(0.9)
    assert result.sem == close(0.1 / math.sqrt(3))


def test_mean_and_sem_of_two_seeds_and_other_inputs() -> None:
    # mean = 0.3; s = √((0.01 + 0.01) / 1); SEM = s / √2 = 0.1
    mean, sem = mean_and_sem([0.2, 0.4])
    assert (mean, sem) == (close(0.3), close(0.1))
    assert mean_and_sem(torch.tensor([0.2, 0.4], dtype=torch.float64)) == (close(0.3), close(0.1))
    assert mean_and_sem(x for x in (0.2, 0.4)) == (close(0.3), close(0.1))
    assert mean_and_sem([1, 3]) == (close(2.0), close(1.0))  # s = √2, SEM = √2 / √2
    assert mean_and_sem([0.7] * 5) == (close(0.7), close(0.0))


def test_mean_and_sem_of_one_seed_has_an_undefined_sem() -> None:
    mean, sem = mean_and_sem([0.42])
    assert mean == 0.42
    assert math.isnan(sem)


def test_mean_and_sem_keeps_an_undefined_metric_undefined() -> None:
    mean, sem = mean_and_sem([0.1, math.nan, 0.3])
    assert math.isnan(mean)
    assert math.isnan(sem)


@pytest.mark.parametrize(
    ("R", "message"),
    [
        ([], "empty"),
        ([[0.5]], r"shape \(1, 1\)"),
        ([[0.5, 0.5], [0.5, 0.5]], r"shape \(2, 2\)"),
        ([[0.5], [0.5], [0.5]], r"shape \(3, 1\)"),
        ([[0.1, 0.2], [0.3], [0.5, 0.6]], r"rows of lengths \[2, 1, 2\]"),
        ([[], []], r"shape \(2, 0\)"),
        (torch.zeros(3), r"2-dimensional.*\(3,\)"),
        (torch.zeros(3, 2, 1), r"2-dimensional.*\(3, 2, 1\)"),
        (torch.zeros(3, 3), r"shape \(3, 3\)"),
    ],
)
def test_bad_shapes_are_value_errors(R: object, message: str) -> None:
    for metric in (average_accuracy, backward_transfer, forward_transfer, forgetting, summarize):
        with pytest.raises(ValueError, match=message):
            metric(R)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1.5, r"R\[2, 1\] = 1.5 is not an accuracy in \[0, 1\]"),
        (-0.5, r"R\[2, 1\] = -0.5 is not an accuracy in \[0, 1\]$"),
        (-0.1, r"R\[2, 1\] = -0.1 is not an accuracy"),
        (85.0, r"R\[2, 1\] = 85.0 .*fractions, not percentages"),
        (math.nan, r"R\[2, 1\] = nan is not an accuracy"),
        (math.inf, r"R\[2, 1\] = inf is not an accuracy"),
    ],
)
def test_entries_outside_0_1_are_value_errors(value: float, message: str) -> None:
    rows = [list(row) for row in R2]
    rows[2][1] = value
    with pytest.raises(ValueError, match=message):
        summarize(rows)
    with pytest.raises(ValueError, match=message):
        summarize(torch.tensor(rows, dtype=torch.float64))


@pytest.mark.parametrize("value", [True, "0.5", None, 0.5j])
def test_entries_that_are_not_real_numbers_are_type_errors(value: object) -> None:
    rows: list[list[object]] = [list(row) for row in R2]
    rows[1][0] = value
    with pytest.raises(TypeError, match=r"R\[1, 0\] must be a real number"):
        average_accuracy(rows)


def test_boolean_tensor_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"R\[0, 0\] must be a real number; got bool"):
        average_accuracy(torch.ones(3, 2, dtype=torch.bool))


@pytest.mark.parametrize(
    ("R", "message"),
    [
        (0.5, "must be a tensor or a sequence of rows; got float"),
        ("abc", "got str"),
        (None, "got NoneType"),
        ([0.1, 0.2], "row 0 of the accuracy matrix R must be a sequence; got float"),
        ([[0.1], "a"], "row 1 .* got str"),
    ],
)
def test_non_matrices_are_type_errors(R: object, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        average_accuracy(R)


@pytest.mark.parametrize(("after", "message"), [(0, "in 1..4.*got 0"), (5, "in 1..4.*got 5")])
def test_after_outside_the_tasks_is_a_value_error(after: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        forgetting(R4, after=after)
    with pytest.raises(ValueError, match=message):
        average_forgetting(R4, after=after)


@pytest.mark.parametrize("after", [2.0, True, "2"])
def test_after_that_is_not_an_int_is_a_type_error(after: object) -> None:
    with pytest.raises(TypeError, match="after must be a task number"):
        forgetting(R4, after=after)


def test_mean_and_sem_errors() -> None:
    with pytest.raises(ValueError, match="at least one value"):
        mean_and_sem([])
    with pytest.raises(ValueError, match=r"1-D tensor.*\(2, 2\)"):
        mean_and_sem(torch.zeros(2, 2))
    with pytest.raises(TypeError, match=r"values\[1\] must be a real number; got str"):
        mean_and_sem([0.5, "0.6"])
    with pytest.raises(TypeError, match=r"values\[0\] must be a real number; got bool"):
        mean_and_sem([True])
    with pytest.raises(TypeError, match=r"values\[0\] must be a real number; got NoneType"):
        mean_and_sem([None])


def test_the_seed_mean_matrix_averages_what_is_present():
    first = [[0.1, 0.1], [0.9, 0.2], [0.8, 0.9]]
    second = [[0.3, 0.1], [0.7, None], [0.6, 0.7]]
    mean = mean_matrix([first, second])
    expected = [[0.2, 0.1], [0.8, 0.2], [0.7, 0.8]]
    assert all(row == pytest.approx(e) for row, e in zip(mean, expected, strict=True))
    assert mean_matrix([[[None]]]) == [[None]]
    with pytest.raises(ValueError, match="different shapes"):
        mean_matrix([first, first[:2]])
    with pytest.raises(ValueError, match="at least one"):
        mean_matrix([])


def test_summarize_checks_the_matrix_once(monkeypatch):
    import ewc.experiment.metrics as module

    calls = []
    checked = module._validated

    def counting(R):
        calls.append(R)
        return checked(R)

    monkeypatch.setattr(module, "_validated", counting)
    summarize([[0.1, 0.1], [0.9, 0.2], [0.8, 0.9]])
    assert len(calls) == 1
