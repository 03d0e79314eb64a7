"""TensorBatches: every sample once per pass, a new order per pass, reproducible from a state."""

from __future__ import annotations

import pytest
import torch

from ewc.experiment.streams.loaders import TensorBatches


def data(n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = torch.arange(n, dtype=torch.float32).view(n, 1).expand(n, 3).clone()
    return inputs, torch.arange(n)


def order_of(batches: TensorBatches) -> list[int]:
    seen = []
    for inputs, targets in batches:
        assert torch.equal(inputs[:, 0].long(), targets)  # pairs stay together
        seen += targets.tolist()
    return seen


def test_unshuffled_batches_are_in_order_and_the_last_one_is_smaller():
    batches = TensorBatches(*data(10), batch_size=4)
    assert len(batches) == 3
    assert [t.tolist() for _, t in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(TensorBatches(*data(8), batch_size=4)) == 2
    assert len(TensorBatches(*data(0), batch_size=4)) == 0
    assert list(TensorBatches(*data(0), batch_size=4)) == []


def test_shuffled_passes_cover_every_sample_once_in_a_new_order():
    batches = TensorBatches(*data(50), batch_size=8, shuffle=True, generator=torch.Generator())
    first, second = order_of(batches), order_of(batches)
    assert sorted(first) == sorted(second) == list(range(50))
    assert first != second
    assert len(batches) == 7


def test_the_order_is_reproducible_from_the_generator_state():
    generator = torch.Generator().manual_seed(5)
    batches = TensorBatches(*data(30), batch_size=7, shuffle=True, generator=generator)
    order_of(batches)
    state = generator.get_state()  # e.g. saved in a checkpoint between passes
    expected = [order_of(batches) for _ in range(2)]
    generator.set_state(state)
    assert [order_of(batches) for _ in range(2)] == expected
    twin = TensorBatches(*data(30), batch_size=7, shuffle=True, generator=torch.Generator())
    twin.generator.manual_seed(5)
    generator.manual_seed(5)
    assert order_of(twin) == order_of(batches)  # same seed, same orders


def test_iter_fixes_the_order_and_the_global_state_is_untouched():
    generator = torch.Generator().manual_seed(0)
    batches = TensorBatches(*data(20), batch_size=5, shuffle=True, generator=generator)
    before = torch.random.get_rng_state()
    iterator = iter(batches)
    state = generator.get_state()
    list(iterator)
    assert torch.equal(generator.get_state(), state)  # nothing drawn while iterating
    assert torch.equal(torch.random.get_rng_state(), before)


def test_repr_and_sizes():
    batches = TensorBatches(*data(10), batch_size=4)
    assert batches.num_samples == 10
    assert repr(batches) == "TensorBatches(samples=10, batch_size=4, batches=3, shuffle=False)"


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((torch.zeros(3, 2), torch.zeros(4)), {"batch_size": 2}, "same number of samples; got 3"),
        ((torch.zeros(3), torch.tensor(1)), {"batch_size": 2}, "targets must be a tensor with"),
        (([1, 2], torch.zeros(2)), {"batch_size": 2}, "inputs must be a tensor.*got list"),
        (data(), {"batch_size": 0}, "batch_size must be a positive integer; got 0"),
        (data(), {"batch_size": True}, "batch_size must be a positive integer; got True"),
        (data(), {"batch_size": 2, "shuffle": True}, "shuffle=True needs generator="),
    ],
)
def test_bad_arguments_are_named(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        TensorBatches(*args, **kwargs)
