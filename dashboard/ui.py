"""Shared Streamlit pieces: the sidebar run/evaluation pickers, cached artifact readers, image galleries,
the compute-it-now button with a progress bar, and the threshold shared by the Verification and Live pages.

Pages call `context()` for the sidebar's choice and the `*_ui` functions to draw. Tables are cached with
st.cache_data, big arrays, ROC points and models with st.cache_resource (cache_data would copy them on
every rerun); each cache key holds the file's mtime, so a recomputed artifact is read again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from core.errors import MatchLabError
from core.layout import EvalFiles, RunFiles
from core.progress import Progress
from dashboard import access, artifacts


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
        return RunFiles(self.run_dir).eval(self.key) if self.run_dir and self.key else None


def context() -> Context:
    """The sidebar's current choice (set by sidebar_ui in app.py before the page runs)."""
    return st.session_state.get("_context") or Context(None, None)


def sidebar_ui() -> Context:
    """Run and evaluation pickers, plus a form to evaluate the run on another dataset."""
    runs = artifacts.list_run_dirs()
    notes = apply_url_state(runs)
    for note in notes:
        st.info(note, icon=":material/link_off:")
    flash = st.session_state.pop("_flash", None)
    if flash:
        st.success(flash, icon=":material/check_circle:")
    with st.sidebar:
        if not runs:
            st.warning(
                f"No runs under {artifacts.checkpoints_dir()}. Train one with `python -m core train configs/orl.yaml`."
            )
            ctx = Context(None, None)
        else:
            by_name = {artifacts.run_label(r): r for r in runs}
            if st.session_state.get("run") not in by_name:
                st.session_state.pop("run", None)
            name = st.selectbox(
                "Run",
                list(by_name),
                key="run",
                help="a folder under checkpoints/",
                format_func=lambda n: n + artifacts.run_badge(by_name[n]),
            )
            run_dir = by_name[name]
            keys = artifacts.list_eval_keys(run_dir)
            pending = st.session_state.pop("_next_eval_key", None)
            if pending in keys:
                st.session_state["eval_key"] = pending
            elif st.session_state.get("eval_key") not in keys:
                st.session_state.pop("eval_key", None)
            if keys and "eval_key" not in st.session_state:
                # open on the run's most recent evaluation (for the bundled demo, the one it trained on)
                latest = last_evaluation(run_dir)
                st.session_state["eval_key"] = latest if latest in keys else keys[0]
            key = (
                st.selectbox(
                    "Evaluation",
                    keys,
                    key="eval_key",
                    help="dataset or pairs protocol the run was evaluated on (eval/<key>/)",
                )
                if keys
                else None
            )
            if not keys:
                st.caption("No evaluation yet: any page offers to compute one.")
            ctx = Context(run_dir, key)
            st.session_state["_context"] = ctx  # before anything below can fail, so failure_ui knows the run
            _evaluate_other_ui(run_dir)
            files = ctx.files
            if files is not None:
                summary = json_file(files.summary)
                st.caption(
                    f"checkpoint `{summary.get('checkpoint_hash', '?')}` · {summary.get('model', '')} · "
                    f"{summary.get('n_images', '?')} images"
                )
                _stale_evaluation_ui(run_dir, summary)
    st.session_state["_context"] = ctx
    url_tau = st.session_state.pop("_url_tau", None)
    if url_tau is not None and ctx.key:
        set_threshold(ctx, url_tau)  # the slider clamps it to the scores' range when drawn
    return ctx


@st.cache_data(show_spinner=False, max_entries=64)
def _weights_hash(path: str, mtime_ns: int, size: int) -> str:
    """file_hash of a model file, once per version of it (the key holds its modification time and size)."""
    from core.layout import file_hash

    return file_hash(path)


