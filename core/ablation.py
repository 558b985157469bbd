"""Centre-crop ablation: does the model look at the object or at its context?

Entry point: `ablate_run(run_dir, data, ...) -> dict`, written to eval/<key>/ablation/. For X in `crops`
the same model is evaluated on only the centre X% square (resized back) and on only the outer part (the
centre square filled with the dataset mean), plus once in grayscale; verification AUC is reported overall
and per slice, and 1-NN (or class-head) accuracy overall and per class, with the classes that gain or lose most.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image

from core import atomic, layout
from core.crops import centre_crop, mask_centre, to_grayscale
from core.embedder import Embedder, embed_all, folder_cache, load_model, model_inputs
from core.errors import MatchLabError
from core.evaluate import _run_split, prepare_pairs
from core.metrics import identification as im
from core.metrics import verification as vm
from core.pair_scores import pair_scores_from_embeddings, score_pair_model
from core.progress import Progress
from core.run import Run

DEFAULT_CROPS = tuple(range(10, 101, 10))
N_EXAMPLES = 3  # example model inputs saved per X


def _variant_metrics(run: Embedder | Run, images, labels: np.ndarray, pairs, *, transform, use_head: bool) -> dict:
    """AUC (overall, per slice) and accuracy (overall, per class) of the model under one input transform."""
    if isinstance(run, Run):  # a pair model
        scores = score_pair_model(
            run.model,
            images,
            pairs.idx_a,
            pairs.idx_b,
            preprocess=run.preprocess,
            device=run.device,
            crop=None,
            transform=transform,
        )
        pred = None
    else:
        ex = embed_all(run, images, crop=None, transform=transform)
        scores = pair_scores_from_embeddings(ex.embeddings, pairs.idx_a, pairs.idx_b)
        # use_head means the run has a class head, so embed_all returned its logits
        pred = cast(np.ndarray, ex.logits).argmax(1) if use_head else labels[im.nearest_other(ex.embeddings)[0]]
    out: dict[str, Any] = {"auc": vm.auc(vm.roc_points(scores, pairs.labels)), "slices": {}}
    for name in sorted(set(pairs.slices.tolist()) - {"all"}):
        m = pairs.slices == name
        if 0 < pairs.labels[m].sum() < m.sum():
            out["slices"][name] = vm.auc(vm.roc_points(scores[m], pairs.labels[m]))
    if pred is not None:
        correct = pred == labels
        out["accuracy"] = float(correct.mean())
        out["per_class"] = {int(c): float(correct[labels == c].mean()) for c in np.unique(labels)}
    return out


def _example_png(run: Embedder | Run, image_u8: np.ndarray, transform) -> bytes:
    """The model's input for one image, de-normalised back to a picture."""
    import io

    pre = run.preprocess
    x = model_inputs(image_u8[None], pre, torch.device("cpu"), crop=None, transform=transform)
    if pre.channels == "BGR":
        x = x.flip(1)  # back to RGB for the picture (mean and std are in the model's order)
    mean = torch.tensor(pre.mean[::-1] if pre.channels == "BGR" else pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std[::-1] if pre.channels == "BGR" else pre.std).view(1, 3, 1, 1)
    pic = ((x * std + mean).clamp(0, 1)[0].permute(1, 2, 0) * 255).round().byte().numpy()
    buf = io.BytesIO()
    Image.fromarray(pic).save(buf, format="PNG")
    return buf.getvalue()


FILLS = ("train-mean", "data-mean")


def _fill_value(fill: str, preprocess, data_mean_rgb: np.ndarray) -> float | torch.Tensor:
    """The masked centre's value in normalised input space: 0 is the training set's mean colour (what the
    model was normalised with); "data-mean" paints the evaluated folder's own mean colour instead."""
    if fill not in FILLS:
        raise MatchLabError(f"--fill must be one of {', '.join(FILLS)}: got {fill!r}")
    if fill == "train-mean":
        return 0.0
    rgb = np.asarray(data_mean_rgb, dtype=np.float64)
    data = rgb[::-1] if preprocess.channels == "BGR" else rgb  # mean/std are in the model's channel order
    return torch.tensor((data - np.asarray(preprocess.mean)) / np.asarray(preprocess.std), dtype=torch.float32)


