"""Processes: a second writer (or an evaluation) of a run folder is refused naming the holder's pid, and a
kill -9 during the decode-once cache build takes its decode workers with it. Both need real processes; every
wait is for a condition (a line printed, a process gone), with a generous ceiling only so a regression
fails, not hangs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from core.atomic import pid_alive
from tests.reliability.helpers import ROOT, assert_refused, run_cli, tree_hash


def _wait_for(condition, ceiling: float, what: str):
    deadline = time.monotonic() + ceiling
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {ceiling:.0f} s waiting for {what}")


def test_a_run_folder_in_use_is_refused_naming_the_pid(world, run_copy):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom core.lock import run_lock\n"
            f"with run_lock({str(run_copy)!r}):\n    print('locked', flush=True)\n"
            "    sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = tree_hash(run_copy)
        for args in (
            ("train", "--resume", run_copy, "train.epochs=3"),
            ("train", world.config, "--name", run_copy.name, "--out", run_copy.parent, "--overwrite"),
            ("evaluate", run_copy, "--data", world.data, "--device", "cpu"),  # weights may change under it
        ):
            assert_refused(run_cli(*args), f"{run_copy} is in use by pid {holder.pid}")
        assert tree_hash(run_copy) == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert not (run_copy / ".lock").exists()  # released and removed by its holder


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            out.setdefault(ppid, []).append(int(entry))
    return out


def _descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, depth) of every process below `pid`."""
    tree, out, todo = _children(), [], [(pid, 0)]
    while todo:
        p, depth = todo.pop()
        for c in tree.get(p, []):
            out.append((c, depth + 1))
            todo.append((c, depth + 1))
    return out


def test_kill_9_during_the_cache_build_leaves_no_workers(tmp_path):
    # 80 flat 5000 x 5000 PNGs (80 kB each, ~1 s each to decode): the pool is busy for a while.
    data = tmp_path / "slow"
    sample = tmp_path / "sample.png"
    Image.new("RGB", (5000, 5000), (120, 30, 60)).save(sample)
    for c in range(2):
        (data / f"id{c}").mkdir(parents=True)
        for i in range(40):
            (data / f"id{c}" / f"{i}.png").write_bytes(sample.read_bytes())
    # The cache build on its own (what `train` runs first), without paying for a torch import.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from core.data.cache import build_or_load_cache\nbuild_or_load_cache({str(data)!r}, 32, workers=2)",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT), "MATCHLAB_CACHE_DIR": str(tmp_path / "cache")},
    )
    try:
        # Workers are the forkserver's children: grandchildren of the building process.
        workers = _wait_for(
            lambda: (
                [p for p, depth in _descendants(proc.pid) if depth >= 2] if proc.poll() is None else pytest_fail(proc)
            ),
            300,
            "decode workers to start",
        )
        family = [p for p, _ in _descendants(proc.pid)]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        _wait_for(
            lambda: not any(pid_alive(p) for p in family),
            30,
            f"the decode workers {workers} (and the forkserver) to exit with their parent",
        )
    finally:
        if proc.poll() is None:
            proc.kill()
        for p, _ in _descendants(proc.pid):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def pytest_fail(proc: subprocess.Popen) -> None:
    raise AssertionError(f"the cache build exited ({proc.returncode}) before its decode workers were seen")


def test_no_path_is_left_locked_after_a_normal_run(world):
    assert not Path(world.base, ".lock").exists()
