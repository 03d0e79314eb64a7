"""Synaptic Intelligence on trajectories small enough to follow by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ewc


class Scalar(nn.Module):
    def __init__(self, *values):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(values, dtype=torch.float64))


def sgd_steps(model, si, loss_fn, lr, steps):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model.theta).backward()
        si.before_step()
        si.add_gradient_()
        opt.step()
        si.after_step()


def test_one_parameter_two_tasks_by_hand():
    model = Scalar(1.0)
    si = ewc.SynapticIntelligence(model, strength=3.0, damping=0.25)
    # task 1: L = (θ − 3)², SGD lr 1/4 from θ = 1: g = −4, Δθ = 1; g = −2, Δθ = 1/2
    sgd_steps(model, si, lambda t: ((t - 3) ** 2).sum(), lr=0.25, steps=2)
    assert si.path_integral["theta"].item() == pytest.approx(4 + 1)
    si.consolidate()  # Ω = 5 / (1.5² + 0.25) = 2, θ̃ = 2.5
    assert si.importance["theta"].item() == pytest.approx(2.0)
    assert si.anchor["theta"].item() == pytest.approx(2.5)
    with torch.no_grad():
        model.theta.fill_(3.5)
    value = si()
    assert value.item() == pytest.approx(3.0 * 2.0 * 1.0)  # c Ω (θ − θ̃)², no 1/2
    (gradient,) = torch.autograd.grad(value, [model.theta])
    assert gradient.item() == pytest.approx(2 * 3.0 * 2.0 * 1.0)
    with torch.no_grad():
        model.theta.fill_(2.5)
    # task 2: L = θ², lr 0.1. Step 1: g = 5, penalty 0, Δθ = −0.5 (ω = 2.5).
    # Step 2: g = 4, penalty gradient 2·3·2·(2 − 2.5) = −6, Δθ = −0.1·(4 − 6) = 0.2:
    # ω += −4 · 0.2 (the task loss's g only; with the penalty's it would be +0.4)
    sgd_steps(model, si, lambda t: (t**2).sum(), lr=0.1, steps=2)
    assert model.theta.item() == pytest.approx(2.2)
    assert si.path_integral["theta"].item() == pytest.approx(2.5 - 0.8)
    si.consolidate()  # Ω = 2 + 1.7 / (0.3² + 0.25) = 7
    assert si.importance["theta"].item() == pytest.approx(7.0)
    assert si.anchor["theta"].item() == pytest.approx(2.2)
    assert si.num_tasks == 2


def test_any_optimizer_path_integral_matches_a_recorded_trajectory():
    torch.manual_seed(0)
    model = Scalar(0.3, -1.2)
    si = ewc.SynapticIntelligence(model, strength=1.0, damping=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    target = torch.tensor([2.0, 0.5], dtype=torch.float64)
    expected = torch.zeros(2, dtype=torch.float64)
    start = model.theta.detach().clone()
    for _ in range(7):
        opt.zero_grad()
        ((model.theta - target) ** 4).sum().backward()
        g, before = model.theta.grad.clone(), model.theta.detach().clone()
        si.before_step()
        opt.step()
        si.after_step()
        expected -= g * (model.theta.detach() - before)
    assert torch.allclose(si.path_integral["theta"], expected, rtol=1e-12)
    si.consolidate()
    moved = model.theta.detach() - start
    omega = (expected / (moved**2 + 0.1)).clamp_min(0)
    assert torch.allclose(si.importance["theta"], omega, rtol=1e-12)


def test_negative_importance_is_clipped_to_zero():
    model = Scalar(0.0, 0.0)
    si = ewc.SynapticIntelligence(model, strength=1.0, damping=0.25)
    model.theta.grad = torch.tensor([1.0, -1.0], dtype=torch.float64)
    si.before_step()
    with torch.no_grad():
        model.theta.add_(1.0)  # first entry moved along its gradient: ω = −1
    si.after_step()
    si.consolidate()
    assert si.importance["theta"].tolist() == [0.0, pytest.approx(0.8)]


def test_state_dict_round_trip_mid_task_and_to():
    model = Scalar(1.0, 2.0)
    si = ewc.SynapticIntelligence(model, strength=2.0, damping=0.5)
    sgd_steps(model, si, lambda t: ((t - 3) ** 2).sum(), lr=0.1, steps=3)
    si.consolidate()
    sgd_steps(model, si, lambda t: (t**2).sum(), lr=0.1, steps=2)
    twin = ewc.SynapticIntelligence(model, strength=1.0)
    twin.load_state_dict(si.state_dict())
    assert twin.damping == 0.5
    assert twin.strength == 2.0
    assert torch.equal(twin.path_integral["theta"], si.path_integral["theta"])
    assert torch.equal(twin(), si())
    si.consolidate()
    twin.consolidate()
    assert torch.equal(twin.importance["theta"], si.importance["theta"])
    si.to(torch.float32)
    assert si.importance["theta"].dtype == torch.float32
    assert si.path_integral["theta"].dtype == torch.float32


def test_misuse_is_named():
    model = Scalar(1.0)
    with pytest.raises(ValueError, match="damping"):
        ewc.SynapticIntelligence(model, strength=1.0, damping=0.0)
    si = ewc.SynapticIntelligence(model, strength=1.0)
    with pytest.raises(RuntimeError, match="after_step\\(\\) needs a matching before_step"):
        si.after_step()
    si.before_step()
    with pytest.raises(RuntimeError, match="without its after_step"):
        si.consolidate()


def test_the_path_integral_follows_parameters_replaced_by_name():
    model = Scalar(1.0, 2.0)
    si = ewc.SynapticIntelligence(model, strength=1.0)
    model.load_state_dict({"theta": torch.tensor([1.0, 2.0], dtype=torch.float64)}, assign=True)
    sgd_steps(model, si, lambda theta: (theta - 3.0).square().sum(), lr=0.1, steps=5)
    assert (si.path_integral["theta"] > 0).all()  # the steps taken on the new parameter count
    model.theta = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"'theta' has shape \(3,\) but SI tracks it"):
        si.before_step()


def task_two_by_hand(si_order):
    """The hand example's task 2 with ω from the total gradient, the step run by ``si_order``."""
    model = Scalar(1.0)
    si = ewc.SynapticIntelligence(model, strength=3.0, damping=0.25, path_gradient="total")
    sgd_steps(model, si, lambda t: ((t - 3) ** 2).sum(), lr=0.25, steps=2)  # no penalty yet
    si.consolidate()  # Ω = 2, θ̃ = 2.5, as in the task-loss example
    with torch.no_grad():
        model.theta.fill_(2.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        si_order(model, si, opt)
        si.after_step()
    return model, si


def test_the_total_path_gradient_counts_the_penalty_whichever_way_it_reaches_grad():
    # Step 2 of task 2: g = 4 + penalty −6 = −2, Δθ = 0.2: ω += +0.4 (the task loss alone: −0.8)
    def backward_then_record_then_add(model, si, opt):
        (model.theta**2).sum().backward()
        si.before_step()
        si.add_gradient_()
        opt.step()

    def add_then_record(model, si, opt):
        (model.theta**2).sum().backward()
        si.add_gradient_()
        si.before_step()
        opt.step()

    def joint_backward(model, si, opt):
        ((model.theta**2).sum() + si()).backward()
        si.before_step()
        opt.step()

    def attached_hook(model, si, opt):
        (model.theta**2).sum().backward()
        si.before_step()
        with_hook = si.attach(opt)
        opt.step()
        with_hook.remove()

    for order in (backward_then_record_then_add, add_then_record, joint_backward, attached_hook):
        model, si = task_two_by_hand(order)
        assert model.theta.item() == pytest.approx(2.2), order.__name__
        assert si.path_integral["theta"].item() == pytest.approx(2.5 + 0.4), order.__name__
        si.consolidate()  # Ω = 2 + 2.9 / (0.3² + 0.25)
        assert si.importance["theta"].item() == pytest.approx(2 + 2.9 / 0.34), order.__name__


def test_the_clamp_is_counted_and_the_path_gradient_is_kept_in_the_state():
    model = Scalar(0.0, 0.0)
    si = ewc.SynapticIntelligence(model, strength=1.0, damping=0.25, path_gradient="total")
    model.theta.grad = torch.tensor([1.0, -1.0], dtype=torch.float64)
    si.before_step()
    with torch.no_grad():
        model.theta.add_(1.0)
    si.after_step()
    si.consolidate()
    assert si.clamped == 1
    twin = ewc.SynapticIntelligence(model, strength=1.0)
    twin.load_state_dict(si.state_dict())
    assert twin.path_gradient == "total"
    old = si.state_dict()
    del old["path_gradient"]  # a state written before the option existed
    twin = ewc.SynapticIntelligence(model, strength=1.0)
    twin.load_state_dict(old)
    assert twin.path_gradient == "task"
    with pytest.raises(
        ValueError, match=r"unknown SI path gradient 'both'; valid .*'task', 'total'"
    ):
        ewc.SynapticIntelligence(model, strength=1.0, path_gradient="both")
