"""λ across libraries: the same EWC penalty written with different strengths.

Every library below adds a quadratic penalty λ · h · Σ_i F_i (θ_i − θ*_i)² to the new task's loss;
they differ in the factor h (1/2 or 1) and in the scale of F (a mean over samples of squared
per-sample gradients, or a mean over mini-batches of squared batch-mean gradients, about 1/B of
the former for batch size B). Two settings protect the old task equally when their penalties are
equal, so λ_to = λ_from · (h_from · s_from) / (h_to · s_to), with s = 1/B for a batched Fisher
and 1 otherwise.

The conventions, as read in each project's source (shared/REFERENCES.md §3 item 4 and §2):

- ``ewc`` (this library; Kirkpatrick et al. 2017, Eq. 3): (λ/2) Σ F (θ − θ*)² with F a mean over
  samples (`ewc.EWC`, any per-sample kind of `ewc.diagonal_fisher`).
- ``ewc-batched``: this library's penalty with ``kind="batched"``: (λ/2), batched F.
- ``avalanche`` (ContinualAI/avalanche, ``avalanche/training/plugins/ewc.py``, ``EWCPlugin``):
  ``ewc_lambda * Σ imp * (θ − θ*)²``, no 1/2; ``imp`` is Σ_batches (gradient of the batch-mean
  cross-entropy)² / number of batches, with the batches of the training mini-batch size.
- ``mammoth`` (aimagelab/mammoth, ``models/ewc_on.py``): ``e_lambda * Σ fish * (θ − θ*)²``, no
  1/2 (its hand-written gradient is ``2 * e_lambda * fish * (θ − θ*)``); ``fish`` sums, one
  sample at a time, p(y|x) · (∂ log p(y|x)/∂θ)² with the dataset label y and divides by the
  number of batches times the batch size (≥ N with a short last batch; ignored here).
- ``ewc.pytorch`` (moskomule/ewc.pytorch, ``utils.py``): ``importance * Σ F * (θ − θ*)²``, no 1/2;
  F a mean over single inputs of squared gradients at the argmax label (``kind="argmax"`` here).
- ``gmvandeven`` (GMvandeVen/continual-learning, ``models/cl/continual_learner.py``):
  ``reg_strength * (1/2) Σ F (θ − θ*)²``; F a per-sample sum over the data divided by the last loop
  index (N − 1 after a full pass: a relative 1/(N − 1), ignored here), by default the exact kind
  (``fisher_labels="all"``). Its online mode also multiplies F by γ inside the penalty, which
  rescales λ by γ (λ · γ here); that is not part of this conversion.

The conversion only changes λ: the Fisher *kind* must match too (argmax, empirical, exact and
Mammoth's probability-weighted squares are different quantities; see `ewc.fisher.kinds`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ewc._choices import Choice


class StrengthConvention(Choice):
    """How a library writes the EWC penalty (the module docstring gives the sources)."""

    __noun__ = ("strength convention", "conventions")

    EWC = "ewc"
    EWC_BATCHED = "ewc-batched"
    AVALANCHE = "avalanche"
    MAMMOTH = "mammoth"
    EWC_PYTORCH = "ewc.pytorch"
    GMVANDEVEN = "gmvandeven"

    @property
    def half(self) -> bool:
        """True when the penalty carries the paper's 1/2: (λ/2) Σ F (θ − θ*)²."""
        return self in (
            StrengthConvention.EWC,
            StrengthConvention.EWC_BATCHED,
            StrengthConvention.GMVANDEVEN,
        )

    @property
    def batched(self) -> bool:
        """True when F squares mini-batch mean gradients (≈ 1/B of the per-sample mean)."""
        return self in (StrengthConvention.EWC_BATCHED, StrengthConvention.AVALANCHE)


