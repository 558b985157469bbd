"""core.search against brute force: exact top-k (ties, chunking, memmaps, memory budgets, bf16 re-scoring),
identity top-k, the FAISS indexes and recall, and `identify --top-k` on the bundled ORL demo run."""

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.errors import MatchLabError
from core.search import (
    build_index,
    exact_topk,
    identities_from_images,
    identity_topk,
    plan_chunks,
    recall_at_k,
)
from tests.core_cli import cli

ROOT = Path(__file__).resolve().parents[1]
ORL = ROOT / "data" / "orl_faces"
DEMO = ROOT / "checkpoints" / "orl_demo"
CPU = torch.device("cpu")


def brute(probes: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 cosines, a stable full sort (equal scores: lower row first), top k."""
    p = probes / np.linalg.norm(probes.astype(np.float64), axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery.astype(np.float64), axis=1, keepdims=True)
    sims = p @ g.T
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, idx, 1), idx


def gaussian(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def tied(n: int, seed: int, d: int = 16) -> np.ndarray:
    """Unit rows with four entries of +-0.5: every cosine is a multiple of 1/4, exact in any order."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, d), np.float32)
    for row in x:
        row[rng.choice(d, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return x


def clustered(n_ids: int, per_id: int, n_probes: int, d: int, seed: int, noise: float = 0.5):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_ids, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(n_ids), per_id)
    gallery = centres[labels] + noise * rng.standard_normal((len(labels), d)) / np.sqrt(d)
    probe_ids = rng.integers(0, n_ids, n_probes)
    probes = centres[probe_ids] + noise * rng.standard_normal((n_probes, d)) / np.sqrt(d)
    return gallery.astype(np.float32), labels, probes.astype(np.float32), probe_ids


@pytest.mark.parametrize("probe_chunk,gallery_chunk", [(None, None), (7, 64), (1000, 1), (33, 1003)])
def test_exact_topk_equals_brute_force(probe_chunk, gallery_chunk):
    # k = 100 > the gallery chunk (64, 1); 1003 rows divide by neither chunk
    g, p = gaussian(1003, 32, 0), gaussian(50, 32, 1)
    want_s, want_i = brute(p, g, 100)
    s, i = exact_topk(p, g, 100, device="cpu", progress=False, probe_chunk=probe_chunk, gallery_chunk=gallery_chunk)
    assert s.dtype == np.float32 and i.dtype == np.int64 and s.shape == i.shape == (50, 100)
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_allclose(s, want_s, atol=1e-5)


@pytest.mark.parametrize("gallery_chunk", [None, 1, 3, 10, 257])
def test_ties_go_to_the_lower_gallery_row(gallery_chunk):
    # tiny chunks loop in Python once per chunk: a smaller gallery keeps them seconds, with as many ties
    g, p = tied(2001 if (gallery_chunk or 2001) > 10 else 301, 0), tied(120, 1)
    want_s, want_i = brute(p, g, 25)
    assert (want_s[:, :-1] == want_s[:, 1:]).mean() > 0.5  # the data really is full of ties
    s, i = exact_topk(p, g, 25, device="cpu", progress=False, gallery_chunk=gallery_chunk, probe_chunk=17)
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_array_equal(s, want_s.astype(np.float32))


def test_memmaps_under_a_small_budget_give_the_same_result(tmp_path):
    g_np, p_np = gaussian(4000, 64, 2), gaussian(300, 64, 3)
    g = np.lib.format.open_memmap(tmp_path / "g.npy", mode="w+", dtype=np.float32, shape=g_np.shape)
    p = np.lib.format.open_memmap(tmp_path / "p.npy", mode="w+", dtype=np.float32, shape=p_np.shape)
    g[:], p[:] = g_np, p_np
    g.flush(), p.flush()
    g, p = np.load(tmp_path / "g.npy", mmap_mode="r"), np.load(tmp_path / "p.npy", mmap_mode="r")
    budget = 400_000
    plan = plan_chunks(300, 4000, 64, 10, CPU, budget)
    assert not plan.resident and plan.estimated_bytes <= budget
    assert plan.gallery_chunk < 4000 // 10 and plan.probe_chunk < 300  # many chunks each way
    s, i = exact_topk(p, g, 10, device="cpu", budget_bytes=budget, progress=False)
    want_s, want_i = brute(p_np, g_np, 10)
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_allclose(s, want_s, atol=1e-5)
    _, t_i = exact_topk(torch.from_numpy(p_np), torch.from_numpy(g_np), 10, device="cpu", progress=False)
    np.testing.assert_array_equal(t_i, want_i)  # tensors in, the same answer


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_plans_stay_within_their_budget(precision):
    for n_p, n_g, dim, k, budget in [
        (10, 10, 8, 1, 10_000),
        (100_000, 1_000_000, 512, 10, 2**30),
        (100_000, 1_000_000, 512, 100, 20 * 2**30),
        (5, 10**6, 512, 10, 2**26),
    ]:
        plan = plan_chunks(n_p, n_g, dim, k, CPU, budget, precision)
        assert plan.estimated_bytes <= budget and 1 <= plan.probe_chunk <= n_p and 1 <= plan.gallery_chunk <= n_g
    assert plan_chunks(100_000, 10**6, 512, 10, CPU, 2**30).resident is False  # 2 GB cannot stay in 1 GiB
    with pytest.raises(MatchLabError, match="too small"):
        plan_chunks(10, 10**6, 512, 10, CPU, 1000, precision)


@pytest.mark.parametrize("budget,resident", [(None, True), (300_000, False)])
def test_bf16_selects_and_rescores_in_fp32(budget, resident):
    # resident: candidates over the whole gallery, re-scored at the end; streamed: re-scored per chunk
    g, p = gaussian(3000, 64, 4), gaussian(40, 64, 5)
    assert plan_chunks(40, 3000, 64, 5, CPU, budget, "bf16").resident is resident
    s, i = exact_topk(p, g, 5, device="cpu", precision="bf16", budget_bytes=budget, progress=False)
    want_s, want_i = brute(p, g, 5)
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_allclose(s, want_s, atol=1e-6)  # fp32 cosines, not bf16 (error ~2e-3)


def test_bad_inputs_are_one_line_errors():
    g, p = gaussian(20, 8, 6), gaussian(3, 8, 7)
    with pytest.raises(MatchLabError, match=r"k must be in \[1, 20\]"):
        exact_topk(p, g, 21, device="cpu", progress=False)
    with pytest.raises(MatchLabError, match="differ in width"):
        exact_topk(p[:, :4], g, 1, device="cpu", progress=False)
    s, i = exact_topk(p[:0], g, 2, device="cpu", progress=False)
    assert s.shape == i.shape == (0, 2)
    g[13, 2] = np.nan
    with pytest.raises(MatchLabError, match="gallery row 13 holds NaN"):
        exact_topk(p, g, 1, device="cpu", progress=False, gallery_chunk=5)


def test_identity_topk_is_the_best_image_per_identity():
    g, labels, p, _ = clustered(30, 4, 25, 16, 8, noise=3.0)
    m = identity_topk(p, g, labels, 5, device="cpu", progress=False)
    sims = brute(p, g, len(g))
    full = np.full((len(p), 30), -np.inf)
    np.maximum.at(full, (np.arange(len(p))[:, None], labels[sims[1]]), sims[0])
    order = np.argsort(-full, axis=1, kind="stable")[:, :5]
    assert m.complete.all()
    np.testing.assert_array_equal(m.identities, order)
    np.testing.assert_allclose(m.scores, np.take_along_axis(full, order, 1), atol=1e-5)
    assert (labels[m.images] == m.identities).all()
    # images_k = 2 with 4 images per identity: some probes' top-2 images share one identity
    few = identity_topk(p, g, labels, 2, images_k=2, device="cpu", progress=False)
    assert 0 < (~few.complete).sum() < len(p)
    assert (few.identities[~few.complete, 1] == -1).all() and np.isneginf(few.scores[~few.complete, 1]).all()
    np.testing.assert_array_equal(few.identities[few.complete], m.identities[few.complete, :2])


def test_identities_from_images_skips_holes_and_repeats():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, -np.inf]], np.float32)
    rows = np.array([[4, 1, 3, 0, -1]])
    m = identities_from_images(scores, rows, np.array([0, 1, 0, 2, 1]), 3)
    assert m.identities.tolist() == [[1, 2, 0]] and m.images.tolist() == [[4, 3, 0]] and m.complete.all()
    assert m.scores[0].tolist() == pytest.approx([0.9, 0.7, 0.6])


