#!/usr/bin/env bash
# Sets everything up and runs every check CI runs: lint, format, types of core/, then every test
# (CPU; GPU checks skip without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --browser
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
