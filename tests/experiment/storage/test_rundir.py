"""The run directory: its layout, its accuracy CSV files, usable from its first moment, locked."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ewc.experiment.storage.accuracy import read_accuracy_csv, write_accuracy_csv
from ewc.experiment.storage.rundir import Cell, RunDirectory, RunDirectoryError


def test_every_path_is_defined_by_the_run_directory(tmp_path):
    run = RunDirectory(tmp_path)
    cell = Cell(3, "online-ewc")
    assert run.config_path == tmp_path / "config.json"
    assert run.metrics_path == tmp_path / "metrics.jsonl"
    assert run.summary_path == tmp_path / "summary.json"
    assert run.matrix_path(cell) == tmp_path / "accuracy" / "seed3_online-ewc.csv"
    assert run.figure_path("curves") == tmp_path / "plots" / "curves.png"
    assert run.report_html_path == tmp_path / "report.html"
    assert run.report_markdown_path == tmp_path / "report.md"
    assert run.events_path(cell) == tmp_path / "cells" / "seed3-online-ewc" / "events.jsonl"
    assert run.checkpoint_dir(cell) == tmp_path / "cells" / "seed3-online-ewc" / "checkpoints"


def test_matrix_files_name_their_cells(tmp_path):
    run = RunDirectory(tmp_path)
    for cell in (Cell(0, "ewc"), Cell(-1, "my_strategy")):
        run.write_matrix(cell, [[0.1, 0.1], [0.9, 0.2], [0.8, 0.9]])
    (tmp_path / "accuracy" / "notes.csv").write_text("x")
    assert [cell for cell, _ in run.matrix_files()] == [Cell(-1, "my_strategy"), Cell(0, "ewc")]


def test_the_accuracy_csv_round_trips_and_keeps_its_format(tmp_path):
    path = tmp_path / "m.csv"
    write_accuracy_csv(path, [[0.1, 0.098], [0.971, 0.1125], [0.9, 0.968]])
    assert path.read_text().splitlines() == [
        "after,task 1,task 2",
        "untrained,0.100000,0.098000",
        "task 1,0.971000,0.112500",
        "task 2,0.900000,0.968000",
    ]
    assert read_accuracy_csv(path, 2) == {0: (0.1, 0.098), 1: (0.971, 0.1125), 2: (0.9, 0.968)}
    with pytest.raises(ValueError, match="the header has 2 tasks but the run has 3"):
        read_accuracy_csv(path, 3)


@pytest.mark.parametrize("leftover", [None, b"", b'{"config": {"ben'])
def test_a_directory_killed_before_its_config_was_complete_is_unstarted(tmp_path, leftover):
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    if leftover is not None:
        (run.path / ".config.json.00ff00ff00ff00ff.tmp").write_bytes(leftover)
    assert run.is_unstarted()
    created = RunDirectory.create(run.path, {"config": {}, "config_hash": "h"})
    assert not created.is_unstarted()
    created.release()
    assert sorted(p.name for p in run.path.iterdir()) == [".lock", "config.json"]


def test_a_directory_with_anything_else_is_not_unstarted(tmp_path):
    run = RunDirectory(tmp_path / "run")
    assert not run.is_unstarted()  # missing: a typo, not a killed run
    run.path.mkdir()
    (run.path / ".config.json.00ff00ff00ff00ff.tmp").write_bytes(b"")
    (run.path / "mine.txt").write_text("keep")
    assert not run.is_unstarted()
    with pytest.raises(RunDirectoryError, match="already exists and is not empty"):
        RunDirectory.create(run.path, {"config": {}})
    assert (run.path / "mine.txt").read_text() == "keep"


def test_one_writer_at_a_time_and_the_other_is_told_who(tmp_path):
    path = tmp_path / "run"
    first = RunDirectory.create(path, {"config": {}, "config_hash": "h"})
    with pytest.raises(RunDirectoryError, match=rf"in use by another run \(process {os.getpid()}"):
        RunDirectory.open(path, lock=True)
    with pytest.raises(RunDirectoryError, match="in use by another run"):
        RunDirectory.create(path, {"config": {}, "config_hash": "other"})
    assert json.loads((path / "config.json").read_text())["config_hash"] == "h"
    RunDirectory.open(path)  # reading needs no lock
    first.release()
    second = RunDirectory.open(path, lock=True)
    second.release()


def test_a_lock_ends_with_the_process_that_held_it(tmp_path):
    path = tmp_path / "run"
    RunDirectory.create(path, {"config": {}, "config_hash": "h"}).release()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryError, match=f"process {holder.pid}"):
            RunDirectory.open(path, lock=True)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    RunDirectory.open(path, lock=True).release()  # the kill released it


HOLD_LOCK = """
import sys, time
from ewc.experiment.storage.rundir import RunDirectory
RunDirectory.open(sys.argv[1], lock=True)
print("locked", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"config": {"ben', "is not valid JSON"),
        ("[1]", "must be a JSON object with a 'config' object"),
        ("{}", "must be a JSON object with a 'config' object"),
    ],
)
def test_a_damaged_config_json_is_named(tmp_path, content, problem):
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(RunDirectoryError, match=problem) as error:
        RunDirectory.open(tmp_path)
    assert str(tmp_path / "config.json") in str(error.value)
