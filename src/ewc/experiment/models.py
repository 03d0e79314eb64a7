"""The named models of the standard continual-learning experiments: an MLP and a small CNN.

- ``mlp``: fully connected, ReLU, two hidden layers of 400 by default — the permuted-MNIST network
  of Kirkpatrick et al. 2017 (SI Table S1) and the split-MNIST network of Hsu et al. 2018 and
  van de Ven 2025 ("On the computation of the Fisher Information in continual learning").
  784-400-400-10 has 478,410 parameters.
- ``cnn``: two 3×3 convolutions (32 and 64 channels, no padding), each followed by ReLU and 2×2
  max-pooling, then 128 hidden units: 225,034 parameters on 28×28 inputs with 10 outputs.

Both take ``heads``: with ``heads > 1`` (task-incremental learning with a head per task) the output
layer is ``heads`` separate Linear layers of ``num_outputs`` units on the same features, and the
model returns their outputs stacked, shape ``(N, heads, num_outputs)``, so that any code selects
task t's logits with ``out[:, t]`` (see
:meth:`ewc.experiment.streams.tasks.TaskStream.output_fn`). Separate
layers keep each task's head in its own named parameters (``output.<t>.weight``), where a Fisher
or a penalty can be seen to touch only the heads that were trained.

Initialisation is PyTorch's default for every layer; it draws from the global CPU generator, so a
model is reproducible after ``torch.manual_seed``, or, without touching the global state, with
``build_model(..., seed=...)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor, nn

from ewc._choices import Choice


class ModelName(Choice):
    """The models :func:`build_model` knows."""

    __noun__ = ("model", "names")

    MLP = "mlp"
    CNN = "cnn"


class MultiHead(nn.ModuleList):
    """``heads`` separate Linear layers on the same features; output (N, heads, out_features)."""

    def __init__(self, in_features: int, out_features: int, heads: int) -> None:
        super().__init__(nn.Linear(in_features, out_features) for _ in range(heads))

    def forward(self, features: Tensor) -> Tensor:
        """Apply every head to ``features`` (N, in_features); return (N, heads, out_features)."""
        return torch.stack([head(features) for head in self], dim=1)


def output_layer(in_features: int, num_outputs: int, heads: int) -> nn.Module:
    """One Linear layer when ``heads == 1``, else a :class:`MultiHead` of ``heads`` of them."""
    _check_positive(num_outputs, "num_outputs")
    _check_positive(heads, "heads")
    if heads == 1:
        return nn.Linear(in_features, num_outputs)
    return MultiHead(in_features, num_outputs, heads)


class MLP(nn.Module):
    """Flatten, then Linear + ReLU per hidden width, then the output layer (one or several heads).

    The default 784-400-400-10 is the network of Kirkpatrick et al. 2017 (permuted MNIST, SI
    Table S1: 2 hidden layers × 400 ReLU), Hsu et al. 2018 and van de Ven 2025 (split MNIST).

    Args:
        in_features: the number of input values per sample (784 for 28×28 images).
        hidden: the hidden widths, in order; ``()`` gives a linear (softmax regression) model.
        num_outputs: the width of each head.
        heads: the number of heads; above 1 the output is ``(N, heads, num_outputs)``.
    """

    def __init__(
        self,
        in_features: int = 784,
        hidden: Sequence[int] = (400, 400),
        num_outputs: int = 10,
        heads: int = 1,
    ) -> None:
        super().__init__()
        _check_positive(in_features, "in_features")
        widths = _check_widths(hidden)
        layers: list[nn.Module] = [nn.Flatten()]
        for fan_in, fan_out in pairwise((in_features, *widths)):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.output = output_layer(widths[-1] if widths else in_features, num_outputs, heads)

    def forward(self, inputs: Tensor) -> Tensor:
        """Logits of ``inputs`` (N, ...), flattened to (N, in_features).

        Returns:
            (N, num_outputs), or (N, heads, num_outputs) when ``heads > 1``.
        """
        return self.output(self.features(inputs))


class CNN(nn.Module):
    """conv 3×3 → ReLU → max-pool 2 → conv 3×3 → ReLU → max-pool 2 → Linear 128 → ReLU → output.

    Channels 32 and 64, no padding; on 28×28 inputs the feature maps are 26 → 13 → 11 → 5, so the
    first Linear layer is 64·5·5 = 1600 → 128. No dropout and no BatchNorm: the model behaves the
    same in train and eval mode, so the Fisher is the one of the network that was trained.

    Args:
        in_channels: image channels (1 for MNIST-style data).
        num_outputs: the width of each head.
        heads: the number of heads; above 1 the output is ``(N, heads, num_outputs)``.
        image_size: ``(height, width)`` of the inputs, at least 10×10.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_outputs: int = 10,
        heads: int = 1,
        image_size: tuple[int, int] = (28, 28),
    ) -> None:
        super().__init__()
        _check_positive(in_channels, "in_channels")
        if not isinstance(image_size, Sequence) or len(image_size) != 2:
            raise ValueError(f"image_size must be (height, width); got {image_size!r}")
        height, width = (_feature_size(side, image_size) for side in image_size)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * height * width, 128),
            nn.ReLU(),
        )
        self.output = output_layer(128, num_outputs, heads)

    def forward(self, inputs: Tensor) -> Tensor:
        """Logits of the images ``inputs`` (N, in_channels, height, width).

        Returns:
            (N, num_outputs), or (N, heads, num_outputs) when ``heads > 1``.
        """
        return self.output(self.features(inputs))


