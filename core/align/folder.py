"""`python -m core align DIR --out DIR2`: aligned copies of every photo in a folder, plus faces.csv.

Entry point: `align_folder(src, out, res=112, ...) -> dict` (counts and the CSV path). Each image under
DIR (any depth) becomes DIR2/<same path>.png, its face aligned to the ArcFace template at `res`; faces.csv
has one row per face found (box, probability, 5 landmarks, whether it was the one used) and one row per
photo without a face or that could not be read, so the folder can be checked or fed to any other tool.
"""

from __future__ import annotations

import io
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from core.align.faces import CHUNK, Aligner, decode_photo
from core.atomic import atomic_write_bytes, atomic_write_text
from core.data.images import BadImageError, as_hw, is_image_file
from core.errors import MatchLabError

CSV_NAME = "faces.csv"
POINTS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


def _list_images(root: Path) -> list[str]:
    if not root.is_dir():
        raise MatchLabError(f"image folder {root} does not exist or is not a folder")
    paths = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and is_image_file(p.name) and not any(s.startswith(".") for s in p.relative_to(root).parts)
    )
    if not paths:
        raise MatchLabError(f"{root} holds no images (looked for jpg, png, pgm, ... at any depth)")
    return paths


def _try_decode(path: Path) -> tuple[np.ndarray | None, str]:
    try:
        return decode_photo(path, str(path)), ""
    except BadImageError as e:
        return None, e.reason


def _png(crop: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, format="PNG")
    return buf.getvalue()


def align_folder(
    src: str | os.PathLike,
    out: str | os.PathLike,
    res: int | tuple[int, int] = 112,
    *,
    device: str = "cpu",
    on_no_face: str = "skip",
    progress: bool = True,
) -> dict:
    """Align every photo under `src` into `out` (see the module doc). on_no_face: "skip" (no copy),
    "centre" (a centre crop is written) or "fail" (stop at the first photo without a face)."""
    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise MatchLabError(f"--out {out} is inside {src}: choose a folder outside the input")
    paths = _list_images(src)
    targets = [Path(p).with_suffix(".png").as_posix() for p in paths]
    seen: dict[str, str] = {}
    for p, t in zip(paths, targets):
        if t in seen:
            raise MatchLabError(f"{src / seen[t]} and {src / p} would both be written as {t}: rename one of them")
        seen[t] = p
    aligner = Aligner(as_hw(res), device, on_no_face=on_no_face)
    rows: list[dict] = []
    counts = {"aligned": 0, "centre": 0, "no_face": 0, "unreadable": 0, "multi_face": 0}
    with (
        tqdm(total=len(paths), desc=f"align {src}", unit="img", disable=not progress, file=sys.stderr) as bar,
        ThreadPoolExecutor(max(1, min(os.cpu_count() or 1, 8))) as pool,
    ):
        for s in range(0, len(paths), CHUNK):
            rels = paths[s : s + CHUNK]
            decoded = list(pool.map(_try_decode, [src / r for r in rels]))
            good = [i for i, (im, _) in enumerate(decoded) if im is not None]
            images = [im for im, _ in decoded if im is not None]
            done = dict(zip(good, aligner.align_arrays(images, [str(src / rels[i]) for i in good])))
            for i, rel in enumerate(rels):
                a = done.get(i)
                if a is None:
                    counts["unreadable"] += 1
                    rows.append({"path": rel, "status": "unreadable", "reason": decoded[i][1]})
                    tqdm.write(f"skipped {src / rel}: {decoded[i][1]}", file=sys.stderr)
                    continue
                counts[a.status] += 1
                counts["multi_face"] += len(a.faces) > 1
                if a.crop is not None:
                    atomic_write_bytes(out / targets[s + i], _png(a.crop))
                base = {
                    "path": rel,
                    "status": a.status,
                    "aligned_path": targets[s + i] if a.crop is not None else "",
                    "height": a.size[0],
                    "width": a.size[1],
                    "n_faces": len(a.faces),
                }
                if not len(a.faces):
                    rows.append(base)
                for f in range(len(a.faces)):
                    row = {**base, "face": f, "used": f == a.chosen, "prob": float(a.faces.probs[f])}
                    row.update(zip(("x1", "y1", "x2", "y2"), (float(v) for v in a.faces.boxes[f])))
                    for name, (x, y) in zip(POINTS, a.faces.landmarks[f]):
                        row[f"{name}_x"], row[f"{name}_y"] = float(x), float(y)
                    rows.append(row)
            bar.update(len(rels))
    table = pd.DataFrame(rows)
    atomic_write_text(out / CSV_NAME, table.to_csv(index=False, float_format="%.2f"))
    return {
        "images": len(paths),
        **counts,
        "fte_rate": (counts["no_face"] + counts["centre"]) / max(1, len(paths) - counts["unreadable"]),
        "out": str(out),
        "csv": str(out / CSV_NAME),
        "res": list(as_hw(res)),
    }
