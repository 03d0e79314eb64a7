"""fisher_identities on tiny float64 models, where the identities provably hold (or fail)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ewc


def tiny_case(seed=0, n=6):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(n, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (n,))
    return model, x, y


def hessian_diagonal_of_mean_nll(model, x, y, name):
    """−(1/N) Σ_n ∂² log p(y_n|x_n)/∂θ_i², from the Hessian of the mean loss (a dense twin)."""
    params = dict(model.named_parameters())
    shape = params[name].shape

    def loss(flat):
        state = {**{n: p.detach() for n, p in params.items()}, name: flat.view(shape)}
        return F.cross_entropy(torch.func.functional_call(model, state, (x,)), y)

    full = torch.autograd.functional.hessian(loss, params[name].detach().reshape(-1))
    return torch.diagonal(full).view(shape)


def test_identities_hold_exactly_under_the_model():
    model, x, y = tiny_case()
    result = ewc.fisher_identities(model, [(x[:4], y[:4]), (x[4:], y[4:])])
    exact = ewc.diagonal_fisher(model, [(x, y)], kind="exact")
    assert result.num_samples == 6
    for name, m in result.model.items():
        scale = m.second_moment.abs().max()
        assert m.mean.abs().max() <= 1e-13 * scale.sqrt()  # E[s] = 0
        assert torch.allclose(m.variance, m.second_moment, rtol=1e-10, atol=1e-15)
        assert torch.allclose(m.negative_hessian, m.second_moment, rtol=1e-9, atol=1e-14), name
        assert torch.allclose(m.second_moment, exact[name], rtol=1e-10, atol=1e-15)
        assert m.relative_gap(m.negative_hessian) < 1e-9


def test_empirical_moments_against_independent_twins():
    model, x, _ = tiny_case(1, n=40)
    y = torch.zeros(40, dtype=torch.long)  # data far from the untrained model's predictions
    result = ewc.fisher_identities(model, [(x, y)])
    empirical = ewc.diagonal_fisher(model, [(x, y)], kind="empirical")
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    for (name, _), grad in zip(model.named_parameters(), grads, strict=True):
        m = result.empirical[name]
        assert torch.allclose(m.mean, -grad, rtol=1e-10, atol=1e-15)  # E[s] = −∇ mean loss
        assert torch.allclose(m.second_moment, empirical[name], rtol=1e-10, atol=1e-15)
        twin = hessian_diagonal_of_mean_nll(model, x, y, name)
        assert torch.allclose(m.negative_hessian, twin, rtol=1e-9, atol=1e-14)
    # the data's labels are not the model's: the identities fail visibly
    first = result.empirical["2.bias"]
    assert first.mean.norm() > 3 * first.standard_error
    assert first.relative_gap(first.negative_hessian) > 0.05


def test_linear_logits_empirical_hessian_is_the_model_fisher():
    """With logits linear in θ, ∇²z = 0: −∇² log p(y|x) is the model's Fisher for any label."""
    torch.manual_seed(2)
    model = nn.Linear(3, 4).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 4, (5,))
    result = ewc.fisher_identities(model, [(x, y)], parameters=["weight"])
    assert set(result.model) == {"weight"}
    assert torch.allclose(
        result.empirical["weight"].negative_hessian,
        result.model["weight"].second_moment,
        rtol=1e-10,
    )


def test_table_and_errors():
    model, x, y = tiny_case()
    text = str(ewc.fisher_identities(model, [(x, y)]))
    assert "labels from the model's distribution" in text
    assert "the data set's labels (the empirical Fisher)" in text
    assert text.count("0.weight") == 2
    with pytest.raises(ValueError, match=r"unknown \['nope'\]; valid names are"):
        ewc.fisher_identities(model, [(x, y)], parameters=["nope"])
    big = nn.Linear(200, 10).double()
    with pytest.raises(ValueError, match="parameter 'weight' has 2000 elements"):
        ewc.fisher_identities(big, [(torch.zeros(1, 200, dtype=torch.float64), y[:1])])
    with pytest.raises(ValueError, match="labels must be in \\[0, 3\\)"):
        ewc.fisher_identities(model, [(x, torch.full((6,), 5))])


def test_the_example_prints_both_tables():
    script = Path(__file__).resolve().parents[2] / "examples" / "fisher_identities.py"
    args = ["--train-samples", "100", "--epochs", "1", "--samples", "8"]
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, check=True
    )
    assert "labels from the model's distribution" in done.stdout
    assert "the data set's labels (the empirical Fisher); N = 8" in done.stdout
