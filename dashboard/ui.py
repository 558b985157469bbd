"""Shared Streamlit pieces: the sidebar run/evaluation pickers, cached artifact readers, image galleries,
the compute-it-now button with a progress bar, and the threshold shared by the Verification and Live pages.

Pages call `context()` for the sidebar's choice and the `*_ui` functions to draw. Tables are cached with
st.cache_data, big arrays, ROC points and models with st.cache_resource (cache_data would copy them on
every rerun); each cache key holds the file's mtime, so a recomputed artifact is read again.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import streamlit as st

from core.errors import MatchLabError
from dashboard import artifacts
from dashboard.artifacts import EvalFiles

Progress = Callable[[float, str], None]


# ---------------------------------------------------------------------------------------- context
@dataclass(frozen=True)
class Context:
    """What the sidebar chose: a run folder and one of its evaluation keys (either may be None)."""

    run_dir: Path | None
    key: str | None

    @property
    def run_name(self) -> str:
        return self.run_dir.name if self.run_dir else ""

    @property
    def files(self) -> EvalFiles | None:
        return EvalFiles(self.run_dir / "eval" / self.key) if self.run_dir and self.key else None


def context() -> Context:
    """The sidebar's current choice (set by sidebar_ui in app.py before the page runs)."""
    return st.session_state.get("_context") or Context(None, None)


def sidebar_ui() -> Context:
    """Run and evaluation pickers, plus a form to evaluate the run on another dataset."""
    runs = artifacts.list_run_dirs()
    with st.sidebar:
        if not runs:
            st.warning(f"No runs under {artifacts.checkpoints_dir()}. Train one with "
                       "`python -m core train configs/orl.yaml`.")
            ctx = Context(None, None)
        else:
            by_name = {artifacts.run_label(r): r for r in runs}
            if st.session_state.get("run") not in by_name:
                st.session_state.pop("run", None)
            name = st.selectbox("Run", list(by_name), key="run", help="a folder under checkpoints/")
            run_dir = by_name[name]
            keys = artifacts.list_eval_keys(run_dir)
            pending = st.session_state.pop("_next_eval_key", None)
            if pending in keys:
                st.session_state["eval_key"] = pending
            elif st.session_state.get("eval_key") not in keys:
                st.session_state.pop("eval_key", None)
            if keys and "eval_key" not in st.session_state:
                # open on the dataset the run trained on, the one every page has artifacts for
                trained_on = Path(default_data(run_dir)).name
                st.session_state["eval_key"] = trained_on if trained_on in keys else keys[0]
            key = st.selectbox("Evaluation", keys, key="eval_key",
                               help="dataset or pairs protocol the run was evaluated on (eval/<key>/)") if keys else None
            if not keys:
                st.caption("No evaluation yet: any page offers to compute one.")
            ctx = Context(run_dir, key)
            _evaluate_other_ui(run_dir)
            files = ctx.files
            if files is not None:
                summary = json_file(files.summary)
                st.caption(f"checkpoint `{summary.get('checkpoint_hash', '?')}` · {summary.get('model', '')} · "
                           f"{summary.get('n_images', '?')} images")
    st.session_state["_context"] = ctx
    return ctx


def _evaluate_other_ui(run_dir: Path) -> None:
    from core.pairs import PAIR_FORMATS  # numpy only: cheap

    with st.expander("Evaluate on another dataset"):
        data = st.text_input("Image folder", value=default_data(run_dir), key="new_eval_data")
        fmt = st.selectbox("Pairs protocol", ["", *PAIR_FORMATS], key="new_eval_format",
                           format_func=lambda f: f"{f}: {PAIR_FORMATS[f].help}" if f else "generated from the folder")
        pairs_file = st.text_input("Pairs file (lfw, csv, cfp: the protocol file or folder)", key="new_eval_pairs")
        if st.button("Evaluate", key="new_eval_go"):
            run_job(evaluation_job(run_dir, data, pairs_file or None, fmt or None))


def default_data(run_dir: Path) -> str:
    """The folder a run trained on (config data.train), the natural first dataset to evaluate on."""
    return str((artifacts.read_config(run_dir).get("data") or {}).get("train", "data/orl_faces"))


