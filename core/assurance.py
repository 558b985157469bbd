"""Thresholds you can defend: intervals, calibrated meaning, cost and per-group rates of an evaluation.

Entry point: `assure(pairs, ids_a, ids_b, verification, options, ...)`, called by `core.evaluate` after the
point estimates. It adds `ci95`-style fields (subject bootstrap by default, pair bootstrap beside it) to
the verification report, the minimum-cost operating point, the calibration summary, and returns the
calibration map (calibration.json: what `verify` and Live match use) and the per-group report (groups.json).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import MatchLabError
from core.metrics import calibration as cal
from core.metrics import costs
from core.metrics import groups as grp
from core.metrics import uncertainty as unc
from core.metrics import verification as vm


@dataclass
class AssuranceOptions:
    """What `evaluate` was asked for (CLI flags of the same names)."""

    n_boot: int = unc.DEFAULT_BOOTSTRAP  # bootstrap replicates; 0 = no intervals
    level: float = unc.DEFAULT_LEVEL  # interval coverage
    resample: str = "identities"  # identities (subject bootstrap) | pairs
    seed: int = 0  # fixes every replicate
    prior: float = costs.DEFAULT_PRIOR  # probability of a genuine attempt
    cost_fa: float = costs.DEFAULT_COST  # cost of a false accept
    cost_fr: float = costs.DEFAULT_COST  # cost of a false reject
    attributes: str | None = None  # CSV: image path + attribute columns
    calibration: str = "isotonic"  # isotonic | platt

    def validate(self) -> AssuranceOptions:
        if int(self.n_boot) < 0:
            raise MatchLabError(f"--bootstrap {self.n_boot}: give a number of replicates >= 0 (0 turns intervals off)")
        unc.check_level(self.level)
        if self.resample not in unc.RESAMPLE:
            raise MatchLabError(f"--resample {self.resample!r} is not valid; choose one of {', '.join(unc.RESAMPLE)}")
        costs.check_costs(self.prior, self.cost_fa, self.cost_fr)
        if self.attributes is not None and not Path(self.attributes).is_file():
            raise MatchLabError(f"attributes file {self.attributes} not found")
        return self


def _kfold_interval(scores, labels, ids_a, ids_b, folds, opts: AssuranceOptions, method: str) -> list[float] | None:
    """The k-fold accuracy interval on the rows and folds the reported k-fold used (balanced sample or all)."""
    balanced = vm.balanced_kfold_rows(labels, folds, opts.seed)
    rows = balanced[0] if balanced is not None else np.arange(len(labels))
    y = labels[rows]
    if y.sum() == 0 or y.sum() == len(y):
        return None
    f = unc.kfold_folds(y, None if balanced is not None else folds[rows], seed=opts.seed)
    if len(np.unique(f)) < 2:
        return None
    prep = unc.prepare(scores[rows], y, ids_a[rows], ids_b[rows], f)
    reps = unc.kfold_replicates(prep, resample=method, n_boot=opts.n_boot, seed=opts.seed)
    return unc._pair(unc.interval(np.nanmean(reps, axis=1), opts.level))


def operating_thresholds(verification: dict, run_threshold: float | None, min_cost: dict) -> dict[str, float]:
    """The named thresholds intervals are reported at: EER, best accuracy, minimum cost, the run's own."""
    out = {"eer": verification["eer_threshold"], "best_accuracy": verification["best_accuracy_threshold"]}
    if math.isfinite(min_cost["threshold"]):
        out["min_cost"] = min_cost["threshold"]
    if run_threshold is not None:
        out["run"] = float(run_threshold)
    return out


def assure(
    pairs: pd.DataFrame,
    ids_a: np.ndarray,
    ids_b: np.ndarray,
    verification: dict,
    opts: AssuranceOptions,
    *,
    run_threshold: float | None = None,
    attributes: dict[str, dict[str, str]] | None = None,
) -> tuple[dict, dict]:
    """Add intervals, cost and calibration to `verification` (in place); returns (calibration, groups) to
    be written as calibration.json and groups.json. pairs: pairs.parquet's frame; ids_a/ids_b: identity
    of each pair's images (what the subject bootstrap resamples)."""
    s = pairs["score"].to_numpy(np.float64)
    y = pairs["label"].to_numpy(np.int64)
    folds = pairs["fold"].to_numpy(np.int64)
    key = unc.ci_key(opts.level)
    points = vm.roc_points(s, y)
    mc = costs.min_cost_threshold(points, opts.prior, opts.cost_fa, opts.cost_fr)
    verification["min_cost"] = mc
    verification["rule_of_three_far"] = unc.rule_of_three(points.n_impostor, opts.level)
    thresholds = operating_thresholds(verification, run_threshold, mc)
    if opts.n_boot > 0:
        rep = unc.bootstrap_report(
            s,
            y,
            ids_a,
            ids_b,
            thresholds=thresholds,
            far_levels=[float(k) for k in verification["tar_at_far"]],
            n_boot=opts.n_boot,
            level=opts.level,
            seed=opts.seed,
            resample=opts.resample,
            cost=(opts.prior, opts.cost_fa, opts.cost_fr),
        )
        for method in unc.RESAMPLE:
            if verification.get("kfold"):
                rep[method]["kfold_accuracy"] = _kfold_interval(s, y, ids_a, ids_b, folds, opts, method)
        main = rep[opts.resample]
        verification["intervals"] = rep
        verification[f"auc_{key}"], verification[f"eer_{key}"] = main["auc"], main["eer"]
        verification[f"kfold_accuracy_{key}"] = main.get("kfold_accuracy")
        for level, row in verification["tar_at_far"].items():
            row[key] = main["tar_at_far"].get(level) if row.get("reachable") else None
        mc[key] = main["at"].get("min_cost", {}).get("dcf")
        mc[f"far_{key}"] = main["at"].get("min_cost", {}).get("far")
        mc[f"frr_{key}"] = main["at"].get("min_cost", {}).get("frr")
        if run_threshold is not None:
            for m in ("far", "frr", "tar", "accuracy"):
                verification[f"{m}_{key}"] = main["at"]["run"][m]
    calibration = cal.calibration_report(s, y, folds=folds, id_a=ids_a, method=opts.calibration, seed=opts.seed)
    verification["calibration"] = {k: calibration[k] for k in ("method", "cllr", "min_cllr", "ece", "n_folds")}
    group_thr = run_threshold if run_threshold is not None else verification["eer_threshold"]
    groups = group_reports(pairs, ids_a, ids_b, group_thr, opts, attributes)
    return calibration, groups


