"""DiagonalFisher: a mapping that knows its kind and sample count, merges and scales safely."""

from __future__ import annotations

import math

import pytest
import torch

import ewc
from ewc import DiagonalFisher, FisherKind


def fisher(value: float, n: int, kind: str = "exact") -> DiagonalFisher:
    return DiagonalFisher(
        {"w": torch.full((2, 3), value), "b": torch.full((3,), 2 * value)}, kind=kind, num_samples=n
    )


def test_is_a_mapping_with_kind_and_count():
    f = fisher(1.0, 4)
    assert set(f) == {"w", "b"}
    assert len(f) == 2
    assert f.kind is FisherKind.EXACT
    assert f.num_samples == 4
    assert "kind='exact', num_samples=4, parameters=2, entries=9" in repr(f)


def test_addition_is_the_mean_over_all_samples():
    merged = fisher(1.0, 1) + fisher(4.0, 3)
    assert merged.num_samples == 4
    assert torch.allclose(merged["w"], torch.full((2, 3), (1 * 1.0 + 3 * 4.0) / 4))
    assert torch.allclose(merged["b"], torch.full((3,), (1 * 2.0 + 3 * 8.0) / 4))


def test_addition_equals_one_pass_over_both_data_sets_and_refuses_batched():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    model.double()
    x, y = torch.randn(18, 3, dtype=torch.float64), torch.randint(0, 3, (18,))
    a = [(x[:4], y[:4]), (x[4:8], y[4:8])]  # 8 samples
    b = [(x[8:12], y[8:12]), (x[12:16], y[12:16]), (x[16:], y[16:])]  # 10, a last batch of 2
    for kind in ("exact", "empirical", "argmax"):
        merged = ewc.diagonal_fisher(model, a, kind) + ewc.diagonal_fisher(model, b, kind)
        whole = ewc.diagonal_fisher(model, a + b, kind)
        assert merged.num_samples == whole.num_samples == 18
        for name, value in whole.items():
            assert torch.allclose(merged[name], value, rtol=1e-12, atol=0), (kind, name)
    batched = [ewc.diagonal_fisher(model, part, "batched") for part in (a, b)]
    with pytest.raises(ValueError, match="cannot add two 'batched' Fishers: each is a mean over"):
        batched[0] + batched[1]


def test_adding_different_kinds_or_layouts_is_refused():
    with pytest.raises(ValueError, match="cannot add a 'batched' Fisher to a 'exact' Fisher"):
        fisher(1.0, 1) + fisher(1.0, 1, kind="batched")
    other = DiagonalFisher({"w": torch.ones(3, 2), "b": torch.ones(3)}, kind="exact", num_samples=1)
    with pytest.raises(ValueError, match=r"entry 'w' has shape \(2, 3\) on the left and \(3, 2\)"):
        fisher(1.0, 1) + other
    fewer = DiagonalFisher({"w": torch.ones(2, 3)}, kind="exact", num_samples=1)
    with pytest.raises(ValueError, match=r"only in left \['b'\]"):
        fisher(1.0, 1) + fewer


def test_scaling_by_a_number():
    f = 3 * fisher(1.0, 5)
    assert torch.equal(f["w"], torch.full((2, 3), 3.0))
    assert f.num_samples == 5
    assert torch.equal((fisher(2.0, 1) * 0.5)["b"], torch.full((3,), 2.0))
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="finite number ≥ 0"):
            fisher(1.0, 1) * bad
    with pytest.raises(TypeError):
        fisher(1.0, 1) * torch.ones(1)


def test_state_dict_round_trip_and_to():
    f = fisher(1.5, 7, kind="sample")
    g = DiagonalFisher.from_state_dict(f.state_dict())
    assert (g.kind, g.num_samples) == (FisherKind.SAMPLE, 7)
    assert all(torch.equal(f[n], g[n]) for n in f)
    h = f.to(torch.float64)
    assert h["w"].dtype == torch.float64
    assert f["w"].dtype == torch.float32  # a copy, not in place
    with pytest.raises(ValueError, match=r"lacks \['values'\]"):
        g.load_state_dict({"kind": "exact", "num_samples": 1})


@pytest.mark.parametrize(
    ("values", "kwargs", "error", "message"),
    [
        (
            {"w": torch.ones(2, dtype=torch.long)},
            {},
            TypeError,
            "'w' must be a floating-point tensor",
        ),
        ({"w": [1.0]}, {}, TypeError, "'w' must be a floating-point tensor"),
        (
            {"w": torch.ones(2)},
            {"num_samples": 0},
            ValueError,
            "num_samples must be a positive integer",
        ),
        ({"w": torch.ones(2)}, {"kind": "diag"}, ValueError, "unknown Fisher kind 'diag'"),
    ],
)
def test_bad_construction_is_named(values, kwargs, error, message):
    with pytest.raises(error, match=message):
        DiagonalFisher(values, **{"kind": "exact", "num_samples": 1, **kwargs})