def test_recall_at_k():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    assert recall_at_k(exact, exact) == 1.0
    assert recall_at_k(np.array([[3, 2, 9], [7, 8, 9]]), exact) == pytest.approx(2 / 6)
    assert recall_at_k(np.array([[2, 1, 3], [4, 0, 0]]), exact, 1) == 0.5
    with pytest.raises(MatchLabError):
        recall_at_k(exact[:1], exact)


def test_faiss_missing_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    with pytest.raises(MatchLabError, match="pip install faiss-cpu"):
        build_index(gaussian(10, 8, 9), "faiss-ivf")
    with pytest.raises(MatchLabError, match="index kind"):
        build_index(gaussian(10, 8, 9), "annoy")


def test_faiss_flat_equals_exact():
    pytest.importorskip("faiss")
    g, p = gaussian(2000, 32, 10), gaussian(100, 32, 11)
    want_s, want_i = exact_topk(p, g, 10, device="cpu", progress=False)
    s, i = build_index(g, "faiss-flat", progress=False).search(p, 10, progress=False)
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_allclose(s, want_s, atol=1e-5)
    _, same_i = build_index(g, "exact", device="cpu").search(p, 10, progress=False)
    np.testing.assert_array_equal(same_i, want_i)


@pytest.mark.parametrize("kind", ["faiss-ivf", "faiss-hnsw"])
def test_approximate_indexes_find_most_exact_neighbours_on_clustered_data(kind):
    pytest.importorskip("faiss")
    g, _, p, _ = clustered(200, 10, 300, 32, 12)
    _, want_i = exact_topk(p, g, 10, device="cpu", progress=False)
    index = build_index(g, kind, progress=False)
    s, i = index.search(p, 10, progress=False)
    assert index.ntotal == 2000 and recall_at_k(i, want_i, 1) >= 0.9 and recall_at_k(i, want_i) >= 0.8
    ok = i >= 0
    direct = np.einsum(
        "pd,pkd->pk",
        p / np.linalg.norm(p, axis=1, keepdims=True),
        (g / np.linalg.norm(g, axis=1, keepdims=True))[np.clip(i, 0, None)],
    )
    np.testing.assert_allclose(s[ok], direct[ok], atol=1e-5)  # scores are the rows' cosines
    assert (np.diff(s, axis=1) <= 0).all()


