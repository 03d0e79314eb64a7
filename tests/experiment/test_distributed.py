"""DDP training of one cell: the penalty's gradient under DDP is the one-process gradient."""

from __future__ import annotations

import pytest
import torch

from distributed_helpers import run_ranks
from distributed_workers import gradient_rank, one_process_gradients

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
