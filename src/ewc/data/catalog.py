"""The data sets `ewc` knows: names, classes, official mirrors, checksums and licences.

All three share the MNIST layout: four IDX files (:data:`IDX_FILES`), 60,000 training and 10,000
test images of 28×28 grey levels, 10 classes.

Checksums (MD5, see :mod:`ewc.data.checksums` for how they are used):

- ``.gz`` digests: the ones the authors publish (MNIST and KMNIST as listed by torchvision,
  Fashion-MNIST in Zalando's README).
- Uncompressed digests: MNIST's two test files were computed here from the official files; MNIST's
  training files and all of Fashion-MNIST's are the values published in several public projects,
  and the Fashion-MNIST ones were confirmed here against Debian's ``dataset-fashion-mnist`` and the
  label files of Zalando's repository. No uncompressed digests of KMNIST are published, so an
  uncompressed KMNIST file is checked for structure only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ewc._choices import Choice

IDX_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
"""The four files of every data set, without the ``.gz`` suffix: train images, train labels,
test images, test labels."""


def file_names(base: str) -> tuple[str, str]:
    """The names under which the IDX file ``base`` (one of :data:`IDX_FILES`) is found.

    The official name (``train-images-idx3-ubyte``) and the same with a dot before ``idx``
    (``train-images.idx3-ubyte``), as Kaggle and many mirrors name the files; each may also carry
    ``.gz``. Both spellings hold the same bytes, so both are checked against the official digests.
    """
    stem, _, kind = base.rpartition("-idx")
    return base, f"{stem}.idx{kind}"


def official_name(file_name: str) -> str | None:
    """The official name of a file found under any name of :func:`file_names`, ``.gz`` kept.

    ``"train-images.idx3-ubyte.gz"`` → ``"train-images-idx3-ubyte.gz"``; None for a name that is
    none of the four files.
    """
    base, suffix = (file_name[:-3], ".gz") if file_name.endswith(".gz") else (file_name, "")
    for official in IDX_FILES:
        if base in file_names(official):
            return official + suffix
    return None


def _digests(
    gz: tuple[str, str, str, str], content: tuple[str, str, str, str] | None = None
) -> Mapping[str, str]:
    """A checksum table from the MD5s of the ``.gz`` files and of their content, in IDX order."""
    table = {f"{base}.gz": digest for base, digest in zip(IDX_FILES, gz, strict=True)}
    if content is not None:
        table.update(zip(IDX_FILES, content, strict=True))
    return MappingProxyType(table)


class DatasetName(Choice):
    """The data sets that :func:`ewc.data.load_dataset` and :func:`ewc.data.download` know."""

    __noun__ = ("data set", "names")

    MNIST = "mnist"
    FASHION_MNIST = "fashion-mnist"
    KMNIST = "kmnist"


@dataclass(frozen=True)
class DatasetSpec:
    """What is known about one data set.

    Attributes:
        name: the data set.
        title: its usual name, for messages.
        classes: the class names, index = label.
        mirrors: base URLs that serve the four ``.gz`` files, tried in order.
        checksums: file name → MD5 (``.gz`` and uncompressed keys, see :mod:`ewc.data.checksums`).
        licence: authors and licence, for provenance notes.
        sizes: the official training and test set sizes (all three: 60,000 and 10,000).
    """

    name: DatasetName
    title: str
    classes: tuple[str, ...]
    mirrors: tuple[str, ...]
    checksums: Mapping[str, str]
    licence: str
    sizes: tuple[int, int] = (60_000, 10_000)


_MNIST = DatasetSpec(
    name=DatasetName.MNIST,
    title="MNIST",
    classes=tuple(str(digit) for digit in range(10)),
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    checksums=_digests(
        gz=(
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3",
            "ec29112dd5afa0611ce80d1b7f02629c",
        ),
        content=(
            "6bbc9ace898e44ae57da46a324031adb",
            "a25bea736e30d166cdddb491f175f624",
            "2646ac647ad5339dbf082846283269ea",
            "27ae3e4e09519cfbb04c329615203637",
        ),
    ),
    licence="MNIST by Yann LeCun, Corinna Cortes and Christopher J.C. Burges; CC BY-SA 3.0",
)

_FASHION_MNIST = DatasetSpec(
    name=DatasetName.FASHION_MNIST,
    title="Fashion-MNIST",
    classes=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    # The S3 website endpoint has no https; the MD5 check is what guarantees the content.
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    checksums=_digests(
        gz=(
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "25c81989df183df01b3e8a0aad5dffbe",
            "bef4ecab320f06d8554ea6380940ec79",
            "bb300cfdad3c16e7a12a480ee83cd310",
        ),
        content=(
            "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "9018921c3c673c538a1fc5bad174d6f9",
            "8181f5470baa50b63fa0f6fddb340f0a",
            "15d484375f8d13e6eb1aabb0c3f46965",
        ),
    ),
    licence="Fashion-MNIST by Zalando SE (Xiao, Rasul and Vollgraf, 2017); MIT licence",
)

_KMNIST = DatasetSpec(
    name=DatasetName.KMNIST,
    title="Kuzushiji-MNIST",
    # Romanised readings of the hiragana お き す つ な は ま や れ を (labels 0..9).
    classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    mirrors=("https://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
    checksums=_digests(
        gz=(
            "bdb82020997e1d708af4cf47b453dcf7",
            "e144d726b3acfaa3e44228e80efcd344",
            "5c965bf0a639b31b8f53240b1b52f4d7",
            "7320c461ea6c1c855c0b718fb2a4b134",
        ),
    ),
    licence=(
        "KMNIST by CODH (Clanuwat et al., 2018), adapted from the Kuzushiji data set of NIJL "
        "and others, doi:10.20676/00000341; CC BY-SA 4.0"
    ),
)

_SPECS: Mapping[DatasetName, DatasetSpec] = MappingProxyType(
    {spec.name: spec for spec in (_MNIST, _FASHION_MNIST, _KMNIST)}
)


def get_spec(name: DatasetName | str) -> DatasetSpec:
    """The specification of the data set ``name``; ValueError lists the valid names."""
    return _SPECS[DatasetName.parse(name)]
