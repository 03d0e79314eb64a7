"""train_epoch and evaluate: what they compute, and how they fail."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ewc
from ewc._batches import Batch
from ewc.training import train_step


def separable(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=gen)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)]


def linear_model(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(2, 2)


def test_training_lowers_the_loss_and_raises_accuracy():
    model, data = linear_model(), separable()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    first = ewc.train_epoch(model, data, opt)
    for _ in range(10):
        last = ewc.train_epoch(model, data, opt)
    assert last < first
    assert ewc.evaluate(model, data) > 0.9
    assert model.training


def test_a_penalty_is_added_to_the_loss_exactly_as_written_by_hand():
    data = separable()
    a, b = linear_model(1), linear_model(1)
    pa, pb = ewc.L2(a, strength=3.0), ewc.L2(b, strength=3.0)
    pa.consolidate()
    pb.consolidate()
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    mean_loss = ewc.train_epoch(a, data, opt_a, penalty=pa)
    total = 0.0
    for x, y in data:
        loss = F.cross_entropy(b(x), y) + pb()
        total += float(loss.detach())
        opt_b.zero_grad()
        loss.backward()
        opt_b.step()
    assert mean_loss == pytest.approx(total / len(data), rel=1e-6)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_evaluate_counts_correct_predictions_and_restores_the_mode():
    model = nn.Linear(1, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        model.bias.zero_()
    x = torch.tensor([[1.0], [2.0], [-1.0], [3.0]])  # predicts 0, 0, 1, 0
    y = torch.tensor([0, 1, 1, 0])
    model.train()
    assert ewc.evaluate(model, [(x[:3], y[:3]), (x[3:], y[3:])]) == 0.75
    assert model.training


def test_output_fn_selects_a_head_for_training_and_evaluation():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])

        def forward(self, x):
            return [h(x) for h in self.heads]

    torch.manual_seed(0)
    model, data = TwoHeads(), separable()
    untouched = model.heads[0].weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(5):
        ewc.train_epoch(model, data, opt, output_fn=lambda out: out[1])
    assert torch.equal(model.heads[0].weight, untouched)
    assert ewc.evaluate(model, data, output_fn=lambda out: out[1]) > 0.9


def test_labels_out_of_range_name_the_batch():
    model, data = linear_model(), separable()
    data[2] = (data[2][0], data[2][1] + 2)
    with pytest.raises(ValueError, match=r"batch 2: labels must be in \[0, 2\); got 3"):
        ewc.train_epoch(model, data, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match=r"batch 2: labels must be in \[0, 2\)"):
        ewc.evaluate(model, data)


def test_shape_mismatches_name_the_batch():
    model, data = linear_model(), separable()
    data[1] = (data[1][0], data[1][1][:, None].expand(16, 2))
    with pytest.raises(
        ValueError, match=r"batch 1: expected 16 labels of shape \(16,\); got shape \(16, 2\)"
    ):
        ewc.train_epoch(model, data, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(
        ValueError, match=r"batch 0: expected floating logits of shape \(16, classes\)"
    ):
        ewc.evaluate(nn.Sequential(nn.Linear(2, 2), nn.Flatten(0)), separable())


def test_a_non_finite_loss_names_the_batch_and_takes_no_step():
    model, data = linear_model(), separable()
    data[3] = (data[3][0] * math.inf, data[3][1])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ewc.NonFiniteLossError, match="batch 3: the loss is not finite") as error:
        ewc.train_epoch(model, data, opt)
    assert "the step was not taken" in str(error.value)
    assert "check the batch's inputs for NaN or inf" in str(error.value)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_non_finite_task_loss_beside_a_finite_penalty_does_not_blame_the_strength():
    model, data = linear_model(), separable()
    penalty = ewc.EWC(model, strength=1.0)
    penalty.consolidate({n: torch.ones_like(p) for n, p in model.named_parameters()})
    data[2] = (data[2][0] * math.nan, data[2][1])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ewc.NonFiniteLossError) as error:
        ewc.train_epoch(model, data, opt, penalty=penalty)
    message = str(error.value)
    assert message.startswith("batch 2: the loss is not finite (task loss nan, penalty ")
    assert "the penalty is finite: lower the learning rate, or check" in message
    assert "lower the strength" not in message


def test_a_diverging_penalty_is_reported_with_its_value():
    model, data = linear_model(), separable()
    penalty = ewc.EWC(model, strength=1e30)
    penalty.consolidate({n: torch.full_like(p, 1e30) for n, p in model.named_parameters()})
    with torch.no_grad():
        model.weight.add_(1e10)
    with pytest.raises(ewc.NonFiniteLossError, match=r"batch 0: .*penalty inf") as error:
        ewc.train_epoch(model, data, torch.optim.SGD(model.parameters(), lr=0.1), penalty=penalty)
    assert "the penalty is not finite: a large strength × Fisher diverges" in str(error.value)


def test_evaluate_rejects_empty_data():
    with pytest.raises(ValueError, match="yielded no samples"):
        ewc.evaluate(linear_model(), [])


class Tagger(nn.Module):
    """Per-token logits (N, T, 3) from token ids."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 3)

    def forward(self, ids):
        return self.embed(ids)


def tagged(n=32, length=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 5, (n, length), generator=gen)
    targets = (ids % 3).masked_fill(torch.arange(length) >= length - 2, -100)  # 2 padded tokens
    return [(ids[i : i + 8], targets[i : i + 8]) for i in range(0, n, 8)]


def test_sequence_logits_train_with_the_token_level_cross_entropy():
    torch.manual_seed(0)
    model, data = Tagger(), tagged()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    first = ewc.train_epoch(model, data, opt)
    for _ in range(20):
        last = ewc.train_epoch(model, data, opt)
    assert last < first
    assert ewc.evaluate(model, data) == 1.0  # the padded tokens, labelled -100, are not counted


def test_the_default_loss_is_the_mean_over_counted_tokens():
    logits, targets = torch.randn(2, 4, 3), torch.tensor([[0, 1, -100, -100], [2, 2, 1, -100]])
    kept = targets != -100
    by_hand = F.cross_entropy(logits[kept], targets[kept])
    assert torch.allclose(ewc.training.cross_entropy(logits, targets), by_hand)
    flat = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    assert torch.equal(ewc.training.cross_entropy(*flat), F.cross_entropy(*flat))


def test_token_accuracy_leaves_out_the_ignored_tokens():
    logits = torch.tensor([[[5.0, 0, 0], [5.0, 0, 0], [5.0, 0, 0]]])  # always predicts 0
    model = nn.Identity()
    model.register_parameter("p", nn.Parameter(torch.zeros(1)))
    targets = torch.tensor([[0, 1, -100]])
    assert ewc.evaluate(model, [(logits, targets)]) == 0.5
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\) or -100 \(ignored\); got 7"):
        ewc.evaluate(model, [(logits, torch.tensor([[0, 7, -100]]))])


def test_train_step_refuses_a_penalty_it_would_apply_twice_or_to_another_model():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).double()
    penalty = ewc.EWC(model, strength=1.0)
    penalty.consolidate({n: torch.ones_like(p) for n, p in model.named_parameters()})
    batch = Batch(0, torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 0, 1]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    penalty.attach(optimizer)
    with pytest.raises(ValueError, match="would be added twice"):
        train_step(model, batch, optimizer, penalty=penalty)
    other = copy.deepcopy(model)
    with pytest.raises(ValueError, match="built on another model"):
        train_step(other, batch, torch.optim.SGD(other.parameters(), lr=0.1), penalty=penalty)
