"""The Fisher identities measured on a model: where they hold, and where the empirical Fisher fails.

For a classifier p(y|x, θ) the score is s = ∇_θ log p(y|x, θ). Under the model's own distribution,
y ~ p(·|x), three facts hold for every input x (shared/REFERENCES.md §2):

    E_y[s] = Σ_c p(c|x) ∇ log p(c|x) = ∇ Σ_c p(c|x) = 0
    Var_y(s) = E_y[s sᵀ]                               (because the mean is 0)
    E_y[s sᵀ] = −E_y[∇² log p(y|x)]                    (differentiate E_y[s] = 0 once more)

so their diagonals, averaged over the inputs, agree: this common value is the `exact` Fisher.
With the data set's labels y_n instead, none is guaranteed: the mean score is minus the gradient
of the mean loss (0 only at an optimum of those very data), and the mean squared score (the
`empirical` Fisher) differs from −E[∇² log p] because, with logits z,

    −∇² log p(y|x) = Jᵀ (diag p − p pᵀ) J − Σ_k (1[y = k] − p_k) ∇² z_k

whose first term is the model's Fisher at x whatever the label, while the second weighs the
curvature of the logits by the residuals: it vanishes in expectation under the model, not under
the data unless the model *is* the data's distribution. `fisher_identities` computes all these
per parameter, by brute force (``torch.func``, one input at a time, the Hessian's diagonal from
each parameter's Hessian block): a diagnostic for small models, best run in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from ewc._batches import Batch, check_class_targets, iterate_batches
from ewc._chunks import chunk_length
from ewc._modes import evaluation_mode

#: the largest Hessian block (per input, all classes) held at once, in entries
HESSIAN_BUDGET = 2**24


@dataclass(frozen=True)
class ScoreMoments:
    """Element-wise moments of the score of one parameter over N inputs (one label distribution).

    Attributes:
        mean: E[s], element-wise.
        second_moment: E[s²], element-wise (the diagonal Fisher of this label distribution).
        negative_hessian: −E[∂² log p / ∂θ_i²], element-wise.
        num_samples: N, the number of inputs.
    """

    mean: Tensor
    second_moment: Tensor
    negative_hessian: Tensor
    num_samples: int

    @property
    def variance(self) -> Tensor:
        """Var(s) = E[s²] − E[s]², element-wise."""
        return self.second_moment - self.mean.square()

    @property
    def standard_error(self) -> float:
        """sqrt(Σ_i Var(s_i) / N): the size ‖E[s]‖ would have from noise alone.

        The noise is that of one label drawn per input (a mean of N zero-mean scores).
        """
        return math.sqrt(float(self.variance.clamp_min(0).sum()) / self.num_samples)

    def relative_gap(self, other: Tensor) -> float:
        """‖other − E[s²]‖ / ‖E[s²]‖ over the parameter's elements (0 where they agree)."""
        scale = float(self.second_moment.norm())
        difference = float((other - self.second_moment).norm())
        return difference / scale if scale > 0 else (0.0 if difference == 0 else math.inf)


@dataclass(frozen=True)
class FisherIdentities:
    """`fisher_identities`' result: the score's moments per parameter, two ways.

    Attributes:
        model: labels from the model's own distribution (every class, weighted by p(c|x)).
        empirical: the data set's labels.
        num_samples: N, the number of inputs.
    """

    model: dict[str, ScoreMoments]
    empirical: dict[str, ScoreMoments]
    num_samples: int

    def __str__(self) -> str:
        return "\n".join(
            [
                _table(
                    "labels from the model's distribution (all classes, weighted by p(c|x))",
                    self.model,
                    self.num_samples,
                ),
                "",
                _table(
                    "the data set's labels (the empirical Fisher)", self.empirical, self.num_samples
                ),
                "",
                *_WHY,
            ]
        )


