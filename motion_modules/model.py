"""AnimateDiff motion module (Guo et al. 2023, arXiv 2307.04725), pure torch.

A motion module is a temporal transformer inserted after a UNet block: at every spatial position it lets the
frames of a clip attend to each other, with sinusoidal frame positions added before each attention. Its output
is added to its input (a residual), so a zero `proj_out` leaves the image model untouched.

Attribute names are the checkpoint's key names (`down_blocks.0.motion_modules.0.temporal_transformer.norm.weight`),
so a converted state dict loads as it is. Constructors take `dtype, device, operations` like ComfyUI's own layers;
`attention(q, k, v, heads)` takes and returns [batch, tokens, heads * head_dim] tensors.

GroupNorm statistics follow the original code of each format: per frame (SD1.5 v1/v2/v3), or across the frames
of a clip (SDXL beta) with `norm_across_frames`.
"""
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def sinusoid_table(rows, channels):
    """pe[p, 2i] = sin(p * 10000^(-2i/C)), pe[p, 2i+1] = cos(p * 10000^(-2i/C)); shape [1, rows, C]."""
    position = torch.arange(rows, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, channels, 2, dtype=torch.float32) * (-math.log(10000.0) / channels))
    pe = torch.zeros(rows, channels)
    pe[:, 0::2] = torch.sin(position * frequency)
    pe[:, 1::2] = torch.cos(position * frequency)
    return pe[None]


def sdpa(q, k, v, heads):
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    return rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)")


class PositionalEncoding(nn.Module):
    def __init__(self, channels, rows, dtype=None, device=None):
        super().__init__()
        self.register_buffer("pe", sinusoid_table(rows, channels).to(device=device, dtype=dtype))


class TemporalAttention(nn.Module):
    """Self-attention over the frames at each spatial position ("VersatileAttention", Temporal_Self)."""

    def __init__(self, channels, pe_rows, heads, dtype, device, operations):
        super().__init__()
        self.heads = heads
        self.to_q = operations.Linear(channels, channels, bias=False, dtype=dtype, device=device)
        self.to_k = operations.Linear(channels, channels, bias=False, dtype=dtype, device=device)
        self.to_v = operations.Linear(channels, channels, bias=False, dtype=dtype, device=device)
        self.to_out = nn.ModuleList([operations.Linear(channels, channels, dtype=dtype, device=device)])
        self.pos_encoder = PositionalEncoding(channels, pe_rows, dtype=dtype, device=device)

    def forward(self, x, frames, attention, motion_scale):
        n = x.shape[1]
        x = rearrange(x, "(b f) n c -> (b n) f c", f=frames) + self.pos_encoder.pe[:, :frames].to(x)
        out = attention(self.to_q(x), self.to_k(x) * motion_scale, self.to_v(x), self.heads)
        return rearrange(self.to_out[0](out), "(b n) f c -> (b f) n c", n=n)


class GEGLU(nn.Module):
    def __init__(self, channels, hidden, dtype, device, operations):
        super().__init__()
        self.proj = operations.Linear(channels, 2 * hidden, dtype=dtype, device=device)

    def forward(self, x):
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class TemporalTransformerBlock(nn.Module):
    def __init__(self, channels, pe_rows, attention_blocks, heads, dtype, device, operations):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [TemporalAttention(channels, pe_rows, heads, dtype, device, operations) for _ in range(attention_blocks)])
        self.norms = nn.ModuleList(
            [operations.LayerNorm(channels, dtype=dtype, device=device) for _ in range(attention_blocks)])
        # ff.net.1 is the training-time dropout: nothing to store, nothing to do at inference.
        self.ff = nn.Module()
        self.ff.net = nn.Sequential(GEGLU(channels, 4 * channels, dtype, device, operations), nn.Identity(),
                                    operations.Linear(4 * channels, channels, dtype=dtype, device=device))
        self.ff_norm = operations.LayerNorm(channels, dtype=dtype, device=device)

    def forward(self, x, frames, attention, motion_scale):
        for attn, norm in zip(self.attention_blocks, self.norms):
            x = x + attn(norm(x), frames, attention, motion_scale)
        return x + self.ff.net(self.ff_norm(x))


