"""Fisher information: the diagonal (named estimators, per-layer rules) and K-FAC blocks."""

from ewc.fisher.diagonal import DiagonalFisher
from ewc.fisher.estimator import diagonal_fisher
from ewc.fisher.identities import FisherIdentities, ScoreMoments, fisher_identities
from ewc.fisher.kfac import kfac_fisher
from ewc.fisher.kinds import FisherKind
from ewc.fisher.kronecker import KroneckerFactors, KroneckerFisher

__all__ = [
    "DiagonalFisher",
    "FisherIdentities",
    "FisherKind",
    "KroneckerFactors",
    "KroneckerFisher",
    "ScoreMoments",
    "diagonal_fisher",
    "fisher_identities",
    "kfac_fisher",
]
