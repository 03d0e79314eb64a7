"""The report of a run directory: figures, a self-contained HTML page, Markdown, partial runs."""

from __future__ import annotations

import base64
import json
import math
import re
import statistics
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from ewc.report import ReportPaths, RunDirectoryError, load_run, write_report
from ewc.report.aggregate import curves, spans

STEPS_PER_TASK = 100
EVAL_EVERY = 25
STRATEGIES = {"finetune": {}, "ewc": {"strength": 100.0, "fisher": "exact", "fisher_samples": 500}}
METRICS = {  # what the runner would compute with ewc.experiment.metrics; the report only shows them
    "finetune": {
        "ACC": (0.6543, 0.0123),
        "BWT": (-0.3141, 0.0059),
        "FWT": (0.0012, 0.0007),
        "forgetting": (0.3322, 0.0044),
    },
    "ewc": {
        "ACC": (0.9187, 0.0021),
        "BWT": (-0.0345, 0.0011),
        "FWT": (0.0008, 0.0003),
        "forgetting": (0.0402, 0.0015),
    },
}


def accuracy(strategy: str, seed: int, task: int, time: float) -> float:
    """Synthetic test accuracy on ``task`` after ``time`` tasks of training (a float).

    A task rises from chance while it is trained, then decays: fast without a penalty, slowly
    with one. Each seed is shifted a little so that seed means and SEMs are not trivial.
    """
    shift = 0.01 * seed
    if time <= task - 1:
        return 0.1 + shift
    peak = 0.1 + 0.86 * (1 - math.exp(-5 * min(time - (task - 1), 1.0))) + shift
    drop = 0.35 if strategy == "finetune" else 0.04
    return peak - drop * (1 - math.exp(-1.5 * max(time - task, 0.0)))


def matrix(strategy: str, seed: int, num_tasks: int) -> list[list[float]]:
    """R of the synthetic run: row 0 untrained, row i after task i."""
    return [
        [round(accuracy(strategy, seed, j, i), 4) for j in range(1, num_tasks + 1)]
        for i in range(num_tasks + 1)
    ]


def events(strategy: str, seed: int, num_tasks: int, tasks_done: int) -> list[dict]:
    """The eval / task_end / train events of one (seed, strategy), ``tasks_done`` tasks trained."""
    untrained = [round(accuracy(strategy, seed, j, 0.0), 4) for j in range(1, num_tasks + 1)]
    base = {"seed": seed, "strategy": strategy, "task": 0, "step": 0}
    out = [{"event": "task_end", **base, "accuracies": untrained}]  # row 0 of R
    for task in range(1, tasks_done + 1):
        first = (task - 1) * STEPS_PER_TASK + EVAL_EVERY
        for step in range(first, task * STEPS_PER_TASK + 1, EVAL_EVERY):
            time = step / STEPS_PER_TASK
            row = [round(accuracy(strategy, seed, j, time), 4) for j in range(1, num_tasks + 1)]
            base = {"seed": seed, "strategy": strategy, "task": task, "step": step}
            out.append({"event": "train", **base, "loss": 0.3, "penalty": 0.01})
            out.append({"event": "eval", **base, "accuracies": row})
        out.append({"event": "task_end", **base, "accuracies": row})
    return out


