"""The Fisher identities on a small MLP trained on the embedded MNIST: `ewc.fisher_identities`.

Trains a 784-32-10 MLP for a few epochs, then prints, for the hidden layer's bias and the output
layer, the score's mean, variance, second moment and minus the mean Hessian diagonal, under the
model's own labels and under the data set's labels, on training inputs.

    python examples/fisher_identities.py                      # a few minutes on two busy CPU cores
    python examples/fisher_identities.py --train-samples 300 --samples 50   # a quick look
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import ewc
from ewc.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-samples", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=500, help="inputs for the moments")
    args = parser.parse_args()

    mnist = load_dataset("mnist")
    x = (mnist.train_images.flatten(1) / 255.0).double()
    y = mnist.train_labels
    train_x, train_y = x[: args.train_samples], y[: args.train_samples]

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 32), nn.Tanh(), nn.Linear(32, 10)).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(args.epochs):
        perm = torch.randperm(len(train_x), generator=order)
        batches = [(train_x[i], train_y[i]) for i in perm.split(64)]
        ewc.train_epoch(model, batches, opt)

    names = ["0.bias", "2.weight", "2.bias"]  # the 784 × 32 weight's Hessian block is too large
    data = [(train_x[: args.samples], train_y[: args.samples])]
    print(f"training accuracy {ewc.evaluate(model, data):.3f} on the {args.samples} inputs used")
    print(ewc.fisher_identities(model, data, parameters=names))


if __name__ == "__main__":
    main()
