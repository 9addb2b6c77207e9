"""What users, saved workflows and the Comfy Registry see of the pack, held still.

Node surface: tests/node_surface.json records every node the pack registers, as GET /object_info shows it
(built in-process by scripts/workflow.py's node_definitions from the real node classes): id, display name,
category, flags, the inputs in order (name, type, section, default, min/max/step/round, the flags that
change how the editor saves the widget, combo values) and the outputs (type, name, list-ness). Tooltips and
descriptions are left out: rewording them changes nothing a workflow relies on.

A combo that lists files (a motion module, a MotionLoRA, ...) is recorded as where its files come from,
"files in animatediff_models", never as the files installed here. That is found out, not declared: the
surface is read while every model folder of folder_paths holds only probe files of a few kinds (a plain
file, a motion module, a MotionLoRA, a domain adapter, keys only), so a combo that shows the probes of a
folder lists that folder; one that shows only some kinds filters by content ("domain_adapter files in ...").

Anything shipped that changes or disappears fails with what changed; an addition (a node, an optional
input, a combo value, an output) fails until the snapshot records it. To rewrite the snapshot:

    .venv/bin/python tests/test_node_surface.py --update

(it runs this file's snapshot test under pytest, so ComfyUI is set up exactly as in the tests, with
NODE_SURFACE_UPDATE=1; NODE_SURFACE_SNAPSHOT=<path> reads/writes another file instead).

Packaging: pyproject.toml's [project] and [tool.comfy] as the Comfy Registry and ComfyUI read them, with the
dependencies taken from requirements.txt.
"""
import copy
import importlib.util
import json
import os
import subprocess
import sys

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)
SNAPSHOT = os.path.join(TESTS_DIR, "node_surface.json")
UPDATE_ENV = "NODE_SURFACE_UPDATE"
SNAPSHOT_ENV = "NODE_SURFACE_SNAPSHOT"
UPDATE_COMMAND = ".venv/bin/python tests/test_node_surface.py --update"
SNAPSHOT_TEST = "test_node_surface_matches_snapshot"

NODE_FIELDS = ("display_name", "category", "output_node", "deprecated", "experimental")
# Input options recorded with their value whenever given.
VALUE_OPTIONS = ("default", "min", "max", "step", "round", "control_after_generate")
# Input options recorded only when set: each changes what the editor draws or saves, or how the input is fed.
FLAG_OPTIONS = ("forceInput", "lazy", "rawLink", "multiline", "multiselect", "image_upload", "video_upload",
                "animated_image_upload")
INPUT_SECTIONS = ("required", "optional", "hidden")

# Probe files per model folder, by the kind their keys make them (motion_modules.formats.classify).
PROBE_KEYS = {
    "plain": ["probe.weight"],
    "motion_module": ["down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight"],
    "motion_lora": ["down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0."
                    "processor.to_q_lora.down.weight"],
    "domain_adapter": ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight"],
}


