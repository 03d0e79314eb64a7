"""EWC and L2 penalties against their closed forms, in float64."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import ewc


@pytest.fixture
def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def random_fisher(model, seed, kind="exact"):
    gen = torch.Generator().manual_seed(seed)
    values = {
        n: torch.rand(p.shape, generator=gen, dtype=p.dtype) for n, p in model.named_parameters()
    }
    values["0.bias"][0] = 0.0  # an entry no task cares about
    return ewc.DiagonalFisher(values, kind=kind, num_samples=10)


def move(model, seed, scale=0.3):
    gen = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def closed_form(model, terms, strength):
    """Σ_t (λ/2) Σ_i F_t,i (θ_i − θ_t,i)² from (F_t, θ_t) pairs."""
    params = dict(model.named_parameters())
    return sum(
        0.5 * strength * (f[n] * (params[n] - anchor[n]).square()).sum()
        for f, anchor in terms
        for n in f
    )


def grads_of(model, value):
    return torch.autograd.grad(value, list(model.parameters()))


def assert_same_value_and_gradient(model, penalty, expected):
    got = penalty()
    assert torch.allclose(got, expected, rtol=1e-12, atol=0)
    for a, b in zip(grads_of(model, got), grads_of(model, expected), strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)


def test_single_task_value_and_gradient_match_the_closed_form(model):
    fisher = random_fisher(model, 0)
    penalty = ewc.EWC(model, strength=7.0)
    penalty.consolidate(fisher)
    anchor = snapshot(model)
    assert float(penalty().detach()) == 0.0  # zero at the anchor
    move(model, 0)
    value = penalty()
    assert value > 0  # and not silently zero elsewhere
    assert_same_value_and_gradient(model, penalty, closed_form(model, [(fisher, anchor)], 7.0))
    for (name, p), g in zip(model.named_parameters(), grads_of(model, penalty()), strict=True):
        assert torch.allclose(g, 7.0 * fisher[name] * (p - anchor[name]), rtol=1e-12)


def test_before_any_consolidation_the_penalty_is_zero(model):
    assert float(ewc.EWC(model, strength=3.0)().detach()) == 0.0


@pytest.mark.parametrize("tasks", [2, 6])
def test_separate_mode_equals_the_sum_of_per_task_penalties(model, tasks):
    penalty = ewc.EWC(model, strength=2.5)
    terms = []
    for t in range(tasks):
        move(model, t)
        fisher = random_fisher(model, t)
        penalty.consolidate(fisher)
        terms.append((fisher, snapshot(model)))
    move(model, 99)
    assert penalty.num_tasks == tasks
    assert_same_value_and_gradient(model, penalty, closed_form(model, terms, 2.5))


def test_online_mode_follows_the_decayed_recursion(model):
    gamma, strength = 0.7, 3.0
    penalty = ewc.EWC(model, strength=strength, mode="online", gamma=gamma)
    running = None
    for t in range(4):
        move(model, t)
        fisher = random_fisher(model, t)
        penalty.consolidate(fisher)
        running = (
            dict(fisher) if running is None else {n: gamma * running[n] + fisher[n] for n in fisher}
        )
        anchor = snapshot(model)
    move(model, 50)
    assert_same_value_and_gradient(
        model, penalty, closed_form(model, [(running, anchor)], strength)
    )


def test_l2_is_the_penalty_with_an_identity_fisher(model):
    penalty = ewc.L2(model, strength=0.5)
    terms = []
    for t in range(3):
        move(model, t)
        penalty.consolidate()
        terms.append(
            ({n: torch.ones_like(p) for n, p in model.named_parameters()}, snapshot(model))
        )
    move(model, 7)
    assert penalty.fisher_kind == "identity"
    assert_same_value_and_gradient(model, penalty, closed_form(model, terms, 0.5))


def test_online_l2_with_gamma_zero_pulls_towards_the_latest_task_only(model):
    """Hsu et al. 2018's L2 (``online_reg``): (λ/2) ‖θ − θ*_T‖², Ω = 1 whatever the task count."""
    penalty = ewc.L2(model, strength=0.5, mode="online", gamma=0.0)
    for t in range(3):
        move(model, t)
        penalty.consolidate()
    latest = snapshot(model)
    move(model, 7)
    ones = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    assert all(torch.equal(o, ones[n]) for n, o in penalty.importance.items())
    assert_same_value_and_gradient(model, penalty, closed_form(model, [(ones, latest)], 0.5))


