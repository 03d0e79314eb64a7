"""The numeric proof that the rows the per-layer rules read as samples are the samples.

A rule forms sample n's gradient from row n of its call's activations and of the gradient at its
outputs (`ewc.fisher.capture.ModuleCall.is_batched`: a first dimension equal to the batch size N).
The summed check of `ewc.fisher.verify` cannot see a wrong assignment of rows to samples: the sum
over rows is the same however they are assigned. So, for one sample k (drawn from a fixed seed)
and a random vector uₖ on its output zₖ alone, autograd's gradient of ⟨uₖ, zₖ⟩ is read

- at the batch's inputs: it must vanish outside row k, since sample k's output may depend on no
  other sample. If it does not (batch statistics, a mean over the batch, attention across it), no
  per-sample Fisher exists, and that is an error;
- at the outputs of each planned call with N rows: they must vanish outside row k too. If they do
  not, the call's rows are not the samples (a time-major sequence whose length equals the batch
  size, a tensor shared by all samples that happens to have N rows), and the call's parameters
  move to the whole-model path, which differentiates each sample's own forward pass.

For samples that do not interact these gradients outside row k are exact zeros, so any leak above
the dtype's rounding (`ewc.fisher.verify.TOLERANCE`) is a real dependence. A third check needs no
gradient: sample k run alone, as a batch of one, must give its row of the batch's output; it sees
a coupling the gradients cannot reach (integer inputs such as token ids, a batch mean taken before
any layer the rules read), and is an error too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ewc.fisher.capture import CallRecorder
from ewc.fisher.coverage import Plan

#: Why a parameter left the rules for the whole-model path.
ROWS_ARE_NOT_SAMPLES = (
    "a call's rows are not the samples: sample {k}'s output depends on {share:.1%} of the "
    "gradient at its other rows"
)


class CoupledSamplesError(RuntimeError):
    """A sample's output depends on other samples of the batch: no per-sample Fisher exists."""


def check_independence(
    plan: Plan,
    recorder: CallRecorder,
    logits: Tensor,
    model: nn.Module,
    inputs: Tensor,
    output_fn: Callable[[Any], Tensor] | None,
    tolerance: float,
) -> dict[str, str]:
    """Route the parameters of calls whose rows are not samples; return them with the reason.

    Raises:
        CoupledSamplesError: sample k's output depends on the inputs of other samples.
    """
    if logits.shape[0] < 2:
        return {}
    with recorder.paused():
        check_coupling(model, inputs, output_fn, logits, tolerance)
    calls = recorder.calls
    positions = sorted({i for sites in plan.sites.values() for i, _ in sites})
    edges = [(i, edge) for i in positions for edge in calls[i].edges]
    leaks = leaks_at(logits, [edge for _, edge in edges])
    shares: dict[int, float] = {}
    for (i, _), share in zip(edges, leaks, strict=True):
        if share > tolerance:
            shares[i] = max(share, shares.get(i, 0.0))
    k, _ = one_sample_vector(logits)
    moved = {}
    for name, sites in plan.sites.items():
        found = [shares[i] for i, _ in sites if i in shares]
        if found:
            moved[name] = ROWS_ARE_NOT_SAMPLES.format(k=k, share=max(found))
    plan.route_to_whole_model(moved)
    return moved


def one_sample_vector(logits: Tensor) -> tuple[int, Tensor]:
    """A fixed sample k and a standard normal vector on its logits, zero elsewhere."""
    gen = torch.Generator(device="cpu").manual_seed(1)
    k = int(torch.randint(logits.shape[0], (1,), generator=gen))
    u = torch.zeros(logits.shape, dtype=torch.float64)
    u[k] = torch.randn(logits.shape[1:], generator=gen, dtype=torch.float64)
    return k, u.to(device=logits.device, dtype=logits.dtype)


