"""How far the one-draw Fisher kinds fall below `exact` on a trained model, entry by entry.

Loads a checkpoint of a split-MNIST run (MLP, one 10-unit output layer masked to the task's two
units, as the `vandeven2025-split-mnist` preset trains it), takes the training images of one task
(two digits) from a full MNIST folder, and prints, for `sample` (one label drawn per input from
p) and `empirical` (the dataset's label): the ratio of their sum to the exact Fisher's sum, the
median ratio of their entries to the exact entries, and the share of entries below 0.1× exact;
with the share of inputs whose top probability exceeds 0.999.

`sample` is unbiased for `exact`, but on a confident model almost every draw is the predicted
class, whose squared score is ≈ (1 − p_top)², while `exact` weighs the other class's squared
score (≈ 1) by its probability: the expectation is carried by draws that a few thousand inputs
almost never make. The printed ratios say by how much λ must grow for these kinds.

    python benchmarks/fisher_kinds_ratio.py \
        RUN/cells/seed2-ewc-sample/checkpoints/step-000000010000.safetensors \
        --digits 9,4 --units 8,9 --data-dir ../shared/data/mnist

``--subset 500 --draws 20`` also prints how `exact` over 500 random inputs of the task (the
blog's EXACT n=500, `fisher_samples = 500`) compares with `exact` over all of them, draw by draw:
the estimate is unbiased, but its mass comes from the few unconfident inputs, so a typical
subset (the median draw) holds less than the mean, and λ must grow to make up for it.
"""

from __future__ import annotations

import argparse

import torch

import ewc
from ewc.data import read_images, read_labels
from ewc.experiment.models import build_model
from ewc.experiment.storage.checkpoint import load_checkpoint


def main() -> None:
    """Parse the arguments, estimate the three Fishers, print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a .safetensors checkpoint of the MLP 400-400")
    parser.add_argument("--digits", default="9,4", help="the task's two digits, in unit order")
    parser.add_argument("--units", default="8,9", help="the two output units of the task")
    parser.add_argument("--data-dir", default="../shared/data/mnist", help="full MNIST IDX files")
    parser.add_argument("--subset", type=int, default=0, help="also `exact` over N inputs")
    parser.add_argument("--draws", type=int, default=20, help="random subsets for --subset")
    args = parser.parse_args()
    torch.set_num_threads(1)
    digits = [int(d) for d in args.digits.split(",")]
    units = [int(u) for u in args.units.split(",")]
    model = build_model("mlp", num_outputs=10, hidden=(400, 400), seed=0)
    model.load_state_dict(load_checkpoint(args.checkpoint)["model"])
    images = read_images(f"{args.data_dir}/train-images-idx3-ubyte.gz")
    labels = read_labels(f"{args.data_dir}/train-labels-idx1-ubyte.gz")
    keep = (labels == digits[0]) | (labels == digits[1])
    x = images[keep].float().div(255).unsqueeze(1)
    y = (labels[keep] == digits[1]).long()  # position of the digit among the task's units
    data = [(x[i : i + 500], y[i : i + 500]) for i in range(0, len(y), 500)]

    def task_logits(out: torch.Tensor) -> torch.Tensor:
        return out[:, units]

    flat = {}
    draws = torch.Generator().manual_seed(0)
    for kind in ("exact", "sample", "empirical"):
        fisher = ewc.diagonal_fisher(
            model,
            data,
            kind=kind,
            output_fn=task_logits,
            generator=draws,
        )
        flat[kind] = torch.cat([v.flatten() for v in fisher.values()]).double()
    with torch.no_grad():
        top = torch.softmax(task_logits(model(x)), dim=1).max(dim=1).values
    print(
        f"{len(y)} inputs; share with top probability > 0.999: {(top > 0.999).double().mean():.3f}"
    )
    exact = flat["exact"]
    positive = exact > 0
    for kind in ("sample", "empirical"):
        ratio = flat[kind][positive] / exact[positive]
        print(
            f"{kind}: sum ÷ exact sum {flat[kind].sum() / exact.sum():.4f}; entry ratio median "
            f"{ratio.median():.4f}; share of entries below 0.1× exact "
            f"{(ratio < 0.1).double().mean():.3f}"
        )
    if args.subset:
        _subsets(model, x, y, task_logits, exact, args.subset, args.draws)


def _subsets(model, x, y, task_logits, exact, size: int, draws: int) -> None:
    """`exact` over ``draws`` random subsets of ``size`` inputs, against `exact` over all."""
    positive = exact > 0
    sums, medians = [], []
    for draw in range(draws):
        pick = torch.randperm(len(y), generator=torch.Generator().manual_seed(draw))[:size]
        fisher = ewc.diagonal_fisher(
            model, [(x[pick], y[pick])], kind="exact", output_fn=task_logits
        )
        part = torch.cat([v.flatten() for v in fisher.values()]).double()
        sums.append(float(part.sum() / exact.sum()))
        medians.append(float((part[positive] / exact[positive]).median()))
    sums_t, medians_t = torch.tensor(sums), torch.tensor(medians)
    print(
        f"exact over {size} inputs, {draws} draws: sum ÷ exact sum median {sums_t.median():.4f} "
        f"(range {sums_t.min():.4f}–{sums_t.max():.4f}, mean {sums_t.mean():.4f}); entry ratio "
        f"median, median over draws {medians_t.median():.4f}"
    )


if __name__ == "__main__":
    main()
