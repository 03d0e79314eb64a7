"""Benchmarks: how one labelled image data set becomes a stream of tasks (`.tasks.TaskStream`).

The labels each scenario uses (task-, domain-, class-incremental) are tabulated in
:mod:`ewc.experiment.streams.tasks`.
Defaults are in :data:`DEFAULTS`, the one place the runner reads them from.

- ``permuted`` (Kirkpatrick et al. 2017): 10 tasks, domain-IL. Every task uses all images with its
  own fixed pixel permutation, the same for train and test. Task 0 is the identity (the plain
  data set), as in van de Ven's reference code for seed 0 (his comparison runs, seeds 1, 2, …,
  permute every task, padding included): its accuracy can then be
  checked against ordinary single-task numbers, and for an MLP, whose first layer is initialised
  i.i.d. over inputs, it changes nothing in distribution (for a CNN, task 0 is the only one with
  spatial structure). Task t ≥ 1 draws a uniform permutation from a CPU generator seeded with a
  hash of ``(seed, t)``, so a task does not depend on how many tasks follow it.
- ``split`` (Zenke et al. 2017; Hsu et al. 2018): consecutive class groups (0, 1), (2, 3), …;
  5 tasks of 2 classes on 10-class data, task-IL (the setting of van de Ven 2025).
- ``rotated``: every image of task t rotated counter-clockwise by its angle (bilinear, zero fill);
  5 tasks, domain-IL, angles 180°·t/T by default (0°, 36°, 72°, 108°, 144°): evenly spaced over a
  half turn, never reaching 180°, where a 6 becomes a 9.

Inputs are float32 ``(N, 1, H, W)``, the uint8 pixels divided by 255, with no mean/std
normalisation unless ``normalize`` asks for one (see :func:`.transforms.to_unit_interval`,
:class:`.transforms.Normalized`), made per batch from the uint8 images
that every task shares (`.tasks.Task`). Everything is a deterministic function of
 the data and ``seed``; only ``permuted`` is random, and it uses its own generators, never the
global one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from ewc.data.dataset import ImageDataset
from ewc.experiment.streams.loaders import TensorBatches
from ewc.experiment.streams.tasks import (
    Benchmark,
    ColumnSelector,
    HeadSelector,
    Scenario,
    Task,
    TaskStream,
    output_layout,
)
from ewc.experiment.streams.transforms import (
    Normalized,
    permute_pixels,
    rotate,
    to_unit_interval,
)

__all__ = [
    "DEFAULTS",
    "DEFAULT_CLASSES_PER_TASK",
    "Benchmark",
    "BenchmarkDefaults",
    "ColumnSelector",
    "HeadSelector",
    "Scenario",
    "Task",
    "TaskStream",
    "TensorBatches",
    "build_stream",
    "default_angles",
    "pixel_permutation",
]


@dataclass(frozen=True)
class BenchmarkDefaults:
    """What :func:`build_stream` uses for an argument left out.

    Attributes:
        num_tasks: the number of tasks; None for split: num_classes // classes_per_task.
        scenario: the scenario in which the benchmark is usually reported.
        setup: the published setup it follows, in words.
    """

    num_tasks: int | None
    scenario: Scenario
    setup: str


DEFAULT_CLASSES_PER_TASK = 2
"""Classes per split task: the pairs (0, 1), (2, 3), … of split MNIST."""

DEFAULTS: Mapping[Benchmark, BenchmarkDefaults] = MappingProxyType(
    {
        Benchmark.PERMUTED: BenchmarkDefaults(
            10, Scenario.DOMAIN, "10 pixel permutations, the first the identity (van de Ven 2019)"
        ),
        Benchmark.SPLIT: BenchmarkDefaults(
            None, Scenario.TASK, "5 tasks of 2 consecutive classes (Hsu 2018, van de Ven 2025)"
        ),
        Benchmark.ROTATED: BenchmarkDefaults(
            5, Scenario.DOMAIN, "5 rotations at 180°·t/5: 0°, 36°, 72°, 108°, 144°"
        ),
        Benchmark.CUSTOM: BenchmarkDefaults(
            None, Scenario.TASK, "your own tasks, from benchmark.factory (streams.factory)"
        ),
    }
)
"""Per-benchmark defaults of :func:`build_stream` (read-only)."""


def build_stream(
    benchmark: Benchmark | str,
    data: ImageDataset,
    *,
    num_tasks: int | None = None,
    scenario: Scenario | str | None = None,
    multi_head: bool = False,
    seed: int = 0,
    classes_per_task: int = DEFAULT_CLASSES_PER_TASK,
    angles: Sequence[float] | None = None,
    train_samples: int | None = None,
    test_samples: int | None = None,
    normalize: tuple[float, float] | None = None,
) -> TaskStream:
    """Turn ``data`` into the task stream of ``benchmark`` under ``scenario``.

    Args:
        benchmark: ``"permuted"``, ``"split"`` or ``"rotated"``.
        data: the data set; its train and test splits give each task's train and test sets.
        num_tasks: the number of tasks; default ``DEFAULTS[benchmark].num_tasks`` (split: all
            classes; rotated with ``angles``: one task per angle).
        scenario: ``"task"``, ``"domain"`` or ``"class"``; default ``DEFAULTS[benchmark].scenario``.
        multi_head: task-IL only: a separate head per task instead of one shared output layer.
        seed: a non-negative integer that draws the permutations (split and rotated use none).
        classes_per_task: split only, at least 2; other benchmarks accept only the default.
        angles: rotated only: the angle of each task in degrees, counter-clockwise; default
            :func:`default_angles`.
        train_samples: keep at most this many training images per task, the first ones in data
            order (the same images in every permuted / rotated task); None keeps all.
        test_samples: the same for the test images.
        normalize: (mean, std): every task's inputs become (x − mean) / std after the scaling
            to [0, 1] (`transforms.Normalized`); None keeps them in [0, 1].

    Raises:
        ValueError: an unknown name, a count that is not a positive integer, more split tasks
            than the classes allow, a split task with no train or test image, ``multi_head``
            outside task-IL, or an option given to a benchmark that does not use it.
    """
    kind = Benchmark.parse(benchmark)
    if kind is Benchmark.CUSTOM:
        raise ValueError(
            "the 'custom' benchmark is made of your own tasks: build it with "
            "ewc.experiment.streams.factory.CustomTasks, not from an image data set"
        )
    if not isinstance(data, ImageDataset):
        raise TypeError(f"data must be an ewc.data.ImageDataset; got {type(data).__name__}")
    chosen = Scenario.parse(DEFAULTS[kind].scenario if scenario is None else scenario)
    _check_options(kind, chosen, multi_head, seed, classes_per_task, angles)
    for value, what in (
        (num_tasks, "num_tasks"),
        (train_samples, "train_samples"),
        (test_samples, "test_samples"),
    ):
        if value is not None:
            _check_count(value, what)
    recipe = _Recipe(data, chosen, train_samples, test_samples, checked_normalize(normalize))
    if kind is Benchmark.SPLIT:
        tasks = _split_tasks(recipe, num_tasks, classes_per_task)
    elif kind is Benchmark.PERMUTED:
        tasks = _permuted_tasks(recipe, num_tasks or _default_count(kind), seed)
    else:
        tasks = _rotated_tasks(recipe, _resolve_angles(num_tasks, angles))
    num_outputs, heads = output_layout(chosen, multi_head, [len(task.classes) for task in tasks])
    return TaskStream(
        benchmark=kind,
        scenario=chosen,
        dataset=data.name,
        source=data.source,
        is_subset=data.is_subset,
        tasks=tuple(tasks),
        num_outputs=num_outputs,
        heads=heads,
    )


def _check_options(
    kind: Benchmark,
    scenario: Scenario,
    multi_head: bool,
    seed: int,
    classes_per_task: int,
    angles: Sequence[float] | None,
) -> None:
    if not isinstance(multi_head, bool):
        raise ValueError(f"multi_head must be True or False; got {multi_head!r}")
    if multi_head and scenario is not Scenario.TASK:
        raise ValueError(
            f"multi_head=True needs scenario='task': choosing a task's head means telling the "
            f"model the task, which only task-incremental learning does; got "
            f"scenario={scenario.value!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    # The default is accepted everywhere, so that a runner may always pass its setting.
    if classes_per_task != DEFAULT_CLASSES_PER_TASK and kind is not Benchmark.SPLIT:
        raise ValueError(
            f"classes_per_task applies to 'split' only; got classes_per_task={classes_per_task!r} "
            f"with benchmark {kind.value!r}"
        )
    if angles is not None and kind is not Benchmark.ROTATED:
        raise ValueError(f"angles apply to 'rotated' only; got benchmark {kind.value!r}")


def _check_count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer; got {value!r}")
    return value


@dataclass(frozen=True)
class _Recipe:
    """What every task of a stream is made from: the data, the labelling, the size limits."""

    data: ImageDataset
    scenario: Scenario
    train_samples: int | None
    test_samples: int | None
    normalize: tuple[float, float] | None = None


def checked_normalize(normalize: Sequence[float] | None) -> tuple[float, float] | None:
    """``normalize`` as (mean, std) floats, or None; ValueError unless finite with std > 0."""
    if normalize is None:
        return None
    values = tuple(float(v) for v in normalize)
    if len(values) != 2 or not all(math.isfinite(v) for v in values) or values[1] <= 0:
        raise ValueError(
            f"normalize must be (mean, std) with finite numbers and std > 0; got {normalize!r}"
        )
    return values


def _split_tasks(recipe: _Recipe, num_tasks: int | None, per_task: int) -> list[Task]:
    """Consecutive groups of ``per_task`` classes from class 0, one task per group."""
    data = recipe.data
    _check_count(per_task, "classes_per_task")
    if not 2 <= per_task <= data.num_classes:
        raise ValueError(
            f"classes_per_task must be in [2, {data.num_classes}] for the {data.num_classes} "
            f"classes of {data.name!r} (a task needs two classes to tell apart); got {per_task}"
        )
    most = data.num_classes // per_task
    count = most if num_tasks is None else num_tasks
    if count > most:
        raise ValueError(
            f"split with {per_task} classes per task has at most {most} tasks for the "
            f"{data.num_classes} classes of {data.name!r}; got num_tasks={count}"
        )
    tasks = []
    for t in range(count):
        classes = tuple(range(t * per_task, (t + 1) * per_task))
        name = _group_name(classes, data.classes)
        tasks.append(_make_task(recipe, t, name, classes, t * per_task, to_unit_interval))
    return tasks


def _group_name(classes: tuple[int, ...], names: tuple[str, ...]) -> str:
    """``"digits 4/5"`` if the class names are the digits, else ``"classes 4/5 (Coat, Sandal)"``."""
    numbers = "/".join(str(c) for c in classes)
    if all(names[c] == str(c) for c in classes):
        return f"digits {numbers}"
    return f"classes {numbers} ({', '.join(names[c] for c in classes)})"


def _permuted_tasks(recipe: _Recipe, count: int, seed: int) -> list[Task]:
    num_pixels = recipe.data.train_images[0].numel()
    classes = tuple(range(recipe.data.num_classes))
    tasks = []
    for t in range(count):
        order = pixel_permutation(seed, t, num_pixels)
        name = f"permutation {t + 1}" + (" (identity)" if t == 0 else "")
        transform = PermutedInputs(order)
        tasks.append(_make_task(recipe, t, name, classes, t * len(classes), transform))
    return tasks


@dataclass(frozen=True, eq=False)
class PermutedInputs:
    """A permuted task's inputs: ``to_unit_interval(permute_pixels(images, order))``."""

    order: Tensor

    def __call__(self, images: Tensor) -> Tensor:
        """uint8 ``(n, H, W)`` → float32 ``(n, 1, H, W)``, pixels reordered by ``order``."""
        return to_unit_interval(permute_pixels(images, self.order))


