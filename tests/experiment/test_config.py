"""Config resolution: defaults per benchmark, TOML, overrides, checks, hashing."""

from __future__ import annotations

import json
import re

import pytest
import torch

from ewc.data import DatasetName, Source
from ewc.experiment.config import (
    BASE_STRATEGIES,
    BENCHMARK_DEFAULTS,
    OPTIONAL_STRATEGIES,
    ConfigError,
    Optimizer,
    RunConfig,
    from_dict,
    parse_overrides,
    resolve,
)
from ewc.experiment.models import ModelName
from ewc.experiment.schedules import LrSchedule
from ewc.experiment.streams.tasks import Benchmark, Scenario


def test_the_default_is_the_embedded_permuted_mnist_comparison():
    config = resolve()
    b = config.benchmark
    assert (b.name, b.dataset, b.source, b.num_tasks, b.scenario, b.multi_head) == (
        "permuted",
        "mnist",
        "embedded",
        5,
        "domain",
        False,
    )
    assert config.model.name == "mlp"
    assert config.model.hidden == [400, 400]
    assert (config.training.optimizer, config.training.lr, config.training.batch_size) == (
        "adam",
        1e-3,
        128,
    )
    assert config.training.epochs == 10
    assert (config.training.lr_schedule, config.training.warmup_steps) == ("cosine", 0)
    assert config.compare == ["finetune", "l2", "ewc"]
    assert config.strategies["ewc"] == {
        "strength": 200.0,
        "fisher": "exact",
        "fisher_samples": None,
    }
    assert config.strategies["l2"] == {"strength": 1.0}
    assert config.training.reset_optimizer is False


def test_split_defaults_to_multi_head_task_incremental():
    b = resolve(overrides=["benchmark.name=split"]).benchmark
    assert (b.scenario, b.multi_head) == ("task", True)
    assert (
        resolve(overrides=["benchmark.name=split", "benchmark.scenario=class"]).benchmark.multi_head
        is False
    )
    assert resolve(overrides=["benchmark.name=split"]).training.epochs == 4


def test_file_then_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'seeds = [0, 1]\n[benchmark]\nname = "rotated"\n[training]\nepochs = 3\nlr = 1\n'
        "[strategies.ewc]\nstrength = 5.0\n"
    )
    config = resolve(path, ["training.epochs=2", "strategies.ewc.fisher=empirical"])
    assert config.benchmark.name == "rotated"
    assert config.seeds == [0, 1]
    assert config.training.epochs == 2
    assert config.training.lr == 1.0
    assert isinstance(config.training.lr, float)
    assert config.strategies["ewc"] == {
        "strength": 5.0,
        "fisher": "empirical",
        "fisher_samples": None,
    }


def test_new_strategies_can_be_defined_under_new_names():
    config = resolve(
        overrides=['strategies.ewc-batched={type="ewc", fisher="batched", strength=1e6}']
    )
    assert config.strategies["ewc-batched"] == {"type": "ewc", "fisher": "batched", "strength": 1e6}


def test_overrides_take_toml_values_and_bare_strings():
    assert parse_overrides(["a.b=2", "c=[1, 2]", "d=split", 'e="x y"']) == {
        "a": {"b": 2},
        "c": [1, 2],
        "d": "split",
        "e": "x y",
    }


def test_a_table_override_sets_its_keys_and_a_key_set_twice_is_refused():
    assert parse_overrides(["training.epochs=1", "training={lr=0.01, threads=1}"]) == {
        "training": {"epochs": 1, "lr": 0.01, "threads": 1}
    }  # the table keeps the earlier dotted key, in either order
    assert parse_overrides(["training={}", "training.lr=1"]) == {"training": {"lr": 1}}
    for first, second, key in [
        ("training.epochs=1", "training.epochs=2", "training.epochs"),
        ("training={lr=0.01}", "training.lr=0.1", "training.lr"),
        ("training.lr=0.1", "training={lr=0.01}", "training.lr"),
        ("strategies.ewc.strength=1", "strategies={ewc={strength=2}}", "strategies.ewc.strength"),
    ]:
        with pytest.raises(ConfigError, match=f"^{key} is set twice, by '{re.escape(first)}'"):
            parse_overrides([first, second])