@dataclass(frozen=True)
class ConvertedStrength:
    """The result of `convert_strength`: λ in the target convention, and how far to trust it.

    Attributes:
        value: λ in the target convention (``float(result)`` gives it too).
        factor: value / the original λ.
        exact: True when the penalties are equal for any Fisher of the matching kind (only the
            factor 1/2 differs), up to a relative 1/N of the normalisation (GMvandeVen divides
            its sum by N − 1, Mammoth by batches × batch size); False when the
            batched-vs-per-sample scale 1/B entered, which holds only approximately (see
            `convert_strength`).
        note: one sentence saying how ``factor`` was formed.
    """

    value: float
    factor: float
    exact: bool
    note: str

    def __float__(self) -> float:
        return self.value

    def __str__(self) -> str:
        return f"{self.value:g} ({self.note})"


def convert_strength(
    value: float,
    *,
    frm: StrengthConvention | str,
    to: StrengthConvention | str = "ewc",
    batch_size: int | None = None,
) -> ConvertedStrength:
    """Turn an EWC strength λ written in one library's convention into another's.

    λ_to = λ_frm · (h_frm · s_frm) / (h_to · s_to), where h = 1/2 for a penalty with the paper's
    1/2 and 1 without, and s = 1/B for a batched Fisher and 1 for a per-sample mean. The factor 2
    is exact. The factor B is an approximation: the expected square of a mean of B per-sample
    gradients g_n is (1/B) E[g²] + (1 − 1/B) E[g]², so a batched Fisher is about 1/B of the
    empirical one only where the mean gradient is small against its spread (a model trained to
    near its optimum, with batches drawn at random); a smaller last batch and the finite number
    of batches add noise. ``exact`` in the result says which case applies.

    Example:
        >>> ewc.convert_strength(10_000, frm="avalanche", to="ewc", batch_size=128).value
        156.25
        >>> ewc.convert_strength(400, frm="ewc.pytorch").value  # no 1/2 there: λ doubles here
        800.0

    Args:
        value: λ ≥ 0 in the ``frm`` convention.
        frm: the convention λ was written in (`StrengthConvention` or its string).
        to: the convention to write it in; default this library's (``"ewc"``).
        batch_size: B, the mini-batch size of the batched Fisher; required exactly when one of the
            two conventions is batched and the other is not (with both batched, the same B is
            assumed and cancels).

    Returns:
        A `ConvertedStrength` (``.value`` or ``float(...)`` is the new λ).
    """
    source, target = StrengthConvention.parse(frm), StrengthConvention.parse(to)
    _check_strength(value)
    uses_batch = source.batched != target.batched
    _check_batch_size(batch_size, uses_batch, source, target)
    half = (0.5 if source.half else 1.0) / (0.5 if target.half else 1.0)
    scale = 1.0
    if uses_batch:
        scale = 1.0 / batch_size if source.batched else float(batch_size)
    factor = half * scale
    return ConvertedStrength(
        value=float(value) * factor,
        factor=factor,
        exact=not uses_batch,
        note=_note(source, target, half, batch_size if uses_batch else None),
    )


def _check_strength(value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"value must be a finite number ≥ 0 (a strength λ); got {value!r}")
    if value < 0:
        raise ValueError(f"value must be ≥ 0 (a strength λ); got {value}")


def _check_batch_size(
    batch_size: int | None,
    uses_batch: bool,
    source: StrengthConvention,
    target: StrengthConvention,
) -> None:
    if not uses_batch:
        if batch_size is not None:
            raise ValueError(
                f"batch_size={batch_size!r} does not enter a conversion from {source.value!r} to "
                f"{target.value!r} (it matters only when exactly one of them uses a batched "
                "Fisher); leave it None"
            )
        return
    batched = source if source.batched else target
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"batch_size must be the positive mini-batch size of the {batched.value!r} batched "
            f"Fisher (it is about 1/batch_size of a per-sample one); got {batch_size!r}"
        )


def _note(
    source: StrengthConvention, target: StrengthConvention, half: float, batch_size: int | None
) -> str:
    parts = []
    if half != 1.0:
        with_half = source if source.half else target
        parts.append(f"×{half:g} exactly: only {with_half.value!r} carries the 1/2")
    if batch_size is not None:
        direction = f"÷{batch_size}" if source.batched else f"×{batch_size}"
        parts.append(
            f"{direction} approximately: a batched Fisher ≈ 1/B of a per-sample one (B = "
            f"{batch_size}) near an optimum"
        )
    if not parts:
        return "×1: the same penalty"
    return "; ".join(parts)
