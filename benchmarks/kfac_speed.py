"""How fast is the K-FAC Fisher, against one forward+backward epoch and beside the diagonal kinds.

Same protocol as fisher_speed.py (whose helpers it uses): 10,000 MNIST inputs in batches of 256,
the MLP 784-400-400-10 and the CNN of `ewc.experiment.models` after one Adam epoch, every time a
ratio to a forward+backward epoch timed alternately in the same run, the fastest of ``--repeats``.
With ``curvlinops-for-pytorch`` installed, its `KFACLinearOperator` (type-2 = our ``exact``,
MC = ``sample``, empirical) is timed on the same model and data (the factors only, through
`compute_kronecker_factors`), and its quadratic form vᵀ F v on random v is compared with ours
(relative difference, mean over 5 v).

Usage: python benchmarks/kfac_speed.py [--samples 10000] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util

import torch
from torch import Tensor, nn

import ewc
from ewc.experiment.models import build_model
from ewc.fisher.kronecker import KroneckerFisher
from fisher_speed import (
    Timer,
    batches,
    forward_backward_epoch,
    mnist,
    train_briefly,
    with_steady_malloc,
)

KINDS = {"exact": "type-2", "sample": "mc", "empirical": "empirical"}


def ours(model: nn.Module, data, kind: str) -> KroneckerFisher:
    return ewc.kfac_fisher(model, data, kind, generator=torch.Generator().manual_seed(0))


def theirs(model: nn.Module, data, kind: str):
    """curvlinops' K-FAC with W and b as one block (our layout), factors computed eagerly."""
    from curvlinops import KFACLinearOperator

    operator = KFACLinearOperator(
        model,
        nn.CrossEntropyLoss(),
        list(model.parameters()),
        data,
        check_deterministic=False,
        fisher_type=KINDS[kind],
        separate_weight_and_bias=False,
    )
    operator.compute_kronecker_factors()
    return operator


def quadratic_ours(fisher: KroneckerFisher, vector: dict[str, Tensor]) -> float:
    return float(sum(block.quadratic(block.stacked(vector))[0] for block in fisher.blocks.values()))


def agreement(model: nn.Module, data, kind: str) -> float:
    """Mean relative difference of vᵀ F v between curvlinops and us, over 5 random v."""
    fisher, operator = ours(model, data, kind), theirs(model, data, kind)
    names = [n for n, _ in model.named_parameters()]
    differences = []
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        v = [torch.randn(p.shape, generator=generator) for p in model.parameters()]
        mine = quadratic_ours(fisher, dict(zip(names, v, strict=True)))
        other = float(sum((a * b).sum() for a, b in zip(v, operator @ v, strict=True)))
        differences.append(abs(mine - other) / abs(other))
    return sum(differences) / len(differences)


def table(name: str, model: nn.Module, data, repeats: int) -> None:
    timer = Timer(lambda: forward_backward_epoch(model, data), repeats)
    print(f"\n{name}: one forward+backward epoch = {timer.reference_seconds:.3f} s")
    print(f"{'estimator':<34} {'÷ fwd+bwd':>10}")
    for kind in ("exact", "sample", "empirical"):
        diagonal = timer.ratio(lambda k=kind: ewc.diagonal_fisher(model, data, k))
        print(f"{'diagonal ' + kind:<34} {diagonal:>9.2f}×")
        print(f"{'kfac ' + kind:<34} {timer.ratio(lambda k=kind: ours(model, data, k)):>9.2f}×")
        if importlib.util.find_spec("curvlinops") is not None:
            ratio = timer.ratio(lambda k=kind: theirs(model, data, k))
            note = (
                "" if kind == "sample" else f"  vᵀFv differs by {agreement(model, data, kind):.1e}"
            )
            print(f"{'curvlinops KFAC ' + KINDS[kind]:<34} {ratio:>9.2f}×{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, y = mnist(args.samples)
    for name in ("mlp", "cnn"):
        model = build_model(name, num_outputs=10, seed=0)
        data = batches(x, y, 256)
        train_briefly(model, data)
        plain = copy.deepcopy(nn.Sequential(*model.features, model.output))  # what peers accept
        table(name, plain, data, args.repeats)


if __name__ == "__main__":
    with_steady_malloc()
    main()
