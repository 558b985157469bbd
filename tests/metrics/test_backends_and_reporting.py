"""Issue 20: the torch path equals the numpy path (float64 rates), warnings come from the figures reported,
--json is strict JSON, and TAR@FAR keys never merge. scikit-learn and brute force are the oracles."""

import argparse
import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

from core.cli import emit, strict_json
from core.evaluate import _verification
from core.metrics.verification import _rate, eer, roc_points, tar_at_far, verification_report

BACKENDS = ["numpy", "torch-cpu"] + (["torch-cuda"] if torch.cuda.is_available() else [])


def on(backend, s, y):
    if backend == "numpy":
        return np.asarray(s), np.asarray(y)
    dev = "cuda" if backend == "torch-cuda" else "cpu"
    return torch.as_tensor(np.asarray(s)).to(dev), torch.as_tensor(np.asarray(y)).to(dev)


def sklearn_tar_at_far(s, y, level):
    """max TAR over sklearn's operating points with FAR <= level (FAR computed by sklearn in float64)."""
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    ok = np.flatnonzero(fpr <= level)
    best = ok[tpr[ok] == tpr[ok].max()][-1]  # lowest threshold among the max-TAR ones
    return float(tpr[best]), float(thr[best]), float(fpr[best])


def exact_level_cases():
    """(scores, labels, levels) where a level equals k / n_impostor exactly, with heavy ties."""
    rng = np.random.default_rng(5)
    cases = [(np.array([0.9, 0.9, 0.5, 0.5, 0.1]), np.array([1, 0, 1, 0, 0]), [1 / 3, 2 / 3])]
    # the audit's larger case: 50 genuine, 1,000 impostors, FAR 1e-3 reachable exactly
    y = np.r_[np.ones(50, np.int64), np.zeros(1000, np.int64)]
    s = np.r_[rng.normal(0.6, 0.2, 50), rng.normal(0.0, 0.2, 1000)].astype(np.float32)
    cases.append((s, y, [1e-3, 2e-3, 1e-2, 0.1]))
    for n_imp in (3, 7, 49, 300):  # tie-heavy: scores on a coarse grid
        y = np.r_[np.ones(40, np.int64), np.zeros(n_imp, np.int64)]
        s = np.round(np.r_[rng.normal(0.5, 0.3, 40), rng.normal(0, 0.3, n_imp)], 1).astype(np.float32)
        cases.append((s, y, [k / n_imp for k in (1, 2, 3) if k < n_imp]))
    return cases


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(exact_level_cases())))
def test_tar_at_far_at_exact_levels_equals_sklearn_on_every_backend(backend, case):
    s, y, levels = exact_level_cases()[case]
    got = tar_at_far(roc_points(*on(backend, s, y)), levels)
    for lv in levels:
        tar, thr, far = sklearn_tar_at_far(s, y, lv)
        row = got[repr(lv)]
        assert (row["tar"], row["threshold"], row["far"]) == (tar, thr, far), (lv, row)


def test_audit_minimal_case_torch_gives_numpy_answer():
    s, y = torch.tensor([0.9, 0.9, 0.5, 0.5, 0.1]), torch.tensor([1, 0, 1, 0, 0])
    row = tar_at_far(roc_points(s, y), [1 / 3])[repr(1 / 3)]
    assert row["tar"] == 0.5 and row["threshold"] == pytest.approx(0.9) and row["far"] == 1 / 3


@pytest.mark.parametrize("backend", BACKENDS[1:])
@pytest.mark.parametrize("case", range(len(exact_level_cases())))
def test_report_identical_to_numpy(backend, case):
    s, y, levels = exact_level_cases()[case]
    want = verification_report(s, y, far_levels=levels, k=2)
    assert verification_report(*on(backend, s, y), far_levels=levels, k=2) == want
    assert eer(roc_points(*on(backend, s, y))) == eer(roc_points(s, y))


def test_rates_are_float64_on_torch():
    # FAR and FRR built in float32 select the wrong neighbour once k/N rounds above a float64 level
    assert _rate(torch.tensor([1, 2]), 3).dtype == torch.float64
    assert _rate(np.array([1, 2]), 3).dtype == np.float64


def test_levels_that_print_alike_keep_their_own_keys():
    s, y, _ = exact_level_cases()[0]
    got = tar_at_far(roc_points(s, y), [1 / 3, 0.3333333])
    assert len(got) == 2
    # 0.3333333 < 1/3 = 1/n_impostor: unreachable, while 1/3 itself is reached exactly
    assert got[repr(1 / 3)]["tar"] == 0.5 and got["0.3333333"]["reachable"] is False
    assert list(tar_at_far(roc_points(s, y), [0.1, 1e-3, 1e-5])) == ["0.1", "0.001", "1e-05"]


