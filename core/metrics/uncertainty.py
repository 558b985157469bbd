"""Bootstrap intervals on verification numbers: AUC, EER, TAR@FAR, rates at a threshold, k-fold accuracy.

Entry points: `prepare(scores, labels, id_a, id_b)` once, then `replicates(prep, ...)` /
`kfold_replicates(prep, ...)` for the raw replicate values, or `bootstrap_report(...)` for a JSON-ready
report with both resampling schemes side by side. Pairs are sorted ONCE; every replicate re-weights the
sorted pairs (a subject bootstrap draws identities: pair weight = draws of its first identity x draws of
its second, shared/docs/metrics.md; a pair bootstrap gives each pair a Poisson(1) weight) and walks them
in one compiled pass (numba, threads over replicates), so 1000 replicates never re-sort anything.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numba import njit

from core.errors import MatchLabError
from core.metrics.verification import DEFAULT_FAR_LEVELS, check_pairs, stratified_folds, to_numpy

RESAMPLE = ("identities", "pairs")
THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
DEFAULT_BOOTSTRAP = 1000
DEFAULT_LEVEL = 0.95
# Poisson(1) cumulative probabilities: a pair's weight is the number of these its uniform draw exceeds
_POISSON_CDF = np.cumsum([math.exp(-1) / math.factorial(k) for k in range(10)])


# ------------------------------------------------------------------------------------ compiled core
# A replicate's weights come from a table (identities: W[k, r] draws of identity k) or from a
# counter-based hash (pairs: Poisson(1) from murmur3's fmix32 of (pair, replicate)), so replicate r gets
# the same weights on any number of threads and in the refinement walk as in the main walk.
_CHUNK = 32  # replicates walked together: their weights sit side by side, so the inner loop vectorises
_CHECKPOINTS = 2048  # (tp, fp) kept at this many evenly spaced groups per replicate for the refinement


@njit(cache=True, inline="always")
def _fmix32(x: int | np.uint64) -> np.uint64:
    # numba widens uint32 arithmetic to 64 bits: the masks keep it the 32-bit hash
    m = np.uint64(0xFFFFFFFF)
    x = np.uint64(x) & m
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x85EBCA6B)) & m
    x ^= x >> np.uint64(13)
    x = (x * np.uint64(0xC2B2AE35)) & m
    return x ^ (x >> np.uint64(16))


@njit(cache=True, inline="always")
def _poisson(i: int, key: int, cut: np.ndarray) -> float:
    """Poisson(1) weight of pair i in the replicate with this key: count of cut points the hash exceeds."""
    x = _fmix32(np.uint64(i) * np.uint64(0x9E3779B1) + np.uint64(key))
    k = 0.0
    for c in range(cut.shape[0]):
        k += 1.0 if x > np.uint64(cut[c]) else 0.0
    return k


@njit(cache=True, inline="always")
def _w(
    mode: int, W: np.ndarray, keys: np.ndarray, cut: np.ndarray, c: int, lane: int, r: int, a: int, b: int, i: int
) -> float:
    """Scalar weight of pair i (identities a, b) in replicate r = chunk c, lane."""
    if mode == 1:
        return W[c, a, lane] * W[c, b, lane]
    if mode == 2:
        return _poisson(i, keys[r], cut)
    return 1.0


@njit(cache=True, nogil=True)
def _walk_kernel(
    gen: np.ndarray,
    ia: np.ndarray,
    ib: np.ndarray,
    ends: np.ndarray,
    mode: int,
    W: np.ndarray,
    keys: np.ndarray,
    cut: np.ndarray,
    every: int,
    thr_g: np.ndarray,
    c_lo: int,
    c_hi: int,
    tot: np.ndarray,
    area_out: np.ndarray,
    ck: np.ndarray,
    at: np.ndarray,
) -> None:
    """Walk the sorted pairs once per chunk of replicates (chunks c_lo..c_hi-1), vectorised over lanes.

    Fills tot (B, 2) weighted genuine / impostor totals, area_out (B,) twice the weighted ROC area times
    WG x WI, ck (C, B, 2) weighted (tp, fp) after c x `every` groups, at (B, T, 2) after thr_g[t] groups
    (thr_g ascending)."""
    M = ends.shape[0]
    T = thr_g.shape[0]
    R = W.shape[2]
    n_rep = tot.shape[0]
    for c in range(c_lo, c_hi):
        lanes = min(R, n_rep - c * R)
        tp = np.zeros(R)
        fp = np.zeros(R)
        dtp = np.zeros(R)
        dfp = np.zeros(R)
        area = np.zeros(R)
        kk = np.zeros(R, np.uint32)
        for lane in range(lanes):
            kk[lane] = keys[c * R + lane]
        q = 0
        while q < T and thr_g[q] == 0:
            q += 1
        start = 0
        for j in range(M):
            for i in range(start, ends[j]):
                g = np.float64(gen[i])
                if mode == 1:
                    wa = W[c, ia[i]]
                    wb = W[c, ib[i]]
                    for lane in range(R):
                        w = wa[lane] * wb[lane]
                        dtp[lane] += g * w
                        dfp[lane] += w - g * w
                elif mode == 2:
                    for lane in range(R):
                        w = _poisson(i, kk[lane], cut)
                        dtp[lane] += g * w
                        dfp[lane] += w - g * w
                else:
                    dtp[0] += g
                    dfp[0] += 1.0 - g
            start = ends[j]
            for lane in range(R):
                area[lane] += dfp[lane] * (2.0 * tp[lane] + dtp[lane])
                tp[lane] += dtp[lane]
                fp[lane] += dfp[lane]
                dtp[lane] = 0.0
                dfp[lane] = 0.0
            if (j + 1) % every == 0:
                for lane in range(lanes):
                    ck[(j + 1) // every, c * R + lane, 0] = tp[lane]
                    ck[(j + 1) // every, c * R + lane, 1] = fp[lane]
            while q < T and thr_g[q] == j + 1:
                for lane in range(lanes):
                    at[c * R + lane, q, 0] = tp[lane]
                    at[c * R + lane, q, 1] = fp[lane]
                q += 1
        for lane in range(lanes):
            tot[c * R + lane, 0] = tp[lane]
            tot[c * R + lane, 1] = fp[lane]
            area_out[c * R + lane] = area[lane]


@njit(cache=True)
def _walk_from(
    gen: np.ndarray,
    ia: np.ndarray,
    ib: np.ndarray,
    ends: np.ndarray,
    mode: int,
    W: np.ndarray,
    keys: np.ndarray,
    cut: np.ndarray,
    r: int,
    j0: int,
    tp: float,
    fp: float,
    wg: float,
    wi: float,
    target: int,
    level: float,
) -> float:
    """Walk groups j0, j0+1, ... of replicate r from counts (tp, fp) after j0 groups.

    target 0 (EER): stop at the first group where FAR - FRR >= 0; return the interpolated EER.
    target 1 (TAR@FAR=level): stop before the first group whose FAR exceeds level; return TAR there."""
    R = W.shape[2]
    c = r // R
    lane = r % R
    M = ends.shape[0]
    start = 0 if j0 == 0 else ends[j0 - 1]
    far_prev = fp / wi
    frr_prev = (wg - tp) / wg
    for j in range(j0, M):
        for i in range(start, ends[j]):
            w = _w(mode, W, keys, cut, c, lane, r, ia[i], ib[i], i)
            if gen[i]:
                tp += w
            else:
                fp += w
        start = ends[j]
        far = fp / wi
        frr = (wg - tp) / wg
        if target == 0:
            if far - frr >= 0.0:
                d0 = far_prev - frr_prev
                d1 = far - frr
                if d1 == 0.0:
                    return far
                return far_prev + (-d0 / (d1 - d0)) * (far - far_prev)
        elif far > level:
            return 1.0 - frr_prev
        far_prev = far
        frr_prev = frr
    return 1.0 - frr_prev if target == 1 else np.nan


@njit(cache=True, inline="always")
def _checkpoint_before(ck: np.ndarray, r: int, wg: float, wi: float, target: int, level: float) -> int:
    """Binary search of replicate r's checkpoints for the last one before `_walk_from`'s stop (same target):
    target 0 (EER), the last with FAR - FRR < 0 (checkpoint 0 has -1); target 1, the last with FAR <= level
    (checkpoint 0 has FAR 0)."""
    lo = 0
    hi = ck.shape[0]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        far = ck[mid, r, 1] / wi
        past = far - (wg - ck[mid, r, 0]) / wg >= 0.0 if target == 0 else far > level
        if past:
            hi = mid
        else:
            lo = mid
    return lo


@njit(cache=True, nogil=True)
def _refine_kernel(
    gen: np.ndarray,
    ia: np.ndarray,
    ib: np.ndarray,
    ends: np.ndarray,
    mode: int,
    W: np.ndarray,
    keys: np.ndarray,
    cut: np.ndarray,
    every: int,
    ck: np.ndarray,
    tot: np.ndarray,
    levels: np.ndarray,
    r_lo: int,
    r_hi: int,
    eer: np.ndarray,
    tar: np.ndarray,
) -> None:
    """EER and TAR at each FAR level for replicates r_lo..r_hi-1: the checkpoints bracket the crossing,
    then an exact walk of at most `every` groups from the checkpoint before it."""
    L = levels.shape[0]
    for r in range(r_lo, r_hi):
        wg = tot[r, 0]
        wi = tot[r, 1]
        if wg == 0.0 or wi == 0.0:
            eer[r] = np.nan
            tar[r, :] = np.nan
            continue
        c0 = _checkpoint_before(ck, r, wg, wi, 0, 0.0)
        eer[r] = _walk_from(
            gen, ia, ib, ends, mode, W, keys, cut, r, c0 * every, ck[c0, r, 0], ck[c0, r, 1], wg, wi, 0, 0.0
        )
        for p in range(L):
            c0 = _checkpoint_before(ck, r, wg, wi, 1, levels[p])
            tar[r, p] = _walk_from(
                gen, ia, ib, ends, mode, W, keys, cut, r, c0 * every, ck[c0, r, 0], ck[c0, r, 1], wg, wi, 1, levels[p]
            )


@njit(cache=True, nogil=True)
def _kfold_kernel(
    gen: np.ndarray,
    ia: np.ndarray,
    ib: np.ndarray,
    fold: np.ndarray,
    k: int,
    ends: np.ndarray,
    mode: int,
    W: np.ndarray,
    keys: np.ndarray,
    cut: np.ndarray,
    r_lo: int,
    r_hi: int,
    out: np.ndarray,
) -> None:
    """Per replicate and fold: held-out weighted accuracy at the threshold maximising weighted accuracy on
    the other folds (ties to the highest threshold, +inf included), in one pass with k running argmaxes.

    Each class's weights are scaled to its pair count first: accuracy depends on the genuine share, and a
    subject bootstrap gives a genuine pair (one person twice) weight w^2, mean 2, an impostor pair mean 1;
    the protocol fixes the share, so replicates keep it."""
    M = ends.shape[0]
    R = W.shape[2]
    n = gen.shape[0]
    n_gen = 0.0
    for i in range(n):
        n_gen += gen[i]
    for r in range(r_lo, r_hi):
        c = r // R
        lane = r % R
        wg = 0.0
        wi = 0.0
        for i in range(n):
            w = _w(mode, W, keys, cut, c, lane, r, ia[i], ib[i], i)
            if gen[i]:
                wg += w
            else:
                wi += w
        if wg == 0.0 or wi == 0.0:
            out[r, :] = np.nan
            continue
        sg = n_gen / wg
        si = (n - n_gen) / wi
        tpf = np.zeros(k)
        fpf = np.zeros(k)
        best = np.zeros(k)
        htp = np.zeros(k)
        hfp = np.zeros(k)
        tp = 0.0
        fp = 0.0
        start = 0
        for j in range(M):
            for i in range(start, ends[j]):
                w = _w(mode, W, keys, cut, c, lane, r, ia[i], ib[i], i)
                if gen[i]:
                    tp += w * sg
                    tpf[fold[i]] += w * sg
                else:
                    fp += w * si
                    fpf[fold[i]] += w * si
            start = ends[j]
            gain = tp - fp
            for f in range(k):
                g = gain - (tpf[f] - fpf[f])
                if g > best[f]:
                    best[f] = g
                    htp[f] = tpf[f]
                    hfp[f] = fpf[f]
        for f in range(k):
            total = tpf[f] + fpf[f]
            out[r, f] = (htp[f] + fpf[f] - hfp[f]) / total if total > 0 else np.nan


# ------------------------------------------------------------------------------------------ prepare
@dataclass
class PreparedPairs:
    """Pairs sorted once by descending score, with what a replicate needs to re-weight them.

    gen (N,) int8, ia/ib (N,) int32 identity indices 0..K-1; ends (M,) int64 exclusive end of each run of
    equal scores; thresholds (M,) float64 descending distinct scores; fold (N,) int32 or None."""

    gen: np.ndarray
    ia: np.ndarray
    ib: np.ndarray
    ends: np.ndarray
    thresholds: np.ndarray
    n_identities: int
    n_genuine: int
    n_impostor: int
    fold: np.ndarray | None = None
    n_folds: int = 0

    def groups_at(self, taus: Sequence[float] | np.ndarray) -> np.ndarray:
        """For each threshold, how many distinct-score groups are accepted (s >= tau)."""
        return np.searchsorted(-self.thresholds, -np.asarray(taus, np.float64), side="right").astype(np.int64)


def identity_codes(id_a: Any, id_b: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """Two per-pair identity columns (any labels) -> int32 codes 0..K-1 over both, and K."""
    a, b = np.asarray(id_a), np.asarray(id_b)
    codes, uniques = pd.factorize(np.concatenate([a, b]))
    n = a.shape[0]
    return codes[:n].astype(np.int32), codes[n:].astype(np.int32), len(uniques)


def prepare(
    scores: Any, labels: Any, id_a: Any = None, id_b: Any = None, folds: Any = None, *, require_both: bool = True
) -> PreparedPairs:
    """Sort once. scores (N,), labels (N,) 1/0, id_a/id_b (N,) identity of each image of the pair (None:
    every pair is its own identity, which makes the subject bootstrap a pair bootstrap); folds (N,) ids.
    require_both=False accepts one kind of pair only (its rates come out; the others are NaN)."""
    s, positive, n_gen, n_imp = check_pairs(to_numpy(scores), to_numpy(labels), require_both=require_both)
    s = np.asarray(s, np.float64)
    n = s.shape[0]
    if id_a is None or id_b is None:
        ia = ib = np.arange(n, dtype=np.int32)
        k = n
    else:
        if len(id_a) != n or len(id_b) != n:
            raise MatchLabError(
                f"identities must be given for every pair: got {len(id_a)} and {len(id_b)} for {n} pairs"
            )
        ia, ib, k = identity_codes(id_a, id_b)
    order = np.argsort(-s, kind="stable")
    ss = s[order]
    ends = np.append(np.flatnonzero(ss[1:] != ss[:-1]) + 1, n).astype(np.int64)
    fold, n_folds = None, 0
    if folds is not None:
        f = np.asarray(folds)
        if f.shape != (n,):
            raise MatchLabError(f"folds must be one id per pair: got shape {f.shape} for {n} pairs")
        codes, uniq = pd.factorize(f, sort=True)
        fold, n_folds = codes[order].astype(np.int32), len(uniq)
    return PreparedPairs(
        np.asarray(positive, np.int8)[order],
        np.ascontiguousarray(ia[order]),
        np.ascontiguousarray(ib[order]),
        ends,
        ss[ends - 1],
        k,
        n_gen,
        n_imp,
        fold,
        n_folds,
    )


def _check_resample(resample: str) -> None:
    if resample not in RESAMPLE and resample != "none":
        raise MatchLabError(f"--resample {resample!r} is not valid; choose one of {', '.join(RESAMPLE)}")


def _check_n_boot(n_boot: int) -> None:
    if int(n_boot) < 1:
        raise MatchLabError(f"--bootstrap {n_boot}: give a number of replicates >= 1 (1000 is usual)")


def identity_weights(n_identities: int, n_boot: int, seed: int) -> np.ndarray:
    """(B, K) float64: draws of each identity per replicate, n draws from n identities (multinomial)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_identities, np.full(n_identities, 1.0 / n_identities), size=n_boot).astype(np.float64)


