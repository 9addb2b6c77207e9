"""Prompt travel (AnimateDiff Prompt Travel): the node against CLIP Text Encode on the checkpoint's real CLIP-L, and
what the UNet sees per frame, with and without context windows. (The schedule text and the per-frame blend,
motion_modules/prompt_schedule.py: tests/torch/test_pure_prompt_schedule.py.)"""
import json

import pytest
import torch

import comfy.sample as comfy_sample

import builders
from test_context_windows import HEIGHT, WIDTH, animated, motion_module, record_unet_calls  # noqa: F401 (fixture)


def node_prompt(ckpt, text, frames, interpolation="linear"):
    p = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
         "2": {"class_type": "AnimateDiffPromptTravel", "inputs": {"clip": ["1", 1], "text": text, "frames": frames,
                                                                   "interpolation": interpolation}}}
    for i, prompt in enumerate(json.loads("{" + text + "}").values()):  # CLIP Text Encode of each keyframe
        p[f"e{i}"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": prompt}}
    return p


def test_node_rows_are_clip_text_encode_blended(comfy, sd15_checkpoint):
    text = '"0": "a forest in spring",\n"4": "a forest in (winter:1.2)",\n"8": "a city at night, ' + \
           "neon, rain, " * 30 + '"'  # the last prompt is over 75 tokens: two chunks
    result = comfy.run(node_prompt(sd15_checkpoint, text, 12), outputs=["2", "e0", "e1", "e2"], validate=False)
    ((cond, extra),) = result.output("2")
    encoded = [result.output(f"e{i}")[0] for i in range(3)]
    assert [c.shape[1] for c, _ in encoded] == [77, 77, 154] and cond.shape == (12, 154, 768)
    rows = [torch.cat([c] * (154 // c.shape[1]), dim=1)[0] for c, _ in encoded]  # as ComfyUI batches lengths
    pooled = [e["pooled_output"][0] for _, e in encoded]
    for f in range(12):
        k, t = min(f // 4, 2), (f % 4) / 4 if f < 8 else 0.0
        want = rows[k] if t == 0 else (1 - t) * rows[k] + t * rows[k + 1]
        torch.testing.assert_close(cond[f], want, rtol=1e-5, atol=1e-5)
        want_pooled = pooled[k] if t == 0 else (1 - t) * pooled[k] + t * pooled[k + 1]
        torch.testing.assert_close(extra["pooled_output"][f], want_pooled, rtol=1e-5, atol=1e-5)
    assert torch.equal(cond[0], rows[0]) and torch.equal(cond[4], rows[1])  # keyframes: exactly CLIP Text Encode


def test_bad_schedule_fails_the_prompt_with_the_line(comfy, sd15_checkpoint):
    with pytest.raises(comfy.PromptFailed, match="Prompt schedule line 2"):
        comfy.run({"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd15_checkpoint}},
                   "2": {"class_type": "AnimateDiffPromptTravel", "inputs": {
                       "clip": ["1", 1], "text": '"0": "a"\nfour: "b"', "frames": 8, "interpolation": "linear"}}},
                  outputs=["2"], validate=False)


@pytest.mark.parametrize("windows", [False, True])
def test_the_unet_sees_each_frames_prompt(comfy, pack_nodes, motion_module, sd15_checkpoint, windows):  # noqa: F811
    """Sampling with the node's conditioning: every UNet call's cond rows are its frames' rows (in context windows,
    the rows of the window's frames)."""
    frames = 24 if windows else 12
    result = comfy.run(node_prompt(sd15_checkpoint, '"0": "spring",\n"20": "winter"', frames), outputs=["2"],
                       validate=False)
    positive = result.output("2")
    rows = positive[0][0]
    m = animated(pack_nodes, motion_module, windows=True if windows else None, freenoise=False)
    calls = record_unet_calls(m)
    latent = torch.zeros(frames, 4, HEIGHT, WIDTH)
    negative = [[torch.zeros(1, 77, 768), {}]]
    with torch.no_grad():
        comfy_sample.sample(m, comfy_sample.prepare_noise(latent, 0), 1, 3.0, "euler", "normal", positive, negative,
                            latent, disable_pbar=True, seed=0)
    plan = m.model_options["context_handler"].plan(frames) if windows else [list(range(frames))]
    assert len(calls) == len(plan) and len(plan) == (2 if windows else 1)
    for call, window in zip(calls, plan):
        cond = call["context"][call["cond_or_uncond"].index(0) * len(window):][:len(window)]
        torch.testing.assert_close(cond, rows[window], rtol=0, atol=0)


def test_a_frame_count_that_is_not_the_latent_batch_is_refused(comfy, pack_nodes, motion_module, sd15_checkpoint):  # noqa: F811
    positive = comfy.run(node_prompt(sd15_checkpoint, '"0": "spring",\n"8": "winter"', 16), outputs=["2"],
                         validate=False).output("2")
    latent = torch.zeros(12, 4, HEIGHT, WIDTH)
    message = "The positive conditioning has 16 rows, one per frame .* latent batch has 12 frames. Set Prompt " \
              "Travel's frames to 12"
    with pytest.raises(pack_nodes.motion.MotionModuleError, match=message):
        comfy_sample.sample(animated(pack_nodes, motion_module), comfy_sample.prepare_noise(latent, 0), 1, 3.0, "euler",
                            "normal", positive, [[torch.zeros(1, 77, 768), {}]], latent, disable_pbar=True, seed=0)


def test_stock_conditioning_nodes_take_it_in_windows(comfy, sd15_ad_checkpoint):
    """Conditioning (Set Area) and Conditioning (Combine) on the node's output, sampled by KSampler with the
    motion module in context windows: it runs, and the combined prompt changes the frames."""
    builders.save_file(builders.motion_module_sd("v2", channels=(320,) * 4),
                       f"{comfy.models}/animatediff_models/pt_v2.safetensors")
    frames = 20

    def graph(combine):
        p = node_prompt(sd15_ad_checkpoint, '"0": "a forest in spring",\n"19": "a forest in winter"', frames)
        p.update({
            "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}},
            "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": frames}},
            "5": {"class_type": "AnimateDiffLoadMotionModule", "inputs": {"motion_module": "pt_v2.safetensors"}},
            "6": {"class_type": "AnimateDiffApplyMotionModule", "inputs": {
                "model": ["1", 0], "motion_module": ["5", 0], "beta_schedule": "autoselect", "motion_scale": 1.0,
                "effect": 1.0}},
            "8": {"class_type": "AnimateDiffContextWindows", "inputs": {
                "model": ["6", 0], "context_length": 16, "context_overlap": 4, "context_schedule": "standard_static",
                "context_stride": 1, "closed_loop": False, "fuse_method": "pyramid", "freenoise": True}},
            "10": {"class_type": "ConditioningSetArea", "inputs": {
                "conditioning": ["2", 0], "width": 32, "height": 48, "x": 0, "y": 0, "strength": 1.0}},
            "11": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["10", 0],
                                                                   "conditioning_2": ["e0", 0]}},
            "7": {"class_type": "KSampler", "inputs": {
                "model": ["8", 0], "positive": ["11", 0] if combine else ["2", 0], "negative": ["3", 0],
                "latent_image": ["4", 0], "seed": 3, "steps": 1, "cfg": 2.0, "sampler_name": "euler",
                "scheduler": "normal", "denoise": 1.0}},
        })
        del p["e1"]
        return comfy.run(p, outputs=["7"], validate=False).output("7")["samples"]

    combined, plain = graph(True), graph(False)
    assert combined.shape == plain.shape == (frames, 4, 6, 8) and torch.isfinite(combined).all()
    assert not torch.allclose(combined, plain)
