"""Decode an image folder once into a uint8 (N, H, W, 3) array on disk, then reuse it.

Entry point: `build_or_load_cache(root, res)` (res: int side or (H, W)) -> `ImageCache` (memory-mapped images, labels, paths,
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
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import repeat
from pathlib import Path
from typing import cast

import numpy as np
import PIL
from tqdm import tqdm

from core.atomic import atomic_write_json, pid_alive, remove_stale_tmp, save_numpy_atomic
from core.data.images import MAX_PIXELS, BadImageError, FolderScan, as_hw, decode_square, res_label, scan_image_folder
from core.errors import MatchLabError

# Bump when decoding changes (resize filter, mode conversion, layout): older caches then rebuild.
FORMAT_VERSION = 1
ON_BAD_IMAGE = ("skip", "fail")
# Below this many files, starting worker processes costs more than decoding in this one.
_MIN_FILES_FOR_POOL = 64
_MANIFEST_KEYS = {"files", "skipped", "class_names", "n_images", "mean", "std", "dataset_hash"}

Decoded = tuple["np.ndarray | None", str, str]  # (H,W,3) uint8 or None, reason if None, sha1 hex of the bytes


@dataclass
class ImageCache:
    """A decoded image folder. `images[i]` is `root / paths[i]` with label `labels[i]`.

    images: (N, H, W, 3) uint8, memory-mapped read-only (an in-memory array after `subset`).
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
    # align="mtcnn" caches hold aligned face crops; no_face: images where no face was found (stored as a
    # centre crop, left out when on_no_face="skip"); multi_face: images with several faces (largest, most central used)
    align: str = "none"
    no_face: list[str] = field(default_factory=list)
    multi_face: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def res(self) -> int | tuple[int, int]:
        """The side of a square cache (an int, as given), else (H, W)."""
        h, w = int(self.images.shape[1]), int(self.images.shape[2])
        return h if h == w else (h, w)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageCache:
        """Rows `indices` (in that order) as an in-memory cache; mean/std stay those of the full set."""
        idx = np.asarray(indices, dtype=np.int64)
        return replace(
            self, images=np.asarray(self.images[idx]), labels=self.labels[idx], paths=[self.paths[i] for i in idx]
        )

    def images_tensor(self, device="cpu"):
        """images as a torch uint8 (N, H, W, 3) tensor on `device` (one host copy of the memmap)."""
        import torch

        # np.array copies: torch.from_numpy on the read-only memmap would warn and alias the file.
        return torch.from_numpy(np.array(self.images)).to(device)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where MatchLab keeps derived files (decoded caches, exported models): `cache_dir`,
    $MATCHLAB_CACHE_DIR or ./.matchlab_cache, never a run folder."""
    return Path(cache_dir or os.environ.get("MATCHLAB_CACHE_DIR") or Path.cwd() / ".matchlab_cache")


def cache_location(
    root: str | os.PathLike,
    res: int | Sequence[int],
    cache_dir: str | os.PathLike | None = None,
    *,
    align: str = "none",
    max_pixels: int | None = None,
) -> Path:
    """The cache folder for (absolute root, res, alignment) under `cache_dir`, $MATCHLAB_CACHE_DIR or
    ./.matchlab_cache. Unaligned caches keep the key they always had; aligned ones add the method."""
    base = cache_root(cache_dir)
    absolute = Path(root).resolve()
    label = res_label(res)  # "64" for a square (the key square caches always had), "112x96" for H x W
    if align != "none":
        label += f"-{align}"
    if max_pixels not in (None, MAX_PIXELS):  # another pixel limit may keep other files: its own cache
        label += f"-max{max_pixels}px"
    key = hashlib.sha1(f"{absolute}|{label}".encode()).hexdigest()[:12]
    return base / f"{absolute.name or 'root'}-{label}px-{key}"


def cache_status(
    root: str | os.PathLike, res: int | Sequence[int], cache_dir: str | os.PathLike | None = None, align: str = "none"
) -> str:
    """ "fresh" (reusable as is), "stale" (folder changed since) or "missing"."""
    return _check(Path(root), _manifest_res(res), cache_location(root, res, cache_dir, align=align))[0]


def build_or_load_cache(
    root: str | os.PathLike,
    res: int | Sequence[int],
    on_bad_image: str = "skip",
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool = True,
    *,
    align: str = "none",
    on_no_face: str = "skip",
    device: str = "cpu",
    max_pixels: int | None = None,
) -> ImageCache:
    """Load the cache of `root` at `res` px (an int: square; (H, W): a rectangle) if no file changed since
    it was built, else (re)build it.

    align="mtcnn": each image is the face found by MTCNN, aligned to the ArcFace template at res (detection
    runs once, at build time, on `device`); on_no_face then says what happens to images without a face:
    "skip" leaves them out (listed in `no_face`), "centre" keeps their centre crop, "fail" raises naming one.

    on_bad_image: "skip" prints `skipped <path>: <reason>` per undecodable file and leaves it out;
    "fail" raises MatchLabError naming the first one. workers: decode processes (default: all cores).
    Raises MatchLabError for a bad folder (see scan_image_folder) or a class left with no images.
    max_pixels: images with more pixels are skipped as bad images (default images.MAX_PIXELS).
    """
    if on_bad_image not in ON_BAD_IMAGE:
        raise MatchLabError(f"on_bad_image={on_bad_image!r} is not valid: use one of {', '.join(ON_BAD_IMAGE)}")
    as_hw(res, "image resolution res")  # raises MatchLabError for anything but a side or (H, W)
    _check_align(align, on_no_face)
    root = Path(root)
    path = cache_location(root, res, cache_dir, align=align, max_pixels=max_pixels)
    status, reason, scan, listing = _check(root, _manifest_res(res), path)
    if status == "fresh":
        cache = _load(path, root)
        _report_skipped(cache.root, cache.skipped, on_bad_image)
        return _apply_no_face(cache, on_no_face)
    if status == "stale":
        print(f"{reason}; rebuilding {path}", file=sys.stderr)
    cache = _build(
        scan, listing, _manifest_res(res), on_bad_image, path, workers, progress, align, device, max_pixels=max_pixels
    )
    return _apply_no_face(cache, on_no_face)


def load_image_arrays(
    paths: Sequence[str | os.PathLike | bytes], res: int | Sequence[int], *, align: str = "none", device: str = "cpu"
) -> np.ndarray:
    """Decode a few files (verify, the live demo) exactly as the cache does -> (N, H, W, 3) uint8.

    An entry may be a file's bytes (an upload); errors then name it "upload <i>". Raises
    BadImageError (a MatchLabError) naming the first file that cannot be decoded. align="mtcnn": each
    image's aligned face, as an aligned cache stores it (a centre crop where no face is found).
    """
    if align != "none":
        from core.align.faces import Aligner

        names = [
            f"upload {i}" if isinstance(p, (bytes, bytearray, memoryview)) else str(p) for i, p in enumerate(paths)
        ]
        sources = [bytes(p) if isinstance(p, (bytes, bytearray, memoryview)) else str(p) for p in paths]
        found = Aligner(as_hw(res), device, on_no_face="centre").align(sources, names)
        # on_no_face="centre" gives every photo a crop (None is only for "skip")
        return np.stack([cast(np.ndarray, a.crop) for a in found]) if found else np.empty((0, *as_hw(res), 3), np.uint8)
    out = np.empty((len(paths), *as_hw(res), 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        if isinstance(p, (bytes, bytearray, memoryview)):
            out[i] = decode_square(p, res, name=f"upload {i}")
        else:
            out[i] = decode_square(Path(p), res)
    return out


# ---------------------------------------------------------------------------------------------- checking


def _manifest_res(res: int | Sequence[int]) -> int | list[int]:
    """How a manifest records res: an int for a square (as every older cache did), [H, W] otherwise."""
    h, w = as_hw(res)
    return h if h == w else [h, w]


def _listing(scan: FolderScan) -> list[tuple[str, int, int]]:
    out = []
    for rel in scan.paths:
        st = os.stat(scan.root / rel)
        out.append((rel, st.st_size, st.st_mtime_ns))
    return out


def _check(root: Path, res: int | list[int], path: Path) -> tuple[str, str, FolderScan, list[tuple[str, int, int]]]:
    """(status, why, scan, listing). Folder errors (missing, empty class) raise even with a cache."""
    scan = scan_image_folder(root)
    listing = _listing(scan)
    manifest = _read_manifest(path)
    if manifest is None:
        return "missing", "cache missing", scan, listing
    if (
        manifest.get("format_version") != FORMAT_VERSION
        or manifest.get("res") != res
        or not _MANIFEST_KEYS <= manifest.keys()
    ):
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
    if m is None:  # checked fresh or just written, so only a folder changed under us gets here
        raise MatchLabError(f"cache {path} has no readable manifest: delete that folder and run again")
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
        align=m.get("align", "none"),
        no_face=list(m.get("no_face", [])),
        multi_face=list(m.get("multi_face", [])),
    )


def _check_align(align: str, on_no_face: str) -> None:
    from core.align import ALIGN_METHODS, ON_NO_FACE

    if align not in ALIGN_METHODS:
        raise MatchLabError(f"align={align!r} is not valid; use one of {', '.join(ALIGN_METHODS)}")
    if on_no_face not in ON_NO_FACE:
        raise MatchLabError(f"on_no_face={on_no_face!r} is not valid; use one of {', '.join(ON_NO_FACE)}")


def _apply_no_face(cache: ImageCache, on_no_face: str) -> ImageCache:
    """An aligned cache stores every image (a centre crop where no face was found); apply on_no_face."""
    if not cache.no_face or on_no_face == "centre":
        return cache
    if on_no_face == "fail":
        raise MatchLabError(
            f"{cache.root / cache.no_face[0]}: no face found ({len(cache.no_face)} of "
            f"{len(cache)} images have none); use closer, frontal photos or set on_no_face to skip or centre"
        )
    missing = set(cache.no_face)
    keep = [i for i, p in enumerate(cache.paths) if p not in missing]
    tqdm.write(
        f"{len(missing)} images without a face left out (on_no_face=skip), e.g. {cache.root / cache.no_face[0]}",
        file=sys.stderr,
    )
    return cache.subset(keep)


def _bad_image_error(root: Path, rel: str, reason: str) -> MatchLabError:
    return MatchLabError(
        f"{root / rel}: {reason}; fix or remove the file, or set data.on_bad_image=skip to leave it out"
    )


def _report_skipped(root: Path, skipped: list[tuple[str, str]], on_bad_image: str) -> None:
    if skipped and on_bad_image == "fail":
        raise _bad_image_error(root, *skipped[0])
    for rel, reason in skipped:
        tqdm.write(f"skipped {root / rel}: {reason}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- building


def _read_and_decode(path: str, decode: Callable[[bytes], np.ndarray]) -> Decoded:
    """One file -> (decode(bytes) or None, reason, sha1). Reads the bytes once for both hash and decode, so
    the manifest's hash is of exactly what was decoded; an unreadable or undecodable file gives its reason."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return None, f"cannot read: {e.strerror or e}", ""
    digest = hashlib.sha1(data).hexdigest()
    try:
        return decode(data), "", digest
    except BadImageError as e:
        return None, e.reason, digest


