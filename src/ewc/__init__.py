"""ewc: Elastic Weight Consolidation that computes the Fisher it names.

The public API, grouped: Fisher estimation, penalties, training.
"""

from ewc._version import __version__
from ewc.fisher import DiagonalFisher, FisherKind, diagonal_fisher
from ewc.penalties import EWC, L2, PenaltyMode, QuadraticPenalty
from ewc.strength import ConvertedStrength, StrengthConvention, convert_strength
from ewc.training import NonFiniteLossError, evaluate, train_epoch

__all__ = [
    "__version__",
    # Fisher information
    "DiagonalFisher",
    "FisherKind",
    "diagonal_fisher",
    # penalties
    "EWC",
    "L2",
    "PenaltyMode",
    "QuadraticPenalty",
    # strength conventions
    "ConvertedStrength",
    "StrengthConvention",
    "convert_strength",
    # training
    "NonFiniteLossError",
    "evaluate",
    "train_epoch",
]
