"""Recipe sweeps: train every combination of a grid of config values (times seeds) and tabulate them.

Entry point: `run_sweep(base, grid, overrides, ...) -> dict` (what `python -m core sweep --json` prints).
Runs train one after another through core.train.fit into <out>/<sweep>/<differences>/, named only by
what differs, so the same command run again skips finished runs and resumes a half-finished one; the
tables (sweep.csv, sweep_aggregate.csv, sweep.md) are rewritten after every run, so an interrupted
sweep still reports what finished.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.atomic import atomic_write_json, atomic_write_text
from core.config import Config, load_config
from core.errors import MatchLabError

# Metrics averaged over seeds in the aggregate table (row keys, see _row).
# the metric columns of every table a sweep writes or prints (sweep.csv, the aggregate, the summary)
METRICS = ("auc", "eer", "tar", "kfold_acc", "images_per_s", "wall_s")
NUMERIC = ("best", "best_epoch", *METRICS)
TAR_LEVEL = "0.01"  # core.metrics.verification keys TAR@FAR levels as f"{x:g}"
# Keys that change where or how fast a run trains, not what it learns: a sweep resumed on another
# machine may differ in them without being a different run.
NOT_RECIPE = {"train.device", "train.num_threads"}
WALL_FILE = "sweep_run.json"  # per run folder: training wall time summed over resumed segments


@dataclass
class PlannedRun:
    name: str  # folder name under the sweep folder, from the differences
    values: dict[str, Any]  # grid key -> resolved config value
    seed: int
    cfg: Config


def _split_values(text: str) -> list[str]:
    """Split "a,b,{x: 1, y: 2}" on the commas outside brackets, so YAML mappings and lists stay whole."""
    out, depth, current = [], 0, ""
    for ch in text:
        depth += (ch in "[{(") - (ch in "]})")
        if ch == "," and depth == 0:
            out.append(current)
            current = ""
        else:
            current += ch
    return out + [current]


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """`section.key=v1,v2` options -> {key: [value texts]} (texts parsed later exactly as overrides are)."""
    grid: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise MatchLabError(f"--grid {item!r} must look like section.key=v1,v2 (e.g. train.lr=0.1,0.01)")
        key, text = item.split("=", 1)
        values = [v.strip() for v in _split_values(text)]
        if key in grid:
            raise MatchLabError(f"--grid {key} is given twice; list all its values in one --grid")
        if key == "train.seed":
            raise MatchLabError("--grid train.seed: use --seeds N, which runs seeds 0..N-1 and averages over them")
        if any(v == "" for v in values):
            raise MatchLabError(f"--grid {item!r} has an empty value; separate values with single commas")
        grid[key] = values
    return grid


def _resolved(cfg: Config, dotted: str) -> Any:
    """The value a run really got for `section.key` (after YAML parsing and type coercion)."""
    section, key = dotted.split(".", 1)
    sub = getattr(cfg, section)
    if key.startswith("kwargs."):
        return sub.kwargs.get(key.split(".", 1)[1])
    return getattr(sub, key)


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def run_name(values: dict[str, Any], seed: int) -> str:
    """`loss.name=arcface,train.lr=0.01,seed=1`: keys sorted, so the order of --grid options does not
    matter; unsafe characters are replaced and a hash of the exact text keeps such names distinct."""
    raw = ",".join([f"{k}={_value_text(values[k])}" for k in sorted(values)] + [f"seed={seed}"])
    safe = re.sub(r"[^A-Za-z0-9._=,+-]", "_", raw)
    if safe != raw or len(safe) > 120:
        safe = f"{safe[:100]}-{hashlib.sha1(raw.encode()).hexdigest()[:8]}"
    return safe


def plan_runs(
    base: str | Path, grid: dict[str, list[str]], overrides: list[str], seeds: int | None
) -> list[PlannedRun]:
    """Every (grid combination, seed) with its config, all loaded before any training so that a bad key
    or value fails at once with the config's own error."""
    base_cfg = load_config(base, overrides)
    clash = sorted(set(grid) & {o.split("=", 1)[0] for o in overrides})
    if clash:
        raise MatchLabError(f"{', '.join(clash)} is both an override and a --grid key; give it in one place")
    seed_list = list(range(seeds)) if seeds is not None else [base_cfg.train.seed]
    keys = list(grid)
    runs: list[PlannedRun] = []
    seen: set[str] = set()
    for combo in itertools.product(*(grid[k] for k in keys)):
        for seed in seed_list:
            cfg = load_config(base, [*overrides, *(f"{k}={v}" for k, v in zip(keys, combo)), f"train.seed={seed}"])
            values = {k: _resolved(cfg, k) for k in keys}
            name = run_name(values, seed)
            if name in seen:  # e.g. train.lr=0.01,1e-2: the same number twice
                raise MatchLabError(f"--grid gives the run {name} twice; remove the repeated value")
            seen.add(name)
            runs.append(PlannedRun(name, values, seed, cfg))
    return runs


