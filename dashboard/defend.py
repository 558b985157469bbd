"""The Verification page's "threshold you can defend" parts (issue 13): intervals, cost, calibration, groups.

Entry points, called from app_pages/verification.py in their own sections: `interval_caption_ui(ver)`,
`tar_table(ver)`, `slider_interval_ui(ctx, files, tau)`, `cost_ui(ctx, files, ver, tau)`,
`calibration_ui(files)`, `groups_ui(files, tau)`; `live_meaning(run_dir, score)` for Live match. The numbers
come from core (core.metrics.uncertainty / groups, core.assurance) on the pairs evaluate wrote; this
module only reads them and arranges widgets, so the page shows what `evaluate --json` reports.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from core.layout import EvalFiles
from dashboard import artifacts, ui

SLIDER_BOOT = 1000  # replicates behind the interval at the slider (the evaluation's own default)


def _ci_text(ci: Any, digits: int = 4, pct: bool = False) -> str:
    if not ci:
        return "n/a"
    lo, hi = ci
    return (
        f"[{lo:.{max(digits - 2, 1)}%}, {hi:.{max(digits - 2, 1)}%}]" if pct else f"[{lo:.{digits}f}, {hi:.{digits}f}]"
    )


def intervals(ver: Mapping[str, Any]) -> dict[str, Any] | None:
    """The evaluation's bootstrap report (None for an evaluation made before intervals existed)."""
    return ver.get("intervals")


def interval_caption_ui(ver: Mapping[str, Any]) -> None:
    """One caption under the headline numbers: their intervals, both resampling schemes side by side."""
    iv = intervals(ver)
    if not iv:
        st.caption("No intervals in this evaluation: evaluate the run again to get them (python -m core evaluate).")
        return
    main, key = iv[iv["default"]], iv["key"]
    other = "pairs" if iv["default"] == "identities" else "identities"
    kf = main.get("kfold_accuracy")
    st.caption(
        f"{iv['level']:.0%} intervals, {iv['n_boot']} {iv['default']} bootstrap replicates (seed {iv['seed']}, "
        f"{iv['n_identities']} identities): AUC {_ci_text(main['auc'])} · EER {_ci_text(main['eer'])}"
        + (f" · k-fold accuracy {_ci_text(kf)}" if kf else "")
        + f". Resampling {other} instead (pairs of one person are not independent, so narrower): AUC "
        f"{_ci_text(iv[other]['auc'])} · EER {_ci_text(iv[other]['eer'])}. Field `{key}` in evaluate --json."
    )


def tar_table(ver: Mapping[str, Any]) -> pd.DataFrame:
    """The TAR@FAR table with each level's interval and a note where the interval is wider than the value."""
    from dashboard import views

    table = views.tar_at_far_table(ver)
    iv = intervals(ver)
    if not iv or table.empty:
        return table
    key = iv["key"]
    rows = ver.get("tar_at_far") or {}
    cis = [rows.get(f"{lv:g}", {}).get(key) for lv in table["target FAR"]]
    table.insert(2, "interval", [_ci_text(c) if c else "" for c in cis])
    wide = [bool(c) and not math.isnan(t) and (c[1] - c[0]) > t for c, t in zip(cis, table["TAR"])]
    table["note"] = [
        ("; ".join(x for x in (n, "interval wider than the value") if x) if w else n)
        for n, w in zip(table["note"], wide)
    ]
    return table


@st.cache_resource(show_spinner=False, max_entries=4)
def _prepared(pairs_path: str, samples_path: str, stamp: float):
    """Pairs sorted once with each pair's two identities (samples.parquet labels, else the class folder)."""
    from core.metrics import uncertainty as unc

    pairs = pd.read_parquet(pairs_path)
    ids_a, ids_b = pair_identities(pairs, samples_path)
    return unc.prepare(pairs["score"].to_numpy(np.float64), pairs["label"].to_numpy(np.int64), ids_a, ids_b)


