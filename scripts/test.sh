#!/usr/bin/env bash
# Sets everything up and runs every check CI runs: lint, format, types of core/, then every test
# (CPU; GPU checks skip without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --browser
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# passive OpenMP waits, as core/__init__.py sets for every program: pytest may load torch before core
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
.venv/bin/python -m pytest -q "$@"
