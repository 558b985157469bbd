#!/usr/bin/env bash
# Sets everything up and opens the dashboard on the bundled face model (checkpoints/faces_cfp) when it is
# present, else on the ORL demo run (checkpoints/orl_demo): dashboard/artifacts.py BUNDLED_RUNS orders them.
# Once the server answers, every page is opened once headless (python -m dashboard.warmup), so imports,
# artifact reads and figures are ready before the first person's visit. MATCHLAB_PORT picks the port.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
port="${MATCHLAB_PORT:-8501}"
.venv/bin/python -m streamlit run dashboard/app.py --server.port "$port" "$@" &
server=$!
trap 'kill "$server" 2>/dev/null || true' INT TERM EXIT
.venv/bin/python -m dashboard.warmup --url "http://localhost:$port" || echo "warm-up skipped; the first visit will be slower"
echo "MatchLab dashboard: http://localhost:$port"
wait "$server"
