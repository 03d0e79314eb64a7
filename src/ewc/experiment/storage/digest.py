"""A short digest of a state tree: equal trees (keys, dtypes, shapes, values), equal digests.

Used where two states must be shown equal without sending or storing them: the ranks of a
distributed cell after a restore (`ewc.experiment.distributed`), and a cell's initial model
against the one its checkpoints were trained from (`ewc.experiment.cell`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn


def state_digest(tree: Any) -> int:
    """A 63-bit SHA-256 digest of a state tree (dicts, lists, tensors, plain values)."""
    digest = hashlib.sha256()
    _feed(digest, tree)
    return int.from_bytes(digest.digest()[:8], "little") & (2**63 - 1)


def model_fingerprint(model: nn.Module) -> str:
    """The digest of a model's layers (its ``repr``) and its state (names, shapes, values), hex.

    Two builds of the same code, config and seed give the same fingerprint; another layer,
    width, activation or initialisation gives another one.
    """
    return f"{state_digest({'layers': repr(model), 'state': model.state_dict()}):016x}"


def _feed(digest: Any, node: Any) -> None:
    if isinstance(node, Mapping):
        for key, value in node.items():
            digest.update(repr(key).encode())
            _feed(digest, value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _feed(digest, value)
    elif isinstance(node, Tensor):
        digest.update(f"{node.dtype}{tuple(node.shape)}".encode())
        digest.update(node.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    else:
        digest.update(repr(node).encode())
