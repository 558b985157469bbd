"""Verification page: which threshold to ship and what it costs.

ROC (log FAR) and DET, AUC / EER / TAR@FAR, a threshold slider that moves every count at once and is
drawn on the histograms, ROC and DET, buttons for EER / best accuracy / target FAR, the k-fold report,
per-slice operating points, galleries of the hardest errors at tau and a JSON export for `core verify`.
"""

from __future__ import annotations

import json

import numpy as np
import streamlit as st

from core.metrics.verification import det_points
from dashboard import artifacts, defend, figures, ui, views

ctx = ui.context()
st.title("Verification")
files = ui.require_evaluation(ctx)
if files is None or not ui.require_file(files, files.pairs, "verification pairs"):
    st.stop()

summary = ui.json_file(files.summary)
ver = summary.get("verification") or {}
pairs = ui.pairs_table(files.pairs)
points = ui.roc_points(files)
root = ui.data_root(files)
st.caption(
    f"{ver.get('n_genuine', points.n_genuine):,} genuine and {ver.get('n_impostor', points.n_impostor):,} "
    f"impostor pairs · {summary.get('pairs', summary.get('pairs_format') or 'generated pairs')}"
)
warnings = ver.get("small_sample") or []
if warnings:
    with st.expander(
        f"{len(warnings)} figures rest on fewer than 30 pairs of the kind they count: read them as rough",
        icon=":material/warning:",
    ):
        st.markdown("\n".join(f"- {w}" for w in warnings))

ui.metric_row(
    [
        ("AUC", ui.fmt_rate(ver.get("auc")), "area under the ROC"),
        ("EER", ui.fmt_rate(ver.get("eer")), f"FAR = FRR at threshold {ui.fmt_rate(ver.get('eer_threshold'))}"),
        (
            "k-fold accuracy",
            f"{ui.fmt_rate(ver.get('kfold_accuracy_mean'))} ± {ui.fmt_rate(ver.get('kfold_accuracy_std'), 3)}",
            "threshold chosen on the other folds, applied to each held-out fold",
        ),
        ("best accuracy", ui.fmt_rate(ver.get("best_accuracy")), "at the best single threshold (optimistic)"),
    ]
)
defend.interval_caption_ui(ver)  # issue 13: the intervals of the numbers above

# ---------------------------------------------------------------------------- threshold controls
presets = views.threshold_presets(points)
recommended = artifacts.read_threshold(ctx.run_dir)
default = ui.default_threshold(ctx) or presets["eer"]
bounds = views.slider_bounds(pairs["score"].to_numpy(), recommended, presets["eer"], presets["best_accuracy"])

st.subheader("Operating point")
c1, c2, c3, c4, c5 = st.columns([1, 1, 1, 1.2, 1], vertical_alignment="bottom")
c1.button(
    "τ at EER",
    on_click=ui.set_threshold,
    args=(ctx, presets["eer"], "eer"),
    width="stretch",
    help=f"{presets['eer']:.4f}",
)
c2.button(
    "τ at best accuracy",
    on_click=ui.set_threshold,
    args=(ctx, presets["best_accuracy"], "best_accuracy"),
    width="stretch",
    help=f"{presets['best_accuracy']:.4f}",
)
if recommended is not None:
    c3.button(
        "Run's recommended τ",
        on_click=ui.set_threshold,
        args=(ctx, recommended, "recommended"),
        width="stretch",
        help=f"threshold.json: {recommended:.4f}, chosen on the run's validation pairs",
    )
# FAR targets are orders of magnitude apart: the control steps x10 (1e-1 ... 1e-6), not by 0.01
target = c4.select_slider(
    "target FAR",
    options=list(views.FAR_CHOICES),
    value=1e-2,
    format_func=views.far_text,
    key="target_far",
    help=f"smallest observable FAR here: 1/{points.n_impostor:,} = {1 / points.n_impostor:.1e}",
)
c5.button(
    "τ at target FAR",
    width="stretch",
    on_click=lambda: ui.set_threshold(
        ctx,
        min(max(views.threshold_for_target_far(points, st.session_state["target_far"]), bounds[0]), bounds[1]),
        "target_far",
        st.session_state["target_far"],
    ),
)
if target < 1.0 / points.n_impostor:
    st.caption(
        f"FAR {views.far_text(target)} cannot be observed with {points.n_impostor:,} impostor pairs "
        f"(about {int(np.ceil(30 / target)):,} are needed): τ goes where no impostor is accepted."
    )

