"""What the report says, as blocks: summary, warnings, metrics, figures, matrices, notes, setup."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ewc.experiment.environment import differences
from ewc.experiment.metrics import METRICS
from ewc.report.aggregate import curves, final_accuracies, matrix_seed_counts, mean_matrix
from ewc.report.blocks import (
    Block,
    Bullets,
    Callout,
    Code,
    Document,
    Figure,
    Heading,
    Paragraph,
    Preformatted,
    Strong,
    Table,
)
from ewc.report.conventions import conventions_section
from ewc.report.rows import finite
from ewc.report.run import Run
from ewc.report.text import (
    MISSING,
    dataset_name,
    hyperparameters,
    metric_text,
    number,
    percent,
    plural,
    row_label,
    scenario_name,
    section,
    strategy_settings,
)

CAPTIONS = {
    "curves": (
        "Training curves, one panel per strategy. x: optimizer steps since the strategy started; "
        "y: test accuracy on each task in %, one colour per task in every panel. Dashed lines mark "
        "the end of each task and the labels above name the task trained in between. As in "
        "Kirkpatrick et al. (2017, Fig. 2A), a task's curve starts where its training starts "
        "(its first point is the accuracy just before). A curve that drops once its task is "
        "over is forgetting: a penalty that works keeps the earlier curves high while the new "
        "ones rise."
    ),
    "matrices": (
        "Accuracy matrices R, seed means in %. Row 'after i': the model after training task i "
        "('untrained': before any training); column j: test accuracy on task j. Outlined cells "
        "are R[j, j], each task just after its training: lower values below them are forgetting; "
        "values to their right (tasks not trained yet) against the 'untrained' row are forward "
        "transfer."
    ),
    "final_accuracy": (
        "Test accuracy in % on each task after the last task (the last row of R) per strategy, "
        "and ACC, their average, from summary.json (its value written above each ACC bar)."
    ),
}


def build_document(run: Run, figures: Mapping[str, str]) -> Document:
    """The whole report; ``figures`` maps curves / matrices / final_accuracy to relative paths."""
    blocks: list[Block] = [*_callouts(run), Paragraph(_summary(run)), *_tasks(run)]
    blocks += _metrics_section(run)
    blocks += _figures_section(run, figures)
    blocks += _matrices_section(run)
    blocks += _notes_section(run)
    blocks += conventions_section(run)
    blocks += _setup_section(run)
    return Document(_title(run), tuple(blocks))


def _title(run: Run) -> str:
    benchmark = section(run.config, "benchmark")
    name = f"{benchmark.get('name', 'continual-learning')} {_dataset(run)}"
    scenario = scenario_name(benchmark.get("scenario", "unknown scenario"))
    return f"EWC run report: {name}, {run.num_tasks} tasks, {scenario}"


def _dataset(run: Run) -> str:
    benchmark = section(run.config, "benchmark")
    dataset = section(run.header, "data").get("dataset") or benchmark.get("dataset", "unknown")
    return dataset_name(dataset)


def _summary(run: Run) -> tuple[Any, ...]:
    """One paragraph: strategies, benchmark, data set, scenario, seeds, model, training."""
    benchmark, model = section(run.config, "benchmark"), section(run.config, "model")
    seeds = ", ".join(str(s) for s in run.seeds) or MISSING
    parts: list[Any] = [
        f"{plural(len(run.strategies), 'strategy')} ({', '.join(run.strategies) or MISSING}) "
        f"trained on the {run.num_tasks} tasks of the {benchmark.get('name', '?')} benchmark "
        "built from ",
        Strong(_dataset(run)),
        ", in the ",
        Strong(scenario_name(benchmark.get("scenario", "unknown"))),
        f" scenario, with {plural(len(run.seeds), 'seed')} ({seeds}). "
        f"Model: {model_description(model)}. "
        f"Training: {_training_settings(section(run.config, 'training')) or MISSING}.",
        _sample_caps(benchmark),
        _seen_outputs(benchmark),
    ]
    wall = finite((run.summary or {}).get("wall_time_s"))
    if wall is not None:
        resumed = (run.summary or {}).get("resumed") is True
        last = " in the process that resumed and finished the run (earlier ones not counted)"
        parts.append(f" Wall time: {wall:,.1f} s{last if resumed else ''}.")
    return tuple(parts)


CNN_LAYERS = (
    "two 3×3 convolutions of 32 and 64 channels, each with ReLU and 2×2 max-pooling, then a "
    "fully connected layer of 128 (ReLU)"
)
"""The layers of ``model.name = "cnn"``, fixed in :class:`ewc.experiment.models.CNN` (the config
holds no widths for it; a test checks this text against the model)."""


def model_description(model: Mapping[str, Any]) -> str:
    """The model of the config's ``model`` section, described by what it is.

    ``mlp``: its hidden widths (the only widths the config holds); ``cnn``: its fixed layers, since
    it ignores ``hidden``; another name: its settings as they are; ``model.factory``: the factory.
    """
    if model.get("factory"):  # your own network: name and hidden do not describe it
        return f"{model['factory']} (model.factory)"
    name, hidden = model.get("name", "?"), model.get("hidden")
    if name == "mlp" and isinstance(hidden, list):
        if not hidden:
            return "mlp, no hidden layer (softmax regression)"
        return f"mlp, fully connected, hidden widths {number(hidden)} (ReLU)"
    if name == "cnn":
        return f"cnn, {CNN_LAYERS}"
    return f"{name} ({_settings(model, skip='name') or 'defaults'})"


def _training_settings(training: Mapping[str, Any]) -> str:
    """The training settings, without ``epochs`` when ``steps`` replaces it."""
    if training.get("steps") is None:
        return _settings(training)
    return _settings(training, skip="epochs", after={"steps": " per task (replacing epochs)"})


def _settings(
    values: Mapping[str, Any], skip: str = "", after: Mapping[str, str] | None = None
) -> str:
    """``key value`` pairs, ``after[key]`` appended; unset (null) ones are left to the config."""
    suffix = after or {}
    shown = {key: value for key, value in values.items() if key != skip and value is not None}
    return ", ".join(f"{key} {number(value)}{suffix.get(key, '')}" for key, value in shown.items())


def _sample_caps(benchmark: Mapping[str, Any]) -> str:
    """A sentence on the per-task sample limits, which make any data set a subset."""
    caps = [
        f"{number(benchmark[key])} {kind}"
        for key, kind in (("train_samples", "training"), ("test_samples", "test"))
        if isinstance(benchmark.get(key), int)
    ]
    return f" Each task keeps at most {' and '.join(caps)} samples." if caps else ""


def _seen_outputs(benchmark: Mapping[str, Any]) -> str:
    """A sentence when training saw only the seen classes' outputs (``train_outputs = seen``)."""
    if benchmark.get("train_outputs") != "seen":
        return ""
    return (
        " Training on each task (the loss, and each strategy's Fisher or importance) saw only the "
        "outputs of the classes seen so far (benchmark.train_outputs = seen); the evaluation "
        "spans every class."
    )


