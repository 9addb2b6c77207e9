"""The pure layer's tests: motion_modules/ (pure torch) and scripts/weights.py, with only torch, einops, safetensors
and pytest installed; no ComfyUI, no diffusers, no harness.

Alone (from the repository root; --confcutdir keeps pytest from loading tests/conftest.py, which starts ComfyUI):

    python -m pytest --confcutdir=tests/torch tests/torch

The whole suite (`pytest`) collects these too, beside the ComfyUI tests. The test files here are named
test_pure_*.py: outside packages pytest imports test files by their base name, which must differ from tests/'s.
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

# `import motion_modules.model` (a top-level package here; relative imports inside it) and `import weights`, while
# the test modules here are collected (they import at their top). Appended, not prepended: in the whole suite
# ComfyUI's own `nodes` etc. must stay first on sys.path.
_ADDED = [path for path in (REPO_DIR, SCRIPTS_DIR, TORCH_TESTS_DIR) if path not in sys.path]
sys.path.extend(_ADDED)


def pytest_collection_finish(session):
    """Collected: take the repository root off sys.path again and forget the top-level motion_modules (the test
    modules keep theirs). In the whole suite the ComfyUI tests then see the pack only as ComfyUI loads it, never
    importable from the repository root (tests/test_harness.py checks)."""
    if REPO_DIR in _ADDED and REPO_DIR in sys.path:
        sys.path.remove(REPO_DIR)
    for name in [name for name in sys.modules if name.split(".")[0] == "motion_modules"]:
        del sys.modules[name]


def pytest_configure(config):
    """pytest imports each conftest.py outside a package as the module `conftest`, dropping the one before it from
    sys.modules. In the whole suite, put tests/conftest.py back: the ComfyUI tests import from it
    (`from conftest import ...`), some while they run, after this file was loaded."""
    harness = os.path.realpath(os.path.join(os.path.dirname(TORCH_TESTS_DIR), "conftest.py"))
    for plugin in config.pluginmanager.get_plugins():
        if os.path.realpath(getattr(plugin, "__file__", None) or os.devnull) == harness:
            sys.modules["conftest"] = plugin
