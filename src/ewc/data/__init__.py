"""Data for `ewc`: strict IDX reading, checksums, and MNIST-style data sets from several sources.

Load a data set (the first source that has it; see :mod:`ewc.data.sources` for the order)::

    from ewc.data import load_dataset
    data = load_dataset("fashion-mnist")     # or "mnist", "kmnist"
    data.train_images, data.train_labels     # uint8 (N, 28, 28), int64 (N,)
    data.source, data.is_subset              # where it came from; True for the embedded subset

``load_dataset("mnist")`` always works offline: the package embeds the 10,000-digit MNIST test set,
split 8,000 / 2,000 (a subset, marked ``is_subset=True``). Download a full data set once with
:func:`download` (``ewc download NAME``). Every file is checked: checksum, gzip integrity, IDX
structure, label range; failures raise :class:`DataFileError` naming the file.
"""

from ewc.data.cache import dataset_cache_dir, default_cache_dir
from ewc.data.catalog import IDX_FILES, DatasetName, DatasetSpec, get_spec
from ewc.data.checksums import Checksums, md5_hex, verify
from ewc.data.dataset import ImageDataset
from ewc.data.download import download
from ewc.data.embedded_mnist import load_embedded_mnist
from ewc.data.errors import DataFileError, DatasetNotFoundError, DownloadError
from ewc.data.idx import parse_images, parse_labels, read_images, read_labels
from ewc.data.sources import DEBIAN_FASHION_MNIST_DIR, Source, load_dataset

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "IDX_FILES",
    "Checksums",
    "DataFileError",
    "DatasetName",
    "DatasetNotFoundError",
    "DatasetSpec",
    "DownloadError",
    "ImageDataset",
    "Source",
    "dataset_cache_dir",
    "default_cache_dir",
    "download",
    "get_spec",
    "load_dataset",
    "load_embedded_mnist",
    "md5_hex",
    "parse_images",
    "parse_labels",
    "read_images",
    "read_labels",
    "verify",
]
