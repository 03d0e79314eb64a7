"""Your own network in `ewc run`: ``model.factory = "pkg.module:function"``.

The function takes one `ModelSpec` and returns a ``torch.nn.Module``::

    def make_model(spec: ModelSpec) -> torch.nn.Module: ...

It is called once per cell, on the CPU, with the global CPU generator seeded with ``spec.seed``
(and restored afterwards), so a model built with PyTorch's default initialisation starts from the
same weights in every strategy of a seed, exactly as the built-in models do. The model must map a
batch of inputs ``(N, *spec.input_shape)`` to logits ``(N, spec.num_outputs)``, or, when
``spec.heads > 1`` (task-incremental learning with a head per task), to ``(N, spec.heads,
spec.num_outputs)``: `ewc.experiment.models.output_layer` builds either. A forward pass on two
training inputs checks that shape before any training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ewc.experiment.factories import FactoryError, load_function
from ewc.experiment.streams.tasks import TaskStream

__all__ = ["ModelSpec", "build_factory_model"]

KEY = "model.factory"


@dataclass(frozen=True)
class ModelSpec:
    """What a model factory is told about the model the task stream needs.

    Attributes:
        input_shape: one input's shape without the batch dimension (``(1, 28, 28)``, ``(2,)``).
        input_dtype: the inputs' dtype (``torch.float32``; ``torch.int64`` for token ids).
        num_outputs: the width of each head (`TaskStream.num_outputs`).
        heads: the number of heads; above 1 the output must be ``(N, heads, num_outputs)``.
        num_tasks: the number of tasks in the stream.
        scenario: ``"task"``, ``"domain"`` or ``"class"``.
        seed: the run seed of this cell (the global CPU generator is already seeded with it).
    """

    input_shape: tuple[int, ...]
    input_dtype: torch.dtype
    num_outputs: int
    heads: int
    num_tasks: int
    scenario: str
    seed: int


def build_factory_model(factory: str, stream: TaskStream, seed: int) -> nn.Module:
    """Call ``factory`` with the `ModelSpec` of ``stream``; check what it returns.

    Raises:
        FactoryError: the factory cannot be imported, does not return an ``nn.Module`` with
            trainable parameters, or the model's output for two training inputs has the wrong
            shape; the message names the factory and what was expected.
    """
    inputs = stream.tasks[0].train_inputs
    spec = ModelSpec(
        input_shape=tuple(inputs.shape[1:]),
        input_dtype=inputs.dtype,
        num_outputs=stream.num_outputs,
        heads=stream.heads,
        num_tasks=stream.num_tasks,
        scenario=stream.scenario.value,
        seed=seed,
    )
    function = load_function(factory, KEY, "spec: ModelSpec")
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        model = function(spec)
        if not isinstance(model, nn.Module):
            raise FactoryError(
                f"{KEY} {factory!r} returned a {type(model).__name__}; it must return a "
                "torch.nn.Module"
            )
        _check_output(model, inputs[:2], spec, factory)
    if not any(p.requires_grad for p in model.parameters()):
        raise FactoryError(f"{KEY} {factory!r} returned a model without trainable parameters")
    return model


def _check_output(model: nn.Module, inputs: torch.Tensor, spec: ModelSpec, factory: str) -> None:
    """A forward pass in eval mode (no state changes) must give logits of the needed shape."""
    n = inputs.shape[0]
    wanted = (n, spec.heads, spec.num_outputs) if spec.heads > 1 else (n, spec.num_outputs)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(inputs)
    except Exception as error:  # the user's model may raise anything
        raise FactoryError(
            f"{KEY} {factory!r}: the model fails on a batch of inputs of shape "
            f"{tuple(inputs.shape)} ({type(error).__name__}: {error})"
        ) from error
    finally:
        model.train(training)
    got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
    if isinstance(output, torch.Tensor) and not output.is_floating_point():
        raise FactoryError(
            f"{KEY} {factory!r}: the model's output is {output.dtype}; it must be floating "
            "logits (the cross-entropy and the Fisher differentiate them)"
        )
    if got != wanted:
        raise FactoryError(
            f"{KEY} {factory!r}: the model's output for {n} inputs is {got}, but the task stream "
            f"needs logits of shape {wanted} (num_outputs={spec.num_outputs}, "
            f"heads={spec.heads}); ewc.experiment.models.output_layer builds that layer"
        )
