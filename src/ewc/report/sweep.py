"""The report of a sweep directory: the objective against each numeric searched key, and a table.

``write_sweep_report(sweep_dir)`` reads ``trials.json`` (written by ``ewc sweep``; plain data, so
this module needs no optuna) and writes::

    plots/<metric>-vs-<key>.png   the sweep strategy's metric (mean ± SEM over each trial's seeds)
                                  against a numeric searched key, e.g. ACC against
                                  strategies.ewc.strength (log axis for a log range); one line
                                  per combination of the other finite keys (e.g. per Fisher kind)
    report.md                     the best trial, the figures and results.md's table

Figures use the run report's style and canvas (`ewc.report.figures`), so they look the same.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ewc._atomic import write_bytes_atomic, write_text_atomic
from ewc.report.figures import blank_figure, plain_text, render_png, strategy_colours

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: One point of a line: (x, mean, SEM or None).
Point = tuple[float, float, float | None]


def write_sweep_report(sweep_dir: str | os.PathLike[str]) -> Path:
    """Write the sweep's figures and report.md; return the path of report.md.

    Raises:
        ValueError: ``sweep_dir`` has no trials.json (no worker has finished there yet).
    """
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / "trials.json"
    if not path.is_file():
        raise ValueError(f"{sweep_dir} has no trials.json; run `ewc sweep` there first")
    record = json.loads(path.read_text(encoding="utf-8"))
    figures = []
    (sweep_dir / "plots").mkdir(exist_ok=True)
    for dimension in record["dimensions"]:
        if not dimension["numeric"]:
            continue
        name = f"{record['objective']}-vs-{_slug(dimension['key'])}.png"
        series = metric_series(record, dimension["key"])
        # render_png passes its second argument to the drawing function
        png = render_png(lambda args: sweep_figure(*args), (record, dimension, series))
        write_bytes_atomic(sweep_dir / "plots" / name, png)
        figures.append((dimension["key"], f"plots/{name}"))
    report = sweep_dir / "report.md"
    write_text_atomic(report, _markdown(record, figures, sweep_dir))
    return report


def metric_series(record: Mapping[str, Any], key: str) -> dict[str, list[Point]]:
    """The objective's points against ``key``, one line per value of the other finite keys."""
    others = [d["key"] for d in record["dimensions"] if d["key"] != key and d["finite"]]
    series: dict[str, list[Point]] = {}
    for trial in record["trials"]:
        stat = (trial["metrics"] or {}).get(record["objective"]) or {}
        if trial["state"] != "complete" or stat.get("mean") is None:
            continue
        label = ", ".join(f"{k.rsplit('.', 1)[-1]}={trial['params'][k]}" for k in others)
        point = (float(trial["params"][key]), stat["mean"], stat.get("sem"))
        series.setdefault(label, []).append(point)
    return {label: sorted(points) for label, points in sorted(series.items())}


def sweep_figure(
    record: Mapping[str, Any], dimension: Mapping[str, Any], series: Mapping[str, Sequence[Point]]
) -> Figure:
    """The objective (mean ± SEM over seeds) against one numeric key, one line per series."""
    figure = blank_figure(3.8)
    ax = figure.subplots()
    for colour, (label, points) in zip(strategy_colours(len(series)), series.items(), strict=True):
        xs, means = [p[0] for p in points], [p[1] for p in points]
        sems = [p[2] or 0.0 for p in points]
        ax.errorbar(xs, means, yerr=sems, color=colour, marker="o", ms=4, capsize=3,
                    label=plain_text(label) if label else None)  # fmt: skip
    if dimension["log"]:
        ax.set_xscale("log")
    ax.set_xlabel(plain_text(dimension["key"]))
    ax.set_ylabel(f"{record['objective']} of {plain_text(record['strategy'])} (mean ± SEM)")
    ax.set_title(
        plain_text(f"{record['strategy']}: {record['objective']} against {dimension['key']}")
    )
    if any(series):
        ax.legend()
    if not series:
        ax.text(0.5, 0.5, "no complete trial yet", ha="center", va="center", color="0.4",
                transform=ax.transAxes)  # fmt: skip
    return figure


def _markdown(record: Mapping[str, Any], figures: list[tuple[str, str]], sweep_dir: Path) -> str:
    lines = [f"# Sweep: {record['strategy']}, {record['objective']} ({record['direction']})", ""]
    best = next((t for t in record["trials"] if t["number"] == record["best"]), None)
    if best is None:
        lines.append("No trial has completed yet.")
    else:
        params = ", ".join(f"`{k} = {v}`" for k, v in best["params"].items())
        lines.append(f"Best: trial {best['number']} with {params}; config in `best.toml` "
                     "(`ewc run --config best.toml`).")  # fmt: skip
    for key, path in figures:
        lines += ["", f"![{record['objective']} against {key}]({path})"]
    table = sweep_dir / "results.md"
    if table.is_file():
        lines += ["", table.read_text(encoding="utf-8").rstrip()]
    return "\n".join(lines) + "\n"


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", key).strip("-")
