"""Continual-learning strategies: the penalty used while training a task, and what follows it.

A strategy is any object with ``penalty()``, ``after_task(context)``, ``state_dict()`` and
``load_state_dict(state)``; the runner calls nothing else, so a new strategy plugs in by adding a
factory to the mapping the runner is given (`BUILTIN_STRATEGIES` by default), without touching the
runner. Built-ins:

- ``finetune``: no penalty (the classic ``normal_train``; the lower bound).
- ``l2``: (λ/2) Σ_t ‖θ − θ*_t‖² (Kirkpatrick et al. 2017's L2 baseline); with ``mode = "online"``,
  ``gamma = 0``, (λ/2) ‖θ − θ*_T‖² towards the latest task only (Hsu et al. 2018's L2).
- ``ewc``: (λ/2) Σ_t Σ_i F_t,i (θ_i − θ*_t,i)², one term per task (Kirkpatrick et al. 2017).
- ``online-ewc``: one running Fisher F ← γ F + F_t at the latest anchor (Schwarz et al. 2018).
- ``kfac-ewc``: EWC with a K-FAC Fisher, G ⊗ A per Linear / Conv2d layer and the diagonal for
  the rest (Ritter et al. 2018; `ewc.kfac_fisher`); the tasks' Kronecker terms are kept apart.
- ``si``: c Σ_i Ω_i (θ_i − θ̃_i)², Ω from the path integral of training (Zenke et al. 2017).
- ``mas``: λ Σ_i Ω_i (θ_i − θ*_i)², Ω from the output's sensitivity (Aljundi et al. 2018).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ewc.experiment.config import ConfigError, Optimizer, above, at_least, build_dataclass
from ewc.fisher import FisherKind, diagonal_fisher, kfac_fisher
from ewc.mas import MAS, MASGradient, mas_importance
from ewc.penalties import EWC, L2, PenaltyMode, QuadraticPenalty
from ewc.synaptic_intelligence import PathGradient, SynapticIntelligence


@dataclass(frozen=True)
class TaskContext:
    """What a strategy may use after a task: the model, that task's data, and the training setup."""

    model: nn.Module
    task: int  # 0-based index of the task just trained
    train_batches: Iterable[Any]  # the task's training data, in (inputs, targets) batches
    output_fn: Callable[[Any], Tensor] | None  # the task's logits (its head in multi-head models)
    generator: torch.Generator  # for any sampling the strategy does
    optimizer: Optimizer
    lr: float
    # The same data in shuffled batches of a chosen size, drawn with ``generator`` (None: only
    # ``train_batches`` is available, in batches of ``training.eval_batch_size``).
    batches: Callable[[int], Iterable[Any]] | None = None


class Strategy(Protocol):
    """The four calls the runner makes."""

    def penalty(self) -> Callable[[], Tensor] | None:
        """The term added to the task loss while training, or None."""

    def after_task(self, context: TaskContext) -> list[str]:
        """Consolidate what the task taught; return notes worth reporting (may be empty)."""

    def state_dict(self) -> dict[str, Any]:
        """The strategy's state, for checkpoints."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict()`."""


StrategyFactory = Callable[[nn.Module, Mapping[str, Any]], Strategy]


class Finetune:
    """Plain training on each task in turn: no penalty, nothing kept."""

    def penalty(self) -> None:
        """No penalty: return None."""
        return None

    def after_task(self, context: TaskContext) -> list[str]:
        """Keep nothing from the task; return no notes."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """An empty state: fine-tuning keeps nothing."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Do nothing: there is no state to restore."""
        return None


@dataclass(frozen=True)
class L2Settings:
    """Hyper-parameters of ``l2``."""

    strength: float = at_least(0.0, 1.0)  # λ
    # "separate": Σ_t ‖θ − θ*_t‖²; "online" with gamma = 0: ‖θ − θ*_T‖², the latest task only
    # (Hsu et al. 2018's L2); with gamma = γ > 0, Ω ← γ Ω + 1 at the latest θ*.
    mode: PenaltyMode = PenaltyMode.SEPARATE
    gamma: float = at_least(0.0, 1.0)  # online decay γ ∈ [0, 1]; only with mode = "online"


