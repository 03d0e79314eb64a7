"""A sweep in one process on tiny data: the grid once, seeds, best.toml, pruning, resume."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ewc.cli import main
from ewc.experiment.config import resolve
from ewc.experiment.sweep import SweepSpec, run_sweep
from ewc.experiment.sweep.study import grid_points, next_trial, open_study, storage_for
from ewc.experiment.sweep.trial import run_trial
from sweep_helpers import TINY

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402

SPACE = {"strategies.ewc.strength": "log:1..1e4:3"}


def _spec(**kwargs):
    base = resolve(None, [*TINY, 'compare=["ewc"]', "seeds=[0, 1]"]).to_dict()
    return SweepSpec(space=SPACE, base=base, **kwargs)


def test_grid_points_are_every_combination_in_a_seeded_order():
    spec = SweepSpec(space={**SPACE, "strategies.ewc.fisher": "exact,batched"}, base=_spec().base)
    points = grid_points(spec)
    assert len(points) == 6
    assert len({json.dumps(p, sort_keys=True) for p in points}) == 6
    assert points == grid_points(spec)
    reseeded = SweepSpec(**{**spec.to_dict(), "sampler_seed": 1})
    assert sorted(map(str, grid_points(reseeded))) == sorted(map(str, points))


def test_a_killed_worker_is_resumed_and_every_point_completes_once(tmp_path, capsys):
    spec, sweep_dir = _spec(prune=False), tmp_path / "sweep"
    sweep_dir.mkdir()
    study = open_study(spec, storage_for(None, sweep_dir), "sweep")
    killed = next_trial(study, spec)  # taken, then its worker "dies": it stays RUNNING
    assert killed is not None
    result = run_sweep(spec, sweep_dir, resume=True)
    assert result.requeued == [killed.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states[killed.number] == TrialState.FAIL
    strengths = sorted(r.params["strategies.ewc.strength"] for r in result.rows)
    assert strengths == [1.0, 100.0, 10000.0]
    assert {r.state for r in result.rows} == {"complete"}
    for row in result.rows:  # an ordinary run directory with both seeds
        summary = json.loads((tmp_path / row.run_dir / "summary.json").read_text())
        assert len(summary["strategies"]["ewc"]["ACC"]["values"]) == 2
    assert run_sweep(spec, sweep_dir).ran == []  # the same command again: nothing left to run
    with pytest.raises(ValueError, match="another sweep"):
        run_sweep(_spec(prune=False, sampler_seed=3), sweep_dir)

    # best.toml is a config `ewc run --config` accepts, and it reruns the best trial exactly
    best = result.best
    assert best is not None
    assert resolve(sweep_dir / "best.toml").hash() == resolve_dict_hash(best.config)
    rerun = tmp_path / "rerun"
    config = ["--config", str(sweep_dir / "best.toml")]
    assert main(["run", *config, "--out", str(rerun), "--quiet", "--no-report"]) == 0
    again = json.loads((rerun / "summary.json").read_text())["strategies"]["ewc"]["ACC"]
    assert again["values"] == best.metrics["ACC"]["values"]
    capsys.readouterr()


def resolve_dict_hash(config: dict) -> str:
    from ewc.experiment.config import fill_stream_defaults, from_dict

    return fill_stream_defaults(from_dict(config)).hash()


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


def test_a_pruned_trial_keeps_its_run_directory_marked_pruned(tmp_path):
    spec = _spec()
    study = optuna.create_study(direction="maximize", pruner=_AlwaysPrune())
    outcome = run_trial(study, study.ask(), spec, tmp_path)
    assert outcome.state == "pruned"
    assert "after task 1 of seed 0" in outcome.message
    assert json.loads((outcome.run_dir / "pruned.json").read_text())["message"] == outcome.message
    assert (outcome.run_dir / "config.json").is_file()
    (trial,) = study.get_trials()
    assert trial.state == TrialState.PRUNED
    assert trial.intermediate_values == {0: pytest.approx(trial.intermediate_values[0])}


def test_tpe_runs_its_budget_and_minimises_forgetting(tmp_path):
    spec = _spec(sampler="tpe", trials=2, objective="forgetting")
    spec = SweepSpec(**{**spec.to_dict(), "space": {"strategies.ewc.strength": "log:1..1e4"}})
    result = run_sweep(spec, tmp_path / "tpe")
    assert len(result.ran) == 2
    assert result.rows[0].state == "complete"
    study = optuna.load_study(study_name="tpe", storage=storage_for(None, tmp_path / "tpe"))
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    forgetting = [r.metrics["forgetting"]["mean"] for r in result.rows]
    assert result.best.metrics["forgetting"]["mean"] == min(forgetting)


def test_a_diverged_seed_fails_the_trial(tmp_path, monkeypatch):
    from ewc.experiment import runner
    from ewc.experiment.outcome import CellOutcome, Divergence
    from ewc.experiment.storage.rundir import Cell
    from ewc.experiment.sweep import trial as trial_module

    real = runner.run_experiment

    def one_seed_diverges(config, run_dir, **kwargs):  # seed 1 "diverged": only seed 0 counts
        result = real(dataclasses.replace(config, seeds=[0]), run_dir, **kwargs)
        diverged = CellOutcome(Cell(1, "ewc"), divergence=Divergence(2, 1, 3, "the loss is nan"))
        return dataclasses.replace(result, outcomes=(*result.outcomes, diverged))

    monkeypatch.setattr(trial_module, "run_experiment", one_seed_diverges)
    study = optuna.create_study(direction="maximize")
    outcome = run_trial(study, study.ask(), _spec(), tmp_path)
    assert outcome.state == "failed"
    assert outcome.message == "seed1-ewc: task 2, epoch 1, step 3: the loss is nan"
    assert study.get_trials()[0].state == TrialState.FAIL


def test_a_trial_that_raises_is_marked_failed_with_its_error(tmp_path, monkeypatch):
    from ewc.experiment.sweep import trial as trial_module

    def out_of_memory(config, run_dir, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(trial_module, "run_experiment", out_of_memory)
    study = optuna.create_study(direction="maximize")
    with pytest.raises(RuntimeError, match="out of memory"):
        run_trial(study, study.ask(), _spec(), tmp_path)
    (trial,) = study.get_trials()
    assert trial.state == TrialState.FAIL  # not RUNNING for ever, not counted as a budget slot
    assert trial.user_attrs["error"] == "RuntimeError: out of memory"


def test_a_task_incremental_trial_records_no_fwt(tmp_path):
    """summary.json marks FWT not applicable in task-IL; the sweep must not print a number."""
    base = resolve(
        None,
        [*TINY, 'compare=["ewc"]', "seeds=[0]", "benchmark.name=split", "benchmark.scenario=task"],
    ).to_dict()
    spec = SweepSpec(space={"strategies.ewc.strength": "1,10"}, base=base)
    study = optuna.create_study(direction="maximize")
    run_trial(study, study.ask(), spec, tmp_path)
    metrics = study.get_trials()[0].user_attrs["metrics"]
    assert "FWT" not in metrics
    assert "ACC" in metrics


def test_tpe_workers_that_join_one_study_draw_different_points():
    """Each worker builds its sampler from the same --sampler-seed; its draws must differ."""
    from ewc.experiment.sweep.trial import suggest

    base = _spec().base
    spec = SweepSpec(
        space={"strategies.ewc.strength": "log:1..1e6"}, base=base, sampler="tpe", trials=4
    )
    storage = optuna.storages.InMemoryStorage()
    (dimension,) = spec.dimensions()
    draws = []
    for _ in range(2):  # two workers, one after the other, each with its own study handle
        study = open_study(spec, storage, "shared")
        draws.append(suggest(next_trial(study, spec), dimension))
    assert draws[0] != draws[1]


def test_the_pruner_compares_the_latest_value_not_the_best_so_far():
    from ewc.experiment.sweep.study import LatestValueMedianPruner

    study = optuna.create_study(direction="maximize", pruner=LatestValueMedianPruner())
    for _ in range(5):
        good = study.ask()
        for step, value in enumerate([0.95, 0.93, 0.92]):
            good.report(value, step)
        study.tell(good, 0.92)
    bad = study.ask()
    pruned = []
    for step, value in enumerate([0.95, 0.50]):  # running ACC: forgets after the first task
        bad.report(value, step)
        pruned.append(bad.should_prune())
    assert pruned == [False, True]
