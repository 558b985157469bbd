"""`python -m core audit RUN --data DIR`: audit a dataset through a model and write eval/<key>/audit/.

Entry point: `audit_run(run_dir, data, ...) -> summary dict`. It takes the model through the Embedder
contract (`core.embedder.load_embedder`: MatchLab runs and imported models alike), reuses the
evaluation's cached embeddings and pairs (evaluating first when they are missing or stale), measures
image quality on the decode-once cache, and writes the ranked issue tables, the suggested-fixes CSV and
a summary whose leakage comes first. The dashboard's Data audit page only reads these files.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from core import atomic, layout
from core.audit.analysis import AuditInput, AuditSettings, Findings, analyse, robust_z
from core.audit.quality import file_resolution, image_quality, quality_bins, reject_curve
from core.errors import MatchLabError
from core.progress import Progress

# an image is flagged low quality below this robust z of log-sharpness, or outside these grey levels
SHARPNESS_Z = -3.0
DARK, BRIGHT, LOW_CONTRAST = 0.12, 0.92, 0.04
ISSUE_TYPES = ("leakage", "label", "duplicate", "outlier", "quality", "identity", "small_identity")


# ---------------------------------------------------------------------------------------- splits
def audit_split(paths: list[str], split_doc: dict) -> np.ndarray:
    """The part ("train", "val", "test") of each image from a split.json document. An image the file
    does not list (added since) takes its identity's part when the split was by identity (its class
    folder, the first path component), else "unused"; with no document every image is "eval"."""
    out = np.full(len(paths), "eval" if not split_doc else "unused", dtype=object)
    if not split_doc:
        return out
    where = {p: part for part in ("train", "val", "test") for p in split_doc.get(part) or []}
    by_class: dict[str, str] = {}
    if split_doc.get("mode") == "identity":
        for p, part in where.items():
            by_class.setdefault(p.split("/")[0], part)
    for i, p in enumerate(paths):
        out[i] = where.get(p) or by_class.get(p.split("/")[0], out[i])
    return out


def _split_doc(run_dir: Path, data: Path, split_file: str | Path | None) -> tuple[dict, str]:
    """The split to audit against and where it came from: --split FILE, else the run's own split.json
    when `data` is the folder it trained on."""
    if split_file:
        path = Path(split_file)
        if path.is_dir():
            path = layout.RunFiles(path).split
        if not path.is_file():
            raise MatchLabError(f"--split {split_file}: no such split.json (give a file or a run folder)")
        return layout.read_json(path), str(path)
    train = (layout.read_config(run_dir).get("data") or {}).get("train", "")
    if train and Path(train).resolve() == data.resolve() and layout.RunFiles(run_dir).split.is_file():
        return layout.read_split(run_dir), str(layout.RunFiles(run_dir).split)
    return {}, "none: the folder is not the one the run trained on (pass --split FILE to audit leakage)"


# ------------------------------------------------------------------------------------ embeddings
def _fresh_evaluation(files: layout.EvalFiles, checkpoint: str, dataset_hash: str) -> bool:
    if not (files.summary.is_file() and files.embeddings.is_file() and files.samples.is_file()):
        return False
    m = layout.read_json(files.manifest)
    return m.get("dataset_hash") == dataset_hash and m.get("checkpoint_hash") == checkpoint


def _content_hashes(cache) -> np.ndarray:
    """sha1 of each cached file's bytes, as the decode-once cache recorded them while decoding."""
    m = layout.read_json(Path(cache.cache_path) / "manifest.json")
    sha = {f["path"]: f.get("sha1", "") for f in m.get("files", [])}
    out = np.array([sha.get(p, "") for p in cache.paths], dtype=object)
    if (out == "").any():
        raise MatchLabError(
            f"cache {cache.cache_path} has no content hash for {cache.paths[int(np.flatnonzero(out == '')[0])]}: "
            "delete that folder and run again"
        )
    return out


# ---------------------------------------------------------------------------------------- tables
def quality_table(images: np.ndarray, root: Path, paths: list[str]) -> pd.DataFrame:
    q = image_quality(images)
    wh = file_resolution(root, paths)
    q["width"], q["height"] = wh[:, 0], wh[:, 1]
    q["sharpness_z"] = robust_z(np.log1p(q["sharpness"].to_numpy(np.float64))).astype(np.float32)
    why = np.full(len(q), "", dtype=object)
    for mask, reason in (
        (q["sharpness_z"] <= SHARPNESS_Z, "blurred"),
        (q["brightness"] < DARK, "dark"),
        (q["brightness"] > BRIGHT, "overexposed"),
        (q["contrast"] < LOW_CONTRAST, "low contrast"),
    ):
        why[mask.to_numpy()] = [f"{w}, {reason}" if w else reason for w in why[mask.to_numpy()]]
    q["quality_issue"] = why
    q["low_quality"] = why != ""
    return q


