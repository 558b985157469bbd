"""Train / val / test splits of an image folder, deterministic from a seed and saved as split.json.

Entry points: `split_by_image` (stratified: every class in every part, for classification) and
`split_by_identity` (whole identities held out: the face-verification protocol, where a test face was
never seen in training). `save_split` / `load_split` store the parts by relative path, not index, so a
run's split survives a rebuilt cache and `evaluate` can prove it scores only held-out images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.atomic import atomic_write_json
from core.errors import MatchLabError

PARTS = ("train", "val", "test")
# how a run divided its images: by image, by identity, the sanity subset (train = val), separate
# train/val folders, or pair-protocol groups (identities linked by a pair stay on one side)
SPLIT_MODES = ("image", "identity", "sanity", "folders", "pair-groups")


def split_by_image(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out round(val_fraction * n_c) images of every class c, keeping at least one to train on.

    labels: (N,) int. Returns (train_idx, val_idx), sorted int64 indices into labels.
    """
    _check_fraction("val_fraction", val_fraction)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    val = []
    for start, n in zip(starts, counts):
        n_val = min(int(n) - 1, int(np.floor(n * val_fraction + 0.5)))
        if n_val > 0:
            val.append(rng.permutation(order[start : start + n])[:n_val])
    val_idx = np.sort(np.concatenate(val)) if val else np.empty(0, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx.astype(np.int64), val_idx.astype(np.int64)


def split_by_identity(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Hold out whole identities: a fraction of the classes for val, another for test.

    A non-zero fraction gets at least one identity; training keeps at least two. labels: (N,) int.
    Returns {"train", "val", "test"} -> sorted int64 indices into labels; no class is in two parts.
    """
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    labels = np.asarray(labels)
    ids = np.random.default_rng(seed).permutation(np.unique(labels))
    n_test, n_val = _share(len(ids), test_fraction), _share(len(ids), val_fraction)
    if len(ids) - n_test - n_val < 2:
        raise MatchLabError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} leave fewer than 2 of the {len(ids)} identities "
            "to train on: lower them"
        )
    held = {"test": ids[:n_test], "val": ids[n_test : n_test + n_val], "train": ids[n_test + n_val :]}
    return {part: np.flatnonzero(np.isin(labels, held[part])).astype(np.int64) for part in PARTS}


def save_split(
    path: str | os.PathLike, paths: Sequence[str], parts: dict[str, np.ndarray], mode: str, seed: int
) -> Path:
    """Write split.json: {"mode", "seed", "train": [relative paths], "val": [...], "test": [...]}.

    paths: the N relative image paths that the indices in `parts` point into; absent parts are [].
    """
    if mode not in SPLIT_MODES:
        raise MatchLabError(f"split mode {mode!r} is not valid: use one of {', '.join(SPLIT_MODES)}")
    doc = {"mode": mode, "seed": int(seed)}
    for part in PARTS:
        doc[part] = [paths[int(i)] for i in parts.get(part, [])]
    return atomic_write_json(path, doc)


def load_split(path: str | os.PathLike, paths: Sequence[str]) -> dict[str, np.ndarray]:
    """Read split.json back as {"train", "val", "test"} -> int64 indices into `paths`.

    Raises MatchLabError naming the file, or the first listed image that `paths` does not hold.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise MatchLabError(
            f"split file {path} not found: train a run first, or point at the run folder that has it"
        ) from None
    except (OSError, ValueError) as e:
        raise MatchLabError(f"split file {path} is unreadable ({e}): delete it and train again") from None
    if not isinstance(doc, dict):
        raise MatchLabError(
            f"split file {path} is not a JSON object with train/val/test lists: delete it and train again"
        )
    index = {p: i for i, p in enumerate(paths)}
    out = {}
    for part in PARTS:
        listed = doc.get(part, [])
        missing = next((p for p in listed if p not in index), None)
        if missing is not None:
            raise MatchLabError(
                f"{path}: {part} image {missing} is not in the data folder (renamed, removed or skipped as unreadable?): "
                "use the folder the run was trained on"
            )
        out[part] = np.asarray([index[p] for p in listed], dtype=np.int64)
    return out


def _check_fraction(name: str, value: float) -> None:
    if not (0.0 <= float(value) < 1.0):
        raise MatchLabError(f"{name}={value} must be in [0, 1)")


def _share(n: int, fraction: float) -> int:
    return 0 if fraction <= 0 else max(1, int(np.floor(n * fraction + 0.5)))
