"""Per-sample gradients of chosen parameters through the whole model, for uses no rule can see.

For a parameter the per-layer rules cannot account for (`ewc.fisher.coverage`), sample n's
gradient for the output-gradient vector v is the vector-Jacobian product

    ∂⟨vₙ, z(xₙ; θ)⟩/∂θ_S        (z: the model followed by ``output_fn``; S: the chosen parameters)

formed by `torch.func.vmap` over `torch.func.vjp` of `torch.func.functional_call`, with each
sample run as a batch of one. Only the chosen parameters are differentiated; samples are processed
in chunks so that at most about `PER_SAMPLE_BUDGET` per-sample entries exist at once. A model that
cannot run under ``vmap`` (data-dependent control flow, ``.item()``) is run one sample at a time
with plain autograd instead: slower, equally correct.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

from ewc._batches import OutputFn
from ewc._chunks import chunk_length
from ewc.fisher.rules.base import PER_SAMPLE_BUDGET
from ewc.fisher.rules.functional import without_batching_rule_warnings


def whole_model_sums(
    model: nn.Module,
    inputs: Tensor,
    vectors: list[Tensor],
    names: list[str],
    output_fn: OutputFn | None,
    dtype: torch.dtype,
    *,
    square: bool = True,
) -> dict[str, Tensor]:
    """Σ_n Σ_v (per-sample gradient)² of the named parameters (Σ_n Σ_v gradient if not square).

    Args:
        model: the model, already in the mode the Fisher uses; hooks must be paused by the caller.
        inputs: the batch's inputs, (N, ...).
        vectors: output-gradient vectors, each shaped like the logits (N, ...).
        names: full names of the parameters to differentiate.
        output_fn: maps the model's output to the logits, as in `ewc.diagonal_fisher`.
        dtype: the precision the per-sample gradients are formed in (the model is cast to it).
        square: sum squared per-sample gradients (the Fisher) or the gradients themselves (the
            check of `ewc.fisher.verify`).
    """
    state = _state(model, names, dtype)
    stacked = torch.stack([v.to(dtype) for v in vectors], dim=1)
    numel = sum(p.numel() for p in state[0].values())
    chunk = chunk_length(PER_SAMPLE_BUDGET, 2 * numel * (1 if square else len(vectors)))
    totals = {name: torch.zeros_like(p) for name, p in state[0].items()}
    try:
        run = vmap(_one_sample(model, state, output_fn, square))
        # torch.func differentiates inside; no graph back to the model
        with torch.no_grad(), without_batching_rule_warnings():
            for start in range(0, inputs.shape[0], chunk):
                stop = start + chunk
                for name, value in run(inputs[start:stop], stacked[start:stop]).items():
                    totals[name] += value.sum(0)
    except Exception:  # any failure under vmap: plain autograd, one sample at a time
        totals = _sample_by_sample(model, state, inputs, stacked, output_fn, square)
    return totals


def _state(
    model: nn.Module, names: list[str], dtype: torch.dtype
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(the differentiated parameters, every other tensor the forward needs, cast) in ``dtype``.

    The second dict is empty when the model already computes in ``dtype``; otherwise the whole
    forward runs in ``dtype`` (e.g. float32 for a float16 model). Names tied to a chosen parameter
    are left out: `functional_call` substitutes every name of a tied parameter.
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    chosen = {name: params[name].detach().to(dtype) for name in names}
    tensors = [*params.items(), *model.named_buffers(remove_duplicate=False)]
    if all(t.dtype == dtype for _, t in tensors if t.is_floating_point()):
        return chosen, {}
    chosen_ids = {id(params[name]) for name in names}
    rest = {
        name: t.detach().to(dtype) if t.is_floating_point() else t
        for name, t in tensors
        if id(t) not in chosen_ids
    }
    return chosen, rest


def _logits(
    model: nn.Module, state: tuple[dict, dict], x: Tensor, output_fn: OutputFn | None
) -> Callable[[dict[str, Tensor]], Tensor]:
    def logits(chosen: dict[str, Tensor]) -> Tensor:
        out = functional_call(model, (chosen, state[1]), (x,))
        return output_fn(out) if output_fn is not None else out

    return logits


def _one_sample(
    model: nn.Module, state: tuple[dict, dict], output_fn: OutputFn | None, square: bool
) -> Callable[[Tensor, Tensor], dict[str, Tensor]]:
    """The per-sample function for vmap: x (...), vectors (V, ...) → Σ_v gradient (squared)."""

    def run(x: Tensor, vectors: Tensor) -> dict[str, Tensor]:
        z, pullback = vjp(_logits(model, state, x.unsqueeze(0), output_fn), state[0])
        total: dict[str, Tensor] = {}
        for v in vectors:
            (grads,) = pullback(v.unsqueeze(0).to(z.dtype))
            for name, g in grads.items():
                g = g.to(state[0][name].dtype)
                g = g.square() if square else g
                total[name] = total[name] + g if name in total else g
        return total

    return run


def _sample_by_sample(
    model: nn.Module,
    state: tuple[dict, dict],
    inputs: Tensor,
    stacked: Tensor,
    output_fn: OutputFn | None,
    square: bool,
) -> dict[str, Tensor]:
    """The same sums with one autograd pass per sample and vector (no vmap)."""
    totals = {name: torch.zeros_like(p) for name, p in state[0].items()}
    chosen = {name: p.clone().requires_grad_(True) for name, p in state[0].items()}
    for n in range(inputs.shape[0]):
        z = _logits(model, state, inputs[n : n + 1], output_fn)(chosen)
        for j, v in enumerate(stacked[n]):
            last = j + 1 == stacked.shape[1]
            grads = torch.autograd.grad(
                z,
                list(chosen.values()),
                v.unsqueeze(0).to(z.dtype),
                retain_graph=not last,
                allow_unused=True,
            )
            for name, g in zip(chosen, grads, strict=True):
                if g is not None:
                    g = g.detach().to(totals[name].dtype)
                    totals[name] += g.square() if square else g
    return totals
