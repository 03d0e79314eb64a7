"""Test accuracy on every task of a stream: the full test sets, or a fixed subset for the curves.

A cell measures two things (`ewc.experiment.cell`). The rows of the accuracy matrix R, after each
task, always use every test sample of every task (`Evaluator.__call__`): the metrics rest on them.
The points of the training curves, every ``eval_every`` steps, use at most ``subset`` test samples
per task (`Evaluator.curve`), drawn once per cell from a generator seeded by the caller, sorted,
and the same at every point, so that a curve moves only with the model. All tasks' subset inputs
are made once and go through the model together, in batches of ``batch_size`` that may span
tasks; each task's accuracy is then read from its rows of the output through its own
``output_fn``. A point on n samples has a standard error of about √(p(1 − p)/n): 0.7 points of
accuracy at p = 0.95 and n = 1,000.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ewc._modes import evaluation_mode
from ewc.experiment.streams.benchmarks import TaskStream, TensorBatches
from ewc.training import evaluate


@dataclass(frozen=True)
class _Subset:
    """Every task's subset inputs in one tensor; task j owns rows ``bounds[j]:bounds[j + 1]``."""

    inputs: Tensor
    targets: Tensor
    bounds: tuple[int, ...]


class Evaluator:
    """Test accuracy of a model on every task of a stream, in task order.

    Args:
        stream: the tasks, whose test sets are measured.
        batch_size: samples per forward pass.
        subset: at most this many test samples per task for `curve`; None: the full test sets.
        seed: seeds the draw of the subsets.
    """

    def __init__(
        self, stream: TaskStream, batch_size: int, *, subset: int | None = None, seed: int = 0
    ):
        """Evaluate on ``stream``'s test sets in batches of ``batch_size``."""
        self.stream, self.batch_size = stream, batch_size
        sizes = [task.test_targets.shape[0] for task in stream.tasks]
        self.subset = subset if subset is not None and subset < max(sizes) else None
        self.seed = seed
        self._cached: _Subset | None = None

    def __call__(self, model: nn.Module) -> list[float]:
        """One accuracy in [0, 1] per task on its full test set (`ewc.training.evaluate`)."""
        return [
            evaluate(
                model,
                TensorBatches(
                    task.test_images,
                    task.test_targets,
                    batch_size=self.batch_size,
                    transform=task.transform,
                ),
                output_fn=self.stream.output_fn(j),
            )
            for j, task in enumerate(self.stream.tasks)
        ]

    @torch.no_grad()
    def curve(self, model: nn.Module) -> list[float]:
        """One accuracy in [0, 1] per task on its subset (the full test set without ``subset``)."""
        if self.subset is None:
            return self(model)
        subset = self._subset()
        device = next(model.parameters()).device
        with evaluation_mode(model):
            outputs = [
                model(subset.inputs[start : start + self.batch_size].to(device))
                for start in range(0, subset.targets.shape[0], self.batch_size)
            ]
        output = torch.cat(outputs)
        accuracies = []
        for j, (start, stop) in enumerate(zip(subset.bounds, subset.bounds[1:], strict=False)):
            output_fn = self.stream.output_fn(j)
            logits = output[start:stop] if output_fn is None else output_fn(output[start:stop])
            hits = logits.argmax(dim=-1).cpu() == subset.targets[start:stop]
            accuracies.append(int(hits.sum()) / (stop - start))
        return accuracies

    def _subset(self) -> _Subset:
        """The subsets' inputs, made on the first call."""
        if self._cached is None:
            generator = torch.Generator().manual_seed(self.seed)
            inputs, targets, bounds = [], [], [0]
            for task in self.stream.tasks:
                count = task.test_targets.shape[0]
                rows = torch.randperm(count, generator=generator)[: self.subset].sort().values
                inputs.append(task.transform(task.test_images[rows]))
                targets.append(task.test_targets[rows])
                bounds.append(bounds[-1] + rows.numel())
            self._cached = _Subset(torch.cat(inputs), torch.cat(targets), tuple(bounds))
        return self._cached
