"""Pair protocols: which image pairs a verification run scores, and whether each pair shows one identity.

Entry point: `read_pairs(fmt, pairs_file, root)` dispatches through `PAIR_FORMATS` to the LFW, CFP, CSV
and shoe readers; `generated_pairs` builds pairs from identity labels, and `iter_all_pair_blocks` scores
every pair of a huge set block by block without materialising the pairs. Every reader checks that each
named image exists under the data root, so a typo fails here with `file:line`, not mid-evaluation.
"""

from __future__ import annotations

import csv
import posixpath
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, cast

import numpy as np

from core.errors import MatchLabError

if TYPE_CHECKING:  # torch and pandas are heavy; only the functions that need them import them
    import pandas
    import torch

ALL_PAIRS_LIMIT = 20_000_000  # beyond this, materialised path lists cost GBs: score in blocks instead
ROOT_HINT = "check --data points at the images root"


@dataclass
class PairSet:
    """P image pairs. Paths are posix-style and relative to the data root.

    labels: (P,) int8, 1 = same identity; folds: (P,) int16, -1 when the protocol has no folds;
    slices: (P,) object array of str, "all" when the protocol has no slices.
    """

    paths_a: list[str]
    paths_b: list[str]
    labels: np.ndarray
    folds: np.ndarray
    slices: np.ndarray
    source: str

    def __post_init__(self) -> None:
        self.paths_a, self.paths_b = list(self.paths_a), list(self.paths_b)
        self.labels = np.asarray(self.labels, dtype=np.int8)
        self.folds = np.asarray(self.folds, dtype=np.int16)
        self.slices = np.asarray(self.slices, dtype=object)
        sizes = {len(self.paths_a), len(self.paths_b), len(self.labels), len(self.folds), len(self.slices)}
        if len(sizes) != 1:
            raise ValueError(f"PairSet columns differ in length: {sorted(sizes)}")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, mask: np.ndarray | Sequence[int] | Sequence[bool]) -> PairSet:
        """The pairs selected by a boolean mask of length P or by integer indices, in that order."""
        sel = np.asarray(mask)
        if sel.dtype == bool:
            if len(sel) != len(self):
                raise ValueError(f"mask has {len(sel)} entries for {len(self)} pairs")
            sel = np.flatnonzero(sel)
        sel = sel.astype(np.int64, copy=False)
        return PairSet(
            [self.paths_a[i] for i in sel],
            [self.paths_b[i] for i in sel],
            self.labels[sel],
            self.folds[sel],
            self.slices[sel],
            self.source,
        )

    @classmethod
    def concat(cls, parts: Sequence[PairSet], source: str) -> PairSet:
        return cls(
            [p for part in parts for p in part.paths_a],
            [p for part in parts for p in part.paths_b],
            np.concatenate([part.labels for part in parts]),
            np.concatenate([part.folds for part in parts]),
            np.concatenate([part.slices for part in parts]),
            source,
        )

    def to_frame(self) -> pandas.DataFrame:
        """Columns path_a, path_b, label, fold, slice (the first five of pairs.parquet)."""
        import pandas

        return pandas.DataFrame(
            {
                "path_a": self.paths_a,
                "path_b": self.paths_b,
                "label": self.labels,
                "fold": self.folds,
                "slice": self.slices,
            }
        )

    def unique_paths(self) -> list[str]:
        """Every image any pair names, sorted."""
        return sorted(set(self.paths_a) | set(self.paths_b))

    def index_into(self, paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Map each pair to rows of a sample list: (idx_a, idx_b), each (P,) int64, paths[idx_a[k]] == paths_a[k]."""
        row = {p: i for i, p in enumerate(paths)}
        out = []
        for column in (self.paths_a, self.paths_b):
            idx = np.fromiter((row.get(p, -1) for p in column), dtype=np.int64, count=len(column))
            missing = np.flatnonzero(idx < 0)
            if len(missing):
                raise MatchLabError(
                    f"pair image '{column[missing[0]]}' ({self.source}) is not among the {len(paths)} images "
                    f"loaded from the data folder; check that the pairs file and --data describe the same dataset"
                )
            out.append(idx)
        return out[0], out[1]


# ----------------------------------------------------------------------------------------------- helpers


class _Builder:
    """Accumulates pairs while remembering where each image was first named, for the existence check."""

    def __init__(self) -> None:
        self.a: list[str] = []
        self.b: list[str] = []
        self.labels: list[int] = []
        self.folds: list[int] = []
        self.slices: list[str] = []
        self.origin: dict[str, str] = {}

    def add(
        self, a: str, b: str, label: int, fold: int = -1, slice_: str = "all", where_a: str = "", where_b: str = ""
    ) -> None:
        self.a.append(a)
        self.b.append(b)
        self.labels.append(label)
        self.folds.append(fold)
        self.slices.append(slice_)
        self.origin.setdefault(a, where_a)
        self.origin.setdefault(b, where_b or where_a)

    def build(self, root: Path, source: str, hint: str = ROOT_HINT) -> PairSet:
        for path, where in self.origin.items():
            if not (root / path).is_file():
                raise MatchLabError(f"{where}: image '{path}' not found under {root}; {hint}")
        return PairSet(
            self.a,
            self.b,
            np.asarray(self.labels, np.int8),
            np.asarray(self.folds, np.int16),
            np.asarray(self.slices, object),
            source,
        )


def _existing_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise MatchLabError(f"{what} '{path}' is not a folder; check the path")
    return path


def _numbered_lines(path: str | Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of every non-blank line; blank lines keep the numbering honest."""
    path = Path(path)
    if not path.is_file():
        raise MatchLabError(f"pairs file '{path}' not found; check the path")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: files saved by Excel start with a BOM
    except UnicodeDecodeError as e:
        raise MatchLabError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    return [(no, line.strip()) for no, line in enumerate(text.splitlines(), 1) if line.strip()]


def _int(text: str, where: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        # Never quote the text: a pairs file path may name any file on the server (/etc/shadow's first field).
        raise MatchLabError(f"{where}: the {what} is not an integer") from None


def _relative(path: str, root: Path, where: str) -> str:
    """A user-written path as a clean posix path relative to root (absolute paths inside root are accepted)."""
    path = path.strip().replace("\\", "/")
    if posixpath.isabs(path) or re.match(r"^[A-Za-z]:/", path):
        try:
            path = Path(path).resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            raise MatchLabError(
                f"{where}: an absolute path outside the data root {root}; write paths relative to it"
            ) from None
    path = posixpath.normpath(path)
    if path == "." or path.startswith("../"):
        raise MatchLabError(f"{where}: the path does not name a file under the data root {root}")
    return path


# ------------------------------------------------------------------------------------------------- LFW


def _lfw_path(name: str, number: str, where: str) -> str:
    return f"{name}/{name}_{_int(number, where, 'image number'):04d}.jpg"


def read_lfw_pairs(pairs_file: str | Path, root: str | Path) -> PairSet:
    """LFW `pairs.txt`: header `<folds> <pairs per fold>` (or one count = one fold-less block), then per fold
    the matched lines `name i j` followed by the mismatched lines `name1 i name2 j`."""
    root = _existing_dir(root, "data root")
    lines = _numbered_lines(pairs_file)
    if not lines:
        raise MatchLabError(f"{pairs_file}: empty; expected a header line '<folds> <pairs per fold>'")
    head_no, head = lines[0]
    where = f"{pairs_file}:{head_no}"
    counts = [_int(x, where, "header count") for x in head.split()]
    if len(counts) not in (1, 2) or min(counts) <= 0:
        raise MatchLabError(f"{where}: header must be '<folds> <pairs per fold>' or one positive count")
    n_folds, per_fold = counts if len(counts) == 2 else (1, counts[0])
    body = lines[1:]
    if len(body) != n_folds * 2 * per_fold:
        raise MatchLabError(
            f"{where}: header promises {n_folds} fold(s) x ({per_fold} matched + {per_fold} mismatched) = "
            f"{n_folds * 2 * per_fold} pair lines but the file has {len(body)}; fix the header or the file"
        )
    out = _Builder()
    for k, (no, line) in enumerate(body):
        where = f"{pairs_file}:{no}"
        fields = line.split()
        if len(fields) == 3:
            a, b, label = _lfw_path(fields[0], fields[1], where), _lfw_path(fields[0], fields[2], where), 1
        elif len(fields) == 4:
            a, b, label = _lfw_path(fields[0], fields[1], where), _lfw_path(fields[2], fields[3], where), 0
        else:
            raise MatchLabError(
                f"{where}: expected 3 fields 'name i j' or 4 fields 'name1 i name2 j', found {len(fields)}"
            )
        out.add(a, b, label, k // (2 * per_fold) if len(counts) == 2 else -1, where_a=where)
    folds = f"{n_folds} folds" if len(counts) == 2 else "no folds"
    return out.build(root, f"lfw {Path(pairs_file).name} ({folds})")


# ------------------------------------------------------------------------------------------------- CFP

CFP_HINT = "check --data points at the CFP images folder (the one holding 001/, 002/, ...)"
# split -> (list of the first index, list of the second index): in FP the second image is a profile
_CFP_SPLITS: dict[str, tuple[str, str]] = {"FF": ("F", "F"), "FP": ("F", "P")}
_CFP_LABELS = (("same.txt", 1), ("diff.txt", 0))


def _find_cfp_protocol(path: str | Path) -> Path:
    path = Path(path)
    for candidate in (path, path / "Protocol"):
        if (candidate / "Pair_list_F.txt").is_file():
            return candidate
    raise MatchLabError(
        f"'{path}' is not a CFP Protocol folder (no Pair_list_F.txt); "
        f"pass the Protocol folder or the cfp folder that holds it"
    )


def _read_cfp_list(path: Path) -> dict[int, tuple[str, str]]:
    """index -> (image path after the `../Data/Images/` prefix, file:line that defined it)."""
    entries = {}
    for no, line in _numbered_lines(path):
        where = f"{path}:{no}"
        fields = line.split()
        if len(fields) != 2:
            raise MatchLabError(f"{where}: expected 2 fields 'index path', found {len(fields)}")
        image = fields[1].replace("\\", "/")
        image = image.split("Data/Images/", 1)[1] if "Data/Images/" in image else re.sub(r"^(\.\./)+", "", image)
        entries[_int(fields[0], where, "index")] = (image, where)
    return entries


def _cfp_image_prefix(root: Path, sample: str) -> str:
    # CFP's lists point at ../Data/Images/; accept --data at the images folder itself or at the cfp folder
    for prefix in ("", "images/", "Data/Images/"):
        if (root / prefix / sample).is_file():
            return prefix
    return ""  # the existence check then reports the first missing image with its file:line


def read_cfp_pairs(protocol_dir: str | Path, root: str | Path, split: str = "FF") -> PairSet:
    """CFP Frontal-Frontal ("FF") or Frontal-Profile ("FP"): Split/<split>/01..10/{same,diff}.txt hold
    `i,j` indices into Pair_list_F.txt / Pair_list_P.txt. fold = folder number - 1, slice = split."""
    root = _existing_dir(root, "data root")
    protocol = _find_cfp_protocol(protocol_dir)
    split = split.upper()
    if split not in _CFP_SPLITS:
        raise MatchLabError(f"unknown CFP split '{split}'; valid splits: {', '.join(_CFP_SPLITS)}")
    lists = {kind: _read_cfp_list(protocol / f"Pair_list_{kind}.txt") for kind in set(_CFP_SPLITS[split])}
    first = next(iter(lists["F"].values()), ("", ""))[0]
    prefix = _cfp_image_prefix(root, first)
    split_dir = protocol / "Split" / split
    fold_dirs = sorted(d for d in split_dir.glob("*") if d.is_dir() and d.name.isdigit()) if split_dir.is_dir() else []
    if not fold_dirs:
        raise MatchLabError(f"{split_dir}: no numbered fold folders (01, 02, ...); is this a complete CFP Protocol?")
    out = _Builder()
    for fold_dir in fold_dirs:
        for name, label in _CFP_LABELS:
            for no, line in _numbered_lines(fold_dir / name):
                where = f"{fold_dir / name}:{no}"
                fields = [f for f in re.split(r"[,\s]+", line) if f]
                if len(fields) != 2:
                    raise MatchLabError(f"{where}: expected 'i,j', found {len(fields)} field(s)")
                ends = []
                for text, kind in zip(fields, _CFP_SPLITS[split]):
                    index = _int(text, where, "index")
                    if index not in lists[kind]:
                        raise MatchLabError(
                            f"{where}: index {index} is not in Pair_list_{kind}.txt "
                            f"({len(lists[kind])} entries); is the Protocol folder complete?"
                        )
                    ends.append(lists[kind][index])
                (a, where_a), (b, where_b) = ends
                out.add(prefix + a, prefix + b, label, int(fold_dir.name) - 1, split, where_a, where_b)
    return out.build(root, f"cfp-{split.lower()} ({len(fold_dirs)} folds)", CFP_HINT)


def read_cfp_protocol(cfp_root: str | Path, root: str | Path | None = None) -> PairSet:
    """FF and FP concatenated (slices "FF" / "FP"); root defaults to `<cfp_root>/images`."""
    cfp_root = Path(cfp_root)
    if root is None:
        root = cfp_root / "images" if (cfp_root / "images").is_dir() else cfp_root
    return _read_cfp_splits(cfp_root, root, tuple(_CFP_SPLITS))


def _read_cfp_splits(protocol_dir: str | Path, root: str | Path, splits: tuple[str, ...]) -> PairSet:
    parts = [read_cfp_pairs(protocol_dir, root, split) for split in splits]
    return (
        parts[0]
        if len(parts) == 1
        else PairSet.concat(parts, f"cfp {'+'.join(splits)} ({len(set(parts[0].folds))} folds)")
    )


# ------------------------------------------------------------------------------------------------- CSV

_CSV_REQUIRED = ("path_a", "path_b", "label")
_CSV_LABELS = {"1": 1, "0": 0, "true": 1, "false": 0}


def read_csv_pairs(csv_file: str | Path, root: str | Path) -> PairSet:
    """CSV with header `path_a,path_b,label[,fold][,slice]`; label 1 = same identity; other columns are ignored."""
    root = _existing_dir(root, "data root")
    lines = _numbered_lines(csv_file)
    if not lines:
        raise MatchLabError(f"{csv_file}: empty; expected a header 'path_a,path_b,label[,fold][,slice]'")
    numbers = [no for no, _ in lines]
    rows = list(csv.reader(text for _, text in lines))
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in _CSV_REQUIRED if c not in header]
    if missing:
        raise MatchLabError(
            f"{csv_file}:{numbers[0]}: header lacks column(s) {', '.join(missing)}; "
            f"expected 'path_a,path_b,label[,fold][,slice]'"
        )
    col = {name: i for i, name in enumerate(header)}
    out = _Builder()
    for no, row in zip(numbers[1:], rows[1:]):
        where = f"{csv_file}:{no}"
        if len(row) != len(header):
            raise MatchLabError(f"{where}: {len(row)} field(s) where the header has {len(header)}")
        label = _CSV_LABELS.get(row[col["label"]].strip().lower())
        if label is None:
            raise MatchLabError(f"{where}: the label must be 1 (same identity) or 0")
        fold = row[col["fold"]].strip() if "fold" in col else ""
        slice_ = row[col["slice"]].strip() if "slice" in col else ""
        out.add(
            _relative(row[col["path_a"]], root, where),
            _relative(row[col["path_b"]], root, where),
            label,
            _int(fold, where, "fold") if fold else -1,
            slice_ or "all",
            where_a=where,
        )
    has_folds = "fold" in col and bool(out.folds) and max(out.folds) >= 0
    return out.build(root, f"csv {Path(csv_file).name}" + (f" ({len(set(out.folds))} folds)" if has_folds else ""))


# ----------------------------------------------------------------------------------------------- shoes

_SHOE_FOLDER = re.compile(r"^(?P<student>.+)_(?P<k>\d+)$")
_SHOE_EXTS = r"(?:jpe?g|png)"


def _shoe_images(folder: Path) -> dict[str, list[str]]:
    """side -> file names of `<folder>_{left,right}[_<suffix>].<jpg|png>` (any case) inside a pair folder."""
    pattern = re.compile(rf"^{re.escape(folder.name)}_(left|right)(?:_[^.]*)?\.{_SHOE_EXTS}$", re.IGNORECASE)
    sides: dict[str, list[str]] = {"left": [], "right": []}
    for f in sorted(folder.iterdir()):
        m = pattern.match(f.name)
        if m and f.is_file():
            sides[m.group(1).lower()].append(f.name)
    return sides


def _is_pair_folder(folder: Path) -> bool:
    return folder.is_dir() and bool(_SHOE_FOLDER.match(folder.name)) and any(_shoe_images(folder).values())


def _shoe_split_pairs(split_dir: Path, prefix: str, out: _Builder) -> None:
    students: dict[str, dict[int, tuple[str, str]]] = {}
    for folder in sorted(d for d in split_dir.iterdir() if _is_pair_folder(d)):
        sides = _shoe_images(folder)
        if len(sides["left"]) != 1 or len(sides["right"]) != 1:
            raise MatchLabError(
                f"{folder}: expected one left and one right image ({folder.name}_left_w.jpg, "
                f"{folder.name}_right_w.jpg), found {sides['left'] + sides['right']}"
            )
        m = cast(re.Match[str], _SHOE_FOLDER.match(folder.name))  # _is_pair_folder matched it
        students.setdefault(m["student"], {})[int(m["k"])] = (
            f"{prefix}{folder.name}/{sides['left'][0]}",
            f"{prefix}{folder.name}/{sides['right'][0]}",
        )
    slice_ = split_dir.resolve().name
    for pairs in students.values():
        ks = sorted(pairs)
        for pos, k in enumerate(ks):
            out.add(pairs[k][0], pairs[k][1], 1, slice_=slice_)
            # the next pair of the same student, cyclically: for k = 1..3 this is right_(k mod 3)+1, so that
            # background and camera are shared and cannot give the answer
            partner = ks[(pos + 1) % len(ks)]
            if partner != k:
                out.add(pairs[k][0], pairs[partner][1], 0, slice_=slice_)


def shoe_pairs(root: str | Path) -> PairSet:
    """The shoe-pair rule on `<root>/<uNNN_k>/<uNNN_k>_{left,right}_{w,m}.<ext>`: positives (left_k, right_k),
    negatives (left_k, right_(k mod 3)+1) of the same student. root is one split (slice = its name) or a
    folder of splits (train/test_w/test_m: slice = split name, paths start with the split folder)."""
    root = _existing_dir(root, "shoes folder")
    out = _Builder()
    if any(_is_pair_folder(d) for d in root.iterdir()):
        _shoe_split_pairs(root, "", out)
    else:
        for split_dir in sorted(d for d in root.iterdir() if d.is_dir()):
            if any(_is_pair_folder(d) for d in split_dir.iterdir()):
                _shoe_split_pairs(split_dir, f"{split_dir.name}/", out)
    if not out.labels:
        raise MatchLabError(
            f"{root}: no shoe pair folders '<student>_<k>/<student>_<k>_left_w.jpg'; "
            f"point at a split folder (test_w) or the folder holding the splits"
        )
    return out.build(root, f"shoes {', '.join(dict.fromkeys(out.slices))}")


# ------------------------------------------------------------------------------------------- generated


def _unrank(lo: np.ndarray, hi: np.ndarray, picks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a, b) numbered by b, then a in [lo[b], hi[b]): pick number t -> its (a, b). Exact, O(N) memory."""
    cum = np.concatenate([[0], np.cumsum(hi - lo)])
    b = np.searchsorted(cum, picks, side="right") - 1
    return lo[b] + (picks - cum[b]), b


def generated_pairs(
    labels: np.ndarray, paths: Sequence[str], mode: str = "balanced", n_pairs: int = 20_000, seed: int = 0
) -> PairSet:
    """Pairs from identity labels (N,): "balanced" = a seeded sample of n genuine + n impostor pairs with
    n = min(n_pairs // 2, genuine available); "all" = every unordered pair i < j (up to ALL_PAIRS_LIMIT)."""
    if mode not in _GENERATED:
        raise MatchLabError(f"unknown generated pairs mode '{mode}'; valid modes: {', '.join(_GENERATED)}")
    labels = np.asarray(labels)
    if len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels for {len(paths)} paths")
    ia, ib, same = _GENERATED[mode](np.unique(labels, return_inverse=True)[1].ravel(), n_pairs, seed)
    names = np.asarray(paths, dtype=object)
    return PairSet(
        names[ia].tolist(),
        names[ib].tolist(),
        same,
        np.full(len(ia), -1),
        np.full(len(ia), "all", dtype=object),
        f"generated {mode} pairs" + (f" (seed {seed})" if mode == "balanced" else ""),
    )


def all_or_sampled_pairs(
    labels: np.ndarray, paths: Sequence[str], *, max_all: int, n_sampled: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, str]:
    """(idx_a, idx_b, what they are in words): every pair i < j of the images when there are at most
    `max_all`, else a balanced seeded sample of `n_sampled` (validation during training, evaluation)."""
    n = len(labels)
    if n * (n - 1) // 2 <= max_all:
        ia, ib = np.triu_indices(n, 1)
        return ia, ib, f"all {len(ia):,} pairs of {n:,} images"
    ia, ib = generated_pairs(labels, paths, mode="balanced", n_pairs=n_sampled, seed=seed).index_into(list(paths))
    return ia, ib, f"a balanced seeded sample of {len(ia):,} pairs of {n:,} images (seed {seed})"


def _balanced(cls: np.ndarray, n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # number the images class by class; then image b's genuine partners are the earlier members of its class
    # and its impostor partners all images of earlier classes, so both kinds can be sampled without a list
    order = np.argsort(cls, kind="stable")
    start = np.searchsorted(cls[order], cls[order], side="left")
    pos = np.arange(len(cls))
    spans = {1: (start, pos), 0: (np.zeros_like(start), start)}
    n_genuine = int((pos - start).sum())
    n = min(n_pairs // 2, n_genuine, int(start.sum()))
    if n == 0:
        raise MatchLabError(
            f"cannot build balanced pairs from {len(cls)} images of {cls.max(initial=-1) + 1} "
            f"identities: need an identity with 2+ images and at least 2 identities"
        )
    rng = np.random.default_rng(seed)
    ia, ib, same = [], [], []
    for label, (lo, hi) in spans.items():
        picks = np.sort(rng.choice(int((hi - lo).sum()), size=n, replace=False))
        a, b = _unrank(lo, hi, picks)
        a, b = order[a], order[b]
        ia.append(np.minimum(a, b))
        ib.append(np.maximum(a, b))
        same.append(np.full(n, label))
    return np.concatenate(ia), np.concatenate(ib), np.concatenate(same)


def _all(cls: np.ndarray, n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    total = all_pairs_counts(len(cls))
    if total > ALL_PAIRS_LIMIT:
        raise MatchLabError(
            f"all pairs of {len(cls)} images = {total:,} pairs, more than {ALL_PAIRS_LIMIT:,} "
            f"can be listed; use blocked all-pairs scoring or balanced sampled pairs"
        )
    ia, ib = np.triu_indices(len(cls), k=1)
    return ia, ib, (cls[ia] == cls[ib]).astype(np.int8)


_GENERATED: dict[str, Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray, np.ndarray]]] = {
    "balanced": _balanced,
    "all": _all,
}


# ------------------------------------------------------------------------------------ blocked all-pairs


def all_pairs_counts(n: int) -> int:
    """Number of unordered pairs i < j among n images."""
    return n * (n - 1) // 2


def iter_block_ranges(n: int, block: int = 8192) -> Iterator[tuple[int, int, int, int]]:
    """(r0, r1, c0, c1) of each upper-triangle block, in the order `iter_all_pair_blocks` yields them."""
    for r0 in range(0, n, block):
        for c0 in range(r0, n, block):
            yield r0, min(r0 + block, n), c0, min(c0 + block, n)


def iter_all_pair_blocks(
    embeddings: torch.Tensor, labels: torch.Tensor, block: int = 8192
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Scores of every pair i < j, one block at a time, so 100k images (5e9 pairs) fit a streaming histogram.

    embeddings: (N, D) on any device, L2-normalised for cosine scores; the matmul runs in their dtype
    (bf16 or fp32). labels: (N,) identity ids. Yields (scores (B,) float32, is_genuine (B,) bool) on the
    embeddings' device for each block of `iter_block_ranges(N, block)`, row-major within the block.
    """
    import torch

    embeddings = torch.as_tensor(embeddings)
    labels = torch.as_tensor(labels, device=embeddings.device)
    if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(
            f"embeddings must be (N, D) and labels (N,), got {tuple(embeddings.shape)} and {tuple(labels.shape)}"
        )
    upper = None  # strict upper triangle of a diagonal block, built once
    with torch.no_grad():
        for r0, r1, c0, c1 in iter_block_ranges(len(embeddings), block):
            scores = (embeddings[r0:r1] @ embeddings[c0:c1].T).float()
            genuine = labels[r0:r1, None] == labels[None, c0:c1]
            if r0 == c0:
                if upper is None:
                    upper = torch.ones(r1 - r0, r1 - r0, dtype=torch.bool, device=embeddings.device).triu(1)
                keep = upper[: r1 - r0, : c1 - c0]
                yield scores[keep], genuine[keep]
            else:
                yield scores.flatten(), genuine.flatten()


# ------------------------------------------------------------------------------------------- dispatch

PairReader = Callable[[str | Path | None, str | Path], PairSet]


class PairFormat(NamedTuple):
    read: PairReader
    help: str


def _needs_file(fmt: str, reader: Callable[[str | Path, str | Path], PairSet]) -> PairReader:
    def read(pairs_file: str | Path | None, root: str | Path) -> PairSet:
        if pairs_file is None:
            raise MatchLabError(f"pairs format '{fmt}' needs a pairs file; pass its path")
        return reader(pairs_file, root)

    return read


def _cfp(*splits: str) -> PairReader:
    def read(pairs_file: str | Path | None, root: str | Path) -> PairSet:
        # without a pairs file, look for Protocol/ beside the images folder (cfp/images + cfp/Protocol)
        if pairs_file is None:
            near = [p for p in (Path(root), Path(root).parent) if (p / "Protocol" / "Pair_list_F.txt").is_file()]
            if not near:
                raise MatchLabError(
                    f"no CFP Protocol folder in or beside '{root}'; pass the Protocol folder as the pairs file"
                )
            pairs_file = near[0]
        return _read_cfp_splits(pairs_file, root, splits)

    return read


def _shoes(pairs_file: str | Path | None, root: str | Path) -> PairSet:
    if pairs_file is not None:
        raise MatchLabError("the shoes protocol derives its pairs from the folder layout; pass no pairs file")
    return shoe_pairs(root)


PAIR_FORMATS: dict[str, PairFormat] = {
    "lfw": PairFormat(_needs_file("lfw", read_lfw_pairs), "LFW pairs.txt (folds of matched + mismatched lines)"),
    "cfp-ff": PairFormat(_cfp("FF"), "CFP frontal-frontal, 10 folds (pairs file = Protocol folder)"),
    "cfp-fp": PairFormat(_cfp("FP"), "CFP frontal-profile, 10 folds (pairs file = Protocol folder)"),
    "cfp": PairFormat(_cfp("FF", "FP"), "CFP FF and FP together, sliced by split"),
    "csv": PairFormat(_needs_file("csv", read_csv_pairs), "CSV path_a,path_b,label[,fold][,slice]"),
    "shoes": PairFormat(_shoes, "shoe pairs rule on <student>_<k>/ folders (no pairs file)"),
}


def read_pairs(fmt: str, pairs_file: str | Path | None, root: str | Path) -> PairSet:
    """Read pairs in format `fmt` (a key of PAIR_FORMATS) naming images under `root`."""
    entry = PAIR_FORMATS.get(fmt.lower())
    if entry is None:
        raise MatchLabError(f"unknown pairs format '{fmt}'; valid formats: {', '.join(sorted(PAIR_FORMATS))}")
    return entry.read(pairs_file, root)
