"""The ``si`` and ``mas`` strategies, driven the way the runner drives them (train_step)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import ewc
from ewc._batches import Batch
from ewc.experiment.config import ConfigError
from ewc.experiment.strategies import TaskContext, build_strategy
from ewc.training import train_step


def batches(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 2, (12,), generator=gen)
    return [(x[:6], y[:6]), (x[6:], y[6:])]


def context(model, data):
    return TaskContext(model, 0, data, None, torch.Generator().manual_seed(0), "adam", 1e-2)


def make_model():
    torch.manual_seed(0)
    return nn.Linear(3, 2).double()


def test_si_strategy_records_the_same_path_as_before_and_after_step():
    model, twin_model = make_model(), make_model()
    strategy = build_strategy("si", {"strength": 0.5, "damping": 0.2}, model)
    twin = ewc.SynapticIntelligence(twin_model, strength=0.5, damping=0.2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    twin_opt = torch.optim.Adam(twin_model.parameters(), lr=1e-2)
    for i, (x, y) in enumerate(batches() * 3):
        train_step(model, Batch(i, x, y), opt, penalty=strategy.penalty())
        twin_opt.zero_grad()
        nn.functional.cross_entropy(twin_model(x), y).backward()
        twin.before_step()
        twin.add_gradient_()
        twin_opt.step()
        twin.after_step()
    assert strategy.after_task(context(model, batches())) == []
    twin.consolidate()
    si = strategy.penalty().si
    for name in twin.importance:
        assert torch.allclose(si.importance[name], twin.importance[name], rtol=1e-12)
    assert si.importance["weight"].abs().sum() > 0


@pytest.mark.parametrize("path_gradient", ["task", "total"])
def test_si_strategy_path_gradient_matches_a_joint_backward_twin(path_gradient):
    """Two tasks, so that the penalty is on: "total" ω must count it, "task" ω must not."""
    model, twin_model = make_model(), make_model()
    settings = {"strength": 5.0, "damping": 0.2, "path_gradient": path_gradient}
    strategy = build_strategy("si", settings, model)
    twin = ewc.SynapticIntelligence(twin_model, strength=5.0, damping=0.2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    twin_opt = torch.optim.Adam(twin_model.parameters(), lr=1e-2)
    for task in (0, 1):
        for i, (x, y) in enumerate(batches(task) * 3):
            train_step(model, Batch(i, x, y), opt, penalty=strategy.penalty())
            twin_opt.zero_grad()
            loss = nn.functional.cross_entropy(twin_model(x), y)
            if path_gradient == "total":  # g read after the penalty's gradient is in .grad
                (loss + twin()).backward()
                twin.before_step()
            else:
                loss.backward()
                twin.before_step()
                twin.add_gradient_()
            twin_opt.step()
            twin.after_step()
        strategy.after_task(context(model, batches(task)))
        twin.consolidate()
    si = strategy.penalty().si
    assert si.num_tasks == 2
    for name in twin.importance:
        assert torch.allclose(si.importance[name], twin.importance[name], rtol=1e-10)
    for name, param in model.named_parameters():
        assert torch.allclose(param, dict(twin_model.named_parameters())[name], rtol=1e-10)


def test_si_strategy_notes_how_many_entries_the_clamp_set_to_zero():
    model = make_model()
    strategy = build_strategy("si", {}, model)
    si = strategy.penalty().si
    model.weight.grad = torch.ones_like(model.weight)
    model.bias.grad = torch.zeros_like(model.bias)
    strategy.penalty().add_gradient_()  # records g = 1 for the weight
    with torch.no_grad():
        model.weight[0].add_(1.0)  # moved along g: ω = −1 for these 3 entries
    (note,) = strategy.after_task(context(model, batches()))
    assert si.clamped == 3
    assert note.startswith("si: 3 of 8 importance entries were negative after this task")


def test_si_state_mid_task_survives_a_round_trip():
    model = make_model()
    strategy = build_strategy("si", {}, model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for i, (x, y) in enumerate(batches()):
        train_step(model, Batch(i, x, y), opt, penalty=strategy.penalty())
    state = copy.deepcopy(strategy.state_dict())  # closes the step just taken
    assert state["path_integral"]["weight"].abs().sum() > 0
    restored = build_strategy("si", {}, model)
    restored.load_state_dict(state)
    strategy.after_task(context(model, batches()))
    restored.after_task(context(model, batches()))
    assert torch.equal(strategy.penalty().si.importance["weight"],
                       restored.penalty().si.importance["weight"])  # fmt: skip


def test_mas_strategy_consolidates_the_mas_importance():
    model = make_model()
    strategy = build_strategy("mas", {"strength": 2.0, "samples": 6}, model)
    data = batches()
    expected = ewc.mas_importance(model, data, num_samples=6)
    strategy.after_task(context(model, data))
    penalty = strategy.penalty()
    assert penalty.num_tasks == 1
    assert torch.equal(penalty.importance["weight"], expected["weight"])
    twin = build_strategy("mas", {"strength": 2.0}, make_model())
    twin.load_state_dict(strategy.state_dict())
    assert torch.equal(twin.penalty().importance["bias"], expected["bias"])


def test_mas_batch_mean_uses_batches_of_its_batch_size():
    model, data = make_model(), batches()
    x = torch.cat([inputs for inputs, _ in data])
    asked = []

    def rebatch(size):
        asked.append(size)
        return [x[i : i + size] for i in range(0, len(x), size)]

    strategy = build_strategy("mas", {"gradient": "batch-mean", "batch_size": 4}, model)
    ctx = TaskContext(model, 0, data, None, torch.Generator(), "adam", 1e-2, batches=rebatch)
    strategy.after_task(ctx)
    expected = ewc.mas_importance(model, rebatch(4), gradient="batch-mean")
    assert asked == [4, 4]
    assert torch.equal(strategy.penalty().importance["weight"], expected["weight"])
    default = build_strategy("mas", {"gradient": "batch-mean"}, make_model())
    default.after_task(ctx)
    assert asked[-1] == 128  # MAS_BATCH_SIZE, Hsu et al.'s training batch


def test_bad_settings_are_config_errors():
    model = make_model()
    with pytest.raises(ConfigError, match=r"strategies\.si\.damping must be positive"):
        build_strategy("si", {"damping": 0.0}, model)
    with pytest.raises(ConfigError, match=r"strategies\.mas\.samples must be at least 1"):
        build_strategy("mas", {"samples": 0}, model)
    with pytest.raises(ConfigError, match=r"mas\.batch_size applies to gradient = 'batch-mean'"):
        build_strategy("mas", {"batch_size": 64}, model)
    with pytest.raises(ConfigError, match=r"strategies\.mas\.gradient = 'batch' is not one of"):
        build_strategy("mas", {"gradient": "batch"}, model)
    with pytest.raises(ConfigError, match=r"unknown config key 'strategies\.si\.gamma'"):
        build_strategy("si", {"gamma": 0.5}, model)
