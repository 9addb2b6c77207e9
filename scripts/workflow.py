"""Turn a ComfyUI workflow as the graph editor saves it (UI format) into the prompt that POST /prompt takes
(API format), the way the frontend's "Export (API)" does. Standard library only.

    object_info = <GET /object_info>                 # or node_definitions(...) in-process
    prompt = ui_to_api(json.load(open("workflows/txt2vid.json")), object_info)
    set_inputs(prompt, {"KSampler": {"seed": 7}})          # or apply_overrides(prompt, seed=7, frames=8, ...)
    saved = sync_widgets(workflow, prompt, object_info)     # the UI workflow showing those values

Rules, as the frontend applies them:
- A node's widgets are the inputs of its definition that the frontend draws as widgets (INT, FLOAT, STRING,
  BOOLEAN, combos, ...; not `forceInput`), required ones first, then optional, in `input_order`.
  `widgets_values` holds one value per widget, plus values the API never sees: "control after generate"
  after an INT named seed/noise_seed or any input with `control_after_generate` (a combo also gets a
  filter-list value), and the upload button after the required inputs of a node with an upload combo.
- A DynamicCombo (ComfyUI 0.33's COMFY_DYNAMICCOMBO_V3, e.g. Save Video's format) is a combo of its options'
  keys; the widgets of the chosen option follow it, named "<combo>.<input>" (a DynamicCombo among them in
  turn), so the values in `widgets_values` pick which widgets come next. The API gets each by that name.
- A widget turned into an input socket keeps its place in `widgets_values`; when the socket is linked,
  the link wins.
- Links become [str(source node id), source slot]. Reroute nodes are followed; a PrimitiveNode gives
  its value; a bypassed node (mode 4) passes through its input of the same type; a muted node (mode 2)
  drops the inputs linked from it.
- Muted and bypassed nodes are left out, and so are frontend-only nodes (Note, MarkdownNote, Reroute,
  PrimitiveNode). Each node gets _meta.title.
"""
import copy
import json

__all__ = [
    "ui_to_api", "widget_slots", "is_widget", "node_definitions", "node_info", "set_inputs", "find_nodes",
    "upstream_node", "apply_overrides", "sync_widgets", "MissingNodeTypes", "MODE_NEVER", "MODE_BYPASS", "TRAINER",
]

MODE_NEVER = 2  # "muted"
MODE_BYPASS = 4
TRAINER = "AnimateDiffTrainMotionLoRA"  # the MotionLoRA trainer node
PROMPT_TRAVEL = "AnimateDiffPromptTravel"  # per-frame prompts: its frames follow the latent batch size

# Widget constructors the frontend has built in (ComfyWidgets); other input types are sockets.
WIDGET_TYPES = {
    "INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "MARKDOWN", "COLOR", "IMAGECOMPARE", "CHART",
    "GALLERIA", "TEXTAREA",
}
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
# Node types that exist only in the graph editor and never reach the server.
VIRTUAL_NODE_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")


class MissingNodeTypes(ValueError):
    """The workflow uses node types the server does not have (a custom node pack is missing or failed)."""

    def __init__(self, types):
        self.types = sorted(types)
        super().__init__("node types not known to this ComfyUI (is the pack that provides them installed "
                         "and did it load?): " + ", ".join(self.types))


# ---------------------------------------------------------------------------------------------------
# Node definitions (the data GET /object_info returns)

