"""The output-gradient vectors whose back-propagation gives each per-sample Fisher kind.

With logits z and probabilities p = softmax(z), the score of class c with respect to the logits is
∂ log p(c|x)/∂z = e_c − p. Every per-sample kind is a weighted sum of squared scores, so it is
Σ_v (Jᵀ v)² over a few vectors v at the logits (J: the Jacobian of z in the parameters):

- exact:     C − 1 vectors b_j with Σ_j b_j b_jᵀ = diag(p) − p pᵀ, the Hessian of the
             cross-entropy in z (Martens 2020, §9); see `exact_vectors`;
- sample:    v_j = (e_ŷj − p) / √k  for k labels ŷ_j drawn from p;
- empirical: v = e_y − p  with the dataset label y;
- argmax:    v = e_ŷ − p  with ŷ = argmax p.

For sequence outputs (N, T, C) the sample is the sequence; see `score_vectors`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from ewc.fisher.kinds import FisherKind

#: about this many numbers in one block of `exact_vectors` (4 MiB in float32)
VECTOR_BLOCK_ENTRIES = 2**20


def score_vectors(
    logits: Tensor,
    kind: FisherKind,
    *,
    targets: Tensor | None = None,
    mask: Tensor | None = None,
    samples_per_input: int = 1,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> Iterator[Tensor]:
    """Yield the vectors v, shaped like ``logits``; Σ_v Σ_n (Jₙᵀ vₙ)² is N times the Fisher.

    (N, C) logits: one row per sample, as in the module docstring. (N, T, C) logits: a sample is a
    sequence, and its log-likelihood Σ_t log p(y_t | x, y_<t) sums over the tokens that ``mask``
    keeps, so a label-based vector holds the score e_{y_t} − p_t of every kept token at once
    (one backward pass gives each sequence's gradient Σ_t J_tᵀ(e_{y_t} − p_t)). For ``exact`` the
    tokens' cross terms must not enter, so each (token, j) gets its own vector: T (C − 1) of them
    (see `sequence_exact_vectors`). Probabilities are computed in ``dtype`` (default: the logits').
    """
    p = torch.softmax(logits.detach().to(dtype or logits.dtype), dim=-1)
    if logits.dim() == 3:
        yield from _sequence_vectors(p, kind, targets, mask, samples_per_input, generator)
    elif kind is FisherKind.EXACT:
        yield from exact_vectors(p)
    else:
        for labels, weight in _labels(p, kind, targets, samples_per_input, generator):
            yield score(p, labels) * weight


def _labels(
    p: Tensor,
    kind: FisherKind,
    targets: Tensor | None,
    samples_per_input: int,
    generator: torch.Generator | None,
) -> Iterator[tuple[Tensor, float]]:
    """(labels, weight) pairs for the label-based kinds, rows of ``p`` being (…, C)."""
    if kind is FisherKind.SAMPLE:
        draws = _draw(p.reshape(-1, p.shape[-1]), samples_per_input, generator)
        for j in range(samples_per_input):
            yield draws[:, j].reshape(p.shape[:-1]), samples_per_input**-0.5
    elif kind is FisherKind.EMPIRICAL:
        yield targets, 1.0
    elif kind is FisherKind.ARGMAX:
        yield p.argmax(dim=-1), 1.0
    else:
        raise ValueError(f"{kind.value!r} is not a per-sample Fisher kind")


def _draw(p: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """Draw k labels per row from p, on the generator's device, then move them to p's."""
    if generator is not None and generator.device != p.device:
        return torch.multinomial(p.to(generator.device), k, True, generator=generator).to(p.device)
    return torch.multinomial(p, k, replacement=True, generator=generator)


def _sequence_vectors(
    p: Tensor,
    kind: FisherKind,
    targets: Tensor | None,
    mask: Tensor,
    samples_per_input: int,
    generator: torch.Generator | None,
) -> Iterator[Tensor]:
    """The vectors for (N, T, C) probabilities, zero at the tokens ``mask`` leaves out."""
    keep = mask.unsqueeze(-1).to(p.dtype)
    if kind is FisherKind.EXACT:
        yield from sequence_exact_vectors(p, mask)
        return
    flat = p.reshape(-1, p.shape[-1])
    labels = None if targets is None else targets.masked_fill(~mask, 0)
    for drawn, weight in _labels(p, kind, labels, samples_per_input, generator):
        yield score(flat, drawn.reshape(-1)).view_as(p) * keep * weight


def sequence_exact_vectors(p: Tensor, mask: Tensor) -> Iterator[Tensor]:
    """T (C − 1) vectors whose squared back-propagations sum to the exact Fisher of sequences.

    With the inputs fixed (teacher forcing), the tokens' labels are independent categoricals
    y_t ~ p_t, so the sequence score Σ_t s_t has E[(Σ_t s_t)(Σ_u s_u)ᵀ] = Σ_t E[s_t s_tᵀ]: the cross
    terms E[s_t] E[s_u]ᵀ vanish because each E[s_t] = 0. Its diagonal is Σ_t Σ_j (J_tᵀ b_tj)² with
    the b_tj of `exact_vectors`: one vector per (token, j), zero on every other token.
    """
    for t in range(p.shape[1]):
        kept = mask[:, t]
        if not bool(kept.any()):
            continue
        for b in exact_vectors(p[:, t]):
            vector = torch.zeros_like(p)
            vector[:, t] = b * kept.unsqueeze(-1).to(p.dtype)
            yield vector


def exact_vectors(p: Tensor) -> Iterator[Tensor]:
    """C − 1 vectors b_j per sample whose outer products sum to H = diag(p) − p pᵀ.

    The C vectors v_c = √p_c (e_c − p) give H = Σ_c v_c v_cᵀ, but they are linearly dependent:
    Σ_c √p_c v_c = 0, so with k the most probable class, v_k = −V w where V holds the other C − 1
    vectors and w_c = √(p_c / p_k). Then H = V (I + w wᵀ) Vᵀ = B Bᵀ with B = V (I + α w wᵀ),
    α = 1 / (1 + √(1 + ‖w‖²)) (the square root of I + w wᵀ), i.e. b_j = v_j − α w_j v_k. One
    backward pass fewer than the C classes, exactly.

    The vectors are formed in blocks, each a (J, N, C) tensor of J vectors whose rows are yielded
    (J such that a block holds about `VECTOR_BLOCK_ENTRIES` numbers: all C − 1 at once for ten
    classes, a few at a time for a vocabulary): the same element-wise arithmetic as one vector at
    a time (a test checks the bits), without a Python round of gathers and scatters per vector.
    """
    top = p.argmax(dim=-1)
    p_top = p.gather(1, top[:, None])
    v_top = p_top.sqrt() * score(p, top)
    rest = p.scatter(1, top[:, None], 0.0).sum(
        dim=1, keepdim=True
    )  # Σ_{c≠k} p_c, without cancellation
    alpha = 1.0 / (1.0 + (1.0 + rest / p_top).sqrt())
    count = p.shape[1] - 1
    block = max(1, VECTOR_BLOCK_ENTRIES // max(1, p.numel()))
    for start in range(0, count, block):
        j = torch.arange(start, min(start + block, count), device=p.device)[:, None]
        others = (j + (j >= top).long())[..., None]  # (J, N, 1): row j holds each sample's j-th
        # class that is not its top class
        every = p.expand(j.shape[0], *p.shape)
        p_other = every.gather(2, others)
        v_other = p_other.sqrt() * _scores(every, others)
        yield from v_other - alpha * (p_other / p_top).sqrt() * v_top


def _scores(p: Tensor, index: Tensor) -> Tensor:
    """`score` along the last dimension of any shape: e_y − p, 1 − p_y as Σ_{c≠y} p_c."""
    others = p.scatter(-1, index, 0.0).sum(dim=-1, keepdim=True)
    return (-p).scatter(-1, index, others)


def score(p: Tensor, labels: Tensor) -> Tensor:
    """e_y − p for each row, with 1 − p_y computed as Σ_{c≠y} p_c.

    For a confident sample p_y rounds to 1 in float32 and 1 − p_y to 0, while the other
    probabilities keep their small true values; summing them keeps the small Fisher entries that
    the subtraction would lose to rounding.
    """
    return _scores(p, labels[:, None])
