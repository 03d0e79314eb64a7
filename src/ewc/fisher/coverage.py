"""Which path gives each parameter's per-sample gradients: proved on the autograd graph of a batch.

The per-layer rules see a parameter only through the recorded calls of the module that owns it.
A parameter can also be used elsewhere: ``logits = h @ self.embed.weight.T`` (functional weight
tying), a child's weight read by its parent's ``forward`` (``nn.MultiheadAttention`` hands
``out_proj.weight`` to a functional kernel; a fused fast path bypasses its submodules), a
parameter passed into ``torch.func``. Such a use is invisible to the rules and, ignored, makes the
Fisher silently wrong.

So every batch's graph is inspected before any gradient is computed. Each recorded call owns the
part of the graph between its outputs and its tensor arguments (its *inner nodes*); a *use* of a
parameter is an edge from a node of the graph that reaches the logits into that parameter's
``AccumulateGrad`` node. Each trainable parameter then takes the first path that accounts for
every one of its uses:

1. **its rule**: every use lies inside calls of the module that owns it, and those calls have
   per-sample inputs (the usual case: closed forms, or `FunctionalRule` for custom modules);
2. **an ancestor's functional rule**: every use lies inside calls of modules above its owner that
   have no closed-form rule, none nested in another (``MultiheadAttention.out_proj``); the
   ancestor's forward is re-run per sample with the parameter substituted;
3. **the whole model**: per-sample gradients by ``torch.func`` over the model and ``output_fn``
   (`ewc.fisher.whole_model`), always correct for independent samples, and the slowest.

The numeric check of `ewc.fisher.verify` then confirms the plan on the first batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ewc.fisher.capture import ModuleCall
from ewc.fisher.rules import FALLBACK, rule_for

Node = Any  # torch.autograd.graph.Node; hashed by identity (autograd keeps one object per node)

#: Why a parameter goes to the whole-model path, by cause.
OUTSIDE_OWNER = (
    "used outside every recorded call of the module that owns it (functional weight tying, a "
    "child's weight read by its parent, a module whose output holds no tensor autograd tracks)"
)
UNBATCHED_CALL = "its module was called without a per-sample input"


@dataclass
class Plan:
    """How the per-sample gradients of each trainable parameter are formed for one batch.

    Attributes:
        sites: full name → [(call position, name relative to that call's module)]: the calls whose
            rules give the parameter's per-sample gradient (summed over sites before squaring).
        whole_model: full name → why it takes the whole-model path instead.
    """

    sites: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    whole_model: dict[str, str] = field(default_factory=dict)

    def route_to_whole_model(self, reasons: dict[str, str]) -> None:
        """Move parameters from their rules to the whole-model path."""
        for name, reason in reasons.items():
            self.sites.pop(name, None)
            self.whole_model[name] = reason


def plan_batch(
    logits: Tensor,
    calls: list[ModuleCall],
    params: dict[str, nn.Parameter],
    batch_size: int,
) -> Plan:
    """The path of every trainable parameter that reaches ``logits`` (see the module docstring)."""
    uses = parameter_uses(logits, params)
    inner = _InnerNodes(calls)
    full_names = {id(p): name for name, p in params.items()}
    owned = _owned_sites(calls, full_names)
    plan = Plan()
    for name, consumers in uses.items():
        sites = _owner_sites(owned.get(name, []), consumers, inner, calls, batch_size)
        if sites is not None:
            plan.sites[name] = sites
            continue
        sites = _ancestor_sites(params[name], consumers, inner, calls, batch_size)
        if sites is not None:
            plan.sites[name] = sites
        else:
            unbatched = any(
                not calls[i].has_batched_input(batch_size) for i, _ in owned.get(name, [])
            )
            plan.whole_model[name] = UNBATCHED_CALL if unbatched else OUTSIDE_OWNER
    return plan


def parameter_uses(output: Tensor, params: dict[str, nn.Parameter]) -> dict[str, set[Node]]:
    """Full name → the graph nodes that consume the parameter, over the graph behind ``output``."""
    names = {id(p): name for name, p in params.items()}
    uses: dict[str, set[Node]] = {}
    for node in _reachable([output.grad_fn], stop=()):
        for child, _ in node.next_functions:
            name = names.get(id(getattr(child, "variable", None)))
            if name is not None:
                uses.setdefault(name, set()).add(node)
    return uses


def _reachable(starts: Iterable[Node], stop: Iterable[Node]) -> set[Node]:
    """The nodes reachable from ``starts`` without entering ``stop``, leaves excluded."""
    stop, seen = set(stop), set()
    pending = [n for n in starts if n is not None and n not in stop]
    while pending:
        node = pending.pop()
        if node in seen or not node.next_functions:
            continue
        seen.add(node)
        pending.extend(c for c, _ in node.next_functions if c is not None and c not in stop)
    return seen


class _InnerNodes:
    """The inner nodes of each recorded call, computed when first asked for."""

    def __init__(self, calls: list[ModuleCall]):
        self._calls = calls
        self._sets: dict[int, set[Node]] = {}

    def __getitem__(self, position: int) -> set[Node]:
        if position not in self._sets:
            call = self._calls[position]
            self._sets[position] = _reachable((e.node for e in call.edges), call.boundary)
        return self._sets[position]


def _owned_sites(
    calls: list[ModuleCall], full_names: dict[int, str]
) -> dict[str, list[tuple[int, str]]]:
    """Full name → [(call position, local name)] over the calls of the module owning it.

    Only the calls that used the registered parameter itself are listed.
    """
    owned: dict[str, list[tuple[int, str]]] = {}
    for position, call in enumerate(calls):
        for local, identity in call.own.items():
            if identity in full_names:
                owned.setdefault(full_names[identity], []).append((position, local))
    return owned


def _owner_sites(
    owned: list[tuple[int, str]],
    consumers: set[Node],
    inner: _InnerNodes,
    calls: list[ModuleCall],
    batch_size: int,
) -> list[tuple[int, str]] | None:
    """Path 1: the owner's calls that hold the uses, if they hold all of them; else None."""
    sites, covered = [], set()
    for position, local in owned:
        held = consumers & inner[position]
        if held:
            if not calls[position].has_batched_input(batch_size):
                return None
            sites.append((position, local))
            covered |= held
    return sites if covered == consumers else None


def _ancestor_sites(
    param: nn.Parameter,
    consumers: set[Node],
    inner: _InnerNodes,
    calls: list[ModuleCall],
    batch_size: int,
) -> list[tuple[int, str]] | None:
    """Path 2: for each use, the innermost call of a functional-rule ancestor that holds it."""
    candidates = [
        (position, local)
        for position, call in enumerate(calls)
        if rule_for(call.module) is FALLBACK and call.has_batched_input(batch_size)
        for local in _names_of(call.module, param)
    ]
    chosen: dict[int, str] = {}
    for node in consumers:
        holding = [(len(inner[i]), i, local) for i, local in candidates if node in inner[i]]
        if not holding:
            return None
        _, position, local = min(holding, key=lambda h: h[:2])
        chosen[position] = local
    for a in chosen:
        for b in chosen:
            if a != b and any(e.node in inner[a] for e in calls[b].edges):
                return None  # nested calls would count the inner call's uses twice
    return sorted(chosen.items())


def _names_of(module: nn.Module, param: nn.Parameter) -> list[str]:
    """The dotted name of ``param`` inside ``module``'s subtree, below its own parameters."""
    return [
        name
        for name, p in module.named_parameters(remove_duplicate=False)
        if p is param and "." in name
    ][:1]