def node_info(node_class, cls, display_name_mappings=None):
    """One entry of GET /object_info for a loaded node class, built the way ComfyUI's server does
    (server.PromptServer's node_info: V3 nodes describe themselves through GET_NODE_INFO_V1)."""
    if hasattr(cls, "GET_NODE_INFO_V1"):
        return cls.GET_NODE_INFO_V1()
    display_name_mappings = display_name_mappings or {}
    input_types = cls.INPUT_TYPES()
    info = {
        "input": input_types,
        "input_order": {key: list(value.keys()) for key, value in input_types.items()},
        "output": cls.RETURN_TYPES,
        "output_is_list": getattr(cls, "OUTPUT_IS_LIST", [False] * len(cls.RETURN_TYPES)),
        "output_name": getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES),
        "name": node_class,
        "display_name": display_name_mappings.get(node_class, node_class),
        "description": getattr(cls, "DESCRIPTION", ""),
        "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"),
        "category": getattr(cls, "CATEGORY", "sd"),
        "output_node": getattr(cls, "OUTPUT_NODE", False) is True,
    }
    if hasattr(cls, "OUTPUT_TOOLTIPS"):
        info["output_tooltips"] = cls.OUTPUT_TOOLTIPS
    if getattr(cls, "DEPRECATED", False):
        info["deprecated"] = True
    if getattr(cls, "EXPERIMENTAL", False):
        info["experimental"] = True
    if hasattr(cls, "API_NODE"):
        info["api_node"] = cls.API_NODE
    return info


def node_definitions(node_class_mappings, display_name_mappings=None, only=None):
    """object_info for loaded ComfyUI nodes without a server: pass nodes.NODE_CLASS_MAPPINGS and
    nodes.NODE_DISPLAY_NAME_MAPPINGS. Round-tripped through JSON, so it is exactly what a client of
    GET /object_info sees (tuples become lists). `only`: restrict to these node types."""
    out = {}
    for name, cls in node_class_mappings.items():
        if only is None or name in only:
            out[name] = node_info(name, cls, display_name_mappings)
    return json.loads(json.dumps(out, default=str))


# ---------------------------------------------------------------------------------------------------
# Widgets

def _ordered_inputs(definition, section):
    inputs = (definition.get("input") or {}).get(section) or {}
    order = (definition.get("input_order") or {}).get(section) or list(inputs)
    order = [name for name in order if name in inputs] + [name for name in inputs if name not in order]
    return [(name, inputs[name]) for name in order]


def _spec(spec):
    if isinstance(spec, str):
        return spec, {}
    type_ = spec[0] if len(spec) else None
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return type_, options


def is_widget(spec):
    """Whether the frontend draws this input (a definition's [type, options]) as a widget."""
    type_, options = _spec(spec)
    is_combo = isinstance(type_, list) or type_ in ("COMBO", DYNAMIC_COMBO)
    return (is_combo or type_ in WIDGET_TYPES) and not options.get("forceInput")


def _widgets(definition, values=()):
    """[(input name or None, spec, number of values it takes in widgets_values)] in the order of
    widgets_values; `values` (the node's widgets_values) choose each DynamicCombo's option."""
    slots = []

    def add(name, spec, section):
        """Append one input's slots; True when it is a combo with an upload button."""
        if not is_widget(spec):
            return False
        type_, options = _spec(spec)
        if type_ == DYNAMIC_COMBO:
            at = sum(width for _, _, width in slots)
            choice = values.get(name) if isinstance(values, dict) else values[at] if at < len(values) else None
            slots.append((name, spec, 1))
            chosen = next((o for o in options.get("options") or [] if o["key"] == choice), None)
            if chosen is None and choice is None and options.get("options"):
                chosen = options["options"][0]  # a new widget starts at the first option
            for sub_section in ("required", "optional"):
                for sub, sub_spec in (((chosen or {}).get("inputs") or {}).get(sub_section) or {}).items():
                    add(f"{name}.{sub}", sub_spec, sub_section)
            return False
        is_combo = isinstance(type_, list) or type_ == "COMBO"
        extra = 0
        if type_ == "INT":
            control = options.get("control_after_generate")
            if control is None:
                control = name in ("seed", "noise_seed")
            extra = 1 if control else 0
        elif is_combo and options.get("control_after_generate"):
            extra = 2  # control_after_generate and control_filter_list
        slots.append((name, spec, 1 + extra))
        return is_combo and section == "required" and any(options.get(o) for o in UPLOAD_OPTIONS)

    for section in ("required", "optional"):
        has_upload = False
        for name, spec in _ordered_inputs(definition, section):
            has_upload = add(name, spec, section) or has_upload
        if has_upload:
            slots.append((None, None, 1))
    return slots


