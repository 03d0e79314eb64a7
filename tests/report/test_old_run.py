"""A run directory written before the typed seams (events, CSV, paths) still renders.

``old_run/`` is what ``ewc run`` wrote before that change (2 seeds × finetune, ewc; 2 tasks):
config.json, metrics.jsonl, accuracy/*.csv and summary.json, without the cells' checkpoints.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ewc.report import load_run, write_report

OLD_RUN = Path(__file__).parent / "old_run"


def test_an_old_run_directory_reads_completely():
    run = load_run(OLD_RUN)
    assert run.problems == []
    assert run.strategies == ["finetune", "ewc"]
    assert run.seeds == [0, 1]
    assert run.pairs[0, "ewc"].rows[0] == (0.05, 0.05)
    assert len(run.pairs[1, "finetune"].points) > 2
    assert run.summary is not None
    assert "ACC" in run.summary["strategies"]["ewc"]


def test_an_old_run_directory_renders(tmp_path):
    copy = tmp_path / "old_run"
    shutil.copytree(OLD_RUN, copy)
    paths = write_report(copy)
    html = paths.html.read_text(encoding="utf-8")
    assert "finetune" in html
    assert "ewc" in html
    assert all(path.stat().st_size > 0 for path in paths.figures)
