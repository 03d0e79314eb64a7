"""Fallback for modules without a closed-form rule: per-sample vector-Jacobian products.

For a module f(x; θ) whose own parameters θ have no rule, one sample's gradient is the
vector-Jacobian product gₙᵀ ∂f(xₙ; θ)/∂θ with the recorded output gradient gₙ. The module is
re-run on each sample alone (as a batch of one) under `torch.func.vmap`, only for its own
parameters; child modules keep their own rules. Slower than a closed form, but it makes every
model work, including raw ``nn.Parameter``s used in a custom ``forward``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._pytree import tree_flatten

from ewc.fisher.capture import ModuleCall
from ewc.fisher.rules.base import Rule


class FunctionalRule(Rule):
    """Per-sample gradients of any module's parameters by `vmap` over `vjp`.

    Names may be dotted (a descendant's parameter that the module's forward uses directly, as
    ``nn.MultiheadAttention`` does with ``out_proj.weight``). When the gradients arrive in a wider
    dtype than the module's (a float16 model), the module is re-run in that dtype.
    """

    def per_sample(
        self, call: ModuleCall, grads: list[Tensor], names: Sequence[str]
    ) -> dict[str, Tensor]:
        """Per-sample gradients {name: (N, *param.shape)}: the VJPs gₙᵀ ∂f(xₙ; θ)/∂θ under `vmap`.

        The module is re-run on each sample alone (a batch of one), in the gradients' dtype.
        """
        module, size, dtype = call.module, grads[0].shape[0], grads[0].dtype
        params, rest = _state(module, names, dtype)
        arg_dims = tuple(0 if call.is_batched(a, size) else None for a in call.args)
        kwarg_dims = {k: 0 if call.is_batched(v, size) else None for k, v in call.kwargs.items()}

        def one_sample(args: tuple, kwargs: dict, cotangents: list[Tensor]) -> dict[str, Tensor]:
            args = tuple(_as_batch_of_one(a, d, dtype) for a, d in zip(args, arg_dims, strict=True))
            kwargs = {k: _as_batch_of_one(v, kwarg_dims[k], dtype) for k, v in kwargs.items()}

            def outputs(p: dict[str, Tensor]) -> tuple[Tensor, ...]:
                leaves, _ = tree_flatten(functional_call(module, (p, rest), args, kwargs))
                return tuple(leaves[i] for i in call.output_index)

            out, pullback = vjp(outputs, params)
            pairs = zip(cotangents, out, strict=True)
            (grad,) = pullback(tuple(c.unsqueeze(0).to(o.dtype) for c, o in pairs))
            return {name: g.to(dtype) for name, g in grad.items()}

        with without_batching_rule_warnings():
            return vmap(one_sample, in_dims=(arg_dims, kwarg_dims, 0))(
                call.args, call.kwargs, grads
            )


@contextmanager
def without_batching_rule_warnings() -> Iterator[None]:
    """Attention by its math kernel, and no notice for the ops that still loop.

    The math kernel's ops all have batching rules (the fused CPU kernel runs under vmap as a loop
    over samples).
    """
    with warnings.catch_warnings(), sdpa_kernel([SDPBackend.MATH]):
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not")
        yield


def _state(
    module: nn.Module, names: Sequence[str], dtype: torch.dtype
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The differentiated parameters, and every other floating tensor of the module.

    All are cast to ``dtype``; the other tensors are returned only when the module computes in
    another dtype (else an empty dict).
    """
    params = {name: module.get_parameter(name).detach().to(dtype) for name in names}
    tensors = [
        *module.named_parameters(remove_duplicate=False),
        *module.named_buffers(remove_duplicate=False),
    ]
    if all(t.dtype == dtype for _, t in tensors if t.is_floating_point()):
        return params, {}
    chosen = {id(module.get_parameter(name)) for name in names}
    rest = {n: t.detach().to(dtype) for n, t in tensors if t.is_floating_point()}
    return params, {n: t for n, t in rest.items() if id(dict(tensors)[n]) not in chosen}


def _as_batch_of_one(value: Any, dim: int | None, dtype: torch.dtype) -> Any:
    if isinstance(value, Tensor) and value.is_floating_point():
        value = value.to(dtype)
    return value.unsqueeze(0) if dim == 0 else value