def widget_slots(definition, values=()):
    """[(input name or None, number of values it takes in widgets_values)] for one node definition.
    None marks a value that is not an input (the upload button's). `values`: the node's widgets_values,
    which choose the options of DynamicCombo widgets (a new node's first option where they do not reach)."""
    return [(name, width) for name, _, width in _widgets(definition, values)]


def _api_value(value):
    # The frontend wraps list values so the server does not take them for links.
    return {"__value__": value} if isinstance(value, list) else value


def _default(spec):
    """The value a new widget starts with: the input's default, else a combo's first option (a DynamicCombo
    always starts at its first option)."""
    type_, options = _spec(spec)
    if type_ == DYNAMIC_COMBO:
        choices = [o["key"] for o in options.get("options") or []]
        return (True, choices[0]) if choices else (False, None)
    if "default" in options:
        return True, options["default"]
    choices = type_ if isinstance(type_, list) else options.get("options") if type_ == "COMBO" else None
    if choices:
        return True, choices[0]
    return False, None


def _widget_inputs(node, definition):
    """Widget values by input name. Widgets the saved values do not reach (a node saved before its
    definition gained inputs) get their defaults, as the editor gives them when it loads the workflow."""
    values = node.get("widgets_values")
    if values is None:
        values = []
    out, i = {}, 0
    for name, spec, width in _widgets(definition, values):
        if isinstance(values, dict):  # some packs save widgets by name
            present, value = name in values, values.get(name)
        else:
            present, value = i < len(values), values[i] if i < len(values) else None
            i += width
        if name is None:
            continue
        if not present:
            present, value = _default(spec)
        if present:
            out[name] = _api_value(value)
    return out


# ---------------------------------------------------------------------------------------------------
# Graph

def _links_by_id(workflow):
    links = {}
    for link in workflow.get("links") or []:
        if isinstance(link, dict):  # schema version 1
            links[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"],
                                 link["target_slot"], link.get("type"))
        else:
            links[link[0]] = (link[1], link[2], link[3], link[4], link[5] if len(link) > 5 else None)
    return links


def _resolve(node_id, slot, nodes, links, seen=()):
    """Follow a link back from (node_id, output slot) to the node that really produces it.
    Returns ("link", node_id, slot), ("value", value) or None when nothing reaches the input."""
    if node_id in seen:
        raise ValueError(f"link cycle through node {node_id}")
    seen = seen + (node_id,)
    node = nodes.get(node_id)
    if node is None:
        return None
    node_type = node.get("type")
    mode = node.get("mode", 0)

    def follow(input_index):
        inputs = node.get("inputs") or []
        if input_index is None or input_index >= len(inputs) or inputs[input_index].get("link") is None:
            return None
        link = links.get(inputs[input_index]["link"])
        return None if link is None else _resolve(link[0], link[1], nodes, links, seen)

    if node_type == "Reroute":
        return follow(0)
    if node_type == "PrimitiveNode":
        values = node.get("widgets_values") or []
        return ("value", values[0]) if values else None
    if mode == MODE_BYPASS:
        inputs = node.get("inputs") or []
        outputs = node.get("outputs") or []
        out_type = outputs[slot].get("type") if slot < len(outputs) else None
        if out_type in ("*", "", None):
            index = slot if slot < len(inputs) else 0
        elif slot < len(inputs) and inputs[slot].get("type") == out_type:
            index = slot
        else:
            index = next((i for i, inp in enumerate(inputs) if inp.get("type") == out_type), None)
        return follow(index)
    return ("link", node_id, slot)


def _title(node, definition):
    return node.get("title") or definition.get("display_name") or node.get("type")