def _decode_file(path: str, res: int | list[int], max_pixels: int | None = None) -> Decoded:
    """Worker: one file -> (array or None, reason, sha1)."""
    return _read_and_decode(path, lambda data: decode_square(data, res, name=path, max_pixels=max_pixels))


def _decode_all(
    root: Path,
    paths: list[str],
    res: int | list[int],
    workers: int | None,
    progress: bool,
    max_pixels: int | None = None,
) -> Generator[Decoded, None, None]:
    """Yield `_decode_file` results for `paths` (absolute) in order, over a process pool when it pays."""
    n = len(paths)
    workers = max(1, min(workers or os.cpu_count() or 1, n))
    with tqdm(total=n, desc=f"decode {root} {n} img", unit="img", disable=not progress, file=sys.stderr) as bar:
        if workers == 1 or n < _MIN_FILES_FOR_POOL:
            for p in paths:
                yield _decode_file(p, res, max_pixels)
                bar.update()
            return
        # forkserver, not fork: the parent may hold CUDA state and threads that a fork would copy.
        # Like spawn, workers import the main script, so a script calling this needs a __main__ guard.
        ctx = multiprocessing.get_context(
            "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        )
        executor = ProcessPoolExecutor(workers, mp_context=ctx, initializer=exit_with_parent, initargs=(os.getpid(),))
        try:
            chunk = max(1, min(64, n // (workers * 8)))
            for result in executor.map(_decode_file, paths, repeat(res), repeat(max_pixels), chunksize=chunk):
                yield result
                bar.update()
        except BrokenProcessPool:
            raise MatchLabError(
                f"a decoding worker died while reading {root}: out of memory, or a script "
                "without `if __name__ == '__main__':`; retry with workers=1"
            ) from None
        finally:
            executor.shutdown(wait=True, cancel_futures=True)


def _read_photo(path: str) -> tuple[np.ndarray | None, str, str]:
    """Thread: one file -> (full-size RGB array or None, reason, sha1) for detection and alignment."""
    from core.align.faces import decode_photo

    return _read_and_decode(path, lambda data: decode_photo(data, path))


def _align_all(
    root: Path, paths: list[str], res: int | list[int], device: str, progress: bool, faces: dict[str, list[int]]
) -> Generator[Decoded, None, None]:
    """Like `_decode_all`, but each image is its aligned face (MTCNN in batches in this process, files
    decoded on threads meanwhile); indices of images with no face / several faces go into `faces`."""
    from concurrent.futures import ThreadPoolExecutor

    from core.align.faces import CHUNK, Aligner

    aligner = Aligner(as_hw(res), device, on_no_face="centre")
    n = len(paths)
    with (
        tqdm(total=n, desc=f"detect+align {root} {n} img", unit="img", disable=not progress, file=sys.stderr) as bar,
        ThreadPoolExecutor(max(1, min(os.cpu_count() or 1, 8))) as pool,
    ):
        for start in range(0, n, CHUNK):
            read = list(pool.map(_read_photo, paths[start : start + CHUNK]))
            good = [i for i, r in enumerate(read) if r[0] is not None]
            done = dict(
                zip(
                    good,
                    aligner.align_arrays(
                        [cast(np.ndarray, read[i][0]) for i in good], [paths[start + i] for i in good]
                    ),
                )
            )
            for i, (_, reason, digest) in enumerate(read):
                a = done.get(i)
                if a is not None and not a.found:
                    faces["no_face"].append(start + i)
                if a is not None and len(a.faces) > 1:
                    faces["multi_face"].append(start + i)
                yield (a.crop if a is not None else None), reason, digest
                bar.update()


def exit_with_parent(main_pid: int) -> None:
    """Pool-worker initializer: exit when the process that started the pool dies. A kill -9 of `train` used
    to leave the decode workers (and the forkserver, which they keep alive) running for minutes (issue 15).
    A worker's parent is the forkserver, not `train`, so PR_SET_PDEATHSIG cannot see that death: a daemon
    thread checks `main_pid` twice a second instead."""
    import threading
    import time

    def watch() -> None:
        while pid_alive(main_pid):
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _check_memory(root: Path, n: int, res: int | list[int]) -> None:
    """Refuse, before allocating, a cache that cannot fit in memory (data.res too large for the folder)."""
    h, w = as_hw(res)
    need = n * h * w * 3
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return  # not Linux: let the allocation speak
    if need > avail:
        raise MatchLabError(
            f"decoding the {n} images of {root} at {h} x {w} pixels would need {need / 2**30:,.1f} GiB "
            f"of memory, but {avail / 2**30:,.1f} GiB is available: lower data.res"
        )


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
    res: int | list[int],
    on_bad_image: str,
    path: Path,
    workers: int | None,
    progress: bool,
    align: str = "none",
    device: str = "cpu",
    *,
    max_pixels: int | None = None,
) -> ImageCache:
    root = scan.root
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MatchLabError(
            f"cache folder {path} cannot be created ({e.strerror or e}); set MATCHLAB_CACHE_DIR to a writable folder"
        ) from None
    remove_stale_tmp(path)  # a build killed mid-write leaves its temporary files behind
    # The manifest marks a cache valid: remove it before touching the arrays, write it after them.
    (path / "manifest.json").unlink(missing_ok=True)
    n = len(scan.paths)
    _check_memory(root, n, res)
    # In memory, not a scratch memmap: a set that this tool trains on fits on the GPU, so in host RAM.
    images = np.empty((n, *as_hw(res), 3), dtype=np.uint8)
    keep: list[int] = []
    skipped: list[tuple[str, str]] = []
    digests = [""] * n
    files = [str(root / rel) for rel in scan.paths]
    faces: dict[str, list[int]] = {"no_face": [], "multi_face": []}
    decoded = (
        _decode_all(root, files, res, workers, progress, max_pixels)
        if align == "none"
        else _align_all(root, files, res, device, progress, faces)
    )
    with contextlib.closing(decoded) as results:
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
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "root": str(root.resolve()),
            "res": res,
            "max_pixels": max_pixels or MAX_PIXELS,
            "pillow": PIL.__version__,
            "n_images": len(keep),
            "class_names": scan.class_names,
            "mean": mean.tolist(),
            "std": std.tolist(),
            "dataset_hash": dataset_hash,
            "skipped": [{"path": p, "reason": r} for p, r in skipped],
            **(
                {"align": align, **{k: [scan.paths[i] for i in v] for k, v in faces.items()}} if align != "none" else {}
            ),
            "files": [
                {"path": p, "size": size, "mtime_ns": mtime, "sha1": d} for (p, size, mtime), d in zip(listing, digests)
            ],
        },
    )
    return _load(path, root)
