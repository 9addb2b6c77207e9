"""Tests of the test infrastructure itself: builders, the in-process ComfyUI harness, the real server.

Only ComfyUI's stock nodes are used here, so these pass whatever state the pack is in.
"""
import os
import time

import pytest
import safetensors.torch
import torch

import builders
import comfy_models
from conftest import PromptFailed

TINY = (32, 64, 64, 64)
TINY_XL = (32, 64, 64)


# ------------------------------------------------------------------------------------------ builders

@pytest.mark.parametrize("fmt, params, modules, pe_rows", [
    ("v1", 417_137_600, 20, 24), ("v2", 453_209_280, 21, 32), ("v3", 417_137_600, 20, 32),
    ("sdxl_beta", 236_779_200, 15, 32), ("hotshot", 236_779_200, 15, 24),
    ("animatelcm", 453_209_280, 21, None), ("lightning", 453_209_280, 21, 32),
])
def test_full_size_motion_module_layouts(fmt, params, modules, pe_rows):
    shapes = builders.motion_module_shapes(fmt)
    assert builders.param_count(shapes) == params
    norms = [k for k, _ in shapes if k.endswith(".norm.weight")]
    assert len(norms) == modules
    pes = [s for k, s in shapes if builders.is_pe_key(k)]
    if pe_rows is None:
        assert not pes
    else:
        assert len(pes) == 2 * modules and {s[1] for s in pes} == {pe_rows}
    if fmt == "hotshot":
        assert all(".temporal_attentions." in k and "temporal_transformer" not in k for k, _ in shapes)
        assert all(k.endswith("pos_encoder.positional_encoding") for k, _ in shapes if "pos_encoder" in k)
    else:
        assert all(".motion_modules." in k and ".temporal_transformer." in k for k, _ in shapes)
    assert any(k.startswith("mid_block.") for k, _ in shapes) == (modules == 21)


def test_full_size_lora_and_adapter_layouts():
    lora = builders.motion_lora_shapes(builders.SD15_CHANNELS, rank=64, mid=True)
    assert len(lora) == 336 and builders.param_count(lora) == 19_333_120
    assert lora[0][0] == ("down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0."
                          "attention_blocks.0.processor.to_q_lora.down.weight")
    adapter = builders.v3_adapter_shapes(rank=128)
    assert len(adapter) == 256 and builders.param_count(adapter) == 25_509_888
    assert {k.split(".transformer_blocks")[0] for k, _ in adapter} == (
        {f"down_blocks.{i}.attentions.{j}" for i in range(3) for j in range(2)} | {"mid_block.attentions.0"}
        | {f"up_blocks.{i}.attentions.{j}" for i in (1, 2, 3) for j in range(3)})
    assert builders.param_count(builders.ldm_unet_shapes()) == 859_520_964  # the real SD1.5 UNet
    assert builders.param_count(builders.clip_l_shapes()) == 123_060_480


def test_motion_module_sd_tiny_values():
    sd = builders.motion_module_sd("v2", TINY, seed=3)
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == builders.motion_module_shapes("v2", TINY)
    assert all(v.dtype == torch.float32 for v in sd.values())
    for k, v in sd.items():
        assert torch.count_nonzero(v) > 0.9 * v.numel(), k  # non-zero everywhere, proj_out included
    w = sd["down_blocks.1.motion_modules.0.temporal_transformer.proj_in.weight"]
    assert 0.5 < float(w.std() * 64 ** 0.5) < 1.5  # N(0, 1/sqrt(fan_in))
    norm = sd["up_blocks.0.motion_modules.2.temporal_transformer.norm.weight"]
    assert (norm - 1).abs().max() < 0.5
    bias = sd["mid_block.motion_modules.0.temporal_transformer.proj_out.bias"]
    assert 0 < bias.abs().max() < 0.5
    pe = sd["up_blocks.3.motion_modules.1.temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe"]
    p, i, c = 5, 3, 32
    assert pe.shape == (1, 32, 32)
    assert pe[0, p, 2 * i].item() == pytest.approx(torch.sin(torch.tensor(p * 10000 ** (-2 * i / c))).item(), abs=1e-6)
    assert pe[0, p, 2 * i + 1].item() == pytest.approx(torch.cos(torch.tensor(p * 10000 ** (-2 * i / c))).item(), abs=1e-6)

    again = builders.motion_module_sd("v2", TINY, seed=3)
    assert all(torch.equal(sd[k], again[k]) for k in sd)
    other = builders.motion_module_sd("v2", TINY, seed=4)
    assert not torch.equal(sd["down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight"],
                           other["down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight"])


