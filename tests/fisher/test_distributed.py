"""Two gloo ranks, each on its shard, give the one-process Fisher of the union, on both ranks."""

from __future__ import annotations

import re

import pytest
import torch

import ewc
from distributed_helpers import run_ranks
from distributed_workers import (
    KFAC_KINDS,
    KINDS,
    fisher_batches,
    fisher_model,
    fisher_rank,
    one_process_fishers,
)

TOLERANCE = 1e-6  # float32 per-rank sums, added in float64: rounding of about 1e-7 relative


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Every kind's Fisher from two spawned ranks (saved by each), and from one process."""
    folder = tmp_path_factory.mktemp("fisher-ranks")
    run_ranks(fisher_rank, 2, str(folder))
    return [torch.load(folder / f"rank{r}.pt") for r in range(2)], one_process_fishers()


def relative_error(fast: dict, reference: dict) -> float:
    """max over tensors of max |fast − reference| / max |reference|."""
    assert set(fast) == set(reference)
    return max(
        float((fast[n] - reference[n]).abs().max() / reference[n].abs().max().clamp_min(1e-30))
        for n in reference
    )


@pytest.mark.parametrize("kind", KINDS)
def test_two_ranks_give_the_one_process_fisher_on_both(ranks, kind):
    (rank0, rank1), single = ranks
    for name in single[kind]:
        assert torch.equal(rank0[kind][name], rank1[kind][name]), name  # bit for bit
    assert relative_error(rank0[kind], single[kind]) <= TOLERANCE


@pytest.mark.parametrize("kind", KFAC_KINDS)
def test_two_ranks_give_the_one_process_kfac_factors(ranks, kind):
    (rank0, rank1), single = ranks
    key = f"kfac-{kind}"
    assert all(torch.equal(rank0[key][n], rank1[key][n]) for n in single[key])
    assert relative_error(rank0[key], single[key]) <= TOLERANCE
    assert int(rank0[key]["num_samples"]) == sum(x.shape[0] for x, _ in fisher_batches())


@pytest.mark.parametrize("kind", KINDS)
def test_per_rank_seeds_still_agree_across_ranks(ranks, kind):
    (rank0, rank1), _ = ranks
    key = f"{kind}-seed+rank"
    assert all(torch.equal(rank0[key][n], rank1[key][n]) for n in rank0[key])
    kfac = "kfac-sample-seed+rank"
    assert all(torch.equal(rank0[kfac][n], rank1[kfac][n]) for n in rank0[kfac])


def test_all_reduce_false_keeps_each_rank_to_its_shard(ranks):
    (rank0, rank1), single = ranks
    assert relative_error(rank0["exact-local"], single["exact"]) > 1e-3
    assert not torch.equal(rank0["exact-local"]["0.weight"], rank1["exact-local"]["0.weight"])


def test_a_rank_without_samples_still_gets_the_union(ranks):
    (rank0, rank1), _ = ranks
    model, batches = fisher_model(), fisher_batches()
    alone = ewc.diagonal_fisher(model, batches[:1], "exact")
    for name, value in alone.items():
        assert torch.allclose(rank0["empty-rank"][name], value, rtol=TOLERANCE, atol=0)
        assert torch.equal(rank0["empty-rank"][name], rank1["empty-rank"][name])
    assert int(rank1["empty-rank-n"]["n"]) == batches[0][0].shape[0]


def test_ranks_that_disagree_on_the_kind_both_raise(ranks):
    for rank in ranks[0]:
        message = bytes(rank["mismatch"]["message"].tolist()).decode()
        assert "every rank must call the estimator with the same model, kind and options" in message


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("mismatch-option", "same model, kind and options"),
        ("mismatch-weights", "hold different parameter values"),
        ("mismatch-kfac-weights", "hold different parameter values"),
    ],
)
def test_ranks_that_disagree_on_options_or_weights_both_raise(ranks, case, words):
    for rank in ranks[0]:
        assert case in rank, f"{case}: the ranks' Fishers were mixed without an error"
        assert words in bytes(rank[case]["message"].tolist()).decode()


def test_shard_is_exact_contiguous_or_strided():
    data = list(range(11))
    parts = [list(ewc.shard(data, r, 3)) for r in range(3)]
    assert parts == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9, 10]]
    strided = [list(ewc.shard(data, r, 3, mode="strided")) for r in range(3)]
    assert sorted(i for part in strided for i in part) == data
    assert strided[1] == [1, 4, 7, 10]
    assert [len(ewc.shard(range(2), r, 4)) for r in range(4)] == [0, 1, 0, 1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((3, 3), "rank must be in [0, world_size)"),
        ((0, 0), "world_size ≥ 1"),
        ((0, 2.0), "world_size must be an integer; got 2.0"),
        ((None, None), "shard needs rank= and world_size="),
    ],
)
def test_shard_errors_say_what_is_accepted(args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ewc.shard([1, 2, 3], *args)
    with pytest.raises(ValueError, match="unknown shard mode 'blocks'"):
        ewc.shard([1], 0, 1, mode="blocks")


def test_all_reduce_must_be_a_bool_or_a_group():
    model, batches = fisher_model(), fisher_batches()
    with pytest.raises(ValueError, match="all_reduce must be True"):
        ewc.diagonal_fisher(model, batches, all_reduce="yes")
