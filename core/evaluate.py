"""Evaluate a run on a dataset and write everything the dashboard shows under eval/<key>/.

Entry point: `evaluate_run(run_dir, data, *, pairs_file, pairs_format, tta, crop, ...) -> summary dict` (what
`python -m core evaluate --json` prints). Embeddings, logits, per-pair scores and confusion tables are
saved as files with a manifest (names in core.layout), so every number can be traced back to
the images and pairs that produced it, and the dashboard only reads.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core import atomic, layout
from core.assurance import AssuranceOptions, assure
from core.crops import check_crop
from core.data.cache import ImageCache, build_or_load_cache
from core.embedder import Embedder, embed_all, load_model
from core.errors import MatchLabError
from core.layout import eval_key  # noqa: F401  (where callers have always found it)
from core.lock import refuse_while_locked
from core.metrics import classification as cm
from core.metrics import identification as im
from core.metrics import verification as vm
from core.metrics.groups import read_attributes
from core.pair_scores import pair_scores_from_embeddings, score_pair_model
from core.progress import Progress
from core.run import Run

MAX_ALL_PAIRS = 5_000_000  # generated pairs: every pair up to this many, else a balanced seeded sample
SAMPLED_PAIRS = 1_000_000
HARDEST = 10  # hardest false accepts / rejects and most-confused class pairs named in the summary


def _run_split(model: Embedder | Run, cache: ImageCache) -> np.ndarray:
    """Per image: which part of the run's own split it was in ("train", "val", "test"), or "eval" when the
    dataset is not the one the run trained on."""
    out = np.full(len(cache), "eval", dtype=object)
    if model.dir is None:
        return out
    train = model.config.get("data", {}).get("train", "")
    same_data = bool(train) and Path(train).resolve() == Path(cache.root).resolve()
    split = layout.read_split(model.dir)
    if same_data and split:
        where = {p: part for part in ("train", "val", "test") for p in split.get(part, [])}
        out[:] = [where.get(p, "unused") for p in cache.paths]
    return out


def _held_out_mask(split: np.ndarray) -> tuple[np.ndarray, str]:
    """Images whose identities the model never trained on: test identities first, else validation."""
    for part in ("test", "val"):
        mask = split == part
        if mask.sum() >= 2:
            return mask, part
    return np.ones(len(split), bool), "all"


@dataclass
class EvalPairs:
    """Pairs to score, as rows of the image cache."""

    idx_a: np.ndarray  # (P,) int64
    idx_b: np.ndarray
    labels: np.ndarray  # (P,) int8, 1 = same
    folds: np.ndarray  # (P,) int16, -1 none
    slices: np.ndarray  # (P,) str
    source: str  # what these pairs are, in words


def prepare_pairs(cache: ImageCache, split: np.ndarray, data, *, pairs_file=None, pairs_format=None) -> EvalPairs:
    """The protocol's pairs, or pairs generated from identities: among the run's held-out identities when
    the folder is the one it trained on, so that no number is measured on training identities."""
    labels = np.asarray(cache.labels)
    if pairs_format:
        from core.pairs import read_pairs

        ps = read_pairs(pairs_format, pairs_file, data)
        ia, ib = ps.index_into(cache.paths)
        pairs = EvalPairs(
            ia,
            ib,
            np.asarray(ps.labels, np.int8),
            np.asarray(ps.folds, np.int16),
            np.asarray(ps.slices, dtype=object),
            ps.source,
        )
        trained = split == "train"
        touches = trained[ia] | trained[ib]
        if touches.any():  # a protocol pair with a training image would flatter the model
            keep = ~touches
            pairs = EvalPairs(
                ia[keep],
                ib[keep],
                pairs.labels[keep],
                pairs.folds[keep],
                pairs.slices[keep],
                f"{ps.source}; {int(touches.sum()):,} pairs touching the run's training "
                f"identities dropped, {int(keep.sum()):,} kept",
            )
        return pairs
    held, part = _held_out_mask(split)
    idx = np.flatnonzero(held)
    from core.pairs import all_or_sampled_pairs

    ia, ib, source = all_or_sampled_pairs(
        labels[idx], [cache.paths[i] for i in idx], max_all=MAX_ALL_PAIRS, n_sampled=SAMPLED_PAIRS
    )
    ia, ib = idx[ia], idx[ib]
    if part != "all":
        source += f" from the run's {part} identities (never trained on)"
    return EvalPairs(
        ia,
        ib,
        (labels[ia] == labels[ib]).astype(np.int8),
        np.full(len(ia), -1, np.int16),
        _subfolder_slices(cache.paths, ia, ib),
        source,
    )


def _subfolder_slices(paths: list[str], ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """Generated pairs in a nested layout (CFP's <id>/frontal, <id>/profile) are sliced by the two
    sub-folders, e.g. "frontal-profile"; a flat layout gives the one slice "all"."""
    parts = [p.split("/") for p in paths]
    if not all(len(x) >= 3 for x in parts):
        return np.full(len(ia), "all", dtype=object)
    sub = np.array([x[1] for x in parts], dtype=object)
    a, b = sub[ia], sub[ib]
    return np.where(a <= b, a + "-" + b, b + "-" + a).astype(object)


def stream_all_pairs(
    embeddings: np.ndarray,
    labels: np.ndarray,
    device: torch.device,
    *,
    progress: Progress | None = None,
    block: int = 8192,
) -> dict:
    """Verification over EVERY pair of images (5e9 for 100k images) without materialising them: blocked
    matmuls on the device feed a fine score histogram (2^16 bins over [-1, 1]), from which ROC, AUC, EER and
    TAR@FAR are read. Thresholds are exact at bin edges, so the resolution is 3e-5 in cosine."""
    from core.pairs import all_pairs_counts, iter_all_pair_blocks

    emb = torch.from_numpy(embeddings).to(device)
    if device.type == "cuda":
        emb = emb.to(torch.bfloat16)  # halves the matmul's bytes; cosine error ~1e-3, below a typical ROC step
    roc = vm.StreamingRoc()
    total, done = all_pairs_counts(len(labels)), 0
    for scores, genuine in iter_all_pair_blocks(emb, torch.from_numpy(labels), block):
        roc.update(scores, genuine)
        done += len(scores)
        if progress:
            progress(done / total, f"{done:,} of {total:,} pairs")
    points = roc.points()
    e, tau = vm.eer(points)
    return {
        "pairs": f"all {total:,} pairs, streamed through a {len(roc.edges) - 1:,}-bin score histogram",
        "auc": vm.auc(points),
        "eer": e,
        "eer_threshold": tau,
        "tar_at_far": vm.tar_at_far(points),
        "n_genuine": int(points.n_genuine),
        "n_impostor": int(points.n_impostor),
    }


def _predictions(
    embeddings: np.ndarray, labels: np.ndarray, class_names: list[str], head: tuple[np.ndarray | None, list[str]]
) -> tuple[np.ndarray, np.ndarray, str, np.ndarray | None]:
    """Predicted class per image (indices into class_names) with its score, and where it came from: the
    model's class head (head = (logits, the model's classes)) when this folder's classes are the model's,
    else a leave-one-out 1-NN vote in embedding space (works on identities the model never saw)."""
    logits, model_classes = head
    if logits is not None and list(class_names) == list(model_classes):
        probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
        return probs.argmax(1), probs.max(1), "head", logits
    nearest, similarity = im.nearest_other(embeddings)
    return labels[nearest], similarity, "knn", None


def per_image_tables(
    embeddings: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    paths: list[str],
    split: np.ndarray,
    *,
    head: tuple[np.ndarray | None, list[str]] = (None, []),
) -> tuple[dict, pd.DataFrame, np.ndarray, pd.DataFrame]:
    """What evaluate reports per image, from unit embeddings (a model's, or a user's file in core.imported):
    summary fields (prediction source, classification, kNN accuracy, retrieval), samples.parquet's table,
    the confusion matrix and the per-class table."""
    pred, pred_score, source, logits = _predictions(embeddings, labels, class_names, head)
    samples = pd.DataFrame(
        {
            "sample_id": np.arange(len(paths)),
            "path": paths,
            "label": labels,
            "class_name": [class_names[c] for c in labels],
            "pred": pred,
            "pred_score": pred_score.astype(np.float32),
            "correct": pred == labels,
            "split": split.astype(str),
        }
    )
    n_cls = len(class_names)
    confusion = cm.confusion_matrix(pred, labels, n_cls)
    per_class = cm.per_class_report(pred, labels, list(class_names))
    classification = {
        "source": source,
        "top1": float((pred == labels).mean()),
        "most_confused": cm.most_confused_pairs(confusion, list(class_names), k=HARDEST).to_dict("records"),
    }
    if logits is not None:
        classification.update(
            {f"top{k}": v for k, v in cm.topk_accuracy(logits, labels, ks=(1, min(5, n_cls))).items()}
        )
    knn, retrieval = im.neighbour_metrics(embeddings, labels)  # one N x N search for both (issue 17)
    return (
        {
            "prediction_source": source,
            "classification": classification,
            "knn_accuracy": knn,
            "retrieval": retrieval,
        },
        samples,
        confusion,
        per_class,
    )


def verification_tables(
    scores: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    slices: np.ndarray,
    paths_a: list[str],
    paths_b: list[str],
    *,
    threshold: float | None,
    idx_a: np.ndarray | None = None,
    idx_b: np.ndarray | None = None,
) -> tuple[dict, dict, pd.DataFrame]:
    """What evaluate reports over scored pairs (a model's, or a user's file in core.imported): the headline
    report with the hardest pairs, the per-slice reports, and pairs.parquet's table (idx_a/idx_b: rows of
    the images in samples.parquet, when there are images)."""
    headline, per_slice = _verification(scores, labels, folds, slices, threshold)
    hard = vm.hardest_pairs(scores, labels, k=HARDEST)
    headline["hardest"] = {
        kind: [{"path_a": paths_a[i], "path_b": paths_b[i], "score": float(scores[i])} for i in hard[kind]]
        for kind in ("false_accepts", "false_rejects")
    }
    table = pd.DataFrame(
        {
            "path_a": paths_a,
            "path_b": paths_b,
            "label": labels,
            "score": scores.astype(np.float32),
            "fold": folds.astype(np.int16),
            "slice": slices.astype(str),
        }
    )
    if idx_a is not None and idx_b is not None:
        table["idx_a"], table["idx_b"] = idx_a.astype(np.int64), idx_b.astype(np.int64)
    return headline, per_slice, table


def _verification(
    scores: np.ndarray, labels: np.ndarray, folds: np.ndarray, slices: np.ndarray, threshold: float | None
) -> tuple[dict, dict]:
    """Headline report (over all pairs) and per-slice reports. ROC and threshold sweeps are not stored: the
    dashboard recomputes them from pairs.parquet (one sort, then any threshold)."""
    reports = {}
    names = ["all"] + sorted(set(slices.tolist()) - {"all"})
    for name in names:
        mask = np.ones(len(labels), bool) if name == "all" else slices == name
        s, y = scores[mask], labels[mask]
        if y.sum() == 0 or y.sum() == len(y):
            continue  # a slice of one kind only has no ROC; the headline check below reports it
        points = vm.roc_points(s, y)
        # balance_kfold: generated pairs (mostly impostors) get the k-fold on balanced rows, and the
        # small-sample warnings come from that k-fold, the one reported (issue 20)
        rep = vm.verification_report(s, y, folds[mask], balance_kfold=True)
        if threshold is not None:
            at = vm.counts_at_threshold(points, threshold)
            # accuracy on positives (= TAR) and on negatives (= 1 - FAR), as pair-model tasks report them
            rep.update(
                threshold=threshold,
                accuracy=at["accuracy"],
                far=at["far"],
                frr=at["frr"],
                tar=at["tar"],
                accuracy_positives=at["tar"],
                accuracy_negatives=1.0 - at["far"],
                counts={k: int(at[k]) for k in ("tp", "fp", "tn", "fn")},
            )
        reports[name] = rep
    if "all" not in reports:
        raise MatchLabError(
            f"verification needs both genuine and impostor pairs: got {int(labels.sum())} genuine "
            f"and {int(len(labels) - labels.sum())} impostor pairs"
        )
    headline = reports.pop("all")
    if reports:
        # e.g. CFP's FF and FP: the headline pools them (each k-fold fold mixes slices); the per-slice
        # reports are the protocol's own figures. Say which one is shown (issue 20).
        headline["pooled_slices"] = sorted(reports)
        headline["scope"] = (
            f"all {len(labels):,} pairs, slices {' + '.join(sorted(reports))} pooled (each k-fold "
            f"fold mixes them); the protocol's per-slice figures are under 'slices'"
        )
    else:
        headline["scope"] = f"all {len(labels):,} pairs (one slice)"
    return headline, reports


class _Stages:
    """Wall seconds per stage of one evaluation (load_model, decode_cache, pairs, embedding, scoring,
    metrics, artifacts): `lap(name)` books the time since the previous lap to `name`. A pair model's
    scoring includes its forward passes (two images in, one score)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._t, 4)
        self._t = now


