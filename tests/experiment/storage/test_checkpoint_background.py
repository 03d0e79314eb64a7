"""Checkpoints written by the store's writer thread while training goes on."""

from __future__ import annotations

import errno
import os
from collections import OrderedDict

import pytest
import torch

from ewc.experiment.storage import checkpoint
from ewc.experiment.storage.checkpoint import (
    CheckpointError,
    CheckpointStore,
    load_checkpoint,
    save_checkpoint,
)


def state(value: float) -> dict:
    weights = OrderedDict(w=torch.full((3, 2), value), b=torch.arange(4.0)[::2])
    weights._metadata = OrderedDict({"": {"version": 1}})  # type: ignore[attr-defined]
    return {"model": weights, "step": 7, "rng": torch.get_rng_state(), "note": (1.5, None)}


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        meta = getattr(a, "_metadata", None) == getattr(b, "_metadata", None)
        return (
            type(a) is type(b)
            and a.keys() == b.keys()
            and meta
            and all(same(a[k], b[k]) for k in a)
        )
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return a == b


def test_a_background_checkpoint_holds_what_a_direct_one_holds(tmp_path):
    # (not the same bytes: safetensors orders the header's metadata as it likes)
    store = CheckpointStore(tmp_path / "store")
    store.save_in_background(state(2.0), 3)
    store.close()
    save_checkpoint(tmp_path / "direct.safetensors", state(2.0))
    written = load_checkpoint(store.path(3))
    assert same(written, load_checkpoint(tmp_path / "direct.safetensors"))
    assert same(written, state(2.0))


def test_the_snapshot_is_taken_at_the_call_not_at_the_write(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    tree = state(1.0)
    order = []
    store.save_in_background(tree, 1, before=lambda: order.append("before"))
    tree["model"]["w"].add_(100.0)  # training moves on at once
    store.wait()
    assert order == ["before"]
    assert torch.equal(load_checkpoint(store.path(1))["model"]["w"], torch.full((3, 2), 1.0))
    store.close()


def test_writes_happen_in_order_and_keep_the_newest(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    for step in range(5):
        store.save_in_background(state(float(step)), step)
    store.close()
    assert store.steps() == [3, 4]
    assert float(load_checkpoint(store.path(4))["model"]["w"][0, 0]) == 4.0


def test_a_failed_write_raises_at_the_next_save_and_keeps_the_last_good_one(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    store.save_in_background(state(1.0), 1)
    store.wait()

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoint, "write_bytes_atomic", full)
    store.save_in_background(state(2.0), 2)  # returns at once: the write fails later
    with pytest.raises(CheckpointError, match="No space left on device"):
        store.save_in_background(state(3.0), 3)
    store.close()
    assert store.steps() == [1]
    load_checkpoint(store.path(1))


def test_a_state_that_cannot_be_stored_fails_at_the_call(tmp_path):
    store = CheckpointStore(tmp_path)
    with pytest.raises(TypeError, match=r"state\['bad'\] is a builtins.set"):
        store.save_in_background({"bad": {1}}, 1)
    store.close()
    assert store.steps() == []
