"""docs/own-model.md and docs/tensorboard.md tell the truth: their examples run as written."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from ewc.cli import main

ROOT = Path(__file__).resolve().parents[1]


def blocks(page: str, language: str) -> list[str]:
    """The ```<language> blocks of a docs page."""
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def own_model_command() -> list[str]:
    """The arguments of the `ewc run` line in docs/own-model.md's first shell block."""
    (line,) = [line for line in blocks("own-model.md", "sh")[0].splitlines() if "ewc run" in line]
    return shlex.split(line)[1:]  # after "ewc"


@pytest.fixture
def in_examples(monkeypatch):
    """Run from examples/ as the page says; sys.path and own_tasks are restored afterwards."""
    monkeypatch.chdir(ROOT / "examples")
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in [m for m in sys.modules if m.startswith("own_tasks")]:
        monkeypatch.delitem(sys.modules, name)


def test_the_own_model_command_runs_at_a_tiny_size(in_examples, tmp_path, capsys):
    tiny = ["training.epochs=1", "benchmark.train_samples=64", "benchmark.test_samples=32"]
    command = [a for a in own_model_command() if not a.startswith("training.epochs=")]
    out = tmp_path / "run"
    assert main([*command, *tiny, "--out", str(out), "--quiet"]) == 0
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "custom own\\_tasks.blobs:tasks, 3 tasks, class-incremental" in report
    assert "own\\_tasks.model:make\\_model (model.factory)" in report


@pytest.mark.slow
def test_the_own_model_page_shows_what_its_command_prints(in_examples, tmp_path, capsys):
    assert main([*own_model_command(), "--out", str(tmp_path / "run"), "--no-report"]) == 0
    printed = capsys.readouterr().out
    table = blocks("own-model.md", "text")[0]
    for line in table.splitlines()[2:]:
        assert line in printed  # the page's table is the run's, digit for digit
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["scenario"] == "class"


def test_the_tensorboard_page_runs_as_written(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tensorboardX")
    monkeypatch.chdir(tmp_path)
    (code,) = blocks("tensorboard.md", "python")
    exec(compile(code, "tensorboard.md", "exec"), {})
    (expected,) = blocks("tensorboard.md", "text")
    assert capsys.readouterr().out == expected
