"""The exact Fisher's output-gradient vectors: their outer products, and their bits."""

from __future__ import annotations

import pytest
import torch

from ewc.fisher import cotangents
from ewc.fisher.cotangents import exact_vectors, score


def _one_at_a_time(p: torch.Tensor) -> list[torch.Tensor]:
    """The vectors b_j of `exact_vectors` formed one j at a time, each with its own gathers."""
    top = p.argmax(dim=-1)
    p_top = p.gather(1, top[:, None])
    v_top = p_top.sqrt() * score(p, top)
    rest = p.scatter(1, top[:, None], 0.0).sum(dim=1, keepdim=True)
    alpha = 1.0 / (1.0 + (1.0 + rest / p_top).sqrt())
    out = []
    for j in range(p.shape[1] - 1):
        others = j + (j >= top).long()
        p_other = p.gather(1, others[:, None])
        out.append(p_other.sqrt() * score(p, others) - alpha * (p_other / p_top).sqrt() * v_top)
    return out


def _probabilities(n: int, c: int, scale: float, dtype: torch.dtype) -> torch.Tensor:
    z = torch.randn(n, c, generator=torch.Generator().manual_seed(n * c), dtype=dtype) * scale
    z[0] = 0.0  # a sample whose classes tie
    return z.softmax(-1)


@pytest.mark.parametrize(("n", "c"), [(1, 2), (7, 3), (64, 10), (5, 100)])
@pytest.mark.parametrize("scale", [0.1, 3.0, 40.0])
def test_the_vectors_outer_products_sum_to_the_softmax_hessian(n, c, scale):
    p = _probabilities(n, c, scale, torch.float64)
    b = torch.stack(list(exact_vectors(p)))  # (C − 1, N, C)
    assert b.shape == (c - 1, n, c)
    hessian = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    assert torch.allclose(torch.einsum("jni,jnk->nik", b, b), hessian, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [0.1, 3.0, 40.0])
@pytest.mark.parametrize("block_entries", [2**20, 256 * 10 * 4, 1])  # 9, 4 or 1 per block
def test_vectors_in_blocks_have_the_bits_of_one_at_a_time(dtype, scale, block_entries, monkeypatch):
    monkeypatch.setattr(cotangents, "VECTOR_BLOCK_ENTRIES", block_entries)
    p = _probabilities(256, 10, scale, dtype)
    together = list(exact_vectors(p))
    alone = _one_at_a_time(p)
    assert len(together) == len(alone) == 9
    for a, b in zip(together, alone, strict=True):
        assert a.is_contiguous()
        assert torch.equal(a, b)


def test_a_large_vocabulary_is_formed_a_few_vectors_at_a_time(monkeypatch):
    """50,000 classes: never a (C − 1, N, C) tensor, only blocks of the budget's size."""
    monkeypatch.setattr(cotangents, "VECTOR_BLOCK_ENTRIES", 3 * 2 * 50_000)
    p = _probabilities(2, 50_000, 1.0, torch.float32)
    vectors = exact_vectors(p)
    first = next(vectors)
    assert first.shape == (2, 50_000)
    assert first._base is not None  # a row of its block
    assert first._base.shape == (3, 2, 50_000)
