"""Decode an image folder once into a uint8 (N, res, res, 3) array on disk, then reuse it.

Entry point: `build_or_load_cache(root, res)` -> `ImageCache` (memory-mapped images, labels, paths,
per-channel mean/std, bad files skipped with reasons, dataset hash). Decoding JPEGs on the CPU is what
limits small-image training, so it happens once, on all cores; later runs only `stat` the files and
memory-map the array. A cache is valid only when its manifest.json (written last, atomically) says so.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from itertools import repeat
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import PIL
from tqdm import tqdm

from core.atomic import atomic_write_json, save_numpy_atomic
from core.data.images import BadImageError, FolderScan, decode_square, scan_image_folder
from core.errors import MatchLabError

# Bump when decoding changes (resize filter, mode conversion, layout): older caches then rebuild.
FORMAT_VERSION = 1
ON_BAD_IMAGE = ("skip", "fail")
# Below this many files, starting worker processes costs more than decoding in this one.
_MIN_FILES_FOR_POOL = 64
_MANIFEST_KEYS = {"files", "skipped", "class_names", "n_images", "mean", "std", "dataset_hash"}

Decoded = tuple["np.ndarray | None", str, str]  # (res,res,3) uint8 or None, reason if None, sha1 hex of the bytes


@dataclass
class ImageCache:
    """A decoded image folder. `images[i]` is `root / paths[i]` with label `labels[i]`.

    images: (N, res, res, 3) uint8, memory-mapped read-only (an in-memory array after `subset`).
    labels: (N,) int64 into class_names. mean, std: (3,) float64, RGB on the 0..1 scale, over the
    whole cached set. skipped: (relative path, reason) of the files that could not be decoded.
    """

    images: np.ndarray
    labels: np.ndarray
    paths: list[str]
    class_names: list[str]
    mean: np.ndarray
    std: np.ndarray
    skipped: list[tuple[str, str]]
    dataset_hash: str
    root: Path
    cache_path: Path

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def res(self) -> int:
        return int(self.images.shape[1])

    def subset(self, indices: Sequence[int] | np.ndarray) -> "ImageCache":
        """Rows `indices` (in that order) as an in-memory cache; mean/std stay those of the full set."""
        idx = np.asarray(indices, dtype=np.int64)
        return replace(
            self, images=np.asarray(self.images[idx]), labels=self.labels[idx], paths=[self.paths[i] for i in idx]
        )

    def images_tensor(self, device="cpu"):
        """images as a torch uint8 (N, res, res, 3) tensor on `device` (one host copy of the memmap)."""
        import torch

        # np.array copies: torch.from_numpy on the read-only memmap would warn and alias the file.
        return torch.from_numpy(np.array(self.images)).to(device)


def cache_location(root: str | os.PathLike, res: int, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder for (absolute root, res) under `cache_dir`, $MATCHLAB_CACHE_DIR or ./.matchlab_cache."""
    base = Path(cache_dir or os.environ.get("MATCHLAB_CACHE_DIR") or Path.cwd() / ".matchlab_cache")
    absolute = Path(root).resolve()
    key = hashlib.sha1(f"{absolute}|{res}".encode()).hexdigest()[:12]
    return base / f"{absolute.name or 'root'}-{res}px-{key}"


def cache_status(root: str | os.PathLike, res: int, cache_dir: str | os.PathLike | None = None) -> str:
    """"fresh" (reusable as is), "stale" (folder changed since) or "missing"."""
    return _check(Path(root), res, cache_location(root, res, cache_dir))[0]


