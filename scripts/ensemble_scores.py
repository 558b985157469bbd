"""How far an ensemble gets: the mean of several runs' scores of the same pairs, per slice (README's ensemble row).

Usage: python scripts/ensemble_scores.py RUN [RUN ...] [--eval images]
Each RUN must hold an evaluation `eval/<--eval>/pairs.parquet` of the same pairs (`python -m core evaluate RUN
--data ...`; `images` is the key of ../shared/datasets/cfp/images). Prints one JSON object: per run and for the
mean of their cosine scores, each slice's AUC and its k-fold accuracy on balanced pairs, as `evaluate` reports
them. The score mean is what an ensemble of the runs would score; `train.distill_from` learns from one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

# `python scripts/ensemble_scores.py` puts scripts/ first on the path, not the checkout that holds core/
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.errors import MatchLabError  # noqa: E402
from core.layout import EvalFiles  # noqa: E402
from core.metrics.verification import verification_report  # noqa: E402


def _slices(scores: np.ndarray, pairs: pd.DataFrame) -> dict:
    out = {}
    for name in sorted(set(pairs["slice"])):
        keep = (pairs["slice"].to_numpy() == name) & ~pairs["fte"].to_numpy()
        rep = verification_report(scores[keep], pairs["label"].to_numpy()[keep], None, balance_kfold=True)
        out[name] = {"auc": round(rep["auc"], 4), "kfold_accuracy": round(rep["kfold_accuracy_mean"], 4)}
    return out


def ensemble(runs: list[str], key: str) -> dict:
    tables = []
    for run in runs:
        path = EvalFiles(Path(run) / "eval" / key).pairs
        if not path.is_file():
            raise MatchLabError(f"{path} is missing: evaluate {run} first (python -m core evaluate {run} --data ...)")
        tables.append(pd.read_parquet(path, columns=["path_a", "path_b", "label", "score", "slice", "fte"]))
    first = tables[0]
    for run, t in zip(runs[1:], tables[1:]):
        if not (t["path_a"].equals(first["path_a"]) and t["path_b"].equals(first["path_b"])):
            raise MatchLabError(f"{run} scored other pairs than {runs[0]}: evaluate both on the same data")
    scores = [t["score"].to_numpy(np.float64) for t in tables]
    result = {run: _slices(s, first) for run, s in zip(runs, scores)}
    result["mean"] = _slices(np.mean(scores, axis=0), first)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders evaluated on the same pairs")
    parser.add_argument("--eval", default="images", help="evaluation key under RUN/eval/ (default: images)")
    args = parser.parse_args()
    try:
        print(json.dumps(ensemble(args.runs, args.eval), indent=2))
    except MatchLabError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
