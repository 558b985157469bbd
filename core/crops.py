"""Centre-crop geometry shared by training (`data.crop`), evaluation (`--crop`) and the ablation.

`centre_crop(x, fraction)` keeps the centre square of side `fraction` x the shorter side and resizes it
back to the input size; `mask_centre(x, fraction, fill)` keeps everything except that square (metrics.md,
"Centre-crop ablation"). Both work on batches (B, C, H, W) on any device, so they run on the GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_crop(fraction: float, where: str = "--crop") -> float:
    """A user's crop fraction, or MatchLabError naming `where` (5 used to be silently taken as 1)."""
    from core.errors import MatchLabError

    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise MatchLabError(f"{where} {fraction} must be in (0, 1]: the fraction of the shorter side kept")
    return float(fraction)


def centre_box(height: int, width: int, fraction: float) -> tuple[int, int, int, int]:
    """(top, left, size, size) of the centre square whose side is `fraction` of the shorter side."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"crop fraction must be in (0, 1], got {fraction}")
    side = max(1, round(min(height, width) * fraction))
    return (height - side) // 2, (width - side) // 2, side, side


def centre_crop(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """x: (B, C, H, W) float -> same shape, showing only the centre square, resized back (bilinear)."""
    if fraction >= 1.0:
        return x
    h, w = x.shape[-2:]
    top, left, side, _ = centre_box(h, w, fraction)
    patch = x[..., top : top + side, left : left + side]
    return F.interpolate(patch, size=(h, w), mode="bilinear", align_corners=False, antialias=False)


def mask_centre(x: torch.Tensor, fraction: float, fill: float | torch.Tensor = 0.0) -> torch.Tensor:
    """x: (B, C, H, W) -> copy with the centre square replaced by `fill` (the dataset mean: 0 once
    normalised, or a (C,) tensor), so the model sees only the outer ring."""
    h, w = x.shape[-2:]
    top, left, side, _ = centre_box(h, w, fraction)
    out = x.clone()
    fill_t = torch.as_tensor(fill, dtype=x.dtype, device=x.device)
    if fill_t.ndim == 1:
        fill_t = fill_t.view(1, -1, 1, 1)
    out[..., top : top + side, left : left + side] = fill_t
    return out


def to_grayscale(x: torch.Tensor, mean, std, channels: str = "RGB") -> torch.Tensor:
    """Normalised (B, 3, H, W) -> the same images in grey (ITU-R 601 luma), re-normalised per channel.
    channels: the order of x's channels (and of mean / std), "RGB" or "BGR" (an imported model's)."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    luma_weights = (0.299, 0.587, 0.114) if channels == "RGB" else (0.114, 0.587, 0.299)
    w = torch.tensor(luma_weights, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    pixels = x * s + m
    luma = (pixels * w).sum(1, keepdim=True).expand_as(pixels)
    return (luma - m) / s