def _load_workflow_script():
    path = os.path.join(REPO, "scripts", "workflow.py")
    spec = importlib.util.spec_from_file_location("_scripts_workflow_surface", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wf = _load_workflow_script()


def snapshot_path():
    return os.environ.get(SNAPSHOT_ENV) or SNAPSHOT


# ------------------------------------------------------------------------------------ reading the surface

def pack_node_classes(comfy):
    """{node id: class} of every node ComfyUI registered from the pack (whatever way the pack registers them)."""
    from conftest import PACK_DIR_NAME
    module = f"custom_nodes.{PACK_DIR_NAME}"
    return {name: cls for name, cls in comfy.nodes.NODE_CLASS_MAPPINGS.items()
            if getattr(cls, "RELATIVE_PYTHON_MODULE", None) == module}


class ProbeFolders:
    """Every folder of folder_paths holding only probe files (in a fresh directory) while in the `with` block;
    folder_paths' own table and file-list cache are put back afterwards."""

    def __init__(self, root):
        self.root = root
        self.probes = {}  # file name -> (folder, kind)

    def __enter__(self):
        import folder_paths
        import safetensors.torch
        import torch
        self.folder_paths = folder_paths
        self.saved_folders = dict(folder_paths.folder_names_and_paths)
        self.saved_cache = dict(folder_paths.filename_list_cache)
        for folder, (_, extensions) in self.saved_folders.items():
            directory = os.path.join(self.root, folder)
            os.makedirs(directory, exist_ok=True)
            ext = ".safetensors" if not extensions or ".safetensors" in extensions else sorted(extensions)[0]
            for kind, keys in PROBE_KEYS.items():
                name = f"surface-probe.{kind}.{folder}{ext}"
                path = os.path.join(directory, name)
                if not os.path.exists(path):
                    if ext == ".safetensors":
                        safetensors.torch.save_file({k: torch.zeros(1) for k in keys}, path)
                    else:
                        open(path, "wb").close()
                self.probes[name] = (folder, kind)
            folder_paths.folder_names_and_paths[folder] = ([directory], extensions)
        folder_paths.filename_list_cache.clear()
        return self

    def __exit__(self, *exc):
        self.folder_paths.folder_names_and_paths.clear()
        self.folder_paths.folder_names_and_paths.update(self.saved_folders)
        self.folder_paths.filename_list_cache.clear()
        self.folder_paths.filename_list_cache.update(self.saved_cache)
        return False


def _file_list(options, probes):
    """(description of where the files come from, the options that are not files), or None for a fixed combo."""
    listed = [probes[o] for o in options if isinstance(o, str) and o in probes]
    if not listed:
        return None
    folders = list(dict.fromkeys(folder for folder, _ in listed))
    kinds = {kind for _, kind in listed}
    where = "files in " + ", ".join(folders)
    if kinds != set(PROBE_KEYS):
        where = ", ".join(sorted(kinds)) + " " + where
    return where, [o for o in options if not (isinstance(o, str) and o in probes)]


def _input_entry(name, section, spec, probes):
    type_, options = (spec, {}) if isinstance(spec, str) else (spec[0], spec[1] if len(spec) > 1 else {})
    options = options or {}
    if isinstance(type_, list):  # V1 combo: the values in place of the type
        type_, options = "COMBO", dict(options, options=type_)
    entry = {"name": name, "type": type_, "section": section}
    for key in VALUE_OPTIONS:
        if options.get(key) is not None:
            entry[key] = options[key]
    for key in FLAG_OPTIONS:
        if options.get(key):
            entry[key] = options[key]
    if type_ == "COMBO":
        values = list(options.get("options") or [])
        files = _file_list(values, probes)
        if files is None:
            entry["options"] = values
        else:
            entry["options"] = files[0]
            if files[1]:
                entry["options_besides_files"] = files[1]
    return entry


def surface_of(definition, probes=None):
    """The recorded form of one GET /object_info entry (see the module docstring)."""
    probes = probes or {}
    node = {field: definition.get(field) for field in NODE_FIELDS}
    inputs = []
    for section in INPUT_SECTIONS:
        specs = (definition.get("input") or {}).get(section) or {}
        order = (definition.get("input_order") or {}).get(section) or list(specs)
        order = [n for n in order if n in specs] + [n for n in specs if n not in order]
        inputs += [_input_entry(name, section, specs[name], probes) for name in order]
    node["inputs"] = inputs
    types = list(definition.get("output") or [])
    names = list(definition.get("output_name") or types)
    is_list = list(definition.get("output_is_list") or [False] * len(types))
    node["outputs"] = [{"type": t if isinstance(t, str) else "COMBO", "name": n, "is_list": bool(li)}
                       for t, n, li in zip(types, names, is_list)]
    return node


def read_surface(comfy, probe_root):
    """{node id: surface} of the pack's nodes as loaded in this ComfyUI, file-list combos found by probing."""
    classes = pack_node_classes(comfy)
    with ProbeFolders(probe_root) as probe:
        definitions = wf.node_definitions(classes, comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS)
    return {name: surface_of(definitions[name], probe.probes) for name in sorted(definitions)}


# --------------------------------------------------------------------------------------------- comparing

class SurfaceDiff:
    """`changes`: what a saved workflow or API prompt may notice (changed or removed); `additions`: new things
    that break nothing but are not recorded yet. One line each."""

    def __init__(self):
        self.changes, self.additions = [], []

    def __bool__(self):
        return bool(self.changes or self.additions)

    def report(self, snapshot_name="tests/node_surface.json"):
        lines = [f"The pack's node surface differs from {snapshot_name}."]
        if self.changes:
            lines.append("Changed or removed (saved workflows and API prompts may stop working or run differently):")
            lines += [f"  - {c}" for c in self.changes]
        if self.additions:
            lines.append("Added (breaks nothing, but the snapshot does not record it yet):")
            lines += [f"  - {a}" for a in self.additions]
        lines.append(f"If this is intended, update the snapshot with\n    {UPDATE_COMMAND}\n"
                     f"and commit {snapshot_name} with the change.")
        return "\n".join(lines)


def _widget_layout(node):
    """[(input name or None, values taken)] of the node's widgets in widgets_values (scripts/workflow.py's rules)."""
    inputs, order = {}, {}
    for entry in node["inputs"]:
        options = {k: v for k, v in entry.items() if k not in ("name", "type", "section", "options")}
        if entry["type"] == "COMBO":
            options["options"] = entry["options"] if isinstance(entry["options"], list) else []
        inputs.setdefault(entry["section"], {})[entry["name"]] = [entry["type"], options]
        order.setdefault(entry["section"], []).append(entry["name"])
    return wf.widget_slots({"input": inputs, "input_order": order})


def _compare_inputs(node_id, old, new, diff):
    old_inputs = {i["name"]: i for i in old["inputs"]}
    new_inputs = {i["name"]: i for i in new["inputs"]}
    for name, entry in old_inputs.items():
        where = f"{node_id}.{name}"
        if name not in new_inputs:
            diff.changes.append(f"{where}: input removed")
            continue
        now = new_inputs[name]
        if now["type"] != entry["type"]:
            diff.changes.append(f"{where}: type {entry['type']} -> {now['type']}")
        if now["section"] != entry["section"]:
            diff.changes.append(f"{where}: {entry['section']} -> {now['section']}")
        for key in sorted((set(entry) | set(now)) - {"name", "type", "section", "options"}):
            if entry.get(key) != now.get(key):
                diff.changes.append(f"{where}: {key} {entry.get(key, '(not set)')!r} -> {now.get(key, '(not set)')!r}")
        _compare_options(where, entry.get("options"), now.get("options"), diff)
    for name, now in new_inputs.items():
        if name in old_inputs:
            continue
        if now["section"] == "required":
            diff.changes.append(f"{node_id}.{name}: new required input (prompts saved without it fail validation; "
                                f"an optional input with a default would not)")
        else:
            diff.additions.append(f"{node_id}.{name}: new {now['section']} input ({now['type']})")
    shipped = [i["name"] for i in old["inputs"] if i["name"] in new_inputs]
    now_order = [i["name"] for i in new["inputs"] if i["name"] in old_inputs]
    if shipped != now_order:
        diff.changes.append(f"{node_id}: inputs reordered: {shipped} -> {now_order}")
    old_layout, new_layout = _widget_layout(old), _widget_layout(new)
    if shipped == now_order and new_layout[:len(old_layout)] != old_layout:
        diff.changes.append(f"{node_id}: widget values of saved workflows would shift (widgets were "
                            f"{[n for n, _ in old_layout]}, now {[n for n, _ in new_layout]}; new widgets go last)")


def _compare_options(where, old, new, diff):
    if old is None and new is None:
        return
    if isinstance(old, list) and isinstance(new, list):
        removed = [v for v in old if v not in new]
        added = [v for v in new if v not in old]
        if removed:
            diff.changes.append(f"{where}: combo values removed: {removed}")
        if added:
            diff.additions.append(f"{where}: new combo values: {added}")
        if not removed and [v for v in new if v in old] != old:
            diff.changes.append(f"{where}: combo values reordered: {old} -> {[v for v in new if v in old]}")
    elif old != new:
        diff.changes.append(f"{where}: options {old!r} -> {new!r}")


def _compare_outputs(node_id, old, new, diff):
    for i, entry in enumerate(old["outputs"]):
        if i >= len(new["outputs"]):
            diff.changes.append(f"{node_id}: output {i} ({entry['type']} {entry['name']!r}) removed")
            continue
        now = new["outputs"][i]
        for key in ("type", "name", "is_list"):
            if entry[key] != now[key]:
                diff.changes.append(f"{node_id}: output {i} {key} {entry[key]!r} -> {now[key]!r}")
    for i, now in enumerate(new["outputs"][len(old["outputs"]):], start=len(old["outputs"])):
        diff.additions.append(f"{node_id}: new output {i} ({now['type']} {now['name']!r})")


def compare_surfaces(old, new):
    """SurfaceDiff of the surface `new` against the recorded `old` ({node id: surface})."""
    diff = SurfaceDiff()
    for node_id, node in old.items():
        if node_id not in new:
            diff.changes.append(f"{node_id}: node removed (workflows that use it no longer load)")
            continue
        now = new[node_id]
        for field in NODE_FIELDS:
            if node.get(field) != now.get(field):
                diff.changes.append(f"{node_id}: {field} {node.get(field)!r} -> {now.get(field)!r}")
        _compare_inputs(node_id, node, now, diff)
        _compare_outputs(node_id, node, now, diff)
    for node_id in new:
        if node_id not in old:
            diff.additions.append(f"{node_id}: new node ({new[node_id].get('display_name')!r})")
    return diff


# ----------------------------------------------------------------------------------------- the snapshot

ABOUT = ("The node surface of this pack, checked by tests/test_node_surface.py; rewrite it with "
         f"`{UPDATE_COMMAND}`. Combos that list files name the folders they list, not the files.")


def write_snapshot(surface, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"about": ABOUT, "nodes": surface}, f, indent=2, ensure_ascii=False)
        f.write("\n")


