"""README.md tells the truth: its example runs, and CI runs its test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def test_the_example_runs_as_written(capsys):
    (code,) = re.findall(r"```python\n(.*?)```", section("Use it in your own training loop"), re.S)
    exec(compile(code, "README.md", "exec"), {})
    accuracy = float(capsys.readouterr().out.strip().rsplit(" ", 1)[-1])
    assert 0.5 < accuracy <= 1.0


def test_ci_runs_the_test_command_of_the_readme():
    commands = re.findall(r"```sh\n(.*?)```", README, re.S)[0].strip().splitlines()
    test_command = commands[commands.index("# Set up and run the tests") + 1]
    assert test_command in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "ewc run" in commands[1]


def test_no_placeholder_is_left():
    assert not re.findall(r"\{[A-Z_]+\}", README)
