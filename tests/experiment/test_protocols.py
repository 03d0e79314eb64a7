"""The protocol knobs of published runs: step budgets, drop_last, class order, padding,
normalisation, the batched Fisher's batch size, wall times and FWT's n/a in task-IL."""

from __future__ import annotations

import json

import pytest
import torch

from ewc.experiment.cell import task_budget
from ewc.experiment.config import ConfigError, resolve
from ewc.experiment.runner import run_experiment
from ewc.experiment.strategies import (
    BATCHED_FISHER_BATCH_SIZE,
    EWCSettings,
    TaskContext,
    fisher_batches,
)
from ewc.experiment.streams.benchmarks import build_stream
from ewc.experiment.streams.loaders import TensorBatches
from ewc.experiment.streams.protocol import class_permutation, order_classes, pad_images
from ewc.experiment.summary import FWT_TASK_IL, not_applicable
from ewc.fisher import FisherKind
from experiment.test_runner import TINY_RUN, StopAfter, events, learnable_digits, replaced


def tiny_config(*extra: str):
    return resolve(overrides=replaced(TINY_RUN, *extra))


def _batches(n: int, size: int) -> TensorBatches:
    return TensorBatches(torch.zeros(n, 1), torch.zeros(n, dtype=torch.long), batch_size=size)


@pytest.mark.parametrize(
    ("epochs", "steps", "n", "size", "drop_last", "expected"),
    [
        (3, None, 100, 32, False, (12, 4, 3)),  # whole epochs: 4 batches a pass
        (3, None, 100, 32, True, (9, 3, 3)),  # the 4-sample batch is dropped
        (3, 10, 100, 32, False, (10, 4, 3)),  # steps replace epochs; the 3rd pass is cut at 2
        (1, 7, 100, 32, True, (7, 3, 3)),
        (9, 2, 100, 32, False, (2, 4, 1)),  # fewer steps than one pass
    ],
)
def test_the_task_budget(epochs, steps, n, size, drop_last, expected):
    budget = task_budget(epochs, steps, _batches(n, size), drop_last)
    assert tuple(budget) == expected
    assert sum(budget.batches_in(e) for e in range(budget.epochs)) == budget.steps


def test_drop_last_without_a_full_batch_is_an_error_that_names_the_keys():
    with pytest.raises(ValueError, match=r"training\.drop_last = true leaves no batch"):
        task_budget(1, None, _batches(10, 32), drop_last=True)


def _task_end_steps(run_dir) -> list[int]:
    return [e["step"] for e in events(run_dir) if e["event"] == "task_end"]


def test_steps_replace_epochs_and_cycle_the_data(tmp_path):
    # 160 samples in batches of 16: 10 a pass; 23 steps take 3 passes, the last cut at 3.
    config = tiny_config("training.steps=23", 'compare=["finetune"]')
    run_experiment(config, tmp_path / "run", data=learnable_digits())
    assert _task_end_steps(tmp_path / "run") == [0, 23, 46]
    dropped = tiny_config(
        "training.steps=5",
        "training.batch_size=50",
        "training.drop_last=true",
        'compare=["finetune"]',
    )
    run_experiment(dropped, tmp_path / "d", data=learnable_digits())
    assert _task_end_steps(tmp_path / "d") == [0, 5, 10]


@pytest.mark.parametrize("stop", [4, 11, 23, 30])
def test_a_step_budget_run_resumes_bitwise(tmp_path, stop):
    data = learnable_digits()
    config = tiny_config(
        "training.steps=23", "training.drop_last=true", "training.batch_size=24", 'compare=["ewc"]'
    )
    reference = run_experiment(config, tmp_path / "whole", data=data)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tmp_path / "cut", data=data, progress=StopAfter(stop))
    resumed = run_experiment(config, tmp_path / "cut", resume=True, data=data)
    assert resumed.matrices == reference.matrices


