"""Calibration (Cllr, minCllr, ECE, cross-fitting), the minimum-cost threshold and per-group rates, each
against a direct implementation: formula loops, a hand-written PAV, brute force and pandas group-bys."""

import math

import numpy as np
import pandas as pd
import pytest

from core.errors import MatchLabError
from core.metrics import calibration as cal
from core.metrics import costs
from core.metrics import groups as grp
from core.metrics import verification as vm


def scores(seed=0, n=600, ties=False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    s = rng.normal(size=n) + 1.2 * y
    return (np.round(s, 1) if ties else s), y


def direct_cllr(lr, y):
    gen = [math.log2(1 + 1 / v) for v, t in zip(lr, y) if t == 1]
    imp = [math.log2(1 + v) for v, t in zip(lr, y) if t == 0]
    return 0.5 * (sum(gen) / len(gen) + sum(imp) / len(imp))


def pav(s, y):
    """Pool adjacent violators on scores sorted ascending, equal scores pooled first."""
    order = np.argsort(s, kind="stable")
    xs, ys = s[order], y[order].astype(float)
    blocks = []  # [sum, count, first index, last index]
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[i]:
            j += 1
        blocks.append([ys[i : j + 1].sum(), j - i + 1, i, j])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            b = blocks.pop()
            blocks[-1] = [blocks[-1][0] + b[0], blocks[-1][1] + b[1], blocks[-1][2], b[3]]
        i = j + 1
    fitted = np.empty(len(xs))
    for total, count, a, b in blocks:
        fitted[a : b + 1] = total / count
    out = np.empty(len(xs))
    out[order] = fitted
    return out


@pytest.mark.parametrize("ties", [False, True])
def test_cllr_and_min_cllr_equal_direct_formulas(ties):
    s, y = scores(ties=ties)
    p = 1 / (1 + np.exp(-(1.3 * s - 1.0)))
    prior = y.mean()
    lr = (p / (1 - p)) / (prior / (1 - prior))
    assert cal.cllr(cal.log_lr(p, prior), y) == pytest.approx(direct_cllr(lr, y), rel=1e-12)
    q = pav(s, y)  # direct PAV: LR 0 / inf only on one-kind blocks, whose terms are 0
    lr_pav = (q / np.where(q < 1, 1 - q, 1)) / (prior / (1 - prior))
    terms = [
        0.0
        if (t == 1 and v == math.inf) or (t == 0 and v == 0)
        else (math.log2(1 + 1 / v) if t == 1 else math.log2(1 + v))
        for v, t in zip(np.where(q == 1, math.inf, lr_pav), y)
    ]
    gen = np.mean([x for x, t in zip(terms, y) if t == 1])
    imp = np.mean([x for x, t in zip(terms, y) if t == 0])
    assert cal.min_cllr(s, y) == pytest.approx(0.5 * (gen + imp), rel=1e-9)
    assert cal.min_cllr(s, y) <= cal.cllr(cal.log_lr(p, prior), y)


def test_cross_fitting_never_uses_the_reported_fold():
    s, y = scores(1)
    folds = np.arange(len(s)) % 5
    p = cal.cross_fitted(s, y, folds, "isotonic")
    y2 = y.copy()
    y2[folds == 0] = 1 - y2[folds == 0]  # change fold 0's labels: its own predictions must not move
    p2 = cal.cross_fitted(s, y2, folds, "isotonic")
    assert np.array_equal(p[folds == 0], p2[folds == 0]) and not np.array_equal(p[folds == 1], p2[folds == 1])


def test_report_ece_and_map():
    s, y = scores(2)
    rep = cal.calibration_report(s, y, method="platt")
    rel = rep["methods"]["platt"]["reliability"]
    direct = sum(c * abs(o - q) for c, o, q in zip(rel["count"], rel["observed"], rel["predicted"])) / len(s)
    assert rep["ece"] == pytest.approx(direct) and sum(rel["count"]) == len(s)
    assert rep["min_cllr"] <= rep["cllr"] < 1.0  # informative scores beat the 1-bit uninformative system
    d_lo, d_hi = cal.describe(rep["map"], -2.0), cal.describe(rep["map"], 3.0)
    assert d_lo["p_same"] < 0.5 < d_hi["p_same"] and d_lo["lr"] < 1 < d_hi["lr"]


@pytest.mark.parametrize("prior,cfa,cfr", [(0.5, 1, 1), (0.01, 1, 10), (0.9, 5, 1)])
def test_min_cost_threshold_equals_brute_force(prior, cfa, cfr):
    s, y = scores(3, ties=True)
    got = costs.min_cost_threshold(vm.roc_points(s, y), prior, cfa, cfr)
    best = None
    for t in [math.inf] + sorted(set(s.tolist()), reverse=True):  # every distinct decision, highest first
        far, frr = np.mean(s[y == 0] >= t), np.mean(s[y == 1] < t)
        c = cfr * prior * frr + cfa * (1 - prior) * far
        if best is None or c < best[0] - 1e-15:
            best = (c, t)
    assert got["dcf"] == pytest.approx(best[0], abs=1e-12) and got["threshold"] == best[1]
    assert got["dcf_norm"] == pytest.approx(best[0] / min(cfr * prior, cfa * (1 - prior)))


@pytest.mark.parametrize(
    "args,match",
    [((0.0, 1, 1), "--prior"), ((1.0, 1, 1), "--prior"), ((0.5, 0, 1), "--cost-fa"), ((0.5, 1, -2), "--cost-fr")],
)
def test_bad_costs_are_one_line_errors(args, match):
    with pytest.raises(MatchLabError, match=match) as e:
        costs.check_costs(*args)
    assert "\n" not in str(e.value)


def test_group_rates_equal_pandas_groupbys():
    rng = np.random.default_rng(4)
    n_img, n = 120, 4000
    person = rng.integers(0, 30, n_img)
    attr = np.array(["a", "b", "c"])[person % 3]  # one attribute value per person
    ia, ib = rng.integers(0, n_img, n), rng.integers(0, n_img, n)
    y = (person[ia] == person[ib]).astype(int)
    s = rng.normal(size=n) + 2 * y
    tau = 0.8
    rep = grp.group_report(s, y, person[ia], person[ib], attr[ia], attr[ib], tau, n_boot=50)
    df = pd.DataFrame({"ga": attr[ia], "gb": attr[ib], "y": y, "accept": s >= tau})
    same = df[df.ga == df.gb]
    fnmr = same[same.y == 1].groupby("ga")["accept"].apply(lambda a: 1 - a.mean())
    fmr = same[same.y == 0].groupby("ga")["accept"].mean()
    for row in rep["groups"]:
        assert row["fnmr"] == pytest.approx(fnmr[row["group"]]) and row["fmr"] == pytest.approx(fmr[row["group"]])
        assert row["fmr_ci95"][0] <= row["fmr"] <= row["fmr_ci95"][1]
    imp = df[df.y == 0].assign(lo=lambda d: np.minimum(d.ga, d.gb), hi=lambda d: np.maximum(d.ga, d.gb))
    cross = imp.groupby(["lo", "hi"])["accept"].mean()
    names = rep["cross_fmr"]["groups"]
    for (lo, hi), v in cross.items():
        i, j = names.index(lo), names.index(hi)
        assert rep["cross_fmr"]["rate"][i][j] == pytest.approx(v) == rep["cross_fmr"]["rate"][j][i]
    assert rep["fnmr_ratio"] == pytest.approx(fnmr.max() / fnmr.min())
    assert rep["fdr"] == pytest.approx(1 - 0.5 * (fmr.max() - fmr.min()) - 0.5 * (fnmr.max() - fnmr.min()))


def test_small_groups_are_flagged():
    s, y = scores(5, n=200)
    g = np.where(np.arange(200) < 190, "big", "tiny").astype(object)
    rep = grp.group_report(s, y, np.arange(200), np.arange(200), g, g, 0.5, n_boot=20, image_level=False)
    tiny = next(r for r in rep["groups"] if r["group"] == "tiny")
    assert tiny["small"] and "too small to judge" in tiny["note"] and "cross_fmr" not in rep


def test_attributes_file(tmp_path):
    paths = ["s1/1.pgm", "s1/2.pgm", "s2/1.pgm"]
    good = tmp_path / "a.csv"
    good.write_text("path,gender\ns1/1.pgm,f\n./s2/1.pgm,m\n")
    assert grp.read_attributes(good, paths) == {"gender": {"s1/1.pgm": "f", "s2/1.pgm": "m"}}
    bad = tmp_path / "b.csv"
    bad.write_text("path,gender\ns1/1.pgm,f\ns9/1.pgm,m\n")
    with pytest.raises(MatchLabError, match="names 1 images that are not in the evaluated folder") as e:
        grp.read_attributes(bad, paths)
    assert "\n" not in str(e.value)
    with pytest.raises(MatchLabError, match="not found"):
        grp.read_attributes(tmp_path / "missing.csv", paths)
