"""Deterministic random-weight files for the formats the pack reads: the stand-ins of the headless runner
(scripts/txt2vid.py), the benchmarks' weights and the tests' files.

Motion modules in every format, MotionLoRA, the v3 domain adapter, SparseCtrl, PIA, CameraCtrl, AnimateLCM-I2V,
SD1.5 checkpoints, ControlNets, T2I-Adapters, hint frames, videos. Imports torch and safetensors only (PIL, numpy
and opencv inside the functions that write images and videos); never ComfyUI or diffusers, so it runs wherever
the pack does. Key names and shapes follow the AnimateDiff format reference (motion modules, Hotshot-XL,
MotionLoRA, v3 domain adapter), diffusers' SparseControlNetModel and ComfyUI's LDM checkpoint layout.

Weights are random and non-zero everywhere (proj_out included, although training zero-initialises it):
  * tensors with 2+ dims: N(0, 1) / sqrt(fan_in), fan_in = prod(shape[1:]), so activations stay O(1);
  * 1-D weights (all of them are GroupNorm / LayerNorm weights): 1 + 0.05 * N(0, 1);
  * other 1-D tensors (biases): 0.05 * N(0, 1);
  * positional tables (`pos_encoder.pe`, Hotshot's `pos_encoder.positional_encoding`): the exact sinusoid,
    computed in float32 as the original AnimateDiff code does.
Every tensor gets its own torch.Generator seeded from (seed, canonical AnimateDiff key). Consequently the
same seed gives the same weights across formats wherever the canonical keys agree: v1 and v3 differ only
in the pe table, v2 / AnimateLCM / Lightning share all weights (AnimateLCM has no pe), and a Hotshot-XL
file renamed to the AnimateDiff layout equals `sdxl_beta` apart from its 24-row pe table.
"""
import math
import os
import zlib

import torch

SD15_CHANNELS = (320, 640, 1280, 1280)
SDXL_CHANNELS = (320, 640, 1280)

FORMATS = ("v1", "v2", "v3", "sdxl_beta", "hotshot", "animatelcm", "lightning")
SDXL_FORMATS = ("sdxl_beta", "hotshot")
MID_FORMATS = ("v2", "animatelcm", "lightning")
PE_ROWS = {"v1": 24, "v2": 32, "v3": 32, "sdxl_beta": 32, "hotshot": 24, "animatelcm": None, "lightning": 32}

PE_SUFFIXES = ("pos_encoder.pe", "pos_encoder.positional_encoding")


# --------------------------------------------------------------------------------------------- tensors

def _key_seed(seed, key):
    return (int(seed) * 1_000_003 + zlib.crc32(key.encode("utf-8"))) % (2 ** 63 - 1)


def random_tensor(key, shape, seed=0, canonical_key=None):
    """One deterministic float32 tensor following the module docstring's rules."""
    g = torch.Generator().manual_seed(_key_seed(seed, canonical_key or key))
    shape = tuple(shape)
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        return torch.randn(shape, generator=g) / math.sqrt(fan_in)
    if len(shape) == 0:
        return torch.randn((), generator=g) * 0.05
    if key.endswith(".weight"):  # every 1-D weight in these formats belongs to a GroupNorm / LayerNorm
        return 1.0 + 0.05 * torch.randn(shape, generator=g)
    return 0.05 * torch.randn(shape, generator=g)


