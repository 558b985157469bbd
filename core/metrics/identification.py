"""Identification (1:N) metrics: closed-set rank-k (CMC), open-set DIR@FPIR and accuracy, kNN, retrieval.

Main entry points: `rank_k_accuracy`, `open_set_scores` + `open_set_report`, `knn_accuracy`,
`retrieval_metrics`. Similarities are cosine, computed in probe chunks with torch matmul on the
embeddings' device so 1e4 probes x 1e6 gallery images never form the full matrix. A gallery may hold
several images per identity: an identity scores its best image. Definitions: shared/docs/metrics.md.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from core.errors import MatchLabError
from core.metrics.classification import rank_of_true
from core.metrics.verification import (MIN_EVENTS, Array, _level_key, _is_stable, far_level_rows,
                                       is_torch, points_from_counts, to_numpy)


def _as_tensor(x: Any, device: torch.device | None = None) -> torch.Tensor:
    t = x if is_torch(x) else torch.from_numpy(np.ascontiguousarray(x))
    return t.to(device) if device is not None else t


def _unit(x: Any, device: torch.device | None = None) -> torch.Tensor:
    """(N, D) L2-normalised float32 tensor (cosine similarity is then a matmul)."""
    t = _as_tensor(x, device).float()
    if t.ndim != 2:
        raise MatchLabError(f"embeddings must be (N, D): got shape {tuple(t.shape)}")
    return F.normalize(t, dim=1)


def _embeddings(probe: Any, gallery: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit float32 tensors on a common device (the GPU when either input is there)."""
    p, g = _as_tensor(probe), _as_tensor(gallery)
    device = p.device if p.device.type != "cpu" else g.device
    p, g = _unit(p, device), _unit(g, device)
    if p.shape[1] != g.shape[1]:
        raise MatchLabError(f"probe and gallery embeddings differ in width: {p.shape[1]} vs {g.shape[1]}")
    return p, g


def _identity_index(gallery_labels: Any, device: torch.device) -> tuple[np.ndarray, torch.Tensor]:
    """(sorted distinct identities, (G,) column -> identity position on `device`)."""
    ids, inverse = np.unique(to_numpy(gallery_labels).astype(np.int64), return_inverse=True)
    return ids, torch.as_tensor(inverse.reshape(-1), device=device)


def _best_per_identity(sim: torch.Tensor, inverse: torch.Tensor, n_ids: int) -> torch.Tensor:
    """(c, G) image similarities -> (c, n_ids) best similarity per identity."""
    out = torch.full((sim.shape[0], n_ids), -torch.inf, dtype=sim.dtype, device=sim.device)
    return out.scatter_reduce_(1, inverse.expand_as(sim), sim, reduce="amax")


def _chunks(n: int, chunk: int) -> Iterator[slice]:
    if chunk < 1:
        raise MatchLabError(f"chunk must be >= 1: got {chunk}")
    return (slice(i, min(i + chunk, n)) for i in range(0, n, chunk))


def _identity_scores(query: Any, gallery_labels: Any | None, chunk: int
                     ) -> tuple[np.ndarray, int, Iterator[tuple[slice, torch.Tensor]]]:
    """(identities, n_probes, iterator of (probe slice, (c, n_ids) best score per identity)).

    query: a (P, G) similarity matrix (gallery_labels: (G,) identity of each column, or None when
    column j is identity j) or a tuple (probe_emb (P, D), gallery_emb (G, D), gallery_labels (G,)).
    """
    if isinstance(query, (tuple, list)):
        if len(query) != 3:
            raise MatchLabError("pass (probe_emb, gallery_emb, gallery_labels) or a similarity matrix")
        probe, gallery = _embeddings(query[0], query[1])
        gallery_labels = query[2]

        def sim_chunk(sl: slice) -> torch.Tensor:
            return probe[sl] @ gallery.T
        n_probe, n_gallery, device = probe.shape[0], gallery.shape[0], probe.device
    else:
        sim = _as_tensor(query)
        if sim.ndim != 2:
            raise MatchLabError(f"similarity must be (probes, gallery): got shape {tuple(sim.shape)}")

        def sim_chunk(sl: slice) -> torch.Tensor:
            return sim[sl] if sim.is_floating_point() else sim[sl].double()
        n_probe, n_gallery, device = sim.shape[0], sim.shape[1], sim.device
        if gallery_labels is None:
            gallery_labels = np.arange(n_gallery)
    if to_numpy(gallery_labels).shape != (n_gallery,):
        raise MatchLabError(f"gallery_labels must hold one identity per gallery item ({n_gallery})")
    ids, inverse = _identity_index(gallery_labels, device)
    blocks = ((sl, _best_per_identity(sim_chunk(sl), inverse, ids.shape[0]))
              for sl in _chunks(n_probe, chunk))
    return ids, n_probe, blocks


