"""`ewc sweep`: a search over config keys on an Optuna study that many workers can share.

`space` parses the search space, `spec` holds the sweep (`SweepSpec`), `study` creates or joins
the study and hands out trials, `trial` runs one trial as an ordinary run, `results` reads the
study into a table and the best config, `config_toml` writes that config, and `driver` runs a
worker from start to end (`run_sweep`). Optuna (the ``sweep`` extra) is imported only when a
sweep runs.
"""

from ewc.experiment.sweep.driver import SweepResult, run_sweep
from ewc.experiment.sweep.space import Dimension, SpaceError, parse_space
from ewc.experiment.sweep.spec import Objective, Sampler, SweepSpec

__all__ = [
    "Dimension",
    "Objective",
    "Sampler",
    "SpaceError",
    "SweepResult",
    "SweepSpec",
    "parse_space",
    "run_sweep",
]
