"""Score two images with a run: the `verify` command and the dashboard's live match.

Entry point: `score_images(model, img_a, img_b, crop=None) -> dict` (model: an Embedder, or a pair-model Run) with the score, the threshold in force,
the decision and the two model inputs as uint8 pictures (what the model actually saw). Images come as
paths, bytes (an upload) or PIL images, and go through the same decode path as the training cache.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import cast

import numpy as np
import torch
from PIL import Image

from core.crops import check_crop
from core.data.images import MAX_PIXELS, load_rgb, resize_square
from core.embedder import Embedder
from core.errors import MatchLabError
from core.pair_scores import score_pair_model
from core.run import Run

# Live match's built-in example pairs (issue 18): bundled ORL photos (the only images the repository may
# ship), so a first visit shows a score with nothing uploaded. Chosen by a rule, not by their scores: the
# first two photos of s11, the first test identity of the demo run's split (never trained on), and s11's
# first photo against s12's, its second test identity. Paths are relative to the repository root.
EXAMPLE_PAIRS: dict[str, tuple[str, str]] = {
    "genuine": ("data/orl_faces/s11/1.pgm", "data/orl_faces/s11/2.pgm"),
    "impostor": ("data/orl_faces/s11/1.pgm", "data/orl_faces/s12/1.pgm"),
}
REPO_ROOT = Path(__file__).resolve().parents[1]


def example_pair(kind: str) -> tuple[Path, Path]:
    """The two image files of the example pair `kind` ("genuine" or "impostor")."""
    if kind not in EXAMPLE_PAIRS:
        raise MatchLabError(f"unknown example pair '{kind}'; valid: {', '.join(EXAMPLE_PAIRS)}")
    a, b = (REPO_ROOT / rel for rel in EXAMPLE_PAIRS[kind])
    return a, b


def to_uint8(image: str | Path | bytes | Image.Image, res: int | tuple[int, int], name: str = "image") -> np.ndarray:
    """Any supported input -> (H, W, 3) uint8 at `res` (an int: a square), as the cache would store it."""
    if isinstance(image, Image.Image):
        if image.width * image.height > MAX_PIXELS:
            raise MatchLabError(
                f"{name}: {image.width} x {image.height} pixels is over the limit of "
                f"{MAX_PIXELS / 1e6:g} megapixels; downscale the image"
            )
        return resize_square(image.convert("RGB"), res)
    # load_rgb refuses, naming the file and the reason: over the pixel limit (before decoding), not an
    # image, truncated, missing, or not a regular file (a FIFO would block).
    if isinstance(image, (bytes, bytearray)):
        return resize_square(load_rgb(bytes(image), name=name), res)
    return resize_square(load_rgb(Path(image)), res)


def model_view(image_u8: np.ndarray, crop: float) -> np.ndarray:
    """What the model sees after the centre crop, as a uint8 picture (for display next to the score)."""
    from core.crops import centre_crop

    x = torch.from_numpy(np.array(image_u8)).permute(2, 0, 1)[None].float()
    return centre_crop(x, crop)[0].permute(1, 2, 0).clamp(0, 255).round().byte().numpy()


def score_images(
    model: Embedder | Run,
    img_a,
    img_b,
    crop: float | None = None,
    *,
    align: str | None = None,
    names: tuple[str, str] = ("first image", "second image"),
    pick: tuple[int | None, int | None] = (None, None),
) -> dict:
    """Score two images with an Embedder (cosine of the embeddings) or a pair model (its probability).

    align: "mtcnn" detects and aligns each photo's face first (default: the model's Preprocess.align);
    the result then also holds "faces" (core.align.faces.Aligned per photo) and "annotated" (each photo
    with its boxes and landmarks drawn). pick: which face to use per photo (default: the largest, most
    central). A photo without a face raises MatchLabError naming it."""
    pre = model.preprocess
    crop = pre.crop if crop is None else check_crop(crop)
    extra: dict = {}
    if (align or pre.align) == "mtcnn":
        from core.align.faces import align_photos, draw_faces

        found, photos = align_photos([img_a, img_b], pre.cache_res, names=names, pick=pick, device=str(model.device))
        # align_photos raises for a photo without a face, so both have a crop
        a, b = cast(np.ndarray, found[0].crop), cast(np.ndarray, found[1].crop)
        extra = {"align": "mtcnn", "faces": found, "annotated": [draw_faces(p, f) for p, f in zip(photos, found)]}
    else:
        a, b = to_uint8(img_a, pre.cache_res, names[0]), to_uint8(img_b, pre.cache_res, names[1])
    batch = np.stack([a, b])
    if isinstance(model, Embedder):
        emb = model.embed(batch, crop=crop).cpu().numpy()
        score = float(emb[0] @ emb[1])
    else:
        score = float(
            score_pair_model(
                model.model, batch, np.array([0]), np.array([1]), preprocess=pre, device=model.device, crop=crop
            )[0]
        )
    threshold = model.threshold
    return {
        "score": score,
        "threshold": threshold,
        "same": None if threshold is None else score >= threshold,
        "input_a": model_view(a, crop),
        "input_b": model_view(b, crop),
        "crop": crop,
        **extra,
    }


def read_threshold_file(path: str | Path, run: Embedder | Run) -> float:
    """The threshold of an operating point exported by the dashboard (read_operating_point)."""
    return read_operating_point(path, run)["threshold"]


def implied_far_text(point: dict) -> str | None:
    """What an operating point's threshold implies, in one line: the FAR it had on the data it was chosen
    on (and its counts, target and stability, when the file records them); None for a bare threshold."""
    far = point.get("far")
    if not isinstance(far, (int, float)) or not math.isfinite(far):
        return None
    counts, n_imp = point.get("counts") or {}, point.get("n_impostor")
    text = f"implies FAR {far:.2e}"
    if isinstance(counts.get("fp"), int) and isinstance(n_imp, int):
        text += f" ({counts['fp']:,} of {n_imp:,} impostor pairs accepted)"
    if point.get("dataset") or point.get("data"):
        text += f" on {point.get('dataset') or point.get('data')}"
    if isinstance(point.get("target_far"), (int, float)):
        text += f", chosen for target FAR {point['target_far']:.0e}"
    if isinstance(point.get("stable"), bool):
        text += ", a stable figure" if point["stable"] else ", NOT a stable figure (too few impostor pairs)"
    return text


def read_operating_point(path: str | Path, run: Embedder | Run) -> dict:
    """An operating point exported by the dashboard: {threshold, far, tar, checkpoint_hash, ...}, checked
    against the run's checkpoint; its "threshold" is a finite float."""
    path = Path(path)
    try:
        point = json.loads(path.read_text())
        threshold = float(point["threshold"])
    except FileNotFoundError:
        raise MatchLabError(f"threshold file {path} not found") from None
    except IsADirectoryError:
        raise MatchLabError(f"threshold file {path} is a folder; pass the operating-point JSON file") from None
    except OSError as e:
        raise MatchLabError(f"threshold file {path} cannot be read ({e.strerror or e})") from None
    except (ValueError, KeyError, TypeError):
        raise MatchLabError(f"{path} is not an operating-point JSON with a 'threshold' field") from None
    if not math.isfinite(threshold):
        raise MatchLabError(f"{path}: its threshold is not a finite number; export the operating point again")
    if point.get("checkpoint_hash") not in (None, run.checkpoint_hash):
        raise MatchLabError(
            f"{path} was chosen for checkpoint {point['checkpoint_hash']}, not this run's "
            f"{run.checkpoint_hash}; export the operating point again from this run"
        )
    return {**point, "threshold": threshold}
