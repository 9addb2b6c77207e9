"""workflows/txt2vid.json, converted to an API prompt, runs on the real ComfyUI: in-process and over HTTP."""
import importlib.util
import json
import os

import pytest
import requests
from PIL import Image

import builders
from conftest import EXTRA_MODELS, REPO_DIR, PromptFailed

spec = importlib.util.spec_from_file_location("workflow", os.path.join(REPO_DIR, "scripts", "workflow.py"))
workflow = importlib.util.module_from_spec(spec)
spec.loader.exec_module(workflow)

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
    assert names == ["long_video_controlnet", "motion_lora", "prompt_travel", "train_motion_lora", "txt2vid",
                     "v3_adapter"]
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
