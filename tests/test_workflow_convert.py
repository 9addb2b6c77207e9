"""workflows/txt2vid.json and scripts/workflow.py's UI -> API conversion, against node definitions built
in-process from the real ComfyUI nodes and this pack's (the data GET /object_info returns), no server.
"""
import asyncio
import copy
import importlib.util
import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW = os.path.join(REPO, "workflows", "txt2vid.json")
WORKFLOWS = ("txt2vid.json", "long_video_controlnet.json", "motion_lora.json", "v3_adapter.json",
             "train_motion_lora.json", "prompt_travel.json", "vid2vid_controlnet.json", "free_init.json")
# Widgets core gained after ComfyUI 0.3.75, which a workflow saved for 0.3.75 and 0.33 lacks (0.33's frontend gives
# them their defaults when it loads the file): Create Video's bit_depth; Save Video's codec became a DynamicCombo
# under its format (the saved "h264" is its value) with an encoding mode, and a hidden codec of its own.
GAINED_WIDGETS = {"CreateVideo": {"bit_depth"}, "SaveVideo": {"format.codec.encoding", "codec"}}


def _load_script(name):
    spec = importlib.util.spec_from_file_location(f"_scripts_{name}", os.path.join(REPO, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wf = _load_script("workflow")
comfyui_path = _load_script("comfyui_path")

PACK_NODES = ("AnimateDiffLoadMotionModule", "AnimateDiffApplyMotionModule", "AnimateDiffContextWindows",
              "AnimateDiffLoadMotionLoRA", "AnimateDiffApplyDomainAdapter", "AnimateDiffTrainMotionLoRA")


def _comfy_nodes():
    """ComfyUI's `nodes` module with the built-in extra nodes and this pack loaded (reusing what is loaded)."""
    path = comfyui_path.locate()
    if not comfyui_path.is_comfyui(path):
        pytest.skip(f"no ComfyUI at {path} (run scripts/setup.sh)")
    if "nodes" not in sys.modules:
        if path not in sys.path:
            sys.path.insert(0, path)
        import comfy.cli_args
        comfy.cli_args.args.cpu = True
        import utils.extra_config  # noqa: F401 - ComfyUI's `utils` package before nodes.py puts comfy/ first on sys.path
    import nodes
    if "SaveAnimatedWEBP" not in nodes.NODE_CLASS_MAPPINGS:
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    if not all(n in nodes.NODE_CLASS_MAPPINGS for n in PACK_NODES):
        assert asyncio.run(nodes.load_custom_node(REPO)), "the pack did not load into ComfyUI (see the log above)"
    missing = [n for n in PACK_NODES if n not in nodes.NODE_CLASS_MAPPINGS]
    assert not missing, f"the pack loaded but does not provide {missing}"
    return nodes


@pytest.fixture(scope="module")
def comfy_nodes(request):
    """ComfyUI's `nodes` with everything loaded: from the test harness's `comfy` fixture when there is one
    (so ComfyUI's nodes load once per session), else loaded here."""
    try:
        harness = request.getfixturevalue("comfy")
    except pytest.FixtureLookupError:
        return _comfy_nodes()
    request.getfixturevalue("pack")  # fails with ComfyUI's log when the pack did not load
    return harness.nodes


@pytest.fixture(scope="module")
def object_info(comfy_nodes):
    return wf.node_definitions(comfy_nodes.NODE_CLASS_MAPPINGS, comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS)


@pytest.fixture
def workflow():
    with open(WORKFLOW, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(params=WORKFLOWS)
def saved_workflow(request):
    """Each workflow in workflows/, as the editor saved it."""
    with open(os.path.join(REPO, "workflows", request.param), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture
def prompt(workflow, object_info):
    return wf.ui_to_api(workflow, object_info)


POSITIVE = ("a serene mountain lake at sunrise, gentle waves rippling across the water, mist drifting over the "
            "surface, clouds slowly moving across the sky, birds flying in the distance, cinematic lighting, "
            "highly detailed, masterpiece, best quality")
NEGATIVE = ("worst quality, low quality, blurry, jpeg artifacts, watermark, text, signature, deformed, "
            "disfigured, static, still image")

EXPECTED = {
    "1": {"inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"},
          "class_type": "CheckpointLoaderSimple", "_meta": {"title": "Load Checkpoint"}},
    "2": {"inputs": {"text": POSITIVE, "clip": ["1", 1]},
          "class_type": "CLIPTextEncode", "_meta": {"title": "CLIP Text Encode (Positive Prompt)"}},
    "3": {"inputs": {"text": NEGATIVE, "clip": ["1", 1]},
          "class_type": "CLIPTextEncode", "_meta": {"title": "CLIP Text Encode (Negative Prompt)"}},
    "4": {"inputs": {"width": 512, "height": 512, "batch_size": 16},
          "class_type": "EmptyLatentImage", "_meta": {"title": "Empty Latent Image (batch size = frames)"}},
    "5": {"inputs": {"motion_module": "mm_sd_v15_v2.ckpt"},
          "class_type": "AnimateDiffLoadMotionModule", "_meta": {"title": "Load AnimateDiff Motion Module"}},
    "6": {"inputs": {"beta_schedule": "autoselect", "motion_scale": 1, "effect": 1,
                     "model": ["1", 0], "motion_module": ["5", 0]},
          "class_type": "AnimateDiffApplyMotionModule", "_meta": {"title": "Apply AnimateDiff Motion Module"}},
    "7": {"inputs": {"seed": 888888888, "steps": 20, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal",
                     "denoise": 1, "model": ["6", 0], "positive": ["2", 0], "negative": ["3", 0],
                     "latent_image": ["4", 0]},
          "class_type": "KSampler", "_meta": {"title": "KSampler"}},
    "8": {"inputs": {"samples": ["7", 0], "vae": ["1", 2]},
          "class_type": "VAEDecode", "_meta": {"title": "VAE Decode"}},
    "9": {"inputs": {"filename_prefix": "AnimateDiff", "fps": 8, "lossless": False, "quality": 85,
                     "method": "default", "images": ["8", 0]},
          "class_type": "SaveAnimatedWEBP", "_meta": {"title": "SaveAnimatedWEBP"}},
}


@pytest.fixture
def expected(object_info):
    """EXPECTED with the untitled save node's title as this ComfyUI exports it: its display name (0.33: "Save
    Animated WEBP"; 0.3.75 gives it none, so its id)."""
    out = copy.deepcopy(EXPECTED)
    out["9"]["_meta"]["title"] = object_info["SaveAnimatedWEBP"]["display_name"]
    return out


# --------------------------------------------------------------------------------- the workflow file

def test_workflow_is_saved_in_the_editors_format(saved_workflow):
    workflow = saved_workflow
    assert workflow["version"] == 0.4
    for key in ("last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra"):
        assert key in workflow
    ids = [n["id"] for n in workflow["nodes"]]
    assert len(set(ids)) == len(ids)
    assert workflow["last_node_id"] == max(ids)
    assert workflow["last_link_id"] == max(link[0] for link in workflow["links"])
    for node in workflow["nodes"]:
        for key in ("id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties",
                    "widgets_values"):
            assert key in node, (node["id"], key)
        assert len(node["pos"]) == 2 and len(node["size"]) == 2
        if node["type"] != "Note":
            assert node["properties"]["Node name for S&R"] == node["type"]
    assert sorted(n["order"] for n in workflow["nodes"]) == list(range(len(ids)))


def test_links_agree_with_the_nodes_slots(saved_workflow):
    workflow = saved_workflow
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, type_ in workflow["links"]:
        output = nodes[src]["outputs"][src_slot]
        target = nodes[dst]["inputs"][dst_slot]
        assert link_id in output["links"] and target["link"] == link_id
        # (a socket of several types, "FLOAT,MASK", takes a link of one of them)
        assert output["type"] == type_ and type_ in target["type"].split(","), (link_id, target["type"])
    linked = {link[0] for link in workflow["links"]}
    for node in workflow["nodes"]:
        for inp in node["inputs"]:  # only an optional socket (drawn hollow: shape 7) may be left unlinked
            assert inp["link"] in linked or (inp["link"] is None and inp.get("shape") == 7), (node["type"], inp)
        for out in node["outputs"]:
            assert set(out["links"] or []) <= linked


def test_slots_and_widgets_match_the_node_definitions(saved_workflow, object_info):
    for node in saved_workflow["nodes"]:
        if node["type"] in wf.VIRTUAL_NODE_TYPES:
            continue
        definition = object_info[node["type"]]
        values = node["widgets_values"]
        slots = wf.widget_slots(definition, values)
        reached, lacking = 0, []
        for name, width in slots:
            if reached < len(values):
                reached += width
            else:
                lacking.append(name)
        assert reached == len(values) and set(lacking) <= GAINED_WIDGETS.get(node["type"], set()), \
            (node["type"], slots, values)
        # core may add outputs to a node (0.33's SaveAnimatedWEBP passes its images on): the saved ones come first
        saved_outputs = [o["type"] for o in node["outputs"]]
        assert saved_outputs == list(definition["output"])[:len(saved_outputs)], node["type"]
        required, optional = ([name for name, spec in definition["input"].get(section, {}).items()
                               if not wf.is_widget(spec)] for section in ("required", "optional"))
        # a node may gain optional sockets (Apply AnimateDiff Motion Module's schedules): files saved before lack them
        names = [i["name"] for i in node["inputs"] if "widget" not in i]
        assert names[:len(required)] == required and set(names[len(required):]) <= set(optional), node["type"]
        # a widget turned into a linked socket (Create Video's fps, from Get Video Components) names its widget
        widgets = {name for name, _ in slots}
        assert all(i["widget"]["name"] == i["name"] in widgets and i["link"] is not None
                   for i in node["inputs"] if "widget" in i), node["type"]


def test_the_motion_graph(workflow):
    nodes = {n["id"]: n for n in workflow["nodes"]}
    by_type = {}
    for n in workflow["nodes"]:
        by_type.setdefault(n["type"], []).append(n)
    assert nodes[by_type["KSampler"][0]["id"]]["widgets_values"][:2] == [888888888, "fixed"]
    assert by_type["EmptyLatentImage"][0]["widgets_values"] == [512, 512, 16]
    assert by_type["AnimateDiffLoadMotionModule"][0]["widgets_values"] == ["mm_sd_v15_v2.ckpt"]
    assert by_type["AnimateDiffApplyMotionModule"][0]["widgets_values"] == ["autoselect", 1, 1]
    assert by_type["SaveAnimatedWEBP"][0]["widgets_values"] == ["AnimateDiff", 8, False, 85, "default"]
    assert by_type["CheckpointLoaderSimple"][0]["widgets_values"] == ["v1-5-pruned-emaonly.safetensors"]
    xs = {t: by_type[t][0]["pos"][0] for t in ("CheckpointLoaderSimple", "AnimateDiffApplyMotionModule",
                                               "KSampler", "VAEDecode", "SaveAnimatedWEBP")}
    assert xs["CheckpointLoaderSimple"] < xs["AnimateDiffApplyMotionModule"] < xs["KSampler"] \
        < xs["VAEDecode"] < xs["SaveAnimatedWEBP"]


# ---------------------------------------------------------------------------------- the conversion

def test_pack_definitions_as_object_info_gives_them(object_info):
    apply = object_info["AnimateDiffApplyMotionModule"]
    assert apply["input_order"]["required"] == ["model", "motion_module", "beta_schedule", "motion_scale", "effect"]
    assert apply["input"]["required"]["beta_schedule"][1]["default"] == "autoselect"
    assert apply["display_name"] == "Apply AnimateDiff Motion Module"
    assert object_info["AnimateDiffLoadMotionModule"]["output"] == ["ANIMATEDIFF_MOTION_MODULE"]
    assert wf.widget_slots(object_info["KSampler"]) == [
        ("seed", 2), ("steps", 1), ("cfg", 1), ("sampler_name", 1), ("scheduler", 1), ("denoise", 1)]


def test_exported_prompt(prompt, expected):
    assert prompt == expected
    json.dumps(prompt)  # plain JSON


def test_links_connect_matching_types(prompt, object_info):
    for node in prompt.values():
        definition = object_info[node["class_type"]]
        specs = {**definition["input"].get("required", {}), **definition["input"].get("optional", {})}
        for name in definition["input"].get("required", {}):
            assert name in node["inputs"], (node["class_type"], name)
        for name, value in node["inputs"].items():
            type_ = specs[name][0]
            if isinstance(value, list):
                source = prompt[value[0]]
                assert object_info[source["class_type"]]["output"][value[1]] == type_, (node["class_type"], name)
            elif isinstance(type_, list) or type_ == "COMBO":
                options = type_ if isinstance(type_, list) else specs[name][1]["options"]
                if name not in ("ckpt_name", "motion_module"):  # those lists depend on the files installed
                    assert value in options, (node["class_type"], name, value)
            elif type_ == "INT":
                assert isinstance(value, int) and not isinstance(value, bool)
            elif type_ == "FLOAT":
                assert isinstance(value, (int, float)) and not isinstance(value, bool)
            elif type_ == "BOOLEAN":
                assert isinstance(value, bool)
            elif type_ == "STRING":
                assert isinstance(value, str)


def test_comfyui_accepts_the_prompt(comfy_nodes, prompt, monkeypatch):
    """ComfyUI's own validation of POST /prompt, with the two model files pretended present."""
    import execution
    import folder_paths

    real = folder_paths.get_filename_list
    fake = {"checkpoints": ["v1-5-pruned-emaonly.safetensors"], "animatediff_models": ["mm_sd_v15_v2.ckpt"]}
    monkeypatch.setattr(folder_paths, "get_filename_list", lambda name: fake.get(name) or real(name))
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("test", prompt, None))
    assert valid, (error, node_errors)
    assert outputs == ["9"] and not node_errors


def test_every_part_of_the_conversion_is_json_only(workflow, object_info, expected):
    # Works on GET /object_info's JSON as well as on the in-process definitions.
    assert wf.ui_to_api(workflow, json.loads(json.dumps(object_info))) == expected


# ------------------------------------------------------------------ graphs the editor can also save

def _node(workflow, type_):
    return next(n for n in workflow["nodes"] if n["type"] == type_)


def test_bypassed_node_passes_its_input_through(workflow, object_info):
    _node(workflow, "AnimateDiffApplyMotionModule")["mode"] = wf.MODE_BYPASS
    prompt = wf.ui_to_api(workflow, object_info)
    assert "6" not in prompt
    assert prompt["7"]["inputs"]["model"] == ["1", 0]
    assert "5" in prompt  # still in the prompt; ComfyUI only runs what outputs need


def test_muted_node_is_left_out_with_the_links_from_it(workflow, object_info):
    _node(workflow, "AnimateDiffApplyMotionModule")["mode"] = wf.MODE_NEVER
    prompt = wf.ui_to_api(workflow, object_info)
    assert "6" not in prompt and "model" not in prompt["7"]["inputs"]


def test_note_nodes_are_not_exported(workflow, object_info):
    assert any(n["type"] == "Note" for n in workflow["nodes"])
    assert "Note" not in {n["class_type"] for n in wf.ui_to_api(workflow, object_info).values()}


def _add_node(workflow, node):
    workflow["nodes"].append(node)
    workflow["last_node_id"] = max(workflow["last_node_id"], node["id"])


def _relink(workflow, link_id, **changes):
    link = next(link for link in workflow["links"] if link[0] == link_id)
    for key, value in changes.items():
        link[{"origin_id": 1, "origin_slot": 2, "target_id": 3, "target_slot": 4}[key]] = value


def test_reroute_is_followed(workflow, object_info):
    # model link 3 (apply -> KSampler) through a Reroute: apply -> reroute (link 3) -> KSampler (link 12)
    _add_node(workflow, {"id": 20, "type": "Reroute", "pos": [750, 500], "size": [75, 26], "flags": {}, "order": 10,
                         "mode": 0, "inputs": [{"name": "", "type": "*", "link": 3}],
                         "outputs": [{"name": "", "type": "MODEL", "links": [12]}],
                         "properties": {"showOutputText": False, "horizontal": False}})
    _relink(workflow, 3, target_id=20, target_slot=0)
    workflow["links"].append([12, 20, 0, 7, 0, "MODEL"])
    _node(workflow, "KSampler")["inputs"][0]["link"] = 12
    prompt = wf.ui_to_api(workflow, object_info)
    assert prompt["7"]["inputs"]["model"] == ["6", 0]
    assert "20" not in prompt


def test_widget_turned_into_an_input_keeps_its_place(workflow, object_info):
    # seed driven by a PrimitiveNode: the KSampler's widgets_values keep the old seed, the link wins
    sampler = _node(workflow, "KSampler")
    sampler["inputs"].append({"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": 12})
    _add_node(workflow, {"id": 20, "type": "PrimitiveNode", "pos": [600, 500], "size": [210, 82], "flags": {},
                         "order": 10, "mode": 0, "inputs": [],
                         "outputs": [{"name": "INT", "type": "INT", "links": [12],
                                      "widget": {"name": "seed"}}],
                         "title": "seed", "properties": {"Run widget replace on values": False},
                         "widgets_values": [1234, "fixed"]})
    workflow["links"].append([12, 20, 0, 7, 4, "INT"])
    prompt = wf.ui_to_api(workflow, object_info)
    assert prompt["7"]["inputs"]["seed"] == 1234
    assert prompt["7"]["inputs"]["steps"] == 20 and prompt["7"]["inputs"]["denoise"] == 1
    assert "20" not in prompt

    # the same input fed by a real node (core PrimitiveInt) becomes a link
    workflow["nodes"][-1].update(type="PrimitiveInt", properties={"Node name for S&R": "PrimitiveInt"},
                                 widgets_values=[99, "fixed"])
    prompt = wf.ui_to_api(workflow, object_info)
    assert prompt["7"]["inputs"]["seed"] == ["20", 0]
    assert prompt["20"]["inputs"] == {"value": 99}


def test_upload_button_value_is_not_an_input(object_info):
    load_image = {"id": 1, "type": "LoadImage", "mode": 0, "order": 0, "inputs": [],
                  "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": None}],
                  "properties": {}, "widgets_values": ["example.png", "image"]}
    prompt = wf.ui_to_api({"nodes": [load_image], "links": []}, object_info)
    assert prompt["1"]["inputs"] == {"image": "example.png"}


