"""The MotionLoRA trainer node through real ComfyUI execution, and the three-stage command line on real files:
stock checkpoint loader, CLIP text encoder and VAE, reference clips from a video folder and an IMAGE batch,
files saved in the documented layouts and loaded by the loader nodes."""
import logging
import os
import subprocess
import sys

import pytest
import safetensors
import torch

import builders
from conftest import PromptFailed, REPO_DIR

SD15_AD = (320, 320, 320, 320)  # fits the "animatediff" checkpoint layout
RANK = 4


@pytest.fixture(scope="module")
def files(comfy, sd15_ad_checkpoint):
    mm = os.path.join(comfy.models, "animatediff_models")
    os.makedirs(mm, exist_ok=True)
    builders.save_file(builders.motion_module_sd("v2", channels=SD15_AD), os.path.join(mm, "train_v2.safetensors"))
    videos = os.path.join(comfy.input_dir, "pan_clips")
    os.makedirs(videos, exist_ok=True)
    builders.write_video(os.path.join(videos, "one.mp4"), builders.moving_square_frames(8, 64, 64, step=4))
    builders.write_video(os.path.join(videos, "two.avi"), builders.moving_square_frames(6, 48, 80, step=6))
    builders.save_animation(os.path.join(comfy.input_dir, "pan.webp"), builders.moving_square_frames(5, 64, 64))
    return {"ckpt": sd15_ad_checkpoint, "mm": "train_v2.safetensors", "videos": videos}


def train_prompt(files, output_name, steps=2, images=True, folder="pan_clips", precision="fp32", checkpointing=False):
    """checkpoint + motion module + reference clips -> Train AnimateDiff MotionLoRA -> Apply -> KSampler."""
    p = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": files["ckpt"]}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a square, camera pans", "clip": ["1", 1]}},
        "5": {"class_type": "AnimateDiffLoadMotionModule", "inputs": {"motion_module": files["mm"]}},
        "10": {"class_type": "AnimateDiffTrainMotionLoRA", "inputs": {
            "model": ["1", 0], "motion_module": ["5", 0], "vae": ["1", 2], "positive": ["2", 0],
            "video_folder": folder, "width": 64, "height": 64, "rank": RANK, "steps": steps,
            "learning_rate": 1e-3, "clip_length": 4, "seed": 7, "output_name": output_name, "precision": precision,
            "gradient_checkpointing": checkpointing}},
        "6": {"class_type": "AnimateDiffApplyMotionModule", "inputs": {
            "model": ["1", 0], "motion_module": ["10", 0], "beta_schedule": "autoselect", "motion_scale": 1.0,
            "effect": 1.0}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 4}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["6", 0], "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["4", 0], "seed": 1,
            "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "train/lat"}},
    }
    if images:
        p["11"] = {"class_type": "LoadImage", "inputs": {"image": "pan.webp"}}
        p["10"]["inputs"]["images"] = ["11", 0]
    return p


