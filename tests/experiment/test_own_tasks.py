"""Your own tasks and model in `ewc run`: the protocol, its errors, the machinery on them."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from ewc.cli import main
from ewc.experiment.config import ConfigError, resolve
from ewc.experiment.factories import FactoryError
from ewc.experiment.runner import run_experiment
from ewc.experiment.storage.rundir import RunDirectory
from ewc.experiment.streams.factory import CustomTasks
from ewc.experiment.streams.tasks import Benchmark, ColumnSelector, HeadSelector, Scenario
from experiment.test_runner import StopAfter

FACTORIES = '''
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from ewc.experiment.models import output_layer
from ewc.experiment.streams.factory import TaskSpec


class Pairs(Dataset):
    """A plain map-style dataset (not a TensorDataset): read item by item."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def _data(classes, n, generator):
    y = torch.tensor(classes)[torch.arange(n) % len(classes)]
    return torch.randn(n, 3, generator=generator) + y[:, None].float(), y


def tasks(seed):
    generator = torch.Generator().manual_seed(seed)
    stream = []
    for t, classes in enumerate([(0, 1), (2, 3, 4)]):
        train, test = _data(classes, 40, generator), _data(classes, 20, generator)
        train_set = Pairs(*train) if t == 0 else TensorDataset(*train)
        stream.append(TaskSpec(f"t{t}", train_set, TensorDataset(*test), classes))
    return stream


def model(spec):
    hidden = nn.Sequential(nn.Linear(spec.input_shape[0], 8), nn.ReLU())
    return nn.Sequential(hidden, output_layer(8, spec.num_outputs, spec.heads))


def not_a_list(seed):
    return 3


def bad_labels(seed):
    first = tasks(seed)[0]
    return [TaskSpec("wrong", first.train, first.test, (0, 5))]


def wrong_type_model(spec):
    return "mlp"


def wrong_shape_model(spec):
    return nn.Linear(spec.input_shape[0], 1)


