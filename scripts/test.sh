#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh), lints (ruff: exec, eval and `;`-joined statements; excludes in
# pyproject.toml's [tool.ruff]) and runs the tests: first the pure layer (tests/torch: motion_modules/ and
# scripts/weights.py, without ComfyUI), then the rest on a real ComfyUI. Extra arguments go to the second pytest.
# Against another ComfyUI: COMFYUI_PATH=<its folder> VENV=<a venv of its own, e.g. .venv-mine> bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
bash scripts/setup.sh
"$VENV/bin/ruff" check --select S102,S307,E702 .
export OMP_NUM_THREADS=1
"$VENV/bin/python" -m pytest --confcutdir=tests/torch tests/torch
exec "$VENV/bin/python" -m pytest "$@"
