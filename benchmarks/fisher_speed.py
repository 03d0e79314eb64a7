"""How fast is each diagonal Fisher, measured against one forward+backward epoch over the same data.

The physical limit for a per-sample Fisher is about one training pass over the same inputs, so
every time is printed as a ratio to that pass (batch 256, timed alternately with the estimator in
the same run), together with the speed-up over the classic batch-size-one argmax loop of
ewc.pytorch, and the share of the estimator's time spent proving that the per-layer rules account
for every use of every parameter (the graph check of each batch and the numeric check of the first
batch of each shape, `ewc.fisher.coverage` and `ewc.fisher.verify`). On the MLP a floor row
times the empirical Fisher written out by hand for that model (the same arithmetic with none of
the estimator's hooks, checks or generality), so that overhead can be told from arithmetic. With
``backpack-for-pytorch`` and ``nngeometry`` installed, their diagonal Fishers are timed on the
same models and data, and the relative L2 difference to our estimate of the same quantity is
printed. The second part times a training step with the EWC penalty against one without it,
for 1, 10 and 50 consolidated tasks, next to the seed's design of one penalty object per task.

The script runs under fixed glibc allocator settings (a 32 MiB mmap threshold, no trimming): with
the defaults, glibc moves its mmap threshold as blocks come and go and returns memory to the
system, and the page faults that follow made the same epoch take 1.2 s or 2.6 s depending on what
ran before, which drowned every ratio. Both sides of each ratio run under the same settings;
``--system-malloc`` keeps the defaults.

Usage: python benchmarks/fisher_speed.py [--samples 10000] [--repeats 5] [--json out.json]
       [--threads 1 --cpu-clock]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import ewc
import ewc.fisher.estimator as fisher_driver
from ewc._batches import Batch
from ewc.data import load_embedded_mnist, read_images, read_labels
from ewc.experiment.models import build_model
from ewc.training import train_step

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
KINDS = ["exact", "sample", "empirical", "argmax", "batched"]
Batches = list[tuple[Tensor, Tensor]]
Fisher = dict[str, Tensor]


def mnist(samples: int) -> tuple[Tensor, Tensor]:
    """The MNIST test set (the shared copy, else the package's identical embedded one) in [0, 1]."""
    if (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").exists():
        images = read_images(SHARED_MNIST / "t10k-images-idx3-ubyte.gz")
        labels = read_labels(SHARED_MNIST / "t10k-labels-idx1-ubyte.gz")
    else:
        data = load_embedded_mnist()
        images = torch.cat([data.train_images, data.test_images])
        labels = torch.cat([data.train_labels, data.test_labels])
    return images[:samples, None].float() / 255, labels[:samples]


def batches(x: Tensor, y: Tensor, size: int) -> Batches:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


#: The clock every figure is read from: wall time unless `use_thread_clock` switched it.
CLOCK: Callable[[], float] = time.perf_counter


def use_thread_clock(threads: int) -> None:
    """Read the CPU time of the calling thread instead of wall time (only with one torch thread).

    On a loaded machine a thread's CPU time varies far less than wall time; with more torch
    threads the work of the others would be missed, so that is refused.
    """
    global CLOCK
    if threads != 1:
        raise SystemExit(f"--cpu-clock needs --threads 1 (got {threads})")
    CLOCK = time.thread_time


def seconds(fn: Callable[[], object]) -> float:
    start = CLOCK()
    fn()
    return CLOCK() - start


class Timer:
    """Times functions against a reference, alternately, so load changes hit both alike.

    Each figure is the fastest of ``repeats`` runs: on a shared machine other work only ever adds
    time, so the minimum is the steadiest estimate of what a computation itself costs.
    """

    def __init__(self, reference: Callable[[], object], repeats: int):
        self.reference, self.repeats = reference, repeats
        reference()
        self.reference_seconds = min(seconds(reference) for _ in range(repeats))

    def ratio(self, fn: Callable[[], object]) -> float:
        """Fastest time of ``fn`` ÷ fastest time of the reference, after one warm-up call each."""
        fn()
        ours, theirs = [], []
        for _ in range(self.repeats):
            theirs.append(seconds(self.reference))
            ours.append(seconds(fn))
        return min(ours) / min(theirs)


def train_briefly(model: nn.Module, data: Batches) -> None:
    """One Adam epoch, so the Fishers are those of a model that has learned something."""
    ewc.train_epoch(model, data, torch.optim.Adam(model.parameters(), lr=1e-3))
    model.eval()


def forward_backward_epoch(model: nn.Module, data: Batches) -> None:
    """The reference cost: one forward and backward pass over every batch."""
    for x, y in data:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()


def seed_argmax_loop(model: nn.Module, data: Batches) -> Fisher:
    """The classic ewc.pytorch estimator: one sample at a time, squared gradient at the argmax."""
    params = dict(model.named_parameters())
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    total = sum(len(x) for x, _ in data)
    for x, _ in data:
        for sample in x:
            model.zero_grad()
            out = model(sample[None])
            F.nll_loss(F.log_softmax(out, dim=1), out.argmax(dim=1)).backward()
            for n, p in params.items():
                fisher[n] += p.grad.square() / total
    return fisher


def linear_chain(model: nn.Module) -> list[nn.Module] | None:
    """The model's layers in order when it is a chain of Linear and parameter-free layers."""
    layers = [*getattr(model, "features", []), getattr(model, "output", None)]
    if any(m is None or m.training for m in layers):
        return None
    plain = all(isinstance(m, nn.Linear) or not list(m.parameters()) for m in layers)
    return layers if plain else None


def hand_written_empirical(layers: list[nn.Module], data: Batches) -> list[Tensor]:
    """The floor of a per-sample Fisher: the empirical one written out for a chain of Linears.

    Per batch, one forward, one backward of the summed loss to each Linear's output G, and
    Σ_n (∂ℓ_n/∂W)² = (G²)ᵀ (A²) added to the running sum: the arithmetic of our estimator with
    none of its generality (no hooks, no graph or numeric checks, no label or finiteness
    checks, no other kinds). Biases are left out; they are a sum over the batch.
    """
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    sums = [torch.zeros_like(m.weight) for m in linears]
    for x, y in data:
        inputs, outputs, h = [], [], x
        for m in layers:
            linear = isinstance(m, nn.Linear)
            if linear:
                inputs.append(h)
            h = m(h)
            if linear:
                outputs.append(h)
        grads = torch.autograd.grad(F.cross_entropy(h, y, reduction="sum"), outputs)
        with torch.no_grad():
            for total, g, a in zip(sums, grads, inputs, strict=True):
                total.add_(g.square().T @ a.square())
    return sums


def relative_l2(a: Fisher, b: Fisher) -> float:
    diff = sum(float((a[n] - b[n]).double().square().sum()) for n in b)
    return (diff / sum(float(b[n].double().square().sum()) for n in b)) ** 0.5


def backpack_estimators(
    model: nn.Module, data: Batches
) -> dict[str, tuple[str, Callable[[], Fisher]]]:
    """BackPACK's diagonal Fishers: label → (the kind of ours it estimates, estimator)."""
    from backpack import backpack, extend
    from backpack.extensions import DiagGGNExact, DiagGGNMC, SumGradSquared

    total = sum(len(x) for x, _ in data)
    model, loss_fn = extend(model), extend(nn.CrossEntropyLoss(reduction="sum"))
    params = list(model.parameters())

    def estimator(extension: type, attribute: str) -> Callable[[], Fisher]:
        def run() -> Fisher:
            sums = [torch.zeros_like(p) for p in params]
            for x, y in data:
                model.zero_grad()
                with backpack(extension()):
                    loss_fn(model(x), y).backward()
                for s, p in zip(sums, params, strict=True):
                    s += getattr(p, attribute)
            return {str(i): s / total for i, s in enumerate(sums)}

        return run

    return {
        "BackPACK SumGradSquared": ("empirical", estimator(SumGradSquared, "sum_grad_squared")),
        "BackPACK DiagGGNMC": ("sample", estimator(DiagGGNMC, "diag_ggn_mc")),
        "BackPACK DiagGGNExact": ("exact", estimator(DiagGGNExact, "diag_ggn_exact")),
    }


def nngeometry_estimators(
    model: nn.Module, data: Batches
) -> dict[str, tuple[str, Callable[[], Fisher]]]:
    """NNGeometry's FIM with a diagonal representation (the exact Fisher)."""
    from nngeometry.metrics import FIM
    from nngeometry.object import PMatDiag

    dataset = torch.utils.data.TensorDataset(
        torch.cat([x for x, _ in data]), torch.cat([y for _, y in data])
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=256)
    params = list(model.parameters())

    def run() -> Fisher:
        diagonal = FIM(model, loader, representation=PMatDiag, variant="classif_logits").get_diag()
        pieces = diagonal.split([p.numel() for p in params])  # in parameter order, as ours
        return {
            str(i): piece.view_as(p)
            for i, (piece, p) in enumerate(zip(pieces, params, strict=True))
        }

    return {"NNGeometry FIM PMatDiag": ("exact", run)}


def peer_estimators(
    model: nn.Module, data: Batches, skip: bool = False
) -> dict[str, tuple[str, Callable[[], Fisher]]]:
    """The installed peers' estimators, each on its own copy of the layers as a plain Sequential.

    Both libraries want an ``nn.Sequential`` (BackPACK writes ``module.output`` on every module);
    their results are keyed by parameter position and mapped back to our names by the caller.
    """
    peers = {}
    if skip:
        return peers
    for name, factory in (
        ("backpack-for-pytorch", backpack_estimators),
        ("nngeometry", nngeometry_estimators),
    ):
        plain = copy.deepcopy(nn.Sequential(*model.features, model.output))
        try:
            peers.update(factory(plain, data))
        except ImportError:
            print(f"  ({name} not installed: skipped; see benchmarks/README.md)")
    return peers


def check_share(model: nn.Module, data: Batches, kind: str, repeats: int) -> float:
    """Time inside the coverage checks ÷ the estimator's whole time, over ``repeats`` runs."""
    spent = [0.0]

    def timed(fn: Callable) -> Callable:
        def wrapper(*args: object, **kwargs: object) -> object:
            start = CLOCK()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += CLOCK() - start

        return wrapper

    plan, check = fisher_driver.plan_batch, fisher_driver.check_plan
    fisher_driver.plan_batch, fisher_driver.check_plan = timed(plan), timed(check)
    try:
        total = 0.0
        for _ in range(repeats):
            gen = torch.Generator().manual_seed(0)
            total += seconds(lambda g=gen: ewc.diagonal_fisher(model, data, kind, generator=g))
    finally:
        fisher_driver.plan_batch, fisher_driver.check_plan = plan, check
    return spent[0] / total


def check_table(name: str, model: nn.Module, data: Batches) -> dict[str, float]:
    """Only the checks' share of each per-sample kind's time (one run each, after a warm-up)."""
    inputs = sum(len(x) for x, _ in data)
    print(f"\n{name}, {inputs} inputs: time in the coverage checks ÷ the estimator's time")
    ewc.diagonal_fisher(model, data[:1], "exact")
    shares = {}
    for kind in KINDS[:-1]:
        shares[kind] = check_share(model, data, kind, repeats=1)
        print(f"  ewc {kind:10s} checks {100 * shares[kind]:5.2f}%")
    return {"check_share": shares}


def row(label: str, ratio: float, base: float, note: str = "") -> None:
    print(f"  {label:30s} {ratio:9.2f}x {ratio * base:8.3f}s  {note}")


def agreement(theirs: Fisher, ours: Fisher) -> str:
    """Relative L2 difference, or the share of NaN entries when there are any."""
    total = sum(v.numel() for v in theirs.values())
    nans = sum(int(v.isnan().sum()) for v in theirs.values())
    if nans:
        return f"{100 * nans / total:.0f}% of its entries are NaN"
    return f"rel. L2 difference {relative_l2(theirs, ours):.1e}"


def fisher_table(
    name: str, model: nn.Module, data: Batches, repeats: int, skip_peers: bool = False
) -> dict:
    """Time every kind, the seed loop and the peers on one model; print and return the figures."""
    timer = Timer(lambda: forward_backward_epoch(model, data), repeats)
    base = timer.reference_seconds
    seed_seconds = seconds(lambda: seed_argmax_loop(model, data))
    inputs = sum(len(x) for x, _ in data)
    print(f"\n{name}, {inputs} inputs: one forward+backward epoch (batch 256) takes {base:.3f} s")
    print(f"  {'estimator':30s} {'÷ fwd+bwd':>10s} {'time':>9s}")
    row("seed loop (batch 1, argmax)", seed_seconds / base, base)
    ours: dict[str, tuple[float, Fisher]] = {}
    checks: dict[str, float] = {}
    for kind in KINDS:
        gen = torch.Generator().manual_seed(0)
        ratio = timer.ratio(
            lambda kind=kind, gen=gen: ewc.diagonal_fisher(model, data, kind, generator=gen)
        )
        ours[kind] = (ratio, dict(ewc.diagonal_fisher(model, data, kind, generator=gen)))
        checks[kind] = check_share(model, data, kind, repeats)
        row(
            f"ewc {kind}",
            ratio,
            base,
            f"speed-up over the seed loop {seed_seconds / (ratio * base):.1f}x; "
            f"checks {100 * checks[kind]:.1f}% of it",
        )
    layers, floor = linear_chain(model), None
    if layers is not None:
        floor = timer.ratio(lambda: hand_written_empirical(layers, data))
        weights = [n for n, p in model.named_parameters() if p.dim() == 2]
        written = dict(zip(weights, hand_written_empirical(layers, data), strict=True))
        total = {n: ours["empirical"][1][n] * inputs for n in weights}
        row(
            "floor: empirical written out",
            floor,
            base,
            f"no hooks, no checks; {agreement(written, total)} to ewc empirical",
        )
    seed_values = seed_argmax_loop(model, data)
    print(f"  ewc argmax vs the seed loop: {agreement(seed_values, ours['argmax'][1])}")
    names = [n for n, _ in model.named_parameters()]
    peers, skip = {}, skip_peers
    for label, (kind, estimator) in peer_estimators(model, data, skip).items():
        peers[label] = ratio = timer.ratio(estimator)
        note = f"speed-up of ewc {kind} over it {ratio / ours[kind][0]:.1f}x"
        if kind != "sample":
            note += "; " + agreement(
                dict(zip(names, estimator().values(), strict=True)), ours[kind][1]
            )
        row(label, ratio, base, note)
    kinds = {k: r for k, (r, _) in ours.items()}
    return {
        "forward_backward_s": base,
        "seed_loop": seed_seconds / base,
        "kinds": kinds,
        "check_share": checks,
        "empirical_written_out": floor,
        "peers": peers,
    }


class SeedStylePenalty:
    """The seed's design, for contrast: one term per task, each summing F (θ − θ*)² itself."""

    def __init__(self, model: nn.Module, strength: float):
        self.model, self.strength, self.terms = model, strength, []

    def consolidate(self, fisher: Fisher) -> None:
        self.terms.append(
            (fisher, {n: p.detach().clone() for n, p in self.model.named_parameters()})
        )

    def __call__(self) -> Tensor:
        params = dict(self.model.named_parameters())
        total = 0.0
        for fisher, anchor in self.terms:
            for n, p in params.items():
                total = total + (fisher[n] * (p - anchor[n]).square()).sum()
        return 0.5 * self.strength * total


def penalty_step_costs(data: Batches, repeats: int) -> list[dict]:
    """Training steps with each penalty design ÷ the same steps without one (MLP, batch 128)."""
    model = build_model("mlp", num_outputs=10, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    fisher = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    batch_list = [Batch(i, x, y) for i, (x, y) in enumerate(data)]

    def train(penalty: Callable[[], Tensor] | None = None) -> None:
        for batch in batch_list:
            train_step(model, batch, opt, penalty=penalty)

    timer, rows = Timer(train, repeats), []
    for tasks in (1, 10, 50):
        merged, seed_style = ewc.EWC(model, strength=1.0), SeedStylePenalty(model, 1.0)
        for _ in range(tasks):
            merged.consolidate(fisher)
            seed_style.consolidate(fisher)
        for design, penalty in (
            ("ewc.EWC in ewc.train_step", merged),
            ("ewc.EWC as loss + penalty()", lambda p=merged: p()),
            ("one penalty term per task", seed_style),
        ):
            rows.append(
                {"design": design, "tasks": tasks, "ratio": timer.ratio(lambda p=penalty: train(p))}
            )
            print(f"  {design:30s} {tasks:3d} tasks {rows[-1]['ratio']:6.2f}x")
    return rows


STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**34)}


def with_steady_malloc() -> None:
    """Run this script again under `STEADY_MALLOC` (glibc reads it at start-up only)."""
    if any(os.environ.get(k) != v for k, v in STEADY_MALLOC.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **STEADY_MALLOC})