# --------------------------------------------------------------------------------- identify --top-k


def test_identify_writes_the_top_k_matches_per_probe(tmp_path):
    known, probes = tmp_path / "known", tmp_path / "probes"
    probes.mkdir()
    for i in range(1, 21):
        if i <= 15:
            (known / f"s{i}").mkdir(parents=True)
            for j in (1, 2):
                shutil.copy(ORL / f"s{i}" / f"{j}.pgm", known / f"s{i}" / f"{j}.pgm")
        shutil.copy(ORL / f"s{i}" / "5.pgm", probes / f"s{i}.pgm")
    common = ("identify", DEMO, "--gallery", known, "--probes", probes, "--threshold", "0.5", "--device", "cpu")
    cli(*common, "--out", tmp_path / "plain.csv", cache=tmp_path / "cache")
    cli(*common, "--out", tmp_path / "top.csv", "--top-k", "4", cache=tmp_path / "cache")
    plain, top = pd.read_csv(tmp_path / "plain.csv"), pd.read_csv(tmp_path / "top.csv")
    assert list(plain.columns) == ["image", "identity", "best_match", "score"]  # unchanged without --top-k
    assert list(top.columns) == list(plain.columns) + [f"top{i}_{c}" for i in range(1, 5) for c in ("path", "score")]
    pd.testing.assert_frame_equal(top[plain.columns], plain)
    paths = top[[f"top{i}_path" for i in range(1, 5)]].to_numpy()
    scores = top[[f"top{i}_score" for i in range(1, 5)]].to_numpy()
    assert all((known / p).is_file() for p in paths.ravel()) and all(len(set(row)) == 4 for row in paths)
    assert (np.diff(scores, axis=1) <= 0).all()
    np.testing.assert_allclose(scores[:, 0], top.score, atol=1e-6)  # the best image is the best match
    assert (pd.Series(paths[:, 0]).str.split("/").str[0] == top.best_match).all()
    r = cli(*common, "--index", "faiss-ivf", "--out", tmp_path / "x.csv", cache=tmp_path / "cache", check=False)
    assert r.returncode == 2 and "add --top-k" in r.stderr and not (tmp_path / "x.csv").exists()
    try:
        import faiss  # noqa: F401
    except ImportError:
        return
    # an approximate index changes the top-k lists only: the best match and its score stay exact
    cli(*common, "--out", tmp_path / "hnsw.csv", "--top-k", "4", "--index", "faiss-hnsw", cache=tmp_path / "cache")
    hnsw = pd.read_csv(tmp_path / "hnsw.csv")
    pd.testing.assert_frame_equal(hnsw[plain.columns], plain)
    assert (hnsw.top1_path.str.len() > 0).all()