def _dynamic_combo(*options, **extra):
    return [wf.DYNAMIC_COMBO, {"options": [{"key": key, "inputs": inputs} for key, inputs in options], **extra}]


# A node shaped like ComfyUI 0.33's Save Video in GET /object_info: `format` is a DynamicCombo whose options hold
# a DynamicCombo `codec`, whose h264 option holds an optional DynamicCombo `encoding`, whose re-encode option holds
# two plain widgets; beside them an optional hidden `codec` of the node's own.
CODEC = _dynamic_combo(
    ("auto", {"required": {}}),
    ("h264", {"required": {}, "optional": {"encoding": _dynamic_combo(
        ("auto", {"required": {}}),
        ("re-encode", {"required": {"crf": ["FLOAT", {"default": 23.0, "min": 0.0, "max": 51.0}],
                                    "color_space": ["COMBO", {"default": "auto", "options": ["auto", "sRGB"]}]}}))}}))
DYNAMIC_SAVE = {
    "input": {"required": {"video": ["VIDEO", {}], "filename_prefix": ["STRING", {"default": "video/ComfyUI"}],
                           "format": _dynamic_combo(("auto", {"required": {"codec": CODEC}}),
                                                    ("mp4", {"required": {"codec": CODEC}}),
                                                    ("webm", {"required": {}}))},
              "optional": {"codec": [wf.DYNAMIC_COMBO, {**CODEC[1], "hidden": True}]}},
    "input_order": {"required": ["video", "filename_prefix", "format"], "optional": ["codec"]},
    "output": ["VIDEO"], "name": "DynamicSave", "display_name": "Dynamic Save"}