# ------------------------------------------------------------------------------------------ run folders


def _flat(d: dict) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, sub in d.items() for k, v in sub.items()}


def _check_same_recipe(run_dir: Path, cfg: Config) -> None:
    """A folder trained with another recipe (other base overrides, same name) must not be skipped as if
    it were this run: its numbers would land in the wrong row."""
    from core.layout import RunFiles, read_config

    if not RunFiles(run_dir).config.is_file():
        return

    saved, wanted = _flat(read_config(run_dir)), _flat(cfg.to_dict())
    diff = [k for k in wanted if k not in NOT_RECIPE and saved.get(k) != wanted[k]]
    if diff:
        k = diff[0]
        raise MatchLabError(
            f"{run_dir} was trained with {k}={saved.get(k)!r}, this sweep asks {wanted[k]!r}; "
            f"use another --name (or delete that folder)"
        )


def _train_state(run_dir: Path) -> dict | None:
    """The trainer's state from last.pt (epoch, best, best_epoch, stale_epochs, history), or None."""
    from core.run import LAST, read_last_checkpoint

    if not (run_dir / LAST).is_file():
        return None
    state = read_last_checkpoint(run_dir / LAST)["state"]  # weights_only: a crafted last.pt cannot run code
    if not isinstance(state, dict) or not {"epoch", "stale_epochs", "history"} <= state.keys():
        raise MatchLabError(f"{run_dir / LAST} holds no training state; delete that run folder to train it again")
    return state


def is_finished(state: dict | None, cfg: Config) -> bool:
    if state is None:
        return False
    early = cfg.train.early_stop and state["stale_epochs"] >= cfg.train.early_stop
    return state["epoch"] >= cfg.train.epochs or bool(early)


def _select_metric_name(cfg: Config, best_row: dict) -> str:
    """Which metric fit selected on: the validation key whose value it logged as val_metric."""
    candidates = ([cfg.train.select_metric] if cfg.train.select_metric != "auto" else []) + [
        "val_acc",
        "val_auc",
        "val_loss",
    ]
    return next((k for k in candidates if best_row.get(k) == best_row.get("val_metric")), "-loss/total")


def _evaluation(
    run: PlannedRun, run_dir: Path, eval_data: str | None, pairs_file: str | None, pairs_format: str | None
) -> dict:
    """The run's verification summary on the sweep's protocol, reusing eval/<key>/summary.json when it
    was computed from the current best weights."""
    from core.evaluate import eval_key, evaluate_run
    from core.layout import RunFiles, file_hash, read_summary

    data = eval_data or run.cfg.data.train
    if not eval_data and not pairs_format and run.cfg.data.pairs_format:  # a pair model's own protocol
        pairs_format, pairs_file = run.cfg.data.pairs_format, run.cfg.data.pairs_file or None
    try:
        summary = read_summary(RunFiles(run_dir).eval(eval_key(data, pairs_format)).dir)  # {} when missing
    except MatchLabError:
        summary = {}  # a damaged cached summary is recomputed, not fatal
    if summary and summary.get("checkpoint_hash") == file_hash(RunFiles(run_dir).best):
        return summary
    return evaluate_run(run_dir, data, pairs_file=pairs_file, pairs_format=pairs_format, device=run.cfg.train.device)


def _recorded_wall(run_dir: Path) -> float | None:
    f = run_dir / WALL_FILE
    return json.loads(f.read_text())["wall_s"] if f.is_file() else None


