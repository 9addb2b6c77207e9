#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the tests on a real ComfyUI. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=1
exec .venv/bin/python -m pytest "$@"
