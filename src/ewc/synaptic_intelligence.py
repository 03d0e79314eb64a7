"""Synaptic Intelligence (Zenke, Poole & Ganguli 2017): importance from the path of training.

While a task μ is trained, each parameter's contribution to the drop of the task's loss is summed
along the path the optimizer actually took,

    ω_i^μ = − Σ_steps g_i Δθ_i        (the discrete form of −∫ g_i(θ(t)) θ_i'(t) dt, Eq. 3)

with g the gradient of the task's own loss at the step and Δθ the step's actual update (whatever
optimizer made it: SGD, momentum, Adam). At the task's end the importance grows by ω normalised by
how far each parameter moved during the task, plus a damping ξ that bounds it for parameters that
barely moved (Eq. 5):

    Ω_i ← max(0, Ω_i + ω_i^μ / ((Δ_i^μ)² + ξ)),    Δ^μ = θ(end of μ) − θ(start of μ)

and the penalty on later tasks is c Σ_i Ω_i (θ_i − θ̃_i)² with θ̃ the parameters at the end of the
latest task (Eq. 4: no 1/2, so ``strength`` is the paper's c). The max(0, ·) follows the authors'
code (ganguli-lab/pathint, ``pathint/protocols.py``: a ReLU on the running Ω): with momentum or
Adam a step can move against its gradient and make ω negative, and a negative importance would
reward moving away from the anchor.

Whose gradient g is (``path_gradient``): ``"task"`` (default), the task loss's alone, as in the
authors' code, which records the unregularised gradient; ``"total"``, the gradient the optimizer
stepped with, penalty included, as in van de Ven's code (GMvandeVen/continual-learning,
``train.py``: ``W[n].add_(-p.grad*(p.detach()-p_old[n]))`` after the step of the total loss,
used for "Three scenarios for continual learning", 2019). That code also adds ω/(Δ² + ξ) to Ω
without the max(0, ·); here Ω stays clamped (a negative importance is refused by every penalty
of this library), and `clamped` counts the entries the clamp set to 0 at the last consolidation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ewc._choices import Choice
from ewc.penalties import QuadraticPenalty


class PathGradient(Choice):
    """Which gradient SI's path integral ω = −Σ g Δθ uses (see the module docstring)."""

    __noun__ = ("SI path gradient", "SI path gradients")

    TASK = "task"  # Zenke et al.'s code: the task loss's gradient only
    TOTAL = "total"  # van de Ven's code: the gradient of task loss + penalty, as stepped with


