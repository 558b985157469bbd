"""Classification metrics: top-k accuracy, confusion matrix, per-class P/R/F1, most-confused pairs.

Main entry points: `topk_accuracy(logits, labels)`, `confusion_matrix(pred, labels, n_classes)`,
`per_class_report(pred, labels, class_names)`. Ties are broken toward the lower class index
everywhere (`rank_of_true`), so top-1 accuracy equals the accuracy of `argmax` predictions and the
confusion matrix; identification ranks use the same rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from core.errors import MatchLabError
from core.metrics.verification import Array, is_torch, to_numpy


def rank_of_true(scores: Array, true_idx: Array) -> Array:
    """0-based rank of each row's true column. scores: (N, C) float; true_idx: (N,) int in [0, C).

    Rank = columns scoring higher, plus equal-scoring columns with a lower index (argmax's rule).
    Returns (N,) int64 on the scores' backend. NaN scores are a MatchLabError.
    """
    t: Array
    cols: Array
    if is_torch(scores):
        true_idx = torch.as_tensor(
            to_numpy(true_idx) if not is_torch(true_idx) else true_idx, device=scores.device
        ).long()
        if bool(torch.isnan(scores).any()):
            raise MatchLabError("scores contain NaN values: fix the model outputs or embeddings")
        t = scores.gather(1, true_idx[:, None])
        cols = torch.arange(scores.shape[1], device=scores.device)
    else:
        true_idx = np.asarray(true_idx, dtype=np.int64)
        if np.isnan(scores).any():
            raise MatchLabError("scores contain NaN values: fix the model outputs or embeddings")
        t = np.take_along_axis(scores, true_idx[:, None], 1)
        cols = np.arange(scores.shape[1])
    return (scores > t).sum(1) + ((scores == t) & (cols < true_idx[:, None])).sum(1)


def _class_ids(values: Any, n_classes: int, what: str) -> np.ndarray:
    v = to_numpy(values).astype(np.int64).reshape(-1)
    bad = (v < 0) | (v >= n_classes)
    if bad.any():
        raise MatchLabError(
            f"{what} must be class indices in [0, {n_classes}): got {int(bad.sum())} outside, e.g. {int(v[bad][0])}"
        )
    return v


def topk_accuracy(logits: Array, labels: Array, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy for each k. logits: (N, C) float; labels: (N,) int class indices.

    Returns {k: accuracy}, e.g. {1: 0.91, 5: 0.99}; k >= C counts every sample as correct.
    """
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise MatchLabError(f"logits must be (N, C) with N >= 1: got shape {tuple(logits.shape)}")
    y = _class_ids(labels, logits.shape[1], "labels")
    if y.shape[0] != logits.shape[0]:
        raise MatchLabError(f"logits hold {logits.shape[0]} rows but labels {y.shape[0]}")
    ranks = to_numpy(rank_of_true(logits, y))
    return {int(k): float(np.mean(ranks < k)) for k in ks}


def confusion_matrix(pred: Array, labels: Array, n_classes: int) -> np.ndarray:
    """(C, C) int64 counts; rows are true classes, columns predicted. pred, labels: (N,) int."""
    p = _class_ids(pred, n_classes, "predictions")
    y = _class_ids(labels, n_classes, "labels")
    if p.shape != y.shape:
        raise MatchLabError(f"predictions hold {p.shape[0]} values but labels {y.shape[0]}")
    return np.bincount(y * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def normalise_rows(cm: np.ndarray) -> np.ndarray:
    """Row-normalised confusion (each true class sums to 1; a class with no samples stays 0)."""
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    return np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b with 0 where b == 0 (sklearn's zero_division=0)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def per_class_report(pred: Array, labels: Array, class_names: Sequence[str]) -> pd.DataFrame:
    """One row per class: class, precision, recall, f1, support, accuracy (undefined ratios are 0).

    accuracy is the share of the class's own samples classified correctly (= recall); it is kept as
    its own column because it is the number shown per data slice.
    """
    cm = confusion_matrix(pred, labels, len(class_names))
    tp = np.diag(cm)
    support, predicted = cm.sum(1), cm.sum(0)
    recall = _safe_div(tp, support)
    return pd.DataFrame(
        {
            "class": list(class_names),
            "precision": _safe_div(tp, predicted),
            "recall": recall,
            # 2tp / (2tp + fp + fn): sklearn's F1, defined even when precision is not
            "f1": _safe_div(2 * tp, support + predicted),
            "support": support.astype(np.int64),
            "accuracy": recall,
        }
    )


def most_confused_pairs(cm: np.ndarray, class_names: Sequence[str], k: int = 20) -> pd.DataFrame:
    """The k largest off-diagonal cells: true, predicted, count, rate (count / samples of true class).
    Sorted by count, then rate, descending; zero cells are left out."""
    cm = np.asarray(cm)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    t, p = np.nonzero(off)
    counts = off[t, p]
    rates = normalise_rows(cm)[t, p]
    order = np.lexsort((p, t, -rates, -counts))[:k]
    names = np.asarray(class_names, dtype=object)
    return pd.DataFrame(
        {
            "true": names[t[order]],
            "predicted": names[p[order]],
            "count": counts[order].astype(np.int64),
            "rate": rates[order],
        }
    )


def error_order(cm: np.ndarray) -> np.ndarray:
    """A class order for confusion plots: the pairs confused most often (both directions summed)
    come first, each pair's classes side by side; classes never confused follow, by error rate."""
    cm = np.asarray(cm)
    sym = cm + cm.T
    np.fill_diagonal(sym, 0)
    a, b = np.nonzero(np.triu(sym, 1))
    order: list[int] = []
    seen = np.zeros(cm.shape[0], dtype=bool)
    for i in np.lexsort((b, a, -sym[a, b])):
        for c in (a[i], b[i]):
            if not seen[c]:
                seen[c] = True
                order.append(int(c))
    error = 1.0 - _safe_div(np.diag(cm), cm.sum(1))
    rest = np.flatnonzero(~seen)
    order.extend(int(c) for c in rest[np.argsort(-error[rest], kind="stable")])
    return np.asarray(order, dtype=np.int64)
