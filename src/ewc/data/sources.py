"""Where a data set comes from: one entry point, :func:`load_dataset`, over four sources.

Sources (the ``source=`` argument):

- ``"dir"``: ``data_dir`` holds the four IDX files under their official names
  (``train-images-idx3-ubyte[.gz]``, ...; see :data:`~ewc.data.catalog.IDX_FILES`) or with a dot
  (``train-images.idx3-ubyte[.gz]``, as Kaggle names them), either in ``data_dir`` itself or in
  ``data_dir/<name>``; every name is checked against the official digests.
- ``"cache"``: ``<cache root>/<name>``, where :func:`ewc.data.download` puts the files; the root is
  ``cache_dir``, else ``$EWC_CACHE``, else ``$XDG_CACHE_HOME/ewc``, else ``~/.cache/ewc``.
- ``"debian"``: Debian's package ``dataset-fashion-mnist`` (``fashion-mnist`` only), installed
  under ``/usr/share/datasets/fashion-mnist``.
- ``"embedded"``: the MNIST subset shipped in the package (``mnist`` only; 8,000 / 2,000 digits
  of the MNIST test set, see :mod:`ewc.data.embedded_mnist`).
- ``"auto"`` (the default) tries, in this order: dir (only when ``data_dir`` is given), cache,
  debian, embedded. What the user names comes first, full data sets come before the subset.

A source is used when all four files are present. If one of them then fails a check (checksum,
gzip, IDX structure), :class:`DataFileError` is raised at once: a damaged file is never silently
replaced by another source. A source with missing files is skipped, except a ``data_dir`` the
user named: a typo or an incomplete folder must not turn into a run on other data (the embedded
subset), so it ends the search. When no source has the data set, :class:`DatasetNotFoundError`
lists every place tried. Files that no known digest verifies must hold the official number of
images.
"""

from __future__ import annotations

import os
from pathlib import Path

from ewc._choices import Choice
from ewc.data.cache import dataset_cache_dir
from ewc.data.catalog import DatasetName, DatasetSpec, get_spec
from ewc.data.checksums import Checksums
from ewc.data.dataset import ImageDataset
from ewc.data.embedded_mnist import load_embedded_mnist
from ewc.data.errors import DataFileError, DatasetNotFoundError
from ewc.data.files import describe_checks, find_idx_files, read_all

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's package ``dataset-fashion-mnist`` installs the four ``.gz`` files."""


class Source(Choice):
    """Where :func:`load_dataset` looks for a data set (see the module docstring)."""

    __noun__ = ("data source", "sources")

    AUTO = "auto"
    DIR = "dir"
    CACHE = "cache"
    DEBIAN = "debian"
    EMBEDDED = "embedded"


_AUTO_ORDER = (Source.DIR, Source.CACHE, Source.DEBIAN, Source.EMBEDDED)


def load_dataset(
    name: DatasetName | str,
    *,
    source: Source | str = Source.AUTO,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    debian_dir: str | os.PathLike[str] = DEBIAN_FASHION_MNIST_DIR,
    checksums: Checksums | None = None,
) -> ImageDataset:
    """Load a data set's train and test splits from the first source that has it.

    Args:
        name: ``"mnist"``, ``"fashion-mnist"`` or ``"kmnist"``.
        source: ``"auto"``, ``"dir"``, ``"cache"``, ``"debian"`` or ``"embedded"``.
        data_dir: the folder for the ``"dir"`` source (its ``<name>`` subfolder is tried too).
        cache_dir: the cache root; the default cache root when None.
        debian_dir: where Debian's Fashion-MNIST files are.
        checksums: the file name → MD5 table to verify against; the data set's official table
            when None (another table is for tests and private mirrors).

    Returns:
        The data set; ``is_subset`` tells whether it is the embedded MNIST subset.

    Raises:
        ValueError: unknown ``name`` or ``source``, ``"dir"`` without ``data_dir``, or a source
            that does not provide this data set (``"debian"``, ``"embedded"``).
        DatasetNotFoundError: no source tried has all four files; the message lists them.
        DataFileError: a file was found but is corrupt, truncated, or fails its checksum.
    """
    spec, chosen = get_spec(name), Source.parse(source)
    if chosen is not Source.AUTO and (reason := _unavailable(spec, chosen, data_dir)):
        raise ValueError(
            f"source={chosen.value!r} cannot load {spec.name.value!r}: {reason}; "
            "source='auto' looks in every source (data_dir, cache, Debian, embedded)"
        )
    table = spec.checksums if checksums is None else checksums
    tried: list[str] = []
    for candidate in _AUTO_ORDER if chosen is Source.AUTO else (chosen,):
        if reason := _unavailable(spec, candidate, data_dir):
            tried.append(f"{candidate.value} ({reason})")
        elif candidate is Source.EMBEDDED:
            return load_embedded_mnist(checksums=checksums)
        else:
            for directory in _directories(spec, candidate, data_dir, cache_dir, debian_dir):
                found, missing = find_idx_files(directory)
                if not missing:
                    return _load_files(spec, candidate, directory, found, table, checksums)
                tried.append(f"{candidate.value} ({directory}: {_lacking(directory, missing)})")
            if candidate is Source.DIR:  # a data_dir the user named is never passed over
                break
    raise DatasetNotFoundError(
        f"{spec.title} ({spec.name.value!r}) was not found; tried: {'; '.join(tried)}. "
        f"Download it with `ewc download {spec.name.value}`, or pass data_dir= a folder that "
        "holds its four IDX files."
    )


