"""The rows a rule reads as samples are the samples, or the Fisher takes the slow path or refuses.

Each model here puts N rows somewhere they are not the samples (a time-major sequence as long as
the batch, a tensor shared by all samples with as many rows as the batch), couples the samples
without a parameter of its own, or is called in a form a closed-form rule cannot read; the fast
Fisher must equal the float64 brute force of `reference`, one sample at a time, or raise.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ewc
from ewc.fisher.independence import CoupledSamplesError
from reference import assert_fisher_close, brute_force_fisher

N = 4


class TimeMajor(nn.Module):
    """A Linear and a LayerNorm on (T, N, D) with T = N, then a running sum over time."""

    def __init__(self):
        super().__init__()
        self.inp, self.norm, self.head = nn.Linear(3, 5), nn.LayerNorm(5), nn.Linear(5, 3)

    def forward(self, x):  # x: (N, T, 3)
        h = self.norm(torch.tanh(self.inp(x.transpose(0, 1))))  # (T, N, 5): rows are time steps
        return self.head(h.cumsum(0)[-1])


class Prototypes(nn.Module):
    """Cosine scores against C = N class prototypes, projected by a Linear on the (C, D) table."""

    def __init__(self):
        super().__init__()
        self.enc, self.proj = nn.Linear(3, 5), nn.Linear(5, 5, bias=False)  # a bias: no gradient
        self.protos = nn.Parameter(torch.randn(N, 5))

    def forward(self, x):
        return self.enc(x) @ self.proj(F.normalize(self.protos, dim=1)).T


class KeywordCalls(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.h = nn.Linear(3, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.h(input=torch.tanh(self.a(input=x)))


class RecurrentBatchFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.LSTM(3, 4, batch_first=True), nn.Linear(4, 3)

    def forward(self, x):  # x: (N, T, 3)
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def old_weight_norm():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated, still used
        return nn.Sequential(nn.utils.weight_norm(nn.Linear(3, 6)), nn.Tanh(), nn.Linear(6, 3))


CASES = {
    "time-major, T = N": (TimeMajor, (N,)),
    "shared rows, C = N": (Prototypes, ()),
    "keyword input": (KeywordCalls, ()),
    "LSTM batch_first": (RecurrentBatchFirst, (2,)),
    "old weight_norm": (old_weight_norm, ()),
}


@pytest.mark.parametrize("kind", ["exact", "empirical"])
@pytest.mark.parametrize("name", list(CASES))
def test_the_fisher_equals_the_brute_force(name, kind):
    build, extra = CASES[name]
    torch.manual_seed(0)
    model = build().double().eval()
    inputs = torch.randn(3 * N, *extra, 3, dtype=torch.float64)
    targets = torch.randint(0, 3, (3 * N,))
    batches = [(inputs[i : i + N], targets[i : i + N]) for i in range(0, 3 * N, N)]
    fast = ewc.diagonal_fisher(model, batches, kind=kind)
    assert_fisher_close(fast, brute_force_fisher(model, inputs, targets, kind))


class CentredInputs(nn.Module):
    """Subtracts the batch mean before its only layer: every sample's output uses the others."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        return self.lin(x - x.mean(0))


def batch_statistics():
    return nn.Sequential(
        nn.Linear(3, 5), nn.BatchNorm1d(5, affine=False, track_running_stats=False), nn.Linear(5, 3)
    )


@pytest.mark.parametrize("build", [CentredInputs, batch_statistics])
def test_samples_coupled_without_a_parameter_of_their_own_are_refused(build):
    model = build().double().eval()
    batch = (torch.randn(N, 3, dtype=torch.float64), torch.randint(0, 3, (N,)))
    with pytest.raises(CoupledSamplesError, match="depends on the other samples of its batch"):
        ewc.diagonal_fisher(model, [batch])


@pytest.mark.parametrize("build", [CentredInputs, batch_statistics])
def test_kfac_refuses_coupled_samples(build):
    """K-FAC sums its factors over all rows, so a layout of rows does not matter to it; coupled
    samples do (its layers' rows mix samples that the Fisher's definition keeps apart)."""
    model = build().double().eval()
    batch = (torch.randn(N, 3, dtype=torch.float64), torch.randint(0, 3, (N,)))
    with pytest.raises(CoupledSamplesError, match="depends on the other samples of its batch"):
        ewc.kfac_fisher(model, [batch])


class FrozenEmbeddingThenBatchMean(nn.Module):
    """Token ids (no gradient to check) into a frozen embedding, then a mean over the batch."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(7, 3).requires_grad_(False)
        self.lin = nn.Linear(3, 3)

    def forward(self, ids):
        h = self.embed(ids).mean(1)
        return self.lin(h - h.mean(0))


def test_coupling_before_any_checked_layer_is_refused_by_both_estimators():
    model = FrozenEmbeddingThenBatchMean().double().eval()
    batch = (torch.randint(0, 7, (N, 2)), torch.randint(0, 3, (N,)))
    for estimate in (ewc.diagonal_fisher, ewc.kfac_fisher):
        with pytest.raises(CoupledSamplesError, match="output alone differs"):
            estimate(model, [batch])


@pytest.mark.parametrize("estimate", [ewc.diagonal_fisher, ewc.kfac_fisher])
def test_a_first_batch_of_one_sample_does_not_switch_the_check_off(estimate):
    model = CentredInputs().double().eval()
    x, y = torch.randn(7, 3, dtype=torch.float64), torch.randint(0, 3, (7,))
    with pytest.raises(CoupledSamplesError):
        estimate(model, [(x[:1], y[:1]), (x[1:], y[1:])])


def test_kfac_refuses_a_layer_input_changed_in_place_on_a_later_batch():
    class ClampsLargeInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 3)

        def forward(self, x):
            h = self.a(x)
            if x.abs().max() > 50:  # only the second batch's inputs are that large
                x.clamp_(-3, 3)  # after a ran: the input a recorded is changed
            return self.b(h)

    model = ClampsLargeInputs().double().eval()
    x, y = torch.randn(2 * N, 3, dtype=torch.float64), torch.randint(0, 3, (2 * N,))
    x[N:] *= 100
    with pytest.raises(RuntimeError, match="input of module 'a' was modified in place after"):
        ewc.kfac_fisher(model, [(x[:N], y[:N]), (x[N:], y[N:])])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_samples": True}, "num_samples must be a positive integer"),
        ({"num_samples": 0}, "num_samples must be a positive integer"),
        ({"samples_per_input": 5}, "only applies to kind='sample'"),
    ],
)
def test_kfac_checks_its_options_as_the_diagonal_does(options, message):
    model = nn.Sequential(nn.Linear(3, 3)).double()
    batch = (torch.randn(N, 3, dtype=torch.float64), torch.randint(0, 3, (N,)))
    with pytest.raises(ValueError, match=message):
        ewc.kfac_fisher(model, [batch], **options)
