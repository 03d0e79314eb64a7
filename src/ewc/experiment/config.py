"""The configuration of an experiment: defaults per benchmark, a TOML file, ``key=value`` overrides.

Resolution order (later wins): the defaults of the chosen benchmark (`defaults_for`), the TOML
file, then command-line overrides such as ``training.epochs=2`` or ``strategies.ewc.strength=1e3``.
Every key is checked against its field's type and range: an option is the `Choice` enum that
names its valid values (`Optimizer`, `LrSchedule`, `Benchmark`, ...), an unknown key is an error
that lists the valid ones, and every error names the full dotted key. The resolved config is what
`config.json` records (options as their strings), and its hash is what a resumed run must match.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from ewc._choices import Choice
from ewc.data import DatasetName, Source
from ewc.experiment.models import ModelName
from ewc.experiment.schedules import LrSchedule
from ewc.experiment.streams.tasks import Benchmark, Scenario, TrainOutputs
from ewc.fisher import FisherKind


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the full key and what is valid.

    Args:
        message: the message; ``{key}`` in it stands for the key, which `within` can prefix.
        key: the dotted key the message is about, relative to where it was checked (a strategy's
            settings are checked as ``strength`` and reported as ``strategies.ewc.strength``).
    """

    def __init__(self, message: str, key: str | None = None):
        self.template, self.key = message, key
        super().__init__(message if key is None else message.replace("{key}", key))

    def within(self, prefix: str) -> ConfigError:
        """The same error about ``<prefix>.<key>`` (itself when it names no key)."""
        return self if self.key is None else ConfigError(self.template, f"{prefix}.{self.key}")


class ClassOrder(Choice):
    """Which classes form which split task (``benchmark.class_order``).

    ``natural``: (0, 1), (2, 3), … in label order. ``shuffled``: the labels are permuted by a
    seeded draw per run seed before they are grouped, so every seed learns other pairs, as van de
    Ven's code does for every seed but 0 (GMvandeVen/continual-learning, ``data/load.py``:
    ``perm_class_list = np.random.permutation(...)`` unless ``exception``). ``numpy``: the same
    idea with his very draw, ``numpy.random.RandomState(seed).permutation(C)`` (``preprints``
    branch: ``main.py`` seeds ``np.random.seed(seed)``, then ``data.py`` draws
    ``np.random.permutation(list(range(10)))`` first; his ``compare_all.py`` runs seeds 1, 2, …):
    seed s then learns the digit pairs of his seed s.
    """

    __noun__ = ("class order", "class orders")

    NATURAL = "natural"
    SHUFFLED = "shuffled"
    NUMPY = "numpy"


class Optimizer(Choice):
    """The optimizer that trains every task (``torch.optim.Adam`` or plain ``torch.optim.SGD``)."""

    __noun__ = ("optimizer", "optimizers")

    ADAM = "adam"
    SGD = "sgd"


def at_least(low: float, default: Any) -> Any:
    """A field whose value must be at least ``low`` when set (`_check_range`)."""
    return field(default=default, metadata={"at_least": low})


def above(low: float, default: Any) -> Any:
    """A field whose value must be a finite number above ``low``."""
    return field(default=default, metadata={"above": low})


@dataclass(frozen=True)
class BenchmarkConfig:
    """Which task stream to learn (see `ewc.experiment.streams.benchmarks`)."""

    name: Benchmark = Benchmark.PERMUTED
    dataset: DatasetName = DatasetName.MNIST
    # None: the embedded subset for mnist without data_dir, else every source in turn (auto);
    # `resolve` records the source it chose.
    source: Source | None = None
    data_dir: str | None = None  # the folder for source = "dir"
    num_tasks: int | None = at_least(1, None)  # None: the benchmark's default
    scenario: Scenario | None = None  # None: the benchmark's default
    multi_head: bool | None = None  # one output head per task; None: True for task-IL
    # class-IL: "seen" trains (loss, Fisher, importances) on the seen classes' outputs only, as
    # van de Ven & Tolias 2019 do; "all": on every output (evaluation always spans all)
    train_outputs: TrainOutputs = TrainOutputs.ALL
    classes_per_task: int = at_least(2, 2)  # split only
    class_order: ClassOrder = ClassOrder.NATURAL  # split only: natural or shuffled per seed
    pad: int = at_least(0, 0)  # zero pixels added on every side (2: 28×28 → 32×32)
    # [mean, std]: inputs (x − mean) / std after the scaling to [0, 1] (Hsu et al. 2018: [0.1,
    # 0.2752]); None: pixels stay in [0, 1]
    normalize: list[float] | None = None
    angles: list[float] | None = None  # rotated only; None: evenly spaced
    train_samples: int | None = at_least(1, None)  # at most this many training samples per task
    test_samples: int | None = at_least(1, None)  # at most this many test samples per task
    factory: str | None = None  # "pkg.module:function": your own tasks (name "custom")