def _dynamic_save(values):
    """A UI workflow with one DynamicSave node, its video linked from a Load Video, saved with these widget values."""
    return {"nodes": [{"id": 1, "type": "LoadVideo", "mode": 0, "order": 0, "inputs": [],
                       "outputs": [{"name": "VIDEO", "type": "VIDEO", "links": [1]}], "widgets_values": ["a.mp4", "image"]},
                      {"id": 2, "type": "DynamicSave", "mode": 0, "order": 1,
                       "inputs": [{"name": "video", "type": "VIDEO", "link": 1}], "outputs": [],
                       "widgets_values": values}],
            "links": [[1, 1, 0, 2, 0, "VIDEO"]]}


@pytest.mark.parametrize("values, inputs", [
    # the chosen format's codec follows it, and the chosen codec's encoding mode follows the codec
    (["out/v", "mp4", "h264", "auto", "auto"],
     {"format": "mp4", "format.codec": "h264", "format.codec.encoding": "auto", "codec": "auto"}),
    (["out/v", "mp4", "h264", "re-encode", 18.0, "sRGB", "h264", "auto"],
     {"format": "mp4", "format.codec": "h264", "format.codec.encoding": "re-encode",
      "format.codec.encoding.crf": 18.0, "format.codec.encoding.color_space": "sRGB", "codec": "h264",
      "codec.encoding": "auto"}),
    # an option without inputs: the next value is the node's own codec
    (["out/v", "webm", "h264"], {"format": "webm", "codec": "h264", "codec.encoding": "auto"}),
    # saved before the node had the nested widgets (ComfyUI 0.3.75's format, codec): they start at their defaults
    (["out/v", "mp4", "h264"],
     {"format": "mp4", "format.codec": "h264", "format.codec.encoding": "auto", "codec": "auto"}),
    # a new node: every DynamicCombo at its first option
    ([], {"filename_prefix": "video/ComfyUI", "format": "auto", "format.codec": "auto", "codec": "auto"}),
    # a value that is none of the options brings no widgets with it
    (["out/v", "mov", "auto"], {"format": "mov", "codec": "auto"}),
])
def test_dynamic_combo_widgets_follow_the_chosen_option(object_info, values, inputs):
    info = {**object_info, "DynamicSave": DYNAMIC_SAVE}
    prompt = wf.ui_to_api(_dynamic_save(values), info)
    assert prompt["2"]["inputs"] == {"filename_prefix": "out/v", **inputs, "video": ["1", 0]}
    slots = wf.widget_slots(DYNAMIC_SAVE, values)
    assert [name for name, _ in slots] == ["filename_prefix", *(k for k in inputs if k != "filename_prefix")]
    assert all(width == 1 for _, width in slots)


