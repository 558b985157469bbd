#!/usr/bin/env bash
# Sets everything up and opens the dashboard on the bundled demo run (checkpoints/orl_demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m streamlit run dashboard/app.py
