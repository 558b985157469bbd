"""Pure functions behind the dashboard's interactions: selections to images, confusion cells to images,
threshold slider to counts, target FAR to threshold, run-versus-run disagreements, ablation changes.

No Streamlit here, so each interaction is unit tested (tests/dashboard/test_views.py). Verification
numbers come from core.metrics.verification (one ROC computation, exact counts by binary search) and are
never re-derived here, so the dashboard shows exactly what `python -m core evaluate` reports. That module
imports torch (seconds), so it is imported inside the functions that need it, off the other pages' path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

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


# Readable names of samples.parquet columns, for "Colour by", hover text and legends.
COLUMN_NAMES = {
    "class_name": "class",
    "correct": "prediction correct?",
    "split": "split",
    "pred_class": "predicted class",
    "pred": "predicted class index",
    "label": "class index",
    "pred_score": "prediction confidence",
    "path": "file",
}
OUTCOME_COLOURS = {"correct": "#2c7bb6", "wrong": "#d7191c"}  # a blue / red diverging pair


def plural(n: int, noun: str) -> str:
    """ "1 misclassified image", "2 misclassified images" (the noun's last word takes the s)."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def causing_neighbours(embeddings: np.ndarray, samples: pd.DataFrame, ids: Sequence[int]) -> pd.DataFrame:
    """For each misclassified image (sample id), its most similar other image of the class it was predicted
    as: with a 1-nearest-neighbour vote, exactly the neighbour that caused the error; with a class head,
    the closest example of the wrong class. Columns: sample_id, neighbour_id, neighbour_path, similarity."""
    emb = np.asarray(embeddings, dtype=np.float32)
    by_label = samples.groupby("label")["sample_id"].apply(np.asarray).to_dict()
    rows = []
    for i in ids:
        pred = int(samples.loc[samples["sample_id"] == i, "pred"].iloc[0])
        candidates = np.asarray([j for j in by_label.get(pred, []) if j != i], dtype=np.int64)
        if not len(candidates):
            continue
        sims = emb[candidates] @ emb[int(i)]
        best = int(np.argmax(sims))
        rows.append({"sample_id": int(i), "neighbour_id": int(candidates[best]), "similarity": float(sims[best])})
    out = pd.DataFrame(rows, columns=["sample_id", "neighbour_id", "similarity"])
    return out.merge(
        samples[["sample_id", "path"]].rename(columns={"sample_id": "neighbour_id", "path": "neighbour_path"}),
        on="neighbour_id",
        how="left",
    )


# -------------------------------------------------------------------------------------- live match
def image_look(rgb: np.ndarray, size: tuple[int, int]) -> dict[str, Any]:
    """What an image looks like to the resemblance check: grayscale or colour, and its (width, height).

    rgb: a small (H, W, 3) uint8 copy (a thumbnail); size: the full image's size. Grey means every pixel's
    channels differ by at most 8 levels (JPEG chroma noise leaves a few)."""
    rgb = np.asarray(rgb, dtype=np.int16)
    spread = (rgb.max(axis=2) - rgb.min(axis=2)) if rgb.ndim == 3 else np.zeros(1)
    return {"gray": bool(np.percentile(spread, 99) <= 8), "width": int(size[0]), "height": int(size[1])}


def live_crop_start(ablation: Mapping[str, Any], run_crop: float) -> tuple[float, str]:
    """Where the Live match crop slider starts, and why: the ablation's best centre crop when it is tighter
    than the whole image, else 0.8 (at 1.0 the toggle would change nothing)."""
    best = ablation.get("best_crop") if ablation else None
    if best is not None and 10 <= int(best) < 100:
        return round(int(best) / 100 * 20) / 20, f"the ablation's best centre crop ({int(best)}%)"
    if run_crop < 1.0:
        return run_crop, "the crop the run was trained with"
    return 0.8, "a tighter square than the whole image; run the ablation to find the best one"


def resemblance_warnings(
    uploads: Mapping[str, Mapping[str, Any]], reference: Sequence[Mapping[str, Any]], reference_name: str
) -> list[str]:
    """One sentence per way an uploaded image differs from the reference evaluation's images: colour
    against grayscale, or a size more than 4x away from theirs. The percentiles, FAR and TAR shown beside
    a live score come from that evaluation, so they hold only for images like its own."""
    if not reference:
        return []
    gray_share = float(np.mean([r["gray"] for r in reference]))
    ref_side = float(np.median([max(r["width"], r["height"]) for r in reference]))
    out = []
    for name, look in uploads.items():
        if gray_share >= 0.9 and not look["gray"]:
            out.append(f"{name} is in colour, but the images of {reference_name} are grayscale.")
        elif gray_share <= 0.1 and look["gray"]:
            out.append(f"{name} is grayscale, but the images of {reference_name} are in colour.")
        side = max(look["width"], look["height"])
        if side > 4 * ref_side or side < ref_side / 4:
            out.append(
                f"{name} is {look['width']}x{look['height']} px, the images of {reference_name} about "
                f"{int(ref_side)} px on their longer side."
            )
    return out


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


def threshold_transfer(points: vm.RocPoints, recorded: Mapping[str, Any]) -> dict[str, Any] | None:
    """The run's recommended threshold (threshold.json: threshold, rule, val_far, val_frr) on these pairs,
    beside the rates it had on the validation pairs it was chosen on; None when threshold.json lacks them.

    `moved` is true when FAR or FRR here is more than twice its validation rate (both floored at one pair
    here): the threshold did not carry over to this data (another domain or population), and this data's
    own presets are a better start. Lower rates here are not flagged: the operating point only got better,
    and rates of a few hundred pairs easily halve between populations (orl_demo: FAR 14% -> 7%).
    """
    try:
        tau, val_far, val_frr = (float(recorded[k]) for k in ("threshold", "val_far", "val_frr"))
    except (KeyError, TypeError, ValueError):
        return None
    op = operating_point(points, tau)
    rule = str(recorded.get("rule", ""))  # the file is the user's: shown only if a rule training writes

    def moved(here: float, there: float, n: int) -> bool:
        return max(here, 1 / n) > 2 * max(there, 1 / n)

    return {
        "threshold": tau,
        "rule": rule if re.fullmatch(r"eer|best_accuracy|far=[0-9.e+-]+", rule) else "",
        "val_far": val_far,
        "val_frr": val_frr,
        "far": op["far"],
        "frr": op["frr"],
        "moved": moved(op["far"], val_far, op["n_impostor"]) or moved(op["frr"], val_frr, op["n_genuine"]),
    }


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


def slice_names(pairs: pd.DataFrame) -> list[str]:
    """The pairs' slices other than "all", sorted. pd.unique first: iterating an Arrow string column row by
    row (set(column)) took half of the Verification page's time at 6k pairs."""
    return sorted({str(s) for s in pd.unique(pairs["slice"])} - {"all"})


def slice_operating_points(pairs: pd.DataFrame, tau: float) -> pd.DataFrame:
    """One row per slice (and "all"): the operating point at `tau`, side by side.

    A slice holding exactly the pairs of an earlier row (test_m when every pair is test_m) is left out:
    two identical rows say nothing and read as if they were two measurements."""
    names = ["all"] + slice_names(pairs)
    rows, seen = [], []
    for name in names:
        part = pairs if name == "all" else pairs[pairs["slice"] == name]
        n_gen = int(part["label"].sum())
        if n_gen == 0 or n_gen == len(part):
            continue  # one kind of pair only: no operating point
        if any(len(part) == len(other) and part.index.equals(other) for other in seen):
            continue
        seen.append(part.index)
        rows.append({"slice": name, **operating_point(pair_points(part), tau)})
    return pd.DataFrame(rows)


FAR_CHOICES = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)  # the target-FAR control's steps (x10 each)