@pytest.mark.parametrize("mode", ["separate", "online"])
def test_add_gradient_equals_backward_of_the_penalty(model, mode):
    penalty = ewc.EWC(model, strength=4.0, mode=mode, gamma=0.9 if mode == "online" else 1.0)
    for t in range(3):
        move(model, t)
        penalty.consolidate(random_fisher(model, t))
    move(model, 11)
    expected = grads_of(model, penalty())
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    value = penalty.add_gradient_()
    assert torch.allclose(value, penalty().detach(), rtol=1e-12)
    for p, g in zip(model.parameters(), expected, strict=True):
        assert torch.allclose(p.grad, 1.0 + g, rtol=1e-12)
    for p in model.parameters():
        p.grad = None
    penalty.add_gradient_()
    assert all(
        torch.allclose(p.grad, g, rtol=1e-12)
        for p, g in zip(model.parameters(), expected, strict=True)
    )


@pytest.mark.parametrize("mode", ["separate", "online"])
def test_state_dict_round_trip_continues_exactly(model, mode):
    gamma = 0.8 if mode == "online" else 1.0
    penalty = ewc.EWC(model, strength=1.5, mode=mode, gamma=gamma)
    for t in range(2):
        move(model, t)
        penalty.consolidate(random_fisher(model, t))
    restored = ewc.EWC(model, strength=99.0, mode=mode, gamma=gamma)
    restored.load_state_dict(penalty.state_dict())
    assert restored.strength == 1.5
    assert restored.num_tasks == 2
    move(model, 5)
    fisher = random_fisher(model, 5)
    penalty.consolidate(fisher)
    restored.consolidate(fisher)
    move(model, 8)
    assert torch.equal(penalty().detach(), restored().detach())


def test_no_state_is_stored_on_the_model(model):
    keys, attributes = set(model.state_dict()), [set(vars(p)) for p in model.parameters()]
    penalty = ewc.EWC(model, strength=1.0)
    penalty.consolidate(random_fisher(model, 0))
    penalty()
    assert set(model.state_dict()) == keys
    assert [set(vars(p)) for p in model.parameters()] == attributes


