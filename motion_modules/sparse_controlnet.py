"""SparseCtrl condition encoder (Guo et al. 2023, arXiv 2311.16933), pure torch.

A ControlNet for AnimateDiff: a copy of the SD1.5 UNet's encoder (down blocks and middle block) with a motion
module after each layer of its down blocks, so the sparse condition spreads over the frames of the clip. Its
noisy-latent input is zeroed (the official encoders are trained so): all it knows comes from the condition, which
holds the given frames at their indices and zeros elsewhere, with a mask channel (1 on given frames) concatenated.
The condition is embedded (RGB: one conv on VAE latents; scribble: a small strided conv stack on pixels), added
after `conv_in`, and each down-block output and the middle block's goes through a 1x1 zero conv: residuals for
the UNet's skip connections ("output", 12 for SD1.5) and its middle block ("middle"), as a ControlNet's.

Attribute names are the checkpoint's keys: diffusers' UNet names (`down_blocks.0.resnets.0.conv1.weight`), and
the AnimateDiff motion-module names (`down_blocks.0.motion_modules.0.temporal_transformer.norm.weight`), each
motion module with one temporal self-attention. `attention(q, k, v, heads)` takes and returns
[batch, tokens, heads * head_dim] tensors; constructors take `dtype, device, operations` like ComfyUI's layers.
"""
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .model import GEGLU, VanillaTemporalModule, sdpa


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout, emb_channels, dtype, device, operations):
        super().__init__()
        self.norm1 = operations.GroupNorm(32, cin, eps=1e-5, dtype=dtype, device=device)
        self.conv1 = operations.Conv2d(cin, cout, 3, padding=1, dtype=dtype, device=device)
        self.time_emb_proj = operations.Linear(emb_channels, cout, dtype=dtype, device=device)
        self.norm2 = operations.GroupNorm(32, cout, eps=1e-5, dtype=dtype, device=device)
        self.conv2 = operations.Conv2d(cout, cout, 3, padding=1, dtype=dtype, device=device)
        self.conv_shortcut = operations.Conv2d(cin, cout, 1, dtype=dtype, device=device) if cin != cout else None

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x))) + self.time_emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Attention(nn.Module):
    def __init__(self, channels, context_channels, heads, dtype, device, operations):
        super().__init__()
        self.heads = heads
        self.to_q = operations.Linear(channels, channels, bias=False, dtype=dtype, device=device)
        self.to_k = operations.Linear(context_channels, channels, bias=False, dtype=dtype, device=device)
        self.to_v = operations.Linear(context_channels, channels, bias=False, dtype=dtype, device=device)
        self.to_out = nn.ModuleList([operations.Linear(channels, channels, dtype=dtype, device=device)])

    def forward(self, x, context, attention):
        return self.to_out[0](attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads))


class TransformerBlock(nn.Module):
    def __init__(self, channels, context_channels, heads, dtype, device, operations):
        super().__init__()
        self.norm1 = operations.LayerNorm(channels, dtype=dtype, device=device)
        self.attn1 = Attention(channels, channels, heads, dtype, device, operations)
        self.norm2 = operations.LayerNorm(channels, dtype=dtype, device=device)
        self.attn2 = Attention(channels, context_channels, heads, dtype, device, operations)
        self.norm3 = operations.LayerNorm(channels, dtype=dtype, device=device)
        self.ff = nn.Module()
        self.ff.net = nn.Sequential(GEGLU(channels, 4 * channels, dtype, device, operations), nn.Identity(),
                                    operations.Linear(4 * channels, channels, dtype=dtype, device=device))

    def forward(self, x, context, attention):
        h = self.norm1(x)
        x = x + self.attn1(h, h, attention)
        x = x + self.attn2(self.norm2(x), context, attention)
        return x + self.ff.net(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Self- and cross-attention over each frame's pixels (SD1.5: conv projections, one block)."""

    def __init__(self, channels, context_channels, heads, dtype, device, operations):
        super().__init__()
        self.norm = operations.GroupNorm(32, channels, eps=1e-6, dtype=dtype, device=device)
        self.proj_in = operations.Conv2d(channels, channels, 1, dtype=dtype, device=device)
        self.transformer_blocks = nn.ModuleList(
            [TransformerBlock(channels, context_channels, heads, dtype, device, operations)])
        self.proj_out = operations.Conv2d(channels, channels, 1, dtype=dtype, device=device)

    def forward(self, x, context, attention):
        height = x.shape[2]
        h = rearrange(self.proj_in(self.norm(x)), "bf c h w -> bf (h w) c")
        h = self.transformer_blocks[0](h, context, attention)
        return x + self.proj_out(rearrange(h, "bf (h w) c -> bf c h w", h=height))


class Downsample(nn.Module):
    def __init__(self, channels, dtype, device, operations):
        super().__init__()
        self.conv = operations.Conv2d(channels, channels, 3, stride=2, padding=1, dtype=dtype, device=device)

    def forward(self, x):
        return self.conv(x)


class DownBlock(nn.Module):
    """Two layers of ResNet (+ spatial transformer) + motion module, then a Downsample except at the last level."""

    def __init__(self, cin, cout, emb_channels, context_channels, attention, downsample, heads, pe_rows, dtype,
                 device, operations):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(c, cout, emb_channels, dtype, device, operations)
                                      for c in (cin, cout)])
        self.attentions = nn.ModuleList([SpatialTransformer(cout, context_channels, heads, dtype, device, operations)
                                         for _ in range(2)]) if attention else None
        self.motion_modules = nn.ModuleList([VanillaTemporalModule(cout, pe_rows, attention_blocks=1, heads=heads,
                                                                   dtype=dtype, device=device, operations=operations)
                                             for _ in range(2)])
        self.downsamplers = nn.ModuleList([Downsample(cout, dtype, device, operations)]) if downsample else None

    def forward(self, x, emb, context, frames, attention):
        states = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, emb)
            if self.attentions is not None:
                x = self.attentions[i](x, context, attention)
            x = self.motion_modules[i](x, frames, attention)
            states.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            states.append(x)
        return x, states


