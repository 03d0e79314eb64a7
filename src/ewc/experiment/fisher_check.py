"""`ewc fisher-check`: the Fisher identities on a small MLP trained on the embedded MNIST.

Trains a 784-H-10 MLP (tanh, float64, Adam) on the first training digits of the embedded subset,
then measures `ewc.fisher_identities` on its hidden bias and its output layer (the first layer's
784 × H weight has a Hessian block too large for the brute-force diagnostic): under the model's
own labels the mean score is 0 and Var(s) = E[s²] = −E[∇² log p]; under the data set's labels
(the empirical Fisher) they differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ewc.data import load_dataset
from ewc.fisher import FisherIdentities, fisher_identities
from ewc.training import evaluate, train_epoch


@dataclass(frozen=True)
class FisherCheck:
    """What was measured: the identities, and the accuracy of the model on the inputs used."""

    identities: FisherIdentities
    accuracy: float
    samples: int
    hidden: int

    def __str__(self) -> str:
        """The accuracy line, then the identities' table."""
        return (
            f"784-{self.hidden}-10 MLP, training accuracy {self.accuracy:.3f} on the "
            f"{self.samples} inputs measured\n\n{self.identities}"
        )


def fisher_check(
    *, train_samples: int = 4000, epochs: int = 5, samples: int = 500, hidden: int = 32
) -> FisherCheck:
    """Train the MLP (seed 0) and measure the identities on ``samples`` of its training inputs."""
    for name, value in (("train_samples", train_samples), ("epochs", epochs)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1; got {value}")
    if not 1 <= samples <= train_samples:
        raise ValueError(f"samples must be in [1, train_samples={train_samples}]; got {samples}")
    mnist = load_dataset("mnist", source="embedded")
    x = (mnist.train_images.flatten(1) / 255.0).double()[:train_samples]
    y = mnist.train_labels[:train_samples]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, hidden), nn.Tanh(), nn.Linear(hidden, 10)).double()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        batches = [(x[i], y[i]) for i in torch.randperm(len(x), generator=order).split(64)]
        train_epoch(model, batches, optimizer)
    data = [(x[:samples], y[:samples])]
    identities = fisher_identities(model, data, parameters=["0.bias", "2.weight", "2.bias"])
    return FisherCheck(identities, evaluate(model, data), samples, hidden)
