#!/usr/bin/env bash
# Install tt-agents with every extra into ./.venv (torch's CPU wheel first, so that pip does not
# pull several GB of CUDA packages). Safe to re-run.
#   bash scripts/install.sh               # ./.venv: every extra but Meta-World
#   bash scripts/install.sh --metaworld   # ./.venv-metaworld: the mujoco and metaworld extras (Meta-World pins
#                                         # mujoco 3.3.0, the rest of the project takes 4.x: its own environment)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
EXTRAS="all,dev"
if [ "${1:-}" = "--metaworld" ]; then
  VENV=.venv-metaworld
  EXTRAS="metaworld,dev"
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
echo "installed tt-agents into $(pwd)/$VENV"