def load_snapshot(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)["nodes"]


@pytest.fixture(scope="module")
def surface(comfy, pack, tmp_path_factory):
    return read_surface(comfy, str(tmp_path_factory.mktemp("surface-probes")))


def test_node_surface_matches_snapshot(surface):
    path = snapshot_path()
    name = os.path.relpath(path, REPO) if path.startswith(REPO + os.sep) else path
    if os.environ.get(UPDATE_ENV):
        old = load_snapshot(path) if os.path.exists(path) else {}
        diff = compare_surfaces(old, surface)
        write_snapshot(surface, path)
        print("\n" + ("\n".join(["wrote " + name + ":"] + [f"  changed: {c}" for c in diff.changes]
                                + [f"  added: {a}" for a in diff.additions]) if diff else f"{name} unchanged"))
        return
    if not os.path.exists(path):
        pytest.fail(f"{name} is missing: write it with\n    {UPDATE_COMMAND}", pytrace=False)
    diff = compare_surfaces(load_snapshot(path), surface)
    if diff:
        pytest.fail(diff.report(name), pytrace=False)


def test_surface_covers_every_node_the_pack_declares(comfy, pack, surface):
    import asyncio
    extension = asyncio.run(pack.comfy_entrypoint())
    declared = {cls.GET_SCHEMA().node_id for cls in asyncio.run(extension.get_node_list())}
    assert declared <= set(surface), f"nodes the pack declares but ComfyUI did not register: {declared - set(surface)}"
    assert set(surface) == set(pack_node_classes(comfy))


