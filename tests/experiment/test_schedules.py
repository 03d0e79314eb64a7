"""The learning-rate factor within a task: values against the formulas, and the errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ewc.experiment.schedules import LrSchedule, lr_factor, task_lr_scheduler


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


def sgd(lr: float = 0.5) -> torch.optim.SGD:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def rates(optimizer: torch.optim.Optimizer, scheduler, steps: int) -> list[float]:
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_the_scheduler_sets_lr_times_the_factor_at_every_step():
    optimizer = sgd()
    scheduler = task_lr_scheduler(optimizer, "cosine", 0.1, 10, warmup_steps=3)
    assert rates(optimizer, scheduler, 12) == [
        0.1 * lr_factor("cosine", min(k, 9), 10, 3) for k in range(12)
    ]


def test_a_scheduler_rebuilt_from_its_state_continues_the_same_rates():
    whole_optimizer = sgd()
    whole = task_lr_scheduler(whole_optimizer, "cosine", 0.1, 10, warmup_steps=3)
    expected = rates(whole_optimizer, whole, 10)
    first_optimizer = sgd()
    first = task_lr_scheduler(first_optimizer, "cosine", 0.1, 10, warmup_steps=3)
    head = rates(first_optimizer, first, 4)
    state = first.state_dict()
    optimizer = sgd(lr=123.0)  # whatever the rate was: the schedule sets it
    resumed = task_lr_scheduler(optimizer, "cosine", 0.1, 10, warmup_steps=3, start=4, state=state)
    assert head + rates(optimizer, resumed, 6) == expected
    derived_optimizer = sgd()  # an older checkpoint: no state, the position alone
    derived = task_lr_scheduler(derived_optimizer, "cosine", 0.1, 10, warmup_steps=3, start=4)
    assert head + rates(derived_optimizer, derived, 6) == expected
    with pytest.raises(ValueError, match="saved at step 4 of the task, but the task continues"):
        task_lr_scheduler(sgd(), "cosine", 0.1, 10, start=5, state=state)
