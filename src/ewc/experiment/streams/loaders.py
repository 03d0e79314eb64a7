"""Reproducible batches over tensors in memory, for training and evaluating on a task.

A `DataLoader` over a `TensorDataset` would also do, but it indexes and collates sample by sample,
and shuffles from the global generator unless given one. Here a batch is one slice or one gather,
and the order of a pass is one ``torch.randperm`` call on a generator the caller owns, whose state
a checkpoint can save and restore. A ``transform`` turns each batch into model inputs as it is
drawn (uint8 images into a task's float inputs), so a task's inputs never exist all at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor


class TensorBatches:
    """``(inputs, targets)`` batches of two tensors, in order or reshuffled on every pass.

    With ``shuffle=True`` each ``iter()`` draws a fresh order with ``torch.randperm`` from
    ``generator``, so saving ``generator.get_state()`` before a pass and restoring it replays that
    pass's order exactly (resuming a checkpoint). The last batch may be smaller.

    Args:
        inputs: ``(N, ...)``.
        targets: ``(N, ...)``.
        batch_size: samples per batch, a positive integer.
        shuffle: a new random order per pass; needs ``generator`` (never the global generator).
        generator: the source of the orders (unused without shuffle); ``randperm`` runs on its
            device.
        transform: applied to each batch of inputs (e.g. `ewc.experiment.streams.tasks.Task`'s
            uint8 images → float inputs); None yields the inputs as they are.
    """

    def __init__(
        self,
        inputs: Tensor,
        targets: Tensor,
        *,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        for role, value in (("inputs", inputs), ("targets", targets)):
            if not isinstance(value, Tensor) or value.dim() == 0:
                raise ValueError(
                    f"{role} must be a tensor with a batch dimension; got {_shape(value)}"
                )
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError(
                f"inputs and targets must have the same number of samples; got "
                f"{inputs.shape[0]} and {targets.shape[0]}"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        self.batch_size = batch_size
        if shuffle and generator is None:
            raise ValueError(
                "shuffle=True needs generator= a torch.Generator, so the order is "
                "reproducible and does not consume the global random state"
            )
        self.inputs, self.targets = inputs, targets
        self.shuffle, self.generator, self.transform = shuffle, generator, transform

    @property
    def num_samples(self) -> int:
        """The number of samples, N."""
        return self.inputs.shape[0]

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if not self.shuffle or self.generator is None:
            return self._batches(None)
        # Drawn here, not lazily at the first batch: iter() alone fixes the pass's order.
        order = torch.randperm(
            self.num_samples, generator=self.generator, device=self.generator.device
        )
        return self._batches(order.to(self.inputs.device))

    def _batches(self, order: Tensor | None) -> Iterator[tuple[Tensor, Tensor]]:
        transform = self.transform
        for start in range(0, self.num_samples, self.batch_size):
            if order is None:
                stop = start + self.batch_size
                inputs, targets = self.inputs[start:stop], self.targets[start:stop]
            else:
                index = order[start : start + self.batch_size]
                inputs, targets = self.inputs[index], self.targets[index.to(self.targets.device)]
            yield (inputs if transform is None else transform(inputs)), targets

    def __repr__(self) -> str:
        return (
            f"TensorBatches(samples={self.num_samples}, batch_size={self.batch_size}, "
            f"batches={len(self)}, shuffle={self.shuffle})"
        )


def _shape(value: object) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
