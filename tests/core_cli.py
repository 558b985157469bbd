"""`python -m core ARGS` in a fresh process for the end-to-end tests that need one (test_evaluate.py,
test_search.py, test_sweep.py): the exact command a user runs, from the repository root, with the
decode-once cache pointed at the test's folder. One copy, so every such test runs the CLI the same way.
In-process runners (faster, one torch import) live beside the tests that use them."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: object, cache: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Runs the CLI with MATCHLAB_CACHE_DIR=cache; check: raise with the end of stderr on a non-zero exit."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MATCHLAB_CACHE_DIR": str(cache)}
    r = subprocess.run(
        [sys.executable, "-m", "core", *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=env, check=False
    )
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}: {r.stderr[-2000:]}")
    return r