def issue_table(f: Findings) -> pd.DataFrame:
    """One ranked list per issue type, in one table: issue, rank (0 = most suspicious), sample_id, path,
    class_name, split, score, suggested_label, partner (the other image or identity), detail, flagged."""
    im = f.images
    cols = ["sample_id", "path", "class_name", "split"]
    parts = []

    def add(issue: str, frame: pd.DataFrame, score: pd.Series, flagged, suggested="", partner="", detail="") -> None:
        out = frame[cols].copy()
        out.insert(0, "issue", issue)
        out["score"] = np.asarray(score, np.float64)
        out["suggested_label"] = suggested
        out["partner"] = partner
        out["detail"] = detail
        out["flagged"] = np.asarray(flagged, bool)
        out.insert(1, "rank", np.arange(len(out)))
        parts.append(out)

    judged = im[~im["too_small"]]
    # lowest label quality first; ties (every vote for another class) by the distance to the own class
    lab = judged.sort_values(["label_score", "outlier_score"], ascending=[True, False], kind="stable")
    add(
        "label",
        lab,
        lab["label_score"],
        lab["label_issue"],
        lab["suggested_name"].where(lab["label_issue"], ""),
        detail=[f"out-of-fold p(suggested) {p:.2f}" for p in lab["suggested_p"]],
    )
    out = judged.sort_values("outlier_score", ascending=False, kind="stable")
    add("outlier", out, out["outlier_score"], out["outlier"], detail=[f"robust z {z:.1f}" for z in out["outlier_z"]])
    q = im.sort_values("sharpness", kind="stable")
    add(
        "quality",
        q,
        q["sharpness"],
        q["low_quality"],
        detail=[
            f"{w or 'ok'}: sharpness {s:.0f}, brightness {b:.2f}, contrast {c:.2f}, {x}x{y} px"
            for w, s, b, c, x, y in zip(
                q["quality_issue"], q["sharpness"], q["brightness"], q["contrast"], q["width"], q["height"]
            )
        ],
    )
    d = f.duplicates.sort_values(["kind", "cosine"], ascending=[True, False], kind="stable")  # exact first
    for issue, rows in (("duplicate", d), ("leakage", d[d["leak"]])):
        frame = im.loc[rows["idx_b"].to_numpy()]
        add(
            issue,
            frame,
            rows["cosine"],
            np.ones(len(rows), bool),
            partner=rows["path_a"].to_numpy(),
            detail=[
                f"{k} duplicate of a {sa} image ({sb} here); cosine {c:.3f}"
                for k, sa, sb, c in zip(rows["kind"], rows["split_a"], rows["split_b"], rows["cosine"])
            ],
        )
    ident = f.identities.sort_values("closest_cosine", ascending=False, kind="stable")
    first = im.groupby("label")["sample_id"].first()
    ident = ident[ident["label"].isin(first.index)]
    for issue, rows in (("identity", ident), ("leakage", ident[ident["leak"]])):
        frame = im.loc[first.loc[rows["label"]].to_numpy()]
        add(
            issue,
            frame,
            rows["closest_cosine"],
            rows["match"],
            partner=rows["closest_name"].to_numpy(),
            detail=[
                f"centroid cosine {c:.3f} to {n} ({s}); {k} images"
                for c, n, s, k in zip(
                    rows["closest_cosine"], rows["closest_name"], rows["closest_split"], rows["n_images"]
                )
            ],
        )
    small = im[im["too_small"]]
    add(
        "small_identity",
        small,
        np.zeros(len(small)),
        np.ones(len(small), bool),
        detail="too few images of this identity to judge its labels",
    )
    table = pd.concat(parts, ignore_index=True)
    # leakage rows are ranked together: duplicate pairs (exact, then by cosine) before identity matches
    leak = table["issue"] == "leakage"
    table.loc[leak, "rank"] = np.arange(int(leak.sum()))
    return table


def fixes_table(f: Findings) -> pd.DataFrame:
    """The suggested fixes: path, issue, suggested_label, action (relabel / exclude / review). Feed it to
    `train data.relabel=FILE` and `data.exclude=FILE`: each takes only the rows of its own action."""
    im = f.images
    rows = []
    for r in im[im["label_issue"]].itertuples():
        rows.append((r.path, "label", r.suggested_name, "relabel"))
    d = f.duplicates
    excluded = set()
    for r in d.itertuples():
        if r.leak:  # keep the held-out image, drop the training copy: the retrained model never saw it
            drop = r.idx_a if r.split_a == "train" else r.idx_b
            issue = f"leakage ({r.kind} duplicate)"
        elif r.kind == "exact":
            drop, issue = r.idx_b, "exact duplicate"
        else:
            continue
        if drop not in excluded:
            excluded.add(drop)
            rows.append((im.at[drop, "path"], issue, "", "exclude"))
    for r in im[im["outlier"] & ~im["label_issue"]].itertuples():
        rows.append((r.path, "outlier", "", "review"))
    for r in im[im["low_quality"]].itertuples():
        rows.append((r.path, f"quality: {r.quality_issue}", "", "review"))
    for r in f.identities[f.identities["match"]].itertuples():
        rows.append(
            (
                f"{r.class_name}/",
                "identity match across splits" if r.leak else "identity match",
                r.closest_name,
                "review",
            )
        )
    return pd.DataFrame(rows, columns=["path", "issue", "suggested_label", "action"])


