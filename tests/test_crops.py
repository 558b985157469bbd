"""Centre-crop / outer-ring geometry on a synthetic image whose pixels encode their own position."""

import pytest
import torch

from core.crops import centre_box, centre_crop, mask_centre, to_grayscale


def test_centre_box_is_the_centred_square_of_the_shorter_side():
    assert centre_box(100, 100, 0.5) == (25, 25, 50, 50)
    assert centre_box(80, 120, 0.5) == (20, 40, 40, 40)  # side from the shorter (80) side
    assert centre_box(64, 64, 1.0) == (0, 0, 64, 64)
    with pytest.raises(ValueError):
        centre_box(64, 64, 0.0)


def test_centre_crop_shows_only_the_centre_resized_back():
    h = w = 40
    rows = torch.arange(h).view(1, 1, h, 1).expand(1, 1, h, w).float()
    out = centre_crop(rows, 0.5)
    assert out.shape == rows.shape
    # Only rows 10..29 survive, stretched over the whole height.
    assert out.min() >= 10 - 1e-4 and out.max() <= 29 + 1e-4
    assert out[0, 0, 0, 0] < out[0, 0, -1, 0]
    assert torch.equal(centre_crop(rows, 1.0), rows)


def test_mask_centre_fills_exactly_the_centre_square_with_the_mean():
    x = torch.ones(2, 3, 20, 30)
    out = mask_centre(x, 0.5, fill=torch.tensor([0.1, 0.2, 0.3]))
    top, left, side, _ = centre_box(20, 30, 0.5)
    inside = out[:, :, top : top + side, left : left + side]
    assert torch.allclose(inside[:, 1], torch.full_like(inside[:, 1], 0.2))
    outside = out.clone()
    outside[:, :, top : top + side, left : left + side] = 1
    assert torch.equal(outside, x) and torch.equal(x, torch.ones(2, 3, 20, 30))  # input untouched


def test_grayscale_keeps_luma_and_equalises_channels():
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    rgb = torch.rand(1, 3, 8, 8)
    x = (rgb - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    g = to_grayscale(x, mean, std) * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    luma = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    for c in range(3):
        assert torch.allclose(g[:, c], luma, atol=1e-5)
    # a BGR model's input: the same image with its channels (and statistics) reversed gives the same grey
    flip = [2, 1, 0]
    g_bgr = to_grayscale(x[:, flip], mean[::-1], std[::-1], "BGR")
    assert torch.allclose(g_bgr, to_grayscale(x, mean, std)[:, flip], atol=1e-6)
