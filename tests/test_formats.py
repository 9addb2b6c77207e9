"""Every motion-module format loads from real files on disk (tiny and full size); other files are refused."""
import os

import pytest
import torch

import builders
from conftest import PromptFailed

TINY = {"SD1.5": (32, 64, 64, 64), "SDXL": (32, 64, 64)}
DETECTED = {"v1": "v1", "v2": "v2", "v3": "v3", "sdxl_beta": "sdxl_beta", "hotshot": "hotshot",
            "animatelcm": "animatelcm", "lightning": "v2"}
POSITIONS = {"v1": 24, "v2": 32, "v3": 32, "sdxl_beta": 32, "hotshot": 24, "animatelcm": 64, "lightning": 32}
PARAMS = {"v1": 417_137_600, "v2": 453_209_280, "v3": 417_137_600, "sdxl_beta": 236_779_200,
          "hotshot": 236_779_200, "animatelcm": 453_209_280, "lightning": 453_209_280}


def family(fmt):
    return "SDXL" if fmt in builders.SDXL_FORMATS else "SD1.5"


def animatediff_layout(sd):
    """The file's state dict as our model names it (Hotshot renamed), without positions."""
    return {builders.hotshot_to_animatediff_key(k): v for k, v in sd.items() if not builders.is_pe_key(k)}


@pytest.mark.parametrize("fmt", builders.FORMATS)
@pytest.mark.parametrize("ext, dtype, wrapper", [(".safetensors", torch.float32, False),
                                                 (".safetensors", torch.float16, False),
                                                 (".ckpt", torch.float32, True), (".ckpt", torch.float16, False)])
def test_tiny_files_load_with_their_structure(comfy, tmp_path, fmt, ext, dtype, wrapper):
    pack_nodes = comfy.pack.nodes
    sd = builders.motion_module_sd(fmt, channels=TINY[family(fmt)], dtype=dtype)
    path = str(tmp_path / f"mm{ext}")
    builders.save_file(sd, path, wrapper=wrapper, extra={"animatediff_config": "{}"} if ext == ".ckpt" else None)
    motion = pack_nodes.motion.load_motion_module(path, "mm" + ext)
    info = motion.info
    channels = TINY[family(fmt)]
    assert (info.format, info.family, info.pe_rows) == (DETECTED[fmt], family(fmt), POSITIONS[fmt])
    assert info.down == tuple((c, 2) for c in channels) and info.up == tuple((c, 3) for c in channels[::-1])
    assert info.mid == (channels[-1] if fmt in builders.MID_FORMATS else None)
    assert (info.transformer_blocks, info.attention_blocks) == (1, 2)
    assert info.norm_across_frames == (fmt == "sdxl_beta") and info.unet_norm_across_frames == (fmt == "v1")
    loaded = motion.patcher.model.state_dict()
    for key, value in animatediff_layout(sd).items():
        assert torch.equal(loaded[key].to(value.dtype), value), key
    pe = loaded["down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"]
    torch.testing.assert_close(pe.float(), builders.sinusoid_pe(POSITIONS[fmt], channels[0]).float(), atol=1e-3, rtol=0)


@pytest.mark.slow
def test_full_size_files_load(comfy, tmp_path):
    """Every format at its real size, with the documented parameter counts (one file on disk at a time)."""
    pack_nodes = comfy.pack.nodes
    for fmt in builders.FORMATS:
        sd = builders.motion_module_sd(fmt, dtype=torch.float16)
        path = str(tmp_path / f"{fmt}.safetensors")
        builders.save_file(sd, path)
        del sd
        motion = pack_nodes.motion.load_motion_module(path, fmt)
        model = motion.patcher.model
        assert (motion.info.format, motion.info.pe_rows) == (DETECTED[fmt], POSITIONS[fmt])
        params = sum(v.numel() for k, v in model.state_dict().items() if not k.endswith("pos_encoder.pe"))
        assert params == PARAMS[fmt], fmt
        del model
        os.remove(path)


