"""Recording what each parameter-owning module saw in a forward pass.

The per-layer rules need, for every call of a module, its inputs and the gradient that flows into
its output. Forward hooks record the inputs and the output's *gradient edge* (the autograd node that
produced it). Asking autograd for the gradient at that edge, rather than at the output tensor, stays
correct when a later in-place op (``ReLU(inplace=True)``) rewrites the output tensor, and it asks
autograd for nothing else: no weight gradient is ever computed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.utils._pytree import tree_flatten


@dataclass
class ModuleCall:
    """One call of a module during the forward pass.

    Attributes:
        module: the module that ran.
        name: its qualified name in the model.
        args, kwargs: what it was called with.
        output_index: positions, among the output's tensor leaves, of those that carry a gradient.
        edges: the gradient edges of those leaves, in the same order.
        shapes: the shapes of those leaves, in the same order.
        versions: the in-place version counters of the tensor arguments when the module ran.
        static_storage: storage addresses of the model's parameters and buffers; arguments that
            live there (a buffer passed as a mask, a slice of positional encodings) are shared by
            all samples, whatever their first dimension.
        cache: scratch space for rules, to reuse work across the output-gradient vectors of a
            batch (e.g. input windows of a convolution); it lives as long as the call record.
        boundary: the autograd nodes of the tensor arguments that carry a gradient: where the
            call's own part of the graph ends (see `ewc.fisher.coverage`).
        own: local name → id of the tensor the module held as that parameter during the call
            (under `torch.func.functional_call` it is not the registered parameter).
        leaves: the positional and keyword arguments flattened (nested ones included), once.
    """

    module: nn.Module
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output_index: list[int]
    edges: list[GradientEdge]
    shapes: list[torch.Size]
    versions: list[int] = field(default_factory=list)
    static_storage: frozenset[int] = frozenset()
    cache: dict[Any, Any] = field(default_factory=dict)
    boundary: tuple[Any, ...] = ()
    own: dict[str, int] = field(default_factory=dict)
    leaves: list[Any] | None = None

    @property
    def input(self) -> Tensor:
        """The input of every layer with a closed-form rule.

        Its first positional argument, or the keyword argument ``input`` (the name of that
        argument in their ``forward``).
        """
        if self.args:
            return self.args[0]
        if "input" in self.kwargs:
            return self.kwargs["input"]
        raise TypeError(f"module {self.name!r} was called without an input tensor")

    def arguments(self) -> list[Any]:
        """The positional and keyword arguments, nested ones flattened (computed once)."""
        if self.leaves is None:
            self.leaves = flat_arguments(self.args, self.kwargs)
        return self.leaves

    def tensor_arguments(self) -> list[Tensor]:
        """The tensors among the positional and keyword arguments, nested ones included."""
        return [v for v in self.arguments() if isinstance(v, Tensor)]

    def has_batched_input(self, batch_size: int) -> bool:
        """Whether any argument holds one row per sample (else the call is the same for all).

        The answer is kept in `cache`: the coverage plan asks it once per parameter.
        """
        key = ("batched", batch_size)
        if key not in self.cache:
            self.cache[key] = any(self.is_batched(v, batch_size) for v in self.arguments())
        return self.cache[key]

    def is_batched(self, value: Any, batch_size: int) -> bool:
        """Whether an argument holds one row per sample.

        That is, a tensor with the batch as its first dimension that is not (a view of) one of the
        model's parameters or buffers.
        """
        return (
            isinstance(value, Tensor)
            and value.dim() > 0
            and value.shape[0] == batch_size
            and value.untyped_storage().data_ptr() not in self.static_storage
        )

    def narrow(self, start: int, stop: int, batch_size: int) -> ModuleCall:
        """The same call restricted to samples ``start:stop`` of a batch of ``batch_size``."""

        def cut(value: Any) -> Any:
            return value[start:stop] if self.is_batched(value, batch_size) else value

        args = tuple(cut(a) for a in self.args)
        kwargs = {k: cut(v) for k, v in self.kwargs.items()}
        return replace(self, args=args, kwargs=kwargs, cache={}, leaves=None)

    def check_inputs_unchanged(self) -> None:
        """Raise if a tensor argument was modified in place after the module ran."""
        tensors = [a for a in self.args if isinstance(a, Tensor)]
        if [t._version for t in tensors] != self.versions:
            raise RuntimeError(
                f"the input of module {self.name!r} was modified in place after the module ran; "
                "the Fisher needs the values the module saw (replace the in-place op after it)"
            )


class CallRecorder:
    """Forward hooks on the given modules that record each call as a `ModuleCall`.

    ``static`` lists the model's parameters and buffers (see `ModuleCall.static_storage`).
    Use as a context manager: the hooks are removed on exit, also when an exception escapes.
    `paused()` suspends recording, for re-running a module outside the main forward pass.
    """

    def __init__(self, modules: dict[str, nn.Module], static: Iterable[Tensor] = ()):
        self._modules = modules
        self._static_storage = frozenset(t.untyped_storage().data_ptr() for t in static)
        self._names = {id(m): name for name, m in modules.items()}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._recording = True
        self.calls: list[ModuleCall] = []

    def __enter__(self) -> CallRecorder:
        for module in self._modules.values():
            self._handles.append(module.register_forward_hook(self._record, with_kwargs=True))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Suspend recording inside the block."""
        previous, self._recording = self._recording, False
        try:
            yield
        finally:
            self._recording = previous

    def _record(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not self._recording:
            return
        leaves = [output] if isinstance(output, Tensor) else tree_flatten(output)[0]
        index, edges, shapes = [], [], []
        for position, leaf in enumerate(leaves):
            if isinstance(leaf, Tensor) and leaf.requires_grad:
                index.append(position)
                edges.append(get_gradient_edge(leaf))
                shapes.append(leaf.shape)
        if not edges:
            return
        versions = [a._version for a in args if isinstance(a, Tensor)]
        name = self._names[id(module)]
        inputs = flat_arguments(args, kwargs)
        boundary = tuple(
            get_gradient_edge(t).node for t in inputs if isinstance(t, Tensor) and t.requires_grad
        )
        self.calls.append(
            ModuleCall(
                module,
                name,
                args,
                kwargs,
                index,
                edges,
                shapes,
                versions,
                self._static_storage,
                boundary=boundary,
                own={k: id(t) for k, t in module._parameters.items() if t is not None},
                leaves=inputs,
            )
        )


def flat_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    """``args`` and ``kwargs`` flattened as `tree_flatten` does, without it for plain tensors.

    A layer is nearly always called with tensors alone; pytree's generic walk cost more than the
    rest of the per-batch coverage plan.
    """
    if not kwargs and all(isinstance(a, Tensor) for a in args):
        return list(args)
    values, _ = tree_flatten((args, kwargs))
    return values