def test_file_list_combos_are_recorded_by_folder(surface):
    """The pack's file combos are found by probing, whatever is installed in this session's model folders."""
    options = {(n, i["name"]): i["options"] for n, node in surface.items() for i in node["inputs"] if "options" in i}
    assert options[("AnimateDiffLoadMotionModule", "motion_module")] == "files in animatediff_models"
    assert options[("AnimateDiffLoadMotionLoRA", "lora_name")] == "files in animatediff_motion_lora"
    assert options[("AnimateDiffApplyDomainAdapter", "adapter_name")] == \
        "domain_adapter files in animatediff_models, loras"
    assert options[("AnimateDiffContextWindows", "fuse_method")] == ["pyramid", "flat", "overlap-linear", "relative"]


def test_probing_leaves_folder_paths_as_it_was(comfy, tmp_path):
    import folder_paths
    before = {k: (list(v[0]), set(v[1])) for k, v in folder_paths.folder_names_and_paths.items()}
    motion_modules = folder_paths.get_filename_list("animatediff_models")
    read_surface(comfy, str(tmp_path))
    assert {k: (list(v[0]), set(v[1])) for k, v in folder_paths.folder_names_and_paths.items()} == before
    assert folder_paths.get_filename_list("animatediff_models") == motion_modules


# ------------------------------------------------------------------------- the comparison bites

def _input(surface, node_id, name):
    return next(i for i in surface[node_id]["inputs"] if i["name"] == name)


def _rename_combo_value(s):
    values = _input(s, "AnimateDiffContextWindows", "context_schedule")["options"]
    values[values.index("looped_uniform")] = "looped"


