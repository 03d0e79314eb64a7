"""The report's three figures: training curves, accuracy matrices, final accuracy per task.

matplotlib is imported inside the functions, so that ``import ewc`` never needs it (it is the
``run`` extra). Figures are built as :class:`matplotlib.figure.Figure` objects on the Agg canvas,
never through pyplot, so no backend or global figure state is touched. PNGs are saved without
the ``Software`` metadata, so that the same run gives the same bytes on every regeneration.

Every figure is :data:`WIDTH` inches wide and saved at :data:`DPI`, so the three PNGs have the same
width in pixels: shown at the page's width they come out at one scale, with the same font size.
Accuracies are drawn in % (0–100), as the report's tables write them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ewc.report.aggregate import Span, curves, final_accuracies, mean_matrix, spans
from ewc.report.rows import finite
from ewc.report.run import Run
from ewc.report.text import hyperparameters, section, strategy_settings

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 150
"""Resolution of every figure, in dots per inch."""
WIDTH = 10.0
"""Width of every figure, in inches (1,500 pixels at :data:`DPI`)."""
_STYLE = {
    "font.size": 9,
    "axes.titlesize": 9.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.35,
    "grid.linewidth": 0.6,
    "legend.frameon": False,
}


def render_png(draw: Callable[[Run], Figure], run: Run) -> bytes:
    """PNG bytes of the figure ``draw(run)`` returns, drawn with the report's style.

    The style starts from matplotlib's defaults, not the user's matplotlibrc, so that a report
    looks (and hashes) the same on every machine with the same matplotlib.
    """
    from matplotlib import style

    with style.context(["default", _STYLE]):
        figure = draw(run)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def blank_figure(height: float) -> Figure:
    """An empty figure :data:`WIDTH` wide and ``height`` inches high, on the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _panels(figure: Figure, count: int, **kwargs: Any) -> list[Axes]:
    """``count`` axes in the grid of :func:`_grid_size`; the unused cells are hidden."""
    columns, rows = _grid_size(count)
    grid = figure.subplots(rows, columns, squeeze=False, **kwargs)
    axes = list(grid.flat)
    for unused in axes[count:]:
        unused.set_visible(False)
    return axes[:count]


def _grid_size(count: int) -> tuple[int, int]:
    """(columns, rows) of a grid of ``count`` panels: one row up to 3, then 2 × 2, then 3 wide."""
    columns = 2 if count == 4 else max(1, min(count, 3))
    return columns, math.ceil(max(count, 1) / columns)


def task_colours(num_tasks: int) -> list[Any]:
    """One colour per task, the same on every panel: tab10, or a continuous map past 10 tasks."""
    from matplotlib import colormaps

    if num_tasks <= 10:
        return list(colormaps["tab10"].colors[:num_tasks])
    return [colormaps["viridis"](k / (num_tasks - 1)) for k in range(num_tasks)]


def strategy_colours(count: int) -> list[Any]:
    """One colour per strategy, from a palette unlike the task colours."""
    from matplotlib import colormaps

    palette = colormaps["Dark2"].colors
    return [palette[k % len(palette)] for k in range(count)]


def plain_text(text: str) -> str:
    """``text`` with its dollar signs escaped, so that matplotlib never reads it as math."""
    return text.replace("$", r"\$")


def _empty(figure: Figure, message: str) -> Figure:
    figure.text(0.5, 0.5, message, ha="center", va="center", color="0.4")
    return figure


def _title(run: Run, strategy: str) -> str:
    return f"{strategy}\n{hyperparameters(strategy_settings(run.config, strategy))}"


def curves_figure(run: Run) -> Figure:
    """Test accuracy of every task along training, one panel per strategy (Kirkpatrick Fig. 2A)."""
    columns, rows = _grid_size(len(run.strategies))
    figure = blank_figure(3.0 * rows + 0.9)
    if not run.strategies or not run.num_tasks:
        return _empty(figure, "no evaluations yet")
    axes = _panels(figure, len(run.strategies), sharex=True, sharey=True)
    colours = task_colours(run.num_tasks)
    for ax, strategy in zip(axes, run.strategies, strict=True):
        _curves_panel(ax, run, strategy, colours)
    for index, ax in enumerate(axes):
        if index + columns >= len(axes):  # no panel below: this one shows the step axis
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("training step (optimizer updates)")
        if index % columns == 0:
            ax.set_ylabel("test accuracy (%)")
    _task_legend(figure, run.tasks, colours)
    return figure


