"""Recognise motion-module files by their keys and shapes, and convert them to the AnimateDiff key layout.

Detection never looks at file names, and reads the structure (levels, channels, modules per block, mid block,
positions, transformer and attention blocks) from the file, so shrunken test files take the real files' path.

| format     | files                                     | family | mid | positions | motion-module GroupNorm |
|------------|-------------------------------------------|--------|-----|-----------|-------------------------|
| v1         | mm_sd_v14, mm_sd_v15                      | SD1.5  | no  | 24        | per frame (UNet ResBlocks and its output norm across frames) |
| v2         | mm_sd_v15_v2, AnimateDiff-Lightning       | SD1.5  | yes | 32        | per frame               |
| v3         | v3_sd15_mm                                | SD1.5  | no  | 32        | per frame               |
| animatelcm | AnimateLCM_sd15_t2v (no stored positions) | SD1.5  | yes | 64, built | per frame               |
| sdxl_beta  | mm_sdxl_v10_beta                          | SDXL   | no  | 32        | across the clip's frames |
| hotshot    | hsxl_temporal_layers                      | SDXL   | no  | 24        | per frame               |

The GroupNorm column follows each format's original code: the SD1.5 code (v1 to v3) rearranges the clip to
frames before its motion modules' norm, and v1's UNet (not "inflated") normalises ResNet blocks and the output
norm over the 5-D clip; the SDXL-beta code normalises its motion modules over the 5-D clip; Hotshot-XL per frame.
"""
import re
from dataclasses import dataclass

import torch

from .model import sinusoid_table

ANIMATELCM_POSITIONS = 64


class NotAMotionModule(ValueError):
    """The file is not a (complete) file of the kind asked for; `kind` (a key of KINDS) says what it is."""

    def __init__(self, kind, detail=""):
        super().__init__(f"This file is {KINDS[kind]}{detail}.")
        self.kind = kind


@dataclass(frozen=True)
class MotionModuleInfo:
    format: str
    family: str                 # "SD1.5" or "SDXL"
    down: tuple                 # ((channels, modules), ...) per UNet level
    up: tuple
    mid: int | None             # channels of the mid-block module, if any
    pe_rows: int                # frame positions: the most frames one clip may have
    transformer_blocks: int
    attention_blocks: int
    norm_across_frames: bool    # the motion modules' GroupNorm
    unet_norm_across_frames: bool  # the image UNet's ResBlock and output GroupNorms (v1)
    beta_schedule: str          # the noise schedule it was trained with

    def model_kwargs(self):
        return dict(down=self.down, up=self.up, mid=self.mid, pe_rows=self.pe_rows,
                    transformer_blocks=self.transformer_blocks, attention_blocks=self.attention_blocks,
                    norm_across_frames=self.norm_across_frames)


KINDS = {  # kind: what such a file is
    "motion_module": "an AnimateDiff motion module",
    "motion_lora": "a MotionLoRA (a camera-motion LoRA for a motion module)",
    "domain_adapter": "the AnimateDiff v3 domain adapter (a LoRA for the image model's spatial attention)",
    "image_lora": "a LoRA for the image model",
    "sparsectrl": "a SparseCtrl encoder (a ControlNet with motion modules)",
    "controlnet": "a ControlNet",
    "animatelcm_i2v": "an AnimateLCM-I2V image encoder and motion model",
    "cameractrl": "a CameraCtrl pose-conditioned motion module",
    "pia": "a PIA image-to-video model",
    "sd_checkpoint": "a Stable Diffusion checkpoint or UNet",
    "incomplete": "an incomplete AnimateDiff file",
    "other_layout": "a motion module of a layout AnimateDiff does not have",
    "unknown": "not an AnimateDiff file: it has no '<block>.motion_modules.<n>.temporal_transformer.' keys",
}