def test_the_cosine_follows_the_step_budget(tmp_path, monkeypatch):
    rates: list[float] = []
    import ewc.experiment.cell as cell

    original = cell.train_step

    def recording(model, batch, optimizer, **kwargs):
        rates.append(optimizer.param_groups[0]["lr"])
        return original(model, batch, optimizer, **kwargs)

    monkeypatch.setattr(cell, "train_step", recording)
    config = tiny_config("training.steps=7", "training.lr_schedule=cosine", 'compare=["finetune"]')
    run_experiment(config, tmp_path / "run", data=learnable_digits())
    assert len(rates) == 14
    assert rates[0] == pytest.approx(1e-3)
    assert rates[7] == pytest.approx(1e-3)
    assert rates[6] == pytest.approx(1e-3 * 0.5 * (1 + torch.cos(torch.tensor(6 / 7 * 3.14159265))))


def test_new_keys_at_their_defaults_leave_the_hash_unchanged():
    plain = resolve().hash()
    explicit = resolve(
        overrides=[
            "training.drop_last=false",
            'benchmark.class_order="natural"',
            "benchmark.pad=0",
            'benchmark.train_outputs="all"',
        ]
    ).hash()
    assert explicit == plain
    assert resolve(overrides=["training.steps=100"]).hash() != plain


def test_class_order_shuffles_labels_and_names_alike():
    data = learnable_digits()
    assert order_classes(data, "natural", 3) is data
    perm = class_permutation(10, 3)
    shuffled = order_classes(data, "shuffled", 3)
    assert torch.equal(shuffled.train_labels, perm[data.train_labels])
    assert all(shuffled.classes[perm[c]] == data.classes[c] for c in range(10))
    assert not torch.equal(class_permutation(10, 4), perm)
    with pytest.raises(ConfigError, match=r"class_order = 'shuffled' applies to the split"):
        resolve(overrides=['benchmark.class_order="shuffled"'])


def test_the_numpy_class_order_is_van_de_vens_draw():
    """His main.py seeds np.random.seed(s); data.py then draws the label permutation first."""
    numpy = pytest.importorskip("numpy")
    data = learnable_digits()
    for seed in (1, 2, 20):
        numpy.random.seed(seed)
        his = torch.as_tensor(numpy.random.permutation(list(range(10))))
        ordered = order_classes(data, "numpy", seed)
        assert torch.equal(ordered.train_labels, his[data.train_labels])  # label y -> p[y]
    assert torch.equal(
        order_classes(data, "numpy", 1).test_labels[:10].sort().values, torch.arange(10)
    )
    config = resolve(overrides=["benchmark.name=split", 'benchmark.class_order="numpy"'])
    assert config.benchmark.class_order.value == "numpy"


def test_a_shuffled_split_run_names_the_original_classes(tmp_path):
    config = tiny_config(
        "benchmark.name=split", 'benchmark.class_order="shuffled"', 'compare=["finetune"]'
    )
    run_experiment(config, tmp_path / "run", data=learnable_digits())
    tasks = json.loads((tmp_path / "run" / "config.json").read_text())["tasks"]
    perm = class_permutation(10, 0).tolist()  # perm[c] = the new label of digit c
    assert tasks[0] == f"classes 0/1 ({perm.index(0)}, {perm.index(1)})"


def test_padding_widens_the_images_and_the_model(tmp_path):
    data = learnable_digits()
    padded = pad_images(data, 2)
    assert padded.train_images.shape[1:] == (32, 32)
    assert torch.equal(padded.train_images[:, 2:30, 2:30], data.train_images)
    assert padded.train_images[:, :2].sum() == 0
    result = run_experiment(
        tiny_config("benchmark.pad=2", 'compare=["finetune"]'), tmp_path / "run", data=data
    )
    assert result.matrices


def test_normalize_shifts_and_scales_every_tasks_inputs_after_padding(tmp_path):
    """Hsu et al.'s ``Pad(2)`` then ``Normalize((0.1,), (0.2752,))``: a pad pixel is −0.1/0.2752."""
    data = pad_images(learnable_digits(), 2)
    plain = build_stream("split", data, train_samples=8, test_samples=8)
    normal = build_stream("split", data, train_samples=8, test_samples=8, normalize=(0.1, 0.2752))
    for a, b in zip(plain.tasks, normal.tasks, strict=True):
        x = a.transform(a.train_images)
        y = b.transform(b.train_images)
        assert torch.allclose(y, (x - 0.1) / 0.2752, rtol=0, atol=1e-6)
        assert torch.allclose(y[:, :, 0, 0], torch.tensor(-0.1 / 0.2752), rtol=0, atol=1e-6)
    permuted = build_stream("permuted", data, num_tasks=2, train_samples=4, normalize=(0.5, 2.0))
    task = permuted.tasks[1]
    unit = build_stream("permuted", data, num_tasks=2, train_samples=4).tasks[1]
    expected = (unit.transform(unit.test_images) - 0.5) / 2.0
    assert torch.equal(task.transform(task.test_images), expected)
    config = tiny_config("benchmark.normalize=[0.1, 0.2752]", 'compare=["finetune"]')
    assert config.hash() != tiny_config('compare=["finetune"]').hash()
    run_experiment(config, tmp_path / "run", data=learnable_digits())
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["config"]["benchmark"]["normalize"] == [0.1, 0.2752]


