"""Bring your own scores or embeddings: evaluation folders from files computed on someone else's machine.

Entry points: `import_scores(file, name=...)` and `import_embeddings(file, name=..., labels=...)`, the
`import-scores` / `import-embeddings` commands. For models that cannot leave their owner's machine, the pair
scores (CSV/Parquet: path_a, path_b, label, score[, fold][, slice]) or the embeddings (Parquet: path, label,
embedding; or .npy + a CSV of path,label) are checked row by row (a bad row is `FILE:LINE: ...`) and go
through evaluate's own metric code into a run folder (config.yaml `kind: scores` / `kind: embeddings`) with
one evaluation, which the dashboard shows like any other.
"""

from __future__ import annotations

import csv
import platform
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd

from core import atomic, layout
from core.errors import MatchLabError

if TYPE_CHECKING:
    from core.data.cache import ImageCache

SCORE_COLUMNS = ("path_a", "path_b", "label", "score")
SCORES_KIND, EMBEDDINGS_KIND = "scores", "embeddings"
IMPORTED_KINDS = (SCORES_KIND, EMBEDDINGS_KIND)
_LABELS = {"1": 1, "0": 0, "true": 1, "false": 0, "1.0": 1, "0.0": 0}


class Table:
    """A user's table as strings, with where each row came from: `FILE:LINE` for CSV (header = line 1,
    blank lines counted), `FILE:row N` for Parquet."""

    def __init__(self, path: Path, frame: pd.DataFrame, lines: list[int] | None) -> None:
        self.path, self.frame, self.lines = path, frame, lines

    def where(self, i: int) -> str:
        return f"{self.path}:{self.lines[i]}" if self.lines is not None else f"{self.path}:row {i + 1}"

    @property
    def header(self) -> str:
        return f"{self.path}:1" if self.lines is not None else str(self.path)

    def require(self, columns: tuple[str, ...], expected: str) -> None:
        missing = [c for c in columns if c not in self.frame.columns]
        if missing:
            raise MatchLabError(f"{self.header}: missing column(s) {', '.join(missing)}; expected {expected}")
        if self.frame.empty:
            raise MatchLabError(f"{self.path}: no rows after the header; expected {expected}")

    def first_bad(self, ok: np.ndarray, what: str) -> None:
        bad = np.flatnonzero(~ok)
        if len(bad):
            raise MatchLabError(
                f"{self.where(int(bad[0]))}: {what}"
                + (f" ({len(bad) - 1:,} more rows like it)" if len(bad) > 1 else "")
            )


def read_table(path: str | Path, what: str) -> Table:
    """CSV (any suffix but .parquet / .pq) or Parquet, every column kept as the file has it."""
    path = Path(path)
    if not path.is_file():
        raise MatchLabError(f"{what} file {path} not found")
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for damaged files
            raise MatchLabError(
                f"{path}: not a readable Parquet file ({str(e).splitlines()[0][:200]}); "
                f"write it again with pandas.DataFrame.to_parquet"
            ) from None
        frame.columns = [str(c).strip().lower() for c in frame.columns]
        return Table(path, frame, None)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: files saved by Excel start with a BOM
    except UnicodeDecodeError as e:
        raise MatchLabError(f"{path}: not UTF-8 text (bad byte at offset {e.start}); save it as UTF-8 CSV") from None
    numbered = [(no, line) for no, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not numbered:
        raise MatchLabError(f"{path}: empty; expected a CSV header line")
    try:
        rows = list(csv.reader(line for _, line in numbered))
    except csv.Error as e:
        raise MatchLabError(f"{path}: not a readable CSV file ({e})") from None
    header = [h.strip().lower() for h in rows[0]]
    for (no, _), row in zip(numbered[1:], rows[1:]):
        if len(row) != len(header):
            raise MatchLabError(f"{path}:{no}: {len(row)} field(s) where the header has {len(header)}")
    frame = pd.DataFrame(rows[1:], columns=header, dtype=object) if len(rows) > 1 else pd.DataFrame(columns=header)
    return Table(path, frame.apply(lambda c: c.str.strip()) if len(frame) else frame, [no for no, _ in numbered[1:]])


def _paths(t: Table, column: str) -> list[str]:
    values = t.frame[column].astype(str).str.replace("\\", "/", regex=False).str.strip()
    lower = values.str.lower()
    t.first_bad(((values != "") & (lower != "nan") & (lower != "none")).to_numpy(), f"empty {column}")
    return values.tolist()


def _labels01(t: Table) -> np.ndarray:
    raw = t.frame["label"]
    if pd.api.types.is_bool_dtype(raw) or pd.api.types.is_numeric_dtype(raw):
        values = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64)
        ok = np.isin(values, (0.0, 1.0))
    else:
        mapped = raw.astype(str).str.strip().str.lower().map(_LABELS)
        ok = mapped.notna().to_numpy()
        values = mapped.to_numpy(np.float64, na_value=-1)
    t.first_bad(ok, "label must be 1 (same identity) or 0 (different)")
    return values.astype(np.int8)


