"""The reliability corpus's harness: run the CLI in this process and check a refusal's three promises.

`run_cli(*args)` calls `core.cli.main` with stdout/stderr captured (one torch import for the whole corpus
instead of ~5 s per subprocess); `assert_refused(result, *names)` checks exit status 2, exactly one
`error:` line (the last one) naming every given value, and no traceback; `tree_hash(folder)` is compared
before and after to prove nothing saved changed. Also the small generated files the cases are built from.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from core.cli import main
from core.lock import LOCK_NAME

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    rc: int
    out: str
    err: str


def run_cli(*args: object) -> Result:
    """`python -m core ARGS` in this process. Any exception escaping main() is what a user would see as a
    traceback: it is returned as rc=-1 with the traceback in err, so the case fails with it."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - the point is to report it
            import traceback

            traceback.print_exc(file=err)
            rc = -1
    return Result(rc, out.getvalue(), err.getvalue())


def assert_refused(r: Result, *names: str) -> str:
    """Exit 2, no traceback, the last stderr line the only `error:` line, naming each of `names`."""
    text = r.out + r.err
    assert "Traceback" not in text, text[-3000:]
    assert r.rc == 2, f"exit {r.rc}: {text[-2000:]}"
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.err[-2000:]
    assert r.err.rstrip().splitlines()[-1] == errors[0], r.err[-2000:]
    for name in names:
        assert str(name) in errors[0], f"{name!r} not named in: {errors[0]}"
    return errors[0]


def tree_hash(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` by relative path (the lock file is the running process's)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME
    }


def make_faces(root: Path, identities: int = 6, per_identity: int = 6, side: int = 40, seed: int = 0) -> Path:
    """A small ImageFolder: each identity a colour, each image that colour plus noise (PNG)."""
    rng = np.random.default_rng(seed)
    for c in range(identities):
        folder = root / f"id{c}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, (1, 1, 3))
        for i in range(per_identity):
            pixels = np.clip(base + rng.normal(0, 40, (side, side, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def huge_png(path: Path, side: int = 10_000) -> Path:
    """A side x side image (100 megapixels by default) that is a few kB on disk: a decompression bomb."""
    Image.new("1", (side, side)).save(path)
    return path


def flip_bytes(path: Path, offset: int, count: int = 64, value: int | None = None) -> None:
    """Damage a file in place: xor `count` bytes from `offset` with 0xFF (or set them to `value`)."""
    data = bytearray(path.read_bytes())
    for i in range(offset, min(offset + count, len(data))):
        data[i] = value if value is not None else data[i] ^ 0xFF
    path.write_bytes(bytes(data))
