"""Exact shards of a data set for the ranks of a process group: no padding, no repeated sample.

`torch.utils.data.DistributedSampler` pads by default: it repeats samples until every rank has
the same number, so a mean over the union of its shards (the Fisher, an accuracy) counts some
samples twice. `shard` gives rank r of W its part of the N samples exactly once: the shards'
sizes differ by at most one, and together they hold every sample once. A Fisher all-reduced
over them (`ewc.fisher.distributed`) is the Fisher of the whole data set.

- ``contiguous`` (default): rank r takes samples ⌊rN/W⌋ … ⌊(r+1)N/W⌋ − 1, so the shards in rank
  order are the data set in its order.
- ``strided``: rank r takes samples r, r + W, r + 2W, … (round robin).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
from torch.utils.data import Subset

from ewc._choices import Choice

T = TypeVar("T")


class ShardMode(Choice):
    """How `shard` splits the samples: consecutive blocks, or every W-th sample."""

    __noun__ = ("shard mode", "shard modes")

    CONTIGUOUS = "contiguous"
    STRIDED = "strided"


def shard(
    data: Sequence[T],
    rank: int | None = None,
    world_size: int | None = None,
    *,
    mode: ShardMode | str = ShardMode.CONTIGUOUS,
) -> Subset[T]:
    """Rank ``rank``'s exact share of ``data``: every sample on exactly one rank, none repeated.

    Args:
        data: anything with ``len`` and integer indexing: a `torch.utils.data.Dataset` with a
            length, a list of samples, or a list of ``(inputs, targets)`` batches (to keep batches
            whole, which ``kind="batched"`` needs, see docs/distributed.md).
        rank: this process's rank; default: its rank in the initialised default process group.
        world_size: the number of ranks; default: the default process group's size.
        mode: ``"contiguous"`` (default) or ``"strided"`` (see the module docstring).

    Returns:
        A `torch.utils.data.Subset` of ``data`` (a DataLoader takes it like any data set); with
        N samples it holds ⌊N/W⌋ or ⌈N/W⌉ of them, possibly none when N < W.

    Raises:
        ValueError: rank or world size missing outside a process group, or out of range.
    """
    mode = ShardMode.parse(mode)
    rank, world_size = _rank_and_size(rank, world_size)
    if mode is ShardMode.STRIDED:
        indices = range(rank, len(data), world_size)
    else:
        indices = shard_range(len(data), rank, world_size)
    return Subset(data, indices)


def shard_range(length: int, rank: int, world_size: int) -> range:
    """The indices ⌊r·N/W⌋ … ⌊(r+1)·N/W⌋ − 1 of rank r's contiguous share of N items."""
    rank, world_size = _rank_and_size(rank, world_size)
    return range(rank * length // world_size, (rank + 1) * length // world_size)


def _rank_and_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """The given rank and size, or the default process group's; checked."""
    if rank is None or world_size is None:
        distributed = torch.distributed
        if not (distributed.is_available() and distributed.is_initialized()):
            raise ValueError(
                "shard needs rank= and world_size=, or an initialised default process group "
                "(torch.distributed.init_process_group, e.g. under torchrun) to read them from"
            )
        rank = distributed.get_rank() if rank is None else rank
        world_size = distributed.get_world_size() if world_size is None else world_size
    for name, value in (("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer; got {value!r}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"rank must be in [0, world_size) and world_size ≥ 1; got rank {rank}, "
            f"world_size {world_size}"
        )
    return rank, world_size
