"""Verification metrics against scikit-learn and brute-force loops over thresholds."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import rankdata
from sklearn.metrics import det_curve, roc_auc_score, roc_curve

from core.errors import MatchLabError
from core.metrics.verification import (
    StreamingRoc,
    auc,
    best_accuracy_threshold,
    counts_at_threshold,
    det_points,
    eer,
    hardest_pairs,
    kfold_accuracy,
    roc_points,
    score_histograms,
    sweep_table,
    tar_at_far,
    threshold_for_far,
    verification_report,
)


def make_pairs(n=3000, seed=0, decimals=None, genuine_share=0.3):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < genuine_share).astype(np.int64)
    s = (rng.normal(size=n) * 0.3 + 0.6 * y).astype(np.float32)
    if decimals is not None:
        s = np.round(s, decimals).astype(np.float32)
    return s, y


DATASETS = {
    "random": make_pairs(),
    "tied": make_pairs(decimals=1),
    "tiny": (np.array([0.3, 0.7], np.float32), np.array([1, 0])),
}


def brute_points(s, y):
    """(thresholds desc with +inf first, far, tar) by counting at every distinct score."""
    thr = np.concatenate([[np.inf], np.unique(s)[::-1].astype(np.float64)])
    far = np.array([np.sum((s >= t) & (y == 0)) for t in thr]) / np.sum(y == 0)
    tar = np.array([np.sum((s >= t) & (y == 1)) for t in thr]) / np.sum(y == 1)
    return thr, far, tar


@pytest.fixture(params=list(DATASETS))
def data(request):
    return DATASETS[request.param]


def test_roc_points_match_sklearn(data):
    s, y = data
    p = roc_points(s, y)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(p.far, fpr, rtol=0, atol=1e-15)
    np.testing.assert_allclose(p.tar, tpr, rtol=0, atol=1e-15)
    assert p.thresholds[0] == np.inf
    np.testing.assert_array_equal(p.thresholds[1:], thr[1:].astype(np.float64))
    assert np.all(p.tp + p.fn == y.sum()) and np.all(p.fp + p.tn == (y == 0).sum())
    assert p.n_genuine == y.sum() and p.n_impostor == (y == 0).sum()


def test_auc_matches_sklearn_including_ties(data):
    s, y = data
    assert auc(roc_points(s, y)) == pytest.approx(roc_auc_score(y, s), abs=1e-14)


def brute_eer(s, y):
    thr, far, tar = brute_points(s, y)
    frr = 1 - tar
    for i in range(1, len(thr)):
        if far[i] - frr[i] >= 0:
            d0, d1 = far[i - 1] - frr[i - 1], far[i] - frr[i]
            if d1 == 0:
                return far[i], thr[i]
            t = -d0 / (d1 - d0)
            lo_thr = thr[i] if np.isinf(thr[i - 1]) else thr[i - 1] + t * (thr[i] - thr[i - 1])
            return far[i - 1] + t * (far[i] - far[i - 1]), lo_thr
    raise AssertionError("FAR - FRR never changes sign")


def test_eer_matches_brute_force_scan(data):
    s, y = data
    rate, thr = eer(roc_points(s, y))
    want_rate, want_thr = brute_eer(s, y)
    assert rate == pytest.approx(want_rate, abs=1e-12)
    assert thr == pytest.approx(want_thr, abs=1e-7)


def test_eer_lies_between_neighbouring_rates():
    s, y = DATASETS["random"]
    rate, thr = eer(roc_points(s, y))
    c_above = counts_at_threshold(roc_points(s, y), thr + 1e-6)
    c_below = counts_at_threshold(roc_points(s, y), thr - 0.05)
    # FAR rises and FRR falls as tau drops: the EER sits between them on both sides
    assert c_above["far"] <= rate <= c_above["frr"] + 1e-12
    assert c_below["frr"] <= rate <= c_below["far"]
    assert 0.1 < rate < 0.3


def test_tiny_sets_by_hand():
    perfect = roc_points(np.array([0.9, 0.1]), np.array([1, 0]))
    assert auc(perfect) == 1.0 and eer(perfect) == (0.0, 0.9)
    worst = roc_points(np.array([0.1, 0.9]), np.array([1, 0]))
    assert auc(worst) == 0.0 and eer(worst) == (1.0, 0.9)
    tied = roc_points(np.array([0.5, 0.5]), np.array([1, 0]))
    # one shared score: the segment from (0,0) to (1,1) -> AUC 0.5, EER half way
    assert auc(tied) == 0.5 and eer(tied) == (0.5, 0.5)


def brute_tar_at_far(s, y, level):
    thr, far, tar = brute_points(s, y)
    ok = np.flatnonzero(far <= level)
    best = ok[np.argmax(tar[ok])]
    best = ok[tar[ok] == tar[best]][-1]  # lowest threshold among the max-TAR ones
    return tar[best], thr[best], far[best]


def test_tar_at_far_matches_brute_force(data):
    s, y = data
    levels = (0.5, 0.1, 0.01, 0.001)
    got = tar_at_far(roc_points(s, y), levels)
    n_imp = int((y == 0).sum())
    for lv in levels:
        row = got[f"{lv:g}"]
        if lv < 1 / n_imp:
            assert row == {"tar": None, "threshold": None, "far": None, "reachable": False, "stable": False}
            continue
        tar, thr, far = brute_tar_at_far(s, y, lv)
        assert row["reachable"] and row["tar"] == tar and row["threshold"] == thr and row["far"] == far
        assert row["far"] <= lv
        assert row["stable"] == (n_imp >= 30 / lv)
        assert threshold_for_far(roc_points(s, y), lv) == thr


def test_tar_at_far_keys_reachability_and_stability():
    s, y = make_pairs(n=1000, genuine_share=0.5, seed=3)
    n_imp = int((y == 0).sum())
    got = tar_at_far(roc_points(s, y))
    assert list(got) == ["0.1", "0.01", "0.001", "0.0001", "1e-05", "1e-06"]
    assert [got[k]["reachable"] for k in got] == [True, True, False, False, False, False]
    assert got["0.1"]["stable"] == (n_imp >= 300) and got["0.01"]["stable"] is False
    assert got["0.01"]["far"] <= 0.01 and got["0.01"]["tar"] > 0


def test_top_score_tie_gives_infinite_threshold():
    # three impostors share the top score: no finite threshold keeps FAR <= 0.1
    s = np.array([0.9, 0.9, 0.9, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.0, 0.8])
    y = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
    row = tar_at_far(roc_points(s, y), (0.1,))["0.1"]
    assert row["reachable"] and row["tar"] == 0.0 and row["far"] == 0.0 and row["threshold"] == math.inf


@pytest.mark.parametrize("labels,kind", [(np.ones(5), "0 impostor"), (np.zeros(5), "0 genuine")])
def test_single_class_input_is_an_error(labels, kind):
    with pytest.raises(MatchLabError, match=f"both genuine and impostor pairs: got .*{kind}"):
        roc_points(np.linspace(0, 1, 5), labels)
    with pytest.raises(MatchLabError):
        verification_report(torch.linspace(0, 1, 5), torch.as_tensor(labels))


def test_bad_inputs_are_errors():
    with pytest.raises(MatchLabError, match="NaN"):
        roc_points(np.array([0.1, np.nan, 0.3]), np.array([1, 0, 1]))
    with pytest.raises(MatchLabError, match="1 \\(genuine\\) or 0"):
        roc_points(np.array([0.1, 0.2, 0.3]), np.array([1, 2, 0]))
    with pytest.raises(MatchLabError, match="equal length"):
        roc_points(np.array([0.1, 0.2]), np.array([1, 0, 1]))
    with pytest.raises(MatchLabError, match="0 scores"):
        roc_points(np.array([]), np.array([]))


def test_det_points_match_sklearn(data):
    s, y = data
    d = det_points(roc_points(s, y))
    fpr, fnr, thr = det_curve(y, s)
    pos = {t: i for i, t in enumerate(d.thresholds)}
    idx = [pos[float(t)] for t in thr]
    np.testing.assert_allclose(d.far[idx], fpr, atol=1e-15)
    np.testing.assert_allclose(d.frr[idx], fnr, atol=1e-15)
    assert np.all(np.isfinite(d.far_probit)) and np.all(np.isfinite(d.frr_probit))
    inner = (d.far > 0) & (d.far < 1)
    np.testing.assert_allclose(d.far_probit[inner], norm_ppf(d.far[inner]))


def norm_ppf(p):
    from scipy.stats import norm

    return norm.ppf(p)


def brute_counts(s, y, tau):
    acc = s >= tau
    tp, fp = int(np.sum(acc & (y == 1))), int(np.sum(acc & (y == 0)))
    return tp, fp, int(np.sum(y == 0)) - fp, int(np.sum(y == 1)) - tp


def test_counts_at_threshold_exact_at_ties_and_between():
    s, y = DATASETS["tied"]
    p = roc_points(s, y)
    for tau in [np.inf, 10.0, float(np.float32(0.5)), 0.55, float(np.float32(0.1)), -0.03, -10.0]:
        got = counts_at_threshold(p, tau)
        tp, fp, tn, fn = brute_counts(s, y, tau)
        assert (got["tp"], got["fp"], got["tn"], got["fn"]) == (tp, fp, tn, fn)
        assert got["accuracy"] == (tp + tn) / len(s) and got["tar"] == tp / (tp + fn)
        assert got["far"] == fp / (fp + tn) and got["frr"] == fn / (tp + fn)


def test_sweep_table_full_and_resampled(data):
    s, y = data
    p = roc_points(s, y)
    full = sweep_table(p)
    assert list(full.columns) == ["threshold", "far", "frr", "tar", "accuracy", "tp", "fp", "tn", "fn"]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(full["far"], fpr, atol=1e-15)
    np.testing.assert_allclose(full["tar"] + full["frr"], 1.0)
    slider = sweep_table(p, n=101)
    assert len(slider) == 101
    assert slider["threshold"].iloc[0] == pytest.approx(float(s.min()))
    assert slider["threshold"].iloc[-1] == pytest.approx(float(s.max()))
    for _, row in slider.iloc[::7].iterrows():
        assert (row["tp"], row["fp"], row["tn"], row["fn"]) == brute_counts(s, y, row["threshold"])
    assert slider["far"].iloc[0] == 1.0 and slider["tar"].iloc[0] == 1.0


def test_sweep_table_spans_the_finite_scores_when_some_are_infinite():
    s = np.array([0.1, 0.5, np.inf, -np.inf, 0.3, 0.9])
    y = np.array([0, 1, 1, 0, 1, 1])
    slider = sweep_table(roc_points(s, y), n=5)
    assert slider["threshold"].tolist() == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9])
    for _, row in slider.iterrows():
        assert (row["tp"], row["fp"], row["tn"], row["fn"]) == brute_counts(s, y, row["threshold"])
    with pytest.raises(MatchLabError, match="at least one finite score"):
        sweep_table(roc_points(np.array([np.inf, -np.inf]), np.array([1, 0])), n=5)


def test_best_accuracy_threshold_matches_scan(data):
    s, y = data
    thr, acc = best_accuracy_threshold(roc_points(s, y))
    cand = np.concatenate([[np.inf], np.unique(s).astype(np.float64)])
    accs = [np.mean((s >= t) == (y == 1)) for t in cand]
    assert acc == pytest.approx(max(accs), abs=1e-15)
    assert np.mean((s >= thr) == (y == 1)) == acc


def test_kfold_hand_case():
    # fold 0: genuine .9 .8, impostor .1 .6 ; fold 1: genuine .7 .4, impostor .3 .5
    s = np.array([0.9, 0.8, 0.1, 0.6, 0.7, 0.4, 0.3, 0.5])
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    f = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    got = kfold_accuracy(s, y, f)
    # fold 0 held out: fold 1 alone is best split at 0.7 (first of two ties, highest) -> fold 0 all right
    # fold 1 held out: fold 0 is best split at 0.8 -> genuine .7 and .4 rejected: 2 of 4
    assert got["fold_thresholds"] == [0.7, 0.8]
    assert got["fold_accuracies"] == [1.0, 0.5]
    assert got["mean"] == 0.75 and got["std"] == 0.25 and got["k"] == 2


def brute_kfold(s, y, f):
    accs = []
    for fold in np.unique(f):
        tr, te = f != fold, f == fold
        cand = np.concatenate([[np.inf], np.unique(s[tr])[::-1]])
        train_acc = [np.mean((s[tr] >= t) == (y[tr] == 1)) for t in cand]
        t = cand[int(np.argmax(train_acc))]
        accs.append(np.mean((s[te] >= t) == (y[te] == 1)))
    return accs


def test_kfold_matches_brute_force_and_seeded_folds():
    s, y = make_pairs(n=600, seed=5, decimals=2)
    f = np.repeat(np.arange(10), 60)
    got = kfold_accuracy(s, y, f)
    np.testing.assert_allclose(got["fold_accuracies"], brute_kfold(s, y, f), atol=1e-15)
    auto = kfold_accuracy(s, y, np.full(600, -1))
    assert auto == kfold_accuracy(s, y, None) and auto["k"] == 10
    assert max(auto["fold_sizes"]) - min(auto["fold_sizes"]) <= 1
    assert kfold_accuracy(s, y, None, seed=1)["fold_accuracies"] != auto["fold_accuracies"]
    with pytest.raises(MatchLabError, match="all -1"):
        kfold_accuracy(s, y, np.r_[np.full(300, -1), np.zeros(300)])


def test_score_histograms_match_numpy(data):
    s, y = data
    h = score_histograms(s, y, bins=17)
    edges = np.histogram_bin_edges(s.astype(np.float64), bins=17)  # float64 edges for any input
    np.testing.assert_allclose(h["edges"], edges)
    np.testing.assert_array_equal(h["genuine"], np.histogram(s[y == 1], bins=h["edges"])[0])
    np.testing.assert_array_equal(h["impostor"], np.histogram(s[y == 0], bins=h["edges"])[0])
    r = score_histograms(s, y, bins=8, range=(0.0, 0.5))
    np.testing.assert_array_equal(r["genuine"], np.histogram(s[y == 1], bins=8, range=(0, 0.5))[0])


def test_hardest_pairs_by_sorting():
    s, y = DATASETS["tied"]
    got = hardest_pairs(s, y, k=15)
    imp, gen = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    want_fa = sorted(imp, key=lambda i: (-s[i], i))[:15]
    want_fr = sorted(gen, key=lambda i: (s[i], i))[:15]
    np.testing.assert_array_equal(got["false_accepts"], want_fa)
    np.testing.assert_array_equal(got["false_rejects"], want_fr)
    np.testing.assert_allclose(got["false_accept_scores"], s[want_fa])


def test_numpy_and_torch_paths_give_identical_numbers(data):
    s, y = data
    ts, ty = torch.from_numpy(s), torch.from_numpy(y)
    assert verification_report(s, y, k=2) == verification_report(ts, ty, k=2)
    pn, pt = roc_points(s, y), roc_points(ts, y)
    for name in ("thresholds", "tp", "fp", "tn", "fn", "far", "tar"):
        np.testing.assert_array_equal(getattr(pn, name), getattr(pt, name))
    assert sweep_table(pn, n=11).equals(sweep_table(pt, n=11))
    for a, b in zip(hardest_pairs(s, y, 5).values(), hardest_pairs(ts, ty, 5).values()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(score_histograms(s, y).values(), score_histograms(ts, ty).values()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_path_matches_numpy():
    s, y = make_pairs(n=200_000, decimals=3)
    gpu = verification_report(torch.from_numpy(s).cuda(), torch.from_numpy(y).cuda())
    assert gpu == verification_report(s, y)


def test_streaming_roc_agrees_with_exact_within_bin_resolution():
    rng = np.random.default_rng(7)
    y = (rng.random(40_000) < 0.2).astype(np.int64)
    s = np.tanh(rng.normal(size=y.shape[0]) * 0.5 + 0.8 * y).astype(np.float32)
    bins = 2**12
    stream, stream_t = StreamingRoc(bins=bins), StreamingRoc(bins=bins)
    for block in np.array_split(np.arange(len(s)), 7):
        stream.update(s[block], y[block])
        stream_t.update(torch.from_numpy(s[block]), torch.from_numpy(y[block]))
    sp, exact = stream.points(), roc_points(s, y)
    # operating points sit on bin edges, where the histogram counts are exact
    got = counts_at_threshold(exact, sp.thresholds[1:])
    np.testing.assert_array_equal(sp.tp[1:], got["tp"])
    np.testing.assert_array_equal(sp.fp[1:], got["fp"])
    # AUC can only differ on genuine/impostor pairs sharing a bin (counted half by the histogram)
    g_bins, i_bins = stream.genuine, stream.impostor
    same_bin = float(np.sum(g_bins * i_bins)) / (2 * sp.n_genuine * sp.n_impostor)
    assert abs(auc(sp) - auc(exact)) <= same_bin + 1e-12 and same_bin < 1e-3
    width = 2 / bins
    assert abs(eer(sp)[1] - eer(exact)[1]) <= 2 * width
    assert abs(eer(sp)[0] - eer(exact)[0]) < 2e-3
    for key, row in tar_at_far(sp, (0.1, 0.01)).items():
        ex = tar_at_far(exact, (0.1, 0.01))[key]
        assert row["far"] <= float(key) and abs(row["tar"] - ex["tar"]) < 5e-3
    assert verification_report_like(stream_t.points()) == verification_report_like(sp)
    assert stream.n_out_of_range == 0


def verification_report_like(points):
    return auc(points), eer(points), tar_at_far(points), best_accuracy_threshold(points)


def test_streaming_roc_clamps_out_of_range_and_needs_both_classes():
    st = StreamingRoc(bins=4, range=(0.0, 1.0))
    st.update(np.array([-0.5, 0.1, 0.6, 1.0, 2.0]), np.array([0, 0, 1, 1, 1]))
    assert st.n_out_of_range == 2
    np.testing.assert_array_equal(st.genuine, [0, 0, 1, 2]) and np.testing.assert_array_equal(st.impostor, [2, 0, 0, 0])
    assert auc(st.points()) == 1.0
    empty = StreamingRoc()
    empty.update(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(MatchLabError, match="0 impostor"):
        empty.points()


def test_verification_report_keys_and_small_sample_warnings():
    s, y = make_pairs(n=200, genuine_share=0.1, seed=2)
    rep = verification_report(s, y, far_levels=(0.1, 0.001))
    assert {
        "auc",
        "eer",
        "eer_threshold",
        "tar_at_far",
        "kfold_accuracy_mean",
        "kfold_accuracy_std",
        "kfold",
        "n_genuine",
        "n_impostor",
        "best_accuracy",
        "best_accuracy_threshold",
        "small_sample",
    } <= set(rep)
    assert rep["n_genuine"] == y.sum() < 30
    warn = " | ".join(rep["small_sample"])
    assert "genuine pairs" in warn and "TAR@FAR=0.001 unreachable" in warn and "TAR@FAR=0.1 rests" in warn
    assert "impostor pairs (<" not in warn
    assert rep["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-14)
    assert rep["tar_at_far"]["0.001"]["tar"] is None


def test_report_on_too_few_pairs_for_folds_keeps_other_numbers():
    rep = verification_report(np.array([0.3, 0.7]), np.array([1, 0]))
    assert rep["auc"] == 0.0 and rep["eer"] == 1.0
    assert rep["kfold"] is None and rep["kfold_accuracy_mean"] is None
    assert any("k-fold accuracy not computed" in w for w in rep["small_sample"])


def _edge_sets():
    rng = np.random.default_rng(3)
    y = (rng.random(4000) < 0.4).astype(np.int64)
    wide = np.concatenate([[np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30], rng.normal(size=200)]).astype(np.float32)
    return {
        "random": make_pairs(n=5000, seed=1),
        "tied": make_pairs(n=5000, seed=2, decimals=1),
        "all_equal": (np.full(50, 0.25, np.float32), np.arange(50) % 3 == 0),
        "signed_zero_and_inf": (wide[rng.integers(0, wide.shape[0], 4000)], y),
        "one_genuine_on_top": (np.linspace(1, 0, 300, dtype=np.float32), np.arange(300) == 0),
    }


@pytest.mark.parametrize("name", list(_edge_sets()))
def test_sorted_key_points_answer_like_their_own_arrays(name):
    """Host float32 points answer AUC, EER, TAR@FAR, best accuracy and threshold counts from the sorted
    keys without per-point arrays; the same object's materialised arrays (checked against scikit-learn
    above) must give exactly the same numbers."""
    from core.metrics.verification import RocPoints

    s, y = _edge_sets()[name]
    keyed = roc_points(s, y)
    assert keyed.keyed is not None
    dense = RocPoints(keyed.thresholds, keyed.tp, keyed.fp, keyed.n_genuine, keyed.n_impostor)
    assert len(keyed) == len(dense) == len(np.unique(s + np.float32(0))) + 1
    # ranks keep the order and ties (-0.0 == 0.0) of scores scikit-learn refuses (+-inf)
    assert auc(keyed) == auc(dense) == pytest.approx(roc_auc_score(y, rankdata(s)), abs=1e-14)
    assert eer(keyed) == eer(dense)
    levels = (0.0, 1e-9, 1e-3, 0.01, 0.3, 0.5, 1.0, 2.0)
    assert tar_at_far(keyed, levels) == tar_at_far(dense, levels)
    assert best_accuracy_threshold(keyed) == best_accuracy_threshold(dense)
    uniq = np.unique(s).astype(np.float64)
    taus = np.concatenate(
        [[np.inf, -np.inf, 1e300, -1e300, 0.0, -0.0, 3.4e38, -3.4e38], uniq, np.nextafter(uniq, 2.0), uniq - 1e-12]
    )
    got, want = counts_at_threshold(keyed, taus), counts_at_threshold(dense, taus)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    assert counts_at_threshold(keyed, 0.1) == counts_at_threshold(dense, 0.1)
    idx = np.arange(len(dense))
    for k, v in dense.at(idx).items():
        np.testing.assert_array_equal(keyed.at(idx)[k], v)
    if np.isfinite(s).all():  # an evenly spaced sweep needs finite ends
        assert sweep_table(keyed, n=51).equals(sweep_table(dense, n=51))