def build_or_load_cache(
    root: str | os.PathLike,
    res: int,
    on_bad_image: str = "skip",
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> ImageCache:
    """Load the cache of `root` at `res` px if no file changed since it was built, else (re)build it.

    on_bad_image: "skip" prints `skipped <path>: <reason>` per undecodable file and leaves it out;
    "fail" raises MatchLabError naming the first one. workers: decode processes (default: all cores).
    Raises MatchLabError for a bad folder (see scan_image_folder) or a class left with no images.
    """
    if on_bad_image not in ON_BAD_IMAGE:
        raise MatchLabError(f"on_bad_image={on_bad_image!r} is not valid: use one of {', '.join(ON_BAD_IMAGE)}")
    if isinstance(res, bool) or not isinstance(res, (int, np.integer)) or res < 1:
        raise MatchLabError(f"image resolution res={res!r} must be a positive integer (pixels)")
    root = Path(root)
    path = cache_location(root, res, cache_dir)
    status, reason, scan, listing = _check(root, res, path)
    if status == "fresh":
        cache = _load(path, root)
        _report_skipped(cache.root, cache.skipped, on_bad_image)
        return cache
    if status == "stale":
        print(f"{reason}; rebuilding {path}", file=sys.stderr)
    return _build(scan, listing, int(res), on_bad_image, path, workers, progress)


def load_image_arrays(paths: Sequence[str | os.PathLike | bytes], res: int) -> np.ndarray:
    """Decode a few files (verify, the live demo) exactly as the cache does -> (N, res, res, 3) uint8.

    An entry may be a file's bytes (an upload); errors then name it "upload <i>". Raises
    BadImageError (a MatchLabError) naming the first file that cannot be decoded.
    """
    out = np.empty((len(paths), res, res, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        if isinstance(p, (bytes, bytearray, memoryview)):
            out[i] = decode_square(p, res, name=f"upload {i}")
        else:
            out[i] = decode_square(Path(p), res)
    return out


# ---------------------------------------------------------------------------------------------- checking


def _listing(scan: FolderScan) -> list[tuple[str, int, int]]:
    out = []
    for rel in scan.paths:
        st = os.stat(scan.root / rel)
        out.append((rel, st.st_size, st.st_mtime_ns))
    return out


def _check(root: Path, res: int, path: Path) -> tuple[str, str, FolderScan, list[tuple[str, int, int]]]:
    """(status, why, scan, listing). Folder errors (missing, empty class) raise even with a cache."""
    scan = scan_image_folder(root)
    listing = _listing(scan)
    manifest = _read_manifest(path)
    if manifest is None:
        return "missing", "cache missing", scan, listing
    if manifest.get("format_version") != FORMAT_VERSION or manifest.get("res") != res or not _MANIFEST_KEYS <= manifest.keys():
        return "stale", "cache stale: made by another cache format", scan, listing
    if manifest.get("pillow") != PIL.__version__:
        return "stale", f"cache stale: made with Pillow {manifest.get('pillow')}, now {PIL.__version__}", scan, listing
    if not ((path / "images.npy").is_file() and (path / "labels.npy").is_file()):
        return "stale", "cache stale: images.npy or labels.npy is missing", scan, listing
    then = {f["path"]: (f["size"], f["mtime_ns"]) for f in manifest["files"]}
    now = {p: (size, mtime) for p, size, mtime in listing}
    changed = sum(1 for p in now.keys() & then.keys() if now[p] != then[p])
    added, removed = len(now.keys() - then.keys()), len(then.keys() - now.keys())
    if changed or added or removed:
        counts = [f"{n} {what}" for n, what in ((changed, "changed"), (added, "added"), (removed, "removed")) if n]
        first = counts[0].split(" ", 1)
        counts[0] = f"{first[0]} {'file' if first[0] == '1' else 'files'} {first[1]}"  # "3 files changed, 1 added"
        return "stale", f"cache stale: {', '.join(counts)}", scan, listing
    return "fresh", "", scan, listing


def _read_manifest(path: Path) -> dict | None:
    try:
        manifest = json.loads((path / "manifest.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _load(path: Path, root: Path) -> ImageCache:
    m = _read_manifest(path)
    images = np.load(path / "images.npy", mmap_mode="r")
    labels = np.load(path / "labels.npy")
    skipped = [(s["path"], s["reason"]) for s in m["skipped"]]
    bad = {p for p, _ in skipped}
    paths = [f["path"] for f in m["files"] if f["path"] not in bad]
    if not (images.shape[0] == labels.shape[0] == len(paths) == m["n_images"]):
        # Only a hand-edited or foreign cache gets here: every writer replaces the manifest last.
        raise MatchLabError(f"cache {path} is inconsistent: delete that folder and run again")
    return ImageCache(
        images=images,
        labels=labels,
        paths=paths,
        class_names=list(m["class_names"]),
        mean=np.asarray(m["mean"], dtype=np.float64),
        std=np.asarray(m["std"], dtype=np.float64),
        skipped=skipped,
        dataset_hash=m["dataset_hash"],
        root=root,
        cache_path=path,
    )


def _bad_image_error(root: Path, rel: str, reason: str) -> MatchLabError:
    return MatchLabError(f"{root / rel}: {reason}; fix or remove the file, or set data.on_bad_image=skip to leave it out")


def _report_skipped(root: Path, skipped: list[tuple[str, str]], on_bad_image: str) -> None:
    if skipped and on_bad_image == "fail":
        raise _bad_image_error(root, *skipped[0])
    for rel, reason in skipped:
        tqdm.write(f"skipped {root / rel}: {reason}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- building


def _decode_file(path: str, res: int) -> Decoded:
    """Worker: one file -> (array or None, reason, sha1). Reads the bytes once for both hash and decode."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return None, f"cannot read: {e.strerror or e}", ""
    digest = hashlib.sha1(data).hexdigest()
    try:
        return decode_square(data, res, name=path), "", digest
    except BadImageError as e:
        return None, e.reason, digest


def _decode_all(root: Path, paths: list[str], res: int, workers: int | None, progress: bool) -> Iterator[Decoded]:
    """Yield `_decode_file` results for `paths` (absolute) in order, over a process pool when it pays."""
    n = len(paths)
    workers = max(1, min(workers or os.cpu_count() or 1, n))
    with tqdm(total=n, desc=f"decode {root} {n} img", unit="img", disable=not progress, file=sys.stderr) as bar:
        if workers == 1 or n < _MIN_FILES_FOR_POOL:
            for p in paths:
                yield _decode_file(p, res)
                bar.update()
            return
        # forkserver, not fork: the parent may hold CUDA state and threads that a fork would copy.
        # Like spawn, workers import the main script, so a script calling this needs a __main__ guard.
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")
        executor = ProcessPoolExecutor(workers, mp_context=ctx)
        try:
            chunk = max(1, min(64, n // (workers * 8)))
            for result in executor.map(_decode_file, paths, repeat(res), chunksize=chunk):
                yield result
                bar.update()
        except BrokenProcessPool:
            raise MatchLabError(
                f"a decoding worker died while reading {root}: out of memory, or a script "
                "without `if __name__ == '__main__':`; retry with workers=1"
            ) from None
        finally:
            executor.shutdown(wait=True, cancel_futures=True)


def _channel_stats(images: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and std (0..1 scale) of (N, H, W, 3) uint8 via 256-bin histograms."""
    hist = np.zeros((3, 256), dtype=np.int64)
    for s in range(0, images.shape[0], chunk):
        block = images[s : s + chunk].reshape(-1, 3)
        for c in range(3):
            hist[c] += np.bincount(block[:, c], minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    count = hist.sum(axis=1).astype(np.float64)
    mean = (hist * values).sum(axis=1) / np.maximum(count, 1)
    var = (hist * values**2).sum(axis=1) / np.maximum(count, 1) - mean**2
    return mean, np.sqrt(np.maximum(var, 0.0))


def _build(
    scan: FolderScan,
    listing: list[tuple[str, int, int]],
    res: int,
    on_bad_image: str,
    path: Path,
    workers: int | None,
    progress: bool,
) -> ImageCache:
    root = scan.root
    # The manifest marks a cache valid: remove it before touching the arrays, write it after them.
    (path / "manifest.json").unlink(missing_ok=True)
    n = len(scan.paths)
    # In memory, not a scratch memmap: a set that this tool trains on fits on the GPU, so in host RAM.
    images = np.empty((n, res, res, 3), dtype=np.uint8)
    keep: list[int] = []
    skipped: list[tuple[str, str]] = []
    digests = [""] * n
    files = [str(root / rel) for rel in scan.paths]
    with contextlib.closing(_decode_all(root, files, res, workers, progress)) as results:
        for i, (arr, reason, digest) in enumerate(results):
            digests[i] = digest
            if arr is None:
                if on_bad_image == "fail":
                    raise _bad_image_error(root, scan.paths[i], reason)
                skipped.append((scan.paths[i], reason))
                tqdm.write(f"skipped {root / scan.paths[i]}: {reason}", file=sys.stderr)
                continue
            images[len(keep)] = arr
            keep.append(i)
    labels = scan.labels[keep]
    counts = np.bincount(labels, minlength=len(scan.class_names))
    emptied = np.flatnonzero(counts == 0)
    if emptied.size:
        raise MatchLabError(
            f"class folder {root / scan.class_names[emptied[0]]}: every image in it is unreadable (see the skipped lines above); fix them or remove the folder"
        )
    images = images[: len(keep)]
    mean, std = _channel_stats(images)
    dataset_hash = hashlib.sha1(
        "".join(f"{p}\t{d}\n" for p, d in sorted(zip(scan.paths, digests))).encode("utf-8")
    ).hexdigest()
    save_numpy_atomic(path / "images.npy", images)
    save_numpy_atomic(path / "labels.npy", labels)
    del images
    atomic_write_json(
        path / "manifest.json",
        {
            "format_version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "root": str(root.resolve()),
            "res": res,
            "pillow": PIL.__version__,
            "n_images": len(keep),
            "class_names": scan.class_names,
            "mean": mean.tolist(),
            "std": std.tolist(),
            "dataset_hash": dataset_hash,
            "skipped": [{"path": p, "reason": r} for p, r in skipped],
            "files": [
                {"path": p, "size": size, "mtime_ns": mtime, "sha1": d} for (p, size, mtime), d in zip(listing, digests)
            ],
        },
    )
    return _load(path, root)