ui.threshold_transfer_ui(ctx, points)
tau = ui.threshold_slider_ui(ctx, bounds, default)
op = views.operating_point(points, tau)
ui.metric_row(
    [
        ("FAR", f"{op['far']:.4%}", f"{op['fp']:,} of {op['n_impostor']:,} impostor pairs accepted"),
        ("FRR", f"{op['frr']:.4%}", f"{op['fn']:,} of {op['n_genuine']:,} genuine pairs rejected"),
        ("TAR", f"{op['tar']:.4%}", "1 - FRR"),
        ("accuracy", f"{op['accuracy']:.4%}", "(TP + TN) / all pairs"),
    ]
)
ui.metric_row(
    [
        ("TP (genuine accepted)", f"{op['tp']:,}", None),
        ("FN (false rejects)", f"{op['fn']:,}", None),
        ("TN (impostors rejected)", f"{op['tn']:,}", None),
        ("FP (false accepts)", f"{op['fp']:,}", None),
    ]
)

# ------------------------------------------------------- intervals and cost at τ (issue 13, dashboard/defend.py)
at_tau = defend.slider_interval_ui(files, ver, tau, points.n_impostor)
cost = defend.cost_ui(ctx, files, ver, points, tau, bounds)

chosen_by, chosen_far = ui.threshold_choice(ctx, tau)
export = views.export_operating_point(
    op,
    ctx.key or "",
    artifacts.checkpoint_hash(ctx.run_dir, ui.json_file(files.manifest)) or summary.get("checkpoint_hash", ""),
    ctx.run_name,
    summary.get("data"),
    chosen_by=chosen_by,
    target_far=chosen_far,
    pairs=summary.get("pairs"),
    extra=defend.export_extra(ver, at_tau, cost, chosen_by, chosen_far),
)
st.download_button(
    "Download operating point (JSON)",
    json.dumps(export, indent=2),
    file_name=f"{ctx.run_name}-{ctx.key}-threshold.json",
    mime="application/json",
    on_click="ignore",
    icon=":material/download:",
    help=f"use it with: python -m core verify {ctx.run_dir} a.jpg b.jpg --threshold-file <file>",
)
st.caption(
    f"The file records τ = {tau:.4f} ({views.CHOSEN_BY_TEXT.get(chosen_by, chosen_by)}"
    + (f" {views.far_text(chosen_far)}" if chosen_far is not None else "")
    + f"), the data `{ctx.key}` "
    f"it was chosen on, and whether its FAR is stable: {export['stability']}."
)

# ---------------------------------------------------------------------------------------- charts
# Figures are built once per (artifacts, τ) and shared by every viewer (ui.shared_result).
fig_key = (str(files.pairs), artifacts.mtime(files.pairs), artifacts.mtime(files.summary), float(tau))
idx = views.thin_indices(len(points))


def _roc_figure():
    roc_curves = {"ROC": (points.far[idx], points.tar[idx])}
    roc_fig = figures.roc_figure(roc_curves, {"τ": (op["far"], op["tar"])}, min_far=0.5 / points.n_impostor)
    if defend.band(ver):  # issue 13: the bootstrap band behind the curve
        figures.add_roc_band(roc_fig, defend.band(ver), min_far=0.5 / points.n_impostor)
    return roc_fig


def _det_figure():
    det = det_points(points)
    det_fig = figures.det_figure({"DET": (det.far_probit[idx], det.frr_probit[idx])}, {"τ": (op["far"], op["frr"])})
    if defend.band(ver):
        figures.add_det_band(det_fig, defend.band(ver))
    return det_fig


left, right = st.columns(2)
with left:
    ui.plot(
        ui.shared_result(("hist", *fig_key), lambda: figures.score_histogram(ui.histograms(files), tau=tau)), key="hist"
    )
with right:
    ui.plot(ui.shared_result(("roc", *fig_key), _roc_figure), key="roc")
left, right = st.columns(2)
with left:
    ui.plot(ui.shared_result(("det", *fig_key), _det_figure), key="det")