def _remove_input(s):
    s["AnimateDiffApplyMotionModule"]["inputs"] = [i for i in s["AnimateDiffApplyMotionModule"]["inputs"]
                                                   if i["name"] != "effect"]


def _set(node_id, name, key, value):
    def mutate(s):
        _input(s, node_id, name)[key] = value
    return mutate


def _reorder(s):
    inputs = s["AnimateDiffContextWindows"]["inputs"]
    inputs[1], inputs[2] = inputs[2], inputs[1]


def _drop_combo_value(s):
    _input(s, "AnimateDiffApplyMotionModule", "beta_schedule")["options"].remove("lcm")


def _swap_combo_values(s):
    values = _input(s, "AnimateDiffContextWindows", "fuse_method")["options"]
    values[0], values[1] = values[1], values[0]


def _new_required_input(s):
    s["AnimateDiffContextWindows"]["inputs"].append({"name": "seed", "type": "INT", "section": "required",
                                                     "default": 0})


def _new_optional_input(s):
    s["AnimateDiffContextWindows"]["inputs"].append({"name": "views", "type": "INT", "section": "optional",
                                                     "default": 1})


def _new_optional_socket(s):
    s["AnimateDiffApplyMotionModule"]["inputs"].append({"name": "camera", "type": "CAMERA", "section": "optional"})


def _new_combo_value(s):
    _input(s, "AnimateDiffContextWindows", "fuse_method")["options"].append("gauss")


def _new_node(s):
    s["AnimateDiffSparseCtrl"] = copy.deepcopy(s["AnimateDiffLoadMotionModule"])
    s["AnimateDiffSparseCtrl"]["display_name"] = "Load SparseCtrl"


def _new_output(s):
    s["AnimateDiffLoadMotionModule"]["outputs"].append({"type": "STRING", "name": "info", "is_list": False})


def _output_type(s):
    s["AnimateDiffApplyMotionModule"]["outputs"][0]["type"] = "LATENT"


def _output_removed(s):
    s["AnimateDiffLoadMotionModule"]["outputs"].clear()


def _node_removed(s):
    del s["AnimateDiffApplyDomainAdapter"]


def _rename_node(s):
    s["AnimateDiffContextWindows"]["display_name"] = "Context"


def _to_fixed_combo(s):
    _input(s, "AnimateDiffLoadMotionModule", "motion_module")["options"] = ["mm_sd_v15_v2.ckpt"]


CHANGES = {
    "combo value renamed": (_rename_combo_value, "AnimateDiffContextWindows.context_schedule: combo values removed: "
                                                 "['looped_uniform']"),
    "combo value removed": (_drop_combo_value, "AnimateDiffApplyMotionModule.beta_schedule: combo values removed: "
                                               "['lcm']"),
    "combo values reordered": (_swap_combo_values, "AnimateDiffContextWindows.fuse_method: combo values reordered"),
    "input removed": (_remove_input, "AnimateDiffApplyMotionModule.effect: input removed"),
    "default changed": (_set("AnimateDiffApplyMotionModule", "motion_scale", "default", 0.5),
                        "AnimateDiffApplyMotionModule.motion_scale: default 1.0 -> 0.5"),
    "max changed": (_set("AnimateDiffContextWindows", "context_stride", "max", 8),
                    "AnimateDiffContextWindows.context_stride: max 16 -> 8"),
    "step changed": (_set("AnimateDiffLoadMotionLoRA", "strength", "step", 0.1),
                     "AnimateDiffLoadMotionLoRA.strength: step 0.01 -> 0.1"),
    "type changed": (_set("AnimateDiffApplyMotionModule", "model", "type", "LATENT"),
                     "AnimateDiffApplyMotionModule.model: type MODEL -> LATENT"),
    "made optional": (_set("AnimateDiffApplyDomainAdapter", "strength", "section", "optional"),
                      "AnimateDiffApplyDomainAdapter.strength: required -> optional"),
    "widget becomes a socket": (_set("AnimateDiffApplyMotionModule", "effect", "forceInput", True),
                                "AnimateDiffApplyMotionModule.effect: forceInput '(not set)' -> True"),
    "inputs reordered": (_reorder, "AnimateDiffContextWindows: inputs reordered"),
    "new required input": (_new_required_input, "AnimateDiffContextWindows.seed: new required input"),
    "file list made fixed": (_to_fixed_combo, "AnimateDiffLoadMotionModule.motion_module: options "
                                              "'files in animatediff_models' -> ['mm_sd_v15_v2.ckpt']"),
    "output type changed": (_output_type, "AnimateDiffApplyMotionModule: output 0 type 'MODEL' -> 'LATENT'"),
    "output removed": (_output_removed, "AnimateDiffLoadMotionModule: output 0 (ANIMATEDIFF_MOTION_MODULE "),
    "node removed": (_node_removed, "AnimateDiffApplyDomainAdapter: node removed"),
    "display name changed": (_rename_node, "AnimateDiffContextWindows: display_name "
                                           "'AnimateDiff Context Windows' -> 'Context'"),
}

