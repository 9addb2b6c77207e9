"""motion_modules.formats on the state dicts scripts/weights.py builds: every motion-module format is classified,
converted and detected with its structure (tiny, and full size on the meta device with the real parameter counts);
every other kind of file is told apart and refused saying what it is."""
import pytest
import torch

import weights
from motion_modules import formats, model

TINY = {"SD1.5": (32, 64, 64, 64), "SDXL": (32, 64, 64)}
DETECTED = {"v1": "v1", "v2": "v2", "v3": "v3", "sdxl_beta": "sdxl_beta", "hotshot": "hotshot",
            "animatelcm": "animatelcm", "lightning": "v2"}
POSITIONS = {"v1": 24, "v2": 32, "v3": 32, "sdxl_beta": 32, "hotshot": 24, "animatelcm": 64, "lightning": 32}
PARAMS = {"v1": 417_137_600, "v2": 453_209_280, "v3": 417_137_600, "sdxl_beta": 236_779_200,
          "hotshot": 236_779_200, "animatelcm": 453_209_280, "lightning": 453_209_280}
SCHEDULE = {"animatelcm": "lcm", "hotshot": "use_model_default"}


def family(fmt):
    return "SDXL" if fmt in weights.SDXL_FORMATS else "SD1.5"


def on_meta(shapes):
    return {key: torch.empty(shape, device="meta") for key, shape in shapes}


def check_structure(info, fmt, channels):
    assert (info.format, info.family, info.pe_rows) == (DETECTED[fmt], family(fmt), POSITIONS[fmt])
    assert info.down == tuple((c, 2) for c in channels) and info.up == tuple((c, 3) for c in channels[::-1])
    assert info.mid == (channels[-1] if fmt in weights.MID_FORMATS else None)
    assert (info.transformer_blocks, info.attention_blocks) == (1, 2)
    assert info.norm_across_frames == (fmt == "sdxl_beta") and info.unet_norm_across_frames == (fmt == "v1")
    assert info.beta_schedule == SCHEDULE.get(fmt, "sqrt_linear")