@dataclass(frozen=True)
class EWCSettings:
    """Hyper-parameters of ``ewc`` and ``online-ewc``."""

    strength: float = at_least(0.0, 200.0)  # λ; the penalty is (λ/2) Σ F (θ − θ*)²
    fisher: FisherKind = FisherKind.EXACT
    fisher_samples: int | None = at_least(1, None)  # inputs for the Fisher; None: the whole task
    # The Fisher's batch size: B of fisher = "batched" (default `BATCHED_FISHER_BATCH_SIZE`);
    # for the per-sample kinds only a chunk size (speed and rounding), by default the
    # evaluation batch size. Never the evaluation batch size for "batched".
    fisher_batch_size: int | None = at_least(1, None)
    samples_per_input: int = at_least(1, 1)  # labels drawn per input for fisher = "sample"
    gamma: float = at_least(0.0, 1.0)  # online decay γ ∈ [0, 1]; only for online-ewc


class PenaltyStrategy:
    """A strategy built on a quadratic penalty: train with it, consolidate after each task."""

    def __init__(
        self,
        penalty: QuadraticPenalty,
        settings: EWCSettings | None = None,
        estimator: Callable[..., Any] = diagonal_fisher,
    ):
        self._penalty = penalty
        self.settings = settings
        self._estimator = estimator

    def penalty(self) -> QuadraticPenalty:
        """The quadratic penalty, added to the task loss while training."""
        return self._penalty

    def after_task(self, context: TaskContext) -> list[str]:
        """Anchor the penalty at the trained parameters; return SGD stability warnings.

        With settings (EWC), the anchor is weighted by the task's Fisher from the estimator;
        without (L2), every weight counts equally.
        """
        if self.settings is None:
            self._penalty.consolidate()
        else:
            self._penalty.consolidate(self._fisher(context))
        return _sgd_stability_notes(self._penalty, context)

    def _fisher(self, context: TaskContext) -> Any:
        s = self.settings
        return self._estimator(
            context.model,
            fisher_batches(s, context),
            s.fisher,
            num_samples=s.fisher_samples,
            samples_per_input=s.samples_per_input,
            output_fn=context.output_fn,
            generator=context.generator,
        )

    def state_dict(self) -> dict[str, Any]:
        """The penalty's state (its anchors, importances and settings)."""
        return self._penalty.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the penalty from a `state_dict()`."""
        self._penalty.load_state_dict(state)


BATCHED_FISHER_BATCH_SIZE = 128

#: B of MAS's ``gradient = "batch-mean"`` when ``batch_size`` is unset: Hsu et al. 2018 use the
#: training loader, batches of 128 in their split-MNIST scripts.
MAS_BATCH_SIZE = 128
"""B of the ``batched`` Fisher when ``fisher_batch_size`` is unset: van de Ven 2025's BATCHED
(b = 128, the training batch of its split-MNIST protocol). λ of ``batched`` scales with about B
(each squared batch-mean gradient is ≈ 1/B of the per-sample mean), so B is fixed here rather than
taken from another setting; a λ tuned for one B does not carry to another."""


def fisher_batches(settings: EWCSettings, context: TaskContext) -> Iterable[Any]:
    """The task's data in the batches the Fisher is estimated on.

    ``fisher_batch_size`` when set; else `BATCHED_FISHER_BATCH_SIZE` for ``batched`` and the
    context's ``train_batches`` (the evaluation batch size, a chunk size only) for the others.

    Raises:
        ValueError: a batch size is needed but the context cannot re-batch its data.
    """
    size = settings.fisher_batch_size
    if size is None and settings.fisher is FisherKind.BATCHED:
        size = BATCHED_FISHER_BATCH_SIZE
    if size is None:
        return context.train_batches
    return _rebatched(context, size, "fisher_batch_size")


def _rebatched(context: TaskContext, size: int, key: str) -> Iterable[Any]:
    """The task's training data in batches of ``size``, through ``context.batches``."""
    if context.batches is None:
        raise ValueError(
            f"{key} = {size} needs a TaskContext with batches=, a function from a batch size "
            "to the task's batches; this context has none"
        )
    return context.batches(size)


