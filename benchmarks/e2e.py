"""End to end: `ewc run` against a bare library loop of the same optimizer steps (and Avalanche).

The protocol of issue 11: permuted MNIST, 5 tasks (the first the identity), the full data set,
MLP 784-400-400-10, Adam (lr 1e-3, the default per-task cosine), batch 128, 1 epoch per task, EWC
with the exact Fisher over each task's training set (λ = 200), 1 thread. Each contender runs in a
fresh process, in turn (interleaved), ``--repeats`` times; the figures are medians.

- ``ewc run``: ``ewc run --strategies ewc training.epochs=1 training.threads=1 --data-dir DIR
  --no-report``, with its defaults: evaluation every 50 steps, checkpoints every 500 steps and at
  each task end, the event log. The report is timed apart (``report``), after the run.
- ``library``: the same steps with the library alone, as a user writes them: the same initial
  weights, the same permutations, shuffled batches, `ewc.train_step` with the `ewc.EWC` penalty
  and the same schedule, `ewc.diagonal_fisher` after each task, and the accuracy on every task's
  full test set after each task (the rows of the accuracy matrix; ACC from the last).
- ``avalanche`` (only with ``--avalanche-python PY`` or ``$EWC_AVALANCHE_PYTHON``, the interpreter
  of a separate virtual environment holding ``avalanche-lib``): Avalanche's ``EWC`` strategy on the
  same permutations and settings (λ converted to its convention, `ewc.convert_strength`; its
  Fisher is its own, the squared mini-batch gradients).

Each process's CPU time (user + system, all its threads) is printed too: on a machine that other
work shares, it varies less than the wall time. Start-up is the time from starting the process to
the first optimizer step (a global optimizer step hook writes the time); peak memory is each
process's maximum resident set size. ``torch`` is the floor every PyTorch script pays: start
Python, import torch, build the MLP and an Adam (whose first use imports ``torch._dynamo``) and
take one step on a random batch; the table gives each start-up beyond it too.

    python benchmarks/e2e.py --data-dir /work/shared/data/mnist --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
CONTENDERS = ("ewc-run", "library")
FLOOR = "torch"
STRENGTH = 200.0


def main() -> None:
    """Parse the arguments, run the contenders interleaved, print the table."""
    args = _parser().parse_args()
    if args.child:
        _child(args)
        return
    if args.startup_only:
        _startup_only(args)
        return
    contenders = list(CONTENDERS)
    avalanche = args.avalanche_python or os.environ.get("EWC_AVALANCHE_PYTHON")
    if avalanche:
        contenders.append("avalanche")
    contenders.append(FLOOR)
    results: dict[str, list[dict]] = {name: [] for name in contenders}
    for repeat in range(args.repeats):
        for name in contenders:
            result = _measure(name, args, avalanche)
            results[name].append(result)
            print(f"run {repeat + 1} {name}: {json.dumps(result)}", file=sys.stderr, flush=True)
    _print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="/work/shared/data/mnist", help="full MNIST IDX")
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--avalanche-python", help="python of a venv with avalanche-lib")
    parser.add_argument("--json", help="also write every run's figures to this file")
    parser.add_argument(
        "--startup-only",
        action="store_true",
        help="only the start-up of the default `ewc run` (embedded data, and --data-dir)",
    )
    parser.add_argument("--stop-at-first-step", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--child", choices=[*CONTENDERS, FLOOR, "avalanche"], help=argparse.SUPPRESS
    )
    parser.add_argument("--out", help=argparse.SUPPRESS)
    return parser


def _startup_only(args: argparse.Namespace) -> None:
    """Median time to the first step of the default `ewc run`, embedded and full, and the floor."""
    cases = {"embedded": "embedded", "full": args.data_dir}
    found: dict[str, list[float]] = {name: [] for name in [*cases, FLOOR]}
    for _ in range(args.repeats):
        for name, data_dir in cases.items():
            result = _measure("ewc-run", args, None, data_dir=data_dir, stop=True)
            found[name].append(result["startup_s"])
        found[FLOOR].append(_measure(FLOOR, args, None)["startup_s"])
    floor = statistics.median(found[FLOOR])
    for name, times in found.items():
        median = statistics.median(times)
        print(f"{name}: start-up {median:.2f} s (beyond torch's: {median - floor:.2f} s)")


def _measure(
    name: str,
    args: argparse.Namespace,
    avalanche: str | None,
    *,
    data_dir: str | None = None,
    stop: bool = False,
) -> dict:
    """Run one contender in a fresh process; its figures, with start-up and wall time."""
    python = avalanche if name == "avalanche" else sys.executable
    out = tempfile.mkdtemp(prefix="ewc-e2e-")
    command = [python, str(HERE), "--child", name, "--out", f"{out}/run"]
    command += ["--data-dir", data_dir or args.data_dir, "--tasks", str(args.tasks)]
    command += ["--epochs", str(args.epochs), "--threads", str(args.threads)]
    command += ["--stop-at-first-step"] if stop else []
    try:
        started = time.time()
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        wall = time.time() - started
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["wall_s"] = wall
        result["startup_s"] = result.pop("first_step_at") - started
        if name == "ewc-run" and not stop:
            result["report_s"] = _time_report(f"{out}/run")
        return result
    except subprocess.CalledProcessError as error:
        raise SystemExit(f"{name} failed:\n{error.stderr}") from None
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _time_report(run_dir: str) -> float:
    """Seconds `ewc report` takes on the run directory (a process of its own)."""
    started = time.time()
    command = [sys.executable, "-m", "ewc.cli", "report", run_dir]
    subprocess.run(command, check=True, capture_output=True)
    return time.time() - started


def _print_table(results: dict[str, list[dict]]) -> None:
    """Medians of each contender, and each one's ratio to the library loop."""
    base = statistics.median(r["wall_s"] for r in results["library"])
    floor = statistics.median(r["startup_s"] for r in results[FLOOR])
    print("| contender | wall s | ratio to library | start-up s | beyond torch's s ", end="")
    print("| peak RSS MiB | ACC % |\n|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        if name == FLOOR:
            continue
        wall = statistics.median(r["wall_s"] for r in runs)
        startup = statistics.median(r["startup_s"] for r in runs)
        rss = statistics.median(r["peak_rss_mib"] for r in runs)
        acc = statistics.median(r["acc"] for r in runs)
        ratio, extra = wall / base, startup - floor
        print(
            f"| {name} | {wall:.1f} | {ratio:.3f}× | {startup:.2f} | {extra:.2f} | {rss:.0f} "
            f"| {acc:.2f} |"
        )
    rss = statistics.median(r["peak_rss_mib"] for r in results[FLOOR])
    print(f"\n{FLOOR} (python, import torch, MLP, Adam, one step): {floor:.2f} s, {rss:.0f} MiB")
    cpu = {n: [r["cpu_s"] for r in runs if "cpu_s" in r] for n, runs in results.items()}
    if cpu.get("library") and cpu.get("ewc-run"):
        base_cpu = statistics.median(cpu["library"])
        for name, times in cpu.items():
            if times and name != FLOOR:
                median = statistics.median(times)
                print(f"{name}: CPU time {median:.1f} s = {median / base_cpu:.3f}× the library's")
    reports = [r["report_s"] for r in results.get("ewc-run", []) if "report_s" in r]
    if reports:
        print(f"`ewc report` on the run directory afterwards: {statistics.median(reports):.1f} s")


# ----------------------------------------------------------------------------- child processes


def _child(args: argparse.Namespace) -> None:
    """Run one contender here and print its figures as one JSON line."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    first: list[float] = []

    def record(optimizer: object, *_: object) -> None:
        if not first:
            first.append(time.time())
        if args.stop_at_first_step:  # the default run's start-up: nothing after it counts
            line = json.dumps({"first_step_at": first[0], "peak_rss_mib": 0.0, "acc": 0.0})
            os.write(1, (line + "\n").encode())  # sys.stdout may be silenced by then
            os._exit(0)

    register_optimizer_step_pre_hook(record)
    runs = {"ewc-run": _ewc_run, "library": _library, "avalanche": _avalanche, FLOOR: _floor}
    run = runs[args.child]
    acc = run(args, torch)
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak, cpu = usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime
    print(json.dumps({"first_step_at": first[0], "peak_rss_mib": peak, "acc": acc, "cpu_s": cpu}))


def _ewc_run(args: argparse.Namespace, torch: object) -> float:
    """`ewc run` through its command-line entry point; the ACC from its summary."""
    from ewc.cli import main as ewc_main

    if args.stop_at_first_step:  # the default run, as a user starts it
        argv = ["run", "--out", args.out, "--quiet", "--no-report"]
        argv += [] if args.data_dir == "embedded" else ["--data-dir", args.data_dir]
    else:
        argv = ["run", "--strategies", "ewc", "--data-dir", args.data_dir, "--out", args.out]
        argv += ["--quiet", "--no-report", f"benchmark.num_tasks={args.tasks}"]
        argv += [f"training.epochs={args.epochs}", f"training.threads={args.threads}"]
    with open(os.devnull, "w") as sink:
        stdout, sys.stdout = sys.stdout, sink
        try:
            code = ewc_main(argv)
        finally:
            sys.stdout = stdout
    if code != 0:
        raise SystemExit(f"ewc run exited with {code}")
    summary = json.loads(Path(args.out, "summary.json").read_text(encoding="utf-8"))
    last = summary["matrices"]["ewc"][-1]  # after the last task
    return 100 * sum(last) / len(last)


def _floor(args: argparse.Namespace, torch) -> float:
    """One step of the MLP with Adam on a random batch: what any PyTorch script pays to start."""
    torch.set_num_threads(args.threads)
    layers = [torch.nn.Flatten(), torch.nn.Linear(784, 400), torch.nn.ReLU()]
    layers += [torch.nn.Linear(400, 400), torch.nn.ReLU(), torch.nn.Linear(400, 10)]
    model = torch.nn.Sequential(*layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = torch.nn.functional.cross_entropy(
        model(torch.rand(128, 1, 28, 28)), torch.zeros(128).long()
    )
    loss.backward()
    optimizer.step()
    return float("nan")


def _permuted(args: argparse.Namespace, torch):
    """The full data set and the tasks' pixel orders (those of `ewc run`'s seed 0)."""
    from ewc.data import load_dataset
    from ewc.experiment.streams.benchmarks import pixel_permutation

    data = load_dataset("mnist", source="dir", data_dir=args.data_dir)
    orders = [pixel_permutation(0, t, 784) for t in range(args.tasks)]

    def task(images, order):
        return images.flatten(1)[:, order].reshape(-1, 1, 28, 28).float().div_(255.0)

    train = [task(data.train_images, order) for order in orders]
    test = [task(data.test_images, order) for order in orders]
    return data, train, test


def _library(args: argparse.Namespace, torch) -> float:
    """The bare loop: train_step + EWC penalty + schedule, Fisher and evaluation per task."""
    import ewc
    from ewc._batches import Batch
    from ewc.experiment.models import build_model
    from ewc.experiment.schedules import task_lr_scheduler
    from ewc.training import train_step

    torch.set_num_threads(args.threads)
    data, train, test = _permuted(args, torch)
    model = build_model("mlp", num_outputs=10, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    penalty = ewc.EWC(model, strength=STRENGTH)
    generator = torch.Generator().manual_seed(0)
    steps = -(-len(data.train_labels) // 128) * args.epochs
    row: list[float] = []
    for t in range(args.tasks):
        scheduler = task_lr_scheduler(optimizer, "cosine", 1e-3, steps)
        model.train()
        for _ in range(args.epochs):
            order = torch.randperm(len(data.train_labels), generator=generator)
            for i, start in enumerate(range(0, len(order), 128)):
                index = order[start : start + 128]
                batch = Batch(i, train[t][index], data.train_labels[index])
                train_step(model, batch, optimizer, penalty=penalty)
                scheduler.step()
        fisher_data = _chunks(train[t], data.train_labels, 1000)
        penalty.consolidate(ewc.diagonal_fisher(model, fisher_data, kind="exact"))
        row = [ewc.evaluate(model, _chunks(x, data.test_labels, 1000)) for x in test]
    return 100 * sum(row) / len(row)


def _chunks(inputs, targets, size):
    return [(inputs[i : i + size], targets[i : i + size]) for i in range(0, len(targets), size)]


def _avalanche(args: argparse.Namespace, torch) -> float:
    """Avalanche's EWC on the same tasks (run in Avalanche's own environment)."""
    try:
        from avalanche.benchmarks import tensors_benchmark  # avalanche-lib 0.4 and later
    except ImportError:
        from avalanche.benchmarks.generators import tensors_benchmark
    from avalanche.training import EWC

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE.parents[1] / "src"))
    from ewc.strength import convert_strength

    data, train, test = _permuted(args, torch)
    bench = tensors_benchmark(
        train_tensors=[(x, data.train_labels) for x in train],
        test_tensors=[(x, data.test_labels) for x in test],
        task_labels=[0] * args.tasks,
    )
    from ewc.experiment.models import build_model

    model = build_model("mlp", num_outputs=10, seed=0)
    lam = convert_strength(STRENGTH, frm="ewc", to="avalanche", batch_size=128).value
    strategy = EWC(
        model,
        torch.optim.Adam(model.parameters(), lr=1e-3),
        torch.nn.CrossEntropyLoss(),
        ewc_lambda=lam,
        train_mb_size=128,
        train_epochs=args.epochs,
        eval_mb_size=1000,
    )
    accuracies: list[float] = []
    for experience in bench.train_stream:
        strategy.train(experience)
        results = strategy.eval(bench.test_stream)
        accuracies = [v for k, v in results.items() if k.startswith("Top1_Acc_Exp")]
    return 100 * sum(accuracies) / max(len(accuracies), 1)


if __name__ == "__main__":
    main()
