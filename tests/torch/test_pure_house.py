"""The house rules, read from the source (AST; nothing is imported):

- the pack's nodes touch ComfyUI only through its public extension points: no assignment to an attribute of a
  ComfyUI module or object, and no setattr/delattr on one (wrappers, callbacks, injections, additional models,
  object and weight patches do the patching);
- the pack's imports run one way: no import circle among its modules.
"""
import ast
import os
import posixpath

import pytest

REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("nodes", "motion_modules")
# The one place that writes a ComfyUI object's fields, and why: a context window's ControlNet hint frames.
# Core has no public way to give a control another hint batch (`set_cond_hint` keeps the upscaled hint the
# control cached); the handler puts the full batch back after each step.
ALLOWED = {("nodes/context_windows.py", "set_hint")}


def sources(package):
    folder = os.path.join(REPO_DIR, package)
    return {f"{package}/{name}": open(os.path.join(folder, name), encoding="utf-8").read()
            for name in sorted(os.listdir(folder)) if name.endswith(".py")}


def root(node):
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def targets(node):
    if isinstance(node, (ast.Tuple, ast.List)):
        return [t for element in node.elts for t in targets(element)]
    return [node]


def foreign_writes(source, path="<source>"):
    """['path:line function: what'] for every assignment to (or deletion of) an attribute whose object is not the
    method's own `self`/`cls` or an instance the function made of a class this module defines, and every
    setattr/delattr on anything but `self`."""
    tree = ast.parse(source)
    own_classes = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    found = []
    for function in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
        if (path, function.name) in ALLOWED:
            continue
        ours = {"self", "cls"} | {t.id for n in ast.walk(function) if isinstance(n, ast.Assign)
                                  and isinstance(n.value, ast.Call) and isinstance(n.value.func, ast.Name)
                                  and n.value.func.id in own_classes
                                  for t in n.targets if isinstance(t, ast.Name)}
        for node in ast.walk(function):
            written = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else \
                [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
            for target in (t for w in written for t in targets(w)):
                if isinstance(target, ast.Attribute) and root(target) not in ours:
                    found.append(f"{path}:{node.lineno} {function.name}: {ast.unparse(target)} = ...")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                    node.func.id in ("setattr", "delattr") and root(node.args[0]) != "self":
                found.append(f"{path}:{node.lineno} {function.name}: {ast.unparse(node)}")
    return found


def test_nodes_use_public_extension_points_only():
    found = [w for path, source in sources("nodes").items() for w in foreign_writes(source, path)]
    assert not found, "writes onto objects the pack does not own:\n" + "\n".join(found)


@pytest.mark.parametrize("code", [
    "import comfy.model_management\ndef f():\n    comfy.model_management.vram_state = 0",
    "def f(model):\n    model.diffusion_model.forward = lambda x: x",
    "def f(control, hint):\n    control.cond_hint, n = hint, 1",
    "def f(unet, block):\n    setattr(unet, 'middle_block', block)",
    "def f(patcher):\n    patcher.model_options['x'].calls += 1",
    "import comfy.ops\ndef f():\n    del comfy.ops.manual_cast.Linear",
])
def test_the_check_finds_writes_onto_comfy_objects(code):
    assert len(foreign_writes(code)) == 1, code


def test_the_check_leaves_the_packs_own_objects_alone():
    code = ("class Copy:\n    def copy(self):\n        c = Copy()\n        c.model = self.model\n        self.n += 1\n"
            "        return c\n")
    assert foreign_writes(code) == []


def imports(path, source):
    """The pack modules (as 'package/module') that `path` imports."""
    package = os.path.dirname(path)
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package if node.level == 1 else os.path.dirname(package)
            base = posixpath.join(base, *node.module.split(".")) if node.module else base
            for alias in node.names:
                for candidate in (f"{base}/{alias.name}.py", f"{base}.py", f"{base}/__init__.py"):
                    if os.path.exists(os.path.join(REPO_DIR, candidate)):
                        found.add(candidate)
                        break
    return found - {path}


def test_no_import_circle():
    graph = {path: imports(path, source) for package in PACKAGES for path, source in sources(package).items()}
    state, circle = {}, []

    def visit(module, trail):
        if state.get(module) == "open":
            circle.append(trail[trail.index(module):] + [module])
        if module in state:
            return
        state[module] = "open"
        for imported in sorted(graph.get(module, ())):
            visit(imported, trail + [module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])
    assert not circle, "import circles: " + "; ".join(" -> ".join(c) for c in circle)
    assert any("nodes/files.py" in imported for imported in graph["nodes/motion.py"])  # the graph was read


def test_the_motion_modules_import_nothing_of_the_nodes():
    for path, source in sources("motion_modules").items():
        assert not any(m.startswith("nodes/") for m in imports(path, source)), path
