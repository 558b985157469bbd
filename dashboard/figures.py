"""Plotly figure builders shared by the pages: score histograms, ROC, DET, confusion matrix, embedding
scatter, training curves, ablation curves and bar charts.

Each builder takes plain arrays or DataFrames and returns a `go.Figure` styled by `style()`, so pages stay
short and tests can build every figure without Streamlit. Points that a user can select carry the global
sample id (or the confusion cell) in `customdata`, because Plotly numbers points per trace.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

GENUINE, IMPOSTOR, TAU = "#2a9d8f", "#e76f51", "#264653"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
MAX_LEGEND_TRACES = 40  # above this many categories one trace with a colour scale is drawn instead


def style(fig: go.Figure, title: str | None = None, height: int = 360, **layout: Any) -> go.Figure:
    """The one layout every chart uses: compact margins, legend on top, a title when given."""
    # The title sits in the top margin and the legend just above the plot, so they never overlap.
    fig.update_layout(
        height=height,
        margin=dict(l=10, r=10, t=70 if title else 40, b=10),
        title=dict(text=title, x=0, y=0.985, yref="container", yanchor="top", font=dict(size=14)) if title else None,
        legend=dict(orientation="h", yanchor="bottom", y=1.01, x=0),
        **layout,
    )
    return fig


def score_histogram(
    hist: Mapping[str, np.ndarray],
    tau: float | None = None,
    score: float | None = None,
    title: str | None = "Genuine and impostor scores",
) -> go.Figure:
    """hist: core.metrics.verification.score_histograms output (edges (B+1,), genuine (B,), impostor (B,)).

    Each kind is drawn as its share of its own pairs, since impostors often outnumber genuines 40:1 and
    raw counts would flatten the genuine curve. tau is drawn as a line, a live `score` as a dashed line.
    """
    edges = np.asarray(hist["edges"])
    centres, width = (edges[1:] + edges[:-1]) / 2, float(edges[1] - edges[0])
    fig = go.Figure()
    for name, counts, colour in (("impostor", hist["impostor"], IMPOSTOR), ("genuine", hist["genuine"], GENUINE)):
        counts = np.asarray(counts, dtype=np.float64)
        share = counts / max(counts.sum(), 1.0)
        fig.add_bar(
            x=centres,
            y=share,
            width=width,
            name=f"{name} ({int(counts.sum()):,})",
            marker_color=colour,
            opacity=0.6,
            customdata=counts,
            hovertemplate="score %{x:.3f}<br>%{customdata:,} pairs<extra></extra>",
        )
    fig.update_layout(barmode="overlay", bargap=0)
    if tau is not None:
        fig.add_vline(x=tau, line_color=TAU, line_width=2, annotation_text=f"τ = {tau:.3f}", annotation_position="top")
    if score is not None:
        fig.add_vline(
            x=score,
            line_color="#6a4c93",
            line_width=2,
            line_dash="dash",
            annotation_text=f"score {score:.3f}",
            annotation_position="bottom right",
        )
    fig.update_xaxes(title="score")
    fig.update_yaxes(title="share of pairs")
    return style(fig, title)


def roc_figure(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    marks: Mapping[str, tuple[float, float]] | None = None,
    min_far: float | None = None,
    title: str | None = "ROC (FAR on a log axis)",
    mark_colours: Sequence[str] | None = None,
) -> go.Figure:
    """curves: name -> (far, tar) arrays; marks: label -> (far, tar) points (the chosen threshold).

    mark_colours: one colour per mark (Compare draws each run's τ in its curve's colour); default TAU.

    FAR is drawn on a log axis (faces are judged at FAR 1e-3 and below); FAR = 0 has no place on it, so
    those points are moved to `min_far` (half of 1/impostor pairs), left of the smallest observable FAR.
    """
    fig = go.Figure()
    floor = min_far or 1e-6
    for i, (name, (far, tar)) in enumerate(curves.items()):
        far = np.maximum(np.asarray(far, dtype=np.float64), floor)
        fig.add_scatter(
            x=far,
            y=tar,
            mode="lines",
            name=name,
            line=dict(color=PALETTE[i % len(PALETTE)]),
            hovertemplate="FAR %{x:.2e}<br>TAR %{y:.4f}<extra>" + name + "</extra>",
        )
    for j, (label, (far, tar)) in enumerate((marks or {}).items()):
        colour = mark_colours[j] if mark_colours is not None else TAU
        fig.add_scatter(
            x=[max(far, floor)],
            y=[tar],
            mode="markers",
            name=label,
            marker=dict(color=colour, size=12, symbol="x", line=dict(width=1, color=colour)),
            hovertemplate="FAR %{x:.2e}<br>TAR %{y:.4f}<extra>" + label + "</extra>",
        )
    fig.update_xaxes(type="log", title="false accept rate (FAR)", exponentformat="power")
    fig.update_yaxes(title="true accept rate (TAR)", range=[0, 1.02])
    return style(fig, title)


def _probit_ticks() -> tuple[list[float], list[str]]:
    from scipy.special import ndtri

    rates = [1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.95, 0.99]
    return [float(ndtri(r)) for r in rates], [f"{r * 100:g}%" for r in rates]


def det_figure(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    marks: Mapping[str, tuple[float, float]] | None = None,
    title: str | None = "DET (normal-deviate axes)",
) -> go.Figure:
    """curves: name -> (far_probit, frr_probit) from core's det_points; marks: label -> (far, frr) rates.

    Axes are probit-scaled and labelled in percent, so straight lines mean Gaussian-like scores.
    """
    from scipy.special import ndtri

    fig = go.Figure()
    for i, (name, (x, y)) in enumerate(curves.items()):
        fig.add_scatter(x=x, y=y, mode="lines", name=name, line=dict(color=PALETTE[i % len(PALETTE)]), hoverinfo="skip")
    for label, (far, frr) in (marks or {}).items():
        p = np.clip([far, frr], 1e-6, 1 - 1e-6)
        fig.add_scatter(
            x=[float(ndtri(p[0]))],
            y=[float(ndtri(p[1]))],
            mode="markers",
            name=label,
            marker=dict(color=TAU, size=11, symbol="x"),
            hovertemplate=f"FAR {far:.2e}<br>FRR {frr:.4f}<extra>{label}</extra>",
        )
    vals, text = _probit_ticks()
    fig.update_xaxes(title="false accept rate (FAR)", tickvals=vals, ticktext=text, range=[vals[0], vals[-1]])
    fig.update_yaxes(title="false reject rate (FRR)", tickvals=vals, ticktext=text, range=[vals[0], vals[-1]])
    return style(fig, title)


def confusion_figure(
    cm: np.ndarray, names: Sequence[str], classes: Sequence[int], normalised: bool, title: str | None = None
) -> go.Figure:
    """Heatmap of cm[classes][:, classes] (rows true, columns predicted) in the given class order.

    Heatmaps cannot be box- or click-selected in Streamlit, so an invisible marker sits on every cell
    with customdata [true, predicted] (global class indices) for the selection to read.
    """
    classes = np.asarray(classes, dtype=np.int64)
    sub = np.asarray(cm, dtype=np.float64)[np.ix_(classes, classes)]
    if normalised:
        rows = sub.sum(1, keepdims=True)
        sub = np.divide(sub, rows, out=np.zeros_like(sub), where=rows > 0)
    labels = [str(names[c]) for c in classes]
    # hover and clicks belong to the overlay only: with the heatmap also hoverable it wins the click
    fig = go.Figure(go.Heatmap(z=sub, x=labels, y=labels, colorscale="Blues", hoverinfo="skip"))
    ti, pi = np.meshgrid(np.arange(len(classes)), np.arange(len(classes)), indexing="ij")
    fig.add_scatter(
        x=[labels[j] for j in pi.ravel()],
        y=[labels[i] for i in ti.ravel()],
        mode="markers",
        marker=dict(size=max(4, min(18, 600 // max(len(classes), 1))), opacity=0.01, color="black"),
        customdata=np.stack([classes[ti.ravel()], classes[pi.ravel()], sub.ravel()], 1),
        showlegend=False,
        hovertemplate="true %{y}<br>predicted %{x}<br>"
        + ("share of the true class" if normalised else "images")
        + " %{customdata[2]:.3g}<extra>click to show the images</extra>",
    )
    fig.update_xaxes(title="predicted", type="category", tickangle=-60)
    fig.update_yaxes(title="true", type="category", autorange="reversed")
    side = min(900, 220 + 16 * len(classes))
    return style(fig, title, height=side)


# Scattergl marker shapes: with 10 colours, 4 shapes give 40 distinguishable (colour, shape) pairs
SYMBOLS = ("circle", "square", "diamond", "x")
HIGHLIGHT_GREY = "#bdbdbd"


def category_style(i: int, n: int) -> tuple[str, str]:
    """(colour, symbol) of the i-th of n categories: unique pairs up to len(PALETTE) * len(SYMBOLS)."""
    return PALETTE[i % len(PALETTE)], SYMBOLS[(i // len(PALETTE)) % len(SYMBOLS)] if n > len(PALETTE) else "circle"


def embedding_scatter(
    points: pd.DataFrame,
    colour: str,
    hover: Sequence[str] = ("path", "class_name"),
    title: str | None = None,
    *,
    labels: Mapping[str, str] | None = None,
    colours: Mapping[str, str] | None = None,
    highlight: str | None = None,
) -> go.Figure:
    """points: DataFrame with sample_id, x, y, the colour column and the hover columns.

    One WebGL trace per category (legend, per-class toggling) up to MAX_LEGEND_TRACES categories, each a
    distinct (colour, shape) pair, else one trace with a colour scale; numeric columns get a colour scale.
    labels: readable names of columns for hover and legend title; colours: a fixed colour per category
    (correct / wrong); highlight: one category drawn in colour on top, every other one grey.
    customdata[0] is always sample_id. The legend sits right of the plot, clear of the toolbar.
    """
    names = dict(labels or {})
    hover = [h for h in hover if h in points.columns and h != colour]
    custom_cols = ["sample_id", colour, *hover]
    template = (
        "<br>".join([f"{names.get(c, c)}: %{{customdata[{i + 1}]}}" for i, c in enumerate([colour, *hover])])
        + "<br>id %{customdata[0]}<extra></extra>"
    )
    fig = go.Figure()
    values = points[colour]
    numeric = (
        pd.api.types.is_numeric_dtype(values)
        and not pd.api.types.is_bool_dtype(values)
        and values.nunique() > MAX_LEGEND_TRACES
    )
    categories = pd.unique(values.astype(str)) if not numeric else []
    if numeric or len(categories) > MAX_LEGEND_TRACES:
        codes = values.to_numpy() if numeric else pd.Categorical(values.astype(str)).codes
        fig.add_scattergl(
            x=points["x"],
            y=points["y"],
            mode="markers",
            showlegend=False,
            marker=dict(
                size=6,
                color=codes,
                colorscale="Turbo",
                showscale=numeric,
                colorbar=dict(title=dict(text=names.get(colour, colour))),
            ),
            customdata=points[custom_cols].to_numpy(),
            hovertemplate=template,
        )
    else:
        # factorize once: comparing an Arrow string column to each category is slow at 1000s of points
        codes, cats = pd.factorize(values.astype(str))
        custom = points[custom_cols].to_numpy()
        xs, ys = points["x"].to_numpy(), points["y"].to_numpy()
        order = sorted(range(len(cats)), key=lambda j: _natural_key(cats[j]))
        if highlight is not None and highlight in cats:  # drawn last, so it sits on top of the grey
            order = [c for c in order if cats[c] != highlight] + [list(cats).index(highlight)]
        for i, c in enumerate(order):
            rows = np.flatnonzero(codes == c)
            name = str(cats[c])
            col, symbol = category_style(i, len(cats))
            col = (colours or {}).get(name, col)
            if highlight is not None and name != highlight:
                col, symbol = HIGHLIGHT_GREY, "circle"
            fig.add_scattergl(
                x=xs[rows],
                y=ys[rows],
                mode="markers",
                name=name,
                marker=dict(
                    size=9 if name == highlight else 7,
                    color=col,
                    symbol=symbol,
                    opacity=0.45 if highlight is not None and name != highlight else 0.9,
                ),
                customdata=custom[rows],
                hovertemplate=template,
            )
    fig.update_xaxes(showticklabels=False, title=None)
    fig.update_yaxes(showticklabels=False, title=None, scaleanchor="x")
    style(fig, title, height=560, dragmode="lasso")
    # the toolbar sits in the top-right corner: a legend on top would be covered by it
    fig.update_layout(
        legend=dict(
            orientation="v", x=1.01, y=1, yanchor="top", xanchor="left", title=dict(text=names.get(colour, colour))
        )
    )
    return fig


def training_curves(metrics: pd.DataFrame) -> go.Figure:
    """metrics.jsonl by epoch in four panels: every loss term, accuracies, learning rate, images/s."""
    fig = make_subplots(
        rows=2,
        cols=2,
        subplot_titles=("loss terms", "accuracy and validation metrics", "learning rate", "images / s"),
        vertical_spacing=0.14,
        horizontal_spacing=0.08,
    )
    x = metrics["epoch"] if "epoch" in metrics else pd.Series(np.arange(1, len(metrics) + 1))
    panels = [
        (1, 1, [c for c in metrics.columns if c.startswith("loss/")]),
        # val_metric repeats whichever val_* column selected the checkpoint, so it is left out
        (
            1,
            2,
            [
                c
                for c in metrics.columns
                if c in ("train_acc", "val_acc") or (c.startswith("val_") and c != "val_metric")
            ],
        ),
        (2, 1, [c for c in ("lr",) if c in metrics.columns]),
        (2, 2, [c for c in ("images_per_s",) if c in metrics.columns]),
    ]
    i = 0
    legends = {}
    for k, (row, col, columns) in enumerate(panels):
        # one legend per panel, in that panel's top-right corner, so each lists only its own series
        name = "legend" if k == 0 else f"legend{k + 1}"
        for c in columns:
            fig.add_scatter(
                x=x,
                y=metrics[c],
                mode="lines+markers",
                name=c,
                row=row,
                col=col,
                legend=name,
                line=dict(color=PALETTE[i % len(PALETTE)]),
                marker=dict(size=4),
            )
            i += 1
        sub = fig.get_subplot(row, col)
        legends[name] = dict(
            x=sub.xaxis.domain[1],
            y=sub.yaxis.domain[1],
            xanchor="right",
            yanchor="top",
            orientation="v",
            font=dict(size=10),
        )
    fig.update_xaxes(title_text="epoch", row=2)
    style(fig, None, height=520)
    fig.update_layout(**legends)
    return fig


def ablation_figure(
    curves: pd.DataFrame,
    metric: str,
    baseline: float | None = None,
    grayscale: float | None = None,
    crop: int | None = None,
) -> go.Figure:
    """curves: ablation_curves() table; the full-image baseline and grayscale result as reference lines."""
    fig = go.Figure()
    names = {"centre": "centre X% only", "outer": "outer ring only (centre X% masked)"}
    for i, (region, part) in enumerate(curves.groupby("region", sort=False)):
        fig.add_scatter(
            x=part["crop"],
            y=part["value"],
            mode="lines+markers",
            name=names.get(region, region),
            line=dict(color=PALETTE[i]),
        )
    if baseline is not None:
        fig.add_hline(y=baseline, line_dash="dot", line_color="#555", annotation_text=f"full image {baseline:.3f}")
    if grayscale is not None:
        fig.add_hline(
            y=grayscale,
            line_dash="dash",
            line_color="#999",
            annotation_text=f"grayscale {grayscale:.3f}",
            annotation_position="bottom right",
        )
    if crop is not None:
        fig.add_vline(x=crop, line_color=TAU, line_width=1)
    fig.update_xaxes(title="X (% of the shorter side)", dtick=10)
    fig.update_yaxes(title=metric)
    return style(fig, f"{metric} against the centre-crop size")


def bar_figure(
    frame: pd.DataFrame,
    x: str,
    y: str,
    title: str | None = None,
    colour: str | None = None,
    height: int = 320,
    horizontal: bool = False,
) -> go.Figure:
    """A plain bar chart (grouped by `colour` when given)."""
    fig = go.Figure()
    groups = frame.groupby(colour, sort=False) if colour else [(None, frame)]
    for i, (name, part) in enumerate(groups):
        kw = dict(x=part[y], y=part[x], orientation="h") if horizontal else dict(x=part[x], y=part[y])
        fig.add_bar(name=str(name) if name is not None else y, marker_color=PALETTE[i % len(PALETTE)], **kw)
    fig.update_layout(barmode="stack" if colour else "group", showlegend=colour is not None)
    return style(fig, title, height=height)


def _natural_key(s: str) -> tuple:
    # "s2" before "s10": class folders are often numbered without padding.
    import re

    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(s)))


# ------------------------------------------------------------------------ intervals, calibration, groups
# (issue 13: dashboard/defend.py draws these; kept apart from the figures above)
def _add_band(fig: go.Figure, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, name: str) -> go.Figure:
    """Shade the area between `lo` and `hi` over `x` as one closed polygon (out along hi, back along lo),
    the way the ROC and DET bands are both drawn."""
    fig.add_scatter(
        x=np.r_[x, x[::-1]],
        y=np.r_[hi, lo[::-1]],
        fill="toself",
        mode="lines",
        line=dict(width=0),
        fillcolor="rgba(31,119,180,0.18)",
        name=name,
        hoverinfo="skip",
    )
    return fig


def add_roc_band(
    fig: go.Figure, band: Mapping[str, Sequence[float]], min_far: float | None = None, name: str = "95% band"
) -> go.Figure:
    """Shade the bootstrap band (TAR low / high at each FAR of band["far"]) under the ROC's curves."""
    far = np.maximum(np.asarray(band["far"], np.float64), min_far or 1e-6)
    lo, hi = np.asarray(band["tar_lo"], np.float64), np.asarray(band["tar_hi"], np.float64)
    return _add_band(fig, far, lo, hi, name)


