"""The contract of a per-layer rule, and the default that derives it from per-sample gradients.

A rule turns one recorded module call (its inputs) and the gradient at its output for one cotangent
vector into Σ_n (∂ℓ_n/∂θ)² for the module's own parameters, where ℓ_n is the per-sample quantity
whose gradient is squared. Rules work in two steps so that a layer can sum over the C − 1 cotangent
vectors of the exact Fisher before doing its expensive product:

- ``partial(call, grads, names)`` → a `Partial`, *additive over cotangent vectors*;
- ``finalize(call, partial, names)`` → {local parameter name: Σ_n (per-sample gradient)²}.

Every rule also provides ``per_sample(call, grads, names)`` → {name: tensor (N, *param.shape)}, the
obviously-correct form, used when a parameter is shared by several calls (the per-sample
gradients of all its uses must be summed before squaring), and ``summed(call, grads, names)`` →
Σ_n per-sample gradient, which must equal autograd's gradient of the call's outputs for the same
vector: the numeric check of `ewc.fisher.verify`.

Names may be dotted (``out_proj.weight``) for the functional rule; gradients arrive in the
precision the Fisher is accumulated in, and rules cast the recorded inputs to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import Tensor

from ewc._chunks import sample_ranges
from ewc.fisher.capture import ModuleCall


class UndefinedFisherError(ValueError):
    """A module mixes the samples of a batch by design: a per-sample Fisher is undefined for it."""


#: Largest number of per-sample entries materialised at once (2**22 floats = 16 MiB in fp32).
#: Blocks above 32 MiB are mmap-ed afresh by glibc on every allocation, and their page faults
#: measured slower than the arithmetic (CNN, batch 256: 1.6-1.7x a training epoch at 2**24, 1.3x
#: at 2**22).
PER_SAMPLE_BUDGET = 2**22


@dataclass
class Partial:
    """What a rule accumulates for one call over the cotangent vectors, before `Rule.finalize`.

    Attributes:
        squares: local parameter name → Σ_n (per-sample gradient)², already final.
        output_squares: Σ_v G_v², the squared gradients at the layer's output (N, O), for a rule
            that forms its parameters' squares from them once, in ``finalize`` (a Linear layer's
            (G²)ᵀ (A²)); None when the rule has none.
    """

    squares: dict[str, Tensor] = field(default_factory=dict)
    output_squares: Tensor | None = None

    @property
    def is_empty(self) -> bool:
        """True before anything was added."""
        return not self.squares and self.output_squares is None

    def add_(self, other: Partial) -> Partial:
        """Add ``other`` in place (the sum over cotangent vectors); returns self.

        The first tensors added are kept and later ones added into them, so ``other`` hands its
        tensors over: a rule's ``partial`` returns fresh tensors, never views of its inputs.
        """
        for name, value in other.squares.items():
            if name in self.squares:
                self.squares[name].add_(value)
            else:
                self.squares[name] = value
        if other.output_squares is not None:
            if self.output_squares is None:
                self.output_squares = other.output_squares
            else:
                self.output_squares.add_(other.output_squares)
        return self


class Rule:
    """Squared per-sample gradients for the parameters of one kind of module."""

    def per_sample(
        self, call: ModuleCall, grads: list[Tensor], names: Sequence[str]
    ) -> dict[str, Tensor]:
        """Per-sample gradients {name: (N, *param.shape)} for the cotangent behind ``grads``."""
        raise NotImplementedError

    def partial(self, call: ModuleCall, grads: list[Tensor], names: Sequence[str]) -> Partial:
        """Σ_n (per-sample gradient)², computed over chunks of samples to bound memory.

        Every rule's ``partial`` returns fresh tensors: `Partial.add_` adds into them in place.
        """
        return Partial(self._chunked_sums(call, grads, names, square=True))

    def summed(
        self, call: ModuleCall, grads: list[Tensor], names: Sequence[str]
    ) -> dict[str, Tensor]:
        """Σ_n per-sample gradient: what autograd's gradient of the call's outputs must equal."""
        return self._chunked_sums(call, grads, names, square=False)

    def _chunked_sums(
        self, call: ModuleCall, grads: list[Tensor], names: Sequence[str], *, square: bool
    ) -> dict[str, Tensor]:
        size = grads[0].shape[0]
        per_sample_numel = sum(call.module.get_parameter(name).numel() for name in names)
        totals: dict[str, Tensor] = {}
        for start, stop in sample_ranges(size, per_sample_numel, PER_SAMPLE_BUDGET):
            part = call.narrow(start, stop, size)
            sliced = [g[start:stop] for g in grads]
            for name, value in self.per_sample(part, sliced, names).items():
                total = (value.square() if square else value).sum(0)
                totals[name] = total if name not in totals else totals[name].add_(total)
        return totals

    def finalize(
        self, call: ModuleCall, partial: Partial, names: Sequence[str]
    ) -> dict[str, Tensor]:
        """Turn the accumulated ``partial`` into {name: Σ_n (per-sample gradient)²}."""
        return partial.squares


def sum_except(tensor: Tensor, keep_last: int) -> Tensor:
    """Sum over every dimension between the batch dimension and the last ``keep_last`` ones."""
    middle = tuple(range(1, tensor.dim() - keep_last))
    return tensor.sum(middle) if middle else tensor
