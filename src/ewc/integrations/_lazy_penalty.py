"""The EWC penalty a framework callback holds: made on the first model the framework hands over.

Frameworks build the callback before they know the model, and restore a checkpoint's callback
state before training starts; so the penalty is created on first use, and a state restored before
that waits for it. One callback serves one model: the penalty anchors that model's parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ewc.penalties import EWC, PenaltyMode


class LazyPenalty:
    """An `ewc.EWC` with the given settings, on the first model `for_model` sees.

    Args:
        strength: λ (checked now, by the penalty's own checks).
        mode: ``"separate"`` or ``"online"``.
        gamma: the online decay γ.
        model_noun: what the framework calls the model, for the error messages.
    """

    def __init__(self, strength: float, mode: PenaltyMode, gamma: float, model_noun: str):
        EWC(nn.Linear(1, 1), strength=strength, mode=mode, gamma=gamma)  # the checks, now
        self.strength, self.mode, self.gamma = float(strength), mode, float(gamma)
        self.model_noun = model_noun
        self.penalty: EWC | None = None
        self._pending: Mapping[str, Any] | None = None

    def for_model(self, model: nn.Module) -> EWC:
        """The penalty on ``model``, created (with any waiting state) on first use."""
        if self.penalty is None:
            self.penalty = EWC(model, strength=self.strength, mode=self.mode, gamma=self.gamma)
            if self._pending is not None:
                self.penalty.load_state_dict(self._pending)
                self._pending = None
        elif self.penalty.model is not model:
            raise ValueError(
                f"this EWCCallback holds the penalty of another {self.model_noun}; use one "
                f"callback per {self.model_noun} (the penalty anchors that {self.model_noun}'s "
                "parameters)"
            )
        return self.penalty

    def state(self) -> Mapping[str, Any] | None:
        """The penalty's `state_dict`, the one waiting for it, or None before either exists."""
        if self.penalty is not None:
            return self.penalty.state_dict()
        return self._pending

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a penalty state now, or when the model arrives."""
        if self.penalty is not None:
            self.penalty.load_state_dict(state)
        else:
            self._pending = state
