"""Stock ControlNets under context windows: each window gets the hint frames of its own frames.

API prompts through ComfyUI's PromptExecutor: CheckpointLoaderSimple (the 320-channel SD1.5 test checkpoint),
ControlNetLoader / DiffControlNetLoader + LoadImage + ControlNetApplyAdvanced (chained), the pack's motion module
and AnimateDiffContextWindows, KSampler. Which hint frames each ControlNet call received is read back from a
forward pre-hook on the loaded ControlNet's hint embedding (builders.HintFrameRecorder: hint frame i is the
constant (i + 1) / 64). A T2I adapter on a tiny UNet goes through the same nodes called directly.
"""
import os

import pytest
import torch

import comfy.model_management as model_management
import comfy.sample as comfy_sample

import builders
import comfy_models

WIDTH, HEIGHT, STEPS = 64, 48, 2
CONTROLNET, DIFF_CONTROLNET = "cw_cn.safetensors", "cw_diff_cn.safetensors"
MOTION_MODULE = "cw_v2.safetensors"
WINDOWS_48 = [list(range(0, 16)), list(range(12, 28)), list(range(24, 40)), list(range(32, 48))]


@pytest.fixture(scope="module")
def files(comfy):
    cn_dir = os.path.join(comfy.models, "controlnet")
    os.makedirs(cn_dir, exist_ok=True)
    builders.save_file(builders.controlnet_sd(), os.path.join(cn_dir, CONTROLNET))
    builders.save_file(builders.controlnet_diff_sd(seed=5), os.path.join(cn_dir, DIFF_CONTROLNET))
    builders.save_file(builders.motion_module_sd("v2", channels=(320,) * 4),
                       os.path.join(comfy.models, "animatediff_models", MOTION_MODULE))
    for frames in (48, 1):
        builders.save_hint_frames(os.path.join(comfy.input_dir, f"cw_hints_{frames}.webp"), frames, HEIGHT, WIDTH)


def prompt(ckpt, frames, hints=48, context_length=16, windows=True, chained=False, steps=STEPS):
    p = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a dancer on a stage", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": WIDTH, "height": HEIGHT, "batch_size": frames}},
        "5": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": CONTROLNET}},
        "6": {"class_type": "LoadImage", "inputs": {"image": f"cw_hints_{hints}.webp"}},
        "8": {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["2", 0], "negative": ["3", 0], "control_net": ["5", 0], "image": ["6", 0],
            "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}},
        "10": {"class_type": "AnimateDiffLoadMotionModule", "inputs": {"motion_module": MOTION_MODULE}},
        "11": {"class_type": "AnimateDiffApplyMotionModule", "inputs": {
            "model": ["1", 0], "motion_module": ["10", 0], "beta_schedule": "autoselect", "motion_scale": 1.0,
            "effect": 1.0}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["11", 0], "positive": ["8", 0], "negative": ["8", 1], "latent_image": ["4", 0], "seed": 9,
            "steps": steps, "cfg": 2.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "cw/lat"}},
    }
    if windows:
        p["12"] = {"class_type": "AnimateDiffContextWindows", "inputs": {
            "model": ["11", 0], "context_length": context_length, "context_overlap": 4,
            "context_schedule": "standard_static", "context_stride": 1, "closed_loop": False,
            "fuse_method": "pyramid", "freenoise": True}}
        p["7"]["inputs"]["model"] = ["12", 0]
    if chained:
        p["15"] = {"class_type": "DiffControlNetLoader", "inputs": {"model": ["1", 0],
                                                                    "control_net_name": DIFF_CONTROLNET}}
        p["16"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["8", 0], "negative": ["8", 1], "control_net": ["15", 0], "image": ["6", 0],
            "strength": 0.8, "start_percent": 0.0, "end_percent": 1.0}}
        p["7"]["inputs"].update(positive=["16", 0], negative=["16", 1])
    return p


