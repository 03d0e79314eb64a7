"""Image transforms: unit scaling, pixel permutation, rotation (against torch.rot90)."""

from __future__ import annotations

import pytest
import torch

from ewc.experiment.streams.transforms import permute_pixels, rotate, to_unit_interval


def images(n: int = 3, height: int = 28, width: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, height, width, generator=torch.Generator().manual_seed(seed))


def test_to_unit_interval_divides_by_255_and_adds_a_channel():
    raw = torch.tensor([[[0, 51], [255, 128]]], dtype=torch.uint8)
    out = to_unit_interval(raw)
    assert out.shape == (1, 1, 2, 2)
    assert out.dtype == torch.float32
    assert torch.equal(out[0, 0], torch.tensor([[0.0, 0.2], [1.0, 128 / 255]]))


def test_permute_pixels_matches_a_pixel_by_pixel_loop():
    x = torch.randint(0, 256, (4, 3, 5), dtype=torch.uint8)
    order = torch.randperm(15, generator=torch.Generator().manual_seed(1))
    out = permute_pixels(x, order)
    for n in range(4):
        for j in range(15):
            assert out[n].flatten()[j] == x[n].flatten()[order[j]]
    assert torch.equal(permute_pixels(x, torch.arange(15)), x)


def test_rotation_by_zero_or_a_full_turn_is_the_identity():
    x = images()
    assert torch.allclose(rotate(x, 0.0), x, atol=1e-5)
    assert torch.allclose(rotate(x, 360.0), x, atol=1e-5)
    assert torch.allclose(rotate(x, -720), x, atol=1e-5)


@pytest.mark.parametrize("quarter_turns", [1, 2, 3, -1])
def test_rotation_by_quarter_turns_matches_rot90(quarter_turns):
    x = images()
    expected = torch.rot90(x, quarter_turns, dims=(-2, -1))  # counter-clockwise for k > 0
    assert torch.allclose(rotate(x, 90.0 * quarter_turns), expected, atol=1e-5)


def test_rotation_of_non_square_images_by_a_half_turn_and_of_several_channels():
    x = images(2, 20, 30)
    assert torch.allclose(rotate(x, 180), torch.rot90(x, 2, dims=(-2, -1)), atol=1e-5)
    multi = torch.rand(2, 3, 28, 28)
    for c in range(3):
        single = rotate(multi[:, c : c + 1], 90)
        assert torch.equal(rotate(multi, 90)[:, c : c + 1], single)


def test_rotation_fills_with_zero_and_keeps_the_centre():
    ones = torch.ones(1, 1, 28, 28)
    out = rotate(ones, 45)
    assert out[0, 0, 0, 0] == 0  # a corner comes from outside the image
    assert torch.allclose(out[0, 0, 10:18, 10:18], torch.ones(8, 8), atol=1e-5)


def test_rotation_in_float64_is_exact_to_rounding():
    x = images().double()
    assert torch.allclose(rotate(x, 90), torch.rot90(x, 1, dims=(-2, -1)), atol=1e-12)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: to_unit_interval(torch.zeros(2, 28, 28)), "expected uint8 images of shape"),
        (lambda: to_unit_interval(torch.zeros(2, 1, 28, 28).byte()), r"got torch.uint8 of shape"),
        (lambda: permute_pixels(torch.zeros(5), torch.arange(5)), r"shape \(\.\.\., H, W\)"),
        (lambda: permute_pixels(torch.zeros(2, 3, 3), torch.arange(8)), r"shape \(9,\); got"),
        (lambda: rotate(torch.zeros(2, 28, 28), 10), r"floating images of shape \(N, C, H, W\)"),
        (lambda: rotate(torch.zeros(1, 1, 4, 4).byte(), 10), "got torch.uint8"),
        (lambda: rotate(torch.zeros(1, 1, 4, 4), float("inf")), "degrees must be finite; got inf"),
        (lambda: rotate(torch.zeros(1, 1, 4, 4), "90"), "degrees must be a number; got '90'"),
    ],
)
def test_bad_inputs_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
