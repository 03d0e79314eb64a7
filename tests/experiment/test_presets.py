"""The shipped presets: listed, loadable, and each one runs for a few steps as an ordinary run."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from ewc.cli import main
from ewc.data import ImageDataset
from ewc.experiment import presets
from ewc.experiment.config import ConfigError, resolve
from ewc.experiment.runner import run_experiment

REQUIRED = {
    "vandeven2025-split-mnist",
    "vandeven2019-permuted-mnist",
    "vandeven2019-split-mnist-task",
    "vandeven2019-split-mnist-domain",
    "vandeven2019-split-mnist-class",
    "hsu2018-split-mnist",
}

#: A few steps on tiny data: what CI can afford for every preset.
FEW_STEPS = [
    "training.steps=2",
    "training.batch_size=16",
    "training.threads=1",
    "model.hidden=[16]",
    "seeds=[0]",
    "checkpoint_every=0",
]


def tiny_digits() -> ImageDataset:
    gen = torch.Generator().manual_seed(0)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randint(0, 255, (n, 28, 28), generator=gen, dtype=torch.uint8), (
            torch.arange(n) % 10
        )

    (xs, ys), (xt, yt) = split(400), split(100)
    classes = tuple(str(c) for c in range(10))
    return ImageDataset("mnist", xs, ys, xt, yt, classes, "random pixels (tests)", True)


def test_every_required_preset_ships_with_a_source_and_a_version():
    assert set(presets.names()) >= REQUIRED
    for name in presets.names():
        preset = presets.load(name)
        assert preset.version >= 1
        assert preset.source
        assert preset.summary
        assert set(preset.published) <= set(preset.config["compare"])


def test_the_2025_preset_holds_every_fisher_variant_of_the_blog_with_its_grid():
    preset = presets.load("vandeven2025-split-mnist")
    strategies = preset.config["strategies"]
    kinds = {strategies[name]["fisher"] for name in preset.config["compare"] if name != "finetune"}
    assert kinds == {"exact", "sample", "empirical", "batched"}
    assert strategies["ewc-exact-500"]["fisher_samples"] == 500
    assert strategies["ewc-batched"]["fisher_batch_size"] == 128
    assert all(len(preset.grid[name]) == 14 for name in preset.config["compare"][1:])


def test_the_2019_presets_run_si_as_the_reference_code_does():
    """c from param_values.py per scenario, ε = 0.1, ω from the total loss's gradient."""
    expected = {"task": 50.0, "domain": 500.0, "class": 0.5}
    cs = {}
    for scenario in expected:
        config = resolve(base=presets.load(f"vandeven2019-split-mnist-{scenario}").config)
        cs[scenario] = config.strategies["si"]["strength"]
        assert config.strategies["si"]["path_gradient"] == "total"
        assert config.strategies["si"]["damping"] == 0.1
        assert "si" in config.compare
    assert cs == expected
    permuted = resolve(base=presets.load("vandeven2019-permuted-mnist").config)
    assert permuted.strategies["si"] == {"strength": 5.0, "damping": 0.1, "path_gradient": "total"}


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_each_preset_runs_a_few_steps_as_an_ordinary_run(tmp_path, name):
    preset = presets.load(name)
    config = resolve(overrides=FEW_STEPS, base=preset.config)
    assert config.training.steps == 2
    assert config.compare == preset.config["compare"]
    result = run_experiment(config, tmp_path / "run", data=tiny_digits(), quiet=True)
    assert len(result.matrices) == len(config.compare)
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    for table in ("benchmark", "training"):
        for key, value in preset.config.get(table, {}).items():
            if f"{table}.{key}=" not in " ".join(FEW_STEPS):
                assert recorded[table][key] == value, f"{table}.{key}"


def test_a_preset_sits_below_overrides():
    base = presets.load("vandeven2025-split-mnist").config
    config = resolve(overrides=["training.lr=0.01", "strategies.ewc-exact.strength=3"], base=base)
    assert config.training.lr == 0.01
    assert config.training.steps == 2000
    assert config.strategies["ewc-exact"]["strength"] == 3