def ablate_run(
    run_dir: str | Path,
    data: str | Path,
    *,
    pairs_file=None,
    pairs_format: str | None = None,
    crops=DEFAULT_CROPS,
    device: str = "auto",
    progress: Progress | None = None,
    fill: str = "train-mean",
) -> dict:
    """Every variant starts from the input the model normally sees: the run's own centre crop
    (preprocess.crop, e.g. data.crop=0.8), so X=100% is the evaluation's input and X% is a share of it.
    fill: what the outer-ring variant paints over the centre (`_fill_value`)."""
    say = progress or (lambda f, m: None)
    run = load_model(run_dir, device=device)  # an Embedder, or a Run for a pair model
    cache = folder_cache(run, data)
    labels = np.asarray(cache.labels)
    pairs = prepare_pairs(cache, _run_split(run, cache), data, pairs_file=pairs_file, pairs_format=pairs_format)
    use_head = isinstance(run, Embedder) and bool(run.class_names) and list(cache.class_names) == list(run.class_names)
    out_dir = layout.RunFiles(Path(run_dir)).eval(layout.eval_key(data, pairs_format)).ablation_dir
    crops = sorted({int(c) for c in crops})
    if 100 not in crops:  # the report's baseline is the unmasked input
        raise MatchLabError(f"crops {crops}: include 100, the unmasked baseline the other crops are compared with")
    fill_value = _fill_value(fill, run.preprocess, cache.mean)
    variants = [("centre", c) for c in crops] + [("outer", c) for c in crops if c < 100] + [("grayscale", 100)]
    transforms = {
        "centre": lambda c: lambda x: centre_crop(x, c / 100),
        # Normalised inputs have the training set's mean at 0: "train-mean" fills with 0 (_fill_value).
        "outer": lambda c: lambda x: mask_centre(x, c / 100, fill_value),
        "grayscale": lambda c: (
            lambda x: to_grayscale(x, run.preprocess.mean, run.preprocess.std, run.preprocess.channels)
        ),
    }
    results: dict[str, dict[int, dict]] = {"centre": {}, "outer": {}, "grayscale": {}}
    rng = np.random.default_rng(0)
    example_rows = rng.choice(len(cache), size=min(N_EXAMPLES, len(cache)), replace=False)
    for i, (kind, c) in enumerate(variants):
        say(i / len(variants), f"{kind} {c}%")
        transform = transforms[kind](c)
        results[kind][c] = _variant_metrics(run, cache.images, labels, pairs, transform=transform, use_head=use_head)
        for j, row in enumerate(example_rows):
            rel = f"{layout.ABLATION_EXAMPLES}/{kind}{c}_{j}.png"
            atomic.atomic_write_bytes(out_dir / rel, _example_png(run, np.asarray(cache.images[row]), transform))
    # The outer ring at 100% is an all-mean image (chance by construction), so it is not evaluated.
    metric = "accuracy" if isinstance(run, Embedder) else "auc"

    def curve(kind: str, key: str) -> list:
        return [results[kind][c][key] if c in results[kind] else None for c in crops]

    baseline = results["centre"][100]
    report = {
        "metric": metric,
        "crops": crops,
        "start_crop": run.preprocess.crop,
        "fill": fill,
        "fill_note": (
            "the centre is filled with the training set's mean colour (the model's normalisation)"
            if fill == "train-mean"
            else "the centre is filled with the evaluated folder's mean colour"
        ),
        "crop_note": f"X% is a centre share of the run's own input crop ({run.preprocess.crop:g} of the image)",
        "prediction_source": "head" if use_head else "knn",
        "pairs": pairs.source,
        "n_images": len(cache),
        "checkpoint_hash": run.checkpoint_hash,
        "centre": {"auc": curve("centre", "auc"), "slices": _slice_curves(results["centre"], crops)},
        "outer": {"auc": curve("outer", "auc"), "slices": _slice_curves(results["outer"], crops)},
        "grayscale": {"auc": results["grayscale"][100]["auc"]},
        "examples": {
            str(c): {
                k: [f"{layout.ABLATION_EXAMPLES}/{k}{c}_{j}.png" for j in range(len(example_rows))]
                for k in ("centre", "outer", "grayscale")
                if c in results[k]
            }
            for c in crops
        },
    }
    if isinstance(run, Embedder):
        names = list(cache.class_names)
        for kind in ("centre", "outer"):
            report[kind]["accuracy"] = curve(kind, "accuracy")
            report[kind]["per_class"] = {
                names[k]: [results[kind][c]["per_class"][k] if c in results[kind] else None for c in crops]
                for k in range(len(names))
            }
        report["grayscale"]["accuracy"] = results["grayscale"][100]["accuracy"]
        report["baseline"] = baseline["accuracy"]
        report["best_crop"] = crops[int(np.nanargmax([results["centre"][c]["accuracy"] for c in crops]))]
        report["class_deltas"] = _class_deltas(results["centre"], crops, names)
    else:
        report["baseline"] = baseline["auc"]
        report["best_crop"] = crops[int(np.nanargmax([results["centre"][c]["auc"] for c in crops]))]
    report["best_crop_auc"] = crops[int(np.nanargmax([results["centre"][c]["auc"] for c in crops]))]
    atomic.atomic_write_json(out_dir / layout.ABLATION, report)
    say(1.0, "done")
    return report


def _slice_curves(results: dict[int, dict], crops: list[int]) -> dict[str, list]:
    names = sorted({s for r in results.values() for s in r["slices"]})
    return {n: [results[c]["slices"].get(n) if c in results else None for c in crops] for n in names}


def _class_deltas(centre: dict[int, dict], crops: list[int], names: list[str]) -> list[dict]:
    """Per class: accuracy at its best centre crop minus at the whole image, largest gains first."""
    full = centre[100]["per_class"] if 100 in centre else centre[crops[-1]]["per_class"]
    rows = []
    for k, name in enumerate(names):
        per_crop = {c: centre[c]["per_class"][k] for c in crops}
        best = max(per_crop, key=per_crop.__getitem__)
        worst = min(per_crop, key=per_crop.__getitem__)
        rows.append(
            {
                "class": name,
                "full": full[k],
                "best_crop": best,
                "best": per_crop[best],
                "worst_crop": worst,
                "worst": per_crop[worst],
                "gain": per_crop[best] - full[k],
                "loss": full[k] - per_crop[worst],
            }
        )
    return sorted(rows, key=lambda r: -r["gain"])
