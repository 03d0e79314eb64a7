"""Non-finite numbers are caught where they appear: inputs, logits, squared gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ewc
from ewc._batches import Batch, check_finite


def _data(bad_batch: int | None = None, value: float = float("nan")):
    torch.manual_seed(0)
    x, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    if bad_batch is not None:
        x[4 * bad_batch + 1, 2] = value
    return [(x[i : i + 4], y[i : i + 4]) for i in range(0, 12, 4)]


@pytest.mark.parametrize("kind", ["exact", "sample", "empirical", "argmax", "batched"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_input_is_an_error_naming_its_batch(kind, value):
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    with pytest.raises(ValueError, match=r"batch 2: the inputs hold 1 non-finite values"):
        ewc.diagonal_fisher(model, _data(bad_batch=2, value=value), kind)


def test_non_finite_logits_from_finite_inputs_are_an_error():
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    with torch.no_grad():
        model[2].bias[0] = float("inf")
    with pytest.raises(ValueError, match=r"batch 0: the model's logits hold 4 non-finite"):
        ewc.diagonal_fisher(model, _data(), "exact")


def test_an_overflowing_gradient_names_the_parameter():
    model = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight.fill_(0.0)  # finite logits (the bias) for finite but huge inputs
    data = [(torch.full((2, 4), 1e20), torch.tensor([0, 1]))]  # (g x)² ≈ 1e40 > float32's max
    with pytest.raises(ValueError, match=r"squared gradients of \['0.weight'\] overflowed"):
        ewc.diagonal_fisher(model, data, "empirical")


def test_kfac_checks_its_inputs_too():
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    with pytest.raises(ValueError, match=r"batch 1: the inputs hold 1 non-finite values"):
        ewc.kfac_fisher(model, _data(bad_batch=1), "exact")


def test_finite_inputs_whose_sum_overflows_are_accepted():
    """The one-sum fast path overflows on huge finite values; the element-wise test decides."""
    inputs = torch.full((4, 4), 3e38)  # float32: finite, but their sum is not
    batch = Batch(0, inputs, torch.zeros(4, dtype=torch.long))
    check_finite(batch, torch.full((4, 3), 3e38))  # no error
    inputs[1, 2] = float("inf")
    with pytest.raises(ValueError, match=r"batch 0: the inputs hold 1 non-finite values"):
        check_finite(batch, torch.zeros(4, 3))
