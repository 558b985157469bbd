"""Find run folders and read the evaluation artifacts that `core` wrote (docs/architecture.md).

Entry points: `list_run_dirs()`, `list_eval_keys(run_dir)`, `EvalFiles(eval_dir)` (the artifact paths),
`read_json`, `read_config`, `read_metrics`, `data_root(...)`, `load_thumbnail(path, size)`.
Plain Python with no Streamlit and no torch, so it is cheap to import on every page and easy to test;
the Streamlit caches in `dashboard.ui` wrap these functions.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_RUN = "orl_demo"
# Tests point the app at a temporary checkpoints folder through this variable.
CHECKPOINTS_ENV = "MATCHLAB_CHECKPOINTS"


def checkpoints_dir() -> Path:
    """The folder whose sub-folders are runs: $MATCHLAB_CHECKPOINTS or <repo>/checkpoints."""
    return Path(os.environ.get(CHECKPOINTS_ENV) or REPO_ROOT / "checkpoints")


def list_run_dirs(root: Path | None = None) -> list[Path]:
    """Run folders under `root` and inside its sweep folders (`<sweep>/<run>`), the bundled demo first,
    then by path.

    A run folder holds best.safetensors, config.yaml or eval/; globbed here rather than through
    core.run.list_runs because that module imports torch, which would cost every page a second.
    """
    root = checkpoints_dir() if root is None else Path(root)
    if not root.is_dir():
        return []
    runs = [p for p in [*root.glob("*"), *root.glob("*/*")]
            if p.is_dir() and any((p / f).exists() for f in ("best.safetensors", "config.yaml", "eval"))]
    return sorted(runs, key=lambda p: (p.name != DEMO_RUN, run_label(p, root)))


def run_label(run_dir: Path, root: Path | None = None) -> str:
    """How a run is named in pickers: its path under checkpoints/ (a sweep's runs as `<sweep>/<run>`)."""
    root = checkpoints_dir() if root is None else Path(root)
    try:
        return run_dir.relative_to(root).as_posix()
    except ValueError:
        return run_dir.name


def list_eval_keys(run_dir: Path) -> list[str]:
    """Evaluation keys (folders of eval/ holding summary.json), sorted."""
    ev = Path(run_dir) / "eval"
    if not ev.is_dir():
        return []
    return sorted(p.name for p in ev.iterdir() if (p / "summary.json").is_file())


@dataclass(frozen=True)
class EvalFiles:
    """Paths of the artifacts in one `eval/<key>/` folder (each may be missing)."""

    dir: Path

    @property
    def key(self) -> str:
        return self.dir.name

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"

    @property
    def manifest(self) -> Path:
        return self.dir / "manifest.json"

    @property
    def samples(self) -> Path:
        return self.dir / "samples.parquet"

    @property
    def embeddings(self) -> Path:
        return self.dir / "embeddings.npy"

    @property
    def logits(self) -> Path:
        return self.dir / "logits.npy"

    @property
    def pairs(self) -> Path:
        return self.dir / "pairs.parquet"

    @property
    def sweep(self) -> Path:
        return self.dir / "sweep.parquet"

    @property
    def roc(self) -> Path:
        return self.dir / "roc.parquet"

    @property
    def confusion(self) -> Path:
        return self.dir / "confusion.npy"

    @property
    def per_class(self) -> Path:
        return self.dir / "per_class.parquet"

    @property
    def ablation(self) -> Path:
        return self.dir / "ablation" / "ablation.json"


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; {} when the file is missing."""
    path = Path(path)
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config.yaml as a dict ({} when missing)."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """metrics.jsonl as one row per epoch; a line cut short by a killed run is skipped, not fatal."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return pd.DataFrame(rows)


def read_threshold(run_dir: Path) -> float | None:
    """The run's recommended verification threshold (threshold.json), if any."""
    value = read_json(Path(run_dir) / "threshold.json").get("threshold")
    return None if value is None else float(value)


def read_split(run_dir: Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / "split.json")


def checkpoint_hash(run_dir: Path, manifest: dict[str, Any] | None = None) -> str:
    """The checkpoint hash an evaluation was made with (manifest), else sha256[:16] of best.safetensors,
    the same rule as core.run.file_hash (not imported: it would pull torch onto the page path)."""
    if manifest:
        for k in ("checkpoint_hash", "checkpoint"):
            if manifest.get(k):
                return str(manifest[k])
    weights = Path(run_dir) / "best.safetensors"
    if not weights.is_file():
        return ""
    h = hashlib.sha256()
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


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