def _stale_evaluation_ui(run_dir: Path, summary: dict[str, Any]) -> None:
    """Warn when the chosen evaluation describes other weights than the run holds now (it was resumed or
    retrained since), and offer to evaluate the current weights the same way."""
    from core.layout import model_file

    weights = model_file(run_dir)
    made = summary.get("checkpoint_hash")
    if not made or not weights.is_file():
        return
    stat = weights.stat()
    now = _weights_hash(str(weights), stat.st_mtime_ns, stat.st_size)
    if now == made:
        return
    st.warning(
        f"This evaluation was made with checkpoint `{made}`; the run's weights are now `{now}`: "
        "every page shows the older weights until it is evaluated again.",
        icon=":material/update:",
    )
    if summary.get("data") and st.button("Evaluate the current weights", key="re_evaluate"):
        run_job(rerun_job(run_dir, summary), done_message=f"Evaluated checkpoint `{now}`.")


def _evaluate_other_ui(run_dir: Path) -> None:
    from core.pairs import PAIR_FORMATS  # numpy only: cheap

    label = artifacts.run_label(run_dir)
    with st.expander("Evaluate on another dataset"):
        # keyed by run: a form opened on another run must not keep that run's folder
        data = st.text_input(
            "Image folder",
            value=default_data(run_dir),
            key=f"new_eval_data::{label}",
            help="a folder under the data roots: " + ", ".join(access.short_path(r) for r in allowed_roots(run_dir)),
        )
        fmt = st.selectbox(
            "Pairs protocol",
            ["", *PAIR_FORMATS],
            key="new_eval_format",
            format_func=lambda f: f"{f}: {PAIR_FORMATS[f].help}" if f else "generated from the folder",
        )
        pairs_file = st.text_input("Pairs file (lfw, csv, cfp: the protocol file or folder)", key="new_eval_pairs")
        if st.button("Evaluate", key="new_eval_go"):
            try:
                roots = allowed_roots(run_dir)
                folder = access.check_under_roots(data, roots, "image folder")
                pairs = access.check_under_roots(pairs_file, roots, "pairs file") if pairs_file.strip() else None
            except MatchLabError as e:
                st.error(str(e))
                return
            run_job(
                evaluation_job(run_dir, str(folder), str(pairs) if pairs else None, fmt or None),
                done_message=f"Evaluated {label} on {data}.",
            )


@st.cache_resource(show_spinner=False, ttl=60)
def _secret_roots() -> tuple[str, ...]:
    """`data_roots` from .streamlit/secrets.toml, read at most once a minute: reading st.secrets holds
    Streamlit's config lock while it looks for the files, and every element of every session waits on that
    lock (py-spy, 20 viewers of Verification: most of the server's time was spent waiting there)."""
    try:
        return tuple(str(r) for r in st.secrets.get("data_roots", []) or [])
    except Exception:  # noqa: BLE001  (no secrets.toml, or an unreadable one: no extra roots)
        return ()


def allowed_roots(run_dir: Path) -> list[Path]:
    """access.data_roots for this run, plus `data_roots` from .streamlit/secrets.toml when there is one."""
    return access.data_roots(artifacts.read_config(run_dir), extra=list(_secret_roots()))


def last_evaluation(run_dir: Path) -> str | None:
    """The key of the run's most recently written evaluation (summary.json modification time)."""
    keys = artifacts.list_eval_keys(run_dir)
    return max(keys, key=lambda k: artifacts.mtime(RunFiles(run_dir).eval(k).summary)) if keys else None


def default_data(run_dir: Path) -> str:
    """The folder the sidebar's form and the "Evaluate" buttons offer first for a run.

    The data of its last evaluation; else its own data when that holds identities it did not train on: the
    training folder when split.json sets test identities aside, else a test_* / val_* folder beside the
    training folder (shoes/train -> shoes/test_m). Never the training folder alone: every pair there was
    seen in training. "" when there is nothing sensible to offer.
    """
    latest = last_evaluation(run_dir)
    if latest:
        data = json_file(RunFiles(run_dir).eval(latest).summary).get("data")
        if data:
            return str(data)
    train = (artifacts.read_config(run_dir).get("data") or {}).get("train")
    if not train:
        return ""
    if artifacts.read_split(run_dir).get("test"):
        return str(train)
    folder = Path(str(train))
    base = folder if folder.is_absolute() else artifacts.REPO_ROOT / folder
    siblings = sorted(
        p.name for p in base.parent.glob("*") if p.is_dir() and p != base and p.name.lower().startswith(("test", "val"))
    )
    return str(folder.parent / siblings[0]) if siblings else ""