@pytest.mark.parametrize(
    "value", ["[0.1]", "[0.1, 0.0]", "[0.1, -1.0]", "[0.1, 0.2, 0.3]", "[nan, 1.0]"]
)
def test_a_bad_normalize_is_refused_before_anything_runs(value):
    with pytest.raises(ConfigError, match=r"benchmark\.normalize must be \[mean, std\]"):
        tiny_config(f"benchmark.normalize={value}")
    with pytest.raises(ValueError, match="normalize must be"):
        build_stream("split", learnable_digits(), normalize=(0.1, 0.0))


def test_seen_class_training_selects_the_columns_of_the_tasks_so_far():
    data = learnable_digits()
    stream = build_stream("split", data, scenario="class", classes_per_task=3)
    assert [t.classes for t in stream.tasks] == [(0, 1, 2), (3, 4, 5), (6, 7, 8)]
    for t in range(3):
        assert stream.training_output_fn(t, "all") is None
        selected = stream.training_output_fn(t, "seen")
        assert (selected.start, selected.stop) == (0, 3 * (t + 1))
        targets = stream.tasks[t].train_targets  # global labels: inside the selected columns
        assert int(targets.min()) >= 3 * t
        assert int(targets.max()) < selected.stop
    task_il = build_stream("split", data, scenario="task", classes_per_task=3)
    assert task_il.training_output_fn(1, "all") == task_il.output_fn(1)
    with pytest.raises(ValueError, match="is for class-IL; this stream is task-incremental"):
        task_il.training_output_fn(1, "seen")
    with pytest.raises(ValueError, match="unknown training output choice 'some'"):
        stream.training_output_fn(0, "some")


def test_seen_class_training_reaches_the_loss_and_the_fisher_but_not_the_evaluation(
    tmp_path, monkeypatch
):
    """van de Ven's class-IL: the loss and the Fisher span the seen classes, the test all ten."""
    from ewc.experiment import cell
    from ewc.report import write_report

    steps, fishers = [], []
    real_step, real_context = cell.train_step, cell._context

    def step(model, batch, optimizer, penalty=None, output_fn=None):
        steps.append((output_fn.start, output_fn.stop))
        return real_step(model, batch, optimizer, penalty=penalty, output_fn=output_fn)

    def context(parts, task):
        made = real_context(parts, task)
        fishers.append((task, made.output_fn.start, made.output_fn.stop))
        return made

    monkeypatch.setattr(cell, "train_step", step)
    monkeypatch.setattr(cell, "_context", context)
    config = tiny_config(
        "benchmark.name=split",
        'benchmark.scenario="class"',
        'benchmark.train_outputs="seen"',
        'compare=["ewc"]',
        "training.steps=3",
    )
    assert (
        config.hash()
        != tiny_config(
            "benchmark.name=split",
            'benchmark.scenario="class"',
            'compare=["ewc"]',
            "training.steps=3",
        ).hash()
    )
    result = run_experiment(config, tmp_path / "run", data=learnable_digits())
    assert steps == [(0, 2)] * 3 + [(0, 4)] * 3
    assert fishers == [(0, 0, 2), (1, 0, 4)]
    assert result.matrices  # evaluated over every class: the stream's output_fn is None
    write_report(tmp_path / "run")
    report = (tmp_path / "run" / "report.md").read_text()
    assert "only the outputs of the classes seen so far" in report


def test_seen_class_training_outside_class_il_is_refused_by_the_config():
    with pytest.raises(ConfigError, match=r"benchmark\.train_outputs = 'seen' .* is for class-IL"):
        tiny_config("benchmark.name=split", 'benchmark.train_outputs="seen"')


