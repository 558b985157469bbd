"""Find the images of an ImageFolder and decode any one of them to an RGB uint8 array.

Entry points: `scan_image_folder(root)` lists `<root>/<class>/**/<image>` with integer labels, and
`decode_square(data, res)` turns a file's bytes into a (H, W, 3) uint8 array (`res` an int: square, or
(H, W)) via `load_rgb` and `resize_square`. Users bring grayscale, RGBA, CMYK, 16-bit, EXIF-rotated, truncated and non-image
files: convert what can be converted and raise `BadImageError` (one line, naming the file) for the rest.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import MatchLabError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
)

# Modes that hold more than 8 bits per sample; PIL's convert("RGB") would clip them to 255.
_DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
# Decompression-bomb guard (config data.max_pixels): about 120 MB once decoded to RGB. PIL's own guard
# only warns up to 179 MP, so a 100 MP file used to decode (300 MB) with a warning.
MAX_PIXELS = 40_000_000
TINY_SIDE = 8  # images smaller than this on a side are upscaled into mush: decoded, with a warning


class BadImageError(MatchLabError):
    """A file with an image extension that cannot be decoded (not an image, truncated, too large)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class FolderScan:
    """An ImageFolder listing: `paths[i]` (posix, relative to `root`) has label `labels[i]`.

    labels: (N,) int64 indices into `class_names` (sorted folder names); paths are grouped by class
    in `class_names` order, sorted within a class, so the listing is the same on every machine.
    """

    root: Path
    paths: list[str]
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.paths)


