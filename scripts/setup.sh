#!/usr/bin/env bash
# Sets up a fresh machine: a virtual environment in .venv with MatchLab's pinned packages
# (torch/torchvision from the local wheel store), plus Debian's chromium for the browser test.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements-dev.txt
# MTCNN weights for face alignment (see requirements.txt): without its dependency pins, which conflict with ours.
.venv/bin/python -m pip install -q --no-deps facenet-pytorch==2.6.0
if [ "${1:-}" = "--browser" ] && [ ! -x /usr/bin/chromium ]; then
  # Playwright's own browser download cannot work here; the test drives Debian's chromium.
  if [ "$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium; else sudo apt-get update -q && sudo apt-get install -y -q chromium; fi
fi
