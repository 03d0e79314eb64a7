"""The five diagonal Fisher estimators that `ewc` computes, each under its own name.

For a classifier with softmax probabilities p(c|x) over C classes and N inputs x_n, the diagonal
entry for parameter θ_i is (shared/REFERENCES.md §2):

- ``exact``:     F_i = (1/N) Σ_n Σ_c p(c|x_n) (∂ log p(c|x_n)/∂θ_i)²
  The true Fisher diagonal (the expectation over the model's own predictive distribution).
- ``sample``:    F_i = (1/N) Σ_n (1/k) Σ_{j≤k} (∂ log p(ŷ_nj|x_n)/∂θ_i)²,  ŷ_nj ~ p(·|x_n)
  An unbiased Monte Carlo estimate of ``exact`` with k labels drawn per input.
- ``empirical``: F_i = (1/N) Σ_n (∂ log p(y_n|x_n)/∂θ_i)² with the dataset label y_n
  The "empirical Fisher" (Kunstner et al. 2019): a different quantity, not an estimate of ``exact``.
- ``argmax``:    the same with ŷ_n = argmax_c p(c|x_n) (what the classic ewc.pytorch code computes).
- ``batched``:   F_i = (1/M) Σ_{batches b} (∂ mean_{n∈b} log p(y_n|x_n)/∂θ_i)²
  The square of a mini-batch mean gradient; about 1/B of ``empirical`` for batch size B. Some
  libraries call it "the Fisher"; here it keeps its own name, so λ is never carried across kinds.
"""

from __future__ import annotations

from ewc._choices import Choice


class FisherKind(Choice):
    """Which diagonal Fisher an estimate is; the formulas are in this module's docstring."""

    __noun__ = ("Fisher kind", "kinds")

    EXACT = "exact"
    SAMPLE = "sample"
    EMPIRICAL = "empirical"
    ARGMAX = "argmax"
    BATCHED = "batched"

    @property
    def per_sample(self) -> bool:
        """True when the estimate squares per-sample gradients (all kinds but ``batched``)."""
        return self is not FisherKind.BATCHED

    @property
    def uses_labels(self) -> bool:
        """True when the dataset's labels enter the estimate."""
        return self in (FisherKind.EMPIRICAL, FisherKind.BATCHED)
