"""Confusion page: which classes does the model confuse, and on which images?

The confusion matrix (counts or row-normalised, ordered so the most confused classes sit together);
clicking a cell, choosing a most-confused pair or picking two classes shows that cell's images with their
scores; the per-class precision / recall / F1 table is sortable.
"""
from __future__ import annotations

import streamlit as st

from dashboard import figures, ui, views

MAX_MATRIX = 60  # classes drawn in the matrix; above this, the ones with most errors

ctx = ui.context()
st.title("Confusion")
files = ui.per_image_evaluation_or_stop(
    ctx, "This run is a pair model: it scores pairs and predicts no classes. See Verification.",
    [("confusion", "confusion matrix"), ("samples", "per-image table")])
summary = ui.json_file(files.summary)

from core.metrics.classification import error_order, most_confused_pairs  # noqa: E402  (torch: after the cheap checks)

cm = ui.array(files.confusion)
samples = ui.table(files.samples)
per_class = ui.table(files.per_class)
names = list(per_class["class"]) if per_class is not None else [str(i) for i in range(cm.shape[0])]
root = ui.data_root(files)
source = (summary.get("classification") or {}).get("source", summary.get("prediction_source"))
if source == "knn":
    st.info("These classes are not the model's training classes, so each image is predicted by a leave-one-out "
            "1-nearest-neighbour vote among the other images (score: cosine similarity to that neighbour).")
st.caption(f"top-1 accuracy {ui.fmt_rate((summary.get('classification') or {}).get('top1'))} over "
           f"{int(cm.sum()):,} images and {cm.shape[0]} classes")

# -------------------------------------------------------------------------------------------- matrix
c1, c2 = st.columns([1, 1])
normalised = c1.toggle("Row-normalised (share of each true class)", value=False, key="cm_norm")
ordering = c2.segmented_control("Order", ["by error", "by name"], default="by error", key="cm_order") or "by error"
classes = views.top_error_classes(cm, MAX_MATRIX)
if ordering == "by error":
    rank = {int(c): i for i, c in enumerate(error_order(cm))}
    classes = sorted(classes, key=lambda c: rank[int(c)])
else:
    classes = sorted(classes, key=lambda c: figures._natural_key(names[c]))
if cm.shape[0] > MAX_MATRIX:
    st.caption(f"The {MAX_MATRIX} classes with the most errors of {cm.shape[0]} are drawn; all appear in the tables.")


def _pick_cell_from_chart() -> None:
    # Callback: a click on the matrix moves both class pickers to that cell (widget state may be set here).
    cell = views.cell_from_selection(st.session_state["cm_chart"].selection)
    if cell is not None:
        st.session_state["cm_true"], st.session_state["cm_pred"] = cell


def _pick_cell_from_table() -> None:
    rows = st.session_state["cm_pairs"].selection.rows
    if rows:
        row = confused.iloc[rows[0]]
        st.session_state["cm_true"], st.session_state["cm_pred"] = names.index(row["true"]), names.index(row["predicted"])


ui.plot(figures.confusion_figure(cm, names, classes, normalised), key="cm_chart", on_select=_pick_cell_from_chart,
        selection_mode=("points", "box"))

# ---------------------------------------------------------------------------- most confused + cell
confused = most_confused_pairs(cm, names, k=20)
if "cm_true" not in st.session_state and len(confused):
    # Open on the worst cell so the page shows images at once.
    st.session_state["cm_true"] = names.index(confused.iloc[0]["true"])
    st.session_state["cm_pred"] = names.index(confused.iloc[0]["predicted"])
left, right = st.columns([1, 2])
with left:
    st.markdown("**Most confused pairs** (select a row)")
    st.dataframe(confused, hide_index=True, width="stretch", key="cm_pairs", on_select=_pick_cell_from_table,
                 selection_mode="single-row", column_config={"rate": st.column_config.NumberColumn(format="%.3f")})
with right:
    a, b = st.columns(2)
    t = a.selectbox("True class", range(len(names)), format_func=names.__getitem__, key="cm_true")
    p = b.selectbox("Predicted as", range(len(names)), format_func=names.__getitem__, key="cm_pred")
    cell = views.confusion_cell_samples(samples, t, p)
    kind = "correctly classified" if t == p else "misclassified"
    st.markdown(f"**{len(cell)} {kind} images** of `{names[t]}`" + (f" predicted as `{names[p]}`" if t != p else ""))
    items = [ui.GalleryItem(f"score {r['pred_score']:.3f} · {r['split']}", path=r["path"]) for _, r in cell.head(24).iterrows()]
    ui.gallery_ui(items, root, columns=6, size=128, empty="No images in this cell.")
    if t != p:
        st.caption(f"For reference, images of `{names[p]}`:")
        ref = samples[samples["label"] == p].head(6)
        ui.gallery_ui([ui.GalleryItem(names[p], path=r["path"]) for _, r in ref.iterrows()], root, columns=6, size=96)

# ------------------------------------------------------------------------------------------ per class
st.subheader("Per-class report")
st.caption("Click a column header to sort.")
st.dataframe(per_class.sort_values("f1"), hide_index=True, width="stretch",
             column_config={c: st.column_config.ProgressColumn(c, min_value=0.0, max_value=1.0, format="%.3f")
                            for c in ("precision", "recall", "f1", "accuracy") if c in per_class.columns})
