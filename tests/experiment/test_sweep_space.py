"""The sweep's search space, spec and TOML output: parsing and checks, without optuna."""

from __future__ import annotations

import sys

import pytest

from ewc.experiment.config import ConfigError, resolve
from ewc.experiment.sweep import SpaceError, SweepSpec, parse_space
from ewc.experiment.sweep.config_toml import config_to_toml
from ewc.experiment.sweep.spec import check_space, trial_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_log_grid_gives_round_powers_of_ten():
    (strength,) = parse_space(["strategies.ewc.strength=log:1..1e12:13"])
    assert strength.values == tuple(10.0**k for k in range(13))
    assert strength.log
    assert strength.finite
    assert strength.numeric


def test_lists_take_toml_values_and_words():
    gamma, fisher, flag = parse_space(
        ["strategies.online-ewc.gamma=0.7,0.8,0.9,1.0", "strategies.ewc.fisher=exact,batched",
         "training.reset_optimizer=true,false"]
    )  # fmt: skip
    assert gamma.values == (0.7, 0.8, 0.9, 1.0)
    assert fisher.values == ("exact", "batched")
    assert not fisher.numeric
    assert flag.values == (True, False)


def test_ranges_continuous_integer_and_linear_points():
    lr, epochs, steps = parse_space(
        ["training.lr=log:1e-4..1e-2", "training.epochs=1..5", "training.warmup_steps=0..10:3"]
    )
    assert (lr.low, lr.high, lr.log, lr.finite, lr.integer) == (1e-4, 1e-2, True, False, False)
    assert epochs.integer
    assert not epochs.finite
    assert steps.values == (0, 5, 10)
    (halves,) = parse_space(["training.warmup_steps=0..5:3"])
    assert halves.values == (0, 3, 5)  # 2.5 rounds up, not to the even 2


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("strategies.ewc.strength", "is not KEY=SPEC"),
        ("strategies.ewc.strength=log:0..10", "LOW > 0"),
        ("strategies.ewc.strength=10..1", "LOW must be below HIGH"),
        ("strategies.ewc.strength=log:1..1e3:1", "integer ≥ 2"),
        ("strategies.ewc.strength=log:1..1e3:x", "integer ≥ 2"),
        ("strategies.ewc.strength=a..3", "finite numbers"),
        ("strategies.ewc.fisher=exact", "two or more"),
        ("strategies.ewc.fisher=exact,exact", "repeats"),
        ("strategies.ewc.strength=1,1.0", "repeats"),  # the same point, written twice
        ("training.warmup_steps=0..1:5", "only 2 distinct integers for 5 points"),
    ],
)
def test_bad_entries_say_what_is_wrong(entry, message):
    with pytest.raises(SpaceError, match=message):
        parse_space([entry])


def test_repeated_and_empty_spaces_are_refused():
    with pytest.raises(SpaceError, match="given twice"):
        parse_space(["training.lr=0.1,0.2", "training.lr=0.3,0.4"])
    with pytest.raises(SpaceError, match="empty"):
        parse_space([])


def _spec(space, **kwargs):
    base = resolve(None, ['compare=["ewc"]']).to_dict()
    return SweepSpec(space=space, base=base, **kwargs)


def test_grid_needs_points_and_tpe_needs_a_budget():
    with pytest.raises(ConfigError, match=r"needs a number of points, e\.g\. log:1\.\.1e12:13"):
        _spec({"strategies.ewc.strength": "log:1..1e12"})
    with pytest.raises(ConfigError, match="--trials"):
        _spec({"strategies.ewc.strength": "log:1..1e12"}, sampler="tpe")
    with pytest.raises(ValueError, match="valid objectives"):
        _spec({"strategies.ewc.strength": "1,2"}, objective="acc2")
    assert (
        _spec({"strategies.ewc.strength": "log:1..1e12:13", "training.lr": "0.1,0.2"}).grid_size
        == 26
    )


def test_bad_keys_and_values_fail_before_any_trial():
    with pytest.raises(ConfigError, match=r"strategies\.ewc\.fisher"):
        check_space(_spec({"strategies.ewc.fisher": "exact,fishy"}))
    with pytest.raises(ConfigError, match=r"training\.epochz"):
        check_space(_spec({"training.epochz": "1,2"}))
    with pytest.raises(ConfigError, match="does not compare"):
        check_space(_spec({"strategies.l2.strength": "1,2"}))


def test_trial_config_sets_dotted_keys_and_specs_compare():
    spec = _spec({"strategies.ewc.strength": "1,2"})
    config = trial_config(spec.base, {"strategies.ewc.strength": 2.0, "training.epochs": 3})
    assert config.strategies["ewc"]["strength"] == 2.0
    assert config.training.epochs == 3
    other = _spec({"strategies.ewc.strength": "1,3"})
    assert spec.differences(other) == ["space"]
    assert spec.differences(spec) == []
    assert SweepSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("overrides", [[], ["benchmark.name=split", "seeds=[0, 2]"]])
def test_config_toml_reads_back_to_the_same_config(tmp_path, overrides):
    config = resolve(None, [*overrides, 'compare=["ewc", "kfac-ewc"]', "model.hidden=[8, 4]"])
    text = config_to_toml(config.to_dict(), header="line one\nline two")
    assert text.startswith("# line one\n# line two\n")
    assert (
        tomllib.loads(text)["strategies"]["ewc"]["strength"] == config.strategies["ewc"]["strength"]
    )
    path = tmp_path / "best.toml"
    path.write_text(text, encoding="utf-8")
    assert resolve(path) == config  # None (a default) is left out and read back as the default
    assert resolve(path).hash() == config.hash()


def test_a_float_range_on_an_integer_key_fails_before_any_trial():
    """A log range draws floats: an integer key must be refused now, not in every trial."""
    with pytest.raises(ConfigError, match=r"training\.batch_size=log:16\.\.128: .*type int"):
        check_space(_spec({"training.batch_size": "log:16..128"}, sampler="tpe", trials=3))
    check_space(_spec({"training.batch_size": "16..128"}, sampler="tpe", trials=3))  # integers


def test_a_search_that_cannot_move_the_objective_is_refused():
    base = resolve(None, ['compare=["finetune", "ewc"]']).to_dict()
    spec = SweepSpec(space={"strategies.ewc.strength": "1,2"}, base=base)
    with pytest.raises(ConfigError, match="which no key changes"):
        check_space(spec)
