"""The `ewc` command line: thin wrappers that parse arguments, call the library and print."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ewc._version import __version__
from ewc.experiment.factories import import_from_working_directory

if TYPE_CHECKING:
    from ewc.experiment.presets import Preset


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `ewc` command and its sub-commands."""
    parser = argparse.ArgumentParser(
        prog="ewc",
        description="Elastic Weight Consolidation: named Fisher estimators, EWC penalties, "
        "and continual-learning experiments.",
    )
    parser.add_argument("--version", action="version", version=f"ewc {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_run(commands)
    _add_report(commands)
    _add_download(commands)
    _add_sweep(commands)
    _add_fisher_check(commands)
    return parser


def _add_run(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser(
        "run",
        help="run a continual-learning experiment and write its report",
        description="Train every strategy on the same task stream from the same initial weights, "
        "then write accuracy matrices, metrics, plots and report.html into the run directory. "
        "With no arguments: permuted MNIST (embedded subset), 5 tasks, MLP 784-400-400-10, "
        "finetune vs l2 vs ewc (exact Fisher).",
        epilog="Overrides are dotted config keys with TOML values, e.g. training.epochs=2 "
        'benchmark.name=split strategies.ewc.strength=1e4 \'compare=["finetune","ewc"]\'.',
    )
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    run.add_argument("--config", type=Path, help="a TOML config file (overrides apply on top)")
    run.add_argument(
        "--preset",
        metavar="NAME",
        help="a shipped protocol (see docs/reproduction.md) under --config and overrides; "
        "'list' prints them",
    )
    run.add_argument(
        "--out", type=Path, help="the run directory (default: runs/<benchmark>-<time>)"
    )
    run.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run")
    run.add_argument(
        "--data-dir",
        type=Path,
        help="a folder holding the IDX files of benchmark.dataset (official or dotted names, "
        "gzipped or not; source = dir)",
    )
    _add_run_shortcuts(run)
    run.add_argument(
        "--jobs", type=_positive_int, default=1, help="worker processes for independent cells"
    )
    run.add_argument("--quiet", action="store_true", help="print no progress, only the results")
    run.add_argument("--no-report", action="store_true", help="skip plots and report.html")
    run.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write every cell's scalars under <run>/tensorboard/ (output.tensorboard; "
        "needs ewc[tensorboard])",
    )
    run.set_defaults(handler=_run)


def _add_run_shortcuts(run: argparse.ArgumentParser) -> None:
    """The options of ``ewc run`` that stand for config keys (seeds, compare, device)."""
    run.add_argument(
        "--seeds",
        type=parse_seeds,
        help="seeds and ranges, e.g. 0,1,2 or 0-4 or 0-2,7 (mean ± SEM over them)",
    )
    run.add_argument(
        "--strategies",
        help="comma-separated strategies to compare, e.g. finetune,ewc; 'all' adds online-ewc, "
        "kfac-ewc, si and mas to the default comparison",
    )
    run.add_argument(
        "--device",
        help="where to train: cpu (default), cuda, cuda:N, or auto (CUDA when available); "
        "sets training.device",
    )


def parse_seeds(text: str) -> list[int]:
    """The seeds of ``--seeds``: comma-separated non-negative integers and ranges ``a-b``.

    Both ends of a range are included, e.g. ``0,1,2``, ``0-4`` or ``0-2,7``.
    """
    seeds: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?", part, re.ASCII)
        if match is None or (match[2] is not None and int(match[2]) < int(match[1])):
            raise argparse.ArgumentTypeError(
                "takes non-negative integers and rising ranges separated by commas, e.g. "
                f"0,1,2 or 0-4 or 0-2,7; got {text!r}"
            )
        seeds.extend(range(int(match[1]), int(match[2] or match[1]) + 1))
    return seeds


def _positive_int(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text, re.ASCII) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return int(text)


def _add_report(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser(
        "report",
        help="(re)generate the plots and report of a run directory",
        description="Regenerate plots/, report.html and report.md from a run directory's files.",
    )
    report.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    report.set_defaults(handler=_report)


def _add_fisher_check(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser(
        "fisher-check",
        help="show the Fisher identities hold (and the empirical Fisher's gap) on a small MLP",
        description="Train a small MLP on the embedded MNIST, then print per parameter the mean "
        "score, Var(score), E[score²] and −E[∇² log p] under the model's labels and the data's.",
    )
    check.add_argument("--train-samples", type=int, default=4000, help="digits to train on")
    check.add_argument("--epochs", type=int, default=5)
    check.add_argument("--samples", type=int, default=500, help="inputs the moments are over")
    check.add_argument("--hidden", type=int, default=32, help="the MLP's hidden width")
    check.add_argument("--plot", type=Path, help="also write the per-element figure to this PNG")
    check.set_defaults(handler=_fisher_check)


#: What ``--strategies all`` compares: every built-in strategy, the baselines first.
ALL_STRATEGIES = ["finetune", "l2", "ewc", "online-ewc", "kfac-ewc", "si", "mas"]


def _compared(text: str) -> list[str]:
    """The strategy names of ``--strategies``; ``all`` stands for `ALL_STRATEGIES`.

    Raises:
        ValueError: the flag was given but names nothing (``--strategies=``).
    """
    if not text.strip():
        raise ValueError("--strategies names no strategy; give one or more, e.g. ewc,finetune")
    names = [name.strip() for name in text.split(",")]
    return ALL_STRATEGIES if names == ["all"] else names


def _fisher_check(args: argparse.Namespace) -> int:
    from ewc.experiment.fisher_check import fisher_check

    try:
        result = fisher_check(
            train_samples=args.train_samples,
            epochs=args.epochs,
            samples=args.samples,
            hidden=args.hidden,
        )
    except ValueError as error:
        print(f"ewc fisher-check: {error}", file=sys.stderr)
        return 2
    print(result)
    if args.plot is not None:
        from ewc._atomic import write_bytes_atomic
        from ewc.report.figures import render_png
        from ewc.report.identities import identities_figure

        write_bytes_atomic(args.plot, render_png(identities_figure, result.identities))
        print(f"figure: {args.plot}")
    return 0


def _add_download(commands: argparse._SubParsersAction) -> None:
    download = commands.add_parser(
        "download",
        help="download a data set to the user cache, verifying its checksums",
        description="Download the four IDX files of a data set into the user cache "
        "($EWC_CACHE, else $XDG_CACHE_HOME/ewc, else ~/.cache/ewc), verifying each checksum.",
    )
    download.add_argument("name", help="mnist, fashion-mnist or kmnist")
    download.add_argument("--cache-dir", type=Path, help="cache root instead of the default")
    download.add_argument("--mirror", action="append", help="base URL to try first (repeatable)")
    download.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    download.set_defaults(handler=_download)


def _add_sweep(commands: argparse._SubParsersAction) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="search config values (e.g. EWC's λ) over trials on an Optuna study",
        description="Run trials of a search over config keys: each trial is an ordinary run "
        "directory under the sweep directory; the sweep writes results.md, results.csv, "
        "best.toml (for ewc run --config) and plots of accuracy against each numeric key. "
        "Start the same command several times (or on several machines with --storage) to run "
        "trials in parallel on one study. Needs optuna: pip install 'ewc[sweep]'.",
        epilog="Search specs: log:LOW..HIGH[:N] (log-uniform, or N log-spaced points), "
        "LOW..HIGH[:N], or a list A,B,C. Example: ewc sweep --search "
        "strategies.ewc.strength=log:1..1e12:13 --search strategies.ewc.fisher=exact,batched "
        "--seeds 0-2 training.epochs=1",
    )
    sweep.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="fixed config overrides")
    sweep.add_argument(
        "--search", action="append", default=[], metavar="KEY=SPEC", help="a searched key"
    )
    sweep.add_argument("--config", type=Path, help="a TOML config file (overrides apply on top)")
    sweep.add_argument("--out", type=Path, help="the sweep directory (default: runs/sweep-<time>)")
    sweep.add_argument(
        "--resume", type=Path, metavar="SWEEP_DIR", help="continue a sweep whose workers stopped"
    )
    sweep.add_argument("--seeds", type=parse_seeds, help="seeds of every trial, e.g. 0-2")
    sweep.add_argument(
        "--strategies",
        help="strategies each trial runs; the first one's metric is the objective "
        "(default: those the search keys name)",
    )
    sweep.add_argument("--sampler", choices=["grid", "tpe"], help="grid (default) or tpe")
    sweep.add_argument("--sampler-seed", type=int, help="seeds the sampler (default 0)")
    sweep.add_argument("--trials", type=_positive_int, help="trials in all (tpe)")
    sweep.add_argument(
        "--objective", choices=["acc", "bwt", "forgetting"], help="acc (default), bwt, forgetting"
    )
    sweep.add_argument("--no-prune", action="store_true", help="run every trial to its end")
    sweep.add_argument(
        "--storage", help="an Optuna storage URL shared by workers, e.g. postgresql://…"
    )
    sweep.add_argument("--study", help="the study's name (default: the sweep directory's name)")
    sweep.add_argument("--quiet", action="store_true", help="print no line per trial")
    sweep.add_argument("--no-report", action="store_true", help="skip the plots and report.md")
    sweep.set_defaults(handler=_sweep)


def _sweep(args: argparse.Namespace) -> int:
    import optuna

    from ewc.experiment.config import ConfigError
    from ewc.experiment.sweep import SpaceError, run_sweep
    from ewc.experiment.sweep.study import StorageError, StudyMismatchError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweep_dir = args.resume or args.out
    try:
        spec, sweep_dir, study = _sweep_spec_and_dir(args)
        log = (lambda line: None) if args.quiet else lambda line: print(line, flush=True)
        result = run_sweep(
            spec,
            sweep_dir,
            storage=args.storage,
            study_name=study,
            resume=bool(args.resume),
            log=log,
        )
    except (ConfigError, SpaceError, StudyMismatchError, TimeoutError, ValueError) as error:
        print(f"ewc sweep: {error}", file=sys.stderr)
        return 2
    except StorageError as error:
        print(f"ewc sweep: {error}", file=sys.stderr)
        return 1
    except ImportError as error:  # the storage URL's database driver is missing
        if getattr(error, "name", None) == "optuna" or args.storage is None:
            raise
        print(
            f"ewc sweep: no database driver for the storage URL ({error}); install it, e.g. "
            "`pip install psycopg2-binary` and a URL postgresql+psycopg2://… (SQLAlchemy 2.1 "
            "reads a bare postgresql:// with psycopg 3: `pip install 'psycopg[binary]'`)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        hint = f"; continue with `ewc sweep --resume {sweep_dir}`" if sweep_dir else ""
        print(f"\newc sweep: interrupted{hint}", file=sys.stderr)
        return 130
    return _finish_sweep(result, args)


def _sweep_spec_and_dir(args: argparse.Namespace) -> tuple[Any, Path, str | None]:
    """The sweep, its directory and study name from `ewc sweep`'s arguments (creates nothing)."""
    from ewc.experiment.config import resolve
    from ewc.experiment.sweep import SweepSpec, parse_space
    from ewc.experiment.sweep.driver import HIDDEN_STORAGE, read_recorded

    if args.resume is not None:
        given = [args.out, args.config, args.seeds, args.strategies, args.trials, *args.search]
        given += [args.sampler, args.sampler_seed, args.objective, args.no_prune or None]
        if any(g is not None for g in given) or args.overrides:
            raise ValueError(
                "--resume takes the recorded sweep; give no search, config, sampler, objective, "
                "pruning or --out"
            )
        recorded = read_recorded(args.resume)
        if args.study is not None and args.study != recorded["study"]:
            raise ValueError(
                f"{args.resume} is the sweep of study {recorded['study']!r}, not {args.study!r}; "
                "--resume continues the recorded study"
            )
        stored = recorded["storage"]
        if args.storage is not None and stored != HIDDEN_STORAGE and args.storage != stored:
            raise ValueError(
                f"{args.resume} records another storage ({stored or 'its own journal file'}); "
                "--resume continues the recorded one"
            )
        if args.storage is None and recorded["storage"] is not None:
            if recorded["storage"] == HIDDEN_STORAGE:
                raise ValueError(
                    "this sweep's storage URL holds a password; give it with --storage"
                )
            args.storage = recorded["storage"]
        return SweepSpec.from_dict(recorded["spec"]), args.resume, recorded["study"]
    if args.storage is not None and args.study is None:
        raise ValueError(
            "with --storage, name the study with --study, so that every worker joins it"
        )
    dimensions = parse_space(args.search)
    overrides = list(args.overrides)
    if args.seeds:
        overrides.append(f"seeds={json.dumps(args.seeds)}")
    searched = [d.key.split(".")[1] for d in dimensions if d.key.startswith("strategies.")]
    names = _compared(args.strategies) if args.strategies is not None else searched
    given = any(o.partition("=")[0].strip() == "compare" for o in args.overrides)
    if names and not (given and args.strategies is None):  # compare=[...] given: it stands
        overrides.append(f"compare={json.dumps(list(dict.fromkeys(names)))}")
    base = resolve(args.config, overrides).to_dict()
    spec = SweepSpec(
        space={d.key: d.spec for d in dimensions},
        base=base,
        sampler=args.sampler or "grid",
        sampler_seed=0 if args.sampler_seed is None else args.sampler_seed,
        objective=args.objective or "acc",
        trials=args.trials,
        prune=not args.no_prune,
    )
    return spec, args.out or _fresh_run_dir("sweep"), args.study


def _finish_sweep(result: Any, args: argparse.Namespace) -> int:
    """Print what the worker ran and the best trial; write the sweep's report."""
    from ewc.experiment.sweep.driver import BEST_FILE

    counts: dict[str, int] = {}
    for row in result.rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    print(f"\nthis worker ran {len(result.ran)} trial(s); the study holds {states or 'none'}")
    if result.requeued:
        print(f"re-queued the trials of killed workers: {result.requeued}")
    if result.best is None:
        print("no trial has completed yet")
    else:
        params = " ".join(f"{k}={v}" for k, v in result.best.params.items())
        print(f"best: trial {result.best.number}: {params}")
        print(f"best config: {result.sweep_dir / BEST_FILE}")
    print(f"results: {result.sweep_dir / 'results.md'}")
    if not args.no_report:
        _sweep_report_or_explain(result.sweep_dir)
    return 0


def _sweep_report_or_explain(sweep_dir: Path) -> bool:
    """Write the sweep's report; explain (instead of failing) what is missing to make it."""

    def write() -> Path:
        from ewc.report.sweep import write_sweep_report

        return write_sweep_report(sweep_dir)

    return _write_or_explain("ewc sweep", write)


def _download(args: argparse.Namespace) -> int:
    from ewc.data import DownloadError, download

    try:
        folder = download(
            args.name,
            cache_dir=args.cache_dir,
            mirrors=args.mirror,
            timeout=args.timeout,
            progress=print,
        )
    except (ValueError, DownloadError) as error:
        print(f"ewc download: {error}", file=sys.stderr)
        return 1
    print(folder)
    return 0


def _run(args: argparse.Namespace) -> int:
    from ewc.data import DataFileError, DatasetNotFoundError
    from ewc.experiment.config import ConfigError, OutputConfig
    from ewc.experiment.runner import run_experiment
    from ewc.experiment.storage.checkpoint import CheckpointError
    from ewc.experiment.storage.rundir import RunDirectoryError
    from ewc.experiment.team import DistributedError, process_group_from_environment

    run_dir = None
    if args.preset == "list":
        from ewc.experiment import presets

        print(presets.listing())
        return 0
    try:
        config, run_dir = _run_config_and_dir(args)
        if args.tensorboard:  # unhashed, so it also applies to a resumed run's recorded config
            config = dataclasses.replace(config, output=OutputConfig(tensorboard=True))
        resume = args.resume is not None
        with process_group_from_environment(config.training.device):  # under torchrun
            result = run_experiment(
                config, run_dir, resume=resume, jobs=args.jobs, quiet=args.quiet
            )
    except (
        ConfigError,
        RunDirectoryError,
        DataFileError,
        DatasetNotFoundError,
        ValueError,
        DistributedError,
    ) as error:
        print(f"ewc run: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\newc run: interrupted{_resume_hint(run_dir)}", file=sys.stderr)
        return 130
    except (OSError, CheckpointError) as error:
        print(f"ewc run: {describe_os_error(error)}{_resume_hint(run_dir)}", file=sys.stderr)
        return 1
    return _finish(result, args)


def _finish(result: Any, args: argparse.Namespace) -> int:
    """Print the summary of a run, write its report; exit 1 if a cell diverged."""
    from ewc.experiment.team import launched_rank

    if launched_rank() != 0:  # under torchrun, rank 0 prints and reports
        return 1 if result.diverged else 0
    print()
    print(result.summary.table())
    resumed = " in this process" if result.summary.resumed else ""
    print(f"\nrun directory: {result.run_dir}  ({result.summary.wall_time_s:.0f} s{resumed})")
    if not args.no_report:
        _report_or_explain(result.run_dir)
    return 1 if result.diverged else 0


def _resume_hint(run_dir: Path | None) -> str:
    """How to continue a run that stopped, if it got far enough to be continued."""
    if run_dir is None or not (Path(run_dir) / "config.json").is_file():
        return ""
    return f"; continue with `ewc run --resume {run_dir}`"


def _run_config_and_dir(args: argparse.Namespace) -> tuple[Any, Path]:
    """The resolved config and run directory of `ewc run`'s arguments (nothing is created)."""
    from ewc.experiment.config import fill_stream_defaults, from_dict, resolve
    from ewc.experiment.storage.rundir import RunDirectory

    overrides = list(args.overrides)
    if args.data_dir is not None:
        overrides += [
            "benchmark.source=dir",
            f"benchmark.data_dir={json.dumps(str(args.data_dir))}",
        ]
    if args.seeds:
        overrides.append(f"seeds={json.dumps(args.seeds)}")
    if args.strategies is not None:
        overrides.append(f"compare={json.dumps(_compared(args.strategies))}")
    if args.device is not None:
        overrides.append(f"training.device={json.dumps(args.device)}")
    preset = _preset(args.preset)
    base = None if preset is None else preset.config
    if args.resume is None:
        config = _resolved_fresh(args, overrides, base)
        if preset is not None:
            _note_strategies_at_defaults(args, preset, config.compare)
        return config, args.out or _fresh_run_dir(config.benchmark.name)
    if args.out is not None:
        raise ValueError("--out and --resume exclude each other: --resume names the run directory")
    if RunDirectory(args.resume).is_unstarted():  # killed before config.json was complete
        return resolve(args.config, overrides, base), args.resume
    recorded = RunDirectory.open(args.resume).read_config()["config"]
    if args.config is not None or base:  # the whole config given again: it must match
        return resolve(args.config, overrides, base), args.resume
    if overrides:  # changes to the recorded config (only unhashed keys keep its hash)
        return resolve(None, overrides, recorded), args.resume
    return fill_stream_defaults(from_dict(recorded)), args.resume


def _resolved_fresh(args: argparse.Namespace, overrides: list[str], base: Any) -> Any:
    """The config of a new run; ``--data-dir`` with your own tasks is refused by its own name.

    Raises:
        ConfigError: as `resolve`; ``--data-dir`` given for a ``benchmark.factory`` run (the
            flag's ``benchmark.source`` would otherwise be blamed).
    """
    from ewc.experiment.config import Benchmark, ConfigError, resolve

    try:
        return resolve(args.config, overrides, base)
    except ConfigError:
        if args.data_dir is None:
            raise
        without = [
            o for o in overrides if not o.startswith(("benchmark.source=", "benchmark.data_dir="))
        ]
        try:
            custom = resolve(args.config, without, base).benchmark.name is Benchmark.CUSTOM
        except ConfigError:
            custom = False
        if custom:
            raise ConfigError(
                "--data-dir names the folder of an image benchmark's files; your own tasks "
                "(benchmark.factory) bring their own data: remove --data-dir"
            ) from None
        raise


def _note_strategies_at_defaults(
    args: argparse.Namespace, preset: Preset, compare: list[str]
) -> None:
    """Tell on stderr which compared strategies ``preset`` leaves at the built-in settings."""
    from ewc.experiment import presets
    from ewc.experiment.config import load_toml, parse_overrides

    user = [load_toml(args.config) if args.config is not None else {}]
    user.append(parse_overrides(args.overrides))
    names = presets.strategies_left_at_defaults(preset, compare, user)
    if names:
        print(f"ewc run: {presets.defaults_note(preset, names)}", file=sys.stderr)


def _preset(name: str | None) -> Preset | None:
    """The shipped preset ``name`` (None: no preset)."""
    if name is None:
        return None
    from ewc.experiment import presets

    return presets.load(name)


def _fresh_run_dir(benchmark: str) -> Path:
    """runs/<benchmark>-<date>-<time>, with a suffix if that exists already."""
    stem = Path("runs") / f"{benchmark}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, counter = stem, 2
    while candidate.exists():
        candidate, counter = stem.with_name(f"{stem.name}-{counter}"), counter + 1
    return candidate


def _report(args: argparse.Namespace) -> int:
    return 0 if _report_or_explain(args.run_dir) else 1


def _report_or_explain(run_dir: Path) -> bool:
    """Write the run's report; explain (instead of failing) what is missing to make it."""

    def write() -> Path:
        from ewc.report import write_report

        return write_report(run_dir).html

    return _write_or_explain("ewc report", write)


def _write_or_explain(command: str, write: Callable[[], Path]) -> bool:
    """Call ``write`` and print the report's path, or print why it could not be written.

    A missing optional dependency, an OS error or a bad run directory gives one line prefixed by
    ``command`` and False; any other error propagates.
    """
    try:
        path = write()
    except ModuleNotFoundError as error:
        if _optional_dependency(error) is None:
            raise
        print(f"{command}: {missing_dependency_message(error)}", file=sys.stderr)
        return False
    except OSError as error:
        print(f"{command}: {describe_os_error(error)}", file=sys.stderr)
        return False
    except ValueError as error:
        print(f"{command}: {error}", file=sys.stderr)
        return False
    print(f"report: {path}")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may stand between options (argparse takes one positional run only)
    if (
        extra
        and getattr(args, "command", None) in ("run", "sweep")
        and all("=" in e and not e.startswith("-") for e in extra)
    ):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 0
    import_from_working_directory()  # model.factory / benchmark.factory, as `python -m` finds them
    return _guarded(args)


def _guarded(args: argparse.Namespace) -> int:
    """Run a command's handler; what a user can cause becomes one line on stderr, not a traceback.

    Exit codes: 1 for an OS error (read-only, permission, disk full, missing folder) or a missing
    optional dependency, 130 for an interrupt.
    """
    name = f"ewc {args.command}"
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as error:
        if _optional_dependency(error) is None:
            raise
        print(f"{name}: {missing_dependency_message(error)}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"{name}: {describe_os_error(error)}", file=sys.stderr)
        return 1


#: The optional dependencies and the extra that installs them.
_OPTIONAL = {
    "safetensors": "run",
    "matplotlib": "run",
    "tomli": "run",
    "optuna": "sweep",
    "tensorboardX": "tensorboard",
}

#: What to do about the OS errors a user can cause.
_ADVICE = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space (disk quota exceeded)",
    errno.EROFS: "choose a place on a writable file system",
    errno.EACCES: "check its permissions or choose another place",
    errno.EPERM: "check its permissions or choose another place",
    errno.ENOENT: "check the path",
}


def _optional_dependency(error: ModuleNotFoundError) -> str | None:
    """The optional dependency whose absence ``error`` reports, or None."""
    name = error.name or (re.findall(r"'([^']+)'", str(error)) or [""])[0]
    root = name.partition(".")[0]
    return root if root in _OPTIONAL else None


def missing_dependency_message(error: ModuleNotFoundError) -> str:
    """``needs safetensors, which is not installed; install it with `pip install 'ewc[run]'```."""
    name = _optional_dependency(error)
    extra = _OPTIONAL.get(name or "", "run")
    return f"needs {name}, which is not installed; install it with `pip install 'ewc[{extra}]'`"


def describe_os_error(error: BaseException) -> str:
    """One line for an OS error: the path, what went wrong, what to do (``/r: Read-only ...``).

    A checkpoint that could not be written is reported as the OS error behind it.
    """
    path = getattr(error, "path", None)
    if not isinstance(error, OSError) and isinstance(error.__cause__, OSError):
        error = error.__cause__  # a CheckpointError: name the checkpoint file, not its temp file
    if not isinstance(error, OSError):
        return str(error)
    from ewc._atomic import destination

    what = error.strerror or str(error)
    where = path or (destination(error.filename) if error.filename else None)
    text = f"{where}: {what}" if where else what
    advice = _ADVICE.get(error.errno or -1)
    return f"{text} ({advice})" if advice else text


if __name__ == "__main__":
    raise SystemExit(main())
