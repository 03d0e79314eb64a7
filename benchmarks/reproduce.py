"""Reproduce a shipped preset at full length: one `ewc run` per seed (and per λ), then a table.

Each (seed, λ) is its own run directory under ``--out``, so a run killed after some seeds keeps
them, and ``--resume`` (the default when the directory exists) continues the unfinished ones
with ``ewc run --resume``. The table puts our ACC (mean ± SEM over the finished seeds) beside the
published number of the preset's ``[preset.published]``, when the runs saw the preset's own data
set in full (a ``benchmark.dataset`` override or a subset leaves the published column empty, and
folders of different data are refused rather than averaged):

    python benchmarks/reproduce.py vandeven2025-split-mnist --seeds 0-4 \\
        --strategies finetune,ewc-exact,ewc-empirical,ewc-batched \\
        --data-dir ../shared/data/mnist --out runs/repro/split2025 training.threads=1
    python benchmarks/reproduce.py vandeven2025-split-mnist --seeds 0,1 --grid ewc-exact \\
        --data-dir ../shared/data/mnist --out runs/repro/split2025-grid      # the preset's λ grid
    python benchmarks/reproduce.py vandeven2025-split-mnist --out runs/repro/split2025 --table

The SEM is the sample standard deviation (n − 1) over √n, as `ewc run` reports it; van de Ven's
scripts divide the population standard deviation (n) by √n, which is √((n − 1)/n) times ours.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ewc.cli import parse_seeds
from ewc.experiment import environment, presets


def main(argv: list[str] | None = None) -> int:
    """Run the preset's seeds (and λ grid), then print the reproduction table."""
    args = _parser().parse_intermixed_args(argv)
    preset = presets.load(args.preset)
    runs = _planned_runs(preset, args)
    if not args.table:
        for name, directory, overrides, compare in runs:
            _run(args, name, directory, overrides, compare)
    folders = [*args.also, args.out] if args.table else args.also
    extra = [d for folder in folders if folder.is_dir() for d in sorted(folder.iterdir())]
    planned = [] if args.table else [directory for _, directory, _, _ in runs]
    print(table(preset, planned + [d for d in extra if d.is_dir()]))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", help="a shipped preset (ewc run --preset list)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--seeds", type=parse_seeds, help="default: the preset's seeds")
    parser.add_argument("--strategies", help="comma-separated; default: the preset's compare")
    parser.add_argument("--grid", help="sweep this strategy's λ over the preset's grid")
    parser.add_argument("--grid-values", help="comma-separated λ values instead of the grid")
    parser.add_argument("--data-dir", type=Path, help="the full data set's folder")
    parser.add_argument("--out", type=Path, required=True, help="one run directory per run")
    parser.add_argument(
        "--also", type=Path, action="append", default=[], help="more --out folders for the table"
    )
    parser.add_argument(
        "--table", action="store_true", help="only print the table, of every run under --out"
    )
    return parser


def _planned_runs(preset: presets.Preset, args: argparse.Namespace) -> list[tuple]:
    """(label, run directory, overrides, strategies) of every run, seed by seed (then λ by λ)."""
    seeds = args.seeds or preset.config.get("seeds", [0])
    compare = args.strategies.split(",") if args.strategies else preset.config["compare"]
    if args.grid:
        values = (
            [float(v) for v in args.grid_values.split(",")]
            if args.grid_values
            else preset.grid[args.grid]
        )
        grid = [(f"{args.grid}-{v:g}", [f"strategies.{args.grid}.strength={v!r}"]) for v in values]
        compare = [args.grid]
    else:
        grid = [("", [])]
    runs = []
    for seed in seeds:
        for label, extra in grid:
            name = f"seed{seed}" + (f"-{label}" if label else "")
            overrides = [
                *args.overrides,
                *extra,
                f"seeds=[{seed}]",
                f"compare={json.dumps(compare)}",
            ]
            runs.append((name, args.out / name, overrides, compare))
    return runs


def _run(
    args: argparse.Namespace,
    name: str,
    directory: Path,
    overrides: list[str],
    compare: list[str],
) -> None:
    """`ewc run` for one seed (resumed if its directory holds an unfinished run).

    Raises:
        SystemExit: the directory holds a run of other strategies than ``compare`` (a finished
            run would be skipped and an unfinished one resumed with its own): those go to another
            ``--out``, which ``--also`` merges into the table.
    """
    config = directory / "config.json"
    if config.is_file():
        recorded = json.loads(config.read_text())["config"]["compare"]
        if sorted(recorded) != sorted(compare):
            raise SystemExit(
                f"{name}: {directory} holds a run of {', '.join(recorded)}, not of "
                f"{', '.join(compare)}; run them into another --out (--table merges folders "
                "with --also)"
            )
    if (directory / "summary.json").is_file():
        print(f"{name}: done already", flush=True)
        return
    command = [sys.executable, "-m", "ewc.cli", "run", "--preset", args.preset, "--no-report"]
    command += ["--quiet", *overrides]
    if args.data_dir is not None:
        command += ["--data-dir", str(args.data_dir)]
    command += ["--resume", str(directory)] if directory.exists() else ["--out", str(directory)]
    started = time.perf_counter()
    result = subprocess.run(command, check=False)
    print(f"{name}: exit {result.returncode} in {time.perf_counter() - started:.0f} s", flush=True)


