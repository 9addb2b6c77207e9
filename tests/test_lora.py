"""MotionLoRAs and the v3 domain adapter through the pack's nodes on real ComfyUI: loading, telling files apart,
skipped mid-block entries, sampling, and nothing left patched afterwards. (The merged weights against
diffusers/PEFT are in test_lora_oracle.py.)"""
import logging
import os

import pytest
import torch

import builders
from conftest import PromptFailed

SD15_AD = (320, 320, 320, 320)  # fits the "animatediff" checkpoint layout
RANK = 4


@pytest.fixture(scope="module")
def files(comfy):
    models = comfy.models
    for folder in ("animatediff_models", "animatediff_motion_lora", "loras"):
        os.makedirs(os.path.join(models, folder), exist_ok=True)
    mm, lora, loras = (os.path.join(models, f) for f in ("animatediff_models", "animatediff_motion_lora", "loras"))
    builders.save_file(builders.motion_module_sd("v2", channels=SD15_AD), os.path.join(mm, "lora_v2.safetensors"))
    builders.save_file(builders.motion_module_sd("v3", channels=SD15_AD), os.path.join(mm, "lora_v3.safetensors"))
    builders.save_file(builders.motion_module_sd("sdxl_beta", channels=(32, 64, 64)),
                       os.path.join(mm, "lora_sdxl.safetensors"))
    builders.save_file(builders.motion_lora_sd(SD15_AD, rank=RANK, seed=1), os.path.join(lora, "zoom.ckpt"))
    builders.save_file(builders.motion_lora_sd(SD15_AD, rank=RANK, seed=2), os.path.join(lora, "pan.safetensors"))
    builders.save_file(builders.motion_lora_sd((32, 64, 64, 64), rank=RANK), os.path.join(lora, "tiny.safetensors"))
    builders.save_file(builders.v3_adapter_sd_for_ad_layout(RANK), os.path.join(loras, "adapter.ckpt"))
    builders.save_file(builders.v3_adapter_sd_for_ad_layout(RANK), os.path.join(mm, "v3_adapter.safetensors"))
    # files of other kinds in the wrong folders, as users put them
    builders.save_file(builders.v3_adapter_sd(rank=RANK, channels=SD15_AD), os.path.join(lora, "adapter_here.ckpt"))
    builders.save_file(builders.motion_module_sd("v2", channels=SD15_AD), os.path.join(lora, "module_here.ckpt"))
    builders.save_file(builders.sd15_checkpoint_keys_sd(), os.path.join(lora, "checkpoint_here.safetensors"))
    builders.save_file(builders.motion_lora_sd(SD15_AD, rank=RANK), os.path.join(loras, "motion_lora_in_loras.ckpt"))
    return comfy.models