def run_hooked(comfy, p, loaders):
    """Run the control loaders alone, hook what they returned, then the whole prompt on the same executor (the
    loaders are served from its cache, so the hooked objects are the ones used). Returns the calls each
    recorder saw and the result."""
    ex = comfy.executor()
    loaded = comfy.run(p, executor=ex, validate=False, outputs=loaders)
    recorders = [builders.HintFrameRecorder(loaded.output(n)) for n in loaders]
    for r in recorders:
        r.__enter__()
    try:
        result = comfy.run(p, executor=ex)
    finally:
        for r in recorders:
            r.__exit__(None, None, None)
    assert set(loaders) <= set(result.cached)
    return [r.calls for r in recorders], result


def test_each_window_gets_its_hint_frames_in_chained_controlnets(comfy, files, sd15_ad_checkpoint):
    (plain, diff), result = run_hooked(comfy, prompt(sd15_ad_checkpoint, 48, chained=True), ["5", "15"])
    expected = [window * 2 for window in WINDOWS_48] * STEPS  # cond and uncond batched in each window's call
    assert plain == expected and diff == expected
    # afterwards the conditioning's control objects hold the whole hint batch again
    control = result.output("16")[0][1]["control"]
    assert control.previous_controlnet is not None
    for c in (control, control.previous_controlnet):
        assert builders.hint_frame_indices(c.cond_hint_original) == list(range(48)) and c.cond_hint is None


def test_a_single_hint_image_applies_to_every_window(comfy, files, sd15_ad_checkpoint):
    (calls,), _ = run_hooked(comfy, prompt(sd15_ad_checkpoint, 20, hints=1, steps=1), ["5"])
    assert calls == [[0]] * 2  # both windows: the one image, which ComfyUI broadcasts to the batch


def test_one_window_over_all_frames_equals_no_windows(comfy, files, sd15_ad_checkpoint):
    def latent(p):
        return comfy.run(p).output("7")["samples"]

    builders.save_hint_frames(os.path.join(comfy.input_dir, "cw_hints_16.webp"), 16, HEIGHT, WIDTH)
    windowed = latent(prompt(sd15_ad_checkpoint, 16, hints=16, context_length=16, steps=1))
    plain = latent(prompt(sd15_ad_checkpoint, 16, hints=16, windows=False, steps=1))
    assert torch.equal(windowed, plain)


def test_t2i_adapter_gets_window_hints_and_is_restored_after_cancel(comfy, files, tmp_path):
    import nodes
    pack_nodes = comfy.pack.nodes
    channels = (32, 64, 128, 128)
    builders.save_file(builders.t2i_adapter_sd(c=32), os.path.join(comfy.models, "controlnet", "cw_t2i.safetensors"))
    path = builders.save_file(builders.motion_module_sd("v2", channels=channels), str(tmp_path / "mm.safetensors"))
    motion = pack_nodes.motion.load_motion_module(path, "mm.safetensors")
    model = pack_nodes.context_windows.apply(
        pack_nodes.motion.apply_motion_module(comfy_models.tiny_sd15_model(channels=channels), motion, "autoselect", 1, 1),
        context_length=16, context_overlap=4, context_schedule="standard_static", context_stride=1,
        closed_loop=False, fuse_method="pyramid", freenoise=False)
    (adapter,) = nodes.ControlNetLoader().load_controlnet("cw_t2i.safetensors")
    hints = builders.hint_frames(40, 32, 48)
    g = torch.Generator().manual_seed(0)
    positive, negative = nodes.ControlNetApplyAdvanced().apply_controlnet(
        [[torch.randn(1, 3, 768, generator=g), {}]], [[torch.randn(1, 3, 768, generator=g), {}]], adapter, hints,
        1.0, 0.0, 1.0)
    latent = torch.zeros(40, 4, 4, 6)

    def run():
        with torch.no_grad():
            comfy_sample.sample(model, comfy_sample.prepare_noise(latent, 1), 2, 3.0, "euler", "normal", positive,
                                negative, latent, disable_pbar=True, seed=1)

    windows = [list(range(0, 16)), list(range(12, 28)), list(range(24, 40))]
    with builders.HintFrameRecorder(adapter) as calls:
        run()
    assert calls == [w * 2 for w in windows] * 2  # recomputed per window (T2I otherwise caches one hint)

    control = positive[0][1]["control"]
    full = control.cond_hint_original  # the hint batch as ControlNetApplyAdvanced stored it (channels first)
    assert builders.hint_frame_indices(full) == list(range(40))
    seen = []

    def cancel_in_second_window(module, args):
        seen.append(1)
        if len(seen) == 2:
            model_management.interrupt_current_processing(True)

    hook = motion.patcher.model.down_blocks[0].motion_modules[0].register_forward_pre_hook(cancel_in_second_window)
    try:
        with pytest.raises(model_management.InterruptProcessingException):
            run()
    finally:
        hook.remove()
    assert control.cond_hint_original is full and control.cond_hint is None and control.control_input is None
    model_management.unload_all_models()