@dataclass(frozen=True)
class RotatedInputs:
    """A rotated task's inputs: ``rotate(to_unit_interval(images), degrees)``."""

    degrees: float

    def __call__(self, images: Tensor) -> Tensor:
        """uint8 ``(n, H, W)`` → float32 ``(n, 1, H, W)``, rotated by ``degrees``."""
        return rotate(to_unit_interval(images), self.degrees)


def _rotated_tasks(recipe: _Recipe, angles: tuple[float, ...]) -> list[Task]:
    classes = tuple(range(recipe.data.num_classes))
    tasks = []
    for t, angle in enumerate(angles):
        name = f"rotation {angle:g}°"
        transform = RotatedInputs(angle)
        tasks.append(_make_task(recipe, t, name, classes, t * len(classes), transform))
    return tasks


def _default_count(kind: Benchmark) -> int:
    count = DEFAULTS[kind].num_tasks
    if count is None:  # only split derives its count, from the classes
        raise ValueError(f"{kind.value!r} has no fixed default number of tasks")
    return count


def _resolve_angles(num_tasks: int | None, angles: Sequence[float] | None) -> tuple[float, ...]:
    if angles is None:
        return default_angles(num_tasks or _default_count(Benchmark.ROTATED))
    if isinstance(angles, (str, bytes)) or not isinstance(angles, Sequence) or not angles:
        raise ValueError(f"angles must be a non-empty sequence of degrees; got {angles!r}")
    values = []
    for angle in angles:
        if (
            isinstance(angle, bool)
            or not isinstance(angle, (int, float))
            or not math.isfinite(angle)
        ):
            raise ValueError(f"angles must be finite numbers of degrees; got {angle!r} in {angles}")
        values.append(float(angle))
    if num_tasks is not None and num_tasks != len(values):
        raise ValueError(
            f"num_tasks={num_tasks} disagrees with the {len(values)} angles given; "
            "give one angle per task, or leave num_tasks out"
        )
    return tuple(values)