def is_image_file(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def scan_image_folder(root: str | os.PathLike) -> FolderScan:
    """List `<root>/<class>/**/<image>`; a class folder may nest sub-folders (CFP: `<id>/frontal/`).

    Hidden files and folders (leading '.') and files without an image extension are ignored. Raises
    MatchLabError if `root` is not a folder, has fewer than two class folders, or a class has no image.
    """
    root = Path(root)
    if not root.exists():
        raise MatchLabError(f"data folder {root} does not exist: check the path")
    if not root.is_dir():
        raise MatchLabError(
            f"data folder {root} is a file, not a folder: pass the folder that holds one sub-folder per class"
        )
    class_names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if len(class_names) < 2:
        raise MatchLabError(
            f"data folder {root} has {len(class_names)} class folder(s); it needs at least two, laid out as <root>/<class>/<image>"
        )
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        found = _images_under(root, name)
        if not found:
            raise MatchLabError(f"class folder {root / name} holds no images: add images or remove the folder")
        paths += found
        labels += [label] * len(found)
    return FolderScan(root=root, paths=paths, labels=np.asarray(labels, dtype=np.int64), class_names=class_names)


def _images_under(root: Path, class_name: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root / class_name):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(root).as_posix()
        for f in filenames:
            if f.startswith(".") or not is_image_file(f):
                continue
            why = not_regular_file(Path(dirpath) / f)
            if why:  # reading a FIFO would block forever; a broken link has nothing to read
                print(f"skipped {root / rel / f}: {why}", file=sys.stderr)
            else:
                found.append(f"{rel}/{f}")
    return sorted(found)


def not_regular_file(path: str | os.PathLike) -> str | None:
    """Why `path` (links followed) is not a regular file that can be read, or None when it is one."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "broken symbolic link (its target does not exist)" if os.path.islink(path) else "file not found"
    except OSError as e:
        return "symbolic link loop" if e.errno == errno.ELOOP else f"cannot stat ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder, not an image file"
    kind = "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    return f"not a regular file ({kind})"


def load_rgb(
    source: str | os.PathLike | bytes,
    name: str | None = None,
    draft_size: int | None = None,
    max_pixels: int | None = None,
) -> Image.Image:
    """Decode an image file (path or its bytes) to an RGB PIL image, upright per its EXIF orientation.

    Transparent images (RGBA, LA, PA, P or L with a transparency key) are composited on **black**, so
    a transparent pixel reads as 0 whatever colour it happens to store. 16-bit and 32-bit grayscale
    are scaled to 8 bits (see `_deep_to_l`), never clipped. `draft_size` lets a JPEG decoder shrink
    by 2/4/8 in the DCT while both sides stay >= draft_size (much faster on large photos).
    `name` is used in errors when `source` is bytes. Images over `max_pixels` (default MAX_PIXELS) and
    paths that are not regular files (a FIFO would block) are refused. Raises BadImageError(path, reason).
    """
    is_bytes = isinstance(source, (bytes, bytearray, memoryview))
    name = str(name if name is not None else "<image bytes>" if is_bytes else source)
    # cast: is_bytes already told bytes from a path, which isinstance-narrowing cannot see through a bool
    if not is_bytes and (why := not_regular_file(cast("str | os.PathLike", source))):
        raise BadImageError(name, why)
    try:
        with warnings.catch_warnings():  # PIL warns from 89 MP; the limit below decides, with a clear message
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(cast(bytes, source)) if is_bytes else source)
        with im:
            w, h = im.size
            limit = MAX_PIXELS if max_pixels is None else max_pixels
            if w * h > limit:  # before decoding a single pixel
                raise BadImageError(
                    name,
                    f"{w} x {h} = {w * h / 1e6:.1f} megapixels is over the limit of "
                    f"{limit / 1e6:g} megapixels (data.max_pixels); downscale the image "
                    f"or raise the limit",
                )
            if min(w, h) < TINY_SIDE:
                print(f"warning: {name} is only {w} x {h} pixels; it is upscaled to the model input", file=sys.stderr)
            if draft_size:
                im.draft(None, (draft_size, draft_size))
            im.load()  # decode now: a truncated file fails here, not later inside resize
            return _to_rgb(ImageOps.exif_transpose(im))
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(name, "file not found") from None
    except UnidentifiedImageError:
        raise BadImageError(name, "not an image (PIL cannot identify it)") from None
    except Image.DecompressionBombError as e:  # over PIL's own hard limit (179 MP), refused at open
        size = re.search(r"\((\d+) pixels\)", str(e))
        what = f"{int(size.group(1)) / 1e6:.1f} megapixels" if size else "the image"
        raise BadImageError(
            name,
            f"{what} is over the limit of {(max_pixels or MAX_PIXELS) / 1e6:g} megapixels "
            f"(data.max_pixels); downscale the image",
        ) from None
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, struct.error... on corrupt files
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BadImageError(name, f"corrupt or truncated ({first})") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in _DEEP_MODES:
        im = _deep_to_l(im)
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def _deep_to_l(im: Image.Image) -> Image.Image:
    """16/32-bit or float grayscale -> 8-bit L, scaling the container's range instead of clipping.

    I;16*: 0..65535 -> 0..255 (divide by 257, exact at both ends). "I" and "F" do not say their bit
    depth, so go by the values: within [0, 1] (float) x255; within [0, 255] as is; within [0, 65535]
    as 16-bit; anything else is stretched min..max.
    """
    a = np.asarray(im).astype(np.float64)
    if im.mode.startswith("I;16"):
        a = a / 257.0
    else:
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if im.mode == "F" and lo >= 0.0 and hi <= 1.0:
            a = a * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            pass
        elif lo >= 0.0 and hi <= 65535.0:
            a = a / 257.0
        else:
            a = (a - lo) * (255.0 / max(hi - lo, 1e-12))
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))  # 2-D uint8 -> mode L


def as_hw(res, where: str = "res") -> tuple[int, int]:
    """`res` as (height, width): an int means a square; a 2-sequence is (H, W). Raises MatchLabError
    naming `where` for anything else (configs and metadata pass through here)."""
    if isinstance(res, (int, np.integer)) and not isinstance(res, bool):
        hw = (int(res), int(res))
    elif (
        isinstance(res, (tuple, list))
        and len(res) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in res)
    ):
        hw = (int(res[0]), int(res[1]))
    else:
        raise MatchLabError(f"{where}={res!r} must be a positive integer (a square side in pixels) or [height, width]")
    if min(hw) < 1:
        raise MatchLabError(f"{where}={res!r} must be a positive integer (pixels) or [height, width]")
    return hw


def res_label(res) -> str:
    """ "64" for a square, "112x96" (height x width) for a rectangle: names of caches and result files."""
    h, w = as_hw(res)
    return str(h) if h == w else f"{h}x{w}"


def resize_square(img: Image.Image, res) -> np.ndarray:
    """Resize (antialiased bicubic) and centre-crop to `res` -> (H, W, 3) uint8; an int `res` is a square.

    The centred box of the target's aspect ratio (the whole shorter side for a square) is resized in one
    step, which equals resize-then-crop without a second rounding step or an intermediate image.
    """
    out_h, out_w = as_hw(res)
    w, h = img.size
    bw: float
    bh: float
    if out_h == out_w:
        bw = bh = min(w, h)
    else:  # the largest centred box with the target's aspect ratio
        bw, bh = min(w, h * out_w / out_h), min(h, w * out_h / out_w)
    left, top = (w - bw) / 2.0, (h - bh) / 2.0
    # reducing_gap: a huge (non-JPEG) upload is first box-reduced to 3x the target, then resampled;
    # visually the same as a full bicubic and far cheaper on a 6000 px photo.
    out = img.resize((out_w, out_h), Image.Resampling.BICUBIC, box=(left, top, left + bw, top + bh), reducing_gap=3.0)
    return np.asarray(out, dtype=np.uint8)


def decode_square(
    source: str | os.PathLike | bytes, res, name: str | None = None, max_pixels: int | None = None
) -> np.ndarray:
    """The one decode path (cache builds, `verify`, the live demo): file -> (H, W, 3) uint8 at `res`
    (an int: a square)."""
    return resize_square(load_rgb(source, name=name, draft_size=max(as_hw(res)), max_pixels=max_pixels), res)
