"""The default `ewc run` shows the contrast it is there to show (slow: about 40 s on 2 cores).

Run with ``pytest -m slow``. The thresholds are the ones the default run was chosen to meet on
the embedded MNIST subset, seed 0, two threads (README, "What the default run shows"): EWC keeps
an average final accuracy of at least 93% and loses at most 3 points on task 1, while training
without a penalty loses at least 20 points on task 1.
"""

from __future__ import annotations

import pytest

from ewc.experiment.config import resolve
from ewc.experiment.metrics import average_accuracy
from ewc.experiment.progress import Progress
from ewc.experiment.runner import run_experiment


@pytest.mark.slow
def test_the_default_run_shows_ewc_keeping_task_one_while_finetune_forgets(tmp_path):
    config = resolve(overrides=["training.threads=2"])
    result = run_experiment(config, tmp_path / "run", progress=Progress())
    matrices = {cell.strategy: rows for cell, rows in result.matrices.items()}
    assert set(matrices) == {"finetune", "l2", "ewc"}

    def task_one_drop(rows: list[list[float]]) -> float:
        return rows[1][0] - rows[-1][0]

    assert average_accuracy(matrices["ewc"]) >= 0.93
    assert task_one_drop(matrices["ewc"]) <= 0.03
    assert task_one_drop(matrices["finetune"]) >= 0.20
    assert average_accuracy(matrices["ewc"]) > average_accuracy(matrices["l2"]) + 0.3