def pair_identities(pairs: pd.DataFrame, samples_path: str | Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Identity of each pair's two images: samples.parquet's label through idx_a / idx_b when there is one
    (an embedding evaluation), else the image's class folder (a pair model's evaluation)."""
    if samples_path and Path(samples_path).is_file() and {"idx_a", "idx_b"} <= set(pairs.columns):
        labels = pd.read_parquet(samples_path, columns=["label"])["label"].to_numpy()
        return labels[pairs["idx_a"].to_numpy()], labels[pairs["idx_b"].to_numpy()]
    return (
        pairs["path_a"].astype(str).str.split("/").str[0].to_numpy(object),
        pairs["path_b"].astype(str).str.split("/").str[0].to_numpy(object),
    )


@st.cache_data(show_spinner=False, max_entries=256)
def _at_threshold(
    pairs_path: str,
    samples_path: str,
    stamp: float,
    tau: float,
    resample: str,
    n_boot: int,
    level: float,
    seed: int,
    cost: tuple[float, float, float],
) -> dict[str, Any]:
    from core.metrics import uncertainty as unc

    prep = _prepared(pairs_path, samples_path, stamp)
    report = unc.method_report(
        prep,
        resample=resample,
        n_boot=n_boot,
        seed=seed,
        level=level,
        far_levels=[],
        thresholds={"tau": float(tau)},
        kfold=False,
        cost=cost,
    )
    return report["at"]["tau"]


def interval_at(
    files: EvalFiles, ver: Mapping[str, Any], tau: float, cost: tuple[float, float, float] = (0.5, 1.0, 1.0)
) -> dict[str, Any] | None:
    """{far, frr, tar, accuracy, dcf: [lo, hi]} at `tau`, with the evaluation's bootstrap settings."""
    iv = intervals(ver)
    if not iv or not files.pairs.is_file():
        return None
    return _at_threshold(
        str(files.pairs),
        str(files.samples),
        artifacts.mtime(files.pairs),
        float(tau),
        iv["default"],
        int(iv["n_boot"]) or SLIDER_BOOT,
        float(iv["level"]),
        int(iv["seed"]),
        cost,
    )


def slider_interval_ui(files: EvalFiles, ver: Mapping[str, Any], tau: float, n_impostor: int) -> dict | None:
    """Under the slider: the FAR and FRR intervals at τ and the smallest FAR the impostor pairs support."""
    from core.metrics.uncertainty import rule_of_three

    iv = intervals(ver)
    level = float(iv["level"]) if iv else 0.95
    floor = rule_of_three(n_impostor, level)
    at = interval_at(files, ver, tau)
    if at is None:
        st.caption(f"Smallest FAR {n_impostor:,} impostor pairs can support (rule of 3): {floor:.2e}.")
        return None
    ui.metric_row(
        [
            (
                f"FAR {level:.0%} interval",
                _ci_text(at["far"], pct=True),
                f"{iv['default']} bootstrap, {iv['n_boot']} replicates at τ = {tau:.4f}",
            ),
            (f"FRR {level:.0%} interval", _ci_text(at["frr"], pct=True), "the same replicates"),
            (
                "smallest supportable FAR",
                f"{floor:.2e}",
                f"rule of 3: with {n_impostor:,} impostor pairs and none accepted, FAR could still be {floor:.1e} "
                f"({level:.0%} upper bound); a claimed FAR below it is not supported by this data",
            ),
        ]
    )
    return at


def cost_ui(
    ctx: ui.Context, files: EvalFiles, ver: Mapping[str, Any], points, tau: float, bounds: tuple[float, float]
) -> dict[str, Any]:
    """Prior and error costs, a "τ at minimum cost" button, and the expected cost at the slider's τ."""
    from core.metrics import costs

    mc = ver.get("min_cost") or {}
    c1, c2, c3, c4 = st.columns([1, 1, 1, 1.2], vertical_alignment="bottom")
    prior = c1.number_input(
        "P(genuine attempt)",
        min_value=1e-6,
        max_value=1 - 1e-6,
        value=float(mc.get("prior", 0.5)),
        format="%.4f",
        key="cost_prior",
    )
    c_fa = c2.number_input("cost of a false accept", min_value=1e-6, value=float(mc.get("cost_fa", 1.0)), key="cost_fa")
    c_fr = c3.number_input("cost of a false reject", min_value=1e-6, value=float(mc.get("cost_fr", 1.0)), key="cost_fr")
    best = costs.min_cost_threshold(points, prior, c_fa, c_fr)
    target = best["threshold"] if math.isfinite(best["threshold"]) else bounds[1]
    c4.button(
        "τ at minimum cost",
        width="stretch",
        key="tau_min_cost",
        on_click=ui.set_threshold,
        args=(ctx, min(max(target, bounds[0]), bounds[1]), "min_cost"),
        help=f"{best['threshold']:.4f}: expected cost {best['dcf']:.4f} per attempt",
    )
    from dashboard import views

    op = views.operating_point(points, tau)
    here = float(costs.dcf(op["far"], op["frr"], prior, c_fa, c_fr))
    at = interval_at(files, ver, tau, (prior, c_fa, c_fr))
    st.caption(
        f"Expected cost at τ = {tau:.4f}: {here:.4f} per attempt"
        + (f" {_ci_text(at['dcf'])}" if at and at.get("dcf") else "")
        + f" (normalised {here / costs.default_cost(prior, c_fa, c_fr):.3f}; 1 = no better than accepting or "
        f"rejecting everyone). The minimum, {best['dcf']:.4f}, is at τ = {best['threshold']:.4f}."
    )
    return {
        "prior": prior,
        "cost_fa": c_fa,
        "cost_fr": c_fr,
        "dcf": here,
        "dcf_interval": at and at.get("dcf"),
        "min_cost_threshold": best["threshold"],
        "min_dcf": best["dcf"],
    }