ADDITIONS = {
    "new node": (_new_node, "AnimateDiffSparseCtrl: new node ('Load SparseCtrl')"),
    "new optional widget": (_new_optional_input, "AnimateDiffContextWindows.views: new optional input (INT)"),
    "new optional socket": (_new_optional_socket, "AnimateDiffApplyMotionModule.camera: new optional input (CAMERA)"),
    "new combo value": (_new_combo_value, "AnimateDiffContextWindows.fuse_method: new combo values: ['gauss']"),
    "new output": (_new_output, "AnimateDiffLoadMotionModule: new output 1 (STRING 'info')"),
}


def test_comparison_of_the_surface_with_itself_is_empty(surface):
    assert not compare_surfaces(surface, copy.deepcopy(surface))


@pytest.mark.parametrize("case", sorted(CHANGES))
def test_comparison_reports_a_change(surface, case):
    mutate, expected = CHANGES[case]
    changed = copy.deepcopy(surface)
    mutate(changed)
    diff = compare_surfaces(surface, changed)
    assert any(c.startswith(expected) for c in diff.changes), diff.report()
    assert UPDATE_COMMAND in diff.report()
    assert not compare_surfaces(surface, surface)  # the mutation worked on a copy


@pytest.mark.parametrize("case", sorted(ADDITIONS))
def test_comparison_reports_an_addition_and_no_change(surface, case):
    mutate, expected = ADDITIONS[case]
    added = copy.deepcopy(surface)
    mutate(added)
    diff = compare_surfaces(surface, added)
    assert diff.additions == [expected] and not diff.changes, diff.report()
    assert UPDATE_COMMAND in diff.report()
    # once recorded, the same surface passes
    assert not compare_surfaces(copy.deepcopy(added), added)


def test_a_new_widget_before_shipped_widgets_is_a_change(surface):
    """Saved workflows keep widget values by position: an optional widget inserted before a shipped one shifts
    it, one added last does not."""
    old = copy.deepcopy(surface)
    old["AnimateDiffContextWindows"]["inputs"].append({"name": "views", "type": "INT", "section": "optional",
                                                       "default": 1})
    new = copy.deepcopy(old)
    new["AnimateDiffContextWindows"]["inputs"].insert(-1, {"name": "gap", "type": "INT", "section": "optional",
                                                           "default": 0})
    diff = compare_surfaces(old, new)
    assert any("widget values of saved workflows would shift" in c for c in diff.changes), diff.report()
    new = copy.deepcopy(old)
    new["AnimateDiffContextWindows"]["inputs"].append({"name": "gap", "type": "INT", "section": "optional",
                                                       "default": 0})
    assert not compare_surfaces(old, new).changes


def test_snapshot_round_trips(surface, tmp_path):
    path = tmp_path / "surface.json"
    write_snapshot(surface, str(path))
    assert load_snapshot(str(path)) == surface


