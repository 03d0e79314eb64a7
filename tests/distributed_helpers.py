"""Run a function on several gloo ranks spawned from a test, with a free port and a timeout.

The worker functions live here, in an importable module: spawned processes import them by name.
"""

from __future__ import annotations

import datetime
import socket
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp

TIMEOUT_S = 240.0  # spawning two Python processes that import torch takes seconds on a busy CPU


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = TIMEOUT_S):
    """Call ``fn(rank, world_size, *args)`` in ``world_size`` spawned processes in one gloo group.

    Raises:
        TimeoutError: the ranks did not all finish within ``timeout`` seconds (they are killed).
        torch.multiprocessing.ProcessRaisedException: a rank raised (its traceback is included).
    """
    port = free_port()
    context = mp.spawn(_rank_main, args=(fn, world_size, port, args), nprocs=world_size, join=False)
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{world_size} ranks did not finish within {timeout:.0f} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()


def _rank_main(rank: int, fn: Callable[..., Any], world_size: int, port: int, args: tuple) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        fn(rank, world_size, *args)
    finally:
        torch.distributed.destroy_process_group()
