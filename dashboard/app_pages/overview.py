"""Overview page: what this run is, what it trained on and how training went.

Headline metrics of the chosen evaluation, training curves from metrics.jsonl (every loss term,
accuracies, learning rate, images/s), the dataset (class counts per split, image sizes, a sample grid and
the same images after training augmentation) and the resolved config.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
import yaml

from core.layout import RunFiles
from dashboard import artifacts, figures, ui, views

ctx = ui.context()
st.title("Overview")
if ctx.run_dir is None:
    st.info("No run found under checkpoints/. The README's first command trains and evaluates the demo run.")
    st.stop()

config = artifacts.read_config(ctx.run_dir)
model_cfg, data_cfg = config.get("model") or {}, config.get("data") or {}
imported = artifacts.imported_kind(ctx.run_dir)
if imported:
    st.markdown(
        f"**Run** `{ctx.run_name}` · **{artifacts.IMPORTED_KINDS[imported]}**, not trained in MatchLab: "
        "what it is and how its inputs are prepared replace the training curves below"
    )
else:
    st.markdown(
        f"**Run** `{ctx.run_name}` · model **{model_cfg.get('name', '?')}** · input {data_cfg.get('res', '?')} "
        f"px · trained on `{data_cfg.get('train', '?')}` (split by {data_cfg.get('split', '?')})"
    )


def _imported_ui(kind: str) -> None:
    """An imported model's file, hash and preprocessing (or an imported file of scores / embeddings)."""
    if kind == "external":
        ext, pre = config.get("external") or {}, config.get("preprocess") or {}
        st.subheader("Imported model")
        res = pre.get("res") or ["?", "?"]
        ui.metric_row(
            [
                ("format", str(ext.get("format", "?")), "ONNX Runtime, torch.export (.pt2) or TorchScript"),
                ("input", str(ext.get("input", "?")), "the model's declared input (N = any batch)"),
                ("embedding", f"{ext.get('embedding_dim', '?')}-d", "one vector per image, L2-normalised"),
                ("test-time augmentation", str(ext.get("tta") or "none"), "flip: mean of image and mirror"),
            ]
        )
        st.markdown(
            f"**File** `{ext.get('file', '?')}` (copied from `{ext.get('source', '?')}` on "
            f"{ext.get('imported', '?')})  \n**sha256** `{ext.get('sha256', '?')}`"
        )
        st.markdown("**Preprocessing** (what every command and page feeds the model)")
        st.table(
            pd.DataFrame(
                [
                    {"step": "resize", "setting": f"{res[0]} x {res[1]} px (height x width)"},
                    {"step": "centre crop", "setting": f"{pre.get('crop', 1.0)} of the shorter side"},
                    {"step": "channel order", "setting": str(pre.get("channels", "RGB"))},
                    {"step": "mean (0..1 scale)", "setting": ", ".join(f"{v:.4f}" for v in pre.get("mean") or [])},
                    {"step": "std (0..1 scale)", "setting": ", ".join(f"{v:.4f}" for v in pre.get("std") or [])},
                    {"step": "face alignment", "setting": str(pre.get("align", "none"))},
                ]
            )
        )
    else:
        src = config.get("source") or {}
        st.subheader(f"Imported {kind}")
        st.markdown(
            f"**File** `{src.get('file', '?')}` (imported {src.get('imported', '?')})  \n"
            f"**sha256** `{src.get('sha256', '?')}`  \n**Images** "
            + (
                f"read from `{config['data_root']}`"
                if config.get("data_root")
                else "not on this machine (no --data root): galleries list paths without pictures"
            )
        )
        if kind == "scores":
            st.caption("Pair scores only: Verification and Compare show them; the per-image pages need embeddings.")
    with st.expander("config.yaml"):
        st.code(yaml.safe_dump(config, sort_keys=False), language="yaml")


