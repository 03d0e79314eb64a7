"""The learning-rate factor within a task: values against the formulas, and the errors."""

from __future__ import annotations

import itertools
import math

import pytest

from ewc.experiment.schedules import LrSchedule, lr_factor


def test_constant_is_one_at_every_step():
    assert [lr_factor("constant", k, 7) for k in range(7)] == [1.0] * 7


def test_cosine_starts_at_one_halves_midway_and_ends_near_zero():
    steps = 8
    factors = [lr_factor(LrSchedule.COSINE, k, steps) for k in range(steps)]
    assert factors[0] == 1.0
    assert factors[4] == pytest.approx(0.5, abs=1e-15)
    assert factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)), abs=1e-15)
    assert 0 < factors[-1] < 0.04
    assert all(a > b for a, b in itertools.pairwise(factors))


def test_warm_up_multiplies_either_schedule():
    assert [lr_factor("constant", k, 10, warmup_steps=4) for k in range(6)] == [
        0.25,
        0.5,
        0.75,
        1.0,
        1.0,
        1.0,
    ]
    cosine = lr_factor("cosine", 1, 10)
    assert lr_factor("cosine", 1, 10, warmup_steps=4) == pytest.approx(0.5 * cosine)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("linear", 0, 5), "unknown learning-rate schedule 'linear'; valid schedules are"),
        (("cosine", 5, 5), r"step must be in \[0, 5\); got 5"),
        (("cosine", -1, 5), r"step must be in \[0, 5\); got -1"),
        (("cosine", 0, 5, -2), "warmup_steps must be non-negative; got -2"),
    ],
)
def test_bad_arguments_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        lr_factor(*args)
