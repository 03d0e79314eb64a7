"""Diagonal Fisher information: named estimators, per-layer rules, the `DiagonalFisher` result."""

from ewc.fisher.diagonal import DiagonalFisher
from ewc.fisher.estimator import diagonal_fisher
from ewc.fisher.kinds import FisherKind

__all__ = ["DiagonalFisher", "FisherKind", "diagonal_fisher"]
