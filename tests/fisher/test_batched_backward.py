"""The exact Fisher's vectors through one batched backward (MLPs) or one backward each."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ewc
from ewc.fisher import estimator


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 5)
    ).double()


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 5)
    ).double()


def _batches(shape: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(n, *shape, generator=gen, dtype=torch.float64), torch.arange(n) % 5)
        for n in (7, 3)
    ]


def _fisher(model: nn.Module, data: list, monkeypatch, batched: bool | None) -> dict:
    """The exact Fisher with the choice forced (True/False) or left to the estimator (None)."""
    choices: list[bool] = []
    real = estimator._batches_vectors

    def spy(*args):
        choice = real(*args) if batched is None else batched
        choices.append(choice)
        return choice

    monkeypatch.setattr(estimator, "_batches_vectors", spy)
    fisher = ewc.diagonal_fisher(model, data, "exact")
    monkeypatch.setattr(estimator, "_batches_vectors", real)
    return {"fisher": dict(fisher), "choices": choices}


def _brute_force(model: nn.Module, data: list) -> dict[str, torch.Tensor]:
    """(1/N) Σ_n Σ_c p_c (∂ log p_c/∂θ)², one sample and one class at a time."""
    params = dict(model.named_parameters())
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    count = 0
    for x, _ in data:
        for row in x:
            log_p = model(row[None]).log_softmax(-1)[0]
            for c in range(log_p.shape[0]):
                grads = torch.autograd.grad(log_p[c], list(params.values()), retain_graph=True)
                for (n, _), g in zip(params.items(), grads, strict=True):
                    total[n] += log_p[c].exp().detach() * g.square()
            count += 1
    return {n: t / count for n, t in total.items()}


def test_an_mlp_batches_its_vectors_and_matches_the_brute_force_twin(monkeypatch):
    model, data = _mlp(), _batches((6,))
    chosen = _fisher(model, data, monkeypatch, batched=None)
    assert chosen["choices"] == [True, True]  # every batch, C − 1 = 4 vectors
    looped = _fisher(model, data, monkeypatch, batched=False)
    expected = _brute_force(model, data)
    for name, value in chosen["fisher"].items():
        torch.testing.assert_close(value, expected[name], rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(value, looped["fisher"][name], rtol=1e-12, atol=0)


def test_convolutions_keep_one_backward_per_vector(monkeypatch):
    model, data = _cnn(), _batches((1, 6, 6))
    chosen = _fisher(model, data, monkeypatch, batched=None)
    assert chosen["choices"] == [False, False]
    forced = _fisher(model, data, monkeypatch, batched=True)  # correct, only slower there
    for name, value in chosen["fisher"].items():
        torch.testing.assert_close(value, forced["fisher"][name], rtol=1e-12, atol=0)


@pytest.mark.parametrize("budget", [0, 10**6])
def test_the_batched_backward_respects_its_memory_budget(monkeypatch, budget):
    monkeypatch.setattr(estimator, "BATCHED_BACKWARD_ENTRIES", budget)
    chosen = _fisher(_mlp(), _batches((6,)), monkeypatch, batched=None)
    assert chosen["choices"] == [budget > 0] * 2


class _CheckedTanh(torch.autograd.Function):
    """tanh whose backward checks its gradient with a data-dependent branch: vmap raises."""

    @staticmethod
    def forward(ctx, x):
        y = x.tanh()
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        if not bool(torch.isfinite(grad).all()):
            raise FloatingPointError("non-finite gradient")
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


class _Tanh(nn.Module):
    def forward(self, x):
        return _CheckedTanh.apply(x)


def test_a_graph_the_vmap_cannot_enter_falls_back_to_the_loop(monkeypatch):
    model = _mlp()
    model[1] = _Tanh()
    data = _batches((6,))
    calls = []
    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls.append(kwargs.get("is_grads_batched", False))
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    chosen = _fisher(model, data, monkeypatch, batched=None)
    monkeypatch.setattr(torch.autograd, "grad", real_grad)
    assert chosen["choices"] == [True, True]  # chosen, then refused by the vmap
    # per batch the refused batched call, then one per vector (before them: the first batch's
    # numeric coverage check)
    assert calls[-10:] == ([True] + [False] * 4) * 2
    assert calls.count(True) == 2
    expected = _fisher(_mlp(), data, monkeypatch, batched=False)  # torch's own tanh
    for name, value in chosen["fisher"].items():
        torch.testing.assert_close(value, expected["fisher"][name], rtol=1e-12, atol=1e-15)