def test_video_workflow_saves_an_h264_mp4_on_this_comfyui(object_info):
    """vid2vid_controlnet.json's Save Video: mp4/h264 as ComfyUI 0.3.75's combos, or 0.33's DynamicCombos (the
    saved codec is the format's codec there, its encoding mode and the hidden codec at their defaults)."""
    with open(os.path.join(REPO, "workflows", "vid2vid_controlnet.json"), encoding="utf-8") as f:
        prompt = wf.ui_to_api(json.load(f), object_info)
    (save,) = wf.find_nodes(prompt, "SaveVideo")
    inputs = {k: v for k, v in prompt[save]["inputs"].items() if k not in ("video", "filename_prefix")}
    if object_info["SaveVideo"]["input"]["required"]["format"][0] == wf.DYNAMIC_COMBO:
        assert inputs == {"format": "mp4", "format.codec": "h264", "format.codec.encoding": "auto", "codec": "auto"}
    else:
        assert inputs == {"format": "mp4", "codec": "h264"}
    (create,) = wf.find_nodes(prompt, "CreateVideo")
    assert wf.upstream_node(prompt, create, "fps") == wf.find_nodes(prompt, "GetVideoComponents")[0]
    assert prompt[create]["inputs"]["fps"][1] == 2  # Get Video Components' fps output


