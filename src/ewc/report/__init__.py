"""The report of a run directory: three figures, one self-contained HTML page, one Markdown file.

``write_report(run_dir)`` reads what the runner wrote (config.json, metrics.jsonl, accuracy/*.csv,
summary.json) and writes, next to it::

    plots/curves.png          test accuracy of every task along training, one panel per strategy
    plots/matrices.png        the accuracy matrix R of each strategy as a heatmap
    plots/final_accuracy.png  accuracy on each task after the last one, and ACC, per strategy
    report.html               everything above in one file: figures inlined, no external resources
    report.md                 the same content in Markdown, figures linked as plots/*.png

It regenerates everything from the run's files each time, writes each output atomically, and
touches no other file. The same run gives the same bytes. A run stopped mid-way gets a report that
lists what is missing. Figures need matplotlib (the ``run`` extra), imported only when drawing.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ewc._atomic import write_bytes_atomic
from ewc.experiment.storage.rundir import RunDirectory
from ewc.report.content import build_document
from ewc.report.figures import curves_figure, final_accuracy_figure, matrices_figure, render_png
from ewc.report.html import render_html
from ewc.report.markdown import render_markdown
from ewc.report.run import Run, RunDirectoryError, load_run

__all__ = ["ReportPaths", "Run", "RunDirectoryError", "load_run", "write_report"]

# Each figure: its file name under plots/ (without .png) and the function that draws it.
FIGURES: tuple[tuple[str, Callable[[Run], Any]], ...] = (
    ("curves", curves_figure),
    ("matrices", matrices_figure),
    ("final_accuracy", final_accuracy_figure),
)


@dataclass(frozen=True)
class ReportPaths:
    """Where :func:`write_report` wrote the report."""

    html: Path
    markdown: Path
    curves: Path
    matrices: Path
    final_accuracy: Path

    @property
    def figures(self) -> tuple[Path, Path, Path]:
        """The three PNG figures."""
        return (self.curves, self.matrices, self.final_accuracy)


def write_report(
    run_dir: str | os.PathLike[str], *, out_dir: str | os.PathLike[str] | None = None
) -> ReportPaths:
    """Write the figures, report.html and report.md of the run in ``run_dir``.

    Args:
        run_dir: a run directory written by the runner; finished or not.
        out_dir: where to write the report; default ``run_dir``. Created if needed.

    Returns:
        The paths written.

    Raises:
        RunDirectoryError: ``run_dir`` is not a directory or has no readable config.json.
        ModuleNotFoundError: matplotlib is not installed (``pip install 'ewc[run]'``).
    """
    _require_matplotlib()
    run = load_run(run_dir)
    out = RunDirectory(out_dir if out_dir is not None else run.directory)
    out.plots_dir.mkdir(parents=True, exist_ok=True)
    links = {name: out.figure_path(name).relative_to(out.path).as_posix() for name, _ in FIGURES}
    images: dict[str, bytes] = {}
    for name, draw in FIGURES:
        images[links[name]] = png = render_png(draw, run)
        write_bytes_atomic(out.figure_path(name), png)
    document = build_document(run, links)
    write_bytes_atomic(out.report_html_path, render_html(document, images.__getitem__).encode())
    write_bytes_atomic(out.report_markdown_path, render_markdown(document).encode())
    return ReportPaths(
        html=out.report_html_path,
        markdown=out.report_markdown_path,
        curves=out.figure_path("curves"),
        matrices=out.figure_path("matrices"),
        final_accuracy=out.figure_path("final_accuracy"),
    )


def _require_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise ModuleNotFoundError(
            "the report's figures need matplotlib, which is not installed; "
            "install it with `pip install 'ewc[run]'` (or `pip install matplotlib`)",
            name="matplotlib",
        )
