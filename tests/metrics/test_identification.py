"""Identification metrics against brute-force loops, hand-computed open-set cases and scikit-learn kNN."""

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from core.errors import MatchLabError
from core.metrics.identification import (
    best_open_set_threshold,
    knn_accuracy,
    knn_predictions,
    neighbour_metrics,
    open_set_report,
    open_set_scores,
    rank_k_accuracy,
    retrieval_metrics,
)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def gallery_set():
    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(12, 16)))
    g_lab = np.repeat(np.arange(0, 24, 2), 3)  # identities 0, 2, ..., 22, three images each
    g = unit(centres[g_lab // 2] + 0.9 * rng.normal(size=(36, 16))).astype(np.float32)
    p_lab = rng.choice(g_lab, size=50)
    p = unit(centres[p_lab // 2] + 0.9 * rng.normal(size=(50, 16))).astype(np.float32)
    return p, g, g_lab, p_lab


def brute_ranks(p, g, g_lab, p_lab):
    ids = np.unique(g_lab)
    sim = p.astype(np.float64) @ g.T.astype(np.float64)
    ranks = []
    for i in range(len(p)):
        best = np.array([sim[i, g_lab == c].max() for c in ids])
        t = int(np.flatnonzero(ids == p_lab[i])[0])
        ranks.append(1 + np.sum(best > best[t]) + np.sum((best == best[t]) & (np.arange(len(ids)) < t)))
    return np.array(ranks)


def test_rank_k_matches_brute_force_any_chunk(gallery_set):
    p, g, g_lab, p_lab = gallery_set
    want = brute_ranks(p, g, g_lab, p_lab)
    for chunk in (7, 1024):
        got = rank_k_accuracy((p, g, g_lab), p_lab, ks=(1, 5), chunk=chunk)
        np.testing.assert_array_equal(got["ranks"], want)
        assert got["rank_1"] == np.mean(want <= 1) and got["rank_5"] == np.mean(want <= 5)
        assert got["n_identities"] == 12
    assert 0 < got["rank_1"] < got["rank_5"] < 1
    # a precomputed similarity matrix gives the same ranks
    sim = torch.from_numpy(p) @ torch.from_numpy(g).T
    np.testing.assert_array_equal(rank_k_accuracy(sim, p_lab, gallery_labels=g_lab)["ranks"], want)


def test_rank_ties_go_to_lower_identity_and_missing_identity_is_error():
    sim = np.array([[0.5, 0.5, 0.1], [0.5, 0.5, 0.1]])
    got = rank_k_accuracy(sim, np.array([0, 1]), ks=(1,))
    np.testing.assert_array_equal(got["ranks"], [1, 2])
    assert got["rank_1"] == 0.5
    with pytest.raises(MatchLabError, match="absent from the gallery"):
        rank_k_accuracy(sim, np.array([0, 7]))


def test_open_set_scores_match_brute_force(gallery_set):
    p, g, g_lab, _ = gallery_set
    ident, score = open_set_scores(torch.from_numpy(p), g, g_lab, chunk=9)
    sim = p.astype(np.float64) @ g.T.astype(np.float64)
    np.testing.assert_array_equal(ident, g_lab[sim.argmax(1)])
    np.testing.assert_allclose(score, sim.max(1), atol=1e-6)


# probe: (best identity, best score, truth); truth -1 = identity not in the gallery
HAND = np.array(
    [
        (1, 0.90, 1),  # hit
        (2, 0.80, 2),  # hit
        (3, 0.70, 4),  # mated, wrong best match: never counts for DIR
        (5, 0.60, 5),  # hit
        (1, 0.85, -1),  # non-mated
        (2, 0.50, -1),
        (3, 0.30, -1),
        (4, 0.20, -1),
    ]
)


def hand():
    return HAND[:, 0].astype(int), HAND[:, 1], HAND[:, 2].astype(int)


def test_open_set_hand_case():
    ident, score, truth = hand()
    rep = open_set_report(ident, score, truth, fpir_levels=(0.1, 0.25, 0.5))
    assert rep["n_mated"] == 4 and rep["n_nonmated"] == 4
    # FPIR <= 0.25 allows one of 4 non-mated probes: the lowest such tau is 0.6 (0.85 accepted);
    # DIR there = hits with score >= 0.6 (0.9, 0.8, 0.6) / 4 mated
    assert rep["dir_at_fpir"]["0.25"] == {
        "dir": 0.75,
        "threshold": 0.6,
        "fpir": 0.25,
        "reachable": True,
        "stable": False,
    }
    # FPIR <= 0.5: tau drops to 0.5 (0.85 and 0.5 accepted), no extra hit
    assert rep["dir_at_fpir"]["0.5"]["threshold"] == 0.5 and rep["dir_at_fpir"]["0.5"]["dir"] == 0.75
    assert rep["dir_at_fpir"]["0.1"]["reachable"] is False and rep["dir_at_fpir"]["0.1"]["dir"] is None
    # best threshold 0.6: right = 3 hits + 3 non-mated rejected; wrong = the mismatch and the 0.85
    assert rep["threshold"] == 0.6 and rep["open_set_accuracy"] == 6 / 8
    assert rep["threshold_source"] == "max open-set accuracy on the given truth"
    assert best_open_set_threshold(ident, score, truth) == (0.6, 0.75)
    assert rep["dir_at_threshold"] == 0.75 and rep["fpir_at_threshold"] == 0.25


@pytest.mark.parametrize(
    "tau,acc,dir_,fpir", [(0.95, 4 / 8, 0.0, 0.0), (0.0, 3 / 8, 0.75, 1.0), (0.75, 5 / 8, 0.5, 0.25)]
)
def test_open_set_given_threshold(tau, acc, dir_, fpir):
    # at 0.75: right = hits .9 and .8 + non-mated .5 .3 .2 rejected; wrong = the mismatch, hit .6
    # rejected as "no match", non-mated .85 accepted
    rep = open_set_report(*hand(), threshold=tau)
    assert rep["threshold_source"] == "given" and rep["threshold"] == tau
    assert rep["open_set_accuracy"] == acc
    assert rep["dir_at_threshold"] == dir_ and rep["fpir_at_threshold"] == fpir


def test_open_set_dir_fpir_match_scan_on_random_data():
    rng = np.random.default_rng(4)
    truth = np.where(rng.random(400) < 0.4, -1, rng.integers(0, 20, 400))
    ident = np.where(rng.random(400) < 0.8, np.abs(truth), rng.integers(0, 20, 400))
    score = np.round(rng.random(400) + 0.3 * (truth >= 0), 2)
    rep = open_set_report(ident, score, truth, fpir_levels=(0.01, 0.1))
    mated, non = truth >= 0, truth < 0
    for key, lv in (("0.01", 0.01), ("0.1", 0.1)):
        best = None
        for tau in np.unique(score)[::-1]:
            fpir = np.sum(non & (score >= tau)) / non.sum()
            dir_ = np.sum(mated & (ident == truth) & (score >= tau)) / mated.sum()
            if fpir <= lv and (best is None or dir_ >= best[0]):
                best = (dir_, tau, fpir)
        row = rep["dir_at_fpir"][key]
        assert (row["dir"], row["threshold"], row["fpir"]) == best
    accs = {tau: np.mean(np.where(score >= tau, ident, -1) == truth) for tau in np.unique(score)}
    assert rep["open_set_accuracy"] == pytest.approx(max(accs.values()), abs=1e-15)


def test_open_set_needs_both_kinds_of_probe():
    with pytest.raises(MatchLabError, match="0 non-mated"):
        open_set_report(np.array([1, 2]), np.array([0.5, 0.6]), np.array([1, 2]))


@pytest.mark.parametrize("k", [1, 4, 5])
@pytest.mark.parametrize("leave_one_out", [True, False])
def test_knn_matches_sklearn_cosine(k, leave_one_out):
    rng = np.random.default_rng(k)
    labels = rng.integers(0, 4, 120) * 3 + 1  # labels 1, 4, 7, 10: not 0..C-1
    emb = rng.normal(size=(120, 8)) + 0.8 * np.eye(8)[labels % 8]
    clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(emb, labels)
    want = clf.predict(None if leave_one_out else emb)
    pred = knn_predictions(emb.astype(np.float32), labels, k=k, leave_one_out=leave_one_out, chunk=17)
    np.testing.assert_array_equal(pred, want)
    acc = knn_accuracy(emb, labels, k=k, leave_one_out=leave_one_out)
    assert acc == np.mean(want == labels)
    if not leave_one_out and k == 1:
        assert acc == 1.0  # each sample is its own nearest neighbour


def brute_retrieval(emb, labels):
    sim = unit(emb) @ unit(emb).T
    p1, rp, mapr = [], [], []
    for i in range(len(emb)):
        r = int(np.sum(labels == labels[i])) - 1
        if r == 0:
            continue
        order = [j for j in np.argsort(-sim[i], kind="stable") if j != i]
        rel = labels[order] == labels[i]
        p1.append(rel[0])
        rp.append(rel[:r].mean())
        prec = np.cumsum(rel[:r]) / np.arange(1, r + 1)
        mapr.append(np.sum(prec * rel[:r]) / r)
    return np.mean(p1), np.mean(rp), np.mean(mapr), len(p1)


def test_retrieval_metrics_match_brute_force():
    rng = np.random.default_rng(3)
    labels = np.r_[rng.integers(0, 6, 90), [50]]  # one lone sample with no other member
    emb = rng.normal(size=(91, 8)) + 0.7 * np.eye(8)[labels % 8]
    got = retrieval_metrics(emb.astype(np.float32), labels)
    p1, rp, mapr, n = brute_retrieval(emb, labels)
    assert got["n_queries_used"] == n == 90
    assert got["precision_at_1"] == pytest.approx(p1, abs=1e-6)
    assert got["r_precision"] == pytest.approx(rp, abs=1e-6)
    assert got["mean_average_precision_at_r"] == pytest.approx(mapr, abs=1e-6)
    with pytest.raises(MatchLabError, match="at least 2 samples"):
        retrieval_metrics(emb[:3], np.array([0, 1, 2]))


@pytest.mark.parametrize("chunk", [7, 256])
def test_neighbour_metrics_is_knn_and_retrieval_from_one_search(chunk):
    rng = np.random.default_rng(5)
    labels = np.r_[rng.integers(0, 7, 120), [50]]  # uneven classes and one lone sample
    emb = (rng.normal(size=(121, 8)) + 0.7 * np.eye(8)[labels % 8]).astype(np.float32)
    knn, got = neighbour_metrics(emb, labels, chunk=chunk)
    assert knn == knn_accuracy(emb, labels, k=1)
    want = retrieval_metrics(emb, labels)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12)
    p1, rp, mapr, n = brute_retrieval(emb, labels)
    assert (got["precision_at_1"], got["r_precision"], got["mean_average_precision_at_r"]) == pytest.approx(
        (p1, rp, mapr), abs=1e-12
    )
    assert got["n_queries_used"] == n == 120
    with pytest.raises(MatchLabError, match="at least 2 samples"):
        neighbour_metrics(emb[:3], np.array([0, 1, 2]))


# ----------------------------------------------------------------- fast paths (issue 17) and templates
def plain_top1(p, g):
    """The plain path the bench compares with: normalised matmul + top-k, first maximum on ties."""
    sim = torch.from_numpy(p) @ torch.from_numpy(g).T
    return sim.topk(1, dim=1).indices[:, 0].numpy(), sim


@pytest.fixture(scope="module")
def shuffled_uneven():
    """Unsorted, uneven identities (1 to 5 images each), plus exact duplicate images across identities."""
    rng = np.random.default_rng(11)
    counts = rng.integers(1, 6, size=30)
    g_lab = rng.permutation(np.repeat(rng.permutation(1000)[:30] * 3, counts))
    g = unit(rng.normal(size=(g_lab.shape[0], 24))).astype(np.float32)
    g[5] = g[17]  # two columns tie exactly; the lower identity must win among them
    p = unit(g[rng.integers(0, g.shape[0], 80)] + 0.8 * rng.normal(size=(80, 24))).astype(np.float32)
    p[0] = g[17]
    return p, g, g_lab


@pytest.mark.parametrize("chunk", [7, 256])
def test_one_image_per_identity_skips_the_reduction_and_equals_plain_top1(chunk):
    rng = np.random.default_rng(2)
    g = unit(rng.normal(size=(500, 32))).astype(np.float32)
    g_lab = rng.permutation(500) + 10  # one image each, columns not in identity order
    p = unit(g[rng.integers(0, 500, 60)] + rng.normal(size=(60, 32))).astype(np.float32)
    top1, sim = plain_top1(p, g)
    ident, score = open_set_scores(p, g, g_lab, chunk=chunk)
    np.testing.assert_array_equal(ident, g_lab[top1])
    # a different probe chunk may take another BLAS kernel: scores agree to float32 rounding (measured 1.2e-7)
    np.testing.assert_allclose(score, sim.max(1).values.numpy(), rtol=0, atol=1e-6)
    got = rank_k_accuracy((p, g, g_lab), g_lab[top1], ks=(1,), chunk=chunk)
    assert got["rank_1"] == 1.0  # the plain top-1's identity is rank 1 for every probe
    np.testing.assert_array_equal(got["ranks"], brute_ranks(p, g, g_lab, g_lab[top1]))


@pytest.mark.parametrize("chunk", [5, 1024])
def test_segment_max_over_sorted_columns_matches_brute_force(shuffled_uneven, chunk):
    p, g, g_lab = shuffled_uneven
    p_lab = g_lab[np.random.default_rng(4).integers(0, g_lab.shape[0], p.shape[0])]
    np.testing.assert_array_equal(
        rank_k_accuracy((p, g, g_lab), p_lab, ks=(1, 5), chunk=chunk)["ranks"], brute_ranks(p, g, g_lab, p_lab)
    )
    ident, score = open_set_scores(p, g, g_lab, chunk=chunk)
    sim = torch.from_numpy(p) @ torch.from_numpy(g).T
    best = np.array([[sim[i, g_lab == c].max().item() for c in np.unique(g_lab)] for i in range(len(p))])
    np.testing.assert_array_equal(ident, np.unique(g_lab)[best.argmax(1)])  # first max: lower identity
    np.testing.assert_allclose(score, best.max(1), rtol=0, atol=1e-6)
    assert ident[0] == min(g_lab[5], g_lab[17])


def test_host_ranks_of_a_poor_model_listed_in_small_batches(shuffled_uneven, monkeypatch):
    """Probes unrelated to the gallery rank deep (many identities above the true one, exact duplicate
    columns tying across identities); listing a few (row, column) entries at a time changes nothing."""
    import core.metrics.identification as im

    _, g, g_lab = shuffled_uneven
    rng = np.random.default_rng(9)
    p = unit(rng.normal(size=(40, g.shape[1]))).astype(np.float32)
    p[:3] = g[[5, 17, 0]]  # exact ties between identities at the top
    p_lab = g_lab[rng.integers(0, g_lab.shape[0], p.shape[0])]
    p_lab[:2] = g_lab[[17, 5]]
    want = brute_ranks(p, g, g_lab, p_lab)
    assert want.max() > 10  # deep ranks: the listing path, not only rank 1
    for entries in (im.RANK_ENTRIES, 7):
        monkeypatch.setattr(im, "RANK_ENTRIES", entries)
        np.testing.assert_array_equal(rank_k_accuracy((p, g, g_lab), p_lab, chunk=16)["ranks"], want)


def test_bf16_and_non_unit_inputs_give_the_normalised_answer(shuffled_uneven):
    p, g, g_lab = shuffled_uneven
    ident, _ = open_set_scores(p, g, g_lab)
    ident_scaled, score_scaled = open_set_scores(3 * p, 0.5 * g, g_lab)
    np.testing.assert_array_equal(ident_scaled, ident)
    assert np.all(np.abs(score_scaled) <= 1 + 1e-6)
    with pytest.raises(MatchLabError, match="NaN or infinite"):
        open_set_scores(np.full_like(p, np.nan), g, g_lab)
    # bf16 embeddings off CUDA are computed in float32: the answer of their float32 values
    pb, gb = torch.from_numpy(p).bfloat16(), torch.from_numpy(g).bfloat16()
    ident_bf16, _ = open_set_scores(pb, gb, g_lab)
    np.testing.assert_array_equal(ident_bf16, open_set_scores(pb.float(), gb.float(), g_lab)[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_paths_match_the_host(shuffled_uneven):
    p, g, g_lab = shuffled_uneven
    p_lab = g_lab[np.random.default_rng(4).integers(0, g_lab.shape[0], p.shape[0])]
    pc, gc = torch.from_numpy(p).cuda(), torch.from_numpy(g).cuda()
    np.testing.assert_array_equal(rank_k_accuracy((pc, gc, g_lab), p_lab)["ranks"], brute_ranks(p, g, g_lab, p_lab))
    np.testing.assert_array_equal(open_set_scores(pc, gc, g_lab)[0], open_set_scores(p, g, g_lab)[0])
    # a bf16 gallery stays bf16 on CUDA: the best identity agrees with fp32 except at near-ties (2e-3 apart)
    ident, score = open_set_scores(pc.bfloat16(), gc.bfloat16(), g_lab)
    want, want_score = open_set_scores(p, g, g_lab)
    assert np.mean(ident == want) >= 0.95 and np.abs(score - want_score).max() < 2e-2


def test_mean_templates_by_hand_and_as_a_gallery(shuffled_uneven):
    from core.metrics.identification import identity_templates

    p, g, g_lab = shuffled_uneven
    templates, ids = identity_templates(g, g_lab)
    for j, c in enumerate(ids):
        m = g[g_lab == c].astype(np.float64).mean(0)
        np.testing.assert_allclose(templates[j], m / np.linalg.norm(m), atol=1e-6)
    ident, score = open_set_scores(p, templates, ids)
    want = (p.astype(np.float64) @ templates.T.astype(np.float64)).argmax(1)
    assert np.mean(ident == ids[want]) == 1.0
