"""Fixtures for the dashboard tests: a checkpoints folder holding the bundled demo run and a second run.

The demo run (checkpoints/orl_demo, or $MATCHLAB_DEMO_RUN) is linked, not copied; run "orl_demo_b" is made
from its evaluation with perturbed scores, so the Compare page has two runs to compare without training.
The app is pointed at that folder through $MATCHLAB_CHECKPOINTS.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEMO_RUN = Path(os.environ.get("MATCHLAB_DEMO_RUN") or ROOT / "checkpoints" / "orl_demo")
APP = ROOT / "dashboard" / "app.py"


def demo_key(run: Path) -> str | None:
    ev = run / "eval"
    keys = sorted(p.name for p in ev.iterdir() if (p / "summary.json").is_file()) if ev.is_dir() else []
    return "orl_faces" if "orl_faces" in keys else (keys[0] if keys else None)


@pytest.fixture(scope="session")
def demo_run() -> Path:
    if not (DEMO_RUN / "best.safetensors").is_file() or demo_key(DEMO_RUN) is None:
        pytest.skip(f"the demo run {DEMO_RUN} with an evaluation is missing; build it with scripts/setup.sh")
    return DEMO_RUN


def make_second_run(demo: Path, dst: Path, seed: int = 0) -> Path:
    """A run folder holding only the demo's evaluation with noisy scores: a different, worse model."""
    from core.metrics.verification import verification_report

    key = demo_key(demo)
    src, out = demo / "eval" / key, dst / "eval" / key
    out.mkdir(parents=True)
    for name in ("config.yaml", "split.json", "metrics.jsonl"):
        if (demo / name).is_file():
            shutil.copy(demo / name, dst / name)
    for f in src.iterdir():
        if f.is_file() and f.name != "pairs.parquet":
            shutil.copy(f, out / f.name)
    pairs = pd.read_parquet(src / "pairs.parquet")
    rng = np.random.default_rng(seed)
    pairs["score"] = (pairs["score"] + rng.normal(0, 0.15, len(pairs))).astype(np.float32)
    pairs.to_parquet(out / "pairs.parquet", index=False)
    summary = json.loads((src / "summary.json").read_text())
    summary["verification"] = verification_report(pairs["score"].to_numpy(), pairs["label"].to_numpy())
    summary["checkpoint_hash"] = "b" * 16
    (out / "summary.json").write_text(json.dumps(summary, default=lambda o: o.tolist()))
    return dst


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, demo_run: Path) -> Path:
    root = tmp_path_factory.mktemp("checkpoints")
    (root / "orl_demo").symlink_to(demo_run.resolve(), target_is_directory=True)
    make_second_run(demo_run, root / "orl_demo_b")
    return root


@pytest.fixture
def app_env(checkpoints: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MATCHLAB_CHECKPOINTS", str(checkpoints))
    return checkpoints


@pytest.fixture
def face_bytes() -> tuple[bytes, bytes, bytes]:
    """Two photos of one person and one of another, from the bundled ORL faces."""
    faces = ROOT / "data" / "orl_faces"
    return (
        (faces / "s1" / "1.pgm").read_bytes(),
        (faces / "s1" / "2.pgm").read_bytes(),
        (faces / "s2" / "1.pgm").read_bytes(),
    )
