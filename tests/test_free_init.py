"""FreeInit (AnimateDiff FreeInit): 1 iteration equal to none, N iterations N samplings, the reinitialised start of
an iteration, context windows, the node. (The filters' frequency response against the paper's formulas:
tests/torch/test_pure_free_init.py.)"""
import pytest
import torch

import comfy.sample as comfy_sample

import builders
from test_context_windows import HEIGHT, WIDTH, animated, motion_module, record_unet_calls  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("no_loaded_models")


@pytest.fixture(scope="module")
def free_init(pack):
    """The pure filters (motion_modules.free_init), as the pack loaded them."""
    return pack.motion_modules.free_init


def sample(model, frames, seed=0, steps=2):
    g = torch.Generator().manual_seed(100)
    positive, negative = [[torch.randn(1, 3, 768, generator=g), {}]], [[torch.randn(1, 3, 768, generator=g), {}]]
    latent = torch.zeros(frames, 4, HEIGHT, WIDTH)
    with torch.no_grad():
        return comfy_sample.sample(model, comfy_sample.prepare_noise(latent, seed), steps, 3.0, "euler", "normal",
                                   positive, negative, latent, disable_pbar=True, seed=seed)


def with_free_init(pack_nodes, model, iterations, kind="butterworth", reports=None):
    return pack_nodes.free_init.apply_free_init(model, iterations, kind, 0.25, 0.25,
                                    (reports if reports is not None else []).append)


def test_one_iteration_is_no_free_init(pack_nodes, motion_module):  # noqa: F811
    plain = sample(animated(pack_nodes, motion_module), 8, seed=3)
    assert torch.equal(sample(with_free_init(pack_nodes, animated(pack_nodes, motion_module), 1), 8, seed=3), plain)


def test_n_iterations_are_n_samplings_from_the_reinitialised_noise(pack_nodes, motion_module, free_init):  # noqa: F811
    frames, seed, steps = 8, 5, 2
    first = sample(animated(pack_nodes, motion_module), frames, seed=seed, steps=steps)  # what iteration 1 gives
    reports = []
    m = with_free_init(pack_nodes, animated(pack_nodes, motion_module), 3, reports=reports)
    calls = record_unet_calls(m)
    out = sample(m, frames, seed=seed, steps=steps)
    assert len(calls) == 3 * steps and reports == [1, 2, 3]
    assert torch.isfinite(out).all() and not torch.allclose(out, first)
    assert torch.equal(out, sample(with_free_init(pack_nodes, animated(pack_nodes, motion_module), 3), frames, seed=seed,
                                   steps=steps))  # deterministic for a seed
    # iteration 2 starts at LPF(previous result + s * initial noise) + HPF(s * fresh noise seeded by seed + 1)
    ms = m.get_model_object("model_sampling")
    latent_format = m.model.latent_format
    sigma = ms.sigma_max.reshape(1)
    noise = comfy_sample.prepare_noise(torch.zeros(frames, 4, HEIGHT, WIDTH), seed)
    fresh = torch.randn(noise.shape, generator=torch.Generator().manual_seed(seed + 1))
    h = free_init.low_pass_filter(frames, HEIGHT, WIDTH, "butterworth", 0.25, 0.25)
    start = ms.noise_scaling(sigma, free_init.low_pass(noise, h) + fresh - free_init.low_pass(fresh, h),
                             free_init.low_pass(latent_format.process_in(first), h), max_denoise=True)
    seen = calls[steps]["x"]  # the first UNet call of iteration 2: cond and uncond of the same input
    torch.testing.assert_close(seen[:frames], ms.calculate_input(sigma, start), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(seen[frames:], seen[:frames], rtol=0, atol=0)


def test_free_init_in_context_windows(pack_nodes, motion_module):  # noqa: F811
    frames = 24
    m = with_free_init(pack_nodes, animated(pack_nodes, motion_module, windows=True), 2)
    calls = record_unet_calls(m)
    out = sample(m, frames, steps=1)
    windows = m.model_options["context_handler"].plan(frames)
    assert len(windows) == 2 and len(calls) == 2 * len(windows)  # 2 iterations x the windows of 1 step
    assert [c["ad_params"]["sub_idxs"] for c in calls] == windows * 2
    assert out.shape == (frames, 4, HEIGHT, WIDTH) and torch.isfinite(out).all()


def animation_prompt(comfy, ckpt, name):
    """checkpoint -> Apply AnimateDiff Motion Module (a v2 file `name` written here) -> KSampler (4 frames, 1 step)
    -> SaveLatent, for tests to insert their node into."""
    builders.save_file(builders.motion_module_sd("v2", channels=(320,) * 4),
                       f"{comfy.models}/animatediff_models/{name}")
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a boat on a lake"}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 4}},
        "5": {"class_type": "AnimateDiffLoadMotionModule", "inputs": {"motion_module": name}},
        "6": {"class_type": "AnimateDiffApplyMotionModule", "inputs": {
            "model": ["1", 0], "motion_module": ["5", 0], "beta_schedule": "autoselect", "motion_scale": 1.0,
            "effect": 1.0}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["6", 0], "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["4", 0], "seed": 1,
            "steps": 1, "cfg": 2.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": name.split(".")[0]}},
    }


def over_http(comfy, comfy_server, prompt):
    """The latent the real server's SaveLatent (node 9) wrote for `prompt`."""
    import safetensors.torch
    (saved,) = comfy_server.run(prompt, timeout=300)["9"]["latents"]
    return safetensors.torch.load_file(f"{comfy.output_dir}/{saved['subfolder']}/{saved['filename']}")["latent_tensor"]


def free_init_prompt(comfy, ckpt):
    p = animation_prompt(comfy, ckpt, "fi_v2.safetensors")
    p["8"] = {"class_type": "AnimateDiffFreeInit", "inputs": {
        "model": ["6", 0], "iterations": 2, "filter": "gaussian", "spatial_stop_frequency": 0.25,
        "temporal_stop_frequency": 0.25}}
    p["7"]["inputs"]["model"] = ["8", 0]
    return p


def test_the_node_reports_its_iterations(comfy, sd15_ad_checkpoint):
    import server
    server.PromptServer.instance.messages.clear()
    comfy.run(free_init_prompt(comfy, sd15_ad_checkpoint))
    texts = [d["text"] for e, d, _ in server.PromptServer.instance.messages
             if e == "progress_text" and d["node_id"] == "8"]
    assert texts == ["FreeInit iteration 1/2", "FreeInit iteration 2/2"]


@pytest.mark.slow
def test_over_http_as_in_process(comfy, comfy_server, sd15_ad_checkpoint):
    prompt = free_init_prompt(comfy, sd15_ad_checkpoint)
    assert torch.equal(over_http(comfy, comfy_server, prompt), comfy.run(prompt).output("7")["samples"])