def add_det_band(fig: go.Figure, band: Mapping[str, Sequence[float]], name: str = "95% band") -> go.Figure:
    """The same band on the DET's probit axes (FRR = 1 - TAR)."""
    from scipy.special import ndtri

    eps = 1e-6
    x = ndtri(np.clip(np.asarray(band["far"], np.float64), eps, 1 - eps))
    lo = ndtri(np.clip(1 - np.asarray(band["tar_hi"], np.float64), eps, 1 - eps))
    hi = ndtri(np.clip(1 - np.asarray(band["tar_lo"], np.float64), eps, 1 - eps))
    return _add_band(fig, x, lo, hi, name)


def reliability_figure(rel: Mapping[str, Sequence[float]], title: str | None = "reliability") -> go.Figure:
    """Observed genuine rate against mean predicted P(same) per equal-count bin; the diagonal is perfect."""
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"), name="perfect")
    fig.add_scatter(
        x=rel["predicted"],
        y=rel["observed"],
        mode="lines+markers",
        name="observed",
        customdata=rel["count"],
        line=dict(color=PALETTE[0]),
        hovertemplate="predicted %{x:.3f}<br>observed %{y:.3f}<br>%{customdata} pairs<extra></extra>",
    )
    fig.update_xaxes(title="predicted P(same)", range=[0, 1])
    fig.update_yaxes(title="observed share of genuine pairs", range=[0, 1])
    return style(fig, title, height=320)


def cross_group_heatmap(cross: Mapping[str, Any], title: str | None = None) -> go.Figure:
    """Impostor FMR for each pair of groups (a pair of two groups counts in that cell), with pair counts."""
    names = [str(g) for g in cross["groups"]]
    z = np.array([[np.nan if v is None else v for v in row] for row in cross["rate"]], np.float64)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=names,
            y=names,
            customdata=np.asarray(cross["n"]),
            colorscale="Reds",
            hovertemplate="%{y} × %{x}<br>FMR %{z:.4f}<br>%{customdata} impostor pairs<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed")
    return style(fig, title, height=max(260, 40 * len(names) + 120))
