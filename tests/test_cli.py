"""The `ewc` command end to end on tiny data: run, report, resume after SIGKILL, bad input."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ewc import __version__
from ewc.cli import main
from ewc.experiment.storage.checkpoint import load_checkpoint

# The embedded MNIST subset cut to a few hundred images: the whole run takes seconds.
TINY = [
    "benchmark.num_tasks=2",
    "benchmark.train_samples=256",
    "benchmark.test_samples=100",
    "training.epochs=2",
    "training.batch_size=32",
    "training.eval_every=4",
    "training.threads=1",
    "training.warmup_steps=4",
    "checkpoint_every=3",
    "model.hidden=[64]",
]


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"ewc {__version__}"
    assert main([]) == 0
    assert "run" in capsys.readouterr().out


def test_run_prints_the_summary_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--strategies", "finetune,ewc", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "strategy" in printed
    assert "finetune" in printed
    assert "ewc" in printed
    assert f"run directory: {out}" in printed
    for name in ("config.json", "metrics.jsonl", "summary.json", "report.html", "report.md"):
        assert (out / name).is_file(), name
    assert json.loads((out / "config.json").read_text())["config"]["compare"] == ["finetune", "ewc"]
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").is_file()


def test_run_with_a_config_file_and_seeds(tmp_path):
    config = tmp_path / "small.toml"
    config.write_text('compare = ["finetune"]\n[training]\nepochs = 1\n')
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "--config",
                str(config),
                "--seeds",
                "0,1",
                "--out",
                str(out),
                "--no-report",
                *TINY[:2],
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["strategies"]["finetune"]["ACC"]["values"]) == 2
    assert summary["strategies"]["finetune"]["ACC"]["sem"] is not None


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["training.epoch=2"], "unknown config key 'training.epoch'"),
        (["benchmark.name=shuffled"], "unknown benchmark 'shuffled'"),
        (["--strategies", "finetune,lwf"], "compare names ['lwf'] but only"),
        (["benchmark.dataset=kmnist", "benchmark.source=cache"], "was not found"),
        (["benchmark.name=split", "benchmark.num_tasks=6"], "num_tasks"),
    ],
)
def test_bad_input_exits_with_a_message(tmp_path, capsys, arguments, message):
    assert main(["run", "--out", str(tmp_path / "run"), *arguments]) == 2
    assert message in capsys.readouterr().err


def test_data_dir_names_the_folder_it_searched(tmp_path, capsys):
    empty = tmp_path / "idx files"
    empty.mkdir()
    assert main(["run", "--out", str(tmp_path / "run"), "--data-dir", str(empty), *TINY]) == 2
    error = capsys.readouterr().err
    assert "was not found" in error
    assert str(empty) in error


def test_an_existing_directory_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["run", "--out", str(out), *TINY]) == 2
    error = capsys.readouterr().err
    assert "already exists and is not empty (and is not a run directory)" in error
    assert "--resume" not in error  # there is no run in it to resume
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # not even a lock file added


def test_a_users_own_lock_file_is_left_alone(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("my lock notes, do not lose")
    assert main(["run", "--out", str(out), *TINY]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert (out / ".lock").read_text() == "my lock notes, do not lose"


def test_a_finished_run_is_not_overwritten_and_resume_is_suggested(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--no-report", "--strategies", "finetune", *TINY]) == 0
    capsys.readouterr()
    assert main(["run", "--out", str(out), "--no-report", "--strategies", "finetune", *TINY]) == 2
    assert f"already holds a run; continue it with `ewc run --resume {out}`" in (
        capsys.readouterr().err
    )


def test_an_empty_strategy_list_and_doubly_set_keys_are_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--strategies=", *TINY]) == 2
    assert "--strategies names no strategy" in capsys.readouterr().err
    assert main(["run", "--out", str(out), "seeds=[5]", "--seeds", "1", *TINY]) == 2
    assert "seeds is set twice, by 'seeds=[5]' and by 'seeds=[1]'" in capsys.readouterr().err
    assert main(["run", "--out", str(out), "strategies.onlinewc.strength=5", *TINY]) == 2
    assert "strategy 'onlinewc' has unknown type 'onlinewc'" in capsys.readouterr().err
    assert not out.exists()


def test_resume_refuses_a_changed_config(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--no-report", "--strategies", "finetune", *TINY]) == 0
    assert main(["run", "--resume", str(out), "--no-report", "training.epochs=3"]) == 2
    error = capsys.readouterr().err
    assert "was run with another config" in error
    assert "differs: training.epochs 2 → 3)" in error  # the override applies to the recorded run
    assert main(["run", "--resume", str(out), "--no-report"]) == 0
    # an unhashed key may change on a resume: it is applied to the recorded config, not defaults
    assert main(["run", "--resume", str(out), "--no-report", "training.eval_samples=10"]) == 0


def test_out_naming_a_file_says_so(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert main(["run", "--out", str(afile), "--no-report", *TINY]) == 2
    assert f"{afile} is a file, not a directory" in capsys.readouterr().err
    assert afile.read_text() == "mine"


def command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "ewc.cli", "run", "--no-report", *arguments, *TINY]


def final_state(run_dir: Path) -> tuple[dict, dict]:
    """The accuracy matrices and the last checkpoint's parameters of every cell."""
    matrices = {p.name: p.read_text() for p in sorted((run_dir / "accuracy").glob("*.csv"))}
    params = {}
    for cell in sorted((run_dir / "cells").iterdir()):
        newest = sorted((cell / "checkpoints").glob("*.safetensors"))[-1]
        params[cell.name] = load_checkpoint(newest)["model"]
    return matrices, params