def sinusoid_pe(length, channels):
    """[1, L, C] table: pe[p, 2i] = sin(p * 10000^(-2i/C)), pe[p, 2i+1] = cos(same) (float32, as upstream)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, channels, 2, dtype=torch.float32) * (-math.log(10000.0) / channels))
    pe = torch.zeros(1, length, channels)
    pe[0, :, 0::2] = torch.sin(position * div_term)
    pe[0, :, 1::2] = torch.cos(position * div_term)
    return pe


def is_pe_key(key):
    return key.endswith(PE_SUFFIXES)


def materialize(shapes, seed=0, dtype=torch.float32, canonical=None):
    """Turn a [(key, shape)] list into a state dict. `canonical` maps a key to the key its seed comes from."""
    sd = {}
    for key, shape in shapes:
        if is_pe_key(key):
            t = sinusoid_pe(shape[1], shape[2])
        else:
            t = random_tensor(key, shape, seed, canonical(key) if canonical else None)
        sd[key] = t.to(dtype) if dtype is not None else t
    return sd


def param_count(sd):
    """Parameters of a state dict ({key: tensor or shape}) or a [(key, shape)] list, pe tables excluded."""
    items = sd.items() if isinstance(sd, dict) else sd
    total = 0
    for key, v in items:
        if is_pe_key(key) or not (isinstance(v, torch.Tensor) or isinstance(v, (tuple, list, torch.Size))):
            continue
        total += v.numel() if isinstance(v, torch.Tensor) else math.prod(v)
    return total


# ------------------------------------------------------------------------------------- motion modules

def _check_channels(channels):
    for c in channels:
        if c % 32:
            raise ValueError(f"motion-module channels must be multiples of 32 (GroupNorm 32 groups, 8 heads): {channels}")


def module_shapes(prefix, c, pe_rows, pe_suffix="pos_encoder.pe", attention_extra=()):
    """(key, shape) list of one motion module (22*C^2 + 21*C parameters plus the pe tables)."""
    out = [
        (prefix + "norm.weight", (c,)), (prefix + "norm.bias", (c,)),
        (prefix + "proj_in.weight", (c, c)), (prefix + "proj_in.bias", (c,)),
    ]
    tb = prefix + "transformer_blocks.0."
    for a in (0, 1):
        ab = f"{tb}attention_blocks.{a}."
        out += [(ab + "to_q.weight", (c, c)), (ab + "to_k.weight", (c, c)), (ab + "to_v.weight", (c, c)),
                (ab + "to_out.0.weight", (c, c)), (ab + "to_out.0.bias", (c,))]
        if pe_rows:
            out.append((ab + pe_suffix, (1, pe_rows, c)))
        out += [(ab + suffix, shape) for suffix, shape in attention_extra]
    for a in (0, 1):
        out += [(f"{tb}norms.{a}.weight", (c,)), (f"{tb}norms.{a}.bias", (c,))]
    out += [
        (tb + "ff.net.0.proj.weight", (8 * c, c)), (tb + "ff.net.0.proj.bias", (8 * c,)),
        (tb + "ff.net.2.weight", (c, 4 * c)), (tb + "ff.net.2.bias", (c,)),
        (tb + "ff_norm.weight", (c,)), (tb + "ff_norm.bias", (c,)),
        (prefix + "proj_out.weight", (c, c)), (prefix + "proj_out.bias", (c,)),
    ]
    return out


def module_prefixes(channels, mid, down=True, up=True, hotshot=False):
    """[(prefix, C)] of every module: down_blocks.i (2 each), up_blocks.j (3 each, channels reversed), mid."""
    unit = "temporal_attentions.{m}." if hotshot else "motion_modules.{m}.temporal_transformer."
    out = []
    if down:
        for i, c in enumerate(channels):
            out += [(f"down_blocks.{i}." + unit.format(m=m), c) for m in range(2)]
    if up:
        for j, c in enumerate(channels[::-1]):
            out += [(f"up_blocks.{j}." + unit.format(m=m), c) for m in range(3)]
    if mid:
        out.append(("mid_block." + unit.format(m=0), channels[-1]))
    return out


def default_channels(fmt):
    return SDXL_CHANNELS if fmt in SDXL_FORMATS else SD15_CHANNELS


def motion_module_shapes(fmt, channels=None):
    """(key, shape) list of a whole motion-module file of format `fmt` (see FORMATS), no tensors allocated."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {FORMATS}")
    channels = tuple(channels or default_channels(fmt))
    _check_channels(channels)
    hotshot = fmt == "hotshot"
    pe_suffix = "pos_encoder.positional_encoding" if hotshot else "pos_encoder.pe"
    out = []
    for prefix, c in module_prefixes(channels, fmt in MID_FORMATS, hotshot=hotshot):
        out += module_shapes(prefix, c, PE_ROWS[fmt], pe_suffix)
    return out


def hotshot_to_animatediff_key(key):
    """Canonical AnimateDiff name of a Hotshot-XL key (`temporal_attentions.m.` -> `motion_modules.m.temporal_transformer.`,
    `pos_encoder.positional_encoding` -> `pos_encoder.pe`)."""
    parts = key.split(".")
    if "temporal_attentions" in parts:
        i = parts.index("temporal_attentions")
        parts[i:i + 2] = ["motion_modules", parts[i + 1], "temporal_transformer"]
    key = ".".join(parts)
    return key[: -len("positional_encoding")] + "pe" if key.endswith("pos_encoder.positional_encoding") else key


def motion_module_sd(fmt, channels=None, seed=0, dtype=torch.float32):
    """Random-weight motion-module state dict of format `fmt`.

    fmt: "v1", "v2", "v3", "sdxl_beta", "hotshot", "animatelcm", "lightning".
    channels: per-level channels, multiples of 32. Defaults: SD1.5 (320, 640, 1280, 1280), SDXL formats
    (320, 640, 1280). Tiny test files: e.g. (32, 64, 64, 64) (SD1.5 family) or (32, 64, 64) (SDXL family).
    Real Lightning files are usually fp16: pass dtype=torch.float16.
    """
    canonical = hotshot_to_animatediff_key if fmt == "hotshot" else None
    return materialize(motion_module_shapes(fmt, channels), seed, dtype, canonical)


def save_file(sd, path, wrapper=False, extra=None):
    """Write `sd` to `path`: .safetensors (safetensors.torch.save_file) or .ckpt/.pt/.pth (torch.save).

    wrapper: store {"state_dict": sd} (.ckpt only). extra: non-tensor entries, e.g.
    {"animatediff_config": "..."} (.ckpt only), put next to the tensors (inside the state dict when not
    wrapped, beside "state_dict" when wrapped). Returns path.
    """
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        if wrapper or extra:
            raise ValueError("a .safetensors file holds tensors only: no wrapper or extra entries")
        import safetensors.torch
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, path)
        return path
    obj = dict(sd)
    if wrapper:
        obj = {"state_dict": obj}
    if extra:
        obj.update(extra)
    torch.save(obj, path)
    return path


# ----------------------------------------------------------------- files that are not motion modules

def motion_lora_shapes(channels=SD15_CHANNELS, rank=64, mid=True):
    """MotionLoRA (key, shape) list: down [r, C], up [C, r] on q/k/v/out of both attention blocks."""
    out = []
    for prefix, c in module_prefixes(tuple(channels), mid):
        for a in (0, 1):
            for proj in ("to_q", "to_k", "to_v", "to_out"):
                base = f"{prefix}transformer_blocks.0.attention_blocks.{a}.processor.{proj}_lora."
                out += [(base + "down.weight", (rank, c)), (base + "up.weight", (c, rank))]
    return out


def motion_lora_sd(channels=SD15_CHANNELS, rank=64, mid=True, seed=0, dtype=torch.float32):
    """MotionLoRA state dict (official files: SD1.5 channels, rank 64, fp32, with mid = v2 modules)."""
    return materialize(motion_lora_shapes(channels, rank, mid), seed, dtype)