class SynapticIntelligence(QuadraticPenalty):
    """SI: the quadratic penalty c Σ_i Ω_i (θ_i − θ̃_i)² with the path-integral importance Ω.

    Call `before_step` and `after_step` around every optimizer step of every task, and
    `consolidate` at the end of each task::

        si = ewc.SynapticIntelligence(model, strength=0.1, damping=0.1)
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()  # the task loss only
            si.before_step()                         # records g (task loss) and θ before the step
            si.add_gradient_()                       # then the penalty's gradient, if any
            opt.step()
            si.after_step()                          # ω −= g · (θ after − θ before)
        si.consolidate()                             # end of the task: Ω grows, θ̃ = θ now

    ``before_step`` reads the ``.grad`` of each parameter, so it must come after the task loss's
    backward and before the penalty's gradient is added: ω measures what each parameter did for
    the *current* task's loss, as in the authors' code (which records the unregularised gradient);
    counting the penalty would credit parameters for being pulled back to the old anchor, whose
    importance Ω already holds. A parameter whose ``.grad`` is None counts as g = 0.

    Args:
        model: the model whose trainable parameters (by ``named_parameters()`` name) are tracked.
        strength: c ≥ 0, the paper's constant (the penalty has no 1/2).
        damping: ξ > 0 of Eq. 5 (0.1 in the authors' permuted-MNIST notebook, 1e-3 in their
            split CIFAR runs; ganguli-lab/pathint).
        path_gradient: ``"task"`` (the task loss's gradient, the authors' code) or ``"total"``
            (task loss and penalty, van de Ven's code). With ``"total"`` the penalty's gradient
            counts whichever way it reaches ``.grad``: a joint backward or `add_gradient_` before
            `before_step`, or `add_gradient_` / the `attach` hook after it (then added to the
            recorded g as well).
    """

    penalty_factor = 1.0

    def __init__(
        self,
        model: nn.Module,
        *,
        strength: float,
        damping: float = 0.1,
        path_gradient: PathGradient | str = PathGradient.TASK,
    ):
        super().__init__(model, strength=strength, mode="online")
        self.path_gradient = PathGradient.parse(path_gradient)
        self.clamped = 0  # Ω entries the max(0, ·) set to 0 at the last consolidation
        if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not damping > 0:
            raise ValueError(f"damping (ξ) must be a number > 0; got {damping!r}")
        if damping == float("inf"):
            raise ValueError("damping (ξ) must be finite; got inf")
        self.damping = float(damping)
        self._tracked = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not self._tracked:
            raise ValueError("the model has no trainable parameters (none has requires_grad=True)")
        self._path = {n: torch.zeros_like(p, requires_grad=False) for n, p in self._tracked.items()}
        self._start = {n: p.detach().clone() for n, p in self._tracked.items()}
        self._pending: tuple[dict[str, Tensor], dict[str, Tensor]] | None = None

    @property
    def path_integral(self) -> dict[str, Tensor]:
        """ω per parameter: −Σ g Δθ over the steps of the current task so far."""
        return {n: t.clone() for n, t in self._path.items()}

    @torch.no_grad()
    def before_step(self) -> None:
        """Record g (``.grad`` now) and the parameters before the step.

        With ``path_gradient="task"`` call it after the task loss's backward and before the
        penalty's gradient is added. With ``"total"``: after the penalty's gradient is in
        ``.grad`` (a joint backward of loss and penalty, or `add_gradient_`), or before
        `add_gradient_` or the `attach` hook adds it (a second ``backward`` of the penalty
        alone after this call is not seen).
        """
        self._follow_model()
        grads = {
            n: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
            for n, p in self._tracked.items()
        }
        self._pending = (grads, {n: p.detach().clone() for n, p in self._tracked.items()})

    @torch.no_grad()
    def after_step(self) -> None:
        """Add −g · (θ_after − θ_before) of the step just taken to ω."""
        if self._pending is None:
            raise RuntimeError(
                "after_step() needs a matching before_step() before opt.step(): call "
                "before_step() after the task loss's backward, then opt.step(), then after_step()"
            )
        grads, before = self._pending
        self._pending = None
        self._follow_model()
        for name, param in self._tracked.items():
            self._path[name].sub_(grads[name] * (param.detach() - before[name]))

    @torch.no_grad()
    def consolidate(self) -> None:
        """End of a task: Ω ← max(0, Ω + ω / (Δ² + ξ)), anchor θ̃ = θ now; ω and Δ restart.

        `clamped` becomes the number of entries the max(0, ·) set to 0.
        """
        if self._pending is not None:
            raise RuntimeError("before_step() was called without its after_step()")
        self._follow_model()
        total = {}
        for name, param in self._tracked.items():
            moved = param.detach() - self._start[name]
            added = self._path[name] / (moved.square() + self.damping)
            old = self._importance.get(name)
            total[name] = added if old is None else old + added
        clamped = sum(int((t < 0).sum()) for t in total.values())
        total = {name: t.clamp_min(0) for name, t in total.items()}
        previous, self._importance = self._importance, {}
        try:  # with no Ω held, the online mode's consolidation sets Ω = total and θ̃ = θ now
            self._consolidate(total, "si")
        except Exception:
            self._importance = previous
            raise
        self._start = {n: p.detach().clone() for n, p in self._tracked.items()}
        self._path = {n: torch.zeros_like(t) for n, t in self._path.items()}
        self.clamped = clamped

    def _add_gradient(
        self,
        bound: dict[str, nn.Parameter],
        value: bool,
        only: set[int] | None,
        loss_scale: float,
    ) -> Tensor | None:
        """Add the penalty's gradient to ``.grad``; with ``"total"``, after `before_step`, to g."""
        if self.path_gradient is not PathGradient.TOTAL or self._pending is None:
            return super()._add_gradient(bound, value, only, loss_scale)
        grads = self._pending[0]
        touched = {n: p for n, p in bound.items() if n in grads and (only is None or id(p) in only)}
        before = {
            n: None if p.grad is None else p.grad.detach().clone() for n, p in touched.items()
        }
        result = super()._add_gradient(bound, value, only, loss_scale)
        with torch.no_grad():
            for name, param in touched.items():
                if param.grad is not None:
                    added = param.grad if before[name] is None else param.grad - before[name]
                    grads[name].add_(added)
        return result

    def _follow_model(self) -> None:
        """Track the model's parameters now, by name (a replaced module is followed).

        Raises:
            ValueError: a tracked parameter is gone, or its shape changed (ω and the task's
                start could not apply to it).
        """
        current = dict(self.model.named_parameters())
        missing = [name for name in self._tracked if name not in current]
        if missing:
            raise ValueError(f"the model no longer has the tracked parameters {missing}")
        for name in self._tracked:
            if current[name].shape != self._start[name].shape:
                raise ValueError(
                    f"parameter {name!r} has shape {tuple(current[name].shape)} but SI tracks "
                    f"it with shape {tuple(self._start[name].shape)}"
                )
        self._tracked = {name: current[name] for name in self._tracked}

    def state_dict(self) -> dict[str, Any]:
        """The penalty's state plus ξ, the running ω and the task's starting parameters."""
        state = super().state_dict()
        state["damping"] = self.damping
        state["path_gradient"] = self.path_gradient.value
        state["path_integral"] = {n: t.clone() for n, t in self._path.items()}
        state["task_start"] = {n: t.clone() for n, t in self._start.items()}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict()` (also in the middle of a task)."""
        super().load_state_dict(state)
        self.damping = float(state["damping"])
        if "path_gradient" in state:  # states written before the option existed used "task"
            self.path_gradient = PathGradient.parse(state["path_gradient"])
        self._path = _fitted(state["path_integral"], self._tracked, "path_integral")
        self._start = _fitted(state["task_start"], self._tracked, "task_start")
        self._pending = None

    def to(self, *args: Any, **kwargs: Any) -> SynapticIntelligence:
        """Move or cast Ω, θ̃, ω and the task's start like `Tensor.to`; returns self."""
        super().to(*args, **kwargs)
        self._path = {n: t.to(*args, **kwargs) for n, t in self._path.items()}
        self._start = {n: t.to(*args, **kwargs) for n, t in self._start.items()}
        return self


def _fitted(values: Mapping[str, Tensor], params: dict[str, nn.Parameter], what: str) -> dict:
    if set(values) != set(params):
        raise ValueError(
            f"{what} does not match the model's trainable parameters: "
            f"missing {sorted(set(params) - set(values))}, "
            f"unexpected {sorted(set(values) - set(params))}"
        )
    fitted = {}
    for name, param in params.items():
        if values[name].shape != param.shape:
            raise ValueError(
                f"{what} entry {name!r} has shape {tuple(values[name].shape)}; "
                f"the parameter has {tuple(param.shape)}"
            )
        fitted[name] = values[name].detach().to(dtype=param.dtype, device=param.device).clone()
    return fitted