@dataclass(frozen=True)
class ModelConfig:
    """Which network to train (see `ewc.experiment.models`)."""

    name: ModelName = ModelName.MLP
    hidden: list[int] = field(default_factory=lambda: [400, 400], metadata={"at_least": 1})
    factory: str | None = None  # "pkg.module:function": your own network (name, hidden unused)


@dataclass(frozen=True)
class TrainingConfig:
    """How each task is trained and evaluated."""

    optimizer: Optimizer = Optimizer.ADAM
    lr: float = above(0.0, 1e-3)
    batch_size: int = at_least(1, 128)
    epochs: int = at_least(1, 10)  # per task; ignored when steps is set
    # Optimizer steps per task; when set it replaces epochs: the task's data are cycled in
    # reshuffled passes until this many steps are taken (van de Ven's "iterations per task").
    steps: int | None = at_least(1, None)
    drop_last: bool = False  # skip each pass's last, smaller batch (as van de Ven's loader)
    eval_every: int = at_least(0, 50)  # steps between evaluations on every task (0: task ends)
    eval_batch_size: int = at_least(1, 1000)
    # test samples per task behind each curve point (a fixed seeded subset; 0: all of them);
    # the rows of the accuracy matrix always use every test sample
    eval_samples: int = at_least(0, 1000)
    reset_optimizer: bool = False  # a fresh optimizer state for every task (see below)
    lr_schedule: LrSchedule = LrSchedule.CONSTANT  # within each task (ewc.experiment.schedules)
    warmup_steps: int = at_least(0, 0)  # lr rises linearly over each task's first steps
    threads: int | None = at_least(1, None)  # torch intra-op threads; None: leave torch's
    device: str = "cpu"  # cpu | cuda | cuda:N | auto (CUDA when available); recorded resolved


@dataclass(frozen=True)
class OutputConfig:
    """What a run writes besides its run directory; it never changes results, so it is unhashed."""

    tensorboard: bool = False  # every cell's scalars under <run>/tensorboard/ (ewc[tensorboard])


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's results."""

    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    strategies: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → hyper-parameters
    compare: list[str] = field(default_factory=lambda: ["finetune", "l2", "ewc"])  # which run
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"at_least": 0})
    checkpoint_every: int = at_least(0, 500)  # steps between mid-task checkpoints (0: task ends)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-able data (options as their strings)."""
        return dataclasses.asdict(self, dict_factory=_plain_dict)

    def hash(self) -> str:
        """SHA-256 of the canonical JSON of the config: equal configs, equal hashes.

        Keys added after runs were first recorded are left out while they hold the value every
        earlier run had (`UNHASHED_DEFAULTS`), so that those runs can still be resumed.
        """
        canonical = json.dumps(self.hashed_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def hashed_dict(self) -> dict[str, Any]:
        """The part of `to_dict` that `hash` covers: no ``output``, no unhashed keys."""
        data = self.to_dict()
        data.pop("output")  # what is written besides the run directory, never the results
        for table, keys in UNHASHED_KEYS.items():
            for key in keys:
                data[table].pop(key, None)
        for table, defaults in UNHASHED_DEFAULTS.items():
            for key, value in defaults.items():
                if data[table].get(key) == value:
                    del data[table][key]
        return data


def config_differences(recorded: RunConfig, given: RunConfig) -> list[str]:
    """``training.lr 0.001 → 0.01``: each hashed key whose value differs, in key order."""
    old, new = _flat(recorded.hashed_dict()), _flat(given.hashed_dict())
    keys = sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
    return [f"{key} {json.dumps(old.get(key))} → {json.dumps(new.get(key))}" for key in keys]


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"training": {"lr": 0.1}}`` → ``{"training.lr": 0.1}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


#: Keys that change no result, only how the curve points between task ends are measured (each
#: eval event records it): left out of the hash, so a run can be resumed with another value.
UNHASHED_KEYS: dict[str, tuple[str, ...]] = {"training": ("eval_samples",)}