def rank_k_accuracy(query: Any, probe_labels: Array, ks: Sequence[int] = (1, 5),
                    gallery_labels: Array | None = None, chunk: int = 256) -> dict[str, Any]:
    """Closed-set CMC: share of probes whose true identity ranks within the top k.

    query: (P, G) similarity, or (probe_emb (P, D), gallery_emb (G, D), gallery_labels (G,));
    probe_labels: (P,) identities, all present in the gallery. Ties rank the lower identity first.
    Returns {"rank_1": float, ..., "ranks": (P,) 1-based rank per probe, "n_probes", "n_identities"}.
    """
    truth = to_numpy(probe_labels).astype(np.int64).reshape(-1)
    ids, n_probe, blocks = _identity_scores(query, gallery_labels, chunk)
    if truth.shape[0] != n_probe or n_probe == 0:
        raise MatchLabError(f"need one label per probe and at least one probe: got {truth.shape[0]} "
                            f"labels for {n_probe} probes")
    pos = np.clip(np.searchsorted(ids, truth), 0, ids.shape[0] - 1)
    missing = ids[pos] != truth
    if missing.any():
        raise MatchLabError(
            f"closed-set ranking: {int(missing.sum())} probes have identities absent from the gallery "
            f"(e.g. {int(truth[missing][0])}); use open_set_report for those")
    ranks = np.empty(truth.shape[0], dtype=np.int64)
    for sl, best in blocks:
        ranks[sl] = to_numpy(rank_of_true(best, pos[sl])) + 1
    out: dict[str, Any] = {f"rank_{k}": float(np.mean(ranks <= k)) for k in ks}
    out.update(ranks=ranks, n_probes=int(ranks.shape[0]), n_identities=int(ids.shape[0]))
    return out


