"""The layering, read from the source (AST): motion_modules/ is pure torch (nothing of ComfyUI, nothing of the
pack's nodes/), and scripts/weights.py needs nothing a user of the pack lacks (no diffusers; at import, torch)."""
import ast
import os
import sys

REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS_DIR = os.path.join(REPO_DIR, "scripts")
COMFYUI = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "nodes", "server", "execution",
           "node_helpers", "latent_preview"}
STDLIB = set(sys.stdlib_module_names)


def imports(path, module_level_only=False):
    """[(line, top-level module name or None, relative level)] of every import in a file (or only those run at
    import: the module's body outside functions)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = []
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0], 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, node.module.split(".")[0] if node.module else None, node.level))
    return found


def python_files(folder):
    return [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names if name.endswith(".py")]


def test_motion_modules_import_nothing_of_comfyui_or_the_nodes():
    files = python_files(os.path.join(REPO_DIR, "motion_modules"))
    assert len(files) >= 6
    wrong = []
    for path in files:
        for line, name, level in imports(path):
            where = f"{os.path.relpath(path, REPO_DIR)}:{line}"
            if level > 1:
                wrong.append(f"{where}: a relative import out of motion_modules/ ({'.' * level}{name or ''})")
            elif level == 0 and (name in COMFYUI or name.startswith("comfy")):
                wrong.append(f"{where}: imports {name}")
            elif level == 0 and name not in STDLIB | {"torch", "einops"}:
                wrong.append(f"{where}: imports {name}, not the standard library, torch or einops")
    assert not wrong, "\n".join(wrong)


def test_weights_needs_torch_at_import_and_never_diffusers():
    path = os.path.join(SCRIPTS_DIR, "weights.py")
    anywhere = {name for _, name, level in imports(path) if level == 0} - STDLIB
    assert anywhere <= {"torch", "safetensors", "PIL", "numpy", "cv2"}, anywhere
    assert {name for _, name, level in imports(path, module_level_only=True)} - STDLIB == {"torch"}
