"""A λ tuned for Avalanche's EWC, carried into `ewc.EWC` with `ewc.convert_strength`, and checked.

Two permuted-MNIST tasks (the embedded subset). After task A the same model is trained on task B
three times from the same state and batch order: without a penalty; with the penalty as
Avalanche writes it, λ_av Σ F_batched (θ − θ*)² (no 1/2, the Fisher a mean over mini-batches of
squared batch-mean gradients); and with `ewc.EWC` and the empirical Fisher (a mean over samples)
at λ = convert_strength(λ_av, frm="avalanche", batch_size=B) = 2 λ_av / B. If the conversion is
right, both penalised runs protect task A about equally; a fourth run copies λ_av unconverted.

    python examples/strength_conversion.py                      # about 2 minutes on two CPU cores
    python examples/strength_conversion.py --train-samples 300 --epochs 1   # a quick look
"""

from __future__ import annotations

import argparse
import copy

import torch

import ewc
from ewc.data import load_dataset
from ewc.experiment.models import build_model
from ewc.experiment.streams.benchmarks import TensorBatches, build_stream


def avalanche_penalty(model, fisher, strength):
    """λ Σ F (θ − θ*)², as Avalanche's EWCPlugin adds it to the loss (no 1/2)."""
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}

    def penalty():
        return strength * sum(
            (fisher[n] * (p - anchor[n]).square()).sum() for n, p in model.named_parameters()
        )

    return penalty


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-samples", type=int, default=4000, help="per task")
    parser.add_argument("--epochs", type=int, default=4, help="per task")
    parser.add_argument("--batch-size", type=int, default=64, help="B, also of the Fisher")
    parser.add_argument("--avalanche-lambda", type=float, default=6400.0, help="Avalanche's λ")
    args = parser.parse_args()

    stream = build_stream(
        "permuted", load_dataset("mnist"), num_tasks=2, train_samples=args.train_samples
    )
    task_a, task_b = stream.tasks
    model = build_model("mlp", num_outputs=stream.num_outputs, hidden=(100,), seed=0)

    def batches(task, seed):
        generator = torch.Generator().manual_seed(seed)
        inputs, targets = task.train_inputs, task.train_targets
        return TensorBatches(
            inputs, targets, batch_size=args.batch_size, shuffle=True, generator=generator
        )

    def accuracy(trained, task):
        test = TensorBatches(task.test_inputs, task.test_targets, batch_size=1000)
        return ewc.evaluate(trained, test)

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(args.epochs):
        ewc.train_epoch(model, batches(task_a, epoch), optimizer)
    batched = ewc.diagonal_fisher(model, batches(task_a, 100), "batched")
    empirical = ewc.diagonal_fisher(model, batches(task_a, 100), "empirical")
    converted = ewc.convert_strength(
        args.avalanche_lambda, frm="avalanche", to="ewc", batch_size=args.batch_size
    )

    settings = {"no penalty": (None, "-")}
    clone = copy.deepcopy(model)
    settings["avalanche: batched F, no 1/2"] = (
        (clone, avalanche_penalty(clone, batched, args.avalanche_lambda)),
        f"{args.avalanche_lambda:g}",
    )
    clone = copy.deepcopy(model)
    penalty = ewc.EWC(clone, strength=converted.value)
    penalty.consolidate(empirical)
    settings["ewc: empirical F, (λ/2)"] = ((clone, penalty), f"{converted.value:g}")
    clone = copy.deepcopy(model)
    penalty = ewc.EWC(clone, strength=args.avalanche_lambda)
    penalty.consolidate(empirical)
    settings["ewc: λ copied unconverted"] = ((clone, penalty), f"{args.avalanche_lambda:g}")

    print(f"converted: {converted}")
    print(f"task A after training it: {accuracy(model, task_a):.3f}")
    print(f"{'setting':<30} {'lambda':>8} {'task A':>7} {'task B':>7}")
    for name, (pair, shown) in settings.items():
        trained, term = pair if pair is not None else (copy.deepcopy(model), None)
        optimizer = torch.optim.Adam(trained.parameters(), lr=1e-3)
        for epoch in range(args.epochs):
            ewc.train_epoch(trained, batches(task_b, 10 + epoch), optimizer, penalty=term)
        a, b = accuracy(trained, task_a), accuracy(trained, task_b)
        print(f"{name:<30} {shown:>8} {a:>7.3f} {b:>7.3f}")


if __name__ == "__main__":
    main()