def v3_adapter_shapes(rank=128, channels=SD15_CHANNELS, context_dim=768):
    """v3 domain adapter (key, shape) list: processor-LoRA on attn1/attn2 of the 16 SD1.5 spatial transformers."""
    blocks = []
    for i in range(3):
        blocks += [(f"down_blocks.{i}.attentions.{j}", channels[i]) for j in range(2)]
    blocks.append(("mid_block.attentions.0", channels[-1]))
    rev = tuple(channels)[::-1]
    for i in (1, 2, 3):
        blocks += [(f"up_blocks.{i}.attentions.{j}", rev[i]) for j in range(3)]
    out = []
    for name, c in blocks:
        for attn in ("attn1", "attn2"):
            for proj in ("to_q", "to_k", "to_v", "to_out"):
                in_dim = context_dim if (attn == "attn2" and proj in ("to_k", "to_v")) else c
                base = f"{name}.transformer_blocks.0.{attn}.processor.{proj}_lora."
                out += [(base + "down.weight", (rank, in_dim)), (base + "up.weight", (c, rank))]
    return out


def v3_adapter_sd(rank=128, channels=SD15_CHANNELS, context_dim=768, seed=0, dtype=torch.float32):
    """v3 domain adapter (v3_sd15_adapter.ckpt) state dict, diffusers UNet naming."""
    return materialize(v3_adapter_shapes(rank, channels, context_dim), seed, dtype)


def v3_adapter_sd_for_ad_layout(rank=4, seed=0):
    """The v3 domain adapter's entries that write_sd15_checkpoint's "animatediff" layout has spatial transformers
    for (level 0 down and up, the middle block; 320 channels), so it applies to that checkpoint."""
    return {k: v for k, v in v3_adapter_sd(rank=rank, channels=(320,) * 4, seed=seed).items()
            if k.startswith(("down_blocks.0.", "mid_block.", "up_blocks.3."))}


SPARSECTRL_MOTION_NAMES = ((".pos_embed.", ".attention_blocks.0.pos_encoder."),
                           (".attn1.", ".attention_blocks.0."), (".norm1.", ".norms.0."), (".norm3.", ".ff_norm."))


SPARSECTRL_EMBEDDING_WIDTHS = (16, 32, 96, 256)  # the scribble encoder's pixel embedding: conv_in, then per pair
SPARSECTRL_CONTEXT = 768                          # cross-attention context (CLIP-L)
SPARSECTRL_POSITIONS = 32


def _conv(name, ci, co, k=3):
    return [(name + ".weight", (co, ci, k, k)), (name + ".bias", (co,))]


def _linear(name, ci, co):
    return [(name + ".weight", (co, ci)), (name + ".bias", (co,))]


def _norm(name, c):
    return [(name + ".weight", (c,)), (name + ".bias", (c,))]


def _sparsectrl_resnet(p, ci, co, emb):
    """diffusers ResnetBlock2D: norm1, conv1, time_emb_proj, norm2, conv2 (+ 1x1 conv_shortcut where ci != co)."""
    out = _norm(p + "norm1", ci) + _conv(p + "conv1", ci, co) + _linear(p + "time_emb_proj", emb, co)
    out += _norm(p + "norm2", co) + _conv(p + "conv2", co, co)
    if ci != co:
        out += _conv(p + "conv_shortcut", ci, co, 1)
    return out


def _sparsectrl_transformer(p, c, context_dim):
    """diffusers Transformer2DModel of SD1.5 (conv proj_in/proj_out, one block: self-, cross-attention, GEGLU)."""
    out = _norm(p + "norm", c) + _conv(p + "proj_in", c, c, 1)
    b = p + "transformer_blocks.0."
    for norm, attn, kv in (("norm1", "attn1", c), ("norm2", "attn2", context_dim)):
        out += _norm(b + norm, c)
        out += [(f"{b}{attn}.to_q.weight", (c, c)), (f"{b}{attn}.to_k.weight", (c, kv)),
                (f"{b}{attn}.to_v.weight", (c, kv))] + _linear(f"{b}{attn}.to_out.0", c, c)
    out += _norm(b + "norm3", c) + _linear(b + "ff.net.0.proj", c, 8 * c) + _linear(b + "ff.net.2", 4 * c, c)
    return out + _conv(p + "proj_out", c, c, 1)


def _sparsectrl_motion_module(p, c, positions):
    """One SparseCtrl motion module under its AnimateDiff names: one temporal attention (diffusers' order: its
    positions, norm1 -> norms.0, attn1 -> attention_blocks.0, norm3 -> ff_norm, see SPARSECTRL_MOTION_NAMES)."""
    p += "temporal_transformer."
    b = p + "transformer_blocks.0."
    a = b + "attention_blocks.0."
    out = _norm(p + "norm", c) + _linear(p + "proj_in", c, c)
    out += [(a + "pos_encoder.pe", (1, positions, c))] + _norm(b + "norms.0", c)
    out += [(a + "to_q.weight", (c, c)), (a + "to_k.weight", (c, c)), (a + "to_v.weight", (c, c))]
    out += _linear(a + "to_out.0", c, c) + _norm(b + "ff_norm", c)
    out += _linear(b + "ff.net.0.proj", c, 8 * c) + _linear(b + "ff.net.2", 4 * c, c)
    return out + _linear(p + "proj_out", c, c)


