"""Compare page: several runs on the same evaluation, as a leaderboard, and two of them pair by pair.

Run A is the sidebar's run; every run (sweep runs included) with an evaluation of the same key is a row of
the sortable leaderboard, whose selected rows are overlaid as ROC curves. Run B is compared with A on the
pairs both evaluations scored (matched by image paths; a warning says when the pair sets differ), at each
run's own τ or at an equal FAR, and the pairs one run decides right and the other wrong are shown. When no
other run has this evaluation, a button evaluates one on the same data.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from core import layout
from core.layout import RunFiles
from dashboard import artifacts, figures, ui, views

A_COLOUR, B_COLOUR = figures.PALETTE[0], figures.PALETTE[1]

ctx = ui.context()
st.title("Compare runs")
files_a = ui.require_evaluation(ctx)
if files_a is None:
    st.stop()
summary_a = ui.json_file(files_a.summary)
runs = artifacts.list_run_dirs()
others = [r for r in runs if r != ctx.run_dir and ctx.key in artifacts.list_eval_keys(r)]


def _evaluate_another_ui(expanded: bool) -> None:
    """A button that evaluates another run on the data of this evaluation (with a progress bar)."""
    candidates = [r for r in runs if r != ctx.run_dir and r not in others and layout.has_model(r)]
    data = str(ui.data_root(files_a) or summary_a.get("data") or "")
    with st.expander("Evaluate another run on this data", expanded=expanded):
        if not candidates or not data:
            st.caption(
                "Every run with a model already has this evaluation."
                if data
                else "This evaluation does not say which folder it was made on."
            )
            return
        run = st.selectbox("Run to evaluate", candidates, format_func=artifacts.run_label, key="cmp_eval_run")
        if st.button(
            f"Evaluate {artifacts.run_label(run)} on {summary_a.get('data', data)}", key="cmp_eval_go", type="primary"
        ):
            ui.run_job(
                ui.evaluation_job(run, data, summary_a.get("pairs_file"), summary_a.get("pairs_format")),
                done_message=f"Evaluated {artifacts.run_label(run)} on {summary_a.get('data', data)}.",
            )


if not others:
    st.info(f"No other run has an evaluation named `{ctx.key}` yet.")
    _evaluate_another_ui(expanded=True)
    st.stop()

run_b = st.selectbox("Compare A with run B", others, format_func=artifacts.run_label, key="compare_run")
files_b = RunFiles(run_b).eval(ctx.key)
ctx_b = ui.Context(run_b, ctx.key)
name_a, name_b = f"A: {artifacts.run_label(ctx.run_dir)}", f"B: {artifacts.run_label(run_b)}"
has_pairs = files_a.pairs.is_file() and files_b.pairs.is_file()


@st.cache_resource(show_spinner=False, max_entries=8)
def _shared(path_a: str, stamp_a: float, path_b: str, stamp_b: float) -> pd.DataFrame:
    # matched once per pair of files and shared by every viewer (read-only)
    return views.shared_pairs(ui.pairs_table(Path(path_a)), ui.pairs_table(Path(path_b)))


shared = overlap = None
if has_pairs:
    pairs_a, pairs_b = ui.pairs_table(files_a.pairs), ui.pairs_table(files_b.pairs)
    shared = _shared(
        str(files_a.pairs), artifacts.mtime(files_a.pairs), str(files_b.pairs), artifacts.mtime(files_b.pairs)
    )
    overlap = views.pair_overlap(pairs_a, pairs_b, shared)
    if not overlap["identical"]:
        st.warning(views.overlap_message(overlap, "A", "B"), icon=":material/warning:")

# ------------------------------------------------------------------------------------- leaderboard
st.subheader(f"Leaderboard · {ctx.key}")
board_runs = [ctx.run_dir, *others]
labels = [artifacts.run_label(r) for r in board_runs]
board = views.leaderboard(
    {label: ui.json_file(RunFiles(r).eval(ctx.key).summary) for label, r in zip(labels, board_runs)}
)
rate_cols = [c for c in board.columns if c not in ("run", "model", "checkpoint", "genuine pairs", "impostor pairs")]
event = st.dataframe(
    board,
    hide_index=True,
    width="stretch",
    key="cmp_board",
    on_select="rerun",
    selection_mode="multi-row",
    column_config={
        **{c: st.column_config.NumberColumn(format="%.4f") for c in rate_cols},
        **{c: st.column_config.NumberColumn(format="%d") for c in ("genuine pairs", "impostor pairs")},
    },
)
st.caption(
    "Click a column header to sort; select rows to overlay their ROC curves. Each row is measured on its "
    "own evaluation's pairs (see the pair counts); A and B are compared on the same pairs below."
)
chosen = list(event.selection.rows) if event and event.selection.rows else [0, 1 + others.index(run_b)]
curves, floor = {}, 1.0
for i in chosen:
    files = RunFiles(board_runs[i]).eval(ctx.key)
    if files.pairs.is_file():
        points = ui.roc_points(files)
        idx = views.thin_indices(len(points))
        curves[labels[i]] = (points.far[idx], points.tar[idx])
        floor = min(floor, 0.5 / points.n_impostor)
if curves:
    ui.plot(
        figures.roc_figure(
            curves, min_far=floor, title=f"ROC of the {len(curves)} selected runs, each on its own pairs"
        ),
        key="cmp_board_roc",
    )

_evaluate_another_ui(expanded=False)

# ------------------------------------------------------------------------------------ A against B
st.subheader(f"{name_a} against {name_b}")
usable = shared is not None and overlap["shared"][0] > 0 and overlap["shared"][1] > 0
if has_pairs and usable:
    mode = (
        st.segmented_control(
            "Thresholds",
            ["equal FAR", "each run's own τ"],
            default="equal FAR",
            key="cmp_mode",
            help="equal FAR compares the models; each run's own τ compares "
            "the thresholds as they were chosen (perhaps on other data)",
        )
        or "equal FAR"
    )
    if mode == "equal FAR":
        level = st.select_slider(
            "FAR both runs are held to",
            options=list(views.FAR_CHOICES),
            value=1e-2,
            format_func=views.far_text,
            key="cmp_far",
        )
        tau_a, tau_b = views.equal_far_thresholds(shared, level)
        how = f"at FAR {views.far_text(level)} on the shared pairs"
    else:
        # each run at the threshold chosen for it on the Verification page, else its own default
        tau_a, tau_b = (
            ui.current_threshold(c, ui.default_threshold(c) or views.threshold_presets(ui.roc_points(f))["eer"])
            for c, f in ((ctx, files_a), (ctx_b, files_b))
        )
        how = "each at its own τ"
    st.markdown(f"**Metrics on the {len(shared):,} shared pairs**")
    table = views.shared_metrics(shared).rename(index={"a": name_a, "b": name_b})
    st.dataframe(
        table, width="stretch", column_config={c: st.column_config.NumberColumn(format="%.4f") for c in table.columns}
    )
    labels_shared = shared["label"].to_numpy()
    curves, marks = {}, {}
    from core.metrics.verification import roc_points  # noqa: E402  (torch: only once a comparison is drawn)

    for side, name, tau in (("a", name_a, tau_a), ("b", name_b, tau_b)):
        points = roc_points(shared[f"score_{side}"].to_numpy(float), labels_shared)
        idx = views.thin_indices(len(points))
        curves[name] = (points.far[idx], points.tar[idx])
        op = views.operating_point(points, tau)
        marks[f"{name} τ={tau:.3f}"] = (op["far"], op["tar"])
    ui.plot(
        figures.roc_figure(
            curves,
            marks,
            min_far=0.5 / max(overlap["shared"][1], 1),
            title=f"ROC on the shared pairs, τ {how}",
            mark_colours=[A_COLOUR, B_COLOUR],
        ),
        key="cmp_roc",
    )

    a_only, b_only = views.disagreements(shared, tau_a, tau_b)
    st.markdown(f"**Pairs one run gets right and the other wrong** ({how}: A τ = {tau_a:.3f}, B τ = {tau_b:.3f})")
    root = ui.data_root(files_a)
    left, right = st.columns(2)
    for col, rows, title in (
        (left, a_only, f"right by A, wrong by B ({len(a_only):,})"),
        (right, b_only, f"right by B, wrong by A ({len(b_only):,})"),
    ):
        with col:
            st.markdown(f"**{title}**")
            ui.pair_gallery_ui(
                rows.head(12),
                root,
                lambda r: f"{'same' if r['label'] == 1 else 'different'} · A {r['score_a']:.3f} · B {r['score_b']:.3f}",
                empty="None: the runs agree on every pair here.",
            )
elif has_pairs:
    st.caption("With no shared pairs of both kinds, A and B can only be compared in the leaderboard above.")
elif files_a.samples.is_file() and files_b.samples.is_file():
    st.markdown("**Images one run classifies right and the other wrong**")
    a_only, b_only = views.sample_disagreements(ui.table(files_a.samples), ui.table(files_b.samples))
    root = ui.data_root(files_a)
    left, right = st.columns(2)
    for col, rows, title in ((left, a_only, "right by A, wrong by B"), (right, b_only, "right by B, wrong by A")):
        with col:
            st.markdown(f"**{title} ({len(rows):,})**")
            ui.gallery_ui(
                [ui.GalleryItem(str(r["class_name"]), path=r["path"]) for _, r in rows.head(24).iterrows()],
                root,
                size=112,
                empty="None.",
            )
