"""Ablation page: does the model look at the face (the object) or at its surroundings?

Curves of the chosen metric when the model sees only the centre X% of each image, or only the outer ring
with that centre masked, for X = 10..100 (metrics.md, "Centre-crop ablation"); the grayscale result; the
classes that gain or lose most at a chosen X; and the model inputs at each X. Reads ablation/ablation.json.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import artifacts, figures, ui, views

ctx = ui.context()
st.title("Centre-crop ablation")
files = ui.require_evaluation(ctx)
if files is None:
    st.stop()
summary = ui.json_file(files.summary)
if artifacts.imported_kind(ctx.run_dir) in ("scores", "embeddings"):
    st.info(
        "The ablation runs a model again on cropped and grayscale images; this run holds imported "
        f"{artifacts.imported_kind(ctx.run_dir)}, with no model to run. Import the model itself (import-model)."
    )
    st.stop()


def _ablate(progress: ui.Progress) -> None:
    from core.ablation import ablate_run

    data = artifacts.data_root(summary, ui.json_file(files.manifest)) or summary.get("data")
    ablate_run(
        ctx.run_dir,
        str(data),
        pairs_file=summary.get("pairs_file"),
        pairs_format=summary.get("pairs_format"),
        progress=progress,
    )


if not files.ablation.is_file():
    ui.missing_ui(
        "No centre-crop ablation for this evaluation yet. It evaluates the model 21 times "
        "(10 centre crops, 10 outer rings, grayscale) and saves example inputs.",
        "Run the ablation",
        _ablate,
        key="run_ablation",
    )
    st.stop()

abl = ui.json_file(files.ablation)
metrics = views.ablation_metrics(abl)
crops = [int(c) for c in abl.get("crops") or []]
c1, c2 = st.columns([1, 3])
metric = (
    c1.segmented_control(
        "Metric",
        metrics,
        default=metrics[0],
        key="abl_metric",
        help="accuracy: of the class head or a 1-NN vote; auc: of verification",
    )
    or metrics[0]
)
ref = views.ablation_reference(abl, metric)
c2.caption(
    f"Verification pairs: {abl.get('pairs', '?')} · predictions from the {abl.get('prediction_source', '?')} · "
    f"checkpoint `{abl.get('checkpoint_hash', '?')}`"
)
ui.metric_row(
    [
        (f"{metric}, full image", ui.fmt_rate(ref["baseline"]), "X = 100, the model's usual input"),
        (
            "best centre crop",
            f"{ref['best_crop']}%" if ref["best_crop"] is not None else "–",
            f"the X with the highest {metric}",
        ),
        (f"{metric}, grayscale", ui.fmt_rate(ref["grayscale"]), "the full image in grey: how much colour matters"),
    ]
)
# Open on the best crop, unless that is the whole image (nothing to see yet): then on the middle X.
start = ref["best_crop"] if ref["best_crop"] in crops and ref["best_crop"] != 100 else crops[len(crops) // 2]
crop = st.select_slider("X: centre square side, % of the shorter side", options=crops, value=start, key="abl_crop")
ui.plot(
    figures.ablation_figure(views.ablation_curves(abl, metric), metric, ref["baseline"], ref["grayscale"], crop),
    key="abl_curves",
)
st.caption("The outer ring at X = 100 is an all-mean image (chance by construction), so it is not drawn.")

# ---------------------------------------------------------------------------------- example inputs
st.subheader(f"What the model sees at X = {crop}%")
examples = views.ablation_examples(abl, crop)
labels = {
    "centre": f"centre {crop}% only" if crop < 100 else "full image",
    "outer": f"outer ring (centre {crop}% masked)",
    "grayscale": "full image in grey",
}
if not examples:
    st.caption("No example images saved for this X.")
for region in dict.fromkeys(r for r, _ in examples):  # one row per region, in saved order
    ui.gallery_ui(
        [
            ui.GalleryItem(labels.get(region, region), image=ui.thumbnail(str(files.ablation.parent / rel), 192))
            for r, rel in examples
            if r == region
        ],
        None,
    )

# --------------------------------------------------------------------------------- per-class change
st.subheader("Classes that gain or lose most (per-class accuracy)")
region = st.segmented_control("Region", ["centre", "outer"], default="centre", key="abl_region") or "centre"
change = views.per_class_change(abl, region, crop)
if change.empty:
    st.caption(
        "This ablation has no per-class results here (pair models predict no classes; the outer ring has no X = 100)."
    )
elif not change["change"].fillna(0).abs().gt(0).any():
    st.caption(f"No class changes at X = {crop}% against the full image.")
else:
    n = min(10, len(change) // 2 or 1)
    both = pd.concat([change.head(n), change.tail(n)]).drop_duplicates("class")
    both = both[both["change"].fillna(0) != 0]  # unchanged classes stay in the table, not in the chart
    both = both.assign(kind=["gain" if c > 0 else "loss" for c in both["change"]])
    left, right = st.columns([2, 1])
    with left:
        fig = figures.bar_figure(
            both,
            "class",
            "change",
            colour="kind",
            horizontal=True,
            title=f"change in accuracy at X = {crop}% ({region}) against the full image",
            height=max(280, 22 * len(both)),
        )
        ui.plot(fig, key="abl_change")
    with right:
        st.dataframe(
            change,
            hide_index=True,
            width="stretch",
            column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("value", "full", "change")},
        )
