"""ewc: Elastic Weight Consolidation that computes the Fisher it names.

The public API, grouped: Fisher estimation, penalties, training.
"""

from ewc._version import __version__
from ewc.fisher import DiagonalFisher, FisherKind, diagonal_fisher

__all__ = [
    "__version__",
    # Fisher information
    "DiagonalFisher",
    "FisherKind",
    "diagonal_fisher",
]
