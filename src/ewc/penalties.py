"""Quadratic penalties that keep a model near what earlier tasks taught it: EWC and L2.

EWC (Kirkpatrick et al. 2017, Eq. 3) adds to the loss of a new task

    (λ/2) Σ_i F_i (θ_i − θ*_i)²

the Laplace approximation of the old task's posterior: a Gaussian centred at the old optimum θ*
whose precision is the diagonal Fisher F. Note the 1/2: ``strength`` is the paper's λ.

With several old tasks t there are two published variants:

- ``separate`` (the paper): one term per task, Σ_t (λ/2) Σ_i F_t,i (θ_i − θ*_t,i)². A sum of
  quadratics is one quadratic, Σ_t F_t (θ − θ_t)² = Ω (θ − θ̄)² + c with Ω = Σ_t F_t,
  θ̄ = Σ_t F_t θ_t / Ω and c = Σ_t F_t (θ_t − θ̄)², so it is stored merged: same value, same
  gradient, and a cost per call that does not grow with the number of tasks.
- ``online`` (Schwarz et al. 2018, "Progress & Compress"; Huszár 2018): F ← γ F + F_new and the
  anchor moves to the latest θ*; γ ∈ (0, 1] forgets old tasks gradually, and γ = 0 keeps only
  the latest task (Ω = F_latest: the L2 of Hsu et al. 2018's code, ``online_reg``).

The L2 baseline of the paper is the same penalty with F = 1 for every parameter.

EWC also takes a K-FAC Fisher (`ewc.kfac_fisher`, Ritter et al. 2018): its Linear and Conv2d
layers then contribute (λ/2) vec(θ − θ*)ᵀ (G ⊗ A) vec(θ − θ*) per layer instead of a diagonal
term (the tasks' Kronecker terms are kept apart, see `ewc._kronecker_terms`), and the remaining
parameters keep the diagonal of the same kind.

Ω and θ̄ live on each parameter's device, in its dtype, or in float32 for a float16 or bfloat16
parameter: a Fisher's small entries would round to zero in half precision, and the gradient is
cast to the parameter's dtype only when it is added to ``.grad``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.utils.hooks import RemovableHandle

from ewc._choices import Choice
from ewc._kronecker_terms import KroneckerTerms
from ewc.fisher import DiagonalFisher
from ewc.fisher.kronecker import KroneckerFisher


class PenaltyMode(Choice):
    """How the terms of several consolidated tasks combine (see the module docstring)."""

    __noun__ = ("penalty mode", "modes")

    SEPARATE = "separate"
    ONLINE = "online"


class QuadraticPenalty:
    """(strength/2) [Σ_i Ω_i (θ_i − θ̄_i)² + c]: the state and arithmetic EWC and L2 share.

    Holds, per trainable parameter of ``model`` (by ``named_parameters()`` name), the importance
    Ω and the anchor θ̄, plus the constant c that makes the separate mode's value exact. Nothing is
    stored on the model or its parameters. Before the first consolidation the penalty is 0.

    Subclasses whose paper writes the penalty without the 1/2 (SI, MAS) set ``penalty_factor`` to
    1, so that ``strength`` stays the paper's constant: the value is then h λ [Σ Ω (θ − θ̄)² + c]
    with h = ``penalty_factor``.

    Args:
        model: the model whose parameters are penalised.
        strength: λ ≥ 0, the paper's λ (the penalty carries the 1/2).
        mode: ``"separate"`` (default) or ``"online"``.
        gamma: the online decay γ ∈ [0, 1] (0: only the latest task); must stay 1 in separate
            mode.
    """

    #: h in h λ Σ Ω (θ − θ̄)²: 1/2 for EWC and L2 (Kirkpatrick et al. 2017, Eq. 3).
    penalty_factor: float = 0.5

    def __init__(
        self,
        model: nn.Module,
        *,
        strength: float,
        mode: PenaltyMode | str = "separate",
        gamma: float = 1.0,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        self.model = model
        self.strength = strength
        self.mode = PenaltyMode.parse(mode)
        self.gamma = _checked_gamma(gamma, self.mode)
        self.num_tasks = 0
        self.fisher_kind: str | None = None
        self._params: dict[str, nn.Parameter] = {}
        self._importance: dict[str, Tensor] = {}
        self._anchor: dict[str, Tensor] = {}
        self._constant = torch.zeros((), dtype=torch.float64)
        self._kronecker = KroneckerTerms()
        self._work: tuple[list, list[Tensor], list[Tensor]] | None = None

    @property
    def strength(self) -> float:
        """λ, the paper's regularisation strength (the penalty is h λ Σ ..., h = penalty_factor)."""
        return self._strength

    @strength.setter
    def strength(self, value: float) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise ValueError(f"strength must be a finite number ≥ 0; got {value!r}")
        if value < 0:
            raise ValueError(f"strength must be ≥ 0; got {value}")
        self._strength = float(value)

    @property
    def importance(self) -> dict[str, Tensor]:
        """Ω per parameter: Σ_t F_t (separate) or the decayed running Fisher (online)."""
        return dict(self._importance)

    @property
    def anchor(self) -> dict[str, Tensor]:
        """θ̄ per parameter: the Ω-weighted mean of the anchors (separate) or the latest (online)."""
        return dict(self._anchor)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(strength={self.strength}, mode={self.mode.value!r}, "
            f"gamma={self.gamma}, num_tasks={self.num_tasks}, fisher_kind={self.fisher_kind!r})"
        )

    def penalty(self) -> Tensor:
        """The penalty's value at the model's current parameters, differentiable in them.

        The gradient λ Ω (θ − θ̄) is formed with the value, in a few fused element-wise passes, and
        handed to autograd as is: a call costs the same for any number of consolidated tasks and
        builds no per-element graph (so it supports one backward, not double backward).
        """
        if not self._params:
            return torch.zeros(())
        params = list(self._bound_params().values())
        with torch.no_grad():
            value, weighted = self._value_and_weighted(params)
        if not torch.is_grad_enabled() or not any(p.requires_grad for p in params):
            return value
        gradients = torch._foreach_mul(weighted, self._gradient_scale())
        return _KnownGradient.apply(value, gradients, *params)

    __call__ = penalty

    @torch.no_grad()
    def add_gradient_(
        self,
        *,
        value: bool = True,
        parameters: Iterable[Tensor] | None = None,
        loss_scale: float = 1.0,
    ) -> Tensor | None:
        """Add the penalty's gradient λ Ω (θ − θ̄) straight into each parameter's ``.grad``.

        Equivalent to ``penalty().backward()`` after the task loss's backward, without going
        through autograd at all. Returns the penalty's (detached) value, or None when ``value``
        is False. A parameter frozen since the consolidation (``requires_grad=False``) gets
        nothing, as with autograd.

        With the value, four element-wise passes per parameter, whatever the number of
        consolidated tasks: Δ = θ − θ̄ and w = Ω Δ into buffers kept between steps, the value's
        Σ w Δ, and ``.grad += 2hλ w`` (one fused multiply-add: the scale is never a pass of its
        own). Without it (the `attach` hook, which has no use for it) two: Δ = θ − θ̄, then
        ``.grad += 2hλ Ω Δ`` in one fused multiply-add that reads Ω where it is added (Kronecker
        terms, whose gradient is not element-wise, take the four-pass path).

        Args:
            value: also return the penalty's value.
            parameters: add only into these (one optimizer's, where several share the model);
                None: every penalised parameter.
            loss_scale: the factor the gradients still carry (a fused optimizer under
                ``torch.amp.GradScaler`` divides by it inside its step); the penalty's gradient
                is multiplied by it too.
        """
        only = None if parameters is None else {id(p) for p in parameters}
        if not self._params:
            return torch.zeros(()) if value else None
        return self._add_gradient(self._bound_params(), value, only, loss_scale)

    def _add_gradient(
        self,
        bound: dict[str, nn.Parameter],
        value: bool,
        only: set[int] | None,
        loss_scale: float,
    ) -> Tensor | None:
        """`add_gradient_` on parameters already looked up (`_bound_params`)."""
        params = list(bound.values())
        if not value and not self._kronecker.terms:
            self._add_gradient_only(params, only, loss_scale)
            return None
        total, weighted = self._value_and_weighted(params, self._work_buffers(params))
        scale = self._gradient_scale() * loss_scale
        for param, w in zip(params, weighted, strict=True):
            if not param.requires_grad or (only is not None and id(param) not in only):
                continue  # frozen since (no gradient, as with autograd), or another optimizer's
            if param.grad is None:
                param.grad = torch.mul(w, scale).to(param.dtype)
            else:
                param.grad.add_(w, alpha=scale)
        return total if value else None

    def _add_gradient_only(
        self, params: list[nn.Parameter], only: set[int] | None, factor: float
    ) -> None:
        """``.grad += 2hλ Ω (θ − θ̄)`` in two passes: the difference, then one fused addcmul."""
        differences, _ = self._work_buffers(params)
        scale = self._gradient_scale() * factor
        for (name, param), difference in zip(self._params.items(), differences, strict=True):
            if not param.requires_grad or (only is not None and id(param) not in only):
                continue  # frozen since (no gradient, as with autograd), or another optimizer's
            importance = self._importance[name]
            torch.sub(param, self._anchor[name], out=difference)
            if param.grad is None:
                param.grad = torch.mul(difference, importance).mul_(scale).to(param.dtype)
            else:
                param.grad.addcmul_(difference, importance, value=scale)

    def add_gradient_for(
        self, optimizer: torch.optim.Optimizer, *, value: bool = False, loss_scale: float = 1.0
    ) -> Tensor | None:
        """`add_gradient_` for one step of ``optimizer``: into its own parameters only.

        Nothing is added (None is returned) before the first consolidation, or when none of the
        optimizer's parameters has a gradient (no backward ran: a skipped step must not become a
        penalty-only step). ``loss_scale`` as in `add_gradient_`.

        Raises:
            ValueError: the optimizer holds none of the penalised parameters (a penalty built on
                another model).
        """
        if not self.num_tasks:
            return None
        own = [p for group in optimizer.param_groups for p in group["params"]]
        only = {id(p) for p in own}
        bound = self._bound_params()  # looked up once per step
        check_optimizer_holds(bound.values(), only)
        if all(p.grad is None for p in own):
            return None
        with torch.no_grad():
            return self._add_gradient(bound, value, only, loss_scale)

    def attach(self, optimizer: torch.optim.Optimizer) -> RemovableHandle:
        """Add the penalty's gradient into ``.grad`` before every ``optimizer.step()``.

        The optimizer-agnostic hook for a loop of your own: after ``attach``, train with the task
        loss alone (``loss.backward(); optimizer.step()``) and each step applies
        ∇[(λ/2) Σ_i Ω_i (θ_i − θ̄_i)²] = λ Ω (θ − θ̄) as well, exactly as ``(loss +
        penalty()).backward()`` would, through `add_gradient_` (no autograd graph; Ω and θ̄ are
        read once per step whatever the number of consolidated tasks). It is registered with
        `torch.optim.Optimizer.register_step_pre_hook`, so it runs after anything your loop does
        between ``backward`` and ``step``: gradient clipping sees the task gradient only, and with
        ``torch.amp.GradScaler`` the penalty's gradient is added after unscaling (a fused
        optimizer, which unscales inside its step, gets it scaled alike). Only the optimizer's own
        parameters get it: with several optimizers over one model, attach the penalty to each. A
        step with no gradient at all (nothing was backpropagated) stays a no-op. LBFGS, which
        re-evaluates a closure inside ``step``, is refused: add ``penalty()`` to the closure's
        loss instead. Consolidating later needs no new ``attach`` (a second one is refused).

        Args:
            optimizer: a torch optimizer over (some of) the penalised parameters.

        Returns:
            The hook's handle: ``handle.remove()`` detaches the penalty.

        Example:
            >>> handle = penalty.attach(optimizer)
            >>> for x, y in loader_b:
            ...     optimizer.zero_grad()
            ...     F.cross_entropy(model(x), y).backward()
            ...     optimizer.step()  # adds λ Ω (θ − θ̄) to .grad, then steps
        """
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"attach needs a torch.optim.Optimizer; got {type(optimizer).__name__} "
                "(in a loop without one, call penalty.add_gradient_() after backward)"
            )
        if isinstance(optimizer, torch.optim.LBFGS):
            raise ValueError(
                "LBFGS re-evaluates its closure (which zeroes the gradients) inside step, after "
                "the hook has run, so the penalty would be lost; add penalty() to the closure's "
                "loss instead"
            )
        if self.is_attached_to(optimizer):
            raise ValueError(
                "this penalty is already attached to this optimizer: a second hook would add its "
                "gradient twice (consolidating later needs no new attach)"
            )
        return optimizer.register_step_pre_hook(_StepHook(self))

    def is_attached_to(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether `attach` has hooked this penalty to ``optimizer`` (and the hook is in place)."""
        hooks = getattr(optimizer, "_optimizer_step_pre_hooks", {})
        return any(isinstance(h, _StepHook) and h.penalty is self for h in hooks.values())

    def _work_buffers(self, params: list[nn.Parameter]) -> tuple[list[Tensor], list[Tensor]]:
        """Two tensors per parameter for θ − θ̄ and Ω (θ − θ̄), kept from one step to the next.

        Allocating them afresh on every step cost more than the arithmetic: blocks of a megabyte
        are mmap-ed and page-faulted anew by glibc's default allocator.
        """
        names = list(self._params)
        shapes = []
        for name, p in zip(names, params, strict=True):
            difference = torch.promote_types(p.dtype, self._anchor[name].dtype)
            product = torch.promote_types(difference, self._importance[name].dtype)
            shapes.append((p.shape, p.device, difference, product))
        if self._work is None or self._work[0] != shapes:
            pairs = [
                (torch.empty(s, device=d, dtype=a), torch.empty(s, device=d, dtype=b))
                for s, d, a, b in shapes
            ]
            self._work = (shapes, [a for a, _ in pairs], [b for _, b in pairs])
        return self._work[1], self._work[2]

    def _gradient_scale(self) -> float:
        """2 h λ: the factor between Ω (θ − θ̄) and the penalty's gradient (λ for EWC, h = 1/2)."""
        return 2 * self.penalty_factor * self.strength

    def _value_and_weighted(
        self,
        params: list[nn.Parameter],
        out: tuple[list[Tensor], list[Tensor]] | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """Return h λ (Σ Ω (θ − θ̄)² + c) and Ω (θ − θ̄) per parameter (h = 1/2 for EWC).

        The gradient is ``_gradient_scale()`` times the second. With ``out`` (two lists of work
        tensors) the differences and products are written there instead of into new tensors; the
        arithmetic, and so every bit, is the same.
        """
        names = list(self._params)
        anchors, importance = [self._anchor[n] for n in names], [self._importance[n] for n in names]
        if out is None:
            differences = torch._foreach_sub(params, anchors)
            weighted = torch._foreach_mul(differences, importance)
        else:
            differences, weighted = out
            for p, a, o, d, w in zip(params, anchors, importance, *out, strict=True):
                torch.sub(p, a, out=d)
                torch.mul(d, o, out=w)
        squares = sum(
            torch.dot(w.flatten(), d.flatten()) for w, d in zip(weighted, differences, strict=True)
        )
        if self._kronecker.terms:
            squares = squares + self._add_kronecker(names, weighted)
        value = self.penalty_factor * self.strength * (squares + self._constant.to(squares))
        return value, weighted

    def _add_kronecker(self, names: list[str], weighted: list[Tensor]) -> Tensor:
        """Add ½ ∂/∂θ of the Kronecker terms (G Δ A per block) into ``weighted``; their value."""
        value, gradients = self._kronecker.value_and_gradient(self._params)
        for name, w in zip(names, weighted, strict=True):
            if name in gradients:
                w.add_(gradients[name], alpha=0.5)
        return value.to(weighted[0].dtype)

    def _consolidate(self, importance: Mapping[str, Tensor], kind: str | None) -> None:
        """Add one task's term: importance F at the model's current parameters θ*."""
        params = self._trainable()
        fisher = _checked_importance(importance, params)
        if self.fisher_kind is not None and kind is not None and kind != self.fisher_kind:
            raise ValueError(
                f"this penalty holds {self.fisher_kind!r} Fishers and a {kind!r} Fisher is a "
                "different quantity (λ differs by orders of magnitude); use one kind per penalty"
            )
        anchors = {name: p.detach().to(_state_dtype(p), copy=True) for name, p in params.items()}
        if not self._params or self.mode is PenaltyMode.ONLINE:
            self._replace_or_decay(fisher, anchors)
        else:
            self._merge(fisher, anchors)
        self._params, self._work = params, None
        self.fisher_kind = kind if kind is not None else self.fisher_kind
        self.num_tasks += 1

    def _replace_or_decay(self, fisher: dict[str, Tensor], anchors: dict[str, Tensor]) -> None:
        """Online EWC: Ω ← γ Ω + F, θ̄ ← θ*; also the first task of either mode (Ω = F, θ̄ = θ*)."""
        for name, value in fisher.items():
            old = self._importance.get(name)
            self._importance[name] = value if old is None else self.gamma * old + value
        self._anchor = anchors

    def _merge(self, fisher: dict[str, Tensor], anchors: dict[str, Tensor]) -> None:
        """Separate EWC: fold F (θ − θ*)² into Ω (θ − θ̄)² + c, exactly.

        Ω' = Ω + F, θ̄' = θ̄ + (F/Ω')(θ* − θ̄), c' = c + Σ (Ω F/Ω') (θ̄ − θ*)² (entries with Ω' = 0
        carry no penalty and keep θ̄' = θ*).
        """
        for name, f in fisher.items():
            omega, mean, new = self._importance[name], self._anchor[name], anchors[name]
            total = omega + f
            safe = torch.where(total > 0, total, torch.ones_like(total))
            extra = (omega * f / safe * (mean - new).square()).sum()
            self._constant += extra.to(device=self._constant.device, dtype=torch.float64)
            self._anchor[name] = torch.where(total > 0, mean + f / safe * (new - mean), new)
            self._importance[name] = total

    def _trainable(self) -> dict[str, nn.Parameter]:
        """The model's trainable parameters, which must be those of the earlier consolidations."""
        params = {name: p for name, p in self.model.named_parameters() if p.requires_grad}
        if self._params and set(params) != set(self._params):
            raise ValueError(
                "the model's trainable parameters changed since the last consolidation: "
                f"added {sorted(set(params) - set(self._params))}, "
                f"removed {sorted(set(self._params) - set(params))}"
            )
        for name, param in params.items():
            self._check_shape(name, param)
        return params

    def _bound_params(self) -> dict[str, nn.Parameter]:
        """The model's parameters now, under the consolidated names, in the consolidated order.

        Looked up again on every call: the penalty is on the model's parameters by name, so a
        module replaced by one of the same shapes, or ``load_state_dict(..., assign=True)``, is
        followed. A consolidated parameter the model no longer has, or whose shape changed, is an
        error: its Ω and θ̄ would otherwise be applied to nothing, or broadcast.
        """
        current = dict(self.model.named_parameters())
        missing = [name for name in self._params if name not in current]
        if missing:
            raise ValueError(
                f"the model no longer has the consolidated parameters {missing}: the penalty "
                "holds Ω and θ̄ for them; consolidate a new penalty for the changed model"
            )
        bound = {name: current[name] for name in self._params}
        for name, param in bound.items():
            self._check_shape(name, param)
        if any(bound[name] is not param for name, param in self._params.items()):
            self._params, self._work = bound, None
        return bound

    def penalised_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters the penalty pulls on, as the model holds them now.

        Empty before the first consolidation; raises if the model lost or reshaped one
        (`_bound_params`).
        """
        return self._bound_params() if self._params else {}

    def _check_shape(self, name: str, param: Tensor) -> None:
        """Refuse a parameter whose shape is not that of its stored θ̄ (and Ω)."""
        anchor = self._anchor.get(name)
        if anchor is not None and anchor.shape != param.shape:
            raise ValueError(
                f"parameter {name!r} has shape {tuple(param.shape)} but was consolidated with "
                f"shape {tuple(anchor.shape)}: Ω and θ̄ would be broadcast; consolidate a new "
                "penalty for the changed model"
            )

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the penalty on the same model (tensors and plain data)."""
        return {
            "mode": self.mode.value,
            "strength": self.strength,
            "gamma": self.gamma,
            "num_tasks": self.num_tasks,
            "fisher_kind": self.fisher_kind,
            "importance": dict(self._importance),
            "anchor": dict(self._anchor),
            "constant": self._constant.clone(),
            **({"kronecker": self._kronecker.state_dict()} if self._kronecker.terms else {}),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict()`; the mode must match and the tensors must fit the model."""
        if PenaltyMode.parse(state["mode"]) is not self.mode:
            raise ValueError(
                f"state_dict is for mode {state['mode']!r}; this penalty is {self.mode.value!r}"
            )
        params = {name: p for name, p in self.model.named_parameters() if p.requires_grad}
        importance = _checked_importance(state["importance"], params) if state["num_tasks"] else {}
        anchor = _checked_tensors(state["anchor"], params, "anchor") if state["num_tasks"] else {}
        self.strength = state["strength"]
        self.gamma = _checked_gamma(state["gamma"], self.mode)
        self.num_tasks = int(state["num_tasks"])
        self.fisher_kind = state["fisher_kind"]
        self._params = params if self.num_tasks else {}
        self._importance, self._anchor, self._work = importance, anchor, None
        self._constant = state["constant"].detach().to(torch.float64).clone()
        self._kronecker.load_state_dict(state.get("kronecker", []))

    def to(self, *args: Any, **kwargs: Any) -> QuadraticPenalty:
        """Move or cast the stored Ω and θ̄ like `Tensor.to`; returns self."""
        self._importance = {n: t.to(*args, **kwargs) for n, t in self._importance.items()}
        self._anchor = {n: t.to(*args, **kwargs) for n, t in self._anchor.items()}
        self._kronecker.to(*args, **kwargs)
        self._work = None
        return self


class _KnownGradient(torch.autograd.Function):
    """Hands autograd a value whose gradient in ``params`` was already computed."""

    @staticmethod
    def forward(ctx: Any, value: Tensor, gradients: list[Tensor], *params: Tensor) -> Tensor:
        ctx.gradients = gradients
        return value.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        gradients = getattr(ctx, "gradients", None)
        if gradients is None:
            raise RuntimeError("a penalty value supports one backward pass; call the penalty again")
        del ctx.gradients  # released as soon as it is used
        torch._foreach_mul_(gradients, grad_output)
        return (None, None, *gradients)


def check_optimizer_holds(penalised: Iterable[Tensor], optimized: set[int]) -> None:
    """Raise unless one of the ``penalised`` parameters is among the optimizer's (by ``id``).

    Raises:
        ValueError: none is: the penalty was built on another model (or the optimizer trains
            other parameters only), and its gradient would go nowhere.
    """
    if not any(id(p) in optimized for p in penalised):
        raise ValueError(
            "the optimizer holds none of the penalised parameters: the penalty was built on "
            "another model than the one this optimizer trains (or the optimizer trains other "
            "parameters only)"
        )


class _StepHook:
    """The optimizer step pre-hook of `QuadraticPenalty.attach`."""

    def __init__(self, penalty: QuadraticPenalty):
        self.penalty = penalty

    def __call__(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """`QuadraticPenalty.add_gradient_for` this step of ``optimizer``.

        Gradients a fused optimizer will still unscale (``optimizer.grad_scale``, set by
        ``torch.amp.GradScaler``) get the penalty's gradient scaled alike.
        """
        scale = getattr(optimizer, "grad_scale", None)
        self.penalty.add_gradient_for(optimizer, loss_scale=1.0 if scale is None else float(scale))


class EWC(QuadraticPenalty):
    """Elastic Weight Consolidation: (λ/2) Σ_t Σ_i F_t,i (θ_i − θ*_t,i)² (Kirkpatrick et al. 2017).

    Example:
        >>> penalty = ewc.EWC(model, strength=100.0)
        >>> penalty.consolidate(ewc.diagonal_fisher(model, loader_a))  # after training task A
        >>> loss = F.cross_entropy(model(x), y) + penalty()            # while training task B
    """

    def consolidate(self, fisher: DiagonalFisher | KroneckerFisher | Mapping[str, Tensor]) -> None:
        """Anchor the model's current trainable parameters with this Fisher (one more task).

        Args:
            fisher: a `DiagonalFisher` (its kind is recorded and must match earlier ones), a
                `KroneckerFisher` from `ewc.kfac_fisher` (recorded as ``"kfac-<kind>"``), or a
                mapping from every trainable parameter's name to a finite, non-negative tensor.
        """
        if isinstance(fisher, KroneckerFisher):
            self._consolidate_kronecker(fisher)
            return
        kind = fisher.kind.value if isinstance(fisher, DiagonalFisher) else None
        self._consolidate(fisher, kind)

    def _consolidate_kronecker(self, fisher: KroneckerFisher) -> None:
        """Consolidate the diagonal part, then the blocks as one more Kronecker term.

        The diagonal part goes through the merged quadratic (zero where a block covers).
        """
        params = self._trainable()
        covered = set(fisher.covered)
        importance = {
            name: torch.zeros_like(p) if name in covered else fisher.diagonal[name]
            for name, p in params.items()
            if name in covered or (fisher.diagonal is not None and name in fisher.diagonal)
        }
        self._consolidate(importance, f"kfac-{fisher.kind.value}")
        blocks = [block.to(device=self._device()) for block in fisher.blocks.values()]
        online = self.mode is PenaltyMode.ONLINE
        self._kronecker.add(blocks, self._params, self.gamma, online)

    def _device(self) -> torch.device:
        return next(iter(self._params.values())).device


class L2(QuadraticPenalty):
    """The paper's L2 baseline: (λ/2) Σ_t Σ_i (θ_i − θ*_t,i)², every weight equally important.

    ``mode="online", gamma=0`` pulls towards the latest task's parameters only, (λ/2) ‖θ − θ*_T‖²,
    as the L2 agent of Hsu et al. 2018 (GT-RIPL/Continual-Learning-Benchmark, ``online_reg``).
    """

    def consolidate(self) -> None:
        """Anchor the model's current trainable parameters (one more task)."""
        ones = {name: torch.ones_like(p) for name, p in self._trainable().items()}
        self._consolidate(ones, "identity")


def _checked_gamma(gamma: float, mode: PenaltyMode) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 <= gamma <= 1:
        raise ValueError(f"gamma must be in [0, 1]; got {gamma!r}")
    if mode is PenaltyMode.SEPARATE and gamma != 1:
        raise ValueError(
            f"gamma={gamma} only applies to mode='online'; separate mode keeps every task"
        )
    return float(gamma)


def _checked_tensors(
    values: Mapping[str, Tensor], params: dict[str, nn.Parameter], what: str
) -> dict[str, Tensor]:
    """``values`` on each parameter's device, in its `_state_dtype`, checked to fit."""
    missing, unexpected = sorted(set(params) - set(values)), sorted(set(values) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"{what} does not match the model's trainable parameters: "
            f"missing {missing}, unexpected {unexpected}"
        )
    checked = {}
    for name, param in params.items():
        value = values[name]
        if not isinstance(value, Tensor) or value.shape != param.shape:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"{what} entry {name!r} has shape {shape}; the parameter has {tuple(param.shape)}"
            )
        checked[name] = value.detach().to(dtype=_state_dtype(param), device=param.device)
    return checked


def _state_dtype(param: Tensor) -> torch.dtype:
    """The dtype Ω and θ̄ are kept in: the parameter's, and at least float32."""
    return torch.promote_types(param.dtype, torch.float32)


def _checked_importance(
    values: Mapping[str, Tensor], params: dict[str, nn.Parameter]
) -> dict[str, Tensor]:
    checked = _checked_tensors(values, params, "Fisher")
    for name, value in checked.items():
        bad_nan, bad_negative = int((~torch.isfinite(value)).sum()), int((value < 0).sum())
        if bad_nan or bad_negative:
            raise ValueError(
                f"Fisher entry {name!r} has {bad_nan} non-finite and {bad_negative} negative "
                "values; a Fisher is finite and ≥ 0"
            )
    return checked
