"""The output-gradient vectors whose back-propagation gives each per-sample Fisher kind.

With logits z and probabilities p = softmax(z), the score of class c with respect to the logits is
∂ log p(c|x)/∂z = e_c − p. Every per-sample kind is a weighted sum of squared scores, so it is
Σ_v (Jᵀ v)² over a few vectors v at the logits (J: the Jacobian of z in the parameters):

- exact:     C − 1 vectors b_j with Σ_j b_j b_jᵀ = diag(p) − p pᵀ, the Hessian of the
             cross-entropy in z (Martens 2020, §9); see `exact_vectors`;
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
        yield from exact_vectors(p)
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


def exact_vectors(p: Tensor) -> Iterator[Tensor]:
    """C − 1 vectors b_j per sample whose outer products sum to H = diag(p) − p pᵀ.

    The C vectors v_c = √p_c (e_c − p) give H = Σ_c v_c v_cᵀ, but they are linearly dependent:
    Σ_c √p_c v_c = 0, so with k the most probable class, v_k = −V w where V holds the other C − 1
    vectors and w_c = √(p_c / p_k). Then H = V (I + w wᵀ) Vᵀ = B Bᵀ with B = V (I + α w wᵀ),
    α = 1 / (1 + √(1 + ‖w‖²)) (the square root of I + w wᵀ), i.e. b_j = v_j − α w_j v_k. One
    backward pass fewer than the C classes, exactly.
    """
    top = p.argmax(dim=-1)
    p_top = p.gather(1, top[:, None])
    v_top = p_top.sqrt() * score(p, top)
    rest = p.scatter(1, top[:, None], 0.0).sum(
        dim=1, keepdim=True
    )  # Σ_{c≠k} p_c, without cancellation
    alpha = 1.0 / (1.0 + (1.0 + rest / p_top).sqrt())
    for j in range(p.shape[1] - 1):
        others = j + (j >= top).long()  # the j-th class that is not the sample's top class
        p_other = p.gather(1, others[:, None])
        v_other = p_other.sqrt() * score(p, others)
        yield v_other - alpha * (p_other / p_top).sqrt() * v_top


def score(p: Tensor, labels: Tensor) -> Tensor:
    """e_y − p for each row, with 1 − p_y computed as Σ_{c≠y} p_c.

    For a confident sample p_y rounds to 1 in float32 and 1 − p_y to 0, while the other
    probabilities keep their small true values; summing them keeps the small Fisher entries that
    the subtraction would lose to rounding.
    """
    index = labels[:, None]
    others = p.scatter(1, index, 0.0).sum(dim=1, keepdim=True)
    return (-p).scatter(1, index, others)
