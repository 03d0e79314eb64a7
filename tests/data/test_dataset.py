"""ImageDataset refuses labels that are not classes (a -1 would index the last class)."""

from __future__ import annotations

import pytest
import torch

from ewc.data import ImageDataset


def dataset(train_labels, test_labels=(0, 1)):
    def images(n):
        return torch.zeros(n, 2, 2, dtype=torch.uint8)

    train, test = torch.tensor(train_labels), torch.tensor(test_labels)
    return ImageDataset(
        "mnist", images(len(train)), train, images(len(test)), test, ("a", "b", "c"), "tests", True
    )


@pytest.mark.parametrize(("labels", "index", "value"), [((0, -1, 2), 1, -1), ((2, 0, 3), 2, 3)])
def test_a_label_outside_the_classes_is_named(labels, index, value):
    with pytest.raises(ValueError, match=rf"train_labels\[{index}\] = {value} is not a class"):
        dataset(labels)


def test_labels_of_every_class_are_accepted():
    assert dataset((0, 1, 2)).num_classes == 3
