#!/usr/bin/env bash
# Sets up everything the demo and the tests need, idempotently: ComfyUI (see comfyui_path.py) and a
# virtual environment ($VENV, default .venv) with torch, ComfyUI's requirements, this pack's and the tests' packages.
# COMFYUI_PATH=<a ComfyUI folder> VENV=.venv-mine sets up against another ComfyUI in a venv of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
command -v "$PY" >/dev/null || PY=python3
COMFY=$("$PY" scripts/comfyui_path.py --ensure)
stamp=$VENV/.installed-$(cat requirements.txt requirements-test.txt "$COMFY/requirements.txt" | cksum | cut -d' ' -f1)
if [ ! -f "$stamp" ]; then
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  # torch and torchvision pinned in the same command as everything else, so nothing upgrades them.
  grep -viE '^(torch|torchvision|torchaudio)([<>=~ ]|$)' "$COMFY/requirements.txt" > "$VENV/comfyui-requirements.txt"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    torch==2.14.1 torchvision==0.29.1 -r "$VENV/comfyui-requirements.txt" -r requirements.txt -r requirements-test.txt
  # ComfyUI 0.33 and later import torchaudio at start-up; PyPI has none built for torch 2.14.1, and 2.11.1's
  # wheel imports and works with it for what ComfyUI needs (--no-deps keeps torch as pinned).
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps torchaudio==2.11.1
  rm -f "$VENV"/.installed-*
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