FTE_SCORE = -2.0  # below any cosine (>= -1) or probability (>= 0): a pair with a failure to enrol is rejected


def _fte(
    cache: ImageCache, ia: np.ndarray, ib: np.ndarray, scores: np.ndarray, labels: np.ndarray, folds: np.ndarray
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Failure to enrol (no face found) with alignment: (report, per-pair FTE mask, scores with FTE pairs set
    to FTE_SCORE). The headline then follows the NIST convention (an FTE pair is a rejection: a false reject
    if genuine, a correct reject if impostor); report["excluded"] holds the metrics without those pairs."""
    no_face = np.isin(np.asarray(cache.paths, dtype=object), np.asarray(cache.no_face, dtype=object))
    fte_pair = no_face[ia] | no_face[ib]
    report: dict = {
        "n_images": len(cache),
        "n_no_face": int(no_face.sum()),
        "rate": float(no_face.mean()) if len(cache) else 0.0,
        "n_multi_face": len(cache.multi_face),
        "no_face": cache.no_face[:20],
        "pairs_with_fte": int(fte_pair.sum()),
        "pair_rate": float(fte_pair.mean()) if len(ia) else 0.0,
        "convention": "headline: pairs with an image without a face count as rejections (NIST); "
        "excluded: those pairs left out",
    }
    keep = ~fte_pair
    y = labels[keep]
    if 0 < y.sum() < len(y):
        rep = vm.verification_report(scores[keep], y, folds[keep], balance_kfold=True)
        report["excluded"] = {
            k: rep[k]
            for k in (
                "auc",
                "eer",
                "eer_threshold",
                "kfold_accuracy_mean",
                "kfold_accuracy_std",
                "n_genuine",
                "n_impostor",
            )
            if k in rep
        }
    return report, fte_pair, np.where(fte_pair, np.float32(FTE_SCORE), scores).astype(np.float32)


def evaluate_run(
    run_dir: str | Path,
    data: str | Path,
    *,
    pairs_file: str | Path | None = None,
    pairs_format: str | None = None,
    tta: str | None = None,
    crop: float | None = None,
    device: str = "auto",
    progress: Progress | None = None,
    batch_size: int = 256,
    all_pairs: bool = False,
    align: str | None = None,
    overwrite: bool = False,
    assurance: AssuranceOptions | None = None,
) -> dict:
    """Evaluate `run_dir` on the image folder `data` and write eval/<key>/; returns the summary. With
    `all_pairs`, verification is also measured over every pair of the folder (streamed, any size) as
    summary["all_pairs"]; the per-pair table keeps the protocol's or the generated sample's pairs.
    align: face alignment ("none" | "mtcnn"; default the model's own Preprocess.align); with alignment,
    summary["fte"] holds the failure-to-enrol rate and verification is reported both ways (see _fte).
    assurance: bootstrap intervals, minimum-cost point, calibration and per-group rates (core.assurance;
    defaults when None), written into the summary and as calibration.json / groups.json.

    The folder is built aside and swapped in whole (atomic.replaced_dir): a failed or killed evaluation
    leaves the previous one intact. An existing evaluation of other images at another path under the same
    key is refused unless `overwrite`."""
    t0 = time.time()
    stages = _Stages()
    say = progress or (lambda f, m: None)
    if tta not in (None, "flip"):
        raise MatchLabError(f"--tta {tta!r} is not valid; the only test-time augmentation is 'flip'")
    refuse_while_locked(run_dir, "evaluate")  # its weights and threshold may change under a training run
    run = load_model(run_dir, device=device)  # an Embedder, or a Run for a pair model
    tta = tta or getattr(run, "tta", None)  # an imported model's own test-time augmentation (import-model --tta)
    own_align = run.preprocess.align
    pre = replace(run.preprocess, align=align or own_align)
    if isinstance(run, Embedder):
        run.preprocess = pre  # recorded: what the model was fed here
    crop = pre.crop if crop is None else check_crop(crop)
    say(0.02, f"decoding {data}" + (f" and aligning its faces ({pre.align})" if pre.align != "none" else ""))
    # on_no_face="centre": every image keeps its row, so that protocol pairs still index; FTE is applied below.
    stages.lap("load_model")
    cache = build_or_load_cache(
        data, pre.cache_res, on_bad_image="skip", align=pre.align, on_no_face="centre", device=str(run.device)
    )
    stages.lap("decode_cache")
    labels = np.asarray(cache.labels)
    assurance = (assurance or AssuranceOptions()).validate()
    attributes = read_attributes(assurance.attributes, cache.paths) if assurance.attributes else None
    key = eval_key(
        data,
        pairs_format,
        tta=tta,
        crop=crop if crop != pre.crop else None,
        align=pre.align if pre.align != own_align else None,
    )
    out = layout.RunFiles(Path(run_dir)).eval(key)
    previous = _previous_evaluation(out, data, cache.dataset_hash, overwrite)
    split = _run_split(run, cache)
    summary: dict = {
        "run": str(Path(run_dir)),
        "key": key,
        "data": str(Path(data)),
        "pairs_format": pairs_format,
        "pairs_file": str(pairs_file) if pairs_file else None,
        "tta": tta,
        "crop": crop,
        "checkpoint_hash": run.checkpoint_hash,
        "dataset_hash": cache.dataset_hash,
        "n_images": len(cache),
        "n_classes": len(cache.class_names),
        "model": run.model_name,
        "kind": run.kind,
        "skipped_images": [list(s) for s in cache.skipped],
        "align": pre.align,
    }

    pairs = prepare_pairs(cache, split, data, pairs_file=pairs_file, pairs_format=pairs_format)
    ia, ib, pair_labels, folds, slices = pairs.idx_a, pairs.idx_b, pairs.labels, pairs.folds, pairs.slices
    summary["pairs"] = pairs.source

    dev = run.device
    if isinstance(run, Run):  # a pair model: two images in, one score
        say(0.1, f"scoring {len(ia):,} pairs")
        scores = score_pair_model(
            run.model,
            cache.images,
            ia,
            ib,
            preprocess=pre,
            device=dev,
            crop=crop,
            batch_size=batch_size,
            progress=lambda f, m: say(0.1 + 0.7 * f, m),
        )
        ex = None
    else:
        stages.lap("pairs")
        ex = embed_all(
            run,
            cache.images,
            batch_size=batch_size,
            flip_tta=tta == "flip",
            crop=crop,
            progress=lambda f, m: say(0.1 + 0.6 * f, m),
        )
        stages.lap("embedding")
        scores = pair_scores_from_embeddings(ex.embeddings, ia, ib)

    if all_pairs and ex is not None:
        summary["all_pairs"] = stream_all_pairs(ex.embeddings, labels, dev, progress=lambda f, m: say(0.7 + 0.1 * f, m))
        if (split == "train").any():
            summary["all_pairs"]["pairs"] += ", including the identities the run trained on"
    stages.lap("scoring")
    fte_pair = None
    if pre.align != "none":
        summary["fte"], fte_pair, scores = _fte(cache, ia, ib, scores, pair_labels, folds)
    say(0.8, "computing metrics")
    headline, per_slice, pairs_df = verification_tables(
        scores,
        pair_labels,
        folds,
        slices,
        [cache.paths[i] for i in ia],
        [cache.paths[i] for i in ib],
        threshold=run.threshold,
        idx_a=ia,
        idx_b=ib,
    )
    headline["artifacts"] = str(out.dir)
    summary["verification"] = headline
    summary["slices"] = per_slice
    if fte_pair is not None:
        pairs_df["fte"] = fte_pair
    say(0.85, "intervals, calibration, costs and groups")
    calibration, groups = assure(
        pairs_df, labels[ia], labels[ib], headline, assurance, run_threshold=run.threshold, attributes=attributes
    )
    summary["groups"] = {
        name: {k: g[k] for k in ("fnmr_ratio", "fmr_ratio", "fdr", "summary_over")} | {"groups": len(g["groups"])}
        for name, g in groups["attributes"].items()
    }

    if ex is not None:
        image_summary, samples, confusion, per_class = per_image_tables(
            ex.embeddings, labels, list(cache.class_names), cache.paths, split, head=(ex.logits, list(run.class_names))
        )
        summary.update(image_summary)

    stages.lap("metrics")
    summary["seconds"] = round(time.time() - t0, 2)
    summary["seconds_by_stage"] = dict(stages.seconds)  # artifact writing follows: see the returned summary
    # Work derived from the same weights and images (ablation/, projections/, shards/) stays valid.
    same = previous.get("checkpoint_hash") == run.checkpoint_hash and previous.get("dataset_hash") == cache.dataset_hash
    with atomic.replaced_dir(out.dir, carry=lambda name: same) as staging:
        files = layout.EvalFiles(staging)
        if ex is not None:
            atomic.save_numpy_atomic(files.embeddings, ex.embeddings)
            if ex.logits is not None:
                atomic.save_numpy_atomic(files.logits, ex.logits)
            atomic.save_numpy_atomic(files.confusion, confusion)
            atomic.save_parquet_atomic(files.per_class, per_class)
            atomic.save_parquet_atomic(files.samples, samples)
        atomic.save_parquet_atomic(files.pairs, pairs_df)
        atomic.atomic_write_json(
            files.calibration,
            {**calibration, "data": str(Path(data).resolve()), "key": key, "dataset_hash": cache.dataset_hash},
        )
        atomic.atomic_write_json(files.groups, groups)
        atomic.atomic_write_json(
            files.manifest,
            {
                "checkpoint_hash": run.checkpoint_hash,
                "dataset_hash": cache.dataset_hash,
                "data": str(Path(data).resolve()),
                "pairs_file": summary["pairs_file"],
                "pairs_format": pairs_format,
                "tta": tta,
                "crop": crop,
                "align": pre.align,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "torch": torch.__version__,
                "python": platform.python_version(),
                "device": str(dev),
            },
        )
        atomic.atomic_write_json(files.summary, summary)
    stages.lap("artifacts")
    say(1.0, "done")
    return {**summary, "seconds_by_stage": dict(stages.seconds)}


def _previous_evaluation(out: layout.EvalFiles, data: str | Path, dataset_hash: str, overwrite: bool) -> dict:
    """The manifest of the evaluation already under this key ({} if none or unreadable). The key is the
    folder's name, so /x/orl_faces used to silently replace the bundled eval/orl_faces: an evaluation of
    other images from another path is refused unless `overwrite`."""
    try:
        previous = layout.read_json(out.manifest)
    except MatchLabError:
        return {}  # a damaged evaluation: replacing it loses nothing readable
    other = previous.get("data")
    if (
        other
        and not overwrite
        and previous.get("dataset_hash") != dataset_hash
        and Path(str(other)) != Path(data).resolve()
    ):
        raise MatchLabError(
            f"{out.dir} already holds the evaluation of other images ({other}); pass --overwrite "
            f"to replace it, or give your folder another name"
        )
    return previous
