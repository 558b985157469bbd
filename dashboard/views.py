"""Pure functions behind the dashboard's interactions: selections to images, confusion cells to images,
threshold slider to counts, target FAR to threshold, run-versus-run disagreements, ablation changes.

No Streamlit here, so each interaction is unit tested (tests/dashboard/test_views.py). Verification
numbers come from core.metrics.verification (one ROC computation, exact counts by binary search) and are
never re-derived here, so the dashboard shows exactly what `python -m core evaluate` reports. That module
imports torch (seconds), so it is imported inside the functions that need it, off the other pages' path.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from core.metrics import verification as vm

COUNT_KEYS = ("tp", "fp", "tn", "fn")


def _vm():
    from core.metrics import verification

    return verification


# ------------------------------------------------------------------------------------------- selections
def customdata_values(data: Any) -> list:
    """A selected point's `customdata` as a list, whatever form it arrived in.

    Plotly sends numeric numpy customdata as typed arrays, and one row of a typed array comes back from the
    browser as {"0": v0, "1": v1, ...}; object arrays come back as lists; 1-D customdata as a scalar.
    """
    if data is None:
        return []
    if isinstance(data, Mapping):
        return [data[k] for k in sorted(data, key=lambda k: int(k))]
    if isinstance(data, (list, tuple)):
        return list(data)
    return [data]


def selected_sample_ids(selection: Mapping[str, Any] | None) -> list[int]:
    """Global sample ids of the points in a Plotly selection (st.plotly_chart(..., on_select=...)).

    Point indices restart at 0 in every trace (one trace per colour), so the id is read from the first
    element of each point's `customdata`. Order of selection is kept; duplicates are dropped.
    """
    if not selection:
        return []
    ids: list[int] = []
    for point in selection.get("points", []) or []:
        values = customdata_values(point.get("customdata"))
        try:
            ids.append(int(values[0]))
        except (IndexError, TypeError, ValueError):
            continue
    return list(dict.fromkeys(ids))


def rows_for_ids(samples: pd.DataFrame, ids: Iterable[int]) -> pd.DataFrame:
    """Rows of samples.parquet for these sample ids, in the order given (unknown ids skipped)."""
    ids = [int(i) for i in ids]
    indexed = samples.set_index("sample_id", drop=False)
    return indexed.loc[[i for i in ids if i in indexed.index]].reset_index(drop=True)


def confusion_cell_samples(samples: pd.DataFrame, true_label: int, pred_label: int) -> pd.DataFrame:
    """Images of true class `true_label` predicted as `pred_label`, most confident first.

    On the diagonal that is the correctly classified images; off it, the misclassified ones.
    """
    cell = samples[(samples["label"] == true_label) & (samples["pred"] == pred_label)]
    return cell.sort_values(["pred_score", "sample_id"], ascending=[False, True]).reset_index(drop=True)


def cell_from_selection(selection: Mapping[str, Any] | None) -> tuple[int, int] | None:
    """(true, predicted) class indices of the last confusion cell clicked (customdata = [true, pred, ...])."""
    points = (selection or {}).get("points", []) or []
    for point in reversed(points):
        values = customdata_values(point.get("customdata"))
        if len(values) >= 2:
            return int(values[0]), int(values[1])
    return None


def top_error_classes(cm: np.ndarray, limit: int) -> np.ndarray:
    """Indices of at most `limit` classes with the most errors (row + column off-diagonal counts),
    so a matrix of thousands of classes is drawn on the ones worth looking at."""
    cm = np.asarray(cm)
    if cm.shape[0] <= limit:
        return np.arange(cm.shape[0])
    off = cm.sum(0) + cm.sum(1) - 2 * np.diag(cm)
    return np.sort(np.argsort(-off, kind="stable")[:limit])


def nearest_neighbours(embeddings: np.ndarray, query: int, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The k rows most similar (cosine) to row `query`, excluding itself.

    embeddings: (N, D) float32, L2-normalised. Returns (ids (k,) int64, similarities (k,) float32).
    """
    sims = np.asarray(embeddings, dtype=np.float32) @ np.asarray(embeddings[query], dtype=np.float32)
    sims[query] = -np.inf
    k = min(k, len(sims) - 1)
    top = np.argpartition(-sims, k - 1)[:k] if k > 0 else np.zeros(0, np.int64)
    top = top[np.argsort(-sims[top], kind="stable")]
    return top.astype(np.int64), sims[top]


