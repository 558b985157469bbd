"""Shared scaffolding for the tests that run `python -m bench.run` end to end on the CPU (test_bench.py,
test_bench_checklist.py): the tiny sizes every suite takes and one subprocess call with the harness's own
cache kept out of the user's. One place, so the two tests cannot drift apart on sizes or environment."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Tiny sizes for the roc, search, train and embed suites: seconds on a busy 2-core CPU.
TINY_SUITES = [
    "--images",
    "24",
    "--classes",
    "3",
    "--batch",
    "8",
    "--steps",
    "1",
    "--warmup",
    "1",
    "--workers",
    "1",
    "--repeats",
    "1",
    "--roc-sizes",
    "2000",
    "--search-probes",
    "16",
    "--search-gallery",
    "500",
    "--embed-batch",
    "16",
]
# Tiny sizes for the scale suite.
TINY_SCALE = [
    "--scale-gallery",
    "600",
    "--scale-probes",
    "40",
    "--scale-pairs-images",
    "300",
    "--scale-embed-images",
    "6",
    "--scale-res",
    "32",
]


def run_bench(args: list[str], out: Path, *, cache: Path, timeout: int) -> subprocess.CompletedProcess[str]:
    """Runs `python -m bench.run ARGS --out OUT` from the repository root with MATCHLAB_CACHE_DIR at `cache`
    (a folder the harness must never create: it keeps its caches in its own scratch folder)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MATCHLAB_CACHE_DIR": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "bench.run", *args, "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
        check=False,
    )