def _tasks(run: Run) -> list[Block]:
    items = tuple((f"task {k}: {name}",) for k, name in enumerate(run.tasks, start=1))
    return [Paragraph(("Tasks, in training order:",)), Bullets(items)] if items else []


def _callouts(run: Run) -> list[Block]:
    blocks: list[Block] = []
    data = section(run.header, "data")
    caps = _sample_caps(section(run.config, "benchmark"))
    if data.get("is_subset") is True or caps:
        what = (
            "This is a subset, not the official data set"
            if data.get("is_subset") is True
            else "Where a cap is below a task's size, this is a subset of the official data set"
        )
        text = (
            f"Data: {data.get('source', 'source not recorded')}.{caps} {what}: results are not "
            f"comparable to numbers published on the full {_dataset(run)} data set."
        )
        blocks.append(Callout("Subset of the data", ((text,),)))
    elif data.get("source"):
        blocks.append(Paragraph((f"Data: {data['source']}.",)))  # the full data set: no warning
    if run.problems:
        items = tuple((problem,) for problem in run.problems)
        blocks.append(Callout("Incomplete run: what is missing", items))
    return blocks


def _metrics_section(run: Run) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Results")]
    if run.summary is None:
        blocks.append(Paragraph(("No metrics yet: summary.json is written when the run ends.",)))
        return blocks
    metrics = section(run.summary, "strategies")
    absent = section(run.summary, "not_applicable")
    rows = []
    for strategy in run.strategies:
        values = section(metrics, strategy)
        seeds = _seed_count(values)
        cells = ("n/a" if m in absent else metric_text(values.get(m)) for m in METRICS)
        rows.append((strategy, *cells, seeds))
    caption = (
        "After the last task, in %: mean ± standard error of the mean over seeds (no ± with one "
        f"seed), from summary.json, {_test_sets(run)}. Higher is better for ACC, BWT and FWT, "
        "lower for forgetting; definitions under Conventions."
        + "".join(f" {metric} n/a: {why}." for metric, why in absent.items()),
    )
    table = Table(("Strategy", *METRICS, "Seeds"), tuple(rows), caption)
    return [*blocks, table, *_timings_table(run)]