def txt2vid(ckpt, mm="lora_v2.safetensors", loras=(), adapter=None, adapter_strength=1.0, frames=4, seed=1):
    """API prompt: checkpoint [-> domain adapter] -> motion module [-> MotionLoRAs] -> KSampler -> SaveLatent."""
    p = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a boat on a lake", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": frames}},
        "5": {"class_type": "AnimateDiffLoadMotionModule", "inputs": {"motion_module": mm}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "lora/lat"}},
    }
    model, module = ["1", 0], ["5", 0]
    if adapter:
        p["20"] = {"class_type": "AnimateDiffApplyDomainAdapter", "inputs": {
            "model": model, "adapter_name": adapter, "strength": adapter_strength}}
        model = ["20", 0]
    for i, (name, strength) in enumerate(loras):
        p[str(30 + i)] = {"class_type": "AnimateDiffLoadMotionLoRA", "inputs": {
            "motion_module": module, "lora_name": name, "strength": strength}}
        module = [str(30 + i), 0]
    if mm:
        p["6"] = {"class_type": "AnimateDiffApplyMotionModule", "inputs": {
            "model": model, "motion_module": module, "beta_schedule": "autoselect", "motion_scale": 1.0,
            "effect": 1.0}}
        model = ["6", 0]
    else:
        del p["5"]
    p["7"] = {"class_type": "KSampler", "inputs": {
        "model": model, "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": seed,
        "steps": 2, "cfg": 2.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    return p


def latent(result):
    return result.output("7")["samples"]


def test_nodes_have_descriptions_tooltips_and_their_inputs(comfy, files):
    import nodes
    for node_id, names in (("AnimateDiffLoadMotionLoRA", ["motion_module", "lora_name", "strength"]),
                           ("AnimateDiffApplyDomainAdapter", ["model", "adapter_name", "strength"])):
        cls = nodes.NODE_CLASS_MAPPINGS[node_id]
        schema = cls.GET_SCHEMA()
        assert schema.category == "animatediff" and schema.description
        assert [i.id for i in schema.inputs] == names and all(i.tooltip for i in schema.inputs)
        assert cls.INPUT_TYPES()["required"]["strength"][1]["default"] == 1.0
        assert cls.INPUT_TYPES()["required"]["strength"][1]["min"] < 0


def test_the_combos_list_the_right_files(comfy, files):
    import nodes
    loras = nodes.NODE_CLASS_MAPPINGS["AnimateDiffLoadMotionLoRA"].INPUT_TYPES()["required"]["lora_name"][1]["options"]
    assert {"zoom.ckpt", "pan.safetensors", "tiny.safetensors"} <= set(loras)
    adapters = nodes.NODE_CLASS_MAPPINGS["AnimateDiffApplyDomainAdapter"].INPUT_TYPES()["required"]["adapter_name"]
    # domain adapters from animatediff_models and loras, found by their keys; nothing else from either folder
    options = set(adapters[1]["options"])
    assert {"adapter.ckpt", "v3_adapter.safetensors"} <= options
    assert not options & {"motion_lora_in_loras.ckpt", "lora_v2.safetensors", "lora_v3.safetensors",
                          "lora_sdxl.safetensors", "adapter_here.ckpt"}


def test_motion_loras_change_sampling_and_leave_nothing_patched(comfy, files, sd15_ad_checkpoint):
    shared = comfy.executor()
    plain = latent(comfy.run(txt2vid(sd15_ad_checkpoint), executor=shared))
    zoom = latent(comfy.run(txt2vid(sd15_ad_checkpoint, loras=[("zoom.ckpt", 1.0)]), executor=shared))
    both = latent(comfy.run(txt2vid(sd15_ad_checkpoint, loras=[("zoom.ckpt", 1.0), ("pan.safetensors", -0.5)]),
                            executor=shared))
    off = latent(comfy.run(txt2vid(sd15_ad_checkpoint, loras=[("zoom.ckpt", 0.0)]), executor=shared))
    assert (zoom - plain).abs().max() > 1e-3 and (both - zoom).abs().max() > 1e-3
    assert torch.equal(off, plain)  # strength 0: bit-identical to no LoRA
    again = latent(comfy.run(txt2vid(sd15_ad_checkpoint), executor=shared))  # the same cached module, no LoRA
    assert torch.equal(again, plain)


def test_domain_adapter_changes_sampling_and_leaves_nothing_patched(comfy, files, sd15_ad_checkpoint, caplog):
    shared = comfy.executor()
    plain = latent(comfy.run(txt2vid(sd15_ad_checkpoint, mm=None), executor=shared))
    adapted = latent(comfy.run(txt2vid(sd15_ad_checkpoint, mm=None, adapter="adapter.ckpt"), executor=shared))
    off = latent(comfy.run(txt2vid(sd15_ad_checkpoint, mm=None, adapter="adapter.ckpt", adapter_strength=0.0),
                           executor=shared))
    assert (adapted - plain).abs().max() > 1e-3 and torch.equal(off, plain)
    with caplog.at_level(logging.INFO):
        v3 = latent(comfy.run(txt2vid(sd15_ad_checkpoint, mm="lora_v3.safetensors", adapter="v3_adapter.safetensors",
                                      loras=[("zoom.ckpt", 0.8)]), executor=shared))
    assert torch.isfinite(v3).all()
    assert "AnimateDiff: v3 motion module lora_v3.safetensors on 4 frames; motion_scale 1, effect 1; MotionLoRAs: " \
           "zoom.ckpt (0.8); domain adapter: v3_adapter.safetensors (1)" in caplog.text
    assert torch.equal(latent(comfy.run(txt2vid(sd15_ad_checkpoint, mm=None), executor=shared)), plain)


def test_mid_block_entries_are_skipped_on_a_module_without_one(comfy, files, caplog):
    pack_nodes = comfy.pack.nodes
    mm = os.path.join(files, "animatediff_models")
    v3 = pack_nodes.motion.load_motion_module(os.path.join(mm, "lora_v3.safetensors"), "lora_v3.safetensors")
    with caplog.at_level(logging.INFO):
        patched = pack_nodes.lora.load_motion_lora(v3, os.path.join(files, "animatediff_motion_lora", "zoom.ckpt"),
                                            "zoom.ckpt", 1.0)
    # 21 modules x 2 attention blocks x q, k, v, out; v3 has no mid block: its 8 are skipped
    assert len(patched.patcher.patches) == 160 and not v3.patcher.patches
    assert "zoom.ckpt at strength 1 on lora_v3.safetensors: 160 of 168 LoRA weights applied; 8 mid-block weights " \
           "skipped (this v3 module has no mid block)" in caplog.text
    v2 = pack_nodes.motion.load_motion_module(os.path.join(mm, "lora_v2.safetensors"), "lora_v2.safetensors")
    assert len(pack_nodes.lora.load_motion_lora(v2, os.path.join(files, "animatediff_motion_lora", "zoom.ckpt"),
                                         "zoom.ckpt", 1.0).patcher.patches) == 168


def test_motion_lora_for_other_channels_fails_in_the_prompt(comfy, files, sd15_ad_checkpoint):
    with pytest.raises(PromptFailed) as failure:
        comfy.run(txt2vid(sd15_ad_checkpoint, loras=[("tiny.safetensors", 1.0)]))
    assert "was made for another model" in str(failure.value)
    assert failure.value.node_type == "AnimateDiffLoadMotionLoRA"


def test_motion_lora_on_an_sdxl_module_is_refused(comfy, files):
    pack_nodes = comfy.pack.nodes
    sdxl = pack_nodes.motion.load_motion_module(os.path.join(files, "animatediff_models", "lora_sdxl.safetensors"), "sdxl")
    with pytest.raises(pack_nodes.motion.MotionModuleError, match="made for another"):
        pack_nodes.lora.load_motion_lora(sdxl, os.path.join(files, "animatediff_motion_lora", "zoom.ckpt"), "zoom.ckpt", 1)


@pytest.mark.parametrize("folder, name, wanted, says", [
    ("animatediff_motion_lora", "adapter_here.ckpt", "a MotionLoRA",
     "is the AnimateDiff v3 domain adapter (a LoRA for the image model's spatial attention): apply it to the "
     "checkpoint's model with Apply AnimateDiff Domain Adapter"),
    ("animatediff_motion_lora", "module_here.ckpt", "a MotionLoRA",
     "is an AnimateDiff motion module: load it with Load AnimateDiff Motion Module"),
    ("animatediff_motion_lora", "checkpoint_here.safetensors", "a MotionLoRA",
     "is a Stable Diffusion checkpoint or UNet: load it with Load Checkpoint"),
    ("loras", "motion_lora_in_loras.ckpt", "the AnimateDiff v3 domain adapter",
     "is a MotionLoRA (a camera-motion LoRA for a motion module): load it with Load AnimateDiff MotionLoRA"),
    ("animatediff_motion_lora", "module_here.ckpt", "the AnimateDiff v3 domain adapter",
     "is an AnimateDiff motion module"),
])
def test_a_file_of_another_kind_says_what_it_is_and_where_it_goes(comfy, files, folder, name, wanted, says):
    pack_nodes = comfy.pack.nodes
    path = os.path.join(files, folder, name)
    with pytest.raises(pack_nodes.motion.MotionModuleError) as failure:
        if wanted == "a MotionLoRA":
            v2 = pack_nodes.motion.load_motion_module(os.path.join(files, "animatediff_models", "lora_v2.safetensors"), "v2")
            pack_nodes.lora.load_motion_lora(v2, path, name, 1.0)
        else:
            import nodes
            model = nodes.CheckpointLoaderSimple().load_checkpoint("tiny_sd15_ad.safetensors")[0]
            pack_nodes.lora.apply_domain_adapter(model, path, name, 1.0)
    message = str(failure.value)
    assert f"'{name}' is not {wanted}" in message and says in message, message


@pytest.mark.slow
def test_full_size_motion_lora_and_adapter_apply(comfy, tmp_path):
    """Official shapes: a rank-64 MotionLoRA on a full-size v2 module, the rank-128 adapter on SD1.5's UNet."""
    from comfy import model_management
    import comfy_models
    pack_nodes = comfy.pack.nodes
    builders.save_file(builders.motion_module_sd("v2", dtype=torch.float16), str(tmp_path / "mm.safetensors"))
    builders.save_file(builders.motion_lora_sd(), str(tmp_path / "lora.ckpt"))
    module = pack_nodes.motion.load_motion_module(str(tmp_path / "mm.safetensors"), "mm")
    patched = pack_nodes.lora.load_motion_lora(module, str(tmp_path / "lora.ckpt"), "lora.ckpt", 0.5)
    assert len(patched.patcher.patches) == 168
    key = "mid_block.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.to_out.0.weight"
    before = module.patcher.model.state_dict()[key].clone()
    model_management.load_models_gpu([patched.patcher])
    assert not torch.equal(module.patcher.model.state_dict()[key], before)
    model_management.unload_all_models()
    assert torch.equal(module.patcher.model.state_dict()[key], before)
    del module, patched

    builders.save_file(builders.v3_adapter_sd(), str(tmp_path / "adapter.ckpt"))
    unet = comfy_models.tiny_sd15_model(channels=(320, 640, 1280, 1280), dtype=torch.float16)  # SD1.5's UNet
    adapted = pack_nodes.lora.apply_domain_adapter(unet, str(tmp_path / "adapter.ckpt"), "adapter", 1.0)
    assert len(adapted.patches) == 128
    key = "diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_v.weight"  # up_blocks.3.attentions.2
    before = unet.model.state_dict()[key].clone()
    model_management.load_models_gpu([adapted])
    assert not torch.equal(unet.model.state_dict()[key], before)
    model_management.unload_all_models()
    assert torch.equal(unet.model.state_dict()[key], before)


def test_a_full_adapter_on_a_model_without_those_transformers_is_refused(comfy, files, sd15_ad_checkpoint, tmp_path):
    import nodes
    pack_nodes = comfy.pack.nodes
    path = builders.save_file(builders.v3_adapter_sd(rank=RANK, channels=SD15_AD), str(tmp_path / "full.ckpt"))
    model = nodes.CheckpointLoaderSimple().load_checkpoint(sd15_ad_checkpoint)[0]
    with pytest.raises(pack_nodes.motion.MotionModuleError, match="80 LoRA entries of 'full.ckpt' .* match no weight of this "
                                                         "SD1.5 UNet: it was made for another model"):
        pack_nodes.lora.apply_domain_adapter(model, path, "full.ckpt", 1.0)


def test_a_motion_lora_that_matches_nothing_is_an_error(comfy, files, tmp_path):
    """Keys of another layout (here Hotshot-XL's temporal_attentions naming): nothing to apply is an error."""
    pack_nodes = comfy.pack.nodes
    sd = {k.replace(".motion_modules.", ".temporal_attentions.").replace("temporal_transformer.", ""): v
          for k, v in builders.motion_lora_sd(SD15_AD, rank=RANK).items()}
    path = builders.save_file(sd, str(tmp_path / "other_layout.safetensors"))
    v2 = pack_nodes.motion.load_motion_module(os.path.join(files, "animatediff_models", "lora_v2.safetensors"), "lora_v2")
    with pytest.raises(pack_nodes.motion.MotionModuleError, match=r"None of the 336 tensors of 'other_layout' \(such as "
                                                         r"'down_blocks.0.temporal_attentions.0.transformer_blocks"):
        pack_nodes.lora.load_motion_lora(v2, path, "other_layout", 1.0)
