"""The data audit's findings from arrays: label issues, duplicates and leakage, outliers, identity matches.

Entry point: `analyse(AuditInput, AuditSettings) -> Findings` (pure: embeddings, labels, paths, splits,
content hashes in; tables out). Label issues are ranked by cleanlab from out-of-sample class
probabilities of a cross-validated kNN on the embeddings; neighbours come from `core.search.exact_topk`,
one search that serves the kNN, the near-duplicates and the page's neighbour strip. Nothing here reads
or writes files; `core.audit.run` does, and `core.audit.quality` measures the images.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from core.audit.settings import AuditSettings
from core.errors import MatchLabError
from core.progress import Progress

HELD_OUT = ("val", "test")  # parts whose images must not appear in "train"
ProbRows = Callable[[slice], np.ndarray]  # rows of the out-of-fold probability matrix, (R, classes)


@dataclass
class AuditInput:
    """What the audit looks at. Row i of every array is image i.

    embeddings: (N, D) float32, L2-normalised. labels: (N,) int64 into class_names. split: (N,) str,
    "train" / "val" / "test" (or "eval" / "unused" when the image is in no part). hashes: (N,) str,
    a content hash of each file's bytes (equal hash = the same file content).
    """

    embeddings: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    paths: list[str]
    split: np.ndarray
    hashes: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.paths)
        for name in ("embeddings", "labels", "split", "hashes"):
            if len(getattr(self, name)) != n:
                raise MatchLabError(f"audit input: {name} has {len(getattr(self, name))} rows for {n} images")
        if n < 2:
            raise MatchLabError(f"the audit needs at least 2 images: got {n}")


@dataclass
class Findings:
    """Tables of the audit (see core.audit.run for the files they become)."""

    images: pd.DataFrame  # one row per image: scores, suggested label, flags
    duplicates: pd.DataFrame  # one row per duplicate pair: exact or near, cosine, splits, leak
    identities: pd.DataFrame  # one row per identity: size, split, closest other identity, match, leak
    neighbours: np.ndarray  # (N, show_k) int64 nearest other images, best first (-1: none)
    neighbour_scores: np.ndarray  # (N, show_k) float32 their cosines
    summary: dict
    timings: dict[str, float] = field(default_factory=dict)


def _stage(timings: dict[str, float], name: str, t0: float) -> float:
    now = time.perf_counter()
    timings[name] = round(timings.get(name, 0.0) + now - t0, 3)
    return now


# ------------------------------------------------------------------------------------- neighbours
def neighbours(
    embeddings: np.ndarray, k: int, *, budget_bytes: int | None = None, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """The k most cosine-similar OTHER images of each image: ((N, k) float32, (N, k) int64), best first.

    One exact search (core.search.exact_topk) of the set against itself for k + 1, then each row drops
    itself wherever it landed (an exact duplicate ties with it at cosine 1 and may come first).
    """
    from core.search import exact_topk

    n = embeddings.shape[0]
    kk = min(k + 1, n)
    s, i = exact_topk(embeddings, embeddings, kk, budget_bytes=budget_bytes, device=device, progress=False)
    own = i == np.arange(n)[:, None]
    # rows where the image itself fell outside the k + 1 (many exact ties): drop the last column instead
    own[~own.any(1), -1] = True
    keep = ~own
    out_i = i[keep].reshape(n, kk - 1)
    out_s = s[keep].reshape(n, kk - 1)
    return out_s.astype(np.float32), out_i.astype(np.int64)


def fold_of(n: int, folds: int, seed: int) -> np.ndarray:
    """A seeded fold number in [0, folds) per image, balanced in size."""
    return np.random.default_rng(seed).permutation(np.arange(n) % folds).astype(np.int64)


def cross_validated_knn(
    nn_scores: np.ndarray, nn_index: np.ndarray, labels: np.ndarray, folds: np.ndarray, k: int, temperature: float = 0.1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-sample kNN votes: for image i, its k nearest images among those NOT in i's fold (the kNN
    a cross-validation would fit on the other folds), each voting for its label with weight
    exp((cosine - 1) / temperature). Returns (vote classes (N, k) int64, vote weights (N, k) float64, used (N,) int64);
    classes are -1 (weight 0) where fewer than k other-fold neighbours were in the searched list."""
    other = folds[nn_index] != folds[:, None]
    # the first k other-fold columns of each row, in rank order
    rank = np.cumsum(other, axis=1)
    take = other & (rank <= k)
    used = take.sum(1)
    cls = np.full((len(labels), k), -1, np.int64)
    w = np.zeros((len(labels), k), np.float64)
    rows, cols = np.nonzero(take)
    slot = rank[rows, cols] - 1
    cls[rows, slot] = labels[nn_index[rows, cols]]
    w[rows, slot] = np.exp((nn_scores[rows, cols].astype(np.float64) - 1.0) / temperature)
    return cls, w, used


