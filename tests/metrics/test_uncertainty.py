"""Bootstrap intervals: point estimates equal core.metrics.verification, intervals cover a known truth about
95% of the time, and identity resampling is wider than pair resampling on clustered data."""

import math

import numpy as np
import pytest
from scipy.stats import norm

from core.errors import MatchLabError
from core.metrics import uncertainty as unc
from core.metrics import verification as vm


def clustered(
    seed: int,
    n_ids: int = 40,
    per_id: int = 6,
    n_imp: int = 900,
    mu: float = 1.5,
    su: float = 0.8,
    sv: float = 0.5,
    se: float = 0.6,
):
    """Scores with a per-identity effect: genuine = mu + u_k + e, impostor (k, l) = v_k + v_l + e. The
    population AUC is Phi(mu / sqrt(su^2 + se^2 + 2 sv^2 + se^2))."""
    rng = np.random.default_rng(seed)
    u, v = rng.normal(0, su, n_ids), rng.normal(0, sv, n_ids)
    gk = np.repeat(np.arange(n_ids), per_id)
    ka, kb = rng.integers(0, n_ids, n_imp), rng.integers(0, n_ids, n_imp)
    kb = np.where(ka == kb, (kb + 1) % n_ids, kb)
    s = np.concatenate([mu + u[gk] + rng.normal(0, se, gk.size), v[ka] + v[kb] + rng.normal(0, se, n_imp)])
    y = np.concatenate([np.ones(gk.size, int), np.zeros(n_imp, int)])
    return s, y, np.concatenate([gk, ka]), np.concatenate([gk, kb])


def true_auc(mu=1.5, su=0.8, sv=0.5, se=0.6):
    return norm.cdf(mu / math.sqrt(su**2 + 2 * se**2 + 2 * sv**2))


@pytest.mark.parametrize("decimals", [None, 1])
def test_point_estimate_equals_verification_metrics(decimals):
    s, y, ia, ib = clustered(0)
    if decimals is not None:
        s = np.round(s, decimals)  # many ties: groups of equal scores
    levels, taus = [0.1, 0.01, 0.3], [0.5, 1.0, 9.0, -9.0]
    prep = unc.prepare(s, y, ia, ib, folds=unc.kfold_folds(y, None))
    r = unc.replicates(prep, resample="none", far_levels=levels, thresholds=taus)
    pts = vm.roc_points(s, y)
    assert r["auc"][0] == pytest.approx(vm.auc(pts), abs=1e-12)
    assert r["eer"][0] == pytest.approx(vm.eer(pts)[0], abs=1e-12)
    tab = vm.tar_at_far(pts, levels)
    assert r["tar_at_far"][0] == pytest.approx([tab[f"{lv:g}"]["tar"] for lv in levels], abs=1e-12)
    at = vm.counts_at_threshold(pts, np.array(taus))
    for m in ("far", "frr", "tar", "accuracy"):
        assert r[m][0] == pytest.approx(at[m], abs=1e-12)
    kf = unc.kfold_replicates(prep, resample="none")
    assert kf.mean() == pytest.approx(vm.kfold_accuracy(s, y, None)["mean"], abs=1e-12)


def test_seeded_and_weights_are_bootstrap_draws():
    s, y, ia, ib = clustered(1)
    prep = unc.prepare(s, y, ia, ib)
    a = unc.replicates(prep, resample="identities", n_boot=64, seed=3)
    b = unc.replicates(prep, resample="identities", n_boot=64, seed=3)
    c = unc.replicates(prep, resample="identities", n_boot=64, seed=4)
    assert np.array_equal(a["auc"], b["auc"]) and not np.array_equal(a["auc"], c["auc"])
    p = unc.replicates(prep, resample="pairs", n_boot=400, seed=0)
    # Poisson(1) weights: total weight per replicate has mean n and sd sqrt(n) (here 4 sd bounds)
    n = len(s)
    assert abs(p["weights"].sum(1).mean() - n) < 4 * math.sqrt(n / 400)
    assert p["weights"].sum(1).std() == pytest.approx(math.sqrt(n), rel=0.2)


