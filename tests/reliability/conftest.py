"""Shared set-up of the reliability corpus: one small generated dataset, one trained and evaluated run.

Everything is built once per session (a 2-epoch convnet_tiny on 36 generated 40 px images); each case that
damages a run works on its own copy (`run_copy`), so the cases stay independent and fast.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.reliability.helpers import make_faces, run_cli


@dataclass
class World:
    root: Path  # session folder
    data: Path  # generated ImageFolder (6 identities x 6 images)
    config: Path  # tiny recipe on `data`
    runs: Path  # --out folder
    base: Path  # a trained (2 epochs) and evaluated run: never modified by a case
    image_a: Path
    image_b: Path


@contextmanager
def _one_thread_private_cache(cache: Path):
    """One torch thread (a busy 2-core CI machine: no oversubscription) and a private decode cache, for
    the corpus only: both are restored for whatever tests run next in the same process."""
    saved_env, saved_threads = os.environ.get("MATCHLAB_CACHE_DIR"), torch.get_num_threads()
    os.environ["MATCHLAB_CACHE_DIR"] = str(cache)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved_threads)
        if saved_env is None:
            os.environ.pop("MATCHLAB_CACHE_DIR", None)
        else:
            os.environ["MATCHLAB_CACHE_DIR"] = saved_env


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reliability_cache")


@pytest.fixture(autouse=True)
def _isolated(cache_root):
    with _one_thread_private_cache(cache_root):
        yield


@pytest.fixture(scope="session")
def world(tmp_path_factory, cache_root) -> World:
    root = tmp_path_factory.mktemp("reliability")
    with _one_thread_private_cache(cache_root):
        data = make_faces(root / "faces")
        config = root / "tiny.yaml"
        config.write_text(
            f"data: {{train: {data}, res: 32, val_fraction: 0.34}}\n"
            "model: {name: convnet_tiny, embedding_dim: 16}\n"
            "train: {epochs: 2, batch_size: 16, lr: 0.05, device: cpu, schedule: cosine, "
            "num_threads: 1}\n"
        )
        runs = root / "runs"
        r = run_cli("train", config, "--name", "base", "--out", runs)
        assert r.rc == 0, r.err[-3000:]
        r = run_cli("evaluate", runs / "base", "--data", data, "--device", "cpu", "--bootstrap", "0")
        assert r.rc == 0, r.err[-3000:]
    return World(root, data, config, runs, runs / "base", data / "id0" / "0.png", data / "id1" / "0.png")


@pytest.fixture
def run_copy(world: World, tmp_path: Path) -> Path:
    """A private copy of the trained run, for cases that damage it."""
    return Path(shutil.copytree(world.base, tmp_path / "run"))
