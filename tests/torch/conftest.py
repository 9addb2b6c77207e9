"""The pure layer's tests: motion_modules/ (pure torch) and scripts/weights.py, with only torch, einops, safetensors
and pytest installed; no ComfyUI, no diffusers, no harness.

Alone (from the repository root; --confcutdir keeps pytest from loading tests/conftest.py, which starts ComfyUI):

    python -m pytest --confcutdir=tests/torch tests/torch

A plain `pytest` runs only the ComfyUI suite (pytest.ini: norecursedirs); scripts/test.sh runs both, this layer
first. The test files here are named test_pure_*.py, apart from tests/'s, should both be collected in one run.
"""
import os
import sys
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")  # as the ComfyUI suite: the machines it runs on may have 2 cores

with warnings.catch_warnings():  # torch warns at import when numpy is missing, which this layer does not need
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    import torch  # noqa: F401

TORCH_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(os.path.dirname(TORCH_TESTS_DIR))
SCRIPTS_DIR = os.path.join(REPO_DIR, "scripts")

# `import motion_modules.model` (a top-level package here; relative imports inside it), `import weights` and
# `import reference`.
sys.path.extend(path for path in (REPO_DIR, SCRIPTS_DIR, TORCH_TESTS_DIR) if path not in sys.path)