with right:
    st.markdown("**TAR at fixed FAR**")
    st.dataframe(
        defend.tar_table(ver),
        hide_index=True,
        width="stretch",
        column_config={
            "target FAR": st.column_config.NumberColumn(format="%.0e"),
            "FAR reached": st.column_config.NumberColumn(format="%.2e"),
            "TAR": st.column_config.NumberColumn(format="%.4f"),
            "threshold": st.column_config.NumberColumn(format="%.4f"),
        },
    )
    st.caption(
        "unreachable: a FAR below 1 / impostor pairs cannot be observed; unstable: fewer than 30 / FAR impostor pairs."
    )

# ---------------------------------------------------------------------------------- k-fold report
kfold = views.kfold_table(ver)
if len(kfold):
    st.subheader("k-fold protocol accuracy")
    left, right = st.columns([2, 1])
    with left:

        def _kfold_figure():
            fig = figures.bar_figure(
                kfold.assign(fold=kfold["fold"].astype(str)),
                "fold",
                "accuracy",
                title=f"held-out accuracy per fold: {ver.get('kfold_accuracy_mean', 0):.4f} "
                f"± {ver.get('kfold_accuracy_std', 0):.4f}",
                height=280,
            )
            fig.update_yaxes(range=[max(0.0, float(kfold["accuracy"].min()) - 0.05), 1.0])
            return fig

        ui.plot(
            ui.shared_result(("kfold", str(files.summary), artifacts.mtime(files.summary)), _kfold_figure), key="kfold"
        )
    with right:
        st.dataframe(kfold, hide_index=True, width="stretch")
    folds = pairs["fold"].to_numpy()
    st.caption(
        "Folds from the protocol file."
        if (folds >= 0).any()
        else f"The pairs carry no folds: {len(kfold)} seeded folds stratified by genuine / impostor."
    )

# ----------------------------------------------------------------------------------- hardest errors
st.subheader(f"Errors at τ = {tau:.3f}")
left, right = st.columns(2)
for col, kind, title, empty in (
    (
        left,
        "false_accept",
        "False accepts: different identities accepted as the same",
        "None: no impostor pair scores at or above this τ.",
    ),
    (
        right,
        "false_reject",
        "False rejects: same identity rejected",
        "None: every genuine pair scores at or above this τ.",
    ),
):
    with col:
        n_err = views.error_count(pairs, tau, kind)
        st.markdown(f"**{title}** · {n_err:,} at this τ" + (", the 12 most confident shown" if n_err > 12 else ""))
        hard = ui.shared_result(("hardest", kind, *fig_key), lambda: views.hardest_pairs_at(pairs, tau, kind, k=12))
        # only the errors at τ: the hardest pairs that τ still decides right are not shown as if they were
        ui.pair_gallery_ui(
            hard[hard["error"]],
            root,
            lambda r: f"{r['score']:.3f} · {r['path_a'].split('/')[0]} / {r['path_b'].split('/')[0]}",
            empty=empty,
        )

# ------------------------------------------------------------------------------------------- slices
slices = ui.shared_result(("slices", *fig_key[:2]), lambda: views.slice_names(pairs))
if slices:
    st.subheader(f"Slices side by side at τ = {tau:.3f}")
    table = ui.shared_result(("slice_table", *fig_key), lambda: views.slice_operating_points(pairs, tau))
    rates = {c: st.column_config.NumberColumn(format="%.4f") for c in ("far", "frr", "tar", "accuracy")}
    st.dataframe(table.drop(columns="threshold"), hide_index=True, width="stretch", column_config=rates)

    def _slice_figure():
        curves, marks, floor = {}, {}, 1.0
        for name in table["slice"]:  # slices holding one kind of pair only have no ROC and are not in the table
            p = ui.roc_points(files, None if name == "all" else name)
            i = views.thin_indices(len(p))
            curves[name] = (p.far[i], p.tar[i])
            at = views.operating_point(p, tau)
            marks[f"τ on {name}"] = (at["far"], at["tar"])
            floor = min(floor, 0.5 / p.n_impostor)
        return figures.roc_figure(curves, marks, min_far=floor, title="ROC per slice, τ marked on each")

    ui.plot(ui.shared_result(("slice_roc", *fig_key), _slice_figure), key="slice_roc")

# ------------------------------------------------------------ calibration and groups (issue 13, dashboard/defend.py)
defend.calibration_ui(files)
defend.groups_ui(files, tau)
