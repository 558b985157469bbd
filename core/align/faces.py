"""Detect and align faces in photos: the one path used by the cache, the CLI and the live demo.

Entry point: `Aligner(res, device).align(sources, names)` -> one `Aligned` per photo (the aligned crop,
every face found, which one was used and why). Photos are decoded, shrunk for detection to at most
`max_side` pixels, detected in batches, and warped from the full-resolution decode onto the ArcFace
template at `res` (square or (H, W)). With several faces, the largest and most central is used.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from core.align import ALIGN_METHODS, ON_NO_FACE  # noqa: F401 (defined there, torch-free: every cache load checks them)
from core.align.mtcnn import MTCNN, Faces, detection_scale
from core.align.transform import template, umeyama, warp
from core.data.images import MAX_PIXELS, as_hw, load_rgb, resize_square
from core.errors import MatchLabError

DETECT_MAX_SIDE = 640  # photos are detected at most this large (a 20 px face at 640 is ~30 px at 1000)
SOURCE_MIN_SIDE = 1024  # JPEG draft decoding keeps at least this many pixels on the short side for the warp
CHUNK = 32  # photos decoded and detected together (bounds memory with 14 MP uploads)

Source = str | os.PathLike | bytes


@dataclass
class Aligned:
    """One photo after detection. crop: (H, W, 3) uint8, or None when no face was found and on_no_face
    is "skip". status: "aligned", "centre" (no face: centre crop used) or "no_face". faces: every face, in
    the photo's pixel coordinates; chosen: index into faces of the one aligned (-1 if none)."""

    crop: np.ndarray | None
    status: str
    faces: Faces
    chosen: int
    size: tuple[int, int]  # (H, W) of the decoded photo the coordinates refer to

    @property
    def found(self) -> bool:
        return self.chosen >= 0


def choose_face(faces: Faces, height: int, width: int) -> int:
    """Index of the largest, most central face: box area minus twice the squared distance (pixels) of
    its centre from the image centre (facenet-pytorch's centre-weighted size), -1 when there is none."""
    if len(faces) == 0:
        return -1
    b = faces.boxes
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    cx, cy = (b[:, 0] + b[:, 2]) / 2 - width / 2, (b[:, 1] + b[:, 3]) / 2 - height / 2
    return int(np.argmax(area - 2.0 * (cx**2 + cy**2)))


def centre_crop(image: np.ndarray, res: int | tuple[int, int]) -> np.ndarray:
    """The no-face fallback: the centred box of the output's aspect ratio, as the unaligned cache decodes."""
    return resize_square(Image.fromarray(image), res)


def align_face(image: np.ndarray, landmarks: np.ndarray, res: int | tuple[int, int]) -> np.ndarray:
    """Warp `image` so that the 5 `landmarks` land on the ArcFace template for `res`."""
    return warp(image, umeyama(landmarks, template(as_hw(res))), as_hw(res))


@functools.lru_cache(maxsize=4)
def detector(device: str = "cpu") -> MTCNN:
    """One MTCNN per device per process (the weights load in ~50 ms, but the live page calls this a lot)."""
    return MTCNN(device)


def decode_photo(source: Source, name: str) -> np.ndarray:
    """A photo at full size (JPEGs drafted to >= SOURCE_MIN_SIDE on the short side) as RGB uint8."""
    return np.asarray(load_rgb(source, name=name, draft_size=SOURCE_MIN_SIDE), dtype=np.uint8)


