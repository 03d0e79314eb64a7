"""Rule for `nn.Conv1d` and `nn.Conv2d` (any stride, padding mode, dilation and groups).

A convolution applies the kernel W (O × I/G × kh × kw) at every output location l. For one sample
with output gradient g (O × L), the weight gradient at kernel offset (a, b) is

    ∂ℓ/∂W[:, :, a, b] = g X_abᵀ        (X_ab: the I × L input window that offset (a, b) sees)

The windows of all offsets, stacked, make one (L × kh·kw·I) matrix per sample, so a single batched
GEMM gives every sample's weight gradient, which is squared and summed over the samples of a chunk
at once. The windows are cut from the padded input by one strided view (cheaper on CPU than
``F.unfold``'s im2col) once per batch, and reused for every output-gradient vector (C − 1 of them
for the exact Fisher).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ewc._chunks import sample_ranges
from ewc.fisher.capture import ModuleCall
from ewc.fisher.rules.base import PER_SAMPLE_BUDGET, Partial, Rule


class ConvRule(Rule):
    """Per-sample gradients of `nn.Conv1d` / `nn.Conv2d` weights from the stacked input windows."""

    def per_sample(
        self, call: ModuleCall, grads: list[Tensor], names: Sequence[str]
    ) -> dict[str, Tensor]:
        """Per-sample gradients of weight and bias: g_n X_nᵀ (N, *weight.shape) and Σ_l g_n (N, O).

        The weight gradients of all kernel offsets come from one batched GEMM on the stacked
        windows.
        """
        module, g = call.module, grads[0].flatten(2)
        out = {}
        if "weight" in names:
            products = _window_products(g, _windows(call, 0, g.shape[0], g.dtype), module.groups)
            out["weight"] = _as_weight(products, module.weight)
        if "bias" in names:
            out["bias"] = g.sum(-1)
        return out

    def summed(
        self, call: ModuleCall, grads: list[Tensor], names: Sequence[str]
    ) -> dict[str, Tensor]:
        """Batch gradients Σ_n g_n X_nᵀ (by ``torch.nn.grad``) and Σ_n Σ_l g_n of weight, bias."""
        return _summed(call, grads[0], names)

    def partial(self, call: ModuleCall, grads: list[Tensor], names: Sequence[str]) -> Partial:
        """Σ_n (g_n X_nᵀ)² for the weight and Σ_n (Σ_l g_n)² for the bias.

        The weight's squares are summed over chunks of samples whose temporaries fit the budget.

        The windows are cached on the call, so the C − 1 cotangent vectors of the exact Fisher reuse
        them.
        """
        module, g = call.module, grads[0].flatten(2)
        out = {}
        if "weight" in names:
            squares = None
            for start, stop in _chunks(module, g.shape[0], g.shape[-1]):
                products = _window_products(
                    g[start:stop], _windows(call, start, stop, g.dtype), module.groups
                )
                part = products.square_().sum(0)
                squares = part if squares is None else squares.add_(part)
            out["weight"] = _as_weight(squares, module.weight)
        if "bias" in names:
            out["bias"] = g.sum(-1).square().sum(0)
        return Partial(out)


def _summed(call: ModuleCall, g: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
    """Σ_n g_n X_nᵀ as one weight gradient (``torch.nn.grad``) on the padded input."""
    module = call.module
    out = {}
    if "weight" in names:
        x = _padded(module, call.input.to(g.dtype))  # (n, I, H, W); H = 1 for Conv1d
        weight = module.weight.view(*module.weight.shape[:2], *_two_d(module.kernel_size))
        total = torch.nn.grad.conv2d_weight(
            x,
            weight.shape,
            g.reshape(g.shape[0], g.shape[1], -1, g.shape[-1]),
            stride=_two_d(module.stride),
            dilation=_two_d(module.dilation),
            groups=module.groups,
        )
        out["weight"] = total.view_as(module.weight)
    if "bias" in names:
        out["bias"] = g.flatten(2).sum((0, 2))
    return out


def _window_products(g: Tensor, windows: Tensor, groups: int) -> Tensor:
    """Per-sample g Xᵀ for all kernel offsets at once: (n, O, L), (n, G, J/G, L) → (n, O, J/G)."""
    if groups == 1:
        return torch.bmm(g, windows[:, 0].transpose(1, 2))
    n, o, length = g.shape
    grouped = torch.einsum("ngol,ngjl->ngoj", g.view(n, groups, o // groups, length), windows)
    return grouped.reshape(n, o, -1)


def _as_weight(products: Tensor, weight: Tensor) -> Tensor:
    """(..., O, offsets · I/G), offset-major, → (..., O, I/G, kh[, kw]) as the weight's layout."""
    lead = products.shape[:-2]
    offsets = weight[0, 0].numel()
    per_offset = products.reshape(*lead, weight.shape[0], offsets, weight.shape[1])
    return per_offset.transpose(-1, -2).reshape(*lead, *weight.shape)


def _chunks(module: nn.Conv1d | nn.Conv2d, size: int, locations: int) -> list[tuple[int, int]]:
    """Sample ranges whose largest temporaries fit the budget.

    The temporaries are the windows (I · kernel size · L entries per sample) and the per-sample
    weight products (one weight's worth per sample).
    """
    windows = module.in_channels * module.weight[0, 0].numel() * locations
    per_sample = max(windows, module.weight.numel())
    return sample_ranges(size, per_sample, PER_SAMPLE_BUDGET)


def _windows(call: ModuleCall, start: int, stop: int, dtype: torch.dtype) -> Tensor:
    """The input windows of every kernel offset, stacked offset-major as (n, G, offsets · I/G, L).

    They are in ``dtype`` and cached per sample range, so the C − 1 vectors of the exact Fisher
    share them.
    """
    key = ("windows", start, stop, dtype)
    if key not in call.cache:
        x = call.input[start:stop].to(dtype)
        call.cache[key] = _stacked_windows(call.module, _padded(call.module, x))
    return call.cache[key]


def _padded(module: nn.Conv1d | nn.Conv2d, x: Tensor) -> Tensor:
    """The input padded as the module pads it, with a height of 1 for Conv1d."""
    pads = module._reversed_padding_repeated_twice
    if any(pads):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, pads, mode=mode)
    return x.unsqueeze(2) if isinstance(module, nn.Conv1d) else x


def _stacked_windows(module: nn.Conv1d | nn.Conv2d, x: Tensor) -> Tensor:
    """(n, G, kh·kw·I/G, L) from the padded (n, I, H, W) input, copied once from one strided view.

    Window (a, b) starts at row a·dilation, column b·dilation and steps by the stride, so all of
    them are one view of x with the offsets as extra dimensions of stride ``dilation · x.stride``.
    """
    kernel, dilation, stride = (
        _two_d(module.kernel_size),
        _two_d(module.dilation),
        _two_d(module.stride),
    )
    x = x.contiguous()
    n, channels, rows, cols = x.shape
    height = (rows - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    width = (cols - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    s_n, s_c, s_h, s_w = x.stride()
    groups = module.groups
    view = x.as_strided(
        (n, groups, kernel[0], kernel[1], channels // groups, height, width),
        (
            s_n,
            s_c * (channels // groups),
            s_h * dilation[0],
            s_w * dilation[1],
            s_c,
            s_h * stride[0],
            s_w * stride[1],
        ),
    )
    return view.reshape(n, groups, -1, height * width)


def _two_d(values: tuple[int, ...]) -> tuple[int, int]:
    return (1, values[0]) if len(values) == 1 else (values[0], values[1])
