"""Score two images with a run: the `verify` command and the dashboard's live match.

Entry point: `score_images(model, img_a, img_b, crop=None) -> dict` (model: an Embedder, or a pair-model Run) with the score, the threshold in force,
the decision and the two model inputs as uint8 pictures (what the model actually saw). Images come as
paths, bytes (an upload) or PIL images, and go through the same decode path as the training cache.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.data.images import load_rgb, resize_square
from core.embedder import Embedder
from core.embedding import score_pair_model
from core.errors import MatchLabError
from core.run import Run

MAX_UPLOAD_PIXELS = 40_000_000  # larger images are refused before decoding (decompression bombs)


def to_uint8(image: str | Path | bytes | Image.Image, res: int | tuple[int, int], name: str = "image") -> np.ndarray:
    """Any supported input -> (H, W, 3) uint8 at `res` (an int: a square), as the cache would store it."""
    if isinstance(image, Image.Image):
        if image.width * image.height > MAX_UPLOAD_PIXELS:
            raise MatchLabError(f"{name}: {image.width}x{image.height} is too large; use an image under 40 megapixels")
        return resize_square(image.convert("RGB"), res)
    if isinstance(image, (bytes, bytearray)):
        try:
            with Image.open(io.BytesIO(image)) as probe:
                w, h = probe.size
        except Exception:
            raise MatchLabError(f"{name} is not an image PIL can read; upload a JPEG or PNG") from None
        if w * h > MAX_UPLOAD_PIXELS:
            raise MatchLabError(f"{name}: {w}x{h} is too large; use an image under 40 megapixels")
        return resize_square(load_rgb(io.BytesIO(image), name=name), res)
    path = Path(image)
    if not path.is_file():
        raise MatchLabError(f"image {path} not found")
    return resize_square(load_rgb(path), res)


def model_view(image_u8: np.ndarray, crop: float) -> np.ndarray:
    """What the model sees after the centre crop, as a uint8 picture (for display next to the score)."""
    from core.crops import centre_crop

    x = torch.from_numpy(np.array(image_u8)).permute(2, 0, 1)[None].float()
    return centre_crop(x, crop)[0].permute(1, 2, 0).clamp(0, 255).round().byte().numpy()


def score_images(model: Embedder | Run, img_a, img_b, crop: float | None = None) -> dict:
    """Score two images with an Embedder (cosine of the embeddings) or a pair model (its probability)."""
    pre = model.preprocess
    crop = pre.crop if crop is None else crop
    a, b = to_uint8(img_a, pre.cache_res, "first image"), to_uint8(img_b, pre.cache_res, "second image")
    batch = np.stack([a, b])
    if isinstance(model, Embedder):
        emb = model.embed(batch, crop=crop).cpu().numpy()
        score = float(emb[0] @ emb[1])
    else:
        score = float(score_pair_model(model.model, batch, np.array([0]), np.array([1]), preprocess=pre,
                                       device=model.device, crop=crop)[0])
    threshold = model.threshold
    return {"score": score, "threshold": threshold, "same": None if threshold is None else score >= threshold,
            "input_a": model_view(a, crop), "input_b": model_view(b, crop), "crop": crop}


def read_threshold_file(path: str | Path, run: Embedder | Run) -> float:
    """An operating point exported by the dashboard: {threshold, far, tar, checkpoint_hash, ...}."""
    path = Path(path)
    try:
        point = json.loads(path.read_text())
        threshold = float(point["threshold"])
    except FileNotFoundError:
        raise MatchLabError(f"threshold file {path} not found") from None
    except (ValueError, KeyError, TypeError):
        raise MatchLabError(f"{path} is not an operating-point JSON with a 'threshold' field") from None
    if point.get("checkpoint_hash") not in (None, run.checkpoint_hash):
        raise MatchLabError(f"{path} was chosen for checkpoint {point['checkpoint_hash']}, not this run's "
                            f"{run.checkpoint_hash}; export the operating point again from this run")
    return threshold
