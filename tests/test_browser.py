"""Every workflow in workflows/ on ComfyUI's real frontend, in headless Chromium (see tests/browser.py).

For each file: tiny random models go into the server's folders under the file names the workflow uses; a
fresh page gets the file through a real `drop` event (a DataTransfer holding the file, dispatched on the
canvas: the frontend's own drop handler reads and loads it). Then:
  * no node type is missing (the frontend's missing-nodes report and dialog, and every node's type is
    registered) and no widget value was rejected (the graph saves exactly the file's widgets_values, only
    followed by those of widgets the node gained after the file was saved, and every combo holds one of its
    options);
  * the API prompt the frontend builds (app.graphToPrompt().output) equals scripts/workflow.py's
    ui_to_api of the same file;
  * widgets are shrunk through the page (64x64, 8 frames or 48 for the long video, 1-2 steps; the MotionLoRA
    trainer to 2 steps on 4-frame clips at 64x64, rank 4; video to video: the ImageScale to 64x64, the frames are
    the input video's), the Run button queues it, the page shows the SaveAnimatedWEBP output (SaveVideo's: a
    video player), and the prompt the server ran is the frontend's prompt with exactly those changes.
One screenshot per workflow goes to $ANIMATEDIFF_ARTIFACTS or <repo>/test-artifacts/, with the prompt
the frontend produced. Without Chromium or Playwright the tests fail, saying how to install them.
"""
import copy
import importlib.util
import io
import json
import os
import tempfile
import time

import browser
import builders
import pytest
import requests
from conftest import BASE_DIR, REPO_DIR
from PIL import Image

spec = importlib.util.spec_from_file_location("workflow", os.path.join(REPO_DIR, "scripts", "workflow.py"))
workflow = importlib.util.module_from_spec(spec)
spec.loader.exec_module(workflow)

ARTIFACTS = os.environ.get("ANIMATEDIFF_ARTIFACTS") or os.path.join(REPO_DIR, "test-artifacts")
WORKFLOWS_DIR = os.path.join(REPO_DIR, "workflows")

VIDEO_FRAMES, VIDEO_FPS = 20, 12  # the input video of vid2vid_controlnet.json (80x48: ImageScale makes it 64x64)
# what the run shrinks to, per workflow (the long one keeps its 48 frames: more than one context window);
# "widgets": more widgets to set, by node type; "size": the node that sets the size (default EmptyLatentImage,
# which also takes the frames; an ImageScale takes the size only: the frames are the input video's)
RUNS = {
    "txt2vid.json": {"frames": 8, "steps": 2},
    "long_video_controlnet.json": {"frames": 48, "steps": 1},
    "motion_lora.json": {"frames": 8, "steps": 2},
    "v3_adapter.json": {"frames": 8, "steps": 2},
    "prompt_travel.json": {"frames": 24, "steps": 1, "widgets": {"AnimateDiffPromptTravel": {"frames": 24}}},
    "train_motion_lora.json": {"frames": 4, "steps": 1, "widgets": {"AnimateDiffTrainMotionLoRA": {
        "steps": 2, "clip_length": 4, "width": 64, "height": 64, "rank": 4}}},
    "vid2vid_controlnet.json": {"frames": VIDEO_FRAMES, "steps": 1, "size": "ImageScale"},
    "free_init.json": {"frames": 8, "steps": 1},
    "sparsectrl_keyframes.json": {"frames": 8, "steps": 1},
}
TRAINED_LORAS = "models/animatediff_motion_lora"  # where the trainer writes its file (removed after the run)
SIZE = 64
RUN_TIMEOUT = 300.0


def test_every_workflow_is_covered():
    assert sorted(f for f in os.listdir(WORKFLOWS_DIR) if f.endswith(".json")) == sorted(RUNS)


# ------------------------------------------------------------------------------------------ files

def _hint_frames_webp(path, frames=48):
    builders.save_hint_frames(path, frames, SIZE, SIZE)


