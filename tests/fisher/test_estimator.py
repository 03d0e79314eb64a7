"""Every fast Fisher kind against its float64 one-sample-at-a-time twin, on every kind of layer."""

from __future__ import annotations

import pytest
import torch

import ewc
from model_zoo import ALL, build, cnn, frozen, mlp, multi_head
from reference import (
    assert_fisher_close,
    brute_force_batched,
    brute_force_fisher,
    dense_exact_fisher_diagonal,
    in_batches,
    sequence_draws,
)


@pytest.mark.parametrize("factory", ALL, ids=lambda f: f.__name__)
@pytest.mark.parametrize("kind", ["exact", "empirical", "argmax"])
def test_per_sample_kinds_match_brute_force(factory, kind):
    case = build(factory)
    fast = ewc.diagonal_fisher(case.model, in_batches(case, 3), kind, output_fn=case.output_fn)
    reference = brute_force_fisher(
        case.model, case.inputs, case.targets, kind, output_fn=case.output_fn
    )
    assert fast.kind.value == kind
    assert fast.num_samples == len(case.inputs)
    assert_fisher_close(fast, reference)


@pytest.mark.parametrize("factory", ALL, ids=lambda f: f.__name__)
def test_sample_kind_matches_brute_force_on_the_same_draws(factory):
    case = build(factory)
    k = 3
    fast = ewc.diagonal_fisher(
        case.model,
        [(case.inputs, case.targets)],
        "sample",
        samples_per_input=k,
        output_fn=case.output_fn,
        generator=torch.Generator().manual_seed(7),
    )
    with torch.no_grad():
        case.model.eval()
        out = case.model(case.inputs)
        p = (case.output_fn(out) if case.output_fn else out).softmax(-1)
    if p.dim() == 3:
        drawn = sequence_draws(p, k, seed=7)
    else:
        gen = torch.Generator().manual_seed(7)
        drawn = torch.multinomial(p, k, replacement=True, generator=gen)
    reference = brute_force_fisher(
        case.model, case.inputs, case.targets, "sample", output_fn=case.output_fn, sampled=drawn
    )
    assert_fisher_close(fast, reference)


@pytest.mark.parametrize("factory", ALL, ids=lambda f: f.__name__)
def test_batched_matches_brute_force(factory):
    case = build(factory)
    batches = in_batches(case, 2)
    fast = ewc.diagonal_fisher(case.model, batches, "batched", output_fn=case.output_fn)
    assert fast.num_samples == len(case.inputs)
    assert_fisher_close(fast, brute_force_batched(case.model, batches, case.output_fn))


@pytest.mark.parametrize("factory", [mlp, cnn], ids=lambda f: f.__name__)
def test_exact_equals_the_diagonal_of_the_dense_fisher(factory):
    case = build(factory)
    fast = ewc.diagonal_fisher(case.model, in_batches(case, 4), "exact")
    assert_fisher_close(fast, dense_exact_fisher_diagonal(case.model, case.inputs))


def test_batched_equals_empirical_at_batch_size_one_and_not_above():
    case = build(mlp, seed=3)
    empirical = ewc.diagonal_fisher(case.model, in_batches(case, 3), "empirical")
    batched_one = ewc.diagonal_fisher(case.model, in_batches(case, 1), "batched")
    assert_fisher_close(batched_one, empirical)
    batched_many = ewc.diagonal_fisher(case.model, in_batches(case, 7), "batched")
    total_empirical = sum(v.sum() for v in empirical.values())
    total_batched = sum(v.sum() for v in batched_many.values())
    assert total_batched < 0.5 * total_empirical


def test_the_kinds_are_different_quantities():
    case = build(mlp, seed=1)
    data = in_batches(case, 4)
    totals = {
        kind: sum(v.sum() for v in ewc.diagonal_fisher(case.model, data, kind).values())
        for kind in ["exact", "empirical", "argmax"]
    }
    assert len({round(float(t), 12) for t in totals.values()}) == 3


def test_multi_head_leaves_other_heads_at_zero():
    case = build(multi_head)
    fisher = ewc.diagonal_fisher(case.model, in_batches(case, 3), output_fn=case.output_fn)
    assert fisher["heads.1.weight"].abs().sum() > 0
    assert fisher["heads.0.weight"].abs().sum() == 0
    assert fisher["heads.2.bias"].abs().sum() == 0


def test_frozen_parameters_are_left_out():
    case = build(frozen)
    fisher = ewc.diagonal_fisher(case.model, in_batches(case, 3))
    assert "1.weight" not in fisher
    assert "3.bias" not in fisher
    assert "1.bias" in fisher