def sparsectrl_shapes(channels=SD15_CHANNELS, latent=True):
    """[(key, shape)] of the official SparseCtrl files: v3_sd15_sparsectrl_rgb (latent=True) and _scribble. The layout
    is diffusers' SparseControlNetModel (its converter loads the original files strictly after renaming the motion
    modules) in its key order, with the motion modules under their AnimateDiff names: conv_in; the condition
    embedding (RGB: one conv on VAE latents + mask, 4 + 1 channels; scribble: conv_in on pixels + mask, 3 + 1, then
    a conv and a strided conv per SPARSECTRL_EMBEDDING_WIDTHS step, conv_out); the time embedding; per level
    (cross-attention on all but the last) 2 spatial transformers, 2 ResNets, 2 motion modules (one temporal
    attention, 32 positions), a Downsample except at the last; a 1x1 zero conv for conv_in's output and each
    down-block state; the middle block's zero conv; the middle block (transformer, 2 ResNets).
    tests/test_sparsectrl.py checks this list against diffusers."""
    channels = tuple(channels)
    c0, last, emb = channels[0], len(channels) - 1, 4 * channels[0]
    out = _conv("conv_in", 4, c0)
    e = "controlnet_cond_embedding"
    if latent:
        out += _conv(e, 4 + 1, c0)
    else:
        widths = SPARSECTRL_EMBEDDING_WIDTHS
        out += _conv(e + ".conv_in", 3 + 1, widths[0])
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            out += _conv(f"{e}.blocks.{2 * i}", a, a) + _conv(f"{e}.blocks.{2 * i + 1}", a, b)
        out += _conv(e + ".conv_out", widths[-1], c0)
    out += _linear("time_embedding.linear_1", c0, emb) + _linear("time_embedding.linear_2", emb, emb)
    states = [c0]  # channels of conv_in's output and of each down-block state: one zero conv each
    for i, c in enumerate(channels):
        p = f"down_blocks.{i}."
        if i < last:
            for j in range(2):
                out += _sparsectrl_transformer(f"{p}attentions.{j}.", c, SPARSECTRL_CONTEXT)
        for j, ci in enumerate((channels[max(i - 1, 0)], c)):
            out += _sparsectrl_resnet(f"{p}resnets.{j}.", ci, c, emb)
        for j in range(2):
            out += _sparsectrl_motion_module(f"{p}motion_modules.{j}.", c, SPARSECTRL_POSITIONS)
        states += [c, c]
        if i < last:
            out += _conv(f"{p}downsamplers.0.conv", c, c)
            states.append(c)
    for n, c in enumerate(states):
        out += _conv(f"controlnet_down_blocks.{n}", c, c, 1)
    out += _conv("controlnet_mid_block", channels[-1], channels[-1], 1)
    out += _sparsectrl_transformer("mid_block.attentions.0.", channels[-1], SPARSECTRL_CONTEXT)
    for j in range(2):
        out += _sparsectrl_resnet(f"mid_block.resnets.{j}.", channels[-1], channels[-1], emb)
    return out


def sparsectrl_sd(channels=SD15_CHANNELS, latent=True, seed=0, dtype=torch.float32):
    """A SparseCtrl file's state dict (see sparsectrl_shapes); positional tables are the exact sinusoid."""
    return materialize(sparsectrl_shapes(channels, latent), seed, dtype)


def pia_sd(channels=SD15_CHANNELS, seed=0, dtype=torch.float32):
    """PIA-like file: v3-layout motion modules (no mid, pe 32) plus the 9-channel `conv_in.weight`."""
    shapes = motion_module_shapes("v3", channels)
    c0 = tuple(channels)[0]
    shapes += [("conv_in.weight", (c0, 9, 3, 3)), ("conv_in.bias", (c0,))]
    return materialize(shapes, seed, dtype)


def animatelcm_i2v_sd(channels=SD15_CHANNELS, seed=0, dtype=torch.float32):
    """AnimateLCM-I2V-like file: AnimateLCM motion modules (mid, no pe) plus `img_encoder.*` keys."""
    shapes = motion_module_shapes("animatelcm", channels)
    c0 = tuple(channels)[0]
    shapes += [
        ("img_encoder.conv_in.weight", (c0, 4, 3, 3)), ("img_encoder.conv_in.bias", (c0,)),
        ("img_encoder.body.0.block1.weight", (c0, c0, 3, 3)), ("img_encoder.body.0.block1.bias", (c0,)),
    ]
    return materialize(shapes, seed, dtype)


def cameractrl_sd(channels=SD15_CHANNELS, seed=0, dtype=torch.float32):
    """CameraCtrl-like file: v3-layout motion modules whose attention blocks carry
    `processor.qkv_merge.{weight,bias}` [C, C] / [C]."""
    channels = tuple(channels)
    _check_channels(channels)
    shapes = []
    for prefix, c in module_prefixes(channels, mid=False):
        shapes += module_shapes(prefix, c, 32, attention_extra=(("processor.qkv_merge.weight", (c, c)),
                                                                 ("processor.qkv_merge.bias", (c,))))
    return materialize(shapes, seed, dtype)


def sd15_checkpoint_keys_sd(seed=0, dtype=torch.float32):
    """A few ordinary SD1.5 checkpoint keys (small tensors; only the names matter for refusal tests)."""
    shapes = [
        ("model.diffusion_model.input_blocks.0.0.weight", (32, 4, 3, 3)),
        ("model.diffusion_model.input_blocks.0.0.bias", (32,)),
        ("model.diffusion_model.input_blocks.1.0.in_layers.0.weight", (32,)),
        ("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", (32, 32)),
        ("model.diffusion_model.middle_block.0.in_layers.0.weight", (32,)),
        ("model.diffusion_model.out.2.weight", (4, 32, 3, 3)),
        ("first_stage_model.decoder.conv_in.weight", (32, 4, 3, 3)),
        ("first_stage_model.encoder.conv_in.weight", (32, 3, 3, 3)),
        ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", (16, 32)),
        ("cond_stage_model.transformer.text_model.final_layer_norm.weight", (32,)),
    ]
    return materialize(shapes, seed, dtype)