NOT_MOTION_MODULES = {
    "motion_lora": (lambda: builders.motion_lora_sd(TINY["SD1.5"], rank=4), "MotionLoRA"),
    "v3_adapter": (lambda: builders.v3_adapter_sd(rank=4), "v3 domain adapter"),
    "sparsectrl": (lambda: builders.sparsectrl_sd(TINY["SD1.5"]), "SparseCtrl"),
    "pia": (lambda: builders.pia_sd(TINY["SD1.5"]), "PIA"),
    "animatelcm_i2v": (lambda: builders.animatelcm_i2v_sd(TINY["SD1.5"]), "AnimateLCM-I2V"),
    "cameractrl": (lambda: builders.cameractrl_sd(TINY["SD1.5"]), "CameraCtrl"),
    "sd_checkpoint": (builders.sd15_checkpoint_keys_sd, "Stable Diffusion checkpoint"),
}


@pytest.mark.parametrize("kind", NOT_MOTION_MODULES)
def test_other_files_are_refused_saying_what_they_are(comfy, tmp_path, kind):
    make, says = NOT_MOTION_MODULES[kind]
    path = str(tmp_path / f"{kind}.safetensors")
    builders.save_file(make(), path)
    with pytest.raises(comfy.pack.nodes.motion.MotionModuleError) as failure:
        comfy.pack.nodes.motion.load_motion_module(path, f"{kind}.safetensors")
    assert "is not a motion module" in str(failure.value) and says in str(failure.value)


class Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def bad_files(directory):
    """{file name: what the error must say} for damaged files, files of the wrong kind and a pickle carrying code."""
    good = builders.motion_module_sd("v2", channels=TINY["SD1.5"])
    builders.save_file(good, os.path.join(directory, "good.safetensors"))
    builders.save_file(good, os.path.join(directory, "good.ckpt"))
    for ext in (".safetensors", ".ckpt"):
        data = open(os.path.join(directory, "good" + ext), "rb").read()
        open(os.path.join(directory, "truncated" + ext), "wb").write(data[: len(data) // 2])
        open(os.path.join(directory, "garbage" + ext), "wb").write(os.urandom(4096))
    builders.save_file(builders.motion_lora_sd(TINY["SD1.5"], rank=4), os.path.join(directory, "lora.safetensors"))
    builders.save_file(builders.sd15_checkpoint_keys_sd(), os.path.join(directory, "checkpoint.safetensors"))
    marker = os.path.join(directory, "pickle-ran")
    torch.save({"down_blocks.0.motion_modules.0.temporal_transformer.norm.weight": Payload(marker)},
               os.path.join(directory, "code.ckpt"), pickle_protocol=2)
    return marker, {"truncated.safetensors": "damaged or incomplete", "truncated.ckpt": "damaged or incomplete",
                    "garbage.safetensors": "damaged or incomplete", "garbage.ckpt": "damaged or incomplete",
                    "code.ckpt": "asks to run Python code", "lora.safetensors": "is a MotionLoRA",
                    "checkpoint.safetensors": "Stable Diffusion checkpoint"}


def test_bad_files_fail_clearly_and_the_next_prompt_works(comfy):
    directory = os.path.join(comfy.models, "animatediff_models")
    os.makedirs(directory, exist_ok=True)
    marker, expected = bad_files(directory)
    for name, says in expected.items():
        prompt = {"1": {"class_type": "AnimateDiffLoadMotionModule", "inputs": {"motion_module": name}},
                  "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
        with pytest.raises(PromptFailed) as failure:
            comfy.run(prompt)
        assert says in str(failure.value) and name in str(failure.value), str(failure.value)
        assert failure.value.node_type == "AnimateDiffLoadMotionModule"
    assert not os.path.exists(marker), "the pickle's code ran"
    torch.load(os.path.join(directory, "code.ckpt"), weights_only=False)  # an unrestricted load runs its code
    assert os.path.exists(marker)
    ok = {"1": {"class_type": "AnimateDiffLoadMotionModule", "inputs": {"motion_module": "good.ckpt"}},
          "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    comfy.run(ok)
