"""Fisher information: the diagonal (named estimators, per-layer rules) and K-FAC blocks."""

from ewc.fisher.diagonal import DiagonalFisher
from ewc.fisher.estimator import diagonal_fisher
from ewc.fisher.kfac import kfac_fisher
from ewc.fisher.kinds import FisherKind
from ewc.fisher.kronecker import KroneckerFactors, KroneckerFisher

__all__ = [
    "DiagonalFisher",
    "FisherKind",
    "KroneckerFactors",
    "KroneckerFisher",
    "diagonal_fisher",
    "kfac_fisher",
]
