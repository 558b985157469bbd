"""Build a small, real, messy ImageFolder for tests: every awkward image mode plus broken files.

Entry point: `make_messy_folder(root)`. Users' folders hold grayscale, RGBA, CMYK, 16-bit and
EXIF-rotated images, text files named .jpg and truncated downloads; tests of the cache, training and
the CLI use this folder so that skip mode trains and fail mode stops with a message naming a file.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# Special files, relative to the root. Good ones decode; BAD ones must be reported by path.
GRAY = "c0/gray.png"  # mode L
RGBA = "c0/rgba.png"  # RGBA, half transparent
PALETTE = "c0/palette.gif"  # P with a transparent index
BILEVEL = "c1/bilevel.png"  # mode 1
CMYK = "c1/cmyk.jpg"  # CMYK JPEG
DEEP16 = "c1/deep16.png"  # I;16 with values up to 65535
EXIF_ROTATED = "c2/exif_rot6.jpg"  # stored 2r x r (w x h), orientation 6 -> displayed r x 2r, top red
NESTED = "c2/sub/nested.jpg"  # class folder with a sub-folder (CFP layout)
TRUNCATED = "c0/truncated.jpg"  # the first half of a good JPEG's bytes
NOT_AN_IMAGE = "c1/notes.jpg"  # a text file with an image extension
IGNORED = "c0/readme.txt"  # not an image extension: not listed at all


def make_messy_folder(root: Path, n_good_per_class: int = 4, classes: int = 3, res: int = 40) -> dict:
    """Write the folder under `root` and describe it.

    Layout: `c<i>/good<j>.jpg` (RGB JPEGs, each class its own hue) plus the special files named by
    this module's constants in classes c0..c2 (needs classes >= 3). Returns {"root", "class_names",
    "good": [relative paths that decode], "bad": {relative path: why it is bad}, "special": {kind:
    path}, "res"}. Deterministic: the same arguments give the same bytes.
    """
    if classes < 3:
        raise ValueError("make_messy_folder needs classes >= 3 for its special files")
    root = Path(root)
    rng = np.random.default_rng(0)
    class_names = [f"c{i}" for i in range(classes)]
    good: list[str] = []

    def save(rel: str, img: Image.Image, **kw) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, **kw)
        good.append(rel)

    for i, name in enumerate(class_names):
        hue = np.array([(60 * i) % 256, (120 + 90 * i) % 256, (200 + 40 * i) % 256], dtype=np.float64)
        for j in range(n_good_per_class):
            noise = rng.normal(0, 30, size=(res, res, 3))
            img = np.clip(hue + noise, 0, 255).astype(np.uint8)
            save(f"{name}/good{j}.jpg", Image.fromarray(img), quality=90)

    save(GRAY, Image.fromarray(rng.integers(0, 256, (res, res), dtype=np.uint8)))
    rgba = rng.integers(0, 256, (res, res, 4), dtype=np.uint8)
    rgba[:, : res // 2, 3] = 0  # left half fully transparent: it must come out black
    rgba[:, res // 2 :, 3] = 255
    save(RGBA, Image.fromarray(rgba))
    pal = Image.fromarray(rng.integers(0, 4, (res, res), dtype=np.uint8), mode="P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255] + [0] * (256 - 4) * 3)
    save(PALETTE, pal, transparency=3)
    save(BILEVEL, Image.fromarray(rng.integers(0, 2, (res, res), dtype=np.uint8) * 255).convert("1"))
    save(CMYK, Image.fromarray(rng.integers(0, 256, (res, res, 3), dtype=np.uint8)).convert("CMYK"), quality=90)
    # 16-bit ramp over the full 0..65535 range: an 8-bit clip would turn almost all of it white.
    ramp = np.linspace(0, 65535, res * res).reshape(res, res).astype(np.uint16)
    save(DEEP16, Image.fromarray(ramp))
    stored = np.zeros((res, 2 * res, 3), dtype=np.uint8)  # h x w = r x 2r: left half red, right half blue
    stored[:, :res, 0] = 255
    stored[:, res:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored left edge becomes the top
    save(EXIF_ROTATED, Image.fromarray(stored), exif=exif, quality=95)
    save(NESTED, Image.fromarray(rng.integers(0, 256, (res, res, 3), dtype=np.uint8)), quality=90)

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (2 * res, 2 * res, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=95)
    (root / TRUNCATED).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / NOT_AN_IMAGE).write_text("these are notes, not a JPEG\n")
    (root / IGNORED).write_text("not an image extension: never listed\n")

    return {
        "root": root,
        "class_names": class_names,
        "good": sorted(good),
        "bad": {TRUNCATED: "truncated JPEG", NOT_AN_IMAGE: "text file named .jpg"},
        "special": {
            "gray": GRAY,
            "rgba": RGBA,
            "palette": PALETTE,
            "bilevel": BILEVEL,
            "cmyk": CMYK,
            "deep16": DEEP16,
            "exif_rotated": EXIF_ROTATED,
            "nested": NESTED,
            "truncated": TRUNCATED,
            "not_an_image": NOT_AN_IMAGE,
            "ignored": IGNORED,
        },
        "res": res,
    }
