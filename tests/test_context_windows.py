"""Context windows: ComfyUI's own handler through the pack's subclass, on real ComfyUI sampling calls.

Tiny SD1.5 UNets built with ComfyUI's classes and a v2 motion module (32 positions), sampled with
comfy.sample.sample (what KSampler runs); a DIFFUSION_MODEL wrapper records what every UNet call received.
"""
import itertools
import logging

import pytest
import torch

import comfy.context_windows
import comfy.model_management
import comfy.patcher_extension
import comfy.sample

import builders
import comfy_models

CHANNELS = (32, 64, 64, 64)
HEIGHT, WIDTH = 4, 6
TOKENS = 3


pytestmark = pytest.mark.usefixtures("no_loaded_models")


@pytest.fixture(scope="module")
def context_windows(comfy):
    return comfy.pack.nodes.context_windows


@pytest.fixture(scope="module")
def motion_module(pack_nodes, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cw") / "v2.safetensors")
    builders.save_file(builders.motion_module_sd("v2", channels=CHANNELS, seed=3), path)
    return pack_nodes.motion.load_motion_module(path, "v2.safetensors")


def animated(pack_nodes, motion_module, windows=None, **context):
    """tiny UNet -> motion module -> (context windows), as the nodes chain them."""
    m = pack_nodes.motion.apply_motion_module(comfy_models.tiny_sd15_model(channels=CHANNELS), motion_module,
                                     "autoselect", 1.0, 1.0)
    if windows is not None:
        settings = dict(context_length=16, context_overlap=4, context_schedule="standard_static", context_stride=1,
                        closed_loop=False, fuse_method="pyramid", freenoise=True)
        settings.update(context)
        m = pack_nodes.context_windows.apply(m, **settings)
    return m


def record_unet_calls(model_patcher):
    calls = []

    def recorder(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        calls.append(dict(x=x.clone(), context=context.clone(), cond_or_uncond=list(transformer_options["cond_or_uncond"]),
                          ad_params=dict(transformer_options.get("ad_params") or {}),
                          window=transformer_options.get("context_window")))
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)

    model_patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test-recorder", recorder)
    return calls


def sample(model_patcher, frames, seed=0, steps=2, positive_frames=1):
    g = torch.Generator().manual_seed(100 + seed)
    positive = [[torch.randn(positive_frames, TOKENS, 768, generator=g), {}]]
    negative = [[torch.randn(1, TOKENS, 768, generator=g), {}]]
    latent = torch.zeros(frames, 4, HEIGHT, WIDTH)
    noise = comfy.sample.prepare_noise(latent, seed)
    with torch.no_grad():
        return comfy.sample.sample(model_patcher, noise, steps, 3.0, "euler", "normal", positive, negative, latent,
                                   disable_pbar=True, seed=seed)


# ---------------------------------------------------------------------------------------------- schedules

SCHEDULE_CASES = [(schedule, length, overlap, stride, loop)
                  for schedule in ("standard_static", "standard_uniform", "looped_uniform", "batched")
                  for length, overlap, stride in itertools.product((16, 8), (4, 0), (1, 3))
                  for loop in ((False, True) if schedule == "looped_uniform" else (False,))
                  if schedule in ("standard_uniform", "looped_uniform") or stride == 1]


@pytest.mark.parametrize("schedule, length, overlap, stride, loop", SCHEDULE_CASES)
def test_every_frame_is_in_a_window_on_every_step(context_windows, schedule, length, overlap, stride, loop):
    handler = context_windows.AnimateDiffContextHandler(
        context_schedule=comfy.context_windows.get_matching_context_schedule(schedule),
        fuse_method=comfy.context_windows.get_matching_fuse_method("pyramid"), context_length=length,
        context_overlap=overlap, context_stride=stride, closed_loop=loop, freenoise=False)
    for frames in range(1, 301):
        for step in range(4):
            windows = handler.plan(frames, step)
            assert set(range(frames)) == {i for w in windows for i in w}, (frames, step, windows)
            for w in windows:
                assert len(w) == len(set(w)) <= length and all(0 <= i < frames for i in w), (frames, step, w)
            if stride == 1 and frames > length:  # where the core schedule is right, its windows are kept as they are
                handler._step = step
                assert windows == handler.context_schedule.func(frames, handler, {})
        if "uniform" in schedule and frames > length:
            assert handler.plan(frames, 0) != handler.plan(frames, 1), frames  # the windows shift between steps


# ------------------------------------------------------------------------------------- windows in sampling

def test_motion_module_sees_each_window_as_its_clip(pack_nodes, motion_module, caplog):
    frames = 40
    m = animated(pack_nodes, motion_module, windows=True)
    calls = record_unet_calls(m)
    seen = []
    hook = motion_module.patcher.model.down_blocks[0].motion_modules[0].register_forward_pre_hook(
        lambda module, args: seen.append((args[0].shape[0], args[1])))
    try:
        with caplog.at_level(logging.INFO):
            out = sample(m, frames, steps=2)
    finally:
        hook.remove()
    plan = m.model_options["context_handler"].plan(frames)
    assert plan == [list(range(0, 16)), list(range(12, 28)), list(range(24, 40))]
    assert len(calls) == 2 * len(plan)  # per step: one UNet call per window, cond and uncond batched
    for call, window in zip(calls, plan * 2):
        assert call["x"].shape[0] == 2 * len(window) and call["cond_or_uncond"] == [1, 0]
        assert call["ad_params"] == {"full_length": frames, "context_length": len(window), "sub_idxs": window}
        assert call["window"].index_list == window
    assert seen == [(32, 16)] * len(calls)  # 2 clips of 16 frames: positions 0..15 of the window
    assert out.shape == (frames, 4, HEIGHT, WIDTH) and torch.isfinite(out).all()
    messages = [r.getMessage() for r in caplog.records]
    assert not any("Using context windows" in m for m in messages)  # core's line, logged on every step
    assert [m for m in messages if m.startswith("AnimateDiff context windows")] == ["AnimateDiff context windows: 3 window(s) over 40 frames, standard_static, length 16, "
                      "overlap 4, pyramid fuse: [0-15] [12-27] [24-39]"]


def test_windows_covering_all_frames_equal_no_windows(pack_nodes, motion_module):
    plain = sample(animated(pack_nodes, motion_module), 16, seed=4)
    windowed = sample(animated(pack_nodes, motion_module, windows=True, context_length=16), 16, seed=4)
    assert torch.equal(plain, windowed)


def test_per_frame_conditioning_is_sliced_to_the_window(pack_nodes, motion_module):
    frames = 28
    m = animated(pack_nodes, motion_module, windows=True, freenoise=False)
    calls = record_unet_calls(m)
    g = torch.Generator().manual_seed(100)
    per_frame = torch.randn(frames, TOKENS, 768, generator=g)  # sample() draws the same positive first
    sample(m, frames, positive_frames=frames, steps=1)
    plan = m.model_options["context_handler"].plan(frames)
    for call, window in zip(calls, plan):
        cond = call["context"][: len(window)] if call["cond_or_uncond"][0] == 0 else call["context"][len(window):]
        torch.testing.assert_close(cond, per_frame[window], rtol=0, atol=0)


def freenoise_reference(noise, length, overlap, seed):
    """FreeNoise's noise rescheduling as the paper's code writes it: from frame `length` on, each stretch of
    `length - overlap` frames takes the noise of the frames that left the window, shuffled (a seeded torch
    permutation in place of random.shuffle)."""
    generator, noise, stride = torch.Generator().manual_seed(seed), noise.clone(), length - overlap
    for frame_index in range(length, noise.shape[0], stride):
        count = min(stride, noise.shape[0] - frame_index)
        sources = torch.randperm(count, generator=generator) + frame_index - length
        noise[frame_index:frame_index + count] = noise[sources]
    return noise


def test_freenoise_gives_every_window_the_first_windows_noises(pack_nodes, motion_module, pack):
    compat = pack.nodes.compat
    frames, length, overlap = 40, 16, 4
    noise = comfy.sample.prepare_noise(torch.zeros(frames, 4, HEIGHT, WIDTH), 7)
    shuffled = compat.apply_freenoise(noise.clone(), 0, length, overlap, 7)  # core's where core has it
    assert torch.equal(shuffled, freenoise_reference(noise, length, overlap, 7))
    assert torch.equal(compat.freenoise(noise.clone(), 0, length, overlap, 7), shuffled)  # the pack's own
    assert torch.equal(shuffled, compat.apply_freenoise(noise.clone(), 0, length, overlap, 7))  # deterministic
    assert not torch.equal(shuffled, compat.apply_freenoise(noise.clone(), 0, length, overlap, 8))
    assert torch.equal(shuffled[:length], noise[:length])
    first = noise[:length].flatten(1)
    for start in range(0, frames - length + 1, length - overlap):  # each static window: the first's noises
        rows = shuffled[start:start + length].flatten(1)
        sources = [int(torch.nonzero((first == row).all(1))[0]) for row in rows]
        assert sorted(sources) == list(range(length)), start
        if start:
            assert sources != list(range(length))  # shuffled

    # through sampling: the first step's input carries FreeNoise's noise; off, plain noise
    for enabled in (True, False):
        m = animated(pack_nodes, motion_module, windows=True, freenoise=enabled)
        calls = record_unet_calls(m)
        sample(m, frames, seed=7, steps=1)
        first = torch.empty(frames, 4, HEIGHT, WIDTH)
        for call in calls:
            first[call["ad_params"]["sub_idxs"]] = call["x"][: len(call["ad_params"]["sub_idxs"])]
        expected = shuffled if enabled else noise
        scale = first[0].flatten()[0] / expected[0].flatten()[0]
        torch.testing.assert_close(first, expected * scale, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- errors

def test_context_length_above_the_positions_is_refused(pack_nodes, motion_module):
    with pytest.raises(pack_nodes.motion.MotionModuleError, match="context_length 40 is more than the 32 frame positions"):
        sample(animated(pack_nodes, motion_module, windows=True, context_length=40, context_overlap=4), 48, steps=1)


def test_overlap_must_be_smaller_than_length(pack_nodes, motion_module):
    with pytest.raises(pack_nodes.files.AnimateDiffError, match=r"context_overlap \(16\) must be smaller"):
        animated(pack_nodes, motion_module, windows=True, context_overlap=16)


def test_comfyui_manual_context_windows_are_named_in_the_error(pack_nodes, motion_module, pack):
    import comfy_extras.nodes_context_windows as core
    compat = pack.nodes.compat
    m = core.ContextWindowsManualNode.execute(
        animated(pack_nodes, motion_module), context_length=16, context_overlap=4, context_schedule="standard_static",
        context_stride=1, closed_loop=False, fuse_method="pyramid", dim=0,
        **compat.taken(core.ContextWindowsManualNode.execute, freenoise=False)).result[0]  # 0.33 added freenoise
    with pytest.raises(pack_nodes.motion.MotionModuleError, match="put AnimateDiff Context Windows after .*instead of "
                                                         r"ComfyUI's Context Windows \(Manual\)"):
        sample(m, 40, steps=1)


def test_cancel_between_windows_leaves_the_model_clean(pack_nodes, motion_module):
    base = comfy_models.tiny_sd15_model(channels=CHANNELS)
    m = pack_nodes.context_windows.apply(
        pack_nodes.motion.apply_motion_module(base, motion_module, "autoselect", 1.0, 1.0), context_length=16,
        context_overlap=4, context_schedule="standard_static", context_stride=1, closed_loop=False,
        fuse_method="pyramid", freenoise=True)
    calls = []

    def cancel_after_two_windows(module, args):
        calls.append(args[0].shape[0])
        if len(calls) == 2:
            comfy.model_management.interrupt_current_processing(True)

    hook = motion_module.patcher.model.down_blocks[0].motion_modules[0].register_forward_pre_hook(cancel_after_two_windows)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            sample(m, 40, steps=2)
    finally:
        hook.remove()
    assert calls == [32, 32]  # the third window never ran
    assert not comfy.model_management.processing_interrupted()
    after = sample(base, 8, seed=5)  # the same base model, loaded again without the motion module
    assert torch.equal(after, sample(comfy_models.tiny_sd15_model(channels=CHANNELS), 8, seed=5))


def test_per_frame_model_conds_and_masks_are_sliced(context_windows):
    """c_concat (inpainting latents), a per-frame mask and per-frame cross-attention follow the window; a
    single-item cond stays whole."""
    import comfy.conds
    handler = context_windows.AnimateDiffContextHandler(
        context_schedule=comfy.context_windows.get_matching_context_schedule("standard_static"),
        fuse_method=comfy.context_windows.get_matching_fuse_method("pyramid"), context_length=16,
        context_overlap=4, context_stride=1, closed_loop=False, freenoise=False)
    frames = 40
    x = torch.randn(frames, 4, HEIGHT, WIDTH)
    concat, mask, text = torch.randn(frames, 5, HEIGHT, WIDTH), torch.rand(frames, HEIGHT, WIDTH), torch.randn(1, 3, 8)
    cond = [{"model_conds": {"c_concat": comfy.conds.CONDNoiseShape(concat), "c_crossattn": comfy.conds.CONDCrossAttn(text),
                             "per_frame": comfy.conds.CONDCrossAttn(concat[:, 0])},
             "mask": mask, "strength": 1.0}]
    window = handler.get_context_windows(None, x, {})[1]
    handler._model = None  # what execute() sets before it resizes conds (0.33 asks the model first)
    (resized,) = handler.get_resized_cond(cond, x, window)
    idx = list(range(12, 28))
    assert window.index_list == idx
    assert torch.equal(resized["model_conds"]["c_concat"].cond, concat[idx])
    assert torch.equal(resized["model_conds"]["per_frame"].cond, concat[idx, 0])
    assert resized["model_conds"]["c_crossattn"].cond is text
    assert torch.equal(resized["mask"], mask[idx])
    assert cond[0]["model_conds"]["c_concat"].cond is concat  # the original cond is left as it was


SIGMAS = {"transformer_options": {"sample_sigmas": torch.tensor([3.0, 2.0, 1.0, 0.0])}}


def test_set_step_is_repaired_exactly_where_core_misses_the_step(context_windows, pack):
    """Core 0.3.75 matches every frame's timestep against the sigmas at once (it raises for a frame batch) and
    raises on a sampler's substep; 0.33 takes the first frame's and keeps the step. The subclass overrides
    set_step only where core's fails, and the step is right on both."""
    handler = pack.nodes.compat.core_handler(context_length=16)
    try:
        handler.set_step(torch.full((40,), 2.0), SIGMAS)
        handler.set_step(torch.full((40,), 1.5), SIGMAS)
        core_steps = handler._step == 1
    except Exception:
        core_steps = False
    ours = context_windows.AnimateDiffContextHandler
    assert (ours.set_step is comfy.context_windows.IndexListContextHandler.set_step) == core_steps
    assert pack.nodes.compat.STEPS_FROM_FRAME_BATCH == core_steps
    handler = ours(context_schedule=comfy.context_windows.get_matching_context_schedule("standard_uniform"),
                   fuse_method=comfy.context_windows.get_matching_fuse_method("pyramid"), context_length=16,
                   context_overlap=4, context_stride=1, closed_loop=False, freenoise=False)
    for timestep, step in ((2.0, 1), (1.5, 1), (1.0, 2), (3.0, 0)):  # 1.5: a substep keeps the step
        handler.set_step(torch.full((40,), timestep), SIGMAS)
        assert handler._step == step, timestep


@pytest.mark.parametrize("sampler", ["heun", "dpmpp_2s_ancestral"])
def test_samplers_with_substeps_run_in_windows(pack_nodes, motion_module, sampler):
    """Their model calls between two sigmas must not fail the step lookup (core 0.3.75's raises there)."""
    m = animated(pack_nodes, motion_module, windows=True, context_schedule="standard_uniform")
    calls = record_unet_calls(m)
    latent = torch.zeros(24, 4, HEIGHT, WIDTH)
    positive = [[torch.randn(1, TOKENS, 768, generator=torch.Generator().manual_seed(1)), {}]]
    with torch.no_grad():
        out = comfy.sample.sample(m, comfy.sample.prepare_noise(latent, 0), 2, 3.0, sampler, "normal", positive,
                                  positive, latent, disable_pbar=True, seed=0)
    assert torch.isfinite(out).all() and len(calls) > 2 * len(m.model_options["context_handler"].plan(24))


def test_frame_conds_are_repaired_exactly_where_core_does_not_slice_them(context_windows, pack):
    """Core 0.3.75 slices model conds only when the frames are not dim 0; 0.33 slices them on dim 0 too. The
    subclass overrides get_resized_cond only where core does not (the slicing itself:
    test_per_frame_model_conds_and_masks_are_sliced)."""
    import comfy.conds
    handler = pack.nodes.compat.core_handler(context_length=16, context_overlap=4)
    handler._model = None
    x, concat = torch.zeros(40, 4, HEIGHT, WIDTH), torch.randn(40, 5, HEIGHT, WIDTH)
    window = handler.get_context_windows(None, x, {})[1]
    (resized,) = handler.get_resized_cond([{"model_conds": {"c_concat": comfy.conds.CONDNoiseShape(concat)}}], x,
                                          window)
    core_slices = resized["model_conds"]["c_concat"].cond.shape[0] == 16
    ours = context_windows.AnimateDiffContextHandler
    assert (ours.get_resized_cond is comfy.context_windows.IndexListContextHandler.get_resized_cond) == core_slices
    assert pack.nodes.compat.SLICES_FRAME_CONDS == core_slices


@pytest.mark.parametrize("schedule, frames, fault", [("standard_uniform", 17, "past the last frame"),
                                                     ("looped_uniform", 18, "a frame twice")])
def test_core_uniform_schedules_with_a_stride_still_need_the_repair(context_windows, schedule, frames, fault):
    """On both versions core's uniform schedules with context_stride 3 give windows that reach past the last frame
    or hold a frame twice; the subclass's windows (test_every_frame_is_in_a_window_on_every_step) do not."""
    core = comfy.context_windows
    handler = context_windows.AnimateDiffContextHandler(
        context_schedule=core.get_matching_context_schedule(schedule), fuse_method=core.get_matching_fuse_method("pyramid"),
        context_length=16, context_overlap=4, context_stride=3, closed_loop=False, freenoise=False)
    broken = handler.context_schedule.func(frames, handler, {})  # core's windows at step 0
    faults = {"past the last frame": any(i >= frames for w in broken for i in w),
              "a frame twice": any(len(set(w)) < len(w) for w in broken)}
    assert faults[fault], broken
    for w in handler.plan(frames, 0):
        assert len(set(w)) == len(w) and all(0 <= i < frames for i in w), w


def test_core_gives_every_window_the_first_hint_frames_so_the_callback_gives_each_its_own(context_windows, pack):
    """Core's handler (both versions) passes a cond's control objects on as they are, and a ControlNet takes the
    first frames of its hint batch for any window (broadcast_image_to); the pack's EVALUATE_CONTEXT_WINDOWS
    callback hands each window its own frames' hints."""
    import comfy.controlnet
    frames = 40
    x = torch.zeros(frames, 4, HEIGHT, WIDTH)
    hint = torch.arange(frames, dtype=torch.float32).reshape(frames, 1, 1, 1).expand(frames, 3, 8, 8)
    control = comfy.controlnet.ControlBase()
    control.set_cond_hint(hint)
    conds = [[{"control": control, "model_conds": {}}]]
    core = pack.nodes.compat.core_handler(context_length=16, context_overlap=4)
    core._model = None
    window = core.get_context_windows(None, x, {})[1]
    assert window.index_list == list(range(12, 28))
    (resized,) = core.get_resized_cond(conds[0], x, window)
    assert resized["control"] is control and control.cond_hint_original is hint
    fed = comfy.controlnet.broadcast_image_to(hint, 2 * 16, 2)  # a window's cond + uncond batch
    assert fed[:16, 0, 0, 0].tolist() == list(range(16))  # frames 0-15, not the window's 12-27
    ours = context_windows.AnimateDiffContextHandler(context_schedule=core.context_schedule, fuse_method=core.fuse_method,
                                                     context_length=16, context_overlap=4, context_stride=1,
                                                     closed_loop=False, freenoise=False)
    ours.enter_window(ours, None, x, conds, None, {"transformer_options": {}}, 1, window)
    assert control.cond_hint_original[:, 0, 0, 0].tolist() == list(range(12, 28)) and ours.hints[control] is hint