def _timings_table(run: Run) -> list[Block]:
    """Seconds per seed in training, the Fisher (consolidation) and evaluation, if recorded."""
    spent = section(run.summary, "timings_s")
    parts = ("training", "fisher", "evaluation")
    rows = tuple(
        (strategy, *(_seconds(section(spent, strategy).get(part)) for part in parts))
        for strategy in run.strategies
        if strategy in spent
    )
    if not rows:
        return []
    caption = (
        "Wall time per seed in seconds (mean over seeds), from summary.json: the optimizer "
        "steps, the strategy's consolidation after each task (the Fisher, for EWC), and the "
        "evaluations on every task.",
    )
    return [Table(("Strategy", "Training (s)", "Fisher (s)", "Evaluation (s)"), rows, caption)]


def _seconds(value: Any) -> str:
    number_ = finite(value)
    return MISSING if number_ is None else f"{number_:,.1f}"


def _seed_count(values: Mapping[str, Any]) -> str:
    acc = values.get("ACC")
    seeds = acc.get("values") if isinstance(acc, dict) else None
    return str(len(seeds)) if isinstance(seeds, list) else MISSING


def _figures_section(run: Run, figures: Mapping[str, str]) -> list[Block]:
    alts = {
        "curves": "Test accuracy of each task along training, one panel per strategy",
        "matrices": "Accuracy matrix heatmaps, one per strategy",
        "final_accuracy": "Bar chart of the final accuracy per task and of ACC, per strategy",
    }
    blocks: list[Block] = [Heading(2, "Figures")]
    for key in ("curves", "matrices", "final_accuracy"):
        if key in figures:
            caption = CAPTIONS[key] + _spread(run, key)
            caption += _measured_on(run) if key == "curves" else ""
            blocks.append(Figure(figures[key], alts[key], (caption,)))
    return blocks


def _spread(run: Run, figure: str) -> str:
    """How many seeds the lines (``curves``) or bars (``final_accuracy``) of a figure average.

    Counted from the data drawn, not from the config: a seed that diverged or has not got that
    far yet is not in a mean. The ACC bars are summary.json's (its complete seeds).
    """
    if figure == "curves":
        what, spread, which = "Lines", "bands", "the seeds evaluated at each step"
        counts = {n for s in run.strategies for c in curves(run, s) for n in c.n}
    elif figure == "final_accuracy":
        what, spread, which = "Bars", "error bars", "the seeds that finished every task"
        counts = {x.n for s in run.strategies for x in final_accuracies(run, s) if x is not None}
    else:
        return ""
    if max(counts, default=0) <= 1:
        return " One seed: no error bands."
    if len(counts) == 1:
        return f" {what} are means over {plural(counts.pop(), 'seed')}; {spread} ± 1 SEM."
    return (
        f" {what} are means over {which}, {min(counts)} to {max(counts)} (a seed that diverged "
        f"or has not got that far is in no mean); {spread} ± 1 SEM where there are two or more."
    )