def _row(run: PlannedRun, run_dir: Path, state: dict, evaluation: dict | None) -> dict:
    history = state["history"]
    best_row: dict = next((h for h in history if h["epoch"] == state["best_epoch"]), {})
    v = (evaluation or {}).get("verification", {})
    rates = [h["images_per_s"] for h in history if h.get("images_per_s")]
    wall = _recorded_wall(run_dir)
    if wall is None:  # trained outside a sweep: fall back on the epochs' own timing
        wall = sum(h.get("epoch_s", 0.0) for h in history)
    tar = v.get("tar_at_far", {}).get(TAR_LEVEL, {}).get("tar")
    return {
        "run": run.name,
        **run.values,
        "seed": run.seed,
        "select_metric": _select_metric_name(run.cfg, best_row),
        "best": state["best"],
        "best_epoch": state["best_epoch"],
        "epochs": state["epoch"],
        "auc": v.get("auc"),
        "eer": v.get("eer"),
        "tar": tar,
        "kfold_acc": v.get("kfold_accuracy_mean"),
        "images_per_s": sum(rates) / len(rates) if rates else None,
        "wall_s": round(wall, 2),
    }


# ------------------------------------------------------------------------------------------------ tables


def aggregate(rows: list[dict], keys: list[str]) -> list[dict]:
    """Mean and sample std over seeds per grid combination (std is None for a single seed)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(_value_text(r[k]) for k in keys), []).append(r)
    out = []
    for members in groups.values():
        agg = {k: members[0][k] for k in keys}
        agg.update(n_seeds=len(members), select_metric=members[0]["select_metric"])
        for m in NUMERIC:
            xs = [r[m] for r in members if r[m] is not None and not math.isnan(r[m])]
            mean = sum(xs) / len(xs) if xs else None
            std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
            agg[f"{m}_mean"], agg[f"{m}_std"] = mean, std
        out.append(agg)
    return out


def _cell(x: Any, exact: bool = False) -> str:
    if x is None:
        return ""
    if isinstance(x, float) and not exact:
        return f"{x:.4g}"  # 4 significant digits: 0.8029, 75.92, 1286
    return _value_text(x).replace("|", "\\|")


def markdown_table(rows: list[dict], columns: list[str], exact: tuple[str, ...] = ()) -> str:
    """A Markdown table; `exact` columns (config values) print in full, metrics to 4 significant digits."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c), c in exact) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _aggregate_view(agg: list[dict], keys: list[str]) -> tuple[list[dict], list[str]]:
    """The aggregate rows with each metric as one "mean ± std" cell, for reading rather than parsing."""
    view = []
    for a in agg:
        row = {k: a[k] for k in keys + ["n_seeds", "select_metric"]}
        for m in NUMERIC:
            mean, std = a[f"{m}_mean"], a[f"{m}_std"]
            row[m] = "" if mean is None else _cell(mean) + ("" if std is None else f" ± {_cell(std)}")
        view.append(row)
    return view, keys + ["n_seeds", "select_metric", *NUMERIC]


def _write_tables(sweep_dir: Path, rows: list[dict], keys: list[str], command: str, note: str) -> list[dict]:
    import pandas as pd

    agg = aggregate(rows, keys)
    run_cols = [
        "run",
        *keys,
        "seed",
        "select_metric",
        "best",
        "best_epoch",
        "epochs",
        *METRICS,
    ]

    def as_text(rs: list[dict]) -> list[dict]:  # dict-valued grid cells (loss.kwargs) as one JSON text
        return [{k: _value_text(v) if isinstance(v, (dict, list)) else v for k, v in r.items()} for r in rs]

    atomic_write_text(sweep_dir / "sweep.csv", pd.DataFrame(as_text(rows), columns=run_cols).to_csv(index=False))
    atomic_write_text(sweep_dir / "sweep_aggregate.csv", pd.DataFrame(as_text(agg)).to_csv(index=False))
    view, view_cols = _aggregate_view(agg, keys)
    atomic_write_text(
        sweep_dir / "sweep.md",
        "\n".join(
            [
                f"# Sweep {sweep_dir.name}",
                "",
                "```",
                command,
                "```",
                "",
                note,
                "",
                "best = the run's best validation metric (select_metric) at best_epoch; auc / eer / tar (TAR@FAR=1e-2) / "
                "kfold_acc = verification on the evaluation pairs; images_per_s = training throughput (mean over "
                "epochs); wall_s = training wall time.",
                "",
                "## Runs",
                "",
                markdown_table(rows, run_cols, tuple(keys)),
                "",
                "## Mean ± std over seeds",
                "",
                markdown_table(view, view_cols, tuple(keys)),
                "",
            ]
        ),
    )
    return agg


