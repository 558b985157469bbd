"""Find run folders and read the evaluation artifacts that `core` wrote, through `core.layout`.

Entry points: `list_run_dirs()`, `list_eval_keys(run_dir)`, `EvalFiles(eval_dir)` (the artifact paths),
`read_json`, `read_config`, `read_metrics`, `data_root(...)`, `load_thumbnail(path, size)`. File names and
readers live in core.layout (the one place that knows the folder layout); this module adds what only the
app needs (the checkpoints root, pickers' order and labels, thumbnails). No Streamlit and no torch, so it
is cheap to import on every page; the Streamlit caches in `dashboard.ui` wrap these functions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core import layout
from core.errors import MatchLabError
from core.layout import EvalFiles, read_config, read_json, read_split  # noqa: F401  (the pages' names for them)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_RUN = "orl_demo"
# Issue 18: the bundled face model for real photos (checkpoints/faces_cfp) opens first when present, then
# the ORL demo; the pickers list every other run after them.
BUNDLED_RUNS = ("faces_cfp", DEMO_RUN)
# Tests point the app at a temporary checkpoints folder through this variable.
CHECKPOINTS_ENV = "MATCHLAB_CHECKPOINTS"


def checkpoints_dir() -> Path:
    """The folder whose sub-folders are runs: $MATCHLAB_CHECKPOINTS or <repo>/checkpoints."""
    return Path(os.environ.get(CHECKPOINTS_ENV) or REPO_ROOT / "checkpoints")


def list_run_dirs(root: Path | None = None) -> list[Path]:
    """Run folders under `root` and inside its sweep folders (`<sweep>/<run>`), the bundled runs first
    (BUNDLED_RUNS order), then by path (core.layout.list_runs)."""
    root = checkpoints_dir() if root is None else Path(root)
    first = {name: i for i, name in enumerate(BUNDLED_RUNS)}
    return sorted(layout.list_runs(root), key=lambda p: (first.get(p.name, len(first)), run_label(p, root)))


# Run folders that hold no MatchLab training (issue 11): an imported model file, or results computed elsewhere.
IMPORTED_KINDS = {"external": "imported model", "scores": "imported scores", "embeddings": "imported embeddings"}


def imported_kind(run_dir: Path) -> str:
    """ "external", "scores" or "embeddings" for an imported run folder (config.yaml `kind`), else ""."""
    try:
        kind = str(read_config(run_dir).get("kind") or "")
    except MatchLabError:  # a damaged config.yaml is the Overview's to report, not the picker's
        return ""
    return kind if kind in IMPORTED_KINDS else ""


def run_badge(run_dir: Path) -> str:
    """What the run picker appends to an imported run's name, e.g. " · imported onnx"."""
    kind = imported_kind(run_dir)
    if kind == "external":
        fmt = (read_config(run_dir).get("external") or {}).get("format", "")
        return f" · imported {fmt}".rstrip()
    return f" · {IMPORTED_KINDS[kind]}" if kind else ""


def run_label(run_dir: Path, root: Path | None = None) -> str:
    """How a run is named in pickers: its path under checkpoints/ (a sweep's runs as `<sweep>/<run>`)."""
    root = checkpoints_dir() if root is None else Path(root)
    try:
        return run_dir.relative_to(root).as_posix()
    except ValueError:
        return run_dir.name


def list_eval_keys(run_dir: Path) -> list[str]:
    """Evaluation keys (folders of eval/ holding summary.json), sorted."""
    return layout.list_evaluations(run_dir)


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """metrics.jsonl as one row per epoch; a line cut short by a killed run is skipped, not fatal."""
    return pd.DataFrame(layout.read_metrics(run_dir))


def threshold_record(run_dir: Path) -> dict[str, Any]:
    """threshold.json as written by training ({} when missing): threshold, rule, val_far, val_frr, ..."""
    return layout.read_threshold(run_dir)


def read_threshold(run_dir: Path) -> float | None:
    """The run's recommended verification threshold (threshold.json), if any."""
    value = threshold_record(run_dir).get("threshold")
    return None if value is None else float(value)


def checkpoint_hash(run_dir: Path, manifest: dict[str, Any] | None = None) -> str:
    """The checkpoint hash an evaluation was made with (manifest), else that of the run's model file now."""
    if manifest:
        for k in ("checkpoint_hash", "checkpoint"):
            if manifest.get(k):
                return str(manifest[k])
    weights = layout.model_file(run_dir)
    return layout.file_hash(weights) if weights.is_file() else ""


def data_root(summary: dict[str, Any], manifest: dict[str, Any] | None = None) -> Path | None:
    """The folder that the relative image paths of an evaluation start from.

    summary["data"] (or manifest["data"]) may be absolute, relative to the working directory the
    evaluation ran in, or relative to the repository; the first that exists wins.
    """
    raw = summary.get("data") or (manifest or {}).get("data")
    if not raw:
        return None
    p = Path(raw)
    # The last candidate serves a bundled run evaluated in another checkout (absolute path elsewhere).
    for candidate in (p, Path.cwd() / p, REPO_ROOT / p, REPO_ROOT / "data" / p.name):
        if candidate.is_dir():
            return candidate.resolve()
    return p


def image_path(root: Path | None, rel: str) -> Path:
    return Path(rel) if root is None else Path(root) / rel


def load_thumbnail(path: Path, size: int = 160) -> np.ndarray | None:
    """(H, W, 3) uint8 RGB, longest side <= size, through core's decode path (EXIF, 16-bit, alpha);
    None when the file is missing or unreadable, so a gallery shows a gap instead of failing."""
    from core.data.images import load_rgb
    from core.errors import MatchLabError

    try:
        im = load_rgb(path, draft_size=size)
    except MatchLabError:
        return None
    im.thumbnail((size, size))
    return np.asarray(im)


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the header only; None when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError):
        return None


def mtime(path: Path) -> float:
    """Modification time used as a cache key, so a recomputed artifact is re-read; 0 when missing."""
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return 0.0
