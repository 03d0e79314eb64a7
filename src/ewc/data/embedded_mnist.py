"""The MNIST subset shipped inside the package, so that `ewc` runs with no download.

The package carries the official MNIST **test** set (10,000 digits, the files
``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``, byte-identical to the original
distribution and MD5-checked on every load). It is split into 8,000 training and 2,000 test images
by a rule that needs no random number generator: the item at index ``i`` (0-based, file order) is a
test item if and only if ``i % 5 == 4``. Interleaving keeps both halves of the MNIST test set in
both splits (its first 5,000 digits come from NIST's training writers and are cleaner than its last
5,000).

This is a subset: results on it are not comparable with published MNIST numbers, which train on
the 60,000 official training digits. :class:`ImageDataset` marks it with ``is_subset=True``.
MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges (CC BY-SA 3.0); see
``embedded/README.md`` in the package.
"""

from __future__ import annotations

from importlib import resources

import torch

from ewc.data.catalog import DatasetName, get_spec
from ewc.data.checksums import Checksums
from ewc.data.dataset import ImageDataset
from ewc.data.files import describe_checks, read_pair

EMBEDDED_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
"""The files in the package folder ``ewc/data/embedded``: images, labels."""

TEST_EVERY = 5
"""Index ``i`` goes to the test split iff ``i % TEST_EVERY == TEST_EVERY - 1``."""


def split_indices(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The train and test indices of ``n`` items under the rule ``i % 5 == 4`` → test.

    Returns:
        Two int64 tensors, increasing: train indices (4 of every 5) and test indices.
    """
    index = torch.arange(n)
    is_test = index % TEST_EVERY == TEST_EVERY - 1
    return index[~is_test], index[is_test]


def load_embedded_mnist(*, checksums: Checksums | None = None) -> ImageDataset:
    """The embedded MNIST subset: 8,000 train / 2,000 test digits from the MNIST test set.

    Args:
        checksums: the table to verify the two files against; MNIST's official one when None.

    Raises:
        DataFileError: the packaged files are damaged (a broken installation).
    """
    spec = get_spec(DatasetName.MNIST)
    folder = resources.files("ewc.data") / "embedded"
    images, labels, unverified = read_pair(
        folder / EMBEDDED_FILES[0],
        folder / EMBEDDED_FILES[1],
        checksums=spec.checksums if checksums is None else checksums,
        dataset=spec.name.value,
        num_classes=len(spec.classes),
    )
    train, test = split_indices(images.shape[0])
    return ImageDataset(
        name=spec.name.value,
        train_images=images[train],
        train_labels=labels[train],
        test_images=images[test],
        test_labels=labels[test],
        classes=spec.classes,
        source=(
            f"embedded subset of the MNIST test set ({train.numel()} train / {test.numel()} test, "
            f"index % 5 == 4 → test; {describe_checks(unverified)})"
        ),
        is_subset=True,
    )
