"""Embeddings of a whole image folder as one sharded artifact, extracted in parallel across torchrun ranks.

Entry points: `extract_sharded(run_dir, data, out_dir, ...)` (every rank calls it; one process works too) and
`read_sharded(out_dir)`. Rank r of N embeds the contiguous rows [start_r, stop_r) of the folder's uint8 cache
(read from its memory-mapped file, so no rank holds the whole set) and writes
`embeddings-<r>-of-<N>.npy`; rank 0 writes `samples.parquet` (row -> path, label) and, once every shard is on
disk, `index.json`, the artifact's table of contents, written last so a half-finished extraction is never
mistaken for a whole one. 1e6 images x 512 float32 = 2 GB in N files of 2/N GB each.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from core import distributed
from core.atomic import atomic_write_json, save_numpy_atomic, save_parquet_atomic
from core.errors import MatchLabError
from core.layout import SAMPLES, SHARDS_INDEX

INDEX = SHARDS_INDEX  # the name callers know


def _shard_name(rank: int, world_size: int) -> str:
    return f"embeddings-{rank:05d}-of-{world_size:05d}.npy"


def extract_sharded(
    run_dir: str | Path,
    data: str | Path,
    out_dir: str | Path,
    *,
    device: str = "auto",
    flip_tta: bool = False,
    batch_size: int = 256,
) -> dict:
    """Embed every image of `data` with the run's best weights into the sharded artifact `out_dir`.

    Returns the index (what index.json holds). Under torchrun each rank embeds its rows on its own GPU.
    """
    from tqdm.auto import tqdm

    from core.embedder import embed_all, folder_cache, load_embedder
    from core.run import resolve_device

    ctx = distributed.init_from_env(resolve_device(device))
    embedder = load_embedder(run_dir, device=str(ctx.device(resolve_device(device))))
    with distributed.main_first():  # rank 0 decodes the folder once; the others then map the same file
        cache = folder_cache(embedder, data)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if ctx.is_main:
        (out / INDEX).unlink(missing_ok=True)  # the old table of contents goes first: no stale whole artifact
    distributed.barrier()
    start, stop = distributed.block_bounds(len(cache), ctx.world_size, ctx.rank)
    bar = tqdm(
        total=stop - start,
        desc=f"embedding (rank 0 of {ctx.world_size})",
        unit="img",
        file=sys.stderr,
        disable=None if ctx.is_main else True,
    )
    done = [0]

    def progress(fraction: float, message: str) -> None:
        bar.update(round(fraction * (stop - start)) - done[0])
        done[0] = round(fraction * (stop - start))

    ex = embed_all(embedder, cache.images[start:stop], flip_tta=flip_tta, batch_size=batch_size, progress=progress)
    bar.close()
    save_numpy_atomic(out / _shard_name(ctx.rank, ctx.world_size), ex.embeddings)
    distributed.barrier()  # every shard is on disk before the index says the artifact is whole
    bounds = [distributed.block_bounds(len(cache), ctx.world_size, r) for r in range(ctx.world_size)]
    index = {
        "n_images": len(cache),
        "dim": int(ex.embeddings.shape[1]),
        "world_size": ctx.world_size,
        "shards": [{"file": _shard_name(r, ctx.world_size), "start": a, "stop": b} for r, (a, b) in enumerate(bounds)],
        "checkpoint_hash": embedder.identity,
        "dataset_hash": cache.dataset_hash,
        "data": str(Path(data).resolve()),
        "flip_tta": flip_tta,
    }
    if ctx.is_main:
        save_parquet_atomic(
            out / SAMPLES,
            pd.DataFrame(
                {
                    "sample_id": np.arange(len(cache), dtype=np.int64),
                    "path": cache.paths,
                    "label": np.asarray(cache.labels, dtype=np.int64),
                    "class_name": [cache.class_names[c] for c in cache.labels],
                }
            ),
        )
        atomic_write_json(out / INDEX, index)
    distributed.barrier()
    return index


def read_sharded(out_dir: str | Path, mmap: bool = True) -> np.ndarray:
    """The (N, D) float32 embeddings of a sharded artifact, row i = samples.parquet's sample_id i."""
    out = Path(out_dir)
    if not (out / INDEX).is_file():
        raise MatchLabError(f"{out / INDEX} is missing: the extraction into {out} did not finish; run it again")
    index = json.loads((out / INDEX).read_text())
    parts = [np.load(out / s["file"], mmap_mode="r" if mmap else None) for s in index["shards"]]
    for s, p in zip(index["shards"], parts):
        if p.shape != (s["stop"] - s["start"], index["dim"]):
            raise MatchLabError(
                f"{out / s['file']} has shape {p.shape}, the index expects "
                f"({s['stop'] - s['start']}, {index['dim']}); extract again"
            )
    return np.concatenate(parts) if len(parts) != 1 else np.asarray(parts[0])
