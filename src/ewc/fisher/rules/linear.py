"""Rule for `nn.Linear`: y = a Wᵀ + b, on inputs with any number of leading dimensions.

For one sample with input rows a_t and output-gradient rows g_t (t over the leading dimensions),
the weight gradient is Σ_t g_t a_tᵀ. Without leading dimensions it is the outer product g aᵀ, whose
square is (g²)(a²)ᵀ entry-wise, so

    Σ_n (∂ℓ_n/∂W)² = (G²)ᵀ (A²)        (G: N×O output gradients, A: N×I inputs)

one GEMM of the size of the ordinary weight gradient, and never an N×O×I tensor. Because G² enters
linearly, the C − 1 cotangent vectors of the exact Fisher are summed (as Σ_c G_c²) before that GEMM.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ewc.fisher.capture import ModuleCall
from ewc.fisher.rules.base import Partial, Rule, sum_except


class LinearRule(Rule):
    """Closed-form squared per-sample gradients of `nn.Linear` weight and bias."""

    def per_sample(
        self, call: ModuleCall, grads: list[Tensor], names: Sequence[str]
    ) -> dict[str, Tensor]:
        """Per-sample gradients: Σ_t g_t a_tᵀ (N, O, I) for the weight, Σ_t g_t (N, O) for the bias.

        t runs over the input's leading dimensions between the batch and the features.
        """
        g = grads[0]
        a = call.input.to(g.dtype)
        out = {}
        if "weight" in names:
            out["weight"] = torch.einsum("n...o,n...i->noi", g, a)
        if "bias" in names:
            out["bias"] = sum_except(g, keep_last=1)
        return out

    def summed(
        self, call: ModuleCall, grads: list[Tensor], names: Sequence[str]
    ) -> dict[str, Tensor]:
        """Batch gradients Gᵀ A (O, I) for the weight and Σ G (O,) for the bias.

        The rows of G and A are every sample's rows over all leading dimensions.
        """
        g = grads[0]
        out = {}
        if "weight" in names:
            out["weight"] = torch.einsum("...o,...i->oi", g, call.input.to(g.dtype))
        if "bias" in names:
            out["bias"] = g.reshape(-1, g.shape[-1]).sum(0)
        return out

    def partial(self, call: ModuleCall, grads: list[Tensor], names: Sequence[str]) -> Partial:
        """G² (N, O) for 2-D inputs, additive over cotangent vectors; else the chunked default.

        With leading dimensions (a sequence input) the per-sample gradients are formed and squared
        in chunks, as `Rule.partial` does.
        """
        if call.input.dim() != 2:
            return super().partial(call, grads, names)
        return Partial(output_squares=grads[0].square())

    def finalize(
        self, call: ModuleCall, partial: Partial, names: Sequence[str]
    ) -> dict[str, Tensor]:
        """Turn the summed G² into (G²)ᵀ (A²) (O, I) for the weight and Σ_n G² (O,) for the bias.

        A partial from the chunked default is already final and is returned as it is.
        """
        g2 = partial.output_squares
        if g2 is None:
            return partial.squares
        out = {}
        if "weight" in names:
            out["weight"] = g2.T @ call.input.to(g2.dtype).square()
        if "bias" in names:
            out["bias"] = g2.sum(0)
        return out