# ---------------------------------------------------------------------------------- cached readers
@st.cache_data(show_spinner=False, max_entries=64)
def _read_json(path: str, stamp: float) -> dict[str, Any]:
    return artifacts.read_json(Path(path))


def json_file(path: Path) -> dict[str, Any]:
    """A JSON artifact ({} when missing), re-read when the file changes."""
    return _read_json(str(path), artifacts.mtime(path))


@st.cache_data(show_spinner=False, max_entries=32)
def _read_table(path: str, stamp: float) -> pd.DataFrame:
    return pd.read_parquet(path)


def table(path: Path) -> pd.DataFrame | None:
    """A parquet artifact (a copy the page may change), or None when missing."""
    return _read_table(str(path), artifacts.mtime(path)) if Path(path).is_file() else None


@st.cache_resource(show_spinner=False, max_entries=8)
def _read_pairs(path: str, stamp: float) -> pd.DataFrame:
    return pd.read_parquet(path)


def pairs_table(path: Path) -> pd.DataFrame | None:
    """pairs.parquet, shared read-only (millions of rows: st.cache_data would copy it on every rerun)."""
    return _read_pairs(str(path), artifacts.mtime(path)) if Path(path).is_file() else None


@st.cache_resource(show_spinner=False, max_entries=8)
def _read_array(path: str, stamp: float) -> np.ndarray:
    return np.load(path)


def array(path: Path) -> np.ndarray | None:
    """A .npy artifact shared read-only across reruns and sessions, or None when missing."""
    return _read_array(str(path), artifacts.mtime(path)) if Path(path).is_file() else None


@st.cache_resource(show_spinner=False, max_entries=16)
def _points(path: str, stamp: float, slice_name: str | None):
    from dashboard import views

    return views.pair_points(_read_pairs(path, stamp), slice_name)


def roc_points(files: EvalFiles, slice_name: str | None = None):
    """core RocPoints of an evaluation's pairs (one sort, then every threshold is a binary search)."""
    return _points(str(files.pairs), artifacts.mtime(files.pairs), slice_name)


@st.cache_data(show_spinner=False, max_entries=16)
def _histograms(path: str, stamp: float, bins: int) -> dict[str, np.ndarray]:
    from core.metrics.verification import score_histograms

    pairs = _read_pairs(path, stamp)
    return score_histograms(pairs["score"].to_numpy(np.float64), pairs["label"].to_numpy(np.int64), bins=bins)


def histograms(files: EvalFiles, bins: int = 60) -> dict[str, np.ndarray]:
    return _histograms(str(files.pairs), artifacts.mtime(files.pairs), bins)


@st.cache_data(show_spinner=False, max_entries=4000)
def _thumbnail_array(path: str, size: int) -> np.ndarray | None:
    return artifacts.load_thumbnail(Path(path), size)


def _png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@st.cache_data(show_spinner=False, max_entries=4000)
def thumbnail(path: str, size: int = 160) -> bytes | None:
    """A file as a small PNG, encoded once: st.image then sends the bytes as they are on every rerun."""
    image = _thumbnail_array(path, size)
    return None if image is None else _png(image)


@st.cache_resource(show_spinner="Loading the model…", max_entries=2)
def _load_run(run_dir: str, stamp: float):
    from core.run import load_run

    return load_run(run_dir, device="cpu")


def load_run(run_dir: Path):
    """core.run.load_run on the CPU, once per checkpoint file version."""
    return _load_run(str(run_dir), artifacts.mtime(Path(run_dir) / "best.safetensors"))


def data_root(files: EvalFiles) -> Path | None:
    return artifacts.data_root(json_file(files.summary), json_file(files.manifest))


# ---------------------------------------------------------------------------------------- galleries
@dataclass
class GalleryItem:
    """One picture in a gallery: a file (relative to the data root) or an array, and its caption."""

    caption: str
    path: str | None = None
    image: np.ndarray | bytes | None = None


