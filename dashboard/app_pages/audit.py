"""Data audit page: which images are the data's fault (wrong label, duplicate, leakage, outlier, blur)?

Reads eval/<key>/audit/ written by `python -m core audit` (core.audit); a button runs the audit when it is
missing, with a progress bar. Leakage is shown first, before any accuracy; then one ranked table per issue
type with filters, click a row to see the image, its suggested label, its partner and its neighbours, and
download the suggested fixes (fixes.csv, which `train data.exclude=... data.relabel=...` reads).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard import figures, ui, views

ctx = ui.context()
st.title("Data audit")
files = ui.per_image_evaluation_or_stop(
    ctx,
    "This run is a pair model (two images in, one score out): the audit needs per-image embeddings.",
    [("samples", "per-image table"), ("embeddings", "embeddings")],
)
audit = files.audit
root = ui.data_root(files)


def _audit_job(progress: ui.Progress) -> None:
    from core.audit.run import audit_run

    s = ui.json_file(files.summary)
    if root is None or not Path(root).is_dir():
        from core.errors import MatchLabError

        raise MatchLabError(f"the evaluated folder {s.get('data')} is not on this machine")
    audit_run(
        files.dir.parent.parent,
        root,
        pairs_file=s.get("pairs_file"),
        pairs_format=s.get("pairs_format"),
        device="cpu",
        progress=progress,
    )


if not audit.summary.is_file():
    ui.missing_ui(
        f"No data audit of **{ctx.key}** yet: label issues (cleanlab on out-of-fold kNN probabilities), "
        "exact and near duplicates, leakage across the split, outliers and image quality.",
        "Run the data audit",
        _audit_job,
        key="compute_audit",
    )
    st.stop()

s = ui.json_file(audit.summary)
issues = ui.table(audit.issues)
images = ui.table(audit.images)
if issues is None or images is None:
    ui.missing_ui("The audit's tables are missing.", "Run the data audit again", _audit_job, key="recompute_audit")
    st.stop()

# ------------------------------------------------------------------------------------ leakage first
note = views.audit_leakage_note(s)
if note:
    st.error(note, icon=":material/warning:")
else:
    st.success(
        "No leakage found: no duplicate of a training image in val/test, no identity matching one in "
        "another split."
        + (
            ""
            if s.get("splits", {}).get("train")
            else " (This folder has no train split to leak from: " + s.get("split_source", "") + ")"
        )
    )
ui.metric_row(
    [
        ("Label issues", f"{s['label_issues']:,}", s.get("label_flag_method")),
        ("Exact duplicate pairs", f"{s['exact_duplicate_pairs']:,}", "same file content (sha1)"),
        ("Near duplicate pairs", f"{s['near_duplicate_pairs']:,}", f"cosine >= {s['near_duplicate_threshold']:.4f}"),
        ("Outliers", f"{s['outliers']:,}", "far from the rest of their class"),
        (
            "Low quality",
            f"{s['low_quality']:,}",
            ", ".join(f"{k} {v}" for k, v in (s.get("quality_reasons") or {}).items()),
        ),
        ("Identity matches", f"{s['identity_matches']:,}", f"centroid cosine >= {s['identity_match_threshold']:.3f}"),
    ]
)
st.caption(
    f"{s['n_images']:,} images of {s['n_classes']:,} identities · split from {s['split_source']} · "
    f"checkpoint `{s['checkpoint_hash']}` · {s['seconds']:.1f} s · {s['created']}"
)

# ------------------------------------------------------------------------------------ ranked tables
present = [k for k in views.AUDIT_ISSUES if (issues["issue"] == k).any()]
c1, c2, c3, c4 = st.columns([1.3, 1, 1.4, 1.3])
issue = c1.selectbox("Issue", present, key="audit_issue", format_func=lambda k: views.AUDIT_ISSUES[k][0])
flagged_only = c2.toggle(
    "Flagged only", value=True, key="audit_flagged", help="off: every image in the ranking, most suspicious first"
)
splits = c3.multiselect("Splits", sorted(issues["split"].unique()), key="audit_splits")
text = c4.text_input("Path or class contains", key="audit_text")
rows = views.audit_rows(issues, issue, flagged_only=flagged_only, splits=splits, text=text)
st.caption(
    f"{views.AUDIT_ISSUES[issue][1]} · {len(rows):,} rows shown (best-ranked first, at most 500) · "
    "click a row to see its image"
)
shown = rows[["rank", "path", "class_name", "split", "score", "suggested_label", "partner", "detail"]]
event = st.dataframe(
    shown,
    key=f"audit_table_{issue}",
    on_select="rerun",
    selection_mode="single-row",
    hide_index=True,
    width="stretch",
    height=320,
    column_config={"score": st.column_config.NumberColumn(format="%.4f")},
)
left, right = st.columns([1, 1])
left.download_button(
    "Download suggested fixes (fixes.csv)",
    audit.fixes.read_bytes() if audit.fixes.is_file() else b"",
    file_name=f"{ctx.run_name}-{ctx.key}-fixes.csv",
    mime="text/csv",
    key="audit_fixes",
    disabled=not audit.fixes.is_file(),
)
right.download_button(
    "Download this table (CSV)",
    rows.to_csv(index=False).encode(),
    key="audit_table_csv",
    file_name=f"{ctx.run_name}-{ctx.key}-{issue}.csv",
    mime="text/csv",
)
st.caption(
    "Retrain without the bad ones: `python -m core train RECIPE data.exclude=fixes.csv "
    "data.relabel=fixes.csv`, then compare the two runs on the Compare page."
)

# ------------------------------------------------------------------------------------ the selection
row = views.selected_row(event.selection if event else None, rows)
if row is None:
    st.caption("Select a row (its left edge) to see the image, its suggested label and its nearest neighbours.")
else:
    sid = int(row["sample_id"])
    img = images.iloc[sid]
    st.subheader(f"Selected: {row['path']}")
    st.markdown(
        f"label **{img['class_name']}** ({img['split']}) · suggested **{img['suggested_name']}** "
        f"(p {img['suggested_p']:.2f}) · label score {img['label_score']:.4f} · outlier z "
        f"{img['outlier_z']:.1f} · sharpness {img['sharpness']:.0f} · {row['detail']}"
    )
    items = [ui.GalleryItem(f"{img['class_name']} · rank {int(row['rank'])}", path=str(row["path"]))]
    if row["partner"] and "/" in str(row["partner"]):
        items.append(ui.GalleryItem(f"partner: {row['partner']}", path=str(row["partner"])))
    ui.gallery_ui(items, root, size=192)
    nn = ui.array(audit.neighbours)
    nn_s = ui.array(audit.neighbour_scores)
    if nn is not None and nn_s is not None:
        st.markdown("**Nearest neighbours** (cosine · identity)")
        ids = [int(i) for i in nn[sid] if i >= 0]
        ui.gallery_ui(
            [
                ui.GalleryItem(
                    f"{c:.3f} · {images.iloc[i]['class_name']}"
                    f" {'✓' if images.iloc[i]['label'] == img['label'] else '✗'}",
                    path=str(images.iloc[i]["path"]),
                )
                for i, c in zip(ids, nn_s[sid])
            ],
            root,
            size=128,
        )

# ------------------------------------------------------------------------------------ quality vs errors
reject = ui.table(audit.reject)
bins = ui.table(audit.quality_bins)
if reject is not None and bins is not None and len(reject):
    st.subheader("Quality and verification errors")
    vt = s.get("verification_threshold") or {}
    st.caption(
        f"FNMR at the fixed threshold {vt.get('threshold', float('nan')):.3f} ({vt.get('source', '')}) on "
        f"{vt.get('pairs', 0):,} evaluation pairs, when the lowest-quality share of images is rejected "
        "(a useful quality measure makes the curve fall)"
    )
    fig = figures.go.Figure(
        [
            figures.go.Scatter(x=g["rejected"], y=g["fnmr"], mode="lines+markers", name=m)
            for m, g in reject.groupby("measure", sort=False)
        ]
    )
    fig.update_xaxes(title="share of images rejected (lowest quality first)", tickformat=".0%")
    fig.update_yaxes(title="FNMR")
    ui.plot(figures.style(fig, "error versus reject"), key="audit_reject")
    st.markdown("**Verification per sharpness bin** (pairs binned by their less sharp image)")
    st.dataframe(bins.drop(columns=["measure"]), hide_index=True, width="stretch")
