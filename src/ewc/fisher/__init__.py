"""Diagonal Fisher information: named estimators, per-layer rules, the `DiagonalFisher` result."""

from ewc.fisher.diagonal import DiagonalFisher
from ewc.fisher.estimator import diagonal_fisher
from ewc.fisher.identities import FisherIdentities, ScoreMoments, fisher_identities
from ewc.fisher.kinds import FisherKind

__all__ = [
    "DiagonalFisher",
    "FisherIdentities",
    "FisherKind",
    "ScoreMoments",
    "diagonal_fisher",
    "fisher_identities",
]