def vote_probabilities(
    cls: np.ndarray, w: np.ndarray, n_classes: int, smoothing: float, rows: slice | np.ndarray = slice(None)
) -> np.ndarray:
    """Dense class probabilities (R, n_classes) of the chosen rows: weighted votes plus `smoothing`
    pseudo-votes spread evenly over the classes, normalised to sum to 1."""
    c, ww = cls[rows], w[rows]
    out = np.full((c.shape[0], n_classes), smoothing / n_classes, np.float64)
    r = np.repeat(np.arange(c.shape[0]), c.shape[1])
    ok = c.ravel() >= 0
    np.add.at(out, (r[ok], c.ravel()[ok]), ww.ravel()[ok])
    out /= out.sum(1, keepdims=True)
    return out


def label_issue_flags(
    labels: np.ndarray, probs: ProbRows, n_classes: int, best: np.ndarray, max_cells: int
) -> tuple[np.ndarray, str]:
    """Which images to flag as mislabelled: cleanlab's find_label_issues (confident learning, per-class
    thresholds) on the out-of-sample probabilities when the dense N x classes matrix fits `max_cells`;
    beyond that, where the out-of-sample kNN's most probable class is not the label."""
    from cleanlab.filter import find_label_issues

    if len(labels) * n_classes <= max_cells and len(np.unique(labels)) > 1:
        p = probs(slice(None))
        present = np.unique(labels)  # confident learning counts per class: drop classes with no images
        remap = np.full(n_classes, -1, np.int64)
        remap[present] = np.arange(len(present))
        q = p[:, present] / p[:, present].sum(1, keepdims=True)
        flags = find_label_issues(remap[labels], q, filter_by="prune_by_noise_rate", n_jobs=1)
        return np.asarray(flags, bool), "cleanlab find_label_issues (prune_by_noise_rate)"
    return best != labels, "the out-of-fold most probable class is not the label"


def near_duplicate_threshold(nn_scores: np.ndarray, nn_index: np.ndarray, labels: np.ndarray, ratio: float) -> float:
    """1 - ratio x the median distance (1 - cosine) from an image to its closest same-identity image:
    near duplicates are `ratio` times closer than two photos of one person usually are, whatever the
    model's cosine scale. Identical files (cosine 1) are left out of the median."""
    same = (labels[nn_index] == labels[:, None]) & (nn_scores < 1 - 1e-6)
    has = same.any(1)
    if not has.any():
        return 1.0 - 1e-6
    first = nn_scores[has, same[has].argmax(1)]
    return float(1.0 - ratio * np.median(1.0 - first.astype(np.float64)))


