"""The learning rate within a task: a factor of `training.lr` set by a `LambdaLR`.

The factor depends only on the position in the task; `task_lr_scheduler` applies it through
`torch.optim.lr_scheduler.LambdaLR`.

- ``constant``: 1.
- ``cosine``: ½ (1 + cos(π k / K)) at the task's k-th step (0-based) of K, one cosine cycle per
  task restarting at the full rate (Loshchilov & Hutter 2017, SGDR).

With ``warmup_steps = W > 0`` the factor is also multiplied by min(1, (k + 1) / W).

Why decay within a task matters for EWC: Adam moves every weight by about lr per step whatever its
gradient's scale, so a weight held by a stiff penalty λ F_i still jitters by ~lr around where the
penalty and the new task balance; a larger λ does not hold it tighter. Decaying the rate towards
the task's end lets the weights settle at that balance before the task's parameters are anchored.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from ewc._choices import Choice


class LrSchedule(Choice):
    """How the learning rate moves within each task (see the module docstring)."""

    __noun__ = ("learning-rate schedule", "schedules")

    CONSTANT = "constant"
    COSINE = "cosine"


def lr_factor(schedule: LrSchedule | str, step: int, steps: int, warmup_steps: int = 0) -> float:
    """The factor of the base learning rate at 0-based ``step`` of a task of ``steps`` steps."""
    schedule = LrSchedule.parse(schedule)
    if not 0 <= step < steps:
        raise ValueError(f"step must be in [0, {steps}); got {step}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be non-negative; got {warmup_steps}")
    factor = 1.0
    if schedule is LrSchedule.COSINE:
        factor = 0.5 * (1.0 + math.cos(math.pi * step / steps))
    if warmup_steps:
        factor *= min(1.0, (step + 1) / warmup_steps)
    return factor


def task_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: LrSchedule | str,
    lr: float,
    steps: int,
    *,
    warmup_steps: int = 0,
    start: int = 0,
    state: dict[str, Any] | None = None,
) -> LambdaLR:
    """A `LambdaLR` that sets ``lr × lr_factor(schedule, k, steps, warmup_steps)`` for step k.

    One scheduler covers one task: build it when the task starts (or resumes at 0-based step
    ``start``), call its ``step()`` after each optimizer step, and drop it when the task ends.
    After the task's last step the factor stays at its last value (no further step uses it).

    Args:
        optimizer: the optimizer whose parameter groups get the rate; their ``initial_lr``
            is set to ``lr``.
        schedule: ``constant`` or ``cosine`` (see the module docstring).
        lr: the base learning rate, ``training.lr``.
        steps: the task's number of optimizer steps.
        warmup_steps: linear warm-up length (0: none).
        start: the step the task continues at; the rate is set for it at once.
        state: a ``state_dict()`` of this scheduler saved at ``start`` (a checkpoint's).

    Raises:
        ValueError: ``state`` was saved at another step than ``start``.
    """
    schedule = LrSchedule.parse(schedule)
    lr_factor(schedule, 0, steps, warmup_steps)  # checks the arguments once

    def factor(step: int) -> float:
        return lr_factor(schedule, min(step, steps - 1), steps, warmup_steps)

    for group in optimizer.param_groups:
        group["initial_lr"] = lr
    scheduler = LambdaLR(optimizer, factor, last_epoch=start - 1)
    if state is not None:
        if state.get("last_epoch") != start:
            raise ValueError(
                f"the learning-rate schedule was saved at step {state.get('last_epoch')} of the "
                f"task, but the task continues at step {start}"
            )
        scheduler.load_state_dict(state)
    return scheduler
