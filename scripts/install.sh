#!/usr/bin/env bash
# Install tt-agents with every extra into ./.venv (torch's CPU wheel first, so that pip does not
# pull several GB of CUDA packages). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[all,dev]"
echo "installed tt-agents into $(pwd)/.venv"
