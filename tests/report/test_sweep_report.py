"""The sweep report from a hand-written trials.json: a line per Fisher kind, the table."""

from __future__ import annotations

import json

import pytest

from ewc.report.sweep import metric_series, write_sweep_report

pytest.importorskip("matplotlib")


def _trial(number, strength, fisher, mean, sem, state="complete"):
    metrics = {"ACC": {"mean": mean, "sem": sem, "values": [mean]}} if state == "complete" else {}
    params = {"strategies.ewc.strength": strength, "strategies.ewc.fisher": fisher}
    return {"number": number, "state": state, "params": params, "metrics": metrics,
            "run_dir": f"trial-{number:04d}", "config": {}}  # fmt: skip


RECORD = {
    "strategy": "ewc",
    "objective": "ACC",
    "direction": "maximize",
    "dimensions": [
        {
            "key": "strategies.ewc.strength",
            "spec": "log:1..1e4:3",
            "numeric": True,
            "log": True,
            "finite": True,
        },
        {
            "key": "strategies.ewc.fisher",
            "spec": "exact,batched",
            "numeric": False,
            "log": False,
            "finite": True,
        },
    ],
    "best": 1,
    "trials": [
        _trial(0, 1e4, "exact", 0.80, 0.01),
        _trial(1, 1e2, "exact", 0.90, 0.02),
        _trial(2, 1e2, "batched", 0.70, None),
        _trial(3, 1.0, "batched", 0.0, 0.0, state="pruned"),
    ],
}


def test_one_line_per_fisher_kind_sorted_by_strength():
    series = metric_series(RECORD, "strategies.ewc.strength")
    assert series == {
        "fisher=batched": [(100.0, 0.70, None)],
        "fisher=exact": [(100.0, 0.90, 0.02), (1e4, 0.80, 0.01)],
    }


def test_the_report_has_the_figure_the_best_trial_and_the_table(tmp_path):
    (tmp_path / "trials.json").write_text(json.dumps(RECORD))
    (tmp_path / "results.md").write_text("| trial | state |\n|---|---|\n| 1 | complete |\n")
    report = write_sweep_report(tmp_path)
    text = report.read_text()
    assert "Best: trial 1 with `strategies.ewc.strength = 100.0`" in text
    assert "](plots/ACC-vs-strategies-ewc-strength.png)" in text
    assert "| 1 | complete |" in text
    png = (tmp_path / "plots" / "ACC-vs-strategies-ewc-strength.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "ACC-vs-strategies-ewc-strength.png"
    ]


def test_a_directory_without_trials_is_an_error_that_says_so(tmp_path):
    with pytest.raises(ValueError, match=r"has no trials\.json"):
        write_sweep_report(tmp_path)