def leaks_at(logits: Tensor, edges: list[Any]) -> list[float]:
    """Per edge with N rows, the share of ⟨uₖ, zₖ⟩'s gradient there outside row k (else 0)."""
    if not edges or logits.shape[0] < 2:
        return [0.0] * len(edges)
    k, u = one_sample_vector(logits)
    grads = torch.autograd.grad(logits, edges, u, retain_graph=True, allow_unused=True)
    return [_leak(grad, k, logits.shape[0]) for grad in grads]


def check_coupling(
    model: nn.Module,
    inputs: Tensor,
    output_fn: Callable[[Any], Tensor] | None,
    logits: Tensor,
    tolerance: float,
) -> None:
    """Raise if sample k's output depends on the other samples of its batch.

    Two views of it, both for one sample k: the gradient of ⟨uₖ, zₖ⟩ at the batch's (floating)
    inputs must vanish outside row k, and sample k run alone, as a batch of one, must give its row
    of the batch's output (which also sees couplings the gradients cannot: integer inputs such as
    token ids, a batch mean taken before any layer the rules read). The model runs twice more;
    hooks must be paused.

    Raises:
        CoupledSamplesError: either view shows a dependence above ``tolerance``.
    """
    if inputs.shape[0] < 2:
        return
    k, u = one_sample_vector(logits)
    share = _input_gradient_leak(model, inputs, output_fn, u, k)
    if share > tolerance:
        raise CoupledSamplesError(
            f"cannot compute a per-sample Fisher: sample {k}'s output depends on the other "
            f"samples of its batch ({share:.1%} of the gradient of its output with respect to "
            f"the inputs falls on other samples). {_ALONE}"
        )
    difference = _alone_difference(model, inputs, output_fn, logits, k)
    if difference > max(tolerance, 1e-6):
        raise CoupledSamplesError(
            f"cannot compute a per-sample Fisher: sample {k}'s output alone differs from its "
            f"output within the batch by {difference:.1%}. {_ALONE}"
        )


_ALONE = (
    "A sample's output must depend on that sample alone (in eval mode); batch statistics, a mean "
    "over the batch or attention across the batch dimension couple the samples"
)


def _input_gradient_leak(
    model: nn.Module,
    inputs: Tensor,
    output_fn: Callable[[Any], Tensor] | None,
    u: Tensor,
    k: int,
) -> float:
    """The share of ⟨uₖ, zₖ⟩'s gradient at the inputs outside row k (0 for integer inputs)."""
    if not inputs.is_floating_point():
        return 0.0  # token ids: the forward check and the first layer's edges cover them
    x = inputs.detach().requires_grad_(True)
    try:
        output = model(x)
        z = output_fn(output) if output_fn is not None else output
        (grad,) = torch.autograd.grad(z, x, u.to(z.dtype), allow_unused=True)
    except RuntimeError:  # e.g. an in-place op on the inputs: the forward check remains
        return 0.0
    return _leak(grad, k, inputs.shape[0])


def _alone_difference(
    model: nn.Module,
    inputs: Tensor,
    output_fn: Callable[[Any], Tensor] | None,
    logits: Tensor,
    k: int,
) -> float:
    """‖sample k alone − its row of the batch's output‖ / the larger norm; 1 if shapes differ."""
    with torch.no_grad():
        output = model(inputs[k : k + 1])
        alone = (output_fn(output) if output_fn is not None else output).detach().double()
    row = logits[k : k + 1].detach().double()
    if alone.shape != row.shape:
        return 1.0
    scale = max(float(row.norm()), float(alone.norm()), 1e-30)
    return float((alone - row).norm()) / scale


def _leak(grad: Tensor | None, k: int, size: int) -> float:
    """‖rows other than k‖ / ‖all rows‖ of a gradient with N = ``size`` rows; 0 if none."""
    if grad is None or grad.dim() == 0 or grad.shape[0] != size:
        return 0.0
    rows = grad.detach().reshape(size, -1).to(torch.float64)
    total = float(rows.norm())
    if total == 0.0:
        return 0.0
    others = torch.cat([rows[:k], rows[k + 1 :]])
    return float(others.norm()) / total
