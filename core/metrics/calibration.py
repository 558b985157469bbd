"""Calibrated scores: score -> P(same) and likelihood ratio, with ECE, Cllr and minCllr.

Entry points: `cross_fitted(scores, labels, folds, method)` (each pair's P(same) from a map fitted on the
OTHER folds, so no reported pair was used to fit its own map), `calibration_report(...)` for the JSON
(reliability diagram, ECE, Cllr, minCllr, and the map fitted on all pairs for new photos), and
`apply_map(map_json, score)` for `verify` and Live match. Definitions: docs/metrics.md.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np

from core.errors import MatchLabError
from core.metrics.verification import check_pairs, to_numpy

METHODS = ("isotonic", "platt")
ECE_BINS = 10
LN2 = math.log(2.0)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise MatchLabError(f"calibration method {method!r} is not valid; choose one of {', '.join(METHODS)}")


def fit_map(scores: np.ndarray, labels: np.ndarray, method: str = "isotonic") -> dict[str, Any]:
    """A monotone map score -> P(same) fitted on these pairs, as JSON: isotonic breakpoints (x, y) or
    Platt's (a, b) with P = 1 / (1 + exp(-(a s + b))); prior = genuine share of the fitting pairs, and
    clip = the probability floor that keeps log-likelihood ratios finite (half a pair of the fit set)."""
    _check_method(method)
    s, positive, n_gen, n_imp = check_pairs(np.asarray(scores, np.float64), np.asarray(labels))
    y = np.asarray(positive, np.float64)
    out: dict[str, Any] = {
        "method": method,
        "prior": n_gen / (n_gen + n_imp),
        "n_genuine": n_gen,
        "n_impostor": n_imp,
        "clip": 0.5 / (n_gen + n_imp),
    }
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(s, y)
        out.update(x=[float(v) for v in iso.X_thresholds_], y=[float(v) for v in iso.y_thresholds_])
    else:
        from sklearn.linear_model import LogisticRegression

        # C large: plain maximum likelihood; Platt's two parameters need no regularisation
        lr = LogisticRegression(C=1e6, max_iter=1000).fit(s[:, None], y)
        out.update(a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))
    return out


def apply_map(cal: dict[str, Any], scores: Any) -> np.ndarray:
    """P(same) of each score under a fitted map (clipped to [clip, 1 - clip])."""
    s = np.asarray(scores, np.float64)
    if cal["method"] == "isotonic":
        p = np.interp(s, np.asarray(cal["x"]), np.asarray(cal["y"]))
    else:
        p = 1.0 / (1.0 + np.exp(-(cal["a"] * s + cal["b"])))
    c = float(cal.get("clip", 0.0))
    return np.clip(p, c, 1.0 - c)


def likelihood_ratio(p_same: Any, prior: float) -> np.ndarray:
    """LR = posterior odds / prior odds of the fitting data (metrics.md)."""
    p = np.asarray(p_same, np.float64)
    with np.errstate(divide="ignore"):
        return (p / (1.0 - p)) / (prior / (1.0 - prior))


def log_lr(p_same: np.ndarray, prior: float) -> np.ndarray:
    """Natural log of the likelihood ratio, +-inf where P(same) is exactly 1 or 0."""
    p = np.asarray(p_same, np.float64)
    with np.errstate(divide="ignore"):
        return np.log(p) - np.log1p(-p) - math.log(prior / (1.0 - prior))


def cllr(llr: np.ndarray, labels: np.ndarray) -> float:
    """Cllr in bits from natural-log LRs: 1/2 [mean_gen log2(1 + 1/LR) + mean_imp log2(1 + LR)]."""
    llr, y = np.asarray(llr, np.float64), np.asarray(labels).astype(bool)
    gen = np.logaddexp(0.0, -llr[y]).mean() / LN2
    imp = np.logaddexp(0.0, llr[~y]).mean() / LN2
    return float(0.5 * (gen + imp))


def min_cllr(scores: Any, labels: Any) -> float:
    """Cllr after the optimal monotone recalibration on the same pairs (PAV; tied scores share one LR):
    the loss due to discrimination alone."""
    s, positive, n_gen, n_imp = check_pairs(np.asarray(to_numpy(scores), np.float64), to_numpy(labels))
    from sklearn.isotonic import IsotonicRegression

    p = IsotonicRegression(y_min=0.0, y_max=1.0).fit_transform(s, np.asarray(positive, np.float64))
    # numpy scores in, so check_pairs returned numpy labels
    return cllr(log_lr(p, n_gen / (n_gen + n_imp)), cast(np.ndarray, positive))


def reliability(p_same: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """Equal-count bins of predicted P(same): mean prediction, observed genuine rate and count per bin,
    and ECE = sum over bins of size share x |observed - predicted|."""
    p, y = np.asarray(p_same, np.float64), np.asarray(labels).astype(np.float64)
    order = np.argsort(p, kind="stable")
    parts = [part for part in np.array_split(order, min(bins, len(p))) if len(part)]
    pred = np.array([p[i].mean() for i in parts])
    obs = np.array([y[i].mean() for i in parts])
    count = np.array([len(i) for i in parts])
    return {
        "predicted": pred.tolist(),
        "observed": obs.tolist(),
        "count": count.tolist(),
        "ece": float(np.sum(count * np.abs(obs - pred)) / count.sum()),
    }


def calibration_folds(
    labels: np.ndarray, folds: np.ndarray | None, id_a: np.ndarray | None, k: int = 5, seed: int = 0
) -> np.ndarray:
    """Folds to cross-fit over: the protocol's when it has them; else by the pair's first identity (a
    person's pairs are fitted on other people's), seeded; else stratified by pair."""
    from core.metrics.verification import stratified_folds

    y = np.asarray(labels).astype(bool)
    if folds is not None and (np.asarray(folds) >= 0).all() and len(np.unique(folds)) >= 2:
        return np.asarray(folds, np.int64)
    if id_a is not None:
        codes, uniq = np.unique(np.asarray(id_a), return_inverse=True)
        if len(codes) >= k:
            perm = np.random.default_rng(seed).permutation(len(codes))
            f = perm[uniq] % k
            if all(y[f == i].any() and (~y[f == i]).any() for i in range(k)):
                return f.astype(np.int64)
    return stratified_folds(y, k, seed)


def cross_fitted(scores: Any, labels: Any, folds: np.ndarray, method: str = "isotonic") -> np.ndarray:
    """(N,) P(same) of each pair from the map fitted on the pairs of the other folds."""
    s, y = np.asarray(to_numpy(scores), np.float64), np.asarray(to_numpy(labels))
    f = np.asarray(folds)
    out = np.empty(len(s))
    for fid in np.unique(f):
        held = f == fid
        train_y = y[~held]
        if train_y.sum() == 0 or train_y.sum() == len(train_y):
            raise MatchLabError(f"calibration: the folds other than fold {fid} lack genuine or impostor pairs")
        out[held] = apply_map(fit_map(s[~held], train_y, method), s[held])
    return out


def calibration_report(
    scores: Any,
    labels: Any,
    *,
    folds: np.ndarray | None = None,
    id_a: np.ndarray | None = None,
    method: str = "isotonic",
    seed: int = 0,
) -> dict[str, Any]:
    """JSON: cross-fitted ECE, Cllr and reliability diagram for both methods, minCllr, and the map
    (chosen method) fitted on all pairs, for scoring new photos."""
    _check_method(method)
    s, y = np.asarray(to_numpy(scores), np.float64), np.asarray(to_numpy(labels)).astype(bool)
    f = calibration_folds(y, folds, id_a, seed=seed)
    out: dict[str, Any] = {
        "method": method,
        "n_folds": int(len(np.unique(f))),
        "min_cllr": min_cllr(s, y),
        "methods": {},
    }
    for m in METHODS:
        p = cross_fitted(s, y, f, m)
        prior = float(y.mean())  # the folds are stratified or large, so each fit's prior is this one's
        rel = reliability(p, y)
        out["methods"][m] = {"cllr": cllr(log_lr(p, prior), y), "ece": rel["ece"], "reliability": rel}
    out["cllr"], out["ece"] = out["methods"][method]["cllr"], out["methods"][method]["ece"]
    out["map"] = fit_map(s, y, method)
    return out


def describe(cal_map: dict[str, Any], score: float) -> dict[str, float]:
    """P(same) and LR of one score under a fitted map (what verify and Live match print)."""
    p = float(apply_map(cal_map, [score])[0])
    return {"p_same": p, "lr": float(likelihood_ratio(p, cal_map["prior"]))}