def table(preset: presets.Preset, directories: list[Path]) -> str:
    """Markdown: per strategy (and λ), published, ours (mean ± SEM, n), wall time per seed.

    The published numbers stand beside ours only for runs on the preset's own data set, full
    (not on a subset, nor with ``benchmark.dataset`` overridden). The runs of one table must all
    have seen the same data: folders of other data are refused, not averaged in.

    Raises:
        SystemExit: the folders hold runs on different data.
    """
    results = collect(directories)
    data = {entry["data"] for cells in results.values() for entry in cells}
    if len(data) > 1:
        raise SystemExit(
            "these folders hold runs on different data ("
            + "; ".join(sorted(_data_label(d) for d in data))
            + "): table each data set on its own"
        )
    (seen,) = data or {None}
    comparable = seen is None or (seen[0] == preset.config["benchmark"]["dataset"] and not seen[1])
    lines = [
        f"preset {preset.name} (v{preset.version})"
        + ("" if seen is None else f", data: {_data_label(seen)}")
        + ("" if comparable else "; the published numbers are for other data and are left out"),
        "| strategy | λ | published ACC | ours ACC (mean ± SEM, n) | training + Fisher s/seed "
        "| ACC per seed |",
        "|---|---|---|---|---|---|",
    ]
    for (name, strength), cells in sorted(results.items()):
        accs = [c["acc"] for c in cells]
        seconds = [c["seconds"] for c in cells if c["seconds"] is not None]
        wall = f"{statistics.mean(seconds):,.0f}" if seconds else "—"
        per_seed = ", ".join(
            f"{c['seed']}: {c['acc']:.2f}" for c in sorted(cells, key=lambda c: c["seed_number"])
        )
        lines.append(
            f"| {name} | {strength} | {_published(preset, name) if comparable else '—'} "
            f"| {_mean_sem(accs)} "
            f"(n={len(accs)}) | {wall} | {per_seed} |"
        )
    return "\n".join(lines + _environment_note(results))


def collect(directories: list[Path]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(strategy, λ) → [{"acc" (%), "seconds", "seed", "data", "environment"}] of every cell that
    trained all its tasks; "data" is (data set, subset?, fingerprint) from the run's
    ``config.json``, "environment" the `_environment` label of where it trained.

    A cell counts once its event log holds every task's row, even if its run was stopped before
    ``summary.json`` was written (a run of several strategies killed after the first); its wall
    time is then unknown (None).
    """
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for directory in directories:
        if not (directory / "config.json").is_file():
            continue
        recorded = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        config, data = recorded["config"], recorded.get("data", {})
        seen = (data.get("dataset"), bool(data.get("is_subset")), data.get("fingerprint"))
        summary_path = directory / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        where = _environment(recorded.get("environment"), summary.get("environment"))
        for events in sorted((directory / "cells").glob("*/events.jsonl")):
            rows = _task_rows(events)
            if not rows or len(rows) != len(rows[0]) + 1:
                continue
            seed, name = events.parent.name.split("-", 1)
            strength = config["strategies"].get(name, {}).get("strength")
            spent = summary.get("timings_s", {}).get(name)
            seconds = spent["training"] + spent["fisher"] if spent else None
            entry = {
                "acc": 100 * statistics.mean(rows[-1]),
                "seconds": seconds,
                "seed": seed,
                "seed_number": int(seed.removeprefix("seed")),
                "data": seen,
                "environment": where,
            }
            label = f"{strength:g}" if strength is not None else "—"
            results.setdefault((name, label), []).append(entry)
    return results


def _environment(started: dict[str, Any] | None, finished: dict[str, Any] | None) -> str:
    """``source git 1c8cab6…, torch 2.13.0+cpu, cpu …, cpu_capability AVX512, threads 1, device
    cpu``: a run's values of `ewc.experiment.environment.NUMERIC_KEYS`; "unrecorded" for run
    directories of versions that did not record them; a resume that changed one adds both sides.
    """
    if not started:
        return "unrecorded"
    label = ", ".join(f"{key} {started.get(key)}" for key in environment.NUMERIC_KEYS)
    changed = environment.differences(started, finished or {})
    return label + (f" (resumed: {'; '.join(changed)})" if changed else "")


def _environment_note(results: dict[tuple[str, str], list[dict[str, Any]]]) -> list[str]:
    """Lines under the table for each row whose seeds ran in more than one environment: their
    numbers are fair samples, but a seed rerun elsewhere will not repeat its bits."""
    lines = []
    for (name, strength), cells in sorted(results.items()):
        places: dict[str, list[str]] = {}
        for cell in sorted(cells, key=lambda c: c["seed_number"]):
            places.setdefault(cell["environment"], []).append(cell["seed"])
        if len(places) > 1:
            lines.append(f"{name} (λ {strength}) pools seeds of {len(places)} environments:")
            lines += [f"  {', '.join(seeds)}: {where}" for where, seeds in places.items()]
    return lines


def _task_rows(path: Path) -> list[list[float]]:
    """The accuracy rows of a cell's ``task_end`` events, in task order (row 0: untrained)."""
    rows: dict[int, list[float]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        if event.get("event") == "task_end":
            rows[event["task"]] = event["accuracies"]
    return [rows[k] for k in sorted(rows)] if list(rows) == list(range(len(rows))) else []


def _data_label(data: tuple[str | None, bool, str | None]) -> str:
    """``fashion-mnist``, ``mnist (subset)``, with the fingerprint's first digits."""
    dataset, subset, fingerprint = data
    return f"{dataset}{' (subset)' if subset else ''} [{(fingerprint or '?')[:8]}]"


def _published(preset: presets.Preset, name: str) -> str:
    value = preset.published.get(name)
    if not value:
        return "—"
    sem = value.get("sem")
    return f"{value['mean']:.2f}" + (f" ± {sem:.2f}" if sem is not None else "")


def _mean_sem(values: list[float]) -> str:
    """Mean ± SEM (sample standard deviation, n − 1) of percentages."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {statistics.stdev(values) / math.sqrt(len(values)):.2f}"


if __name__ == "__main__":
    sys.exit(main())
