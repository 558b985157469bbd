"""core.data.augment: normalisation, deterministic flips and crops, shapes and memory format."""

import numpy as np
import pytest
import torch

from core.data.augment import BatchAugment, training_augment

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _batch(b=32, h=12, w=12, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, h, w, 3), dtype=torch.uint8, generator=g)


def _normalised(x_u8: torch.Tensor) -> torch.Tensor:
    x = x_u8.permute(0, 3, 1, 2).double() / 255.0
    return ((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)).float()


def _denormalised_u8(out: torch.Tensor) -> np.ndarray:
    x = out.double() * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    return torch.round(x * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_eval_path_only_normalises():
    x = _batch()
    aug = BatchAugment(MEAN, STD, flip=True, crop_padding=4)
    out = aug(x, train=False)
    assert out.shape == (32, 3, 12, 12) and out.dtype == torch.float32
    torch.testing.assert_close(out, _normalised(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(aug.to_model_input(x), out)


@pytest.mark.parametrize("kw", [dict(crop_padding=3), dict(random_resized_crop_scale=(0.3, 1.0))])
def test_same_generator_seed_same_augmentation(kw):
    x = _batch()
    aug = BatchAugment(MEAN, STD, **kw)
    a = aug(x, train=True, generator=torch.Generator().manual_seed(5))
    b = aug(x, train=True, generator=torch.Generator().manual_seed(5))
    c = aug(x, train=True, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_color_jitter_scales_brightness_and_contrast_within_its_range():
    # Pixels in 60..190 never clamp at +-20 %, so each output image is exactly ((x - g) * c + g) * b
    # with g its mean grey: recover b and c per image and check the range, the spread and the formula.
    j = 0.2
    x = torch.randint(60, 191, (64, 12, 12, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    aug = BatchAugment(MEAN, STD, flip=False, color_jitter=j)
    out = aug(x, train=True, generator=torch.Generator().manual_seed(4)).double()
    out = (out * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)) * 255
    xin = x.permute(0, 3, 1, 2).double()
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(1, 3, 1, 1)
    grey_in = (xin * luma).sum(1).mean((1, 2))
    b = (out * luma).sum(1).mean((1, 2)) / grey_in
    c = (out / b.view(-1, 1, 1, 1) - grey_in.view(-1, 1, 1, 1)).std((1, 2, 3)) / (xin - grey_in.view(-1, 1, 1, 1)).std(
        (1, 2, 3)
    )
    assert ((b >= 1 - j - 1e-4) & (b <= 1 + j + 1e-4)).all() and ((c >= 1 - j - 1e-4) & (c <= 1 + j + 1e-4)).all()
    assert b.max() - b.min() > j and c.max() - c.min() > j  # really drawn per image over the range
    g = grey_in.view(-1, 1, 1, 1)
    expected = ((xin - g) * c.view(-1, 1, 1, 1) + g) * b.view(-1, 1, 1, 1)
    torch.testing.assert_close(out, expected, atol=1e-3, rtol=0)


def test_random_erasing_fills_one_box_by_the_mean_colour_in_about_p_of_the_images():
    # Each image is left exactly as it was, or has one axis-aligned box of 2% to 33% of its area set to the
    # mean colour (0 after normalisation) and every other pixel untouched.
    p, b = 0.5, 400
    x = _batch(b=b, h=20, w=20, seed=1)
    aug = BatchAugment(MEAN, STD, flip=False, random_erasing=p)
    out = aug(x, train=True, generator=torch.Generator().manual_seed(2))
    plain = _normalised(x)
    changed = ~torch.isclose(out, plain, atol=1e-5, rtol=0).all(1)  # (B, H, W): pixels that moved
    erased = torch.isclose(out, torch.zeros(()), atol=1e-5).all(1)
    n_erased = 0
    for i in range(b):
        if not changed[i].any():
            continue
        n_erased += 1
        rows, cols = changed[i].any(1).nonzero().flatten(), changed[i].any(0).nonzero().flatten()
        box = torch.zeros_like(changed[i])
        box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
        assert erased[i][box].all() and not changed[i][~box].any()  # one box, all of it the mean colour
        assert box.sum() <= 0.33 * 400 + 20 + 20  # its area within the range, up to a pixel row and column
    assert abs(n_erased / b - p) < 0.1  # binomial sd 0.025 at 400 images: four of them
    assert torch.equal(aug(x, train=False), BatchAugment(MEAN, STD)(x, train=False))  # evaluation never erases


def test_training_augment_follows_the_config_keys():
    off = training_augment(MEAN, STD, flip=True, crop_padding=4)
    assert off.rrc_scale is None and off.crop_padding == 4 and off.color_jitter == 0 and off.random_erasing == 0
    on = training_augment(MEAN, STD, flip=False, crop_padding=4, crop_scale=0.6, color_jitter=0.1, random_erasing=0.5)
    assert on.rrc_scale == (0.6, 1.0) and on.color_jitter == 0.1 and not on.flip and on.random_erasing == 0.5


def test_flip_actually_flips():
    x = _batch(b=64)
    out = _denormalised_u8(
        BatchAugment(MEAN, STD, flip=True)(x, train=True, generator=torch.Generator().manual_seed(0))
    )
    x = x.numpy()
    same = [(o == i).all() for o, i in zip(out, x)]
    flipped = [(o == i[:, ::-1]).all() for o, i in zip(out, x)]
    assert all(s or f for s, f in zip(same, flipped))
    assert 10 < sum(flipped) < 54  # about half, and flipped really means mirrored


@pytest.mark.parametrize("pad_mode, np_mode", [("reflect", "reflect"), ("edge", "edge")])
def test_padded_crop_is_a_translation_with_that_border(pad_mode, np_mode):
    p = 3
    x = _batch(b=16)
    aug = BatchAugment(MEAN, STD, flip=False, crop_padding=p, pad_mode=pad_mode)
    out = _denormalised_u8(aug(x, train=True, generator=torch.Generator().manual_seed(1)))
    padded = np.pad(x.numpy(), ((0, 0), (p, p), (p, p), (0, 0)), mode=np_mode)
    shifts = set()
    for i in range(len(x)):
        match = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if (padded[i, dy : dy + 12, dx : dx + 12] == out[i]).all()
        ]
        assert match, f"image {i} is not a padded crop of its input"
        shifts.add(match[0])
    assert len(shifts) > 3  # offsets vary per image


def test_full_random_resized_crop_is_identity_or_mirror():
    x = _batch(b=16)
    aug = BatchAugment(
        MEAN, STD, flip=False, random_resized_crop_scale=(1.0, 1.0), random_resized_crop_ratio=(1.0, 1.0)
    )
    torch.testing.assert_close(aug(x, generator=torch.Generator().manual_seed(0)), _normalised(x), atol=1e-4, rtol=0)


def test_output_resolution_and_memory_format():
    x = _batch(h=16, w=16)
    for kw in (dict(crop_padding=2), dict(random_resized_crop_scale=(0.5, 1.0)), dict()):
        out = BatchAugment(MEAN, STD, out_res=8, channels_last=True, **kw)(
            x, generator=torch.Generator().manual_seed(0)
        )
        assert out.shape == (32, 3, 8, 8) and out.is_contiguous(memory_format=torch.channels_last)
    out = BatchAugment(MEAN, STD, channels_last=False)(x, train=False)
    assert out.shape == (32, 3, 16, 16) and out.is_contiguous()


def test_rejects_non_uint8_batches():
    with pytest.raises(ValueError, match="uint8"):
        BatchAugment(MEAN, STD)(torch.zeros(2, 3, 8, 8), train=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_batch_with_cpu_generator_matches_cpu():
    x = _batch()
    for kw in (dict(crop_padding=3), dict(random_resized_crop_scale=(0.5, 1.0), out_res=16)):
        aug = BatchAugment(MEAN, STD, **kw)
        cpu = aug(x, generator=torch.Generator().manual_seed(2))
        x_gpu = x.cuda()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # the train step must never make the host wait
        try:
            gpu = aug(x_gpu, generator=torch.Generator().manual_seed(2))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=0)
