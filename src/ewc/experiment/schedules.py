"""The learning rate within a task, as a factor of `training.lr` that depends only on the position
in the task, so a resumed run needs no scheduler state.

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