def _measured_on(run: Run) -> str:
    """What the curve points between task ends were measured on, when some used a subset."""
    sizes = sorted(
        {p.subset for pair in run.pairs.values() for p in pair.points if p.subset is not None}
    )
    if not sizes:
        return ""
    counts = " or ".join(f"{n:,}" for n in sizes)
    return (
        f" The points between task ends are measured on a fixed random subset of at most "
        f"{counts} test samples per task (the same at every point, drawn from the seed); the "
        f"points at task ends, like the accuracy matrices and metrics, {_test_sets(run)}."
    )


def _test_sets(run: Run) -> str:
    """What the task-end evaluations were measured on: whole test sets, or capped ones."""
    cap = section(run.config, "benchmark").get("test_samples")
    if isinstance(cap, int) and not isinstance(cap, bool):
        return f"on each task's test set as capped by benchmark.test_samples (at most {cap:,})"
    return "on each task's whole test set"


def _matrices_section(run: Run) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Accuracy matrices")]
    header = ("After \\ test on", *(f"task {j}" for j in range(1, run.num_tasks + 1)))
    for strategy in run.strategies:
        matrix = mean_matrix(run, strategy)
        rows = tuple((row_label(i), *(percent(v) for v in row)) for i, row in enumerate(matrix))
        caption = (
            f"Settings: {hyperparameters(strategy_settings(run.config, strategy))}. R in %, "
            f"{_matrix_seeds(run, strategy)}; —: not measured yet.",
        )
        blocks += [Heading(3, strategy), Table(header, rows, caption)]
    return blocks


def _matrix_seeds(run: Run, strategy: str) -> str:
    """Which seeds a mean matrix averages: one count, or one per row while they differ."""
    counts = matrix_seed_counts(run, strategy)
    diverged = sorted({d.seed for d in run.divergences if d.strategy == strategy})
    noun = "seed" if len(diverged) == 1 else "seeds"
    which = ", ".join(map(str, diverged))
    left_out = f" ({noun} {which} diverged and left out)" if diverged else ""
    reached = [(i, n) for i, n in enumerate(counts) if n > 0]
    if len({n for _, n in reached}) <= 1:
        n = reached[0][1] if reached else 0
        return f"mean over {plural(n, 'seed')}{left_out}"
    per_row = ", ".join(f"{row_label(i)}: {n}" for i, n in reached)
    return (
        f"each row the mean over the seeds that reached it ({per_row}){left_out}: compare "
        "values within a row, not down a column"
    )


def _notes_section(run: Run) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Notes from the runner")]
    if not run.notes:
        return [*blocks, Paragraph(("The runner recorded no notes.",))]
    items = []
    for note in run.notes:
        where = " · ".join(
            part
            for part in (
                f"seed {note.seed}" if note.seed is not None else "",
                note.strategy or "",
            )
            if part
        )
        items.append((Strong(where), ": " + note.message) if where else (note.message,))
    return [*blocks, Bullets(tuple(items))]


def _environment_blocks(run: Run) -> list[Block]:
    """Where the run trained (code, CPU, threads, device), and what a resume changed.

    Those change a run's bits for the same code and seed (`ewc.experiment.environment`).
    """
    started = section(run.header, "environment")
    if not started:
        return []
    rows = tuple((str(key), str(value)) for key, value in started.items())
    blocks: list[Block] = [Table(("Environment (where the run started)", "Value"), rows)]
    changed = differences(started, section(run.summary, "environment"))
    if changed:
        blocks.append(
            Paragraph(
                (
                    "The run was finished in another environment ("
                    + "; ".join(changed)
                    + "): steps after the resume do not repeat the first process's bits.",
                )
            )
        )
    return blocks


def _setup_section(run: Run) -> list[Block]:
    versions = section(run.header, "versions")
    rows = tuple((str(name), str(version)) for name, version in versions.items())
    config_hash = run.header.get("config_hash")
    return [
        Heading(2, "Reproducibility"),
        Table(("Package", "Version"), rows),
        *_environment_blocks(run),
        Paragraph(("Config hash (SHA-256): ", Code(str(config_hash or MISSING)))),
        Paragraph(("Run directory: ", Code(run.directory.name), ". The resolved config:")),
        Preformatted(json.dumps(run.config, indent=2, ensure_ascii=False), "json"),
    ]
