"""Tiny random-weight control models from builders load with ComfyUI's stock loaders (no missing keys) and
change what the stock samplers produce; which hint frames each UNet call receives is read back from a forward
pre-hook on the control model's hint-embedding module (builders.HintFrameRecorder / hint_frame_indices).

  * builders.controlnet_sd: SD1.5 ControlNet, original ldm layout, fitting write_sd15_checkpoint "animatediff";
    ControlNetLoader + ControlNetApplyAdvanced + KSampler in an API prompt;
  * builders.controlnet_diff_sd: the same ControlNet stored as differences, DiffControlNetLoader;
  * builders.t2i_adapter_sd: T2I-Adapter (c 32) on comfy_models.tiny_sd15_model(channels=(32, 64, 128, 128)),
    nodes called directly and comfy.sample.sample.

Hints: frame i is the constant (i + 1) / 64 (builders.hint_frames; the prompts load it from an 8-frame TIFF
through LoadImage, i.e. 8-bit, which hint_frame_indices still reads exactly).
"""
import logging
import os

import pytest
import safetensors.torch
import torch

import builders
import comfy_models

FRAMES, WIDTH, HEIGHT, STEPS = 8, 64, 48, 2
CONTROLNET = "tiny_cn_sd15_ad.safetensors"
DIFF_CONTROLNET = "tiny_diff_cn_sd15_ad.safetensors"
T2I_ADAPTER = "tiny_t2i_c32.safetensors"
HINT_FILE = "hint_frames_8.webp"  # an animated WEBP: 0.33's LoadImage reads a multi-page TIFF as one image
T2I_UNET_CHANNELS = (32, 64, 128, 128)  # what a c=32 adapter's [c, 2c, 4c, 4c] features fit

# one UNet call with cond and uncond batched: ComfyUI repeats the hint batch for each (broadcast_image_to)
BATCHED = list(range(FRAMES)) * 2


@pytest.fixture(scope="module")
def files(comfy):
    cn_dir = os.path.join(comfy.models, "controlnet")
    os.makedirs(cn_dir, exist_ok=True)
    builders.save_file(builders.controlnet_sd(), os.path.join(cn_dir, CONTROLNET))
    builders.save_file(builders.controlnet_diff_sd(), os.path.join(cn_dir, DIFF_CONTROLNET))
    builders.save_file(builders.t2i_adapter_sd(c=32), os.path.join(cn_dir, T2I_ADAPTER))
    builders.save_hint_frames(os.path.join(comfy.input_dir, HINT_FILE), FRAMES, HEIGHT, WIDTH)
    return cn_dir


def load_log(caplog):
    """What comfy/controlnet.py logged (missing keys: warning; unexpected, leftover keys: debug) and any warning."""
    return [r.getMessage() for r in caplog.records
            if os.path.basename(r.pathname) == "controlnet.py" or r.levelno >= logging.WARNING]