def test_apply_overrides_sizes_a_video_on_its_image_scale(object_info):
    """Video to video: the latent is the encoded frames, so width/height go to the ImageScale before VAE Encode and
    the frame count (the video's) cannot be set."""
    with open(os.path.join(REPO, "workflows", "vid2vid_controlnet.json"), encoding="utf-8") as f:
        prompt = wf.ui_to_api(json.load(f), object_info)
    (scale,) = wf.find_nodes(prompt, "ImageScale")
    assert {k: prompt[scale]["inputs"][k] for k in ("width", "height")} == {"width": 512, "height": 512}
    out = wf.apply_overrides(prompt, width=64, height=96, steps=3, filename_prefix="test/v2v")
    assert {k: out[scale]["inputs"][k] for k in ("width", "height")} == {"width": 64, "height": 96}
    assert out[wf.find_nodes(out, "SaveVideo")[0]]["inputs"]["filename_prefix"] == "test/v2v"
    with pytest.raises(KeyError, match="input video"):
        wf.apply_overrides(prompt, frames=8)
    (encode,) = wf.find_nodes(prompt, "VAEEncode")
    prompt[encode]["inputs"]["pixels"] = ["5", 0]  # the frames straight from Get Video Components: nothing to size
    with pytest.raises(KeyError, match="no ImageScale"):
        wf.apply_overrides(prompt, width=64)


