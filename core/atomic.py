"""Atomic file writes for run folders and evaluation artifacts.

Every writer goes to a temporary name in the target's folder, fsyncs, then renames over the target,
so a run killed at any moment (kill -9 included) leaves either the old file or the new one, never half.
A whole folder (an evaluation) is replaced the same way by `replaced_dir`: built aside, then swapped in.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from core.errors import MatchLabError

TMP_SUFFIX = ".tmp"
_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: mkstemp creates 0600 files, and artifacts should be as readable as any file


def _atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], object]) -> Path:
    path = Path(path)
    if path.is_dir():  # os.replace onto a folder fails with a bare IsADirectoryError
        raise MatchLabError(f"{path} is a folder; give the name of a file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's pid in the name lets `remove_stale_tmp` tell a killed writer's leftover from a live one's.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def pid_alive(pid: int) -> bool:
    """Whether process `pid` is running on this machine (a pid we may not signal still is; a zombie, dead
    but not yet reaped by its parent, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (not Linux): kill(pid, 0) said it exists


def remove_stale_tmp(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that writers killed mid-write (kill -9) left in `folder`; files of a
    writer that is still running are kept. Returns the removed paths."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for tmp in folder.glob(f".*{TMP_SUFFIX}"):
        parts = tmp.name.rsplit(".", 3)  # ".<name>", "<pid>", "<random>", "tmp"
        pid = int(parts[1]) if len(parts) == 4 and parts[1].isdigit() else None
        if pid is None or pid != os.getpid() and not pid_alive(pid):
            # Older MatchLab wrote no pid: such a file can only be a leftover of an earlier version's kill.
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


@contextmanager
def replaced_dir(final: str | os.PathLike, carry: Callable[[str], bool] = lambda name: False) -> Iterator[Path]:
    """Build a folder's new contents in a staging folder (yielded), then swap it in for `final`.

    The old folder stays whole until the new one is complete (a failed or killed writer leaves it as it
    was); the swap is two renames, and `recover_dirs` undoes a kill between them. Entries of the old folder
    that the new one lacks and `carry(name)` accepts (work derived from identical inputs) are hard-linked in.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_dirs(final.parent)
    staging, old = (final.parent / f".{final.name}.{os.getpid()}.{kind}" for kind in ("staging", "old"))
    shutil.rmtree(staging, ignore_errors=True)  # this process's own leftover from a failed attempt
    staging.mkdir()
    try:
        yield staging
        if final.is_dir():
            for entry in final.iterdir():
                if entry.name.endswith(TMP_SUFFIX):  # a killed writer's temporary file is not work to keep
                    continue
                if not (staging / entry.name).exists() and carry(entry.name):
                    if entry.is_dir():
                        shutil.copytree(entry, staging / entry.name, copy_function=os.link)
                    else:
                        os.link(entry, staging / entry.name)
            os.replace(final, old)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def recover_dirs(parent: str | os.PathLike) -> None:
    """Clean up after `replaced_dir` writers that were killed: a staging folder is dropped; an old folder
    whose replacement never arrived is renamed back."""
    for entry in Path(parent).glob(".*.*.*"):
        name, pid, kind = entry.name[1:].rsplit(".", 2) if entry.name.count(".") >= 3 else ("", "", "")
        if kind not in ("staging", "old") or not pid.isdigit() or pid_alive(int(pid)) or not entry.is_dir():
            continue
        if kind == "old" and not (entry.parent / name).exists():
            os.replace(entry, entry.parent / name)
        else:
            shutil.rmtree(entry, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_yaml(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))


def torch_save_atomic(path: str | os.PathLike, obj: Any) -> Path:
    import torch

    return _atomic_write(path, lambda f: torch.save(obj, f))


def save_safetensors_atomic(path: str | os.PathLike, tensors: dict, metadata: dict[str, str]) -> Path:
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    return atomic_write_bytes(path, data)


def save_numpy_atomic(path: str | os.PathLike, array) -> Path:
    import numpy as np

    return _atomic_write(path, lambda f: np.save(f, array))


def save_parquet_atomic(path: str | os.PathLike, frame) -> Path:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return atomic_write_bytes(path, buf.getvalue())


def _json_default(o: Any) -> Any:
    # numpy scalars and arrays appear in metric dicts; JSON has no type for them.
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
