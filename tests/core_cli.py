"""`python -m core ARGS` in a fresh process for the end-to-end tests that need one (test_evaluate.py,
test_search.py, test_sweep.py): the exact command a user runs, from the repository root, with the
decode-once cache pointed at the test's folder; and `cli_in_process`, the same command inside the test's
process (one torch import for a module of tests, not one per command). One copy of each, so every test runs
the CLI the same way."""

import contextlib
import io
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


def cli_in_process(*args: object, cache: Path) -> subprocess.CompletedProcess:
    """core.cli.main(args) with MATCHLAB_CACHE_DIR=cache and stdout/stderr captured; never raises on an exit."""
    from core.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = os.environ.get("MATCHLAB_CACHE_DIR")
    os.environ["MATCHLAB_CACHE_DIR"] = str(cache)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main([str(a) for a in args])
    finally:
        if old is None:
            os.environ.pop("MATCHLAB_CACHE_DIR", None)
        else:
            os.environ["MATCHLAB_CACHE_DIR"] = old
    return subprocess.CompletedProcess(list(map(str, args)), rc, out.getvalue(), err.getvalue())
