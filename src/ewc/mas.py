"""Memory Aware Synapses (Aljundi et al. 2018): importance from the sensitivity of the output.

The importance of parameter θ_i is the mean, over N inputs, of the magnitude of the gradient of
the squared L2 norm of the model's output (Eq. 2 and Sec. 4 of the paper, its global version):

    Ω_i = (1/N) Σ_n | ∂ ‖f(x_n; θ)‖²₂ / ∂θ_i |

It needs no labels (any unlabelled data of the task works), and the penalty on later tasks is
λ Σ_i Ω_i (θ_i − θ*_i)² (Eq. 3: no 1/2, so ``strength`` is the paper's λ), with Ω summed over the
tasks seen and θ* the parameters at the end of the latest task.

The absolute value is taken per sample, so the gradients cannot be summed over a batch before
squaring as the Fisher's closed-form rules do; `mas_importance` computes per-sample gradients with
``torch.func`` (vmap of grad), a chunk of inputs at a time to bound the memory they take.

``gradient="batch-mean"`` computes instead the variant of Hsu et al. 2018's code
(GT-RIPL/Continual-Learning-Benchmark, ``agents/regularization.py``, ``MAS``): per batch b of the
data as given, the gradient of the mean of f² over the batch's samples and output units, then its
magnitude, averaged over the M batches,

    Ω_i = (1/M) Σ_b | ∂ mean_{n∈b, k} f_k(x_n; θ)² / ∂θ_i |

smaller than the per-sample Ω by the number of output units and by the cancellation of signs
within a batch, so the same λ is a weaker penalty.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ewc._choices import Choice
from ewc._chunks import chunk_length
from ewc._modes import evaluation_mode
from ewc.penalties import QuadraticPenalty


class MASGradient(Choice):
    """Whose gradient's magnitude `mas_importance` averages (see the module docstring)."""

    __noun__ = ("MAS gradient", "MAS gradients")

    PER_SAMPLE = "per-sample"  # Aljundi et al. 2018: |∂‖f(x_n)‖²/∂θ| per input
    BATCH_MEAN = "batch-mean"  # Hsu et al. 2018's code: |∂ mean_batch(f²)/∂θ| per batch


#: about this many per-sample gradient entries are held at once (32 MiB in float64)
PER_SAMPLE_ENTRIES = 2**22


