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
            r"unknown config key 'strategies\.finetune\.strength'; valid keys here are \(none\)",
        ),
        (
            "l2",
            {"lambda": 1.0},
            r"unknown config key 'strategies\.l2\.lambda'; "
            "valid keys here are strength, mode, gamma",
        ),
        (
            "ewc",
            {"fisher": "true"},
            r"strategies\.ewc\.fisher = 'true' is not one of 'exact', 'sample', 'empirical'",
        ),
        ("ewc", {"gamma": 0.5}, "strategies.ewc.gamma applies to online-ewc only"),
        ("ewc", {"strength": "big"}, r"strategies\.ewc\.strength must be of type float"),
        (
            "ewc",
            {"strength": -1},
            r"strategies\.ewc\.strength must be a finite number ≥ 0; got -1$",
        ),
        ("l2", {"strength": float("inf")}, r"strategies\.l2\.strength must be a finite number"),
        (
            "ewc",
            {"fisher_samples": 0},
            r"strategies\.ewc\.fisher_samples must be at least 1; got 0",
        ),
        ("online-ewc", {"gamma": 1.5}, r"strategies\.online-ewc\.gamma must be in \[0, 1\]"),
        ("online-ewc", {"gamma": -0.1}, r"strategies\.online-ewc\.gamma must be a finite number"),
        ("l2", {"gamma": 0}, r"strategies\.l2\.gamma applies to mode = 'online' only"),
        ("l2", {"mode": "online", "gamma": 2}, r"strategies\.l2\.gamma must be in \[0, 1\]"),
        ("l2", {"mode": "latest"}, r"strategies\.l2\.mode"),
        (
            "ewc-big",
            {"type": "ewc", "strength": -2.0},
            r"strategies\.ewc-big\.strength must be a finite number ≥ 0; got -2\.0$",
        ),
        (
            "x",
            {"type": "lwf"},
            r"strategy 'x' has unknown type 'lwf' \(strategies\.x\.type\); valid types are "
            "'finetune', 'l2'",
        ),
    ],
)
def test_bad_settings_are_named(model, name, params, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        build_strategy(name, params, model)


def test_the_builtins_are_the_documented_strategies():
    assert list(BUILTIN_STRATEGIES) == [
        "finetune",
        "l2",
        "ewc",
        "online-ewc",
        "kfac-ewc",
        "si",
        "mas",
    ]


def test_kfac_ewc_consolidates_kronecker_blocks():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    strategy = build_strategy("kfac-ewc", {"strength": 3.0, "fisher": "exact"}, net)
    assert strategy.after_task(context(net)) == []
    penalty = strategy.penalty()
    assert penalty.fisher_kind == "kfac-exact"
    with torch.no_grad():
        net[0].weight.add_(0.5)
    assert float(penalty().detach()) > 0
    restored = build_strategy("kfac-ewc", {"strength": 3.0}, net)
    restored.load_state_dict(strategy.state_dict())
    assert torch.equal(restored.penalty()().detach(), penalty().detach())


@pytest.mark.parametrize(
    ("params", "message"),
    [({"fisher": "batched"}, "no Kronecker factors"), ({"gamma": 0.5}, "gamma must be 1")],
)
def test_kfac_ewc_rejects_what_it_cannot_do(model, params, message):
    with pytest.raises(ConfigError, match=message):
        build_strategy("kfac-ewc", params, model)