# ------------------------------------------------------------------------------------- verification
def pair_points(pairs: pd.DataFrame, slice_name: str | None = None) -> vm.RocPoints:
    """ROC operating points of pairs.parquet (optionally of one slice)."""
    if slice_name not in (None, "all"):
        pairs = pairs[pairs["slice"] == slice_name]
    return _vm().roc_points(pairs["score"].to_numpy(np.float64), pairs["label"].to_numpy(np.int64))


def operating_point(points: vm.RocPoints, tau: float) -> dict[str, Any]:
    """Everything the threshold slider shows at `tau`: threshold, far, frr, tar, accuracy, tp, fp, tn, fn
    (Python numbers), plus n_genuine and n_impostor."""
    at = _vm().counts_at_threshold(points, float(tau))
    out: dict[str, Any] = {"threshold": float(tau)}
    out.update({k: float(at[k]) for k in ("far", "frr", "tar", "accuracy")})
    out.update({k: int(at[k]) for k in COUNT_KEYS})
    out.update(n_genuine=points.n_genuine, n_impostor=points.n_impostor)
    return out


def threshold_for_target_far(points: vm.RocPoints, target_far: float) -> float:
    """The lowest threshold whose FAR <= target_far (highest TAR under that FAR).

    When even the highest score is reached by impostor ties, no finite threshold reaches the target;
    the answer is then just above the highest score (accept nothing), so the slider stays usable.
    """
    tau = _vm().threshold_for_far(points, float(target_far))
    if math.isinf(tau):
        top = float(points.at([1])["threshold"][0]) if len(points) > 1 else 1.0
        return float(np.nextafter(top, np.inf))
    return float(tau)


def threshold_presets(points: vm.RocPoints) -> dict[str, float]:
    """Named thresholds for the buttons: the EER point and the best-accuracy point."""
    _, eer_tau = _vm().eer(points)
    best_tau, _ = _vm().best_accuracy_threshold(points)
    return {"eer": float(eer_tau), "best_accuracy": float(best_tau)}


def slider_bounds(scores: np.ndarray, *presets: float | None) -> tuple[float, float]:
    """A slider range covering every score and every preset threshold, rounded outwards to 0.01."""
    values = [float(np.min(scores)), float(np.max(scores))]
    values += [float(p) for p in presets if p is not None and math.isfinite(p)]
    lo, hi = math.floor(min(values) * 100) / 100, math.ceil(max(values) * 100) / 100
    return (lo, hi) if hi > lo else (lo - 0.01, hi + 0.01)


def implied_rates(points: vm.RocPoints, score: float) -> dict[str, float]:
    """FAR and TAR if `score` itself were the threshold: how unusual a live score is for each kind."""
    at = _vm().counts_at_threshold(points, float(score))
    return {"far": float(at["far"]), "tar": float(at["tar"])}


def hardest_pairs_at(pairs: pd.DataFrame, tau: float, kind: str, k: int = 12) -> pd.DataFrame:
    """The k hardest impostors (kind "false_accept") or genuines ("false_reject") with column `error`
    telling whether each is an error at `tau`; errors come first because they are the hardest."""
    if kind not in ("false_accept", "false_reject"):
        raise ValueError(f"kind must be false_accept or false_reject, got {kind!r}")
    hard = _vm().hardest_pairs(pairs["score"].to_numpy(np.float64), pairs["label"].to_numpy(np.int64), k=k)
    rows = pairs.iloc[hard[kind + "s"]].copy()
    scores = rows["score"].to_numpy(np.float64)
    rows["error"] = scores >= tau if kind == "false_accept" else scores < tau
    return rows.reset_index(drop=True)


def error_count(pairs: pd.DataFrame, tau: float, kind: str) -> int:
    """How many false accepts or false rejects there are at `tau`."""
    s, y = pairs["score"].to_numpy(), pairs["label"].to_numpy()
    return int(((y == 0) & (s >= tau)).sum() if kind == "false_accept" else ((y == 1) & (s < tau)).sum())