def _curves_panel(ax: Axes, run: Run, strategy: str, colours: Sequence[Any]) -> None:
    trained = spans(run, strategy)
    _mark_spans(ax, trained, run.num_tasks)
    drawn = False
    for curve in curves(run, strategy):
        if not curve.steps:
            continue
        colour = colours[curve.task - 1]
        marker = "." if len(curve.steps) <= 40 else None  # dots only while they stay apart
        mean = [100 * m for m in curve.mean]
        ax.plot(curve.steps, mean, color=colour, lw=1.5, marker=marker, ms=3)
        if all(s is not None for s in curve.sem) and len(curve.steps) > 1:
            low = [m - 100 * s for m, s in zip(mean, curve.sem, strict=True)]
            high = [m + 100 * s for m, s in zip(mean, curve.sem, strict=True)]
            ax.fill_between(curve.steps, low, high, color=colour, alpha=0.2, lw=0)
        drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no evaluations yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(0, 100)
    ax.set_xlim(left=0)
    ax.set_title(_title(run, strategy), pad=14, parse_math=False)


def _mark_spans(ax: Axes, trained: Sequence[Span], num_tasks: int) -> None:
    """Dashed lines between tasks, shading on every other task, ``train task k`` above each."""
    from matplotlib.transforms import blended_transform_factory

    above = blended_transform_factory(ax.transData, ax.transAxes)
    label = "train task {}" if num_tasks <= 4 else "task {}" if num_tasks <= 7 else "{}"
    for span in trained:
        if span.task % 2 == 0:
            ax.axvspan(span.start, span.end, color="0.5", alpha=0.08, lw=0)
        if span.finished and span.task < num_tasks:
            ax.axvline(span.end, color="0.35", ls="--", lw=0.9)
        text = label.format(span.task) + ("" if span.finished else " …")
        middle = (span.start + span.end) / 2
        ax.text(
            middle,
            1.01,
            text,
            transform=above,
            ha="center",
            va="bottom",
            fontsize=7.5,
            color="0.3",
            parse_math=False,
        )


def _task_legend(figure: Figure, tasks: Sequence[str], colours: Sequence[Any]) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=colour, lw=2, label=plain_text(f"task {k}: {name}"))
        for k, (name, colour) in enumerate(zip(tasks, colours, strict=True), start=1)
    ]
    # As many columns as fit the figure's width (about 0.075 inch per character at 9 pt).
    entry = 0.7 + 0.075 * max(len(h.get_label()) for h in handles)
    columns = max(1, min(len(handles), int(figure.get_figwidth() / entry)))
    figure.legend(handles=handles, loc="outside lower center", ncols=columns)


def matrices_figure(run: Run) -> Figure:
    """The seed-mean accuracy matrix R of each strategy, as annotated heatmaps."""
    size = run.num_tasks
    rows = _grid_size(len(run.strategies))[1]
    figure = blank_figure(rows * (0.34 * (size + 1) + 1.1))
    if not run.strategies or not size:
        return _empty(figure, "no accuracy matrix yet")
    axes = _panels(figure, len(run.strategies))
    image = None
    for ax, strategy in zip(axes, run.strategies, strict=True):
        image = _heatmap(ax, mean_matrix(run, strategy), size)
        ax.set_title(strategy, parse_math=False)
    figure.colorbar(image, ax=axes, shrink=0.85, label="test accuracy (%)")
    return figure


def _heatmap(ax: Axes, matrix: Sequence[Sequence[float | None]], size: int) -> Any:
    import numpy as np
    from matplotlib.patches import Rectangle

    values = np.array([[math.nan if v is None else 100 * v for v in row] for row in matrix])
    image = ax.imshow(np.ma.masked_invalid(values), vmin=0, vmax=100, cmap="viridis", aspect="auto")
    ax.set_facecolor("0.92")
    ax.grid(False)
    digits = 1 if size <= 6 else 0
    annotate = size <= 15  # past that the numbers are unreadable; the report's tables have them
    for (i, j), value in np.ndenumerate(values):
        if annotate:
            text = "—" if math.isnan(value) else f"{value:.{digits}f}"
            colour = "0.3" if math.isnan(value) else "white" if value < 60 else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=7.5, color=colour)
        if i == j + 1 and not math.isnan(value):  # R[j, j]: the reference of BWT and forgetting
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="0.1", lw=1.2))
    ax.set_xticks(range(size), [str(j) for j in range(1, size + 1)])
    ax.set_yticks(range(size + 1), ["untrained", *(f"after {i}" for i in range(1, size + 1))])
    ax.set_xlabel("test task")
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return image


