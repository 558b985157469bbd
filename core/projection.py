"""2-D projections (PCA, t-SNE, UMAP) of evaluation embeddings, cached on disk.

Entry point: `load_or_compute_projection(eval_dir, method, params)` -> DataFrame `sample_id, x, y`, stored as
`eval/<key>/projections/<method>-<hash>.parquet`; the hash covers the method, its parameters, the point budget
and the checkpoint the embeddings came from, so a retrained run never shows a stale picture. Above
`max_points` a class-stratified sample is projected (metrics elsewhere always use every point). umap-learn
and sklearn.manifold are imported only inside their branches: they are slow to import and pages must not pay.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.atomic import save_parquet_atomic
from core.errors import MatchLabError
from core.layout import EvalFiles, read_json
from core.progress import Progress

METHODS = ("pca", "tsne", "umap")
# Defaults per method; the parameter hash is taken over these merged with the caller's values.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "pca": {},
    "tsne": {"perplexity": 30.0},
    "umap": {"n_neighbors": 15, "min_dist": 0.1},
}


def stratified_sample(labels: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    """Indices (sorted, int64) of at most `max_points` rows keeping every class's share.

    labels: (N,) any hashable dtype. Each class keeps round(share * max_points) rows, at least one, so small
    classes stay visible; the total is then trimmed or topped up at random to exactly `max_points`.
    All N indices come back when N <= max_points.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if max_points <= 0:
        raise ValueError(f"max_points must be positive, got {max_points}")
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = np.maximum(1, np.round(counts * (max_points / n))).astype(np.int64)
    quota = np.minimum(quota, counts)
    # Shuffle once, group by class (stable, so each class keeps its shuffled order), keep the first `quota`.
    order = rng.permutation(n)
    grouped = order[np.argsort(inverse[order], kind="stable")]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(n) - np.repeat(starts, counts)
    chosen = grouped[rank < np.repeat(quota, counts)]
    if len(chosen) > max_points:  # many tiny classes each kept one row: trim at random
        chosen = rng.choice(chosen, size=max_points, replace=False)
    elif len(chosen) < max_points:  # rounding left room: fill from the rows not yet chosen
        rest = np.setdiff1d(np.arange(n), chosen)
        chosen = np.concatenate([chosen, rng.choice(rest, size=max_points - len(chosen), replace=False)])
    return np.sort(chosen)


def projection_params(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Method defaults merged with `params`; an unknown method or parameter names the valid ones."""
    if method not in METHODS:
        raise MatchLabError(f"unknown projection method {method!r}; choose one of {', '.join(METHODS)}")
    merged = dict(DEFAULT_PARAMS[method])
    for k, v in (params or {}).items():
        if k not in merged:
            valid = ", ".join(merged) or "none"
            raise MatchLabError(f"unknown {method} parameter {k!r}; valid: {valid}")
        merged[k] = type(merged[k])(v)
    return merged


def projection_path(
    eval_dir: str | Path, method: str, params: dict[str, Any] | None = None, max_points: int = 20000, *, seed: int = 0
) -> Path:
    """Where the projection for these settings is (or will be) cached."""
    eval_dir = Path(eval_dir)
    ident = {
        "method": method,
        "params": projection_params(method, params),
        "max_points": int(max_points),
        "seed": int(seed),
        "checkpoint": _checkpoint_hash(eval_dir),
    }
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    return EvalFiles(eval_dir).projections / f"{method}-{digest}.parquet"


def project(embeddings: np.ndarray, method: str, params: dict[str, Any] | None = None, seed: int = 0) -> np.ndarray:
    """embeddings: (N, D) float32 -> (N, 2) float32 coordinates."""
    params = projection_params(method, params)
    x = np.asarray(embeddings, dtype=np.float32)
    if len(x) < 3:
        raise MatchLabError(f"a projection needs at least 3 embeddings, got {len(x)}")
    if method == "pca":
        # Plain SVD of the centred matrix: exact, fast, and no sklearn import on the page path.
        centred = x - x.mean(axis=0, keepdims=True)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        out = centred @ vt[:2].T
        if out.shape[1] < 2:
            out = np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
        return out.astype(np.float32)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(params["perplexity"], (len(x) - 1) / 3.0)  # sklearn requires perplexity < N
        return (
            TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, metric="cosine")
            .fit_transform(x)
            .astype(np.float32)
        )
    import umap  # umap-learn: imported here only, it takes seconds (numba)

    n_neighbors = min(int(params["n_neighbors"]), len(x) - 1)
    reducer = umap.UMAP(
        n_components=2, n_neighbors=n_neighbors, min_dist=params["min_dist"], metric="cosine", random_state=seed
    )
    return reducer.fit_transform(x).astype(np.float32)


def load_projection(
    eval_dir: str | Path, method: str, params: dict[str, Any] | None = None, max_points: int = 20000, *, seed: int = 0
) -> pd.DataFrame | None:
    """The cached projection for these settings, or None when it has not been computed."""
    path = projection_path(eval_dir, method, params, max_points, seed=seed)
    return pd.read_parquet(path) if path.is_file() else None


def load_or_compute_projection(
    eval_dir: str | Path,
    method: str = "pca",
    params: dict[str, Any] | None = None,
    max_points: int = 20000,
    *,
    seed: int = 0,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Projection of eval_dir's embeddings.npy as DataFrame `sample_id (int64), x, y (float32)`.

    Rows are the stratified sample (by samples.parquet `label`) when there are more than `max_points`.
    """
    eval_dir = Path(eval_dir)
    cached = load_projection(eval_dir, method, params, max_points, seed=seed)
    if cached is not None:
        return cached
    emb_path = EvalFiles(eval_dir).embeddings
    if not emb_path.is_file():
        raise MatchLabError(f"{emb_path} is missing; run: python -m core evaluate on this dataset first")
    report = progress or (lambda f, m: None)
    report(0.0, "loading embeddings")
    embeddings = np.load(emb_path, mmap_mode="r")
    labels = _labels(eval_dir, len(embeddings))
    ids = stratified_sample(labels, max_points, seed)
    report(0.1, f"projecting {len(ids):,} of {len(embeddings):,} points with {method}")
    xy = project(np.asarray(embeddings[ids]), method, params, seed)
    frame = pd.DataFrame({"sample_id": ids.astype(np.int64), "x": xy[:, 0], "y": xy[:, 1]})
    save_parquet_atomic(projection_path(eval_dir, method, params, max_points, seed=seed), frame)
    report(1.0, "done")
    return frame


def _labels(eval_dir: Path, n: int) -> np.ndarray:
    samples = EvalFiles(eval_dir).samples
    if samples.is_file():
        labels = pd.read_parquet(samples, columns=["label"])["label"].to_numpy()
        if len(labels) == n:
            return labels
    return np.zeros(n, dtype=np.int64)  # no labels: a uniform random sample


def _checkpoint_hash(eval_dir: Path) -> str:
    try:
        m = read_json(EvalFiles(eval_dir).manifest)
    except MatchLabError:
        return ""  # a damaged manifest: the projection is keyed without a checkpoint rather than failing
    return str(m.get("checkpoint_hash") or m.get("checkpoint", ""))
