"""What a training step with the EWC penalty costs, as a ratio to the same step without it.

MLP 784-400-400-10, batch 128, plain SGD (the cheapest step, so the penalty's share is largest),
for 1, 5, 10 and 50 consolidated tasks, on these paths:

- ``train_step``: `ewc.train_step` / `ewc.train_epoch` with ``penalty=`` (it calls `add_gradient_`
  after the task loss's backward), against `ewc.train_step` without a penalty;
- ``attach``: a loop of your own (``zero_grad; loss.backward(); step``) with
  ``penalty.attach(optimizer)``, against the same loop without the hook;
- ``loss + penalty()``: the same loop with the penalty added to the loss (autograd path);
- ``add_gradient_()``: the same loop calling ``penalty.add_gradient_()`` after the backward, which
  also returns the value (four element-wise passes; ``attach`` skips the value: two);
- ``floor: Ω once``: the same loop adding ``0 · Ω`` into ``.grad`` after the backward: one pass
  that reads Ω, a lower bound for any penalty gradient added after the backward (it must read Ω
  and θ̄ too), printed once per task count (it does not depend on the mode);
- the first four in ``online`` mode, and the K-FAC penalty (`ewc.kfac_fisher`) through
  ``attach`` for ``--kfac-tasks`` (default 1 and 5): it keeps one Kronecker term per task,
  exactly, so its cost grows with the tasks (G Δ A of the 784-input layer alone is about twice
  the step's multiply-adds per task).

Each figure is the fastest of ``--repeats`` epochs of 20 steps, timed alternately with the
reference epoch. The script re-runs itself under the fixed glibc allocator settings of
``fisher_speed.py`` (``--system-malloc`` keeps the defaults).

Usage: python benchmarks/penalty_step.py [--repeats 5] [--threads 2] [--tasks 1,5,10,50]
       [--kfac-tasks 1,5] [--json out.json] [--cpu-clock (with --threads 1)]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import ewc
from ewc._batches import Batch
from ewc.experiment.models import build_model
from ewc.training import train_step
from fisher_speed import Timer, batches, mnist, use_thread_clock, with_steady_malloc


def own_loop(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    data: list,
    penalty=None,
    after_backward: Callable[[], object] | None = None,
) -> None:
    """The loop a user writes: task loss (plus ``penalty()`` if given), backward, step."""
    for x, y in data:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        (loss if penalty is None else loss + penalty()).backward()
        if after_backward is not None:
            after_backward()
        opt.step()


@torch.no_grad()
def read_importance_once(model: nn.Module, importance: list[torch.Tensor]) -> None:
    """``.grad += 0 · Ω``: one element-wise pass over Ω and ``.grad``, the floor's work."""
    torch._foreach_add_([p.grad for p in model.parameters()], importance, alpha=0.0)


def consolidated(model: nn.Module, fisher, tasks: int, mode: str) -> ewc.EWC:
    """An EWC penalty that has consolidated ``fisher`` ``tasks`` times."""
    penalty = ewc.EWC(model, strength=1.0, mode=mode, gamma=0.9 if mode == "online" else 1.0)
    for _ in range(tasks):
        penalty.consolidate(fisher)
    return penalty


def attached(opt: torch.optim.Optimizer, penalty: ewc.EWC, loop: Callable[[], None]) -> None:
    handle = penalty.attach(opt)
    try:
        loop()
    finally:
        handle.remove()


def measure(data: list, tasks_list: list[int], kfac_tasks: list[int], repeats: int) -> list[dict]:
    model = build_model("mlp", num_outputs=10, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    diagonal = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    kfac = ewc.kfac_fisher(model, data[:2], "empirical")
    steps = [Batch(i, x, y) for i, (x, y) in enumerate(data)]

    def library(penalty=None) -> None:
        for batch in steps:
            train_step(model, batch, opt, penalty=penalty)

    library_timer = Timer(library, repeats)
    loop_timer = Timer(lambda: own_loop(model, opt, data), repeats)
    rows = []
    for tasks in tasks_list:
        for mode in ("separate", "online"):
            penalty = consolidated(model, diagonal, tasks, mode)
            paths = {
                "train_step": (library_timer, lambda p=penalty: library(p)),
                "attach": (
                    loop_timer,
                    lambda p=penalty: attached(opt, p, lambda: own_loop(model, opt, data)),
                ),
                "loss + penalty()": (loop_timer, lambda p=penalty: own_loop(model, opt, data, p)),
                "add_gradient_()": (
                    loop_timer,
                    lambda p=penalty: own_loop(model, opt, data, after_backward=p.add_gradient_),
                ),
            }
            for path, (timer, run) in paths.items():
                rows.append(_row(path, mode, tasks, timer.ratio(run)))
        importance = list(consolidated(model, diagonal, tasks, "separate").importance.values())
        floor = lambda o=importance: own_loop(  # noqa: E731
            model, opt, data, after_backward=lambda: read_importance_once(model, o)
        )
        rows.append(_row("floor: Ω once", "-", tasks, loop_timer.ratio(floor)))
        if tasks not in kfac_tasks:
            continue
        kfac_penalty = consolidated(model, kfac, tasks, "separate")
        run = lambda p=kfac_penalty: attached(opt, p, lambda: own_loop(model, opt, data))  # noqa: E731
        rows.append(_row("attach, K-FAC", "separate", tasks, loop_timer.ratio(run)))
    return rows


def _row(path: str, mode: str, tasks: int, ratio: float) -> dict:
    print(f"  {path:18s} {mode:9s} {tasks:3d} tasks  {ratio:6.3f}x")
    return {"path": path, "mode": mode, "tasks": tasks, "ratio": ratio}


def main() -> None:
    if "--system-malloc" not in sys.argv:
        with_steady_malloc()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system-malloc", action="store_true", help="keep glibc's defaults")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per figure (fastest)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--tasks", default="1,5,10,50", help="consolidated tasks, comma-separated")
    parser.add_argument("--kfac-tasks", default="1,5", help="task counts for the K-FAC row")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument(
        "--cpu-clock",
        action="store_true",
        help="time the main thread's CPU time, not wall time (needs --threads 1)",
    )
    args = parser.parse_args()
    if args.cpu_clock:
        use_thread_clock(args.threads)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = mnist(2560)
    print("A training step with the penalty ÷ the same step without (MLP, batch 128, SGD):")
    tasks, kfac_tasks = ([int(t) for t in v.split(",")] for v in (args.tasks, args.kfac_tasks))
    rows = measure(batches(x, y, 128)[:20], tasks, kfac_tasks, args.repeats)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
