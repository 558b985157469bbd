"""Compare page: two runs on the same evaluation, side by side.

ROC curves overlaid, a table of headline metrics, and the pairs (or images) that one run decides right and
the other wrong, each run at its own chosen threshold. Run A is the sidebar's run; run B is any other run
evaluated with the same key.
"""
from __future__ import annotations

import streamlit as st

from dashboard import artifacts, figures, ui, views
from dashboard.artifacts import EvalFiles

ctx = ui.context()
st.title("Compare runs")
files_a = ui.require_evaluation(ctx)
if files_a is None:
    st.stop()
others = [r for r in artifacts.list_run_dirs() if r != ctx.run_dir and ctx.key in artifacts.list_eval_keys(r)]
if not others:
    st.info(f"No other run has an evaluation named `{ctx.key}`. Train a second run and evaluate it on the same "
            f"data (`python -m core evaluate <run> --data {ui.json_file(files_a.summary).get('data', '<folder>')}`), "
            "or evaluate another run from the sidebar.")
    st.stop()
run_b = st.selectbox("Compare with", others, format_func=artifacts.run_label, key="compare_run")
files_b = EvalFiles(run_b / "eval" / ctx.key)
ctx_b = ui.Context(run_b, ctx.key)
name_a, name_b = f"A: {ctx.run_name}", f"B: {run_b.name}"
summaries = {name_a: ui.json_file(files_a.summary), name_b: ui.json_file(files_b.summary)}

# --------------------------------------------------------------------------------------- metric table
st.subheader("Headline metrics")
table = views.compare_table(summaries)
st.table(table.map(lambda v: f"{v:.4f}" if isinstance(v, float) else ("–" if v is None else str(v))))

# ----------------------------------------------------------------------------------------------- ROC
has_pairs = files_a.pairs.is_file() and files_b.pairs.is_file()
if has_pairs:
    taus, curves, marks = {}, {}, {}
    for name, files, c in ((name_a, files_a, ctx), (name_b, files_b, ctx_b)):
        points = ui.roc_points(files)
        # each run at the threshold chosen for it on the Verification page, else its own default
        taus[name] = ui.current_threshold(c, ui.default_threshold(c) or views.threshold_presets(points)["eer"])
        op = views.operating_point(points, taus[name])
        idx = views.thin_indices(len(points))
        curves[name] = (points.far[idx], points.tar[idx])
        marks[f"{name} τ={taus[name]:.3f}"] = (op["far"], op["tar"])
    n_imp = ui.roc_points(files_a).n_impostor
    ui.plot(figures.roc_figure(curves, marks, min_far=0.5 / n_imp, title="ROC, both runs"), key="cmp_roc")

    st.subheader("Pairs one run gets right and the other wrong")
    a_only, b_only = views.pair_disagreements(ui.pairs_table(files_a.pairs), ui.pairs_table(files_b.pairs),
                                              taus[name_a], taus[name_b])
    root = ui.data_root(files_a)
    left, right = st.columns(2)
    for col, rows, title in ((left, a_only, f"right by A, wrong by B ({len(a_only):,})"),
                             (right, b_only, f"right by B, wrong by A ({len(b_only):,})")):
        with col:
            st.markdown(f"**{title}**")
            ui.pair_gallery_ui(rows.head(12), root, lambda r: f"{'same' if r['label'] == 1 else 'different'} · "
                               f"A {r['score_a']:.3f} · B {r['score_b']:.3f}", columns=3,
                               empty="None: the runs agree on every pair here.")
elif files_a.samples.is_file() and files_b.samples.is_file():
    st.subheader("Images one run classifies right and the other wrong")
    a_only, b_only = views.sample_disagreements(ui.table(files_a.samples), ui.table(files_b.samples))
    root = ui.data_root(files_a)
    left, right = st.columns(2)
    for col, rows, title in ((left, a_only, "right by A, wrong by B"), (right, b_only, "right by B, wrong by A")):
        with col:
            st.markdown(f"**{title} ({len(rows):,})**")
            ui.gallery_ui([ui.GalleryItem(str(r["class_name"]), path=r["path"]) for _, r in rows.head(24).iterrows()],
                          root, columns=6, size=112, empty="None.")