def default_angles(num_tasks: int) -> tuple[float, ...]:
    """``180°·t/num_tasks`` for t = 0..num_tasks−1: evenly spaced over a half turn from 0°."""
    _check_count(num_tasks, "num_tasks")
    return tuple(180.0 * t / num_tasks for t in range(num_tasks))


def _make_task(
    recipe: _Recipe,
    index: int,
    name: str,
    classes: tuple[int, ...],
    offset: int,
    transform: Callable[[Tensor], Tensor],
) -> Task:
    """Keep the images of ``classes`` (up to the limits) as uint8, label them; transform later."""
    data = recipe.data
    lookup = torch.full((data.num_classes,), -1, dtype=torch.int64)
    shift = offset if recipe.scenario is Scenario.CLASS else 0
    lookup[list(classes)] = torch.arange(len(classes)) + shift
    parts: list[Tensor] = []
    for split, limit in (("train", recipe.train_samples), ("test", recipe.test_samples)):
        labels = lookup[getattr(data, f"{split}_labels")]
        keep = (labels >= 0).nonzero().squeeze(1)[:limit]
        if keep.numel() == 0:
            raise ValueError(
                f"task index {index} ({name}) has no {split} images in {data.name!r}: classes "
                f"{classes} do not occur in its {split} split"
            )
        parts += [_rows(getattr(data, f"{split}_images"), keep), labels[keep]]
    if recipe.normalize is not None:
        transform = Normalized(transform, *recipe.normalize)
    return Task(index, name, *parts, classes=classes, transform=transform)


