"""EWC on split MNIST with one output head per task, written with the library's pieces only.

Task-incremental learning (van de Ven & Tolias 2019): five tasks of two digits each, a shared MLP
trunk and a head per task. The Fisher of each task is computed through that task's head
(``output_fn``), so the penalty protects the trunk and that head, and leaves the other heads free.

    python examples/split_mnist_multihead.py                  # about 20 s on two CPU cores
    python examples/split_mnist_multihead.py --train-samples 300 --epochs 1   # a quick look
"""

from __future__ import annotations

import argparse

import torch

import ewc
from ewc.data import load_dataset
from ewc.experiment.models import build_model
from ewc.experiment.streams.benchmarks import TensorBatches, build_stream


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-samples", type=int, default=None, help="per task (default: all)")
    parser.add_argument("--epochs", type=int, default=4, help="per task (Hsu et al. 2018: 4)")
    parser.add_argument("--strength", type=float, default=1e3, help="EWC's λ")
    args = parser.parse_args()

    stream = build_stream(
        "split",
        load_dataset("mnist"),
        scenario="task",
        multi_head=True,
        train_samples=args.train_samples,
    )
    model = build_model("mlp", num_outputs=stream.num_outputs, heads=stream.heads, seed=0)
    penalty = ewc.EWC(model, strength=args.strength)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    shuffle = torch.Generator().manual_seed(0)

    for t, task in enumerate(stream.tasks):
        train = TensorBatches(
            task.train_inputs, task.train_targets, batch_size=128, shuffle=True, generator=shuffle
        )
        for _ in range(args.epochs):
            ewc.train_epoch(model, train, optimizer, penalty=penalty, output_fn=stream.output_fn(t))
        fisher = ewc.diagonal_fisher(model, train, "exact", output_fn=stream.output_fn(t))
        penalty.consolidate(fisher)
        accuracies = [
            ewc.evaluate(
                model,
                TensorBatches(old.test_inputs, old.test_targets, batch_size=1000),
                output_fn=stream.output_fn(j),
            )
            for j, old in enumerate(stream.tasks[: t + 1])
        ]
        print(f"after {task.name}: " + "  ".join(f"{a:.3f}" for a in accuracies))


if __name__ == "__main__":
    main()
