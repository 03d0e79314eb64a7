"""Scaling past one process: prints figures, asserts nothing (see benchmarks/README.md).

The sweep part: trials per hour of ``ewc sweep`` with 1 and 2 worker processes on one study (the
default journal file), each worker a separate ``ewc sweep`` process started with the same
command, on a tiny grid (embedded MNIST, 2 tasks, 1 epoch). A trial here takes seconds, so the
figure includes each worker's start-up (importing torch, loading the data) and the study's
bookkeeping; on a machine with fewer free cores than workers the two workers share them.

Usage::

    python benchmarks/scaling.py sweep [--points 8] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The embedded MNIST subset, 2 tasks of 256 training images, an MLP 784-64-10: a trial is seconds.
TINY_SWEEP = [
    "benchmark.num_tasks=2",
    "benchmark.train_samples=256",
    "benchmark.test_samples=256",
    "training.epochs=1",
    "training.batch_size=32",
    "training.eval_every=0",
    "training.threads=1",
    "model.hidden=[64]",
]
EWC = [sys.executable, "-c", "import sys; from ewc.cli import main; sys.exit(main())"]


def sweep_trials_per_hour(workers: int, points: int = 8) -> tuple[float, float, int]:
    """Run a ``points``-point λ grid with ``workers`` ``ewc sweep`` processes on one study.

    Returns:
        (trials per hour, wall seconds from the first start to the last exit, trials run).
    """
    with tempfile.TemporaryDirectory(prefix="ewc-scaling-") as folder:
        out = Path(folder) / "sweep"
        command = [
            *EWC,
            "sweep",
            "--search",
            f"strategies.ewc.strength=log:1..1e7:{points}",
            "--no-prune",
            "--no-report",
            "--quiet",
            "--out",
            str(out),
            *TINY_SWEEP,
        ]
        started = time.perf_counter()
        processes = [subprocess.Popen(command, stdout=subprocess.DEVNULL) for _ in range(workers)]
        codes = [p.wait() for p in processes]
        seconds = time.perf_counter() - started
        if any(codes):
            raise RuntimeError(f"a sweep worker failed (exit codes {codes})")
        trials = json.loads((out / "trials.json").read_text())["trials"]
        complete = sum(1 for t in trials if t["state"] == "complete")
    return 3600.0 * complete / seconds, seconds, complete


def print_sweep_scaling(worker_counts: list[int], points: int) -> None:
    """Print trials per hour for each worker count, and the ratio to the first."""
    reference = None
    for workers in worker_counts:
        rate, seconds, trials = sweep_trials_per_hour(workers, points)
        reference = reference or rate
        print(
            f"sweep, {workers} worker(s): {trials} trials in {seconds:.1f} s = "
            f"{rate:.0f} trials/hour ({rate / reference:.2f}× the {worker_counts[0]}-worker rate)"
        )


def main() -> None:
    """Command line: ``scaling.py sweep``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["sweep"])
    parser.add_argument("--points", type=int, default=8, help="grid points (trials)")
    parser.add_argument("--workers", default="1,2", help="worker counts, e.g. 1,2")
    args = parser.parse_args()
    if args.part == "sweep":
        print_sweep_scaling([int(w) for w in args.workers.split(",")], args.points)


if __name__ == "__main__":
    main()
