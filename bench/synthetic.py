"""A synthetic-but-real JPEG ImageFolder for the benchmark: `make_jpeg_folder(root, n, classes, res)`.

Each class is a smooth random colour field, each image a shifted, re-lit copy with pixel noise, saved as
a quality-90 JPEG of res x res: decoding costs what a real photo of that size costs, and the content
is seeded, so the same arguments write the same bytes on any machine. A marker file lets a --work
folder be reused between runs.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from bench.env import usable_cores

_MARKER = ".bench-synthetic.json"
# Below this many images a pool costs more to start than the encoding takes.
_MIN_FOR_POOL = 512


def _image(seed: int, cls: int, index: int, res: int) -> np.ndarray:
    """(res, res, 3) uint8: the class's colour field, rolled, scaled in brightness, plus noise."""
    base_rng = np.random.default_rng([seed, cls])
    coarse = Image.fromarray(base_rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((res, res), Image.BICUBIC)
    fine = Image.fromarray(base_rng.integers(0, 256, (res // 4, res // 4, 3), dtype=np.uint8)).resize(
        (res, res), Image.BILINEAR
    )
    rng = np.random.default_rng([seed, cls, index])
    x = 0.7 * np.asarray(coarse, np.float32) + 0.3 * np.asarray(fine, np.float32)
    x = np.roll(x, tuple(rng.integers(-res // 8, res // 8 + 1, 2)), axis=(0, 1))
    x = x * rng.uniform(0.7, 1.3) + rng.normal(0.0, 12.0, x.shape)
    return np.clip(x, 0, 255).astype(np.uint8)


def _write(job: tuple[str, int, int, int, int]) -> None:
    path, seed, cls, index, res = job
    Image.fromarray(_image(seed, cls, index, res)).save(path, quality=90)


def make_jpeg_folder(
    root: str | os.PathLike, n_images: int, n_classes: int, res: int, *, seed: int = 0, workers: int | None = None
) -> Path:
    """Write (or reuse) root/class_XXXX/XXXXXX.jpg: n_images spread evenly over n_classes. Returns root.

    workers: encoding processes (default: all usable cores; forkserver, so a calling script needs an
    `if __name__ == "__main__":` guard when n_images >= 512).
    """
    if not 1 <= n_classes <= n_images:
        raise ValueError(f"need 1 <= classes <= images, got {n_classes} classes for {n_images} images")
    root = Path(root)
    spec = {"images": n_images, "classes": n_classes, "res": res, "seed": seed, "version": 1}
    marker = root / _MARKER
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return root
    shutil.rmtree(root, ignore_errors=True)
    for c in range(n_classes):
        (root / f"class_{c:04d}").mkdir(parents=True, exist_ok=True)
    jobs = [
        (str(root / f"class_{i % n_classes:04d}" / f"{i:06d}.jpg"), seed, i % n_classes, i, res)
        for i in range(n_images)
    ]
    workers = workers or usable_cores()
    if n_images < _MIN_FOR_POOL or workers <= 1:
        for job in jobs:
            _write(job)
    else:
        # forkserver: the caller may already hold CUDA state, which a fork would copy.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
            list(pool.map(_write, jobs, chunksize=max(1, n_images // (workers * 8))))
    marker.write_text(json.dumps(spec))
    return root