def open_set_scores(probe_emb: Array, gallery_emb: Array, gallery_labels: Array,
                    chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Best gallery identity per probe and its cosine score: ((P,) int64, (P,) float64).
    Equal scores pick the lower identity (the rank-1 identity of rank_k_accuracy)."""
    ids, _, blocks = _identity_scores((probe_emb, gallery_emb, gallery_labels), None, chunk)
    identity, score = [], []
    for _, best in blocks:
        value, where = best.max(1)  # first maximum: the lower identity on ties
        identity.append(to_numpy(where))
        score.append(to_numpy(value).astype(np.float64))
    if not identity:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    return ids[np.concatenate(identity)], np.concatenate(score)


def _open_set_points(best_identity: Array, best_score: Array, probe_truth: Array, no_match: int):
    """Open-set counts as a ROC: positives are mated probes whose best match is their identity,
    negatives are non-mated probes; mated probes with a wrong best match are never positive but
    stay in DIR's denominator. Returns (points, n_mated, n_nonmated, identity, score, truth)."""
    ident = to_numpy(best_identity).astype(np.int64).reshape(-1)
    score = to_numpy(best_score).astype(np.float64).reshape(-1)
    truth = to_numpy(probe_truth).astype(np.int64).reshape(-1)
    if not ident.shape == score.shape == truth.shape:
        raise MatchLabError(f"best_identity, best_score and probe_truth must have equal length: got "
                            f"{ident.shape[0]}, {score.shape[0]}, {truth.shape[0]}")
    if np.isnan(score).any():
        raise MatchLabError(f"best_score contains {int(np.isnan(score).sum())} NaN values")
    mated = truth != no_match
    n_mated, n_nonmated = int(mated.sum()), int((~mated).sum())
    if n_mated == 0 or n_nonmated == 0:
        raise MatchLabError(f"open-set needs mated and non-mated probes (truth == {no_match}): got "
                            f"{n_mated} mated and {n_nonmated} non-mated")
    hit = mated & (ident == truth)
    keep = hit | ~mated
    points = points_from_counts(score[keep], hit[keep], int(hit.sum()), n_nonmated)
    return points, n_mated, n_nonmated, ident, score, truth


def _open_set_accuracy(ident: np.ndarray, score: np.ndarray, truth: np.ndarray, tau: float,
                       no_match: int) -> float:
    predicted = np.where(score >= tau, ident, no_match)
    return float(np.mean(predicted == truth))


def best_open_set_threshold(best_identity: Array, best_score: Array, probe_truth: Array,
                            no_match: int = -1) -> tuple[float, float]:
    """(threshold, open-set accuracy) maximising the accuracy of "identity or no match" on the
    given truth; ties go to the highest threshold (+inf means reject every probe)."""
    points, _, n_nonmated, *_ = _open_set_points(best_identity, best_score, probe_truth, no_match)
    # accuracy = (hits accepted + non-mated rejected) / probes, so maximise tp - fp
    i = int(np.argmax(points.tp - points.fp))
    n_probes = to_numpy(probe_truth).shape[0]
    return float(points.thresholds[i]), (int(points.tp[i]) + n_nonmated - int(points.fp[i])) / n_probes


def open_set_report(best_identity: Array, best_score: Array, probe_truth: Array, no_match: int = -1,
                    fpir_levels: Sequence[float] = (1e-2, 1e-1), threshold: float | None = None
                    ) -> dict[str, Any]:
    """Open-set identification numbers (metrics.md): DIR at each FPIR level and the accuracy of
    "identity or no match" at one threshold.

    best_identity, best_score: (P,) from open_set_scores; probe_truth: (P,) identity, or no_match
    for probes whose identity is absent from the gallery. threshold None: the threshold with the
    highest open-set accuracy on this truth (an optimistic, in-sample choice; the report says so).
    """
    points, n_mated, n_nonmated, ident, score, truth = _open_set_points(
        best_identity, best_score, probe_truth, no_match)
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
    warnings = [f"only {n} {kind} probes (< {MIN_EVENTS}): {what} is small-sample"
                for n, kind, what in ((n_mated, "mated", "DIR"), (n_nonmated, "non-mated", "FPIR"))
                if n < MIN_EVENTS]
    warnings += [f"DIR@FPIR={key} rests on {n_nonmated} non-mated probes"
                 for key, row in dir_at_fpir.items() if not row["stable"]]
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


def knn_predictions(emb: Array, labels: Array, k: int = 1, leave_one_out: bool = True,
                    chunk: int = 256) -> np.ndarray:
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


def knn_accuracy(emb: Array, labels: Array, k: int = 1, leave_one_out: bool = True,
                 chunk: int = 256) -> float:
    """Accuracy of `knn_predictions` (the per-sample predictions trace this number to images)."""
    pred = knn_predictions(emb, labels, k, leave_one_out, chunk)
    return float(np.mean(pred == to_numpy(labels).reshape(-1)))


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
        k="max_bin_count", device=x.device, knn_func=CustomKNN(CosineSimilarity(), batch_size=chunk))
    # reference=None: the query set is its own reference and each query's self-match is dropped
    got = calc.get_accuracy(x, y)
    return {**{k: float(v) for k, v in got.items()}, "n_queries_used": n_used,
            "n_queries": int(x.shape[0])}