def _for_detection(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """A copy at most max_side pixels long (bilinear, antialiased) and the factor back to `image` pixels."""
    h, w = image.shape[:2]
    s = detection_scale(h, w, max_side)
    if s >= 1.0:
        return image, 1.0
    size = (max(1, round(w * s)), max(1, round(h * s)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))
    return small, w / size[0]


class Aligner:
    """Detect + align at a fixed output size. on_no_face: "skip" (crop None), "centre" (centre crop)
    or "fail" (MatchLabError naming the photo)."""

    def __init__(
        self,
        res: int | tuple[int, int],
        device: str = "cpu",
        *,
        on_no_face: str = "skip",
        max_side: int = DETECT_MAX_SIDE,
    ) -> None:
        if on_no_face not in ON_NO_FACE:
            raise MatchLabError(f"on_no_face={on_no_face!r} is not valid; choose one of: {', '.join(ON_NO_FACE)}")
        self.res = as_hw(res)
        self.on_no_face = on_no_face
        self.max_side = max_side
        self.mtcnn = detector(str(device))

    def align_arrays(
        self, images: Sequence[np.ndarray], names: Sequence[str] | None = None, pick: Sequence[int | None] | None = None
    ) -> list[Aligned]:
        """Decoded RGB uint8 photos -> one Aligned each; detection runs as one batch per image size.
        pick: per photo, the index of the face to align (the user's choice) instead of choose_face's."""
        names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        pick = list(pick) if pick is not None else [None] * len(images)
        small = [_for_detection(im, self.max_side) for im in images]
        found = self.mtcnn.detect([s for s, _ in small])
        return [
            self._finish(im, faces.scaled(f), name, p)
            for im, (_, f), faces, name, p in zip(images, small, found, names, pick)
        ]

    def align(
        self, sources: Sequence[Source], names: Sequence[str] | None = None, workers: int | None = None
    ) -> list[Aligned]:
        """Files (paths or bytes) -> one Aligned each, decoding on threads while the detector batches.
        A file that cannot be decoded raises BadImageError (one line naming it)."""
        names = (
            list(names)
            if names is not None
            else [f"upload {i}" if isinstance(s, (bytes, bytearray)) else str(s) for i, s in enumerate(sources)]
        )
        out: list[Aligned] = []
        with ThreadPoolExecutor(max(1, min(workers or os.cpu_count() or 1, 8))) as pool:
            for s in range(0, len(sources), CHUNK):
                images = list(pool.map(decode_photo, sources[s : s + CHUNK], names[s : s + CHUNK]))
                out += self.align_arrays(images, names[s : s + CHUNK])
        return out

    def _finish(self, image: np.ndarray, faces: Faces, name: str, pick: int | None = None) -> Aligned:
        h, w = image.shape[:2]
        chosen = pick if pick is not None and 0 <= pick < len(faces) else choose_face(faces, h, w)
        if chosen >= 0:
            crop = align_face(image, faces.landmarks[chosen], self.res)
            return Aligned(crop, "aligned", faces, chosen, (h, w))
        if self.on_no_face == "fail":
            raise MatchLabError(
                f"{name}: no face found; try a closer, frontal photo, or set on_no_face to skip or centre"
            )
        if self.on_no_face == "centre":
            return Aligned(centre_crop(image, self.res), "centre", faces, -1, (h, w))
        return Aligned(None, "no_face", faces, -1, (h, w))


def photo_array(image: Source | Image.Image, name: str) -> np.ndarray:
    """A path, an upload's bytes or a PIL image -> full-size RGB uint8 (the pixel limit and bad files
    raise BadImageError naming `name`, as everywhere else)."""
    if isinstance(image, Image.Image):
        if image.width * image.height > MAX_PIXELS:
            raise MatchLabError(
                f"{name}: {image.width} x {image.height} pixels is over the limit of "
                f"{MAX_PIXELS / 1e6:g} megapixels; downscale the image"
            )
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    return decode_photo(bytes(image) if isinstance(image, (bytes, bytearray, memoryview)) else Path(image), name)


def align_photos(
    images: Sequence[Source | Image.Image],
    res: int | tuple[int, int],
    *,
    names: Sequence[str],
    pick: Sequence[int | None] | None = None,
    device: str = "cpu",
) -> tuple[list[Aligned], list[np.ndarray]]:
    """verify and the live page: each photo's aligned face and the decoded photos. A photo without a face
    raises one line naming it ("no face found in B.jpg; ...")."""
    photos = [photo_array(im, n) for im, n in zip(images, names)]
    out = Aligner(res, device, on_no_face="skip").align_arrays(photos, names, pick)
    for a, n in zip(out, names):
        if not a.found:
            raise MatchLabError(f"no face found in {n}; try a closer, frontal photo or turn alignment off")
    return out, photos


def draw_faces(photo: np.ndarray, aligned: Aligned, max_side: int = 640) -> np.ndarray:
    """The photo (shrunk to max_side) with every face's box, number and 5 landmarks; the face used is
    drawn thick in green, the others thin in orange."""
    from PIL import ImageDraw

    small, back = _for_detection(photo, max_side)
    img = Image.fromarray(np.array(small))
    draw = ImageDraw.Draw(img)
    width = max(2, round(max(img.size) / 200))
    for i in range(len(aligned.faces)):
        box = aligned.faces.boxes[i] / back
        marks = aligned.faces.landmarks[i] / back
        colour, w = ((40, 220, 90), width) if i == aligned.chosen else ((255, 150, 30), max(1, width // 2))
        draw.rectangle([float(v) for v in box], outline=colour, width=w)
        draw.text((float(box[0]) + 3, float(box[1]) + 2), str(i + 1), fill=colour)
        r = max(2.0, width * 1.2)
        for x, y in marks:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 40, 40) if i == aligned.chosen else colour)
    return np.asarray(img)
