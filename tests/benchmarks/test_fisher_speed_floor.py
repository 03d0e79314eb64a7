"""fisher_speed.py's floor row computes what it claims: the empirical Fisher, written out."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

import ewc
from ewc.experiment.models import build_model


def _fisher_speed():
    path = Path(__file__).parents[2] / "benchmarks" / "fisher_speed.py"
    spec = importlib.util.spec_from_file_location("fisher_speed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_written_out_floor_is_the_empirical_fisher_times_the_sample_count():
    speed = _fisher_speed()
    model = build_model("mlp", num_outputs=10, seed=0).double().eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(70, 1, 28, 28, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (70,), generator=gen)
    data = speed.batches(x, y, 32)  # a last, smaller batch too
    layers = speed.linear_chain(model)
    assert layers is not None
    written = speed.hand_written_empirical(layers, data)
    ours = ewc.diagonal_fisher(model, data, "empirical")
    weights = [name for name, p in model.named_parameters() if p.dim() == 2]
    assert len(written) == len(weights) == 3
    for name, total in zip(weights, written, strict=True):
        torch.testing.assert_close(total / 70, ours[name], rtol=1e-10, atol=1e-14)


def test_the_floor_is_only_claimed_for_a_chain_of_linear_layers_in_eval_mode():
    speed = _fisher_speed()
    assert speed.linear_chain(build_model("cnn", num_outputs=10, seed=0).eval()) is None
    assert speed.linear_chain(build_model("mlp", num_outputs=10, seed=0).train()) is None