@pytest.mark.slow
def test_update_command_writes_the_snapshot(surface, tmp_path):
    """`python tests/test_node_surface.py --update` as the failure message says, onto another file."""
    path = tmp_path / "written.json"
    stale = copy.deepcopy(surface)
    _drop_combo_value(stale)
    write_snapshot(stale, str(path))
    env = dict(os.environ, **{SNAPSHOT_ENV: str(path)})
    env.pop(UPDATE_ENV, None)
    proc = subprocess.run([sys.executable, os.path.join("tests", "test_node_surface.py"), "--update"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "added: AnimateDiffApplyMotionModule.beta_schedule: new combo values: ['lcm']" in proc.stdout
    assert load_snapshot(str(path)) == surface


# ------------------------------------------------------------------------------------------- packaging

def _pyproject():
    import tomllib
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def _requirements():
    with open(os.path.join(REPO, "requirements.txt"), encoding="utf-8") as f:
        lines = [line.split("#", 1)[0].strip() for line in f]
    return [line for line in lines if line]


def test_pyproject_has_the_registry_fields():
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    from conftest import COMFYUI_DIR
    data = _pyproject()
    project = data["project"]
    assert project["name"] == "comfyui-animatediff"
    Version(project["version"])  # a valid version
    assert project["description"].strip()
    assert project["license"]
    assert os.path.isfile(os.path.join(REPO, project["readme"]))
    python = SpecifierSet(project["requires-python"])
    assert "3.10" in python and "3.9" not in python
    assert "{}.{}".format(*sys.version_info[:2]) in python, "the tests run on a Python the pack does not support"
    assert project.get("dynamic") == ["dependencies"] and "dependencies" not in project, \
        "dependencies must come from requirements.txt only (dynamic), not be listed in pyproject.toml too"
    assert data["tool"]["setuptools"]["dynamic"]["dependencies"] == {"file": ["requirements.txt"]}
    comfy = data["tool"]["comfy"]
    assert isinstance(comfy["PublisherId"], str) and comfy["PublisherId"].strip()
    assert isinstance(comfy["DisplayName"], str) and comfy["DisplayName"].strip()
    assert isinstance(comfy["Icon"], str) and (comfy["Icon"] == "" or comfy["Icon"].startswith("https://"))
    spec = importlib.util.spec_from_file_location("_comfyui_version", os.path.join(COMFYUI_DIR, "comfyui_version.py"))
    version = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(version)
    assert comfy["requires-comfyui"] == ">=0.3.75"
    assert version.__version__ in SpecifierSet(comfy["requires-comfyui"]), \
        f"the tests run on ComfyUI {version.__version__}, outside requires-comfyui {comfy['requires-comfyui']}"


def test_tested_comfyui_versions_match_requires_comfyui_and_the_readme(pack):
    """The versions CI runs the suite on (compat.TESTED): the lowest is requires-comfyui's bound, and the README
    names every one."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version
    tested, required = pack.nodes.compat.TESTED, _pyproject()["tool"]["comfy"]["requires-comfyui"]
    assert all(v in SpecifierSet(required) for v in tested)
    assert required == ">=" + min(tested, key=Version)
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    assert all(f"ComfyUI {v}" in readme for v in tested)


def test_dependencies_are_requirements_txt():
    """setuptools expands the dynamic dependencies (as a build or the registry's tooling would) to exactly
    requirements.txt's requirements."""
    from setuptools.config.pyprojecttoml import read_configuration
    project = read_configuration(os.path.join(REPO, "pyproject.toml"), expand=True)["project"]
    assert project["dependencies"] == _requirements()
    assert project["dependencies"], "requirements.txt lists nothing"


def test_comfyui_reads_the_pyproject():
    """ComfyUI's own parser (what load_custom_node runs on the pack's pyproject.toml) accepts it."""
    from comfy_config import config_parser
    config = config_parser.extract_node_configuration(REPO)
    assert config.project.name == "comfyui-animatediff"
    assert config.project.supported_comfyui_version == ">=0.3.75"
    assert config.tool_comfy.publisher_id == _pyproject()["tool"]["comfy"]["PublisherId"]
    assert config.tool_comfy.display_name == _pyproject()["tool"]["comfy"]["DisplayName"]


# ------------------------------------------------------------------------------------------ as a script

def main(argv):
    import argparse
    parser = argparse.ArgumentParser(description="Check the pack's node surface against tests/node_surface.json, "
                                                 "or rewrite it (--update), on ComfyUI set up as in the tests.")
    parser.add_argument("--update", action="store_true", help="rewrite the snapshot from the nodes as they are")
    args, rest = parser.parse_known_args(argv)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    target = os.path.relpath(os.path.abspath(__file__), REPO)
    if args.update:
        env[UPDATE_ENV] = "1"
        target += "::" + SNAPSHOT_TEST
    cmd = [sys.executable, "-m", "pytest", target, "-q", "-s", *rest]
    return subprocess.call(cmd, cwd=REPO, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