@pytest.mark.parametrize("fmt", weights.FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_tiny_state_dicts_are_detected_with_their_structure(fmt, dtype):
    channels = TINY[family(fmt)]
    sd = weights.motion_module_sd(fmt, channels=channels, dtype=dtype)
    assert formats.classify(sd) == "motion_module"
    info, converted = formats.load({**sd, "animatediff_config": "{}"})  # non-tensor entries are dropped
    check_structure(info, fmt, channels)
    renamed = {weights.hotshot_to_animatediff_key(k): v for k, v in sd.items()}
    built = {k.replace("to_q.weight", "pos_encoder.pe") for k in renamed if k.endswith(".to_q.weight")} \
        if fmt == "animatelcm" else set()  # AnimateLCM stores no positions: 64 rows are built
    assert set(converted) == set(renamed) | built
    for key, value in renamed.items():
        assert converted[key] is value, key  # the file's tensors, not copies
    for key in built:
        torch.testing.assert_close(converted[key], weights.sinusoid_pe(64, converted[key].shape[-1]), atol=1e-6,
                                   rtol=0)
    motion_model = model.MotionModel(**info.model_kwargs(), device="meta")
    assert {k: tuple(v.shape) for k, v in motion_model.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in converted.items()}


@pytest.mark.parametrize("fmt", weights.FORMATS)
def test_full_size_layouts_are_detected_with_the_documented_parameter_counts(fmt):
    shapes = weights.motion_module_shapes(fmt)
    assert weights.param_count(shapes) == PARAMS[fmt]
    info, converted = formats.load(on_meta(shapes))
    check_structure(info, fmt, weights.default_channels(fmt))
    assert sum(v.numel() for k, v in converted.items() if not k.endswith("pos_encoder.pe")) == PARAMS[fmt]


def test_the_structure_is_read_from_the_keys_not_assumed():
    """A v2 layout without its mid block is read as v3 (the v3 layout); v1 with 32 positions too."""
    v2 = weights.motion_module_sd("v2", channels=TINY["SD1.5"])
    info, _ = formats.load({k: v for k, v in v2.items() if not k.startswith("mid_block.")})
    assert (info.format, info.mid) == ("v3", None)
    v1 = weights.motion_module_sd("v1", channels=TINY["SD1.5"])
    assert formats.load(v1)[0].format == "v1"
    longer = {k: (weights.sinusoid_pe(32, v.shape[-1]) if weights.is_pe_key(k) else v) for k, v in v1.items()}
    assert formats.load(longer)[0].format == "v3"


def test_a_motion_module_of_other_levels_is_refused():
    with pytest.raises(formats.NotAMotionModule, match="2 UNet levels"):
        formats.load(weights.motion_module_sd("v2", channels=(32, 64)))


NOT_MOTION_MODULES = {
    "motion_lora": lambda: weights.motion_lora_sd(TINY["SD1.5"], rank=4),
    "domain_adapter": lambda: weights.v3_adapter_sd(rank=4),
    "image_lora": lambda: {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
                           "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4)},
    "sparsectrl": lambda: weights.sparsectrl_sd(TINY["SD1.5"]),
    "controlnet": lambda: {k: v for k, v in weights.sparsectrl_sd(TINY["SD1.5"]).items()
                           if ".motion_modules." not in k},  # the diffusers layout of a ControlNet
    "pia": lambda: weights.pia_sd(TINY["SD1.5"]),
    "animatelcm_i2v": lambda: weights.animatelcm_i2v_sd(TINY["SD1.5"]),
    "cameractrl": lambda: weights.cameractrl_sd(TINY["SD1.5"]),
    "sd_checkpoint": weights.sd15_checkpoint_keys_sd,
    "unknown": lambda: on_meta(weights.t2i_adapter_shapes()),
}


@pytest.mark.parametrize("kind", NOT_MOTION_MODULES)
def test_other_files_are_told_apart_and_refused_saying_what_they_are(kind):
    sd = NOT_MOTION_MODULES[kind]()
    assert formats.classify(sd) == kind
    with pytest.raises(formats.NotAMotionModule) as failure:
        formats.load(sd)
    assert failure.value.kind == kind and formats.KINDS[kind] in str(failure.value)
    if kind != "sparsectrl":
        with pytest.raises(formats.NotAMotionModule):
            formats.sparsectrl(sd)


def test_a_full_size_sd15_checkpoint_is_a_checkpoint():
    assert formats.classify(on_meta(weights.sd15_checkpoint_shapes("animatediff"))) == "sd_checkpoint"


def test_motion_lora_names_map_onto_the_modules_weights():
    """Every MotionLoRA entry (`...processor.to_q_lora.down.weight`) names one q/k/v/out weight of the module."""
    module_keys = [k for k, _ in weights.motion_module_shapes("v2", TINY["SD1.5"])]
    key_map = formats.motion_lora_key_map(module_keys)
    entries = {k.rsplit("_lora.", 1)[0] for k, _ in weights.motion_lora_shapes(TINY["SD1.5"], rank=4)}
    assert set(key_map) == entries and len(entries) == 21 * 2 * 4
    assert key_map["mid_block.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1."
                   "processor.to_out"] == ("mid_block.motion_modules.0.temporal_transformer.transformer_blocks.0."
                                           "attention_blocks.1.to_out.0.weight")
    assert set(key_map.values()) <= set(module_keys)


@pytest.mark.parametrize("drop", ["down_blocks.0.motion_modules.0.temporal_transformer.norm.weight",
                                  "pos_encoder.pe", "down_blocks.0."])
def test_a_file_with_keys_missing_is_refused_as_incomplete(drop):
    """Classification looks at a few keys; a cut-off or edited file whose other keys are missing is refused readably
    (not with a bare KeyError or ValueError from the structure's look-ups)."""
    sd = {k: v for k, v in weights.motion_module_sd("v2", channels=TINY["SD1.5"]).items()
          if not (k.startswith(drop) if drop.endswith(".") else k.endswith(drop) and k.startswith("down_blocks.0."))}
    with pytest.raises(formats.NotAMotionModule) as failure:
        formats.load(sd)
    assert failure.value.kind == "incomplete" and "incomplete AnimateDiff file" in str(failure.value)


@pytest.mark.parametrize("drop", ["down_blocks.0.resnets.0.conv1.weight",
                                  "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"])
def test_a_sparsectrl_file_with_keys_missing_is_refused_as_incomplete(drop):
    sd = {k: v for k, v in weights.sparsectrl_sd(TINY["SD1.5"]).items() if k != drop}
    with pytest.raises(formats.NotAMotionModule) as failure:
        formats.sparsectrl(sd)
    assert failure.value.kind == "incomplete" and repr(drop) in str(failure.value)
