"""The scripts in examples/ run, at tiny sizes, and say what they should."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_split_mnist_multihead_reports_every_task():
    script = EXAMPLES / "split_mnist_multihead.py"
    done = subprocess.run(
        [sys.executable, str(script), "--train-samples", "200", "--epochs", "1"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 5
    assert lines[-1].startswith("after digits 8/9: ")
    accuracies = [float(a) for a in lines[-1].split(": ")[1].split()]
    assert len(accuracies) == 5
    assert min(accuracies) > 0.6  # two-way tasks through their own head: far above chance