def build_model(
    name: ModelName | str,
    *,
    num_outputs: int,
    heads: int = 1,
    hidden: tuple[int, ...] = (400, 400),
    input_shape: tuple[int, ...] = (1, 28, 28),
    seed: int | None = None,
) -> nn.Module:
    """Build the model called ``name`` for inputs of ``input_shape``.

    Args:
        name: ``"mlp"`` or ``"cnn"``.
        num_outputs: the width of each head (``TaskStream.num_outputs``).
        heads: the number of heads (``TaskStream.heads``).
        hidden: the MLP's hidden widths; the CNN's widths are fixed, so it ignores them.
        input_shape: one sample's shape without the batch dimension; ``(C, H, W)`` for the CNN.
        seed: initialise from ``torch.manual_seed(seed)``'s state without touching the global
            generator; None draws from the global generator as any ``nn.Module`` does.

    Raises:
        ValueError: an unknown name, a width, head count or shape that is not a positive integer,
            or an input shape the model cannot take.
    """
    model = ModelName.parse(name)
    shape = _check_shape(input_shape, model)
    if seed is None:
        return _construct(model, num_outputs, heads, hidden, shape)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None; got {seed!r}")
    # Forking only the CPU generator: models are created on the CPU, and the global state the
    # caller seeded for other purposes is left exactly as it was.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return _construct(model, num_outputs, heads, hidden, shape)


def _construct(
    model: ModelName,
    num_outputs: int,
    heads: int,
    hidden: tuple[int, ...],
    shape: tuple[int, ...],
) -> nn.Module:
    if model is ModelName.MLP:
        return MLP(math.prod(shape), hidden, num_outputs=num_outputs, heads=heads)
    return CNN(shape[0], num_outputs=num_outputs, heads=heads, image_size=(shape[1], shape[2]))


def _check_positive(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer; got {value!r}")
    return value


def _check_widths(hidden: Sequence[int]) -> tuple[int, ...]:
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise ValueError(f"hidden must be a sequence of layer widths; got {hidden!r}")
    for width in hidden:
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"hidden widths must be positive integers; got {width!r} in {hidden}")
    return tuple(hidden)


def _check_shape(input_shape: tuple[int, ...], model: ModelName) -> tuple[int, ...]:
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise ValueError(f"input_shape must be a tuple of positive integers; got {input_shape!r}")
    shape = tuple(input_shape)
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"input_shape must be a tuple of positive integers; got {input_shape!r}")
    if model is ModelName.CNN and len(shape) != 3:
        raise ValueError(f"the cnn needs input_shape (channels, height, width); got {shape}")
    return shape


def _feature_size(side: int, image_size: tuple[int, int]) -> int:
    """The side of the last feature map: (side − 2) // 2 after conv+pool 1, again after 2."""
    if isinstance(side, bool) or not isinstance(side, int) or side < 10:
        raise ValueError(
            f"the cnn needs images of at least 10×10 pixels (two 3×3 convolutions and two "
            f"2×2 poolings); got image_size {image_size}"
        )
    return ((side - 2) // 2 - 2) // 2
