"""What a published protocol does to the data set before its tasks are built.

- `order_classes`: which classes form which split task: label order, or a seeded shuffle.
- `pad_images`: zero pixels around every image (28×28 → 32×32 with 2), as torchvision's
  ``Pad(2)`` in van de Ven & Tolias 2019 (GMvandeVen/continual-learning, preprints branch,
  ``data.py``; master ``data/available.py``, ``MNIST32``, used for permuted MNIST) and Hsu et al.
  2018 (GT-RIPL/Continual-Learning-Benchmark ``dataloaders/base.py``). For an MLP the added inputs
  are zero in every image (zero gradient on their weights) but they widen the first layer's
  fan-in, and with it PyTorch's default initial weights (U(±1/√fan_in)) shrink by √(784/1024).

Split benchmarks group consecutive labels, (0, 1), (2, 3), …. Van de Ven's code permutes the
labels with ``np.random.permutation`` seeded by the run seed before grouping them, for every seed
but 0 (GMvandeVen/continual-learning, ``data/load.py``, ``perm_class_list``), so its published
split-MNIST means average over random pairings. `order_classes` does the same with a torch
generator of its own: the pairs are as random, but not the ones numpy draws for that seed.
"""

from __future__ import annotations

import dataclasses
import hashlib

import torch

from ewc.data.dataset import ImageDataset


def order_classes(data: ImageDataset, order: str, seed: int) -> ImageDataset:
    """``data`` as is for ``order = "natural"``; relabelled by `class_permutation` for "shuffled".

    Class c becomes label π(c); its name moves with it, so a task's name still says which
    original classes it holds ("classes 0/1 (7, 3)").

    Raises:
        ValueError: ``order`` is neither.
    """
    if order == "natural":
        return data
    if order == "shuffled":
        perm = class_permutation(data.num_classes, seed)
    elif order == "numpy":
        perm = numpy_class_permutation(data.num_classes, seed)
    else:
        raise ValueError(f"class order must be 'natural', 'shuffled' or 'numpy'; got {order!r}")
    names = [""] * data.num_classes
    for original, new in enumerate(perm.tolist()):
        names[new] = data.classes[original]
    return dataclasses.replace(
        data,
        train_labels=perm[data.train_labels],
        test_labels=perm[data.test_labels],
        classes=tuple(names),
    )


def class_permutation(num_classes: int, seed: int) -> torch.Tensor:
    """π with π[c] = the new label of class c: ``randperm`` on a generator seeded by ``seed``.

    The generator's seed is a SHA-256 of ``"<seed>:class order"``, so it shares no stream with
    the run's other generators.
    """
    digest = hashlib.sha256(f"{seed}:class order".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randperm(num_classes, generator=generator)


def numpy_class_permutation(num_classes: int, seed: int) -> torch.Tensor:
    """π = ``numpy.random.RandomState(seed).permutation(num_classes)``: van de Ven's draw.

    His ``main.py`` (``preprints``) calls ``np.random.seed(seed)`` and ``data.py`` then draws
    ``np.random.permutation(list(range(10)))`` before any other numpy draw; the legacy global
    generator seeded so is ``RandomState(seed)``, whose stream numpy keeps fixed across versions.
    Label y becomes π[y], as his ``target_transform`` maps it.

    Raises:
        ImportError: numpy is not installed (it comes with ``ewc[run]``, through matplotlib).
    """
    import numpy

    if not 0 <= seed < 2**32:
        raise ValueError(f"class_order = 'numpy' needs a seed in [0, 2**32); got {seed}")
    return torch.as_tensor(
        numpy.random.RandomState(seed).permutation(num_classes), dtype=torch.long
    )


def pad_images(data: ImageDataset, pad: int) -> ImageDataset:
    """``data`` with ``pad`` zero pixels added on every side of every image (0: as is).

    Raises:
        ValueError: ``pad`` is negative.
    """
    if pad < 0:
        raise ValueError(f"benchmark.pad must be at least 0; got {pad}")
    if pad == 0:
        return data
    widths = (pad, pad, pad, pad)
    return dataclasses.replace(
        data,
        train_images=torch.nn.functional.pad(data.train_images, widths),
        test_images=torch.nn.functional.pad(data.test_images, widths),
    )