class _Context:
    """What `fisher_batches` reads of a TaskContext."""

    def __init__(self) -> None:
        self.train_batches = "the evaluation-size batches"
        self.asked: list[int] = []

    def batches(self, size: int) -> str:
        self.asked.append(size)
        return f"batches of {size}"


@pytest.mark.parametrize(
    ("kind", "size", "expected"),
    [
        ("batched", None, f"batches of {BATCHED_FISHER_BATCH_SIZE}"),
        ("batched", 32, "batches of 32"),
        ("exact", None, "the evaluation-size batches"),
        ("empirical", 7, "batches of 7"),
    ],
)
def test_the_fisher_batch_size_is_never_the_evaluation_batch_size(kind, size, expected):
    settings = EWCSettings(fisher=FisherKind.parse(kind), fisher_batch_size=size)
    assert fisher_batches(settings, _Context()) == expected  # type: ignore[arg-type]


def test_a_context_without_rebatching_is_refused_for_the_batched_fisher():
    context = TaskContext(None, 0, [], None, torch.Generator(), "adam", 1e-3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fisher_batch_size = 128 needs a TaskContext"):
        fisher_batches(EWCSettings(fisher=FisherKind.BATCHED), context)


def test_batched_fisher_batch_size_changes_the_result_but_eval_batch_size_does_not(tmp_path):
    data = learnable_digits()
    common = ['strategies.ewc.fisher="batched"', "strategies.ewc.strength=1e4", 'compare=["ewc"]']
    runs = {
        name: run_experiment(tiny_config(*common, *extra), tmp_path / name, data=data).matrices
        for name, extra in {
            "base": [],
            "eval": ["training.eval_batch_size=16"],
            "fisher": ["strategies.ewc.fisher_batch_size=8"],
        }.items()
    }
    assert list(runs["base"].values()) == list(runs["eval"].values())
    assert list(runs["base"].values()) != list(runs["fisher"].values())


def test_summary_holds_wall_times_and_marks_fwt_of_task_il(tmp_path):
    config = tiny_config("benchmark.name=split", 'compare=["finetune", "ewc"]')
    run_experiment(config, tmp_path / "run", data=learnable_digits())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["not_applicable"] == {"FWT": FWT_TASK_IL}
    for name in ("finetune", "ewc"):
        spent = summary["timings_s"][name]
        assert set(spent) == {"training", "fisher", "evaluation"}
        assert spent["training"] > 0
        assert spent["evaluation"] > 0
    assert summary["timings_s"]["ewc"]["fisher"] > 0
    assert not_applicable("domain") == {}
    assert not_applicable("class") == {}


def test_the_report_shows_fwt_as_not_applicable_and_the_wall_times(tmp_path):
    from ewc.report import write_report

    config = tiny_config("benchmark.name=split", 'compare=["ewc"]')
    run_experiment(config, tmp_path / "run", data=learnable_digits())
    write_report(tmp_path / "run")
    text = (tmp_path / "run" / "report.md").read_text()
    assert "| ewc |" in text
    assert "| n/a |" in text
    assert "FWT n/a: task-incremental" in text
    assert "Fisher (s)" in text


def test_permuted_runs_have_ten_tasks_but_the_quick_start_keeps_five():
    from ewc.experiment.streams.benchmarks import DEFAULTS, Benchmark

    assert DEFAULTS[Benchmark.PERMUTED].num_tasks == 10
    assert resolve().benchmark.num_tasks == 5  # the quick start, a bare `ewc run`: unchanged
    assert resolve(overrides=["training.epochs=1"]).benchmark.num_tasks == 5
    named = resolve(overrides=["benchmark.name=permuted"])
    assert named.benchmark.num_tasks is None  # the stream's default: 10 tasks
    assert (
        resolve(overrides=["benchmark.name=permuted", "benchmark.num_tasks=3"]).benchmark.num_tasks
        == 3
    )


def test_a_named_permuted_benchmark_builds_ten_tasks(tmp_path):
    config = tiny_config("benchmark.name=permuted", "benchmark.num_tasks=2")
    assert config.benchmark.num_tasks == 2
    from ewc.experiment.runner import stream_for

    stream = stream_for(resolve(overrides=["benchmark.name=permuted"]), learnable_digits(), 0)
    assert stream.num_tasks == 10