def _sgd_stability_notes(penalty: QuadraticPenalty, context: TaskContext) -> list[str]:
    """Warn when plain SGD on the penalty alone would diverge.

    Gradient descent on (λ/2) Ω θ² multiplies the distance to the anchor by (1 − lr λ Ω) per step,
    so it oscillates and diverges once lr · λ · max Ω ≥ 2.
    """
    if Optimizer.parse(context.optimizer) is not Optimizer.SGD or not penalty.importance:
        return []
    largest = max(float(v.max()) for v in penalty.importance.values())
    product = context.lr * penalty.strength * largest
    if product < 2:
        return []
    return [
        f"after task {context.task + 1}: lr × strength × max Fisher = {context.lr:g} × "
        f"{penalty.strength:g} × {largest:.3g} = {product:.3g} ≥ 2, so plain SGD on the penalty "
        "diverges along the most important weights; use adam, or make lr × strength smaller than "
        f"{2 / largest:.3g}"
    ]


def make_finetune(model: nn.Module, params: Mapping[str, Any]) -> Strategy:
    """``finetune``: no settings."""
    build_dataclass(_NoSettings, params, "")
    return Finetune()


def make_l2(model: nn.Module, params: Mapping[str, Any]) -> Strategy:
    """``l2``: (λ/2) Σ_t ‖θ − θ*_t‖², or (online, γ = 0) (λ/2) ‖θ − θ*_T‖²."""
    settings = build_dataclass(L2Settings, params, "")
    if settings.gamma > 1:
        raise ConfigError(f"{{key}} must be in [0, 1]; got {settings.gamma}", "gamma")
    if settings.mode is PenaltyMode.SEPARATE and settings.gamma != 1.0:
        raise ConfigError(
            "{key} applies to mode = 'online' only (separate keeps every task); got "
            f"{settings.gamma}",
            "gamma",
        )
    penalty = L2(model, strength=settings.strength, mode=settings.mode, gamma=settings.gamma)
    return PenaltyStrategy(penalty)


def make_ewc(model: nn.Module, params: Mapping[str, Any]) -> Strategy:
    """``ewc``: one penalty term per task (Kirkpatrick et al. 2017)."""
    settings = build_dataclass(EWCSettings, params, "")
    if settings.gamma != 1.0:
        raise ConfigError(
            "{key} applies to online-ewc only (separate EWC keeps every task); got "
            f"{settings.gamma}; set type = 'online-ewc' or leave gamma out",
            "gamma",
        )
    return PenaltyStrategy(EWC(model, strength=settings.strength), settings)


def make_online_ewc(model: nn.Module, params: Mapping[str, Any]) -> Strategy:
    """``online-ewc``: one running Fisher F ← γ F + F_t (Schwarz et al. 2018)."""
    settings = build_dataclass(EWCSettings, params, "")
    if settings.gamma > 1:
        raise ConfigError(f"{{key}} must be in [0, 1]; got {settings.gamma}", "gamma")
    penalty = EWC(model, strength=settings.strength, mode="online", gamma=settings.gamma)
    return PenaltyStrategy(penalty, settings)