def test_widgets_missing_from_an_older_save_get_their_defaults(workflow, object_info):
    sampler = _node(workflow, "KSampler")
    sampler["widgets_values"] = sampler["widgets_values"][:-1]  # saved before `denoise` existed
    del _node(workflow, "SaveAnimatedWEBP")["widgets_values"]
    prompt = wf.ui_to_api(workflow, object_info)
    assert prompt["7"]["inputs"]["denoise"] == 1.0 and prompt["7"]["inputs"]["scheduler"] == "normal"
    assert {k: v for k, v in prompt["9"]["inputs"].items() if k != "images"} == {
        "filename_prefix": "ComfyUI", "fps": 6.0, "lossless": True, "quality": 80, "method": "default"}


def test_unknown_node_types_are_reported(workflow, object_info):
    info = {k: v for k, v in object_info.items() if k not in PACK_NODES}
    with pytest.raises(wf.MissingNodeTypes) as e:
        wf.ui_to_api(workflow, info)
    assert e.value.types == sorted({n["type"] for n in workflow["nodes"]} & set(PACK_NODES))
    for node in workflow["nodes"]:
        if node["type"] in PACK_NODES:
            node["mode"] = wf.MODE_NEVER
    assert "model" not in wf.ui_to_api(workflow, info)["7"]["inputs"]


