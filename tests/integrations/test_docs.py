"""The integration pages in docs/ tell the truth: their complete examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"


def example(page: str) -> str:
    """The one ```python block of a docs page."""
    (code,) = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(encoding="utf-8"), re.S)
    return code


def last_line_accuracies(output: str) -> list[float]:
    """The accuracies printed on the last line, after 'after task X:'."""
    return [float(a) for a in output.strip().splitlines()[-1].split(":")[1].split()]


@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)`:FutureWarning")
@pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning")
def test_the_lightning_page_runs_as_written(capsys):
    pytest.importorskip("lightning.pytorch", reason="needs pip install 'ewc[lightning]'")
    exec(compile(example("integrations-lightning.md"), "integrations-lightning.md", "exec"), {})
    task_a, task_b = last_line_accuracies(capsys.readouterr().out)
    assert task_a > 0.75  # task A kept after task B
    assert task_b > 0.75


def test_the_transformers_page_runs_as_written(capsys, monkeypatch):
    pytest.importorskip("transformers", reason="needs pip install 'ewc[transformers]'")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = example("integrations-transformers.md")
    exec(compile(code, "integrations-transformers.md", "exec"), {})
    output = capsys.readouterr().out
    accuracies = last_line_accuracies(output)
    assert len(accuracies) == 2
    assert all(0 <= a <= 1 for a in accuracies)
    assert "ewc_penalty" in output  # the Trainer's printed logs of task B carry it