def make_kfac_ewc(model: nn.Module, params: Mapping[str, Any]) -> Strategy:
    """``kfac-ewc``: EWC on K-FAC blocks, one term per task (Ritter et al. 2018)."""
    settings = build_dataclass(EWCSettings, params, "")
    if settings.gamma != 1.0:
        raise ConfigError(
            f"{{key}}: kfac-ewc keeps every task's terms, so gamma must be 1; got {settings.gamma}",
            "gamma",
        )
    if not settings.fisher.per_sample:
        raise ConfigError(
            "{key}: 'batched' squares mini-batch gradients and has no Kronecker factors; "
            "use 'exact', 'sample', 'empirical' or 'argmax'",
            "fisher",
        )
    penalty = EWC(model, strength=settings.strength)
    return PenaltyStrategy(penalty, settings, estimator=kfac_fisher)


@dataclass(frozen=True)
class SISettings:
    """Hyper-parameters of ``si``: ξ = 0.1 and c = 0.1 from the authors' permuted-MNIST notebook.

    The notebook (ganguli-lab/pathint) sweeps c over 0, 0.01, 0.1 and 1; the values are not tuned
    here.
    """

    strength: float = at_least(0.0, 0.1)  # c; the penalty is c Σ Ω (θ − θ̃)², no 1/2
    damping: float = above(0.0, 0.1)  # ξ
    # g of ω = −Σ g Δθ: "task" (Zenke et al.'s code) or "total", penalty included (van de Ven's)
    path_gradient: PathGradient = PathGradient.TASK


@dataclass(frozen=True)
class MASSettings:
    """Hyper-parameters of ``mas`` (λ = 1: a starting point, not tuned here)."""

    strength: float = at_least(0.0, 1.0)  # λ; the penalty is λ Σ Ω (θ − θ*)², no 1/2
    samples: int | None = at_least(1, None)  # inputs for Ω; None: the task's whole training set
    # "per-sample" (Aljundi et al.) or "batch-mean" (Hsu et al. 2018's code: |∂ mean(f²)/∂θ| of
    # each batch of batch_size, averaged over the batches)
    gradient: MASGradient = MASGradient.PER_SAMPLE
    batch_size: int | None = at_least(1, None)  # B of "batch-mean"; default MAS_BATCH_SIZE


class _StepTracker:
    """The penalty handed to `ewc.training.train_step`, recording g and θ for SI at every step.

    ``train_step`` calls ``add_gradient_`` right after the task loss's backward and then steps the
    optimizer: the moment SI must record g and θ.

    The step's end (``after_step``) is recorded lazily, at the next step or before the state is
    read: the parameters change only through the optimizer in between.
    """

    def __init__(self, si: SynapticIntelligence):
        self.si = si
        self._open = False

    def close(self) -> None:
        """Record the end of the step taken since the last ``add_gradient_``, if any."""
        if self._open:
            self.si.after_step()
            self._open = False

    def add_gradient_(self) -> Tensor:
        self.close()
        self._open = True
        if self.si.path_gradient is PathGradient.TOTAL:  # g of the total loss: read after adding
            value = self.si.add_gradient_()
            self.si.before_step()
            return value
        self.si.before_step()
        return self.si.add_gradient_()

    def __call__(self) -> Tensor:
        return self.si()