def final_accuracy_figure(run: Run) -> Figure:
    """Accuracy on each task after the last one, and the average ACC, per strategy (± SEM)."""
    size, count = run.num_tasks, len(run.strategies)
    figure = blank_figure(3.8)
    if not count or not size:
        return _empty(figure, "no final accuracies yet")
    from matplotlib.patches import Patch

    ax = figure.subplots()
    handles, top = [], 100.0
    colours = strategy_colours(count)
    # A level label ("94.1" at 7 pt) needs about 0.3 inch; narrower bars get it turned by 90°.
    turned = 0.8 / count * (WIDTH - 1.0) / (size + 1) < 0.3
    for k, strategy in enumerate(run.strategies):
        colour = colours[k]
        offset = (k - (count - 1) / 2) * 0.8 / count
        bars = [(s.mean, s.sem) if s else None for s in final_accuracies(run, strategy)]
        bars.append(_summary_acc(run, strategy))
        bars = [None if bar is None else _in_percent(*bar) for bar in bars]
        _bars(ax, [x + offset for x in range(size + 1)], bars, 0.8 / count, colour, turned)
        top = max([top, *(mean + (sem or 0.0) for mean, sem in filter(None, bars))])
        label = strategy if any(bars) else f"{strategy} (not finished)"
        handles.append(Patch(color=colour, label=plain_text(label)))
    if run.summary is None:
        ax.text(size, 50, "summary.json\nmissing", ha="center", va="center", fontsize=8)
    ax.axvline(size - 0.5, color="0.5", lw=0.8)
    ax.set_xticks(range(size + 1), [*(f"task {j}" for j in range(1, size + 1)), "ACC"])
    ax.set_xlim(-0.5, size + 0.5)
    ax.set_ylim(0, 1.16 * top)  # room for the ACC labels above the highest error bar
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("test accuracy after the last task (%)")
    ax.grid(axis="x", visible=False)
    figure.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 5))
    return figure


def _in_percent(mean: float, sem: float | None) -> tuple[float, float | None]:
    return 100 * mean, None if sem is None else 100 * sem


def _summary_acc(run: Run, strategy: str) -> tuple[float, float | None] | None:
    """ACC of ``strategy`` (mean, SEM) from summary.json; None before the run has finished."""
    acc = section(section(run.summary, "strategies"), strategy).get("ACC")
    mean = finite(acc.get("mean")) if isinstance(acc, dict) else None
    return None if mean is None else (mean, finite(acc.get("sem")))


def _bars(
    ax: Axes,
    xs: Sequence[float],
    bars: Sequence[tuple[float, float | None] | None],
    width: float,
    colour: Any,
    turned: bool,
) -> None:
    """Bars where a value exists, error bars where it has a SEM, the ACC value written above.

    The ACC label sits 4 points above the top of its error bar (or of its bar), so it never
    covers the error bar; ``turned`` writes it rotated by 90° (for narrow bars).
    """
    shown = [(x, bar) for x, bar in zip(xs, bars, strict=True) if bar is not None]
    ax.bar([x for x, _ in shown], [bar[0] for _, bar in shown], width * 0.92, color=colour)
    with_sem = [(x, bar) for x, bar in shown if bar[1] is not None]
    if with_sem:
        ax.errorbar(
            [x for x, _ in with_sem],
            [bar[0] for _, bar in with_sem],
            yerr=[bar[1] for _, bar in with_sem],
            fmt="none",
            ecolor="0.15",
            elinewidth=0.9,
            capsize=2.5,
        )
    acc = bars[-1]
    if acc is not None:
        ax.annotate(
            f"{acc[0]:.1f}",
            (xs[-1], acc[0] + (acc[1] or 0.0)),
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=7,
            rotation=90 if turned else 0,
            gid="acc-label",
        )