def centroid_probabilities(
    embeddings: np.ndarray, labels: np.ndarray, folds: np.ndarray, n_classes: int, temperature: float
) -> ProbRows:
    """Out-of-fold class probabilities of a nearest-class-mean classifier: image i (in fold f) gets the
    softmax of cosine / temperature over the class means of the images NOT in fold f (what the classifier
    fitted on the other folds predicts: a linear softmax model whose weights are those means, fitted in
    closed form). Returns a function of a row slice, so a huge N x classes matrix is never held whole."""
    n_folds = int(folds.max()) + 1
    per_fold = np.zeros((n_folds, n_classes, embeddings.shape[1]), np.float32)
    for f in range(n_folds):
        m = folds == f
        np.add.at(per_fold[f], labels[m], embeddings[m])
    total = per_fold.sum(0)
    means = [_unit(total - per_fold[f]).astype(np.float32) for f in range(n_folds)]

    def rows(sl: slice) -> np.ndarray:
        e, fo = np.asarray(embeddings[sl], np.float32), folds[sl]
        out = np.empty((len(e), n_classes), np.float64)
        for f in np.unique(fo):
            m = fo == f
            z = (e[m] @ means[f].T).astype(np.float64) / temperature
            z -= z.max(1, keepdims=True)
            p = np.exp(z)
            out[m] = p / p.sum(1, keepdims=True)
        return out

    return rows


