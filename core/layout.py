"""Run and evaluation folders: every file name, where it lives, and the small readers (torch-free).

Entry points: `RunFiles(run_dir)` and `EvalFiles(eval_dir)` (one Path per artifact), `eval_key(...)`,
`list_runs(root)`, `list_evaluations(run_dir)`, `file_hash(path)` and the readers `read_json`,
`read_summary`, `read_config`, `read_metrics`, `read_threshold`. The only module that knows these names:
core writes through it and the dashboard reads through it, so a new artifact is a one-file change. It
imports no torch, so every dashboard page can use it for free.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import MatchLabError

# ---- a run folder: checkpoints/<run>/ (or checkpoints/<sweep>/<run>/)
CONFIG = "config.yaml"  # the resolved recipe (or, for an imported model, kind: external + preprocess)
METRICS = "metrics.jsonl"  # one JSON line per epoch
BEST = "best.safetensors"  # the chosen weights with their metadata (core.run)
LAST = "last.pt"  # the resumable training state
SPLIT = "split.json"  # which images were train / val / test
THRESHOLD = "threshold.json"  # the recommended verification threshold
EVAL_DIR = "eval"  # eval/<key>/: one folder per evaluation

# ---- an evaluation folder: <run>/eval/<key>/
SUMMARY = "summary.json"  # every headline number (what `evaluate --json` prints); marks the folder whole
MANIFEST = "manifest.json"  # checkpoint and dataset hashes, versions, options
SAMPLES = "samples.parquet"  # one row per image: path, label, prediction, split
EMBEDDINGS = "embeddings.npy"  # (N, D) float32, row i = samples' sample_id i
LOGITS = "logits.npy"  # (N, C) float32 when the model has a class head
PAIRS = "pairs.parquet"  # one row per scored pair
CONFUSION = "confusion.npy"  # (C, C) int64
PER_CLASS = "per_class.parquet"
ABLATION_DIR = "ablation"  # ablation/ablation.json and ablation/examples/*.png
ABLATION = "ablation.json"
ABLATION_EXAMPLES = "examples"  # ablation/examples/<region><crop>_<i>.png: the model's inputs
PROJECTIONS_DIR = "projections"  # cached 2-D projections of the embeddings (core.projection)
SHARDS_DIR = "shards"  # `extract`'s default artifact folder: embeddings-<r>-of-<N>.npy, samples.parquet, index.json
SHARDS_INDEX = "index.json"  # a sharded artifact's table of contents, written last
CALIBRATION = "calibration.json"  # score -> P(same) map fitted on this evaluation's pairs, ECE, Cllr (core.assurance)
GROUPS = "groups.json"  # FNMR / FMR per group at one threshold, cross-group FMR, ratios (core.assurance)
OPERATING_POINT = "operating_point.json"  # the dashboard's export: threshold, rule, interval, data

# ---- a data audit: <run>/eval/<key>/audit/ (core.audit)
AUDIT_DIR = "audit"
AUDIT_SUMMARY = "summary.json"  # counts per issue, leakage, settings, stage timings; written last
AUDIT_IMAGES = "images.parquet"  # one row per image: label score, suggestion, outlier, quality, flags
AUDIT_ISSUES = "issues.parquet"  # one ranked list per issue type (issue, rank, sample_id, path, score, ...)
AUDIT_DUPLICATES = "duplicates.parquet"  # exact / near duplicate pairs with their splits and leak flag
AUDIT_IDENTITIES = "identities.parquet"  # per identity: size, split, closest other identity, match, leak
AUDIT_NEIGHBOURS = "neighbours.npy"  # (N, k) int64 nearest other images
AUDIT_NEIGHBOUR_SCORES = "neighbour_scores.npy"  # (N, k) float32 their cosines
AUDIT_REJECT = "reject.parquet"  # error-versus-reject curves: measure, rejected, fnmr, fmr
AUDIT_QUALITY_BINS = "quality_bins.parquet"  # verification per sharpness bin
AUDIT_FIXES = "fixes.csv"  # path, issue, suggested_label, action


@dataclass(frozen=True)
class RunFiles:
    """Paths of the files in one run folder (each may be missing)."""

    dir: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "dir", Path(self.dir))

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def config(self) -> Path:
        return self.dir / CONFIG

    @property
    def metrics(self) -> Path:
        return self.dir / METRICS

    @property
    def best(self) -> Path:
        return self.dir / BEST

    @property
    def last(self) -> Path:
        return self.dir / LAST

    @property
    def split(self) -> Path:
        return self.dir / SPLIT

    @property
    def threshold(self) -> Path:
        return self.dir / THRESHOLD

    @property
    def eval_root(self) -> Path:
        return self.dir / EVAL_DIR

    def eval(self, key: str) -> EvalFiles:
        """The evaluation folder eval/<key>/ of this run."""
        return EvalFiles(self.dir / EVAL_DIR / key)


@dataclass(frozen=True)
class EvalFiles:
    """Paths of the artifacts in one `eval/<key>/` folder (each may be missing)."""

    dir: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "dir", Path(self.dir))

    @property
    def key(self) -> str:
        return self.dir.name

    @property
    def summary(self) -> Path:
        return self.dir / SUMMARY

    @property
    def manifest(self) -> Path:
        return self.dir / MANIFEST

    @property
    def samples(self) -> Path:
        return self.dir / SAMPLES

    @property
    def embeddings(self) -> Path:
        return self.dir / EMBEDDINGS

    @property
    def logits(self) -> Path:
        return self.dir / LOGITS

    @property
    def pairs(self) -> Path:
        return self.dir / PAIRS

    @property
    def confusion(self) -> Path:
        return self.dir / CONFUSION

    @property
    def per_class(self) -> Path:
        return self.dir / PER_CLASS

    @property
    def ablation_dir(self) -> Path:
        return self.dir / ABLATION_DIR

    @property
    def ablation(self) -> Path:
        return self.dir / ABLATION_DIR / ABLATION

    @property
    def projections(self) -> Path:
        return self.dir / PROJECTIONS_DIR

    @property
    def shards(self) -> Path:
        return self.dir / SHARDS_DIR

    @property
    def calibration(self) -> Path:
        return self.dir / CALIBRATION

    @property
    def groups(self) -> Path:
        return self.dir / GROUPS

    @property
    def audit(self) -> AuditFiles:
        return AuditFiles(self.dir / AUDIT_DIR)


@dataclass(frozen=True)
class AuditFiles:
    """Paths of the data audit's files in `eval/<key>/audit/` (each may be missing)."""

    dir: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "dir", Path(self.dir))

    summary = property(lambda self: self.dir / AUDIT_SUMMARY)
    images = property(lambda self: self.dir / AUDIT_IMAGES)
    issues = property(lambda self: self.dir / AUDIT_ISSUES)
    duplicates = property(lambda self: self.dir / AUDIT_DUPLICATES)
    identities = property(lambda self: self.dir / AUDIT_IDENTITIES)
    neighbours = property(lambda self: self.dir / AUDIT_NEIGHBOURS)
    neighbour_scores = property(lambda self: self.dir / AUDIT_NEIGHBOUR_SCORES)
    reject = property(lambda self: self.dir / AUDIT_REJECT)
    quality_bins = property(lambda self: self.dir / AUDIT_QUALITY_BINS)
    fixes = property(lambda self: self.dir / AUDIT_FIXES)


