"""The evaluator: full test sets for the rows of R, a fixed seeded subset for the curve points."""

from __future__ import annotations

import pytest
import torch

import ewc
from ewc.data import ImageDataset
from ewc.experiment.evaluation import Evaluator
from ewc.experiment.models import build_model
from ewc.experiment.streams.benchmarks import TensorBatches, build_stream


def stream(name: str = "permuted", **options):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (160, 28, 28), generator=gen, dtype=torch.uint8)
    labels = torch.arange(160) % 10
    classes = tuple(str(c) for c in range(10))
    data = ImageDataset(
        "mnist", images[:60], labels[:60], images[60:], labels[60:], classes, "", True
    )
    return build_stream(name, data, seed=1, **options)


def test_the_full_evaluation_is_evaluate_on_every_test_set():
    tasks = stream(num_tasks=3)
    model = build_model("mlp", num_outputs=tasks.num_outputs, hidden=(16,), seed=0)
    expected = [
        ewc.evaluate(model, TensorBatches(t.test_inputs, t.test_targets, batch_size=30))
        for t in tasks.tasks
    ]
    assert Evaluator(tasks, 30)(model) == expected


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("permuted", {"num_tasks": 3}),
        ("split", {"scenario": "task", "multi_head": True}),
        ("split", {"scenario": "task", "multi_head": False}),
        ("split", {"scenario": "class"}),
    ],
)
def test_a_curve_point_is_each_tasks_accuracy_on_its_seeded_subset(name, options):
    tasks = stream(name, **options)
    model = build_model(
        "mlp", num_outputs=tasks.num_outputs, heads=tasks.heads, hidden=(16,), seed=0
    )
    evaluator = Evaluator(tasks, 7, subset=8, seed=5)  # batches of 7 span the tasks
    generator = torch.Generator().manual_seed(5)
    expected = []
    for j, task in enumerate(tasks.tasks):
        rows = torch.randperm(task.test_targets.shape[0], generator=generator)[:8].sort().values
        batch = TensorBatches(task.test_inputs[rows], task.test_targets[rows], batch_size=8)
        expected.append(ewc.evaluate(model, batch, output_fn=tasks.output_fn(j)))
    assert evaluator.subset == 8
    assert evaluator.curve(model) == pytest.approx(expected, abs=1e-12)
    assert evaluator.curve(model) == evaluator.curve(model)  # the same subset every time


def test_a_subset_as_large_as_every_test_set_is_the_full_evaluation():
    tasks = stream(num_tasks=2)
    model = build_model("mlp", num_outputs=tasks.num_outputs, hidden=(16,), seed=0)
    evaluator = Evaluator(tasks, 30, subset=100)
    assert evaluator.subset is None
    assert evaluator.curve(model) == evaluator(model)


def test_evaluation_leaves_the_models_mode_and_gradients_alone():
    tasks = stream(num_tasks=2)
    model = build_model("mlp", num_outputs=tasks.num_outputs, hidden=(16,), seed=0)
    model.train()
    Evaluator(tasks, 30, subset=10).curve(model)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