def write_run(
    directory: Path,
    *,
    strategies: dict | None = None,
    seeds: tuple[int, ...] = (0, 1),
    num_tasks: int = 3,
    is_subset: bool = True,
    finished: bool = True,
    tasks_done: dict[str, int] | None = None,
    notes: tuple[str, ...] = ("gradient norm spiked at step 120; continued",),
) -> Path:
    """A run directory as the runner writes it, with synthetic numbers.

    ``tasks_done`` stops a strategy after that many tasks; ``finished=False`` leaves out
    summary.json, as a run killed mid-way does.
    """
    strategies = STRATEGIES if strategies is None else strategies
    directory.mkdir(parents=True, exist_ok=True)
    header = run_header(strategies, seeds, num_tasks, is_subset)
    (directory / "config.json").write_text(json.dumps(header, indent=2), encoding="utf-8")
    lines = []
    (directory / "accuracy").mkdir(exist_ok=True)
    for seed in seeds:
        for strategy in strategies:
            done = (tasks_done or {}).get(strategy, num_tasks)
            lines += events(strategy, seed, num_tasks, done)
            rows = matrix(strategy, seed, num_tasks)[: done + 1]
            write_matrix_csv(directory / "accuracy" / f"seed{seed}_{strategy}.csv", rows, num_tasks)
        lines += [{"event": "note", "seed": seed, "strategy": "ewc", "message": m} for m in notes]
    lines.append({"event": "future_event_kind", "payload": [1, 2, 3]})
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (directory / "metrics.jsonl").write_text(text, encoding="utf-8")
    if finished:
        write_summary(directory, strategies, seeds, num_tasks)
    return directory


def run_header(strategies: dict, seeds: tuple[int, ...], num_tasks: int, is_subset: bool) -> dict:
    """The content of config.json."""
    benchmark = {"name": "permuted", "dataset": "mnist", "source": "embedded"}
    training = {"optimizer": "adam", "lr": 0.001, "batch_size": 128, "epochs": 1}
    config = {
        "benchmark": {**benchmark, "num_tasks": num_tasks, "scenario": "domain"},
        "model": {"name": "mlp", "hidden": [400, 400]},
        "training": {**training, "eval_every": EVAL_EVERY},
        "strategies": {**strategies, "l2": {"strength": 1.0}},  # defined, but not compared
        "compare": list(strategies),
        "seeds": list(seeds),
    }
    source = (
        "embedded subset of the MNIST test set (8000 train / 2000 test, index % 5 == 4 → test)"
        if is_subset
        else "MNIST from /data/mnist (md5 verified)"
    )
    return {
        "config": config,
        "versions": {"ewc": "0.1.0", "torch": "2.13.0", "python": "3.11.7"},
        "config_hash": "ab" * 32,
        "data": {"dataset": "mnist", "source": source, "is_subset": is_subset},
        "tasks": [f"permutation {k}" for k in range(1, num_tasks + 1)],
    }


def write_matrix_csv(path: Path, rows: list[list[float]], num_tasks: int) -> None:
    header = ",".join(["after", *(f"task {j}" for j in range(1, num_tasks + 1))])
    labels = ["untrained", *(f"task {i}" for i in range(1, num_tasks + 1))]
    body = [",".join([labels[i], *(str(v) for v in row)]) for i, row in enumerate(rows)]
    path.write_text("\n".join([header, *body]) + "\n", encoding="utf-8")


def write_summary(directory: Path, strategies: dict, seeds: tuple[int, ...], num_tasks: int):
    def metric(mean: float, sem: float) -> dict:
        return {
            "mean": mean,
            "sem": sem if len(seeds) > 1 else math.nan,
            "values": [mean] * len(seeds),
        }

    summary = {
        "scenario": "domain",
        "benchmark": "permuted",
        "wall_time_s": 95.2,
        "strategies": {
            s: {name: metric(*value) for name, value in METRICS.get(s, METRICS["ewc"]).items()}
            for s in strategies
        },
        "matrices": {
            s: [
                [
                    sum(matrix(s, seed, num_tasks)[i][j] for seed in seeds) / len(seeds)
                    for j in range(num_tasks)
                ]
                for i in range(num_tasks + 1)
            ]
            for s in strategies
        },
    }
    (directory / "summary.json").write_text(json.dumps(summary), encoding="utf-8")


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG, after checking its signature and the CRC of its header chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR"
    assert struct.unpack(">I", data[16 + length : 20 + length])[0] == zlib.crc32(
        data[12 : 16 + length]
    )
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, ReportPaths]:
    run_dir = write_run(tmp_path_factory.mktemp("finished") / "run")
    return run_dir, write_report(run_dir)


