"""Task streams: permuted, split and rotated tasks, their labels per scenario, and every error.

Also covers `ewc.experiment.streams.tasks` (TaskStream.output_fn and the head / column selectors)
through the streams that `build_stream` makes.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import ewc
from ewc.data import ImageDataset, load_dataset
from ewc.experiment.models import build_model
from ewc.experiment.streams.benchmarks import (
    DEFAULTS,
    Benchmark,
    ColumnSelector,
    HeadSelector,
    Scenario,
    TensorBatches,
    build_stream,
    default_angles,
    pixel_permutation,
)
from ewc.experiment.streams.transforms import rotate, to_unit_interval

SHARED = 20  # the first SHARED test items are copies of the first train items


def synthetic(n_train: int = 200, n_test: int = 100, *, seed: int = 0) -> ImageDataset:
    """Random uint8 images, every digit equally often, the first SHARED test items = train items."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n_train + n_test, 28, 28), generator=gen, dtype=torch.uint8)
    labels = (torch.arange(n_train + n_test) % 10)[torch.randperm(n_train + n_test, generator=gen)]
    test_images, test_labels = images[n_train:].clone(), labels[n_train:].clone()
    test_images[:SHARED], test_labels[:SHARED] = images[:SHARED], labels[:SHARED]
    return ImageDataset(
        name="mnist",
        train_images=images[:n_train],
        train_labels=labels[:n_train],
        test_images=test_images,
        test_labels=test_labels,
        classes=tuple(str(d) for d in range(10)),
        source="synthetic",
        is_subset=True,
    )


@pytest.fixture(scope="module")
def data() -> ImageDataset:
    return synthetic()


# ---------------------------------------------------------------------------------- permuted


def test_permuted_tasks_are_true_permutations_shared_by_train_and_test(data):
    stream = build_stream("permuted", data, num_tasks=4, seed=3)
    base_train, base_test = to_unit_interval(data.train_images), to_unit_interval(data.test_images)
    for task in stream.tasks:
        order = pixel_permutation(3, task.index, 784)
        assert torch.equal(order.sort().values, torch.arange(784))
        assert torch.equal(task.train_inputs.flatten(1), base_train.flatten(1)[:, order])
        assert torch.equal(task.test_inputs.flatten(1), base_test.flatten(1)[:, order])
        # Independently of pixel_permutation: every image keeps its multiset of pixel values, and
        # the test copies of train items are transformed exactly like them.
        assert torch.equal(
            task.train_inputs.flatten(1).sort(dim=1).values,
            base_train.flatten(1).sort(dim=1).values,
        )
        assert torch.equal(task.test_inputs[:SHARED], task.train_inputs[:SHARED])
        assert task.train_inputs.dtype == torch.float32
        assert task.train_inputs.shape == (200, 1, 28, 28)


def test_the_first_permutation_is_the_identity_and_the_others_all_differ(data):
    stream = build_stream("permuted", data, num_tasks=5)
    assert torch.equal(stream.tasks[0].train_inputs, to_unit_interval(data.train_images))
    assert stream.tasks[0].name == "permutation 1 (identity)"
    assert [t.name for t in stream.tasks[1:3]] == ["permutation 2", "permutation 3"]
    for a, b in itertools.combinations(stream.tasks, 2):
        assert not torch.equal(a.train_inputs, b.train_inputs)


def test_permutations_depend_on_the_seed_only(data):
    a = build_stream("permuted", data, num_tasks=3, seed=7)
    b = build_stream("permuted", data, num_tasks=5, seed=7)
    c = build_stream("permuted", data, num_tasks=3, seed=8)
    for t in range(3):  # a task does not depend on how many follow it
        assert torch.equal(a.tasks[t].train_inputs, b.tasks[t].train_inputs)
    for t in (1, 2):
        assert not torch.equal(a.tasks[t].train_inputs, c.tasks[t].train_inputs)
    # (seed, index) pairs that a naive seed + index or seed ^ index would confuse stay distinct.
    assert not torch.equal(pixel_permutation(1, 2, 784), pixel_permutation(2, 1, 784))
    assert not torch.equal(pixel_permutation(3, 1, 784), pixel_permutation(2, 1, 784))
    assert not torch.equal(pixel_permutation(0, 1, 784), pixel_permutation(2**32, 1, 784))