class _Rounded(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.linear = nn.Linear(spec.input_shape[0], spec.num_outputs * spec.heads)
        self.shape = (spec.heads, spec.num_outputs) if spec.heads > 1 else (spec.num_outputs,)

    def forward(self, x):
        return self.linear(x).round().long().view(-1, *self.shape)


def int_logits_model(spec):
    return _Rounded(spec)


def tokens(seed):
    """Sequences of 6 token ids (vocabulary 10); the label: is token 1 or 2 the more frequent."""
    generator = torch.Generator().manual_seed(seed)
    stream = []
    for t, pair in enumerate([(1, 2), (3, 4)]):
        x = torch.randint(0, 10, (48, 6), generator=generator)
        y = ((x == pair[1]).sum(1) > (x == pair[0]).sum(1)).long() + 2 * t
        stream.append(TaskSpec(f"tokens {pair}", TensorDataset(x[:32], y[:32]),
                               TensorDataset(x[32:], y[32:]), (2 * t, 2 * t + 1)))
    return stream


def bag_model(spec):
    assert spec.input_dtype == torch.int64 and spec.input_shape == (6,)
    return nn.Sequential(nn.Embedding(10, 8), nn.Flatten(), nn.Linear(48, spec.num_outputs))


broken = 3
'''


@pytest.fixture
def factories(tmp_path, monkeypatch):
    """``own_factories`` and ``own_broken`` importable from a folder on sys.path."""
    (tmp_path / "own_factories.py").write_text(FACTORIES)
    (tmp_path / "own_broken.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    forget_modules()
    yield tmp_path
    forget_modules()  # not through monkeypatch, whose undo would put them back


def forget_modules() -> None:
    """Drop this file's factory modules, so that the next test imports its own copy."""
    for name in ("own_factories", "own_broken", "cwd_only_factories"):
        sys.modules.pop(name, None)


OWN = ["benchmark.factory=own_factories:tasks", "model.factory=own_factories:model"]
TINY = [
    *OWN,
    "training.epochs=2",
    "training.batch_size=8",
    "training.eval_every=3",
    "training.threads=1",
    "checkpoint_every=2",
    'compare=["finetune", "ewc"]',
]


# ------------------------------------------------------------------------------ the protocol


@pytest.mark.parametrize(
    ("scenario", "multi_head", "outputs", "heads", "second_labels"),
    [
        ("task", True, 3, 2, {0, 1, 2}),
        ("task", False, 5, 1, {0, 1, 2}),
        ("domain", False, 3, 1, {0, 1, 2}),
        ("class", False, 5, 1, {2, 3, 4}),
    ],
)
def test_scenarios_derive_labels_heads_and_masks_from_the_classes(
    factories, scenario, multi_head, outputs, heads, second_labels
):
    stream = CustomTasks("own_factories:tasks").stream(
        seed=0, scenario=Scenario(scenario), multi_head=multi_head
    )
    assert (stream.benchmark, stream.num_outputs, stream.heads) == (
        Benchmark.CUSTOM,
        outputs,
        heads,
    )
    assert [t.classes for t in stream.tasks] == [(0, 1), (2, 3, 4)]
    assert set(stream.tasks[1].train_targets.tolist()) == second_labels
    assert stream.tasks[0].train_inputs.shape == (40, 3)
    expected_fn = {
        ("task", True): HeadSelector(1),
        ("task", False): ColumnSelector(2, 5),
    }.get((scenario, multi_head))
    assert stream.output_fn(1) == expected_fn
    import own_factories

    original = own_factories.tasks(0)[1].train.tensors[1]
    offset = 2 if scenario == "class" else 0
    assert torch.equal(stream.tasks[1].train_targets, original - 2 + offset)


def test_sample_limits_and_task_count(factories):
    stream = CustomTasks("own_factories:tasks").stream(
        seed=0, scenario=Scenario.CLASS, num_tasks=1, train_samples=5, test_samples=3
    )
    assert stream.num_tasks == 1
    assert (len(stream.tasks[0].train_targets), len(stream.tasks[0].test_targets)) == (5, 3)
    with pytest.raises(FactoryError, match=r"benchmark\.num_tasks = 3, but .* returned 2 tasks"):
        CustomTasks("own_factories:tasks").stream(seed=0, scenario=Scenario.TASK, num_tasks=3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["benchmark.factory=own_factories"],
            "benchmark.factory = 'own_factories' is not of the form 'pkg.module:function'",
        ),
        (
            ["benchmark.factory=no_such_module_xyz:tasks"],
            "module 'no_such_module_xyz' cannot be imported (ModuleNotFoundError",
        ),
        (["benchmark.factory=own_broken:tasks"], "cannot be imported (RuntimeError: boom)"),
        (
            ["benchmark.factory=own_factories:missing"],
            "has no 'missing'; the public functions it defines: Pairs, bad_labels, bag_model, "
            "int_logits_model, model, not_a_list, tasks, tokens, wrong_shape_model, "
            "wrong_type_model",
        ),
        (["benchmark.factory=own_factories:broken"], "'own_factories:broken' is a int, not a"),
        (
            ["benchmark.factory=own_factories:not_a_list"],
            "returned a int; it must return a non-empty list of "
            "ewc.experiment.streams.factory.TaskSpec",
        ),
        (
            ["benchmark.factory=own_factories:bad_labels"],
            "task 1 ('wrong') of benchmark.factory 'own_factories:bad_labels': train item 1 has "
            "label 1, which is not one of its declared classes (0, 5)",
        ),
        (
            [OWN[0], "model.factory=own_factories:wrong_type_model"],
            "model.factory 'own_factories:wrong_type_model' returned a str; it must return a "
            "torch.nn.Module",
        ),
        (
            [OWN[0], "model.factory=own_factories:wrong_shape_model"],
            "the model's output for 2 inputs is (2, 1), but the task stream needs logits of "
            "shape (2, 2, 3)",
        ),
        (["benchmark.name=custom"], "benchmark.name = 'custom' needs benchmark.factory"),
        ([*OWN, "benchmark.name=split"], "so benchmark.name must be 'custom'"),
        ([*OWN, "benchmark.angles=[0.0]"], "benchmark.angles applies to the image benchmarks"),
        ([*OWN, "benchmark.pad=2"], "benchmark.pad applies to the image benchmarks"),
        ([*OWN, "--data-dir", "digits"], "--data-dir names the folder of an image benchmark"),
        (
            [OWN[0], "model.factory=os:getcwd"],
            "model.factory = 'os:getcwd' must take one argument (spec: ModelSpec); its "
            "signature is ()",
        ),
        (
            ["benchmark.factory=os:getcwd"],
            "benchmark.factory = 'os:getcwd' must take one argument (seed: int)",
        ),
        (
            [OWN[0], "model.factory=own_factories:int_logits_model"],
            "the model's output is torch.int64; it must be floating logits",
        ),
        (
            ["benchmark.factory=own_factories:tokens"],
            "your tasks' inputs (benchmark.factory) are torch.int64, but the built-in "
            "model.name = 'mlp' reads float32",
        ),
        (
            [*OWN, "benchmark.normalize=[0.1, 0.3]"],
            "benchmark.normalize applies to the image benchmarks",
        ),
    ],
)
def test_a_bad_factory_is_one_line_naming_it_and_nothing_is_created(
    factories, capsys, overrides, message
):
    assert main(["run", "--out", "run", "--quiet", "--no-report", *overrides]) == 2
    error = capsys.readouterr().err
    assert message in error
    assert error.count("\n") == 1
    assert not (factories / "run").exists()


def test_a_factory_implies_the_custom_benchmark_and_old_hashes_stay():
    b = resolve(overrides=["benchmark.factory=a.b:c"]).benchmark
    assert (b.name, b.source, b.factory, b.scenario, b.multi_head) == (
        Benchmark.CUSTOM,
        None,
        "a.b:c",
        Scenario.TASK,
        True,
    )
    # the hashes of main before these keys existed: runs recorded then still resume
    assert resolve().hash() == "643b05dfdab13004f6b21db5f6ada02d371e3d521402f29e0b84d7276f43fe6a"
    split_cnn = resolve(overrides=["benchmark.name=split", "model.name=cnn"])
    assert split_cnn.hash() == "30ce288a0f61969cbba8531cfc1ec6b1091698d9fe45cb916223114613395991"
    assert resolve(overrides=["output.tensorboard=true"]).hash() == resolve().hash()
    with pytest.raises(ConfigError, match=r"output\.tensorboard must be of type bool"):
        resolve(overrides=["output.tensorboard=3"])


# ------------------------------------------------------------------------- end to end


def test_ewc_run_trains_reports_and_resumes_on_your_own_tasks(factories, capsys):
    assert main(["run", "--out", "whole", "--quiet", *TINY]) == 0
    record = json.loads((factories / "whole" / "config.json").read_text())
    assert record["config"]["benchmark"]["name"] == "custom"
    assert record["config"]["model"]["factory"] == "own_factories:model"
    assert record["data"]["dataset"] == "own_factories:tasks"
    assert record["tasks"] == ["t0", "t1"]
    assert (factories / "whole" / "report.html").is_file()
    assert "own_factories:model" in (factories / "whole" / "report.md").read_text()

    config = resolve(overrides=TINY)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, factories / "cut", progress=StopAfter(9), quiet=True)
    assert main(["run", "--resume", "cut", "--quiet", "--no-report"]) == 0
    whole, cut = RunDirectory(factories / "whole"), RunDirectory(factories / "cut")
    for (cell, path), (_, resumed) in zip(whole.matrix_files(), cut.matrix_files(), strict=True):
        assert path.read_text() == resumed.read_text(), cell
    assert whole.metrics_path.read_text() == cut.metrics_path.read_text()


def test_a_changed_factory_output_refuses_to_resume(factories, capsys):
    config = resolve(overrides=TINY)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, factories / "cut", progress=StopAfter(3), quiet=True)
    source = factories / "own_factories.py"
    source.write_text(source.read_text().replace("_data(classes, 40", "_data(classes, 41"))
    sys.modules.pop("own_factories")
    assert main(["run", "--resume", "cut", "--quiet", "--no-report"]) == 2
    assert "was run on other data" in capsys.readouterr().err


def test_ewc_sweep_runs_trials_on_your_own_tasks(factories, capsys):
    pytest.importorskip("optuna")
    grid = ["--search", "strategies.ewc.strength=1,100", "--no-prune", "--no-report"]
    kept = [o for o in TINY[:-1] if not o.startswith("training.eval_every=")]
    tiny = [*kept, 'compare=["ewc"]', "training.eval_every=0"]
    assert main(["sweep", *grid, "--out", "sweep", "--quiet", *tiny]) == 0
    trials = json.loads((factories / "sweep" / "trials.json").read_text())["trials"]
    assert len(trials) == 2
    assert all(t["state"] == "complete" for t in trials), trials


def test_the_model_factory_works_on_a_built_in_benchmark(factories, monkeypatch):
    overrides = [
        "model.factory=own_factories:model",
        "benchmark.num_tasks=2",
        "benchmark.train_samples=16",
        "benchmark.test_samples=16",
        "training.epochs=1",
        'compare=["finetune"]',
    ]
    with pytest.raises(FactoryError, match=r"fails on a batch of inputs of shape \(2, 1, 28, 28\)"):
        run_experiment(resolve(overrides=overrides), factories / "run", quiet=True)
    assert not (factories / "run").exists()


def test_the_factory_module_is_found_in_the_working_directory(tmp_path, monkeypatch, capsys):
    (tmp_path / "cwd_only_factories.py").write_text(FACTORIES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    arguments = ["--out", "run", "--quiet", "--no-report", *TINY[2:-1], 'compare=["finetune"]']
    own = ["benchmark.factory=cwd_only_factories:tasks", "model.factory=cwd_only_factories:model"]
    assert main(["run", *arguments, *own]) == 0
    forget_modules()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["tasks"] == ["t0", "t1"]


def test_the_built_in_mlp_on_your_own_tasks_in_worker_processes(factories):
    overrides = [*TINY[:1], *TINY[2:], "model.hidden=[4]", "benchmark.scenario=domain"]
    config = resolve(overrides=overrides)
    one = run_experiment(config, factories / "one", quiet=True)
    two = run_experiment(config, factories / "two", quiet=True, jobs=2)
    assert one.matrices == two.matrices
    record = json.loads((factories / "one" / "config.json").read_text())
    assert record["config"]["model"] == {"name": "mlp", "hidden": [4], "factory": None}


SHIFTING = """
import os
import torch
from torch.utils.data import TensorDataset
from ewc.experiment.streams.factory import TaskSpec


def tasks(seed):
    generator = torch.Generator().manual_seed(seed)
    shift = {"seed 1": 1.0 if seed == 1 else 0.0, "process": os.getpid() % 97 / 10}.get(
        os.environ.get("EWC_TEST_SHIFT"), 0.0
    )
    out = []
    for t, classes in enumerate([(0, 1), (2, 3)]):
        y = torch.tensor(classes)[torch.arange(40) % 2]
        x = torch.randn(40, 3, generator=generator) + y[:, None].float() + shift
        out.append(TaskSpec(f"t{t}", TensorDataset(x[:32], y[:32]),
                            TensorDataset(x[32:], y[32:]), classes))
    return out
"""


def test_a_factory_that_changes_a_later_seed_or_differs_between_processes_is_refused(
    factories, monkeypatch
):
    (factories / "shifting_factories.py").write_text(SHIFTING)
    overrides = [
        "benchmark.factory=shifting_factories:tasks",
        *TINY[2:-1],
        'compare=["finetune"]',
        "seeds=[0, 1]",
        "model.hidden=[4]",
    ]
    config = resolve(overrides=overrides)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, factories / "cut", progress=StopAfter(3), quiet=True)
    monkeypatch.setenv("EWC_TEST_SHIFT", "seed 1")  # seed 0's tasks unchanged, seed 1's not
    with pytest.raises(FactoryError, match=r"other tasks for seed 1 than when .*cut was created"):
        run_experiment(config, factories / "cut", resume=True, quiet=True)
    monkeypatch.setenv("EWC_TEST_SHIFT", "process")  # each worker process draws other data
    with pytest.raises(FactoryError, match=r"other tasks for seed [01] than when .*jobs was"):
        run_experiment(config, factories / "jobs", quiet=True, jobs=2)
    sys.modules.pop("shifting_factories", None)


def test_token_sequences_train_with_every_strategy(factories):
    overrides = [
        "benchmark.factory=own_factories:tokens",
        "model.factory=own_factories:bag_model",
        "benchmark.scenario=class",
        *TINY[2:-1],
        'compare=["finetune", "ewc", "online-ewc", "kfac-ewc", "si", "mas"]',
    ]
    result = run_experiment(resolve(overrides=overrides), factories / "run", quiet=True)
    assert len(result.matrices) == 6
    assert not result.diverged
