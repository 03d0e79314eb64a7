"""The network for the blob tasks: 2 → 64 → 64 → the output layer the stream needs."""

from __future__ import annotations

import math

from torch import nn

from ewc.experiment.model_factory import ModelSpec
from ewc.experiment.models import output_layer


def make_model(spec: ModelSpec) -> nn.Module:
    """An MLP for ``spec.input_shape`` inputs with one head, or a head per task (task-IL)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(spec.input_shape), 64),
        nn.ReLU(),
        nn.Linear(64, 64),
        nn.ReLU(),
        output_layer(64, spec.num_outputs, spec.heads),
    )