def classify(sd):
    """The kind of a state dict (a key of KINDS), from its keys only."""
    keys = list(sd)

    def has(part):
        return any(part in k for k in keys)

    if has("_lora.") or has("lora_down") or has("lora_up") or has("lora_A"):
        if has("motion_modules") or has("temporal"):
            return "motion_lora"
        if has(".attentions.") and has(".processor."):
            return "domain_adapter"
        return "image_lora"
    if has("controlnet_cond_embedding"):
        return "sparsectrl" if has(".motion_modules.") else "controlnet"
    if has("img_encoder."):
        return "animatelcm_i2v"
    if has("qkv_merge"):
        return "cameractrl"
    if any(k.startswith("conv_in.") for k in keys) and has("motion_modules"):
        return "pia"
    if any(k.startswith(p) for k in keys for p in ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.",
                                                   "conditioner.", "input_blocks.")) or has(".resnets."):
        return "sd_checkpoint"
    if not (has(".motion_modules.") or has(".temporal_attentions.")):
        return "unknown"
    return "motion_module"


def motion_lora_key_map(module_keys):
    """{MotionLoRA entry name: motion-module weight key} for ComfyUI's LoRA loader (its `{name}_lora.up.weight`
    form): `...attention_blocks.0.processor.to_q` -> `...attention_blocks.0.to_q.weight`, `processor.to_out` ->
    `to_out.0.weight`."""
    key_map = {}
    for key in module_keys:
        if re.search(r"\.attention_blocks\.\d+\.(to_q|to_k|to_v|to_out\.0)\.weight$", key):
            key_map[re.sub(r"\.(to_\w+)(\.0)?\.weight$", r".processor.\1", key)] = key
    return key_map


def convert(sd):
    """Tensors only, Hotshot-XL renamed to the AnimateDiff layout, positions built where none are stored."""
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    kind = classify(sd)
    if kind != "motion_module":
        raise NotAMotionModule(kind)
    if any(".temporal_attentions." in k for k in sd):
        # {block}.temporal_attentions.{m}.X -> {block}.motion_modules.{m}.temporal_transformer.X
        sd = {re.sub(r"\.temporal_attentions\.(\d+)\.", r".motion_modules.\1.temporal_transformer.", k)
              .replace("pos_encoder.positional_encoding", "pos_encoder.pe"): v for k, v in sd.items()}
    if not any(k.endswith("pos_encoder.pe") for k in sd):
        for k in [k for k in sd if k.endswith(".to_q.weight")]:
            sd[k.replace("to_q.weight", "pos_encoder.pe")] = sinusoid_table(ANIMATELCM_POSITIONS, sd[k].shape[0])
    return sd


def detect(sd, hotshot=False, stored_positions=True):
    """Describe a converted state dict (see `convert`). `hotshot`/`stored_positions`: what the file had."""
    def count(pattern):
        return 1 + max(int(m.group(1)) for k in sd if (m := re.match(pattern, k)))

    def modules(block, i):
        return count(rf"{block}\.{i}\.motion_modules\.(\d+)\.")

    def channels(block, i):
        return sd[f"{block}.{i}.motion_modules.0.temporal_transformer.norm.weight"].shape[0]

    levels = count(r"down_blocks\.(\d+)\.")
    down = tuple((channels("down_blocks", i), modules("down_blocks", i)) for i in range(levels))
    up = tuple((channels("up_blocks", i), modules("up_blocks", i)) for i in range(count(r"up_blocks\.(\d+)\.")))
    mid = sd["mid_block.motion_modules.0.temporal_transformer.norm.weight"].shape[0] \
        if "mid_block.motion_modules.0.temporal_transformer.norm.weight" in sd else None
    first = "down_blocks.0.motion_modules.0.temporal_transformer."
    pe_rows = sd[first + "transformer_blocks.0.attention_blocks.0.pos_encoder.pe"].shape[1]
    family = {4: "SD1.5", 3: "SDXL"}.get(levels)
    if family is None:
        raise NotAMotionModule("other_layout", f" ({levels} UNet levels; AnimateDiff modules have 4 (SD1.5) or 3 "
                                               "(SDXL))")
    if family == "SDXL":
        fmt = "hotshot" if hotshot else "sdxl_beta"
    elif not stored_positions:
        fmt = "animatelcm"
    elif mid:
        fmt = "v2"
    else:
        fmt = "v1" if pe_rows == 24 else "v3"
    return MotionModuleInfo(
        format=fmt, family=family, down=down, up=up, mid=mid, pe_rows=pe_rows,
        transformer_blocks=count(re.escape(first) + r"transformer_blocks\.(\d+)\."),
        attention_blocks=count(re.escape(first) + r"transformer_blocks\.0\.attention_blocks\.(\d+)\."),
        norm_across_frames=fmt == "sdxl_beta",
        unet_norm_across_frames=fmt == "v1",
        beta_schedule={"animatelcm": "lcm", "hotshot": "use_model_default"}.get(fmt, "sqrt_linear"))