# ------------------------------------------------------------------------------- SD1.5 checkpoints

CLIP_L = dict(vocab=49408, positions=77, width=768, layers=12, mlp=3072)

# UNet layouts of write_sd15_checkpoint. Both keep what CheckpointLoaderSimple needs to detect SD15:
# model_channels 320, 768-wide cross-attention context, conv proj_in (use_linear_in_transformer False),
# no label embedding. Depths as ldm_unet_shapes takes them; middle: None = no middle block.
SD15_LAYOUTS = {
    # One level: a ResBlock + transformer down; up, a ResBlock + transformer then a ResBlock; no middle
    # block: 16.2 M UNet parameters.
    "minimal": dict(channel_mult=(1,), num_res_blocks=1, transformer_depth=(1,), transformer_depth_output=(0, 1),
                    middle=None),
    # SD1.5 block structure (4 levels, 2 ResBlocks per level down, 3 up, middle block) at 320 channels on
    # every level: takes a motion module built with channels (320, 320, 320, 320). Transformers on level 0
    # (down and up) and in the middle block, none elsewhere, so both placement rules (after the
    # transformer / after the ResBlock) occur. 86.0 M UNet parameters.
    "animatediff": dict(channel_mult=(1, 1, 1, 1), num_res_blocks=2, transformer_depth=(1, 1, 0, 0, 0, 0, 0, 0),
                        transformer_depth_output=(1, 1, 1) + (0,) * 9, middle=1),
}


def _resblock(p, ci, co, emb):
    out = [(p + "in_layers.0.weight", (ci,)), (p + "in_layers.0.bias", (ci,)),
           (p + "in_layers.2.weight", (co, ci, 3, 3)), (p + "in_layers.2.bias", (co,)),
           (p + "emb_layers.1.weight", (co, emb)), (p + "emb_layers.1.bias", (co,)),
           (p + "out_layers.0.weight", (co,)), (p + "out_layers.0.bias", (co,)),
           (p + "out_layers.3.weight", (co, co, 3, 3)), (p + "out_layers.3.bias", (co,))]
    if ci != co:
        out += [(p + "skip_connection.weight", (co, ci, 1, 1)), (p + "skip_connection.bias", (co,))]
    return out


def _spatial_transformer(p, c, depth, context_dim):
    out = [(p + "norm.weight", (c,)), (p + "norm.bias", (c,)),
           (p + "proj_in.weight", (c, c, 1, 1)), (p + "proj_in.bias", (c,))]
    for d in range(depth):
        b = f"{p}transformer_blocks.{d}."
        for attn, kv in (("attn1", c), ("attn2", context_dim)):
            out += [(f"{b}{attn}.to_q.weight", (c, c)), (f"{b}{attn}.to_k.weight", (c, kv)),
                    (f"{b}{attn}.to_v.weight", (c, kv)), (f"{b}{attn}.to_out.0.weight", (c, c)),
                    (f"{b}{attn}.to_out.0.bias", (c,))]
        out += [(b + "ff.net.0.proj.weight", (8 * c, c)), (b + "ff.net.0.proj.bias", (8 * c,)),
                (b + "ff.net.2.weight", (c, 4 * c)), (b + "ff.net.2.bias", (c,))]
        for n in (1, 2, 3):
            out += [(f"{b}norm{n}.weight", (c,)), (f"{b}norm{n}.bias", (c,))]
    out += [(p + "proj_out.weight", (c, c, 1, 1)), (p + "proj_out.bias", (c,))]
    return out


def ldm_unet_shapes(model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
                    transformer_depth=(1, 1, 1, 1, 1, 1, 0, 0), transformer_depth_output=(1,) * 9 + (0,) * 3,
                    middle=1, context_dim=768, in_channels=4, out_channels=4, prefix="model.diffusion_model."):
    """(key, shape) list of an LDM (ComfyUI openaimodel) UNet without label embedding, conv proj_in.

    transformer_depth: one entry per input ResBlock (input order); transformer_depth_output: one per output
    block in ComfyUI's order (detection and UNetModel read it from the end: the last entry is output_blocks.0);
    middle: transformer depth of the middle block (0 = ResBlock, ResBlock) or None (no middle block).
    Defaults: the SD1.5 UNet.
    """
    mc, emb = model_channels, 4 * model_channels
    out = [("time_embed.0.weight", (emb, mc)), ("time_embed.0.bias", (emb,)),
           ("time_embed.2.weight", (emb, emb)), ("time_embed.2.bias", (emb,)),
           ("input_blocks.0.0.weight", (mc, in_channels, 3, 3)), ("input_blocks.0.0.bias", (mc,))]
    chans, ch, idx, t = [mc], mc, 1, 0
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            co = mult * mc
            out += _resblock(f"input_blocks.{idx}.0.", ch, co, emb)
            ch = co
            if transformer_depth[t]:
                out += _spatial_transformer(f"input_blocks.{idx}.1.", ch, transformer_depth[t], context_dim)
            chans.append(ch)
            idx, t = idx + 1, t + 1
        if level != len(channel_mult) - 1:
            out += [(f"input_blocks.{idx}.0.op.weight", (ch, ch, 3, 3)), (f"input_blocks.{idx}.0.op.bias", (ch,))]
            chans.append(ch)
            idx += 1
    if middle is not None:
        out += _resblock("middle_block.0.", ch, ch, emb)
        if middle:
            out += _spatial_transformer("middle_block.1.", ch, middle, context_dim)
        out += _resblock(f"middle_block.{2 if middle else 1}.", ch, ch, emb)
    idx = 0
    for level, mult in list(enumerate(channel_mult))[::-1]:
        for i in range(num_res_blocks + 1):
            co = mult * mc
            out += _resblock(f"output_blocks.{idx}.0.", ch + chans.pop(), co, emb)
            ch, sub = co, 1
            depth = transformer_depth_output[-1 - idx]  # ComfyUI's order: the last entry is output_blocks.0
            if depth:
                out += _spatial_transformer(f"output_blocks.{idx}.1.", ch, depth, context_dim)
                sub = 2
            if level and i == num_res_blocks:
                out += [(f"output_blocks.{idx}.{sub}.conv.weight", (ch, ch, 3, 3)),
                        (f"output_blocks.{idx}.{sub}.conv.bias", (ch,))]
            idx += 1
    out += [("out.0.weight", (mc,)), ("out.0.bias", (mc,)),
            ("out.2.weight", (out_channels, mc, 3, 3)), ("out.2.bias", (out_channels,))]
    return [(prefix + k, s) for k, s in out]