def _fte_row(f: dict) -> None:
    """Face alignment's failure to enrol (issue 12): how many images had no face, and the headline both ways."""
    excluded = f.get("excluded") or {}
    ui.metric_row(
        [
            (
                "failure to enrol",
                ui.fmt_rate(f.get("rate")),
                f"{f.get('n_no_face', 0)} of {f.get('n_images', 0)} images: no face found by MTCNN",
            ),
            (
                "pairs with an FTE image",
                f"{f.get('pairs_with_fte', 0):,}",
                "counted as rejections in the AUC/EER above (NIST)",
            ),
            ("AUC without them", ui.fmt_rate(excluded.get("auc")), "the same pairs, FTE pairs left out"),
            ("EER without them", ui.fmt_rate(excluded.get("eer")), None),
        ]
    )
    st.caption(
        f"Faces aligned with MTCNN (5 points, ArcFace template); {f.get('n_multi_face', 0)} images held "
        "several faces (the largest, most central was used)."
    )


# ---------------------------------------------------------------------------------- headline metrics
if ctx.files is not None:
    leak = views.audit_leakage_note(ui.json_file(ctx.files.audit.summary))  # the data audit, before any accuracy
    if leak:
        st.warning(leak, icon=":material/warning:")
    s = ui.json_file(ctx.files.summary)
    v = s.get("verification") or {}
    tar = (v.get("tar_at_far") or {}).get("0.01") or {}
    knn = views._scalar(s.get("knn_accuracy"))
    st.subheader(f"Headline metrics · {ctx.key}")
    cards = [
        ("AUC", ui.fmt_rate(v.get("auc")), None),
        ("EER", ui.fmt_rate(v.get("eer")), f"at threshold {ui.fmt_rate(v.get('eer_threshold'))}"),
        ("TAR @ FAR 1e-2", ui.fmt_rate(tar.get("tar")), f"threshold {ui.fmt_rate(tar.get('threshold'))}"),
        ("k-fold accuracy", ui.fmt_rate(v.get("kfold_accuracy_mean")), None),
    ]
    if s.get("kind") != "pair":  # a pair model (the shoes) classifies nothing: no top-1 or kNN headline
        cards += [
            (
                "top-1",
                ui.fmt_rate((s.get("classification") or {}).get("top1")),
                f"predictions from the {(s.get('classification') or {}).get('source', '?')}",
            ),
            ("kNN accuracy", ui.fmt_rate(knn), "1-nearest-neighbour vote in embedding space"),
        ]
    ui.metric_row(cards)
    # which pairs the headline figures pool (CFP: FF and FP together; the Verification page has each slice)
    st.caption(s.get("pairs", "") + (f" · headline: {v['scope']}" if v.get("pooled_slices") else ""))
    if s.get("fte"):
        _fte_row(s["fte"])
else:
    ui.require_evaluation(ctx)

if imported:  # nothing was trained here: no curves, no training split
    _imported_ui(imported)
    st.stop()

# ----------------------------------------------------------------------------------- training curves
metrics = artifacts.read_metrics(ctx.run_dir)
st.subheader("Training")
if metrics.empty:
    st.caption("No metrics.jsonl in this run folder.")
else:
    # built once per metrics.jsonl version and shared (make_subplots is the slowest step of this page)
    metrics_file = RunFiles(ctx.run_dir).metrics
    ui.plot(
        ui.shared_result(
            ("curves", str(metrics_file), artifacts.mtime(metrics_file)), lambda: figures.training_curves(metrics)
        ),
        key="curves",
    )
    last = metrics.iloc[-1]
    st.caption(
        f"{len(metrics)} epochs · last epoch {last.get('epoch_s', float('nan')):.1f} s · "
        f"{last.get('images_per_s', float('nan')):.0f} images/s"
    )

