"""One trial of a sweep: an ordinary ``ewc run`` of the trial's config, in its own run directory.

The trial's values come from the study (fixed for a grid point, drawn by TPE otherwise); its
config is the sweep's base config with those values set (`trial_config`); it runs every seed of
the base config with `run_experiment`, and its objective is a summary metric (mean over seeds) of
the sweep's strategy. With pruning, after each task of that strategy the running ACC (mean
accuracy on the tasks learned so far) is reported at step ``seed index × T + task``, and the trial
stops when Optuna's MedianPruner says so: its run directory stays, with ``pruned.json`` in it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ewc._atomic import write_text_atomic
from ewc.data import ImageDataset
from ewc.experiment.progress import Progress
from ewc.experiment.runner import load_data, run_experiment
from ewc.experiment.storage.rundir import Cell
from ewc.experiment.sweep.space import Dimension
from ewc.experiment.sweep.spec import Objective, SweepSpec, trial_config

#: The trial's user attributes: its run directory, its resolved config, its strategy's metrics.
RUN_DIR_ATTR, CONFIG_ATTR, METRICS_ATTR = "run_dir", "config", "metrics"
ERROR_ATTR = "error"  # why a trial failed with an exception
PRUNED_FILE = "pruned.json"


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended: ``complete``, ``pruned`` or ``failed``, with its objective value."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    run_dir: Path
    seconds: float
    message: str = ""

    def line(self) -> str:
        """One line for the log: ``trial 3 complete: key=value … → 0.912 (12 s)``."""
        params = " ".join(f"{k}={v}" for k, v in self.params.items())
        value = "" if self.value is None else f" → {self.value:.4f}"
        note = f" ({self.message})" if self.message else ""
        return f"trial {self.number} {self.state}: {params}{value}{note} [{self.seconds:.0f} s]"


def run_trial(
    study: Any,
    trial: Any,
    spec: SweepSpec,
    sweep_dir: Path,
    data_for: Callable[[Any], ImageDataset] = load_data,
) -> TrialOutcome:
    """Run ``trial`` of ``study`` to its end and tell the study how it ended."""
    from optuna import TrialPruned
    from optuna.trial import TrialState

    started = time.perf_counter()
    params = {d.key: suggest(trial, d) for d in spec.dimensions()}
    run_dir = Path(trial.user_attrs.get(RUN_DIR_ATTR) or sweep_dir / f"trial-{trial.number:04d}")
    outcome = _outcome_factory(trial.number, params, run_dir, started)
    try:
        config = trial_config(spec.base, params)
        trial.set_user_attr(RUN_DIR_ATTR, str(run_dir))
        trial.set_user_attr(CONFIG_ATTR, config.to_dict())
        resume = (run_dir / "config.json").is_file()
        result = run_experiment(
            config, run_dir, resume=resume, progress=_progress(trial, spec), data=data_for(config)
        )
    except TrialPruned as pruned:
        write_text_atomic(run_dir / PRUNED_FILE, json.dumps({"message": str(pruned)}) + "\n")
        study.tell(trial, state=TrialState.PRUNED)
        return outcome("pruned", None, str(pruned))
    except Exception as error:  # the study records the failure, then the worker stops with it
        trial.set_user_attr(ERROR_ATTR, f"{type(error).__name__}: {error}")
        study.tell(trial, state=TrialState.FAIL)
        raise
    metrics = result.summary.strategies.get(spec.strategy)
    value = None if metrics is None else metrics[spec.objective_choice.metric]["mean"]
    # a seed that diverged fails the trial: a mean over the other seeds would flatter it
    diverged = [f"{c.key}: {m}" for c, m in result.diverged.items() if c.strategy == spec.strategy]
    if diverged or value is None or not math.isfinite(value):
        why = "; ".join(diverged) or f"no finite {spec.objective_choice.metric}"
        study.tell(trial, state=TrialState.FAIL)
        return outcome("failed", None, why)
    applicable = {m: v for m, v in metrics.items() if m not in result.summary.not_applicable}
    trial.set_user_attr(METRICS_ATTR, _finite(applicable))
    study.tell(trial, value)
    return outcome("complete", value, "")


def suggest(trial: Any, dimension: Dimension) -> Any:
    """The trial's value of ``dimension`` (fixed for a queued grid point, else drawn)."""
    key, low, high = dimension.key, dimension.low, dimension.high
    if dimension.values is not None:
        return trial.suggest_categorical(key, list(dimension.values))
    if dimension.integer:
        return trial.suggest_int(key, int(low), int(high), log=dimension.log)
    return trial.suggest_float(key, low, high, log=dimension.log)


def _outcome_factory(
    number: int, params: dict[str, Any], run_dir: Path, started: float
) -> Callable[[str, float | None, str], TrialOutcome]:
    def outcome(state: str, value: float | None, message: str) -> TrialOutcome:
        seconds = time.perf_counter() - started
        return TrialOutcome(number, state, value, params, run_dir, seconds, message)

    return outcome


def _progress(trial: Any, spec: SweepSpec) -> Progress:
    """Silent progress; with pruning on ACC, one that reports to the pruner after each task."""
    if spec.prune and spec.objective_choice is Objective.ACC:
        return PruningProgress(trial, spec.strategy, spec.base["seeds"])
    return Progress()


class PruningProgress(Progress):
    """Reports the running ACC of ``strategy`` after each task and stops a trial Optuna prunes.

    Running ACC after task t (0-based) = mean_{j ≤ t} R[t+1, j], reported at step
    ``seed index × T + t`` so that trials with the same seeds compare at the same point.
    Raising `optuna.TrialPruned` here ends `run_experiment` (the runner lets it through).
    """

    def __init__(self, trial: Any, strategy: str, seeds: list[int]):
        self.trial, self.strategy, self.seeds = trial, strategy, seeds

    def task_done(self, cell: Cell, task: int, accuracies: list[float]) -> None:
        """Report the running ACC; raise `optuna.TrialPruned` if the pruner says stop."""
        from optuna import TrialPruned

        if cell.strategy != self.strategy:
            return
        running = math.fsum(accuracies[: task + 1]) / (task + 1)
        step = self.seeds.index(cell.seed) * len(accuracies) + task
        self.trial.report(running, step)
        if self.trial.should_prune():
            raise TrialPruned(
                f"running ACC {running:.4f} after task {task + 1} of seed {cell.seed} is below "
                "the median of earlier trials"
            )


def _finite(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics with NaN as None (JSON in every storage)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return clean(metrics)
