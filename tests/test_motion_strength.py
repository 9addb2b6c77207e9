"""Per-frame and per-pixel motion strength: Apply AnimateDiff Motion Module's motion_scale_schedule and
effect_schedule (floats, one per frame, or a MASK batch), as the motion module's layers receive them, alone and
in context windows."""
import logging

import pytest
import torch

import comfy.sample as comfy_sample

import comfy_models
from test_context_windows import CHANNELS, HEIGHT, WIDTH, motion_module  # noqa: F401 (fixture)
from test_free_init import animation_prompt, over_http

pytestmark = pytest.mark.usefixtures("no_loaded_models")


def animated(pack_nodes, motion_module, windows=False, **schedules):  # noqa: F811
    m = pack_nodes.motion.apply_motion_module(comfy_models.tiny_sd15_model(channels=CHANNELS), motion_module, "autoselect",
                                     1.0, schedules.pop("effect", 1.0), **schedules)
    if windows:
        m = pack_nodes.context_windows.apply(m, context_length=16, context_overlap=4, context_schedule="standard_static", context_stride=1,
                                             closed_loop=False, fuse_method="pyramid", freenoise=False)
    return m


def sample(m, frames, steps=1):
    g = torch.Generator().manual_seed(100)
    positive, negative = [[torch.randn(1, 3, 768, generator=g), {}]], [[torch.randn(1, 3, 768, generator=g), {}]]
    latent = torch.zeros(frames, 4, HEIGHT, WIDTH)
    with torch.no_grad():
        return comfy_sample.sample(m, comfy_sample.prepare_noise(latent, 0), steps, 3.0, "euler", "normal", positive,
                                   negative, latent, disable_pbar=True, seed=0)


def seen_by_the_first_module(motion_module, run):  # noqa: F811
    """(x, motion_scale, effect) of every call of the first down block's motion module during run()."""
    seen = []
    hook = motion_module.patcher.model.down_blocks[0].motion_modules[0].register_forward_pre_hook(
        lambda module, args: seen.append((args[0], args[3], args[4])))
    try:
        run()
    finally:
        hook.remove()
    return seen


def test_a_schedule_of_ones_is_the_scalar(pack_nodes, motion_module):  # noqa: F811
    plain = sample(animated(pack_nodes, motion_module), 8)
    assert torch.equal(sample(animated(pack_nodes, motion_module, effect_schedule=[1.0] * 8,
                                       motion_scale_schedule=torch.ones(8)), 8), plain)


def test_frames_at_effect_zero_are_sampled_as_without_the_module(pack_nodes, motion_module):  # noqa: F811
    schedule = [0.0, 1.0] * 4
    out = sample(animated(pack_nodes, motion_module, effect_schedule=schedule), 8)
    without = sample(animated(pack_nodes, motion_module, effect=0.0), 8)
    full = sample(animated(pack_nodes, motion_module), 8)
    assert torch.equal(out[0::2], without[0::2])
    assert not torch.allclose(out[1::2], without[1::2]) and not torch.allclose(out[1::2], full[1::2])


def test_the_layers_get_each_frames_strength_in_context_windows(pack_nodes, motion_module):  # noqa: F811
    frames = 28
    scale = torch.linspace(0.5, 2.0, frames)
    mask = torch.ones(frames, 8 * HEIGHT, 8 * WIDTH)
    mask[:, :, : 4 * WIDTH] = 0.0  # the left half of every frame
    mask *= torch.arange(frames).reshape(frames, 1, 1) / frames
    m = animated(pack_nodes, motion_module, windows=True, motion_scale_schedule=scale, effect_schedule=mask)
    seen = seen_by_the_first_module(motion_module, lambda: sample(m, frames))
    windows = m.model_options["context_handler"].plan(frames)
    assert len(seen) == len(windows) == 2
    for (x, motion_scale, effect), window in zip(seen, windows):
        f, (h, w) = len(window), x.shape[2:]
        assert x.shape[0] == 2 * f and effect.shape == (2 * f, 1, h, w)  # cond and uncond
        torch.testing.assert_close(effect[:f, 0, :, : w // 2], torch.zeros(f, h, w // 2), rtol=0, atol=0)
        torch.testing.assert_close(effect[f:, 0, 0, -1], torch.tensor(window) / frames, rtol=0, atol=1e-6)
        assert motion_scale.shape == (2 * h * w, f, 1)  # the keys' layout: [(b h w), f, 1]
        torch.testing.assert_close(motion_scale[:, :, 0], scale[window].expand(2 * h * w, f), rtol=0, atol=0)


def test_one_mask_for_all_frames(pack_nodes, motion_module):  # noqa: F811
    mask = torch.ones(1, 8 * HEIGHT, 8 * WIDTH)
    mask[:, : 4 * HEIGHT] = 0.25
    seen = seen_by_the_first_module(motion_module, lambda: sample(
        animated(pack_nodes, motion_module, effect_schedule=mask), 6))
    (x, _, effect), = seen
    assert effect.shape == (12, 1, *x.shape[2:]) and effect[:, 0, 0, 0].eq(0.25).all() and effect[:, 0, -1].eq(1).all()


def test_a_schedule_for_another_frame_count_is_refused(pack_nodes, motion_module):  # noqa: F811
    with pytest.raises(pack_nodes.motion.MotionModuleError, match="The effect schedule of Apply AnimateDiff Motion Module has "
                                                         "10 values, one per frame, but the latent batch has 8"):
        sample(animated(pack_nodes, motion_module, effect_schedule=[1.0] * 10), 8)


def strength_prompt(comfy, ckpt):
    p = animation_prompt(comfy, ckpt, "ms_v2.safetensors")
    p["3"] = {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 64, "height": 48}}
    p["6"]["inputs"]["effect_schedule"] = ["3", 0]
    return p


def test_the_node_takes_a_mask_and_says_so(comfy, sd15_ad_checkpoint, caplog):
    with caplog.at_level(logging.INFO):
        comfy.run(strength_prompt(comfy, sd15_ad_checkpoint))
    assert "motion_scale 1, effect per pixel (1 frames)" in caplog.text


@pytest.mark.slow
def test_a_mask_schedule_over_http_as_in_process(comfy, comfy_server, sd15_ad_checkpoint):
    prompt = strength_prompt(comfy, sd15_ad_checkpoint)
    assert torch.equal(over_http(comfy, comfy_server, prompt), comfy.run(prompt).output("7")["samples"])