def _rows(images: Tensor, keep: Tensor) -> Tensor:
    """``images[keep]``; a view, not a copy, when ``keep`` is the first rows in order."""
    if int(keep[-1]) == keep.numel() - 1:  # increasing and unique, so 0, 1, …, n − 1
        return images[: keep.numel()]
    return images[keep]


def pixel_permutation(seed: int, index: int, num_pixels: int) -> Tensor:
    """The pixel order of permuted task ``index``: the identity for task 0, else a uniform draw.

    Task ``index ≥ 1`` draws from a CPU generator seeded with a hash of ``(seed, index)``, so the
    same ``(seed, index)`` always gives the same permutation whatever the stream's length.
    """
    if index == 0:
        return torch.arange(num_pixels)
    generator = torch.Generator().manual_seed(_task_seed(seed, index))
    return torch.randperm(num_pixels, generator=generator)


_MASK64 = (1 << 64) - 1


def _task_seed(seed: int, index: int) -> int:
    """A 64-bit hash (SplitMix64 finaliser, applied to seed, then to the result xor index).

    Not ``seed * 2**32 + index``: torch's CPU generator keeps only the low 32 bits of its seed, so
    every input bit has to reach them.
    """
    value = 0
    for part in (seed, index):
        value = ((value ^ part) + 0x9E3779B97F4A7C15) & _MASK64
        value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
        value ^= value >> 31
    return value