def mas_importance(
    model: nn.Module,
    data: Iterable[Any],
    *,
    num_samples: int | None = None,
    output_fn: Callable[[Any], Tensor] | None = None,
    chunk_size: int | None = None,
    gradient: MASGradient | str = "per-sample",
) -> dict[str, Tensor]:
    """MAS importance Ω_i = (1/N) Σ_n |∂ ‖f(x_n)‖²₂ / ∂θ_i| of each trainable parameter.

    f(x) is the model's output read through ``output_fn`` (default: the output itself, the logits
    of a classifier, as in the paper, which takes the norm before any softmax); in a multi-head
    model pass an ``output_fn`` that selects the task's head, so that only that head's output
    counts. The model runs in eval mode (restored afterwards); no ``.grad`` is touched.

    Args:
        model: any module whose output (after ``output_fn``) is a tensor with the batch first.
        data: an iterable of input batches, or of ``(inputs, ...)`` tuples such as a labelled
            DataLoader's (only the first element is read: MAS needs no labels).
        num_samples: use at most this many inputs, the first ones in iteration order.
        output_fn: maps the model output to the tensor whose squared norm is taken, per sample.
        chunk_size: inputs per vmap call; default: as many as keep about ``PER_SAMPLE_ENTRIES``
            per-sample gradient entries in memory at once.
        gradient: ``"per-sample"`` (the paper, above) or ``"batch-mean"`` (Hsu et al.'s code:
            the magnitude of each batch's gradient of mean(f²), averaged over the batches of
            ``data``; see the module docstring).

    Returns:
        Ω per trainable parameter, keyed by its ``named_parameters()`` name.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no trainable parameters (none has requires_grad=True)")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive integer or None; got {chunk_size!r}")
    if MASGradient.parse(gradient) is MASGradient.BATCH_MEAN:
        return _batch_mean_importance(model, params, data, num_samples, output_fn)
    numel = sum(p.numel() for p in params.values())
    chunk = chunk_size or chunk_length(PER_SAMPLE_ENTRIES, numel)
    per_sample = _per_sample_gradient_fn(model, params, output_fn)
    device = next(iter(params.values())).device
    sums = {n: torch.zeros_like(p, requires_grad=False) for n, p in params.items()}
    count = 0
    with evaluation_mode(model), torch.no_grad():
        for batch in _input_batches(data, device, num_samples):
            for inputs in batch.split(chunk):
                grads = per_sample(inputs)
                for name, g in grads.items():
                    sums[name].add_(g.abs().sum(0))
            count += batch.shape[0]
    if count == 0:
        raise ValueError("data yielded no samples: the MAS importance is a mean over inputs")
    return {n: total / count for n, total in sums.items()}


def _batch_mean_importance(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    data: Iterable[Any],
    num_samples: int | None,
    output_fn: Callable[[Any], Tensor] | None,
) -> dict[str, Tensor]:
    """(1/M) Σ_b |∂ mean_{n∈b,k} f_k(x_n)² / ∂θ| over the M batches of ``data`` (Hsu et al.)."""
    names, tensors = list(params), list(params.values())
    sums = {n: torch.zeros_like(p, requires_grad=False) for n, p in params.items()}
    batches = 0
    with evaluation_mode(model), torch.enable_grad():
        for inputs in _input_batches(data, tensors[0].device, num_samples):
            output = model(inputs)
            output = output_fn(output) if output_fn is not None else output
            if not isinstance(output, Tensor):
                raise TypeError(
                    "the model output (after output_fn) must be a tensor; got "
                    f"{type(output).__name__}"
                )
            grads = torch.autograd.grad(output.square().mean(), tensors, allow_unused=True)
            for name, g in zip(names, grads, strict=True):
                if g is not None:
                    sums[name].add_(g.abs())
            batches += 1
    if batches == 0:
        raise ValueError("data yielded no samples: the MAS importance is a mean over inputs")
    return {n: total / batches for n, total in sums.items()}


def _input_batches(
    data: Iterable[Any], device: torch.device, limit: int | None
) -> Iterator[Tensor]:
    """The input tensors of ``data`` on ``device``, cut after ``limit`` inputs in total."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"num_samples must be a positive integer or None; got {limit!r}")
    seen = 0
    for index, item in enumerate(data):
        inputs = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(inputs, Tensor) or inputs.dim() == 0:
            raise TypeError(
                f"batch {index}: expected an input tensor with the batch first, or a tuple "
                f"(inputs, ...); got {type(inputs).__name__}"
            )
        if limit is not None:
            inputs = inputs[: limit - seen]
        if inputs.shape[0]:
            seen += inputs.shape[0]
            yield inputs.to(device)
        if limit is not None and seen >= limit:
            return


def _per_sample_gradient_fn(
    model: nn.Module, params: dict[str, nn.Parameter], output_fn: Callable[[Any], Tensor] | None
) -> Callable[[Tensor], dict[str, Tensor]]:
    """Inputs (B, ...) → {name: (B, *shape)} gradients of ‖f(x_b)‖²₂, one per input."""
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())
    detached = {n: p.detach() for n, p in params.items()}

    def squared_norm(trainable: dict[str, Tensor], x: Tensor) -> Tensor:
        state = {**frozen, **buffers, **trainable}
        output = functional_call(model, state, (x.unsqueeze(0),))
        output = output_fn(output) if output_fn is not None else output
        if not isinstance(output, Tensor):
            raise TypeError(
                f"the model output (after output_fn) must be a tensor; got {type(output).__name__}"
            )
        return output.square().sum()

    gradient = vmap(grad(squared_norm), in_dims=(None, 0))

    def per_sample(inputs: Tensor) -> dict[str, Tensor]:
        with torch.enable_grad():
            return gradient(detached, inputs)

    return per_sample


class MAS(QuadraticPenalty):
    """Memory Aware Synapses: λ Σ_t Σ_i Ω_t,i (θ_i − θ*_i)², Ω from `mas_importance`.

    Ω is summed over the tasks seen and the anchor θ* is the latest task's parameters (the
    paper's accumulation; the ``online`` mode of `QuadraticPenalty` with γ = 1).

    Example:
        >>> mas = ewc.MAS(model, strength=1.0)
        >>> mas.consolidate(ewc.mas_importance(model, loader_a))  # after training task A
        >>> loss = F.cross_entropy(model(x), y) + mas()           # while training task B

    Args:
        model: the model whose trainable parameters are penalised.
        strength: λ ≥ 0, the paper's λ (the penalty has no 1/2).
    """

    penalty_factor = 1.0

    def __init__(self, model: nn.Module, *, strength: float):
        super().__init__(model, strength=strength, mode="online")

    def consolidate(self, importance: Mapping[str, Tensor]) -> None:
        """Add one task's Ω (finite, ≥ 0, one tensor per trainable parameter); θ* = θ now."""
        self._consolidate(importance, "mas")
