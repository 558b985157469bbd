"""Image quality for the data audit, and what quality does to verification.

Entry points: `image_quality(images_u8) -> DataFrame` (sharpness = variance of the Laplacian, brightness,
contrast, per image, on the decode-once cache: what the model sees), `file_resolution(root, paths)`
(width and height from the file headers), `reject_curve(...)` (FNMR at a fixed threshold when the
lowest-quality X% of images are rejected, the ISO/IEC 29794-1 error-versus-reject curve) and
`quality_bins(...)` (verification metrics per quality quartile of the pairs).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

REJECT_FRACTIONS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
# ITU-R BT.601 luma weights: the grey level a person judges brightness and sharpness by
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def image_quality(images: np.ndarray, chunk: int = 256) -> pd.DataFrame:
    """Per image of (N, H, W, 3) uint8: sharpness (variance of the 4-neighbour Laplacian of the grey
    image, grey levels 0..255: low = blurred), brightness (mean grey, 0..1) and contrast (std of grey,
    0..1). Read a chunk at a time, so a memory-mapped cache of any size works."""
    n = images.shape[0]
    sharp = np.empty(n, np.float32)
    bright = np.empty(n, np.float32)
    contrast = np.empty(n, np.float32)
    w = (LUMA * 1024).round().astype(np.uint32)  # integer weights: one pass in uint32, no float (B, H, W, 3) copy
    for s in range(0, n, chunk):
        x = np.asarray(images[s : s + chunk])
        g = (x[..., 0] * w[0] + x[..., 1] * w[1] + x[..., 2] * w[2]).astype(np.float32) * (1 / 1024)  # (B, H, W)
        lap = g[:, :-2, 1:-1] + g[:, 2:, 1:-1] + g[:, 1:-1, :-2] + g[:, 1:-1, 2:] - 4 * g[:, 1:-1, 1:-1]
        sharp[s : s + chunk] = lap.reshape(len(g), -1).var(1)
        flat = g.reshape(len(g), -1)
        bright[s : s + chunk] = flat.mean(1) / 255.0
        contrast[s : s + chunk] = flat.std(1) / 255.0
    return pd.DataFrame({"sharpness": sharp, "brightness": bright, "contrast": contrast})


def file_resolution(root: str | Path, paths: Sequence[str]) -> np.ndarray:
    """(N, 2) int32 width and height of each file from its header only (no decode); 0 where unreadable."""
    from PIL import Image

    out = np.zeros((len(paths), 2), np.int32)
    root = Path(root)
    for i, p in enumerate(paths):
        try:
            with Image.open(root / p) as im:
                out[i] = im.size
        except (OSError, ValueError):
            continue
    return out


def _fnmr_fmr(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float, int, int]:
    gen = labels == 1
    n_gen, n_imp = int(gen.sum()), int((~gen).sum())
    fnmr = float((scores[gen] < threshold).mean()) if n_gen else float("nan")
    fmr = float((scores[~gen] >= threshold).mean()) if n_imp else float("nan")
    return fnmr, fmr, n_gen, n_imp


def reject_curve(
    quality: dict[str, np.ndarray],
    idx_a: np.ndarray,
    idx_b: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    fractions: Sequence[float] = REJECT_FRACTIONS,
) -> pd.DataFrame:
    """For each quality measure (higher = better) and fraction X: reject the X lowest-quality images,
    drop every pair that holds one, and measure FNMR (and FMR) at the fixed `threshold` on the pairs left.
    A useful measure makes FNMR fall as X grows. Columns: measure, rejected, fnmr, fmr, genuine, impostor."""
    rows = []
    gen = labels == 1
    miss = gen & (scores < threshold)  # a false non-match at the threshold
    false_match = ~gen & (scores >= threshold)
    for name, q in quality.items():
        q = np.asarray(q, np.float64)
        rank = np.empty(len(q), np.int64)
        rank[np.argsort(q, kind="stable")] = np.arange(len(q))
        # a pair survives rejecting the r lowest-quality images when its worse image ranks >= r: count
        # the survivors of every cut at once from the sorted worse-image ranks
        worse = np.minimum(rank[idx_a], rank[idx_b])
        cuts = np.array([int(round(x * len(q))) for x in fractions])

        def left(mask: np.ndarray) -> np.ndarray:
            return mask.sum() - np.searchsorted(np.sort(worse[mask]), cuts, side="left")

        g, m, i, fm = left(gen), left(miss), left(~gen), left(false_match)
        for x, gg, mm, ii, ff in zip(fractions, g, m, i, fm):
            rows.append(
                {
                    "measure": name,
                    "rejected": float(x),
                    "fnmr": mm / gg if gg else float("nan"),
                    "fmr": ff / ii if ii else float("nan"),
                    "genuine": int(gg),
                    "impostor": int(ii),
                }
            )
    return pd.DataFrame(rows)


def quality_bins(
    quality: np.ndarray,
    idx_a: np.ndarray,
    idx_b: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    bins: int = 4,
    measure: str = "sharpness",
) -> pd.DataFrame:
    """Verification per quality bin: pairs binned by the quality of their worse image (equal-count bins
    of the images' quality), with FNMR and FMR at `threshold`, AUC and EER where both kinds of pair exist."""
    from core.metrics import verification as vm

    q = np.asarray(quality, np.float64)
    edges = np.unique(np.quantile(q, np.linspace(0, 1, bins + 1)))
    pair_q = np.minimum(q[idx_a], q[idx_b])
    which = np.clip(np.searchsorted(edges, pair_q, side="right") - 1, 0, len(edges) - 2)
    rows = []
    for b in range(len(edges) - 1):
        m = which == b
        fnmr, fmr, g, i = _fnmr_fmr(scores[m], labels[m], threshold)
        row = {
            "measure": measure,
            "bin": b,
            "low": float(edges[b]),
            "high": float(edges[b + 1]),
            "genuine": g,
            "impostor": i,
            "fnmr": fnmr,
            "fmr": fmr,
            "auc": None,
            "eer": None,
        }
        if g and i:
            pts = vm.roc_points(scores[m], labels[m])
            row["auc"], row["eer"] = vm.auc(pts), vm.eer(pts)[0]
        rows.append(row)
    return pd.DataFrame(rows)
