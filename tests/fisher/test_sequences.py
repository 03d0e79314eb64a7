"""Sequence outputs: the sample is the sequence, padding is left out, labels are checked."""

from __future__ import annotations

import pytest
import torch

import ewc
from model_zoo import build, tagger
from reference import assert_fisher_close, brute_force_fisher


def relative_l2(a, b):
    diff = sum((a[n] - b[n]).square().sum() for n in a)
    return float((diff / sum(b[n].square().sum() for n in b)).sqrt())


def test_the_sample_is_the_sequence_not_the_token():
    case = build(tagger)
    data = [(case.inputs, case.targets)]
    per_sequence = ewc.diagonal_fisher(case.model, data, "empirical", output_fn=case.output_fn)
    assert per_sequence.num_samples == len(case.inputs)
    # the same tokens, each its own sample, give another quantity (no cross terms, N·T samples)
    ids, targets = case.inputs, case.targets
    tokens = [
        (ids[n : n + 1], targets[n : n + 1].masked_fill(torch.arange(3) != t, -100))
        for n in range(len(ids))
        for t in range(3)
        if targets[n, t] != -100
    ]
    per_token = ewc.diagonal_fisher(case.model, tokens, "empirical", output_fn=case.output_fn)
    assert relative_l2(per_token, per_sequence) > 0.05


def test_padding_tokens_change_nothing():
    case = build(tagger)
    padded = case.targets.clone()
    padded[:, -1] = -100
    other = case.inputs.clone()
    fisher = ewc.diagonal_fisher(case.model, [(other, padded)], "exact", output_fn=case.output_fn)
    reference = brute_force_fisher(case.model, other, padded, "exact", output_fn=case.output_fn)
    assert_fisher_close(fisher, reference)


@pytest.mark.parametrize(
    ("targets", "error", "message"),
    [
        (torch.zeros(4, 2, dtype=torch.long), ValueError, r"need labels of shape \(4, 3\)"),
        (
            torch.full((4, 3), 3),
            ValueError,
            r"labels must be in \[0, 3\) or -100 \(ignored\); got 3",
        ),
        (torch.zeros(4, 3), TypeError, "labels must be integers"),
    ],
)
def test_sequence_labels_are_checked_for_every_kind(targets, error, message):
    case = build(tagger)
    with pytest.raises(error, match=message):
        ewc.diagonal_fisher(case.model, [(case.inputs, targets)], "exact", output_fn=case.output_fn)


@pytest.mark.slow
def test_sample_converges_to_exact_for_sequences():
    """The cross terms between tokens vanish in expectation: sample → exact, not to a sum with
    cross terms (a check independent of the enumerating twin)."""
    case = build(tagger, seed=2)
    data = [(case.inputs, case.targets)]
    exact = ewc.diagonal_fisher(case.model, data, "exact", output_fn=case.output_fn)
    gen = torch.Generator().manual_seed(0)
    many = ewc.diagonal_fisher(
        case.model, data, "sample", samples_per_input=4000, output_fn=case.output_fn, generator=gen
    )
    assert relative_l2(many, exact) < 0.05