def test_motion_module_formats_share_weights():
    v1, v3 = builders.motion_module_sd("v1", TINY), builders.motion_module_sd("v3", TINY)
    assert v1.keys() == v3.keys()
    for k in v1:
        assert builders.is_pe_key(k) == (v1[k].shape != v3[k].shape) or torch.equal(v1[k], v3[k]), k
    lcm, v2 = builders.motion_module_sd("animatelcm", TINY), builders.motion_module_sd("v2", TINY)
    assert not any("pos_encoder" in k for k in lcm) and set(lcm) < set(v2)
    assert all(torch.equal(lcm[k], v2[k]) for k in lcm)
    hot, beta = builders.motion_module_sd("hotshot", TINY_XL), builders.motion_module_sd("sdxl_beta", TINY_XL)
    renamed = {builders.hotshot_to_animatediff_key(k): v for k, v in hot.items()}
    assert renamed.keys() == beta.keys()
    for k, v in renamed.items():
        if builders.is_pe_key(k):
            assert v.shape[1] == 24 and torch.equal(v, beta[k][:, :24])
        else:
            assert torch.equal(v, beta[k]), k
    half = builders.motion_module_sd("lightning", TINY, dtype=torch.float16)
    assert all(v.dtype == torch.float16 for v in half.values())
    with pytest.raises(ValueError):
        builders.motion_module_sd("v2", (32, 48, 64, 64))


def test_save_file_variants(tmp_path):
    sd = builders.motion_module_sd("v3", TINY)
    st = builders.save_file(sd, tmp_path / "mm.safetensors")
    loaded = safetensors.torch.load_file(st)
    assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], sd[k]) for k in sd)

    ck = builders.save_file(sd, tmp_path / "mm.ckpt", wrapper=True, extra={"animatediff_config": "x"})
    obj = torch.load(ck, weights_only=True)
    assert set(obj) == {"state_dict", "animatediff_config"} and obj["state_dict"].keys() == sd.keys()

    ck2 = builders.save_file(sd, tmp_path / "mm2.ckpt", extra={"animatediff_config": {"a": 1}})
    obj = torch.load(ck2, weights_only=True)
    assert obj["animatediff_config"] == {"a": 1} and len(obj) == len(sd) + 1
    with pytest.raises(ValueError):
        builders.save_file(sd, tmp_path / "bad.safetensors", wrapper=True)


def test_files_that_are_not_motion_modules():
    lora = builders.motion_lora_sd(TINY, rank=4, mid=False)
    assert len(lora) == 20 * 16 and all(".processor." in k and "_lora." in k for k in lora)
    assert lora["up_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1"
                ".processor.to_out_lora.up.weight"].shape == (64, 4)
    adapter = builders.v3_adapter_sd(rank=4, channels=TINY, context_dim=64)
    assert adapter["mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.down.weight"].shape == (4, 64)
    assert any(k.startswith("controlnet_cond_embedding.") for k in builders.sparsectrl_sd(TINY))
    assert builders.pia_sd(TINY)["conv_in.weight"].shape == (32, 9, 3, 3)
    assert any(k.startswith("img_encoder.") for k in builders.animatelcm_i2v_sd(TINY))
    assert any("qkv_merge" in k for k in builders.cameractrl_sd(TINY))
    keys = builders.sd15_checkpoint_keys_sd()
    assert {k.split(".")[0] for k in keys} == {"model", "first_stage_model", "cond_stage_model"}


# ------------------------------------------------------------------------------------ checkpoints

