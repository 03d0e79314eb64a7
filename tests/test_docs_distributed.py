"""docs/distributed.md tells the truth: its complete example runs under torchrun as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
THREADS_AT_START = 'import os\nTHREADS_AT_START = len(os.listdir("/proc/self/task"))\n'
# After destroy_process_group, in one write(2), which the other rank's cannot split (python -u).
THREADS_AT_END = (
    '\nos.write(1, b"threads %d %d\\n" % (THREADS_AT_START, len(os.listdir("/proc/self/task"))))\n'
)


def test_the_distributed_page_runs_under_torchrun_as_written(tmp_path):
    page = (DOCS / "distributed.md").read_text(encoding="utf-8")
    (code,) = re.findall(r"```python\n(.*?)```", page, re.S)
    script = tmp_path / "ewc_ddp.py"
    script.write_text(THREADS_AT_START + code + THREADS_AT_END)  # the page's code, unchanged
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    done = subprocess.run(
        [*command, "--nproc-per-node=2", str(script)], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("after task")]
    assert [line.split(" (")[0] for line in lines] == ["after task A", "after task B"]
    assert all("(Fisher of 2000 inputs)" in line for line in lines)  # the union, on rank 0
    task_a, task_b = (float(a) for a in lines[-1].split(": ")[1].split())
    assert task_a > 0.6  # task A kept after task B (chance: 0.1)
    assert task_b > 0.6
    # destroy_process_group ended the group: its threads could otherwise abort the exit
    counts = re.findall(r"^threads (\d+) (\d+)$", done.stdout, re.M)
    assert len(counts) == 2  # one line per rank
    assert all(start == end for start, end in counts), counts