def far_text(far: float) -> str:
    """1e-3 as "1e-3" (not "1e-03" nor "0.001"), for the FAR controls."""
    mantissa, exponent = f"{float(far):.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def far_is_stable(n_impostor: int, far: float) -> bool:
    """metrics.md: a FAR of x rests on about 30/x impostor pairs or more (30 false accepts expected)."""
    return far > 0 and n_impostor * far >= _vm().MIN_EVENTS * (1 - 1e-12)


def stability_note(n_impostor: int, far: float) -> str:
    """The stability rule in words, for the page and the export."""
    if far <= 0:
        return f"no impostor pair is accepted: the true FAR is below about 1 in {n_impostor:,} but not measured"
    need = int(math.ceil(_vm().MIN_EVENTS / far))
    if far_is_stable(n_impostor, far):
        return f"stable: {n_impostor:,} impostor pairs, {need:,} needed at FAR {far:.0e}"
    return (
        f"not stable: FAR {far:.0e} needs about {need:,} impostor pairs for 30 false accepts, "
        f"this evaluation has {n_impostor:,}"
    )


CHOSEN_BY_TEXT = {
    "target_far": "at target FAR",
    "eer": "at the equal error rate",
    "best_accuracy": "at best accuracy",
    "recommended": "the run's recommended threshold",
    "manual": "set by hand",
}


