"""Config resolution: defaults per benchmark, TOML, overrides, checks, hashing."""

from __future__ import annotations

import pytest

from ewc.experiment.config import ConfigError, RunConfig, from_dict, parse_overrides, resolve


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
