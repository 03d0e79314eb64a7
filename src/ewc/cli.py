"""The `ewc` command line: thin wrappers that parse arguments, call the library and print."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ewc._version import __version__


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
        "--out", type=Path, help="the run directory (default: runs/<benchmark>-<time>)"
    )
    run.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run")
    run.add_argument(
        "--data-dir",
        type=Path,
        help="a folder holding the official IDX files of benchmark.dataset (source = dir)",
    )
    run.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (mean ± SEM over them)")
    run.add_argument(
        "--strategies", help="comma-separated strategies to compare, e.g. finetune,ewc"
    )
    run.add_argument("--jobs", type=int, default=1, help="worker processes for independent cells")
    run.add_argument("--no-report", action="store_true", help="skip plots and report.html")
    run.set_defaults(handler=_run)


def _add_report(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser(
        "report",
        help="(re)generate the plots and report of a run directory",
        description="Regenerate plots/, report.html and report.md from a run directory's files.",
    )
    report.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    report.set_defaults(handler=_report)


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
    from ewc.experiment.config import ConfigError
    from ewc.experiment.progress import for_stream
    from ewc.experiment.runner import run_experiment
    from ewc.experiment.storage.rundir import RunDirectoryError

    run_dir = None
    try:
        config, run_dir = _run_config_and_dir(args)
        result = run_experiment(
            config, run_dir, resume=args.resume is not None, jobs=args.jobs, progress=for_stream()
        )
    except (
        ConfigError,
        RunDirectoryError,
        DataFileError,
        DatasetNotFoundError,
        ValueError,
    ) as error:
        print(f"ewc run: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "" if run_dir is None else f"; continue with `ewc run --resume {run_dir}`"
        print(f"\newc run: interrupted{hint}", file=sys.stderr)
        return 130
    print()
    print(result.summary.table())
    print(f"\nrun directory: {result.run_dir}  ({result.summary.wall_time_s:.0f} s)")
    if not args.no_report:
        _report_or_explain(result.run_dir)
    return 1 if result.diverged else 0


def _run_config_and_dir(args: argparse.Namespace) -> tuple[Any, Path]:
    """The resolved config and run directory of `ewc run`'s arguments."""
    from ewc.experiment.config import from_dict, resolve
    from ewc.experiment.storage.rundir import RunDirectory

    overrides = list(args.overrides)
    if args.data_dir is not None:
        overrides += [
            "benchmark.source=dir",
            f"benchmark.data_dir={json.dumps(str(args.data_dir))}",
        ]
    if args.seeds:
        overrides.append(f"seeds=[{args.seeds}]")
    if args.strategies:
        names = ", ".join(f'"{name.strip()}"' for name in args.strategies.split(","))
        overrides.append(f"compare=[{names}]")
    if args.resume is None:
        config = resolve(args.config, overrides)
        return config, args.out or _fresh_run_dir(config.benchmark.name)
    if args.out is not None:
        raise ValueError("--out and --resume exclude each other: --resume names the run directory")
    if RunDirectory(args.resume).is_unstarted():  # killed before config.json was complete
        return resolve(args.config, overrides), args.resume
    recorded = from_dict(RunDirectory.open(args.resume).read_config()["config"])
    changed = args.config is not None or overrides
    return (resolve(args.config, overrides) if changed else recorded), args.resume


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
    """Write the report; explain (instead of failing) what is missing to make it."""
    try:
        from ewc.report import write_report

        paths = write_report(run_dir)
    except ImportError as error:
        print(
            f"ewc report: plots need matplotlib ({error}); pip install 'ewc[run]'", file=sys.stderr
        )
        return False
    except (OSError, ValueError) as error:
        print(f"ewc report: {error}", file=sys.stderr)
        return False
    print(f"report: {paths.html}")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may stand between options (argparse takes one positional run only)
    if (
        extra
        and getattr(args, "command", None) == "run"
        and all("=" in e and not e.startswith("-") for e in extra)
    ):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 0
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