def model_file(run_dir: str | Path) -> Path:
    """The file holding a run's model: best.safetensors, or an imported model's file (`kind: external`).
    Its modification time keys the dashboard's model cache."""
    run = RunFiles(Path(run_dir))
    if run.config.is_file():
        cfg = read_config(run.dir)
        if cfg.get("kind") == "external":
            name = str((cfg.get("external") or {}).get("file", ""))
            if name:
                return run.dir / name
    return run.best


def has_model(run_dir: str | Path) -> bool:
    """Whether a run folder holds a model to load (a finished epoch, or an imported model file)."""
    return model_file(run_dir).is_file()


def eval_key(
    data: str | Path,
    pairs_format: str | None = None,
    *,
    tta: str | None = None,
    crop: float | None = None,
    align: str | None = None,
) -> str:
    """Folder name of an evaluation: dataset folder, protocol and test-time options (align: a face
    alignment other than the model's own, e.g. "mtcnn")."""
    key = Path(data).resolve().name
    if pairs_format:
        key += f"-{pairs_format}"
    if tta:
        key += f"-{tta}"
    if crop is not None and crop < 1.0:
        key += f"-crop{round(crop * 100)}"
    if align:
        key += f"-align_{align}"
    return key


def is_run_dir(path: Path) -> bool:
    """A run folder holds best.safetensors, config.yaml or eval/ (a run still training has only the config)."""
    return path.is_dir() and any((path / f).exists() for f in (BEST, CONFIG, EVAL_DIR))


def list_runs(root: str | Path) -> list[Path]:
    """Run folders under `root` and inside its sweep folders (`<root>/<sweep>/<run>`), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in [*root.glob("*"), *root.glob("*/*")] if is_run_dir(p))


def list_evaluations(run_dir: str | Path) -> list[str]:
    """Evaluation keys of a run (folders of eval/ holding summary.json, written last), sorted."""
    root = Path(run_dir) / EVAL_DIR
    return sorted(p.name for p in root.iterdir() if (p / SUMMARY).is_file()) if root.is_dir() else []


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes, first 16 hex digits: the identity of a checkpoint or model file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from `path`; {} when the file is missing; MatchLabError naming it when it is corrupt."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        raise MatchLabError(
            f"{path} is not readable JSON; delete it and run the command that writes it again"
        ) from None
    if not isinstance(value, dict):
        raise MatchLabError(f"{path} does not hold a JSON object; delete it and run the command that writes it again")
    return value


def read_summary(eval_dir: str | Path) -> dict[str, Any]:
    return read_json(EvalFiles(Path(eval_dir)).summary)


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's config.yaml as a dict ({} when missing); MatchLabError naming it when it is not YAML."""
    import yaml

    path = RunFiles(Path(run_dir)).config
    if not path.is_file():
        return {}
    try:
        # libyaml's safe loader when PyYAML was built with it: the dashboard reads every run's config on each
        # rerun (its run picker), and the pure-Python parser took ~0.1 s per file on a loaded 2-core machine.
        value = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    except (yaml.YAMLError, OSError, ValueError):  # ValueError: bytes that are not UTF-8
        raise MatchLabError(f"{path} is not valid YAML; fix it or delete the run folder") from None
    if not isinstance(value, dict):
        raise MatchLabError(f"{path} does not hold a mapping of sections; fix it or delete the run folder")
    return value


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """metrics.jsonl as one dict per epoch; a line cut short by a killed run is skipped, not fatal."""
    path = RunFiles(Path(run_dir)).metrics
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def read_threshold(run_dir: str | Path) -> dict[str, Any]:
    """threshold.json of a run ({} when missing): {threshold, rule, ...}."""
    return read_json(RunFiles(Path(run_dir)).threshold)


def read_split(run_dir: str | Path) -> dict[str, Any]:
    return read_json(RunFiles(Path(run_dir)).split)
