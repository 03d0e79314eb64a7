"""Your own tasks in `ewc run`: the task-stream protocol behind ``benchmark.factory``.

A benchmark factory is a function ``tasks(seed: int) -> Sequence[TaskSpec]``, named in the config
as ``benchmark.factory = "pkg.module:function"``. Each `TaskSpec` holds a name, a train and a test
``torch.utils.data.Dataset`` of ``(x, y)`` pairs and ``classes``, the labels ``y`` the task uses.
``x`` is any tensor (images, feature vectors, token ids) of one shape across all tasks; ``y`` is
an integer label in ``classes``. The function must return the same tasks for the same seed (a
resume checks the data's fingerprint).

`CustomTasks.stream` turns them into the `TaskStream` every scenario runs on, exactly as the
image benchmarks do (:mod:`.tasks` tabulates the labels): label ``classes[i]`` becomes the
within-task label ``i`` for task- and domain-incremental learning and ``o_t + i`` for
class-incremental learning, where ``o_t`` counts the classes of the tasks before task t; heads,
output columns and the model's output width follow from the number of classes of each task.
Datasets are read once into memory, in order, up to ``train_samples`` / ``test_samples`` items.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from ewc.experiment.factories import FactoryError, load_function
from ewc.experiment.streams.tasks import Benchmark, Scenario, Task, TaskStream, output_layout

__all__ = ["CustomTasks", "TaskSpec", "stream_fingerprint"]

KEY = "benchmark.factory"


@dataclass(frozen=True, eq=False)
class TaskSpec:
    """One of your tasks: what a benchmark factory returns, one per task, in training order.

    Attributes:
        name: the task's name in reports (``"blobs 1"``).
        train: the training set, a map-style ``Dataset`` of ``(x, y)`` pairs (a ``TensorDataset``
            of inputs and labels is read without a per-item loop).
        test: the test set, the same kind.
        classes: the labels ``y`` this task uses, distinct non-negative integers; the i-th is the
            task's output i (its head's column i). Tasks may share labels (domain-incremental).
    """

    name: str
    train: Dataset[Any]
    test: Dataset[Any]
    classes: Sequence[int]


@dataclass(frozen=True)
class CustomTasks:
    """The tasks of ``benchmark.factory``; the runner's stand-in for an image data set.

    Each stream is built once per set of arguments and kept (the runner asks for the first seed's
    several times: to check the model, fingerprint the data, name the tasks); a copy sent to a
    worker process keeps only the factory string and builds its own.

    Attributes:
        factory: ``"pkg.module:function"``, a function ``(seed: int) -> Sequence[TaskSpec]``.
    """

    factory: str
    _built: dict[tuple[Any, ...], TaskStream] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __getstate__(self) -> dict[str, Any]:
        return {"factory": self.factory}

    def __setstate__(self, state: dict[str, Any]) -> None:
        object.__setattr__(self, "factory", state["factory"])
        object.__setattr__(self, "_built", {})

    @property
    def name(self) -> str:
        """What config.json and the report call the data: the factory string."""
        return self.factory

    @property
    def source(self) -> str:
        """Where the data came from, as config.json and the report say it."""
        return f"your own tasks, from benchmark.factory {self.factory}"

    is_subset = False

    def stream(
        self,
        *,
        seed: int,
        scenario: Scenario,
        multi_head: bool = False,
        num_tasks: int | None = None,
        train_samples: int | None = None,
        test_samples: int | None = None,
    ) -> TaskStream:
        """Call the factory with ``seed`` and label its tasks for ``scenario``.

        Args:
            seed: passed to the factory.
            scenario: task, domain or class (the labels and outputs of :mod:`.tasks`).
            multi_head: task-IL only: a head per task.
            num_tasks: keep only the first this many tasks; None keeps all.
            train_samples: read at most this many items of each training set; None reads all.
            test_samples: the same for the test sets.

        Raises:
            FactoryError: the factory cannot be imported, does not return a non-empty sequence of
                `TaskSpec`, or a task's data does not match its declared classes or the others'
                input shape; the message names the factory and the task.
        """
        key = (seed, scenario, multi_head, num_tasks, train_samples, test_samples)
        if key not in self._built:
            self._built[key] = self._build(seed, scenario, multi_head, num_tasks, key[-2:])
        return self._built[key]

    def _build(
        self,
        seed: int,
        scenario: Scenario,
        multi_head: bool,
        num_tasks: int | None,
        limits: tuple[int | None, int | None],
    ) -> TaskStream:
        specs = _call(self.factory, seed)
        if num_tasks is not None:
            if num_tasks > len(specs):
                raise FactoryError(
                    f"benchmark.num_tasks = {num_tasks}, but {KEY} {self.factory!r} returned "
                    f"{len(specs)} tasks"
                )
            specs = specs[:num_tasks]
        tasks, offset = [], 0
        for index, spec in enumerate(specs):
            where = f"task {index + 1} ({spec.name!r}) of {KEY} {self.factory!r}"
            shift = offset if scenario is Scenario.CLASS else 0
            tasks.append(_task(index, spec, where, shift, limits))
            offset += len(tasks[-1].classes)
        _check_shapes(tasks, self.factory)
        num_outputs, heads = output_layout(scenario, multi_head, [len(t.classes) for t in tasks])
        return TaskStream(
            benchmark=Benchmark.CUSTOM,
            scenario=scenario,
            dataset=self.factory,
            source=self.source,
            is_subset=False,
            tasks=tuple(tasks),
            num_outputs=num_outputs,
            heads=heads,
        )


def _call(factory: str, seed: int) -> list[TaskSpec]:
    """The factory's tasks, checked to be a non-empty sequence of `TaskSpec` with valid names."""
    returned = load_function(factory, KEY, "seed: int")(seed)
    wanted = "a non-empty list of ewc.experiment.streams.factory.TaskSpec, one per task"
    if isinstance(returned, (str, bytes)) or not isinstance(returned, Sequence) or not returned:
        raise FactoryError(f"{KEY} {factory!r} returned {_what(returned)}; it must return {wanted}")
    for index, spec in enumerate(returned):
        if not isinstance(spec, TaskSpec):
            raise FactoryError(
                f"{KEY} {factory!r} returned {_what(spec)} as task {index + 1}; it must return "
                f"{wanted}"
            )
        if not isinstance(spec.name, str) or not spec.name:
            raise FactoryError(
                f"task {index + 1} of {KEY} {factory!r}: name must be a non-empty string; "
                f"got {spec.name!r}"
            )
    return list(returned)


