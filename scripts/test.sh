#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh), lints (ruff: exec, eval and `;`-joined statements; excludes in
# pyproject.toml's [tool.ruff]) and runs the tests on a real ComfyUI. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check --select S102,S307,E702 .
export OMP_NUM_THREADS=1
exec .venv/bin/python -m pytest "$@"