def _numbers(t: Table, column: str) -> np.ndarray:
    values = pd.to_numeric(t.frame[column], errors="coerce").to_numpy(np.float64)
    t.first_bad(np.isfinite(values), f"{column} is not a finite number")
    return values


def read_scores(path: str | Path) -> tuple[pd.DataFrame, Table]:
    """path_a, path_b, label (0/1), score (float), fold (int, -1 none), slice (str, "all" none), checked."""
    t = read_table(path, "scores")
    expected = "columns path_a, path_b, label, score[, fold][, slice]"
    t.require(SCORE_COLUMNS, expected)
    out = pd.DataFrame(
        {
            "path_a": _paths(t, "path_a"),
            "path_b": _paths(t, "path_b"),
            "label": _labels01(t),
            "score": _numbers(t, "score"),
        }
    )
    if "fold" in t.frame.columns:
        raw = t.frame["fold"].astype(str).str.strip().replace({"": "-1", "nan": "-1", "None": "-1"})
        fold = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64)
        t.first_bad(np.isfinite(fold) & (fold == np.round(fold)), "fold is not an integer")
        out["fold"] = fold.astype(np.int16)
    else:
        out["fold"] = np.full(len(out), -1, np.int16)
    if "slice" in t.frame.columns:
        sl = t.frame["slice"].astype(str).str.strip()
        out["slice"] = sl.where((sl != "") & (sl.str.lower() != "nan") & (sl != "None"), "all").to_numpy(object)
    else:
        out["slice"] = np.full(len(out), "all", object)
    return out, t


def read_embeddings(path: str | Path, labels: str | Path | None = None) -> tuple[np.ndarray, list[str], list[str]]:
    """(embeddings (N, D) float32, paths, identity labels) from Parquet (path, label, embedding) or from
    .npy + a CSV/Parquet of path,label (row i of the CSV = row i of the array). Never unpickles."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        if labels is None:
            raise MatchLabError(
                f"{path} holds only vectors: pass --labels FILE, a CSV with columns path,label "
                f"(row i = row i of the array)"
            )
        if not path.is_file():
            raise MatchLabError(f"embeddings file {path} not found")
        try:
            emb = np.load(path, allow_pickle=False)
        except ValueError:
            raise MatchLabError(
                f"{path}: an object array (it would need unpickling, which MatchLab never does); "
                f"save a float array with numpy.save"
            ) from None
        except Exception as e:
            raise MatchLabError(
                f"{path}: not a readable .npy file ({str(e).splitlines()[0][:200]}); save it with numpy.save"
            ) from None
        t = read_table(labels, "labels")
        t.require(("path", "label"), "columns path, label (row i = row i of the array)")
        if emb.ndim != 2 or not np.issubdtype(emb.dtype, np.number):
            raise MatchLabError(
                f"{path}: shape {'x'.join(map(str, emb.shape))} of {emb.dtype}; expected a 2-D "
                f"float array, one row per image"
            )
        if len(emb) != len(t.frame):
            raise MatchLabError(
                f"{path} has {len(emb):,} rows but {t.path} has {len(t.frame):,}; they must match row for row"
            )
        emb = emb.astype(np.float32)
        rows_ok = np.isfinite(emb).all(1) & (np.linalg.norm(emb, axis=1) > 0)
        bad = np.flatnonzero(~rows_ok)
        if len(bad):
            raise MatchLabError(f"{path}: row {bad[0] + 1} (for {t.where(int(bad[0]))}) is all zeros or not finite")
    else:
        t = read_table(path, "embeddings")
        if t.lines is not None:
            raise MatchLabError(
                f"{path}: embeddings come as Parquet (path, label, embedding) or as .npy with "
                f"--labels; a CSV cannot hold the vectors"
            )
        t.require(("path", "label", "embedding"), "columns path, label, embedding (a list of floats per row)")
        emb = _vectors(t)
    paths = _paths(t, "path")
    names = t.frame["label"].astype(str).str.strip()
    t.first_bad(((names != "") & (names.str.lower() != "nan")).to_numpy(), "empty label")
    seen: dict[str, int] = {}
    for i, p in enumerate(paths):
        if p in seen:
            raise MatchLabError(f"{t.where(i)}: path repeats row {seen[p] + 1}; each image must appear once")
        seen[p] = i
    return emb, paths, names.tolist()


def _vectors(t: Table) -> np.ndarray:
    col = t.frame["embedding"]
    lengths = col.map(lambda v: len(v) if hasattr(v, "__len__") and not isinstance(v, (str, bytes)) else -1)
    t.first_bad((lengths > 0).to_numpy(), "embedding is not a list of numbers")
    dim = int(lengths.iloc[0])
    t.first_bad((lengths == dim).to_numpy(), f"embedding length differs from the first row's {dim}")
    try:
        emb = np.stack([np.asarray(v, dtype=np.float32) for v in col])
    except (TypeError, ValueError):
        t.first_bad(col.map(_numeric).to_numpy(bool), "embedding holds a value that is not a number")
        raise MatchLabError(f"{t.path}: the embedding column is not numeric; write lists of floats") from None
    t.first_bad(np.isfinite(emb).all(1) & (np.linalg.norm(emb, axis=1) > 0), "embedding is all zeros or not finite")
    return emb


def _numeric(v: Any) -> bool:
    try:
        np.asarray(v, dtype=np.float32)
        return True
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------- writers


def _source(path: Path) -> dict:
    from core.external import sha256_file

    return {"file": str(path.resolve()), "sha256": sha256_file(path), "imported": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _data_note(data: str | Path | None) -> tuple[str | None, str]:
    """The --data root the pictures are read from (None without one), and what the galleries can show."""
    if data is None:
        return None, "no --data root given: galleries list the paths without pictures"
    root = Path(data)
    if not root.is_dir():
        raise MatchLabError(f"--data {root} is not a folder; give the folder the file's paths are relative to")
    return str(root), f"pictures read from {root}"


def _missing_images(root: str | None, paths: list[str], limit: int = 2000) -> dict:
    """How many of the file's paths resolve under the --data root (checked on at most `limit` of them)."""
    if root is None:
        return {"checked": 0, "found": 0}
    sample = paths if len(paths) <= limit else [paths[i] for i in np.linspace(0, len(paths) - 1, limit).astype(int)]
    found = sum((Path(root) / p).is_file() for p in sample)
    return {"checked": len(sample), "found": int(found)}