def slice_operating_points(pairs: pd.DataFrame, tau: float) -> pd.DataFrame:
    """One row per slice (and "all"): the operating point at `tau`, side by side."""
    names = ["all"] + sorted(set(pairs["slice"].astype(str)) - {"all"})
    rows = []
    for name in names:
        part = pairs if name == "all" else pairs[pairs["slice"] == name]
        n_gen = int(part["label"].sum())
        if n_gen == 0 or n_gen == len(part):
            continue  # one kind of pair only: no operating point
        rows.append({"slice": name, **operating_point(pair_points(part), tau)})
    return pd.DataFrame(rows)


def export_operating_point(op: Mapping[str, Any], dataset_key: str, checkpoint_hash: str, run: str,
                           data: str | None = None) -> dict[str, Any]:
    """The JSON the Verification page downloads; `python -m core verify --threshold-file` reads it."""
    return {
        "threshold": float(op["threshold"]), "far": float(op["far"]), "tar": float(op["tar"]),
        "frr": float(op["frr"]), "accuracy": float(op["accuracy"]),
        "counts": {k: int(op[k]) for k in COUNT_KEYS},
        "n_genuine": int(op["n_genuine"]), "n_impostor": int(op["n_impostor"]),
        "dataset": dataset_key, "data": data, "checkpoint_hash": checkpoint_hash, "run": run,
    }


def tar_at_far_table(verification: Mapping[str, Any]) -> pd.DataFrame:
    """summary["verification"]["tar_at_far"] as a table: target FAR, TAR, threshold, FAR reached and a note
    ("unreachable": FAR below 1 / impostor pairs; "unstable": fewer than 30 / FAR impostor pairs)."""
    rows = []
    for level, row in (verification.get("tar_at_far") or {}).items():
        reachable, stable = bool(row.get("reachable")), bool(row.get("stable", row.get("reachable")))
        rows.append({"target FAR": float(level), "TAR": _num(row.get("tar")), "threshold": _num(row.get("threshold")),
                     "FAR reached": _num(row.get("far")),
                     "note": "" if stable else ("unstable" if reachable else "unreachable")})
    return pd.DataFrame(rows, columns=["target FAR", "TAR", "threshold", "FAR reached", "note"])


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def kfold_table(verification: Mapping[str, Any]) -> pd.DataFrame:
    """One row per fold: accuracy on the held-out fold with the threshold chosen on the others."""
    kf = verification.get("kfold") or {}
    accs, thrs = kf.get("fold_accuracies") or [], kf.get("fold_thresholds") or []
    sizes = kf.get("fold_sizes") or [None] * len(accs)
    return pd.DataFrame({"fold": np.arange(1, len(accs) + 1), "accuracy": accs, "threshold": thrs,
                         "pairs": sizes})