# ------------------------------------------------------------------------------------------------- sweep


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_sweep(
    base: str | Path,
    grid: dict[str, list[str]],
    overrides: list[str],
    *,
    seeds: int | None = None,
    out: str | Path = "checkpoints",
    name: str | None = None,
    eval_data: str | None = None,
    pairs_file: str | None = None,
    pairs_format: str | None = None,
    evaluate: bool = True,
    command: str = "",
) -> dict:
    """Train (or skip, or resume) every planned run, evaluate it, and write the sweep tables."""
    from core.run import LAST
    from core.train import fit

    if seeds is not None and seeds < 1:
        raise MatchLabError(f"--seeds {seeds}: give at least 1")
    if eval_data and not Path(eval_data).is_dir():  # fail now, not after the first run has trained
        raise MatchLabError(f"--eval-data {eval_data}: folder not found")
    runs = plan_runs(base, grid, overrides, seeds)
    sweep_dir = Path(out) / (name or f"{Path(base).stem}-sweep")
    for run in runs:
        _check_same_recipe(sweep_dir / run.name, run.cfg)
    keys = list(grid)
    where = f"{eval_data or 'data.train (pairs among the held-out identities)'}" + (
        f" ({pairs_format} pairs)" if pairs_format else ""
    )
    note = (
        f"{len(runs)} runs of {base}"
        + (f" with {' '.join(overrides)}" if overrides else "")
        + (f"; evaluated on {where}." if evaluate else "; not evaluated.")
    )
    rows: list[dict] = []
    statuses: list[str] = []
    agg: list[dict] = []
    for i, run in enumerate(runs, 1):
        run_dir = sweep_dir / run.name
        state = _train_state(run_dir)
        if is_finished(state, run.cfg):
            status = "skipped"
            _log(f"[{i}/{len(runs)}] {run_dir}: finished earlier, skipped")
        else:
            status = "resumed" if state is not None else "trained"
            _log(f"[{i}/{len(runs)}] {run_dir}: {'resuming' if state else 'training'}")
            # A resumed run's wall time adds this segment to the earlier ones (a killed segment wrote no
            # record: count its epochs' own time instead).
            before = (
                0.0
                if state is None
                else _recorded_wall(run_dir) or sum(h.get("epoch_s", 0.0) for h in state["history"])
            )
            t0 = time.perf_counter()
            # No last.pt: whatever the folder holds (a config.yaml from a failed start) is no training to keep.
            fit(run.cfg, run_dir, resume=state is not None, overwrite=state is None)
            atomic_write_json(run_dir / WALL_FILE, {"wall_s": before + time.perf_counter() - t0})
            state = _train_state(run_dir)
        if state is None:  # a finished or just-trained run has last.pt; a folder emptied under us has not
            raise MatchLabError(f"{run_dir}: training left no {LAST}; run the sweep again")
        evaluation = _evaluation(run, run_dir, eval_data, pairs_file, pairs_format) if evaluate else None
        rows.append(_row(run, run_dir, state, evaluation))
        statuses.append(status)
        agg = _write_tables(sweep_dir, rows, keys, command, note)
    return {
        "sweep": str(sweep_dir),
        "runs": [{**r, "status": s} for r, s in zip(rows, statuses)],
        "aggregate": agg,
        "keys": keys,
        "tables": [str(sweep_dir / f) for f in ("sweep.csv", "sweep_aggregate.csv", "sweep.md")],
    }


def summary_text(result: dict) -> str:
    """The human summary: each run with what this invocation did to it, then the seed aggregate."""
    keys, runs = result["keys"], result["runs"]
    cols = [
        *keys,
        "seed",
        "status",
        "select_metric",
        "best",
        *METRICS,
    ]
    view, view_cols = _aggregate_view(result["aggregate"], keys)
    done = sum(r["status"] != "skipped" for r in runs)
    return "\n".join(
        [
            markdown_table(runs, cols, tuple(keys)),
            "",
            markdown_table(view, view_cols, tuple(keys)),
            "",
            f"{len(runs)} runs: {done} trained or resumed, {len(runs) - done} finished earlier and skipped",
            *result["tables"],
            result["sweep"],
        ]
    )