def _unavailable(
    spec: DatasetSpec, source: Source, data_dir: str | os.PathLike[str] | None
) -> str | None:
    """Why ``source`` cannot provide ``spec`` whatever is on disk, or None if it might."""
    if source is Source.DIR and data_dir is None:
        return "no data_dir given"
    if source is Source.DEBIAN and spec.name is not DatasetName.FASHION_MNIST:
        return "Debian packages only fashion-mnist"
    if source is Source.EMBEDDED and spec.name is not DatasetName.MNIST:
        return "only mnist is embedded"
    return None


def _directories(
    spec: DatasetSpec,
    source: Source,
    data_dir: str | os.PathLike[str] | None,
    cache_dir: str | os.PathLike[str] | None,
    debian_dir: str | os.PathLike[str],
) -> tuple[Path, ...]:
    """The folders a directory-based source looks in, in order."""
    if source is Source.DIR and data_dir is not None:
        root = Path(data_dir).expanduser()
        return (root, root / spec.name.value)
    if source is Source.CACHE:
        return (dataset_cache_dir(spec.name, cache_dir),)
    return (Path(debian_dir),)


def _lacking(directory: Path, missing: tuple[str, ...]) -> str:
    """Say what a folder lacks, briefly."""
    if not directory.is_dir():
        return "no such folder"
    if len(missing) == 4:
        return "none of the four IDX files"
    return f"missing {', '.join(missing)} (.gz or uncompressed)"


def _load_files(
    spec: DatasetSpec,
    source: Source,
    directory: Path,
    files: dict[str, Path],
    table: Checksums,
    own_table: Checksums | None,
) -> ImageDataset:
    """Read the four files found in ``directory`` into an :class:`ImageDataset`.

    A file that no digest of the catalog's table verifies (KMNIST's uncompressed files) must at
    least hold the official number of images: other data would otherwise pass as this data set.
    """
    train_images, train_labels, test_images, test_labels, unverified = read_all(
        files, checksums=table, dataset=spec.name.value, num_classes=len(spec.classes)
    )
    if unverified and own_table is None:
        for split, images, official in (
            ("training", train_images, spec.sizes[0]),
            ("test", test_images, spec.sizes[1]),
        ):
            if len(images) != official:
                raise DataFileError(
                    f"{directory}: the {split} files hold {len(images):,} images, but the "
                    f"official {spec.title} {split} set has {official:,}; with no known checksum "
                    f"for {', '.join(unverified)} the counts must match (these are other data)"
                )
    where = {
        Source.DIR: f"folder {directory}",
        Source.CACHE: f"cache {directory}",
        Source.DEBIAN: f"Debian package dataset-fashion-mnist ({directory})",
    }[source]
    return ImageDataset(
        name=spec.name.value,
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        classes=spec.classes,
        source=f"{spec.title} from {where} ({describe_checks(unverified)})",
        is_subset=False,
    )
