"""Reading `(inputs, targets)` batches from user data, and checking what a model made of them.

Every check names the batch (its 0-based position in the iterable) and what would be right.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Maps a model's output (a tensor, tuple, dict or dataclass) to the logits of one task.
OutputFn = Callable[[Any], Tensor]


@dataclass(frozen=True)
class Batch:
    """One batch: its position in the data, the inputs, and the targets."""

    index: int
    inputs: Tensor
    targets: Tensor

    @property
    def size(self) -> int:
        """The number of samples in the batch."""
        return self.inputs.shape[0]


def iterate_batches(
    data: Iterable[Any], *, device: torch.device | None = None, limit: int | None = None
) -> Iterator[Batch]:
    """Yield the batches of ``data`` moved to ``device``, stopping after ``limit`` samples in total.

    The last batch is cut so that exactly ``min(limit, len(data))`` samples are yielded; empty
    batches are skipped.
    """
    seen = 0
    for index, item in enumerate(data):
        if limit is not None and seen >= limit:
            return
        inputs, targets = _unpack(item, index)
        if inputs.shape[0] == 0:
            continue
        if limit is not None and seen + inputs.shape[0] > limit:
            keep = limit - seen
            inputs, targets = inputs[:keep], targets[:keep]
        if device is not None:
            inputs, targets = inputs.to(device), targets.to(device)
        seen += inputs.shape[0]
        yield Batch(index, inputs, targets)


def _unpack(item: Any, index: int) -> tuple[Tensor, Tensor]:
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise TypeError(
            f"batch {index}: expected an (inputs, targets) pair; got {type(item).__name__}"
        )
    inputs, targets = item
    for role, value in (("inputs", inputs), ("targets", targets)):
        if not isinstance(value, Tensor):
            raise TypeError(f"batch {index}: {role} must be a tensor; got {type(value).__name__}")
    if inputs.dim() == 0 or targets.dim() == 0 or inputs.shape[0] != targets.shape[0]:
        raise ValueError(
            f"batch {index}: inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} "
            "must share their first (batch) dimension"
        )
    return inputs, targets


def model_logits(
    model: nn.Module, batch: Batch, output_fn: Callable[[Any], Tensor] | None
) -> Tensor:
    """The checked (N, C) logits of ``model`` on the batch, read through ``output_fn`` if given."""
    output = model(batch.inputs)
    return check_logits(output_fn(output) if output_fn is not None else output, batch)


#: The target value that marks a token to leave out (padding), as in `F.cross_entropy`.
IGNORE_INDEX = -100


def check_logits(logits: Any, batch: Batch) -> Tensor:
    """Return ``logits`` if it is a floating tensor for this batch with C ≥ 2 classes.

    The shape must be (N, C) for a classifier, or (N, T, C) for a sequence model (one row of T
    token logits per sample).
    """
    if not isinstance(logits, Tensor):
        raise TypeError(
            f"batch {batch.index}: the model (after output_fn) must return a logits tensor; "
            f"got {type(logits).__name__}"
        )
    shape_ok = logits.dim() in (2, 3) and logits.shape[0] == batch.size
    if not shape_ok or not logits.is_floating_point():
        raise ValueError(
            f"batch {batch.index}: expected floating logits of shape ({batch.size}, classes) or "
            f"({batch.size}, tokens, classes); got {logits.dtype} {tuple(logits.shape)} "
            "(use output_fn to select a head)"
        )
    if logits.shape[-1] < 2:
        raise ValueError(
            f"batch {batch.index}: logits have {logits.shape[-1]} class; a softmax over one class "
            "is constant, so a classifier needs at least 2 logits"
        )
    return logits


def check_targets(
    logits: Tensor, targets: Tensor, batch: Batch, ignore_index: int = IGNORE_INDEX
) -> Tensor | None:
    """Check the labels against the logits; for a sequence, return the mask of counted tokens.

    (N, C) logits need N labels in [0, C) (returns None); (N, T, C) logits need (N, T) labels,
    each in [0, C) or equal to ``ignore_index`` (a padding token, left out; returns the (N, T)
    boolean mask of the other tokens).
    """
    if logits.dim() == 2:
        check_class_targets(targets, logits.shape[1], batch)
        return None
    _check_integer(targets, batch)
    if targets.shape != logits.shape[:2]:
        raise ValueError(
            f"batch {batch.index}: logits {tuple(logits.shape)} need labels of shape "
            f"{tuple(logits.shape[:2])}, one per token; got {tuple(targets.shape)}"
        )
    mask = targets != ignore_index
    _check_range(targets[mask], logits.shape[-1], batch, f" or {ignore_index} (ignored)")
    return mask


def check_class_targets(targets: Tensor, num_classes: int, batch: Batch) -> None:
    """Raise unless ``targets`` are integer class labels in [0, num_classes), one per sample."""
    _check_integer(targets, batch)
    if targets.shape != (batch.size,):
        raise ValueError(
            f"batch {batch.index}: expected {batch.size} labels of shape ({batch.size},); "
            f"got shape {tuple(targets.shape)}"
        )
    _check_range(targets, num_classes, batch)


def _check_integer(targets: Tensor, batch: Batch) -> None:
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"batch {batch.index}: labels must be integers; got {targets.dtype}")


def _check_range(labels: Tensor, num_classes: int, batch: Batch, extra: str = "") -> None:
    if labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"batch {batch.index}: labels must be in [0, {num_classes}){extra}; got {bad}"
        )


def sequence_log_likelihood_loss(
    logits: Tensor, targets: Tensor, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """−(1/N) Σ_n log p(y_n | x_n): the mean over samples of their negative log-likelihood.

    For (N, C) logits this is the usual cross-entropy; for (N, T, C) logits a sample is a sequence
    and log p(y_n | x_n) = Σ_t log p(y_nt | x_n, y_n,<t) over its tokens not equal to
    ``ignore_index``, so the mean is over sequences, not tokens.
    """
    if logits.dim() == 2:
        return F.cross_entropy(logits, targets)
    flat = F.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index, reduction="sum"
    )
    return flat / logits.shape[0]


def check_finite(batch: Batch, logits: Tensor) -> None:
    """Raise, naming the batch, if its inputs or the model's logits hold a NaN or an infinity.

    A float sum is finite only if every term is (an infinity or a NaN makes it ±inf or NaN), so
    one sum of each tensor, widened to at least float32, clears the usual batch in a single read
    and one synchronisation; only a non-finite sum (which an overflow of finite values can also
    give) runs the element-wise test that counts the bad values.
    """
    inputs = batch.inputs
    total = _wide_sum(logits)
    if inputs.is_floating_point():
        total = total + _wide_sum(inputs)
    if bool(torch.isfinite(total)):
        return
    if inputs.is_floating_point() and not bool(torch.isfinite(inputs).all()):
        bad = int((~torch.isfinite(inputs)).sum())
        raise ValueError(
            f"batch {batch.index}: the inputs hold {bad} non-finite values (NaN or infinity); "
            "the Fisher is undefined there: clean or drop those samples"
        )
    if not bool(torch.isfinite(logits).all()):
        bad = int((~torch.isfinite(logits)).sum())
        raise ValueError(
            f"batch {batch.index}: the model's logits hold {bad} non-finite values although the "
            "inputs are finite (the weights or an activation overflowed); the Fisher is undefined"
        )


def _wide_sum(tensor: Tensor) -> Tensor:
    return tensor.detach().sum(dtype=torch.promote_types(tensor.dtype, torch.float32))


def check_finite_sums(sums: dict[str, Tensor]) -> None:
    """Raise naming the parameters whose accumulated squared gradients are not finite."""
    bad = [name for name, total in sums.items() if not bool(torch.isfinite(total).all())]
    if bad:
        raise ValueError(
            f"the squared gradients of {bad} overflowed to non-finite values while the inputs and "
            "logits were finite; compute the Fisher in a wider dtype (e.g. on model.double())"
        )
