"""The Kronecker part of an EWC penalty: Σ_t s_t Σ_layers vec(θ − θ*_t)ᵀ (G_t ⊗ A_t) vec(θ − θ*_t).

A sum of Kronecker products is not a Kronecker product, so unlike the diagonal part (merged into
one quadratic by `ewc.penalties`) the tasks' blocks are kept as they are: the value is exact, and
a call costs one pair of small matrix products per layer and task. Modes:

- separate (Kirkpatrick et al. 2017): one term per task, each at its own anchor θ*_t, s_t = 1.
- online (Schwarz et al. 2018): s_t ← γ s_t for the old terms at each consolidation and every
  term's anchor moves to the latest θ*, i.e. Σ_t γ^(T−t) F_t (θ − θ*_T)², F_t = G_t ⊗ A_t.

Ritter et al. (2018) instead sum the factors, (Σ_t A_t) ⊗ (Σ_t G_t), to keep one block per layer:
cheaper, but it is not the sum of the tasks' terms (it adds cross products A_s ⊗ G_t), so it is
not done here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ewc.fisher.kronecker import KroneckerFactors


@dataclass
class _Term:
    """One task's blocks with their weight s_t and the anchor θ* they are centred at."""

    scale: float
    anchor: dict[str, Tensor]
    blocks: list[KroneckerFactors]


@dataclass
class KroneckerTerms:
    """The Kronecker terms of every consolidated task (see the module docstring)."""

    terms: list[_Term] = field(default_factory=list)

    def add(
        self,
        blocks: list[KroneckerFactors],
        anchors: Mapping[str, Tensor],
        gamma: float,
        online: bool,
    ) -> None:
        """Consolidate one task: its blocks at the current parameters ``anchors``."""
        names = [name for block in blocks for name in block.names]
        anchor = {name: anchors[name].detach().clone() for name in names}
        if online:
            for term in self.terms:
                term.scale *= gamma
                term.anchor = {name: anchors[name].detach().clone() for name in term.anchor}
        self.terms.append(_Term(1.0, anchor, list(blocks)))

    def value_and_gradient(self, params: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Σ_t s_t Σ_blocks vec(Δ)ᵀ (G ⊗ A) vec(Δ), and its gradient 2 s_t G Δ A per parameter."""
        value = torch.zeros((), dtype=torch.float64)
        gradients: dict[str, Tensor] = {}
        for term in self.terms:
            for block in term.blocks:
                delta = block.stacked(params) - block.stacked(term.anchor)
                delta = delta.to(block.input_factor.dtype)
                quadratic, gradient = block.quadratic(delta)
                value = value + term.scale * quadratic.to(torch.float64)
                for name, part in block.unstacked(term.scale * gradient).items():
                    part = part.to(params[name].dtype)
                    gradients[name] = part if name not in gradients else gradients[name] + part
        return value, gradients

    def state_dict(self) -> list[dict[str, Any]]:
        """The terms as plain data (tensors, numbers, strings, lists)."""
        return [
            {
                "scale": term.scale,
                "anchor": dict(term.anchor),
                "blocks": [_block_state(block) for block in term.blocks],
            }
            for term in self.terms
        ]

    def load_state_dict(self, state: list[Mapping[str, Any]]) -> None:
        """Restore a `state_dict()`."""
        self.terms = [
            _Term(
                float(item["scale"]),
                {name: t.detach().clone() for name, t in item["anchor"].items()},
                [_block_from_state(block) for block in item["blocks"]],
            )
            for item in state
        ]

    def to(self, *args: Any, **kwargs: Any) -> None:
        """Move or cast every tensor like `Tensor.to`, in place."""
        for term in self.terms:
            term.anchor = {n: t.to(*args, **kwargs) for n, t in term.anchor.items()}
            term.blocks = [block.to(*args, **kwargs) for block in term.blocks]


def _block_state(block: KroneckerFactors) -> dict[str, Any]:
    return {
        "weight": block.weight,
        "bias": block.bias,
        "input_factor": block.input_factor,
        "output_factor": block.output_factor,
        "weight_shape": list(block.weight_shape),
    }


def _block_from_state(state: Mapping[str, Any]) -> KroneckerFactors:
    return KroneckerFactors(
        state["weight"],
        state["bias"],
        state["input_factor"].detach().clone(),
        state["output_factor"].detach().clone(),
        tuple(int(d) for d in state["weight_shape"]),
    )