@pytest.mark.parametrize("fixture, layout", [("sd15_checkpoint", "minimal"), ("sd15_ad_checkpoint", "animatediff")])
def test_sd15_checkpoint_is_detected_as_sd15(comfy, request, fixture, layout):
    # (the `comfy` argument is the harness; ComfyUI's modules are imported under other names here)
    import comfy.sd as comfy_sd
    import comfy.supported_models as supported_models
    import comfy.utils as comfy_utils
    import folder_paths
    name = request.getfixturevalue(fixture)
    path = folder_paths.get_full_path_or_raise("checkpoints", name)
    t0 = time.perf_counter()
    model, clip, vae, _ = comfy_sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=True)
    load_s = time.perf_counter() - t0
    print(f"{name}: loaded in {load_s:.2f} s")
    assert type(model.model.model_config) is supported_models.SD15
    cfg = model.model.model_config.unet_config
    assert cfg["model_channels"] == 320 and cfg["context_dim"] == 768 and cfg["num_heads"] == 8
    assert clip is not None and type(vae.first_stage_model).__name__ == "TAESD"
    # every UNet tensor of the file has its place in ComfyUI's UNet and none is missing
    sd = comfy_utils.load_torch_file(path)
    prefix = "model.diffusion_model."
    unet_sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    model.model.diffusion_model.load_state_dict(unet_sd, strict=True)
    if layout == "animatediff":
        assert cfg["num_res_blocks"] == [2, 2, 2, 2] and cfg["channel_mult"] == [1, 1, 1, 1]


# ----------------------------------------------------------------------------- in-process ComfyUI

def stock_prompt(ckpt, seed=7, batch=2, steps=2, output="save"):
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox running", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0}},
    }
    if output == "save":
        prompt["6"] = {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": "harness/lat"}}
    else:
        prompt["6"] = {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}}
        prompt["7"] = {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}}
    return prompt


def test_harness_layout(comfy):
    import importlib.util
    assert importlib.util.find_spec("motion_modules") is None  # the pack is not importable from the repo root
    assert os.path.dirname(importlib.util.find_spec("nodes").origin) == comfy.path
    assert os.path.realpath(os.path.join(comfy.base, "custom_nodes", "comfyui-animatediff")) == \
        os.path.realpath(os.path.dirname(os.path.dirname(__file__)))
    import folder_paths
    assert folder_paths.get_folder_paths("checkpoints") == [os.path.join(comfy.models, "checkpoints")]
    assert folder_paths.get_output_directory() == comfy.output_dir
    assert "KSampler" in comfy.nodes.NODE_CLASS_MAPPINGS
    assert comfy.pack_loaded, "\n".join(comfy.pack_log)


def test_pack_module_as_comfyui_loaded_it(comfy):
    pack = comfy.pack  # raises PackNotLoaded with ComfyUI's traceback when the import failed
    assert os.path.realpath(pack.__file__) == os.path.realpath(os.path.join(comfy.pack_path, "__init__.py"))


def test_validate(comfy, sd15_checkpoint):
    v = comfy.validate(stock_prompt(sd15_checkpoint))
    assert v.ok and v.outputs == ["6"] and v.node_errors == {}
    v = comfy.validate(stock_prompt("missing.safetensors"))
    assert not v.ok and v.node_errors["1"]["class_type"] == "CheckpointLoaderSimple"


def test_stock_prompt_runs_and_is_deterministic(comfy, sd15_checkpoint):
    t0 = time.perf_counter()
    first = comfy.run(stock_prompt(sd15_checkpoint))
    t1 = time.perf_counter()
    second = comfy.run(stock_prompt(sd15_checkpoint))
    t2 = time.perf_counter()
    print(f"stock prompt: {t1 - t0:.2f} s first run, {t2 - t1:.2f} s second run")
    assert first.prompt_id != second.prompt_id
    assert second.cached == []  # a fresh executor per run: nothing carried over
    a, b = first.output("5")["samples"], second.output("5")["samples"]
    assert a.shape == (2, 4, 8, 8) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    (saved,) = first["6"]["latents"]
    path = os.path.join(comfy.output_dir, saved["subfolder"], saved["filename"])
    assert torch.equal(safetensors.torch.load_file(path)["latent_tensor"], a)
    events = [e for e, _, _ in first.messages]
    assert events[0] == "execution_start" and "execution_success" in events and "executed" in events
    assert set(first.executed) == {"1", "2", "3", "4", "5", "6"}

    other_seed = comfy.run(stock_prompt(sd15_checkpoint, seed=8))
    assert not torch.equal(other_seed.output("5")["samples"], a)


def test_run_without_output_node(comfy, sd15_checkpoint):
    prompt = stock_prompt(sd15_checkpoint)
    del prompt["6"]
    with pytest.raises(PromptFailed) as info:
        comfy.run(prompt)
    assert info.value.exception_type == "validation" and "no outputs" in info.value.message.lower()
    out = comfy.run({"4": prompt["4"]}, validate=False)
    assert out == {} and out.output("4")["samples"].shape == (2, 4, 8, 8)