class SlicesByAdParams:
    """A control that picks its window's hint frames itself, as Advanced-ControlNet's controls do: it carries
    `sub_idxs` and `full_latent_length`, reads `transformer_options["ad_params"]` on each call, pads a short hint
    batch with its last frame to the full length and slices it by `sub_idxs`. It records the hint frames it used
    per call and contributes no residuals."""

    def __new__(cls):
        import comfy.controlnet

        class Control(comfy.controlnet.ControlBase):
            def __init__(self):
                super().__init__()
                self.sub_idxs, self.full_latent_length, self.seen = None, 0, []

            def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
                params = transformer_options.get("ad_params")
                if params is not None:
                    self.sub_idxs, self.full_latent_length = params["sub_idxs"], params["full_length"]
                hint = self.cond_hint_original
                if hint.shape[0] < self.full_latent_length:
                    hint = torch.cat([hint, hint[-1:].expand(self.full_latent_length - hint.shape[0], *hint.shape[1:])])
                self.seen.append(builders.hint_frame_indices(hint[self.sub_idxs] if self.sub_idxs else hint))
                return None

        return Control()


def test_a_control_that_slices_by_ad_params_keeps_its_full_hint_batch(comfy):
    """Such a control sees each window's own frames once: the handler leaves its batch whole (before, the window
    8-23 got frames 16..23 and then frame 23 eight times: cut by the handler, then padded and cut again)."""
    pack_nodes = comfy.pack.nodes
    channels = (32, 64, 128, 128)
    path = builders.save_file(builders.motion_module_sd("v2", channels=channels),
                              os.path.join(comfy.models, "animatediff_models", "cw_slicing.safetensors"))
    motion = pack_nodes.motion.load_motion_module(path, "cw_slicing.safetensors")
    control = SlicesByAdParams().set_cond_hint(builders.hint_frames(24, 8, 8).movedim(-1, 1))
    assert pack_nodes.context_windows.picks_window_frames(control)
    for schedule, stride, windows in (("standard_static", 1, [list(range(16)), list(range(8, 24))]),
                                      ("standard_uniform", 2, None)):
        model = pack_nodes.context_windows.apply(
            pack_nodes.motion.apply_motion_module(comfy_models.tiny_sd15_model(channels=channels), motion,
                                                  "autoselect", 1, 1),
            context_length=16, context_overlap=8, context_schedule=schedule, context_stride=stride,
            closed_loop=False, fuse_method="pyramid", freenoise=False)
        g = torch.Generator().manual_seed(0)
        positive = [[torch.randn(1, 3, 768, generator=g), {"control": control}]]
        latent = torch.zeros(24, 4, 4, 4)
        control.seen.clear()
        with torch.no_grad():
            comfy_sample.sample(model, comfy_sample.prepare_noise(latent, 1), 1, 1.0, "euler", "normal", positive,
                                positive, latent, disable_pbar=True, seed=1)
        plan = windows or model.model_options["context_handler"].plan(24, 0)
        assert control.seen == plan, (schedule, control.seen)
        assert any(w != list(range(w[0], w[0] + len(w))) for w in plan) or schedule == "standard_static"
        assert builders.hint_frame_indices(control.cond_hint_original) == list(range(24))