def main() -> None:
    if "--system-malloc" not in sys.argv:
        with_steady_malloc()
    warnings.filterwarnings("ignore", message="Full backward hook")  # BackPACK's, not ours
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--system-malloc", action="store_true", help="keep glibc's default settings"
    )
    parser.add_argument("--samples", type=int, default=10_000, help="MNIST inputs (default 10000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (fastest)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated models (mlp, cnn)")
    parser.add_argument("--no-penalty", action="store_true", help="skip the penalty step costs")
    parser.add_argument("--no-peers", action="store_true", help="skip BackPACK and NNGeometry")
    parser.add_argument(
        "--checks-only", action="store_true", help="only the coverage checks' share of each kind"
    )
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
    x, y = mnist(args.samples)
    figures = {}
    for name in args.models.split(","):
        model = build_model(name, num_outputs=10, seed=0)
        train_briefly(model, batches(x, y, 128))
        if args.checks_only:
            figures[name] = check_table(name.upper(), model, batches(x, y, 256))
            continue
        figures[name] = fisher_table(
            name.upper(), model, batches(x, y, 256), args.repeats, args.no_peers
        )
    if not args.no_penalty:
        print(
            "\nA training step with the penalty ÷ one without (MLP 784-400-400-10, batch 128, SGD):"
        )
        figures["penalty_step"] = penalty_step_costs(batches(x[:2560], y[:2560], 128), args.repeats)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
