"""The output-gradient vectors whose back-propagation gives each per-sample Fisher kind.

With logits z and probabilities p = softmax(z), the score of class c with respect to the logits is
∂ log p(c|x)/∂z = e_c − p. Every per-sample kind is a weighted sum of squared scores, so it is
Σ_v (Jᵀ v)² over a few vectors v at the logits (J: the Jacobian of z in the parameters):

- exact:     v_c = √p_c (e_c − p)  for each of the C classes  (Σ_c v_c v_cᵀ = diag(p) − p pᵀ,
             the Hessian of the cross-entropy in z; Martens 2020, §9);
- sample:    v_j = (e_ŷj − p) / √k  for k labels ŷ_j drawn from p;
- empirical: v = e_y − p  with the dataset label y;
- argmax:    v = e_ŷ − p  with ŷ = argmax p.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from ewc.fisher.kinds import FisherKind


def score_vectors(
    logits: Tensor,
    kind: FisherKind,
    *,
    targets: Tensor | None = None,
    samples_per_input: int = 1,
    generator: torch.Generator | None = None,
) -> Iterator[Tensor]:
    """Yield the (N, C) vectors v for ``kind``; Σ_v Σ_n (Jₙᵀ vₙ)² is N times the Fisher."""
    p = torch.softmax(logits.detach(), dim=-1)
    if kind is FisherKind.EXACT:
        for c in range(p.shape[1]):
            labels = torch.full((p.shape[0],), c, dtype=torch.long, device=p.device)
            yield p[:, c : c + 1].sqrt() * score(p, labels)
    elif kind is FisherKind.SAMPLE:
        draws = torch.multinomial(p, samples_per_input, replacement=True, generator=generator)
        for j in range(samples_per_input):
            yield score(p, draws[:, j]) / samples_per_input**0.5
    elif kind is FisherKind.EMPIRICAL:
        yield score(p, targets)
    elif kind is FisherKind.ARGMAX:
        yield score(p, p.argmax(dim=-1))
    else:
        raise ValueError(f"{kind.value!r} is not a per-sample Fisher kind")


def score(p: Tensor, labels: Tensor) -> Tensor:
    """e_y − p for each row, with 1 − p_y computed as Σ_{c≠y} p_c.

    For a confident sample p_y rounds to 1 in float32 and 1 − p_y to 0, while the other
    probabilities keep their small true values; summing them keeps the small Fisher entries that
    the subtraction would lose to rounding.
    """
    index = labels[:, None]
    others = p.scatter(1, index, 0.0).sum(dim=1, keepdim=True)
    return (-p).scatter(1, index, others)
