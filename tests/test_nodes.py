"""The two nodes on a real ComfyUI: API prompts through ComfyUI's own PromptExecutor, stock loaders and samplers."""
import logging
import os
import shutil

import pytest
import safetensors.torch
import torch

import builders
from conftest import PromptFailed

SD15_TINY = (320, 320, 320, 320)  # fits write_sd15_checkpoint's "animatediff" layout


@pytest.fixture(scope="module")
def files(comfy):
    ckpt_dir, mm_dir = os.path.join(comfy.models, "checkpoints"), os.path.join(comfy.models, "animatediff_models")
    os.makedirs(mm_dir, exist_ok=True)
    names = {"ckpt": "ad_sd15.safetensors", "fresh": "ad_sd15_copy.safetensors", "v2": "nodes_v2.safetensors",
             "v1": "nodes_v1.safetensors", "animatelcm": "nodes_animatelcm.safetensors",
             "sdxl": "nodes_sdxl.safetensors"}
    path = os.path.join(ckpt_dir, names["ckpt"])
    if not os.path.exists(path):
        builders.write_sd15_checkpoint(path, layout="animatediff")
    shutil.copy(path, os.path.join(ckpt_dir, names["fresh"]))
    for fmt in ("v2", "v1", "animatelcm"):
        builders.save_file(builders.motion_module_sd(fmt, channels=SD15_TINY), os.path.join(mm_dir, names[fmt]))
    builders.save_file(builders.motion_module_sd("sdxl_beta", channels=(32, 64, 64)), os.path.join(mm_dir, names["sdxl"]))
    return names


