"""`import ewc` lets destroy_process_group end the default group after DDP (_process_group_exit).

Each check runs in a fresh interpreter: the import order is the subject, and this test process
has imported torch's modules long ago.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/task"), reason="counts threads in /proc/self/task (Linux)"
)

GROUP_OF_ONE = """
import os, sys, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
import ewc

def threads():
    return len(os.listdir("/proc/self/task"))

alone = threads()
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
grouped = threads()
ddp = DistributedDataParallel(torch.nn.Linear(3, 2))  # imports torch._dynamo on first use
ddp(torch.ones(4, 3)).sum().backward()
del ddp
dist.destroy_process_group()
print(alone, grouped, threads())
"""

IMPORTED_INSIDE_A_GROUP = """
import sys, torch.distributed as dist
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
import ewc
print("torch.distributed.nn.functional" in sys.modules)
dist.destroy_process_group()
"""


def run_fresh(script: str, tmp_path) -> list[str]:
    """``script`` in a fresh interpreter (a file store under ``tmp_path``): its printed words."""
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split()


def test_import_ewc_first_lets_destroy_process_group_join_the_group_threads(tmp_path):
    alone, grouped, ended = (int(count) for count in run_fresh(GROUP_OF_ONE, tmp_path))
    assert grouped > alone  # gloo's worker threads exist while the group does
    assert ended == alone  # and are joined: no thread left to abort the interpreter's exit


def test_import_ewc_inside_a_group_leaves_the_capturing_module_unimported(tmp_path):
    # importing it there would capture the live group
    assert run_fresh(IMPORTED_INSIDE_A_GROUP, tmp_path) == ["False"]
