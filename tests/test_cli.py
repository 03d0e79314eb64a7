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
        (["--strategies", "finetune,si"], "compare names ['si'] but only"),
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
    assert "already exists and is not empty" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"


def test_resume_refuses_a_changed_config(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--no-report", "--strategies", "finetune", *TINY]) == 0
    assert main(["run", "--resume", str(out), "--no-report", "training.epochs=3"]) == 2
    assert "was run with another config" in capsys.readouterr().err
    assert main(["run", "--resume", str(out), "--no-report"]) == 0


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


def test_sigkill_at_random_points_then_resume_is_bitwise_identical(tmp_path):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    reference = tmp_path / "whole"
    subprocess.run(command("--out", str(reference)), check=True, env=env, capture_output=True)
    cut = tmp_path / "cut"
    rng = random.Random(20261123)
    kills = 0
    for delay in (rng.uniform(1.5, 4.0), rng.uniform(0.5, 2.5), rng.uniform(0.5, 2.5)):
        started = (cut / "config.json").exists()  # a kill may land before the run directory exists
        arguments = command("--resume", str(cut)) if started else command("--out", str(cut))
        process = subprocess.Popen(
            arguments, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
    subprocess.run(command("--resume", str(cut)), check=True, env=env, capture_output=True)
    assert kills >= 1, "every run finished before its kill: the test would prove nothing"
    (ref_matrices, ref_params), (cut_matrices, cut_params) = (
        final_state(reference),
        final_state(cut),
    )
    assert cut_matrices == ref_matrices
    assert ref_params.keys() == cut_params.keys()
    for cell, params in ref_params.items():
        assert all(torch.equal(params[name], cut_params[cell][name]) for name in params), cell


def test_an_interrupt_before_the_run_directory_exists_says_so(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("ewc.cli._run_config_and_dir", interrupted)
    assert main(["run", "--no-report"]) == 130
    error = capsys.readouterr().err
    assert "ewc run: interrupted" in error
    assert "--resume" not in error