def clip_l_shapes(prefix="cond_stage_model.transformer.text_model."):
    """(key, shape) list of the CLIP-L text encoder (123,060,480 parameters), HF CLIPTextModel naming."""
    w, m = CLIP_L["width"], CLIP_L["mlp"]
    out = [(prefix + "embeddings.token_embedding.weight", (CLIP_L["vocab"], w)),
           (prefix + "embeddings.position_embedding.weight", (CLIP_L["positions"], w))]
    for i in range(CLIP_L["layers"]):
        p = f"{prefix}encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            out += [(f"{p}self_attn.{proj}.weight", (w, w)), (f"{p}self_attn.{proj}.bias", (w,))]
        out += [(p + "layer_norm1.weight", (w,)), (p + "layer_norm1.bias", (w,)),
                (p + "mlp.fc1.weight", (m, w)), (p + "mlp.fc1.bias", (m,)),
                (p + "mlp.fc2.weight", (w, m)), (p + "mlp.fc2.bias", (w,)),
                (p + "layer_norm2.weight", (w,)), (p + "layer_norm2.bias", (w,))]
    out += [(prefix + "final_layer_norm.weight", (w,)), (prefix + "final_layer_norm.bias", (w,))]
    return out


def taesd_shapes(prefix="first_stage_model.", latent_channels=4):
    """(key, shape) list of a TAESD encoder + decoder (ComfyUI loads it as the checkpoint's VAE)."""
    def conv(name, ci, co, bias=True):
        return [(name + ".weight", (co, ci, 3, 3))] + ([(name + ".bias", (co,))] if bias else [])

    def block(name):
        return sum((conv(f"{name}.conv.{j}", 64, 64) for j in (0, 2, 4)), [])

    enc = conv("taesd_encoder.0", 3, 64) + block("taesd_encoder.1")
    for start in (2, 6, 10):
        enc += conv(f"taesd_encoder.{start}", 64, 64, bias=False)
        enc += sum((block(f"taesd_encoder.{start + j}") for j in (1, 2, 3)), [])
    enc += conv("taesd_encoder.14", 64, latent_channels)
    dec = conv("taesd_decoder.1", latent_channels, 64)
    for start in (3, 8, 13):
        dec += sum((block(f"taesd_decoder.{start + j}") for j in (0, 1, 2)), [])
        dec += conv(f"taesd_decoder.{start + 4}", 64, 64, bias=False)
    dec += block("taesd_decoder.18") + conv("taesd_decoder.19", 64, 3)
    return [(prefix + k, s) for k, s in enc + dec]


def sd15_checkpoint_shapes(layout="minimal"):
    """(key, shape) list of write_sd15_checkpoint's file for `layout` (see SD15_LAYOUTS)."""
    unet = ldm_unet_shapes(model_channels=320, context_dim=768, **SD15_LAYOUTS[layout])
    return unet + clip_l_shapes() + taesd_shapes() + [("first_stage_model.vae_scale", ()),
                                                       ("first_stage_model.vae_shift", ())]


def write_sd15_checkpoint(path, seed=0, layout="minimal", dtype=torch.float16):
    """Write a random-weight SD1.5 checkpoint (.safetensors) that ComfyUI's CheckpointLoaderSimple detects
    as SD15 (model_channels 320, context_dim 768, conv proj_in, no label embedding, 8 heads implied).

    UNet (`model.diffusion_model.`), by `layout`:
      * "minimal": channel_mult (1,), 1 ResBlock per level, transformer depth 1 on the input block and on
        the first output block, no middle block; 16.2 M parameters.
      * "animatediff": the SD1.5 block structure (channel_mult (1, 1, 1, 1), 2 ResBlocks per level,
        middle block with a depth-1 transformer; transformers on level 0 only); 86.0 M parameters. Motion
        modules with channels (320, 320, 320, 320) fit it.
    Text encoder: full-size CLIP-L (`cond_stage_model.transformer.text_model.*`, 123.06 M parameters).
    VAE: TAESD encoder + decoder under `first_stage_model.taesd_{encoder,decoder}.*` (2.4 M parameters),
    vae_scale 0.18215 and vae_shift 0 as ComfyUI's taesd VAELoader sets them.
    All weights in `dtype` (default fp16; vae_scale/vae_shift fp32). Returns path.
    """
    import safetensors.torch
    sd = materialize(sd15_checkpoint_shapes(layout), seed, dtype)
    sd["first_stage_model.vae_scale"] = torch.tensor(0.18215)
    sd["first_stage_model.vae_shift"] = torch.tensor(0.0)
    safetensors.torch.save_file(sd, os.fspath(path), metadata={"format": "pt"})
    return path