#: Keys that configs recorded before they existed lack, and the value those runs used.
UNHASHED_DEFAULTS: dict[str, dict[str, Any]] = {
    "training": {"device": "cpu", "steps": None, "drop_last": False},
    "benchmark": {
        "factory": None,
        "class_order": ClassOrder.NATURAL.value,
        "pad": 0,
        "normalize": None,
        "train_outputs": TrainOutputs.ALL.value,
    },
    "model": {"factory": None},  # your own tasks and model (ewc.experiment.factories)
}


def _plain_dict(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {key: value.value if isinstance(value, Choice) else value for key, value in pairs}


#: Experiment defaults per benchmark, where they differ from the dataclass defaults and from the
#: stream defaults of `ewc.experiment.streams.benchmarks.DEFAULTS`. Strengths are the paper's λ
#: (the penalty carries the 1/2) for the exact Fisher, chosen on the embedded MNIST subset with
#: Adam (lr 1e-3) kept across tasks: a fresh Adam moves every weight by about lr in its first
#: steps on a new task (its bias-corrected step is ±lr whatever the gradient), which
#: undoes much of what a penalty protects (permuted, 5 tasks, λ=100: task 1 lost 5-8 points
#: with a reset, 4 without).
#: Permuted and rotated tasks decay the rate with a cosine within each task: Adam's steps are
#: about lr whatever the penalty's stiffness, so with a constant rate a larger λ did not hold
#: task 1 better (permuted, seeds 0-4 with --jobs 2, mean loss of task 1's accuracy 3.3 points
#: at λ = 100 and 200, 4.9 at 400, 5.1 at 1000); with the cosine, 3.0 at λ = 200 (the default
#: run's seeds 0-4: 1.1-2.4 on seeds 0-3, 7.5 on seed 4; ACC 92.9-94.2%) while finetune still
#: lost 26-46 points. A warm-up tames Adam's lag on a new task's larger gradients, but 300 steps
#: of it halved finetune's forgetting and cost EWC about 1 point of ACC, so it is off.
#: A permuted run has the stream's 10 tasks (`ewc.experiment.streams.benchmarks.DEFAULTS`, the
#: literature's count); the quick start (`QUICKSTART`) keeps 5.
BENCHMARK_DEFAULTS: dict[Benchmark, dict[str, Any]] = {
    Benchmark.PERMUTED: {"training": {"lr_schedule": LrSchedule.COSINE.value}},
    Benchmark.SPLIT: {
        "training": {"epochs": 4},
        "strategies": {
            "ewc": {"strength": 1e3},
            "online-ewc": {"strength": 1e3},
            "kfac-ewc": {"strength": 1e3},
        },
    },
    # Rotated (0°-144°, one head): EWC's ACC over seeds 0-2 was 64.5% at λ = 50, 69.2% at 200,
    # 65.8% at 1000 and 53.9% at 5000; the rotations share pixels, so the tasks conflict more.
    Benchmark.ROTATED: {"training": {"lr_schedule": LrSchedule.COSINE.value}},
    Benchmark.CUSTOM: {},  # your own tasks (benchmark.factory): the dataclass defaults
}

#: What a config that names no benchmark (no ``benchmark.name`` in a preset, file or override)
#: adds to the permuted defaults: the quick start that a bare `ewc run` trains, 5 permuted tasks,
#: so that it finishes in under two minutes on two CPU cores. It resolves to the config (and
#: hash) the default run always had; naming ``benchmark.name = "permuted"`` gives 10 tasks.
QUICKSTART: dict[str, Any] = {"benchmark": {"num_tasks": 5}}

#: The strategies every config defines (more can be added under new names with a ``type``).
BASE_STRATEGIES: dict[str, dict[str, Any]] = {
    "finetune": {},
    "l2": {"strength": 1.0},
    "ewc": {"strength": 200.0, "fisher": FisherKind.EXACT.value, "fisher_samples": None},
    "online-ewc": {
        "strength": 200.0,
        "gamma": 1.0,
        "fisher": FisherKind.EXACT.value,
        "fisher_samples": None,
    },
}

#: Strategies a config holds only when ``compare`` names them or the user sets them: a config
#: that uses none of them resolves exactly as before they existed (same ``config.json``, same
#: hash), and one that does records their settings like any other.
OPTIONAL_STRATEGIES: dict[str, dict[str, Any]] = {
    "kfac-ewc": {"strength": 200.0, "fisher": FisherKind.EXACT.value, "fisher_samples": None},
    "si": {"strength": 0.1, "damping": 0.1},
    "mas": {"strength": 1.0, "samples": None},
}


def defaults_for(benchmark: Benchmark | str) -> dict[str, Any]:
    """The default config of a benchmark, as nested plain data."""
    try:
        name = Benchmark.parse(benchmark)
    except ValueError as error:
        raise ConfigError(f"{{key}}: {error}", "benchmark.name") from None
    base = RunConfig().to_dict()
    base["benchmark"]["name"] = name.value
    base["strategies"] = json.loads(json.dumps({**BASE_STRATEGIES, **OPTIONAL_STRATEGIES}))
    return merge(base, BENCHMARK_DEFAULTS[name])


def resolve(
    file: str | Path | None = None,
    overrides: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
) -> RunConfig:
    """The config from benchmark defaults, ``base``, the TOML ``file``, then the overrides.

    ``base`` is a preset's config tables (`ewc.experiment.presets`): it sits between the
    benchmark's defaults and the user's file and overrides.
    """
    given = [dict(base or {}), load_toml(file) if file is not None else {}]
    given.append(parse_overrides(overrides))
    named = next((n for n in map(_benchmark_name, reversed(given)) if n), None)
    if named is None and _implied_benchmark(given) is Benchmark.CUSTOM:
        named = Benchmark.CUSTOM.value
    merged = defaults_for(named or Benchmark.PERMUTED)
    if named is None:
        merged = merge(merged, QUICKSTART)
    for source in given:
        merged = merge(merged, source)
    _drop_unused_optional(merged, given)
    return fill_stream_defaults(from_dict(merged))


def _implied_benchmark(given: list[Mapping[str, Any]]) -> Benchmark:
    """``custom`` when a ``benchmark.factory`` is given, else ``permuted``."""
    tables = [source.get("benchmark") for source in given]
    if any(isinstance(t, Mapping) and t.get("factory") is not None for t in tables):
        return Benchmark.CUSTOM
    return Benchmark.PERMUTED


def _drop_unused_optional(merged: dict[str, Any], given: list[Mapping[str, Any]]) -> None:
    """Remove the `OPTIONAL_STRATEGIES` that ``compare`` does not name and no user input sets."""
    chosen = set(merged.get("compare") or [])
    for source in given:
        strategies = source.get("strategies")
        chosen |= set(strategies) if isinstance(strategies, Mapping) else set()
    for name in OPTIONAL_STRATEGIES:
        if name not in chosen:
            merged["strategies"].pop(name, None)


def fill_stream_defaults(config: RunConfig) -> RunConfig:
    """Write what "unset" stands for into the config, so that ``config.json`` records what runs.

    The benchmark's default scenario; multi_head = (task-IL); the data source (the embedded
    subset for mnist without ``data_dir``, else ``auto``: every source in turn); the device
    (``auto``: CUDA when available).
    """
    from ewc.experiment.streams.benchmarks import DEFAULTS

    b = config.benchmark
    scenario = b.scenario if b.scenario is not None else DEFAULTS[b.name].scenario
    multi_head = b.multi_head if b.multi_head is not None else scenario is Scenario.TASK
    source = b.source
    if source is None and b.name is not Benchmark.CUSTOM:
        embedded = b.dataset is DatasetName.MNIST and b.data_dir is None
        source = Source.EMBEDDED if embedded else Source.AUTO
    benchmark = dataclasses.replace(b, scenario=scenario, multi_head=multi_head, source=source)
    training = dataclasses.replace(config.training, device=resolve_device(config.training.device))
    config = dataclasses.replace(config, benchmark=benchmark, training=training)
    _check_combinations(config)
    return config


def resolve_device(device: str) -> str:
    """``device`` checked against this machine; ``auto`` becomes ``cuda`` when CUDA is available.

    Raises:
        ConfigError: not one of auto, cpu, cuda, cuda:N, or CUDA (that GPU) is not available.
    """
    import torch

    key, valid = "training.device", "'auto', 'cpu', 'cuda' or 'cuda:N'"
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, sep, index = device.partition(":")
    if device == "cpu" or (kind == "cuda" and (not sep or (index.isascii() and index.isdigit()))):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device != "cpu" and count <= int(index or 0):
            raise ConfigError(
                f"{{key}} = {device!r}, but this machine has {count} usable CUDA device(s) "
                f"(torch {torch.__version__}); use 'cpu' or 'auto'",
                key,
            )
        return device
    raise ConfigError(f"{{key}} = {device!r} is not one of {valid}", key)


def _check_combinations(config: RunConfig) -> None:
    """Raise `ConfigError` for settings that are valid alone but not together."""
    b = config.benchmark
    if b.multi_head and b.scenario is not Scenario.TASK:
        raise ConfigError(
            "benchmark.multi_head = true needs benchmark.scenario = 'task' (a head per task "
            f"means telling the model the task); got benchmark.scenario = {b.scenario.value!r}"
        )
    if b.train_outputs is TrainOutputs.SEEN and b.scenario is not Scenario.CLASS:
        raise ConfigError(
            "benchmark.train_outputs = 'seen' (train on the classes seen so far) is for "
            f"class-IL; got benchmark.scenario = {b.scenario.value!r} (leave it at 'all')"
        )
    _check_custom(b)
    if b.class_order is not ClassOrder.NATURAL and b.name is not Benchmark.SPLIT:
        raise ConfigError(
            f"benchmark.class_order = {b.class_order.value!r} applies to the split benchmark "
            f"only; got benchmark.name = {b.name.value!r} (leave class_order at 'natural')"
        )
    _check_normalize(b.normalize)
    if b.data_dir is not None and b.source not in (Source.DIR, Source.AUTO):
        raise ConfigError(
            f"benchmark.data_dir is set but benchmark.source = {b.source.value!r} does not read "
            "it; use benchmark.source = 'dir' or 'auto', or leave the source unset"
        )


def _check_normalize(normalize: list[float] | None) -> None:
    """``benchmark.normalize`` is None or [mean, std] with finite numbers and std > 0."""
    from ewc.experiment.streams.benchmarks import checked_normalize

    try:
        checked_normalize(normalize)
    except ValueError:
        raise ConfigError(
            "benchmark.normalize must be [mean, std] with finite numbers and std > 0 (e.g. "
            f"[0.1, 0.2752]); got {normalize!r}"
        ) from None


def _check_custom(b: BenchmarkConfig) -> None:
    """Your own tasks (``benchmark.factory``) go with ``benchmark.name = 'custom'`` only."""
    custom = b.name is Benchmark.CUSTOM
    if custom and b.factory is None:
        raise ConfigError(
            "benchmark.name = 'custom' needs benchmark.factory = 'pkg.module:function', the "
            "function that returns your tasks (docs/own-model.md)"
        )
    if not custom and b.factory is not None:
        raise ConfigError(
            f"benchmark.factory is set, so benchmark.name must be 'custom' (or left out); "
            f"got benchmark.name = {b.name.value!r}"
        )
    image_only = {"source": b.source, "data_dir": b.data_dir, "angles": b.angles}
    image_only["normalize"] = b.normalize
    image_only["classes_per_task"] = None if b.classes_per_task == 2 else b.classes_per_task
    image_only["pad"] = b.pad or None
    for key, value in image_only.items():
        if custom and value is not None:
            raise ConfigError(
                f"benchmark.{key} applies to the image benchmarks, not to your own tasks "
                f"(benchmark.factory); remove it (got {getattr(value, 'value', value)!r})"
            )


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file; errors name the file."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as error:
        raise ConfigError(f"config file {path} cannot be read: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turn ``["training.epochs=2", "seeds=[0, 1]"]`` into nested data.

    Values are TOML values, and a value that is not valid TOML is taken as a string
    (``benchmark.name=split``). A table value (``training={lr=0.01}``) sets the keys it names
    and leaves the table's others as they are, like the dotted form.

    Raises:
        ConfigError: an override that is not ``key=value``, or two overrides that set the same
            key (``training.epochs=1 training.epochs=2``, or ``training.lr`` by a dotted key and
            by a table): which one was meant is not for the run to guess.
    """
    nested: dict[str, Any] = {}
    origin: dict[tuple[str, ...], tuple[str, Any]] = {}  # leaf key → (override, its value)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"override {item!r} is not of the form key=value (e.g. training.epochs=2)"
            )
        try:
            value = tomllib.loads(f"value = {raw}")["value"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        path = tuple(key.strip().split("."))
        *parents, leaf_key = path
        target = nested
        for part in parents:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {item!r} sets a key inside {part!r}, which is a value")
        for leaf, leaf_value in _leaves(path, value):
            _refuse_a_second_value(origin, leaf, leaf_value, item)
            origin[leaf] = (item, leaf_value)
        target[leaf_key] = (
            merge(target[leaf_key], value)
            if isinstance(value, dict) and isinstance(target.get(leaf_key), dict)
            else value
        )
    return nested


def _leaves(path: tuple[str, ...], value: Any) -> list[tuple[tuple[str, ...], Any]]:
    """The (key, value) pairs a value sets: itself, or for a table each key inside it."""
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves((*path, k), v)]
    return [(path, value)]


def _refuse_a_second_value(
    origin: dict[tuple[str, ...], tuple[str, Any]], leaf: tuple[str, ...], value: Any, item: str
) -> None:
    """Raise when an earlier override set ``leaf``, or a key around or inside it, otherwise.

    The same key set to the same value again is no conflict.
    """
    for path, (earlier, earlier_value) in origin.items():
        same = path == leaf and earlier_value == value
        if not same and (path[: len(leaf)] == leaf or leaf[: len(path)] == path):
            raise ConfigError(
                f"{'.'.join(leaf)} is set twice, by {earlier!r} and by {item!r}; give it once"
            )


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``update`` merged in, recursively for nested tables."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def from_dict(data: Mapping[str, Any]) -> RunConfig:
    """Build and check a `RunConfig` from nested plain data (unknown keys are errors)."""
    config = build_dataclass(RunConfig, data, "")
    for key in ("seeds", "compare"):
        values = getattr(config, key)
        if not values or len(set(values)) != len(values):
            raise ConfigError(f"{key} must be a non-empty list without repeats; got {values}", key)
    return config


def _benchmark_name(data: Mapping[str, Any]) -> str | None:
    table = data.get("benchmark")
    return table.get("name") if isinstance(table, Mapping) else None


def build_dataclass(cls: type, data: Any, prefix: str) -> Any:
    """Build the dataclass ``cls`` from a table, checking every value against its field.

    Each value is checked against its field's type and range; errors name the key as
    ``prefix`` + field, and unknown keys are errors.
    """
    if not isinstance(data, Mapping):
        key = prefix.rstrip(".") or "the config"
        raise ConfigError(f"{{key}} must be a table; got {data!r}", key)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            "unknown config key '{key}'; "
            f"valid keys here are {', '.join(fields) if fields else '(none)'}",
            prefix + str(unknown[0]),
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for name in fields.keys() & data.keys():
        value = _coerce(data[name], hints[name], prefix + name)
        _check_range(value, fields[name].metadata, prefix + name, data[name])
        values[name] = value
    return cls(**values)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field's annotation (int → float allowed); return it."""
    if dataclasses.is_dataclass(annotation):
        return build_dataclass(annotation, value, key + ".")
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{{key}} must be a list; got {value!r}", key)
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{{key}} must be a table of tables; got {value!r}", key)
        for name, table in value.items():
            if not isinstance(table, Mapping):
                raise ConfigError(f"{{key}} must be a table; got {table!r}", f"{key}.{name}")
        return {str(k): dict(v) for k, v in value.items()}
    return _scalar(value, annotation, key)


def _scalar(value: Any, annotation: type, key: str) -> Any:
    if issubclass(annotation, Choice):
        try:
            return annotation.parse(value)
        except ValueError:
            valid = ", ".join(repr(member.value) for member in annotation)
            raise ConfigError(f"{{key}} = {value!r} is not one of {valid}", key) from None
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is int and isinstance(value, bool):
        raise ConfigError(f"{{key}} must be an integer; got {value!r}", key)
    if not isinstance(value, annotation):
        raise ConfigError(f"{{key}} must be of type {annotation.__name__}; got {value!r}", key)
    return value


def _check_range(value: Any, metadata: Mapping[str, Any], key: str, given: Any) -> None:
    """Raise `ConfigError` if ``value`` (or an item of its list) is outside the field's range.

    The message shows the value as ``given``.
    """
    strict = "above" in metadata
    low = metadata["above"] if strict else metadata.get("at_least")
    for item in value if isinstance(value, list) else [value]:
        if low is None or item is None:
            continue
        if isinstance(item, int) and not strict:
            if item < low:
                raise ConfigError(f"{{key}} must be at least {low}; got {given}", key)
        elif not (math.isfinite(item) and (item > low if strict else item >= low)):
            bound = f"> {low:g}" if strict else f"≥ {low:g}"
            what = f"a finite number {bound}"
            what = f"positive ({what})" if strict and low == 0 else what
            raise ConfigError(f"{{key}} must be {what}; got {given}", key)
