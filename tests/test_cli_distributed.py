"""`torchrun --nproc-per-node=2 -m ewc run` against one process, and its resume after a SIGKILL.

Tolerance of the comparison with one process: every rank trains on its share of the same global
batch that one process draws, and DDP's average of the ranks' (W/B)-scaled sums is the gradient
of the batch mean, so the two runs differ only in the order of float32 additions (the gradient
all-reduce, the Fisher's per-rank sums, the evaluation's per-rank batches). That moves the
weights by about 1e-7 of their size per step (1.1e-6 after 96 Adam steps on a 3-task run), and a
test prediction changes only if two of its logits lie that close. No prediction changed in the
runs measured, so the matrices were equal; the test allows one test image per accuracy (1/256
here) and twice that for the metrics, which subtract accuracies, so a rare flip on another
machine does not fail it, while a wrong gradient scale, a padded shard or an averaged per-rank
accuracy would move them by far more.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ewc.cli import main

TEST_SAMPLES = 256
TINY = [
    "benchmark.num_tasks=2",
    "benchmark.train_samples=256",
    f"benchmark.test_samples={TEST_SAMPLES}",
    "training.epochs=2",
    "training.batch_size=24",  # 256 = 10 × 24 + 16: the last batch splits 8 / 8, others 12 / 12
    "training.eval_every=5",
    "checkpoint_every=3",
    "model.hidden=[32]",
    "--strategies",
    "ewc,kfac-ewc",
]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]


def torchrun(*arguments: str) -> list[str]:
    return [*TORCHRUN, "-m", "ewc", "run", "--no-report", "--quiet", *arguments]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same tiny run with 2 DDP ranks (torchrun) and in one process."""
    folder = tmp_path_factory.mktemp("torchrun")
    ddp, single = folder / "ddp", folder / "single"
    done = subprocess.run(torchrun("--out", str(ddp), *TINY), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    assert main(["run", "--no-report", "--quiet", "--out", str(single), *TINY]) == 0
    return ddp, single


def _matrices(run_dir: Path) -> dict[str, list[list[float]]]:
    return {
        p.stem: [[float(v) for v in line.split(",")[1:]] for line in p.read_text().splitlines()[1:]]
        for p in sorted((run_dir / "accuracy").glob("*.csv"))
    }


def test_two_ranks_match_one_process_within_one_test_image(runs):
    ddp, single = runs
    one_image = 1 / TEST_SAMPLES
    ours, theirs = _matrices(ddp), _matrices(single)
    assert ours.keys() == theirs.keys() == {"seed0_ewc", "seed0_kfac-ewc"}
    for cell, rows in theirs.items():
        for row, other in zip(rows, ours[cell], strict=True):
            assert all(abs(a - b) <= one_image + 1e-12 for a, b in zip(row, other, strict=True))
    summaries = [json.loads((d / "summary.json").read_text())["strategies"] for d in runs]
    for strategy, metrics in summaries[1].items():
        for metric, value in metrics.items():
            assert abs(summaries[0][strategy][metric]["mean"] - value["mean"]) <= 2 * one_image


def test_only_rank_0_wrote_and_the_record_is_ordinary(runs):
    ddp, single = runs
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())
    lines = (ddp / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((single / "metrics.jsonl").read_text().splitlines())


def _kill_group_when(process: subprocess.Popen, reached, patience_s: float = 600.0) -> bool:
    """SIGKILL torchrun and its workers (a session) once ``reached()``; False if it ended first."""
    deadline = time.monotonic() + patience_s
    while process.poll() is None and time.monotonic() < deadline:
        if reached():
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.005)
    process.wait()
    return False


def test_a_killed_torchrun_run_resumes_to_the_same_result(runs, tmp_path):
    ddp, _ = runs
    cut = tmp_path / "cut"
    checkpoints = cut / "cells" / "seed0-ewc" / "checkpoints"

    def in_the_ewc_cell() -> bool:  # past its first checkpoint (step 0), before its end
        return len(list(checkpoints.glob("*.safetensors"))) >= 2

    process = subprocess.Popen(
        torchrun("--out", str(cut), *TINY),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert _kill_group_when(process, in_the_ewc_cell), "the run ended before the kill point"
    assert not (cut / "summary.json").exists()
    resumed = subprocess.run(torchrun("--resume", str(cut)), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert _matrices(cut) == _matrices(ddp)  # the same ranks, threads and order: bit for bit
    summary = json.loads((cut / "summary.json").read_text())["strategies"]
    reference = json.loads((ddp / "summary.json").read_text())["strategies"]
    assert summary == reference