@pytest.fixture(scope="module")
def full_one_seed(tmp_path_factory) -> ReportPaths:
    """One seed, the full data set, and online EWC with the runner's defaults."""
    run_dir = tmp_path_factory.mktemp("full_one_seed") / "run"
    online = {"strength": 100.0, "gamma": 0.9, "fisher": "sample", "fisher_samples": None}
    strategies = {"finetune": {}, "online-ewc": online}
    return write_report(write_run(run_dir, strategies=strategies, seeds=(0,), is_subset=False))


def html_of(paths: ReportPaths) -> str:
    return paths.html.read_text(encoding="utf-8")


def markdown_of(paths: ReportPaths) -> str:
    return paths.markdown.read_text(encoding="utf-8")


def test_the_three_figures_are_valid_pngs_of_a_readable_size(finished):
    _, paths = finished
    for path in paths.figures:
        width, height = png_size(path)
        assert 600 <= width <= 4000, path
        assert 300 <= height <= 3000, path
        assert path.stat().st_size > 10_000, f"{path} looks empty"


def test_the_html_is_one_self_contained_file(finished):
    _, paths = finished
    html = html_of(paths)
    for external in ('src="http', "<script", "<link", "@import", "url(", "http://", "https://"):
        assert external not in html
    images = html.split('src="data:image/png;base64,')[1:]
    assert len(images) == 3
    embedded = [base64.b64decode(image.split('"', 1)[0]) for image in images]
    assert embedded == [path.read_bytes() for path in paths.figures]


def test_the_html_shows_the_metrics_of_the_summary_as_mean_plus_minus_sem(finished):
    _, paths = finished
    html = html_of(paths)
    for cell in (
        "65.43 ± 1.23",
        "-31.41 ± 0.59",
        "0.12 ± 0.07",
        "33.22 ± 0.44",
        "91.87 ± 0.21",
        "-3.45 ± 0.11",
        "4.02 ± 0.15",
    ):
        assert f"<td>{cell}</td>" in html
    assert "λ = 100 · exact Fisher, n = 500" in html
    assert "domain-incremental" in html
    assert "ab" * 32 in html  # the config hash
    assert "<td>2.13.0</td>" in html  # the versions
    assert "<td>95.9</td>" in html  # the accuracy matrix, seed mean, in %
    assert "gradient norm spiked at step 120" in html  # the runner's note


def test_the_conventions_give_the_formulas_of_the_references(finished):
    _, paths = finished
    markdown = markdown_of(paths)
    for formula in (
        "(λ/2) Σ_i F_i (θ_i − θ*_i)²",
        "ACC = (1/T) Σ_j R[T, j]",
        "BWT = (1/(T−1)) Σ_{j<T} (R[T, j] − R[j, j])",
        "FWT = (1/(T−1)) Σ_{j≥2} (R[j−1, j] − b_j)",
        "max_{j≤l<k} R[l, j] − R[k, j]",
        "F ← γ F_old + F_new",
    ):
        assert f"`{formula}`" in markdown
    assert "<code>BWT = (1/(T−1)) Σ_{j&lt;T} (R[T, j] − R[j, j])</code>" in html_of(paths)
    assert "| ewc | EWC | 100 | exact | 500 | separate | — |" in markdown
    assert "| finetune | none | — | — | — | — | — |" in markdown
    assert "| l2 |" not in markdown  # defined in the config but not compared


def test_the_markdown_has_the_tables_and_links_the_figures(finished):
    _, paths = finished
    markdown = markdown_of(paths)
    assert "| Strategy | ACC | BWT | FWT | forgetting | Seeds |" in markdown
    assert (
        "| finetune | 65.43 ± 1.23 | -31.41 ± 0.59 | 0.12 ± 0.07 | 33.22 ± 0.44 | 2 |" in markdown
    )
    assert "| after task 3 | 92.1 | 92.8 | 95.9 |" in markdown
    for name in ("curves", "matrices", "final_accuracy"):
        assert f"](plots/{name}.png)" in markdown
    assert "data:image" not in markdown


