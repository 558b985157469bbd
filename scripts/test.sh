#!/usr/bin/env bash
# Sets everything up and runs every test (CPU; GPU checks skip without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --browser
.venv/bin/python -m pytest -q "$@"