def event_lines(run_dir: Path) -> int:
    """Events the cells have written so far (what a running `ewc run` reports on disk)."""
    return sum(len(p.read_bytes().splitlines()) for p in run_dir.glob("cells/*/events.jsonl"))


def checkpoints(run_dir: Path) -> set[str]:
    return {p.as_posix() for p in run_dir.glob("cells/*/checkpoints/*.safetensors")}


class NewCheckpoint:
    """Reached when a checkpoint appears that was not there at the first look."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.before = run_dir, None

    def __call__(self) -> bool:
        now = checkpoints(self.run_dir)
        if self.before is None:
            self.before = now
        return bool(now - self.before)


def kill_when(process: subprocess.Popen, reached, patience_s: float = 600.0) -> bool:
    """SIGKILL ``process`` as soon as ``reached()`` holds; False if it ended before that.

    The kill point is an event the run reports (a folder, an event line, a checkpoint), never a
    wall-clock delay, so that a slow or loaded machine moves nothing but the waiting time;
    ``patience_s`` only keeps a hung run from hanging the test.
    """
    deadline = time.monotonic() + patience_s
    while process.poll() is None and time.monotonic() < deadline:
        if reached():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return process.returncode == -signal.SIGKILL
        time.sleep(0.002)
    process.wait()
    return False


def test_sigkill_at_random_points_then_resume_is_bitwise_identical(tmp_path):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    reference = tmp_path / "whole"
    subprocess.run(command("--out", str(reference)), check=True, env=env, capture_output=True)
    total = len((reference / "metrics.jsonl").read_text().splitlines())
    cut = tmp_path / "cut"
    rng = random.Random(20261123)
    early, late = sorted(rng.sample(range(1, total), 2))
    points = [
        ("the run directory exists", cut.exists),  # config.json may be incomplete
        (f"{early} event lines", lambda: event_lines(cut) >= early),
        ("a new checkpoint", NewCheckpoint(cut)),
        (f"{late} event lines", lambda: event_lines(cut) >= late),
    ]
    kills, logs = [], []
    for name, reached in points:
        arguments = command("--resume" if logs else "--out", str(cut))
        log = tmp_path / f"stderr-{len(logs)}.txt"
        logs.append(log)
        with log.open("wb") as stderr:
            process = subprocess.Popen(arguments, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
            if kill_when(process, reached):
                kills.append(name)
        assert process.returncode in (0, -signal.SIGKILL), (
            f"`ewc run` exited {process.returncode} (kill point: {name}); its stderr:\n"
            + log.read_text(errors="replace")
        )
    final = subprocess.run(command("--resume", str(cut)), env=env, capture_output=True, text=True)
    assert final.returncode == 0, f"the final --resume exited {final.returncode}:\n{final.stderr}"
    assert kills, "every run finished before its kill point: the test would prove nothing"
    (ref_matrices, ref_params), (cut_matrices, cut_params) = (
        final_state(reference),
        final_state(cut),
    )
    assert cut_matrices == ref_matrices, f"killed at: {kills}"
    assert ref_params.keys() == cut_params.keys()
    for cell, params in ref_params.items():
        assert all(torch.equal(params[name], cut_params[cell][name]) for name in params), cell


def test_a_run_killed_before_its_config_was_written_resumes_as_a_fresh_run(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".config.json.0123456789abcdef.tmp").write_bytes(b"")  # what a SIGKILL there leaves
    arguments = ["run", "--no-report", "--strategies", "finetune", *TINY]
    assert main([*arguments[:1], "--resume", str(out), *arguments[1:]]) == 0
    assert "stopped before it started, so this run starts it afresh" in capsys.readouterr().err
    assert not list(out.glob(".config.json.*.tmp"))
    again = tmp_path / "again"
    again.mkdir()
    (again / ".config.json.0123456789abcdef.tmp").write_bytes(b'{"conf')
    assert main([*arguments[:1], "--out", str(again), *arguments[1:]]) == 0
    assert (again / "accuracy" / "seed0_finetune.csv").read_bytes() == (
        out / "accuracy" / "seed0_finetune.csv"
    ).read_bytes()


def test_an_interrupt_before_the_run_directory_exists_says_so(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("ewc.cli._run_config_and_dir", interrupted)
    assert main(["run", "--no-report"]) == 130
    error = capsys.readouterr().err
    assert "ewc run: interrupted" in error
    assert "--resume" not in error


def test_strategies_all_compares_every_builtin_strategy():
    from ewc.cli import ALL_STRATEGIES, _run_config_and_dir, build_parser
    from ewc.experiment.strategies import BUILTIN_STRATEGIES

    assert set(ALL_STRATEGIES) == set(BUILTIN_STRATEGIES)
    args = build_parser().parse_args(["run", "--strategies", "all", "--out", "unused"])
    config, _ = _run_config_and_dir(args)
    assert config.compare == ALL_STRATEGIES
    assert set(config.strategies) >= set(ALL_STRATEGIES)