def test_a_subset_is_announced_and_full_data_is_not(finished, full_one_seed):
    subset = html_of(finished[1])
    assert "Subset of the data" in subset
    assert "results are not comparable to numbers published on the full MNIST" in subset
    assert "not comparable" not in html_of(full_one_seed)
    assert "not comparable" not in markdown_of(full_one_seed)
    assert "Data: MNIST from /data/mnist (md5 verified)." in html_of(full_one_seed)


def test_one_seed_shows_no_plus_minus(full_one_seed):
    markdown = markdown_of(full_one_seed)
    assert "| finetune | 65.43 | -31.41 | 0.12 | 33.22 | 1 |" in markdown
    assert "One seed: no error bands." in markdown


def test_online_ewc_shows_its_decay_and_fisher(full_one_seed):
    markdown = markdown_of(full_one_seed)
    row = "| online-ewc | online EWC | 100 | sample | all training inputs | online | 0.9 |"
    assert row in markdown
    assert "`sample`: `F_i = (1/N) Σ_n (1/k)" in markdown
    assert "λ = 100 · sample Fisher · γ = 0.9" in markdown


def test_an_online_l2_shows_its_mode_and_gamma(tmp_path):
    latest = {"type": "l2", "strength": 0.02, "mode": "online", "gamma": 0.0}
    strategies = {"finetune": {}, "l2-latest": latest}
    markdown = markdown_of(write_report(write_run(tmp_path / "run", strategies=strategies)))
    assert "| l2-latest | L2 | 0.02 | F = 1 | — | online | 0 |" in markdown


def test_user_strings_are_escaped_in_html_and_markdown(tmp_path):
    evil = "<script>alert('x')"
    math_like = r"a$\frac$b"  # matplotlib would read it as bad math and fail to draw
    strategies = {
        evil: {"strength": 1.0},
        math_like: {},
        "ewc": {"strength": 1.0, "fisher": "exact"},
    }
    notes = ("diverged <script>alert(1)</script> & stopped | `rm` *now*",)
    run_dir = write_run(tmp_path / "run", strategies=strategies, seeds=(0,), notes=notes)
    paths = write_report(run_dir)
    html, markdown = html_of(paths), markdown_of(paths)
    assert "<script" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)" in html
    assert "diverged &lt;script&gt;alert(1)&lt;/script&gt; &amp; stopped" in html
    prose = markdown.split("```json")[0]  # the config's code block shows the names verbatim
    assert re.search(r"(?<!\\)<script", prose) is None
    assert "\\<script\\>alert('x')" in prose
    assert r"diverged \<script\>alert(1)\</script\> & stopped \| \`rm\` \*now\*" in markdown
    assert "a$\\frac$b" in html


def test_regenerating_gives_the_same_bytes_and_touches_nothing_else(tmp_path):
    run_dir = write_run(tmp_path / "run")
    (run_dir / "plots").mkdir()
    (run_dir / "plots" / "mine.txt").write_text("a file of the user's")
    inputs = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    first = write_report(run_dir)
    outputs = {p: p.read_bytes() for p in (first.html, first.markdown, *first.figures)}
    second = write_report(run_dir)
    assert second == first
    assert {p: p.read_bytes() for p in outputs} == outputs
    assert {p: p.read_bytes() for p in inputs} == inputs
    assert {p for p in run_dir.rglob("*") if p.is_file()} == set(inputs) | set(outputs)


def test_the_report_can_go_to_another_folder(tmp_path):
    run_dir = write_run(tmp_path / "run", seeds=(0,))
    paths = write_report(run_dir, out_dir=tmp_path / "elsewhere" / "report")
    assert paths.html == tmp_path / "elsewhere" / "report" / "report.html"
    assert all(path.is_file() for path in (paths.html, paths.markdown, *paths.figures))
    assert not (run_dir / "report.html").exists()


