"""Apply a data audit's suggested fixes at training time: `data.exclude=FILE` and `data.relabel=FILE`.

Entry point: `apply_fixes(cache, exclude, relabel) -> (labels, kept)`. Both files are CSVs with a `path`
column (relative to data.train); the audit's fixes.csv works as it is, because where an `action` column
exists each option takes only its own rows ("exclude" / "relabel"). A relabel row names the new class in
`suggested_label` (or `label`). A path that is not an image of the folder is a one-line error naming the
file and line, so a retrain never silently ignores a fix.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from core.errors import MatchLabError

MAX_SHOWN = 120  # characters of a user's value quoted in an error


def _short(value: str) -> str:
    return value if len(value) <= MAX_SHOWN else value[:MAX_SHOWN] + "..."


def read_fix_rows(file: str | Path, action: str, option: str) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of the CSV rows that apply to `action`: all rows, or only those whose `action`
    column equals it when there is one."""
    path = Path(file)
    if not path.is_file():
        raise MatchLabError(f"{option}={file}: no such file")
    try:
        text = path.read_text("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        raise MatchLabError(f"{option}={file}: not a readable UTF-8 CSV file") from None
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or "path" not in [c.strip() for c in reader.fieldnames]:
        raise MatchLabError(f"{file}:1: {option} needs a CSV with a 'path' column (e.g. the audit's fixes.csv)")
    rows = []
    for number, row in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
        if "action" in row and row["action"] != action:
            continue
        rows.append((number, row))
    return rows


def apply_fixes(cache, exclude: str = "", relabel: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(labels (N,) int64 with the relabel file applied, kept (N,) bool: False for excluded images) for
    the rows of `cache` (an ImageCache). Raises MatchLabError naming the file and line of a path that is
    not one of the cache's images, or of a label that is not one of its classes."""
    labels = np.asarray(cache.labels, dtype=np.int64).copy()
    kept = np.ones(len(labels), bool)
    if not exclude and not relabel:
        return labels, kept
    index = {p: i for i, p in enumerate(cache.paths)}
    classes = {c: i for i, c in enumerate(cache.class_names)}

    def row_of(file: str, number: int, path: str, option: str) -> int:
        rel = path.replace("\\", "/")
        i = index.get(rel[2:] if rel.startswith("./") else rel)
        if i is None:
            raise MatchLabError(
                f"{file}:{number}: {option} names '{_short(path)}', which is not an image of "
                f"{cache.root}: fix or remove that line"
            )
        return i

    if exclude:
        for number, row in read_fix_rows(exclude, "exclude", "data.exclude"):
            kept[row_of(exclude, number, row["path"], "data.exclude")] = False
    if relabel:
        for number, row in read_fix_rows(relabel, "relabel", "data.relabel"):
            i = row_of(relabel, number, row["path"], "data.relabel")
            name = row.get("suggested_label") or row.get("label") or ""
            if name not in classes:
                raise MatchLabError(
                    f"{relabel}:{number}: data.relabel gives label '{_short(name)}', which is not a "
                    f"class folder of {cache.root}: use one of its folder names"
                )
            labels[i] = classes[name]
    if not kept.any():
        raise MatchLabError(f"data.exclude={exclude} excludes every image of {cache.root}")
    return labels, kept
