"""ewc: Elastic Weight Consolidation that computes the Fisher it names.

The public API, grouped: Fisher estimation, penalties, training.
"""

from ewc import _process_group_exit
from ewc._version import __version__
from ewc.fisher import (
    DiagonalFisher,
    FisherIdentities,
    FisherKind,
    KroneckerFisher,
    ScoreMoments,
    diagonal_fisher,
    fisher_identities,
    kfac_fisher,
)
from ewc.mas import MAS, MASGradient, mas_importance
from ewc.penalties import EWC, L2, PenaltyMode, QuadraticPenalty
from ewc.sharding import ShardMode, shard
from ewc.strength import ConvertedStrength, StrengthConvention, convert_strength
from ewc.synaptic_intelligence import SynapticIntelligence
from ewc.training import NonFiniteLossError, evaluate, train_epoch

# Before any process group exists, so that destroy_process_group can end one (see the module).
_process_group_exit.import_before_any_group()

__all__ = [
    "__version__",
    # Fisher information
    "DiagonalFisher",
    "FisherKind",
    "diagonal_fisher",
    "KroneckerFisher",
    "kfac_fisher",
    # several processes: exact shards (the Fisher all-reduces inside a process group)
    "ShardMode",
    "shard",
    # the Fisher identities, measured
    "FisherIdentities",
    "ScoreMoments",
    "fisher_identities",
    # penalties
    "EWC",
    "L2",
    "PenaltyMode",
    "QuadraticPenalty",
    # siblings: importance from the training path (SI) and from the output's sensitivity (MAS)
    "MAS",
    "MASGradient",
    "SynapticIntelligence",
    "mas_importance",
    # strength conventions
    "ConvertedStrength",
    "StrengthConvention",
    "convert_strength",
    # training
    "NonFiniteLossError",
    "evaluate",
    "train_epoch",
]