def export_operating_point(
    op: Mapping[str, Any],
    dataset_key: str,
    checkpoint_hash: str,
    run: str,
    data: str | None = None,
    *,
    chosen_by: str = "manual",
    target_far: float | None = None,
    pairs: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON the Verification page downloads; `python -m core verify --threshold-file` reads it.

    It records how τ was chosen (`chosen_by`: target_far, eer, best_accuracy, recommended or manual, and
    the target FAR when there was one), whether the FAR behind it is stable (metrics.md: about 30/FAR
    impostor pairs), and the data it was chosen on. `extra` adds fields (intervals, a cost rule) to the
    same record, so every producer of this file goes through this one function.
    """
    far_basis = float(target_far) if target_far is not None else float(op["far"])
    out = {
        "threshold": float(op["threshold"]),
        "far": float(op["far"]),
        "tar": float(op["tar"]),
        "frr": float(op["frr"]),
        "accuracy": float(op["accuracy"]),
        "counts": {k: int(op[k]) for k in COUNT_KEYS},
        "n_genuine": int(op["n_genuine"]),
        "n_impostor": int(op["n_impostor"]),
        "chosen_by": chosen_by,
        "target_far": None if target_far is None else float(target_far),
        "stable": far_is_stable(int(op["n_impostor"]), far_basis),
        "stability": stability_note(int(op["n_impostor"]), far_basis),
        "dataset": dataset_key,
        "data": data,
        "pairs": pairs,
        "checkpoint_hash": checkpoint_hash,
        "run": run,
    }
    out.update(extra or {})
    return out


def tar_at_far_table(verification: Mapping[str, Any]) -> pd.DataFrame:
    """summary["verification"]["tar_at_far"] as a table: target FAR, TAR, threshold, FAR reached and a note
    ("unreachable": FAR below 1 / impostor pairs; "unstable": fewer than 30 / FAR impostor pairs)."""
    rows = []
    for level, row in (verification.get("tar_at_far") or {}).items():
        reachable, stable = bool(row.get("reachable")), bool(row.get("stable", row.get("reachable")))
        rows.append(
            {
                "target FAR": float(level),
                "TAR": _num(row.get("tar")),
                "threshold": _num(row.get("threshold")),
                "FAR reached": _num(row.get("far")),
                "note": "" if stable else ("unstable" if reachable else "unreachable"),
            }
        )
    return pd.DataFrame(rows, columns=["target FAR", "TAR", "threshold", "FAR reached", "note"])


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def kfold_table(verification: Mapping[str, Any]) -> pd.DataFrame:
    """One row per fold: accuracy on the held-out fold with the threshold chosen on the others."""
    kf = verification.get("kfold") or {}
    accs, thrs = kf.get("fold_accuracies") or [], kf.get("fold_thresholds") or []
    sizes = kf.get("fold_sizes") or [None] * len(accs)
    return pd.DataFrame({"fold": np.arange(1, len(accs) + 1), "accuracy": accs, "threshold": thrs, "pairs": sizes})


# ------------------------------------------------------------------------------------------- compare
def _unordered(pairs: pd.DataFrame) -> pd.DataFrame:
    """path_a, path_b, label, score with each pair's two paths in sorted order (a pair is a set)."""
    a, b = pairs["path_a"].astype(str).to_numpy(), pairs["path_b"].astype(str).to_numpy()
    swap = a > b
    return pd.DataFrame(
        {
            "path_a": np.where(swap, b, a),
            "path_b": np.where(swap, a, b),
            "label": pairs["label"].to_numpy(),
            "score": pairs["score"].to_numpy(),
        }
    )


def shared_pairs(pairs_a: pd.DataFrame, pairs_b: pd.DataFrame) -> pd.DataFrame:
    """The pairs both evaluations scored, matched by their two image paths (in either order) and label.

    Columns: path_a, path_b, label, score_a, score_b. Two evaluations of one folder line up even when they
    were written in different orders; a pair only one of them has is left out.
    """
    keys = ["path_a", "path_b", "label"]
    a = _unordered(pairs_a).drop_duplicates(keys)
    b = _unordered(pairs_b).drop_duplicates(keys)
    return a.merge(b, on=keys, suffixes=("_a", "_b"))


def pair_overlap(pairs_a: pd.DataFrame, pairs_b: pd.DataFrame, shared: pd.DataFrame) -> dict[str, Any]:
    """Genuine / impostor counts of each evaluation and of the pairs they share, and whether they differ."""

    def counts(frame: pd.DataFrame) -> tuple[int, int]:
        n_gen = int((frame["label"].to_numpy() == 1).sum())
        return n_gen, len(frame) - n_gen

    out = {"a": counts(pairs_a), "b": counts(pairs_b), "shared": counts(shared)}
    out["identical"] = out["a"] == out["b"] == out["shared"]
    return out


def overlap_message(overlap: Mapping[str, Any], name_a: str = "A", name_b: str = "B") -> str:
    """One warning sentence: how the two pair sets differ and what the page compares instead."""
    (ga, ia), (gb, ib), (gs, is_) = overlap["a"], overlap["b"], overlap["shared"]
    head = (
        f"The two evaluations score different pairs: {name_a} has {ga:,} genuine / {ia:,} impostor, "
        f"{name_b} has {gb:,} / {ib:,}; they share {gs:,} / {is_:,} "
        f"({(gs + is_) / max(ga + ia, 1):.0%} of {name_a}'s, {(gs + is_) / max(gb + ib, 1):.0%} of {name_b}'s)."
    )
    if gs == 0 or is_ == 0:
        return head + " There is no shared set with both kinds of pair, so the metrics below are each on its own pairs."
    return head + " The comparison below uses only the shared pairs."


def shared_metrics(shared: pd.DataFrame, levels: Sequence[float] = (1e-2, 1e-3)) -> pd.DataFrame:
    """AUC, EER and TAR at each FAR level of both runs on the same (shared) pairs, one row per run."""
    vm = _vm()
    labels = shared["label"].to_numpy(np.int64)
    rows = {}
    for side in ("a", "b"):
        points = vm.roc_points(shared[f"score_{side}"].to_numpy(np.float64), labels)
        row = {"AUC": vm.auc(points), "EER": vm.eer(points)[0]}
        for level, res in zip(levels, vm.tar_at_far(points, levels).values()):
            row[f"TAR @ FAR {far_text(level)}"] = res["tar"]
        rows[side] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def equal_far_thresholds(shared: pd.DataFrame, far: float) -> tuple[float, float]:
    """Each run's threshold at the same target FAR on the shared pairs (lowest τ with FAR <= far), so the
    two are compared as models rather than through thresholds tuned on different data."""
    labels = shared["label"].to_numpy(np.int64)
    return tuple(
        threshold_for_target_far(_vm().roc_points(shared[f"score_{side}"].to_numpy(np.float64), labels), far)
        for side in ("a", "b")
    )  # type: ignore[return-value]


def pair_disagreements(
    pairs_a: pd.DataFrame, pairs_b: pd.DataFrame, tau_a: float, tau_b: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pairs run A decides right and run B wrong, and the reverse, each at its own threshold.

    Only the pairs both scored count (shared_pairs). Columns: path_a, path_b, label, score_a, score_b,
    margin; the most confident disagreements (largest score gap measured from each run's threshold) first.
    """
    return disagreements(shared_pairs(pairs_a, pairs_b), tau_a, tau_b)


def disagreements(both: pd.DataFrame, tau_a: float, tau_b: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """pair_disagreements on an already matched shared_pairs() table."""
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


LEADERBOARD_FAR = ("0.01", "0.001", "0.0001")  # summary tar_at_far keys shown as columns


def leaderboard(
    summaries: Mapping[str, Mapping[str, Any]], far_levels: Sequence[str] = LEADERBOARD_FAR
) -> pd.DataFrame:
    """Headline metrics of N evaluations, one row per run (sortable in st.dataframe).

    Each row is on that run's own pairs; the pair counts are columns so unequal sets are visible. Top-1
    and kNN accuracy appear only for runs that classify images (not for pair models such as the shoes).
    """
    rows = []
    for name, s in summaries.items():
        v = s.get("verification") or {}
        row: dict[str, Any] = {"run": name, "AUC": v.get("auc"), "EER": v.get("eer")}
        for level in far_levels:
            row[f"TAR @ FAR {far_text(float(level))}"] = ((v.get("tar_at_far") or {}).get(level) or {}).get("tar")
        row.update(
            {
                "k-fold accuracy": v.get("kfold_accuracy_mean"),
                "k-fold std": v.get("kfold_accuracy_std"),
                "genuine pairs": v.get("n_genuine"),
                "impostor pairs": v.get("n_impostor"),
            }
        )
        if s.get("kind") != "pair":
            row.update(
                {"top-1": (s.get("classification") or {}).get("top1"), "kNN accuracy": _scalar(s.get("knn_accuracy"))}
            )
        row.update({"model": s.get("model"), "checkpoint": s.get("checkpoint_hash")})
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.dropna(axis=1, how="all") if len(frame) else frame


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
    """images_u8: (B, H, W, 3) uint8 -> the same images after the run's training augmentation (core's, with the
    config's flip, crops, colour jitter and random erasing, then its centre crop), as (B, H, W, 3) uint8."""
    import torch

    from core.crops import centre_crop
    from core.data.augment import training_augment

    train, data = config.get("train") or {}, config.get("data") or {}
    # Normalise with 0.5 / 0.5 and undo it: the statistics cancel, only the geometry and colour are shown.
    aug = training_augment(
        [0.5] * 3,
        [0.5] * 3,
        flip=bool(train.get("flip", True)),
        crop_padding=int(train.get("crop_padding", 0)),
        crop_scale=float(train.get("crop_scale", 1.0)),
        color_jitter=float(train.get("color_jitter", 0.0)),
        random_erasing=float(train.get("random_erasing", 0.0)),
    )
    gen = torch.Generator().manual_seed(seed)
    x = centre_crop(
        aug(torch.from_numpy(np.ascontiguousarray(images_u8)), train=True, generator=gen), float(data.get("crop", 1.0))
    )
    return ((x * 0.5 + 0.5) * 255).clamp(0, 255).round().byte().permute(0, 2, 3, 1).contiguous().numpy()


def thin_indices(n: int, max_points: int = 2000) -> np.ndarray:
    """Indices to draw an n-point curve with at most ~max_points, dense at the start (low FAR) where a
    log axis needs them, and always keeping both ends."""
    if n <= max_points:
        return np.arange(n)
    lin = np.linspace(0, n - 1, max_points // 2).round().astype(np.int64)
    geo = (np.geomspace(1, n, max_points // 2) - 1).round().astype(np.int64)
    return np.unique(np.concatenate([[0, n - 1], lin, geo]))


# ------------------------------------------------------------------------------------------ data audit
AUDIT_ISSUES = {  # issue type -> (name on the page, what its score means)
    "leakage": ("Leakage", "train image duplicated in val/test, or an identity matching one in another split"),
    "label": ("Label issues", "cleanlab label quality from out-of-fold kNN probabilities (low = likely mislabelled)"),
    "duplicate": ("Duplicates", "cosine of the pair (1 = identical content)"),
    "outlier": ("Outliers", "1 - cosine to the rest of its class (high = far from its own class)"),
    "quality": ("Image quality", "sharpness: variance of the Laplacian (low = blurred)"),
    "identity": ("Identity matches", "centroid cosine to the closest other identity (high = maybe one person)"),
    "small_identity": ("Too-small identities", "identities with too few images to judge"),
}


def audit_rows(
    issues: pd.DataFrame,
    issue: str,
    *,
    flagged_only: bool = True,
    splits: Sequence[str] = (),
    text: str = "",
    limit: int = 500,
) -> pd.DataFrame:
    """The ranked rows of one issue type (issues.parquet written by core.audit), filtered: only flagged
    rows, only these splits (none = all), path or class containing `text`; best-ranked first, at most
    `limit`. The index is reset, so a table selection's row position is a position in this frame."""
    rows = issues[issues["issue"] == issue]
    if flagged_only:
        rows = rows[rows["flagged"]]
    if splits:
        rows = rows[rows["split"].isin(list(splits))]
    if text:
        t = text.lower()
        rows = rows[
            rows["path"].str.lower().str.contains(t, regex=False)
            | rows["class_name"].astype(str).str.lower().str.contains(t, regex=False)
        ]
    return rows.sort_values("rank", kind="stable").head(limit).reset_index(drop=True)


def selected_row(selection: Mapping[str, Any] | None, rows: pd.DataFrame) -> pd.Series | None:
    """The row of `rows` a dataframe selection (event.selection: {"rows": [position], ...}) points at,
    or None when nothing (or a position no longer shown) is selected."""
    picked = list((selection or {}).get("rows") or [])
    if not picked or not 0 <= int(picked[0]) < len(rows):
        return None
    return rows.iloc[int(picked[0])]


def audit_leakage_note(summary: Mapping[str, Any]) -> str | None:
    """One sentence for the Overview when the data audit found leakage; None when it found none."""
    if not summary or not summary.get("leakage"):
        return None
    pairs, idents = int(summary.get("leaking_pairs", 0)), int(summary.get("leaking_identities", 0))
    parts = [
        p
        for p in (
            plural(pairs, "duplicate image pair") + " between train and val/test" if pairs else "",
            (f"{idents:,} identity" if idents == 1 else f"{idents:,} identities") + " matching one in another split"
            if idents
            else "",
        )
        if p
    ]
    return (
        "Data leakage: the data audit found "
        + " and ".join(parts)
        + ". Held-out accuracy may be flattered; see the Data audit page."
    )