_CUT = np.floor(_POISSON_CDF * 2.0**32).astype(np.uint32)  # weights above 10 (p 1e-8) count as 10


@dataclass
class _Weights:
    mode: int
    W: np.ndarray  # (chunks, K, R) identity draws, replicate r in chunk r // R, lane r % R
    keys: np.ndarray  # (B,) uint32 hash keys (pairs)
    n_rep: int


def _weights_for(prep: PreparedPairs, resample: str, n_boot: int, seed: int) -> _Weights:
    _check_resample(resample)
    if resample == "none":
        return _Weights(0, np.zeros((1, 1, 1)), np.zeros(1, np.uint32), 1)
    _check_n_boot(n_boot)
    n_boot = int(n_boot)
    keys = np.random.default_rng([seed, 1]).integers(0, 2**32, n_boot, dtype=np.uint32)
    if resample == "pairs":
        return _Weights(2, np.zeros((1, 1, _CHUNK)), keys, n_boot)
    drawn = identity_weights(prep.n_identities, n_boot, seed)
    chunks = -(-n_boot // _CHUNK)
    padded = np.zeros((chunks * _CHUNK, prep.n_identities))
    padded[:n_boot] = drawn
    W = np.ascontiguousarray(padded.reshape(chunks, _CHUNK, prep.n_identities).transpose(0, 2, 1))
    return _Weights(1, W, keys, n_boot)


def replicates(
    prep: PreparedPairs,
    *,
    resample: str = "identities",
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    far_levels: Sequence[float] = (),
    thresholds: Sequence[float] = (),
) -> dict[str, np.ndarray]:
    """Replicate values: auc (B,), eer (B,), tar_at_far (B, L) in the order of far_levels, and at each
    threshold (B, T): far, frr, tar, accuracy. resample "none" gives the point estimate (B = 1)."""
    wts = _weights_for(prep, resample, n_boot, seed)
    lv = np.asarray(far_levels, np.float64)
    lv_order = np.argsort(lv, kind="stable")
    taus = np.asarray(thresholds, np.float64)
    if np.isnan(taus).any():
        raise MatchLabError("threshold must be a number, got NaN")
    g = prep.groups_at(taus)
    g_order = np.argsort(g, kind="stable")
    M = prep.ends.shape[0]
    every = max(1, -(-M // _CHECKPOINTS))
    args = (prep.gen, prep.ia, prep.ib, prep.ends, wts.mode, wts.W, wts.keys, _CUT)
    B, R = wts.n_rep, wts.W.shape[2]
    tot, area = np.zeros((B, 2)), np.zeros(B)
    ck, at = np.zeros((M // every + 1, B, 2)), np.zeros((B, len(g), 2))
    _threaded(-(-B // R), lambda lo, hi: _walk_kernel(*args, every, g[g_order], lo, hi, tot, area, ck, at))
    eer, tar = np.empty(B), np.empty((B, len(lv)))
    _threaded(B, lambda lo, hi: _refine_kernel(*args, every, ck, tot, lv[lv_order], lo, hi, eer, tar))
    tar_out = np.empty_like(tar)
    tar_out[:, lv_order] = tar
    at_out = np.empty_like(at)
    at_out[:, g_order] = at
    wg, wi = tot[:, :1], tot[:, 1:]
    tp, fp = at_out[:, :, 0], at_out[:, :, 1]
    n_gen, n_imp = prep.n_genuine, prep.n_impostor
    with np.errstate(invalid="ignore", divide="ignore"):
        # accuracy at the data's own genuine share (see _kfold_kernel: subject weights would tilt it)
        return {
            "auc": area / (2.0 * tot[:, 0] * tot[:, 1]),
            "eer": eer,
            "tar_at_far": tar_out,
            "far": fp / wi,
            "frr": (wg - tp) / wg,
            "tar": tp / wg,
            "accuracy": (n_gen * tp / wg + n_imp * (1.0 - fp / wi)) / (n_gen + n_imp),
            "weights": tot,
        }


def kfold_replicates(
    prep: PreparedPairs, *, resample: str = "identities", n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0
) -> np.ndarray:
    """(B, k) held-out accuracy per fold per replicate (k-fold protocol on re-weighted pairs)."""
    fold = prep.fold  # a local, so the None check below also holds inside the lambda
    if fold is None or prep.n_folds < 2:
        raise MatchLabError("k-fold intervals need pairs with at least 2 folds")
    wts = _weights_for(prep, resample, n_boot, seed)
    out = np.empty((wts.n_rep, prep.n_folds))
    _threaded(
        wts.n_rep,
        lambda lo, hi: _kfold_kernel(
            prep.gen, prep.ia, prep.ib, fold, prep.n_folds, prep.ends, wts.mode, wts.W, wts.keys, _CUT, lo, hi, out
        ),
    )
    return out


def _threaded(n: int, work: Callable[[int, int], object]) -> None:
    """Split range(n) into one contiguous part per CPU thread; the kernels release the GIL (nogil), so
    plain threads run them in parallel without numba's parallel compiler (minutes of compile on a busy CPU)."""
    parts = max(1, min(n, THREADS))
    bounds = np.linspace(0, n, parts + 1).astype(int)
    if parts == 1:
        work(0, n)
        return
    with ThreadPoolExecutor(parts) as pool:
        for f in [pool.submit(work, int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]:
            f.result()


# ---------------------------------------------------------------------------------------- intervals
def check_level(level: float) -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise MatchLabError(f"--ci-level {level}: give a coverage between 0 and 1, e.g. 0.95")
    return level


def ci_key(level: float = DEFAULT_LEVEL) -> str:
    """The JSON field name of an interval: ci95 at 95%, ci90 at 90%, ci99.9 at 99.9%."""
    return f"ci{100 * level:.10g}"


def interval(values: np.ndarray, level: float = DEFAULT_LEVEL, axis: int = 0) -> np.ndarray:
    """Percentile interval [lo, hi] of replicate values along `axis`, ignoring degenerate (NaN) replicates."""
    v = np.asarray(values, np.float64)
    q = [(1 - level) / 2, (1 + level) / 2]
    if v.size == 0 or np.all(np.isnan(v)):
        return np.full((2,) + v.shape[:axis] + v.shape[axis + 1 :], np.nan)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (unreachable levels) give NaN
        return np.nanquantile(v, q, axis=axis)


def _pair(lo_hi: Any) -> list[float] | None:
    lo, hi = (float(x) for x in lo_hi)
    return None if math.isnan(lo) or math.isnan(hi) else [lo, hi]


def rule_of_three(n_impostor: int, level: float = DEFAULT_LEVEL) -> float:
    """Smallest FAR the data can support: the one-sided upper bound on FAR when no impostor of n is
    accepted, -ln(1 - level) / n (= 2.996 / n, the rule of 3, at 95%)."""
    return -math.log(1.0 - level) / max(int(n_impostor), 1)


def _estimate(prep: PreparedPairs, far_levels: Sequence[float], thresholds: Sequence[float]) -> dict:
    return replicates(prep, resample="none", far_levels=far_levels, thresholds=thresholds)


def method_report(
    prep: PreparedPairs,
    *,
    resample: str,
    n_boot: int,
    seed: int,
    level: float,
    far_levels: Sequence[float],
    thresholds: Mapping[str, float],
    kfold: bool,
    band_far: Sequence[float] = (),
    cost: tuple[float, float, float] | None = None,
) -> dict[str, Any]:
    """Intervals of one resampling scheme, JSON-ready: {auc: [lo, hi], eer: ..., tar_at_far: {level: ..},
    at: {name: {far, frr, tar, accuracy}}, kfold_accuracy, band: {far, tar_lo, tar_hi}, degenerate}."""
    levels = list(far_levels) + list(band_far)
    names = list(thresholds)
    reps = replicates(
        prep, resample=resample, n_boot=n_boot, seed=seed, far_levels=levels, thresholds=[thresholds[k] for k in names]
    )
    tar_ci = interval(reps["tar_at_far"], level)
    out: dict[str, Any] = {
        "resample": resample,
        "n_boot": int(n_boot),
        "seed": int(seed),
        "level": level,
        "auc": _pair(interval(reps["auc"], level)),
        "eer": _pair(interval(reps["eer"], level)),
        "tar_at_far": {f"{lv:g}": _pair(tar_ci[:, j]) for j, lv in enumerate(far_levels)},
        "at": {},
        "degenerate": int(np.isnan(reps["auc"]).sum()),
    }
    for t, name in enumerate(names):
        out["at"][name] = {m: _pair(interval(reps[m][:, t], level)) for m in ("far", "frr", "tar", "accuracy")}
        if cost is not None:  # FAR and FRR move against each other: the cost's interval comes from replicates
            prior, c_fa, c_fr = cost
            dcf = c_fr * prior * reps["frr"][:, t] + c_fa * (1 - prior) * reps["far"][:, t]
            out["at"][name]["dcf"] = _pair(interval(dcf, level))
    if band_far:
        nb = len(far_levels)
        out["band"] = {
            "far": [float(x) for x in band_far],
            "tar_lo": tar_ci[0, nb:].tolist(),
            "tar_hi": tar_ci[1, nb:].tolist(),
        }
    if kfold and prep.fold is not None and prep.n_folds >= 2:
        out["kfold_accuracy"] = _pair(
            interval(np.nanmean(kfold_replicates(prep, resample=resample, n_boot=n_boot, seed=seed), axis=1), level)
        )
    return out


def band_levels(n_impostor: int, points: int = 40) -> list[float]:
    """FAR grid for ROC / DET bands: log-spaced from the smallest observable FAR to 1."""
    lo = math.log10(1.0 / max(n_impostor, 1))
    return [float(x) for x in np.logspace(lo, 0.0, points)]


def bootstrap_report(
    scores: Any,
    labels: Any,
    id_a: Any,
    id_b: Any,
    *,
    folds: Any = None,
    thresholds: Mapping[str, float] | None = None,
    far_levels: Sequence[float] = DEFAULT_FAR_LEVELS,
    n_boot: int = DEFAULT_BOOTSTRAP,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
    resample: str = "identities",
    band_points: int = 40,
    cost: tuple[float, float, float] | None = None,
) -> dict[str, Any]:
    """Intervals of every verification number under both schemes, the chosen one first ("default").

    Returns {"default": resample, "level", "n_boot", "seed", "n_identities", "rule_of_three_far",
    "identities": method_report, "pairs": method_report}. kfold intervals need folds (one id per pair)."""
    _check_resample(resample)
    level = check_level(level)
    prep = prepare(scores, labels, id_a, id_b, folds)
    band = band_levels(prep.n_impostor, band_points) if band_points else []
    th = dict(thresholds or {})
    common: dict[str, Any] = dict(
        n_boot=n_boot, seed=seed, level=level, far_levels=far_levels, thresholds=th, kfold=folds is not None, cost=cost
    )
    report: dict[str, Any] = {
        "default": resample,
        "level": level,
        "key": ci_key(level),
        "n_boot": int(n_boot),
        "seed": int(seed),
        "n_identities": prep.n_identities,
        "n_genuine": prep.n_genuine,
        "n_impostor": prep.n_impostor,
        "rule_of_three_far": rule_of_three(prep.n_impostor, level),
    }
    for method in (resample,) + tuple(m for m in RESAMPLE if m != resample):
        report[method] = method_report(prep, resample=method, band_far=band if method == resample else (), **common)
    return report


def kfold_folds(labels: Any, folds: Any, k: int = 10, seed: int = 0) -> np.ndarray:
    """The folds k-fold accuracy uses: the protocol's, or seeded stratified ones when all are -1."""
    f = np.asarray(folds, np.int64) if folds is not None else None
    if f is None or np.all(f == -1):
        return stratified_folds(np.asarray(labels), k, seed)
    return f