def test_the_hash_follows_the_content():
    assert resolve().hash() == resolve().hash()
    assert resolve().hash() != resolve(overrides=["training.epochs=9"]).hash()
    assert from_dict(resolve().to_dict()) == resolve()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["training.epoch=2"],
            r"unknown config key 'training\.epoch'; valid keys here are optimizer, lr",
        ),
        (["training.epochs=ten"], r"training\.epochs must be of type int; got 'ten'"),
        (["training.epochs=0"], r"training\.epochs must be at least 1; got 0"),
        (["training.lr=0"], r"training\.lr must be positive"),
        (
            ["training.optimizer=rmsprop"],
            r"training\.optimizer = 'rmsprop' is not one of 'adam', 'sgd'",
        ),
        (
            ["training.lr_schedule=step"],
            r"training\.lr_schedule = 'step' is not one of 'constant', 'cosine'",
        ),
        (["training.warmup_steps=-1"], r"training\.warmup_steps must be at least 0; got -1"),
        (["model.name=resnet"], r"model\.name = 'resnet' is not one of 'mlp', 'cnn'"),
        (["benchmark.dataset=cifar"], r"benchmark\.dataset = 'cifar' is not one of 'mnist'"),
        (
            ["benchmark.name=shuffled"],
            "unknown benchmark 'shuffled'; valid benchmarks are 'permuted'",
        ),
        (["seeds=[]"], "seeds must be a non-empty list without repeats"),
        (["seeds=[1, 1]"], "seeds must be a non-empty list without repeats"),
        (["training.epochs"], "is not of the form key=value"),
        (["training=3"], "training must be a table"),
        (["training.epochs.x=3"], r"training\.epochs must be of type int; got \{'x': 3\}"),
        (
            ["training.epochs=2", "training.epochs.x=3"],
            "sets a key inside 'epochs', which is a value",
        ),
    ],
)
def test_bad_values_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve(overrides=overrides)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[training\nepochs = 2")
    with pytest.raises(ConfigError, match=r"bad\.toml is not valid TOML"):
        resolve(bad)


def test_run_config_is_frozen_data():
    with pytest.raises(AttributeError):
        RunConfig().seeds = [3]


# The hashes the config had before its options became enums and training.device existed: runs
# recorded then must still resume.
@pytest.mark.parametrize(
    ("overrides", "recorded"),
    [
        ([], "643b05dfdab13004f6b21db5f6ada02d371e3d521402f29e0b84d7276f43fe6a"),
        (
            ["benchmark.name=split"],
            "04515600fd1eb8b44f85b4c8c906b3c8508b3d8717acecbc2b4ad5afa2638bc6",
        ),
        (
            ["benchmark.name=rotated", "model.name=cnn"],
            "2d61719e4c170d6dcac2274d3a714b86e589d6812d3e70f650ef96998a4b529d",
        ),
        (
            ["benchmark.dataset=fashion-mnist", "benchmark.source=auto", "training.optimizer=sgd"],
            "003135cf270af5428e6fd3c81abe5bf3b7f7c98e0afb8f09034777769df10912",
        ),
        (
            ["benchmark.dataset=fashion-mnist", "training.optimizer=sgd"],
            "003135cf270af5428e6fd3c81abe5bf3b7f7c98e0afb8f09034777769df10912",
        ),
    ],
)
def test_hashes_of_earlier_runs_are_unchanged(overrides, recorded):
    assert resolve(overrides=overrides).hash() == recorded


def test_a_config_recorded_before_training_device_reads_back_with_the_same_hash():
    recorded = resolve().to_dict()
    del recorded["training"]["device"]
    config = from_dict(recorded)
    assert config.training.device == "cpu"
    assert config.hash() == "643b05dfdab13004f6b21db5f6ada02d371e3d521402f29e0b84d7276f43fe6a"


def test_options_are_their_enums_and_files_see_plain_strings():
    config = resolve()
    assert config.training.optimizer is Optimizer.ADAM
    assert config.training.lr_schedule is LrSchedule.COSINE
    assert config.benchmark.name is Benchmark.PERMUTED
    assert config.benchmark.scenario is Scenario.DOMAIN
    assert config.benchmark.dataset is DatasetName.MNIST
    assert config.benchmark.source is Source.EMBEDDED
    assert config.model.name is ModelName.MLP
    data = config.to_dict()
    assert type(data["training"]["optimizer"]) is str
    assert type(data["benchmark"]["scenario"]) is str
    assert json.loads(json.dumps(data)) == data
    assert f"{config.benchmark.name}-run" == "permuted-run"  # paths and messages see the value
    assert str(config.model.name) == "mlp"


def test_benchmark_defaults_only_hold_what_differs_from_the_base():
    def leaves(data, prefix=""):
        for key, value in data.items():
            if isinstance(value, dict) and value:
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    strategies = {**BASE_STRATEGIES, **OPTIONAL_STRATEGIES}
    base = dict(leaves({**RunConfig().to_dict(), "strategies": strategies}))
    for name, table in BENCHMARK_DEFAULTS.items():
        for key, value in leaves(table):
            assert base[key] != value, f"{name}: {key} = {value!r} is the base default"


@pytest.mark.parametrize(
    ("overrides", "source"),
    [
        ([], "embedded"),
        (["benchmark.dataset=fashion-mnist"], "auto"),
        (["benchmark.dataset=kmnist"], "auto"),
        (['benchmark.data_dir="/data"'], "auto"),
        (["benchmark.dataset=kmnist", "benchmark.source=cache"], "cache"),
        (["benchmark.source=auto"], "auto"),
    ],
)
def test_an_unset_source_is_the_subset_for_mnist_and_every_source_otherwise(overrides, source):
    assert resolve(overrides=overrides).benchmark.source == source


def test_the_device_is_recorded_resolved():
    assert resolve().training.device == "cpu"
    auto = resolve(overrides=["training.device=auto"]).training.device
    assert auto == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["benchmark.scenario=tasks"],
            r"^benchmark\.scenario = 'tasks' is not one of 'task', 'domain', 'class'$",
        ),
        (
            ["benchmark.source=web"],
            r"^benchmark\.source = 'web' is not one of 'auto', 'dir', 'cache', 'debian', "
            "'embedded'$",
        ),
        (
            ["benchmark.name=shuffled"],
            r"^benchmark\.name: unknown benchmark 'shuffled'; valid benchmarks are 'permuted', "
            "'split', 'rotated', 'custom'$",  # custom: with benchmark.factory
        ),
        (
            ["benchmark.scenario=domain", "benchmark.multi_head=true"],
            r"benchmark\.multi_head = true needs benchmark\.scenario = 'task'",
        ),
        (
            ['benchmark.data_dir="/data"', "benchmark.source=cache"],
            r"benchmark\.data_dir is set but benchmark\.source = 'cache' does not read it",
        ),
        (["training.lr=nan"], r"^training\.lr must be positive \(a finite number > 0\); got nan$"),
        (["training.lr=inf"], r"training\.lr must be positive"),
        (["training.threads=0"], r"^training\.threads must be at least 1; got 0$"),
        (["benchmark.num_tasks=0"], r"^benchmark\.num_tasks must be at least 1; got 0$"),
        (["model.hidden=[64, 0]"], r"^model\.hidden must be at least 1; got \[64, 0\]$"),
        (["seeds=[0, -1]"], r"^seeds must be at least 0; got \[0, -1\]$"),
        (["training.device=tpu"], r"^training\.device = 'tpu' is not one of 'auto', 'cpu'"),
        (["training.device=cuda:x"], r"^training\.device = 'cuda:x' is not one of"),
        (["strategies.ewc=3"], r"^strategies\.ewc must be a table; got 3$"),
    ],
)
def test_errors_name_the_full_key_and_the_accepted_values(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve(overrides=overrides)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_is_refused_where_there_is_none():
    with pytest.raises(ConfigError, match=r"training\.device = 'cuda:1', but this machine has 0"):
        resolve(overrides=['training.device="cuda:1"'])


def test_a_config_error_can_be_placed_under_a_table():
    error = ConfigError("{key} must be at least 1; got 0", "fisher_samples")
    assert str(error.within("strategies.ewc")) == (
        "strategies.ewc.fisher_samples must be at least 1; got 0"
    )
    assert str(ConfigError("plain").within("x")) == "plain"


def test_optional_strategies_are_in_the_config_only_when_used():
    assert "kfac-ewc" not in resolve().strategies
    assert "kfac-ewc" not in resolve(overrides=["benchmark.name=split"]).strategies
    chosen = resolve(overrides=["compare=['ewc', 'kfac-ewc']", "benchmark.name=split"])
    assert chosen.strategies["kfac-ewc"] == {
        "strength": 1e3,
        "fisher": "exact",
        "fisher_samples": None,
    }
    tuned = resolve(overrides=["strategies.kfac-ewc.strength=5.0"])
    assert tuned.strategies["kfac-ewc"]["strength"] == 5.0
