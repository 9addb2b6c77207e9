"""v1 motion modules' clip norms. AnimateDiff v1 ran on an SD1.5 UNet that was not "inflated": its ResBlocks' and
output's GroupNorms took their statistics over all frames of the 5-D clip, not per image. While a v1 module is
injected, those norms are wrapped in `ClipGroupNorm`, which normalises [(b f), c, h, w] over each clip's f frames.

The norm needs the frames per clip, which only the UNet's call knows (batch and cond/uncond split). A
DIFFUSION_MODEL wrapper sets it for the duration of that call in a ContextVar: a plain attribute would be shared by
concurrent samplings of the same model, and ComfyUI passes nothing else down to a GroupNorm.
"""
import contextvars

import torch
import torch.nn.functional as F
from einops import rearrange

import comfy.ops
import comfy.patcher_extension
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

from . import frames as frame_calls

KEY = "animatediff_clip_norms"
CLIP_FRAMES = contextvars.ContextVar("animatediff_clip_frames")


class ClipGroupNorm(torch.nn.Module):
    """Wraps one of the UNet's GroupNorms (while injected) to take its statistics over all frames of each clip."""

    def __init__(self, norm):
        super().__init__()
        self.norm = norm

    def forward(self, x):
        frames, norm = CLIP_FRAMES.get(), self.norm
        weight, bias = comfy.ops.cast_bias_weight(norm, x)  # with the norm's weight functions (training)
        # [(b f), c, h, w] -> [b, c, (f h), w]: one group's statistics span the clip
        h = F.group_norm(rearrange(x, "(b f) c h w -> b c (f h) w", f=frames), norm.num_groups, weight, bias,
                         norm.eps)
        return rearrange(h, "b c (f h) w -> (b f) c h w", f=frames)


def attach(model_patcher):
    """Clip norms on `model_patcher` (a clone the caller owns) while it is loaded."""
    model_patcher.set_injections(KEY, [comfy.patcher_extension.PatcherInjection(inject=inject, eject=eject)])
    model_patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, KEY, scope_clip_frames)


def norm_sequences(unet):
    """The layer sequences that start with a GroupNorm v1's UNet normalises over the clip: ResBlocks', output's."""
    resblocks = [m for m in unet.modules() if isinstance(m, ResBlock)]
    return [r.in_layers for r in resblocks] + [r.out_layers for r in resblocks] + [unet.out]


def inject(model_patcher):
    for layers in norm_sequences(model_patcher.model.diffusion_model):
        if not isinstance(layers[0], ClipGroupNorm):
            layers[0] = ClipGroupNorm(layers[0])


def eject(model_patcher):
    for layers in norm_sequences(model_patcher.model.diffusion_model):
        if isinstance(layers[0], ClipGroupNorm):
            layers[0] = layers[0].norm


def scope_clip_frames(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
    token = CLIP_FRAMES.set(frame_calls.per_clip(x, transformer_options))
    try:
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
    finally:
        CLIP_FRAMES.reset(token)
