"""The Optuna study of a sweep: its storage, who creates it, and how workers take trials.

Storage: by default a journal file in the sweep directory (Optuna's file storage for several
processes: every change is appended to one log under a file lock, so concurrent workers see one
order of events); or any URL Optuna accepts (``postgresql://…``, ``mysql://…``, ``sqlite:///…``),
so that workers on several machines share one study.

Exactly once: the grid is put into the study as waiting trials, once, by the worker that created
the study (creation is atomic in every storage: one creator wins). A worker takes a waiting trial
by moving it to RUNNING in the storage, which succeeds for one worker only (the step Optuna's own
``Study.ask`` uses for enqueued trials). A worker that finds no waiting trial stops, so no grid
point is run twice and no trial is created beyond the grid. TPE trials are made by
``Study.ask`` while the study holds fewer than ``trials`` trials (workers racing at the end may
add one each; Optuna's ``MaxTrialsCallback`` has the same bound).
"""

from __future__ import annotations

import hashlib
import random
import statistics
import time
from pathlib import Path
from typing import Any

from ewc.experiment.sweep.spec import Sampler, SweepSpec

#: The study's user attribute holding the spec, and the one that says the grid is queued.
SPEC_ATTR, READY_ATTR = "ewc_sweep", "ewc_ready"
#: The study's user attribute listing the trials whose worker was killed (they were re-queued).
KILLED_ATTR = "ewc_killed"
JOURNAL = "journal.log"


class StudyMismatchError(ValueError):
    """A worker's sweep differs from the one its study was created with."""


class StorageError(RuntimeError):
    """The storage URL could not be opened (the message names it, without its password)."""


def storage_for(url: str | None, sweep_dir: Path) -> Any:
    """The Optuna storage of ``url``, or the journal file in ``sweep_dir`` when ``url`` is None."""
    if url is not None:
        return _database(url)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    sweep_dir.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(sweep_dir / JOURNAL)))


def _database(url: str, attempts: int = 3) -> Any:
    """Optuna's storage on the database ``url``, retrying a failed attempt after a pause.

    Workers that start together may race to create its tables (one CREATE TABLE fails), so a
    failed attempt is retried after a pause.
    """
    import optuna
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url)
        except sqlalchemy.exc.SQLAlchemyError as error:
            if attempt + 1 == attempts or isinstance(error, sqlalchemy.exc.ArgumentError):
                first = str(error).strip().splitlines()[0]
                raise StorageError(f"cannot open the storage {_shown(url)}: {first}") from error
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


def _shown(url: str) -> str:
    """``url`` with its password hidden."""
    import sqlalchemy.engine
    import sqlalchemy.exc

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return repr(url.split("@")[-1]) if "@" in url else repr(url)


