"""Which server folders a browser user may ask the dashboard to read: the configured data roots.

Entry points: `data_roots(run_dir, extra=...)` and `check_under_roots(text, roots, what)`. The sidebar's
"Evaluate on another dataset" form takes a path typed in a browser; without this check any folder the
server can read (/etc, a home directory) could be scanned and its file names shown. Allowed: the project's
data/, the run's own data folders (config data.train / data.val and their parent, which holds the sibling
test splits), roots listed in $MATCHLAB_DATA_ROOTS (os.pathsep-separated) and `data_roots` in
.streamlit/secrets.toml. Plain Python, no Streamlit, so it is unit tested directly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from core.errors import MatchLabError

REPO_ROOT = Path(__file__).resolve().parents[1]
ROOTS_ENV = "MATCHLAB_DATA_ROOTS"


def _resolve(text: str | Path, base: Path = REPO_ROOT) -> Path:
    p = Path(text).expanduser()
    if not p.is_absolute():
        # relative paths mean the repository (where `streamlit run` starts), as core's configs do
        p = (Path.cwd() / p) if (Path.cwd() / p).exists() else base / p
    return p.resolve()


def data_roots(run_config: dict | None = None, extra: Iterable[str | Path] = ()) -> list[Path]:
    """The folders under which a typed data path is accepted, resolved (symlinks followed), no duplicates."""
    data = (run_config or {}).get("data") or {}
    roots: list[str | Path] = [REPO_ROOT / "data"]
    for key in ("train", "val"):
        if data.get(key):
            # the parent holds a dataset's other splits (shoes/train beside shoes/test_m)
            roots.append(Path(str(data[key])).parent if Path(str(data[key])).name else data[key])
    roots += [r for r in os.environ.get(ROOTS_ENV, "").split(os.pathsep) if r.strip()]
    roots += [r for r in extra if str(r).strip()]
    return list(dict.fromkeys(_resolve(r) for r in roots))


def check_under_roots(text: str, roots: Iterable[Path], what: str = "image folder") -> Path:
    """The resolved path of `text` when it lies inside one of `roots`; else a one-line MatchLabError.

    Resolving first means `data/../../etc` and symlinks pointing out of a root are judged by where they
    really lead. The message names the path as typed, not what the server found there.
    """
    if not str(text).strip():
        raise MatchLabError(f"no {what} given: type a folder under one of the data roots")
    path = _resolve(str(text).strip())
    roots = list(roots)
    if not any(path == r or path.is_relative_to(r) for r in roots):
        shown = ", ".join(short_path(r) for r in roots)
        raise MatchLabError(
            f"{what} {text} is outside the allowed data roots ({shown}); add its folder to "
            f"${ROOTS_ENV} or to data_roots in .streamlit/secrets.toml"
        )
    return path


def short_path(path: Path) -> str:
    """A root as shown to the user: relative to the repository when inside it."""
    try:
        return path.relative_to(REPO_ROOT).as_posix() or "."
    except ValueError:
        return str(path)
