"""Switching a model to evaluation mode for a while, and back to exactly what it was."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode inside the block; restore each one's own flag on exit.

    Restoring per submodule (not one ``model.train(flag)``) keeps mixed states intact, e.g. a model
    in train mode with a frozen BatchNorm deliberately left in eval mode.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training
