"""`ImageDataset`: the train and test tensors of one data set, and where they came from."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """A labelled image data set split into train and test, as loaded from one source.

    Images stay uint8 in [0, 255] as stored; scaling and normalisation belong to the caller.

    Attributes:
        name: the data set (``"mnist"``, ``"fashion-mnist"`` or ``"kmnist"``).
        train_images: uint8, shape ``(N_train, 28, 28)``.
        train_labels: int64, shape ``(N_train,)``, values in ``[0, len(classes))``.
        test_images: uint8, shape ``(N_test, 28, 28)``.
        test_labels: int64, shape ``(N_test,)``.
        classes: class names, index = label.
        source: where the data came from and how it was checked, in words (for reports).
        is_subset: True when this is not the data set's official train/test split (the embedded
            MNIST subset); results on it must say so.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    source: str
    is_subset: bool

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if images.dtype != torch.uint8 or images.dim() != 3:
                raise ValueError(
                    f"{split}_images must be uint8 of shape (N, H, W); "
                    f"got {images.dtype} of shape {tuple(images.shape)}"
                )
            if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
                raise ValueError(
                    f"{split}_labels must be int64 of shape ({images.shape[0]},); "
                    f"got {labels.dtype} of shape {tuple(labels.shape)}"
                )
            outside = (labels < 0) | (labels >= len(self.classes))
            if bool(outside.any()):
                index = int(outside.nonzero()[0])
                raise ValueError(
                    f"{split}_labels[{index}] = {int(labels[index])} is not a class: labels "
                    f"index classes, so they must lie in [0, {len(self.classes)})"
                )

    @property
    def num_classes(self) -> int:
        """The number of classes."""
        return len(self.classes)

    def __repr__(self) -> str:
        subset = ", subset" if self.is_subset else ""
        return (
            f"ImageDataset({self.name!r}, train={self.train_images.shape[0]}, "
            f"test={self.test_images.shape[0]}, classes={self.num_classes}{subset}, "
            f"source={self.source!r})"
        )
