"""The processes that train together under ``torchrun``: who they are and how they agree.

``torchrun`` starts W processes (ranks) and describes them in the environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). `process_group_from_environment`
joins that process group for the CLI (gloo on CPU, NCCL on CUDA); `Team` is this process's view
of it, with the few collectives the runner needs (a barrier, sums of counts, a check that every
rank holds the same value, rank 0's answer); `open_on_main` lets rank 0 alone create or open the
run directory. Everything here is `torch.distributed`; nothing communicates otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ewc.experiment.storage.rundir import RunDirectory


class DistributedError(RuntimeError):
    """Another rank failed, or the ranks disagree; the message says which and what to do."""


@dataclass(frozen=True)
class Team:
    """The processes that train together: this one's rank and their number (1: alone)."""

    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> Team:
        """The default process group's rank and size when one is initialised, else alone."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return cls(torch.distributed.get_rank(), torch.distributed.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """Where the collectives' tensors live: the current GPU for NCCL, else the CPU."""
        if torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def barrier(self) -> None:
        """Wait until every rank is here (nothing to wait for alone)."""
        if self.size > 1:
            torch.distributed.barrier()

    def sum(self, values: list[int]) -> list[int]:
        """Each value summed over the ranks (int64)."""
        tensor = torch.tensor(values, dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def sum_float(self, value: float) -> float:
        """``value`` summed over the ranks (float64)."""
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return float(tensor.item())

    def same(self, value: int) -> bool:
        """Whether every rank holds the same int64 ``value`` (one all-reduce of (v, −v), MAX)."""
        tensor = torch.tensor([value, -value], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return tensor[0].item() == -tensor[1].item()

    def from_main(self, value: Any) -> Any:
        """Rank 0's ``value`` (a small picklable object such as a path), on every rank."""
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


#: One process, no group: what `Team.current` is outside ``torchrun``.
ALONE = Team()


def is_launched() -> bool:
    """Whether ``torchrun`` (or another launcher) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launched_rank() -> int:
    """This process's rank as the launcher set it (``RANK``; 0 when not launched)."""
    return int(os.environ.get("RANK", "0"))


@contextmanager
def process_group_from_environment(device: str) -> Iterator[Team]:
    """Join the process group ``torchrun`` describes in the environment, and leave it after.

    Uses NCCL for a CUDA ``device`` (each rank on GPU ``LOCAL_RANK``) and gloo otherwise. Outside
    a launch with several processes, or inside an already initialised group, it does nothing.
    """
    if not is_launched() or torch.distributed.is_initialized():
        yield Team.current()
        return
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    try:
        yield Team.current()
        torch.distributed.barrier()  # on success only: a failed rank never reaches it
    finally:
        torch.distributed.destroy_process_group()


def open_on_main(team: Team, open_directory: Callable[[], RunDirectory]) -> RunDirectory:
    """The run directory, created or opened by rank 0 only, then shared with the other ranks.

    Raises:
        DistributedError: on the other ranks, when rank 0 failed (its own error says why).
    """
    if team.size == 1:
        return open_directory()
    path, directory = None, None
    try:
        if team.is_main:
            directory = open_directory()
            path = str(directory.path)
    finally:
        path = team.from_main(path)
    if path is None:
        raise DistributedError(
            f"rank {team.rank}: rank 0 could not open the run directory (its error says why)"
        )
    return directory if directory is not None else RunDirectory(path)  # rank 0's holds the lock