def test_an_unknown_preset_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown preset 'nope'; the presets are hsu2018"):
        presets.load("nope")


def test_cli_lists_the_presets(capsys):
    assert main(["run", "--preset", "list"]) == 0
    out = capsys.readouterr().out
    for name in REQUIRED:
        assert f"{name} (v{presets.load(name).version})" in out
    assert out.count("source: ") == len(presets.names())


def test_cli_refuses_an_unknown_preset_in_one_line(capsys):
    assert main(["run", "--preset", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ewc run: unknown preset 'nope'")


def test_cli_runs_a_preset_with_overrides(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EWC_CACHE", str(tmp_path / "cache"))  # no downloaded MNIST: the subset
    args = ["run", "--preset", "vandeven2025-split-mnist", *FEW_STEPS, "--quiet", "--no-report"]
    args += ["benchmark.train_samples=40", "benchmark.test_samples=20", "--strategies=finetune"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["config"]["benchmark"]["class_order"] == "shuffled"
    assert "FWT n/a" in capsys.readouterr().out


def test_a_builtin_strategy_a_preset_does_not_set_is_named_as_left_at_defaults():
    preset = presets.load("vandeven2025-split-mnist")
    compare = ["finetune", "ewc", "ewc-exact", "si"]
    assert presets.strategies_left_at_defaults(preset, compare, [{}]) == ["ewc", "si"]
    user = [{"strategies": {"ewc": {"strength": 1e5}}}, {}]
    assert presets.strategies_left_at_defaults(preset, compare, user) == ["si"]
    permuted = presets.load("vandeven2019-permuted-mnist")
    assert presets.strategies_left_at_defaults(permuted, ["ewc", "online-ewc"], [{}]) == []


def test_cli_tells_when_a_preset_run_uses_built_in_settings(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EWC_CACHE", str(tmp_path / "cache"))
    args = ["run", "--preset", "vandeven2025-split-mnist", *FEW_STEPS, "--quiet", "--no-report"]
    args += ["benchmark.train_samples=40", "benchmark.test_samples=20"]
    assert main([*args, "--strategies=finetune,ewc", "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "preset 'vandeven2025-split-mnist' does not set ewc: built-in settings" in err
    assert "strength 200.0" in err
    assert "ewc-exact" in err  # the preset's own strategies are named
    chosen = ["--strategies=ewc", "strategies.ewc.strength=1e5", "--out", str(tmp_path / "b")]
    assert main([*args, *chosen]) == 0
    assert "does not set" not in capsys.readouterr().err


def reproduction_script():
    """benchmarks/reproduce.py as a module."""
    path = Path(__file__).parents[2] / "benchmarks" / "reproduce.py"
    spec = importlib.util.spec_from_file_location("reproduce", path)
    assert spec is not None
    assert spec.loader is not None
    reproduce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reproduce)
    return reproduce


def test_the_reproduction_script_tabulates_finished_cells(tmp_path, capsys):
    reproduce = reproduction_script()
    preset = presets.load("vandeven2025-split-mnist")
    overrides = [*FEW_STEPS, 'compare=["finetune", "ewc-batched"]']
    config = resolve(overrides=overrides, base=preset.config)
    run_experiment(config, tmp_path / "seed0", data=tiny_digits(), quiet=True)
    results = reproduce.collect([tmp_path / "seed0"])
    assert set(results) == {("finetune", "—"), ("ewc-batched", "1e+11")}
    assert all(entry["seconds"] is not None for cells in results.values() for entry in cells)
    (tmp_path / "seed0" / "summary.json").unlink()  # a run stopped after its cells finished
    again = reproduce.collect([tmp_path / "seed0"])
    assert [e["acc"] for e in again[("finetune", "—")]] == [
        e["acc"] for e in results[("finetune", "—")]
    ]
    text = reproduce.table(preset, [tmp_path / "seed0"])
    assert "the published numbers are for other data and are left out" in text  # a subset
    assert "| finetune | — | — |" in text
    recorded = json.loads((tmp_path / "seed0" / "config.json").read_text())
    assert recorded["data"]["is_subset"]
    recorded["data"]["is_subset"] = False  # as if on the full MNIST the preset names
    (tmp_path / "seed0" / "config.json").write_text(json.dumps(recorded))
    text = reproduce.table(preset, [tmp_path / "seed0"])
    assert "| finetune | — | 85.41 ± 0.88 |" in text
    other = tmp_path / "fashion"
    shutil.copytree(tmp_path / "seed0", other)
    recorded["data"]["dataset"] = "fashion-mnist"
    (other / "config.json").write_text(json.dumps(recorded))
    assert "| finetune | — | — |" in reproduce.table(preset, [other])  # another data set
    with pytest.raises(SystemExit, match=r"different data \(fashion-mnist .*; mnist .*\)"):
        reproduce.table(preset, [tmp_path / "seed0", other])  # never averaged together
    (tmp_path / "out").mkdir()
    (tmp_path / "seed0").rename(tmp_path / "out" / "seed7-ewc-batched-1e+11")  # a grid's name
    out = ["--table", "--out", str(tmp_path / "out")]
    assert reproduce.main(["vandeven2025-split-mnist", *out]) == 0
    printed = capsys.readouterr().out
    assert "| ewc-batched | 1e+11 | 99.11 ± 0.16 |" in printed
    (acc,) = [entry["acc"] for entry in results[("ewc-batched", "1e+11")]]
    assert f"| seed0: {acc:.2f} |" in printed  # the cell's seed (not the folder's name), in %
    (tmp_path / "out" / "seed7-ewc-batched-1e+11").rename(tmp_path / "out" / "seed7")
    (tmp_path / "out" / "seed7" / "summary.json").write_text("{}")  # finished
    seed7 = ["vandeven2025-split-mnist", "--seeds", "7", "--out", str(tmp_path / "out")]
    assert reproduce.main([*seed7, "--strategies", "ewc-batched,finetune"]) == 0
    assert "seed7: done already" in capsys.readouterr().out  # the same strategies: kept
    with pytest.raises(SystemExit, match=r"holds a run of finetune, ewc-batched, not of finetune;"):
        reproduce.main([*seed7, "--strategies", "finetune"])  # would have been skipped


def test_the_reproduction_table_names_the_environments_a_row_pools(tmp_path):
    reproduce = reproduction_script()
    preset = presets.load("vandeven2025-split-mnist")
    for seed in (0, 1):
        few = [o for o in FEW_STEPS if not o.startswith("seeds=")]
        overrides = [*few, 'compare=["finetune"]', f"seeds=[{seed}]"]
        config = resolve(overrides=overrides, base=preset.config)
        run_experiment(config, tmp_path / f"seed{seed}", data=tiny_digits(), quiet=True)
    folders = [tmp_path / "seed0", tmp_path / "seed1"]
    assert "environments" not in reproduce.table(preset, folders)  # one machine, one code
    recorded = json.loads((tmp_path / "seed1" / "config.json").read_text())
    assert recorded["environment"]["threads"] == 1
    recorded["environment"]["cpu_capability"] = "SIMULATED"  # as if seed 1 ran on another CPU
    (tmp_path / "seed1" / "config.json").write_text(json.dumps(recorded))
    lines = reproduce.table(preset, folders).splitlines()
    start = lines.index("finetune (λ —) pools seeds of 2 environments:")
    here = torch.backends.cpu.get_cpu_capability()
    assert lines[start + 1].startswith("  seed0: ")
    assert f"cpu_capability {here}," in lines[start + 1]
    assert lines[start + 2].startswith("  seed1: ")
    assert "cpu_capability SIMULATED," in lines[start + 2]
    # seed 1 finished elsewhere: both sides of the resume are named
    summary = json.loads((tmp_path / "seed1" / "summary.json").read_text())
    first = json.loads((tmp_path / "seed0" / "config.json").read_text())
    del first["environment"]  # and seed 0 from a version that recorded none
    (tmp_path / "seed0" / "config.json").write_text(json.dumps(first))
    text = reproduce.table(preset, folders)
    assert "  seed0: unrecorded" in text
    assert (
        f"(resumed: cpu_capability SIMULATED → {summary['environment']['cpu_capability']})" in text
    )