def test_a_run_stopped_midway_still_gets_a_report_that_says_what_is_missing(tmp_path):
    run_dir = write_run(tmp_path / "run", finished=False, tasks_done={"ewc": 1})
    with (run_dir / "metrics.jsonl").open("a") as file:
        file.write('{"event": "eval", "seed": 0, "strategy": "ew')  # killed mid-write
    paths = write_report(run_dir)
    html, markdown = html_of(paths), markdown_of(paths)
    for text in (
        "summary.json is missing",
        "Strategy ewc: seed 0 finished 1 of 3 tasks",
        "is not valid JSON (cut short?)",
        "No metrics yet",
    ):
        assert text in html
        assert text in markdown
    assert "| after task 2 | — | — | — |" in markdown
    assert "| after task 3 | 62.7 | 68.7 | 95.9 |" in markdown  # finetune finished
    for path in paths.figures:
        png_size(path)


def test_a_run_with_only_a_config_gets_a_report(tmp_path):
    run_dir = write_run(tmp_path / "run", finished=False)
    (run_dir / "metrics.jsonl").unlink()
    for path in (run_dir / "accuracy").iterdir():
        path.unlink()
    paths = write_report(run_dir)
    assert "metrics.jsonl is missing" in html_of(paths)
    assert "seed 1 has no results yet" in html_of(paths)


def test_a_malformed_matrix_file_is_reported_and_the_events_used(tmp_path):
    run_dir = write_run(tmp_path / "run", seeds=(0,))
    (run_dir / "accuracy" / "seed0_ewc.csv").write_text("after,task 1\nuntrained,0.1\n")
    run = load_run(run_dir)
    assert any(
        "seed0_ewc.csv ignored: the header has 1 tasks but the run has 3" in p for p in run.problems
    )
    assert run.pairs[0, "ewc"].rows[3] == tuple(matrix("ewc", 0, 3)[3])  # from task_end


def test_a_directory_without_config_is_a_clear_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(RunDirectoryError, match=r"has no config\.json") as error:
        write_report(tmp_path)
    assert str(tmp_path) in str(error.value)
    assert isinstance(error.value, ValueError)
    with pytest.raises(RunDirectoryError, match="does not exist"):
        load_run(tmp_path / "absent")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(RunDirectoryError, match=r"config\.json is not valid JSON"):
        load_run(tmp_path)


def test_unknown_and_train_events_are_ignored(tmp_path):
    run = load_run(write_run(tmp_path / "run"))
    assert run.problems == []
    assert run.strategies == ["finetune", "ewc"]
    assert run.seeds == [0, 1]
    assert len(run.notes) == 2


def test_curves_start_where_their_task_starts_and_average_the_seeds(tmp_path):
    run = load_run(write_run(tmp_path / "run"))
    second = curves(run, "ewc")[1]
    assert second.steps == (100, 125, 150, 175, 200, 225, 250, 275, 300)
    expected = [matrix("ewc", seed, 3)[1][1] for seed in (0, 1)]
    assert second.mean[0] == pytest.approx(statistics.fmean(expected))
    assert second.sem[0] == pytest.approx(statistics.stdev(expected) / math.sqrt(2))
    assert curves(run, "ewc")[0].steps[0] == 0  # task 1 starts at the untrained model
    assert [(s.task, s.start, s.end, s.finished) for s in spans(run, "ewc")] == [
        (1, 0, 100, True),
        (2, 100, 200, True),
        (3, 200, 300, True),
    ]