def _reference_webp(path, frames=8):
    builders.save_animation(path, builders.moving_square_frames(frames, SIZE, SIZE))


def _input_video(path):
    builders.write_video(path, builders.moving_square_frames(VIDEO_FRAMES, 48, 80), fps=VIDEO_FPS)


def _gradient_mask(path):
    Image.linear_gradient("L").rotate(90).save(path)  # 0 at the left edge, 1 at the right


def _model_files(checkpoint_path):
    """{path under the base directory: writer(path)}: every file the workflows name, tiny and random."""
    def save(sd_fn):
        return lambda path: builders.save_file(sd_fn(), path)

    def link_checkpoint(path):
        try:
            os.link(checkpoint_path, path)
        except OSError:
            import shutil
            shutil.copyfile(checkpoint_path, path)

    ad = (320,) * 4  # the channels of the "animatediff" checkpoint layout on every level
    return {
        "models/checkpoints/v1-5-pruned-emaonly.safetensors": link_checkpoint,
        "models/animatediff_models/mm_sd_v15_v2.ckpt": save(lambda: builders.motion_module_sd("v2", channels=ad)),
        "models/animatediff_models/v3_sd15_mm.ckpt": save(lambda: builders.motion_module_sd("v3", channels=ad)),
        "models/animatediff_motion_lora/v2_lora_ZoomIn.ckpt": save(lambda: builders.motion_lora_sd(ad, rank=4)),
        "models/animatediff_motion_lora/v2_lora_PanLeft.ckpt": save(lambda: builders.motion_lora_sd(ad, rank=4, seed=1)),
        "models/loras/v3_sd15_adapter.ckpt": save(builders.v3_adapter_sd_for_ad_layout),
        "models/controlnet/control_v11p_sd15_openpose.pth": save(builders.controlnet_sd),
        "models/controlnet/control_v11f1e_sd15_tile.pth": save(builders.controlnet_sd),
        "input/hint_frames.webp": _hint_frames_webp,
        "input/pan_left_reference.webp": _reference_webp,
        "input/vid2vid_input.mp4": _input_video,
        "input/motion_gradient.png": _gradient_mask,
        "models/controlnet/v3_sd15_sparsectrl_rgb.ckpt":
            save(lambda: builders.sparsectrl_sd(ad, dtype=builders.torch.float16)),
        "input/sparsectrl_key_frames.webp": lambda path: _hint_frames_webp(path, 2),
    }


@pytest.fixture(scope="module")
def chromium():
    """The Playwright Browser (system Chromium); fails, saying how to install it, when there is none."""
    context, missing = browser.launch(), None
    try:
        b = context.__enter__()
    except browser.BrowserMissing as e:
        missing = str(e)
    if missing:
        pytest.fail(missing, pytrace=False)
    try:
        yield b
    finally:
        context.__exit__(None, None, None)