# ------------------------------------------------------------------------------------- control models

# input_hint_block of the original cldm ControlNet: conv 3x3 at Sequential indices 0, 2, ..., 14 (SiLU between),
# output channels below then model_channels; the convs at indices 4, 8, 12 have stride 2 (image -> latent size).
CLDM_HINT_CHANNELS = (16, 16, 32, 32, 96, 96, 256)


def _layout_kwargs(layout):
    """ldm_unet_shapes keyword arguments of an SD15_LAYOUTS name or of a dict of them."""
    return dict(SD15_LAYOUTS[layout]) if isinstance(layout, str) else dict(layout)


def _block_out_channels(shapes, block_prefix):
    """Output channels of one input block (conv, ResBlock [+ transformer], or Downsample) from a shape list."""
    for suffix in ("0.weight", "0.out_layers.3.weight", "0.op.weight"):
        for key, shape in shapes:
            if key == block_prefix + suffix:
                return shape[0]
    raise KeyError(f"no input block {block_prefix!r} in the UNet shapes")


def controlnet_shapes(layout="animatediff", hint_channels=3, model_channels=320, context_dim=768,
                      prefix="control_model."):
    """(key, shape) list of an SD1.5 ControlNet in the original ldm/cldm layout (`control_model.` prefix).

    The encoder half of the UNet `ldm_unet_shapes(model_channels, context_dim, **layout)` describes (time_embed,
    input_blocks, middle_block) plus what cldm adds: input_hint_block (convs hint_channels -> 16 -> 16 -> 32 ->
    32 -> 96 -> 96 -> 256 -> model_channels, three of them stride 2), one 1x1 zero conv per input block
    (`zero_convs.N.0`) and `middle_block_out.0`. layout: an SD15_LAYOUTS name or a dict of ldm_unet_shapes
    arguments; the default matches write_sd15_checkpoint(layout="animatediff"). ComfyUI's ControlNetLoader
    detects the config from these keys (comfy.model_detection with this prefix); SD15 matches (320 model
    channels, context 768, conv proj_in), which supplies the 8 heads cldm needs, so keep model_channels 320,
    context_dim 768 and at least one transformer on an input level. The middle block must exist: depth >= 1
    (ResBlock, transformer, ResBlock) or 0 (then cldm builds a single ResBlock, and so does this list).
    """
    kw = _layout_kwargs(layout)
    if kw.get("middle") is None:
        raise ValueError("a cldm ControlNet always has a middle block: layout needs middle >= 0")
    unet = ldm_unet_shapes(model_channels=model_channels, context_dim=context_dim, prefix="", **kw)
    keep = ("time_embed.", "input_blocks.", "middle_block.0." if kw["middle"] == 0 else "middle_block.")
    out = [(k, s) for k, s in unet if k.startswith(keep)]
    chans = [model_channels] + list(CLDM_HINT_CHANNELS)
    hint = []
    for i, (ci, co) in enumerate(zip([hint_channels] + chans[1:], chans[1:] + [model_channels])):
        hint += [(f"input_hint_block.{2 * i}.weight", (co, ci, 3, 3)), (f"input_hint_block.{2 * i}.bias", (co,))]
    blocks = sorted({int(k.split(".")[1]) for k, _ in out if k.startswith("input_blocks.")})
    zero = []
    for n in blocks:
        c = _block_out_channels(out, f"input_blocks.{n}.")
        zero += [(f"zero_convs.{n}.0.weight", (c, c, 1, 1)), (f"zero_convs.{n}.0.bias", (c,))]
    c_mid = dict(out)["middle_block.0.out_layers.3.weight"][0]
    zero += [("middle_block_out.0.weight", (c_mid, c_mid, 1, 1)), ("middle_block_out.0.bias", (c_mid,))]
    return [(prefix + k, s) for k, s in out + hint + zero]


def controlnet_sd(layout="animatediff", hint_channels=3, seed=1, dtype=torch.float16, prefix="control_model."):
    """Random-weight SD1.5 ControlNet state dict (controlnet_shapes), fp16 by default as most released files.

    Zero convs are random like everything else (not zero as at the start of training), so applying it changes
    the result. layout "animatediff": 37.4 M parameters (71 MiB in fp16), the input_hint_block 1.09 M of them.
    """
    return materialize(controlnet_shapes(layout, hint_channels, prefix=prefix), seed, dtype)


def controlnet_diff_sd(layout="animatediff", hint_channels=3, seed=1, base=None, base_seed=0, dtype=torch.float16):
    """A "diff" ControlNet (for DiffControlNetLoader): the `difference` key, and every weight that has a
    counterpart in the model (`control_model.X` <-> `model.diffusion_model.X`: time_embed, input_blocks,
    middle_block) stored as controlnet_sd(...) minus the model's weight; the rest (input_hint_block, zero convs,
    middle_block_out) as is. ComfyUI adds the model's weights back at load (comfy.controlnet
    load_controlnet_state_dict), so the loaded ControlNet equals controlnet_sd(layout, hint_channels, seed) up
    to fp16 rounding of the difference and of the sum.

    base: the model's state dict with checkpoint keys (`model.diffusion_model.*`), e.g. the checkpoint file
    loaded; None: write_sd15_checkpoint(seed=base_seed, layout=layout)'s UNet, regenerated (same values).
    """
    target = controlnet_sd(layout, hint_channels, seed, dtype=None)
    model_keys = {"model.diffusion_model." + k[len("control_model."):]: k for k in target}
    if base is None:  # only the UNet tensors that have a ControlNet counterpart, as write_sd15_checkpoint has them
        unet = ldm_unet_shapes(model_channels=320, context_dim=768, **_layout_kwargs(layout))
        base = materialize([(k, s) for k, s in unet if k in model_keys], base_seed, torch.float16)
    out = {}
    for model_key, key in model_keys.items():
        t = target[key]
        if model_key in base:
            t = t - base[model_key].float()
        out[key] = t.to(dtype) if dtype is not None else t
    out["difference"] = torch.tensor(1.0)
    return out