def test_balanced_kfold_warnings_come_from_the_balanced_kfold():
    # 20 genuine + 400 impostor generated pairs (no folds): the k-fold runs on 40 balanced pairs,
    # 10 folds of 4, and the report must say its folds are small
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(20, np.int8), np.zeros(400, np.int8)]
    s = np.r_[rng.normal(0.6, 0.2, 20), rng.normal(0, 0.2, 400)].astype(np.float32)
    head, _ = _verification(s, y, np.full(len(y), -1, np.int16), np.full(len(y), "all", object), None)
    assert sum(head["kfold"]["fold_sizes"]) == 40 and max(head["kfold"]["fold_sizes"]) < 30
    assert any("k-fold folds hold fewer than 30 pairs" in w for w in head["small_sample"])
    assert "all 20 genuine pairs + 20 of the 400 impostor pairs" in head["kfold_note"]
    # the other branch: genuine pairs dominate, so all impostors are kept
    rep = verification_report(s, 1 - y, None, balance_kfold=True)
    assert "all 20 impostor pairs + 20 of the 400 genuine pairs" in rep["kfold_note"]
    # balanced sets and protocol folds are used as given
    assert "kfold_note" not in verification_report(s[:40], y[:40] * 0 + (np.arange(40) < 20), None, balance_kfold=True)


def test_pooled_slices_are_named_in_the_headline():
    rng = np.random.default_rng(1)
    y = np.tile([1, 0], 100).astype(np.int8)
    s = (rng.normal(size=200) + y).astype(np.float32)
    slices = np.array(["FF"] * 100 + ["FP"] * 100, dtype=object)
    head, per = _verification(s, y, np.repeat(np.arange(10), 20).astype(np.int16), slices, None)
    assert head["pooled_slices"] == ["FF", "FP"] and set(per) == {"FF", "FP"}
    assert "FF + FP pooled" in head["scope"]


def strict_loads(text):
    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_json_output_is_strict_with_reasons(capsys):
    payload = {
        "threshold": math.inf,
        "low": -math.inf,
        "nan": float("nan"),
        "ok": 0.5,
        "np": np.float64(np.inf),
        "arr": np.array([1.0, np.inf]),
        "nested": {"t": [math.inf, 1]},
    }
    emit(argparse.Namespace(json=True), payload, "human")
    got = strict_loads(capsys.readouterr().out)
    assert got["threshold"] is None and got["threshold_nonfinite"] == "inf"
    assert got["low_nonfinite"] == "-inf" and got["nan_nonfinite"] == "nan" and got["np_nonfinite"] == "inf"
    assert got["ok"] == 0.5 and "ok_nonfinite" not in got
    assert got["arr"] == [1.0, None] and got["nested"] == {"t": [None, 1]}
    assert strict_json({"a": (1, 2)}) == {"a": [1, 2]}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_key_sort_handles_signs_zeros_and_infinities(dtype):
    # the host path sorts float32 bits packed with the label; float64 that is not exactly float32 takes
    # an argsort: both must equal sklearn, with -0.0 and +0.0 one operating point and +-inf kept
    rng = np.random.default_rng(3)
    big = float(np.finfo(np.float32).max)  # sklearn refuses inf: the largest floats instead (inf below)
    base = np.r_[rng.normal(size=400), [0.0, -0.0, -0.0, big, -big, 1e-40, -1e-40]]
    s = base.astype(dtype) + (np.float64(1e-12) if dtype == np.float64 else 0)  # float64: not float32-exact
    y = (rng.random(s.shape[0]) < 0.4).astype(np.int64)
    for backend in BACKENDS:
        p = roc_points(*on(backend, s, y))
        fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
        np.testing.assert_array_equal(p.far, fpr)
        np.testing.assert_array_equal(p.tar, tpr)
        np.testing.assert_array_equal(p.thresholds[1:], thr[1:].astype(np.float64))


def test_infinite_scores_count_like_brute_force():
    s = np.array([np.inf, np.inf, 0.5, -np.inf, 0.2, -0.0, 0.0], np.float32)
    y = np.array([1, 0, 1, 0, 0, 1, 0])
    for backend in BACKENDS:
        p = roc_points(*on(backend, s, y))
        thr = np.r_[np.inf, np.unique(s)[::-1]]  # +inf accept-nothing point, then every distinct score
        np.testing.assert_array_equal(p.thresholds, thr)
        np.testing.assert_array_equal(p.tp[1:], [np.sum((s >= t) & (y == 1)) for t in thr[1:]])
        np.testing.assert_array_equal(p.fp[1:], [np.sum((s >= t) & (y == 0)) for t in thr[1:]])
