#!/usr/bin/env bash
# Sets up everything the demo and the tests need, idempotently: ComfyUI (see comfyui_path.py) and a
# virtual environment in .venv with torch, ComfyUI's requirements, this pack's and the tests' packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
COMFY=$("$PY" scripts/comfyui_path.py --ensure)
stamp=.venv/.installed-$(cat requirements.txt requirements-test.txt "$COMFY/requirements.txt" | cksum | cut -d' ' -f1)
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  # torch and torchvision pinned in the same command as everything else, so nothing upgrades them;
  # torchaudio is left out (ComfyUI only needs it for its audio nodes).
  grep -viE '^(torch|torchvision|torchaudio)([<>=~ ]|$)' "$COMFY/requirements.txt" > .venv/comfyui-requirements.txt
  .venv/bin/python -m pip install -q --disable-pip-version-check \
    torch==2.14.1 torchvision==0.29.1 -r .venv/comfyui-requirements.txt -r requirements.txt -r requirements-test.txt
  rm -f .venv/.installed-*
  touch "$stamp"
fi
# The browser tests drive Debian's chromium (Playwright is only the driver: it downloads no browser).
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is not installed: the browser tests need it (sudo apt-get install chromium)" >&2
  fi
fi
echo "ComfyUI: $COMFY"
