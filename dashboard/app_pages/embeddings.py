"""Embeddings page: is the embedding space separated, and which images sit in the wrong place?

A 2-D PCA / t-SNE / UMAP map of the evaluation's embeddings (core.projection, cached on disk by checkpoint,
method and parameters), coloured by class, correctness, split or any samples column; a box or lasso
selection shows the selected images, and any image's nearest neighbours are shown with their similarity.
"""

from __future__ import annotations

import streamlit as st

from core import projection
from dashboard import figures, ui, views

ctx = ui.context()
st.title("Embeddings")
files = ui.per_image_evaluation_or_stop(
    ctx,
    "This run is a pair model (two images in, one score out): it has no per-image embeddings to map.",
    [("samples", "per-image table"), ("embeddings", "embeddings")],
)

samples = ui.table(files.samples)
embeddings = ui.array(files.embeddings)
names = dict(zip(samples["label"], samples["class_name"]))
samples["pred_class"] = samples["pred"].map(names).fillna(samples["pred"].astype(str))
root = ui.data_root(files)

# ------------------------------------------------------------------------------------------ controls
c1, c2, c3, c4 = st.columns([1.3, 1.6, 1, 1.2])
method = (
    c1.segmented_control(
        "Method",
        list(projection.METHODS),
        default="pca",
        key="proj_method",
        format_func={"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}.get,
    )
    or "pca"
)
params: dict = {}
with c2:
    if method == "umap":
        a, b = st.columns(2)
        params["n_neighbors"] = a.number_input("neighbours", 2, 200, 15, key="umap_nn")
        params["min_dist"] = b.number_input("min distance", 0.0, 1.0, 0.1, step=0.05, key="umap_md")
    elif method == "tsne":
        params["perplexity"] = st.number_input("perplexity", 2.0, 100.0, 30.0, step=5.0, key="tsne_perp")
    else:
        st.caption("PCA: the two directions of largest variance (exact, computed on the spot).")
max_points = c3.selectbox(
    "Points drawn",
    [2000, 5000, 20000, 50000, 100000],
    index=2,
    key="proj_max",
    help="above this many images a class-stratified sample is drawn; metrics use all",
)
colour_options = ["class_name", "correct", "split", "pred_class"] + [
    c for c in samples.columns if c not in ("class_name", "correct", "split", "pred_class", "sample_id", "path")
]
colour = c4.selectbox(
    "Colour by", colour_options, key="proj_colour", format_func=lambda c: views.COLUMN_NAMES.get(c, c.replace("_", " "))
)

cached = projection.projection_path(files.dir, method, params, max_points)
if not cached.is_file():
    if method == "pca":
        projection.load_or_compute_projection(files.dir, method, params, max_points)
    else:
        label = {"tsne": "t-SNE", "umap": "UMAP"}[method]
        ui.missing_ui(
            f"No {label} map with these settings yet ({min(len(samples), max_points):,} points; "
            "it is saved for next time).",
            f"Compute {label}",
            lambda progress: projection.load_or_compute_projection(
                files.dir, method, params, max_points, progress=progress
            ),
            key="compute_proj",
        )
        st.stop()

points = ui.table(cached).merge(samples, on="sample_id", how="left")
shown = (
    f"all {len(points):,}"
    if len(points) == len(samples)
    else f"a class-stratified sample of {len(points):,} of {len(samples):,}"
)
st.caption(f"Showing {shown} images · drag a box or lasso to see the images · click a legend entry to hide a class")
colours, highlight = None, None
if colour == "correct":
    # a diverging pair with its meaning in the legend, instead of True / False in two arbitrary colours
    points = points.assign(correct=points["correct"].map({True: "correct", False: "wrong"}))
    colours = views.OUTCOME_COLOURS
elif colour in ("class_name", "pred_class"):
    classes = sorted(points[colour].astype(str).unique(), key=figures._natural_key)
    highlight = st.selectbox(
        "Highlight one class (the others turn grey)",
        [None, *classes],
        key="proj_highlight",
        format_func=lambda c: "none: every class in its own colour and shape" if c is None else c,
    )
event = ui.plot(
    figures.embedding_scatter(
        points,
        colour,
        hover=("path", "class_name", "pred_class"),
        labels=views.COLUMN_NAMES,
        colours=colours,
        highlight=highlight,
    ),
    key="emb_scatter",
    on_select="rerun",
    selection_mode=("points", "box", "lasso"),
)

# ----------------------------------------------------------------------------------------- selection
selected = views.selected_sample_ids(event.selection if event else None)
st.subheader(f"Selected images ({len(selected)})" if selected else "Selected images")
if selected:
    rows = views.rows_for_ids(samples, selected[:60])
    ui.gallery_ui(
        [
            ui.GalleryItem(f"{r['class_name']} {'✓' if r['correct'] else '✗ ' + str(r['pred_class'])}", path=r["path"])
            for _, r in rows.iterrows()
        ],
        root,
        size=128,
    )
    if len(selected) > 60:
        st.caption(f"First 60 of {len(selected)} shown.")
else:
    st.caption("Select points on the map (box or lasso tool) to show their images here.")

# ------------------------------------------------------------------------------- nearest neighbours
st.subheader("Nearest neighbours")
left, right = st.columns([1, 3])
with left:
    if selected:
        query = st.selectbox(
            "Query image (from the selection)",
            selected[:200],
            key="nn_query_sel",
            format_func=lambda i: f"{i}: {samples.loc[samples['sample_id'] == i, 'path'].iloc[0]}",
        )
    else:
        query = st.number_input("Query image (sample id)", 0, len(samples) - 1, 0, key="nn_query")
    k = st.slider("neighbours", 1, 24, 8, key="nn_k")
    q = views.rows_for_ids(samples, [int(query)]).iloc[0]
    ui.gallery_ui([ui.GalleryItem(f"query: {q['class_name']}", path=q["path"])], root, size=192)
with right:
    ids, sims = views.nearest_neighbours(embeddings, int(query), k)
    nn = views.rows_for_ids(samples, ids).assign(similarity=sims)
    same = int((nn["label"] == q["label"]).sum())
    st.caption(
        f"{same} of {len(nn)} neighbours share the query's class (cosine similarity, all {len(samples):,} images)"
    )
    ui.gallery_ui(
        [
            ui.GalleryItem(
                f"{r['similarity']:.3f} · {r['class_name']} {'✓' if r['label'] == q['label'] else '✗'}", path=r["path"]
            )
            for _, r in nn.iterrows()
        ],
        root,
        size=128,
    )