def test_building_a_stream_leaves_the_global_random_state_alone(data):
    before = torch.random.get_rng_state()
    build_stream("permuted", data, num_tasks=3)
    assert torch.equal(torch.random.get_rng_state(), before)


@pytest.mark.parametrize("benchmark", ["permuted", "rotated"])
def test_all_digit_tasks_are_labelled_per_scenario(data, benchmark):
    def targets(stream):
        return [(t.train_targets, t.test_targets) for t in stream.tasks]

    domain = build_stream(benchmark, data, num_tasks=3, scenario="domain")
    task = build_stream(benchmark, data, num_tasks=3, scenario="task")
    multi = build_stream(benchmark, data, num_tasks=3, scenario="task", multi_head=True)
    klass = build_stream(benchmark, data, num_tasks=3, scenario="class")
    for t in range(3):
        assert torch.equal(domain.tasks[t].train_targets, data.train_labels)
        assert torch.equal(domain.tasks[t].test_targets, data.test_labels)
        assert torch.equal(klass.tasks[t].train_targets, 10 * t + data.train_labels)
        assert torch.equal(klass.tasks[t].test_targets, 10 * t + data.test_labels)
        assert domain.tasks[t].classes == tuple(range(10))
    for other in (task, multi):
        for (a, b), (c, d) in zip(targets(domain), targets(other), strict=True):
            assert torch.equal(a, c)
            assert torch.equal(b, d)
    sizes = [(s.num_outputs, s.heads) for s in (domain, task, multi, klass)]
    assert sizes == [(10, 1), (30, 1), (10, 3), (30, 1)]


# ---------------------------------------------------------------------------------- split