class TemporalTransformer3DModel(nn.Module):
    def __init__(self, channels, pe_rows, transformer_blocks, attention_blocks, heads, norm_across_frames,
                 dtype, device, operations):
        super().__init__()
        self.norm_across_frames = norm_across_frames
        self.norm = operations.GroupNorm(32, channels, eps=1e-6, affine=True, dtype=dtype, device=device)
        self.proj_in = operations.Linear(channels, channels, dtype=dtype, device=device)
        self.transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(channels, pe_rows, attention_blocks, heads, dtype, device, operations)
             for _ in range(transformer_blocks)])
        self.proj_out = operations.Linear(channels, channels, dtype=dtype, device=device)

    def forward(self, x, frames, attention, motion_scale, effect):
        # x: [(b f), c, h, w], the frames of each clip contiguous
        height = x.shape[2]
        if self.norm_across_frames:
            h = rearrange(self.norm(rearrange(x, "(b f) c h w -> b c (f h) w", f=frames)),
                          "b c (f h) w -> (b f) (h w) c", f=frames)
        else:
            h = rearrange(self.norm(x), "bf c h w -> bf (h w) c")
        h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, frames, attention, motion_scale)
        return x + effect * rearrange(self.proj_out(h), "bf (h w) c -> bf c h w", h=height)


class VanillaTemporalModule(nn.Module):
    """One motion module; `forward(x [(b f), c, h, w], frames)` returns the same shape. `motion_scale` is a float
    or one per frame and position, [(b h w), f, 1] (as the keys are laid out); `effect` a float or [(b f), 1, h, w]."""

    def __init__(self, channels, pe_rows, transformer_blocks=1, attention_blocks=2, heads=8,
                 norm_across_frames=False, dtype=None, device=None, operations=nn):
        super().__init__()
        self.temporal_transformer = TemporalTransformer3DModel(
            channels, pe_rows, transformer_blocks, attention_blocks, heads, norm_across_frames,
            dtype, device, operations)

    def forward(self, x, frames, attention=sdpa, motion_scale=1.0, effect=1.0):
        return self.temporal_transformer(x, frames, attention, motion_scale, effect)


class MotionBlock(nn.Module):
    def __init__(self, channels, count, **kwargs):
        super().__init__()
        self.motion_modules = nn.ModuleList([VanillaTemporalModule(channels, **kwargs) for _ in range(count)])


class MotionModel(nn.Module):
    """Every motion module of one file. `down`/`up`: (channels, modules) per UNet level, `mid`: channels or None."""

    def __init__(self, down, up, mid, pe_rows, transformer_blocks=1, attention_blocks=2, heads=8,
                 norm_across_frames=False, dtype=None, device=None, operations=nn):
        super().__init__()
        kwargs = dict(pe_rows=pe_rows, transformer_blocks=transformer_blocks, attention_blocks=attention_blocks,
                      heads=heads, norm_across_frames=norm_across_frames, dtype=dtype, device=device,
                      operations=operations)
        self.down_blocks = nn.ModuleList([MotionBlock(c, n, **kwargs) for c, n in down])
        self.up_blocks = nn.ModuleList([MotionBlock(c, n, **kwargs) for c, n in up])
        self.mid_block = MotionBlock(mid, 1, **kwargs) if mid else None


class LoRA(nn.Module):
    """A trainable low-rank difference for one weight, `weight + up @ down` (the MotionLoRA and domain-adapter
    files' update, no alpha): down [rank, in] starts normal with std 1/rank, up [out, rank] as zeros."""

    def __init__(self, weight, rank, generator):
        super().__init__()
        self.down = nn.Parameter(torch.randn(rank, weight.shape[1], generator=generator) / rank)
        self.up = nn.Parameter(torch.zeros(weight.shape[0], rank))

    def forward(self, weight):
        return weight + (self.up @ self.down).to(weight)

    def move_to(self, device):
        self.to(device)
        return sum(p.nbytes for p in self.parameters())