def prompt(ckpt, control=None, loader="ControlNetLoader", seed=3):
    """checkpoint -> prompts -> [control loader, LoadImage hint, ControlNetApplyAdvanced] -> KSampler (node 7)."""
    p = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a boat on a lake", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": WIDTH, "height": HEIGHT, "batch_size": FRAMES}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": seed,
            "steps": STEPS, "cfg": 2.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "controlnet/lat"}},
    }
    if control:
        p["5"] = {"class_type": loader, "inputs": {"control_net_name": control}}
        if loader == "DiffControlNetLoader":
            p["5"]["inputs"]["model"] = ["1", 0]
        p["6"] = {"class_type": "LoadImage", "inputs": {"image": HINT_FILE}}
        p["8"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["2", 0], "negative": ["3", 0], "control_net": ["5", 0], "image": ["6", 0],
            "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
        p["7"]["inputs"].update(positive=["8", 0], negative=["8", 1])
    return p


@pytest.fixture(scope="module")
def sd15_run(comfy, files, sd15_ad_checkpoint):
    """An executor that has run the prompt without control (checkpoint, prompts, latent stay cached for the
    controlled runs) and that run's latent."""
    ex = comfy.executor()
    plain = comfy.run(prompt(sd15_ad_checkpoint), executor=ex).output("7")["samples"]
    return ex, plain


def run_controlled(comfy, ckpt, ex, control, loader, caplog):
    """Load the control model (node 5) alone, hook it, then run the whole prompt on the same executor: node 5
    is served from the cache, so the hooked object is the one ControlNetApplyAdvanced copies."""
    with caplog.at_level(logging.DEBUG):
        net = comfy.run(prompt(ckpt, control, loader), executor=ex, validate=False, outputs=["5"]).output("5")
    log = load_log(caplog)
    recorder = builders.HintFrameRecorder(net)
    with recorder as calls:
        result = comfy.run(prompt(ckpt, control, loader), executor=ex)
    assert "5" in result.cached and "1" in result.cached
    # read now: RunResult.output() reads the executor's cache, which the next run on it replaces
    return net, log, calls, recorder.shapes, result.output("7")["samples"]


def assert_changed(controlled, plain):
    assert controlled.shape == plain.shape == (FRAMES, 4, HEIGHT // 8, WIDTH // 8)
    assert torch.isfinite(controlled).all() and torch.isfinite(plain).all()
    assert (controlled - plain).abs().max() > 1e-2


def test_hint_frame_indices():
    hint = builders.hint_frames(FRAMES, HEIGHT, WIDTH)
    assert hint.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert builders.hint_frame_indices(hint) == list(range(FRAMES))
    # as ComfyUI hands it on: channels first, batched for cond + uncond, fp16, 8-bit quantised
    bchw = torch.cat([hint, hint]).movedim(-1, 1)
    assert builders.hint_frame_indices(bchw.half()) == BATCHED
    assert builders.hint_frame_indices((bchw * 255).round() / 255) == BATCHED
    assert builders.hint_frame_indices(hint[[5, 2]]) == [5, 2]


def test_controlnet_loads_and_controls_ksampler(comfy, sd15_ad_checkpoint, sd15_run, caplog):
    ex, plain = sd15_run
    net, log, calls, shapes, controlled = run_controlled(comfy, sd15_ad_checkpoint, ex, CONTROLNET, "ControlNetLoader",
                                                         caplog)
    assert type(net).__name__ == "ControlNet" and log == []  # not even "unexpected" (debug)
    cldm = net.control_model
    assert (cldm.model_channels, list(cldm.channel_mult), cldm.num_res_blocks) == (320, [1, 1, 1, 1], [2] * 4)
    assert calls == [BATCHED] * STEPS  # one UNet call per euler step, cond + uncond batched
    assert shapes == [(2 * FRAMES, 3, HEIGHT, WIDTH)] * STEPS
    assert_changed(controlled, plain)


def test_diff_controlnet_loads_and_controls_ksampler(comfy, sd15_ad_checkpoint, sd15_run, caplog):
    ex, plain = sd15_run
    net, log, calls, shapes, controlled = run_controlled(comfy, sd15_ad_checkpoint, ex, DIFF_CONTROLNET,
                                                         "DiffControlNetLoader", caplog)
    assert type(net).__name__ == "ControlNet"
    assert log == ["unexpected controlnet keys: ['difference']"]  # the marker key itself, at debug level
    assert calls == [BATCHED] * STEPS
    assert_changed(controlled, plain)
    # the model's weights were added back: the same ControlNet as the plain file, up to fp16 rounding
    import nodes
    (reference,) = nodes.ControlNetLoader().load_controlnet(CONTROLNET)
    got, want = net.control_model.state_dict(), reference.control_model.state_dict()
    assert got.keys() == want.keys()
    stored = safetensors.torch.load_file(os.path.join(comfy.models, "controlnet", DIFF_CONTROLNET))
    for key in want:
        torch.testing.assert_close(got[key].float(), want[key].float(), atol=2e-3, rtol=0)
    key = "input_blocks.1.0.in_layers.2.weight"  # the file holds differences, not these weights
    assert not torch.allclose(stored["control_model." + key].float(), want[key].float(), atol=1e-2, rtol=0)


def test_t2i_adapter_loads_and_controls_sampling(comfy, files, caplog):
    import comfy.sample as comfy_sample
    import nodes
    with caplog.at_level(logging.DEBUG):
        (adapter,) = nodes.ControlNetLoader().load_controlnet(T2I_ADAPTER)
    assert type(adapter).__name__ == "T2IAdapter" and load_log(caplog) == []
    assert adapter.t2i_model.channels == [32, 64, 128, 128] and adapter.t2i_model.input_channels == 3

    model = comfy_models.tiny_sd15_model(channels=T2I_UNET_CHANNELS)
    g = torch.Generator().manual_seed(0)
    positive = [[torch.randn(1, 7, 768, generator=g), {}]]
    negative = [[torch.randn(1, 7, 768, generator=g), {}]]
    noise = torch.randn(FRAMES, 4, HEIGHT // 8, WIDTH // 8, generator=g)
    pos_c, neg_c = nodes.ControlNetApplyAdvanced().apply_controlnet(
        positive, negative, adapter, builders.hint_frames(FRAMES, HEIGHT, WIDTH), 1.0, 0.0, 1.0)

    def sample(pos, neg):
        with torch.no_grad():
            return comfy_sample.sample(model, noise, STEPS, 3.0, "euler", "normal", pos, neg, torch.zeros_like(noise),
                                       denoise=1.0, disable_pbar=True, seed=0)

    recorder = builders.HintFrameRecorder(adapter)
    with recorder as calls:
        controlled = sample(pos_c, neg_c)
        assert calls == [BATCHED]  # the adapter runs once per sampling run; its features serve every step
        again = sample(pos_c, neg_c)
    assert calls == [BATCHED, BATCHED] and recorder.shapes == [(2 * FRAMES, 3, HEIGHT, WIDTH)] * 2
    torch.testing.assert_close(again, controlled, atol=0, rtol=0)
    assert_changed(controlled, sample(positive, negative))