def ui_to_api(workflow, object_info):
    """API-format prompt ({"<id>": {"inputs", "class_type", "_meta"}}) for a UI-format workflow.
    object_info: GET /object_info's answer (needs at least the node types the workflow uses).
    Raises MissingNodeTypes when an active node's type is unknown."""
    if (workflow.get("definitions") or {}).get("subgraphs"):
        raise NotImplementedError("workflows with subgraphs are not supported; unpack them in the editor")
    nodes = {node["id"]: node for node in workflow.get("nodes") or []}
    links = _links_by_id(workflow)

    active = [n for n in nodes.values()
              if n.get("mode", 0) not in (MODE_NEVER, MODE_BYPASS) and n.get("type") not in VIRTUAL_NODE_TYPES]
    missing = {n.get("type") for n in active if n.get("type") not in object_info}
    if missing:
        raise MissingNodeTypes(missing)

    prompt = {}
    for node in sorted(active, key=lambda n: (n.get("order", 0), str(n["id"]))):
        definition = object_info[node["type"]]
        inputs = _widget_inputs(node, definition)
        for inp in node.get("inputs") or []:
            link = links.get(inp.get("link")) if inp.get("link") is not None else None
            if link is None:
                continue
            source = _resolve(link[0], link[1], nodes, links)
            name = inp["name"]
            if source is None:
                inputs.pop(name, None)
            elif source[0] == "value":
                inputs[name] = _api_value(source[1])
            else:
                inputs[name] = [str(source[1]), int(source[2])]
        prompt[str(node["id"])] = {
            "inputs": inputs,
            "class_type": node["type"],
            "_meta": {"title": _title(node, definition)},
        }
    # Inputs linked from nodes that are not in the prompt (muted, unknown) are dropped, like the frontend.
    for entry in prompt.values():
        for name, value in list(entry["inputs"].items()):
            if _is_link(value) and value[0] not in prompt:
                del entry["inputs"][name]
    return prompt


def _is_link(value):
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


# ---------------------------------------------------------------------------------------------------
# Editing a prompt

def find_nodes(prompt, selector):
    """Ids of the prompt's nodes that `selector` names: a node id, a class_type or a _meta title."""
    selector = str(selector)
    if selector in prompt:
        return [selector]
    return [node_id for node_id, node in prompt.items()
            if node.get("class_type") == selector or (node.get("_meta") or {}).get("title") == selector]


def set_inputs(prompt, overrides):
    """Set input values in place. overrides: {selector: {input name: value}}, where a selector is a node
    id, a class_type (every node of that type) or a title. Raises KeyError when a selector matches no
    node. Returns the prompt."""
    for selector, values in overrides.items():
        ids = find_nodes(prompt, selector)
        if not ids:
            raise KeyError(f"no node {selector!r} in the prompt (ids: {sorted(prompt)}, "
                           f"types: {sorted({n['class_type'] for n in prompt.values()})})")
        for node_id in ids:
            for name, value in values.items():
                prompt[node_id]["inputs"][name] = _api_value(value)
    return prompt


def upstream_node(prompt, node_id, input_name):
    """Id of the node linked into `input_name` of node `node_id`, or None."""
    value = prompt[str(node_id)]["inputs"].get(input_name)
    return value[0] if _is_link(value) else None