# ------------------------------------------------------------------------------- page-level pieces
def failure_ui(error: MatchLabError) -> None:
    """An expected failure while drawing a page (a corrupt artifact, a bad config) as one line, with a
    button that re-runs the evaluation when the failing file belongs to the chosen one."""
    st.error(str(error), icon=":material/error:")
    ctx = context()
    files = ctx.files
    if files is None or str(files.dir) not in str(error):
        return
    summary: dict[str, Any] = {}
    for path in (files.summary, files.manifest):  # the manifest names the data too, when the summary is lost
        try:
            summary = {**json_file(path), **summary}
        except MatchLabError:
            continue
    data = summary.get("data")
    if data and st.button("Re-run this evaluation", key="recompute_after_error", type="primary"):
        run_job(rerun_job(ctx.run_dir, summary), done_message=f"Evaluated {ctx.run_name} on {data} again.")


# At 800 px the metric cards of a 4- to 6-card row cut their values ("6.57…"), and button labels their text:
# let the columns of a row wrap onto the next line once they would get narrower than 11rem. Streamlit hides
# the sidebar by itself only below 768 px; below 900 px it is collapsed once per page load, so the page gets
# the width (the user can open it again).
NARROW_SCREEN_HTML = """
<style>
[data-testid="stHorizontalBlock"] { flex-wrap: wrap; }
[data-testid="stHorizontalBlock"] > [data-testid="stColumn"] { min-width: min(11rem, 100%); }
[data-testid="stMetricValue"], [data-testid="stMetricValue"] * {
  white-space: normal !important; overflow: visible !important; text-overflow: clip !important; overflow-wrap: anywhere;
}
@media (max-width: 1000px) { [data-testid="stMetricValue"] { font-size: 1.6rem; line-height: 1.25; } }
</style>
<script>
(function () {
  if (window.innerWidth >= 900 || window.matchlabNarrowCollapsed) return;
  window.matchlabNarrowCollapsed = true;  // once per page load: the user may open it again
  let tries = 0;
  const timer = setInterval(function () {
    const bar = document.querySelector('[data-testid="stSidebar"]');
    const button = document.querySelector('[data-testid="stSidebarCollapseButton"] button');
    if ((bar && bar.getAttribute("data-collapsed") === "true") || tries++ > 100) { clearInterval(timer); return; }
    if (button) {
      button.click();
      // Streamlit remembers a collapsed sidebar in localStorage: forget this automatic one, so a wider
      // window later opens with the sidebar as usual
      Object.keys(localStorage).filter(k => k.startsWith("stSidebarCollapsed")).forEach(k => localStorage.removeItem(k));
      clearInterval(timer);
    }
  }, 100);
})();
</script>
"""


def narrow_screen_ui() -> None:
    """The CSS and script above (zero height on the page)."""
    st.html(NARROW_SCREEN_HTML, unsafe_allow_javascript=True)


# ------------------------------------------------------------------------------------- URL state
PAGE_NAMES = tuple(sorted(p.stem for p in (Path(__file__).parent / "app_pages").glob("*.py")))


def apply_url_state(runs: Sequence[Path]) -> list[str]:
    """On a session's first run, take run, eval, tau (and page) from the URL's query parameters.

    `?run=orl_demo&eval=orl_faces&tau=0.41` selects that run, evaluation and threshold, so a reload keeps
    the view and a link can be shared; the page is the URL's path (/verification), or `page=`. A value that
    does not exist here falls back to the default, with a one-line note (returned) saying so.
    """
    if st.session_state.get("_url_applied"):
        return []
    st.session_state["_url_applied"] = True
    params = st.query_params
    by_name = {artifacts.run_label(r): r for r in runs}
    notes = []
    run = params.get("run")
    if run is not None and run not in by_name:
        notes.append(f"The link's run `{run}` is not here; showing another run.")
        run = None
    if run is not None:
        st.session_state["run"] = run
    chosen = by_name.get(run) if run else (runs[0] if runs else None)
    key = params.get("eval")
    if key is not None and chosen is not None:
        if key in artifacts.list_eval_keys(chosen):
            st.session_state["_next_eval_key"] = key
        else:
            notes.append(
                f"The link's evaluation `{key}` does not exist for run `{artifacts.run_label(chosen)}`; "
                "showing its latest evaluation."
            )
            key = None
    tau = params.get("tau")
    if tau is not None:
        try:
            value = float(tau)
            if not np.isfinite(value):
                raise ValueError(tau)
            st.session_state["_url_tau"] = value
        except ValueError:
            notes.append(f"The link's threshold `tau={tau}` is not a number; using the run's default.")
    page = params.get("page")
    if page is not None and page not in PAGE_NAMES:
        notes.append(f"The link's page `{page}` does not exist; showing the Overview.")
    elif page is not None:
        st.switch_page(f"app_pages/{page}.py", query_params={k: v for k, v in params.to_dict().items() if k != "page"})
    return notes