@pytest.mark.usefixtures("no_loaded_models")
def test_node_trains_saves_and_the_file_loads(comfy, files):
    import server
    lora_dir = os.path.join(comfy.models, "animatediff_motion_lora")
    server.PromptServer.instance.messages.clear()
    result = comfy.run(train_prompt(files, "pan_test"))
    name = result.output("10", 1)
    assert name == "pan_test.safetensors"
    path = os.path.join(lora_dir, name)
    with safetensors.safe_open(path, "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        metadata = f.metadata()
    assert shapes == dict(builders.motion_lora_shapes(SD15_AD, RANK, mid=True))  # the official layout
    assert metadata["rank"] == str(RANK) and metadata["steps"] == "2"
    # the loss, shown on the node after every step
    texts = [d["text"] for e, d, _ in server.PromptServer.instance.messages
             if e == "progress_text" and d["node_id"] == "10"]
    assert [t.split(",")[0] for t in texts] == ["step 1/2", "step 2/2"] and "loss" in texts[0]
    # loadable at once by the loader node, whose list now has the file
    loader = comfy.node_class("AnimateDiffLoadMotionLoRA")
    assert name in loader.INPUT_TYPES()["required"]["lora_name"][1]["options"]
    prompt = train_prompt(files, "unused")
    del prompt["10"], prompt["11"]
    prompt["12"] = {"class_type": "AnimateDiffLoadMotionLoRA", "inputs": {
        "motion_module": ["5", 0], "lora_name": name, "strength": 1.0}}
    prompt["6"]["inputs"]["motion_module"] = ["12", 0]
    comfy.run(prompt)
    # a second run never overwrites the first file (this one with gradient checkpointing)
    again = comfy.run(train_prompt(files, "pan_test", images=False, checkpointing=True))
    assert again.output("10", 1) == "pan_test_2.safetensors"
    assert os.path.exists(os.path.join(lora_dir, "pan_test_2.safetensors"))


def test_node_without_clips_names_the_fix(comfy, files):
    with pytest.raises(PromptFailed, match="connect images"):
        comfy.run(train_prompt(files, "none", images=False, folder=""))
    with pytest.raises(PromptFailed, match="No video files"):
        comfy.run(train_prompt(files, "none", images=False, folder="."))
    with pytest.raises(PromptFailed, match="does not exist"):
        comfy.run(train_prompt(files, "none", images=False, folder="no_such_clips"))


def cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, os.path.join(REPO_DIR, "scripts", "train.py"), *args, "--cpu"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout + run.stderr


def test_command_line_three_stages(comfy, files, caplog, tmp_path):
    """domain adapter -> motion module (with the adapter, from scratch) -> MotionLoRA, resumed from its state;
    the three files then load in the loader nodes and sample together."""
    def common(steps=2):
        return ["--checkpoint", os.path.join(comfy.models, "checkpoints", files["ckpt"]), "--videos", files["videos"],
                "--width", "64", "--height", "64", "--steps", str(steps), "--rank", str(RANK), "--prompt", "a square"]

    adapter, module, lora = (os.path.join(comfy.models, folder, name) for folder, name in (
        ("loras", "cli_adapter.safetensors"), ("animatediff_models", "cli_mm.safetensors"),
        ("animatediff_motion_lora", "cli_pan.safetensors")))
    log = cli("domain_adapter", *common(), "--clip-length", "2", "--output", adapter)
    assert "2 videos, 14 frames at 64x64" in log
    with safetensors.safe_open(adapter, "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert shapes == {k: tuple(v.shape) for k, v in builders.v3_adapter_sd_for_ad_layout(RANK).items()}

    cli("motion_module", *common(), "--clip-length", "4", "--positions", "24", "--adapter", adapter,
        "--output", module)
    sd = safetensors.torch.load_file(module)
    assert sorted(sd) == sorted(k for k, _ in builders.motion_module_shapes("v1", SD15_AD))
    assert any(v.any() for k, v in sd.items() if ".proj_out." in k)  # trained away from the zero start

    state = str(tmp_path / "state.pt")
    cli("motion_lora", *common(), "--clip-length", "4", "--motion-module", module, "--state", state, "--output", lora)
    log = cli("motion_lora", *common(steps=3), "--clip-length", "4", "--motion-module", module, "--state", state,
              "--output", lora)
    assert "resumed motion_lora from step 2" in log
    assert torch.load(state, weights_only=True)["step"] == 3
    with safetensors.safe_open(lora, "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert shapes == dict(builders.motion_lora_shapes(SD15_AD, RANK, mid=False))

    prompt = train_prompt({**files, "mm": "cli_mm.safetensors"}, "unused")
    del prompt["10"], prompt["11"]
    prompt["20"] = {"class_type": "AnimateDiffApplyDomainAdapter", "inputs": {
        "model": ["1", 0], "adapter_name": "cli_adapter.safetensors", "strength": 1.0}}
    prompt["12"] = {"class_type": "AnimateDiffLoadMotionLoRA", "inputs": {
        "motion_module": ["5", 0], "lora_name": "cli_pan.safetensors", "strength": 1.0}}
    prompt["6"]["inputs"].update(model=["20", 0], motion_module=["12", 0])
    with caplog.at_level(logging.INFO):
        comfy.run(prompt)
    assert ("v1 motion module cli_mm.safetensors on 4 frames; motion_scale 1, effect 1; MotionLoRAs: "
            "cli_pan.safetensors (1); domain adapter: cli_adapter.safetensors (1)") in caplog.text


def test_command_line_refuses_motion_lora_without_module():
    run = subprocess.run([sys.executable, os.path.join(REPO_DIR, "scripts", "train.py"), "motion_lora",
                          "--checkpoint", "x", "--videos", "y", "--output", "z"], capture_output=True, text=True)
    assert run.returncode == 2 and "needs --motion-module" in run.stderr


def test_over_http_progress_bar_and_cancel(comfy, comfy_server, files):
    """On the real server: the node's progress bar reaches the websocket, POST /interrupt stops the training
    between steps, no file is written, and the server goes on to run the next prompt."""
    import threading
    import time

    import comfy_client
    import requests

    class Recorder(comfy_client.ProgressListener):
        def __init__(self, *args):
            super().__init__(*args)
            self.progress, self.first_step = [], threading.Event()

        def show(self, kind, data):
            if kind == "progress" and data.get("node") == "10":
                self.progress.append((data["value"], data["max"]))
                if data["value"] >= 1:
                    self.first_step.set()

    listener = Recorder(comfy_server.url, comfy_server.client_id, {})
    listener.connect()
    listener.start()
    lora_dir = os.path.join(comfy.models, "animatediff_motion_lora")
    try:
        r = requests.post(comfy_server.url + "/prompt", timeout=30, json={
            "prompt": train_prompt(files, "cancelled", steps=500, images=False), "client_id": comfy_server.client_id})
        assert r.status_code == 200, r.text
        prompt_id = r.json()["prompt_id"]
        assert listener.first_step.wait(120), comfy_server.log_tail()
        requests.post(comfy_server.url + "/interrupt", json={"prompt_id": prompt_id}, timeout=10)
        deadline = time.monotonic() + 120
        while prompt_id not in comfy_server.get(f"/history/{prompt_id}") and time.monotonic() < deadline:
            time.sleep(0.2)
        status = comfy_server.get(f"/history/{prompt_id}")[prompt_id]["status"]
        assert status["status_str"] == "error"
        assert any(event == "execution_interrupted" for event, _ in status["messages"])
        assert not os.path.isdir(lora_dir) or not [n for n in os.listdir(lora_dir) if n.startswith("cancelled")]
        # the bar moved and stopped short of the end (0.33 throttles updates to every 0.5 % and 100 ms)
        assert listener.progress[0] == (0, 500) and all(m == 500 for _, m in listener.progress)
        assert any(v >= 1 for v, _ in listener.progress) and listener.progress[-1][0] < 500
        outputs = comfy_server.run(train_prompt(files, "after_cancel", steps=1, images=False), timeout=300)
        assert "9" in outputs and os.path.exists(os.path.join(lora_dir, "after_cancel.safetensors"))
        assert listener.progress[-1] == (1, 1)
    finally:
        listener.close()