def test_to_casts_the_stored_tensors(model):
    penalty = ewc.EWC(model, strength=1.0)
    penalty.consolidate(random_fisher(model, 0))
    penalty.to(torch.float32)
    assert all(t.dtype == torch.float32 for t in penalty.importance.values())
    assert all(t.dtype == torch.float32 for t in penalty.anchor.values())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strength": -1.0}, "strength must be ≥ 0; got -1.0"),
        ({"strength": math.nan}, "strength must be a finite number ≥ 0; got nan"),
        ({"strength": math.inf}, "strength must be a finite number"),
        ({"strength": True}, "strength must be a finite number"),
        (
            {"strength": 1.0, "mode": "offline"},
            "unknown penalty mode 'offline'; valid modes are 'separate', 'online'",
        ),
        ({"strength": 1.0, "mode": "online", "gamma": -1}, r"gamma must be in \[0, 1\]; got -1"),
        ({"strength": 1.0, "mode": "online", "gamma": 1.5}, r"gamma must be in \[0, 1\]; got 1.5"),
        ({"strength": 1.0, "gamma": 0.5}, "gamma=0.5 only applies to mode='online'"),
    ],
)
def test_rejects_bad_settings(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ewc.EWC(model, **kwargs)


def test_rejects_fishers_that_do_not_fit_the_model(model):
    penalty = ewc.EWC(model, strength=1.0)
    good = dict(random_fisher(model, 0))
    with pytest.raises(ValueError, match=r"missing \['2.bias'\], unexpected \['head.bias'\]"):
        penalty.consolidate(
            {**{n: v for n, v in good.items() if n != "2.bias"}, "head.bias": good["2.bias"]}
        )
    with pytest.raises(
        ValueError, match=r"Fisher entry '0.weight' has shape \(4, 5\); the parameter has \(5, 4\)"
    ):
        penalty.consolidate({**good, "0.weight": good["0.weight"].T})
    nan = good["2.weight"].clone()
    nan[0, 0] = math.nan
    with pytest.raises(ValueError, match=r"'2\.weight' has 1 non-finite and 0 negative values"):
        penalty.consolidate({**good, "2.weight": nan})
    with pytest.raises(ValueError, match=r"'2\.weight' has 0 non-finite and 15 negative values"):
        penalty.consolidate({**good, "2.weight": -good["2.weight"] - 1})
    assert penalty.num_tasks == 0  # nothing half-consolidated


def test_rejects_mixing_fisher_kinds(model):
    penalty = ewc.EWC(model, strength=1.0)
    penalty.consolidate(random_fisher(model, 0, kind="exact"))
    with pytest.raises(
        ValueError, match="holds 'exact' Fishers and a 'batched' Fisher is a different quantity"
    ):
        penalty.consolidate(random_fisher(model, 1, kind="batched"))


def test_rejects_a_changed_set_of_trainable_parameters(model):
    penalty = ewc.EWC(model, strength=1.0)
    penalty.consolidate(random_fisher(model, 0))
    model[0].bias.requires_grad_(False)
    with pytest.raises(ValueError, match=r"trainable parameters changed .* removed \['0.bias'\]"):
        penalty.consolidate({n: v for n, v in random_fisher(model, 1).items() if n != "0.bias"})


def test_the_penalty_follows_a_module_replaced_by_one_of_the_same_shapes(model):
    """The penalty is on the model's parameters by name: a new head is the one pulled back."""
    fisher = random_fisher(model, 0)
    penalty = ewc.EWC(model, strength=3.0)
    penalty.consolidate(fisher)
    anchor = snapshot(model)
    model[2] = nn.Linear(5, 3).double()  # e.g. a re-initialised head
    assert_same_value_and_gradient(model, penalty, closed_form(model, [(fisher, anchor)], 3.0))
    penalty.add_gradient_()
    expected = 3.0 * fisher["2.weight"] * (model[2].weight - anchor["2.weight"])
    assert torch.allclose(model[2].weight.grad, expected.detach(), rtol=1e-12)


def test_the_penalty_follows_load_state_dict_with_assign(model):
    fisher = random_fisher(model, 0)
    penalty = ewc.EWC(model, strength=3.0)
    penalty.consolidate(fisher)
    anchor = snapshot(model)
    moved = copy.deepcopy(model)
    move(moved, 1)
    model.load_state_dict(moved.state_dict(), assign=True)  # new Parameter objects
    assert_same_value_and_gradient(model, penalty, closed_form(model, [(fisher, anchor)], 3.0))


def test_a_removed_or_reshaped_parameter_is_refused_not_broadcast(model):
    penalty = ewc.EWC(model, strength=1.0)
    penalty.consolidate(random_fisher(model, 0))
    head = model[2]
    model[2] = nn.Linear(5, 1).double()  # the same names, another shape
    for call in (penalty, penalty.add_gradient_):
        with pytest.raises(ValueError, match=r"'2.weight' has shape \(1, 5\) but was consolidated"):
            call()
    with pytest.raises(ValueError, match=r"'2.weight' has shape \(1, 5\) but was consolidated"):
        penalty.consolidate(random_fisher(model, 1))
    del model[2]
    with pytest.raises(ValueError, match=r"no longer has the consolidated parameters \['2.weight'"):
        penalty()
    model.append(head)
    assert penalty() >= 0  # the original head back: fine again


def test_a_parameter_frozen_after_consolidation_gets_no_gradient_on_any_path(model):
    fisher = random_fisher(model, 0)
    penalty = ewc.EWC(model, strength=2.0)
    penalty.consolidate(fisher)
    anchor = snapshot(model)
    move(model, 0)
    model[0].weight.requires_grad_(False)
    expected = closed_form(model, [(fisher, anchor)], 2.0)
    assert torch.allclose(penalty(), expected, rtol=1e-12)  # still in the value, as autograd
    penalty.add_gradient_()
    assert model[0].weight.grad is None
    assert model[2].weight.grad is not None
    frozen = model[0].weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    penalty.attach(optimizer)
    optimizer.step()
    assert torch.equal(model[0].weight, frozen)


def test_rejects_a_state_dict_of_another_mode(model):
    online = ewc.EWC(model, strength=1.0, mode="online")
    with pytest.raises(
        ValueError, match="state_dict is for mode 'online'; this penalty is 'separate'"
    ):
        ewc.EWC(model, strength=1.0).load_state_dict(online.state_dict())


@pytest.mark.parametrize("mode", ["separate", "online"])
def test_attach_adds_the_penalty_gradient_before_every_step(model, mode):
    """The optimizer hook gives the update of (loss + penalty()).backward(), step after step."""
    penalty = ewc.EWC(model, strength=4.0, mode=mode, gamma=0.9 if mode == "online" else 1.0)
    for t in range(3):
        move(model, t)
        penalty.consolidate(random_fisher(model, t))
    move(model, 11)
    twin = copy.deepcopy(model)
    twin_penalty = ewc.EWC(twin, strength=4.0, mode=mode, gamma=penalty.gamma)
    twin_penalty.load_state_dict(penalty.state_dict())
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    hooked = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    plain = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    handle = penalty.attach(hooked)
    for _ in range(3):
        hooked.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        hooked.step()
        plain.zero_grad()
        (nn.functional.cross_entropy(twin(x), y) + twin_penalty()).backward()
        plain.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-12, atol=1e-14)
    handle.remove()
    before = snapshot(model)
    hooked.zero_grad(set_to_none=True)
    hooked.step()  # no gradient and no hook: nothing moves
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_attach_rejects_what_is_not_an_optimizer(model):
    with pytest.raises(TypeError, match=r"attach needs a torch\.optim\.Optimizer; got list"):
        ewc.EWC(model, strength=1.0).attach([])


