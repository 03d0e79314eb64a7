"""ewc: Elastic Weight Consolidation that computes the Fisher it names.

The public API, grouped: Fisher estimation, penalties, training.
"""

from ewc._version import __version__

__all__ = ["__version__"]
