"""A training loop and an evaluation you can read in one screen.

`train_epoch` is the classic ``normal_train`` (no penalty) and ``ewc_train`` (with one) in a single
function: the penalty is just a term added to the task loss.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ewc._batches import IGNORE_INDEX, Batch, OutputFn, check_targets, iterate_batches, model_logits
from ewc._modes import evaluation_mode
from ewc.penalties import check_optimizer_holds

LossFn = Callable[[Tensor, Tensor], Tensor]


class Penalty(Protocol):
    """A term added to the task loss, e.g. `ewc.EWC`, `ewc.L2`, or any ``lambda: ...``.

    Calling it returns its value as a scalar tensor, differentiable in the model's parameters.
    """

    def __call__(self) -> Tensor:
        """The penalty's value at the model's current parameters."""
        ...


@runtime_checkable
class GradientPenalty(Penalty, Protocol):
    """A `Penalty` that can also add its known gradient straight into ``.grad``.

    `train_step` uses `add_gradient_` after the task loss's backward: the same update as
    ``(loss + penalty()).backward()``, without building a graph for the penalty.
    """

    def add_gradient_(self) -> Tensor:
        """Add the penalty's gradient into each parameter's ``.grad``; return its value."""
        ...


class StepLoss(NamedTuple):
    """The loss of one training step: the total, and the penalty's part of it (None without one)."""

    total: float
    penalty: float | None


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the batch and its parts."""


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """The default task loss: the mean cross-entropy over samples, or over tokens for sequences.

    (N, C) logits with N labels: `F.cross_entropy`. (N, T, C) logits with (N, T) labels: the
    token-level cross-entropy of language models, averaged over the tokens whose label is not
    -100 (padding), i.e. `F.cross_entropy` over the N·T rows with ``ignore_index=-100``.
    """
    if logits.dim() == 3:
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    return F.cross_entropy(logits, targets)


def train_epoch(
    model: nn.Module,
    loader: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    *,
    penalty: Penalty | None = None,
    loss_fn: LossFn = cross_entropy,
    output_fn: OutputFn | None = None,
) -> float:
    """One pass over ``loader`` minimising ``loss_fn(logits, targets) + penalty()``.

    Args:
        model: put in train mode for the epoch.
        loader: an iterable of ``(inputs, targets)`` batches; moved to the model's device.
        optimizer: any torch optimizer over the model's parameters.
        penalty: e.g. an `ewc.EWC` or `ewc.L2`; called once per step (None: plain training).
        loss_fn: the task loss; the default `cross_entropy` also takes (N, T, C) sequence logits
            with (N, T) labels (-100 = padding); with it, labels are checked to be in range.
        output_fn: maps the model output to logits (e.g. a task's head); default: identity.

    Returns:
        The mean total loss (task loss + penalty) over the epoch's batches.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite; the parameters are left as they were
            before that step.
    """
    device = _device(model)
    model.train()
    total, batches = 0.0, 0
    for batch in iterate_batches(loader, device=device):
        step = train_step(
            model, batch, optimizer, penalty=penalty, loss_fn=loss_fn, output_fn=output_fn
        )
        total += step.total
        batches += 1
    return total / max(batches, 1)


def train_step(
    model: nn.Module,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    *,
    penalty: Penalty | None = None,
    loss_fn: LossFn = cross_entropy,
    output_fn: OutputFn | None = None,
) -> StepLoss:
    """One optimizer step on one batch (already on the model's device).

    A `GradientPenalty` (`ewc.EWC`, `ewc.L2`) adds its gradient straight into ``.grad`` after the
    task loss's backward: the same update as ``(loss + penalty()).backward()`` for less work. The
    step is taken only when the total loss is finite, whatever the penalty (none included);
    otherwise `NonFiniteLossError` names the batch and no parameter has moved.
    """
    logits = model_logits(model, batch, output_fn)
    if loss_fn is cross_entropy or loss_fn is F.cross_entropy:
        check_targets(logits, batch.targets, batch)
    task_loss = loss_fn(logits, batch.targets)
    _check_penalty_and_optimizer(penalty, optimizer)
    optimizer.zero_grad(set_to_none=True)
    if isinstance(penalty, GradientPenalty):
        task_loss.backward()
        extra = penalty.add_gradient_()
    else:
        extra = penalty() if penalty is not None else None
        (task_loss if extra is None else task_loss + extra).backward()
    penalty_value = None if extra is None else float(extra.detach())
    total = float(task_loss.detach()) + (penalty_value or 0.0)
    if not math.isfinite(total):
        raise NonFiniteLossError(
            non_finite_message(batch.index, float(task_loss.detach()), penalty_value)
        )
    optimizer.step()
    return StepLoss(total, penalty_value)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable[Any], *, output_fn: OutputFn | None = None
) -> float:
    """Top-1 accuracy of ``model`` on ``loader`` in eval mode (the previous modes are restored).

    For (N, T, C) sequence logits the accuracy is over tokens, those labelled -100 left out.

    Returns:
        The fraction of correctly classified samples (or tokens), in [0, 1].
    """
    correct, seen = accuracy_counts(model, loader, output_fn=output_fn)
    if seen == 0:
        raise ValueError("cannot evaluate on data that yielded no samples (or only padding)")
    return correct / seen


@torch.no_grad()
def accuracy_counts(
    model: nn.Module, loader: Iterable[Any], *, output_fn: OutputFn | None = None
) -> tuple[int, int]:
    """(correctly classified, counted) samples or tokens of ``loader``, as `evaluate` counts them.

    Counts, unlike accuracies, add up across shards: the accuracy on the union of several ranks'
    shards is Σ correct / Σ counted (all-reduced), not the mean of the ranks' accuracies.
    """
    device = _device(model)
    correct = seen = 0
    with evaluation_mode(model):
        for batch in iterate_batches(loader, device=device):
            logits = model_logits(model, batch, output_fn)
            mask = check_targets(logits, batch.targets, batch)
            hits = logits.argmax(dim=-1) == batch.targets
            correct += int(hits.sum() if mask is None else (hits & mask).sum())
            seen += batch.size if mask is None else int(mask.sum())
    return correct, seen


def _device(model: nn.Module) -> torch.device | None:
    first = next(model.parameters(), None)
    return first.device if first is not None else None


def non_finite_message(batch_index: int, task_loss: float, penalty: float | None) -> str:
    """Why a step was refused, naming the batch, both parts of the loss and the likely cause.

    A non-finite penalty points at the strength (λ × F with a large learning rate diverges);
    a non-finite task loss beside a finite penalty (or none) points first at the learning rate
    or at non-finite inputs.
    """
    parts = f"task loss {task_loss}" + ("" if penalty is None else f", penalty {penalty}")
    if penalty is not None and not math.isfinite(penalty):
        hint = (
            "the penalty is not finite: a large strength × Fisher diverges with this learning "
            "rate; lower the strength or the learning rate"
        )
    elif penalty is None:
        hint = "lower the learning rate, or check the batch's inputs for NaN or inf"
    else:
        hint = (
            "the penalty is finite: lower the learning rate, or check the batch's inputs for NaN "
            "or inf (a strength too large for the learning rate shows as a penalty that grows "
            "step by step before this)"
        )
    return f"batch {batch_index}: the loss is not finite ({parts}); the step was not taken. {hint}"


def _check_penalty_and_optimizer(penalty: Any, optimizer: torch.optim.Optimizer) -> None:
    """Refuse a penalty that this step would apply twice, or to parameters it does not train.

    Raises:
        ValueError: the penalty is also attached to the optimizer (its hook would add the
            gradient a second time), or the optimizer holds none of its parameters (a penalty
            built on another model).
    """
    if penalty is None or not getattr(penalty, "num_tasks", 0):
        return
    attached = getattr(penalty, "is_attached_to", None)
    if attached is not None and attached(optimizer):
        raise ValueError(
            "the penalty is attached to this optimizer (penalty.attach) and passed to train_step: "
            "its gradient would be added twice; use one of the two"
        )
    params = getattr(penalty, "penalised_parameters", None)
    if params is None:
        return
    checked = _CHECKED_PAIRS.setdefault(optimizer, weakref.WeakSet())
    try:
        if penalty in checked:
            return  # the parameters were checked at an earlier step of this pair
    except TypeError:  # a penalty that takes no weak reference: checked at every step
        checked = None
    own = {id(p) for group in optimizer.param_groups for p in group["params"]}
    check_optimizer_holds(params().values(), own)
    if checked is not None:
        checked.add(penalty)


#: Optimizer → the consolidated penalties whose parameters it was checked to hold (once per
#: pair: the lookup is a traversal of the model, a visible share of a small model's step). Weak
#: on both sides, so that a new penalty never inherits the check of a collected one.
_CHECKED_PAIRS: weakref.WeakKeyDictionary[Any, weakref.WeakSet] = weakref.WeakKeyDictionary()