@pytest.mark.parametrize("mode", ["separate", "online"])
def test_add_gradient_without_the_value_adds_the_same_gradient(model, mode):
    """The two-pass path of `attach` (Δ, then .grad += λ Ω Δ) against autograd, in float64."""
    gamma = 0.9 if mode == "online" else 1.0
    penalty = ewc.EWC(model, strength=3.0, mode=mode, gamma=gamma)
    terms = []  # (F_t, θ_t); online: one term, Ω = Σ_t γ^(T−t) F_t at the latest θ*
    for t in range(3):
        move(model, t)
        fisher = random_fisher(model, t)
        penalty.consolidate(fisher)
        if mode == "online" and terms:
            omega, _ = terms.pop()
            fisher = {n: gamma * omega[n] + fisher[n] for n in omega}
        terms.append((dict(fisher), snapshot(model)))
    move(model, 7)
    expected = grads_of(model, closed_form(model, terms, 3.0))
    model.zero_grad(set_to_none=True)
    assert penalty.add_gradient_(value=False) is None  # .grad is None: set, not added
    for p, g in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-14)
    assert penalty.add_gradient_(value=False) is None  # now added onto what is there
    for p, g in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, 2 * g, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_add_gradient_without_the_value_casts_into_half_precision_grads(model, dtype):
    """Ω and θ̄ stay float32 for half parameters; both paths round once into .grad's dtype."""
    penalty = ewc.EWC(model, strength=3.0)
    penalty.consolidate(random_fisher(model, 0))
    move(model, 1)
    model.to(dtype)
    grads = {}
    for value in (True, False):
        model.zero_grad(set_to_none=True)
        penalty.add_gradient_(value=value)
        assert all(p.grad.dtype == dtype for p in model.parameters())
        grads[value] = [p.grad.float() for p in model.parameters()]
    for a, b in zip(grads[True], grads[False], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)


