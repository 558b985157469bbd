"""Per-group error rates at ONE global threshold: FNMR / FMR per group with intervals, the cross-group
impostor FMR matrix (NIST FRVT demographic reports), max/min ratios and the fairness discrepancy rate.

Entry points: `read_attributes(csv, image_paths)` (a user's CSV: image path + any columns),
`builtin_attributes(pairs)` (slices that need no CSV: pair slices such as CFP FF/FP or shoes test_w /
test_m, and a nested layout's sub-folder such as CFP frontal / profile), and
`group_report(pairs, ids, groups_a, groups_b, threshold)`. Definitions: docs/metrics.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import MatchLabError
from core.metrics import uncertainty as unc
from core.metrics.verification import MIN_EVENTS

FDR_ALPHA = 0.5
PATH_COLUMNS = ("path", "image", "file")


def read_attributes(path: str | Path, image_paths: Sequence[str]) -> dict[str, dict[str, str]]:
    """{column: {image path: value}} from a CSV whose first column (or a column named path / image /
    file) holds image paths relative to the evaluated folder. Every image it names must be one of
    `image_paths`; images it does not name get no group."""
    path = Path(path)
    if not path.is_file():
        raise MatchLabError(f"attributes file {path} not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError):
        raise MatchLabError(
            f"{path} is not a readable CSV: give a header line 'path,<attribute>,...' and one row per image"
        ) from None
    key = next(
        (c for c in frame.columns if c.strip().lower() in PATH_COLUMNS),
        frame.columns[0] if len(frame.columns) else None,
    )
    columns = [c for c in frame.columns if c != key]
    if key is None or not columns or frame.empty:
        raise MatchLabError(f"{path}: needs a path column and at least one attribute column, with one row per image")
    names = frame[key].str.strip().str.replace("\\", "/", regex=False).str.lstrip("./")
    known = set(image_paths)
    missing = [n for n in names if n not in known]
    if missing:
        raise MatchLabError(
            f"{path} names {len(missing)} images that are not in the evaluated folder (first: "
            f"{missing[0]!r}); give paths relative to the --data folder, as in samples.parquet"
        )
    dup = names.duplicated()
    if dup.any():
        raise MatchLabError(
            f"{path} lists {int(dup.sum())} images twice (first: {names[dup].iloc[0]!r}); give one row per image"
        )
    return {str(c): dict(zip(names, frame[c].astype(str))) for c in columns}


def builtin_attributes(pairs: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray, bool]]:
    """Groups that need no CSV, as {name: (group of image a, group of image b, image_level)}:
    "slice" (the protocol's pair slices, e.g. CFP FF / FP, shoes test_w / test_m) when there are several,
    and "subfolder" (the level below the identity in a nested layout, e.g. CFP frontal / profile)."""
    out: dict[str, tuple[np.ndarray, np.ndarray, bool]] = {}
    sl = pairs["slice"].astype(str).to_numpy(object)
    if len(set(sl) - {"all"}) >= 2:
        out["slice"] = (sl, sl, False)
    pa, pb = pairs["path_a"].astype(str).str.split("/"), pairs["path_b"].astype(str).str.split("/")
    if len(pa) and pa.map(len).min() >= 3 and pb.map(len).min() >= 3:
        sa, sb = pa.str[-2].to_numpy(object), pb.str[-2].to_numpy(object)
        if 2 <= len(set(sa) | set(sb)) <= 20:
            out["subfolder"] = (sa, sb, True)
    return out


def _ratio(values: list[float]) -> float | None:
    v = [x for x in values if x is not None and not math.isnan(x)]
    if len(v) < 2 or min(v) == 0.0:
        return None
    return max(v) / min(v)


def _spread(values: list[float]) -> float:
    v = [x for x in values if x is not None and not math.isnan(x)]
    return max(v) - min(v) if len(v) >= 2 else 0.0


def _rate_ci(
    scores: np.ndarray,
    labels: np.ndarray,
    id_a: np.ndarray,
    id_b: np.ndarray,
    threshold: float,
    *,
    n_boot: int,
    level: float,
    seed: int,
    resample: str,
) -> dict[str, list[float] | None]:
    if len(scores) == 0:
        return {"far": None, "frr": None}
    prep = unc.prepare(scores, labels, id_a, id_b, require_both=False)
    reps = unc.replicates(prep, resample=resample, n_boot=n_boot, seed=seed, thresholds=[threshold])
    return {m: unc._pair(unc.interval(reps[m][:, 0], level)) for m in ("far", "frr")}


def group_report(
    scores: np.ndarray,
    labels: np.ndarray,
    id_a: np.ndarray,
    id_b: np.ndarray,
    group_a: np.ndarray,
    group_b: np.ndarray,
    threshold: float,
    *,
    image_level: bool = True,
    n_boot: int = unc.DEFAULT_BOOTSTRAP,
    level: float = unc.DEFAULT_LEVEL,
    seed: int = 0,
    resample: str = "identities",
    alpha: float = FDR_ALPHA,
) -> dict[str, Any]:
    """FNMR_g over genuine pairs with both images in g, FMR_g over impostor pairs with both images in g,
    at `threshold` (accept s >= threshold), with bootstrap intervals; the cross-group matrices (image-level
    attributes only: impostor FMR and genuine FNMR per unordered group pair); ratios and FDR.
    Pairs with an image of no group (None / "") are left out and counted."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels).astype(bool)
    ga = pd.Series(group_a, dtype=object).fillna("").astype(str).to_numpy(object)
    gb = pd.Series(group_b, dtype=object).fillna("").astype(str).to_numpy(object)
    known = (ga != "") & (gb != "")
    accept = s >= threshold
    names = sorted(set(ga[known]) | set(gb[known]))
    key = unc.ci_key(level)
    rows = []
    for g in names:
        inside = known & (ga == g) & (gb == g)
        gen, imp = inside & y, inside & ~y
        ng, ni = int(gen.sum()), int(imp.sum())
        ci = _rate_ci(
            s[inside],
            y[inside],
            np.asarray(id_a)[inside],
            np.asarray(id_b)[inside],
            threshold,
            n_boot=n_boot,
            level=level,
            seed=seed,
            resample=resample,
        )
        fnmr = float((~accept[gen]).mean()) if ng else None
        fmr = float(accept[imp].mean()) if ni else None
        small = ng < MIN_EVENTS or ni < MIN_EVENTS
        rows.append(
            {
                "group": g,
                "n_genuine": ng,
                "n_impostor": ni,
                "fnmr": fnmr,
                f"fnmr_{key}": ci["frr"],
                "fmr": fmr,
                f"fmr_{key}": ci["far"],
                "small": small,
                "note": (
                    f"too small to judge: {ng} genuine and {ni} impostor pairs (fewer than {MIN_EVENTS} of a kind)"
                )
                if small
                else "",
            }
        )
    out: dict[str, Any] = {
        "threshold": float(threshold),
        "groups": rows,
        "image_level": image_level,
        "pairs_without_group": int((~known).sum()),
        "level": level,
        "resample": resample,
    }
    if image_level and names:
        idx = {g: i for i, g in enumerate(names)}
        ia = np.array([idx.get(g, -1) for g in ga])
        ib = np.array([idx.get(g, -1) for g in gb])
        lo, hi = np.minimum(ia, ib), np.maximum(ia, ib)
        G = len(names)
        for kind, mask, err in (("fmr", ~y, accept), ("fnmr", y, ~accept)):
            sel = known & mask
            cell = lo[sel] * G + hi[sel]
            n = np.bincount(cell, minlength=G * G).reshape(G, G)
            e = np.bincount(cell, weights=err[sel], minlength=G * G).reshape(G, G)
            n, e = n + np.triu(n, 1).T, e + np.triu(e, 1).T  # unordered pairs: mirror the upper triangle
            with np.errstate(invalid="ignore", divide="ignore"):
                rate = np.where(n > 0, e / np.maximum(n, 1), np.nan)
            out[f"cross_{kind}"] = {
                "groups": names,
                "rate": [[None if math.isnan(v) else float(v) for v in r] for r in rate],
                "n": n.astype(int).tolist(),
            }
    fnmrs = [r["fnmr"] for r in rows if not r["small"]]
    fmrs = [r["fmr"] for r in rows if not r["small"]]
    out["fnmr_ratio"], out["fmr_ratio"] = _ratio(fnmrs), _ratio(fmrs)
    out["fdr"] = 1.0 - (alpha * _spread(fmrs) + (1.0 - alpha) * _spread(fnmrs))
    out["fdr_alpha"] = alpha
    out["summary_over"] = f"{len(fnmrs)} of {len(rows)} groups (groups too small to judge are left out)"
    return out


def image_groups(
    values: Mapping[str, str], path_a: Sequence[str], path_b: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Per pair, the attribute value of each image ("" for an image the attributes file does not name)."""
    return (
        np.array([values.get(p, "") for p in path_a], dtype=object),
        np.array([values.get(p, "") for p in path_b], dtype=object),
    )