# ------------------------------------------------------------------------------------------- compare
def pair_disagreements(pairs_a: pd.DataFrame, pairs_b: pd.DataFrame, tau_a: float, tau_b: float
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pairs run A decides right and run B wrong, and the reverse, each at its own threshold.

    Pairs are matched on (path_a, path_b, label), so two evaluations of the same protocol line up even if
    written in different orders. Columns: path_a, path_b, label, score_a, score_b; the most confident
    disagreements (largest score gap measured from each run's threshold) first.
    """
    keys = ["path_a", "path_b", "label"]
    both = pairs_a[keys + ["score"]].merge(pairs_b[keys + ["score"]], on=keys, suffixes=("_a", "_b"))
    same = both["label"].to_numpy() == 1
    right_a = (both["score_a"].to_numpy() >= tau_a) == same
    right_b = (both["score_b"].to_numpy() >= tau_b) == same
    margin = (both["score_a"] - tau_a).abs() + (both["score_b"] - tau_b).abs()
    both = both.assign(margin=margin)
    a_only = both[right_a & ~right_b].sort_values("margin", ascending=False).reset_index(drop=True)
    b_only = both[~right_a & right_b].sort_values("margin", ascending=False).reset_index(drop=True)
    return a_only, b_only


def sample_disagreements(samples_a: pd.DataFrame, samples_b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Images run A classifies right and run B wrong, and the reverse (matched on path)."""
    cols = ["path", "class_name", "correct", "pred", "pred_score"]
    both = samples_a[cols].merge(samples_b[cols], on=["path", "class_name"], suffixes=("_a", "_b"))
    a_only = both[both["correct_a"] & ~both["correct_b"]].reset_index(drop=True)
    b_only = both[~both["correct_a"] & both["correct_b"]].reset_index(drop=True)
    return a_only, b_only


def compare_table(summaries: Mapping[str, Mapping[str, Any]], far_level: str = "0.001") -> pd.DataFrame:
    """Headline metrics of several evaluations, one column per run."""
    rows: dict[str, dict[str, Any]] = {}
    for name, s in summaries.items():
        v = s.get("verification") or {}
        tar = ((v.get("tar_at_far") or {}).get(far_level) or {}).get("tar")
        rows[name] = {
            "AUC": v.get("auc"), "EER": v.get("eer"), "EER threshold": v.get("eer_threshold"),
            f"TAR@FAR={far_level}": tar, "k-fold accuracy": v.get("kfold_accuracy_mean"),
            "k-fold std": v.get("kfold_accuracy_std"), "top-1": (s.get("classification") or {}).get("top1"),
            "kNN accuracy": _scalar(s.get("knn_accuracy")),
            "MAP@R": (s.get("retrieval") or {}).get("mean_average_precision_at_r"),
            "genuine pairs": v.get("n_genuine"), "impostor pairs": v.get("n_impostor"),
            "model": s.get("model"), "checkpoint": s.get("checkpoint_hash"),
        }
    return pd.DataFrame(rows)


def _scalar(value: Any) -> Any:
    # knn_accuracy may be a float or a dict holding it, depending on the metric's report.
    if isinstance(value, Mapping):
        for k in ("accuracy", "knn_accuracy", "top1"):
            if k in value:
                return value[k]
        return None
    return value


# ------------------------------------------------------------------------------------------- ablation
# ablation.json (core.ablation): {"metric", "crops", "centre": {<metric>: [per X], "per_class": {class: [per X]},
# "slices": {...}}, "outer": {...}, "grayscale": {<metric>: float}, "baseline", "best_crop", "examples":
# {"<X>": {"centre": [png, ...], "outer": [...]}}}. Older files held the headline curve under "overall".
def ablation_metrics(ablation: Mapping[str, Any]) -> list[str]:
    """Metrics with a curve in this ablation, its headline metric first."""
    centre = ablation.get("centre") or {}
    found = [m for m in ("accuracy", "auc") if isinstance(centre.get(m), list)]
    head = str(ablation.get("metric", found[0] if found else "metric"))
    return [head] + [m for m in found if m != head]


def _curve(region: Mapping[str, Any], metric: str, headline: str) -> list:
    values = region.get(metric)
    if values is None and metric == headline:
        values = region.get("overall")
    return list(values or [])


def ablation_curves(ablation: Mapping[str, Any], metric: str | None = None) -> pd.DataFrame:
    """Long table crop, region ("centre" / "outer"), value of `metric` (default: the headline metric);
    X values without a result (the outer ring at 100%: an all-mean image) are left out."""
    headline = str(ablation.get("metric", ""))
    metric = metric or headline
    crops = list(ablation.get("crops") or [])
    rows = []
    for region in ("centre", "outer"):
        values = _curve(ablation.get(region) or {}, metric, headline)
        rows += [{"crop": c, "region": region, "value": v} for c, v in zip(crops, values) if v is not None]
    return pd.DataFrame(rows, columns=["crop", "region", "value"])


def ablation_reference(ablation: Mapping[str, Any], metric: str | None = None) -> dict[str, Any]:
    """The full-image value, the grayscale value and the best centre crop for `metric`."""
    headline = str(ablation.get("metric", ""))
    metric = metric or headline
    crops = [int(c) for c in ablation.get("crops") or []]
    centre = _curve(ablation.get("centre") or {}, metric, headline)
    grey = ablation.get("grayscale") or {}
    grey_value = grey.get(metric, grey.get("overall") if metric == headline else None)
    if metric == headline and ablation.get("baseline") is not None:
        baseline = ablation["baseline"]
    else:
        baseline = centre[crops.index(100)] if 100 in crops and len(centre) == len(crops) else None
    valid = [(v, c) for c, v in zip(crops, centre) if v is not None]
    best = ablation.get("best_crop") if metric == headline else (max(valid)[1] if valid else None)
    if metric == "auc" and ablation.get("best_crop_auc") is not None:
        best = ablation["best_crop_auc"]
    return {"baseline": baseline, "grayscale": grey_value, "best_crop": best}


def ablation_examples(ablation: Mapping[str, Any], crop: int) -> list[tuple[str, str]]:
    """(region, path relative to the ablation folder) of the example model inputs saved at X = crop."""
    out = []
    for region, paths in ((ablation.get("examples") or {}).get(str(crop)) or {}).items():
        for rel in [paths] if isinstance(paths, str) else list(paths or []):
            out.append((region, rel))
    return out


def per_class_change(ablation: Mapping[str, Any], region: str, crop: int) -> pd.DataFrame:
    """Per class: the per-class metric (accuracy) at `crop` in `region`, on the full image (the centre
    curve at X = 100: the outer ring has no X = 100) and the change, largest gain first."""
    crops = [int(c) for c in ablation.get("crops") or []]
    per_class = (ablation.get(region) or {}).get("per_class") or {}
    full_curves = (ablation.get("centre") or {}).get("per_class") or {}
    if int(crop) not in crops or not per_class:
        return pd.DataFrame(columns=["class", "value", "full", "change"])
    i = crops.index(int(crop))
    full_i = crops.index(100) if 100 in crops else None
    rows = []
    for name, values in per_class.items():
        full = full_curves.get(name, [None] * len(crops))[full_i] if full_i is not None else None
        v = values[i]
        change = None if v is None or full is None else v - full
        rows.append({"class": name, "value": v, "full": full, "change": change})
    out = pd.DataFrame(rows)
    return out.sort_values("change", ascending=False, na_position="last").reset_index(drop=True)


# ------------------------------------------------------------------------------------------- dataset
def class_counts(split: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """split.json -> rows class, split, count (the class is the first folder of each relative path)."""
    rows = []
    for part in ("train", "val", "test"):
        paths = split.get(part) or []
        if not paths:
            continue
        classes = pd.Series([p.replace("\\", "/").split("/", 1)[0] for p in paths])
        counts = classes.value_counts()
        rows += [{"class": c, "split": part, "count": int(n)} for c, n in counts.items()]
    return pd.DataFrame(rows, columns=["class", "split", "count"])


def augmentation_preview(images_u8: np.ndarray, config: Mapping[str, Any], seed: int = 0) -> np.ndarray:
    """images_u8: (B, H, W, 3) uint8 -> the same images after the run's training augmentation (core's
    BatchAugment with the config's flip and crop padding, then its centre crop), as (B, H, W, 3) uint8."""
    import torch

    from core.crops import centre_crop
    from core.data.augment import BatchAugment

    train, data = config.get("train") or {}, config.get("data") or {}
    # Normalise with 0.5 / 0.5 and undo it: the statistics cancel, only the geometry is shown.
    aug = BatchAugment(mean=[0.5] * 3, std=[0.5] * 3, flip=bool(train.get("flip", True)),
                       crop_padding=int(train.get("crop_padding", 0)), channels_last=False)
    gen = torch.Generator().manual_seed(seed)
    x = centre_crop(aug(torch.from_numpy(np.ascontiguousarray(images_u8)), train=True, generator=gen),
                    float(data.get("crop", 1.0)))
    return ((x * 0.5 + 0.5) * 255).clamp(0, 255).round().byte().permute(0, 2, 3, 1).contiguous().numpy()


def thin_indices(n: int, max_points: int = 2000) -> np.ndarray:
    """Indices to draw an n-point curve with at most ~max_points, dense at the start (low FAR) where a
    log axis needs them, and always keeping both ends."""
    if n <= max_points:
        return np.arange(n)
    lin = np.linspace(0, n - 1, max_points // 2).round().astype(np.int64)
    geo = (np.geomspace(1, n, max_points // 2) - 1).round().astype(np.int64)
    return np.unique(np.concatenate([[0, n - 1], lin, geo]))