def test_add_gradient_never_hands_out_its_work_buffers(model):
    penalty = ewc.EWC(model, strength=2.0)
    penalty.consolidate(random_fisher(model, 0))
    move(model, 1)
    penalty.add_gradient_()
    first = {n: p.grad.clone() for n, p in model.named_parameters()}
    kept = {n: p.grad for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    move(model, 2)
    penalty.add_gradient_()  # rewrites the buffers; the earlier .grad tensors must not change
    assert all(torch.equal(kept[n], first[n]) for n in first)


def test_the_work_buffers_change_no_bit(model):
    """`add_gradient_` writes into kept buffers; `ewc run`'s matrices rely on the same bits."""
    model = model.float()
    penalty = ewc.EWC(model, strength=3.0)
    for t in range(3):
        move(model, t)
        penalty.consolidate({n: v.float() for n, v in random_fisher(model, t).items()})
    move(model, 5)
    params = list(model.parameters())
    with torch.no_grad():
        value, fresh = penalty._value_and_weighted(params)
    model.zero_grad(set_to_none=True)
    assert torch.equal(penalty.add_gradient_(), value)
    assert all(torch.equal(p.grad, 3.0 * w) for p, w in zip(params, fresh, strict=True))


def consolidated_pair(model, strength=4.0):
    """The model's penalty after one task, and a deep-copied twin with the same penalty."""
    penalty = ewc.EWC(model, strength=strength)
    penalty.consolidate(random_fisher(model, 0))
    move(model, 3)
    twin = copy.deepcopy(model)
    twin_penalty = ewc.EWC(twin, strength=strength)
    twin_penalty.load_state_dict(penalty.state_dict())
    return penalty, twin, twin_penalty


BATCH = (torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2]))


def test_attach_with_one_optimizer_per_layer_penalises_each_layer_once(model):
    penalty, twin, twin_penalty = consolidated_pair(model)
    first = torch.optim.SGD(model[0].parameters(), lr=0.1)
    second = torch.optim.Adam(model[2].parameters(), lr=0.01)
    for optimizer in (first, second):
        penalty.attach(optimizer)
    plain = [
        torch.optim.SGD(twin[0].parameters(), lr=0.1),
        torch.optim.Adam(twin[2].parameters(), lr=0.01),
    ]
    for _ in range(2):
        for o in (first, second, *plain):
            o.zero_grad()
        nn.functional.cross_entropy(model(BATCH[0]), BATCH[1]).backward()
        second.step()
        first.step()  # the order of the steps does not matter
        (nn.functional.cross_entropy(twin(BATCH[0]), BATCH[1]) + twin_penalty()).backward()
        for o in plain:
            o.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-12, atol=1e-14)


def test_attach_under_a_grad_scaler_with_a_fused_optimizer(model):
    """A fused optimizer unscales inside its step: the penalty's gradient must carry the scale."""
    penalty, twin, twin_penalty = consolidated_pair(model)
    fused = torch.optim.SGD(model.parameters(), lr=0.1, fused=True)
    penalty.attach(fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(nn.functional.cross_entropy(model(BATCH[0]), BATCH[1])).backward()
    scaler.step(fused)
    plain = torch.optim.SGD(twin.parameters(), lr=0.1)
    (nn.functional.cross_entropy(twin(BATCH[0]), BATCH[1]) + twin_penalty()).backward()
    plain.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-12, atol=1e-14)


def test_attach_refuses_what_would_lose_or_double_the_penalty(model):
    penalty, twin, _ = consolidated_pair(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    penalty.attach(optimizer)
    with pytest.raises(ValueError, match="already attached to this optimizer"):
        penalty.attach(optimizer)
    with pytest.raises(ValueError, match="LBFGS re-evaluates its closure"):
        penalty.attach(torch.optim.LBFGS(model.parameters()))
    other = torch.optim.SGD(twin.parameters(), lr=0.1)  # another model's parameters
    penalty.attach(other)
    nn.functional.cross_entropy(twin(BATCH[0]), BATCH[1]).backward()
    with pytest.raises(ValueError, match="holds none of the penalised parameters"):
        other.step()


def test_a_step_without_any_gradient_stays_a_no_op(model):
    penalty, _, _ = consolidated_pair(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    penalty.attach(optimizer)
    before = snapshot(model)
    optimizer.zero_grad(set_to_none=True)
    optimizer.step()  # e.g. a skipped batch: nothing was backpropagated
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