def test_importing_the_report_does_not_import_matplotlib():
    code = "import sys, ewc, ewc.report; assert 'matplotlib' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_killed_run_is_read_from_the_cells_event_logs(tmp_path):
    """Before the runner assembles metrics.jsonl and writes accuracy/, only cells/ exist."""
    run_dir = write_run(tmp_path / "run", finished=False, tasks_done={"ewc": 2})
    for seed in (0, 1):
        for strategy in STRATEGIES:
            cell = run_dir / "cells" / f"seed{seed}-{strategy}"
            cell.mkdir(parents=True)
            done = 2 if strategy == "ewc" else 3
            lines = events(strategy, seed, 3, done)
            text = "".join(json.dumps(line) + "\n" for line in lines)
            (cell / "events.jsonl").write_text(text + '{"event": "ev', encoding="utf-8")
    (run_dir / "metrics.jsonl").unlink()
    for path in (run_dir / "accuracy").iterdir():
        path.unlink()
    run = load_run(run_dir)
    assert run.pairs[1, "ewc"].rows[2] == tuple(matrix("ewc", 1, 3)[2])
    assert 3 not in run.pairs[1, "ewc"].rows
    assert any("read from cells/*/events.jsonl" in p for p in run.problems)
    cut = len(events("ewc", 0, 3, 2)) + 1
    assert f"cells/seed0-ewc/events.jsonl line {cut} is not valid JSON (cut short?)." in (
        run.problems
    )
    assert "Strategy ewc: seed 0 finished 2 of 3 tasks; seed 1 finished 2 of 3 tasks." in (
        run.problems
    )


def test_the_cells_summary_json_leaves_out_are_listed(tmp_path):
    run_dir = write_run(tmp_path / "run", seeds=(0,))
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    summary["incomplete"] = {"seed0-ewc": "diverged: loss is nan at step 120"}
    (run_dir / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    problems = load_run(run_dir).problems
    assert problems == ["summary.json leaves out seed0-ewc: diverged: loss is nan at step 120."]


def test_the_wall_time_of_a_resumed_run_says_whose_it_is(tmp_path):
    run_dir = write_run(tmp_path / "run")
    assert "Wall time: 95.2 s." in markdown_of(write_report(run_dir))
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    (run_dir / "summary.json").write_text(json.dumps({**summary, "resumed": True}), "utf-8")
    assert (
        "Wall time: 95.2 s in the process that resumed and finished the run (earlier ones not "
        "counted)."
    ) in markdown_of(write_report(run_dir))


def test_the_environment_is_shown_and_a_resume_elsewhere_is_named(tmp_path):
    run_dir = write_run(tmp_path / "run")
    assert "Environment" not in markdown_of(write_report(run_dir))  # an earlier version's run
    header = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    started = {"source": "git 0123456789ab", "cpu_capability": "AVX512", "threads": 1}
    (run_dir / "config.json").write_text(json.dumps({**header, "environment": started}), "utf-8")
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    (run_dir / "summary.json").write_text(
        json.dumps({**summary, "environment": {**started, "threads": 2}}), "utf-8"
    )
    text = markdown_of(write_report(run_dir))
    assert "| cpu\\_capability | AVX512 |" in text  # markdown escapes the underscore
    assert "another environment" not in text  # threads: the checkpoints pin them
    finished = {**started, "cpu_capability": "AVX2"}
    (run_dir / "summary.json").write_text(json.dumps({**summary, "environment": finished}), "utf-8")
    assert (
        "The run was finished in another environment (cpu\\_capability AVX512 → AVX2)"
    ) in markdown_of(write_report(run_dir))


def test_steps_replacing_epochs_leave_epochs_out_of_the_training_sentence(tmp_path):
    run = write_run(tmp_path / "run")
    header = json.loads((run / "config.json").read_text())
    header["config"]["training"]["steps"] = 2000
    (run / "config.json").write_text(json.dumps(header), encoding="utf-8")
    training = next(
        line for line in markdown_of(write_report(run)).splitlines() if "Training:" in line
    )
    assert "steps 2,000 per task (replacing epochs)" in training
    assert "epochs 1" not in training
    plain = next(
        line
        for line in markdown_of(write_report(write_run(tmp_path / "plain"))).splitlines()
        if "Training:" in line
    )
    assert "epochs 1" in plain
    assert "replacing" not in plain
