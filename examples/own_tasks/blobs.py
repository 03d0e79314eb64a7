"""Synthetic task stream: 2-D Gaussian blobs, two classes per task, generated from the seed.

Task t has classes 2t and 2t+1: two round Gaussian clouds (standard deviation 0.5) on either side
of a centre that moves around a circle of radius 3 from task to task. Within one task the classes
are easy to tell apart; in the class-incremental scenario the model must also tell them from the
classes of the other tasks, which plain fine-tuning forgets.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import TensorDataset

from ewc.experiment.streams.factory import TaskSpec

NUM_TASKS = 3
TRAIN_PER_CLASS = 500
TEST_PER_CLASS = 200


def tasks(seed: int) -> list[TaskSpec]:
    """The stream of ``NUM_TASKS`` blob tasks; the same seed gives the same points."""
    generator = torch.Generator().manual_seed(seed)
    stream = []
    for t in range(NUM_TASKS):
        classes = (2 * t, 2 * t + 1)
        angle = 2 * math.pi * t / NUM_TASKS
        centre = 3.0 * torch.tensor([math.cos(angle), math.sin(angle)])
        offset = torch.tensor([-math.sin(angle), math.cos(angle)])  # across the circle
        means = {classes[0]: centre - offset, classes[1]: centre + offset}
        train = _sample(means, TRAIN_PER_CLASS, generator)
        test = _sample(means, TEST_PER_CLASS, generator)
        stream.append(TaskSpec(f"blobs {t + 1}", train, test, classes))
    return stream


def _sample(means: dict[int, torch.Tensor], per_class: int, generator: torch.Generator):
    """``per_class`` points around each mean, shuffled, as a TensorDataset of (x, label)."""
    points = [m + 0.5 * torch.randn(per_class, 2, generator=generator) for m in means.values()]
    labels = [torch.full((per_class,), label) for label in means]
    order = torch.randperm(per_class * len(means), generator=generator)
    return TensorDataset(torch.cat(points)[order], torch.cat(labels)[order])