@pytest.fixture(scope="module")
def workflow_models(chromium, comfy_server, sd15_ad_checkpoint):
    """The workflows' model files (and hint frames) in the server's folders; removed afterwards."""
    written, kept = [], []
    t0 = time.perf_counter()
    for rel, write in _model_files(os.path.join(BASE_DIR, "models", "checkpoints", sd15_ad_checkpoint)).items():
        path = os.path.join(BASE_DIR, rel)
        partial = path + ".partial" + os.path.splitext(path)[1]  # the extension picks the file format
        if os.path.exists(path):  # another test's file of that name: set aside, put back afterwards
            os.replace(path, path + ".kept")
            kept.append(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write(partial)
        os.replace(partial, path)
        written.append(path)
    print(f"\nworkflow model files written in {time.perf_counter() - t0:.1f} s")
    # a returning user: no first-run template browser over the canvas
    requests.post(comfy_server.url + "/settings", json={"Comfy.TutorialCompleted": True},
                  timeout=30).raise_for_status()
    yield written
    for path in written:
        try:
            os.remove(path)
        except OSError:
            pass
    for path in kept:
        os.replace(path + ".kept", path)


@pytest.fixture(scope="module")
def object_info(comfy_server, workflow_models):
    return comfy_server.get("/object_info")


# ------------------------------------------------------------------------------------------ checks

def gained_widgets(node, page_values, object_info):
    """Whether the page holds the file's widgets_values followed by the values of widgets the node gained after
    the file was saved (one file serves ComfyUI 0.3.75 and 0.33: 0.33's Create Video has a bit_depth more, its
    Save Video nested codec widgets), exactly as many as scripts/workflow.py counts for the node. What the
    frontend gives those, ui_to_api gives them too: test_frontend_api_prompt_equals_ui_to_api compares."""
    definition, saved = object_info.get(node["type"]), node["widgets_values"]
    return (definition is not None and len(saved) < len(page_values) and page_values[:len(saved)] == saved
            and len(page_values) == sum(width for _, width in workflow.widget_slots(definition, page_values)))


def widget_problems(saved_nodes, page_nodes, object_info):
    """What the frontend did not take from the file: node types it does not know, nodes missing from the
    graph, widgets_values it changed (other than adding gained_widgets), combo values outside their options.
    [] when all is well."""
    problems = []
    by_id = {str(n["id"]): n for n in page_nodes}  # frontend 1.49.6 keeps node ids as strings
    for node in saved_nodes:
        page = by_id.get(str(node["id"]))
        if page is None:
            problems.append(f"node {node['id']} ({node['type']}) is not in the page's graph")
            continue
        if not page["registered"] or page["type"] != node["type"]:
            problems.append(f"node {node['id']}: type {node['type']!r} is not registered (page has {page['type']!r})")
        if page["has_errors"]:
            problems.append(f"node {node['id']} ({node['type']}) is marked with errors")
        expected = node.get("widgets_values")
        # (frontend 1.49.6 leaves widgets_values out of a node without widgets: None there is the file's [])
        values = page["widgets_values"] if page["widgets_values"] is not None else []
        if expected is not None and values != expected and not gained_widgets(node, values, object_info):
            problems.append(f"node {node['id']} ({node['type']}) widgets_values: file {expected!r}, "
                            f"page {page['widgets_values']!r}")
        for w in page["widgets"]:
            if w["type"] == "combo" and w["options"] is not None and w["value"] not in w["options"]:
                problems.append(f"node {node['id']} ({node['type']}) combo {w['name']} = {w['value']!r} "
                                f"is not one of its options {w['options'][:20]!r}")
    return problems


def mp4_frames(data):
    """(frames, (width, height), fps) of a video file's bytes, read back frame by frame with opencv."""
    import cv2
    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(data)
        f.flush()
        video = cv2.VideoCapture(f.name)
        frames = 0
        while video.read()[0]:
            frames += 1
        size = int(video.get(cv2.CAP_PROP_FRAME_WIDTH)), int(video.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = video.get(cv2.CAP_PROP_FPS)
        video.release()
    return frames, size, fps


def prompt_differences(frontend, ours, names=("frontend", "ui_to_api")):
    """Line per difference between two API prompts (node set, class_type, _meta, each input)."""
    lines, (fa, fb) = [], names
    for node_id in sorted(set(frontend) | set(ours), key=lambda k: (len(k), k)):
        a, b = frontend.get(node_id), ours.get(node_id)
        if a is None or b is None:
            lines.append(f"node {node_id}: only in {fb if a is None else fa} "
                         f"({(a or b).get('class_type')})")
            continue
        for key in sorted((set(a) | set(b)) - {"inputs"}):
            if a.get(key) != b.get(key):
                lines.append(f"node {node_id} {key}: {fa} {a.get(key)!r}, {fb} {b.get(key)!r}")
        ia, ib = a.get("inputs", {}), b.get("inputs", {})
        for name in sorted(set(ia) | set(ib)):
            if name not in ia or name not in ib or ia[name] != ib[name]:
                lines.append(f"node {node_id} ({a.get('class_type')}) input {name}: "
                             f"{fa} {ia.get(name, '<absent>')!r}, {fb} {ib.get(name, '<absent>')!r}")
    return lines


# ------------------------------------------------------------------------------------------ the page

class Loaded:
    """A page with one workflow dropped on it, and what the frontend made of it right after loading."""

    def __init__(self, name, page, saved):
        self.name = name
        self.page = page
        self.saved = saved
        self.missing = page.missing_reported()
        self.dialogs = page.open_dialogs()
        self.errors = page.page_errors()
        self.nodes = page.nodes()
        self.prompt = page.graph_to_prompt()["output"]
        self.stem = os.path.splitext(name)[0]
        os.makedirs(ARTIFACTS, exist_ok=True)
        with open(os.path.join(ARTIFACTS, f"{self.stem}.frontend-api.json"), "w") as f:
            json.dump(self.prompt, f, indent=2)

    def node_id(self, node_type):
        (node_id,) = [n["id"] for n in self.saved["nodes"] if n["type"] == node_type]
        return node_id


@pytest.fixture(scope="module", params=sorted(RUNS))
def loaded(request, chromium, comfy_server, workflow_models):
    name = request.param
    with open(os.path.join(WORKFLOWS_DIR, name), encoding="utf-8") as f:
        text = f.read()
    page = browser.ComfyPage(chromium, comfy_server.url)
    try:
        t0 = time.perf_counter()
        page.open()
        t1 = time.perf_counter()
        page.drop_workflow(name, text)
        print(f"\n{name}: page ready in {t1 - t0:.1f} s, dropped file loaded in {time.perf_counter() - t1:.1f} s")
        yield Loaded(name, page, json.loads(text))
    finally:
        page.close()


def test_workflow_loads_without_missing_nodes_or_rejected_values(loaded, object_info):
    assert loaded.missing == {"nodes": [], "nodes_dialog": [], "models_dialog": []}, f"the frontend reported missing {loaded.missing}"
    assert loaded.dialogs == [], f"dialogs open after loading {loaded.name}: {loaded.dialogs}"
    assert loaded.errors == [], f"uncaught errors in the page while loading {loaded.name}: {loaded.errors}"
    assert len(loaded.nodes) == len(loaded.saved["nodes"])
    problems = widget_problems(loaded.saved["nodes"], loaded.nodes, object_info)
    assert not problems, f"{loaded.name} on the frontend:\n" + "\n".join(problems)


def test_frontend_api_prompt_equals_ui_to_api(loaded, object_info):
    ours = workflow.ui_to_api(loaded.saved, object_info)
    differences = prompt_differences(loaded.prompt, ours)
    assert loaded.prompt == ours, (
        f"{loaded.name}: app.graphToPrompt() and scripts/workflow.py ui_to_api differ "
        f"(the frontend's is in {ARTIFACTS}/{loaded.stem}.frontend-api.json):\n" + "\n".join(differences))


def test_workflow_runs_from_the_page(loaded, comfy_server):
    run = RUNS[loaded.name]
    page = loaded.page
    size_type = run.get("size", "EmptyLatentImage")
    size, sampler = loaded.node_id(size_type), loaded.node_id("KSampler")
    ((save, save_type),) = [(n["id"], n["type"]) for n in loaded.saved["nodes"]
                            if n["type"] in ("SaveAnimatedWEBP", "SaveVideo")]
    video = save_type == "SaveVideo"
    edits = [(size, "width", SIZE), (size, "height", SIZE), (sampler, "steps", run["steps"])]
    if size_type == "EmptyLatentImage":
        edits.append((size, "batch_size", run["frames"]))
    widgets = run.get("widgets", {})
    edits += [(loaded.node_id(node_type), name, value) for node_type, values in widgets.items()
              for name, value in values.items()]
    for node_id, name, value in edits:
        assert page.set_widget(node_id, name, value) == value, f"node {node_id} {name} did not take {value}"

    trained = os.path.join(BASE_DIR, TRAINED_LORAS)
    before = set(os.listdir(trained)) if os.path.isdir(trained) else set()
    t0 = time.perf_counter()
    prompt_id = page.queue()
    try:
        page.wait_for_run(prompt_id, RUN_TIMEOUT)
    finally:
        new = sorted(set(os.listdir(trained)) - before) if os.path.isdir(trained) else []
        for name in new:
            os.remove(os.path.join(trained, name))
    assert len(new) == (workflow.TRAINER in widgets), f"files written to {TRAINED_LORAS}: {new}"
    shown = page.wait_for_output(save)
    seconds = time.perf_counter() - t0
    print(f"\n{loaded.name}: queued from the page, output shown after {seconds:.1f} s")
    page.screenshot(os.path.join(ARTIFACTS, f"{loaded.stem}.png"))
    page.console_log(os.path.join(ARTIFACTS, f"{loaded.stem}.console.txt"))

    assert page.page_errors() == [], "uncaught errors in the page while running"
    assert shown["visible"] and (shown["width"], shown["height"]) == (SIZE, SIZE), shown
    assert shown["animated"] == [True] and shown["tag"] == ("video" if video else "img"), shown
    (image,) = shown["images"]
    data = requests.get(comfy_server.url + "/view", params=image, timeout=30)
    assert data.status_code == 200
    if video:  # the mp4: the input video's frames and fps, at the scaled size
        assert image["filename"].endswith(".mp4")
        assert mp4_frames(data.content) == (run["frames"], (SIZE, SIZE), VIDEO_FPS)
    else:
        with Image.open(io.BytesIO(data.content)) as webp:
            assert (webp.format, webp.n_frames, webp.size) == ("WEBP", run["frames"], (SIZE, SIZE))

    # the server ran the frontend's prompt of the file with exactly the page's edits
    item = page.history(prompt_id)
    assert item["status"]["status_str"] == "success"
    ran = item["prompt"][2]
    expected = workflow.apply_overrides(copy.deepcopy(loaded.prompt), width=SIZE, height=SIZE,
                                        frames=None if size_type == "ImageScale" else run["frames"],
                                        steps=run["steps"])
    workflow.set_inputs(expected, widgets)
    assert ran == expected, "\n".join(prompt_differences(ran, expected, ("ran", "expected")))
    assert item["outputs"][str(save)]["images"] == [image]


def test_missing_node_and_rejected_value_are_detected(chromium, comfy_server, workflow_models, object_info):
    """The checks above are not vacuous: an unknown node type and a model file the server does not have."""
    with open(os.path.join(WORKFLOWS_DIR, "txt2vid.json"), encoding="utf-8") as f:
        saved = json.load(f)
    by_type = {n["type"]: n for n in saved["nodes"]}
    by_type["AnimateDiffApplyMotionModule"]["type"] = "AnimateDiffNoSuchNode"
    by_type["AnimateDiffLoadMotionModule"]["widgets_values"] = ["not_on_this_server.ckpt"]
    page = browser.ComfyPage(chromium, comfy_server.url)
    try:
        page.open()
        page.drop_workflow("broken.json", json.dumps(saved))
        missing = page.missing_reported()
        assert missing["nodes"] == missing["nodes_dialog"] == ["AnimateDiffNoSuchNode"], missing
        page.page.wait_for_function(f"document.querySelector({browser.DIALOGS!r})", timeout=10000)
        errors = page.shown_errors()
        assert any("AnimateDiffNoSuchNode" in text for text in errors), errors
        problems = widget_problems(saved["nodes"], page.nodes(), object_info)
        assert any("AnimateDiffNoSuchNode" in p and "not registered" in p for p in problems), problems
        assert any("not_on_this_server.ckpt" in p and "options" in p for p in problems), problems
    finally:
        page.close()
