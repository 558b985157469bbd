"""Fixtures for the core.data tests: a fresh messy ImageFolder and a private cache folder per test."""

import sys
from pathlib import Path

import pytest

# The repository root, so `core` and `tests.messy_images` import however pytest is started.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.messy_images import make_messy_folder  # noqa: E402


@pytest.fixture
def orl_faces() -> Path:
    """The bundled demo set: 40 identities x 10 grayscale 92x112 PGM faces."""
    return ROOT / "data" / "orl_faces"


@pytest.fixture
def messy(tmp_path: Path) -> dict:
    return make_messy_folder(tmp_path / "messy")


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"
