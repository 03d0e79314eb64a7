"""The numeric proof that a batch's plan accounts for every use of every parameter.

For one random output-gradient vector u (standard normal, shaped like the logits), autograd's
gradient of ⟨u, z⟩ with respect to each trainable parameter θ is the sum over samples of the
per-sample gradients Jₙᵀuₙ. Every path of the plan can form that sum cheaply from the same
backward pass: a closed-form rule gives Σₙ per-sample gradient (for `nn.Linear`, Gᵀ A), the
functional rule and the whole-model path sum their per-sample vector-Jacobian products. If a use
of θ escaped the plan, the two differ by the missed part, Dᵀu with D ≠ 0, and for random u that
is non-zero with probability one. So the check proves, up to the rounding of the model's dtype
(`TOLERANCE`), that the rules see everything autograd sees.

A mismatch moves the parameter to the whole-model path and checks again; a mismatch there means
no correct path exists (a sample's output depends on other samples of the batch), and is an
error that names the parameter. A sum cannot show which rows are which sample: that is the check
of `ewc.fisher.independence`, run on the same batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ewc.fisher.capture import CallRecorder
from ewc.fisher.coverage import Plan
from ewc.fisher.independence import check_independence
from ewc.fisher.rules import rule_for
from ewc.fisher.rules.base import UndefinedFisherError
from ewc.fisher.whole_model import whole_model_sums

#: Largest relative difference ‖rules − autograd‖ / ‖autograd‖ accepted, by the model's dtype:
#: a few hundred roundings of the dtype, far below any missed use that would matter.
TOLERANCE = {
    torch.float64: 1e-9,
    torch.float32: 1e-4,
    torch.float16: 2e-2,
    torch.bfloat16: 5e-2,
}

MISMATCH = "the per-layer rules' summed gradient differs from autograd's by {:.1%}"
RULE_FAILED = "its per-layer rule failed on this call ({}: {})"


def check_plan(
    plan: Plan,
    recorder: CallRecorder,
    logits: Tensor,
    model: nn.Module,
    inputs: Tensor,
    params: dict[str, nn.Parameter],
    output_fn: Callable[[Any], Tensor] | None,
    dtype: torch.dtype,
) -> dict[str, str]:
    """Check the plan on this batch; return the parameters it moved to the whole-model path."""
    names = [n for n in params if n in plan.sites or n in plan.whole_model]
    if not names:
        return {}
    gen = torch.Generator(device="cpu").manual_seed(0)
    u = torch.randn(logits.shape, generator=gen, dtype=torch.float64)
    u = u.to(device=logits.device, dtype=logits.dtype)
    tensors = [params[n] for n in names]
    truth, ours, failed = _autograd_and_rules(plan, recorder, logits, u, tensors, names, dtype)
    plan.route_to_whole_model(failed)
    tolerance = TOLERANCE.get(logits.dtype, 1e-4)
    routed = check_independence(plan, recorder, logits, model, inputs, output_fn, tolerance)
    with recorder.paused():
        if plan.whole_model:
            ours.update(_whole(model, inputs, u, list(plan.whole_model), output_fn, dtype))
        moved = _mismatches(names, truth, ours, plan.whole_model, logits.dtype)
        if moved:
            plan.route_to_whole_model(moved)
            again = _whole(model, inputs, u, list(moved), output_fn, dtype)
            _raise_if_wrong(_mismatches(list(moved), truth, again, {}, logits.dtype))
    return {**routed, **failed, **moved}


def _autograd_and_rules(
    plan: Plan,
    recorder: CallRecorder,
    logits: Tensor,
    u: Tensor,
    tensors: list[nn.Parameter],
    names: list[str],
    dtype: torch.dtype,
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, str]]:
    """Autograd's gradient of ⟨u, z⟩, the rules' Σₙ per-sample gradients, the rules that failed.

    A parameter whose rule raised on this call (a call it cannot read, such as a recurrent
    layer's (layers, N, H) state) is returned with the error, for the whole-model path; a module
    for which no per-sample Fisher exists (`UndefinedFisherError`) stays an error.
    """
    calls = recorder.calls
    positions = sorted({i for sites in plan.sites.values() for i, _ in sites})
    edges = [edge for i in positions for edge in calls[i].edges]
    grads = torch.autograd.grad(logits, [*tensors, *edges], u, retain_graph=True, allow_unused=True)
    truth = {n: g for n, g in zip(names, grads[: len(tensors)], strict=True) if g is not None}
    at_edges, start = {}, len(tensors)
    for i in positions:
        stop = start + len(calls[i].edges)
        at_edges[i] = [
            (g if g is not None else logits.new_zeros(s)).to(dtype)
            for g, s in zip(grads[start:stop], calls[i].shapes, strict=True)
        ]
        start = stop
    ours: dict[str, Tensor] = {}
    failed: dict[str, str] = {}
    with recorder.paused(), torch.no_grad():
        for name, sites in plan.sites.items():
            try:
                for i, local in sites:
                    part = rule_for(calls[i].module).summed(calls[i], at_edges[i], [local])[local]
                    ours[name] = ours[name] + part if name in ours else part
            except UndefinedFisherError:
                raise
            except Exception as error:  # a call this rule cannot read: the whole-model path can
                ours.pop(name, None)
                failed[name] = RULE_FAILED.format(type(error).__name__, error)
    return truth, ours, failed


def _whole(
    model: nn.Module,
    inputs: Tensor,
    u: Tensor,
    names: list[str],
    output_fn: Callable[[Any], Tensor] | None,
    dtype: torch.dtype,
) -> dict[str, Tensor]:
    return whole_model_sums(model, inputs, [u], names, output_fn, dtype, square=False)


def _mismatches(
    names: list[str],
    truth: dict[str, Tensor],
    ours: dict[str, Tensor],
    already_whole: dict[str, str],
    dtype: torch.dtype,
) -> dict[str, str]:
    """Name → reason, for the parameters whose two gradients differ beyond the tolerance."""
    tolerance = TOLERANCE.get(dtype, 1e-4)
    bad = {}
    for name in names:
        a, b = ours.get(name), truth.get(name)
        if a is None and b is None:
            continue
        a = (
            torch.zeros_like(b, dtype=torch.promote_types(b.dtype, torch.float32))
            if a is None
            else a
        )
        b = torch.zeros_like(a) if b is None else b.to(a.dtype)
        difference = float((a - b).norm())
        scale = max(float(a.norm()), float(b.norm()))
        if difference > tolerance * scale:
            bad[name] = MISMATCH.format(difference / scale)
            if name in already_whole:
                _raise_if_wrong(bad)
    return bad


def _raise_if_wrong(bad: dict[str, str]) -> None:
    if bad:
        name, reason = next(iter(bad.items()))
        raise RuntimeError(
            f"cannot compute a per-sample Fisher for parameter {name!r}: even the whole "
            f"model's per-sample gradients do not add up to autograd's gradient ({reason}). "
            "A sample's output must depend on that sample alone (in eval mode); batch "
            "statistics or attention across the batch dimension couple the samples"
        )
