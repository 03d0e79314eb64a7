"""What the sweep tests share: a tiny config (a trial takes seconds) and a worker command."""

from __future__ import annotations

import sys

# The embedded MNIST subset cut to a few dozen images: one trial is two tiny tasks.
TINY = [
    "benchmark.num_tasks=2",
    "benchmark.train_samples=64",
    "benchmark.test_samples=64",
    "training.epochs=1",
    "training.batch_size=32",
    "training.eval_every=0",
    "training.threads=1",
    "model.hidden=[16]",
]

#: The `ewc` command in a fresh interpreter (the package has no __main__).
EWC = [sys.executable, "-c", "import sys; from ewc.cli import main; sys.exit(main())"]