def _task(
    index: int, spec: TaskSpec, where: str, shift: int, limits: tuple[int | None, int | None]
) -> Task:
    """One `Task`: both sets read, checked against the classes and relabelled (+ ``shift``)."""
    classes = _classes(spec.classes, where)
    lookup = {label: i + shift for i, label in enumerate(classes)}
    parts: list[Tensor] = []
    for split, data, limit in (("train", spec.train, limits[0]), ("test", spec.test, limits[1])):
        inputs, labels = _read(data, limit, f"{where}, {split} set")
        for position, label in enumerate(labels.tolist()):
            if label not in lookup:
                raise FactoryError(
                    f"{where}: {split} item {position} has label {label}, which is not one of "
                    f"its declared classes {classes}"
                )
        parts += [inputs, torch.tensor([lookup[y] for y in labels.tolist()], dtype=torch.int64)]
    return Task(index, spec.name, *parts, classes=classes, transform=inputs_as_given)


def inputs_as_given(inputs: Tensor) -> Tensor:
    """Your own tasks' transform: their inputs are model inputs already (any dtype and shape)."""
    return inputs


def _classes(classes: object, where: str) -> tuple[int, ...]:
    """The declared classes as a tuple of distinct non-negative integers."""
    values = tuple(classes) if isinstance(classes, Sequence | range) else None
    valid = values is not None and all(
        isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in values
    )
    if not values or not valid or len(set(values)) != len(values):
        raise FactoryError(
            f"{where}: classes must be a non-empty sequence of distinct non-negative integers "
            f"(the labels the task uses); got {classes!r}"
        )
    return values  # type: ignore[return-value]


def _read(data: object, limit: int | None, where: str) -> tuple[Tensor, Tensor]:
    """Inputs stacked to (N, ...) and integer labels (N,) of a map-style dataset of pairs."""
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        inputs, labels = (t[:limit] for t in data.tensors)
    else:
        if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
            raise FactoryError(
                f"{where} must be a map-style torch Dataset of (x, y) pairs (with __len__ and "
                f"__getitem__); got {_what(data)}"
            )
        count = len(data) if limit is None else min(len(data), limit)  # type: ignore[arg-type]
        pairs = [_pair(data[i], i, where) for i in range(count)]  # type: ignore[index]
        if not pairs:
            raise FactoryError(f"{where} is empty; every task needs train and test items")
        inputs = _stack([x for x, _ in pairs], where)
        labels = torch.as_tensor([y for _, y in pairs])
    if labels.numel() == 0:
        raise FactoryError(f"{where} is empty; every task needs train and test items")
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise FactoryError(
            f"{where}: labels must be one integer class per item; got {labels.dtype} labels "
            f"of shape {tuple(labels.shape)}"
        )
    return inputs, labels.to(torch.int64)


def _pair(item: object, position: int, where: str) -> tuple[Tensor, int]:
    """``(x, y)`` of one item; ``y`` an integer (or a one-element integer tensor)."""
    if not isinstance(item, Sequence) or len(item) != 2:
        raise FactoryError(f"{where}: item {position} must be an (x, y) pair; got {_what(item)}")
    x, y = item  # type: ignore[misc]
    if isinstance(y, Tensor) and y.numel() == 1 and not y.dtype.is_floating_point:
        y = int(y.item())
    if isinstance(y, bool) or not isinstance(y, int):
        raise FactoryError(
            f"{where}: item {position} has label {y!r}; labels must be integer classes"
        )
    return torch.as_tensor(x), y


def _stack(inputs: list[Tensor], where: str) -> Tensor:
    shapes = {tuple(x.shape) for x in inputs}
    if len(shapes) != 1:
        raise FactoryError(f"{where}: every x must have the same shape; got {sorted(shapes)}")
    return torch.stack(inputs)


def _check_shapes(tasks: list[Task], factory: str) -> None:
    """One model reads every task: all inputs must have the first task's shape (and dtype)."""
    first = tasks[0].train_inputs
    for task in tasks:
        for split, x in (("train", task.train_inputs), ("test", task.test_inputs)):
            if x.shape[1:] != first.shape[1:] or x.dtype != first.dtype:
                raise FactoryError(
                    f"task {task.index + 1} ({task.name!r}) of {KEY} {factory!r}: {split} inputs "
                    f"are {x.dtype} of shape {tuple(x.shape[1:])} per item, but task 1's are "
                    f"{first.dtype} of shape {tuple(first.shape[1:])}; one model reads all tasks"
                )


def stream_fingerprint(stream: TaskStream) -> str:
    """SHA-256 over every task's inputs and labels, as built: equal tasks, equal fingerprint."""
    digest = hashlib.sha256()
    for task in stream.tasks:
        for tensor in (task.train_inputs, task.train_targets, task.test_inputs, task.test_targets):
            digest.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(tensor.contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def _what(value: object) -> str:
    """``a list of 3 items`` / ``an int`` / ``None``: how a returned value is named in errors."""
    if value is None:
        return "None"
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"