def open_study(spec: SweepSpec, storage: Any, name: str, wait_s: float = 120.0) -> Any:
    """Create the study ``name`` (queueing the grid) or join it; refuse one of another sweep.

    Raises:
        StudyMismatchError: the study was created by a sweep with another spec.
        TimeoutError: the study exists but its creator never finished queueing the grid.
    """
    import optuna

    direction = spec.objective_choice.direction
    sampler = _sampler(spec)
    pruner = LatestValueMedianPruner() if spec.prune else optuna.pruners.NopPruner()
    try:
        study = optuna.create_study(
            storage=storage, study_name=name, direction=direction, sampler=sampler, pruner=pruner
        )
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        _wait_until_ready(study, wait_s)
        _check_same(study, spec, name)
        return study
    study.set_user_attr(SPEC_ATTR, spec.to_dict())
    if spec.sampler == Sampler.GRID:
        for params in grid_points(spec):
            study.enqueue_trial(params, skip_if_exists=False)
    study.set_user_attr(READY_ATTR, True)
    return study


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every point of the grid, in an order shuffled by ``spec.sampler_seed``."""
    points: list[dict[str, Any]] = [{}]
    for dimension in spec.dimensions():
        points = [{**p, dimension.key: v} for p in points for v in dimension.values or ()]
    random.Random(spec.sampler_seed).shuffle(points)
    return points


def next_trial(study: Any, spec: SweepSpec) -> Any | None:
    """A trial for this worker to run, or None when the sweep has nothing left to start."""
    if spec.sampler == Sampler.GRID:
        return _claim_waiting(study)
    waiting = _claim_waiting(study)
    if waiting is not None:
        return waiting
    if _counted_trials(study) >= (spec.trials or 0):
        return None
    # a sampler seeded afresh for each draw: workers that each start from sampler_seed would
    # otherwise all draw the same first points
    study.sampler = _sampler(spec, draw=len(study.get_trials(deepcopy=False)))
    return study.ask()


def requeue_killed(study: Any) -> list[int]:
    """Mark the study's RUNNING trials as failed (killed) and queue their parameters again.

    Only for a sweep whose workers are all stopped: a RUNNING trial is then one whose worker was
    killed. The new trial records the old one's run directory, so it resumes from its checkpoints.
    Returns the numbers of the re-queued trials.
    """
    from optuna.trial import TrialState

    requeued = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        attrs = {"run_dir": trial.user_attrs["run_dir"]} if "run_dir" in trial.user_attrs else {}
        # a grid trial killed before it set its values still has them as its queued values
        params = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
        study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)
        requeued.append(trial.number)
    if requeued:
        study.set_user_attr(KILLED_ATTR, [*killed_trials(study), *requeued])
    return requeued


def killed_trials(study: Any) -> list[int]:
    """The numbers of the trials that `requeue_killed` marked failed and queued again."""
    return list(study.user_attrs.get(KILLED_ATTR, []))


def _claim_waiting(study: Any) -> Any | None:
    """Move one waiting trial to RUNNING (one worker wins each); None when none is left."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                return optuna.trial.Trial(study, frozen._trial_id)
        except UpdateFinishedTrialError:
            continue
    return None


def _counted_trials(study: Any) -> int:
    """Trials that count towards ``trials``: all but those failed because their worker died."""
    return len(study.get_trials(deepcopy=False)) - len(killed_trials(study))


def _sampler(spec: SweepSpec, draw: int = 0) -> Any:
    """The study's sampler; TPE's seed is derived from ``sampler_seed`` and the draw's number."""
    import optuna

    if spec.sampler == Sampler.TPE:
        digest = hashlib.sha256(f"{spec.sampler_seed}:{draw}".encode()).digest()
        return optuna.samplers.TPESampler(seed=int.from_bytes(digest[:4], "little"))
    # every grid trial is queued with all its values fixed: the sampler never picks a value
    return optuna.samplers.RandomSampler(seed=spec.sampler_seed)


def _wait_until_ready(study: Any, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while not study.user_attrs.get(READY_ATTR):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"study {study.study_name!r} exists but was never made ready (its creator stopped "
                "while queueing the grid?); delete it or use another --study name"
            )
        time.sleep(0.2)


def _check_same(study: Any, spec: SweepSpec, name: str) -> None:
    recorded = SweepSpec.from_dict(study.user_attrs[SPEC_ATTR])
    differences = recorded.differences(spec)
    if differences:
        raise StudyMismatchError(
            f"study {name!r} belongs to another sweep (differs in {', '.join(differences)}); "
            "run the same search, config and options, or use another --study name"
        )


class LatestValueMedianPruner:
    """Prune a trial whose value at a step is worse than the median of the other trials there.

    Optuna's ``MedianPruner`` compares a trial's *best* value so far, and a running ACC is best
    after the first task, before any forgetting: it would almost never prune. This compares the
    latest value, after ``startup`` finished trials (as ``MedianPruner``'s ``n_startup_trials``).
    """

    def __init__(self, startup: int = 5):
        self.startup = startup

    def prune(self, study: Any, trial: Any) -> bool:
        """Whether ``trial``'s latest reported value is worse than the median at its step."""
        import optuna
        from optuna.trial import TrialState

        step = trial.last_step
        if step is None:
            return False
        value = trial.intermediate_values[step]
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        others = [t.intermediate_values[step] for t in finished if step in t.intermediate_values]
        if len(finished) < self.startup or not others:
            return False
        median = statistics.median(others)
        if study.direction == optuna.study.StudyDirection.MAXIMIZE:
            return value < median
        return value > median
