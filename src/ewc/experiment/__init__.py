"""The experiment kit behind ``ewc run``: configuration, strategies, cells, the runner, metrics.

Built on the library (`ewc.fisher`, `ewc.penalties`, `ewc.training`) and on `ewc.data`; the library
imports nothing from here. Task streams are in `ewc.experiment.streams`, the run directory and its
checkpoints in `ewc.experiment.storage`.
"""