def gallery_ui(items: Sequence[GalleryItem], root: Path | None, columns: int = 6, size: int = 160,
               empty: str = "No images.") -> None:
    """Images in rows of `columns`, each with its caption; an unreadable file shows its name instead."""
    if not items:
        st.caption(empty)
        return
    for start in range(0, len(items), columns):
        cols = st.columns(columns)
        for col, item in zip(cols, items[start:start + columns]):
            with col:
                image = item.image
                if image is None and item.path is not None:
                    image = thumbnail(str(artifacts.image_path(root, item.path)), size)
                if image is None:
                    st.caption(f"(cannot read {item.path})\n\n{item.caption}")
                else:
                    # a lone image (a query) keeps its size; in a row, images share the width
                    st.image(image, caption=item.caption, width="stretch" if columns > 1 else size)


@st.cache_data(show_spinner=False, max_entries=2000)
def pair_image(root: Path | None, path_a: str, path_b: str, size: int = 128) -> bytes | None:
    """The two images of a pair side by side at one height, as one PNG (None if either is unreadable)."""
    a = _thumbnail_array(str(artifacts.image_path(root, path_a)), size)
    b = _thumbnail_array(str(artifacts.image_path(root, path_b)), size)
    if a is None or b is None:
        return None
    h = min(a.shape[0], b.shape[0])
    gap = np.full((h, 4, 3), 255, np.uint8)
    return _png(np.concatenate([a[:h], gap, b[:h]], axis=1))


def pair_gallery_ui(rows: pd.DataFrame, root: Path | None, caption: Callable[[pd.Series], str],
                    columns: int = 4, empty: str = "No pairs.") -> None:
    """Pairs (path_a, path_b) as side-by-side pictures with a caption each (usually the score)."""
    items = []
    for _, r in rows.iterrows():
        image = pair_image(root, r["path_a"], r["path_b"])
        # when a file is unreadable, fall back to the first path so the gallery names it
        items.append(GalleryItem(caption(r), path=None if image is not None else r["path_a"], image=image))
    gallery_ui(items, root, columns=columns, empty=empty)


# ------------------------------------------------------------------------------------- compute jobs
def run_job(job: Callable[[Progress], Any], done_message: str = "Done.") -> bool:
    """Run `job(progress)` under a progress bar; a MatchLabError is shown as one line, not a trace.

    On success the page reruns at once (st.rerun) so it reads the new files; returns False on failure.
    """
    bar = st.progress(0.0, text="starting…")

    def progress(fraction: float, message: str) -> None:
        bar.progress(min(max(float(fraction), 0.0), 1.0), text=message)

    try:
        result = job(progress)
    except MatchLabError as e:
        bar.empty()
        st.error(str(e))
        return False
    bar.empty()
    if isinstance(result, str):  # a job may name the evaluation key it wrote, to select it
        st.session_state["_next_eval_key"] = result
    st.toast(done_message)
    st.rerun()
    return True


def evaluation_job(run_dir: Path, data: str, pairs_file: str | None = None,
                   pairs_format: str | None = None) -> Callable[[Progress], str]:
    """A job that evaluates `run_dir` on `data` (core.evaluate) and returns the key it wrote."""

    def job(progress: Progress) -> str:
        from core.evaluate import evaluate_run

        folder = Path(data)
        if not folder.is_absolute() and not folder.is_dir() and (artifacts.REPO_ROOT / folder).is_dir():
            folder = artifacts.REPO_ROOT / folder
        if not folder.is_dir():
            raise MatchLabError(f"image folder {data} does not exist")
        summary = evaluate_run(run_dir, str(folder), pairs_file=pairs_file, pairs_format=pairs_format,
                               device="auto", progress=progress)
        return str(summary.get("key", ""))

    return job


def missing_ui(message: str, button: str, job: Callable[[Progress], Any], key: str) -> None:
    """Explain what is missing and offer a button that computes it (with a progress bar)."""
    st.info(message)
    if st.button(button, key=key, type="primary"):
        run_job(job)


def require_evaluation(ctx: Context) -> EvalFiles | None:
    """The chosen evaluation's files, or None after offering to evaluate the run now."""
    if ctx.run_dir is None:
        st.info("No run to show: train one first (README, first command).")
        return None
    if ctx.files is None:
        data = default_data(ctx.run_dir)
        missing_ui(f"Run **{ctx.run_name}** has not been evaluated yet.", f"Evaluate on {data}",
                   evaluation_job(ctx.run_dir, data), key="evaluate_now")
        return None
    return ctx.files


