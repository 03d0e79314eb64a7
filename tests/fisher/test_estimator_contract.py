"""What diagonal_fisher promises besides the numbers: modes, hooks, .grad, options and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ewc
from model_zoo import build, mlp, norms, sequence
from reference import assert_fisher_close, brute_force_fisher, in_batches


def hook_count(model):
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def test_restores_each_module_mode_and_leaves_no_hooks():
    case = build(norms)
    case.model.train()
    case.model[1].eval()  # a deliberately frozen BatchNorm stays in eval mode
    before = [m.training for m in case.model.modules()]
    fisher = ewc.diagonal_fisher(case.model, in_batches(case, 3))
    assert [m.training for m in case.model.modules()] == before
    assert hook_count(case.model) == 0
    assert all(not v.requires_grad for v in fisher.values())


def test_uses_running_statistics_even_when_the_model_is_training():
    case = build(norms)
    case.model.train()
    running = case.model[1].running_mean.clone()
    fast = ewc.diagonal_fisher(case.model, in_batches(case, 3), "empirical")
    assert torch.equal(case.model[1].running_mean, running)
    assert_fisher_close(
        fast, brute_force_fisher(case.model, case.inputs, case.targets, "empirical")
    )


def test_does_not_touch_grad():
    case = build(mlp)
    sentinel = torch.full_like(case.model[1].weight, 3.0)
    case.model[1].weight.grad = sentinel
    ewc.diagonal_fisher(case.model, in_batches(case, 3))
    ewc.diagonal_fisher(case.model, in_batches(case, 3), "batched")
    assert case.model[1].weight.grad is sentinel
    assert torch.equal(sentinel, torch.full_like(sentinel, 3.0))
    assert case.model[3].weight.grad is None


def test_cleans_up_when_an_error_escapes_mid_way():
    case = build(mlp)
    case.model.train()
    bad = [(case.inputs[:3], case.targets[:3]), (case.inputs[3:], case.targets[3:] + 100)]
    with pytest.raises(ValueError, match=r"batch 1: labels must be in \[0, 5\); got 10"):
        ewc.diagonal_fisher(case.model, bad, "empirical")
    assert hook_count(case.model) == 0
    assert case.model.training
    assert all(p.grad is None for p in case.model.parameters())


def test_works_under_no_grad_and_for_a_model_left_in_train_mode():
    case = build(mlp)
    with torch.no_grad():
        fisher = ewc.diagonal_fisher(case.model, in_batches(case, 3))
    assert sum(v.sum() for v in fisher.values()) > 0


def test_num_samples_caps_the_inputs_in_iteration_order():
    case = build(mlp)
    fast = ewc.diagonal_fisher(case.model, in_batches(case, 3), "exact", num_samples=5)
    assert fast.num_samples == 5
    reference = brute_force_fisher(case.model, case.inputs[:5], case.targets[:5], "exact")
    assert_fisher_close(fast, reference)


def test_sample_kind_is_reproducible_with_a_generator():
    case = build(mlp)

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return ewc.diagonal_fisher(
            case.model, in_batches(case, 3), "sample", samples_per_input=2, generator=gen
        )

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


def relative_l2(a, b):
    diff = sum((a[n] - b[n]).square().sum() for n in a)
    return float((diff / sum(b[n].square().sum() for n in b)).sqrt())


@pytest.mark.parametrize("draws", [20_000])
def test_sample_converges_to_exact(draws):
    case = build(mlp, seed=2)
    data = [(case.inputs, case.targets)]
    exact = ewc.diagonal_fisher(case.model, data, "exact")
    gen = torch.Generator().manual_seed(0)
    few = ewc.diagonal_fisher(case.model, data, "sample", samples_per_input=20, generator=gen)
    many = ewc.diagonal_fisher(case.model, data, "sample", samples_per_input=draws, generator=gen)
    assert relative_l2(many, exact) < 0.03
    assert relative_l2(many, exact) < relative_l2(few, exact) / 5


def test_embedding_padding_row_stays_zero():
    case = build(sequence)
    fisher = ewc.diagonal_fisher(case.model, in_batches(case, 3))
    assert fisher["embed.weight"][0].abs().sum() == 0
    assert fisher["embed.weight"][1:].abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "fisher"}, "unknown Fisher kind 'fisher'; valid kinds are 'exact', 'sample'"),
        ({"num_samples": 0}, "num_samples must be a positive integer or None; got 0"),
        ({"num_samples": 2.5}, "num_samples must be a positive integer or None"),
        ({"samples_per_input": 0}, "samples_per_input must be a positive integer; got 0"),
        ({"kind": "exact", "samples_per_input": 4}, "only applies to kind='sample'"),
    ],
)
def test_rejects_bad_options(kwargs, message):
    case = build(mlp)
    with pytest.raises(ValueError, match=message):
        ewc.diagonal_fisher(case.model, in_batches(case, 3), **kwargs)


def test_rejects_bad_models_and_data():
    case = build(mlp)
    frozen = nn.Linear(3, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        ewc.diagonal_fisher(frozen, [(torch.randn(2, 3), torch.zeros(2, dtype=torch.long))])
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        ewc.diagonal_fisher(lambda x: x, in_batches(case, 3))
    with pytest.raises(ValueError, match="data yielded no samples"):
        ewc.diagonal_fisher(case.model, [])
    with pytest.raises(
        TypeError, match=r"batch 0: expected an \(inputs, targets\) pair; got Tensor"
    ):
        ewc.diagonal_fisher(case.model, [case.inputs])
    with pytest.raises(
        ValueError, match=r"batch 0: inputs .* and targets .* must share their first"
    ):
        ewc.diagonal_fisher(case.model, [(case.inputs, case.targets[:2])])


def test_rejects_logits_of_the_wrong_shape():
    case = build(mlp)
    with pytest.raises(
        ValueError,
        match=r"batch 0: expected floating logits of shape \(3, classes\) or \(3, tokens, cl",
    ):
        ewc.diagonal_fisher(case.model, in_batches(case, 3), output_fn=lambda z: z[:, None, None])
    with pytest.raises(ValueError, match="at least 2 logits"):
        ewc.diagonal_fisher(case.model, in_batches(case, 3), output_fn=lambda z: z[:, :1])
    with pytest.raises(TypeError, match="must return a logits tensor; got list"):
        ewc.diagonal_fisher(case.model, in_batches(case, 3), output_fn=lambda z: [z])


def test_rejects_float_labels_for_kinds_that_read_labels():
    case = build(mlp)
    data = [(case.inputs, case.targets.double())]
    with pytest.raises(TypeError, match=r"batch 0: labels must be integers; got torch\.float64"):
        ewc.diagonal_fisher(case.model, data, "empirical")
    assert ewc.diagonal_fisher(case.model, data, "exact").num_samples == len(case.inputs)


def test_rejects_batch_norm_with_batch_statistics():
    model = nn.Sequential(
        nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 2)
    )
    with pytest.raises(ValueError, match="batch norm '1' normalises with batch statistics"):
        ewc.diagonal_fisher(model, [(torch.randn(5, 3), torch.zeros(5, dtype=torch.long))])


def test_rejects_embedding_scaled_by_batch_frequency():
    model = nn.Sequential(
        nn.Embedding(5, 3, scale_grad_by_freq=True), nn.Flatten(), nn.Linear(6, 2)
    )
    with pytest.raises(ValueError, match="embedding '0' uses scale_grad_by_freq=True"):
        ewc.diagonal_fisher(
            model, [(torch.randint(0, 5, (4, 2)), torch.zeros(4, dtype=torch.long))]
        )


class InPlaceResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.out = nn.Linear(3, 2)

    def forward(self, x):
        x = x.clone()
        h = self.lin(x)
        x += h  # rewrites the input the Linear saw
        return self.out(x)


def test_rejects_inputs_modified_in_place_after_the_module_ran():
    with pytest.raises(RuntimeError, match="the input of module 'lin' was modified in place"):
        ewc.diagonal_fisher(
            InPlaceResidual(), [(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))]
        )


class WithUnusedLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(3, 2).requires_grad_(False)
        self.unused = nn.Linear(3, 3)  # trainable, never called

    def forward(self, x):
        return self.body(x)


def test_parameters_that_never_reach_the_logits_get_zero():
    fisher = ewc.diagonal_fisher(
        WithUnusedLayer(), [(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))]
    )
    assert set(fisher) == {"unused.weight", "unused.bias"}
    assert all(float(v.abs().sum()) == 0.0 for v in fisher.values())
