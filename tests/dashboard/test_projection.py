"""core.projection: stratified sampling, PCA against numpy, the on-disk cache and its key."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

from core import projection
from core.errors import MatchLabError


def test_stratified_sample_keeps_class_shares_and_small_classes():
    labels = np.repeat(np.arange(5), [1000, 500, 100, 1, 8399])
    idx = projection.stratified_sample(labels, 1000, seed=0)
    assert len(idx) == 1000 and len(np.unique(idx)) == 1000 and np.all(np.diff(idx) > 0)
    counts = np.bincount(labels[idx], minlength=5)
    assert counts[3] == 1  # a 1-image class stays visible
    assert abs(counts[0] - 100) <= 2 and abs(counts[4] - 840) <= 3
    assert np.array_equal(idx, projection.stratified_sample(labels, 1000, seed=0))  # seeded
    assert not np.array_equal(idx, projection.stratified_sample(labels, 1000, seed=1))


def test_stratified_sample_many_tiny_classes_and_small_sets():
    labels = np.arange(5000)  # every class has one image: the trim path
    assert len(projection.stratified_sample(labels, 300, seed=0)) == 300
    assert list(projection.stratified_sample(np.zeros(10), 100)) == list(range(10))
    with pytest.raises(ValueError):
        projection.stratified_sample(labels, 0)


def test_pca_matches_numpy_svd():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16)).astype(np.float32) * np.linspace(5, 0.1, 16, dtype=np.float32)
    xy = projection.project(x, "pca")
    c = x - x.mean(0)
    ref = c @ np.linalg.svd(c, full_matrices=False)[2][:2].T
    assert np.allclose(np.abs(xy), np.abs(ref), atol=1e-3)  # up to the sign of each component


def test_unknown_method_and_parameter_name_the_valid_ones():
    with pytest.raises(MatchLabError, match="pca, tsne, umap"):
        projection.projection_params("isomap")
    with pytest.raises(MatchLabError, match="n_neighbors, min_dist"):
        projection.projection_params("umap", {"k": 3})


@pytest.fixture
def eval_dir(tmp_path):
    d = tmp_path / "eval" / "toy"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 30)
    emb = rng.normal(size=(300, 8)).astype(np.float32) + labels[:, None]
    np.save(d / "embeddings.npy", emb / np.linalg.norm(emb, axis=1, keepdims=True))
    pd.DataFrame({"sample_id": np.arange(300), "label": labels}).to_parquet(d / "samples.parquet")
    (d / "manifest.json").write_text(json.dumps({"checkpoint_hash": "aaaa"}))
    return d


def test_projection_is_cached_on_disk_by_parameters_and_checkpoint(eval_dir):
    calls = []
    frame = projection.load_or_compute_projection(
        eval_dir, "pca", max_points=100, progress=lambda f, m: calls.append(f)
    )
    path = projection.projection_path(eval_dir, "pca", None, 100)
    assert path.is_file() and path.parent.name == "projections" and path.name.startswith("pca-")
    assert list(frame.columns) == ["sample_id", "x", "y"] and len(frame) == 100
    assert calls[-1] == 1.0
    assert projection.load_projection(eval_dir, "pca", None, 100).equals(frame)
    assert projection.projection_path(eval_dir, "pca", None, 200) != path  # budget is part of the key
    assert projection.projection_path(eval_dir, "umap", {"n_neighbors": 5}) != projection.projection_path(
        eval_dir, "umap", {"n_neighbors": 6}
    )
    (eval_dir / "manifest.json").write_text(json.dumps({"checkpoint_hash": "bbbb"}))
    assert projection.projection_path(eval_dir, "pca", None, 100) != path  # retrained: not stale


def test_pca_does_not_import_umap_or_sklearn_manifold(eval_dir):
    sys.modules.pop("umap", None)
    projection.load_or_compute_projection(eval_dir, "pca", max_points=50)
    assert "umap" not in sys.modules


def test_tsne_small(eval_dir):
    frame = projection.load_or_compute_projection(eval_dir, "tsne", {"perplexity": 10}, max_points=60)
    assert len(frame) == 60 and np.isfinite(frame[["x", "y"]].to_numpy()).all()


def test_missing_embeddings_is_a_clear_error(tmp_path):
    with pytest.raises(MatchLabError, match="embeddings.npy is missing"):
        projection.load_or_compute_projection(tmp_path, "pca")
