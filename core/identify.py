"""Identification (1:N): who is this probe, or is it nobody we know? (open set, with a no-match label)

Entry points (each takes a `core.embedder.Embedder`): `identify(embedder, gallery_dir, probe_dir, *, truth_csv,
no_match_label, threshold) -> (report, predictions)` for a known folder + a probe folder + optional ground
truth, `holdout_identities(...)` to build the same task from any identity folder, and `predict_folder(...)`
for closed-set submission files.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from core.data.cache import load_image_arrays
from core.data.images import is_image_file
from core.embedder import Embedder, Extracted, embed_all, folder_cache
from core.errors import MatchLabError
from core.metrics import identification as im


def list_images(folder: str | Path) -> list[str]:
    """Image files under `folder` (any depth), relative posix paths, sorted: a probe or test folder."""
    root = Path(folder)
    if not root.is_dir():
        raise MatchLabError(f"image folder {root} does not exist")
    paths = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and is_image_file(p.name) and not any(s.startswith(".") for s in p.parts)
    )
    if not paths:
        raise MatchLabError(f"{root} holds no images (looked for jpg, png, pgm, ... at any depth)")
    return paths


def _extract_paths(run: Embedder, root: Path, paths: list[str]) -> Extracted:
    """The images at root/paths (no cache: probes are read once) through `run`, as it sees them."""
    images = load_image_arrays(
        [root / p for p in paths], run.preprocess.cache_res, align=run.preprocess.align, device=str(run.device)
    )
    return embed_all(run, images)


def read_truth(
    csv_path: str | Path, probe_paths: list[str], gallery_names: list[str], no_match_label: str
) -> np.ndarray:
    """Truth CSV `image,identity` -> (P,) gallery class index per probe, -1 for the no-match label."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise MatchLabError(f"truth file {csv_path} not found")
    index = {n: i for i, n in enumerate(gallery_names)}
    truth: dict[str, int] = {}
    # Messages name the line, never its text: the path may be any file on the machine.
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"image", "identity"} <= set(reader.fieldnames):
                raise MatchLabError(f"{csv_path}: the header must be 'image,identity'")
            for line, row in enumerate(reader, start=2):
                if row.get("image") is None or row.get("identity") is None:
                    raise MatchLabError(f"{csv_path}:{line}: too few fields; each row is 'image,identity'")
                ident = row["identity"].strip()
                if ident != no_match_label and ident not in index:
                    raise MatchLabError(
                        f"{csv_path}:{line}: the identity is neither a gallery folder nor the "
                        f"no-match label '{no_match_label}'"
                    )
                truth[row["image"].strip()] = index.get(ident, -1)
    except UnicodeDecodeError as e:
        raise MatchLabError(f"{csv_path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except csv.Error as e:
        raise MatchLabError(f"{csv_path}: not a readable CSV ({e})") from None
    missing = [p for p in probe_paths if p not in truth]
    if missing:
        raise MatchLabError(f"{csv_path}: no truth for probe '{missing[0]}' ({len(missing)} probes missing)")
    unused = sorted(set(truth) - set(probe_paths))
    if unused:
        print(
            f"warning: {csv_path}: {len(unused)} image(s) it names are not among the probes and were ignored "
            f"(first: {', '.join(unused[:3])})",
            file=sys.stderr,
        )
    return np.array([truth[p] for p in probe_paths], dtype=np.int64)


def gallery_for(template: str, gallery_emb: np.ndarray, gallery_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What an identity is scored against: "max" every gallery image (the identity's best image wins, the
    "highest similarity" rule of the open-set task), "mean" one mean-embedding template per identity."""
    if template not in im.TEMPLATES:
        raise MatchLabError(f"--template must be one of {', '.join(im.TEMPLATES)}: got {template!r}")
    return im.identity_templates(gallery_emb, gallery_labels) if template == "mean" else (gallery_emb, gallery_labels)


def _report(gallery_emb, gallery_labels, probe_emb, truth, *, threshold: float | None, template: str = "max") -> dict:
    gallery_emb, gallery_labels = gallery_for(template, gallery_emb, gallery_labels)
    best_id, best_score = im.open_set_scores(probe_emb, gallery_emb, gallery_labels)
    report = im.open_set_report(best_id, best_score, truth, no_match=-1, threshold=threshold)
    mated = truth >= 0
    if mated.any():
        ranks = im.rank_k_accuracy((probe_emb[mated], gallery_emb, gallery_labels), truth[mated], ks=(1, 5))
        report["rank1"], report["rank5"] = ranks["rank_1"], ranks["rank_5"]
    report["template"] = template
    return report


def identify(
    run: Embedder,
    gallery_dir: str | Path,
    probe_dir: str | Path,
    *,
    truth_csv: str | Path | None = None,
    no_match_label: str = "n000000",
    threshold: float | None = None,
    top_k: int = 0,
    index: str = "exact",
    template: str = "max",
) -> tuple[dict, pd.DataFrame]:
    """Match every probe image against the gallery identity folder; with truth, score the open-set task.

    template: "max" (an identity scores its best gallery image) or "mean" (its mean-embedding template);
    see `gallery_for`. The top-k lists always search gallery images.

    top_k > 0 adds each probe's top_k gallery images (columns top<i>_path relative to the gallery folder,
    top<i>_score) searched with `core.search.build_index(kind=index)`; an approximate index changes only
    those columns (a hole is an empty path at -inf), never the best match or the metrics, which stay exact.
    """
    if top_k < 0:
        raise MatchLabError(f"--top-k must be >= 0 (0: no top-k columns): got {top_k}")
    if top_k == 0 and index != "exact":
        raise MatchLabError(f"--index {index} only searches the top-k lists: add --top-k N")
    # with alignment, a gallery image without a face cannot be enrolled: left out (listed on stderr)
    gallery = folder_cache(run, gallery_dir, on_no_face="skip")
    g_emb = embed_all(run, gallery.images).embeddings
    g_labels = np.asarray(gallery.labels)
    probe_paths = list_images(probe_dir)
    p_emb = _extract_paths(run, Path(probe_dir), probe_paths).embeddings
    report: dict = {
        "n_gallery_images": len(gallery),
        "n_identities": len(gallery.class_names),
        "n_probes": len(probe_paths),
        "no_match_label": no_match_label,
    }
    if truth_csv:
        truth = read_truth(truth_csv, probe_paths, list(gallery.class_names), no_match_label)
        report.update(_report(g_emb, g_labels, p_emb, truth, threshold=threshold, template=template))
        threshold = report["threshold"]
    elif threshold is None:
        threshold = run.threshold
        report["threshold_source"] = "the run's recommended verification threshold"
        if threshold is None:
            raise MatchLabError(f"{run.dir or run.name} has no threshold.json; pass --threshold or --truth")
    report["threshold"], report["template"] = threshold, template
    best_id, best_score = im.open_set_scores(p_emb, *gallery_for(template, g_emb, g_labels))
    names = np.array(gallery.class_names, dtype=object)
    predicted = np.where(best_score >= threshold, names[best_id], no_match_label)
    preds = pd.DataFrame(
        {
            "image": probe_paths,
            "identity": predicted,
            "best_match": names[best_id],
            "score": best_score.astype(np.float32),
        }
    )
    if top_k:
        preds = _with_top_k(
            preds, run, g_emb=g_emb, p_emb=p_emb, gallery_paths=list(gallery.paths), k=top_k, index=index
        )
        report["top_k"] = {"k": top_k, "index": index}
    return report, preds


def _with_top_k(
    preds: pd.DataFrame,
    run: Embedder,
    *,
    g_emb: np.ndarray,
    p_emb: np.ndarray,
    gallery_paths: list[str],
    k: int,
    index: str,
) -> pd.DataFrame:
    """preds plus top<i>_path / top<i>_score for i = 1..k, best first."""
    from core.search import build_index

    if k > len(gallery_paths):
        raise MatchLabError(f"--top-k {k} is more than the {len(gallery_paths)} gallery images; use at most that")
    scores, rows = build_index(g_emb, index, device=run.device).search(p_emb, k)
    paths = np.array(gallery_paths + [""], dtype=object)  # row -1 (an approximate index's hole) -> ""
    cols = {}
    for j in range(k):
        cols[f"top{j + 1}_path"] = paths[rows[:, j]]
        cols[f"top{j + 1}_score"] = scores[:, j]
    return pd.concat([preds, pd.DataFrame(cols, index=preds.index)], axis=1)


def holdout_identities(
    run: Embedder,
    data: str | Path,
    *,
    holdout: float = 0.2,
    gallery_per_identity: int = 1,
    seed: int = 0,
    threshold: float | None = None,
    template: str = "max",
) -> dict:
    """The open-set task built from one identity folder: `holdout` of the identities are unknown (their
    images must be rejected); each known identity gives `gallery_per_identity` gallery images, its other
    images are mated probes."""
    if not 0.0 < holdout < 1.0:
        raise MatchLabError(f"--holdout {holdout} must be in (0, 1): the fraction of identities held out as unknown")
    cache = folder_cache(run, data)
    labels = np.asarray(cache.labels)
    rng = np.random.default_rng(seed)
    ids = rng.permutation(np.unique(labels))
    n_unknown = max(1, round(len(ids) * holdout))
    unknown = set(ids[:n_unknown].tolist())
    gallery_rows = []
    for c in ids[n_unknown:]:
        rows = np.flatnonzero(labels == c)
        gallery_rows.extend(rng.permutation(rows)[:gallery_per_identity].tolist())
    is_gallery = np.zeros(len(labels), bool)
    is_gallery[gallery_rows] = True
    emb = embed_all(run, cache.images).embeddings
    truth = np.where([lab in unknown for lab in labels], -1, labels)[~is_gallery]
    report = _report(
        emb[is_gallery], labels[is_gallery], emb[~is_gallery], truth, threshold=threshold, template=template
    )
    report.update(
        n_gallery_images=int(is_gallery.sum()),
        n_identities=len(ids) - n_unknown,
        n_probes=int((~is_gallery).sum()),
        n_unknown_identities=n_unknown,
        seed=seed,
    )
    return report


def predict_folder(run: Embedder, data: str | Path) -> pd.DataFrame:
    """Closed-set prediction per image (a classification submission file: file,label,score)."""
    import torch

    if not run.class_names:
        raise MatchLabError(
            f"{run.dir or run.name} has no class head (a metric-learning run); use `identify` with a gallery"
        )
    paths = list_images(data)
    logits = _extract_paths(run, Path(data), paths).logits
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    return pd.DataFrame(
        {
            "file": paths,
            "label": np.array(run.class_names, dtype=object)[probs.argmax(1)],
            "score": probs.max(1).astype(np.float32),
        }
    )
