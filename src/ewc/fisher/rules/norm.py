"""Rules for the affine parameters of LayerNorm, RMSNorm, GroupNorm and BatchNorm (eval mode).

Each layer computes y = x̂ ⊙ w + b from a normalised input x̂, so one sample's gradients are

    ∂ℓ_n/∂w = Σ_positions g_n ⊙ x̂_n,        ∂ℓ_n/∂b = Σ_positions g_n

(positions: the dimensions that share the same w). x̂ is recomputed from the recorded input.
BatchNorm in eval mode normalises with its running statistics, so samples stay independent; with
batch statistics (``track_running_stats=False``) they are coupled and a per-sample Fisher is
undefined, which is reported as an error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ewc.fisher.capture import ModuleCall
from ewc.fisher.rules.base import Rule, UndefinedFisherError, sum_except


class AffineNormRule(Rule):
    """Per-sample sums of g ⊙ x̂ and of g over the positions that share w.

    Args:
        normalize: recomputes x̂ from a recorded call.
        per_channel: w has one entry per channel (dimension 1), as in GroupNorm and BatchNorm;
            otherwise w covers the trailing dimensions, as in LayerNorm and RMSNorm.
    """

    def __init__(
        self, normalize: Callable[[ModuleCall, torch.dtype], Tensor], *, per_channel: bool
    ):
        self.normalize = normalize
        self.per_channel = per_channel

    def per_sample(
        self, call: ModuleCall, grads: list[Tensor], names: Sequence[str]
    ) -> dict[str, Tensor]:
        """Per-sample Σ_positions g_n ⊙ x̂_n for the weight and Σ_positions g_n for the bias.

        Each has shape (N, *w.shape); x̂ is recomputed from the recorded input.
        """
        g = grads[0]
        out = {}
        if "weight" in names:
            out["weight"] = self._reduce(g * self.normalize(call, g.dtype), call)
        if "bias" in names:
            out["bias"] = self._reduce(g, call)
        return out

    def _reduce(self, tensor: Tensor, call: ModuleCall) -> Tensor:
        if self.per_channel:
            return tensor.sum(tuple(range(2, tensor.dim()))) if tensor.dim() > 2 else tensor
        return sum_except(tensor, keep_last=call.module.weight.dim())


def _layer_norm_input(call: ModuleCall, dtype: torch.dtype) -> Tensor:
    m = call.module
    return F.layer_norm(call.input.to(dtype), m.normalized_shape, eps=m.eps)


def _rms_norm_input(call: ModuleCall, dtype: torch.dtype) -> Tensor:
    m = call.module
    return F.rms_norm(call.input.to(dtype), m.normalized_shape, eps=m.eps)


def _group_norm_input(call: ModuleCall, dtype: torch.dtype) -> Tensor:
    m = call.module
    return F.group_norm(call.input.to(dtype), m.num_groups, eps=m.eps)


def _batch_norm_input(call: ModuleCall, dtype: torch.dtype) -> Tensor:
    m, x = call.module, call.input.to(dtype)
    if m.training or m.running_mean is None:
        raise UndefinedFisherError(
            f"batch norm {call.name!r} normalises with batch statistics "
            "(track_running_stats=False), which couples the samples of a batch; "
            "a per-sample Fisher is undefined for it"
        )
    shape = (1, -1) + (1,) * (x.dim() - 2)
    mean, var = m.running_mean.view(shape).to(dtype), m.running_var.view(shape).to(dtype)
    return (x - mean) * torch.rsqrt(var + m.eps)


_BATCH_NORM = AffineNormRule(_batch_norm_input, per_channel=True)

NORM_RULES: dict[type[nn.Module], Rule] = {
    nn.LayerNorm: AffineNormRule(_layer_norm_input, per_channel=False),
    nn.RMSNorm: AffineNormRule(_rms_norm_input, per_channel=False),
    nn.GroupNorm: AffineNormRule(_group_norm_input, per_channel=True),
    nn.BatchNorm1d: _BATCH_NORM,
    nn.BatchNorm2d: _BATCH_NORM,
    nn.BatchNorm3d: _BATCH_NORM,
}
