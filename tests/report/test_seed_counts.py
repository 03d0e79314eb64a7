"""The report says how many seeds each mean averages, counted from the numbers it shows.

A seed that diverged is left out of every mean (summary.json leaves it out too); while a run is in
progress, the rows of a mean matrix can average different numbers of seeds, and the caption says
so. Capped test sets are not called whole ones. The run directories are the synthetic ones of
``test_report.write_run``, edited as a divergence or a kill would leave them.
"""

from __future__ import annotations

import json
from pathlib import Path

from ewc.experiment.outcome import CellOutcome, Divergence
from ewc.experiment.storage.rundir import Cell
from ewc.experiment.summary import summarize
from ewc.report import load_run, write_report
from ewc.report.aggregate import curves, final_accuracies, matrix_seed_counts, mean_matrix
from report.test_report import STRATEGIES, markdown_of, matrix, write_matrix_csv, write_run

SEEDS = (0, 1, 2)


def stop_after(run_dir: Path, seed: int, strategy: str, task: int, *, diverged: bool) -> None:
    """Cut (seed, strategy) after ``task`` tasks, as a kill does, or as a divergence in the next."""
    log = run_dir / "metrics.jsonl"
    kept = []
    for line in log.read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        mine = event.get("seed") == seed and event.get("strategy") == strategy
        if not (mine and event.get("task", 0) > task):
            kept.append(line)
    if diverged:
        event = {"event": "diverged", "seed": seed, "strategy": strategy, "step": 237}
        kept.append(json.dumps({**event, "task": task + 1, "epoch": 1, "message": "loss is nan"}))
    log.write_text("\n".join(kept) + "\n", encoding="utf-8")
    rows = matrix(strategy, seed, 3)[: task + 1]
    write_matrix_csv(run_dir / "accuracy" / f"seed{seed}_{strategy}.csv", rows, 3)


def write_summary_of_complete_seeds(run_dir: Path, diverged: Cell) -> None:
    """summary.json as the runner writes it: the diverged cell is in no metric or matrix."""
    outcomes = [
        CellOutcome(Cell(seed, name), divergence=Divergence(2, 1, 237, "loss is nan"))
        if Cell(seed, name) == diverged
        else CellOutcome(Cell(seed, name), rows=matrix(name, seed, 3))
        for seed in SEEDS
        for name in STRATEGIES
    ]
    summary = summarize("domain", "permuted", outcomes, 1.0).to_dict()
    (run_dir / "summary.json").write_text(json.dumps(summary), encoding="utf-8")


def test_a_diverged_seed_is_in_no_mean_and_the_captions_count_the_rest(tmp_path):
    run_dir = write_run(tmp_path / "run", seeds=SEEDS, finished=False)
    stop_after(run_dir, 2, "ewc", 1, diverged=True)
    write_summary_of_complete_seeds(run_dir, Cell(2, "ewc"))
    run = load_run(run_dir)
    assert matrix_seed_counts(run, "ewc") == (2, 2, 2, 2)
    assert matrix_seed_counts(run, "finetune") == (3, 3, 3, 3)
    assert {n for c in curves(run, "ewc") for n in c.n} == {2}
    assert [s.n for s in final_accuracies(run, "ewc") if s] == [2, 2, 2]
    markdown = markdown_of(write_report(run_dir))
    assert "R in %, mean over 2 seeds (seed 2 diverged and left out);" in markdown
    assert "R in %, mean over 3 seeds;" in markdown
    assert "Lines are means over the seeds evaluated at each step, 2 to 3" in markdown
    assert "Bars are means over the seeds that finished every task, 2 to 3" in markdown
    assert "means over 3 seeds; bands" not in markdown


def test_while_a_run_is_in_progress_each_row_says_how_many_seeds_it_averages(tmp_path):
    run_dir = write_run(tmp_path / "run", seeds=(0, 1), finished=False)
    stop_after(run_dir, 1, "ewc", 1, diverged=False)  # seed 1 is still on task 2
    run = load_run(run_dir)
    assert matrix_seed_counts(run, "ewc") == (2, 2, 1, 1)
    after_one = [(matrix("ewc", 0, 3)[1][j] + matrix("ewc", 1, 3)[1][j]) / 2 for j in range(3)]
    assert mean_matrix(run, "ewc")[1] == tuple(after_one)
    assert mean_matrix(run, "ewc")[2] == tuple(matrix("ewc", 0, 3)[2])  # seed 0 alone
    markdown = markdown_of(write_report(run_dir))
    assert (
        "each row the mean over the seeds that reached it (untrained: 2, after task 1: 2, "
        "after task 2: 1, after task 3: 1): compare values within a row, not down a column"
    ) in markdown
    assert "R in %, mean over 2 seeds;" in markdown  # finetune: both seeds finished


def test_capped_test_sets_are_not_called_whole_and_the_cap_is_a_callout(tmp_path):
    run_dir = write_run(tmp_path / "run", is_subset=False)
    header = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    header["config"]["benchmark"]["test_samples"] = 500
    (run_dir / "config.json").write_text(json.dumps(header), encoding="utf-8")
    markdown = markdown_of(write_report(run_dir))
    assert "Subset of the data" in markdown
    assert "Each task keeps at most 500 test samples." in markdown
    assert "on each task's test set as capped by benchmark.test\\_samples (at most 500)" in (
        markdown
    )
    assert "whole test set" not in markdown


def test_uncapped_test_sets_are_called_whole(tmp_path):
    markdown = markdown_of(write_report(write_run(tmp_path / "run", is_subset=False)))
    assert "from summary.json, on each task's whole test set." in markdown
    assert "Subset of the data" not in markdown
