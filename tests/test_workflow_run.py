"""The workflows in workflows/, converted to API prompts, run on the real ComfyUI: in-process and over HTTP."""
import importlib.util
import json
import logging
import os
import sys

import pytest
import requests
from PIL import Image

import builders
from conftest import EXTRA_MODELS, REPO_DIR, PromptFailed


def _load_script(name):
    """scripts/<name>.py as a module (sys.path left as it was: txt2vid.py puts scripts/ on it for its imports)."""
    path = list(sys.path)
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_DIR, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
    return module


workflow = _load_script("workflow")
txt2vid = _load_script("txt2vid")  # the headless runner: its stand-in input files

MOTION_MODULE = "workflow_v2.safetensors"


@pytest.fixture(scope="module")
def motion_module(comfy):
    path = os.path.join(comfy.models, "animatediff_models", MOTION_MODULE)
    builders.save_file(builders.motion_module_sd("v2", channels=(320, 320, 320, 320)), path)
    return MOTION_MODULE


def txt2vid_prompt(object_info, checkpoint, motion_module, frames):
    with open(os.path.join(REPO_DIR, "workflows", "txt2vid.json")) as f:
        ui = json.load(f)
    prompt = workflow.ui_to_api(ui, object_info)
    return workflow.apply_overrides(prompt, width=64, height=64, frames=frames, steps=2, checkpoint=checkpoint,
                                    motion_module=motion_module)


def webp_frames(path):
    with Image.open(path) as image:
        return image.n_frames, image.size


def mp4_frames(path):
    """(frames, (width, height), fps) of a video file, read back frame by frame with opencv."""
    import cv2
    video = cv2.VideoCapture(str(path))
    try:
        frames = 0
        while video.read()[0]:
            frames += 1
        size = int(video.get(cv2.CAP_PROP_FRAME_WIDTH)), int(video.get(cv2.CAP_PROP_FRAME_HEIGHT))
        return frames, size, video.get(cv2.CAP_PROP_FPS)
    finally:
        video.release()


def test_txt2vid_workflow_in_process(comfy, sd15_ad_checkpoint, motion_module):
    info = workflow.node_definitions(comfy.nodes.NODE_CLASS_MAPPINGS, comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS)
    prompt = txt2vid_prompt(info, sd15_ad_checkpoint, motion_module, frames=16)
    assert [n["class_type"] for n in prompt.values()].count("AnimateDiffApplyMotionModule") == 1
    outputs = comfy.run(prompt)
    (saved,) = [o["images"][0] for o in outputs.values() if "images" in o]
    assert saved["filename"].endswith(".webp")
    assert webp_frames(os.path.join(comfy.output_dir, saved["subfolder"], saved["filename"])) == (16, (64, 64))


def test_txt2vid_workflow_over_http(comfy_server, sd15_ad_checkpoint, motion_module):
    prompt = txt2vid_prompt(comfy_server.get("/object_info"), sd15_ad_checkpoint, motion_module, frames=8)
    outputs = comfy_server.run(prompt, timeout=300)
    (saved,) = [o["images"][0] for o in outputs.values() if "images" in o]
    image = requests.get(comfy_server.url + "/view", params=saved, timeout=30)
    assert image.status_code == 200 and image.content[8:12] == b"WEBP"


def test_bad_file_over_http_fails_clearly_and_the_server_keeps_running(comfy_server, comfy, sd15_ad_checkpoint,
                                                                       motion_module):
    with open(os.path.join(comfy.models, "animatediff_models", "http_truncated.safetensors"), "wb") as f:
        f.write(open(os.path.join(comfy.models, "animatediff_models", MOTION_MODULE), "rb").read()[:5000])
    bad = txt2vid_prompt(comfy_server.get("/object_info"), sd15_ad_checkpoint, "http_truncated.safetensors", frames=2)
    with pytest.raises(PromptFailed) as failure:
        comfy_server.run(bad, timeout=300)
    assert "damaged or incomplete" in str(failure.value)
    assert failure.value.node_type == "AnimateDiffLoadMotionModule"
    good = txt2vid_prompt(comfy_server.get("/object_info"), sd15_ad_checkpoint, motion_module, frames=2)
    assert comfy_server.run(good, timeout=300)


