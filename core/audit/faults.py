"""Inject known faults into a copy of an image folder, to measure what the data audit finds.

Entry point: `inject_faults(src, dst, held_out, ...) -> dict` (also `python -m core.audit.faults SRC DST`).
It copies `src` to `dst`, then moves a share of the images to a wrong identity, copies some images
across the train / held-out boundary (exact duplicates that leak), and blurs a share, each set disjoint.
The ground truth is written beside the copy (`<dst>.faults.json`), never inside the image folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFilter

from core.atomic import atomic_write_json
from core.data.images import scan_image_folder
from core.errors import MatchLabError

if TYPE_CHECKING:
    import pandas as pd


def truth_path(dst: str | Path) -> Path:
    """Where the ground truth of a corrupted copy lives: `<dst>.faults.json` beside the folder."""
    dst = Path(dst)
    return dst.parent / f"{dst.name}.faults.json"


def held_out_identities(src: str | Path, val_fraction: float, test_fraction: float, seed: int) -> list[str]:
    """The class names `core.train` holds out (val + test) with data.split=identity and these settings."""
    from core.data.splits import split_by_identity

    scan = scan_image_folder(src)
    parts = split_by_identity(scan.labels, val_fraction, test_fraction, seed)
    held = np.unique(scan.labels[np.concatenate([parts["val"], parts["test"]])])
    return [scan.class_names[c] for c in held]


def _blur(path: Path, fraction: float) -> None:
    """Gaussian blur with a radius of `fraction` of the shorter side (at least 1.5 px), saved in place."""
    with Image.open(path) as im:
        im.load()
        radius = max(1.5, fraction * min(im.size))
        out = im.filter(ImageFilter.GaussianBlur(radius))
        fmt = im.format or "PNG"
    out.save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def _new_path(root: Path, rel: str, to_class: str, tag: str) -> str:
    """`rel` re-homed under class `to_class`, keeping its sub-folders (CFP's frontal/profile), renamed."""
    parts = rel.split("/")
    return "/".join([to_class, *parts[1:-1], f"{tag}{Path(parts[-1]).suffix}"])


def inject_faults(
    src: str | Path,
    dst: str | Path,
    held_out: Sequence[str],
    *,
    move_fraction: float = 0.03,
    n_copies: int = 50,
    blur_fraction: float = 0.02,
    blur_radius: float = 0.03,
    seed: int = 0,
) -> dict:
    """Copy `src` to `dst` (which must not exist) and corrupt the copy; returns the ground truth.

    held_out: class names on the far side of the split boundary (val/test identities); half of the
    `n_copies` exact copies go from a training identity into a held-out one, half the other way. Moved
    images go to a random other identity. Paths in the truth are relative to `dst`.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists():
        raise MatchLabError(f"{dst} already exists: give a new folder for the corrupted copy")
    scan = scan_image_folder(src)
    held = set(held_out)
    unknown = held - set(scan.class_names)
    if unknown:
        raise MatchLabError(f"held-out identity {sorted(unknown)[0]} is not a class folder of {src}")
    shutil.copytree(src, dst)
    rng = np.random.default_rng(seed)
    n = len(scan)
    n_move, n_blur = round(move_fraction * n), round(blur_fraction * n)
    side = np.array([scan.class_names[c] in held for c in scan.labels])
    order = rng.permutation(n)
    # copies first, balanced over the two sides, then moves and blurs from what is left: disjoint sets
    from_train = [i for i in order if not side[i]][: n_copies - n_copies // 2]
    from_held = [i for i in order if side[i]][: n_copies // 2]
    copies = from_train + from_held
    taken = set(copies)
    rest = [i for i in order if i not in taken]
    moved, blurred = rest[:n_move], rest[n_move : n_move + n_blur]
    truth: dict = {
        "source": str(src.resolve()),
        "seed": seed,
        "held_out": sorted(held),
        "moved": [],
        "copies": [],
        "blurred": [],
    }
    for k, i in enumerate(copies):
        to = str(rng.choice([c for c in scan.class_names if (c in held) != bool(side[i])]))
        new = _new_path(dst, scan.paths[i], to, f"copy{k:04d}")
        (dst / new).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dst / scan.paths[i], dst / new)
        truth["copies"].append({"path": new, "source": scan.paths[i], "from_split": "held_out" if side[i] else "train"})
    for k, i in enumerate(moved):
        c = scan.class_names[scan.labels[i]]
        to = str(rng.choice([x for x in scan.class_names if x != c]))
        new = _new_path(dst, scan.paths[i], to, f"img{k:04d}")
        (dst / new).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(dst / scan.paths[i], dst / new)
        truth["moved"].append({"path": new, "was": scan.paths[i], "true_class": c, "given_class": to})
    for i in blurred:
        _blur(dst / scan.paths[i], blur_radius)
        truth["blurred"].append({"path": scan.paths[i]})
    atomic_write_json(truth_path(dst), truth)
    return truth


def score_audit(truth: dict, issues: pd.DataFrame) -> dict:
    """How many injected faults the audit ranks in its top 2x per type (x = the number injected):
    moved images in the label-issue ranking (and the outlier ranking), copies as exact duplicate pairs and
    in the leakage ranking, blurred images in the quality ranking; plus how many of each were flagged."""
    out = {}

    def ranked(issue: str) -> pd.DataFrame:
        return issues[issues["issue"] == issue]

    def top(issue: str, paths: list[str], n: int) -> dict:
        r = ranked(issue)
        rank = dict(zip(r["path"], r["rank"]))
        flagged = set(r.loc[r["flagged"], "path"])
        return {
            "injected": n,
            f"in_top_{2 * n}": sum(1 for p in paths if rank.get(p, 1 << 60) < 2 * n),
            "flagged": sum(1 for p in paths if p in flagged),
            "flagged_total": len(flagged),
        }

    moved = [m["path"] for m in truth["moved"]]
    out["moved: label issues"] = top("label", moved, len(moved))
    out["moved: outliers"] = top("outlier", moved, len(moved))
    blurred = [b["path"] for b in truth["blurred"]]
    out["blurred: quality"] = top("quality", blurred, len(blurred))
    pairs = {frozenset((c["path"], c["source"])) for c in truth["copies"]}
    for issue in ("duplicate", "leakage"):
        r = ranked(issue)
        found = [frozenset((p, q)) for p, q in zip(r["path"], r["partner"])]
        ranks = [k for k, pair in zip(r["rank"], found) if pair in pairs]
        n = len(pairs)
        out[f"copied: {issue}"] = {
            "injected": n,
            "found": len(ranks),
            f"in_top_{2 * n}": sum(1 for k in ranks if k < 2 * n),
            "flagged_total": int(r["flagged"].sum()),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["score"]:  # python -m core.audit.faults score TRUTH AUDIT_DIR
        import pandas as pd

        truth = json.loads(Path(argv[1]).read_text())
        print(json.dumps(score_audit(truth, pd.read_parquet(Path(argv[2]) / "issues.parquet")), indent=2))
        return 0
    p = argparse.ArgumentParser(
        prog="python -m core.audit.faults",
        description=__doc__.splitlines()[0],
        epilog="python -m core.audit.faults score TRUTH.json AUDIT_DIR: count the injected "
        "faults the audit ranks in its top 2x per type",
    )
    p.add_argument("src", help="image folder (ImageFolder layout)")
    p.add_argument("dst", help="new folder for the corrupted copy (the truth goes to <dst>.faults.json)")
    p.add_argument(
        "--val-fraction", type=float, default=0.1, help="identity split the run will use (data.val_fraction)"
    )
    p.add_argument("--test-fraction", type=float, default=0.1, help="data.test_fraction")
    p.add_argument("--seed", type=int, default=0, help="train.seed of that run; also seeds the faults")
    p.add_argument("--move", type=float, default=0.03, help="share of images moved to a wrong identity")
    p.add_argument("--copies", type=int, default=50, help="images copied across the split boundary")
    p.add_argument("--blur", type=float, default=0.02, help="share of images blurred")
    args = p.parse_args(argv)
    try:
        held = held_out_identities(args.src, args.val_fraction, args.test_fraction, args.seed)
        t = inject_faults(
            args.src,
            args.dst,
            held,
            move_fraction=args.move,
            n_copies=args.copies,
            blur_fraction=args.blur,
            seed=args.seed,
        )
    except MatchLabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{len(t['moved'])} moved, {len(t['copies'])} copied across the split, {len(t['blurred'])} blurred\n"
        f"{truth_path(args.dst)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
