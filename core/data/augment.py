"""Batch augmentation on the GPU: uint8 NHWC batches in, normalised float32 NCHW batches out.

Entry point: `BatchAugment(mean, std, ...)(batch_u8, train, generator)`. The dataset lives on the
device as uint8, so flips, crops and normalisation are a few batched kernels per step with no
per-image Python loop and no host sync. Random parameters come from an explicit generator, so the
same (seed, epoch) gives the same augmentations and a resumed run reproduces them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F

from core.data.images import as_hw

PAD_MODES = ("reflect", "edge")
ERASE_AREA = (0.02, 0.33)  # random erasing: fraction of the image a box covers (torchvision's defaults)
ERASE_ASPECT = (0.3, 3.3)  # and its height / width


class BatchAugment:
    """Random flip + crop (padded or random-resized), colour jitter and normalisation, batched on the batch's device.

    mean, std: (3,) RGB on the 0..1 scale (ImageCache.mean / .std). crop_padding: a random
    translation of up to this many pixels, the border filled by `pad_mode` ("reflect" or "edge",
    never zeros: a black frame is a shortcut a model can learn). random_resized_crop_scale: (min, max)
    area fraction; when given it replaces the padded crop and resamples straight to out_res.
    out_res: output size, an int side (square) or (H, W) (default: the input's). channels_last: return channels_last memory format.
    color_jitter: j > 0 scales each image's brightness and its contrast (about its mean grey) by factors drawn
    from [1 - j, 1 + j] (torchvision's ColorJitter brightness and contrast, batched).
    random_erasing: p > 0 fills one random rectangle of each image, with probability p, by the dataset's mean
    colour (torchvision's RandomErasing with its defaults: 2% to 33% of the area, aspect 0.3 to 3.3, value 0
    after normalisation, batched): an occluded eye or mouth, so no single region can carry an identity.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        flip: bool = True,
        crop_padding: int = 0,
        random_resized_crop_scale: tuple[float, float] | None = None,
        out_res: int | Sequence[int] | None = None,
        channels_last: bool = True,
        pad_mode: str = "reflect",
        random_resized_crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        color_jitter: float = 0.0,
        random_erasing: float = 0.0,
    ):
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode={pad_mode!r}: use one of {PAD_MODES}")
        if crop_padding < 0:
            raise ValueError(f"crop_padding={crop_padding} must be >= 0")
        if not 0 <= color_jitter < 1:
            raise ValueError(f"color_jitter={color_jitter} must be in [0, 1)")
        if not 0 <= random_erasing <= 1:
            raise ValueError(f"random_erasing={random_erasing} must be in [0, 1]")
        if random_resized_crop_scale is not None and not (
            0 < random_resized_crop_scale[0] <= random_resized_crop_scale[1] <= 1
        ):
            raise ValueError(f"random_resized_crop_scale={random_resized_crop_scale} must satisfy 0 < min <= max <= 1")
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1)
        self.flip = flip
        self.crop_padding = int(crop_padding)
        self.rrc_scale = random_resized_crop_scale
        self.rrc_ratio = random_resized_crop_ratio
        # (H, W) or None; an int means a square, as everywhere else (core.data.images.as_hw).
        self.out_res: tuple[int, int] | None = None if out_res is None else as_hw(out_res, "out_res")
        self.channels_last = channels_last
        self.pad_mode = pad_mode
        self.color_jitter = float(color_jitter)
        self.random_erasing = float(random_erasing)
        self._affine: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._luma: dict[torch.device, torch.Tensor] = {}
        self._fill: dict[torch.device, torch.Tensor] = {}  # random erasing's mean colour, 0..255

    def __call__(
        self,
        batch_u8: torch.Tensor,
        train: bool = True,
        generator: torch.Generator | None = None,
        part: tuple[int, int] = (0, 1),
    ) -> torch.Tensor:
        """batch_u8: (B, H, W, 3) uint8 on any device -> (B, 3, *out_res) float32, normalised.

        train=False is `to_model_input`. generator: CPU or same-device generator; None uses the
        device's default RNG (not reproducible across resumes). part=(i, n): the batch is slice i of a
        global batch of n * B images split over n processes; the random parameters are drawn for the
        whole global batch and sliced, so each process augments its images exactly as one process would.
        """
        _check_batch(batch_u8)
        if not train:
            return self.to_model_input(batch_u8)
        # One draw of fixed shape per call, whatever is enabled, so the stream position depends only
        # on the number of calls: u[:, 0] flip, u[:, 1:3] crop offsets, u[:, 3:6] resized-crop scale, ratio, -.
        b = batch_u8.shape[0]
        u = _uniform((b * part[1], 6), generator, batch_u8.device)[part[0] * b : (part[0] + 1) * b]
        flip = u[:, 0] < 0.5 if self.flip else None
        if self.rrc_scale is not None:
            x = self._random_resized_crop(batch_u8, u, flip)
        else:
            x = self._resize(self._flip_crop(batch_u8, u, flip).permute(0, 3, 1, 2).float())
        if self.color_jitter:
            # A second draw only when jitter is on: runs without it keep the stream they always had.
            v = _uniform((b * part[1], 2), generator, batch_u8.device)[part[0] * b : (part[0] + 1) * b]
            x = self._jitter(x, 1 + (2 * v - 1) * self.color_jitter)
        if self.random_erasing:  # a draw of its own, likewise
            e = _uniform((b * part[1], 5), generator, batch_u8.device)[part[0] * b : (part[0] + 1) * b]
            x = self._erase(x, e)
        return self._normalise(x)

    def to_model_input(self, batch_u8: torch.Tensor) -> torch.Tensor:
        """Eval path: (B, H, W, 3) uint8 -> (B, 3, *out_res) float32 normalised, no randomness."""
        _check_batch(batch_u8)
        return self._normalise(self._resize(batch_u8.permute(0, 3, 1, 2).float()))

    # ------------------------------------------------------------------------------------------ parts

    def _flip_crop(self, x: torch.Tensor, u: torch.Tensor, flip: torch.Tensor | None) -> torch.Tensor:
        """Flip and translate by (dy, dx) in [-p, p] with one gather on the uint8 NHWC batch.

        Padding is folded into the indices (reflect or clamp), so no padded copy is ever made.
        """
        p = self.crop_padding
        if p == 0 and flip is None:
            return x
        b, h, w, _ = x.shape
        dev = x.device
        rows = torch.arange(h, device=dev).expand(b, h)
        cols = torch.arange(w, device=dev).expand(b, w)
        if p > 0:
            shift = (u[:, 1:3] * (2 * p + 1)).long().clamp_(max=2 * p) - p
            rows = self._border(rows + shift[:, :1], h)
            cols = self._border(cols + shift[:, 1:2], w)
        if flip is not None:
            cols = torch.where(flip[:, None], cols.flip(1), cols)
        return x[torch.arange(b, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]

    def _border(self, i: torch.Tensor, n: int) -> torch.Tensor:
        if self.pad_mode == "edge":
            return i.clamp(0, n - 1)
        # Reflect without repeating the edge pixel (numpy "reflect"); exact while p < n, and the
        # clamp keeps a larger p in bounds (an out-of-range index would be a device-side assert).
        i = i.abs()
        return torch.where(i > n - 1, 2 * (n - 1) - i, i).clamp(0, n - 1)

    def _random_resized_crop(self, x_u8: torch.Tensor, u: torch.Tensor, flip: torch.Tensor | None) -> torch.Tensor:
        """Sample area fraction s and aspect r per image, crop and resample with one grid_sample.

        Upsampling from a crop is the usual case; a crop much larger than out_res would alias
        (grid_sample does not low-pass), so keep out_res near the cached resolution.
        """
        b, h, w, _ = x_u8.shape
        out_h, out_w = self.out_res or (h, w)
        lo, hi = cast(tuple[float, float], self.rrc_scale)  # __call__ comes here only when it is set
        scale = lo + u[:, 3] * (hi - lo)
        log_r0, log_r1 = math.log(self.rrc_ratio[0]), math.log(self.rrc_ratio[1])
        ratio = torch.exp(log_r0 + u[:, 4] * (log_r1 - log_r0))
        cw = torch.sqrt(scale * ratio).clamp(max=1.0)  # crop width / image width
        ch = torch.sqrt(scale / ratio).clamp(max=1.0)
        # Centre in normalised [-1, 1] coordinates, chosen so the crop stays inside the image.
        cx = (2 * u[:, 1] - 1) * (1 - cw)
        cy = (2 * u[:, 2] - 1) * (1 - ch)
        sx = torch.where(flip, -cw, cw) if flip is not None else cw
        zero = torch.zeros_like(cw)
        theta = torch.stack([torch.stack([sx, zero, cx], 1), torch.stack([zero, ch, cy], 1)], 1)
        grid = F.affine_grid(theta, [b, 3, out_h, out_w], align_corners=False)
        x = x_u8.permute(0, 3, 1, 2).float()
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def _jitter(self, x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) on the 0..255 scale; factors (B, 2): brightness, contrast. Contrast blends with
        the image's mean grey (ITU-R 601 luma, as torchvision), then brightness scales; clamped to 0..255."""
        if x.device not in self._luma:  # copied to the device once, not a host-to-device copy per step
            self._luma[x.device] = _to_device(torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1), x.device)
        luma = self._luma[x.device]
        grey = (x * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        contrast, brightness = factors[:, 1].view(-1, 1, 1, 1), factors[:, 0].view(-1, 1, 1, 1)
        return (((x - grey) * contrast + grey).clamp(0, 255) * brightness).clamp(0, 255)

    def _erase(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) on the 0..255 scale; u (B, 5): apply, area, log-aspect, top, left (each a fraction of
        the room the box leaves). A box taller or wider than the image is cut to it, where torchvision would
        draw again."""
        _, _, h, w = x.shape
        area = ERASE_AREA[0] + u[:, 1] * (ERASE_AREA[1] - ERASE_AREA[0])
        log_lo, log_hi = math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1])
        aspect = torch.exp(log_lo + u[:, 2] * (log_hi - log_lo))
        eh = (torch.sqrt(area * aspect) * h).clamp(max=h)  # box height / width in pixels
        ew = (torch.sqrt(area / aspect) * w).clamp(max=w)
        top = u[:, 3] * (h - eh)
        left = u[:, 4] * (w - ew)
        rows = torch.arange(h, device=x.device, dtype=x.dtype)
        cols = torch.arange(w, device=x.device, dtype=x.dtype)
        in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])  # (B, H)
        in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])  # (B, W)
        box = in_rows[:, :, None] & in_cols[:, None, :] & (u[:, 0] < self.random_erasing)[:, None, None]
        if x.device not in self._fill:  # copied to the device once, as _jitter's luma
            self._fill[x.device] = _to_device(self.mean * 255.0, x.device)
        return torch.where(box[:, None], self._fill[x.device], x)

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if self.out_res is None or tuple(x.shape[-2:]) == self.out_res:
            return x
        return F.interpolate(x, size=self.out_res, mode="bilinear", antialias=True, align_corners=False)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) float on the 0..255 scale -> (x / 255 - mean) / std as one multiply-add."""
        if x.device not in self._affine:
            scale = 1.0 / (255.0 * self.std)
            self._affine[x.device] = (_to_device(scale, x.device), _to_device(-self.mean / self.std, x.device))
        scale, shift = self._affine[x.device]
        x = torch.addcmul(shift, x, scale)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)


