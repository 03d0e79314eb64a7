"""A cell's curve points on a subset of the test sets, its accuracy matrix on all of them."""

from __future__ import annotations

import json

import torch

from ewc.data import ImageDataset
from ewc.experiment.config import resolve
from ewc.experiment.runner import run_experiment
from ewc.report import load_run
from ewc.report.content import build_document
from ewc.report.markdown import render_markdown

TINY = [
    "benchmark.num_tasks=2",
    "training.epochs=1",
    "training.batch_size=16",
    "training.eval_every=3",
    "training.eval_batch_size=32",
    "training.threads=1",
    "model.hidden=[32]",
    'compare=["finetune", "ewc"]',
]


def digits() -> ImageDataset:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (200, 28, 28), generator=gen, dtype=torch.uint8)
    labels = torch.arange(200) % 10
    classes = tuple(str(c) for c in range(10))
    return ImageDataset(
        "mnist", images[:120], labels[:120], images[120:], labels[120:], classes, "", True
    )


def evals(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == "eval"]


def test_the_subset_changes_the_curve_points_and_never_the_accuracy_matrix(tmp_path):
    data = digits()
    subset = run_experiment(
        resolve(overrides=[*TINY, "training.eval_samples=10"]), tmp_path / "a", data=data
    )
    full = run_experiment(
        resolve(overrides=[*TINY, "training.eval_samples=0"]), tmp_path / "b", data=data
    )
    assert subset.matrices == full.matrices  # bit for bit: the same floats
    assert {e["subset"] for e in evals(tmp_path / "a")} == {10}
    assert {e["subset"] for e in evals(tmp_path / "b")} == {None}
    # the same steps; accuracies on 10 samples are multiples of 1/10
    assert [e["step"] for e in evals(tmp_path / "a")] == [e["step"] for e in evals(tmp_path / "b")]
    assert all(
        round(10 * a, 9).is_integer() for e in evals(tmp_path / "a") for a in e["accuracies"]
    )


def test_the_report_says_which_points_are_on_a_subset(tmp_path):
    config = resolve(overrides=[*TINY, "training.eval_samples=10"])
    run_experiment(config, tmp_path / "run", data=digits())
    run = load_run(tmp_path / "run")
    points = run.pairs[0, "ewc"].points
    assert {p.subset for p in points if not p.boundary} == {10}
    assert {p.subset for p in points if p.boundary} == {None}
    text = render_markdown(build_document(run, {"curves": "plots/curves.png"}))
    assert "measured on a fixed random subset of at most 10 test samples per task" in text