_WHY = (
    "Under the model's distribution E[s] = 0 and Var(s) = E[s²] = −E[∇² log p] hold for every",
    "input, so the gaps above are rounding. With the data's labels E[s] is minus the gradient of",
    "the mean loss (0 only at an optimum of these data), and E[s²] ≠ −E[∇² log p]: the Hessian",
    "adds the logits' curvature weighted by the residuals 1[y = k] − p_k, which averages to 0",
    "only when the labels follow the model's predictions.",
)

_COLUMNS = ("parameter", "‖E[s]‖", "SE", "Σ Var(s)", "Σ E[s²]", "Σ −E[∇²]", "Var gap", "∇² gap")


def _table(title: str, rows: dict[str, ScoreMoments], num_samples: int) -> str:
    width = max(len(_COLUMNS[0]), *(len(name) for name in rows))
    header = f"{_COLUMNS[0]:<{width}} " + " ".join(f"{c:>10}" for c in _COLUMNS[1:])
    lines = [f"{title}; N = {num_samples}", header]
    for name, m in rows.items():
        values = (
            float(m.mean.norm()),
            m.standard_error,
            float(m.variance.sum()),
            float(m.second_moment.sum()),
            float(m.negative_hessian.sum()),
            m.relative_gap(m.variance),
            m.relative_gap(m.negative_hessian),
        )
        lines.append(f"{name:<{width}} " + " ".join(f"{v:>10.3g}" for v in values))
    lines.append("(gaps: ‖X − E[s²]‖ / ‖E[s²]‖ over the parameter's elements; SE: ‖E[s]‖ from")
    lines.append(" noise alone with one label per input, sqrt(Σ Var / N))")
    return "\n".join(lines)


def fisher_identities(
    model: nn.Module,
    data: Iterable[Any],
    *,
    parameters: Sequence[str] | None = None,
    num_samples: int | None = None,
    output_fn: Callable[[Any], Tensor] | None = None,
) -> FisherIdentities:
    """Measure the Fisher identities per parameter (the module docstring gives the formulas).

    For each trainable parameter (or those named in ``parameters``) and each of two label
    distributions — the model's own (exact expectation: every class, weighted by p(c|x)) and the
    data set's labels — computes, over the N inputs, E[s], E[s²], Var(s) and −E[∂² log p/∂θ_i²].
    The model runs in eval mode (restored afterwards); no ``.grad`` is touched.

    Cost: per input, one Hessian block of C × P² entries for a parameter of P elements; a block
    over ``HESSIAN_BUDGET`` entries is refused (restrict ``parameters``, e.g. to the last layer).

    Args:
        model: a classifier whose output (after ``output_fn``) is (N, C) logits.
        data: an iterable of ``(inputs, targets)`` batches with integer class labels.
        parameters: names (from ``named_parameters()``) to measure; default every trainable one.
        num_samples: use at most this many inputs, the first ones in iteration order.
        output_fn: maps the model output to logits, e.g. to select a task's head.

    Returns:
        A `FisherIdentities`; ``print(result)`` shows the table.
    """
    params = _selected(model, parameters)
    device = next(iter(params.values())).device
    totals = {name: {"model": _zeros(p), "empirical": _zeros(p)} for name, p in params.items()}
    count = 0
    with evaluation_mode(model):
        for batch in iterate_batches(data, device=device, limit=num_samples):
            for name in params:
                moments = _batch_moments(model, name, batch, output_fn)
                for which, values in moments.items():
                    for total, value in zip(totals[name][which], values, strict=True):
                        total.add_(value)
            count += batch.size
    if count == 0:
        raise ValueError("data yielded no samples: the moments are means over at least one input")
    return FisherIdentities(
        model={n: _moments(t["model"], count) for n, t in totals.items()},
        empirical={n: _moments(t["empirical"], count) for n, t in totals.items()},
        num_samples=count,
    )


def _selected(model: nn.Module, names: Sequence[str] | None) -> dict[str, nn.Parameter]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if names is None:
        if not trainable:
            raise ValueError("the model has no trainable parameters (none has requires_grad=True)")
        return trainable
    unknown = sorted(set(names) - set(trainable))
    if unknown or not names:
        raise ValueError(
            f"parameters must name trainable parameters of the model; unknown {unknown}; "
            f"valid names are {sorted(trainable)}"
        )
    return {n: trainable[n] for n in names}