def _write(
    final: Path,
    *,
    kind: str,
    name: str,
    source: dict,
    root: str | None,
    key: str,
    summary: dict,
    tables: dict[str, Any],
) -> None:
    """The run folder with its one evaluation, built aside and renamed into place whole. Its config and the
    evaluation's manifest are the same for every kind of import: what was imported (`source`), from where."""
    manifest = {
        "checkpoint_hash": summary["checkpoint_hash"],
        "source": source,
        "data": root,
        "created": source["imported"],
        "python": platform.python_version(),
    }
    config = {"kind": kind, "name": name, "source": source, "data_root": root}
    with atomic.replaced_dir(final) as staging:
        atomic.atomic_write_yaml(layout.RunFiles(staging).config, config)
        files = layout.RunFiles(staging).eval(key)
        for attr, value in tables.items():
            target = getattr(files, attr)
            if isinstance(value, pd.DataFrame):
                atomic.save_parquet_atomic(target, value)
            elif isinstance(value, np.ndarray):
                atomic.save_numpy_atomic(target, value)
            else:
                atomic.atomic_write_json(target, value)
        atomic.atomic_write_json(files.manifest, manifest)
        atomic.atomic_write_json(files.summary, summary)  # last: it marks the evaluation whole


def _new_run(name: str, out: str | Path) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise MatchLabError(f"--name {name!r}: give a folder name without '/' (e.g. vendor-scores)")
    final = Path(out) / name
    if final.exists():
        raise MatchLabError(f"{final} already exists; choose another --name (nothing was changed)")
    return final