def test_split_tasks_hold_exactly_their_classes(data):
    stream = build_stream("split", data, scenario="domain")
    assert stream.num_tasks == 5
    assert [t.classes for t in stream.tasks] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert [t.name for t in stream.tasks][:2] == ["digits 0/1", "digits 2/3"]
    base = to_unit_interval(data.train_images)
    for task in stream.tasks:
        keep = (data.train_labels == task.classes[0]) | (data.train_labels == task.classes[1])
        assert torch.equal(task.train_inputs, base[keep])
        assert torch.equal(task.train_targets, data.train_labels[keep] - task.classes[0])
        test_keep = (data.test_labels // 2) == task.index
        assert torch.equal(task.test_targets, data.test_labels[test_keep] - 2 * task.index)
        assert task.test_inputs.shape[0] == int(test_keep.sum())


def test_split_labels_per_scenario(data):
    streams = {
        name: build_stream("split", data, scenario=scenario, multi_head=multi)
        for name, scenario, multi in [
            ("task", "task", False),
            ("multi", "task", True),
            ("domain", "domain", False),
            ("class", "class", False),
        ]
    }
    for t in range(5):
        digits = streams["class"].tasks[t].train_targets
        assert set(digits.tolist()) == {2 * t, 2 * t + 1}  # class-IL: the digit itself
        for name in ("task", "multi", "domain"):
            assert torch.equal(streams[name].tasks[t].train_targets, digits - 2 * t)
    sizes = {name: (s.num_outputs, s.heads) for name, s in streams.items()}
    assert sizes == {"task": (10, 1), "multi": (2, 5), "domain": (2, 1), "class": (10, 1)}


def test_split_with_three_classes_per_task(data):
    stream = build_stream("split", data, classes_per_task=3, scenario="class")
    assert [t.classes for t in stream.tasks] == [(0, 1, 2), (3, 4, 5), (6, 7, 8)]
    assert stream.num_outputs == 9
    assert set(stream.tasks[2].test_targets.tolist()) == {6, 7, 8}
    assert build_stream("split", data, num_tasks=2).num_tasks == 2


def test_split_names_non_digit_classes():
    fashion = synthetic()
    fashion = ImageDataset(
        **{**vars(fashion), "name": "fashion-mnist", "classes": tuple("ABCDEFGHIJ")}
    )
    assert build_stream("split", fashion).tasks[2].name == "classes 4/5 (E, F)"


# ---------------------------------------------------------------------------------- rotated


def test_rotated_tasks_rotate_every_image_by_their_angle(data):
    stream = build_stream("rotated", data)
    assert default_angles(5) == (0.0, 36.0, 72.0, 108.0, 144.0)
    assert [t.name for t in stream.tasks] == [
        "rotation 0°",
        "rotation 36°",
        "rotation 72°",
        "rotation 108°",
        "rotation 144°",
    ]
    base = to_unit_interval(data.train_images)
    for task, angle in zip(stream.tasks, default_angles(5), strict=True):
        assert torch.equal(task.train_inputs, rotate(base, angle))
        assert torch.equal(task.test_inputs[:SHARED], task.train_inputs[:SHARED])
    assert torch.allclose(stream.tasks[0].train_inputs, base, atol=1e-5)


def test_rotated_with_given_angles(data):
    stream = build_stream("rotated", data, angles=[0, 90, 22.5])
    assert stream.num_tasks == 3
    assert stream.tasks[2].name == "rotation 22.5°"
    expected = torch.rot90(to_unit_interval(data.test_images), 1, dims=(-2, -1))
    assert torch.allclose(stream.tasks[1].test_inputs, expected, atol=1e-5)
    assert build_stream("rotated", data, num_tasks=2, angles=(10.0, 20.0)).num_tasks == 2


def test_sample_limits_keep_the_first_images_of_each_task(data):
    permuted = build_stream("permuted", data, num_tasks=2, train_samples=30, test_samples=7)
    base = to_unit_interval(data.train_images[:30])
    assert torch.equal(permuted.tasks[0].train_inputs, base)
    assert torch.equal(permuted.tasks[1].train_targets, data.train_labels[:30])
    assert [t.test_inputs.shape[0] for t in permuted.tasks] == [7, 7]
    split = build_stream("split", data, train_samples=5, test_samples=1000, scenario="class")
    for task in split.tasks:
        first = (data.train_labels // 2 == task.index).nonzero().squeeze(1)[:5]
        assert torch.equal(task.train_targets, data.train_labels[first])
        assert task.test_inputs.shape[0] == int((data.test_labels // 2 == task.index).sum())
    rotated = build_stream("rotated", data, num_tasks=2, train_samples=3)
    assert [t.train_inputs.shape[0] for t in rotated.tasks] == [3, 3]


# ---------------------------------------------------------------------------------- output_fn


def test_output_fn_selects_the_task_head_or_columns(data):
    out2d = torch.randn(4, 30)
    out3d = torch.randn(4, 3, 10)
    multi = build_stream("permuted", data, num_tasks=3, scenario="task", multi_head=True)
    single = build_stream("permuted", data, num_tasks=3, scenario="task")
    assert multi.output_fn(2) == HeadSelector(2)
    assert torch.equal(multi.output_fn(2)(out3d), out3d[:, 2])
    assert single.output_fn(1) == ColumnSelector(10, 20)
    assert torch.equal(single.output_fn(1)(out2d), out2d[:, 10:20])
    for scenario in ("domain", "class"):
        assert build_stream("permuted", data, num_tasks=3, scenario=scenario).output_fn(1) is None
    split = build_stream("split", data, scenario="task")
    assert torch.equal(split.output_fn(3)(torch.eye(10)), torch.eye(10)[:, 6:8])


def test_multi_head_with_one_task_is_a_single_head(data):
    stream = build_stream("split", data, num_tasks=1, scenario="task", multi_head=True)
    assert (stream.heads, stream.num_outputs) == (1, 2)
    assert stream.output_fn(0) == ColumnSelector(0, 2)


@pytest.mark.parametrize(
    ("scenario", "multi_head"),
    [("task", True), ("task", False), ("domain", False), ("class", False)],
)
@pytest.mark.parametrize("benchmark", ["permuted", "split", "rotated"])
def test_targets_index_the_logits_of_the_model_the_stream_asks_for(
    data, benchmark, scenario, multi_head
):
    stream = build_stream(benchmark, data, num_tasks=2, scenario=scenario, multi_head=multi_head)
    model = build_model("mlp", num_outputs=stream.num_outputs, heads=stream.heads, hidden=(8,))
    for t, task in enumerate(stream.tasks):
        fn = stream.output_fn(t)
        out = model(task.test_inputs)
        logits = out if fn is None else fn(out)
        assert logits.shape == (task.test_inputs.shape[0], logits.shape[1])
        assert int(task.test_targets.max()) < logits.shape[1]
        assert int(task.test_targets.min()) >= 0
        F.cross_entropy(logits, task.test_targets)


def test_fisher_of_a_multi_head_task_touches_only_its_own_head(data):
    stream = build_stream("split", data, num_tasks=3, scenario="task", multi_head=True)
    model = build_model("mlp", num_outputs=stream.num_outputs, heads=stream.heads, hidden=(8,))
    task = stream.tasks[1]
    batches = TensorBatches(task.train_inputs, task.train_targets, batch_size=32)
    fisher = ewc.diagonal_fisher(model, batches, "exact", output_fn=stream.output_fn(1))
    assert fisher["output.1.weight"].abs().sum() > 0
    for head in (0, 2):
        assert torch.count_nonzero(fisher[f"output.{head}.weight"]) == 0


def test_selectors_reject_outputs_of_the_wrong_model():
    with pytest.raises(
        ValueError, match=r"head 2 needs the \(N, heads, outputs\).*shape \(4, 10\)"
    ):
        HeadSelector(2)(torch.randn(4, 10))
    with pytest.raises(ValueError, match="more than 2 heads; got shape"):
        HeadSelector(2)(torch.randn(4, 2, 10))
    with pytest.raises(ValueError, match=r"columns 10..19 need.*at least 20 outputs"):
        ColumnSelector(10, 20)(torch.randn(4, 10))
    with pytest.raises(ValueError, match="got list"):
        ColumnSelector(0, 2)([1, 2])


def test_output_fn_rejects_bad_task_indices(data):
    stream = build_stream("split", data)
    with pytest.raises(ValueError, match=r"task_index must be in \[0, 5\); got 5"):
        stream.output_fn(5)
    with pytest.raises(ValueError, match=r"in \[0, 5\); got -1"):
        stream.output_fn(-1)
    with pytest.raises(ValueError, match=r"must be an integer; got 1\.0"):
        stream.output_fn(1.0)


# ---------------------------------------------------------------------------------- defaults


def test_defaults_are_read_only_and_used(data):
    with pytest.raises(TypeError):
        DEFAULTS[Benchmark.SPLIT] = DEFAULTS[Benchmark.PERMUTED]  # type: ignore[index]
    for benchmark in set(Benchmark) - {Benchmark.CUSTOM}:  # custom: your tasks, not an image set
        stream = build_stream(benchmark, data)
        expected = DEFAULTS[benchmark].num_tasks or 5
        assert (stream.num_tasks, stream.scenario) == (expected, DEFAULTS[benchmark].scenario)
        assert stream.benchmark is benchmark
    assert Scenario("class").title == "class-incremental"
    with pytest.raises(ValueError, match=r"made of your own tasks: build it with .*CustomTasks"):
        build_stream(Benchmark.CUSTOM, data)


def test_the_embedded_mnist_subset():
    mnist = load_dataset("mnist", source="embedded")
    permuted = build_stream("permuted", mnist, num_tasks=2)
    split = build_stream("split", mnist)
    rotated = build_stream("rotated", mnist, num_tasks=2)
    for stream in (permuted, split, rotated):
        assert (stream.dataset, stream.source, stream.is_subset) == ("mnist", mnist.source, True)
        for task in stream.tasks:
            assert task.train_inputs.dtype == task.test_inputs.dtype == torch.float32
            assert task.train_inputs.shape[1:] == (1, 28, 28)
            assert task.train_targets.dtype == torch.int64
            assert float(task.train_inputs.min()) >= 0.0
            assert float(task.train_inputs.max()) <= 1.0
    assert [t.train_inputs.shape[0] for t in permuted.tasks] == [8000, 8000]
    assert [t.test_inputs.shape[0] for t in rotated.tasks] == [2000, 2000]
    assert sum(t.train_inputs.shape[0] for t in split.tasks) == 8000
    assert sum(t.test_inputs.shape[0] for t in split.tasks) == 2000
    assert (
        repr(split)
        == "TaskStream('split', 'task', 'mnist', subset, tasks=5, num_outputs=10, heads=1)"
    )


# ---------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"benchmark": "shuffled"},
            "unknown benchmark 'shuffled'; valid benchmarks are 'permuted'",
        ),
        ({"scenario": "instance"}, "unknown scenario 'instance'; valid scenarios are 'task'"),
        ({"num_tasks": 0}, "num_tasks must be a positive integer; got 0"),
        ({"num_tasks": 2.0}, "num_tasks must be a positive integer; got 2.0"),
        ({"num_tasks": True}, "num_tasks must be a positive integer; got True"),
        ({"scenario": "class", "multi_head": True}, "multi_head=True needs scenario='task'"),
        ({"scenario": "domain", "multi_head": True}, "got scenario='domain'"),
        ({"multi_head": 1}, "multi_head must be True or False; got 1"),
        ({"seed": -1}, "seed must be a non-negative integer; got -1"),
        ({"train_samples": 0}, "train_samples must be a positive integer; got 0"),
        ({"test_samples": 1.5}, "test_samples must be a positive integer; got 1.5"),
        ({"seed": 1.5}, "seed must be a non-negative integer; got 1.5"),
        ({"classes_per_task": 5}, "classes_per_task applies to 'split' only"),
        ({"angles": [0, 90]}, "angles apply to 'rotated' only; got benchmark 'permuted'"),
    ],
)
def test_bad_arguments_are_named(data, kwargs, message):
    kwargs = {"benchmark": "permuted", **kwargs}
    with pytest.raises(ValueError, match=message):
        build_stream(kwargs.pop("benchmark"), data, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes_per_task": 1}, r"classes_per_task must be in \[2, 10\].*got 1"),
        ({"classes_per_task": 11}, r"classes_per_task must be in \[2, 10\].*got 11"),
        ({"classes_per_task": 0}, "classes_per_task must be a positive integer; got 0"),
        ({"num_tasks": 6}, "at most 5 tasks for the 10 classes of 'mnist'; got num_tasks=6"),
        ({"num_tasks": 4, "classes_per_task": 3}, "3 classes per task has at most 3 tasks"),
    ],
)
def test_impossible_splits_are_named(data, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_stream("split", data, **kwargs)


def test_a_split_task_without_images_is_named():
    data = synthetic()
    keep = data.test_labels // 2 != 3  # no 6 and no 7 in the test split
    gap = ImageDataset(
        **{
            **vars(data),
            "test_images": data.test_images[keep],
            "test_labels": data.test_labels[keep],
        }
    )
    with pytest.raises(ValueError, match=r"task index 3 \(digits 6/7\) has no test images"):
        build_stream("split", gap)
    assert build_stream("split", gap, classes_per_task=4).num_tasks == 2  # (4, 5, 6, 7) has 4, 5


def test_bad_angles_are_named(data):
    with pytest.raises(ValueError, match="num_tasks=3 disagrees with the 2 angles given"):
        build_stream("rotated", data, num_tasks=3, angles=[0, 90])
    with pytest.raises(ValueError, match="angles must be finite numbers of degrees; got nan"):
        build_stream("rotated", data, angles=[0, float("nan")])
    with pytest.raises(ValueError, match="non-empty sequence of degrees; got \\[\\]"):
        build_stream("rotated", data, angles=[])
    with pytest.raises(ValueError, match="non-empty sequence of degrees; got '90'"):
        build_stream("rotated", data, angles="90")
    with pytest.raises(ValueError, match="num_tasks must be a positive integer; got 0"):
        default_angles(0)


def test_data_must_be_an_image_dataset():
    with pytest.raises(TypeError, match=r"data must be an ewc\.data\.ImageDataset; got dict"):
        build_stream("split", {})


@pytest.mark.parametrize(
    ("name", "options"),
    [("permuted", {"num_tasks": 3}), ("rotated", {"num_tasks": 3}), ("split", {})],
)
def test_inputs_made_per_batch_are_the_bits_of_the_whole_split(name, options):
    # Tasks keep uint8 images and transform each batch; the runner's results rest on this
    # being bit for bit what transforming the whole split at once gives.
    stream = build_stream(name, synthetic(), seed=3, **options)
    for task in stream.tasks:
        whole = task.transform(task.train_images)
        order = torch.randperm(task.train_targets.shape[0], generator=torch.Generator())
        batches = TensorBatches(
            task.train_images, task.train_targets, batch_size=17, transform=task.transform
        )
        assert torch.equal(torch.cat([inputs for inputs, _ in batches]), whole)
        assert torch.equal(task.transform(task.train_images[order[:33]]), whole[order[:33]])
        assert whole.dtype == torch.float32
        assert task.train_images.dtype == torch.uint8


def test_permuted_and_rotated_tasks_share_the_data_sets_images():
    data = synthetic()
    for name in ("permuted", "rotated"):
        for task in build_stream(name, data, num_tasks=3).tasks:
            assert task.train_images.data_ptr() == data.train_images.data_ptr()
            assert task.test_images.data_ptr() == data.test_images.data_ptr()