def load(sd):
    """(info, state dict in the AnimateDiff layout) for a raw state dict from any supported file."""
    hotshot = any(".temporal_attentions." in k or "positional_encoding" in k for k in sd)
    stored_positions = any("pos_encoder" in k for k in sd)
    sd = convert(sd)
    return complete(detect, sd, hotshot=hotshot, stored_positions=stored_positions), sd


def complete(read, sd, **kwargs):
    """read(sd, **kwargs), with a key or block that is not there (a damaged or cut-down file) as NotAMotionModule."""
    try:
        return read(sd, **kwargs)
    except NotAMotionModule:
        raise
    except KeyError as e:
        raise NotAMotionModule("incomplete", f" (no {e.args[0]!r})") from None
    except ValueError:  # max() over no matching keys
        raise NotAMotionModule("incomplete", " (a block's modules are missing)") from None


def sparsectrl(sd):
    """See `sparsectrl_layout`, on any file: a file of another kind, or one with keys missing, is NotAMotionModule."""
    sd = {k: v for k, v in sd.get("controlnet", sd).items() if isinstance(v, torch.Tensor)}
    kind = classify(sd)
    if kind != "sparsectrl":
        raise NotAMotionModule(kind)
    return complete(sparsectrl_layout, sd)


def sparsectrl_layout(sd):
    """(SparseControlNet's keyword arguments, state dict) of a SparseCtrl file. Two layouts, told apart by the
    condition embedding: RGB (v3_sd15_sparsectrl_rgb) embeds VAE latents with one conv,
    `controlnet_cond_embedding.weight` [320, 4 + 1, 3, 3]; scribble (v3_sd15_sparsectrl_scribble) embeds pixels with
    a conv stack, `controlnet_cond_embedding.conv_in.weight` [16, 3 + 1, 3, 3], `blocks.{0..5}`, `conv_out`. The +1
    is the mask channel. Both: SD1.5 encoder in diffusers names, 2 motion modules per level, one temporal attention
    each, 32 positions (built where a file dropped the table, as the original loader does)."""
    latent = "controlnet_cond_embedding.weight" in sd
    embedding = sd["controlnet_cond_embedding.weight" if latent else "controlnet_cond_embedding.conv_in.weight"]
    levels = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"down_blocks\.(\d+)\.", k)))
    channels = tuple(sd[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(levels))
    for k in [k for k in sd if k.endswith(".attention_blocks.0.to_q.weight")]:
        sd.setdefault(k.replace("to_q.weight", "pos_encoder.pe"), sinusoid_table(32, sd[k].shape[0]))
    pe = sd["down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"]
    strided = [v.shape[0] for k, v in sd.items()  # blocks.1, .3, .5: the strided convs, their widths
               if (m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.weight", k)) and int(m.group(1)) % 2]
    widths = [embedding.shape[0]] + strided
    return dict(channels=channels, condition_channels=embedding.shape[1] - 1, latent_condition=latent,
                context_channels=sd["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"].shape[1],
                pe_rows=pe.shape[1], embedding_widths=tuple(widths)), sd