def txt2vid(files, mm="v2", frames=4, seed=1, sampler="KSampler", beta="use_model_default", motion_scale=1.0,
            effect=1.0, ckpt="ckpt", prefix="nodes"):
    """API prompt: checkpoint -> prompts -> latent batch -> motion module -> sampler -> SaveLatent."""
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": files[ckpt]}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a boat on a lake, waves", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": frames}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": prefix}},
    }
    model = ["1", 0]
    if mm:
        prompt["5"] = {"class_type": "AnimateDiffLoadMotionModule", "inputs": {"motion_module": files[mm]}}
        prompt["6"] = {"class_type": "AnimateDiffApplyMotionModule", "inputs": {
            "model": model, "motion_module": ["5", 0], "beta_schedule": beta, "motion_scale": motion_scale,
            "effect": effect}}
        model = ["6", 0]
    common = {"model": model, "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "cfg": 2.0}
    if sampler == "KSampler":
        prompt["7"] = {"class_type": "KSampler", "inputs": dict(
            common, seed=seed, steps=2, sampler_name="euler", scheduler="normal", denoise=1.0)}
    elif sampler == "KSamplerAdvanced":
        prompt["7"] = {"class_type": "KSamplerAdvanced", "inputs": dict(
            common, add_noise="enable", noise_seed=seed, steps=2, sampler_name="euler", scheduler="normal",
            start_at_step=0, end_at_step=10000, return_with_leftover_noise="disable")}
    else:
        prompt["10"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
        prompt["11"] = {"class_type": "BasicScheduler", "inputs": {"model": model, "scheduler": "normal", "steps": 2,
                                                                   "denoise": 1.0}}
        common.pop("latent_image")
        prompt["7"] = {"class_type": "SamplerCustom", "inputs": dict(
            common, add_noise=True, noise_seed=seed, sampler=["10", 0], sigmas=["11", 0], latent_image=["4", 0])}
    return prompt


def latent(comfy, outputs):
    saved = outputs["9"]["latents"][0]
    path = os.path.join(comfy.base, "output", saved["subfolder"], saved["filename"])
    return safetensors.torch.load_file(path)["latent_tensor"]


def test_nodes_are_registered_with_descriptions_and_tooltips(comfy):
    import nodes
    for node_id in ("AnimateDiffLoadMotionModule", "AnimateDiffApplyMotionModule", "AnimateDiffContextWindows"):
        cls = nodes.NODE_CLASS_MAPPINGS[node_id]
        schema = cls.GET_SCHEMA()
        assert schema.category == "animatediff" and schema.description
        assert schema.inputs and all(i.tooltip for i in schema.inputs)
    inputs = nodes.NODE_CLASS_MAPPINGS["AnimateDiffApplyMotionModule"].INPUT_TYPES()["required"]
    assert list(inputs) == ["model", "motion_module", "beta_schedule", "motion_scale", "effect"]
    assert inputs["beta_schedule"][1]["default"] == "autoselect"
    inputs = nodes.NODE_CLASS_MAPPINGS["AnimateDiffContextWindows"].INPUT_TYPES()["required"]
    assert list(inputs) == ["model", "context_length", "context_overlap", "context_schedule", "context_stride",
                            "closed_loop", "fuse_method", "freenoise"]
    assert inputs["context_schedule"][1]["options"] == ["standard_static", "standard_uniform", "looped_uniform", "batched"]
    assert inputs["fuse_method"][1]["options"] == ["pyramid", "flat", "overlap-linear", "relative"]
    assert (inputs["context_length"][1]["default"], inputs["context_overlap"][1]["default"],
            inputs["fuse_method"][1]["default"], inputs["freenoise"][1]["default"]) == (16, 4, "pyramid", True)


def test_every_sampler_runs_the_motion_module(comfy, files):
    plain = latent(comfy, comfy.run(txt2vid(files, effect=0.0)))
    assert plain.shape == (4, 4, 6, 8)
    results = {s: latent(comfy, comfy.run(txt2vid(files, sampler=s)))
               for s in ("KSampler", "KSamplerAdvanced", "SamplerCustom")}
    animated = results["KSampler"]
    assert (animated - plain).abs().max() > 1e-3  # the temporal layers changed the result
    for name, result in results.items():
        assert torch.equal(result, animated), name
    # frames are no longer independent: changing one frame's noise changes the others
    assert torch.isfinite(animated).all()


def test_effect_zero_is_bit_identical_to_no_motion_module(comfy, files):
    plain = latent(comfy, comfy.run(txt2vid(files, mm=None, seed=3)))
    disabled = latent(comfy, comfy.run(txt2vid(files, effect=0.0, seed=3)))
    assert torch.equal(plain, disabled)


def test_model_is_unpatched_after_sampling(comfy, files):
    """After an animation, a plain image run on the same (cached) base model equals one on a freshly loaded copy."""
    shared = comfy.executor()  # keeps the loaded checkpoint between prompts, as the server does
    comfy.run(txt2vid(files, seed=5, mm="v1", beta="autoselect"), executor=shared)  # v1 also patches GroupNorms
    after = latent(comfy, comfy.run(txt2vid(files, mm=None, seed=6), executor=shared))
    fresh = latent(comfy, comfy.run(txt2vid(files, mm=None, seed=6, ckpt="fresh")))
    assert torch.equal(after, fresh)


def test_offloaded_motion_module_reloads(comfy, files):
    import comfy.model_management as model_management
    shared = comfy.executor()
    comfy.run(txt2vid(files, seed=7), executor=shared)
    model_management.unload_all_models()  # UNet and motion module offloaded, the injection removed
    again = latent(comfy, comfy.run(txt2vid(files, seed=8), executor=shared))  # same cached patchers, reloaded
    fresh = latent(comfy, comfy.run(txt2vid(files, seed=8, ckpt="fresh")))
    assert torch.equal(again, fresh)


def test_too_many_frames_fails_before_sampling_with_the_fix(comfy, files):
    with pytest.raises(PromptFailed) as failure:
        comfy.run(txt2vid(files, frames=33))
    message = str(failure.value)
    assert "33 frames" in message and "32 frame positions" in message and "batch_size" in message


def test_one_frame_warns(comfy, files, caplog):
    with caplog.at_level(logging.WARNING):
        comfy.run(txt2vid(files, frames=1, seed=11))
    assert "AnimateDiff needs a batch of frames" in caplog.text


def test_family_mismatch_names_both(comfy, files):
    with pytest.raises(PromptFailed) as failure:
        comfy.run(txt2vid(files, mm="sdxl"))
    assert "for SDXL" in str(failure.value) and "the model is SD1.5" in str(failure.value)


def sigmas(betas):
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float()


@pytest.mark.parametrize("mm, beta, expected", [
    ("v2", "autoselect", sigmas(torch.linspace(0.00085, 0.012, 1000, dtype=torch.float64))),
    ("v2", "sqrt_linear", sigmas(torch.linspace(0.00085, 0.012, 1000, dtype=torch.float64))),
    ("v2", "linear", sigmas(torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2)),
    ("v2", "use_model_default", None),
])
def test_beta_schedule_patches_model_sampling(comfy, files, mm, beta, expected):
    import nodes
    model = nodes.CheckpointLoaderSimple().load_checkpoint(files["ckpt"])[0]
    module = nodes.NODE_CLASS_MAPPINGS["AnimateDiffLoadMotionModule"].execute(files[mm]).result[0]
    options_before = repr(model.model_options)
    patched = nodes.NODE_CLASS_MAPPINGS["AnimateDiffApplyMotionModule"].execute(
        model, module, beta, 1.0, 1.0).result[0]
    assert patched is not model and repr(model.model_options) == options_before and not model.object_patches
    sampling = patched.get_model_object("model_sampling")
    if expected is None:
        assert "model_sampling" not in patched.object_patches
    else:
        assert type(sampling).__bases__[-1] is type(model.get_model_object("model_sampling")).__bases__[-1]
        torch.testing.assert_close(sampling.sigmas, expected, rtol=1e-5, atol=0)


def test_animatelcm_autoselects_lcm_sampling(comfy, files):
    import nodes
    from comfy_extras.nodes_model_advanced import LCM, ModelSamplingDiscreteDistilled
    model = nodes.CheckpointLoaderSimple().load_checkpoint(files["ckpt"])[0]
    module = nodes.NODE_CLASS_MAPPINGS["AnimateDiffLoadMotionModule"].execute(files["animatelcm"]).result[0]
    assert module.info.format == "animatelcm" and module.info.pe_rows == 64
    patched = nodes.NODE_CLASS_MAPPINGS["AnimateDiffApplyMotionModule"].execute(
        model, module, "autoselect", 1.0, 1.0).result[0]
    sampling = patched.get_model_object("model_sampling")
    assert isinstance(sampling, ModelSamplingDiscreteDistilled) and isinstance(sampling, LCM)


def test_frames_per_clip_follow_cond_or_uncond(comfy, tiny_sd15, tmp_path):
    """cond and uncond batched together give the same as each run alone (ComfyUI splits them when memory is short);
    reading the whole batch as one clip would not."""
    import comfy.model_management as model_management
    pack_nodes = comfy.pack.nodes
    path = str(tmp_path / "v2.safetensors")
    builders.save_file(builders.motion_module_sd("v2", channels=(32, 64, 64, 64)), path)
    m = pack_nodes.motion.apply_motion_module(tiny_sd15, pack_nodes.motion.load_motion_module(path, "v2"), "use_model_default", 1, 1)
    model_management.load_models_gpu([m] + m.get_nested_additional_models())
    frames, g = 6, torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2 * frames, 4, 8, 12, generator=g), torch.randn(2 * frames, 7, 768, generator=g)
    t = torch.full((2 * frames,), 0.5)

    def unet(rows, cond_or_uncond):
        options = dict(m.model_options["transformer_options"], cond_or_uncond=cond_or_uncond)
        with torch.no_grad():
            return m.model.apply_model(x[rows], t[rows], c_crossattn=ctx[rows], transformer_options=options)

    both = unet(slice(None), [1, 0])
    alone = torch.cat([unet(slice(0, frames), [1]), unet(slice(frames, None), [0])])
    torch.testing.assert_close(both, alone, atol=1e-5, rtol=1e-5)
    assert (unet(slice(None), [1]) - both).abs().max() > 1e-2  # one clip of 12 frames is another computation
    model_management.unload_all_models()


def test_one_info_line_says_what_animatediff_does(comfy, files, caplog):
    import nodes
    from comfy import sample as comfy_sample
    pack_nodes = comfy.pack.nodes
    lora_dir = os.path.join(comfy.models, "animatediff_motion_lora")
    os.makedirs(lora_dir, exist_ok=True)
    builders.save_file(builders.motion_lora_sd(SD15_TINY, rank=2), os.path.join(lora_dir, "info_lora.safetensors"))
    model = nodes.CheckpointLoaderSimple().load_checkpoint(files["ckpt"])[0]
    module = pack_nodes.motion.load_motion_module(os.path.join(comfy.models, "animatediff_models", files["v2"]), files["v2"])
    module = pack_nodes.lora.load_motion_lora(module, os.path.join(lora_dir, "info_lora.safetensors"), "info_lora.safetensors", 0.6)
    animated = pack_nodes.context_windows.apply(
        pack_nodes.motion.apply_motion_module(model, module, "autoselect", 1.2, 0.9), context_length=8,
        context_overlap=2, context_schedule="standard_static", context_stride=1, closed_loop=False,
        fuse_method="pyramid", freenoise=True)
    positive, negative = [[torch.zeros(1, 2, 768), {}]], [[torch.zeros(1, 2, 768), {}]]
    latent = torch.zeros(20, 4, 6, 8)
    with caplog.at_level(logging.INFO), torch.no_grad():
        comfy_sample.sample(animated, comfy_sample.prepare_noise(latent, 0), 1, 2.0, "euler", "normal", positive,
                            negative, latent, disable_pbar=True, seed=0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("AnimateDiff: v2 motion module")]
    assert lines == [f"AnimateDiff: v2 motion module {files['v2']} on 20 frames in 3 context windows of 8; "
                     "motion_scale 1.2, effect 0.9; MotionLoRAs: info_lora.safetensors (0.6); domain adapter: none"]
    assert "never ran" not in caplog.text


def test_a_warning_when_the_motion_module_never_ran(comfy, files, caplog):
    """Another pack's DIFFUSION_MODEL wrapper that answers without calling the UNet: the frames were never tied."""
    import nodes
    from comfy import patcher_extension, sample as comfy_sample
    pack_nodes = comfy.pack.nodes
    model = nodes.CheckpointLoaderSimple().load_checkpoint(files["ckpt"])[0]
    module = pack_nodes.motion.load_motion_module(os.path.join(comfy.models, "animatediff_models", files["v2"]), files["v2"])
    animated = pack_nodes.motion.apply_motion_module(model, module, "autoselect", 1.0, 1.0)
    animated.add_wrapper_with_key(patcher_extension.WrappersMP.DIFFUSION_MODEL, "other-pack",
                                  lambda executor, x, *args, **kwargs: torch.zeros_like(x))
    positive, negative = [[torch.zeros(1, 2, 768), {}]], [[torch.zeros(1, 2, 768), {}]]
    latent = torch.zeros(4, 4, 6, 8)
    with caplog.at_level(logging.WARNING), torch.no_grad():
        comfy_sample.sample(animated, comfy_sample.prepare_noise(latent, 0), 1, 2.0, "euler", "normal", positive,
                            negative, latent, disable_pbar=True, seed=0)
    assert f"the motion module {files['v2']} was attached but its layers never ran in this sampling" in caplog.text
