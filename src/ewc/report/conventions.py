"""The report's "Conventions" section: penalties, Fisher kinds and metrics, defined as computed.

The formulas follow shared/REFERENCES.md: the penalty of Kirkpatrick et al. (2017, Eq. 3), online
EWC of Schwarz et al. (2018), the Fisher kinds of :mod:`ewc.fisher`, ACC / BWT / FWT of Lopez-Paz &
Ranzato (2017) and forgetting of Chaudhry et al. (2018).
"""

from __future__ import annotations

from ewc.report.blocks import Block, Bullets, Code, Heading, Paragraph, Parts, Table
from ewc.report.run import Run
from ewc.report.text import MISSING, number, penalty_kind, strategy_settings

FISHER_KINDS = {
    "exact": (
        "F_i = (1/N) Σ_n Σ_c p(c|x_n) (∂ log p(c|x_n)/∂θ_i)²",
        "the true Fisher diagonal",
    ),
    "sample": (
        "F_i = (1/N) Σ_n (1/k) Σ_{j≤k} (∂ log p(ŷ_nj|x_n)/∂θ_i)², ŷ ~ p(·|x_n)",
        "an unbiased Monte Carlo estimate of exact",
    ),
    "empirical": (
        "F_i = (1/N) Σ_n (∂ log p(y_n|x_n)/∂θ_i)²",
        "with the true labels y_n (Kunstner et al. 2019)",
    ),
    "argmax": (
        "F_i = (1/N) Σ_n (∂ log p(ŷ_n|x_n)/∂θ_i)², ŷ_n = argmax_c p(c|x_n)",
        "legacy; neither the true nor the empirical Fisher",
    ),
    "batched": (
        "F_i = (1/M) Σ_batches (∂ mean_batch log p(y|x)/∂θ_i)²",
        "squared mini-batch gradients, about 1/B of empirical: it needs a far larger λ",
    ),
}

PENALTY: Parts = (
    "The loss of each new task adds ",
    Code("(λ/2) Σ_i F_i (θ_i − θ*_i)²"),
    " (Kirkpatrick et al. 2017, Eq. 3). The config's ",
    Code("strength"),
    " is λ and the penalty carries the 1/2, as in the paper; code without the 1/2 (Avalanche, "
    "Mammoth) writes the same penalty with λ/2. F is the diagonal Fisher, a mean over samples, "
    "of the kind named below, and θ* the parameters at the end of the earlier task. L2 is the "
    "same penalty with ",
    Code("F_i = 1"),
    ". In separate mode every earlier task keeps its own term; in online mode (Schwarz et al. "
    "2018) ",
    Code("F ← γ F_old + F_new"),
    " and θ* moves to the latest optimum.",
)

METRICS: tuple[Parts, ...] = (
    (
        Code("R[i, j]"),
        " = test accuracy on task j after training task i (i, j = 1..T); ",
        Code("b_j"),
        " = accuracy of the untrained model on task j (the row 'untrained').",
    ),
    (Code("ACC = (1/T) Σ_j R[T, j]"), ": the average accuracy after the last task."),
    (
        Code("BWT = (1/(T−1)) Σ_{j<T} (R[T, j] − R[j, j])"),
        " (Lopez-Paz & Ranzato, GEM, 2017): backward transfer; negative values are forgetting.",
    ),
    (
        Code("FWT = (1/(T−1)) Σ_{j≥2} (R[j−1, j] − b_j)"),
        " (Lopez-Paz & Ranzato 2017): forward transfer, the accuracy on a task before its "
        "training, relative to the untrained model.",
    ),
    (
        "forgetting of task j after task k: ",
        Code("max_{j≤l<k} R[l, j] − R[k, j]"),
        "; ",
        Code("F_k = mean over j<k"),
        " (Chaudhry et al. 2018). The table shows F_T, after the last task.",
    ),
)


def conventions_section(run: Run) -> list[Block]:
    """The penalty convention, each strategy's Fisher, the Fisher kinds used and the metrics."""
    blocks: list[Block] = [
        Heading(2, "Conventions"),
        Paragraph(PENALTY),
        _strategy_table(run),
    ]
    kinds = _fisher_kinds(run)
    if kinds:
        items = tuple(_fisher_item(kind) for kind in kinds)
        blocks += [Paragraph(("Fisher kinds used in this run (N samples):",)), Bullets(items)]
    blocks += [Paragraph(("Metrics (fractions shown in %):",)), Bullets(METRICS)]
    return blocks


def _strategy_table(run: Run) -> Table:
    header = ("Strategy", "Penalty", "λ", "Fisher kind", "Fisher samples", "Mode", "γ")
    rows = tuple(_strategy_row(run, strategy) for strategy in run.strategies)
    caption = ("Each strategy's penalty as configured (—: not applicable).",)
    return Table(header, rows, caption, numeric=False)


def _strategy_row(run: Run, strategy: str) -> tuple[str, ...]:
    settings = strategy_settings(run.config, strategy)
    kind = penalty_kind(strategy, settings)
    has_fisher = "fisher" in settings
    # The runner reads a null sample count as "every training input of the task".
    all_inputs = "all training inputs"
    samples = _setting(settings, "fisher_samples", all_inputs) if has_fisher else MISSING
    fisher = _setting(settings, "fisher") if has_fisher else "F = 1" if kind == "L2" else MISSING
    mode = "online" if kind == "online EWC" else "separate" if kind == "EWC" else MISSING
    online = kind == "online EWC" or settings.get("mode") == "online"  # l2 may be online too
    gamma = _setting(settings, "gamma") if online else MISSING
    strength = _setting(settings, "strength")
    return (strategy, kind, strength, fisher, samples, _setting(settings, "mode", mode), gamma)


def _setting(settings: dict, key: str, default: str = MISSING) -> str:
    value = settings.get(key)
    return default if value is None else number(value)


def _fisher_kinds(run: Run) -> list[str]:
    kinds = [strategy_settings(run.config, s).get("fisher") for s in run.strategies]
    return list(dict.fromkeys(str(kind) for kind in kinds if kind is not None))


def _fisher_item(kind: str) -> Parts:
    if kind not in FISHER_KINDS:
        return (Code(kind), ": not a kind this version of the report knows.")
    formula, meaning = FISHER_KINDS[kind]
    return (Code(kind), ": ", Code(formula), ", " + meaning + ".")
