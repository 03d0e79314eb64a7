"""dtypes: half-precision models get a float32 Fisher close to their float64 twin; float64 stays."""

from __future__ import annotations

import copy

import pytest
import torch

import ewc
from model_zoo import build, encoder, functional_tying, language_model, mlp, tagger
from reference import brute_force_fisher, in_batches

#: Largest error of any entry relative to its tensor's largest entry, vs the float64 twin of the
#: same (rounded) weights: the backward pass runs in the model's precision (8 or 11 bits).
HALF_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 5e-2}


def half_and_twin(case, dtype):
    half = copy.deepcopy(case.model).to(dtype)
    twin = copy.deepcopy(half).double()
    floating = case.inputs.is_floating_point()
    return half, twin, (case.inputs.to(dtype) if floating else case.inputs)


def max_relative_error(fast, reference):
    return max(
        float((fast[n].double() - ref).abs().max() / ref.abs().max())
        for n, ref in reference.items()
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    ("factory", "kind"),
    [
        (mlp, "exact"),
        (mlp, "empirical"),
        (encoder, "exact"),
        (functional_tying, "exact"),
        (language_model, "empirical"),
    ],
    ids=lambda v: getattr(v, "__name__", v),
)
def test_half_precision_models_match_their_float64_twin(factory, kind, dtype):
    case = build(factory)
    half, twin, inputs = half_and_twin(case, dtype)
    fast = ewc.diagonal_fisher(half, [(inputs, case.targets)], kind, output_fn=case.output_fn)
    reference = brute_force_fisher(
        twin,
        inputs.double() if inputs.is_floating_point() else inputs,
        case.targets,
        kind,
        output_fn=case.output_fn,
    )
    assert all(v.dtype == torch.float32 and bool(v.isfinite().all()) for v in fast.values())
    assert max_relative_error(fast, reference) < HALF_TOLERANCE[dtype]


def test_squares_beyond_the_float16_range_do_not_overflow():
    torch.manual_seed(0)
    half = torch.nn.Linear(12, 5).half()
    with torch.no_grad():
        half.weight.mul_(1e-3)  # logits stay moderate while inputs are large
    inputs, targets = (torch.randn(6, 12) * 1000).half(), torch.randint(0, 5, (6,))
    fast = ewc.diagonal_fisher(half, [(inputs, targets)])  # gradients ≈ 1e3, squares ≈ 1e6
    reference = brute_force_fisher(copy.deepcopy(half).double(), inputs.double(), targets, "exact")
    assert max(float(r.max()) for r in reference.values()) > torch.finfo(torch.float16).max
    assert max_relative_error(fast, reference) < HALF_TOLERANCE[torch.float16]


def test_a_float64_model_gets_a_float64_fisher():
    case = build(tagger)
    fisher = ewc.diagonal_fisher(case.model, in_batches(case, 2), output_fn=case.output_fn)
    assert {v.dtype for v in fisher.values()} == {torch.float64}


def test_the_penalty_of_a_half_model_keeps_a_float32_importance():
    case = build(mlp)
    half, _, inputs = half_and_twin(case, torch.float16)
    fisher = ewc.diagonal_fisher(half, [(inputs, case.targets)])
    penalty = ewc.EWC(half, strength=1e6)
    penalty.consolidate(fisher)
    assert {v.dtype for v in penalty.importance.values()} == {torch.float32}
    tiny = min(float(v[v > 0].min()) for v in fisher.values())
    assert tiny < torch.finfo(torch.float16).tiny  # would round to zero in float16
    with torch.no_grad():
        for p in half.parameters():
            p.add_(0.01)
    value = penalty()
    value.backward()
    assert value.dtype == torch.float32
    assert bool(value.isfinite())
    assert all(p.grad.dtype == torch.float16 for p in half.parameters())
    before = {n: p.grad.clone() for n, p in half.named_parameters()}
    penalty.add_gradient_()
    assert all(torch.allclose(p.grad, 2 * before[n]) for n, p in half.named_parameters())
