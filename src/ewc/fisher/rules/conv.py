"""Rule for `nn.Conv1d` and `nn.Conv2d` (any stride, padding mode, dilation and groups).

A convolution applies the kernel W (O × I/G × kh × kw) at every output location l. For one sample
with output gradient g (O × L), the weight gradient at kernel offset (a, b) is

    ∂ℓ/∂W[:, :, a, b] = g X_abᵀ        (X_ab: the I × L input window that offset (a, b) sees)

so each offset is one (O × L)·(L × I) product per sample (per group). The rule forms these
per-sample products with batched GEMMs offset by offset and squares and sums them at once, so the
largest temporary is N × O × I/G; the windows are strided views of the padded input, copied once
per batch and reused for every output-gradient vector (C of them for the exact Fisher). This
moves less memory than unfolding all patches (im2col) and measured about twice as fast on CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ewc.fisher.capture import ModuleCall
from ewc.fisher.rules.base import PER_SAMPLE_BUDGET, Rule


class ConvRule(Rule):
    """Per-sample gradients of `nn.Conv1d` / `nn.Conv2d` weights, one kernel offset at a time."""

    def per_sample(
        self, call: ModuleCall, grads: list[Tensor], names: Sequence[str]
    ) -> dict[str, Tensor]:
        module, g = call.module, grads[0].flatten(2)
        out = {}
        if "weight" in names:
            windows = _windows(call, 0, g.shape[0])
            offsets = [_offset_grads(g, window, module.groups) for window in windows]
            out["weight"] = torch.stack(offsets, dim=-1).view(g.shape[0], *module.weight.shape)
        if "bias" in names:
            out["bias"] = g.sum(-1)
        return out

    def partial(
        self, call: ModuleCall, grads: list[Tensor], names: Sequence[str]
    ) -> dict[str, Tensor]:
        module, g = call.module, grads[0].flatten(2)
        out = {}
        if "weight" in names:
            weight = module.weight
            squares = g.new_zeros(weight.shape[0], weight.shape[1], weight[0, 0].numel())
            for start, stop in _chunks(module, g.shape[0], g.shape[-1]):
                windows = _windows(call, start, stop)
                for offset, window in enumerate(windows):
                    per_sample = _offset_grads(g[start:stop], window, module.groups)
                    squares[:, :, offset] += per_sample.square().sum(0)
            out["weight"] = squares.view_as(weight)
        if "bias" in names:
            out["bias"] = g.sum(-1).square().sum(0)
        return out


def _offset_grads(g: Tensor, window: Tensor, groups: int) -> Tensor:
    """Per-sample g Xᵀ for one kernel offset: (n, O, L) × (n, G, I/G, L) → (n, O, I/G)."""
    n, o, length = g.shape
    if groups == 1:
        return torch.bmm(g, window[:, 0].transpose(1, 2))
    g = g.view(n, groups, o // groups, length)
    return torch.einsum("ngol,ngil->ngoi", g, window).reshape(n, o, -1)


def _chunks(module: nn.Conv1d | nn.Conv2d, size: int, locations: int) -> list[tuple[int, int]]:
    """Sample ranges whose windows (I · kernel size · L entries per sample) fit the budget."""
    per_sample = module.in_channels * module.weight[0, 0].numel() * locations
    step = max(1, PER_SAMPLE_BUDGET // per_sample)
    return [(start, min(size, start + step)) for start in range(0, size, step)]


def _windows(call: ModuleCall, start: int, stop: int) -> list[Tensor]:
    """The (n, G, I/G, L) input windows of every kernel offset, cached per sample range."""
    key = ("windows", start, stop)
    if key not in call.cache:
        module = call.module
        views = _window_views(module, _padded(module, call.input[start:stop]))
        n, i = views[0].shape[:2]
        call.cache[key] = [v.reshape(n, module.groups, i // module.groups, -1) for v in views]
    return call.cache[key]


def _padded(module: nn.Conv1d | nn.Conv2d, x: Tensor) -> Tensor:
    """The input padded as the module pads it, with a height of 1 for Conv1d."""
    pads = module._reversed_padding_repeated_twice
    if any(pads):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, pads, mode=mode)
    return x.unsqueeze(2) if isinstance(module, nn.Conv1d) else x


def _window_views(module: nn.Conv1d | nn.Conv2d, x: Tensor) -> list[Tensor]:
    """Strided views (N, I, H_out, W_out) of the padded input, one per kernel offset."""
    kernel, dilation, stride = (
        _two_d(module.kernel_size),
        _two_d(module.dilation),
        _two_d(module.stride),
    )
    height = (x.shape[2] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    width = (x.shape[3] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    views = []
    for a in range(kernel[0]):
        for b in range(kernel[1]):
            top, left = a * dilation[0], b * dilation[1]
            rows = slice(top, top + stride[0] * (height - 1) + 1, stride[0])
            cols = slice(left, left + stride[1] * (width - 1) + 1, stride[1])
            views.append(x[:, :, rows, cols])
    return views


def _two_d(values: tuple[int, ...]) -> tuple[int, int]:
    return (1, values[0]) if len(values) == 1 else (values[0], values[1])
