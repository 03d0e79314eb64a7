"""`KroneckerFisher`: a Fisher whose block per layer is one Kronecker product G ⊗ A (K-FAC).

For a layer with weight W (O × J, a convolution's kernel flattened to J = I·kh·kw) and bias b,
write W̃ = [W, b] (O × (J+1)) and ã = [a, 1] for an input a. K-FAC (Martens & Grosse 2015; Grosse &
Martens 2016 for convolutions) approximates the layer's Fisher block, in row-major order of W̃, by

    F ≈ G ⊗ A,    A = (1/N) Σ_n Σ_t ã_nt ã_ntᵀ,    G = (1/N) Σ_n (1/T) Σ_t Σ_v g_ntv g_ntvᵀ

with t over the T positions that share the weight (1 for a plain Linear input, the output
locations of a convolution, the tokens of a sequence) and v over the output-gradient vectors of
the Fisher's kind (`ewc.fisher.cotangents`). The quadratic form needs neither the O·(J+1)-square
matrix nor its entries:

    vec(Δ)ᵀ (G ⊗ A) vec(Δ) = Σ (G Δ A) ⊙ Δ,    its gradient in Δ is 2 G Δ A.

Layers without such a block (norm layers, embeddings, ...) keep a diagonal Fisher of the same
kind in `KroneckerFisher.diagonal`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ewc.fisher.diagonal import DiagonalFisher
from ewc.fisher.kinds import FisherKind


@dataclass(frozen=True)
class KroneckerFactors:
    """The factors A ((J+1) × (J+1) with a bias, J × J without) and G (O × O) of one layer.

    Attributes:
        weight: the ``named_parameters()`` name of the layer's weight.
        bias: the name of its bias, or None (then A has no row for the constant input 1).
        input_factor: A, symmetric positive semi-definite.
        output_factor: G, symmetric positive semi-definite.
        weight_shape: the weight's shape (O, I) or (O, I, kh, kw).
    """

    weight: str
    bias: str | None
    input_factor: Tensor
    output_factor: Tensor
    weight_shape: tuple[int, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The parameters this block covers."""
        return (self.weight,) if self.bias is None else (self.weight, self.bias)

    def stacked(self, values: Mapping[str, Tensor]) -> Tensor:
        """W̃ = [W (flattened to O × J), b]: the matrix the block's quadratic form acts on."""
        weight = values[self.weight]
        flat = weight.reshape(weight.shape[0], -1)
        if self.bias is None:
            return flat
        return torch.cat([flat, values[self.bias].reshape(-1, 1)], dim=1)

    def unstacked(self, matrix: Tensor) -> dict[str, Tensor]:
        """Split an O × (J+1) matrix back into tensors shaped like the weight and the bias."""
        columns = matrix.shape[1] - (self.bias is not None)
        out = {self.weight: matrix[:, :columns].reshape(self.weight_shape)}
        if self.bias is not None:
            out[self.bias] = matrix[:, columns].clone()
        return out

    def quadratic(self, delta: Tensor) -> tuple[Tensor, Tensor]:
        """vec(Δ)ᵀ (G ⊗ A) vec(Δ) and its gradient 2 G Δ A, for the stacked difference Δ."""
        product = self.output_factor @ delta @ self.input_factor
        return (product * delta).sum(), 2.0 * product

    def diagonal(self) -> Tensor:
        """diag(G ⊗ A) as an O × (J+1) matrix: G_oo A_jj."""
        return torch.outer(self.output_factor.diagonal(), self.input_factor.diagonal())

    def dense(self) -> Tensor:
        """G ⊗ A itself, in row-major order of W̃ (for tests and small layers only)."""
        return torch.kron(self.output_factor, self.input_factor)

    def to(self, *args: Any, **kwargs: Any) -> KroneckerFactors:
        """A copy with both factors moved or cast by `Tensor.to`."""
        return KroneckerFactors(
            self.weight,
            self.bias,
            self.input_factor.to(*args, **kwargs),
            self.output_factor.to(*args, **kwargs),
            self.weight_shape,
        )


@dataclass(frozen=True)
class KroneckerFisher:
    """A K-FAC Fisher: Kronecker blocks for Linear / Conv2d layers, a diagonal for the rest.

    Attributes:
        blocks: one `KroneckerFactors` per layer with a Kronecker block, keyed by module name.
        diagonal: the diagonal Fisher of every other trainable parameter (empty if none), of
            the same kind, over the same inputs.
        kind: the per-sample Fisher kind of both parts.
        num_samples: the number of inputs the means are over.
    """

    blocks: dict[str, KroneckerFactors]
    diagonal: DiagonalFisher | None
    kind: FisherKind
    num_samples: int

    @property
    def covered(self) -> list[str]:
        """Names of the parameters that have a Kronecker block."""
        return [name for block in self.blocks.values() for name in block.names]

    @property
    def fallback(self) -> list[str]:
        """Names of the parameters that kept a diagonal Fisher (no Kronecker rule for them)."""
        return [] if self.diagonal is None else list(self.diagonal)

    def diagonal_approximation(self) -> dict[str, Tensor]:
        """diag(G ⊗ A) per covered parameter plus the fallback diagonal: one tensor per name."""
        values: dict[str, Tensor] = dict(self.diagonal or {})
        for block in self.blocks.values():
            values.update(block.unstacked(block.diagonal()))
        return values

    def to(self, *args: Any, **kwargs: Any) -> KroneckerFisher:
        """A copy with every tensor moved or cast by `Tensor.to`."""
        blocks = {name: block.to(*args, **kwargs) for name, block in self.blocks.items()}
        diagonal = None if self.diagonal is None else self.diagonal.to(*args, **kwargs)
        return KroneckerFisher(blocks, diagonal, self.kind, self.num_samples)

    def __repr__(self) -> str:
        return (
            f"KroneckerFisher(kind={self.kind.value!r}, num_samples={self.num_samples}, "
            f"blocks={list(self.blocks)}, diagonal={self.fallback})"
        )
