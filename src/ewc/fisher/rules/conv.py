"""Rule for `nn.Conv1d` and `nn.Conv2d` (any stride, padding mode, dilation and groups).

A convolution is a Linear map applied at every output location l to the input patch u_l under the
kernel. For one sample with unfolded patches U (J×L) and output gradient g (O×L), the weight
gradient is g Uᵀ (O×J), summed over locations before squaring. The rule forms these O×J matrices
for a chunk of samples with one batched matrix product (the same arithmetic as the ordinary weight
gradient, kept per sample), squares and sums them: Σ_n (g_n U_nᵀ)².
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ewc.fisher.capture import ModuleCall
from ewc.fisher.rules.base import Rule


class ConvRule(Rule):
    """Per-sample gradients of `nn.Conv1d` / `nn.Conv2d` through unfolded input patches."""

    def per_sample(
        self, call: ModuleCall, grads: list[Tensor], names: Sequence[str]
    ) -> dict[str, Tensor]:
        module = call.module
        g = grads[0].flatten(2)  # (N, O, L)
        out = {}
        if "weight" in names:
            patches = _unfold(module, call.input)  # (N, J, L), J = (I / groups) · kernel size
            n, groups = g.shape[0], module.groups
            g_grouped = g.reshape(n, groups, -1, g.shape[-1])
            patches = patches.reshape(n, groups, -1, patches.shape[-1])
            weight = torch.einsum("ngol,ngjl->ngoj", g_grouped, patches)
            out["weight"] = weight.reshape(n, *module.weight.shape)
        if "bias" in names:
            out["bias"] = g.sum(-1)
        return out


def _unfold(module: nn.Conv1d | nn.Conv2d, x: Tensor) -> Tensor:
    """The input patches (N, I·kernel, L) under each output location, padded as the module pads."""
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(2)
        kernel, dilation, stride = (
            (1, *module.kernel_size),
            (1, *module.dilation),
            (1, *module.stride),
        )
    else:
        kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
    return F.unfold(x, kernel, dilation=dilation, stride=stride)