def apply_overrides(prompt, seed=None, frames=None, steps=None, cfg=None, width=None, height=None,
                    positive=None, negative=None, checkpoint=None, motion_module=None,
                    filename_prefix=None, train_steps=None, clip_length=None):
    """The usual knobs of a txt2vid workflow, found by node type and by following the sampler's links:
    seed/steps/cfg on every KSampler, frames (= batch size)/width/height on the latent its
    latent_image comes from (EmptyLatentImage) and on every prompt-travel node (AnimateDiffPromptTravel);
    for a latent encoded from images (VAEEncode, video to video) width/height on the ImageScale its pixels
    come from (its frames are the video's: `frames` is refused);
    positive/negative on the CLIPTextEncode or prompt-travel nodes linked to its positive/negative inputs (a
    prompt-travel node takes a schedule, '"0": "...", "16": "..."'), file names on CheckpointLoaderSimple/AnimateDiffLoadMotionModule,
    filename_prefix on the save nodes; on every MotionLoRA trainer (AnimateDiffTrainMotionLoRA) its
    steps (train_steps), clip_length and width/height (it trains at the size it animates; a prompt
    without a trainer ignores train_steps and clip_length). Returns a deep copy; None leaves a value
    as it is."""
    prompt = copy.deepcopy(prompt)

    def put(node_id, name, value):
        if value is not None and node_id is not None:
            prompt[node_id]["inputs"][name] = value

    samplers = find_nodes(prompt, "KSampler")
    if not samplers and any(v is not None for v in (seed, steps, cfg, frames, width, height, positive, negative)):
        raise KeyError("the prompt has no KSampler")
    for sampler in samplers:
        put(sampler, "seed", seed)
        put(sampler, "steps", steps)
        put(sampler, "cfg", cfg)
        latent = upstream_node(prompt, sampler, "latent_image")
        if any(v is not None for v in (frames, width, height)):
            size = latent
            if latent is not None and prompt[latent]["class_type"] == "VAEEncode":
                if frames is not None:
                    raise KeyError(f"KSampler {sampler}'s frames are the images VAEEncode {latent} encodes (the "
                                   "input video's): they cannot be set")
                size = upstream_node(prompt, latent, "pixels")
                if size is None or prompt[size]["class_type"] != "ImageScale":
                    raise KeyError(f"KSampler {sampler}'s latent is encoded from images that no ImageScale sizes")
            elif latent is None or prompt[latent]["class_type"] != "EmptyLatentImage":
                raise KeyError(f"KSampler {sampler}'s latent_image does not come from an EmptyLatentImage")
            else:
                put(latent, "batch_size", frames)
            put(size, "width", width)
            put(size, "height", height)
        for name, text in (("positive", positive), ("negative", negative)):
            if text is None:
                continue
            encoder = upstream_node(prompt, sampler, name)
            if encoder is None or prompt[encoder]["class_type"] not in ("CLIPTextEncode", PROMPT_TRAVEL):
                raise KeyError(f"KSampler {sampler}'s {name} input does not come from a CLIPTextEncode or {PROMPT_TRAVEL}")
            put(encoder, "text", text)
    for node_id in find_nodes(prompt, "CheckpointLoaderSimple"):
        put(node_id, "ckpt_name", checkpoint)
    for node_id in find_nodes(prompt, "AnimateDiffLoadMotionModule"):
        put(node_id, "motion_module", motion_module)
    for node_id in find_nodes(prompt, PROMPT_TRAVEL):
        put(node_id, "frames", frames)
    for node_id in find_nodes(prompt, TRAINER):
        put(node_id, "steps", train_steps)
        put(node_id, "clip_length", clip_length)
        put(node_id, "width", width)
        put(node_id, "height", height)
    for node_id, node in prompt.items():
        if node["class_type"] in ("SaveAnimatedWEBP", "SaveAnimatedPNG", "SaveImage", "SaveVideo"):
            put(node_id, "filename_prefix", filename_prefix)
    return prompt


def sync_widgets(workflow, prompt, object_info):
    """A copy of the UI workflow whose widget values are the prompt's (after set_inputs/apply_overrides),
    so that the workflow saved with the result (extra_pnginfo) shows what actually ran."""
    workflow = copy.deepcopy(workflow)
    for node in workflow.get("nodes") or []:
        entry = prompt.get(str(node.get("id")))
        values = node.get("widgets_values")
        if entry is None or entry.get("class_type") != node.get("type") or not isinstance(values, list):
            continue
        i = 0
        for name, width in widget_slots(object_info[node["type"]], values):
            value = entry["inputs"].get(name)
            if name is not None and i < len(values) and name in entry["inputs"] and not _is_link(value):
                values[i] = value["__value__"] if isinstance(value, dict) and "__value__" in value else value
            i += width
    return workflow


if __name__ == "__main__":
    import argparse
    import urllib.request

    parser = argparse.ArgumentParser(description="Print the API-format prompt of a UI-format workflow.")
    parser.add_argument("workflow")
    parser.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI to read /object_info from")
    parser.add_argument("--object-info", help="a saved GET /object_info answer instead of --server")
    args = parser.parse_args()
    if args.object_info:
        with open(args.object_info, encoding="utf-8") as f:
            info = json.load(f)
    else:
        with urllib.request.urlopen(args.server.rstrip("/") + "/object_info") as r:
            info = json.load(r)
    with open(args.workflow, encoding="utf-8") as f:
        print(json.dumps(ui_to_api(json.load(f), info), indent=2))
