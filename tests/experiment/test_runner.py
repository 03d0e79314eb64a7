"""The runner end to end on tiny synthetic data: files, shared starts, resume, divergence, jobs."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import ewc.experiment.cell
from ewc.data import ImageDataset
from ewc.experiment.config import resolve
from ewc.experiment.outcome import CellOutcome, Divergence
from ewc.experiment.progress import Progress
from ewc.experiment.runner import run_experiment
from ewc.experiment.schedules import lr_factor
from ewc.experiment.storage.checkpoint import load_checkpoint, save_checkpoint
from ewc.experiment.storage.rundir import Cell, RunDirectory, RunDirectoryError
from ewc.report import load_run
from ewc.training import train_step


def learnable_digits(train: int = 160, test: int = 40, seed: int = 0) -> ImageDataset:
    """Noise images with a bright 4×4 block at a position that encodes the class (0..9)."""
    gen = torch.Generator().manual_seed(seed)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % 10
        images = torch.randint(0, 60, (n, 28, 28), generator=gen, dtype=torch.uint8)
        for i, label in enumerate(labels.tolist()):
            row, col = 4 + 8 * (label // 4), 2 + 6 * (label % 4)
            images[i, row : row + 4, col : col + 4] = 255
        return images, labels

    (xs, ys), (xt, yt) = split(train), split(test)
    classes = tuple(str(c) for c in range(10))
    return ImageDataset("mnist", xs, ys, xt, yt, classes, "synthetic blocks (tests)", True)


TINY_RUN = [  # a tiny run with the default strategies
    "benchmark.num_tasks=2",
    "training.epochs=2",
    "training.batch_size=16",
    "training.eval_every=4",
    "training.eval_batch_size=32",
    "training.threads=1",
    "training.lr_schedule=constant",  # 20 steps a task: learn at the full rate
    "checkpoint_every=3",
    "model.hidden=[32]",
]
TINY = [
    *TINY_RUN,
    'compare=["finetune", "l2", "ewc", "online-ewc"]',
    "strategies.online-ewc.gamma=0.9",
]


def replaced(base: list[str], *extra: str) -> list[str]:
    """``base`` without the overrides whose keys ``extra`` sets, then ``extra``: a key may be
    given only once (`ewc.experiment.config.parse_overrides`)."""
    keys = {item.partition("=")[0] for item in extra}
    return [item for item in base if item.partition("=")[0] not in keys] + list(extra)


def tiny_config(*extra: str):
    return resolve(overrides=replaced(TINY, *extra))


def final_parameters(run_dir, cell: Cell) -> dict[str, torch.Tensor]:
    checkpoints = sorted((run_dir / "cells" / cell.key / "checkpoints").glob("*.safetensors"))
    return load_checkpoint(checkpoints[-1])["model"]


def events(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_run_writes_every_file_and_starts_every_strategy_alike(tmp_path):
    config = tiny_config()
    result = run_experiment(config, tmp_path / "run", data=learnable_digits())
    run = tmp_path / "run"
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["config_hash"] == config.hash()
    assert recorded["tasks"] == ["permutation 1 (identity)", "permutation 2"]
    assert recorded["data"]["is_subset"] is True
    assert set(recorded["versions"]) == {"ewc", "torch", "python"}
    rows = {cell.strategy: m for cell, m in result.matrices.items()}
    assert len({tuple(m[0]) for m in rows.values()}) == 1  # the same untrained model for everyone
    assert all(len(m) == 3 and len(m[0]) == 2 for m in rows.values())
    assert rows["finetune"][1][0] > 0.8  # the data is learnable: task 1 is learned
    csv = (run / "accuracy" / "seed0_ewc.csv").read_text().splitlines()
    assert csv[0] == "after,task 1,task 2"
    assert [line.split(",")[0] for line in csv[1:]] == ["untrained", "task 1", "task 2"]
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["strategies"]) == {"finetune", "l2", "ewc", "online-ewc"}
    assert summary["strategies"]["ewc"]["ACC"]["mean"] == pytest.approx(sum(rows["ewc"][2]) / 2)
    assert summary["strategies"]["ewc"]["ACC"]["sem"] is None  # one seed: no spread to report
    kinds = {e["event"] for e in events(run)}
    assert {"eval", "task_end", "train"} <= kinds
    task_ends = [e for e in events(run) if e["event"] == "task_end" and e["strategy"] == "ewc"]
    assert [e["task"] for e in task_ends] == [0, 1, 2]
    assert [e["accuracies"] for e in task_ends] == rows["ewc"]


def test_the_optimizer_follows_the_schedule_within_every_task(tmp_path, monkeypatch):
    seen: list[float] = []

    def recording_train_step(model, batch, optimizer, **kwargs):
        seen.append(optimizer.param_groups[0]["lr"])
        return train_step(model, batch, optimizer, **kwargs)

    monkeypatch.setattr(ewc.experiment.cell, "train_step", recording_train_step)
    config = tiny_config(
        'compare=["finetune"]', "training.lr_schedule=cosine", "training.warmup_steps=3"
    )
    run_experiment(config, tmp_path / "run", data=learnable_digits())
    steps = 2 * 160 // 16  # epochs × batches per epoch
    one_task = [config.training.lr * lr_factor("cosine", k, steps, 3) for k in range(steps)]
    assert seen == one_task * 2


def test_a_new_run_never_overwrites_an_existing_directory(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "precious.txt").write_text("keep me")
    with pytest.raises(RunDirectoryError, match="already exists and is not empty"):
        run_experiment(tiny_config(), tmp_path / "run", data=learnable_digits())
    assert (tmp_path / "run" / "precious.txt").read_text() == "keep me"


def test_resume_refuses_another_config_or_other_data(tmp_path):
    run_experiment(tiny_config(), tmp_path / "run", data=learnable_digits())
    with pytest.raises(RunDirectoryError, match="was run with another config"):
        run_experiment(
            tiny_config("training.epochs=3"), tmp_path / "run", resume=True, data=learnable_digits()
        )
    with pytest.raises(RunDirectoryError, match="was run on other data"):
        run_experiment(tiny_config(), tmp_path / "run", resume=True, data=learnable_digits(seed=1))


class StopAfter(Progress):
    """Interrupts the run after a given number of optimizer steps, like a kill would."""

    def __init__(self, steps: int):
        self.left = steps

    def step(self, *args) -> None:
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt


@pytest.mark.parametrize("stop", [1, 5, 9, 13, 21])
def test_an_interrupted_run_resumes_bitwise(tmp_path, stop):
    data = learnable_digits()
    config = tiny_config(
        'compare=["ewc", "online-ewc"]', "training.lr_schedule=cosine", "training.warmup_steps=7"
    )
    reference = run_experiment(config, tmp_path / "whole", data=data)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tmp_path / "cut", data=data, progress=StopAfter(stop))
    resumed = run_experiment(config, tmp_path / "cut", resume=True, data=data)
    assert resumed.matrices == reference.matrices
    for cell in reference.matrices:
        whole, cut = (
            final_parameters(tmp_path / "whole", cell),
            final_parameters(tmp_path / "cut", cell),
        )
        assert all(torch.equal(whole[name], cut[name]) for name in whole)
    assert events(tmp_path / "cut") == events(tmp_path / "whole")


def test_a_corrupted_checkpoint_falls_back_to_the_previous_one(tmp_path):
    data, config = learnable_digits(), tiny_config('compare=["ewc"]')
    reference = run_experiment(config, tmp_path / "whole", data=data)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tmp_path / "cut", data=data, progress=StopAfter(11))
    newest = sorted(
        (tmp_path / "cut" / "cells" / "seed0-ewc" / "checkpoints").glob("*.safetensors")
    )[-1]
    newest.write_bytes(newest.read_bytes()[:-100])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = run_experiment(config, tmp_path / "cut", resume=True, data=data)
    assert any(newest.name in str(w.message) for w in caught)
    assert resumed.matrices == reference.matrices


def interrupted(tmp_path, config, data, stop: int = 11):
    """The run directory of ``config`` stopped after ``stop`` optimizer steps, as a kill would."""
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tmp_path / "cut", data=data, progress=StopAfter(stop))
    return tmp_path / "cut"


def test_a_resume_refuses_checkpoints_of_another_model(tmp_path, monkeypatch):
    data, config = learnable_digits(), tiny_config('compare=["ewc"]')
    cut = interrupted(tmp_path, config, data)
    original = ewc.experiment.cell.build_model

    def other_initialisation(*args, **kwargs):  # the model code changed between the two runs
        model = original(*args, **kwargs)
        with torch.no_grad():
            next(model.parameters())[0, 0] += 1.0
        return model

    monkeypatch.setattr(ewc.experiment.cell, "build_model", other_initialisation)
    with pytest.raises(RunDirectoryError, match="was trained from another model"):
        run_experiment(config, cut, resume=True, data=data)


def test_a_checkpoint_that_does_not_fit_the_model_is_a_named_error(tmp_path, monkeypatch):
    """A checkpoint of an earlier version (no model fingerprint) and a model of another width."""
    data, config = learnable_digits(), tiny_config('compare=["ewc"]')
    cut = interrupted(tmp_path, config, data)
    for path in (cut / "cells" / "seed0-ewc" / "checkpoints").glob("*.safetensors"):
        tree = load_checkpoint(path)
        del tree["model_fingerprint"]
        save_checkpoint(path, tree)
    original = ewc.experiment.cell.build_model
    monkeypatch.setattr(
        ewc.experiment.cell,
        "build_model",
        lambda *args, **kwargs: original(*args, **{**kwargs, "hidden": (48,)}),
    )
    with pytest.raises(RunDirectoryError, match=r"does not fit the model built now: .*size"):
        run_experiment(config, cut, resume=True, data=data)


def test_a_resume_refuses_an_event_log_shorter_than_its_checkpoint(tmp_path):
    data, config = learnable_digits(), tiny_config('compare=["ewc"]')
    cut = interrupted(tmp_path, config, data)
    log = cut / "cells" / "seed0-ewc" / "events.jsonl"
    log.unlink()
    with pytest.raises(RunDirectoryError, match=r"holds 0 bytes but checkpoint .* recorded"):
        run_experiment(config, cut, resume=True, data=data)
    assert log.stat().st_size == 0  # not padded with zero bytes


def test_a_resume_trains_on_with_the_recorded_thread_count(tmp_path):
    unpinned = [o for o in TINY if not o.startswith("training.threads=")]  # threads: null
    data, config = learnable_digits(), resolve(overrides=replaced(unpinned, 'compare=["ewc"]'))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        reference = run_experiment(config, tmp_path / "whole", data=data)
        cut = interrupted(tmp_path, config, data)
        torch.set_num_threads(2)
        resumed = run_experiment(config, cut, resume=True, data=data)
        assert torch.get_num_threads() == 2  # pinned for the resumed cell only
    finally:
        torch.set_num_threads(before)
    assert resumed.matrices == reference.matrices
    notes = [e["message"] for e in events(cut) if e["event"] == "note"]
    assert notes == [
        "resumed with 1 threads, as the checkpoint recorded (this process had 2): the sums of "
        "every step then run in the same order as before the stop"
    ]
    assert [e for e in events(cut) if e["event"] != "note"] == events(tmp_path / "whole")
    summaries = [json.loads((d / "summary.json").read_text()) for d in (tmp_path / "whole", cut)]
    assert [s["resumed"] for s in summaries] == [False, True]  # wall_time_s: the last process's


def test_a_finished_run_resumes_without_training_again(tmp_path):
    data, config = learnable_digits(), tiny_config('compare=["finetune"]')
    first = run_experiment(config, tmp_path / "run", data=data)
    again = run_experiment(config, tmp_path / "run", resume=True, data=data, progress=StopAfter(1))
    assert again.matrices == first.matrices


def test_divergence_is_reported_and_the_other_strategies_finish(tmp_path):
    config = tiny_config(
        "training.optimizer=sgd",
        "training.lr=1.0",
        "strategies.ewc.strength=1e12",
        'compare=["finetune", "ewc"]',
    )
    result = run_experiment(config, tmp_path / "run", data=learnable_digits())
    (message,) = result.diverged.values()
    assert message.startswith("task 2, epoch 1, step")
    assert "the loss is not finite" in message
    assert [c.strategy for c in result.matrices] == ["finetune"]
    notes = [e["message"] for e in events(tmp_path / "run") if e["event"] == "note"]
    assert any("plain SGD on the penalty diverges" in note for note in notes)
    assert any(note.startswith("diverged: task 2") for note in notes)
    assert "seed0-ewc" in json.loads((tmp_path / "run" / "summary.json").read_text())["incomplete"]
    again = run_experiment(config, tmp_path / "run", resume=True, data=learnable_digits())
    assert again.diverged == result.diverged


def test_unknown_strategies_are_refused_before_any_training(tmp_path):
    with pytest.raises(ValueError, match=r"compare names \['lwf'\] but only"):
        run_experiment(tiny_config('compare=["lwf"]'), tmp_path / "run", data=learnable_digits())
    with pytest.raises(ValueError, match="strategy 'mine' has unknown type 'lwf'"):
        run_experiment(
            tiny_config('strategies.mine={type="lwf"}', 'compare=["mine"]'),
            tmp_path / "r2",
            data=learnable_digits(),
        )
    with pytest.raises(ValueError, match=r"unknown config key 'strategies\.ewc\.lambda'"):
        run_experiment(
            tiny_config("strategies.ewc.lambda=3"), tmp_path / "r3", data=learnable_digits()
        )
    assert not (tmp_path / "run").exists()


def test_two_worker_processes_give_the_same_results(tmp_path):
    data, config = learnable_digits(), tiny_config('compare=["finetune", "ewc"]')
    sequential = run_experiment(config, tmp_path / "one", data=data)
    parallel = run_experiment(config, tmp_path / "two", data=data, jobs=2)
    assert parallel.matrices == sequential.matrices


def test_run_directory_refuses_a_folder_without_config(tmp_path):
    with pytest.raises(RunDirectoryError, match=r"has no config\.json"):
        RunDirectory.open(tmp_path)


def test_a_checkpoint_without_a_schedule_state_still_resumes_bitwise(tmp_path):
    """Checkpoints written before the schedule was a `LambdaLR` hold no "scheduler" entry."""
    data = learnable_digits()
    config = tiny_config(
        'compare=["ewc"]', "training.lr_schedule=cosine", "training.warmup_steps=7"
    )
    reference = run_experiment(config, tmp_path / "whole", data=data)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tmp_path / "cut", data=data, progress=StopAfter(8))
    folder = tmp_path / "cut" / "cells" / "seed0-ewc" / "checkpoints"
    for path in folder.glob("*.safetensors"):
        state = load_checkpoint(path)
        assert "scheduler" in state
        del state["scheduler"]
        save_checkpoint(path, state)
    resumed = run_experiment(config, tmp_path / "cut", resume=True, data=data)
    assert resumed.matrices == reference.matrices
    whole, cut = (final_parameters(tmp_path / p, Cell(0, "ewc")) for p in ("whole", "cut"))
    assert all(torch.equal(whole[name], cut[name]) for name in whole)


def test_finetune_stops_at_a_non_finite_loss_and_every_file_says_where(tmp_path):
    config = tiny_config("training.optimizer=sgd", "training.lr=1e12", 'compare=["finetune"]')
    result = run_experiment(config, tmp_path / "run", data=learnable_digits())
    (message,) = result.diverged.values()
    assert message.startswith("task 1, epoch 1, step ")
    assert "the loss is not finite" in message
    assert "lower the learning rate, or check" in message  # no penalty: not the strength
    (outcome,) = result.outcomes
    assert outcome.rows is None
    assert outcome.divergence is not None
    (diverged,) = [e for e in events(tmp_path / "run") if e["event"] == "diverged"]
    assert (diverged["task"], diverged["step"]) == (1, outcome.divergence.step)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["diverged"]["seed0-finetune"]["step"] == outcome.divergence.step
    assert "seed0-finetune" in summary["incomplete"]
    problems = load_run(tmp_path / "run").problems
    where = f"seed 0 · finetune diverged at task 1, step {outcome.divergence.step}"
    assert any(p.startswith(where) for p in problems)
    assert not any(p.startswith("summary.json leaves out seed0-finetune") for p in problems)


def test_bad_jobs_create_nothing(tmp_path):
    with pytest.raises(ValueError, match="jobs must be a positive integer; got 0"):
        run_experiment(tiny_config(), tmp_path / "run", jobs=0, data=learnable_digits())
    assert not (tmp_path / "run").exists()


def test_the_outcome_is_rows_or_a_divergence():
    with pytest.raises(ValueError, match="either rows or a divergence"):
        CellOutcome(Cell(0, "ewc"))
    old = Divergence.from_json({"message": "task 2, epoch 1, step 37: batch 3: not finite"})
    assert old == Divergence(2, 1, 37, "batch 3: not finite")
    assert Divergence.from_json(old.to_json()) == old
