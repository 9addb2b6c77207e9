#!/usr/bin/env bash
# Text to animation from a clean checkout: sets up $VENV (default .venv) and ComfyUI, then runs scripts/txt2vid.py
# (arguments are passed on, e.g. --prompt "..." --seed 7 --server http://127.0.0.1:8188).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
bash scripts/setup.sh
exec "${VENV:-.venv}/bin/python" scripts/txt2vid.py "$@"
