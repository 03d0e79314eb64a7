"""Per-layer rules for squared per-sample gradients, looked up by the module's exact type.

Exact types, not `isinstance`: a subclass may override ``forward`` and so break a closed form;
such modules (and every other type) take the `FunctionalRule` fallback, which is always correct.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from ewc.fisher.rules.base import Rule
from ewc.fisher.rules.conv import ConvRule
from ewc.fisher.rules.embedding import EmbeddingRule
from ewc.fisher.rules.functional import FunctionalRule
from ewc.fisher.rules.linear import LinearRule
from ewc.fisher.rules.norm import NORM_RULES

_LINEAR, _CONV = LinearRule(), ConvRule()

RULES: dict[type[nn.Module], Rule] = {
    nn.Linear: _LINEAR,
    NonDynamicallyQuantizableLinear: _LINEAR,
    nn.Conv1d: _CONV,
    nn.Conv2d: _CONV,
    nn.Embedding: EmbeddingRule(),
    **NORM_RULES,
}

FALLBACK: Rule = FunctionalRule()


def rule_for(module: nn.Module) -> Rule:
    """The closed-form rule for ``module``'s exact type, or the torch.func fallback."""
    return RULES.get(type(module), FALLBACK)


__all__ = ["FALLBACK", "RULES", "Rule", "rule_for"]
