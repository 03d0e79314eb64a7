"""Strategies: construction from config tables, consolidation, the SGD stability note."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ewc.experiment.config import ConfigError
from ewc.experiment.strategies import BUILTIN_STRATEGIES, TaskContext, build_strategy


def context(model, optimizer="adam", lr=1e-3):
    x, y = torch.randn(12, 3), torch.randint(0, 2, (12,))
    return TaskContext(
        model=model,
        task=0,
        train_batches=[(x[:6], y[:6]), (x[6:], y[6:])],
        output_fn=None,
        generator=torch.Generator().manual_seed(0),
        optimizer=optimizer,
        lr=lr,
    )


@pytest.fixture
def model():
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def test_finetune_has_no_penalty_and_no_state(model):
    strategy = build_strategy("finetune", {}, model)
    assert strategy.penalty() is None
    assert strategy.after_task(context(model)) == []
    assert strategy.state_dict() == {}


@pytest.mark.parametrize("name", ["ewc", "online-ewc"])
def test_ewc_consolidates_the_named_fisher(model, name):
    strategy = build_strategy(
        name, {"strength": 3.0, "fisher": "empirical", "fisher_samples": 6}, model
    )
    assert strategy.after_task(context(model)) == []
    penalty = strategy.penalty()
    assert penalty.num_tasks == 1
    assert penalty.fisher_kind == "empirical"
    assert penalty.mode.value == ("online" if name == "online-ewc" else "separate")
    with torch.no_grad():
        model.weight.add_(0.5)
    assert float(penalty().detach()) > 0


def test_a_variant_picks_its_factory_by_type(model):
    strategy = build_strategy(
        "ewc-sample", {"type": "ewc", "fisher": "sample", "samples_per_input": 3}, model
    )
    strategy.after_task(context(model))
    assert strategy.penalty().fisher_kind == "sample"


def test_state_round_trips(model):
    a = build_strategy("l2", {"strength": 2.0}, model)
    a.after_task(context(model))
    b = build_strategy("l2", {"strength": 2.0}, model)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.penalty()().detach(), b.penalty()().detach())


def test_plain_sgd_that_would_diverge_is_reported(model):
    strategy = build_strategy("l2", {"strength": 100.0}, model)
    (note,) = strategy.after_task(context(model, optimizer="sgd", lr=0.05))
    assert "lr × strength × max Fisher = 0.05 × 100 × 1 = 5 ≥ 2" in note
    assert "smaller than 2" in note
    assert (
        build_strategy("l2", {"strength": 10.0}, model).after_task(context(model, "sgd", 0.05))
        == []
    )
    assert (
        build_strategy("l2", {"strength": 100.0}, model).after_task(context(model, "adam", 0.05))
        == []
    )


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        (
            "finetune",
            {"strength": 1.0},
            r"unknown config key 'finetune\.strength'; valid keys here are \(none\)",
        ),
        ("l2", {"lambda": 1.0}, r"unknown config key 'l2\.lambda'; valid keys here are strength"),
        ("ewc", {"fisher": "true"}, r"ewc\.fisher: unknown Fisher kind 'true'"),
        ("ewc", {"gamma": 0.5}, "ewc.gamma applies to online-ewc only"),
        ("ewc", {"strength": "big"}, r"ewc\.strength must be of type float"),
        ("online-ewc", {"gamma": 1.5}, r"gamma must be in \(0, 1\]"),
        (
            "x",
            {"type": "lwf"},
            "strategy 'x' has unknown type 'lwf'; valid types are 'finetune', 'l2'",
        ),
    ],
)
def test_bad_settings_are_named(model, name, params, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        build_strategy(name, params, model)


def test_the_builtins_are_the_six_documented_strategies():
    assert list(BUILTIN_STRATEGIES) == ["finetune", "l2", "ewc", "online-ewc", "si", "mas"]
