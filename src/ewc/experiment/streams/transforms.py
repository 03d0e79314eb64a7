"""Image transforms of the benchmarks, in torch: unit scaling, normalisation, permutation, rotation.

Each works on a whole tensor of images at once (no loop over images) and is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def to_unit_interval(images: Tensor) -> Tensor:
    """uint8 ``(N, H, W)`` images → float32 ``(N, 1, H, W)`` in [0, 1]: ``pixel / 255``.

    No mean/std normalisation: a background pixel stays exactly 0, so a permutation moves
    background onto background and the zero fill of a rotation looks like background.
    """
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 3:
        raise ValueError(f"expected uint8 images of shape (N, H, W); got {_describe(images)}")
    return images.unsqueeze(1).to(torch.float32).div_(255.0)


@dataclass(frozen=True, eq=False)
class Normalized:
    """``(inner(images) − mean) / std``: a task's inputs shifted and scaled after ``inner``.

    For protocols that normalise the [0, 1] pixels, as Hsu et al. 2018's
    ``transforms.Normalize((0.1,), (0.2752,))`` after ``Pad(2)`` (GT-RIPL/Continual-Learning-
    Benchmark ``dataloaders/base.py``); a padded pixel becomes (0 − mean) / std there as here.
    """

    inner: Callable[[Tensor], Tensor]
    mean: float
    std: float

    def __call__(self, images: Tensor) -> Tensor:
        """The inner transform's float inputs, shifted by ``mean`` and divided by ``std``."""
        return (self.inner(images) - self.mean) / self.std


def permute_pixels(images: Tensor, order: Tensor) -> Tensor:
    """Reorder the pixels of every ``(H, W)`` image alike: new pixel j is old pixel ``order[j]``.

    Args:
        images: ``(..., H, W)``, any dtype.
        order: int64 ``(H·W,)``, a permutation of ``0..H·W−1`` in row-major pixel order.
    """
    if not isinstance(images, Tensor) or images.dim() < 2:
        raise ValueError(f"expected images of shape (..., H, W); got {_describe(images)}")
    flat = images.flatten(-2)
    if order.shape != flat.shape[-1:]:
        raise ValueError(
            f"order must hold one index per pixel, shape ({flat.shape[-1]},); "
            f"got shape {tuple(order.shape)}"
        )
    # gather with an expanded (stride-0) index is several times faster than advanced indexing.
    return flat.gather(-1, order.to(flat.device).expand(flat.shape)).reshape(images.shape)


def rotate(images: Tensor, degrees: float) -> Tensor:
    """Rotate floating ``(N, C, H, W)`` images counter-clockwise by ``degrees`` about their centre.

    Bilinear interpolation, zero outside the image. With (u, v) a pixel centre relative to the
    image centre (v pointing down, so counter-clockwise on screen), the output at (u, v) is the
    input at (u cos a − v sin a, u sin a + v cos a). ``grid_sample`` with ``align_corners=False``
    puts pixel centres at normalised coordinates (2i + 1)/W − 1, symmetric about 0, so a multiple
    of 90° maps centres onto centres and equals ``torch.rot90`` up to float rounding; dividing by
    W/2 and H/2 gives θ = [[cos a, −sin a·H/W], [sin a·W/H, cos a]], a rigid rotation even for
    H ≠ W. One grid serves every image, so the N·C images go through ``grid_sample`` as the
    channels of one image: a single call, no loop.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"expected floating images of shape (N, C, H, W); got {_describe(images)}")
    if isinstance(degrees, bool) or not isinstance(degrees, (int, float)):
        raise ValueError(f"degrees must be a number; got {degrees!r}")
    if not math.isfinite(degrees):
        raise ValueError(f"degrees must be finite; got {degrees}")
    n, c, h, w = images.shape
    a = math.radians(degrees)
    theta = torch.tensor(
        [[[math.cos(a), -math.sin(a) * h / w, 0.0], [math.sin(a) * w / h, math.cos(a), 0.0]]],
        dtype=images.dtype,
        device=images.device,
    )
    grid = F.affine_grid(theta, [1, n * c, h, w], align_corners=False)
    flat = images.reshape(1, n * c, h, w)
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(n, c, h, w)


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"{value.dtype} of shape {tuple(value.shape)}"
    return type(value).__name__
