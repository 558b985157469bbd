"""Photos as people bring them, made from the bundled ORL faces: a face away from the centre of a larger
colour canvas, optionally with a second, smaller face, saved as JPEG bytes (for the alignment tests).

Entry point: `off_centre_photo(face, at=(x, y), ...)`. Generated, so tests need no shared dataset.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

ORL = Path(__file__).resolve().parents[1] / "data" / "orl_faces"


def off_centre_photo(
    face: str,
    at: tuple[int, int] = (40, 30),
    *,
    size: tuple[int, int] = (640, 480),
    scale: float = 2.0,
    second: str | None = None,
    second_at: tuple[int, int] = (470, 300),
) -> bytes:
    """JPEG bytes: ORL `face` (e.g. "s1/1.pgm") scaled by `scale` with its top-left at `at` on a size (W, H)
    canvas of a smooth colour gradient; `second` adds another face at `second_at`, at 60% of that scale."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    canvas = Image.fromarray(np.stack([90 + x * 80 // w, 120 + y * 60 // h, np.full_like(x, 150)], 2).astype(np.uint8))
    for name, pos, s in ((face, at, scale), (second, second_at, scale * 0.6)):
        if name is None:
            continue
        img = Image.open(ORL / name).convert("RGB")
        canvas.paste(img.resize((round(img.width * s), round(img.height * s)), Image.Resampling.BICUBIC), pos)
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def blank_photo(size: tuple[int, int] = (320, 240)) -> bytes:
    """JPEG bytes of a photo with no face in it (a colour gradient)."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    buf = io.BytesIO()
    Image.fromarray(np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 90)], 2).astype(np.uint8)).save(
        buf, format="JPEG"
    )
    return buf.getvalue()
