"""Rule for `nn.Embedding`: row v of the weight receives Σ_{t: id_nt = v} g_nt from sample n.

A sample's gradient touches only the rows of the ids it contains, so Σ_n (∂ℓ_n/∂W)² is formed
sparsely: the output gradients are summed per distinct (sample, id) pair, squared, then added into
the rows of those ids. Nothing of size N×V×D is ever allocated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ewc.fisher.capture import ModuleCall
from ewc.fisher.rules.base import Partial, Rule, UndefinedFisherError


class EmbeddingRule(Rule):
    """Sparse squared per-sample gradients of `nn.Embedding` weights."""

    def per_sample(
        self, call: ModuleCall, grads: list[Tensor], names: Sequence[str]
    ) -> dict[str, Tensor]:
        """Dense per-sample gradients (N, V, D): row v of sample n is Σ_{t: id_nt = v} g_nt.

        The row of ``padding_idx``, if any, is zero.
        """
        module = _checked(call)
        ids, g = call.input.reshape(call.input.shape[0], -1), grads[0]
        n, dim = ids.shape[0], g.shape[-1]
        rows = ids + module.num_embeddings * torch.arange(n, device=ids.device)[:, None]
        dense = g.new_zeros(n * module.num_embeddings, dim)
        dense.index_add_(0, rows.reshape(-1), g.reshape(-1, dim))
        dense = dense.view(n, module.num_embeddings, dim)
        if module.padding_idx is not None:
            dense[:, module.padding_idx] = 0
        return {"weight": dense}

    def summed(
        self, call: ModuleCall, grads: list[Tensor], names: Sequence[str]
    ) -> dict[str, Tensor]:
        """Batch gradient (V, D): each id's row is the sum of the output gradients at its positions.

        The row of ``padding_idx``, if any, is zero.
        """
        module, g = _checked(call), grads[0]
        dim = g.shape[-1]
        total = g.new_zeros(module.num_embeddings, dim)
        total.index_add_(0, call.input.reshape(-1), g.reshape(-1, dim))
        if module.padding_idx is not None:
            total[module.padding_idx] = 0
        return {"weight": total}

    def partial(self, call: ModuleCall, grads: list[Tensor], names: Sequence[str]) -> Partial:
        """Σ_n (∂ℓ_n/∂W)² (V, D), formed sparsely from the (sample, id) pairs present.

        The output gradients are summed per distinct (sample, id) pair, squared, then added into the
        rows of those ids; the row of ``padding_idx``, if any, is zero.
        """
        module = _checked(call)
        ids, g = call.input.reshape(call.input.shape[0], -1), grads[0]
        n, dim = ids.shape[0], g.shape[-1]
        keys = ids + module.num_embeddings * torch.arange(n, device=ids.device)[:, None]
        unique_keys, position = torch.unique(keys.reshape(-1), return_inverse=True)
        per_pair = g.new_zeros(unique_keys.numel(), dim).index_add_(0, position, g.reshape(-1, dim))
        squares = g.new_zeros(module.num_embeddings, dim)
        squares.index_add_(0, unique_keys % module.num_embeddings, per_pair.square())
        if module.padding_idx is not None:
            squares[module.padding_idx] = 0
        return Partial({"weight": squares})


def _checked(call: ModuleCall) -> torch.nn.Embedding:
    module = call.module
    if module.scale_grad_by_freq:
        raise UndefinedFisherError(
            f"embedding {call.name!r} uses scale_grad_by_freq=True, which scales each sample's "
            "gradient by word counts over the whole batch; a per-sample Fisher is undefined"
        )
    return module
