"""The `matchlab` console script: `python -m core`'s command line under the tool's own name.

Entry point: `main(argv)`. Installed from a wheel, `core` and `dashboard` live inside this package's folder
(see matchlab/__init__.py); from a checkout they sit beside it. Either way that folder goes first on this
process's sys.path only, so the `core` imported here is MatchLab's whatever else the user has installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(HERE if (HERE / "core").is_dir() else HERE.parent))
    from core.cli import main as core_main

    return core_main(argv, prog="matchlab")
