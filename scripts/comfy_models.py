"""SD1.5 / SDXL models built in code with ComfyUI's own classes, at any size: the tests' tiny models and the
benchmarks' models.

`comfy.supported_models.SD15` / `SDXL` build the model (`get_model`, as comfy.sd does for a checkpoint),
the UNet gets deterministic random weights (weights.random_tensor, keyed by parameter name), and the
result is wrapped in `comfy.model_patcher.ModelPatcher` exactly as `comfy.sd.load_state_dict_guess_config`
wraps a loaded checkpoint. Import this only after `comfy.cli_args.args` is set (comfyui_path.use_comfyui()).

Level channels are model_channels * channel_mult: the defaults give (32, 64, 64, 64) for SD1.5 and
(32, 64, 64) for SDXL, i.e. the shapes of weights.motion_module_sd(..., channels=level_channels(model)).
"""
import torch

import comfy.model_management
import comfy.model_patcher
import comfy.supported_models

import weights


def unet_config(model_channels, channel_mult, num_res_blocks, depth_per_level, middle_depth, context_dim,
                use_linear_in_transformer, adm_in_channels=None, in_channels=4, out_channels=4):
    """A complete ComfyUI UNet config (the dict model_detection.detect_unet_config would produce).

    depth_per_level: transformer depth of every ResBlock of a level (input and output side alike).
    middle_depth: transformer depth of the middle block (-1: ResBlock, ResBlock without transformer).
    """
    t_in, t_out = [], []
    for depth in depth_per_level:
        t_in += [depth] * num_res_blocks
        t_out += [depth] * (num_res_blocks + 1)  # ComfyUI reads this list from the end (deepest level first)
    cfg = {
        "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
        "adm_in_channels": adm_in_channels, "in_channels": in_channels, "out_channels": out_channels,
        "model_channels": model_channels, "num_res_blocks": [num_res_blocks] * len(channel_mult),
        "transformer_depth": t_in, "transformer_depth_output": t_out, "channel_mult": list(channel_mult),
        "transformer_depth_middle": middle_depth, "use_linear_in_transformer": use_linear_in_transformer,
        "context_dim": context_dim, "use_temporal_resblock": False, "use_temporal_attention": False,
    }
    if adm_in_channels is not None:
        cfg["num_classes"] = "sequential"
    return cfg


def init_weights(module, seed=0):
    """Deterministic random weights (weights.random_tensor's rules) for every parameter, keyed by its name."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(weights.random_tensor(name, p.shape, seed).to(p.dtype))
    return module


def build(model_config_cls, cfg, seed=0, dtype=torch.float32):
    """Instantiate `model_config_cls(cfg)` the way comfy.sd does and wrap it in a ModelPatcher."""
    model_config = model_config_cls(cfg)
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, "", device=comfy.model_management.unet_offload_device())
    init_weights(model.diffusion_model, seed)
    model.diffusion_model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def _from_channels(channels, model_channels, channel_mult):
    if channels is None:
        return model_channels, tuple(channel_mult)
    channels = tuple(channels)
    if any(c % channels[0] for c in channels):
        raise ValueError(f"level channels {channels} must be multiples of the first level's")
    return channels[0], tuple(c // channels[0] for c in channels)


def tiny_sd15_model(channels=None, model_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                    transformer_levels=(0, 1, 2), middle_depth=1, context_dim=768, seed=0, dtype=torch.float32):
    """Tiny SD1.5 (`comfy.supported_models.SD15`, model_base.BaseModel, EPS): SD1.5's block structure with
    depth-1 conv-projection transformers on `transformer_levels` (SD1.5: levels 0-2) and in the middle
    block, 8 heads (SD15's fixed num_heads), cross-attention context `context_dim` (768 as SD1.5; the model
    itself accepts any width, matching whatever conditioning the test feeds it). `channels`, when given,
    sets the per-level channels directly (e.g. (32, 64, 64, 64)). Returns a ModelPatcher."""
    model_channels, channel_mult = _from_channels(channels, model_channels, channel_mult)
    depth = [1 if level in transformer_levels else 0 for level in range(len(channel_mult))]
    cfg = unet_config(model_channels, channel_mult, num_res_blocks, depth, middle_depth, context_dim,
                      use_linear_in_transformer=False)
    return build(comfy.supported_models.SD15, cfg, seed, dtype)


def tiny_sdxl_model(channels=None, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2, transformer_levels=(1, 2),
                    middle_depth=1, context_dim=2048, adm_in_channels=2816, seed=0, dtype=torch.float32):
    """Tiny SDXL (`comfy.supported_models.SDXL`, model_base.SDXL, EPS): SDXL's 3-level structure with
    depth-1 linear-projection transformers on `transformer_levels` (SDXL: levels 1, 2) and in the middle
    block. SDXL uses 64-channel heads, so levels with transformers need channels that are multiples of 64.
    adm_in_channels 2816 is what model_base.SDXL.encode_adm produces (1280 pooled CLIP-G + 6 * 256 size
    embeddings); context_dim 2048 is SDXL's (CLIP-L + CLIP-G); pass a smaller context_dim when the test
    builds its own conditioning. `channels` as for tiny_sd15_model. Returns a ModelPatcher."""
    model_channels, channel_mult = _from_channels(channels, model_channels, channel_mult)
    depth = [1 if level in transformer_levels else 0 for level in range(len(channel_mult))]
    cfg = unet_config(model_channels, channel_mult, num_res_blocks, depth, middle_depth, context_dim,
                      use_linear_in_transformer=True, adm_in_channels=adm_in_channels)
    return build(comfy.supported_models.SDXL, cfg, seed, dtype)


def level_channels(model_patcher):
    """Per-level channels of a ModelPatcher's UNet (model_channels * channel_mult)."""
    cfg = model_patcher.model.model_config.unet_config
    return tuple(cfg["model_channels"] * m for m in cfg["channel_mult"])