def _zeros(param: Tensor) -> list[Tensor]:
    return [torch.zeros_like(param, requires_grad=False) for _ in range(3)]


def _moments(sums: list[Tensor], count: int) -> ScoreMoments:
    mean, second, negative_hessian = (s / count for s in sums)
    return ScoreMoments(mean, second, negative_hessian, count)


def _batch_moments(
    model: nn.Module, name: str, batch: Batch, output_fn: Callable[[Any], Tensor] | None
) -> dict[str, list[Tensor]]:
    """Σ over the batch of s, s² and −∂² log p for one parameter, under both label choices."""
    param = dict(model.named_parameters())[name]
    log_probs = _log_probs_fn(model, name, output_fn)
    flat = param.detach().reshape(-1)
    scores, hessians, logp = [], [], []
    classes = _classes(model, batch, output_fn)
    _check_budget(name, flat.numel(), classes)
    step = chunk_length(HESSIAN_BUDGET, classes * flat.numel() ** 2)
    for inputs in batch.inputs.split(step):
        logp.append(vmap(log_probs, in_dims=(None, 0))(flat, inputs).detach())
        scores.append(vmap(jacrev(log_probs), in_dims=(None, 0))(flat, inputs).detach())
        # reverse over reverse: forward mode (torch.func.hessian) warns through torch.jit on import
        full = vmap(jacrev(jacrev(log_probs)), in_dims=(None, 0))(flat, inputs).detach()
        hessians.append(torch.diagonal(full, dim1=-2, dim2=-1))
    logp, score, diag = torch.cat(logp), torch.cat(scores), torch.cat(hessians)  # (B, C, P)
    check_class_targets(batch.targets, logp.shape[1], batch)
    p = logp.exp().unsqueeze(-1)
    rows = torch.arange(batch.size, device=logp.device)
    picked, picked_diag = score[rows, batch.targets], diag[rows, batch.targets]
    shape = param.shape
    return {
        "model": [
            (p * score).sum((0, 1)).view(shape),
            (p * score.square()).sum((0, 1)).view(shape),
            -(p * diag).sum((0, 1)).view(shape),
        ],
        "empirical": [
            picked.sum(0).view(shape),
            picked.square().sum(0).view(shape),
            -picked_diag.sum(0).view(shape),
        ],
    }


def _classes(model: nn.Module, batch: Batch, output_fn: Callable[[Any], Tensor] | None) -> int:
    with torch.no_grad():
        out = model(batch.inputs[:1])
        out = output_fn(out) if output_fn is not None else out
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[1] < 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"batch {batch.index}: the model (after output_fn) must give (N, C) logits with "
            f"C ≥ 2; got {shape} (use output_fn to select a head)"
        )
    return out.shape[1]


def _check_budget(name: str, numel: int, classes: int) -> None:
    if classes * numel**2 > HESSIAN_BUDGET:
        raise ValueError(
            f"parameter {name!r} has {numel} elements: its Hessian block ({classes} classes × "
            f"{numel}² = {classes * numel**2:,} entries per input) is over the diagnostic's budget "
            f"of {HESSIAN_BUDGET:,}; pass parameters=[...] naming smaller ones (e.g. a last layer)"
        )


def _log_probs_fn(
    model: nn.Module, name: str, output_fn: Callable[[Any], Tensor] | None
) -> Callable[[Tensor, Tensor], Tensor]:
    """(flat parameter ``name``, one input) → (C,) log-probabilities, other parameters fixed."""
    state = {n: p.detach() for n, p in model.named_parameters()}
    state.update(dict(model.named_buffers()))
    shape = dict(model.named_parameters())[name].shape

    def log_probs(flat: Tensor, x: Tensor) -> Tensor:
        out = functional_call(model, {**state, name: flat.view(shape)}, (x.unsqueeze(0),))
        out = output_fn(out) if output_fn is not None else out
        return out[0].log_softmax(-1)

    return log_probs