def export_extra(
    ver: Mapping[str, Any],
    at: Mapping[str, Any] | None,
    cost: Mapping[str, Any],
    chosen_by: str,
    target_far: float | None,
) -> dict[str, Any]:
    """What operating_point.json adds for issue 13: the rule and its parameters, the intervals at τ, the cost."""
    iv = intervals(ver)
    key = iv["key"] if iv else "ci95"
    params: dict[str, Any] = {}
    if chosen_by == "target_far":
        params["target_far"] = target_far
    if chosen_by == "min_cost":
        params.update(prior=cost["prior"], cost_fa=cost["cost_fa"], cost_fr=cost["cost_fr"])
    out: dict[str, Any] = {
        "rule": chosen_by,
        "rule_parameters": params,
        "cost": {
            "prior": cost["prior"],
            "cost_fa": cost["cost_fa"],
            "cost_fr": cost["cost_fr"],
            "dcf": cost["dcf"],
            key: cost.get("dcf_interval"),
        },
    }
    if at:
        out[key] = {m: at.get(m) for m in ("far", "frr", "tar", "accuracy")}
        out["interval"] = {"level": iv["level"], "resample": iv["default"], "n_boot": iv["n_boot"], "seed": iv["seed"]}
    if ver.get("rule_of_three_far") is not None:
        out["rule_of_three_far"] = ver["rule_of_three_far"]
    return out


def band(ver: Mapping[str, Any]) -> dict[str, list[float]] | None:
    """ROC band (FAR grid, TAR low / high) of the evaluation's default bootstrap."""
    iv = intervals(ver)
    return iv[iv["default"]].get("band") if iv else None


def calibration_ui(files: EvalFiles) -> None:
    """Reliability diagram, ECE, Cllr and minCllr of the cross-fitted calibration."""
    from dashboard import figures

    cal = ui.json_file(files.calibration)
    if not cal:
        return
    st.subheader("What a score means: calibration")
    m = cal["methods"][cal["method"]]
    ui.metric_row(
        [
            ("Cllr", f"{cal['cllr']:.4f} bits", "0 is perfect, 1 is an uninformative system (cross-fitted)"),
            (
                "minCllr",
                f"{cal['min_cllr']:.4f} bits",
                "after the best monotone recalibration: the loss due to "
                "discrimination alone; Cllr - minCllr is lost to calibration",
            ),
            ("ECE", f"{cal['ece']:.4f}", "mean |observed - predicted| over 10 equal-count bins"),
            (
                "other method",
                f"{[k for k in cal['methods'] if k != cal['method']][0]}: Cllr "
                f"{[v['cllr'] for k, v in cal['methods'].items() if k != cal['method']][0]:.4f}",
                None,
            ),
        ]
    )
    ui.plot(
        ui.shared_result(
            ("reliability", str(files.calibration), artifacts.mtime(files.calibration)),
            lambda: figures.reliability_figure(
                m["reliability"],
                title=f"reliability ({cal['method']}, each pair scored by "
                f"the map fitted on the other {cal['n_folds'] - 1} folds)",
            ),
        ),
        key="reliability",
    )


