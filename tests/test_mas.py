"""MAS importance: closed form on a linear model, and a float64 one-sample-at-a-time twin."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ewc


def brute_force_mas(model, inputs, output_fn=None):
    """(1/N) Σ_n |∂ ‖f(x_n)‖² / ∂θ|, one backward pass per input."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    sums = {n: torch.zeros_like(p) for n, p in params.items()}
    for x in inputs:
        out = model(x.unsqueeze(0))
        out = output_fn(out) if output_fn is not None else out
        grads = torch.autograd.grad(out.square().sum(), list(params.values()), allow_unused=True)
        for name, g in zip(params, grads, strict=True):
            if g is not None:
                sums[name] += g.abs()
    return {n: s / len(inputs) for n, s in sums.items()}


def test_linear_model_closed_form():
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    x = torch.randn(7, 3, dtype=torch.float64)
    out = model(x).detach()  # ∂‖Wx + b‖²/∂W = 2 (Wx + b) xᵀ, ∂/∂b = 2 (Wx + b)
    expected_w = (2 * out[:, :, None] * x[:, None, :]).abs().mean(0)
    expected_b = (2 * out).abs().mean(0)
    got = ewc.mas_importance(model, [x[:4], (x[4:], None)])
    assert torch.allclose(got["weight"], expected_w, rtol=1e-12)
    assert torch.allclose(got["bias"], expected_b, rtol=1e-12)


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.BatchNorm1d(6))
        self.heads = nn.ModuleList([nn.Linear(6, 3), nn.Linear(6, 2)])

    def forward(self, x):
        h = self.body(x)
        return [head(h) for head in self.heads]


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_matches_the_one_sample_twin_with_a_head_selected(chunk_size):
    torch.manual_seed(1)
    model = TwoHeads().double()
    model.body[0].bias.requires_grad_(False)
    model.body[2].running_mean.uniform_(-0.5, 0.5)
    model.train()
    x = torch.randn(9, 4, dtype=torch.float64)
    head = lambda out: out[1]  # noqa: E731
    got = ewc.mas_importance(model, [x[:5], (x[5:],)], output_fn=head, chunk_size=chunk_size)
    assert model.training  # its mode is restored
    model.eval()
    expected = brute_force_mas(model, x, output_fn=head)
    assert set(got) == set(expected)
    assert "body.0.bias" not in got
    for name in expected:
        assert torch.allclose(got[name], expected[name], rtol=1e-10, atol=1e-14), name
    assert got["heads.0.weight"].abs().max() == 0  # the other head's output does not count


def test_batch_mean_matches_its_closed_form_and_the_autograd_twin():
    """Hsu et al.'s variant: (1/M) Σ_b |∂ mean_{n∈b,k} f_k² / ∂θ|, batch by batch."""
    torch.manual_seed(2)
    linear = nn.Linear(3, 2).double()
    x = torch.randn(7, 3, dtype=torch.float64)
    batches = [x[:4], (x[4:], None)]
    got = ewc.mas_importance(linear, batches, gradient="batch-mean")
    expected_w = torch.zeros_like(linear.weight)
    expected_b = torch.zeros_like(linear.bias)
    for part in (x[:4], x[4:]):
        out = linear(part).detach()  # ∂ mean(f²)/∂W = 2 Σ_n f_n x_nᵀ / (B·K)
        expected_w += (2 * out.T @ part / out.numel()).abs()
        expected_b += (2 * out.sum(0) / out.numel()).abs()
    assert torch.allclose(got["weight"], expected_w / 2, rtol=1e-12)
    assert torch.allclose(got["bias"], expected_b / 2, rtol=1e-12)
    model, z = TwoHeads().double(), torch.randn(6, 4, dtype=torch.float64)
    model.train()
    head = lambda out: out[0]  # noqa: E731
    with torch.no_grad():  # it needs gradients whatever the caller's mode
        got = ewc.mas_importance(model, [z], output_fn=head, gradient="batch-mean")
    assert model.training
    model.eval()
    out = head(model(z))
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(out.square().mean(), list(params.values()), allow_unused=True)
    for (name, _), g in zip(params.items(), grads, strict=True):
        reference = torch.zeros_like(got[name]) if g is None else g.abs()
        assert torch.allclose(got[name], reference, rtol=1e-12, atol=0), name
    per_sample = ewc.mas_importance(model, [z], output_fn=head)
    assert all((got[n] <= per_sample[n] + 1e-15).all() for n in got)  # |mean| ≤ mean |·|
    with pytest.raises(ValueError, match="unknown MAS gradient 'batch'"):
        ewc.mas_importance(model, [z], gradient="batch")


def test_mas_penalty_has_no_half_and_sums_tasks():
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    mas = ewc.MAS(model, strength=4.0)
    assert mas().item() == 0.0
    ones = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    mas.consolidate(ones)
    with torch.no_grad():
        model.bias.add_(0.5)
    assert mas().item() == pytest.approx(4.0 * 2 * 0.25)  # λ Σ Ω Δ², no 1/2
    mas.consolidate(ones)  # Ω sums, the anchor moves to θ now
    assert mas().item() == 0.0
    assert torch.equal(mas.importance["bias"], 2 * torch.ones(2, dtype=torch.float64))
    twin = ewc.MAS(model, strength=1.0)
    twin.load_state_dict(mas.state_dict())
    with torch.no_grad():
        model.weight.add_(0.1)
    assert torch.allclose(twin(), mas())
    (by_autograd,) = torch.autograd.grad(mas(), [model.weight])
    model.weight.grad = None
    mas.add_gradient_()  # 2 λ Ω (θ − θ*), the same as autograd's
    assert torch.allclose(model.weight.grad, by_autograd, rtol=1e-12)
    assert torch.allclose(by_autograd, torch.full_like(by_autograd, 2 * 4.0 * 2 * 0.1))
    twin.to(torch.float32)
    assert twin.importance["bias"].dtype == torch.float32


def test_errors():
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="data yielded no samples"):
        ewc.mas_importance(model, [])
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        ewc.mas_importance(model, [torch.zeros(1, 3)], chunk_size=0)
