"""Verification (1:1) metrics: ROC, AUC, EER, TAR@FAR, DET, threshold sweeps, k-fold accuracy.

Main entry points: `roc_points(scores, labels)` then `auc` / `eer` / `tar_at_far` / `sweep_table` on
the result, or `verification_report(scores, labels, folds)` for everything at once. Definitions follow
docs/metrics.md. Everything derives from ONE descending sort plus cumulative counts, computed
with torch on the tensor's device (GPU for 1e8 scores) or with numpy for numpy input; only a few
scalars cross to the host, and scalar arithmetic happens in Python so both paths give equal numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
import torch

from core.errors import MatchLabError

if TYPE_CHECKING:  # annotation only (torch depends on typing_extensions); TypeIs narrows both branches
    from typing_extensions import TypeIs

Array = np.ndarray | torch.Tensor
DEFAULT_FAR_LEVELS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
MIN_EVENTS = 30  # metrics.md sanity rule: fewer counted events than this is a small-sample figure


# ---------------------------------------------------------------- backend helpers (shared by siblings)
def is_torch(x: Any) -> TypeIs[torch.Tensor]:
    return isinstance(x, torch.Tensor)


def to_numpy(x: Any) -> np.ndarray:
    """Host numpy copy (or view) of a numpy array, tensor on any device, or sequence."""
    return x.detach().cpu().numpy() if is_torch(x) else np.asarray(x)


def _on_backend_of(x: Any, ref: Array) -> Array:
    """`x` as the same kind of array as `ref` (a tensor on ref's device, or numpy)."""
    if is_torch(ref):
        return torch.as_tensor(to_numpy(x) if not is_torch(x) else x, device=ref.device)
    return to_numpy(x)


def _level_key(level: float) -> str:
    """Dictionary key of a FAR / FPIR level: the shortest text that reads back as exactly this float
    (repr), so distinct levels never share a key ("0.001", "1e-05", "0.3333333333333333")."""
    return repr(float(level))


def _rate(count: Array, n: int) -> Array:
    """count / n in float64 on every backend: torch divides int64 into float32 by default, and a float32
    k/N can exceed a float64 level that k/N reaches exactly (issue 20)."""
    return count.double() / n if is_torch(count) else count / n


def check_pairs(scores: Any, labels: Any, require_both: bool = True) -> tuple[Array, Array, int, int]:
    """Validate a score/label set; returns (scores, positive: bool, n_genuine, n_impostor).

    scores: (N,) float, numpy or tensor; labels: (N,) 1 genuine / 0 impostor (bool or int), moved to
    the scores' backend. NaN scores or labels outside {0, 1} are a MatchLabError, never a NaN result.
    """
    if not is_torch(scores):
        scores = np.asarray(scores)
    labels = _on_backend_of(labels, scores)
    if scores.ndim != 1 or labels.ndim != 1 or scores.shape[0] != labels.shape[0]:
        raise MatchLabError(
            f"scores and labels must be 1-D of equal length: got shapes {tuple(scores.shape)} and {tuple(labels.shape)}"
        )
    if scores.shape[0] == 0:
        raise MatchLabError("verification needs pairs: got 0 scores")
    if is_torch(scores):
        if not scores.is_floating_point():
            scores = scores.double()
        positive = labels if labels.dtype == torch.bool else labels != 0
        # one host sync for all three checks
        n_nan, n_bad, n_gen = torch.stack(
            [
                torch.isnan(scores).sum(),
                ((labels != 0) & (labels != 1)).sum()
                if labels.dtype != torch.bool
                else torch.zeros((), dtype=torch.long, device=scores.device),
                positive.sum(),
            ]
        ).tolist()
    else:
        if not np.issubdtype(scores.dtype, np.floating):
            scores = scores.astype(np.float64)
        positive = labels if labels.dtype == bool else labels != 0
        # one reduction, no temporary: a NaN makes the sum NaN (so can inf - inf; then count exactly)
        with np.errstate(invalid="ignore", over="ignore"):
            suspect = np.isnan(scores.sum())
        n_nan = int(np.isnan(scores).sum()) if suspect else 0
        n_bad = (
            0
            if labels.dtype == bool or labels.shape[0] == 0 or (labels.min() >= 0 and labels.max() <= 1)
            else int(((labels != 0) & (labels != 1)).sum())
        )
        n_gen = int(np.count_nonzero(positive))
    if n_nan:
        raise MatchLabError(f"scores contain {n_nan} NaN values: fix the embeddings or drop those pairs")
    if n_bad:
        raise MatchLabError(f"labels must be 1 (genuine) or 0 (impostor): got {n_bad} other values")
    n_imp = int(scores.shape[0]) - int(n_gen)
    if require_both and (n_gen == 0 or n_imp == 0):
        raise MatchLabError(
            f"verification needs both genuine and impostor pairs: got {n_gen} genuine and {n_imp} impostor pairs"
        )
    return scores, positive, int(n_gen), n_imp


# ---------------------------------------------------------------------------------------- ROC points
class RocPoints:
    """Operating points at every distinct score value, descending (accept when s >= threshold).

    Index 0 is threshold +inf (accept nothing: FAR 0, TAR 0), as in sklearn's roc_curve with
    drop_intermediate=False. The `*_dev` arrays stay on the compute device (torch on GPU, or numpy)
    so auc/eer/tar_at_far never copy M points to the host; the public numpy arrays (`thresholds`,
    `far`, `tar`, `tp`, ...) are materialised on first access.
    thresholds_dev: (M+1,) float64; tp_dev, fp_dev: (M+1,) int64 genuine / impostor pairs accepted.
    Built either from those three arrays, or (host float32 scores) from `_SortedKeys`, which answers
    auc, eer, TAR@FAR, counts and sweeps by searches and builds the three arrays only when read.
    """

    def __init__(
        self,
        thresholds_dev: Array | None,
        tp_dev: Array | None,
        fp_dev: Array | None,
        n_genuine: int,
        n_impostor: int,
        *,
        keyed: _SortedKeys | None = None,
    ) -> None:
        if keyed is None and (thresholds_dev is None or tp_dev is None or fp_dev is None):
            raise ValueError("RocPoints needs thresholds, tp and fp arrays, or sorted keys")
        self._given = None if keyed is not None else (thresholds_dev, tp_dev, fp_dev)
        self.keyed = keyed
        self.n_genuine = n_genuine
        self.n_impostor = n_impostor

    @cached_property
    def _arrays(self) -> tuple[Array, Array, Array]:
        if self._given is not None:
            return cast(tuple[Array, Array, Array], self._given)
        return cast(_SortedKeys, self.keyed).materialise()

    @property
    def thresholds_dev(self) -> Array:
        return self._arrays[0]

    @property
    def tp_dev(self) -> Array:
        return self._arrays[1]

    @property
    def fp_dev(self) -> Array:
        return self._arrays[2]

    def __len__(self) -> int:
        return len(self.keyed) if self.keyed is not None else int(self.tp_dev.shape[0])

    @property
    def n_pairs(self) -> int:
        return self.n_genuine + self.n_impostor

    @cached_property
    def far_dev(self) -> Array:
        return _rate(self.fp_dev, self.n_impostor)

    @cached_property
    def _neg_thresholds_dev(self) -> Array:
        # ascending copy for searchsorted (torch has no descending search)
        return -self.thresholds_dev

    @cached_property
    def thresholds(self) -> np.ndarray:
        return to_numpy(self.thresholds_dev)

    @cached_property
    def tp(self) -> np.ndarray:
        return to_numpy(self.tp_dev)

    @cached_property
    def fp(self) -> np.ndarray:
        return to_numpy(self.fp_dev)

    @property
    def fn(self) -> np.ndarray:
        return self.n_genuine - self.tp

    @property
    def tn(self) -> np.ndarray:
        return self.n_impostor - self.fp

    @property
    def far(self) -> np.ndarray:
        return self.fp / self.n_impostor

    @property
    def tar(self) -> np.ndarray:
        return self.tp / self.n_genuine

    @property
    def frr(self) -> np.ndarray:
        return self.fn / self.n_genuine

    def counts(self, i: int) -> tuple[int, int]:
        """(tp, fp) at one point index, as Python ints (what the binary searches read)."""
        if self.keyed is not None:
            got = self.at([i])
            return int(got["tp"][0]), int(got["fp"][0])
        return int(self.tp_dev[i]), int(self.fp_dev[i])

    def at(self, idx: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """threshold, tp, fp at a few indices, copied to the host together."""
        if self.keyed is not None:
            return self.keyed.at_points(np.asarray(idx, dtype=np.int64))
        if is_torch(self.tp_dev):
            i = torch.as_tensor(np.asarray(idx, dtype=np.int64), device=self.tp_dev.device)
            packed = (
                torch.stack([self.thresholds_dev[i], self.tp_dev[i].double(), self.fp_dev[i].double()]).cpu().numpy()
            )
            thr, tp, fp = packed[0], packed[1].astype(np.int64), packed[2].astype(np.int64)
        else:
            host_i = np.asarray(idx, dtype=np.int64)
            thr, tp, fp = self.thresholds_dev[host_i], self.tp_dev[host_i], self.fp_dev[host_i]
        return {
            "threshold": np.asarray(thr, dtype=np.float64),
            "tp": np.asarray(tp, dtype=np.int64),
            "fp": np.asarray(fp, dtype=np.int64),
        }


def _score_keys(scores: np.ndarray) -> np.ndarray:
    """(N,) uint32 whose ascending order is the descending order of float32 `scores` (a new array).

    IEEE sign-magnitude: flip the magnitude bits of non-negatives, keep negatives' bits (the complement
    of the ascending map); -0.0 is folded into +0.0 first so equal scores get equal keys.
    """
    u = (scores + np.float32(0)).view(np.uint32)  # + 0 turns -0.0 into +0.0 (and is the one copy)
    flip = u.view(np.int32) >> 31  # arithmetic shift: 0 for non-negatives, -1 for negatives
    np.invert(flip, out=flip)
    np.bitwise_and(flip, 0x7FFFFFFF, out=flip)
    u ^= flip.view(np.uint32)
    return u


def _descending_keys(scores: np.ndarray, positive: np.ndarray) -> np.ndarray | None:
    """One uint64 per pair whose ascending order is the descending score order, label in bit 0.

    The float32 score's `_score_keys` value shifted left by one, or-ed with the label. Sorting these
    with np.sort (SIMD) replaces an argsort plus a gather of the labels, and within a run of equal
    scores puts impostors before genuine pairs. None when the scores are not exactly float32.
    """
    if scores.dtype != np.float32:
        s32 = scores.astype(np.float32)
        if not np.array_equal(s32, scores):
            return None
        scores = s32
    keys = _score_keys(scores).astype(np.uint64)
    keys <<= np.uint64(1)
    keys |= positive
    return keys


def _key_scores(keys32: np.ndarray) -> np.ndarray:
    """float64 scores back from `_score_keys` values (uint32)."""
    flip = keys32.view(np.int32) >> 31
    np.invert(flip, out=flip)
    np.bitwise_and(flip, 0x7FFFFFFF, out=flip)
    flip ^= keys32.view(np.int32)
    return flip.view(np.float32).astype(np.float64)


class _SortedKeys:
    """A host ROC before any per-point array: the sorted keys and the genuine cumulative count.

    keys: (N,) uint64 ascending (scores descending), each a score's `_score_keys` value (label dropped);
    tps: (N,) int64 genuine pairs among the first e + 1; ties: (T,) positions e with keys[e] ==
    keys[e + 1], i.e. not the end of a run of equal scores. Operating point i >= 1 is the end of the
    i-th run. Writing M ~ N per-point arrays (thresholds, tp, fp) cost more than the sort itself on 1e7
    scores, so auc, eer, TAR@FAR and threshold counts read these by searches and one sum instead, and
    `materialise` builds the arrays only for callers that read every point.
    """

    def __init__(self, keys: np.ndarray, tps: np.ndarray) -> None:
        self.keys, self.tps = keys, tps
        self.ties = np.flatnonzero(keys[1:] == keys[:-1])
        # ties[j] - j = run ends before the j-th tie: one search maps a point index to its position
        self._ends_before_tie = self.ties - np.arange(self.ties.shape[0])

    def __len__(self) -> int:
        return int(self.keys.shape[0] - self.ties.shape[0] + 1)

    def positions(self, idx: np.ndarray) -> np.ndarray:
        """Element position (in the sorted order) of points idx >= 1: the last pair of their run."""
        k = idx - 1
        return k + np.searchsorted(self._ends_before_tie, k, side="right")

    def at_positions(self, pos: np.ndarray) -> dict[str, np.ndarray]:
        """threshold, tp, fp when accepting the first pos + 1 pairs (pos = -1: none, threshold +inf)."""
        none = pos < 0
        safe = np.where(none, 0, pos)
        tp = np.where(none, 0, self.tps[safe])
        thr = _key_scores(self.keys[safe].astype(np.uint32))
        thr[none] = math.inf
        return {"threshold": thr, "tp": tp, "fp": pos + 1 - tp}

    def at_points(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        if np.any((idx < 0) | (idx >= len(self))):
            raise IndexError(f"point index out of range 0..{len(self) - 1}")
        return self.at_positions(np.where(idx == 0, -1, self.positions(np.maximum(idx, 1))))

    def accepted(self, taus: np.ndarray) -> np.ndarray:
        """Pairs with score >= tau for each float64 tau (not NaN): a search of the keys, exact."""
        with np.errstate(over="ignore"):
            t32 = taus.astype(np.float32)  # nearest float32 (+-inf beyond its range)
        up = t32.astype(np.float64) < taus
        # a float32 score s >= tau  <=>  s >= the smallest float32 >= tau
        t32[up] = np.nextafter(t32[up], np.float32(np.inf))
        return np.searchsorted(self.keys, _score_keys(t32).astype(np.uint64), side="right")

    def twice_auc(self, n_genuine: int) -> int | None:
        """2 x AUC x n_genuine x n_impostor as an exact integer, None if int64 sums could overflow.

        Trapezoids: sum over runs r of b_r (2 tp_before_r + a_r), a_r / b_r its genuine / impostor pairs.
        Impostors sort first within a run, so each has tps = tp_before_r, and the genuine pairs' tps are
        1..n_genuine: the sum is 2 (sum(tps) - n_genuine (n_genuine + 1) / 2) + sum over tied runs of a_r b_r.
        """
        n = int(self.keys.shape[0])
        if n * max(n_genuine, 1) >= 2**62:
            return None
        twice = 2 * (int(self.tps.sum()) - n_genuine * (n_genuine + 1) // 2)
        t = self.ties
        if t.shape[0]:
            brk = np.flatnonzero(np.diff(t) != 1)
            starts = t[np.concatenate([[0], brk + 1])]
            ends = t[np.concatenate([brk, [t.shape[0] - 1]])] + 1
            before = np.where(starts > 0, self.tps[starts - 1], 0)
            a = self.tps[ends] - before
            twice += int(np.dot(a, ends - starts + 1 - a))
        return twice

    def best_gain(self) -> int:
        """Position of the first maximum of tp - fp over every pair (-1: accepting none is best).
        Within a run impostors come first, so tp - fp dips then rises: its maxima are at run ends."""
        gain = self.tps * 2
        gain -= np.arange(1, gain.shape[0] + 1)
        e = int(gain.argmax())
        return e if gain[e] > 0 else -1

    def materialise(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(thresholds, tp, fp) at every point, as `RocPoints` holds them."""
        ends = np.ones(self.keys.shape[0], bool)
        ends[self.ties] = False
        last = np.flatnonzero(ends)
        del ends
        m = last.shape[0] + 1
        thresholds, tp, fp = np.empty(m, np.float64), np.zeros(m, np.int64), np.zeros(m, np.int64)
        thresholds[0] = math.inf
        thresholds[1:] = _key_scores(self.keys[last].astype(np.uint32))
        np.take(self.tps, last, out=tp[1:])
        np.add(last, 1, out=fp[1:])
        fp[1:] -= tp[1:]
        return thresholds, tp, fp


def _points_from_keys(keys: np.ndarray, n_genuine: int, n_impostor: int) -> RocPoints:
    keys.sort()  # in place: the one sort
    # the labels are bit 0 of each key's lowest byte (little-endian): a strided view, no 8-byte temporary
    low = keys.view(np.uint8)[::8] if np.little_endian else (keys & np.uint64(1)).astype(np.uint8)
    tps = np.cumsum(low & np.uint8(1), dtype=np.int64)  # the one cumulative sum
    keys >>= np.uint64(1)
    return RocPoints(None, None, None, n_genuine, n_impostor, keyed=_SortedKeys(keys, tps))


def _points_on_device(scores: torch.Tensor, positive: Array, n_genuine: int, n_impostor: int) -> RocPoints:
    """`points_from_counts` for a CUDA tensor: torch sort and cumulative sum on its device."""
    s, order = torch.sort(scores, descending=True)
    tps = torch.cumsum(positive[order], 0)
    last = torch.nonzero(s[1:] != s[:-1]).squeeze(1)
    last = torch.cat([last, torch.tensor([s.shape[0] - 1], device=s.device)])
    tp = tps[last]
    fp = last + 1 - tp
    zero = torch.zeros(1, dtype=torch.int64, device=s.device)
    inf = torch.full((1,), math.inf, dtype=torch.float64, device=s.device)
    return RocPoints(
        torch.cat([inf, s[last].double()]), torch.cat([zero, tp]), torch.cat([zero, fp]), n_genuine, n_impostor
    )


def points_from_counts(scores: Array, positive: Array, n_genuine: int, n_impostor: int) -> RocPoints:
    """RocPoints from validated scores (N,) and positive (N,) bool; either class may be empty here.

    CUDA tensors stay on their device (torch sort). Host data (numpy, CPU tensors) goes through
    `_descending_keys`: one SIMD sort of packed score+label keys and one cumulative sum, with
    float64 scores that are not exactly float32 taking a stable argsort instead. Same numbers either way.
    """
    if is_torch(scores) and scores.device.type != "cpu":
        return _points_on_device(scores, positive, n_genuine, n_impostor)
    if is_torch(scores) and scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()  # exact; numpy has no bfloat16
    scores, positive = to_numpy(scores), to_numpy(positive)
    if scores.dtype not in (np.float32, np.float64):
        scores = scores.astype(np.float64)
    keys = _descending_keys(scores, positive.astype(bool, copy=False))
    if keys is not None:
        return _points_from_keys(keys, n_genuine, n_impostor)
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    tps = np.cumsum(positive[order], dtype=np.int64)
    last = np.append(np.flatnonzero(s[1:] != s[:-1]), s.shape[0] - 1)
    tp = tps[last]
    fp = last + 1 - tp
    return RocPoints(
        np.concatenate([[math.inf], s[last].astype(np.float64)]),
        np.concatenate([[0], tp]).astype(np.int64),
        np.concatenate([[0], fp]).astype(np.int64),
        n_genuine,
        n_impostor,
    )


def roc_points(scores: Array, labels: Array) -> RocPoints:
    """ROC operating points. scores: (N,) float (higher = more similar); labels: (N,) 1 genuine / 0 impostor.

    Torch input on a GPU is computed there; host input (numpy, CPU tensors) with numpy's SIMD sort of
    packed keys (`points_from_counts`); the numbers are identical.
    """
    if is_torch(scores) and scores.device.type == "cpu":
        scores = to_numpy(scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores)
        labels = to_numpy(labels)
    scores, positive, n_gen, n_imp = check_pairs(scores, labels)
    return points_from_counts(scores, positive, n_gen, n_imp)


# ------------------------------------------------------------------------------------ summary numbers
def auc(points: RocPoints) -> float:
    """Area under the ROC (trapezoid over all points; equals sklearn roc_auc_score, ties included)."""
    denom = 2 * points.n_genuine * points.n_impostor
    if points.keyed is not None and denom < 2**62:
        twice = points.keyed.twice_auc(points.n_genuine)
        if twice is not None:
            return twice / denom
    tp, fp = points.tp_dev, points.fp_dev
    if denom < 2**62:
        # exact integer trapezoid sum: identical on both backends, no summation-order drift
        if is_torch(tp):
            twice_area = int(((fp[1:] - fp[:-1]) * (tp[1:] + tp[:-1])).sum())
        else:
            twice_area = int(np.dot(np.diff(fp), tp[1:] + tp[:-1]))
        return twice_area / denom
    far, tar = points.far_dev, _rate(tp, points.n_genuine)
    return float((((far[1:] - far[:-1]) * (tar[1:] + tar[:-1])) / 2).sum())


def _first_index(points: RocPoints, reached: Callable[[int, int], bool]) -> int:
    """The first point index i where reached(tp[i], fp[i]) holds, for a condition that is monotone
    along the points (tp and fp only grow): a binary search reading O(log M) scalars, no pass over M."""
    lo, hi = 0, len(points) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if reached(*points.counts(mid)):
            hi = mid
        else:
            lo = mid + 1
    return lo


def eer(points: RocPoints) -> tuple[float, float]:
    """Equal error rate and its threshold, interpolated linearly between the two neighbouring points
    where FAR - FRR changes sign (metrics.md). Returns (eer, threshold)."""
    n_gen, n_imp = points.n_genuine, points.n_impostor
    # FAR - FRR >= 0  <=>  fp * n_gen + tp * n_imp >= n_gen * n_imp, in exact integers (Python ints);
    # the last point (accept all) always reaches it, index 0 (accept nothing) never does
    i = _first_index(points, lambda tp, fp: fp * n_gen + tp * n_imp >= n_gen * n_imp)
    got = points.at([i - 1, i])
    thr, tp, fp = got["threshold"], got["tp"], got["fp"]
    far = fp / n_imp
    d = far - (n_gen - tp) / n_gen
    if int(fp[1]) * n_gen + int(tp[1]) * n_imp == n_gen * n_imp:
        return float(far[1]), float(thr[1])
    t = -d[0] / (d[1] - d[0])
    rate = float(far[0] + t * (far[1] - far[0]))
    # the neighbour above may be the +inf "accept nothing" point: report the finite one
    threshold = float(thr[1]) if math.isinf(thr[0]) else float(thr[0] + t * (thr[1] - thr[0]))
    return rate, threshold


def _max_false_accepts(level: float, n: int) -> int:
    """The largest count k in [0, n] whose rate k / n (float64, as sklearn's fpr) is <= level."""
    if level >= 1:
        return n
    k = min(n, max(0, math.floor(level * n)))
    while k < n and (k + 1) / n <= level:
        k += 1
    while k > 0 and k / n > level:
        k -= 1
    return k


def _indices_at_far(points: RocPoints, levels: Sequence[float]) -> np.ndarray:
    """For each level, index of the lowest threshold with FAR <= level (the max-TAR point): a search
    of the integer false-accept counts, so no per-point rate array is built and both backends agree."""
    lv = np.asarray(levels, dtype=np.float64)
    if np.any(~(lv >= 0)):
        raise MatchLabError(f"FAR levels must be >= 0: got {list(levels)}")
    ks = np.array([_max_false_accepts(float(x), points.n_impostor) for x in lv], dtype=np.int64)
    if points.keyed is not None:
        last = len(points) - 1
        out = []
        for k in ks.tolist():

            def past(tp: int, fp: int, k: int = k) -> bool:  # the first point past k false accepts
                return fp > k

            i = _first_index(points, past)
            out.append(i if i == last and points.counts(i)[1] <= k else i - 1)
        return np.asarray(out, dtype=np.int64)
    if is_torch(points.fp_dev):
        q = torch.as_tensor(ks, device=points.fp_dev.device)
        idx = torch.searchsorted(points.fp_dev, q, right=True).cpu().numpy()
    else:
        idx = np.searchsorted(points.fp_dev, ks, side="right")
    return idx - 1  # >= 0: index 0 has FAR 0


def far_level_rows(points: RocPoints, levels: Sequence[float]) -> list[dict[str, Any]]:
    """Per level: idx, threshold, tp, fp at the max-TAR point with FAR <= level, and reachable
    (level >= 1/n_impostor, the smallest observable FAR). Shared by TAR@FAR and open-set DIR@FPIR."""
    idx = _indices_at_far(points, levels)
    got = points.at(idx)
    return [
        {
            "level": float(lv),
            "idx": int(i),
            "threshold": float(got["threshold"][j]),
            "tp": int(got["tp"][j]),
            "fp": int(got["fp"][j]),
            "reachable": 1.0 / points.n_impostor <= lv,
        }
        for j, (lv, i) in enumerate(zip(levels, idx))
    ]


def _is_stable(n_events: int, level: float) -> bool:
    return level > 0 and n_events >= MIN_EVENTS / level * (1 - 1e-12)


def tar_at_far(points: RocPoints, far_levels: Sequence[float] = DEFAULT_FAR_LEVELS) -> dict[str, dict[str, Any]]:
    """TAR@FAR=x: the largest TAR over thresholds with FAR <= x, with that threshold and the FAR
    reached. Keyed by `_level_key(x)` (repr: exact, so distinct levels never merge). Unreachable (x < 1/n_impostor) gives None values; stable means
    n_impostor >= 30/x. A threshold of +inf means no finite threshold reaches x (ties at the top)."""
    out = {}
    for row in far_level_rows(points, far_levels):
        reach = row["reachable"]
        out[_level_key(row["level"])] = {
            "tar": row["tp"] / points.n_genuine if reach else None,
            "threshold": row["threshold"] if reach else None,
            "far": row["fp"] / points.n_impostor if reach else None,
            "reachable": reach,
            "stable": _is_stable(points.n_impostor, row["level"]),
        }
    return out


def threshold_for_far(points: RocPoints, target_far: float) -> float:
    """The lowest threshold whose FAR <= target_far (max TAR subject to FAR <= target)."""
    return far_level_rows(points, [target_far])[0]["threshold"]


def best_accuracy_threshold(points: RocPoints) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy; ties go to the highest threshold."""
    if points.keyed is not None:
        got = points.keyed.at_positions(np.array([points.keyed.best_gain()]))
    else:
        gain = points.tp_dev - points.fp_dev  # accuracy = (tp + n_imp - fp) / n, so maximise tp - fp
        got = points.at([int(gain.argmax())])
    acc = (int(got["tp"][0]) + points.n_impostor - int(got["fp"][0])) / points.n_pairs
    return float(got["threshold"][0]), acc


@dataclass
class DetPoints:
    """DET curve: FRR against FAR, plus their probit (normal deviate) transforms for the axes.
    Arrays (M+1,) in the RocPoints order; probabilities are clipped to [0.5/n, 1 - 0.5/n] before
    norm.ppf so 0 and 1 stay finite, half a count beyond the most extreme observable rate."""

    thresholds: np.ndarray
    far: np.ndarray
    frr: np.ndarray
    far_probit: np.ndarray
    frr_probit: np.ndarray


def det_points(points: RocPoints) -> DetPoints:
    from scipy.special import ndtri  # norm.ppf itself; scipy.stats would add a second to every CLI start

    def probit(p: np.ndarray, n: int) -> np.ndarray:
        eps = 0.5 / n
        return ndtri(np.clip(p, eps, 1 - eps))

    far, frr = points.far, points.frr
    return DetPoints(points.thresholds, far, frr, probit(far, points.n_impostor), probit(frr, points.n_genuine))


def counts_at_threshold(points: RocPoints, tau: float | np.ndarray) -> dict[str, Any]:
    """Exact tp/fp/tn/fn/far/frr/tar/accuracy when accepting s >= tau, by binary search (O(log M)).

    tau: a float (values are Python numbers) or (T,) array (values are (T,) numpy arrays).
    """
    taus = np.atleast_1d(np.asarray(tau, dtype=np.float64))
    if np.isnan(taus).any():
        raise MatchLabError("threshold must be a number, got NaN")
    if points.keyed is not None:
        got = points.keyed.at_positions(points.keyed.accepted(taus) - 1)
        return _counts_table(points, got["tp"], got["fp"], scalar=np.ndim(tau) == 0)
    neg = points._neg_thresholds_dev
    if is_torch(neg):
        count = torch.searchsorted(neg, torch.as_tensor(-taus, device=neg.device), right=True)
        idx = (count - 1).cpu().numpy()
    else:
        idx = np.searchsorted(neg, -taus, side="right") - 1  # index of the smallest threshold >= tau
    got = points.at(idx)
    return _counts_table(points, got["tp"], got["fp"], scalar=np.ndim(tau) == 0)


def _counts_table(points: RocPoints, tp: np.ndarray, fp: np.ndarray, *, scalar: bool) -> dict[str, Any]:
    fn, tn = points.n_genuine - tp, points.n_impostor - fp
    out = {
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "far": fp / points.n_impostor,
        "frr": fn / points.n_genuine,
        "tar": tp / points.n_genuine,
        "accuracy": (tp + tn) / points.n_pairs,
    }
    if scalar:
        return {k: v[0].item() for k, v in out.items()}
    return out


def sweep_table(points: RocPoints, n: int | None = None) -> pd.DataFrame:
    """Threshold sweep: columns threshold, far, frr, tar, accuracy, tp, fp, tn, fn.

    n=None: one row per operating point (the +inf row included). n: n thresholds evenly spaced from
    the lowest to the highest finite score (for a slider), with exact counts at each.
    """
    cols = ["threshold", "far", "frr", "tar", "accuracy", "tp", "fp", "tn", "fn"]
    if n is None:
        tp, fp, tn, fn = points.tp, points.fp, points.tn, points.fn
        return pd.DataFrame(
            {
                "threshold": points.thresholds,
                "far": points.far,
                "frr": points.frr,
                "tar": points.tar,
                "accuracy": (tp + tn) / points.n_pairs,
                "tp": tp,
                "fp": fp,
                "tn": tn,
                "fn": fn,
            }
        )[cols]
    if n < 2:
        raise MatchLabError(f"a sweep needs at least 2 thresholds: got n={n}")
    hi, lo = points.at([1, len(points) - 1])["threshold"]
    if not (np.isfinite(hi) and np.isfinite(lo)):  # ±inf scores: sweep the finite ones' range
        finite = points.thresholds[np.isfinite(points.thresholds)]
        if not len(finite):
            raise MatchLabError("a threshold sweep needs at least one finite score: every score is ±inf")
        hi, lo = finite.max(), finite.min()
    taus = np.linspace(lo, hi, n)
    table = counts_at_threshold(points, taus)
    return pd.DataFrame({"threshold": taus, **table})[cols]


# ---------------------------------------------------------------------------- protocols and views
def stratified_folds(labels: Array, k: int = 10, seed: int = 0) -> np.ndarray:
    """(N,) int fold ids 0..k-1, each fold holding the same share of genuine and impostor pairs."""
    y = to_numpy(labels).astype(bool)
    rng = np.random.default_rng(seed)
    folds = np.empty(y.shape[0], dtype=np.int64)
    offset = 0
    for cls in (True, False):
        idx = rng.permutation(np.flatnonzero(y == cls))
        # continue the round-robin across classes so fold sizes differ by at most one
        folds[idx] = (np.arange(idx.shape[0]) + offset) % k
        offset += idx.shape[0]
    return folds


def kfold_accuracy(
    scores: Array, labels: Array, folds: Array | None = None, k: int = 10, seed: int = 0
) -> dict[str, Any]:
    """LFW protocol accuracy: per fold, the threshold maximising accuracy on the other folds, applied
    to the held-out fold. folds: (N,) int fold ids, or None / all -1 for k seeded stratified folds.
    Returns mean, std (population, as the LFW reference code), fold_accuracies, fold_thresholds, k."""
    scores, positive, _, _ = check_pairs(scores, labels)
    f = to_numpy(folds).astype(np.int64) if folds is not None else None
    if f is None or np.all(f == -1):
        f = stratified_folds(to_numpy(positive), k, seed)
    elif f.shape != (scores.shape[0],) or np.any(f < 0):
        raise MatchLabError(
            "folds must be one id >= 0 per pair, or all -1 to make seeded folds: "
            f"got shape {f.shape} with {int(np.sum(f < 0))} negative ids"
        )
    fold_ids = np.unique(f)
    if fold_ids.shape[0] < 2:
        raise MatchLabError(f"k-fold accuracy needs at least 2 folds: got {fold_ids.shape[0]}")
    f_dev = _on_backend_of(f, scores)
    accs, thrs = [], []
    for fid in fold_ids:
        held = f_dev == int(fid)
        train_s, train_p = scores[~held], positive[~held]
        n_gen = int(train_p.sum())
        if n_gen == 0 or n_gen == train_p.shape[0]:
            raise MatchLabError(f"k-fold: the folds other than fold {fid} lack genuine or impostor pairs")
        tau, _ = best_accuracy_threshold(points_from_counts(train_s, train_p, n_gen, int(train_p.shape[0]) - n_gen))
        correct = int(((scores[held] >= tau) == positive[held]).sum())
        accs.append(correct / int(held.sum()))
        thrs.append(tau)
    return {
        "mean": float(np.mean(accs)),
        "std": float(np.std(accs)),
        "fold_accuracies": accs,
        "fold_thresholds": thrs,
        "k": int(fold_ids.shape[0]),
        "fold_sizes": [int(np.sum(f == fid)) for fid in fold_ids],
    }


def _bin_index(scores: Array, edges: np.ndarray) -> Array:
    """Bin b with edges[b] <= s < edges[b+1] (last bin closed); out-of-range scores clamp to the end
    bins. Compares against the float64 edges themselves, so s >= edges[b] <=> bin >= b exactly."""
    inner = edges[1:-1]
    if is_torch(scores):
        # mixed float32 scores / float64 edges compare exactly, with no float64 copy of a huge block
        return torch.bucketize(scores, torch.as_tensor(inner, device=scores.device), right=True, out_int32=True)
    return np.searchsorted(inner, scores, side="right")


def _bin_counts(scores: Array, positive: Array, edges: np.ndarray) -> tuple[Array, Array]:
    """(genuine, impostor) counts per bin, (B,) int64 each, in one bincount."""
    bins = edges.shape[0] - 1
    b = _bin_index(scores, edges)
    both: Array
    if is_torch(b):
        # check_pairs put positive on the scores' backend, which _bin_index keeps
        both = torch.bincount(b + bins * cast(torch.Tensor, positive).int(), minlength=2 * bins)
    else:
        both = np.bincount(b + bins * cast(np.ndarray, positive).astype(np.int64), minlength=2 * bins).astype(np.int64)
    return both[bins:], both[:bins]


def score_histograms(
    scores: Array, labels: Array, bins: int = 100, range: tuple[float, float] | None = None
) -> dict[str, np.ndarray]:
    """Genuine and impostor score histograms on shared edges. Returns edges (bins+1,) float64 and
    genuine, impostor (bins,) int64 counts; like np.histogram: last bin closed, out-of-range dropped."""
    scores, positive, _, _ = check_pairs(scores, labels, require_both=False)
    if range is None:
        lo, hi = (
            float(v)
            for v in to_numpy(
                torch.stack([scores.min(), scores.max()]) if is_torch(scores) else [scores.min(), scores.max()]
            )
        )
        if lo == hi:  # np.histogram's convention for a single value
            lo, hi = lo - 0.5, hi + 0.5
    else:
        lo, hi = map(float, range)
        if not lo < hi:
            raise MatchLabError(f"histogram range must be (low, high) with low < high: got {range}")
        keep = (scores >= lo) & (scores <= hi)
        scores, positive = scores[keep], positive[keep]
    edges = np.linspace(lo, hi, bins + 1)
    gen, imp = _bin_counts(scores, positive, edges)
    return {"edges": edges, "genuine": to_numpy(gen), "impostor": to_numpy(imp)}


def hardest_pairs(scores: Array, labels: Array, k: int = 20) -> dict[str, np.ndarray]:
    """Pair indices (into scores) of the k highest-scoring impostors (false accepts first) and the k
    lowest-scoring genuines (false rejects first), with their scores; ties keep the lower index first."""
    scores, positive, _, _ = check_pairs(scores, labels, require_both=False)
    out = {}
    idx: Array
    for name, mask, sign in (("false_accept", ~positive, -1.0), ("false_reject", positive, 1.0)):
        if is_torch(scores):
            # check_pairs put the labels (so mask) on the scores' backend
            idx = torch.nonzero(cast(torch.Tensor, mask)).squeeze(1)
            idx = idx[torch.sort(sign * scores[idx], stable=True).indices[:k]]
        else:
            idx = np.flatnonzero(mask)
            idx = idx[np.argsort(sign * scores[idx], kind="stable")[:k]]
        out[name + "s"] = to_numpy(idx).astype(np.int64)
        out[name + "_scores"] = to_numpy(scores[idx]).astype(np.float64)
    return out


class StreamingRoc:
    """ROC from score histograms accumulated block by block, for all-pairs sets (1e5 images ->
    5e9 scores) that cannot be held at once. Operating points sit at the lower edges of non-empty
    bins, so counts there are exact; between edges the resolution is one bin width.

    bins: number of equal bins over `range`; scores outside it are clamped into the end bins and
    counted in n_out_of_range. Accumulates on the device of the first block (torch) or in numpy.
    """

    def __init__(self, bins: int = 2**16, range: tuple[float, float] = (-1.0, 1.0)):
        lo, hi = map(float, range)
        if not lo < hi or bins < 1:
            raise MatchLabError(f"StreamingRoc needs bins >= 1 and low < high: got {bins}, {range}")
        self.edges = np.linspace(lo, hi, bins + 1)
        self.genuine: Array | None = None
        self.impostor: Array | None = None
        self.n_out_of_range = 0

    def update(self, scores: Array, labels: Array) -> None:
        """Add a block. scores: (B,) float; labels: (B,) 1 genuine / 0 impostor."""
        scores, positive, _, _ = check_pairs(scores, labels, require_both=False)
        gen, imp = _bin_counts(scores, positive, self.edges)
        lo, hi = self.edges[0], self.edges[-1]
        self.n_out_of_range += int(((scores < lo) | (scores > hi)).sum())
        if self.genuine is None:
            self.genuine, self.impostor = gen, imp
        else:
            impostor = cast(Array, self.impostor)  # set together with genuine, never None after it
            self.genuine = self.genuine + _on_backend_of(gen, self.genuine)
            self.impostor = impostor + _on_backend_of(imp, impostor)

    def points(self) -> RocPoints:
        """RocPoints over the accumulated histograms; thresholds are bin lower edges."""
        if self.genuine is None:
            raise MatchLabError("StreamingRoc has no scores: call update() first")
        g, i = self.genuine, cast(Array, self.impostor)  # set together with genuine in update()
        n_gen, n_imp = int(g.sum()), int(i.sum())
        if n_gen == 0 or n_imp == 0:
            raise MatchLabError(
                f"verification needs both genuine and impostor pairs: got {n_gen} genuine and {n_imp} impostor pairs"
            )
        lower = _on_backend_of(self.edges[:-1], g)
        if is_torch(g):
            # impostor and lower are on genuine's backend (update() and _on_backend_of put them there)
            g, i_t, lower_t = g.flip(0), cast(torch.Tensor, i).flip(0), cast(torch.Tensor, lower).flip(0)
            keep_t = torch.nonzero((g + i_t) > 0).squeeze(1)
            tp, fp = torch.cumsum(g, 0)[keep_t], torch.cumsum(i_t, 0)[keep_t]
            zero = torch.zeros(1, dtype=torch.int64, device=g.device)
            inf = torch.full((1,), math.inf, dtype=torch.float64, device=g.device)
            return RocPoints(
                torch.cat([inf, lower_t[keep_t]]), torch.cat([zero, tp]), torch.cat([zero, fp]), n_gen, n_imp
            )
        g, i, lower = g[::-1], i[::-1], lower[::-1]
        keep = np.flatnonzero((g + i) > 0)
        return RocPoints(
            np.concatenate([[math.inf], lower[keep]]),
            np.concatenate([[0], np.cumsum(g)[keep]]).astype(np.int64),
            np.concatenate([[0], np.cumsum(i)[keep]]).astype(np.int64),
            n_gen,
            n_imp,
        )


# ------------------------------------------------------------------------------------------ report
def small_sample_warnings(
    n_genuine: int, n_impostor: int, far_table: dict[str, dict], fold_sizes: Sequence[int] = ()
) -> list[str]:
    """metrics.md sanity rule: name each figure resting on fewer than 30 events of its kind."""
    out = []
    if n_genuine < MIN_EVENTS:
        out.append(f"only {n_genuine} genuine pairs (< {MIN_EVENTS}): TAR, FRR and EER are small-sample")
    if n_impostor < MIN_EVENTS:
        out.append(f"only {n_impostor} impostor pairs (< {MIN_EVENTS}): FAR and EER are small-sample")
    for key, row in far_table.items():
        need = math.ceil(MIN_EVENTS / float(key) - 1e-9)
        if not row["reachable"]:
            out.append(
                f"TAR@FAR={key} unreachable: FAR below 1/{n_impostor} cannot be observed; "
                f"about {need} impostor pairs are needed"
            )
        elif not row["stable"]:
            out.append(
                f"TAR@FAR={key} rests on {n_impostor} impostor pairs; about {need} are needed for a stable figure"
            )
    small = [s for s in fold_sizes if s < MIN_EVENTS]
    if small:
        out.append(f"{len(small)} k-fold folds hold fewer than {MIN_EVENTS} pairs (smallest {min(small)})")
    return out


def balanced_kfold_rows(labels: Array, folds: Array | None = None, seed: int = 0) -> tuple[np.ndarray, str] | None:
    """Rows for a k-fold on balanced pairs, or None when the given pairs are used as they are.

    The k-fold protocol (LFW, CFP) has as many genuine as impostor pairs per fold; on generated pairs
    (98% impostors for CFP's all pairs) its accuracy would mostly count rejected impostors. So without
    protocol folds (folds None or all -1) and with a genuine share outside [0.4, 0.6], the k-fold runs on
    every pair of the minority kind plus as many pairs of the majority kind drawn with `seed`: all
    genuine pairs + as many impostors when impostors dominate, all impostors + as many genuine pairs
    when genuine pairs dominate. Returns (row indices, minority first, a note saying which branch was taken).
    """
    y = to_numpy(labels).astype(bool).reshape(-1)
    f = None if folds is None else to_numpy(folds)
    n, n_gen = y.shape[0], int(y.sum())
    n_imp = n - n_gen
    if (f is not None and (f >= 0).any()) or min(n_gen, n_imp) == 0 or 0.4 <= n_gen / n <= 0.6:
        return None
    minority = n_gen < n_imp  # True: genuine pairs are the minority
    few, many = np.flatnonzero(y == minority), np.flatnonzero(y != minority)
    drawn = np.random.default_rng(seed).choice(many, few.shape[0], replace=False)
    kinds = ("genuine", "impostor") if minority else ("impostor", "genuine")
    note = (
        f"on a balanced seeded sample: all {few.shape[0]:,} {kinds[0]} pairs + {drawn.shape[0]:,} of the "
        f"{many.shape[0]:,} {kinds[1]} pairs (seed {seed}), as the protocol's folds are balanced"
    )
    return np.concatenate([few, drawn]), note


def verification_report(
    scores: Array,
    labels: Array,
    folds: Array | None = None,
    far_levels: Sequence[float] = DEFAULT_FAR_LEVELS,
    k: int = 10,
    seed: int = 0,
    balance_kfold: bool = False,
) -> dict[str, Any]:
    """Every verification number for one score set, JSON-ready (Python floats, None if unreachable;
    the kfold entries are None, with a note in small_sample, when the pairs cannot be split).

    scores: (N,) float; labels: (N,) 1/0; folds: (N,) int fold ids or None / all -1 (k seeded folds).
    balance_kfold: run the k-fold on `balanced_kfold_rows` when it applies ("kfold_note" says so).
    The small-sample warnings are built from the figures reported here, the k-fold actually used included.
    """
    points = roc_points(scores, labels)
    rate, rate_thr = eer(points)
    far_table = tar_at_far(points, far_levels)
    best_thr, best_acc = best_accuracy_threshold(points)
    balanced = balanced_kfold_rows(labels, folds, seed) if balance_kfold else None
    try:
        if balanced is None:
            kf = kfold_accuracy(scores, labels, folds, k=k, seed=seed)
        else:
            rows = _on_backend_of(balanced[0], scores) if is_torch(scores) else balanced[0]
            kf = kfold_accuracy(scores[rows], _on_backend_of(labels, scores)[rows], None, k=k, seed=seed)
        kf_note = []
    except MatchLabError as e:
        # too few pairs to split (e.g. a hand-made set): report the rest and say why k-fold is absent
        kf, kf_note = None, [f"k-fold accuracy not computed: {e}"]
    out = {
        "auc": auc(points),
        "eer": rate,
        "eer_threshold": rate_thr,
        "tar_at_far": far_table,
        "kfold_accuracy_mean": kf and kf["mean"],
        "kfold_accuracy_std": kf and kf["std"],
        "kfold": kf,
        "n_genuine": points.n_genuine,
        "n_impostor": points.n_impostor,
        "best_accuracy": best_acc,
        "best_accuracy_threshold": best_thr,
        "small_sample": small_sample_warnings(
            points.n_genuine, points.n_impostor, far_table, kf["fold_sizes"] if kf else ()
        )
        + kf_note,
    }
    if balanced is not None:
        out["kfold_note"] = balanced[1]
    return out
