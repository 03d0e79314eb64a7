"""The report's figures at one scale, in %, with ACC labels clear of the error bars; model text.

The run directories are the synthetic ones of ``test_report.write_run``.
"""

from __future__ import annotations

import itertools
import json
import struct
from pathlib import Path

import pytest

from ewc.report import FIGURES, load_run
from ewc.report.content import CNN_LAYERS, build_document, model_description
from ewc.report.figures import (
    _STYLE,
    DPI,
    WIDTH,
    curves_figure,
    final_accuracy_figure,
    matrices_figure,
    render_png,
)
from ewc.report.markdown import render_markdown
from report.test_report import write_run

FOUR = {
    "finetune": {},
    "l2": {"strength": 1.0},
    "ewc": {"strength": 100.0, "fisher": "exact"},
    "online-ewc": {"strength": 100.0, "fisher": "exact", "gamma": 0.9},
}


def png_header(png: bytes) -> tuple[int, int, float]:
    """Width and height in pixels, and the resolution in dots per inch (the pHYs chunk)."""
    width, height = struct.unpack(">II", png[16:24])
    at = png.index(b"pHYs")
    per_metre = struct.unpack(">I", png[at + 4 : at + 8])[0]
    return width, height, per_metre * 0.0254


def drawn(draw, run):
    """The figure ``draw(run)`` under the report's style, drawn, and its renderer."""
    from matplotlib import style

    with style.context(["default", _STYLE]):
        figure = draw(run)
        figure.canvas.draw()
    return figure, figure.canvas.get_renderer()


def set_acc(run_dir: Path, strategy: str, mean: float, sem: float) -> None:
    """Give ``strategy`` another ACC in summary.json."""
    path = run_dir / "summary.json"
    summary = json.loads(path.read_text())
    summary["strategies"][strategy]["ACC"].update(mean=mean, sem=sem)
    path.write_text(json.dumps(summary))


@pytest.mark.parametrize(("strategies", "tasks"), [(None, 3), (FOUR, 5), ({"ewc": {}}, 1)])
def test_every_figure_has_the_same_width_and_resolution(tmp_path, strategies, tasks):
    run = load_run(write_run(tmp_path / "run", strategies=strategies, num_tasks=tasks))
    headers = [png_header(render_png(draw, run)) for _, draw in FIGURES]
    assert {width for width, _, _ in headers} == {round(WIDTH * DPI)}
    assert all(abs(dpi - DPI) < 0.1 for _, _, dpi in headers)
    assert all(height >= 200 for _, height, _ in headers)


@pytest.mark.parametrize(("strategies", "tasks"), [(None, 3), (FOUR, 5), (FOUR, 12)])
def test_acc_labels_sit_above_their_error_bars_and_apart(tmp_path, strategies, tasks):
    run_dir = write_run(tmp_path / "run", strategies=strategies, num_tasks=tasks)
    set_acc(run_dir, "ewc", 0.995, 0.004)  # near the top: the label must still clear its bar
    figure, renderer = drawn(final_accuracy_figure, load_run(run_dir))
    ax = figure.axes[0]
    labels = [text for text in ax.texts if text.get_gid() == "acc-label"]
    assert len(labels) == len(strategies or ("finetune", "ewc"))
    tops = {}  # x of each error bar → the display y of its top
    for container in ax.containers:
        if hasattr(container, "has_yerr"):
            for (x, _), (_, y_top) in container.lines[2][0].get_segments():
                tops[round(float(x), 6)] = ax.transData.transform((x, y_top))[1]
    boxes = [label.get_window_extent(renderer) for label in labels]
    for label, box in zip(labels, boxes, strict=True):
        top = tops[round(float(label.xy[0]), 6)]
        gap = (box.y0 - top) * 72 / figure.dpi  # in points
        assert gap >= 3, f"{label.get_text()} sits on its error bar ({gap:.1f} pt above it)"
        assert ax.get_window_extent(renderer).contains(box.x0, box.y1)
    for left, right in itertools.pairwise(boxes):
        assert not left.overlaps(right), "two ACC labels overlap"


def test_the_heatmap_and_its_colour_bar_are_in_percent(tmp_path):
    run = load_run(write_run(tmp_path / "run"))
    figure, _ = drawn(matrices_figure, run)
    colour_bar = figure.axes[-1]
    assert colour_bar.get_ylim() == (0.0, 100.0)
    assert colour_bar.get_ylabel() == "test accuracy (%)"
    image = figure.axes[0].images[0]
    assert image.get_clim() == (0.0, 100.0)
    assert 50 < float(image.get_array().max()) <= 100
    cell = figure.axes[0].texts[-1].get_text()  # after the last task, on the last task
    assert float(cell) == pytest.approx(float(image.get_array()[-1, -1]), abs=0.05)


def test_curves_and_bars_are_in_percent(tmp_path):
    run = load_run(write_run(tmp_path / "run"))
    curves, _ = drawn(curves_figure, run)
    assert curves.axes[0].get_ylim() == (0.0, 100.0)
    assert curves.axes[0].get_ylabel() == "test accuracy (%)"
    assert max(max(line.get_ydata(), default=0) for line in curves.axes[0].lines) > 1
    bars, _ = drawn(final_accuracy_figure, run)
    assert bars.axes[0].get_ylabel().endswith("(%)")
    assert 1 < max(patch.get_height() for patch in bars.axes[0].patches) <= 100


def test_each_model_is_described_by_what_it_is():
    assert model_description({"name": "mlp", "hidden": [400, 400]}) == (
        "mlp, fully connected, hidden widths [400, 400] (ReLU)"
    )
    assert model_description({"name": "mlp", "hidden": []}) == (
        "mlp, no hidden layer (softmax regression)"
    )
    cnn = model_description({"name": "cnn", "hidden": [400, 400]})  # the cnn ignores hidden
    assert cnn == f"cnn, {CNN_LAYERS}"
    assert "400" not in cnn
    assert model_description({"name": "resnet", "depth": 18}) == "resnet (depth 18)"


def test_the_cnn_text_matches_the_cnn():
    from torch import nn

    from ewc.experiment.models import CNN

    layers = list(CNN().modules())
    channels = [m.out_channels for m in layers if isinstance(m, nn.Conv2d)]
    kernels = {m.kernel_size for m in layers if isinstance(m, nn.Conv2d)}
    pools = {m.kernel_size for m in layers if isinstance(m, nn.MaxPool2d)}
    hidden = [m.out_features for m in CNN().features if isinstance(m, nn.Linear)]
    assert (channels, kernels, pools, hidden) == ([32, 64], {(3, 3)}, {2}, [128])
    assert "two 3×3 convolutions of 32 and 64 channels" in CNN_LAYERS
    assert "2×2 max-pooling" in CNN_LAYERS
    assert "fully connected layer of 128" in CNN_LAYERS


def test_a_cnn_run_says_so_in_its_summary(tmp_path):
    run_dir = write_run(tmp_path / "run")
    header = json.loads((run_dir / "config.json").read_text())
    header["config"]["model"] = {"name": "cnn", "hidden": [400, 400]}
    (run_dir / "config.json").write_text(json.dumps(header))
    text = render_markdown(build_document(load_run(run_dir), {}))
    assert "Model: cnn, two 3×3 convolutions of 32 and 64 channels" in text
    assert "hidden \\[400, 400\\]" not in text.split("Reproducibility")[0]