# ------------------------------------------------------------------------------------------- dataset
st.subheader("Dataset")
split = artifacts.read_split(ctx.run_dir)
split_file = RunFiles(ctx.run_dir).split
counts = ui.shared_result(
    ("class_count_table", str(split_file), artifacts.mtime(split_file)), lambda: views.class_counts(split)
)
data_dir = artifacts.data_root({"data": data_cfg.get("train")})
if not counts.empty:
    totals = counts.groupby("split")["count"].sum().to_dict()
    st.caption(
        " · ".join(f"{k}: {v:,} images" for k, v in totals.items())
        + f" · {counts['class'].nunique()} classes · split mode {split.get('mode', '?')}, seed {split.get('seed', '?')}"
    )
    left, right = st.columns([2, 1])
    with left:

        def _counts_figure():
            order = sorted(counts["class"].unique(), key=figures._natural_key)
            fig = figures.bar_figure(counts, "class", "count", title="images per class and split", colour="split")
            fig.update_xaxes(categoryorder="array", categoryarray=order, tickangle=-60)
            return fig

        ui.plot(
            ui.shared_result(("class_counts", str(split_file), artifacts.mtime(split_file)), _counts_figure),
            key="class_counts",
        )


@st.cache_data(show_spinner=False)
def _sizes(root: str, paths: tuple[str, ...]) -> pd.DataFrame:
    sizes = [artifacts.image_size(Path(root) / p) for p in paths]
    return pd.DataFrame([{"width": s[0], "height": s[1]} for s in sizes if s])


all_paths = [p for part in ("train", "val", "test") for p in split.get(part) or []]
if all_paths and data_dir is not None and data_dir.is_dir():
    # Header reads only, on at most 300 images: the chart must not scan a 100k-image folder per rerun.
    sample = tuple(sorted(random.Random(0).sample(all_paths, min(300, len(all_paths)))))
    sizes = _sizes(str(data_dir), sample)
    with right if not counts.empty else st.container():
        if not sizes.empty:

            def _sizes_figure():
                agg = sizes.value_counts().reset_index(name="images")
                fig = figures.go.Figure(
                    figures.go.Scatter(
                        x=agg["width"],
                        y=agg["height"],
                        mode="markers",
                        marker=dict(size=8 + 4 * (agg["images"] ** 0.5)),
                        customdata=agg["images"],
                        hovertemplate="%{x} x %{y}: %{customdata} images<extra></extra>",
                    )
                )
                fig.update_xaxes(title="width (px)")
                fig.update_yaxes(title="height (px)")
                return figures.style(fig, f"image sizes ({len(sizes)} sampled)")

            ui.plot(ui.shared_result(("sizes", str(data_dir), sample), _sizes_figure), key="sizes")

    st.markdown("**Sample images** (one per class, training split)")
    by_class: dict[str, str] = {}
    for p in split.get("train") or all_paths:
        by_class.setdefault(p.split("/")[0], p)
    picks = [by_class[c] for c in sorted(by_class, key=figures._natural_key)[:16]]
    ui.gallery_ui([ui.GalleryItem(p.split("/")[0], path=p) for p in picks], data_dir, size=128)

    with st.expander("The same images after training augmentation"):
        st.caption("Through core's BatchAugment with this run's flip, crop padding and centre crop (fixed seed).")
        if st.button("Show augmented images", key="augment"):
            from core.data.images import decode_square
            from core.errors import MatchLabError

            try:
                res = int(data_cfg.get("res", 64))
                batch = np.stack([decode_square(data_dir / p, res) for p in picks])
                shown = views.augmentation_preview(batch, config, seed=0)
                ui.gallery_ui(
                    [ui.GalleryItem(p.split("/")[0], image=im) for p, im in zip(picks, shown)],
                    None,
                    size=128,
                )
            except MatchLabError as e:
                st.error(str(e))
elif data_dir is not None:
    st.caption(f"The training folder {data_dir} is not on this machine.")

with st.expander("Resolved config (config.yaml)"):
    st.code(yaml.safe_dump(config, sort_keys=False), language="yaml")
