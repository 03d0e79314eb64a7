"""Run a sweep worker: join (or create) the study, run trials until none is left, write results.

Several workers — processes on one machine, or machines sharing a storage URL — run the same
sweep by starting the same command; each takes trials until the grid (or TPE's trial budget) is
used up, then writes the results of all trials so far into its sweep directory::

    sweep.json      the sweep (`SweepSpec`), its study name and storage
    journal.log     the study (unless --storage names another storage)
    trial-NNNN/     one ordinary run directory per trial this worker ran (`ewc report` renders it)
    trials.json     every trial of the study: values, state, metrics, run directory
    results.md      the table, best objective first; results.csv the same as numbers
    best.toml       the best trial's config, for ``ewc run --config best.toml``

A worker that was killed leaves its trial RUNNING; ``resume=True`` (``ewc sweep --resume``) marks
such trials failed and queues their values again, and the new trial continues the old trial's run
directory from its checkpoints. Use it only when no other worker of the study is running.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ewc._atomic import write_text_atomic
from ewc.data import ImageDataset
from ewc.experiment.config import ConfigError
from ewc.experiment.runner import load_data
from ewc.experiment.sweep.config_toml import config_to_toml
from ewc.experiment.sweep.results import TrialRow, best_row, table_csv, table_markdown, trial_rows
from ewc.experiment.sweep.spec import SweepSpec, check_space
from ewc.experiment.sweep.study import next_trial, open_study, requeue_killed, storage_for
from ewc.experiment.sweep.trial import TrialOutcome, run_trial

SWEEP_FILE, TRIALS_FILE, BEST_FILE = "sweep.json", "trials.json", "best.toml"
#: What sweep.json records for a storage URL that holds a password (given again on resume).
HIDDEN_STORAGE = "(given on the command line; it holds a password)"


@dataclass(frozen=True)
class SweepResult:
    """What a worker did and what the study holds now."""

    sweep_dir: Path
    ran: list[TrialOutcome]
    rows: list[TrialRow]
    best: TrialRow | None
    requeued: list[int]


def run_sweep(
    spec: SweepSpec,
    sweep_dir: Path,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    resume: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> SweepResult:
    """Run trials of the sweep ``spec`` until none is left; write the results (see module doc).

    Args:
        spec: the sweep.
        sweep_dir: where the trials' run directories and the results go.
        storage: an Optuna storage URL; None: the journal file in ``sweep_dir``.
        study_name: the study's name in the storage; None: the sweep directory's name.
        resume: take over the trials a killed worker left RUNNING (see the module docstring).
        log: called with one line per finished trial.

    Raises:
        ConfigError: a search key or value is invalid, or ``sweep_dir`` holds another sweep.
        StudyMismatchError: the study belongs to another sweep.
    """
    check_space(spec)
    sweep_dir = Path(sweep_dir)
    name = study_name or sweep_dir.resolve().name
    _check_recorded(spec, sweep_dir)
    study = open_study(spec, storage_for(storage, sweep_dir), name)
    _record(spec, sweep_dir, storage, name)
    requeued = requeue_killed(study) if resume else []
    data = _DataCache()
    ran = []
    while (trial := next_trial(study, spec)) is not None:
        ran.append(run_trial(study, trial, spec, sweep_dir, data.get))
        log(ran[-1].line())
    rows = trial_rows(study)
    best = write_results(rows, spec, sweep_dir)
    return SweepResult(sweep_dir, ran, rows, best, requeued)


def write_results(rows: list[TrialRow], spec: SweepSpec, sweep_dir: Path) -> TrialRow | None:
    """Write trials.json, results.md, results.csv and (with a complete trial) best.toml."""
    best = best_row(rows, spec)
    dimensions = [
        {"key": d.key, "spec": d.spec, "numeric": d.numeric, "log": d.log, "finite": d.finite}
        for d in spec.dimensions()
    ]
    record = {
        "strategy": spec.strategy,
        "objective": spec.objective_choice.metric,
        "direction": spec.objective_choice.direction,
        "dimensions": dimensions,
        "best": None if best is None else best.number,
        "trials": [row.__dict__ for row in rows],
    }
    write_text_atomic(sweep_dir / TRIALS_FILE, json.dumps(record, indent=1) + "\n")
    write_text_atomic(sweep_dir / "results.md", table_markdown(rows, spec))
    write_text_atomic(sweep_dir / "results.csv", table_csv(rows, spec))
    if best is not None:
        params = ", ".join(f"{k} = {v!r}" for k, v in best.params.items())
        header = (
            f"The best trial ({best.number}) of the sweep in {sweep_dir}: {params}.\n"
            f"Run it with: ewc run --config {sweep_dir / BEST_FILE}"
        )
        write_text_atomic(sweep_dir / BEST_FILE, config_to_toml(best.config, header))
    return best


def read_recorded(sweep_dir: Path) -> dict[str, Any]:
    """The ``sweep.json`` of an earlier sweep: its spec, study name and storage.

    Raises:
        ConfigError: ``sweep_dir`` holds no sweep.
    """
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.is_file():
        raise ConfigError(f"{sweep_dir} is not a sweep directory (it has no {SWEEP_FILE})")
    return json.loads(path.read_text(encoding="utf-8"))


def _check_recorded(spec: SweepSpec, sweep_dir: Path) -> None:
    """Refuse a sweep directory that holds another sweep."""
    if not (sweep_dir / SWEEP_FILE).is_file():
        return
    recorded = read_recorded(sweep_dir)
    differences = SweepSpec.from_dict(recorded["spec"]).differences(spec)
    if differences:
        raise ConfigError(
            f"{sweep_dir} holds another sweep (it differs in {', '.join(differences)}); "
            "continue it with `ewc sweep --resume` or choose another --out"
        )


def _record(spec: SweepSpec, sweep_dir: Path, storage: str | None, name: str) -> None:
    """Write sweep.json (once: every worker of the sweep would write the same)."""
    path = sweep_dir / SWEEP_FILE
    if path.is_file():
        return
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record = {"spec": spec.to_dict(), "study": name, "storage": _shareable(storage)}
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")


def _shareable(storage: str | None) -> str | None:
    """The storage URL as recorded: one holding a password is not written to disk."""
    if storage is None or urlsplit(storage).password is None:
        return storage
    return HIDDEN_STORAGE


class _DataCache:
    """Each data set loaded once per worker (trials differ in settings, rarely in data)."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[Any, ...], ImageDataset] = {}

    def get(self, config: Any) -> ImageDataset:
        b = config.benchmark
        key = (b.dataset, b.source, b.data_dir, b.factory)
        if key not in self._loaded:
            self._loaded[key] = load_data(config)
        return self._loaded[key]
