"""Fallback for modules without a closed-form rule: per-sample vector-Jacobian products.

For a module f(x; θ) whose own parameters θ have no rule, one sample's gradient is the
vector-Jacobian product gₙᵀ ∂f(xₙ; θ)/∂θ with the recorded output gradient gₙ. The module is
re-run on each sample alone (as a batch of one) under `torch.func.vmap`, only for its own
parameters; child modules keep their own rules. Slower than a closed form, but it makes every
model work, including raw ``nn.Parameter``s used in a custom ``forward``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor
from torch.func import functional_call, vjp, vmap
from torch.utils._pytree import tree_flatten

from ewc.fisher.capture import ModuleCall
from ewc.fisher.rules.base import Rule


class FunctionalRule(Rule):
    """Per-sample gradients of any module's own parameters by `vmap` over `vjp`."""

    def per_sample(
        self, call: ModuleCall, grads: list[Tensor], names: Sequence[str]
    ) -> dict[str, Tensor]:
        module, size = call.module, grads[0].shape[0]
        params = {name: getattr(module, name).detach() for name in names}
        arg_dims = tuple(0 if call.is_batched(a, size) else None for a in call.args)
        kwarg_dims = {k: 0 if call.is_batched(v, size) else None for k, v in call.kwargs.items()}

        def one_sample(args: tuple, kwargs: dict, cotangents: list[Tensor]) -> dict[str, Tensor]:
            args = tuple(_as_batch_of_one(a, d) for a, d in zip(args, arg_dims, strict=True))
            kwargs = {k: _as_batch_of_one(v, kwarg_dims[k]) for k, v in kwargs.items()}

            def outputs(p: dict[str, Tensor]) -> tuple[Tensor, ...]:
                leaves, _ = tree_flatten(functional_call(module, p, args, kwargs))
                return tuple(leaves[i] for i in call.output_index)

            _, pullback = vjp(outputs, params)
            (grad,) = pullback(tuple(c.unsqueeze(0) for c in cotangents))
            return grad

        return vmap(one_sample, in_dims=(arg_dims, kwarg_dims, 0))(call.args, call.kwargs, grads)


def _as_batch_of_one(value: Any, dim: int | None) -> Any:
    return value.unsqueeze(0) if dim == 0 else value