def t2i_adapter_shapes(c=32, hint_channels=3, ksize=1, use_conv=False):
    """(key, shape) list of a T2I-Adapter in the original TencentARC layout (`conv_in`, `body.N.*`), the one
    comfy.controlnet.load_t2i_adapter reads into comfy.t2i_adapter.adapter.Adapter (nums_rb 2, sk True):
    levels with channels [c, 2c, 4c, 4c], two ResnetBlocks each (`in_conv` where the channels change,
    `block1` 3x3, `block2` ksize x ksize, `down_opt.op` 3x3 stride 2 on levels 1-3 only when use_conv,
    otherwise an average pool without weights). The pixel unshuffle by 8 makes conv_in's input
    hint_channels * 64 (released SD1.x adapters: c 320, ksize 1, no down convs, 3 or 1 hint channels).

    Its features are added after UNet input blocks 2, 5, 8, 11: a 4-level, 2-ResBlock SD1.5-structured UNet
    with level channels (c, 2c, 4c, 4c), e.g. comfy_models.tiny_sd15_model(channels=(32, 64, 128, 128)) for c 32.
    """
    cin = hint_channels * 64
    if cin in (256, 768):
        raise ValueError(f"conv_in with {cin} input channels is read as an SDXL adapter by ComfyUI")
    chans = [c, 2 * c, 4 * c, 4 * c]
    out = [("conv_in.weight", (c, cin, 3, 3)), ("conv_in.bias", (c,))]
    for i, co in enumerate(chans):
        for j in range(2):
            p, ci = f"body.{2 * i + j}.", chans[i - 1] if (i and j == 0) else co
            if i and j == 0 and use_conv:
                out += [(p + "down_opt.op.weight", (ci, ci, 3, 3)), (p + "down_opt.op.bias", (ci,))]
            if ci != co:
                out += [(p + "in_conv.weight", (co, ci, ksize, ksize)), (p + "in_conv.bias", (co,))]
            out += [(p + "block1.weight", (co, co, 3, 3)), (p + "block1.bias", (co,)),
                    (p + "block2.weight", (co, co, ksize, ksize)), (p + "block2.bias", (co,))]
    return out


def t2i_adapter_sd(c=32, hint_channels=3, ksize=1, use_conv=False, seed=2, dtype=torch.float16):
    """Random-weight T2I-Adapter state dict (t2i_adapter_shapes); c 32, ksize 1: 0.82 M parameters (1.6 MiB fp16)."""
    return materialize(t2i_adapter_shapes(c, hint_channels, ksize, use_conv), seed, dtype)


# ------------------------------------------------------------------------------------------ hint frames

HINT_FRAME_SCALE = 64  # frame i of hint_frames is the constant (i + 1) / 64: indices 0..63 fit in [0, 1]


def hint_frames(frames, height=48, width=64, channels=3):
    """ComfyUI IMAGE batch [frames, height, width, channels] (float32) whose frame i is the constant
    (i + 1) / 64 in every channel, so tests/builders.py's hint_frame_indices can tell, from any hint tensor ComfyUI
    derives from it (resized, batched, cast to fp16, pixel-unshuffled), which frames it holds. frames <= 63."""
    if not 0 < frames < HINT_FRAME_SCALE:
        raise ValueError(f"1 to {HINT_FRAME_SCALE - 1} frames")
    values = (torch.arange(frames, dtype=torch.float32) + 1) / HINT_FRAME_SCALE
    return values.view(frames, 1, 1, 1).expand(frames, height, width, channels).contiguous()


def save_hint_frames(path, frames, height=48, width=64):
    """hint_frames as an animated image file (the format from the extension) that ComfyUI's LoadImage reads as one
    IMAGE batch, frame by frame: lossless .webp does on every ComfyUI (0.33's LoadImage reads only the first page
    of a .tiff). Returns path."""
    from PIL import Image
    images = [Image.fromarray((f.numpy() * 255).round().astype("uint8")) for f in hint_frames(frames, height, width)]
    images[0].save(path, save_all=True, append_images=images[1:], lossless=True)
    return path


# ------------------------------------------------------------------------------- reference videos

def moving_square_frames(frames=10, height=64, width=64, step=4, side=16):
    """uint8 RGB frames [frames, height, width, 3]: a white square on grey moving right by `step` px a frame."""
    import numpy as np
    video = np.full((frames, height, width, 3), 96, dtype=np.uint8)
    for f in range(frames):
        x = (f * step) % (width - side)
        video[f, (height - side) // 2:(height + side) // 2, x:x + side] = 255
    return video


def write_video(path, frames, fps=8):
    """`frames` (uint8 RGB [n, h, w, 3]) as an .mp4 (mp4v) or .avi (MJPG) file, written with opencv."""
    import cv2
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if str(path).endswith(".avi") else "mp4v"))
    writer = cv2.VideoWriter(str(path), fourcc, fps, (frames.shape[2], frames.shape[1]))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def save_animation(path, frames):
    """`frames` (uint8 RGB [n, h, w, 3]) as a lossless animated WEBP that LoadImage reads as one IMAGE batch."""
    from PIL import Image
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], lossless=True)
    return path