def group_reports(
    pairs: pd.DataFrame,
    ids_a: np.ndarray,
    ids_b: np.ndarray,
    threshold: float,
    opts: AssuranceOptions,
    attributes: dict[str, dict[str, str]] | None = None,
) -> dict:
    """{"threshold", "attributes": {name: group_report}} for the CSV's columns and the built-in slices."""
    s = pairs["score"].to_numpy(np.float64)
    y = pairs["label"].to_numpy(np.int64)
    todo: dict[str, tuple[np.ndarray, np.ndarray, bool]] = {}
    for name, values in (attributes or {}).items():
        ga, gb = grp.image_groups(values, pairs["path_a"].tolist(), pairs["path_b"].tolist())
        todo[name] = (ga, gb, True)
    for name, spec in grp.builtin_attributes(pairs).items():
        todo.setdefault(name, spec)
    n_boot = max(opts.n_boot, 0)
    out: dict[str, Any] = {
        "threshold": float(threshold),
        "level": opts.level,
        "resample": opts.resample,
        "attributes": {},
    }
    from_file = attributes or {}
    for name, (ga, gb, image_level) in todo.items():
        out["attributes"][name] = grp.group_report(
            s,
            y,
            ids_a,
            ids_b,
            ga,
            gb,
            threshold,
            image_level=image_level,
            n_boot=max(n_boot, 1),
            level=opts.level,
            seed=opts.seed,
            resample=opts.resample,
        )
        from_csv = name in from_file
        out["attributes"][name]["source"] = "attributes file" if from_csv else "built-in"
        if from_csv:  # the page recomputes the groups at its slider's threshold from these
            out["attributes"][name]["images"] = from_file[name]
    return out


# ------------------------------------------------------------------------------- calibrated meaning
def run_calibration(run_dir: str | Path, key: str | None = None) -> dict[str, Any] | None:
    """calibration.json of one evaluation of the run (`key`), or of its most recent evaluation that has
    one; None when the run has none (evaluate it first)."""
    from core import layout

    run = layout.RunFiles(Path(run_dir))
    if key is not None:
        files = run.eval(key)
        if not files.calibration.is_file():
            raise MatchLabError(
                f"{files.dir} has no {layout.CALIBRATION}; run python -m core evaluate {run_dir} "
                f"--data <folder> first, or pick another --calibration-eval"
            )
        return layout.read_json(files.calibration)
    found = (
        sorted((f.stat().st_mtime, f) for f in run.eval_root.glob(f"*/{layout.CALIBRATION}"))
        if run.eval_root.is_dir()
        else []
    )
    return layout.read_json(found[-1][1]) if found else None


def calibrated_meaning(
    calibration: dict[str, Any] | None, score: float, photos: tuple[str | Path | None, ...] = ()
) -> dict[str, Any] | None:
    """P(same) and LR of `score` under an evaluation's calibration map, with where it was fitted and a
    warning when the photos are not from that data (the meaning holds for photos like those)."""
    if calibration is None:
        return None
    d = cal.describe(calibration["map"], score)
    data = calibration.get("data")
    out = {
        **d,
        "method": calibration["map"]["method"],
        "evaluation": calibration.get("key"),
        "data": data,
        "prior": calibration["map"]["prior"],
    }
    root = Path(data).resolve() if data else None
    outside = [p for p in photos if p is None or root is None or not Path(p).resolve().is_relative_to(root)]
    if outside:
        out["warning"] = (
            f"these photos are not from {data}: P(same) and LR say what this score meant on that data "
            "and hold only for photos like those"
        )
    return out


def meaning_text(m: dict[str, Any] | None) -> str:
    """ "P(same) 0.93 on <evaluation>, LR 41" (+ the warning) for the human summary."""
    if m is None:
        return "no calibration yet: evaluate the run to get P(same) and LR for a score"
    lr = m["lr"]
    lr_text = "inf" if math.isinf(lr) else (f"{lr:.3g}" if lr >= 0.01 else f"{lr:.1e}")
    text = f"P(same) {m['p_same']:.3f} on {m['evaluation']} (prior {m['prior']:.3f}), LR {lr_text}"
    return text + (f"\nwarning: {m['warning']}" if m.get("warning") else "")
