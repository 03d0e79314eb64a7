"""`--tensorboard`: the event files hold the scalars of metrics.jsonl, once even after resume."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

import ewc.experiment.tensorboard as tb
from ewc.cli import main
from ewc.experiment.runner import run_experiment
from ewc.experiment.storage.rundir import Cell
from experiment.test_runner import StopAfter, learnable_digits, tiny_config

event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")

TENSORBOARD = ("output.tensorboard=true", 'compare=["finetune", "ewc"]')


def read_events(folder: Path) -> list[object]:
    """Every Event of a folder's event files, read as TFRecords without TensorBoard.

    A record is: length (uint64, little-endian), its masked CRC (uint32), the Event protobuf,
    the data's masked CRC (uint32).
    """
    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            events.append(event_pb2.Event.FromString(data[at + 12 : at + 12 + length]))
            at += 12 + length + 4
    return events


def scalars(folder: Path) -> list[tuple[str, int, float]]:
    return [
        (value.tag, event.step, value.simple_value)
        for event in read_events(folder)
        for value in event.summary.value
    ]


def expected(run_dir: Path, cell: Cell) -> dict[tuple[str, int], float]:
    """What metrics.jsonl says the cell's curves are: accuracies, losses and penalties by step."""
    points: dict[tuple[str, int], float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if (record.get("seed"), record.get("strategy")) != (cell.seed, cell.strategy):
            continue
        if record["event"] in ("eval", "task_end"):
            for k, accuracy in enumerate(record["accuracies"], start=1):
                points[(f"accuracy/task_{k}", record["step"])] = accuracy
        elif record["event"] == "train":
            points[("train/loss", record["step"])] = record["loss"]
            points[("train/penalty", record["step"])] = record["penalty"]
    return points


def check_matches_metrics(run_dir: Path, cells: list[Cell]) -> None:
    assert sorted(p.name for p in (run_dir / "tensorboard").iterdir()) == sorted(
        c.key for c in cells
    )
    for cell in cells:
        folder = run_dir / "tensorboard" / cell.key
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1
        points = scalars(folder)
        keys = [(tag, step) for tag, step, _ in points]
        assert len(keys) == len(set(keys)), "a scalar written twice"
        want = expected(run_dir, cell)
        assert set(keys) == set(want)
        for tag, step, value in points:
            assert value == pytest.approx(want[(tag, step)], rel=1e-6, abs=1e-7)  # float32
        purges = [e for e in read_events(folder) if e.HasField("session_log")]
        assert [(e.step, e.session_log.status) for e in purges] == [(0, 1)]  # START at 0


def test_the_event_files_hold_the_scalars_of_metrics_jsonl(tmp_path):
    result = run_experiment(tiny_config(*TENSORBOARD), tmp_path / "run", data=learnable_digits())
    cells = [Cell(0, "finetune"), Cell(0, "ewc")]
    check_matches_metrics(result.run_dir, cells)
    tags = {tag for tag, _, _ in scalars(tmp_path / "run" / "tensorboard" / "seed0-ewc")}
    assert tags == {"accuracy/task_1", "accuracy/task_2", "train/loss", "train/penalty"}


def test_a_resumed_run_writes_no_scalar_twice(tmp_path):
    data, config = learnable_digits(), tiny_config(*TENSORBOARD)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tmp_path / "cut", data=data, progress=StopAfter(50))
    # 40 steps a cell: finetune finished, ewc stopped at its step 10 with its scalars so far
    partial = tmp_path / "cut" / "cells" / "seed0-ewc" / "events.jsonl"
    written = [(t, s) for t, s, _ in scalars(tmp_path / "cut" / "tensorboard" / "seed0-ewc")]
    logged = [(p.tag, p.step) for p in tb.scalars(tb.read_log(partial))]
    assert written == logged
    assert max(step for _, step in written) == 8  # eval_every=4: the mirror is live
    run_experiment(config, tmp_path / "cut", resume=True, data=data)
    run_experiment(config, tmp_path / "whole", data=data)
    cells = [Cell(0, "finetune"), Cell(0, "ewc")]
    check_matches_metrics(tmp_path / "cut", cells)
    for cell in cells:
        cut, whole = (
            scalars(tmp_path / name / "tensorboard" / cell.key) for name in ("cut", "whole")
        )
        assert cut == whole


def test_tensorboard_can_be_switched_on_when_resuming(tmp_path, capsys):
    overrides = [
        "benchmark.num_tasks=2",
        "benchmark.train_samples=32",
        "benchmark.test_samples=32",
        "training.epochs=1",
        "training.batch_size=16",
        "training.threads=1",
        "model.hidden=[8]",
        'compare=["finetune"]',
    ]
    assert main(["run", "--out", str(tmp_path / "run"), "--quiet", "--no-report", *overrides]) == 0
    assert not (tmp_path / "run" / "tensorboard").exists()
    arguments = ["run", "--resume", str(tmp_path / "run"), "--quiet", "--no-report"]
    assert main([*arguments, "--tensorboard"]) == 0
    check_matches_metrics(tmp_path / "run", [Cell(0, "finetune")])


def test_without_the_extra_it_says_how_to_install_it_before_anything_runs(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # `import tensorboardX` now fails
    assert main(["run", "--out", str(tmp_path / "run"), "--tensorboard"]) == 1
    assert capsys.readouterr().err == (
        "ewc run: needs tensorboardX, which is not installed; "
        "install it with `pip install 'ewc[tensorboard]'`\n"
    )
    assert not (tmp_path / "run").exists()