def url_state(ctx: Context) -> dict[str, str]:
    """The query parameters that describe the current view (written back after every run)."""
    out: dict[str, str] = {}
    if ctx.run_dir is not None:
        out["run"] = artifacts.run_label(ctx.run_dir)
    if ctx.key:
        out["eval"] = ctx.key
    if ctx.run_dir is not None and _tau_key(ctx) in st.session_state:
        out["tau"] = f"{float(st.session_state[_tau_key(ctx)]):.4f}"
    return out


def write_url_state() -> None:
    """Put url_state(context()) into the address bar when it changed (st.query_params is per session)."""
    wanted = url_state(context())
    if st.query_params.to_dict() != wanted:
        st.query_params.from_dict(wanted)


# ---------------------------------------------------------------------------------- cached readers
def unreadable(path: str | Path, what: str) -> MatchLabError:
    """The one-line error for an artifact that exists but cannot be parsed. It names the file and what to
    do, never the parser's message (which may quote the file's contents)."""
    path = Path(path)
    return MatchLabError(
        f"{path.name} in {path.parent} is not a readable {what} (corrupt or cut short); "
        "re-run the command that writes it (the button below re-runs this evaluation)"
    )


@st.cache_data(show_spinner=False, max_entries=64)
def _read_json(path: str, stamp: float) -> dict[str, Any]:
    try:
        data = artifacts.read_json(Path(path))
    except (ValueError, UnicodeDecodeError):
        raise unreadable(path, "JSON file") from None
    if not isinstance(data, dict):
        raise unreadable(path, "JSON object")
    return data


def json_file(path: Path) -> dict[str, Any]:
    """A JSON artifact ({} when missing), re-read when the file changes."""
    return _read_json(str(path), artifacts.mtime(path))


def _parquet(path: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError, TypeError, ImportError):  # pyarrow's ArrowInvalid is a ValueError
        raise unreadable(path, "parquet table") from None


@st.cache_data(show_spinner=False, max_entries=32)
def _read_table(path: str, stamp: float) -> pd.DataFrame:
    return _parquet(path)


def table(path: Path) -> pd.DataFrame | None:
    """A parquet artifact (a copy the page may change), or None when missing."""
    return _read_table(str(path), artifacts.mtime(path)) if Path(path).is_file() else None


@st.cache_resource(show_spinner=False, max_entries=8)
def _read_pairs(path: str, stamp: float) -> pd.DataFrame:
    pairs = _parquet(path)
    if not {"path_a", "path_b", "label", "score"} <= set(pairs.columns):
        raise unreadable(path, "pairs table (path_a, path_b, label, score)")
    return pairs


def pairs_table(path: Path) -> pd.DataFrame | None:
    """pairs.parquet, shared read-only (millions of rows: st.cache_data would copy it on every rerun)."""
    return _read_pairs(str(path), artifacts.mtime(path)) if Path(path).is_file() else None


@st.cache_resource(show_spinner=False, max_entries=8)
def _read_array(path: str, stamp: float) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)  # never unpickle a file from a run folder
    except (OSError, ValueError, EOFError):
        raise unreadable(path, "numpy array") from None


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


@st.cache_resource(show_spinner=False, max_entries=128)
def shared_result(key: tuple, _build: Callable[[], Any]) -> Any:
    """A Plotly figure or table built once per `key` and shared, read-only, by every session and rerun.

    Building a figure (plotly's validation of every trace and layout update) costs more than drawing it,
    and 20 viewers of one page want the same figures and tables: the key must hold everything the result
    depends on (artifact paths and mtimes, τ, options); `_build` (not hashed) makes it on a miss."""
    return _build()


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
def _load_model(run_dir: str, stamp: float):
    from core.embedder import load_model

    return load_model(run_dir, device="cpu")


