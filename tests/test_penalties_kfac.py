"""EWC with a K-FAC Fisher: value and gradient against the dense quadratic form, in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ewc
from ewc.fisher.kfac import kfac_fisher

STRENGTH = 3.0


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.tanh(self.norm(self.conv(x).flatten(1))))


def _setup(seed=0):
    torch.manual_seed(seed)
    model = _Net().double()
    x = torch.randn(10, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (10,))
    return model, [(x, y)]


def _nudge(model, scale=0.1):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


def _dense_term(model, fisher, anchor):
    """(1/2) Σ_blocks vec(Δ)ᵀ (G ⊗ A) vec(Δ) + (1/2) Σ_i F_i Δ_i², formed densely."""
    params = dict(model.named_parameters())
    total = 0.0
    for block in fisher.blocks.values():
        delta = block.stacked(params) - block.stacked(anchor)
        vec = delta.reshape(-1)
        total = total + vec @ block.dense() @ vec
    for name, f in (fisher.diagonal or {}).items():
        total = total + (f * (params[name] - anchor[name]).square()).sum()
    return 0.5 * total


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_value_and_gradient_match_the_dense_quadratic_form():
    model, data = _setup()
    fisher = kfac_fisher(model, data, "exact")
    assert sorted(fisher.fallback) == ["norm.bias", "norm.weight"]
    anchor = _snapshot(model)
    penalty = ewc.EWC(model, strength=STRENGTH)
    penalty.consolidate(fisher)
    assert float(penalty().detach()) == 0.0
    _nudge(model)
    expected = STRENGTH * _dense_term(model, fisher, anchor)
    value = penalty()
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
    assert float(value.detach()) > 0
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    model.zero_grad()
    value.backward()
    for p, g in zip(model.parameters(), expected_grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-14)
    for value in (True, False):  # False (the attach hook) falls back to the Kronecker path
        model.zero_grad()
        returned = penalty.add_gradient_(value=value)
        assert (returned is None) is not value
        for p, g in zip(model.parameters(), expected_grads, strict=True):
            torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-14)


def test_separate_mode_is_the_sum_of_the_tasks_terms():
    model, data = _setup()
    penalty = ewc.EWC(model, strength=STRENGTH)
    first, anchor_1 = kfac_fisher(model, data, "exact"), _snapshot(model)
    penalty.consolidate(first)
    _nudge(model)
    second, anchor_2 = kfac_fisher(model, data, "exact"), _snapshot(model)
    penalty.consolidate(second)
    _nudge(model)
    expected = STRENGTH * (
        _dense_term(model, first, anchor_1) + _dense_term(model, second, anchor_2)
    )
    torch.testing.assert_close(penalty(), expected, rtol=1e-12, atol=0)


def test_online_mode_decays_old_terms_and_moves_the_anchor():
    model, data = _setup()
    penalty = ewc.EWC(model, strength=STRENGTH, mode="online", gamma=0.5)
    first = kfac_fisher(model, data, "exact")
    penalty.consolidate(first)
    _nudge(model)
    second, anchor = kfac_fisher(model, data, "exact"), _snapshot(model)
    penalty.consolidate(second)
    _nudge(model)
    # Σ_t γ^(T−t) F_t (θ − θ*_T)², for the blocks and the diagonal part alike
    expected = STRENGTH * (
        0.5 * _dense_term(model, first, anchor) + _dense_term(model, second, anchor)
    )
    torch.testing.assert_close(penalty(), expected, rtol=1e-12, atol=0)


def test_state_dict_round_trip_and_device_move():
    model, data = _setup()
    penalty = ewc.EWC(model, strength=STRENGTH)
    penalty.consolidate(kfac_fisher(model, data, "exact"))
    _nudge(model)
    restored = ewc.EWC(model, strength=1.0)
    restored.load_state_dict(penalty.state_dict())
    torch.testing.assert_close(restored(), penalty(), rtol=0, atol=0)
    assert restored.fisher_kind == "kfac-exact"
    restored.to("cpu")
    torch.testing.assert_close(restored(), penalty(), rtol=0, atol=0)


def test_a_penalty_refuses_to_mix_kronecker_and_diagonal_fishers():
    model, data = _setup()
    penalty = ewc.EWC(model, strength=STRENGTH)
    penalty.consolidate(kfac_fisher(model, data, "exact"))
    with pytest.raises(ValueError, match="different quantity"):
        penalty.consolidate(ewc.diagonal_fisher(model, data, "exact"))
