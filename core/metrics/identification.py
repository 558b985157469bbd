"""Identification (1:N) metrics: closed-set rank-k (CMC), open-set DIR@FPIR and accuracy, kNN, retrieval.

Main entry points: `rank_k_accuracy`, `open_set_scores` + `open_set_report`, `knn_accuracy`,
`retrieval_metrics`. Similarities are cosine, computed in probe chunks with torch matmul on the
embeddings' device so 1e4 probes x 1e6 gallery images never form the full matrix. A gallery may hold
several images per identity: an identity scores its best image. Definitions: docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.errors import MatchLabError
from core.metrics.verification import (
    MIN_EVENTS,
    Array,
    RocPoints,
    _is_stable,
    _level_key,
    far_level_rows,
    is_torch,
    points_from_counts,
    to_numpy,
)

UNIT_TOL = 1e-6  # rows whose norm is within this of 1 are used as given: F.normalize moves them less


def _as_tensor(x: Any, device: torch.device | None = None) -> torch.Tensor:
    t = x if is_torch(x) else torch.from_numpy(np.ascontiguousarray(x))
    return t.to(device) if device is not None else t


def _unit(x: Any, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N, D) L2-normalised tensor in `dtype` (cosine similarity is then a matmul). Rows already unit to
    within UNIT_TOL (what `extract` writes) are not copied; NaN or infinite values are a MatchLabError."""
    t = _as_tensor(x, device)
    if t.ndim != 2:
        raise MatchLabError(f"embeddings must be (N, D): got shape {tuple(t.shape)}")
    t = t.to(dtype)
    norms = torch.linalg.vector_norm(t, dim=1, dtype=torch.float32)
    if not bool(torch.isfinite(norms).all()):
        raise MatchLabError("embeddings contain NaN or infinite values: fix the model outputs")
    if t.shape[0] and float((norms - 1).abs().max()) <= UNIT_TOL:
        return t
    return F.normalize(t, dim=1)