def load_model(run_dir: Path):
    """core.embedder.load_model on the CPU (an Embedder, or a Run for a pair model), once per model file
    version."""
    from core.layout import model_file

    return _load_model(str(run_dir), artifacts.mtime(model_file(run_dir)))


def data_root(files: EvalFiles) -> Path | None:
    return artifacts.data_root(json_file(files.summary), json_file(files.manifest))


# ---------------------------------------------------------------------------------------- galleries
@dataclass
class GalleryItem:
    """One picture in a gallery: a file (relative to the data root) or an array, and its caption."""

    caption: str
    path: str | None = None
    image: np.ndarray | bytes | None = None


def gallery_ui(items: Sequence[GalleryItem], root: Path | None, size: int = 160, empty: str = "No images.") -> None:
    """Images side by side, wrapping, each with its caption; an unreadable file shows its name instead.

    One st.image element for the whole gallery: every element costs each viewer's session a websocket message
    (and Streamlit's per-message bookkeeping), and galleries built from columns of single images were about a
    third of the Verification page's server time with several viewers at once.
    """
    if not items:
        st.caption(empty)
        return
    images, captions, unreadable = [], [], []
    for item in items:
        image = item.image
        if image is None and item.path is not None:
            image = thumbnail(str(artifacts.image_path(root, item.path)), size)
        if image is None:
            unreadable.append(f"(cannot read {item.path}) {item.caption}")
        else:
            images.append(image)
            captions.append(item.caption)
    if images:
        # PNG as given: with "auto" Streamlit decodes and re-encodes every thumbnail on every run
        st.image(images, caption=captions, width="content", output_format="PNG")
    for line in unreadable:
        st.caption(line)


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


def pair_gallery_ui(
    rows: pd.DataFrame,
    root: Path | None,
    caption: Callable[[pd.Series], str],
    empty: str = "No pairs.",
) -> None:
    """Pairs (path_a, path_b) as side-by-side pictures with a caption each (usually the score)."""
    items = []
    for _, r in rows.iterrows():
        image = pair_image(root, r["path_a"], r["path_b"])
        # when a file is unreadable, fall back to the first path so the gallery names it
        items.append(GalleryItem(caption(r), path=None if image is not None else r["path_a"], image=image))
    gallery_ui(items, root, empty=empty)


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
    st.session_state["_flash"] = done_message  # shown above the page after the rerun (a toast would be lost)
    st.rerun()
    return True


def evaluation_job(
    run_dir: Path, data: str, pairs_file: str | None = None, pairs_format: str | None = None, **options: Any
) -> Callable[[Progress], str]:
    """A job that evaluates `run_dir` on `data` (core.evaluate) and returns the key it wrote.
    options: evaluate_run's tta, crop and align, as a summary.json records them."""

    def job(progress: Progress) -> str:
        from core.evaluate import evaluate_run

        folder = Path(data)
        if not folder.is_absolute() and not folder.is_dir() and (artifacts.REPO_ROOT / folder).is_dir():
            folder = artifacts.REPO_ROOT / folder
        if not folder.is_dir():
            raise MatchLabError(f"image folder {data} does not exist")
        summary = evaluate_run(
            run_dir,
            str(folder),
            pairs_file=pairs_file,
            pairs_format=pairs_format,
            device="auto",
            progress=progress,
            **options,
        )
        return str(summary.get("key", ""))

    return job


def rerun_job(run_dir: Path, summary: dict[str, Any]) -> Callable[[Progress], str]:
    """A job that repeats the evaluation a summary.json (or manifest.json) describes: the same data, pairs,
    test-time augmentation, crop and alignment, so it writes the same eval/<key>/ again."""
    return evaluation_job(
        run_dir,
        str(summary.get("data") or default_data(run_dir)),
        summary.get("pairs_file"),
        summary.get("pairs_format"),
        tta=summary.get("tta"),
        crop=summary.get("crop"),
        align=summary.get("align"),
    )


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
        if not data:
            st.info(
                f"Run **{ctx.run_name}** has not been evaluated yet, and it has no held-out data of its own: "
                "choose a folder under the sidebar's **Evaluate on another dataset**."
            )
            return None
        missing_ui(
            f"Run **{ctx.run_name}** has not been evaluated yet.",
            f"Evaluate on {data}",
            evaluation_job(ctx.run_dir, data),
            key="evaluate_now",
        )
        return None
    return ctx.files