# ------------------------------------------------------------------------------------ prompt edits

def test_set_inputs_by_id_type_or_title(prompt):
    wf.set_inputs(prompt, {"KSampler": {"seed": 5}, "4": {"batch_size": 8},
                           "CLIP Text Encode (Negative Prompt)": {"text": "blurry"}})
    assert prompt["7"]["inputs"]["seed"] == 5
    assert prompt["4"]["inputs"]["batch_size"] == 8
    assert prompt["3"]["inputs"]["text"] == "blurry" and prompt["2"]["inputs"]["text"] == POSITIVE
    with pytest.raises(KeyError):
        wf.set_inputs(prompt, {"NoSuchNode": {"x": 1}})


def test_apply_overrides_follows_the_samplers_links(prompt, expected):
    out = wf.apply_overrides(prompt, seed=1, frames=12, steps=3, width=64, height=96, positive="waves",
                             negative="still", checkpoint="x.safetensors", motion_module="m.ckpt",
                             filename_prefix="test/vid")
    assert prompt == expected  # the original is left alone
    assert out["7"]["inputs"]["seed"] == 1 and out["7"]["inputs"]["steps"] == 3
    assert out["4"]["inputs"] == {"width": 64, "height": 96, "batch_size": 12}
    assert out["2"]["inputs"]["text"] == "waves" and out["3"]["inputs"]["text"] == "still"
    assert out["1"]["inputs"]["ckpt_name"] == "x.safetensors"
    assert out["5"]["inputs"]["motion_module"] == "m.ckpt"
    assert out["9"]["inputs"]["filename_prefix"] == "test/vid"
    assert wf.apply_overrides(prompt) == expected


def test_apply_overrides_shrinks_the_motion_lora_trainer(object_info, prompt, expected):
    with open(os.path.join(REPO, "workflows", "train_motion_lora.json"), encoding="utf-8") as f:
        training = wf.ui_to_api(json.load(f), object_info)
    (trainer,) = wf.find_nodes(training, wf.TRAINER)
    assert {k: training[trainer]["inputs"][k] for k in ("width", "height", "rank", "steps", "clip_length")} == {
        "width": 512, "height": 512, "rank": 64, "steps": 500, "clip_length": 16}
    out = wf.apply_overrides(training, width=64, height=96, steps=3, train_steps=2, clip_length=4)
    assert {k: out[trainer]["inputs"][k] for k in ("width", "height", "rank", "steps", "clip_length")} == {
        "width": 64, "height": 96, "rank": 64, "steps": 2, "clip_length": 4}
    (sampler,) = wf.find_nodes(out, "KSampler")
    assert out[sampler]["inputs"]["steps"] == 3
    assert wf.apply_overrides(prompt, train_steps=2, clip_length=4) == expected  # no trainer: nothing to shrink


def test_sync_widgets_writes_the_prompts_values_back(workflow, prompt, object_info):
    edited = wf.apply_overrides(prompt, seed=3, frames=8, steps=2, width=64, height=64, positive="waves")
    synced = wf.sync_widgets(workflow, edited, object_info)
    assert _node(synced, "KSampler")["widgets_values"] == [3, "fixed", 2, 7.5, "euler", "normal", 1]
    assert _node(synced, "EmptyLatentImage")["widgets_values"] == [64, 64, 8]
    assert wf.ui_to_api(synced, object_info) == edited
    assert _node(workflow, "KSampler")["widgets_values"][0] == 888888888  # the original is left alone
