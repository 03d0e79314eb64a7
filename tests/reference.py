"""Slow, obviously-correct twins of the fast code, for the tests (float64, one sample at a time)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jacrev

RTOL = 1e-10  # the relative error every fast estimator must reach in float64


def assert_fisher_close(fast, reference, rtol=RTOL):
    assert set(fast) == set(reference)
    assert any(reference[n].abs().max() > 0 for n in reference), "reference is all zero"
    for name, ref in reference.items():
        scale = ref.abs().max()
        error = (fast[name] - ref).abs().max()
        assert error <= rtol * scale, f"{name}: max error {error:.3g} vs max entry {scale:.3g}"


def in_batches(case, size):
    x, y = case.inputs, case.targets
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _logits(model: nn.Module, x: Tensor, output_fn: Callable | None) -> Tensor:
    out = model(x)
    return output_fn(out) if output_fn is not None else out


def brute_force_fisher(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    kind: str,
    *,
    output_fn: Callable | None = None,
    sampled: Tensor | None = None,
    ignore_index: int = -100,
) -> dict[str, Tensor]:
    """F_i = (1/N) Σ_n Σ_labels w (∂ log p(labels|x_n)/∂θ_i)², one backward pass per labelling.

    A classifier's sample has one label; a sequence's (logits (1, T, C) per sample) has one per
    token not marked ``ignore_index``, and log p(labels|x) = Σ_t log p_t(label_t). For ``exact``
    every labelling is enumerated (C^T of them, weighted by Π_t p_t(label_t)): the definition of
    the Fisher of the sequence, with no use of the cross terms' vanishing. ``sampled`` (N, k) or
    (N, k, T) holds the labels drawn for kind="sample" (weight 1/k each).
    """
    model.eval()
    params = trainable(model)
    sums = {n: torch.zeros_like(p) for n, p in params.items()}
    for n in range(inputs.shape[0]):
        log_p = _logits(model, inputs[n : n + 1], output_fn)[0].log_softmax(-1)
        if log_p.dim() == 1:
            log_p, target = log_p[None], targets[n : n + 1]
            drawn = None if sampled is None else sampled[n][:, None]
        else:
            target, drawn = targets[n], None if sampled is None else sampled[n]
        kept = [t for t in range(log_p.shape[0]) if int(target[t]) != ignore_index]
        for labels, weight in _labelings(kind, log_p.detach(), target, drawn, kept):
            objective = sum(log_p[t, c] for t, c in zip(kept, labels, strict=True))
            grads = torch.autograd.grad(
                objective, list(params.values()), retain_graph=True, allow_unused=True
            )
            for name, g in zip(params, grads, strict=True):
                if g is not None:
                    sums[name] += weight * g.square()
    return {name: s / inputs.shape[0] for name, s in sums.items()}


def _labelings(
    kind: str, log_p: Tensor, target: Tensor, drawn: Tensor | None, kept: list[int]
) -> list[tuple[tuple[int, ...], float]]:
    """(labels of the kept positions, weight) pairs of one sample."""
    if kind == "exact":
        classes = range(log_p.shape[1])
        return [
            (labels, math.prod(float(log_p[t, c].exp()) for t, c in zip(kept, labels, strict=True)))
            for labels in itertools.product(classes, repeat=len(kept))
        ]
    if kind == "empirical":
        return [(tuple(int(target[t]) for t in kept), 1.0)]
    if kind == "argmax":
        return [(tuple(int(log_p[t].argmax()) for t in kept), 1.0)]
    if kind == "sample":
        return [(tuple(int(row[t]) for t in kept), 1.0 / drawn.shape[0]) for row in drawn]
    raise ValueError(kind)


def sequence_draws(p: Tensor, k: int, seed: int) -> Tensor:
    """The labels `diagonal_fisher` draws for kind="sample" from (N, T, C) probabilities."""
    flat = torch.multinomial(
        p.reshape(-1, p.shape[-1]),
        k,
        replacement=True,
        generator=torch.Generator().manual_seed(seed),
    )
    return flat.reshape(*p.shape[:2], k).transpose(1, 2)


def brute_force_batched(
    model: nn.Module, batches: list[tuple[Tensor, Tensor]], output_fn=None
) -> dict[str, Tensor]:
    """F_i = (1/M) Σ_batches (∂ mean_batch log p(y|x)/∂θ_i)², log p(y|x) summed over tokens."""
    model.eval()
    params = trainable(model)
    sums = {n: torch.zeros_like(p) for n, p in params.items()}
    for x, y in batches:
        logits = _logits(model, x, output_fn)
        per_sample = [
            -F.cross_entropy(
                logits[i].reshape(-1, logits.shape[-1]), y[i].reshape(-1), reduction="sum"
            )
            for i in range(len(x))
        ]
        loss = -sum(per_sample) / len(x)
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for name, g in zip(params, grads, strict=True):
            if g is not None:
                sums[name] += g.square()
    return {name: s / len(batches) for name, s in sums.items()}


def dense_exact_fisher_diagonal(model: nn.Module, inputs: Tensor) -> dict[str, Tensor]:
    """diag of (1/N) Σ_n J_nᵀ (diag(p_n) − p_n p_nᵀ) J_n, J_n = ∂z_n/∂θ from torch.func.jacrev."""
    model.eval()
    params = {n: p.detach() for n, p in trainable(model).items()}
    sizes = [p.numel() for p in params.values()]
    dense = torch.zeros(sum(sizes), sum(sizes), dtype=inputs.dtype)
    for n in range(inputs.shape[0]):
        x = inputs[n : n + 1]
        jac = jacrev(lambda p, x=x: functional_call(model, p, (x,))[0])(params)
        j = torch.cat([jac[name].reshape(jac[name].shape[0], -1) for name in params], dim=1)
        p = model(x)[0].softmax(-1).detach()
        dense += j.T @ (torch.diag(p) - torch.outer(p, p)) @ j
    diagonal = torch.diagonal(dense) / inputs.shape[0]
    return dict(
        zip(
            params,
            (d.view_as(p) for d, p in zip(diagonal.split(sizes), params.values(), strict=True)),
            strict=True,
        )
    )