def per_image_evaluation_or_stop(ctx: Context, pair_message: str, needs: list[tuple[str, str]]) -> EvalFiles:
    """The chosen evaluation's files for a page about single images. Stops the page, after a message or
    a compute button, when there is no evaluation, when the run is a pair model (`pair_message`), or when
    an artifact in `needs` ((EvalFiles attribute, what it is) pairs) is missing."""
    files = require_evaluation(ctx)
    if files is None:
        st.stop()
    kind = json_file(files.summary).get("kind")
    if kind == "pair":
        st.info(pair_message)
        st.stop()
    if kind == "scores":
        st.info(
            "This run holds imported pair scores: there is no image-by-image result to show here. Import the "
            "model's embeddings (python -m core import-embeddings) or the model itself (import-model) for this "
            "page; Verification and Compare work on the scores."
        )
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
    missing_ui(
        f"This evaluation has no {what} (`{path.name}`).",
        "Re-run this evaluation",
        rerun_job(run_dir, summary),
        key=f"recompute_{path.name}",
    )
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


def threshold_transfer_ui(ctx: Context, points: Any) -> None:
    """The run's recommended τ on this evaluation beside its rates on the validation pairs it was chosen on
    (views.threshold_transfer): a caption, or a warning when it does not carry over to this data."""
    from dashboard import views

    transfer = views.threshold_transfer(points, artifacts.threshold_record(ctx.run_dir)) if ctx.run_dir else None
    if transfer is None:
        return
    text = (
        f"The run's recommended τ {transfer['threshold']:.4f} was chosen ({transfer['rule'] or 'rule not recorded'})"
        f" on its validation pairs, where it gave FAR {transfer['val_far']:.1%} and FRR {transfer['val_frr']:.1%};"
        f" on these pairs it gives FAR {transfer['far']:.1%} and FRR {transfer['frr']:.1%}."
    )
    if not transfer["moved"]:
        st.caption(text)
        return
    eer_tau = views.threshold_presets(points)["eer"]
    st.warning(
        text + " It does not carry over to this data (over twice the errors of one kind): start from τ at EER"
        f" ({eer_tau:.4f}) or a target FAR here, and validate the threshold you deploy on data like the deployment's.",
        icon=":material/warning:",
    )


def current_threshold(ctx: Context, default: float) -> float:
    """The threshold chosen for this run and evaluation in this session (shared by all pages)."""
    return float(st.session_state.get(_tau_key(ctx), default))


def set_threshold(ctx: Context, value: float, chosen_by: str = "manual", target_far: float | None = None) -> None:
    """Button callback: move the threshold (a widget's state may be written in a callback, before the
    slider is drawn again, but not after it is drawn in the same run). `chosen_by` and `target_far` say
    how it was chosen, for the exported operating point."""
    st.session_state[_tau_key(ctx)] = float(value)
    st.session_state[_slider_key(ctx)] = float(value)
    st.session_state[f"tau_origin::{ctx.run_name}::{ctx.key}"] = (float(value), chosen_by, target_far)


def threshold_choice(ctx: Context, tau: float) -> tuple[str, float | None]:
    """(chosen_by, target FAR) of the threshold now shown: how the last button set it, or ("manual", None)
    once the slider has moved away from that value."""
    value, chosen_by, target_far = st.session_state.get(
        f"tau_origin::{ctx.run_name}::{ctx.key}", (None, "manual", None)
    )
    if value is None or abs(float(value) - float(tau)) > 1e-9:
        return "manual", None
    return chosen_by, target_far


def threshold_slider_ui(
    ctx: Context, bounds: tuple[float, float], default: float, label: str = "Threshold τ (accept when score ≥ τ)"
) -> float:
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
