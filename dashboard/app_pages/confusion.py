"""Confusion page: which classes does the model confuse, and on which images?

The confusion matrix of one split (held-out identities by default, the ones Verification measures; a filter
picks another split or all images), counts or row-normalised, ordered so the most confused classes sit
together; clicking a cell, choosing a most-confused pair or picking two classes shows that cell's images,
each error beside the image of the wrong class that caused it; the per-class precision / recall / F1 table
is sortable.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard import artifacts, figures, ui, views

MAX_MATRIX = 60  # classes drawn in the matrix; above this, the ones with most errors
SPLIT_NAMES = {"test": "held-out identities (test)", "val": "validation", "train": "training", "all": "all images"}

ctx = ui.context()
st.title("Confusion")
files = ui.per_image_evaluation_or_stop(
    ctx,
    "This run is a pair model: it scores pairs and predicts no classes. See Verification.",
    [("confusion", "confusion matrix"), ("samples", "per-image table")],
)
summary = ui.json_file(files.summary)

from core.metrics.classification import confusion_matrix, error_order, most_confused_pairs, per_class_report  # noqa: E402  (torch: after the cheap checks)

cm_all = ui.array(files.confusion)
samples_all = ui.table(files.samples)
per_class_all = ui.table(files.per_class)
names = list(per_class_all["class"]) if per_class_all is not None else [str(i) for i in range(cm_all.shape[0])]
root = ui.data_root(files)
source = (summary.get("classification") or {}).get("source", summary.get("prediction_source"))
if source == "knn" and artifacts.imported_kind(ctx.run_dir):
    st.info(
        "This model has no class head (it was imported), so the confusion matrix and top-1 of a classifier do "
        "not apply; shown instead: each image's class by a leave-one-out 1-nearest-neighbour (kNN) vote."
    )
elif source == "knn":
    st.info(
        "These classes are not the model's training classes, so each image is predicted by a leave-one-out "
        "1-nearest-neighbour vote among the other images (score: cosine similarity to that neighbour)."
    )

# ------------------------------------------------------------------------------------------ scope
splits = [s for s in ("test", "val", "train") if "split" in samples_all and (samples_all["split"] == s).any()]
scope = (
    st.segmented_control(
        "Images",
        [*splits, "all"],
        default=splits[0] if splits else "all",
        key="cm_split",
        format_func=lambda s: SPLIT_NAMES.get(s, s),
        help="held-out identities are the ones the Verification page measures",
    )
    or "all"
)
if scope == "all":
    samples, cm, per_class = samples_all, cm_all, per_class_all
else:
    samples = samples_all[samples_all["split"] == scope]
    cm = confusion_matrix(samples["pred"].to_numpy(), samples["label"].to_numpy(), len(names))
    per_class = per_class_report(samples["pred"].to_numpy(), samples["label"].to_numpy(), names)
    per_class = per_class[per_class["support"] > 0]
n_wrong = int(len(samples) - np.trace(cm))
st.caption(
    f"top-1 accuracy {ui.fmt_rate(1 - n_wrong / max(len(samples), 1))} over {len(samples):,} images "
    f"({SPLIT_NAMES.get(scope, scope)}) · {views.plural(n_wrong, 'misclassified image')}"
)

# -------------------------------------------------------------------------------------------- matrix
c1, c2 = st.columns([1, 1])
normalised = c1.toggle("Row-normalised (share of each true class)", value=False, key="cm_norm")
ordering = c2.segmented_control("Order", ["by error", "by name"], default="by error", key="cm_order") or "by error"
present = np.flatnonzero(cm.sum(0) + cm.sum(1))  # classes with an image in this scope, as truth or prediction
classes = present[views.top_error_classes(cm[np.ix_(present, present)], MAX_MATRIX)]
if ordering == "by error":
    rank = {int(c): i for i, c in enumerate(error_order(cm))}
    classes = sorted(classes, key=lambda c: rank[int(c)])
else:
    classes = sorted(classes, key=lambda c: figures._natural_key(names[c]))
if len(present) > MAX_MATRIX:
    st.caption(f"The {MAX_MATRIX} classes with the most errors of {len(present)} are drawn; all appear in the tables.")


def _pick_cell_from_chart() -> None:
    # Callback: a click on the matrix moves both class pickers to that cell (widget state may be set here).
    cell = views.cell_from_selection(st.session_state["cm_chart"].selection)
    if cell is not None:
        st.session_state["cm_true"], st.session_state["cm_pred"] = cell


def _pick_cell_from_table() -> None:
    rows = st.session_state["cm_pairs"].selection.rows
    if rows:
        row = confused.iloc[rows[0]]
        st.session_state["cm_true"], st.session_state["cm_pred"] = (
            names.index(row["true"]),
            names.index(row["predicted"]),
        )


ui.plot(
    figures.confusion_figure(cm, names, classes, normalised),
    key="cm_chart",
    on_select=_pick_cell_from_chart,
    selection_mode=("points", "box"),
)

# ---------------------------------------------------------------------------- most confused + cell
confused = most_confused_pairs(cm, names, k=20)
if st.session_state.get("_cm_scope") != scope:
    # Open on the worst cell of this scope so the page shows images at once (a class of it when no error).
    st.session_state["_cm_scope"] = scope
    first = (
        (names.index(confused.iloc[0]["true"]), names.index(confused.iloc[0]["predicted"]))
        if len(confused)
        else (int(classes[0]),) * 2
        if len(classes)
        else (0, 0)
    )
    st.session_state["cm_true"], st.session_state["cm_pred"] = first
left, right = st.columns([1, 2])
with left:
    st.markdown("**Most confused pairs** (select a row)")
    st.dataframe(
        confused,
        hide_index=True,
        width="stretch",
        key="cm_pairs",
        on_select=_pick_cell_from_table,
        selection_mode="single-row",
        column_config={"rate": st.column_config.NumberColumn(format="%.3f")},
    )
    if not len(confused):
        st.caption("No image of this scope is misclassified.")
with right:
    a, b = st.columns(2)
    t = a.selectbox("True class", range(len(names)), format_func=names.__getitem__, key="cm_true")
    p = b.selectbox("Predicted as", range(len(names)), format_func=names.__getitem__, key="cm_pred")
    cell = views.confusion_cell_samples(samples, t, p)
    kind = "correctly classified image" if t == p else "misclassified image"
    st.markdown(
        f"**{views.plural(len(cell), kind)}** of `{names[t]}`" + (f" predicted as `{names[p]}`" if t != p else "")
    )
    embeddings = ui.array(files.embeddings) if t != p and files.embeddings.is_file() else None
    if t != p and embeddings is not None and len(cell):
        # each error beside the image of the wrong class closest to it: for a 1-NN vote, the one that decided it
        shown = cell.head(12)
        causes = views.causing_neighbours(embeddings, samples_all, shown["sample_id"].tolist()).set_index("sample_id")
        items = []
        for _, r in shown.iterrows():
            cause = causes.loc[int(r["sample_id"])] if int(r["sample_id"]) in causes.index else None
            image = ui.pair_image(root, r["path"], cause["neighbour_path"]) if cause is not None else None
            caption = (
                f"{r['path']} → nearest {names[p]}: {cause['neighbour_path']} ({cause['similarity']:.3f})"
                if cause is not None
                else f"{r['path']} · score {r['pred_score']:.3f}"
            )
            items.append(ui.GalleryItem(caption, path=None if image is not None else r["path"], image=image))
        st.caption("Left: the misclassified image; right: the closest image of the class it was taken for.")
        ui.gallery_ui(items, root, size=128, empty="No images in this cell.")
    else:
        items = [
            ui.GalleryItem(f"score {r['pred_score']:.3f} · {r['split']}", path=r["path"])
            for _, r in cell.head(24).iterrows()
        ]
        ui.gallery_ui(items, root, size=128, empty="No images in this cell.")

# ------------------------------------------------------------------------------------------ per class
st.subheader("Per-class report")
st.caption("Click a column header to sort.")
st.dataframe(
    per_class.sort_values("f1"),
    hide_index=True,
    width="stretch",
    column_config={
        c: st.column_config.ProgressColumn(c, min_value=0.0, max_value=1.0, format="%.3f")
        for c in ("precision", "recall", "f1", "accuracy")
        if c in per_class.columns
    },
)
