"""Exclusive locks on run folders, so two processes never write one run.

Entry points: `with run_lock(run_dir):` (train, resume), and `refuse_while_locked(run_dir, what)` for a
command that reads a run (evaluate). The lock is an `fcntl.flock` on `<run_dir>/.lock`, which the kernel
releases when the holder exits, kill -9 included; the file holds the holder's pid so a second process can
say who holds it. Why: two `train --name X` runs used to both "succeed" into one folder holding a mix of
their files, and an `evaluate` during training described weights that training then replaced.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.errors import MatchLabError

LOCK_NAME = ".lock"


@contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of `run_dir` (created if missing) for the `with` block; raise
    MatchLabError(`RUN is in use by pid N`) at once when another process holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise MatchLabError(
                f"{run_dir} is in use by pid {holder}: wait for that process to finish, or use another --name"
            ) from None
        # The previous holder unlinks the file on release: if that happened between our open and our
        # flock, we locked a file nobody else can see. Retry on the current one.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        path.unlink(missing_ok=True)  # while still locked: a waiter then retries on a fresh file
        os.close(fd)


def refuse_while_locked(run_dir: str | os.PathLike, what: str) -> None:
    """Raise MatchLabError(`RUN is in use by pid N ...`) when a process (a training run) holds the lock of
    `run_dir`; otherwise return at once. Only a check: it takes a shared lock and drops it."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        raise MatchLabError(
            f"{run_dir} is in use by pid {holder} (training): {what} it once that process has finished"
        ) from None
    finally:
        os.close(fd)  # also releases the shared lock when it was taken