def test_extra_model_paths_folder_is_found(comfy_server):
    name = "kept_elsewhere.safetensors"
    builders.save_file(builders.motion_module_sd("v3", channels=(32, 64, 64, 64)),
                       os.path.join(EXTRA_MODELS, "animatediff_models", name))
    info = comfy_server.get("/object_info/AnimateDiffLoadMotionModule")["AnimateDiffLoadMotionModule"]
    options = info["input"]["required"]["motion_module"][1]["options"]
    assert name in options and MOTION_MODULE in options
    prompt = {"1": {"class_type": "AnimateDiffLoadMotionModule", "inputs": {"motion_module": name}},
              "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    assert comfy_server.run(prompt)


def test_long_video_controlnet_workflow_in_process(comfy, sd15_ad_checkpoint, motion_module):
    """48 frames (more than the module's 32 positions) in context windows, a ControlNet fed 48 hint frames."""
    os.makedirs(os.path.join(comfy.models, "controlnet"), exist_ok=True)
    builders.save_file(builders.controlnet_sd(), os.path.join(comfy.models, "controlnet", "workflow_cn.safetensors"))
    builders.save_hint_frames(os.path.join(comfy.input_dir, "workflow_hints.webp"), 48, 64, 64)
    with open(os.path.join(REPO_DIR, "workflows", "long_video_controlnet.json")) as f:
        ui = json.load(f)
    info = workflow.node_definitions(comfy.nodes.NODE_CLASS_MAPPINGS, comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS)
    prompt = workflow.apply_overrides(workflow.ui_to_api(ui, info), width=64, height=64, steps=1,
                                      checkpoint=sd15_ad_checkpoint, motion_module=motion_module)
    workflow.set_inputs(prompt, {"ControlNetLoader": {"control_net_name": "workflow_cn.safetensors"},
                                 "LoadImage": {"image": "workflow_hints.webp"}})
    assert [n["class_type"] for n in prompt.values()].count("AnimateDiffContextWindows") == 1
    assert prompt[workflow.find_nodes(prompt, "EmptyLatentImage")[0]]["inputs"]["batch_size"] == 48
    outputs = comfy.run(prompt)
    (saved,) = [o["images"][0] for o in outputs.values() if "images" in o]
    assert webp_frames(os.path.join(comfy.output_dir, saved["subfolder"], saved["filename"])) == (48, (64, 64))


def vid2vid_prompt(object_info, checkpoint, motion_module, video):
    with open(os.path.join(REPO_DIR, "workflows", "vid2vid_controlnet.json")) as f:
        ui = json.load(f)
    prompt = workflow.apply_overrides(workflow.ui_to_api(ui, object_info), width=64, height=64, steps=1,
                                      checkpoint=checkpoint, motion_module=motion_module)
    return workflow.set_inputs(prompt, {"ControlNetLoader": {"control_net_name": "workflow_cn.safetensors"},
                                        "LoadVideo": {"file": video}})


@pytest.fixture(scope="module")
def input_video(comfy):
    """The ControlNet vid2vid_prompt names, and an input video of 20 frames of 80x48 at 12 fps; its file name."""
    os.makedirs(os.path.join(comfy.models, "controlnet"), exist_ok=True)
    builders.save_file(builders.controlnet_sd(), os.path.join(comfy.models, "controlnet", "workflow_cn.safetensors"))
    builders.write_video(os.path.join(comfy.input_dir, "workflow_input.mp4"),
                         builders.moving_square_frames(20, 48, 80), fps=12)
    return "workflow_input.mp4"


def test_vid2vid_controlnet_workflow_in_process(comfy, sd15_ad_checkpoint, motion_module, input_video):
    """A video of 20 frames of 80x48 at 12 fps: scaled to 64x64, encoded, redrawn at denoise 0.6 in context windows
    of 16 with its frames as ControlNet hints; the mp4 has the video's 20 frames and 12 fps (not Create Video's
    saved 8: its fps is linked from Get Video Components) at the scaled size."""
    info = workflow.node_definitions(comfy.nodes.NODE_CLASS_MAPPINGS, comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS)
    prompt = vid2vid_prompt(info, sd15_ad_checkpoint, motion_module, input_video)
    types = [n["class_type"] for n in prompt.values()]
    assert {"AnimateDiffContextWindows", "ControlNetApplyAdvanced", "VAEEncode", "CreateVideo"} <= set(types)
    (sampler,) = workflow.find_nodes(prompt, "KSampler")
    assert prompt[sampler]["inputs"]["denoise"] == 0.6
    outputs = comfy.run(prompt)
    (scaled,) = workflow.find_nodes(prompt, "ImageScale")
    assert tuple(outputs.output(scaled).shape) == (20, 64, 64, 3)
    (saved,) = [o["images"][0] for o in outputs.values() if "images" in o]
    assert saved["filename"].endswith(".mp4") and saved["type"] == "output"
    assert mp4_frames(os.path.join(comfy.output_dir, saved["subfolder"], saved["filename"])) == (20, (64, 64), 12.0)


def test_vid2vid_after_txt2vid_on_a_warm_comfyui(comfy, sd15_ad_checkpoint, motion_module, input_video):
    """One ComfyUI, its node cache kept: txt2vid leaves its animated model loaded; vid2vid then takes the cached
    Apply AnimateDiff Motion Module's model and clones it (Context Windows), a clone that believes itself injected
    while loading it unloads the original: the motion modules go in once and sampling runs."""
    info = workflow.node_definitions(comfy.nodes.NODE_CLASS_MAPPINGS, comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS)
    shared = comfy.executor()
    comfy.run(txt2vid_prompt(info, sd15_ad_checkpoint, motion_module, frames=4), executor=shared)
    prompt = vid2vid_prompt(info, sd15_ad_checkpoint, motion_module, input_video)
    outputs = comfy.run(prompt, executor=shared)
    assert workflow.find_nodes(prompt, "AnimateDiffApplyMotionModule")[0] in outputs.cached
    (saved,) = [o["images"][0] for o in outputs.values() if "images" in o]
    assert mp4_frames(os.path.join(comfy.output_dir, saved["subfolder"], saved["filename"])) == (20, (64, 64), 12.0)


def test_free_init_workflow_in_process(comfy, sd15_ad_checkpoint, motion_module, caplog):
    """FreeInit (2 samplings) after Apply AnimateDiff Motion Module, whose effect_schedule is the mask the headless
    runner writes in place of a missing one (a gradient, 0 at the left edge to 1 at the right) through Load Image
    (as Mask): 8 frames of 64x64, the effect per pixel."""
    import server
    txt2vid.write_stand_in("LoadImageMask", os.path.join(comfy.input_dir, "workflow_gradient.png"))
    with open(os.path.join(REPO_DIR, "workflows", "free_init.json")) as f:
        ui = json.load(f)
    info = workflow.node_definitions(comfy.nodes.NODE_CLASS_MAPPINGS, comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS)
    prompt = workflow.apply_overrides(workflow.ui_to_api(ui, info), width=64, height=64, frames=8, steps=1,
                                      checkpoint=sd15_ad_checkpoint, motion_module=motion_module)
    workflow.set_inputs(prompt, {"LoadImageMask": {"image": "workflow_gradient.png"}})
    (free_init,) = workflow.find_nodes(prompt, "AnimateDiffFreeInit")
    (apply,) = workflow.find_nodes(prompt, "AnimateDiffApplyMotionModule")
    (mask,) = workflow.find_nodes(prompt, "LoadImageMask")
    assert prompt[free_init]["inputs"]["iterations"] == 2 and prompt[free_init]["inputs"]["model"] == [apply, 0]
    assert workflow.upstream_node(prompt, apply, "effect_schedule") == mask
    server.PromptServer.instance.messages.clear()
    with caplog.at_level(logging.INFO):
        outputs = comfy.run(prompt)
    assert "effect per pixel (1 frames)" in caplog.text
    texts = [d["text"] for e, d, _ in server.PromptServer.instance.messages
             if e == "progress_text" and d["node_id"] == free_init]
    assert texts == ["FreeInit iteration 1/2", "FreeInit iteration 2/2"]
    gradient = outputs.output(mask)[0]
    assert gradient[:, 0].max() == 0 and gradient[:, -1].min() >= 254 / 255  # (0.33 reads the white as 254/255)
    assert (gradient[:, 1:] >= gradient[:, :-1]).all() and (gradient == gradient[:1]).all()  # the same every row
    (saved,) = [o["images"][0] for o in outputs.values() if "images" in o]
    assert webp_frames(os.path.join(comfy.output_dir, saved["subfolder"], saved["filename"])) == (8, (64, 64))


@pytest.mark.parametrize("name, adapter", [("motion_lora.json", False), ("v3_adapter.json", True)])
def test_lora_workflows_in_process(comfy, sd15_ad_checkpoint, name, adapter):
    """workflows/motion_lora.json (v2 + MotionLoRA) and v3_adapter.json (v3 + domain adapter + MotionLoRA)."""
    fmt = "v3" if adapter else "v2"
    module = f"workflow_{fmt}.safetensors"
    builders.save_file(builders.motion_module_sd(fmt, channels=(320,) * 4),
                       os.path.join(comfy.models, "animatediff_models", module))
    os.makedirs(os.path.join(comfy.models, "animatediff_motion_lora"), exist_ok=True)
    builders.save_file(builders.motion_lora_sd((320,) * 4, rank=4),
                       os.path.join(comfy.models, "animatediff_motion_lora", "workflow_lora.ckpt"))
    builders.save_file(builders.v3_adapter_sd_for_ad_layout(),
                       os.path.join(comfy.models, "loras", "workflow_adapter.safetensors"))
    with open(os.path.join(REPO_DIR, "workflows", name)) as f:
        ui = json.load(f)
    info = workflow.node_definitions(comfy.nodes.NODE_CLASS_MAPPINGS, comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS)
    prompt = workflow.apply_overrides(workflow.ui_to_api(ui, info), width=64, height=64, frames=8, steps=2,
                                      checkpoint=sd15_ad_checkpoint, motion_module=module)
    overrides = {"AnimateDiffLoadMotionLoRA": {"lora_name": "workflow_lora.ckpt"}}
    if adapter:
        overrides["AnimateDiffApplyDomainAdapter"] = {"adapter_name": "workflow_adapter.safetensors"}
    workflow.set_inputs(prompt, overrides)
    types = [n["class_type"] for n in prompt.values()]
    assert types.count("AnimateDiffLoadMotionLoRA") == 1 and types.count("AnimateDiffApplyDomainAdapter") == adapter
    outputs = comfy.run(prompt)
    (saved,) = [o["images"][0] for o in outputs.values() if "images" in o]
    assert webp_frames(os.path.join(comfy.output_dir, saved["subfolder"], saved["filename"])) == (8, (64, 64))


def test_train_motion_lora_workflow_in_process(comfy, sd15_ad_checkpoint, motion_module):
    """workflows/train_motion_lora.json: reference frames (an animated WEBP through Load Image) -> Train AnimateDiff
    MotionLoRA -> its motion module, with the MotionLoRA applied, animates; the file is in the official layout."""
    import safetensors
    builders.save_animation(os.path.join(comfy.input_dir, "workflow_reference.webp"),
                            builders.moving_square_frames(4, 64, 64))
    with open(os.path.join(REPO_DIR, "workflows", "train_motion_lora.json")) as f:
        ui = json.load(f)
    info = workflow.node_definitions(comfy.nodes.NODE_CLASS_MAPPINGS, comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS)
    prompt = workflow.apply_overrides(workflow.ui_to_api(ui, info), width=64, height=64, frames=4, steps=2,
                                      train_steps=2, clip_length=4, checkpoint=sd15_ad_checkpoint,
                                      motion_module=motion_module)
    workflow.set_inputs(prompt, {"LoadImage": {"image": "workflow_reference.webp"},
                                 workflow.TRAINER: {"rank": 4, "output_name": "workflow_pan_left"}})
    (trainer,) = workflow.find_nodes(prompt, workflow.TRAINER)
    assert {k: prompt[trainer]["inputs"][k] for k in ("width", "height", "steps", "clip_length", "video_folder")} \
        == {"width": 64, "height": 64, "steps": 2, "clip_length": 4, "video_folder": ""}
    (apply,) = workflow.find_nodes(prompt, "AnimateDiffApplyMotionModule")
    assert workflow.upstream_node(prompt, apply, "motion_module") == trainer
    assert workflow.upstream_node(prompt, trainer, "images") == workflow.find_nodes(prompt, "LoadImage")[0]
    outputs = comfy.run(prompt)
    name = outputs.output(trainer, 1)
    assert name.startswith("workflow_pan_left") and name.endswith(".safetensors")
    with safetensors.safe_open(os.path.join(comfy.models, "animatediff_motion_lora", name), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        assert f.metadata()["steps"] == "2" and f.metadata()["clip_length"] == "4"
    assert shapes == dict(builders.motion_lora_shapes((320,) * 4, 4, mid=True))
    (saved,) = [o["images"][0] for o in outputs.values() if "images" in o]
    assert webp_frames(os.path.join(comfy.output_dir, saved["subfolder"], saved["filename"])) == (4, (64, 64))


def test_prompt_travel_workflow_in_process(comfy, sd15_ad_checkpoint, motion_module):
    """48 frames in context windows with a prompt per keyframe; the headless runner's frames follow to the node."""
    with open(os.path.join(REPO_DIR, "workflows", "prompt_travel.json")) as f:
        ui = json.load(f)
    info = workflow.node_definitions(comfy.nodes.NODE_CLASS_MAPPINGS, comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS)
    prompt = workflow.apply_overrides(workflow.ui_to_api(ui, info), width=64, height=64, steps=1,
                                      checkpoint=sd15_ad_checkpoint, motion_module=motion_module)
    (travel,) = workflow.find_nodes(prompt, "AnimateDiffPromptTravel")
    assert prompt[travel]["inputs"]["frames"] == 48 and prompt[travel]["inputs"]["text"].count('": "') == 4
    assert workflow.apply_overrides(prompt, frames=20)[travel]["inputs"]["frames"] == 20
    outputs = comfy.run(prompt)
    (saved,) = [o["images"][0] for o in outputs.values() if "images" in o]
    assert webp_frames(os.path.join(comfy.output_dir, saved["subfolder"], saved["filename"])) == (48, (64, 64))


def test_workflows_are_templates_with_thumbnails(comfy_server):
    """ComfyUI's template browser lists every workflow under the pack and serves it with its .jpg thumbnail."""
    names = sorted(os.path.splitext(f)[0] for f in os.listdir(os.path.join(REPO_DIR, "workflows")) if f.endswith(".json"))
    assert names == ["free_init", "long_video_controlnet", "motion_lora", "prompt_travel", "sparsectrl_keyframes",
                     "train_motion_lora", "txt2vid", "v3_adapter", "vid2vid_controlnet"]
    listed = comfy_server.get("/workflow_templates")
    assert sorted(listed["comfyui-animatediff"]) == names
    for name in names:
        for ext in ("json", "jpg"):
            r = requests.get(f"{comfy_server.url}/api/workflow_templates/comfyui-animatediff/{name}.{ext}", timeout=30)
            assert r.status_code == 200, (name, ext)
        with Image.open(os.path.join(REPO_DIR, "workflows", f"{name}.jpg")) as thumbnail:
            assert thumbnail.format == "JPEG" and min(thumbnail.size) >= 128


def run_headless(*args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, os.path.join(REPO_DIR, "scripts", "txt2vid.py"), *args],
                          capture_output=True, text=True, timeout=600)


def test_headless_command_against_a_server(comfy_server, sd15_ad_checkpoint, motion_module, tmp_path):
    """scripts/txt2vid.py (what scripts/demo.sh runs) on the real server: overrides, a progress bar over the
    sampling steps from the websocket, the animation saved where asked; and ComfyUI's refusal shown with the node."""
    out = run_headless("--server", comfy_server.url, "--checkpoint", sd15_ad_checkpoint, "--motion-module",
                       motion_module, "--frames", "6", "--steps", "3", "--width", "64", "--height", "48", "--seed",
                       "5", "--prompt", "a red kite", "--output", str(tmp_path / "saved"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Generating 6 frames of 64x48, 3 steps, seed 5" in out.stdout
    assert "(KSampler) [##########" + "." * 20 + "] 1/3" in out.stdout
    assert "(KSampler) [" + "#" * 30 + "] 3/3" in out.stdout
    (saved,) = os.listdir(tmp_path / "saved")
    assert webp_frames(tmp_path / "saved" / saved) == (6, (64, 48))

    bad = run_headless("--server", comfy_server.url, "--checkpoint", sd15_ad_checkpoint, "--motion-module",
                       motion_module, "--frames", "40", "--steps", "1", "--width", "64", "--height", "48",
                       "--output", str(tmp_path / "bad"))
    assert bad.returncode == 1
    assert 'ComfyUI failed in node 7 KSampler "KSampler": MotionModuleError: 40 frames is more than the 32 frame ' \
           "positions" in bad.stdout, bad.stdout
    refused = run_headless("--server", comfy_server.url, "--checkpoint", sd15_ad_checkpoint, "--motion-module",
                           motion_module, "--steps", "0", "--output", str(tmp_path / "refused"))
    assert refused.returncode == 1
    assert "ComfyUI refused the prompt" in refused.stdout and 'node 7 KSampler "KSampler":' in refused.stdout
    assert "steps" in refused.stdout.split('node 7 KSampler "KSampler":')[1], refused.stdout
    missing = run_headless("--server", comfy_server.url, "--checkpoint", sd15_ad_checkpoint, "--motion-module",
                           "not_here.ckpt", "--output", str(tmp_path / "missing"))
    assert missing.returncode == 1
    assert "the server has no motion_module 'not_here.ckpt' (in models/animatediff_models/)" in missing.stdout


def test_headless_video_to_video_against_a_server(comfy_server, comfy, sd15_ad_checkpoint, motion_module, tmp_path):
    """scripts/txt2vid.py --workflow workflows/vid2vid_controlnet.json: the input video the runner writes in place of
    a missing one, sized through the ImageScale; the mp4 Save Video wrote lands in --output with the video's frames
    and fps. A frame count is refused: it is the video's."""
    os.makedirs(os.path.join(comfy.models, "controlnet"), exist_ok=True)
    builders.save_file(builders.controlnet_sd(), os.path.join(comfy.models, "controlnet", "control_v11f1e_sd15_tile.pth"))
    txt2vid.write_stand_in("LoadVideo", os.path.join(comfy.input_dir, "vid2vid_input.mp4"))
    frames, width, height, fps = txt2vid.STAND_IN_VIDEO
    assert mp4_frames(os.path.join(comfy.input_dir, "vid2vid_input.mp4")) == (frames, (width, height), fps)
    common = ("--server", comfy_server.url, "--workflow", os.path.join(REPO_DIR, "workflows", "vid2vid_controlnet.json"),
              "--checkpoint", sd15_ad_checkpoint, "--motion-module", motion_module)
    out = run_headless(*common, "--width", "64", "--height", "48", "--steps", "1", "--output", str(tmp_path / "saved"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Redrawing the frames of vid2vid_input.mp4 at 64x48, denoise 0.6, 1 steps" in out.stdout
    (saved,) = os.listdir(tmp_path / "saved")
    assert saved.startswith("AnimateDiff_vid2vid") and saved.endswith(".mp4")
    assert mp4_frames(tmp_path / "saved" / saved) == (frames, (64, 48), fps)

    refused = run_headless(*common, "--frames", "8", "--output", str(tmp_path / "refused"))
    assert refused.returncode == 1 and not os.path.exists(tmp_path / "refused")
    assert "vid2vid_controlnet.json" in refused.stdout and "the input video's" in refused.stdout, refused.stdout