# ------------------------------------------------------------------------------------------- run
def audit_run(
    run_dir: str | Path,
    data: str | Path,
    *,
    pairs_file: str | Path | None = None,
    pairs_format: str | None = None,
    split_file: str | Path | None = None,
    settings: AuditSettings | None = None,
    device: str = "auto",
    progress: Progress | None = None,
) -> dict:
    """Audit `data` through the model of `run_dir`; writes eval/<key>/audit/ and returns its summary."""
    from core.embedder import folder_cache, load_embedder
    from core.evaluate import evaluate_run

    say = progress or (lambda f, m: None)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    run_dir, data = Path(run_dir), Path(data)
    if not data.is_dir():
        raise MatchLabError(f"--data {data}: no such folder")
    doc, split_source = _split_doc(run_dir, data, split_file)  # a bad --split fails before any work
    embedder = load_embedder(run_dir, device=device)
    say(0.01, f"decoding {data}")
    cache = folder_cache(embedder, data)
    files = layout.RunFiles(run_dir).eval(layout.eval_key(data, pairs_format))
    timings["load"] = round(time.perf_counter() - t0, 3)
    if not _fresh_evaluation(files, embedder.identity, cache.dataset_hash):
        t = time.perf_counter()
        say(0.02, "no current evaluation of this folder: evaluating first (embeddings and pairs)")
        evaluate_run(
            run_dir,
            data,
            pairs_file=pairs_file,
            pairs_format=pairs_format,
            device=device,
            progress=lambda f, m: say(0.02 + 0.4 * f, m),
        )
        timings["evaluate"] = round(time.perf_counter() - t, 3)
    samples = pd.read_parquet(files.samples)
    if samples["path"].tolist() != list(cache.paths):
        raise MatchLabError(f"{files.samples} lists other images than {data} holds now: run evaluate again")
    embeddings = np.load(files.embeddings, mmap_mode="r")
    split = audit_split(list(cache.paths), doc)
    t = time.perf_counter()
    inp = AuditInput(
        embeddings=np.asarray(embeddings, np.float32),
        labels=np.asarray(cache.labels),
        class_names=list(cache.class_names),
        paths=list(cache.paths),
        split=split,
        hashes=_content_hashes(cache),
    )
    timings["hashes"] = round(time.perf_counter() - t, 3)
    f = analyse(inp, settings or AuditSettings(), lambda fr, m: say(0.45 + 0.35 * fr, m), device="cpu")
    timings.update(f.timings)

    say(0.8, "image quality")
    t = time.perf_counter()
    q = quality_table(cache.images, data, list(cache.paths))
    f.images = pd.concat([f.images, q], axis=1)
    timings["quality"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    summary = f.summary
    summary.update(
        run=str(run_dir),
        key=files.key,
        data=str(data),
        split_source=split_source,
        checkpoint_hash=embedder.identity,
        dataset_hash=cache.dataset_hash,
        low_quality=int(q["low_quality"].sum()),
        quality_reasons={
            k: int(v)
            for k, v in pd.Series([r for w in q["quality_issue"] if w for r in w.split(", ")]).value_counts().items()
        },
    )
    reject = bins = None
    if files.pairs.is_file():
        pairs = pd.read_parquet(files.pairs, columns=["idx_a", "idx_b", "label", "score"])
        ia, ib = pairs["idx_a"].to_numpy(np.int64), pairs["idx_b"].to_numpy(np.int64)
        y, s = pairs["label"].to_numpy(np.int64), pairs["score"].to_numpy(np.float64)
        if y.sum() and (1 - y).sum():
            tau, source = _threshold(run_dir, s, y)
            measures = {
                "sharpness": q["sharpness"].to_numpy(),
                "contrast": q["contrast"].to_numpy(),
                "resolution": np.minimum(q["width"], q["height"]).to_numpy(),
                "label quality": f.images["label_score"].to_numpy(),
            }
            # a measure every image shares (ORL's one resolution) would reject in file order: leave it out
            measures = {k: v for k, v in measures.items() if np.unique(v).size > 1}
            reject = reject_curve(measures, ia, ib, y, s, tau)
            bins = quality_bins(q["sharpness"].to_numpy(), ia, ib, y, s, tau)
            summary["verification_threshold"] = {"threshold": tau, "source": source, "pairs": len(y)}
    issues = issue_table(f)
    fixes = fixes_table(f)
    timings["tables"] = round(time.perf_counter() - t, 3)
    summary["fixes"] = {k: int(v) for k, v in fixes["action"].value_counts().items()}

    t = time.perf_counter()
    out = files.audit
    atomic.save_parquet_atomic(out.images, f.images)
    atomic.save_parquet_atomic(out.issues, issues)
    atomic.save_parquet_atomic(out.duplicates, f.duplicates)
    atomic.save_parquet_atomic(out.identities, f.identities)
    atomic.save_numpy_atomic(out.neighbours, f.neighbours)
    atomic.save_numpy_atomic(out.neighbour_scores, f.neighbour_scores)
    atomic.atomic_write_text(out.fixes, fixes.to_csv(index=False))
    if reject is not None and bins is not None:  # computed together
        atomic.save_parquet_atomic(out.reject, reject)
        atomic.save_parquet_atomic(out.quality_bins, bins)
        summary["reject_curve"] = reject[reject["measure"] == "sharpness"][["rejected", "fnmr"]].to_dict("records")
        summary["quality_bins"] = bins.to_dict("records")
    timings["write"] = round(time.perf_counter() - t, 3)
    summary["timings_s"] = timings
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    summary["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    summary["artifacts"] = str(out.dir)
    atomic.atomic_write_json(out.summary, summary)  # last: it marks the audit whole
    say(1.0, "done")
    return summary


def _threshold(run_dir: Path, scores: np.ndarray, labels: np.ndarray) -> tuple[float, str]:
    """The run's recommended threshold (threshold.json), else the EER threshold of these pairs."""
    from core.metrics import verification as vm

    tau = layout.read_threshold(run_dir).get("threshold")
    if tau is not None:
        return float(tau), "the run's threshold.json"
    return float(vm.eer(vm.roc_points(scores, labels))[1]), "the EER threshold of the evaluation's pairs"


def summary_text(s: dict) -> str:
    """The CLI's human summary: leakage first, before any accuracy figure."""
    lines = [
        f"{s['key']}: {s['n_images']:,} images of {s['n_classes']:,} identities; splits "
        + ", ".join(f"{k} {v:,}" for k, v in s["splits"].items())
        + f" (split from {s['split_source']})"
    ]
    lines.append(
        ("LEAKAGE: " if s["leakage"] else "leakage: none found; ")
        + f"{s['leaking_pairs']} duplicate pairs between train and val/test, "
        f"{s['leaking_identities']} identities matching one in another split"
    )
    lines.append(
        f"exact duplicates: {s['exact_duplicate_pairs']} pairs in {s['exact_duplicate_groups']} groups; "
        f"near duplicates (cosine >= {s['near_duplicate_threshold']:.4f}): {s['near_duplicate_pairs']} pairs"
    )
    lines.append(
        f"label issues: {s['label_issues']} images flagged by {s['label_flag_method']}, on out-of-fold "
        f"{s['classifier']} probabilities (out-of-fold accuracy {s['out_of_fold_accuracy']:.3f}"
        + ("; low: read the ranking from the top, not the flags" if s["out_of_fold_accuracy"] < 0.5 else "")
        + f"); {s['too_small_identities']} identities too small to judge"
    )
    lines.append(
        f"outliers: {s['outliers']}; identity matches (centroid cosine >= "
        f"{s['identity_match_threshold']:.3f}): {s['identity_matches']}"
    )
    lines.append(
        f"low quality: {s['low_quality']} "
        + (f"({', '.join(f'{k} {v}' for k, v in s['quality_reasons'].items())})" if s["quality_reasons"] else "")
    )
    if "reject_curve" in s:
        vt = s["verification_threshold"]
        lines.append(
            f"FNMR at threshold {vt['threshold']:.3f} ({vt['source']}) rejecting the least sharp images: "
            + ", ".join(
                f"{r['rejected']:.0%} -> {r['fnmr']:.3f}"
                for r in s["reject_curve"]
                if r["rejected"] in (0.0, 0.05, 0.1, 0.2)
            )
        )
    lines.append("fixes: " + ", ".join(f"{v} {k}" for k, v in s["fixes"].items()) + f"; {s['seconds']:.1f} s")
    lines.append(str(Path(s["artifacts"])))
    return "\n".join(lines)


def read_audit_summary(eval_dir: str | Path) -> dict:
    """The audit summary of an evaluation folder ({} when it has not been audited)."""
    return layout.read_json(layout.EvalFiles(Path(eval_dir)).audit.summary)