class SIStrategy:
    """``si``: track every step's path integral; consolidate Ω at the end of each task."""

    def __init__(self, si: SynapticIntelligence):
        self._tracker = _StepTracker(si)

    def penalty(self) -> _StepTracker:
        """SI's penalty, wrapped so that every training step's g and θ are recorded."""
        return self._tracker

    def after_task(self, context: TaskContext) -> list[str]:
        """Record the last step, then consolidate Ω and anchor θ̃ = θ.

        Returns a note when the max(0, ·) of Eq. 5 set importance entries to 0 (an optimizer
        step can move against its gradient, making ω < 0), with how many.
        """
        si = self._tracker.si
        self._tracker.close()
        si.consolidate()
        if not si.clamped:
            return []
        entries = sum(t.numel() for t in si.importance.values())
        return [
            f"si: {si.clamped:,} of {entries:,} importance entries were negative after this "
            "task and set to 0 (Ω ← max(0, Ω + ω/(Δ² + ξ)))"
        ]

    def state_dict(self) -> dict[str, Any]:
        """SI's state, including the running path integral, after recording the last step."""
        self._tracker.close()
        return self._tracker.si.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Close any open step, then restore SI from a `state_dict()`."""
        self._tracker.close()
        self._tracker.si.load_state_dict(state)


class MASStrategy:
    """``mas``: after each task, add its importance from `ewc.mas_importance` (no labels used)."""

    def __init__(self, mas: MAS, settings: MASSettings):
        self._mas = mas
        self.settings = settings

    def penalty(self) -> MAS:
        """The MAS penalty λ Σ_i Ω_i (θ_i − θ*_i)², added to the task loss."""
        return self._mas

    def after_task(self, context: TaskContext) -> list[str]:
        """Add the task's Ω from `ewc.mas_importance` (no labels) and anchor θ* = θ; no notes."""
        settings = self.settings
        batches = context.train_batches
        if settings.gradient is MASGradient.BATCH_MEAN:
            batches = _rebatched(context, settings.batch_size or MAS_BATCH_SIZE, "mas batch_size")
        importance = mas_importance(
            context.model,
            batches,
            num_samples=settings.samples,
            output_fn=context.output_fn,
            gradient=settings.gradient,
        )
        self._mas.consolidate(importance)
        return []

    def state_dict(self) -> dict[str, Any]:
        """The MAS penalty's state (Ω, the anchor and settings)."""
        return self._mas.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the MAS penalty from a `state_dict()`."""
        self._mas.load_state_dict(state)


def make_si(model: nn.Module, params: Mapping[str, Any]) -> Strategy:
    """``si``: the path-integral importance of Zenke et al. (2017)."""
    settings = build_dataclass(SISettings, params, "")
    si = SynapticIntelligence(
        model,
        strength=settings.strength,
        damping=settings.damping,
        path_gradient=settings.path_gradient,
    )
    return SIStrategy(si)


def make_mas(model: nn.Module, params: Mapping[str, Any]) -> Strategy:
    """``mas``: the output-sensitivity importance of Aljundi et al. (2018)."""
    settings = build_dataclass(MASSettings, params, "")
    if settings.batch_size is not None and settings.gradient is not MASGradient.BATCH_MEAN:
        raise ConfigError(
            "{key} applies to gradient = 'batch-mean' only (the per-sample importance does not "
            f"depend on batches); got {settings.batch_size}",
            "batch_size",
        )
    return MASStrategy(MAS(model, strength=settings.strength), settings)


@dataclass(frozen=True)
class _NoSettings:
    """``finetune`` takes no hyper-parameters."""


BUILTIN_STRATEGIES: dict[str, StrategyFactory] = {
    "finetune": make_finetune,
    "l2": make_l2,
    "ewc": make_ewc,
    "online-ewc": make_online_ewc,
    "kfac-ewc": make_kfac_ewc,
    "si": make_si,
    "mas": make_mas,
}


def build_strategy(
    name: str,
    params: Mapping[str, Any],
    model: nn.Module,
    factories: Mapping[str, StrategyFactory] = BUILTIN_STRATEGIES,
) -> Strategy:
    """Build strategy ``name`` from its config table; ``type`` picks the factory (default: name).

    Raises:
        ConfigError: an unknown type or a bad setting, named by its full key
            (``strategies.<name>.<key>``).
    """
    params = dict(params)
    kind = params.pop("type", name)
    if kind not in factories:
        valid = ", ".join(repr(k) for k in factories)
        raise ConfigError(
            f"strategy {name!r} has unknown type {kind!r} ({{key}}); valid types are {valid}",
            f"strategies.{name}.type",
        )
    try:
        return factories[kind](model, params)
    except ConfigError as error:
        raise error.within(f"strategies.{name}") from None
