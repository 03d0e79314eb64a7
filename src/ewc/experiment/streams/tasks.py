"""What a task stream is: its tasks, the three scenarios, and the labels each scenario uses.

The scenario says what the model is told at test time (van de Ven & Tolias 2019, "Three scenarios
for continual learning"; Hsu et al. 2018, "Re-evaluating continual learning scenarios"):

- task-incremental (``"task"``): the task identity is given, and the model answers among that
  task's classes only (a head per task, or the task's columns of one shared output layer).
- domain-incremental (``"domain"``): no task identity; every task uses the same labels 0..k−1
  (permuted / rotated: the digit; split: first or second class of the pair).
- class-incremental (``"class"``): no task identity; the model answers among all classes of all
  tasks. EWC reaches about 20% on class-incremental split MNIST in every published table: that
  is the scenario, not a bug, so a result always names its scenario.

Targets and outputs of task t (0-based, T tasks) with k_t classes, where o_t = k_0 + … + k_{t−1}:

=====================  ======================  ===========  =====  ========================
scenario               targets                 num_outputs  heads  ``output_fn(t)``
=====================  ======================  ===========  =====  ========================
task, multi_head=True  within-task 0..k_t−1    k            T      ``out[:, t]``
task, multi_head=False within-task 0..k_t−1    Σ_t k_t      1      ``out[:, o_t:o_t + k_t]``
domain                 within-task 0..k_t−1    k            1      None (the output as is)
class                  global o_t + within     Σ_t k_t      1      None (the output as is)
=====================  ======================  ===========  =====  ========================

Within-task label i stands for the original class ``task.classes[i]``. The global label of split
tasks (consecutive class groups from 0) is therefore the digit itself, with 10 outputs; for
permuted and rotated tasks it is 10·t + digit, with 10·T outputs. Task-IL with one shared head is
the class-IL output layer with the other tasks' columns masked out, as in van de Ven & Tolias
2019; with ``multi_head=True`` each task has its own Linear head instead (Hsu et al. 2018).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from ewc._batches import OutputFn
from ewc._choices import Choice


class Scenario(Choice):
    """What the model is told at test time (van de Ven & Tolias 2019); see the module docstring."""

    __noun__ = ("scenario", "scenarios")

    TASK = "task"
    DOMAIN = "domain"
    CLASS = "class"

    @property
    def title(self) -> str:
        """``"task-incremental"``, ``"domain-incremental"`` or ``"class-incremental"``."""
        return f"{self.value}-incremental"


class TrainOutputs(Choice):
    """The outputs that training sees in class-IL (``benchmark.train_outputs``).

    ``all``: every class's output, as at test time. ``seen``: only the classes of the tasks trained
    so far, van de Ven & Tolias 2019's "active classes" (``train.py`` of their code): on task t the
    loss's softmax, the Fisher's and every other strategy's span the columns 0 .. o_t + k_t − 1
    (`TaskStream.training_output_fn`); evaluation still spans every class.
    """

    __noun__ = ("training output choice", "training output choices")

    ALL = "all"
    SEEN = "seen"


class Benchmark(Choice):
    """How a data set becomes a sequence of tasks (see :mod:`ewc.experiment.streams.benchmarks`)."""

    __noun__ = ("benchmark", "benchmarks")

    PERMUTED = "permuted"
    SPLIT = "split"
    ROTATED = "rotated"
    CUSTOM = "custom"  # your own tasks, from a factory (:mod:`.factory`)


@dataclass(frozen=True, eq=False)
class Task:
    """One task of a stream, ready for training and evaluation.

    The images stay uint8 as the data set holds them, once for all tasks that use them (a view,
    not a copy, when a task takes every image); ``transform`` turns any batch of them into model
    inputs (the task's permutation or rotation, and the scaling to [0, 1]). Applying it per batch
    gives the same bits as applying it to the whole split, since every transform works on each
    image alone (tests check this), so memory does not grow with the number of tasks.

    Attributes:
        index: the 0-based position in the stream.
        name: for humans: ``"permutation 3"``, ``"digits 4/5"``, ``"rotation 36°"``.
        train_images: uint8 ``(N_train, H, W)``, the task's training images before ``transform``.
        train_targets: int64 ``(N_train,)``, labelled as the stream's scenario says (module doc).
        test_images: uint8 ``(N_test, H, W)``.
        test_targets: int64 ``(N_test,)``.
        classes: the original data set's classes in this task; within-task label i is classes[i].
        transform: uint8 ``(n, H, W)`` images → float32 model inputs ``(n, 1, H, W)`` in [0, 1]
            (or normalised, ``benchmark.normalize``).

    Your own tasks (`ewc.experiment.streams.factory`) hold their inputs, of any dtype and shape,
    in place of the images, with a transform that returns them as they are.
    """

    index: int
    name: str
    train_images: Tensor
    train_targets: Tensor
    test_images: Tensor
    test_targets: Tensor
    classes: tuple[int, ...]
    transform: Callable[[Tensor], Tensor]

    @property
    def train_inputs(self) -> Tensor:
        """float32 ``(N_train, 1, H, W)`` in [0, 1]: every training input (new at each call)."""
        return self.transform(self.train_images)

    @property
    def test_inputs(self) -> Tensor:
        """float32 ``(N_test, 1, H, W)`` in [0, 1]: every test input (new at each call)."""
        return self.transform(self.test_images)

    def __repr__(self) -> str:
        return (
            f"Task({self.index}, {self.name!r}, train={self.train_targets.shape[0]}, "
            f"test={self.test_targets.shape[0]}, classes={self.classes})"
        )


@dataclass(frozen=True)
class HeadSelector:
    """Task ``head``'s logits in a multi-head model's ``(N, heads, C)`` output: ``out[:, head]``."""

    head: int

    def __call__(self, output: Tensor) -> Tensor:
        """Task ``head``'s logits ``output[:, head]`` (N, C) from an (N, heads, C) output.

        Raises:
            ValueError: ``output`` is not a 3-D tensor with more than ``head`` heads.
        """
        if not isinstance(output, Tensor) or output.dim() != 3 or output.shape[1] <= self.head:
            raise ValueError(
                f"head {self.head} needs the (N, heads, outputs) output of a model with more than "
                f"{self.head} heads; got {_describe(output)}"
            )
        return output[:, self.head]


@dataclass(frozen=True)
class ColumnSelector:
    """A task's logits in a shared output layer: the columns ``out[:, start:stop]`` (a view)."""

    start: int
    stop: int

    def __call__(self, output: Tensor) -> Tensor:
        """The task's columns ``output[:, start:stop]`` (a view) of (N, outputs) logits.

        Raises:
            ValueError: ``output`` is not a 2-D tensor with at least ``stop`` columns.
        """
        if not isinstance(output, Tensor) or output.dim() != 2 or output.shape[1] < self.stop:
            raise ValueError(
                f"columns {self.start}..{self.stop - 1} need (N, outputs) logits with at least "
                f"{self.stop} outputs; got {_describe(output)}"
            )
        return output[:, self.start : self.stop]


@dataclass(frozen=True, eq=False)
class TaskStream:
    """A sequence of tasks and the model output they need; made by `.benchmarks.build_stream`.

    Attributes:
        benchmark: how the tasks were made.
        scenario: what the model is told at test time; sets the labels (module docstring).
        dataset: the data set's name (``"mnist"``, …).
        source: where the data came from, from :class:`~ewc.data.ImageDataset` (for reports).
        is_subset: True when the data is not the official train/test split; results must say so.
        tasks: the tasks, in training order.
        num_outputs: the width of each model head.
        heads: the number of heads the model needs: the number of tasks for task-IL with
            ``multi_head=True`` and more than one task, else 1.
    """

    benchmark: Benchmark
    scenario: Scenario
    dataset: str
    source: str
    is_subset: bool
    tasks: tuple[Task, ...]
    num_outputs: int
    heads: int

    @property
    def num_tasks(self) -> int:
        """The number of tasks."""
        return len(self.tasks)

    def output_fn(self, task_index: int) -> OutputFn | None:
        """What maps the model output to task ``task_index``'s logits; None: use it as is.

        Several heads: ``out[:, t]``; task-IL with one head: the task's columns; domain- and
        class-IL: None, since the model is not told the task.
        """
        if isinstance(task_index, bool) or not isinstance(task_index, int):
            raise ValueError(f"task_index must be an integer; got {task_index!r}")
        if not 0 <= task_index < self.num_tasks:
            raise ValueError(f"task_index must be in [0, {self.num_tasks}); got {task_index}")
        if self.heads > 1:
            return HeadSelector(task_index)
        if self.scenario is Scenario.TASK:
            start = sum(len(task.classes) for task in self.tasks[:task_index])
            return ColumnSelector(start, start + len(self.tasks[task_index].classes))
        return None

    def training_output_fn(self, task_index: int, outputs: TrainOutputs) -> OutputFn | None:
        """What maps the model output to the logits that training on ``task_index`` sees.

        ``outputs = all``: `output_fn`, the task's logits as evaluated. ``seen`` (class-IL only):
        the columns of every class of tasks 0..``task_index``, which hold the task's global
        labels o_t .. o_t + k_t − 1 (module table).

        Raises:
            ValueError: ``seen`` in another scenario than class-IL, where the task's logits are
                already its own (task-IL) or shared by every task (domain-IL).
        """
        selected = self.output_fn(task_index)
        if TrainOutputs.parse(outputs) is TrainOutputs.ALL:
            return selected
        if self.scenario is not Scenario.CLASS:
            raise ValueError(
                "training on the seen classes only (train_outputs = 'seen') is for class-IL; "
                f"this stream is {self.scenario.title}"
            )
        return ColumnSelector(0, sum(len(task.classes) for task in self.tasks[: task_index + 1]))

    def __repr__(self) -> str:
        subset = ", subset" if self.is_subset else ""
        return (
            f"TaskStream({self.benchmark.value!r}, {self.scenario.value!r}, {self.dataset!r}"
            f"{subset}, tasks={self.num_tasks}, num_outputs={self.num_outputs}, "
            f"heads={self.heads})"
        )


def output_layout(scenario: Scenario, multi_head: bool, widths: Sequence[int]) -> tuple[int, int]:
    """``(num_outputs, heads)`` of a stream whose tasks have ``widths`` classes (module table).

    Task-IL with one head and class-IL share one layer of Σ_t k_t outputs; domain-IL and a head
    per task need max_t k_t; several heads only with ``multi_head`` and more than one task.
    """
    several = multi_head and len(widths) > 1
    shared = scenario is not Scenario.DOMAIN and not several
    return (sum(widths) if shared else max(widths)), (len(widths) if several else 1)


def _describe(output: object) -> str:
    if isinstance(output, Tensor):
        return f"shape {tuple(output.shape)}"
    return type(output).__name__
