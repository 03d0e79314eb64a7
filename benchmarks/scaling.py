"""Scaling past one process: prints figures, asserts nothing (see benchmarks/README.md).

The fisher and training parts: one process against two (gloo on this CPU, each rank one
thread; one process with one thread and with as many as the two ranks have together), timed in
freshly spawned processes, alternating one and two in each round. The Fisher: `diagonal_fisher`
of the MLP 784-400-400-10 over N MNIST inputs (batch 250), each rank on its exact shard, and the
cost of the all-reduce of its sums (the float64 flat buffer plus the layout check) as a share of
the two-process Fisher. Training: one epoch over the N inputs in global batches of 128 with Adam
and an EWC penalty, one process with `ewc.training.train_step`, two with the DDP step of
``torchrun -m ewc run`` (`ewc.experiment.distributed.DistributedStep`). Throughput is inputs per
second, the fastest of ``--repeats`` runs inside each process.

The sweep part: trials per hour of ``ewc sweep`` with 1 and 2 worker processes on one study (the
default journal file), each worker a separate ``ewc sweep`` process started with the same
command, on a tiny grid (embedded MNIST, 2 tasks, 1 epoch). A trial here takes seconds, so the
figure includes each worker's start-up (importing torch, loading the data) and the study's
bookkeeping; on a machine with fewer free cores than workers the two workers share them.

Usage::

    python benchmarks/scaling.py fisher [--samples 4000] [--kinds exact,empirical] [--rounds 3]
    python benchmarks/scaling.py training [--samples 4000] [--rounds 3]
    python benchmarks/scaling.py sweep [--points 8] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

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


def mnist(samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``samples`` images of the embedded MNIST (flattened, in [0, 1]) and labels."""
    from ewc.data import load_dataset

    data = load_dataset("mnist")
    return data.train_images[:samples].flatten(1) / 255.0, data.train_labels[:samples]


def mlp() -> torch.nn.Module:
    """The default benchmark's MLP 784-400-400-10, seeded."""
    torch.manual_seed(0)
    layers = [torch.nn.Linear(784, 400), torch.nn.ReLU(), torch.nn.Linear(400, 400)]
    return torch.nn.Sequential(*layers, torch.nn.ReLU(), torch.nn.Linear(400, 10))


def _fastest(fn, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls (after a barrier, so that ranks start together)."""
    best = float("inf")
    for _ in range(repeats):
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        started = time.perf_counter()
        fn()
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        best = min(best, time.perf_counter() - started)
    return best


def fisher_part(rank: int, world: int, options: dict) -> dict:
    """Seconds of each kind's Fisher on this rank's shard, and of its all-reduce alone."""
    import ewc
    from ewc.fisher.distributed import all_reduce_sums

    x, y = mnist(options["samples"])
    model = mlp()
    share = ewc.shard(list(zip(x.split(250), y.split(250), strict=True)), rank, world)
    out = {}
    for kind in options["kinds"]:
        out[kind] = _fastest(
            lambda k=kind: ewc.diagonal_fisher(model, share, k), options["repeats"]
        )
    if world > 1:
        sums = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
        calls = 20  # back to back after one barrier: the all-reduce alone, its mean time

        def reduce_repeatedly() -> None:
            for _ in range(calls):
                all_reduce_sums(sums, 1, 1, "exact", True)

        out["all-reduce"] = _fastest(reduce_repeatedly, options["repeats"]) / calls
    return out


def training_part(rank: int, world: int, options: dict) -> dict:
    """Seconds of one epoch (global batch 128, Adam, EWC penalty) with 1 or ``world`` ranks."""
    import ewc
    from ewc._batches import Batch
    from ewc.experiment.distributed import DistributedStep
    from ewc.experiment.team import Team
    from ewc.training import train_step

    x, y = mnist(options["samples"])
    model = mlp()
    penalty = ewc.EWC(model, strength=100.0)
    penalty.consolidate(ewc.diagonal_fisher(model, [(x[:500], y[:500])], "empirical"))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    step = DistributedStep(model, Team.current()) if world > 1 else train_step
    batches = [
        Batch(i, a, b) for i, (a, b) in enumerate(zip(x.split(128), y.split(128), strict=True))
    ]

    def epoch() -> None:
        for batch in batches:
            step(model, batch, optimizer, penalty=penalty)

    return {"epoch": _fastest(epoch, options["repeats"])}


def _rank_main(rank: int, part, world: int, threads: int, port: int, options: dict, out: str):
    torch.set_num_threads(threads)
    if world > 1:
        torch.distributed.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=600),
        )
    try:
        result = part(rank, world, options)
        if rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def measure(part, world: int, threads: int, options: dict) -> dict:
    """Run ``part`` in ``world`` fresh processes of ``threads`` threads; return rank 0's times."""
    with socket.socket() as s, tempfile.TemporaryDirectory() as folder:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        out = str(Path(folder) / "result.json")
        mp.spawn(_rank_main, args=(part, world, threads, port, options, out), nprocs=world)
        return json.loads(Path(out).read_text())


SETUPS = (("1 process, 1 thread", 1, 1), ("1 process, 2 threads", 1, 2), ("2 processes", 2, 1))


def print_process_scaling(part, keys: list[str], options: dict, rounds: int) -> None:
    """Interleaved rounds of every setup; the fastest time per setup and the ratios."""
    times: dict[str, dict[str, list[float]]] = {label: {} for label, _, _ in SETUPS}
    for _ in range(rounds):
        for label, world, threads in SETUPS:
            for key, seconds in measure(part, world, threads, options).items():
                times[label].setdefault(key, []).append(seconds)
    samples = options["samples"]
    for key in keys:
        base = min(times[SETUPS[0][0]][key])
        for label, _, _ in SETUPS:
            best = min(times[label][key])
            print(
                f"{key:>10} | {label:<20} | {best:7.3f} s | {samples / best:8.0f} inputs/s | "
                f"{base / best:.2f}× the 1-thread process"
            )
    if "all-reduce" in times[SETUPS[2][0]]:
        reduce_s = statistics.median(times[SETUPS[2][0]]["all-reduce"])
        for key in keys:
            share = reduce_s / min(times[SETUPS[2][0]][key])
            print(
                f"all-reduce of the sums: {1e3 * reduce_s:.2f} ms = {share:.2%} of the {key} Fisher"
            )


def main() -> None:
    """Command line: ``scaling.py fisher|training|sweep``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["fisher", "training", "sweep"])
    parser.add_argument("--points", type=int, default=8, help="grid points (trials)")
    parser.add_argument("--workers", default="1,2", help="worker counts, e.g. 1,2")
    parser.add_argument("--samples", type=int, default=4000, help="MNIST inputs (fisher, training)")
    parser.add_argument("--kinds", default="exact,empirical", help="Fisher kinds (fisher)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs inside each process")
    args = parser.parse_args()
    options = {"samples": args.samples, "repeats": args.repeats, "kinds": args.kinds.split(",")}
    if args.part == "fisher":
        print_process_scaling(fisher_part, options["kinds"], options, args.rounds)
    elif args.part == "training":
        print_process_scaling(training_part, ["epoch"], options, args.rounds)
    else:
        print_sweep_scaling([int(w) for w in args.workers.split(",")], args.points)


if __name__ == "__main__":
    main()