def training_augment(
    mean: Sequence[float],
    std: Sequence[float],
    *,
    flip: bool,
    crop_padding: int,
    crop_scale: float = 1.0,
    color_jitter: float = 0.0,
    random_erasing: float = 0.0,
    out_res: int | Sequence[int] | None = None,
    channels_last: bool = False,
) -> BatchAugment:
    """The augmentation a config's train section describes (training and the dashboard's preview):
    crop_scale < 1 turns the padded crop into a random-resized crop keeping at least that area."""
    return BatchAugment(
        mean,
        std,
        flip=flip,
        crop_padding=crop_padding,
        random_resized_crop_scale=(crop_scale, 1.0) if crop_scale < 1 else None,
        color_jitter=color_jitter,
        random_erasing=random_erasing,
        out_res=out_res,
        channels_last=channels_last,
    )


def _check_batch(batch: torch.Tensor) -> None:
    if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected a (B, H, W, 3) uint8 batch, got {tuple(batch.shape)} {batch.dtype}")


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """U[0, 1) numbers from `generator` (CPU or `device`), delivered on `device` without a host sync."""
    if generator is None:
        return torch.rand(shape, device=device)
    return _to_device(torch.rand(shape, generator=generator, device=generator.device), device)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if t.device == device:
        return t
    if t.device.type == "cpu" and device.type == "cuda":
        # Pinned + non_blocking: the copy is queued on the stream and the host does not wait for it
        # (the caching host allocator keeps the pinned block alive until the copy has run).
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