def test_shared_executor_caches_on_purpose(comfy, sd15_checkpoint):
    ex = comfy.executor()
    comfy.run(stock_prompt(sd15_checkpoint), executor=ex)
    again = comfy.run(stock_prompt(sd15_checkpoint), executor=ex)
    assert set(again.cached) >= {"1", "2", "3", "4", "5"}


def test_failing_prompt_raises_and_next_prompt_runs(comfy, sd15_checkpoint):
    broken = os.path.join(comfy.models, "checkpoints", "broken.safetensors")
    with open(broken, "wb") as f:
        f.write(b"this is not a checkpoint")
    try:
        with pytest.raises(PromptFailed) as info:
            comfy.run(stock_prompt("broken.safetensors"))
    finally:
        os.remove(broken)
    err = info.value
    print(f"PromptFailed: {err}")
    assert err.node_id == "1" and err.node_type == "CheckpointLoaderSimple"
    assert err.message and err.exception_type and err.details["prompt_id"]
    assert err.message in str(err)

    with pytest.raises(PromptFailed) as info:
        comfy.run(stock_prompt("missing.safetensors"))
    assert info.value.exception_type == "validation" and info.value.node_id == "1"
    assert "missing.safetensors" in info.value.message

    ok = comfy.run(stock_prompt(sd15_checkpoint, batch=1))
    assert ok.output("5")["samples"].shape == (1, 4, 8, 8)


def test_preview_through_vae(comfy, sd15_checkpoint):
    out = comfy.run(stock_prompt(sd15_checkpoint, batch=1, output="preview"))
    (img,) = out["7"]["images"]
    assert img["type"] == "temp" and os.path.exists(os.path.join(comfy.temp_dir, img["subfolder"], img["filename"]))
    assert out.output("6").shape == (1, 64, 64, 3)


# -------------------------------------------------------------------------------------- tiny models

def test_tiny_models_run_and_are_deterministic():
    import comfy.supported_models
    m = comfy_models.tiny_sd15_model()
    assert type(m.model.model_config) is comfy.supported_models.SD15
    assert comfy_models.level_channels(m) == TINY
    assert comfy_models.level_channels(comfy_models.tiny_sd15_model(channels=(64, 128, 128, 128))) == (64, 128, 128, 128)
    x, t = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(0)), torch.tensor([500.0, 500.0])
    ctx = torch.randn(2, 77, 768, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = m.model.apply_model(x, t, c_crossattn=ctx)
        out2 = comfy_models.tiny_sd15_model().model.apply_model(x, t, c_crossattn=ctx)
    assert out.shape == x.shape and torch.isfinite(out).all() and torch.equal(out, out2)
    assert out.std() > 1e-3

    xl = comfy_models.tiny_sdxl_model()
    assert type(xl.model.model_config) is comfy.supported_models.SDXL
    assert comfy_models.level_channels(xl) == TINY_XL
    y = torch.randn(2, 2816, generator=torch.Generator().manual_seed(2))
    ctx = torch.randn(2, 77, 2048, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = xl.model.apply_model(x, t, c_crossattn=ctx, y=y)
    assert out.shape == x.shape and torch.isfinite(out).all() and out.std() > 1e-3


# ------------------------------------------------------------------------------------- real server

@pytest.mark.slow
def test_real_server_runs_stock_prompt(comfy, comfy_server, sd15_checkpoint):
    stats = comfy_server.get("/system_stats")
    import comfyui_version
    assert stats["system"]["comfyui_version"] == comfyui_version.__version__  # the ComfyUI the harness imports
    outputs = comfy_server.run(stock_prompt(sd15_checkpoint, seed=11), timeout=120)
    (saved,) = outputs["6"]["latents"]
    latent = safetensors.torch.load_file(os.path.join(comfy.output_dir, saved["subfolder"], saved["filename"]))
    assert latent["latent_tensor"].shape == (2, 4, 8, 8)
    local = comfy.run(stock_prompt(sd15_checkpoint, seed=11))
    assert torch.equal(latent["latent_tensor"], local.output("5")["samples"])  # same ComfyUI, same numbers

    with pytest.raises(PromptFailed) as info:
        comfy_server.run(stock_prompt("missing.safetensors"))
    assert info.value.exception_type == "validation" and info.value.node_type == "CheckpointLoaderSimple"
