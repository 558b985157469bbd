"""The CLI as the end-to-end tests run it (test_evaluate.py, test_search.py, test_sweep.py, ...): `cli` runs
`python -m core ARGS`'s own entry point, core.cli.main, inside the test's process by default (one torch
import per module of tests, not one per command: seconds each on a loaded CI machine), and in a fresh
process with fresh=True, for what only a process shows. Either way from the repository root with the
decode-once cache pointed at the test's folder. One copy, so every test runs the CLI the same way."""

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: object, cache: Path, check: bool = True, fresh: bool = False) -> subprocess.CompletedProcess:
    """The command's exit status, stdout and stderr; check: raise with the end of stderr on a non-zero exit.
    fresh: `python -m core` in a new process (interpreter exit codes, signals, once-per-process warnings)."""
    if fresh:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MATCHLAB_CACHE_DIR": str(cache)}
        cmd = [sys.executable, "-m", "core", *map(str, args)]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    else:
        r = cli_in_process(*args, cache=cache)
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
            try:
                rc = main([str(a) for a in args])
            except SystemExit as e:  # argparse's usage errors and --help exit, as in a process
                rc = e.code if isinstance(e.code, int) else 2
    finally:
        if old is None:
            os.environ.pop("MATCHLAB_CACHE_DIR", None)
        else:
            os.environ["MATCHLAB_CACHE_DIR"] = old
    return subprocess.CompletedProcess(list(map(str, args)), rc, out.getvalue(), err.getvalue())
