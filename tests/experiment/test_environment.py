"""Where a run trained: recorded in config.json and summary.json, compared on resume."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from ewc.experiment import environment
from ewc.experiment.progress import Progress
from ewc.experiment.runner import run_experiment
from experiment.test_runner import interrupted, learnable_digits, tiny_config


def git(where, *arguments: str) -> str:
    return subprocess.run(
        ["git", "-C", str(where), *arguments], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def checkout(tmp_path):
    """A git repository whose ``pkg/`` is committed, like a clone of ewc."""
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "tests@example.invalid")
    git(tmp_path, "config", "user.name", "tests")
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("x = 1\n")
    git(tmp_path, "add", "pkg/__init__.py")
    git(tmp_path, "commit", "-q", "-m", "first")
    return package


def test_the_source_is_the_commit_of_the_checkout_and_says_when_it_was_changed(checkout):
    commit = git(checkout, "rev-parse", "HEAD")
    assert environment.source_commit(checkout) == f"git {commit[:12]}"
    (checkout / "__init__.py").write_text("x = 2\n")
    assert environment.source_commit(checkout) == f"git {commit[:12]} + uncommitted changes"


def test_a_package_the_repository_does_not_track_has_no_source_commit(checkout):
    installed = checkout.parent / "venv" / "site-packages" / "pkg"  # a venv inside a project
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("x = 1\n")
    assert environment.source_commit(installed) is None


def test_without_git_there_is_no_source_commit(checkout, monkeypatch):
    monkeypatch.setenv("PATH", str(checkout))  # no git executable on it
    assert environment.source_commit(checkout) is None


def test_only_the_numeric_keys_but_threads_are_differences():
    here = environment.describe(1, "cpu")
    assert set(environment.NUMERIC_KEYS) <= set(here)
    assert here["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    elsewhere = {**here, "cpu_capability": "SIMULATED", "threads": 8, "system": "Other"}
    assert environment.differences(here, elsewhere) == [
        f"cpu_capability {here['cpu_capability']} → SIMULATED"
    ]  # threads: the checkpoint pins them; system: no effect on the bits by itself
    assert environment.differences({}, here) == []  # a run directory of an earlier version


class Announcements(Progress):
    def __init__(self):
        self.messages: list[str] = []

    def announce(self, message: str) -> None:
        self.messages.append(message)


def test_a_run_records_its_environment_and_a_resume_elsewhere_says_so(tmp_path):
    data, config = learnable_digits(), tiny_config('compare=["finetune"]')
    cut = interrupted(tmp_path, config, data)
    record = json.loads((cut / "config.json").read_text())
    assert record["environment"] == environment.describe(1, "cpu")  # TINY_RUN: one thread
    record["environment"]["cpu_capability"] = "SIMULATED"
    (cut / "config.json").write_text(json.dumps(record))
    progress = Announcements()
    run_experiment(config, cut, resume=True, data=data, progress=progress)
    here = torch.backends.cpu.get_cpu_capability()
    assert progress.messages == [
        f"{cut} is resumed in another environment than it started in (cpu_capability "
        f"SIMULATED → {here}): the steps from here on will not repeat the first process's bits"
    ]
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["environment"] == environment.describe(1, "cpu")
