"""DDP training of one cell: the penalty's gradient under DDP is the one-process gradient."""

from __future__ import annotations

import pytest
import torch

from distributed_helpers import run_ranks
from distributed_workers import gradient_rank, one_process_gradients, rebatched_rows

TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def gradients(tmp_path_factory):
    """Each penalty path's gradients from two spawned DDP ranks, and from one process."""
    folder = tmp_path_factory.mktemp("gradient-ranks")
    run_ranks(gradient_rank, 2, str(folder))
    return [torch.load(folder / f"rank{r}.pt") for r in range(2)], one_process_gradients()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("path", ["add_gradient_", "in the loss", "none"])
def test_ddp_gradient_with_the_penalty_equals_one_process(gradients, path):
    """Global batch of 5 split 2 / 3: the W/B scaling makes DDP's average the batch-mean's."""
    (rank0, rank1), single = gradients
    for name, expected in single[path].items():
        assert torch.equal(rank0[path][name], rank1[path][name])
        assert _relative(rank0[path][name], expected) <= TOLERANCE, (path, name)
    assert rank0[path]["loss"] == rank1[path]["loss"]


def test_a_penalty_on_rank_0_only_would_count_half(gradients):
    """The negative control: DDP averages, so a penalty on one rank of two gives half of it."""
    (rank0, _), single = gradients
    for name, task_only in single["none"].items():
        half = task_only + (single["add_gradient_"][name] - task_only) / 2
        got = rank0["rank 0 only, in the loss"][name]
        assert _relative(got, half) <= TOLERANCE
        assert _relative(got, single["add_gradient_"][name]) > 1e-3


def test_ranks_whose_strategy_states_differ_stop_with_an_error(gradients):
    """A strategy that does not all-reduce its shard's importance (mas) is refused on every rank."""
    for rank in gradients[0]:
        message = bytes(rank["strategy check"]["message"].tolist()).decode()
        assert message.startswith("after task 1 the 2 ranks hold different states of strategy")
        assert "'ranked'" in message
        assert "train it with one process" in message


def test_batch_norm_is_refused_on_every_rank(gradients):
    """Each rank would normalise its share with its own statistics: not one process's batch."""
    for rank in gradients[0]:
        message = bytes(rank["batch norm"]["message"].tolist()).decode()
        assert message.startswith("the model's 1 (BatchNorm1d) normalises with the statistics")
        assert "use LayerNorm or GroupNorm, or train with one process" in message


def test_rebatched_fisher_data_is_shared_out_as_the_task_batches_are(gradients):
    """``context.batches`` (fisher_batch_size, the batched Fisher) gives each rank its share:
    a contiguous part of every batch, or for ``batched`` whole batches r, r + W, ..."""
    ranks, single = [rank["rebatched"] for rank in gradients[0]], rebatched_rows(None)
    for size in (4, 5):
        one = single["per-sample"][size]
        halves = [r["per-sample"][size] for r in ranks]
        assert [a + b for a, b in zip(*halves, strict=True)] == one  # rows split, none repeated
        assert all(len(a) == len(row) // 2 for a, row in zip(halves[0], one, strict=True))
        whole = [r["batched"][size] for r in ranks]
        assert whole[0] == single["batched"][size][0::2]
        assert whole[1] == single["batched"][size][1::2]


def test_each_rank_draws_its_own_dropout_masks_and_the_shared_stream_stays_in_step(gradients):
    (rank0, rank1), _ = gradients
    a, b = rank0["dropout"], rank1["dropout"]
    assert a["first masks"].shape == (2, 4, 16)
    assert not torch.equal(a["first masks"], b["first masks"])  # the shares' noise differs
    for rank in (a, b):  # the same seed gives the same masks (a resume repeats them)
        assert torch.equal(rank["first masks"], rank["again masks"])
    assert torch.equal(a["first global draw"], b["first global draw"])