def label_quality(
    labels: np.ndarray, probs: ProbRows, n_classes: int, chunk_bytes: int = 256 << 20
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cleanlab's label quality score of every image from the out-of-sample probabilities, plus the
    suggested class (argmax) and its probability. Dense probability rows are built a chunk at a time
    (cleanlab's self-confidence score is per row, so chunking gives the same numbers at any N x C)."""
    from cleanlab.rank import get_label_quality_scores

    n = len(labels)
    step = max(1, chunk_bytes // (8 * max(n_classes, 1)))
    score = np.empty(n, np.float64)
    best = np.empty(n, np.int64)
    best_p = np.empty(n, np.float64)
    for s in range(0, n, step):
        sl = slice(s, min(s + step, n))
        p = probs(sl)
        score[sl] = get_label_quality_scores(labels[sl], p, method="self_confidence")
        best[sl] = p.argmax(1)
        best_p[sl] = p.max(1)
    return score, best, best_p


# -------------------------------------------------------------------------------------- centroids
def class_centroids(embeddings: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(sum of member embeddings (C, D) float64, member counts (C,))."""
    sums = np.zeros((n_classes, embeddings.shape[1]), np.float64)
    np.add.at(sums, labels, embeddings.astype(np.float64))
    return sums, np.bincount(labels, minlength=n_classes)


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def outlier_scores(embeddings: np.ndarray, labels: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """1 - cosine between each image and the centroid of the OTHER images of its class (NaN when it is
    alone): far from its own class = a wrong person, a non-face, junk."""
    e = embeddings.astype(np.float64)
    others = sums[labels] - e
    alone = counts[labels] <= 1
    cos = np.einsum("nd,nd->n", _unit(others), e)
    cos[alone] = np.nan
    return 1.0 - cos


def robust_z(x: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 * MAD) over the finite values; NaN stays NaN."""
    ok = np.isfinite(x)
    if not ok.any():
        return np.full_like(x, np.nan, dtype=np.float64)
    med = np.median(x[ok])
    mad = 1.4826 * np.median(np.abs(x[ok] - med))
    return (x - med) / (mad if mad > 0 else (np.std(x[ok]) or 1.0))


def identity_matches(
    embeddings: np.ndarray,
    labels: np.ndarray,
    sums: np.ndarray,
    counts: np.ndarray,
    class_split: np.ndarray,
    quantile: float,
    seed: int,
    outlier_z: float = 3.5,
) -> tuple[pd.DataFrame, float]:
    """Per identity, the other identity whose centroid is most cosine-similar, flagged as a possible
    match (one person under two names) when that cosine reaches the threshold: the `quantile` of the
    cosines between two random halves of one identity (identities with >= 4 images), i.e. as similar as
    the two halves of a real identity usually are, and its robust z among all identities' closest-other
    cosines reaches `outlier_z`. Returns (table, threshold)."""
    rng = np.random.default_rng(seed)
    n_cls = len(counts)
    half = []
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    for c in np.flatnonzero(counts >= 4):
        members = rng.permutation(order[starts[c] : starts[c + 1]])
        a, b = members[: len(members) // 2], members[len(members) // 2 :]
        half.append(float(_unit(embeddings[a].sum(0)) @ _unit(embeddings[b].sum(0))))
    tau = float(np.quantile(half, quantile)) if half else float("nan")
    present = counts > 0
    best = np.full(n_cls, -1, np.int64)
    best_cos = np.full(n_cls, -np.inf, np.float32)
    rows = np.flatnonzero(present)
    if len(rows) > 1:  # the closest other centroid, from the same exact search as the images
        s, i = neighbours(_unit(sums[rows]).astype(np.float32), 1)
        best[rows], best_cos[rows] = rows[i[:, 0]], s[:, 0]
    # and far closer than identities' nearest others usually are (robust z), so a model that puts every
    # identity near some other one (a weak model) flags none rather than all
    z = robust_z(np.where(np.isfinite(best_cos), best_cos, np.nan).astype(np.float64))
    match = present & np.isfinite(best_cos) & (best_cos >= tau) & (np.nan_to_num(z, nan=-np.inf) >= outlier_z)
    split_a, split_b = class_split, np.where(best >= 0, class_split[np.maximum(best, 0)], "none")
    leak = match & (
        ((split_a == "train") & np.isin(split_b, HELD_OUT)) | ((split_b == "train") & np.isin(split_a, HELD_OUT))
    )
    table = pd.DataFrame(
        {
            "label": np.arange(n_cls),
            "n_images": counts,
            "split": class_split,
            "closest": best,
            "closest_cosine": best_cos.astype(np.float32),
            "closest_split": split_b,
            "match": match,
            "leak": leak,
        }
    )
    return table, tau


def class_splits(labels: np.ndarray, split: np.ndarray, n_classes: int) -> np.ndarray:
    """The part each identity belongs to: the most common part among its images."""
    out = np.full(n_classes, "none", dtype=object)
    parts, part_of = np.unique(split, return_inverse=True)
    counts = np.zeros((n_classes, len(parts)), np.int64)
    np.add.at(counts, (labels, part_of), 1)
    has = counts.sum(1) > 0
    out[has] = parts[counts[has].argmax(1)]
    return out


# ------------------------------------------------------------------------------------- duplicates
def exact_duplicate_groups(hashes: np.ndarray) -> np.ndarray:
    """Group id per image (-1 when its content is unique): images with equal content hashes share one."""
    _, inverse, counts = np.unique(
        np.asarray(hashes, dtype=object).astype(str), return_inverse=True, return_counts=True
    )
    group = inverse.astype(np.int64)
    group[counts[inverse] < 2] = -1
    return group


def duplicate_pairs(
    nn_scores: np.ndarray, nn_index: np.ndarray, groups: np.ndarray, split: np.ndarray, threshold: float
) -> pd.DataFrame:
    """Every pair (a < b) that is an exact duplicate (same content hash) or a near duplicate (cosine >=
    threshold among each image's searched neighbours), with `leak` when one side is train and the other
    val/test. Exact pairs come from the hash groups themselves, so none is missed however many there are."""
    rows_a, rows_b = [], []
    members = pd.Series(np.arange(len(groups)))[groups >= 0].groupby(groups[groups >= 0])
    for _, idx in members:
        idx = idx.to_numpy()
        a, b = np.triu_indices(len(idx), 1)
        rows_a.append(idx[a])
        rows_b.append(idx[b])
    n, k = nn_index.shape
    near = (nn_scores >= threshold) & (nn_index >= 0)
    r, c = np.nonzero(near)
    rows_a.append(np.minimum(r, nn_index[r, c]))
    rows_b.append(np.maximum(r, nn_index[r, c]))
    a = np.concatenate(rows_a) if rows_a else np.zeros(0, np.int64)
    b = np.concatenate(rows_b) if rows_b else np.zeros(0, np.int64)
    pairs = np.unique(np.stack([a, b], 1), axis=0) if len(a) else np.zeros((0, 2), np.int64)
    a, b = pairs[:, 0], pairs[:, 1]
    exact = (groups[a] >= 0) & (groups[a] == groups[b])
    sa, sb = split[a], split[b]
    leak = ((sa == "train") & np.isin(sb, HELD_OUT)) | ((sb == "train") & np.isin(sa, HELD_OUT))
    return pd.DataFrame(
        {
            "idx_a": a.astype(np.int64),
            "idx_b": b.astype(np.int64),
            "kind": np.where(exact, "exact", "near"),
            "split_a": sa.astype(str),
            "split_b": sb.astype(str),
            "leak": leak,
        }
    )


# ------------------------------------------------------------------------------------------ analyse
def analyse(
    inp: AuditInput, settings: AuditSettings = AuditSettings(), progress: Progress | None = None, device: str = "cpu"
) -> Findings:
    """Every finding of the audit from its input (see the module docstring)."""
    cfg = settings.check()
    say = progress or (lambda f, m: None)
    timings: dict[str, float] = {}
    emb = np.asarray(inp.embeddings, dtype=np.float32)
    labels = np.asarray(inp.labels, dtype=np.int64)
    split = np.asarray(inp.split, dtype=object).astype(str)
    n, n_cls = len(labels), len(inp.class_names)
    t = time.perf_counter()

    say(0.0, f"searching the {cfg.search_k} nearest neighbours of {n:,} images")
    nn_s, nn_i = neighbours(emb, min(cfg.search_k, n - 1), budget_bytes=cfg.budget_bytes, device=device)
    t = _stage(timings, "neighbour_search", t)

    say(0.5, "label issues (cross-validated kNN + cleanlab)")
    folds = fold_of(n, cfg.folds, cfg.seed)
    cls, w, used = cross_validated_knn(nn_s, nn_i, labels, folds, cfg.k, cfg.temperature)
    candidates: dict[str, ProbRows] = {
        "knn": lambda sl: vote_probabilities(cls, w, n_cls, cfg.smoothing, sl),
        "centroid": centroid_probabilities(emb, labels, folds, n_cls, cfg.centroid_temperature),
    }
    # one pass per candidate: cleanlab's self-confidence IS the out-of-fold p(label), so its mean log is
    # the cross-validated likelihood that "auto" compares
    names = list(candidates) if cfg.classifier == "auto" else [cfg.classifier]
    quality = {name: label_quality(labels, candidates[name], n_cls) for name in names}
    likelihood = (
        {name: float(np.log(np.maximum(quality[name][0], 1e-300)).mean()) for name in names} if len(names) > 1 else {}
    )
    chosen = max(likelihood, key=likelihood.__getitem__) if likelihood else names[0]
    probs = candidates[chosen]
    score, best, best_p = quality[chosen]
    flags, flag_method = label_issue_flags(labels, probs, n_cls, best, cfg.cleanlab_max_cells)
    sums, counts = class_centroids(emb, labels, n_cls)
    too_small = counts[labels] < cfg.min_images
    # ties in the label score (every neighbour voting for another class) are broken by the distance to
    # the own class: the farther, the likelier the label is wrong
    out_score = outlier_scores(emb, labels, sums, counts)
    label_flag = flags & ~too_small
    t = _stage(timings, "label_issues", t)

    say(0.7, "outliers, identities, duplicates")
    out_z = robust_z(out_score)
    outlier_flag = (out_z >= cfg.outlier_z) & ~too_small
    cs = class_splits(labels, split, n_cls)
    ident, tau = identity_matches(emb, labels, sums, counts, cs, cfg.identity_quantile, cfg.seed, cfg.outlier_z)
    ident.insert(1, "class_name", np.asarray(inp.class_names, dtype=object))
    closest = ident["closest"].to_numpy()
    ident["closest_name"] = np.where(
        closest >= 0, np.asarray(inp.class_names, dtype=object)[np.maximum(closest, 0)], ""
    )
    ident["too_small"] = counts < cfg.min_images
    t = _stage(timings, "outliers_identities", t)

    groups = exact_duplicate_groups(inp.hashes)
    near = (
        cfg.near_duplicate
        if cfg.near_duplicate is not None
        else near_duplicate_threshold(nn_s, nn_i, labels, cfg.near_duplicate_ratio)
    )
    dups = duplicate_pairs(nn_s, nn_i, groups, split, near)
    cos = (
        np.einsum("pd,pd->p", emb[dups["idx_a"].to_numpy()], emb[dups["idx_b"].to_numpy()])
        if len(dups)
        else np.zeros(0, np.float32)
    )
    dups.insert(3, "cosine", cos.astype(np.float32))
    dups["path_a"] = [inp.paths[i] for i in dups["idx_a"]]
    dups["path_b"] = [inp.paths[i] for i in dups["idx_b"]]
    t = _stage(timings, "duplicates", t)

    in_dup = np.zeros(n, bool)
    in_leak = np.zeros(n, bool)
    for col in ("idx_a", "idx_b"):
        in_dup[dups[col].to_numpy()] = True
        in_leak[dups.loc[dups["leak"], col].to_numpy()] = True
    show = min(cfg.show_k, nn_i.shape[1])
    images = pd.DataFrame(
        {
            "sample_id": np.arange(n),
            "path": inp.paths,
            "label": labels,
            "class_name": np.asarray(inp.class_names, dtype=object)[labels],
            "split": split,
            "label_score": score.astype(np.float32),
            "suggested": best,
            "suggested_name": np.asarray(inp.class_names, dtype=object)[best],
            "suggested_p": best_p.astype(np.float32),
            "votes": used.astype(np.int16),
            "label_issue": label_flag,
            "outlier_score": out_score.astype(np.float32),
            "outlier_z": out_z.astype(np.float32),
            "outlier": outlier_flag,
            "too_small": too_small,
            "duplicate_group": groups,
            "duplicate": in_dup,
            "leak": in_leak,
            "identity_leak": ident["leak"].to_numpy()[labels],
        }
    )
    summary: dict[str, Any] = {
        "n_images": n,
        "n_classes": n_cls,
        "settings": {k: v for k, v in vars(cfg).items()},
        "label_issues": int(label_flag.sum()),
        "label_flag_method": flag_method,
        "classifier": chosen,
        "out_of_fold_log_likelihood": likelihood,
        "near_duplicate_threshold": near,
        "outliers": int(outlier_flag.sum()),
        "too_small_identities": int(ident["too_small"].sum()),
        "exact_duplicate_groups": int(len(np.unique(groups[groups >= 0]))),
        "exact_duplicate_pairs": int((dups["kind"] == "exact").sum()),
        "near_duplicate_pairs": int((dups["kind"] == "near").sum()),
        "leaking_pairs": int(dups["leak"].sum()),
        "identity_match_threshold": tau,
        "identity_matches": int(ident["match"].sum()),
        "leaking_identities": int(ident["leak"].sum()),
        "splits": {k: int(v) for k, v in zip(*np.unique(split, return_counts=True))},
        "short_knn_rows": int((used < cfg.k).sum()),
        # how well the out-of-fold classifier knows these identities: far below 1, its flags are a ranking only
        "out_of_fold_accuracy": float((best == labels)[~too_small].mean()) if (~too_small).any() else None,
    }
    summary["leakage"] = summary["leaking_pairs"] > 0 or summary["leaking_identities"] > 0
    return Findings(images, dups, ident, nn_i[:, :show], nn_s[:, :show], summary, timings)
