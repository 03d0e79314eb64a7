"""No silent error: every use of every parameter is accounted for, or the estimate refuses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ewc
from ewc.fisher import coverage, verify
from ewc.fisher.estimator import Checks, estimate
from ewc.fisher.rules import RULES
from ewc.fisher.rules.linear import LinearRule
from model_zoo import (
    attention,
    build,
    encoder,
    func_inside,
    functional_tying,
    fused,
    language_model,
    mlp,
    root_parameter,
)
from reference import assert_fisher_close, brute_force_fisher, in_batches


def plan_of(case):
    """The plan of the case's first batch, as the estimator makes it."""
    model, params = case.model.eval(), dict(case.model.named_parameters())
    from ewc.fisher.capture import CallRecorder
    from ewc.fisher.estimator import _owner_modules

    with CallRecorder(_owner_modules(model, params), list(model.parameters())) as recorder:
        out = model(case.inputs)
        logits = case.output_fn(out) if case.output_fn else out
        return coverage.plan_batch(logits, recorder.calls, params, len(case.inputs))


@pytest.mark.parametrize(
    ("factory", "whole", "ancestor"),
    [
        (functional_tying, {"embed.weight"}, {}),
        (fused, {"block.lin.weight", "block.lin.bias", "block.norm.weight", "block.norm.bias"}, {}),
        (func_inside, {"inner.weight"}, {}),  # the bias is passed as itself: its rule holds
        (language_model, {"embed.weight", "pos"}, {}),  # the root returns a dataclass
        (
            attention,
            set(),
            {"attn.out_proj.weight": "out_proj.weight", "attn.out_proj.bias": "out_proj.bias"},
        ),
        (mlp, set(), {}),
        (root_parameter, set(), {}),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_the_graph_routes_uses_the_rules_cannot_see(factory, whole, ancestor):
    plan = plan_of(build(factory))
    assert set(plan.whole_model) == whole
    for name, local in ancestor.items():
        assert [site[1] for site in plan.sites[name]] == [local]
    assert all(reason == coverage.OUTSIDE_OWNER for reason in plan.whole_model.values())


@pytest.mark.parametrize("factory", [functional_tying, fused, func_inside])
def test_without_the_checks_these_models_get_a_wrong_fisher(factory):
    """The reason the checks exist: the rules alone are silently wrong on these models."""
    case = build(factory)
    data = in_batches(case, 3)
    reference = brute_force_fisher(case.model, case.inputs, case.targets, "exact")
    trusting = estimate(case.model, data, "exact", checks=Checks(graph=False, numeric=False))
    errors = [float((trusting[n] - reference[n]).abs().max()) for n in reference]
    assert max(errors) > 1e-3 * max(float(r.abs().max()) for r in reference.values())
    assert_fisher_close(ewc.diagonal_fisher(case.model, data, "exact"), reference)


def test_the_numeric_check_alone_catches_a_use_the_graph_check_missed():
    case = build(functional_tying)
    data = in_batches(case, 3)
    reference = brute_force_fisher(case.model, case.inputs, case.targets, "empirical")
    alone = estimate(case.model, data, "empirical", checks=Checks(graph=False, numeric=True))
    assert_fisher_close(alone, reference)


class WrongLinearRule(LinearRule):
    """A rule with a bug: it forgets the bias."""

    def summed(self, call, grads, names):
        out = super().summed(call, grads, names)
        return {name: value * (name != "bias") for name, value in out.items()}

    def finalize(self, call, partial, names):
        out = super().finalize(call, partial, names)
        return {name: value * (name != "bias") for name, value in out.items()}


def test_a_wrong_rule_is_caught_and_bypassed(monkeypatch):
    case = build(mlp)
    monkeypatch.setitem(RULES, nn.Linear, WrongLinearRule())
    fast = ewc.diagonal_fisher(case.model, in_batches(case, 3), "empirical")
    reference = brute_force_fisher(case.model, case.inputs, case.targets, "empirical")
    assert_fisher_close(fast, reference)


class BatchCoupled(nn.Module):
    """Functional tying plus a batch mean in the forward: samples are not independent."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 3)

    def forward(self, ids):
        h = self.embed(ids).mean(1)
        return (h - h.mean(0)) @ self.embed.weight.T


def test_coupled_samples_without_a_correct_path_are_an_error():
    """Token ids carry no gradient: the forward check (sample alone vs in its batch) sees it."""
    data = [(torch.randint(0, 5, (4, 3)), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(RuntimeError, match=r"output alone differs .* depend on that sample alone"):
        ewc.diagonal_fisher(BatchCoupled(), data, "empirical")


def test_the_numeric_tolerance_is_set_for_every_floating_dtype():
    assert set(verify.TOLERANCE) == {torch.float64, torch.float32, torch.float16, torch.bfloat16}


def test_a_new_shape_is_checked_again_but_not_a_smaller_last_batch(monkeypatch):
    checked = []
    original = verify.check_plan

    def spy(*args, **kwargs):
        checked.append(args[2].shape)  # the logits
        return original(*args, **kwargs)

    monkeypatch.setattr("ewc.fisher.estimator.check_plan", spy)
    case = build(encoder, seed=1)
    data = [(case.inputs[:3], case.targets[:3]), (case.inputs[3:], case.targets[3:])]
    data.append((case.inputs[:2, :4], case.targets[:2]))  # a shorter sequence
    ewc.diagonal_fisher(case.model, data, "empirical")
    assert [tuple(s) for s in checked] == [(3, 3), (2, 3)]
    assert data[1][0].shape[0] == 2  # the smaller last batch