def _cover(method: str, sims: int, data, truth_of) -> tuple[float, float]:
    hits, widths = 0, []
    for seed in range(sims):
        s, y, ia, ib = data(seed)
        prep = unc.prepare(s, y, ia, ib)
        lo, hi = unc.interval(unc.replicates(prep, resample=method, n_boot=300, seed=seed)["auc"])
        hits += lo <= truth_of <= hi
        widths.append(hi - lo)
    return hits / sims, float(np.mean(widths))


def test_pair_bootstrap_covers_independent_pairs():
    # independent pairs: genuine N(1, 1), impostor N(0, 1), AUC = Phi(1 / sqrt 2)
    def data(seed):
        rng = np.random.default_rng(seed)
        s = np.concatenate([rng.normal(1, 1, 150), rng.normal(0, 1, 450)])
        y = np.r_[np.ones(150, int), np.zeros(450, int)]
        return s, y, None, None

    cov, _ = _cover("pairs", 300, data, norm.cdf(1 / math.sqrt(2)))
    # 300 simulations: binomial sd of a 95% coverage is 1.3 points; 0.90..0.99 is about 4 sd
    assert 0.90 <= cov <= 0.99


def test_identity_bootstrap_covers_clustered_truth_and_is_wider_than_pairs():
    truth = true_auc()
    cov_id, width_id = _cover("identities", 200, clustered, truth)
    cov_pair, width_pair = _cover("pairs", 200, clustered, truth)
    # measured over these 200 seeds: identities 0.98, pairs 0.49 (pairs of one person are not independent);
    # the pair bootstrap of independent pairs above measured 0.937
    assert cov_id >= 0.88
    assert cov_pair < cov_id - 0.1
    assert width_id > 1.5 * width_pair


def test_bootstrap_report_fields_and_rule_of_three():
    s, y, ia, ib = clustered(2)
    rep = unc.bootstrap_report(
        s,
        y,
        ia,
        ib,
        thresholds={"t": 1.0},
        far_levels=[0.1, 0.01],
        n_boot=200,
        folds=unc.kfold_folds(y, None),
        cost=(0.5, 1.0, 1.0),
    )
    assert rep["default"] == "identities" and rep["key"] == "ci95"
    for method in ("identities", "pairs"):
        r = rep[method]
        assert r["auc"][0] < r["auc"][1] and set(r["tar_at_far"]) == {"0.1", "0.01"}
        assert set(r["at"]["t"]) == {"far", "frr", "tar", "accuracy", "dcf"}
        assert r["kfold_accuracy"][0] <= r["kfold_accuracy"][1]
    assert len(rep["identities"]["band"]["tar_lo"]) == 40 and "band" not in rep["pairs"]
    assert (
        rep["rule_of_three_far"] == pytest.approx(-math.log(0.05) / 900) and 2.99 < rep["rule_of_three_far"] * 900 < 3
    )
    assert unc.ci_key(0.9) == "ci90"


@pytest.mark.parametrize(
    "kw,match", [({"resample": "people"}, "--resample"), ({"n_boot": 0}, "--bootstrap"), ({"level": 1.5}, "--ci-level")]
)
def test_bad_options_are_one_line_errors(kw, match):
    s, y, ia, ib = clustered(3)
    with pytest.raises(MatchLabError, match=match) as e:
        unc.bootstrap_report(s, y, ia, ib, **{"n_boot": 10, **kw})
    assert "\n" not in str(e.value)


def test_accuracy_replicates_keep_the_genuine_share():
    # a subject bootstrap weights a genuine pair (one person twice) w^2, mean 2, an impostor pair mean 1;
    # accuracy and k-fold accuracy must not drift towards "accept all" for it (CFP: 0.55 became [0.65, 0.68])
    s, y, ia, ib = clustered(0)
    prep = unc.prepare(s, y, ia, ib, folds=unc.kfold_folds(y, None))
    point = vm.kfold_accuracy(s, y, None)["mean"]
    kf = unc.kfold_replicates(prep, resample="identities", n_boot=300).mean(1)
    acc = unc.replicates(prep, resample="identities", n_boot=300, thresholds=[1.0])["accuracy"][:, 0]
    at = vm.counts_at_threshold(vm.roc_points(s, y), 1.0)["accuracy"]
    # measured: medians 0.815 vs 0.807 (k-fold) and 0.735 vs 0.733
    assert abs(np.median(kf) - point) < 0.02 and abs(np.median(acc) - at) < 0.02