def _embeddings(probe: Any, gallery: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit tensors on a common device (the GPU when either input is there). On CUDA a bf16 gallery
    stays bf16 and the probes join it (no fp32 copy of a large gallery); elsewhere float32."""
    p, g = _as_tensor(probe), _as_tensor(gallery)
    device = p.device if p.device.type != "cpu" else g.device
    dtype = torch.bfloat16 if device.type == "cuda" and g.dtype == torch.bfloat16 else torch.float32
    p, g = _unit(p, device, dtype), _unit(g, device, dtype)
    if p.shape[1] != g.shape[1]:
        raise MatchLabError(f"probe and gallery embeddings differ in width: {p.shape[1]} vs {g.shape[1]}")
    return p, g


def _chunks(n: int, chunk: int) -> Iterator[slice]:
    if chunk < 1:
        raise MatchLabError(f"chunk must be >= 1: got {chunk}")
    return (slice(i, min(i + chunk, n)) for i in range(0, n, chunk))


class _IdentityGallery:
    """The gallery's columns with their identities, and per probe chunk the similarity to every column.

    On a GPU the columns are sorted by identity once: the best image of the best identity is the plain
    column max (its first maximum lies in the lowest tied identity), and ranking takes per-identity
    maxima with a segment scatter. On the host the columns keep the caller's order (a row gather of a
    1e5 x 512 gallery measured ~0.8 s on 2 cores, more than the search's own work past the matmul):
    the best identity is numpy's argmax plus a tie check when the columns are not identity-sorted, and
    a rank counts the identities with a column at or above the true identity's best (`_host_ranks`),
    so no per-identity maximum over every identity (reduceat cost more than the top-k it replaces).
    """

    def __init__(self, query: Any, gallery_labels: Any | None):
        if isinstance(query, (tuple, list)):
            if len(query) != 3:
                raise MatchLabError("pass (probe_emb, gallery_emb, gallery_labels) or a similarity matrix")
            self.probe, gallery = _embeddings(query[0], query[1])
            gallery_labels, self.sim = query[2], None
            n_gallery, self.device = gallery.shape[0], self.probe.device
        else:
            self.sim = _as_tensor(query)
            if self.sim.ndim != 2:
                raise MatchLabError(f"similarity must be (probes, gallery): got shape {tuple(self.sim.shape)}")
            if not self.sim.is_floating_point():
                self.sim = self.sim.double()
            n_gallery, self.device = self.sim.shape[1], self.sim.device
            if gallery_labels is None:
                gallery_labels = np.arange(n_gallery)
        labels = to_numpy(gallery_labels).astype(np.int64)
        if labels.shape != (n_gallery,):
            raise MatchLabError(f"gallery_labels must hold one identity per gallery item ({n_gallery})")
        self.ids, inverse = np.unique(labels, return_inverse=True)
        inverse = inverse.reshape(-1)
        order = np.argsort(inverse, kind="stable")
        self.sorted = bool(np.all(order[1:] > order[:-1])) if order.shape[0] > 1 else True
        self.one_per_identity = self.ids.shape[0] == n_gallery
        self.host = self.device.type == "cpu"
        # each identity's columns: members[first[i] : first[i] + count[i]] (ascending column order)
        self.members, self.count = order, np.bincount(inverse, minlength=self.ids.shape[0])
        self.first = np.cumsum(self.count) - self.count
        permute = not self.sorted and not self.host
        col_identity = inverse[order] if permute else inverse  # identity position of each column as searched
        self.starts = np.flatnonzero(np.r_[True, col_identity[1:] != col_identity[:-1]])
        self.col_identity = col_identity
        self.order = torch.as_tensor(order, device=self.device) if permute else None
        if self.sim is None:
            self.gallery = gallery if self.order is None else gallery[self.order]  # one copy, sorted once
            self.n_probes = self.probe.shape[0]
        else:
            self.n_probes = self.sim.shape[0]
        self._inverse_dev: torch.Tensor | None = None

    def blocks(self, chunk: int) -> Iterator[tuple[slice, torch.Tensor]]:
        """(probe slice, (c, G) similarity to the identity-sorted columns); the block's buffer is reused."""
        if self.sim is not None:
            for sl in _chunks(self.n_probes, chunk):
                block = self.sim[sl]
                yield sl, block if self.order is None else block[:, self.order]
            return
        buf = None
        for sl in _chunks(self.n_probes, chunk):
            c = sl.stop - sl.start
            if buf is None:
                # one output buffer for every chunk: a fresh (c, G) block per chunk costs page faults
                buf = torch.empty(c, self.gallery.shape[0], dtype=self.gallery.dtype, device=self.device)
            out = buf[:c]
            torch.mm(self.probe[sl], self.gallery.T, out=out)
            yield sl, out if out.dtype != torch.bfloat16 else out.float()

    def best_per_identity(self, sim: torch.Tensor) -> torch.Tensor:
        """(c, G) sorted-column similarities -> (c, n_ids) best similarity per identity."""
        if self.one_per_identity:
            return sim
        if sim.device.type == "cpu":
            return torch.from_numpy(np.maximum.reduceat(sim.numpy(), self.starts, axis=1))
        if self._inverse_dev is None:
            self._inverse_dev = torch.as_tensor(self.col_identity, device=sim.device)
        out = torch.full((sim.shape[0], self.ids.shape[0]), -torch.inf, dtype=sim.dtype, device=sim.device)
        return out.scatter_reduce_(1, self._inverse_dev.expand_as(sim), sim, reduce="amax")

    def ranks(self, sim: torch.Tensor, pos: np.ndarray) -> np.ndarray:
        """1-based rank of each row's true identity position `pos` (ties: lower identities first)."""
        if self.host and not (self.one_per_identity and self.sorted):
            return _host_ranks(self, sim.numpy(), pos)
        return _ranks(self.best_per_identity(sim), pos)

    def best(self, sim: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(identity position, similarity) of each row's best column; equal scores: the lowest identity."""
        if not self.host:
            value, col = sim.max(1)  # first maximum: the lowest identity among tied (sorted) columns
            return self.col_identity[to_numpy(col)], to_numpy(value).astype(np.float64)
        s = sim.numpy()
        col = s.argmax(1)  # numpy's row argmax measured ~4x faster than torch's max on 2 cores
        value = s[np.arange(s.shape[0]), col]
        identity = self.col_identity[col]
        if not self.sorted:  # the first maximum is not the lowest identity: look at rows whose maximum repeats
            for r in np.flatnonzero(np.count_nonzero(s == value[:, None], axis=1) > 1):
                identity[r] = self.col_identity[np.flatnonzero(s[r] == value[r])].min()
        return identity, value.astype(np.float64)


RANK_ENTRIES = 1 << 22  # _host_ranks: (row, column) entries listed at once, so a poor model's long lists stay small


def _host_ranks(search: _IdentityGallery, s: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Ranks from a host (c, G) similarity block in any column order, without per-identity maxima.

    t = the true identity's best similarity (a gather of its few columns). Another identity ranks above
    it iff one of its columns is > t, or == t and it is a lower identity (argmax's rule). One comparison
    pass counts the columns >= t per row; rows where only the true identity's columns reach t (rank 1
    for a good model) are done, the others list their columns and count the distinct identities there.
    """
    c, n_ids = s.shape[0], search.ids.shape[0]
    lens = search.count[pos]
    row_of = np.repeat(np.arange(c), lens)
    offsets = np.arange(row_of.shape[0]) - np.repeat(np.cumsum(lens) - lens, lens)
    own = s[row_of, search.members[np.repeat(search.first[pos], lens) + offsets]]
    row_start = np.cumsum(lens) - lens
    t = np.maximum.reduceat(own, row_start)
    own_ge = np.add.reduceat((own >= t[row_of]).astype(np.int64), row_start)
    ge = s >= t[:, None]
    others = np.count_nonzero(ge, axis=1) - own_ge  # columns of other identities at or above t
    rank = np.ones(c, np.int64)
    need = np.flatnonzero(others)
    step = max(1, RANK_ENTRIES // max(1, int(others.max(initial=0)) + int(lens.max(initial=0))))
    for i in range(0, need.shape[0], step):
        rows = need[i : i + step]
        r_local, cols = np.divmod(np.flatnonzero(ge[rows]), s.shape[1])
        ident, true = search.col_identity[cols], pos[rows][r_local]
        above = (ident != true) & ((s[rows[r_local], cols] > t[rows][r_local]) | (ident < true))
        seen = np.zeros((rows.shape[0], n_ids), bool)
        seen[r_local[above], ident[above]] = True
        rank[rows] += np.count_nonzero(seen, axis=1)
    return rank


def _ranks(best: torch.Tensor, pos: np.ndarray) -> np.ndarray:
    """1-based rank of each row's true identity column `pos`: higher scores, then equal scores at a
    lower identity (argmax's rule). Two comparison counts; the exact tie count only for rows with ties.
    On the host in numpy: torch's (x > t).sum(1) over a bool block measured ~10x slower than
    np.count_nonzero on 2 cores."""
    rows = np.arange(pos.shape[0])
    if best.device.type == "cpu":
        b = best.numpy()
        t = b[rows, pos][:, None]
        gt, ge = np.count_nonzero(b > t, axis=1), np.count_nonzero(b >= t, axis=1)
        rank = gt.astype(np.int64)
        for r in np.flatnonzero(ge - gt > 1):  # another identity ties the true one: lower ones rank first
            rank[r] += int(np.count_nonzero(b[r, : pos[r]] == t[r, 0]))
        return rank + 1
    p = torch.as_tensor(pos, device=best.device)[:, None]
    t = best.gather(1, p)
    gt = (best > t).sum(1)
    rank = gt.clone()
    tied = torch.nonzero((best >= t).sum(1) - gt > 1).squeeze(1)
    if tied.numel():
        cols = torch.arange(best.shape[1], device=best.device)
        rank[tied] += ((best[tied] == t[tied]) & (cols < p[tied])).sum(1)
    return to_numpy(rank) + 1


def rank_k_accuracy(
    query: Any, probe_labels: Array, ks: Sequence[int] = (1, 5), gallery_labels: Array | None = None, chunk: int = 256
) -> dict[str, Any]:
    """Closed-set CMC: share of probes whose true identity ranks within the top k.

    query: (P, G) similarity, or (probe_emb (P, D), gallery_emb (G, D), gallery_labels (G,));
    probe_labels: (P,) identities, all present in the gallery. Ties rank the lower identity first.
    Returns {"rank_1": float, ..., "ranks": (P,) 1-based rank per probe, "n_probes", "n_identities"}.
    """
    truth = to_numpy(probe_labels).astype(np.int64).reshape(-1)
    search = _IdentityGallery(query, gallery_labels)
    ids = search.ids
    if truth.shape[0] != search.n_probes or search.n_probes == 0:
        raise MatchLabError(
            f"need one label per probe and at least one probe: got {truth.shape[0]} labels for {search.n_probes} probes"
        )
    pos = np.clip(np.searchsorted(ids, truth), 0, ids.shape[0] - 1)
    missing = ids[pos] != truth
    if missing.any():
        raise MatchLabError(
            f"closed-set ranking: {int(missing.sum())} probes have identities absent from the gallery "
            f"(e.g. {int(truth[missing][0])}); use open_set_report for those"
        )
    ranks = np.empty(truth.shape[0], dtype=np.int64)
    for sl, sim in search.blocks(chunk):
        if search.sim is not None and bool(torch.isnan(sim).any()):
            raise MatchLabError("scores contain NaN values: fix the model outputs or embeddings")
        ranks[sl] = search.ranks(sim, pos[sl])
    out: dict[str, Any] = {f"rank_{k}": float(np.mean(ranks <= k)) for k in ks}
    out.update(ranks=ranks, n_probes=int(ranks.shape[0]), n_identities=int(ids.shape[0]))
    return out


TEMPLATES = ("max", "mean")


def identity_templates(gallery_emb: Array, gallery_labels: Array) -> tuple[np.ndarray, np.ndarray]:
    """One mean template per identity: ((n_ids, D) float32 unit rows, (n_ids,) sorted identities).

    A template is the mean of the identity's L2-normalised gallery embeddings, normalised again; an
    identity then scores the cosine to its template instead of its best image ("max", the default of
    open_set_scores / rank_k_accuracy on the raw gallery).
    """
    g = _unit(gallery_emb)
    ids, inverse = np.unique(to_numpy(gallery_labels).astype(np.int64), return_inverse=True)
    if inverse.reshape(-1).shape[0] != g.shape[0]:
        raise MatchLabError(f"gallery_labels must hold one identity per gallery item ({g.shape[0]})")
    sums = torch.zeros(ids.shape[0], g.shape[1], dtype=g.dtype, device=g.device)
    sums.index_add_(0, torch.as_tensor(inverse.reshape(-1), device=g.device), g)
    return to_numpy(F.normalize(sums, dim=1)).astype(np.float32), ids


def open_set_scores(
    probe_emb: Array, gallery_emb: Array, gallery_labels: Array, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Best gallery identity per probe and its cosine score: ((P,) int64, (P,) float64).
    Equal scores pick the lower identity (the rank-1 identity of rank_k_accuracy). The best identity is
    that of the best image, so this is a column max, whatever the counts (`_IdentityGallery.best`)."""
    search = _IdentityGallery((probe_emb, gallery_emb, gallery_labels), None)
    identity, score = [], []
    for _, sim in search.blocks(chunk):
        got = search.best(sim)
        identity.append(got[0])
        score.append(got[1])
    if not identity:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    return search.ids[np.concatenate(identity)], np.concatenate(score)


def _open_set_points(
    best_identity: Array, best_score: Array, probe_truth: Array, no_match: int
) -> tuple[RocPoints, int, int, np.ndarray, np.ndarray, np.ndarray]:
    """Open-set counts as a ROC: positives are mated probes whose best match is their identity,
    negatives are non-mated probes; mated probes with a wrong best match are never positive but
    stay in DIR's denominator. Returns (points, n_mated, n_nonmated, identity, score, truth)."""
    ident = to_numpy(best_identity).astype(np.int64).reshape(-1)
    score = to_numpy(best_score).astype(np.float64).reshape(-1)
    truth = to_numpy(probe_truth).astype(np.int64).reshape(-1)
    if not ident.shape == score.shape == truth.shape:
        raise MatchLabError(
            f"best_identity, best_score and probe_truth must have equal length: got "
            f"{ident.shape[0]}, {score.shape[0]}, {truth.shape[0]}"
        )
    if np.isnan(score).any():
        raise MatchLabError(f"best_score contains {int(np.isnan(score).sum())} NaN values")
    mated = truth != no_match
    n_mated, n_nonmated = int(mated.sum()), int((~mated).sum())
    if n_mated == 0 or n_nonmated == 0:
        raise MatchLabError(
            f"open-set needs mated and non-mated probes (truth == {no_match}): got "
            f"{n_mated} mated and {n_nonmated} non-mated"
        )
    hit = mated & (ident == truth)
    keep = hit | ~mated
    points = points_from_counts(score[keep], hit[keep], int(hit.sum()), n_nonmated)
    return points, n_mated, n_nonmated, ident, score, truth


def _open_set_accuracy(ident: np.ndarray, score: np.ndarray, truth: np.ndarray, tau: float, no_match: int) -> float:
    predicted = np.where(score >= tau, ident, no_match)
    return float(np.mean(predicted == truth))


def best_open_set_threshold(
    best_identity: Array, best_score: Array, probe_truth: Array, no_match: int = -1
) -> tuple[float, float]:
    """(threshold, open-set accuracy) maximising the accuracy of "identity or no match" on the
    given truth; ties go to the highest threshold (+inf means reject every probe)."""
    points, _, n_nonmated, *_ = _open_set_points(best_identity, best_score, probe_truth, no_match)
    # accuracy = (hits accepted + non-mated rejected) / probes, so maximise tp - fp
    i = int(np.argmax(points.tp - points.fp))
    n_probes = to_numpy(probe_truth).shape[0]
    return float(points.thresholds[i]), (int(points.tp[i]) + n_nonmated - int(points.fp[i])) / n_probes


def open_set_report(
    best_identity: Array,
    best_score: Array,
    probe_truth: Array,
    no_match: int = -1,
    fpir_levels: Sequence[float] = (1e-2, 1e-1),
    threshold: float | None = None,
) -> dict[str, Any]:
    """Open-set identification numbers (metrics.md): DIR at each FPIR level and the accuracy of
    "identity or no match" at one threshold.

    best_identity, best_score: (P,) from open_set_scores; probe_truth: (P,) identity, or no_match
    for probes whose identity is absent from the gallery. threshold None: the threshold with the
    highest open-set accuracy on this truth (an optimistic, in-sample choice; the report says so).
    """
    points, n_mated, n_nonmated, ident, score, truth = _open_set_points(
        best_identity, best_score, probe_truth, no_match
    )
    dir_at_fpir = {}
    for row in far_level_rows(points, fpir_levels):
        reach = row["reachable"]
        dir_at_fpir[_level_key(row["level"])] = {
            "dir": row["tp"] / n_mated if reach else None,
            "threshold": row["threshold"] if reach else None,
            "fpir": row["fp"] / n_nonmated if reach else None,
            "reachable": reach,
            "stable": _is_stable(n_nonmated, row["level"]),
        }
    if threshold is None:
        tau, _ = best_open_set_threshold(ident, score, truth, no_match)
        source = "max open-set accuracy on the given truth"
    else:
        tau, source = float(threshold), "given"
    accepted = score >= tau
    warnings = [
        f"only {n} {kind} probes (< {MIN_EVENTS}): {what} is small-sample"
        for n, kind, what in ((n_mated, "mated", "DIR"), (n_nonmated, "non-mated", "FPIR"))
        if n < MIN_EVENTS
    ]
    warnings += [
        f"DIR@FPIR={key} rests on {n_nonmated} non-mated probes"
        for key, row in dir_at_fpir.items()
        if not row["stable"]
    ]
    return {
        "dir_at_fpir": dir_at_fpir,
        "open_set_accuracy": _open_set_accuracy(ident, score, truth, tau, no_match),
        "threshold": tau,
        "threshold_source": source,
        "dir_at_threshold": float(np.sum(accepted & (ident == truth) & (truth != no_match)) / n_mated),
        "fpir_at_threshold": float(np.sum(accepted & (truth == no_match)) / n_nonmated),
        "n_mated": n_mated,
        "n_nonmated": n_nonmated,
        "small_sample": warnings,
    }


def knn_predictions(emb: Array, labels: Array, k: int = 1, leave_one_out: bool = True, chunk: int = 256) -> np.ndarray:
    """Cosine k-nearest-neighbour vote over one embedding set: (N,) predicted labels.

    emb: (N, D); labels: (N,) int. leave_one_out excludes each sample from its own neighbours.
    A tied vote goes to the smallest label (as sklearn's KNeighborsClassifier).
    """
    x = _unit(emb)
    classes, y_pos = np.unique(to_numpy(labels).astype(np.int64), return_inverse=True)
    n = x.shape[0]
    y_pos = y_pos.reshape(-1)
    if y_pos.shape[0] != n:
        raise MatchLabError(f"embeddings hold {n} rows but labels {y_pos.shape[0]}")
    if not 1 <= k <= n - int(leave_one_out):
        raise MatchLabError(f"k must be in [1, {n - int(leave_one_out)}] for {n} samples: got {k}")
    y_dev = torch.as_tensor(y_pos, device=x.device)
    pred = np.empty(n, dtype=np.int64)
    for sl in _chunks(n, chunk):
        sim = x[sl] @ x.T
        if leave_one_out:
            rows = torch.arange(sim.shape[0], device=x.device)
            sim[rows, rows + sl.start] = -torch.inf
        nb = y_dev[sim.topk(k, dim=1).indices]  # (c, k) neighbour labels
        votes = (nb[:, :, None] == nb[:, None, :]).sum(2)  # (c, k): votes for each neighbour's label
        # most votes, then the smallest label: one key, no (c, n_classes) table
        key = votes * classes.shape[0] + (classes.shape[0] - 1 - nb)
        pred[sl] = to_numpy(nb.gather(1, key.argmax(1, keepdim=True)).squeeze(1))
    return classes[pred]


def nearest_other(emb: Array, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's nearest other sample by cosine: ((N,) index, (N,) similarity), in probe chunks so
    100k samples never hold an N x N matrix."""
    x = _unit(emb)
    index, score = [], []
    for sl in _chunks(x.shape[0], chunk):
        sim = x[sl] @ x.T
        rows = torch.arange(sim.shape[0], device=x.device)
        sim[rows, rows + sl.start] = -torch.inf  # never its own neighbour
        value, where = sim.max(1)
        index.append(to_numpy(where))
        score.append(to_numpy(value))
    return np.concatenate(index), np.concatenate(score)


def knn_accuracy(emb: Array, labels: Array, k: int = 1, leave_one_out: bool = True, chunk: int = 256) -> float:
    """Accuracy of `knn_predictions` (the per-sample predictions trace this number to images)."""
    pred = knn_predictions(emb, labels, k, leave_one_out, chunk)
    return float(np.mean(pred == to_numpy(labels).reshape(-1)))


def neighbour_metrics(emb: Array, labels: Array, chunk: int = 256) -> tuple[float, dict[str, Any]]:
    """`knn_accuracy(emb, labels, k=1)` and `retrieval_metrics(emb, labels)` from ONE chunked N x N search.

    evaluate reports both; run apart they each took an N x N matmul (~30 s of 7.7k x 512 on 2 loaded
    cores). Per chunk of queries: the similarities to every other sample (self excluded), their top-1
    (knn_predictions' rule with k=1) and top-R, R the largest class size - 1, from which precision@1,
    R-precision and MAP@R follow as retrieval_metrics defines them (each query's R = its class size - 1;
    queries alone in their class are left out).
    """
    x = _unit(emb)
    y_np = np.unique(to_numpy(labels).astype(np.int64), return_inverse=True)[1].reshape(-1)
    n = x.shape[0]
    if y_np.shape[0] != n:
        raise MatchLabError(f"embeddings hold {n} rows but labels {y_np.shape[0]}")
    if n < 2:
        raise MatchLabError(f"k must be in [1, {n - 1}] for {n} samples: got 1")
    r_of = np.bincount(y_np)[y_np] - 1  # same-class others of each query
    k = max(1, int(r_of.max()))
    y = torch.as_tensor(y_np, device=x.device)
    knn_hits, p1, rp, mapr = 0, [], [], []
    for sl in _chunks(n, chunk):
        sim = x[sl] @ x.T
        rows = torch.arange(sim.shape[0], device=x.device)
        sim[rows, rows + sl.start] = -torch.inf
        yq = y[sl]
        knn_hits += int((y[sim.topk(1, dim=1).indices[:, 0]] == yq).sum())
        rel = to_numpy(y[sim.topk(k, dim=1).indices] == yq[:, None])  # (c, k) relevant, best first
        r = r_of[sl]
        within = np.arange(k)[None, :] < r[:, None]  # the first R of each query
        rel &= within
        used = r > 0
        hits = np.cumsum(rel, axis=1)
        p1.append(rel[used, 0])
        rp.append(hits[used, -1] / r[used])
        mapr.append(np.sum(rel * hits / np.arange(1, k + 1), axis=1)[used] / r[used])
    knn = knn_hits / n
    n_used = int(np.count_nonzero(r_of))
    if n_used == 0:
        raise MatchLabError("retrieval needs classes with at least 2 samples: every class has 1")
    retrieval = {
        "precision_at_1": float(np.mean(np.concatenate(p1))),
        "r_precision": float(np.mean(np.concatenate(rp))),
        "mean_average_precision_at_r": float(np.mean(np.concatenate(mapr))),
        "n_queries_used": n_used,
        "n_queries": n,
    }
    return knn, retrieval


def retrieval_metrics(emb: Array, labels: Array, chunk: int = 4096) -> dict[str, Any]:
    """precision@1, R-precision and MAP@R of each sample querying all the others (cosine), through
    pytorch-metric-learning's AccuracyCalculator with k="max_bin_count" (exact R-precision/MAP@R).
    Samples whose class has no other member cannot be scored and are left out (n_queries_used)."""
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    x = _unit(emb)
    # class positions, not raw ids: PML casts labels to float32, which would merge ids above 2**24
    y_pos = np.unique(to_numpy(labels).astype(np.int64), return_inverse=True)[1].reshape(-1)
    y = torch.as_tensor(y_pos, device=x.device)
    if y.shape[0] != x.shape[0]:
        raise MatchLabError(f"embeddings hold {x.shape[0]} rows but labels {y.shape[0]}")
    _, counts = torch.unique(y, return_counts=True)
    n_used = int(counts[counts > 1].sum())
    if n_used == 0:
        raise MatchLabError("retrieval needs classes with at least 2 samples: every class has 1")
    calc = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        k="max_bin_count",
        device=x.device,
        knn_func=CustomKNN(CosineSimilarity(), batch_size=chunk),
    )
    # reference=None: the query set is its own reference and each query's self-match is dropped
    got = calc.get_accuracy(x, y)
    return {**{k: float(v) for k, v in got.items()}, "n_queries_used": n_used, "n_queries": int(x.shape[0])}