class MidBlock(nn.Module):
    def __init__(self, channels, emb_channels, context_channels, heads, dtype, device, operations):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, emb_channels, dtype, device, operations)
                                      for _ in range(2)])
        self.attentions = nn.ModuleList([SpatialTransformer(channels, context_channels, heads, dtype, device,
                                                            operations)])

    def forward(self, x, emb, context, attention):
        x = self.resnets[0](x, emb)
        return self.resnets[1](self.attentions[0](x, context, attention), emb)


class ConditionEmbedding(nn.Module):
    """The scribble encoder's pixel-to-latent embedding: conv, then (conv, strided conv) x 3, SiLU after each."""

    def __init__(self, cin, cout, widths, dtype, device, operations):
        super().__init__()
        self.conv_in = operations.Conv2d(cin, widths[0], 3, padding=1, dtype=dtype, device=device)
        self.blocks = nn.ModuleList()
        for a, b in zip(widths[:-1], widths[1:]):
            self.blocks.append(operations.Conv2d(a, a, 3, padding=1, dtype=dtype, device=device))
            self.blocks.append(operations.Conv2d(a, b, 3, padding=1, stride=2, dtype=dtype, device=device))
        self.conv_out = operations.Conv2d(widths[-1], cout, 3, padding=1, dtype=dtype, device=device)

    def forward(self, x):
        x = F.silu(self.conv_in(x))
        for block in self.blocks:
            x = F.silu(block(x))
        return self.conv_out(x)


class TimestepEmbedding(nn.Module):
    def __init__(self, channels, emb_channels, dtype, device, operations):
        super().__init__()
        self.channels = channels
        self.linear_1 = operations.Linear(channels, emb_channels, dtype=dtype, device=device)
        self.linear_2 = operations.Linear(emb_channels, emb_channels, dtype=dtype, device=device)

    def forward(self, timesteps):
        # [cos(t w_i), sin(t w_i)], w_i = 10000^(-i / half): the UNet's timestep features
        half = self.channels // 2
        frequency = torch.exp(-math.log(10000.0) * torch.arange(half, device=timesteps.device) / half)
        angles = timesteps.float()[:, None] * frequency[None]
        features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).to(self.linear_1.weight.dtype)
        return self.linear_2(F.silu(self.linear_1(features)))


class SparseControlNet(nn.Module):
    """`condition_channels`: 4 (RGB: VAE latents, one-conv embedding) or 3 (scribble: pixels, strided embedding),
    the mask channel not counted. `forward` returns {"output": [residual per down-block state], "middle": [...]}."""

    def __init__(self, channels=(320, 640, 1280, 1280), condition_channels=4, latent_condition=True,
                 context_channels=768, heads=8, pe_rows=32, embedding_widths=(16, 32, 96, 256), dtype=None,
                 device=None, operations=nn):
        super().__init__()
        self.dtype, self.latent_condition, self.context_channels = dtype, latent_condition, context_channels
        emb_channels = 4 * channels[0]
        self.conv_in = operations.Conv2d(4, channels[0], 3, padding=1, dtype=dtype, device=device)
        if latent_condition:
            self.controlnet_cond_embedding = operations.Conv2d(condition_channels + 1, channels[0], 3, padding=1,
                                                               dtype=dtype, device=device)
        else:
            self.controlnet_cond_embedding = ConditionEmbedding(condition_channels + 1, channels[0], embedding_widths,
                                                                dtype, device, operations)
        self.time_embedding = TimestepEmbedding(channels[0], emb_channels, dtype, device, operations)
        last = len(channels) - 1
        self.down_blocks = nn.ModuleList([
            DownBlock(channels[max(i - 1, 0)], c, emb_channels, context_channels, i < last, i < last, heads, pe_rows,
                      dtype, device, operations) for i, c in enumerate(channels)])
        # one zero conv for conv_in's output and one per down-block state
        widths = [channels[0]] + [c for i, c in enumerate(channels) for _ in range(2 if i == last else 3)]
        self.controlnet_down_blocks = nn.ModuleList([operations.Conv2d(c, c, 1, dtype=dtype, device=device)
                                                     for c in widths])
        self.mid_block = MidBlock(channels[-1], emb_channels, context_channels, heads, dtype, device, operations)
        self.controlnet_mid_block = operations.Conv2d(channels[-1], channels[-1], 1, dtype=dtype, device=device)

    def forward(self, x, condition, timesteps, context, frames, attention=sdpa):
        # x: the noisy latents [(b f), 4, h, w], zeroed; condition: [(b f), c + 1, h or 8h, w or 8w], the mask last
        emb = self.time_embedding(timesteps)
        h = self.conv_in(torch.zeros_like(x)) + self.controlnet_cond_embedding(condition)
        states = [h]
        for block in self.down_blocks:
            h, block_states = block(h, emb, context, frames, attention)
            states += block_states
        h = self.mid_block(h, emb, context, attention)
        return {"output": [conv(s) for conv, s in zip(self.controlnet_down_blocks, states)],
                "middle": [self.controlnet_mid_block(h)]}