def _verification_part(
    scores: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    slices: np.ndarray,
    paths_a: list[str],
    paths_b: list[str],
    ids_a: np.ndarray,
    ids_b: np.ndarray,
    *,
    artifacts: Path,
    idx: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[dict, dict, pd.DataFrame, dict, dict]:
    from core.assurance import AssuranceOptions, assure
    from core.evaluate import verification_tables

    headline, per_slice, table = verification_tables(
        scores,
        labels,
        folds,
        slices,
        paths_a,
        paths_b,
        threshold=None,
        idx_a=idx[0] if idx else None,
        idx_b=idx[1] if idx else None,
    )
    headline["artifacts"] = str(artifacts)
    calibration, groups = assure(table, ids_a, ids_b, headline, AssuranceOptions().validate())
    return headline, per_slice, table, calibration, groups


def import_scores(
    path: str | Path, *, name: str, data: str | Path | None = None, out: str | Path = "checkpoints"
) -> dict:
    """An evaluation from a user's pair scores: the Verification page's metrics, sweep, ROC and hardest
    pairs. Identities for the subject bootstrap are the paths' first folders (ImageFolder's layout)."""
    final = _new_run(name, out)
    frame, t = read_scores(path)
    root, note = _data_note(data)
    key = Path(root).name if root else Path(path).stem
    ids_a = frame["path_a"].str.split("/").str[0].to_numpy(object)
    ids_b = frame["path_b"].str.split("/").str[0].to_numpy(object)
    artifacts = final / layout.EVAL_DIR / key
    headline, per_slice, table, calibration, groups = _verification_part(
        frame["score"].to_numpy(np.float64),
        frame["label"].to_numpy(np.int8),
        frame["fold"].to_numpy(np.int16),
        frame["slice"].to_numpy(object),
        frame["path_a"].tolist(),
        frame["path_b"].tolist(),
        ids_a,
        ids_b,
        artifacts=artifacts,
    )
    source = _source(Path(path))
    images = sorted(set(frame["path_a"]) | set(frame["path_b"]))
    summary = {
        "run": str(final),
        "key": key,
        "data": root,
        "kind": SCORES_KIND,
        "model": f"scores from {t.path.name}",
        "checkpoint_hash": source["sha256"][:16],
        "n_pairs": len(frame),
        "n_images": len(images),
        "pairs": f"{len(frame):,} scored pairs from {t.path.name}",
        "pairs_format": None,
        "pairs_file": None,
        "tta": None,
        "crop": None,
        "images_note": note,
        "images_found": _missing_images(root, images),
        "verification": headline,
        "slices": per_slice,
        "groups": {},
    }
    _write(
        final,
        kind=SCORES_KIND,
        name=name,
        source=source,
        root=root,
        key=key,
        summary=summary,
        tables={"pairs": table, "calibration": calibration, "groups": groups},
    )
    return summary


def import_embeddings(
    path: str | Path,
    *,
    name: str,
    labels: str | Path | None = None,
    data: str | Path | None = None,
    pairs_file: str | Path | None = None,
    pairs_format: str | None = None,
    out: str | Path = "checkpoints",
) -> dict:
    """An evaluation from a user's embeddings: verification on pairs generated from the labels (or a
    protocol's, with --data), kNN and retrieval, the confusion of the 1-NN vote, and the embeddings for
    the Embeddings page."""
    from core.evaluate import per_image_tables, prepare_pairs

    final = _new_run(name, out)
    emb, paths, names = read_embeddings(path, labels)
    root, note = _data_note(data)
    if pairs_format and root is None:
        raise MatchLabError("--pairs-format needs --data: the protocol's file names images under that folder")
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    class_names = sorted(set(names))
    index = {c: i for i, c in enumerate(class_names)}
    y = np.array([index[c] for c in names], np.int64)
    split = np.full(len(paths), "eval", dtype=object)
    # prepare_pairs reads only a cache's labels and paths: an imported set has no image cache
    pairs = prepare_pairs(
        cast("ImageCache", SimpleNamespace(labels=y, paths=paths)),
        split,
        root,
        pairs_file=pairs_file,
        pairs_format=pairs_format,
    )
    ia, ib = pairs.idx_a, pairs.idx_b
    scores = np.einsum("pd,pd->p", emb[ia], emb[ib]).astype(np.float32)
    key = (Path(root).name if root else Path(path).stem) + (f"-{pairs_format}" if pairs_format else "")
    artifacts = final / layout.EVAL_DIR / key
    headline, per_slice, table, calibration, groups = _verification_part(
        scores,
        pairs.labels,
        pairs.folds,
        pairs.slices,
        [paths[i] for i in ia],
        [paths[i] for i in ib],
        y[ia],
        y[ib],
        artifacts=artifacts,
        idx=(ia, ib),
    )
    image_summary, samples, confusion, per_class = per_image_tables(emb, y, class_names, paths, split)
    source = _source(Path(path))
    summary = {
        "run": str(final),
        "key": key,
        "data": root,
        "kind": EMBEDDINGS_KIND,
        "model": f"embeddings from {Path(path).name}",
        "checkpoint_hash": source["sha256"][:16],
        "n_images": len(paths),
        "n_classes": len(class_names),
        "embedding_dim": int(emb.shape[1]),
        "pairs": pairs.source,
        "pairs_format": pairs_format,
        "pairs_file": str(pairs_file) if pairs_file else None,
        "tta": None,
        "crop": None,
        "images_note": note,
        "images_found": _missing_images(root, paths),
        "verification": headline,
        "slices": per_slice,
        "groups": {},
        **image_summary,
    }
    if labels is not None:
        source["labels"] = _source(Path(labels))
    _write(
        final,
        kind=EMBEDDINGS_KIND,
        name=name,
        source=source,
        root=root,
        key=key,
        summary=summary,
        tables={
            "pairs": table,
            "calibration": calibration,
            "groups": groups,
            "embeddings": emb.astype(np.float32),
            "samples": samples,
            "confusion": confusion,
            "per_class": per_class,
        },
    )
    return summary