@st.cache_resource(show_spinner=False, max_entries=64)  # shared read-only: cache_data would copy it per rerun
def _groups_at(groups_path: str, pairs_path: str, samples_path: str, stamp: float, tau: float) -> dict[str, Any]:
    from core.metrics import groups as grp

    stored = ui.json_file(Path(groups_path))
    pairs = pd.read_parquet(pairs_path)
    ids_a, ids_b = pair_identities(pairs, samples_path)
    s, y = pairs["score"].to_numpy(np.float64), pairs["label"].to_numpy(np.int64)
    specs = dict(grp.builtin_attributes(pairs))
    for name, g in (stored.get("attributes") or {}).items():
        if g.get("images"):
            specs[name] = (*grp.image_groups(g["images"], pairs["path_a"].tolist(), pairs["path_b"].tolist()), True)
    return {
        name: grp.group_report(
            s,
            y,
            ids_a,
            ids_b,
            ga,
            gb,
            tau,
            image_level=lvl,
            n_boot=200,
            level=stored.get("level", 0.95),
            resample=stored.get("resample", "identities"),
        )
        for name, (ga, gb, lvl) in specs.items()
    }


def groups_table(report: Mapping[str, Any]) -> pd.DataFrame:
    key = next((k[5:] for k in (report["groups"][0] if report["groups"] else {}) if k.startswith("fnmr_ci")), "ci95")
    return pd.DataFrame(
        [
            {
                "group": r["group"],
                "genuine pairs": r["n_genuine"],
                "FNMR": r["fnmr"],
                "FNMR interval": _ci_text(r.get(f"fnmr_{key}")),
                "impostor pairs": r["n_impostor"],
                "FMR": r["fmr"],
                "FMR interval": _ci_text(r.get(f"fmr_{key}")),
                "note": r["note"],
            }
            for r in report["groups"]
        ]
    )


def groups_ui(files: EvalFiles, tau: float) -> None:
    """The "Groups" section: FNMR / FMR per group at the slider's τ, cross-group FMR, ratios, FDR."""
    from dashboard import figures

    if not files.groups.is_file():
        return
    st.subheader(f"Groups at τ = {tau:.3f}")
    reports = _groups_at(
        str(files.groups), str(files.pairs), str(files.samples), artifacts.mtime(files.groups), float(tau)
    )
    if not reports:
        st.caption(
            "No groups: pass --attributes FILE (a CSV of image path + columns such as gender, age band, "
            "pose) to python -m core evaluate; protocol slices and sub-folders are grouped without one."
        )
        return
    for name, rep in reports.items():
        st.markdown(f"**By {name}** · one global threshold for every group · {rep['summary_over']}")
        st.dataframe(
            groups_table(rep),
            hide_index=True,
            width="stretch",
            column_config={c: st.column_config.NumberColumn(format="%.4f") for c in ("FNMR", "FMR")},
        )
        ratio = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        st.caption(
            f"max/min FNMR {ratio(rep['fnmr_ratio'])} · max/min FMR {ratio(rep['fmr_ratio'])} · fairness "
            f"discrepancy rate {rep['fdr']:.4f} (1 = equal error rates; α = {rep['fdr_alpha']})"
            + (
                f" · {rep['pairs_without_group']:,} pairs have an image of no group"
                if rep["pairs_without_group"]
                else ""
            )
        )
        small = [r["group"] for r in rep["groups"] if r["small"]]
        if small:
            st.warning(
                f"Too small to judge: {', '.join(map(str, small))} (fewer than 30 genuine or impostor pairs); "
                "their intervals are wide and they are left out of the ratios.",
                icon=":material/warning:",
            )
        if rep.get("cross_fmr"):
            ui.plot(
                ui.shared_result(
                    ("cross_fmr", str(files.groups), artifacts.mtime(files.groups), float(tau), name),
                    lambda: figures.cross_group_heatmap(rep["cross_fmr"], title=f"impostor FMR across {name} groups"),
                ),
                key=f"cross_{name}",
            )


def live_meaning(files: EvalFiles | None, run_dir: Path, score: float) -> str | None:
    """'P(same) 0.93 on <evaluation>, LR 41' for an uploaded pair under the reference evaluation's calibration
    (else the run's latest), with the warning that uploads are not the calibration data; None without one."""
    from core.assurance import calibrated_meaning, meaning_text, run_calibration

    try:
        cal = (
            ui.json_file(files.calibration)
            if files is not None and files.calibration.is_file()
            else run_calibration(run_dir)
        )
        m = calibrated_meaning(cal or None, score, (None, None))
    except Exception:  # a corrupt calibration.json must not break the live page: say nothing
        return None
    return meaning_text(m) if m else None