def per_image_evaluation_or_stop(ctx: Context, pair_message: str, needs: list[tuple[str, str]]) -> EvalFiles:
    """The chosen evaluation's files for a page about single images. Stops the page, after a message or
    a compute button, when there is no evaluation, when the run is a pair model (`pair_message`), or when
    an artifact in `needs` ((EvalFiles attribute, what it is) pairs) is missing."""
    files = require_evaluation(ctx)
    if files is None:
        st.stop()
    if json_file(files.summary).get("kind") == "pair":
        st.info(pair_message)
        st.stop()
    if not all(require_file(files, getattr(files, attr), what) for attr, what in needs):
        st.stop()
    return files


def require_file(files: EvalFiles, path: Path, what: str) -> bool:
    """True when `path` exists; else explain and offer to re-run this evaluation, which writes it."""
    if path.is_file():
        return True
    summary = json_file(files.summary)
    run_dir = files.dir.parent.parent
    missing_ui(f"This evaluation has no {what} (`{path.name}`).", "Re-run this evaluation",
               evaluation_job(run_dir, summary.get("data") or default_data(run_dir), summary.get("pairs_file"),
                              summary.get("pairs_format")), key=f"recompute_{path.name}")
    return False


# ------------------------------------------------------------------------------------- threshold
def _tau_key(ctx: Context) -> str:
    return f"tau::{ctx.run_name}::{ctx.key}"


def _slider_key(ctx: Context) -> str:
    return f"tau_slider::{ctx.run_name}::{ctx.key}"


def default_threshold(ctx: Context) -> float | None:
    """The run's recommended threshold (threshold.json), else the evaluation's EER threshold."""
    tau = artifacts.read_threshold(ctx.run_dir) if ctx.run_dir else None
    if tau is None and ctx.files is not None:
        tau = (json_file(ctx.files.summary).get("verification") or {}).get("eer_threshold")
    return None if tau is None else float(tau)


def current_threshold(ctx: Context, default: float) -> float:
    """The threshold chosen for this run and evaluation in this session (shared by all pages)."""
    return float(st.session_state.get(_tau_key(ctx), default))


def set_threshold(ctx: Context, value: float) -> None:
    """Button callback: move the threshold (a widget's state may be written in a callback, before the
    slider is drawn again, but not after it is drawn in the same run)."""
    st.session_state[_tau_key(ctx)] = float(value)
    st.session_state[_slider_key(ctx)] = float(value)


def threshold_slider_ui(ctx: Context, bounds: tuple[float, float], default: float,
                        label: str = "Threshold τ (accept when score ≥ τ)") -> float:
    """The threshold slider; its value survives page switches through a plain session key."""
    lo, hi = bounds
    wkey = _slider_key(ctx)
    # Seed or clamp the widget's value before it is drawn; passing value= as well would warn.
    st.session_state[wkey] = min(max(float(st.session_state.get(wkey, current_threshold(ctx, default))), lo), hi)
    value = float(st.slider(label, min_value=float(lo), max_value=float(hi), step=0.001, format="%.3f", key=wkey))
    st.session_state[_tau_key(ctx)] = value  # the page-independent copy the other pages read
    return value


# ---------------------------------------------------------------------------------------- numbers
def fmt_rate(value: float | None, digits: int = 4) -> str:
    """A rate as text; None (unreachable / not computed) as a dash."""
    return "–" if value is None else f"{value:.{digits}f}"


def metric_row(items: Sequence[tuple[str, str, str | None]]) -> None:
    """st.metric cards in one row: (label, value, help)."""
    for col, (label, value, help_text) in zip(st.columns(len(items)), items):
        col.metric(label, value, help=help_text)


def plot(fig, key: str | None = None, **kw: Any):
    """st.plotly_chart with the app's defaults (full width, no Plotly logo)."""
    return st.plotly_chart(fig, key=key, width="stretch", config={"displaylogo": False}, **kw)
