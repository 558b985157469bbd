"""Sweeps on the bundled ORL faces: a two-value grid trains two runs and writes the tables, the same
command again skips both, a bad grid key fails before any training; naming and grid parsing units."""

import csv
import json
from pathlib import Path

import pytest

from core.config import load_config
from core.errors import MatchLabError
from core.sweep import is_finished, parse_grid, run_name
from tests.core_cli import cli

ROOT = Path(__file__).resolve().parents[1]
ORL = ROOT / "data" / "orl_faces"
TINY = [
    "model.name=convnet_tiny",
    "data.res=32",
    "train.epochs=1",
    "train.batch_size=64",
    "model.embedding_dim=16",
    f"data.train={ORL}",
    "train.device=cpu",
]


def test_sweep_trains_every_combination_writes_the_tables_and_skips_finished_runs(tmp_path):
    # Half the overrides follow the options, as `train` allows.
    args = [
        "sweep",
        str(ROOT / "configs" / "orl.yaml"),
        *TINY[:3],
        "--grid",
        "train.lr=0.05,0.01",
        "--out",
        str(tmp_path / "runs"),
        "--name",
        "lr",
        *TINY[3:],
        "--json",
    ]
    first = json.loads(cli(*args, cache=tmp_path / "cache").stdout)
    sweep = Path(first["sweep"])
    assert sweep == tmp_path / "runs" / "lr"
    assert [(r["train.lr"], r["seed"], r["status"]) for r in first["runs"]] == [
        (0.05, 0, "trained"),
        (0.01, 0, "trained"),
    ]
    rows = list(csv.DictReader((sweep / "sweep.csv").open()))
    assert len(rows) == 2
    assert list(rows[0]) == [
        "run",
        "train.lr",
        "seed",
        "select_metric",
        "best",
        "best_epoch",
        "epochs",
        "auc",
        "eer",
        "tar",
        "kfold_acc",
        "images_per_s",
        "wall_s",
    ]
    assert rows[0]["run"] == "train.lr=0.05,seed=0" and (sweep / rows[0]["run"] / "best.safetensors").is_file()
    for row in rows:
        assert row["select_metric"] == "val_auc" and row["epochs"] == "1"
        assert 0.5 < float(row["auc"]) <= 1 and float(row["images_per_s"]) > 0 and float(row["wall_s"]) > 0
    agg = first["aggregate"]
    assert [(a["train.lr"], a["n_seeds"]) for a in agg] == [(0.05, 1), (0.01, 1)]
    assert agg[0]["auc_mean"] == pytest.approx(float(rows[0]["auc"])) and agg[0]["auc_std"] is None
    assert len(list(csv.DictReader((sweep / "sweep_aggregate.csv").open()))) == 2
    md = (sweep / "sweep.md").read_text()
    assert "python -m core sweep" in md and "--grid train.lr=0.05,0.01" in md and "## Mean ± std over seeds" in md

    mtimes = {p: p.stat().st_mtime_ns for p in sweep.glob("*/last.pt")}
    assert len(mtimes) == 2
    again = json.loads(cli(*args, cache=tmp_path / "cache").stdout)
    assert [r["status"] for r in again["runs"]] == ["skipped", "skipped"]
    assert {p: p.stat().st_mtime_ns for p in sweep.glob("*/last.pt")} == mtimes
    assert [r["auc"] for r in again["runs"]] == [r["auc"] for r in first["runs"]]  # evaluation reused


def test_a_bad_grid_key_fails_before_training_naming_the_valid_keys(tmp_path):
    r = cli(
        "sweep",
        str(ROOT / "configs" / "orl.yaml"),
        "--grid",
        "train.lrr=0.05,0.01",
        "--out",
        str(tmp_path),
        *TINY,
        cache=tmp_path / "cache",
        check=False,
    )
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert "train.lrr" in r.stderr and "valid keys" in r.stderr and "train.lr," in r.stderr
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def test_grid_values_split_outside_brackets_and_names_are_deterministic_and_safe():
    grid = parse_grid(["loss.kwargs={margin: 0.5, scale: 30},{margin: 0.3}", "train.lr=0.1,1e-2"])
    assert grid["loss.kwargs"] == ["{margin: 0.5, scale: 30}", "{margin: 0.3}"]
    assert run_name({"train.lr": 0.01, "loss.name": "arcface"}, 1) == "loss.name=arcface,train.lr=0.01,seed=1"
    odd = run_name({"data.train": "/data/cfp"}, 0)
    assert "/" not in odd and odd != run_name({"data.train": "_data_cfp"}, 0)
    with pytest.raises(MatchLabError, match="--seeds"):
        parse_grid(["train.seed=0,1"])
    with pytest.raises(MatchLabError, match="section.key=v1,v2"):
        parse_grid(["train.lr"])


def test_finished_means_all_epochs_or_early_stopped():
    cfg = load_config(None, ["train.epochs=5", "train.early_stop=2"])
    assert not is_finished(None, cfg)
    assert is_finished({"epoch": 5, "stale_epochs": 0}, cfg)
    assert is_finished({"epoch": 3, "stale_epochs": 2}, cfg)
    assert not is_finished({"epoch": 3, "stale_epochs": 1}, cfg)
