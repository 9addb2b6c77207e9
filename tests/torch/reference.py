"""Independent functional reference of one AnimateDiff motion module (the forward math of the format notes, §5).

Everything is spelled out on plain tensors taken from a state dict in the AnimateDiff key layout
(`{block}.motion_modules.{m}.temporal_transformer.*`): GroupNorm, LayerNorm, Linear, exact GELU and
multi-head attention (einsum + softmax) are written here, and nothing of the pack is imported.

    r = x
    h = GroupNorm(x)                 per frame, or across the frames of each clip (`norm_across_frames`)
    h = proj_in(h as [(b f), H*W, C])
    for each transformer block, for each attention block a:
        n = LayerNorm_a(h) as [(b H W), f, C] + pe[:f]
        h = h + to_out(MHA_8heads(q = n Wq^T, k = s * n Wk^T, v = n Wv^T))       (s: motion_scale)
    h = h + W2 (u * gelu(g)) + b2,  [u, g] = chunk(W1 ff_norm(h) + b1, 2)
    out = r + effect * proj_out(h) as [(b f), C, H, W]

The original code scales k by nothing: motion_scale = 1 and effect = 1 are the original module.
"""
import math
import re

import torch

GROUPS = 32
GROUP_NORM_EPS = 1e-6
LAYER_NORM_EPS = 1e-5
HEADS = 8


def sinusoid(rows, channels):
    """pe[p, 2i] = sin(p * 10000^(-2i/C)), pe[p, 2i+1] = cos(p * 10000^(-2i/C)); [rows, C], float64."""
    p = torch.arange(rows, dtype=torch.float64)[:, None]
    i = torch.arange(0, channels, 2, dtype=torch.float64)[None, :]
    angle = p * torch.pow(torch.tensor(10000.0, dtype=torch.float64), -i / channels)
    pe = torch.empty(rows, channels, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)
    return pe


def module_prefixes(sd):
    """Every `{block}.motion_modules.{m}.temporal_transformer.` prefix of an AnimateDiff-layout state dict."""
    found = {m.group(0) for k in sd if (m := re.match(r".*?\.motion_modules\.\d+\.temporal_transformer\.", k))}
    return sorted(found)


def get_module(model, prefix):
    """The module at a state-dict prefix (`down_blocks.1.motion_modules.0.temporal_transformer.`) of the pack's
    MotionModel or diffusers' MotionAdapter (the same tree)."""
    parts = prefix.split(".")
    if parts[0] == "mid_block":
        return model.mid_block.motion_modules[int(parts[2])]
    return getattr(model, parts[0])[int(parts[1])].motion_modules[int(parts[3])]


def group_norm(x, weight, bias, frames=None, groups=GROUPS, eps=GROUP_NORM_EPS):
    """GroupNorm of x [(b f), C, H, W]. frames=None: statistics per frame; else over all frames of each clip."""
    n, c, hgt, wid = x.shape
    if frames is None:
        g = x.reshape(n, groups, c // groups, hgt, wid)
        dims = (2, 3, 4)
    else:
        g = x.reshape(n // frames, frames, groups, c // groups, hgt, wid)
        dims = (1, 3, 4, 5)
    mean = g.mean(dim=dims, keepdim=True)
    var = ((g - mean) ** 2).mean(dim=dims, keepdim=True)
    y = ((g - mean) / torch.sqrt(var + eps)).reshape(n, c, hgt, wid)
    return y * weight[None, :, None, None] + bias[None, :, None, None]


def layer_norm(x, weight, bias, eps=LAYER_NORM_EPS):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def linear(x, weight, bias=None):
    y = torch.einsum("...i,oi->...o", x, weight)
    return y if bias is None else y + bias


def gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def attention(q, k, v, heads=HEADS):
    """Multi-head attention on [batch, tokens, heads * d]: softmax(q k^T / sqrt(d)) v per head."""
    b, n, c = q.shape
    d = c // heads
    q, k, v = (t.reshape(b, n, heads, d) for t in (q, k, v))
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(d)
    weights = torch.softmax(scores, dim=-1)
    return torch.einsum("bhij,bjhd->bihd", weights, v).reshape(b, n, c)


def motion_module(sd, prefix, x, frames, norm_across_frames=False, motion_scale=1.0, effect=1.0, heads=HEADS):
    """One motion module (state-dict keys under `prefix`, ending in `temporal_transformer.`) applied to
    x [(b f), C, H, W], frames contiguous per clip. Computes in x's dtype (pass float64 for a ground truth).
    The positional table is the stored `pos_encoder.pe` where there is one, else the sinusoid formula."""
    def p(name):
        return sd[prefix + name].to(x.dtype)

    bf, c, hgt, wid = x.shape
    b = bf // frames
    assert b * frames == bf, (bf, frames)
    h = group_norm(x, p("norm.weight"), p("norm.bias"), frames if norm_across_frames else None)
    h = h.permute(0, 2, 3, 1).reshape(bf, hgt * wid, c)              # [(b f), (H W), C]
    h = linear(h, p("proj_in.weight"), p("proj_in.bias"))
    blocks = sorted({int(m.group(1)) for k in sd
                     if (m := re.match(re.escape(prefix) + r"transformer_blocks\.(\d+)\.", k))})
    for t in blocks:
        tb = f"transformer_blocks.{t}."
        attention_blocks = sorted({int(m.group(1)) for k in sd
                                   if (m := re.match(re.escape(prefix + tb) + r"attention_blocks\.(\d+)\.", k))})
        for a in attention_blocks:
            ab = f"{tb}attention_blocks.{a}."
            n = layer_norm(h, p(f"{tb}norms.{a}.weight"), p(f"{tb}norms.{a}.bias"))
            # [(b f), (H W), C] -> [(b H W), f, C]: the frames of one spatial position form a sequence
            n = n.reshape(b, frames, hgt * wid, c).permute(0, 2, 1, 3).reshape(b * hgt * wid, frames, c)
            pe_key = prefix + ab + "pos_encoder.pe"
            pe = sd[pe_key][0].to(x.dtype) if pe_key in sd else sinusoid(frames, c).to(x.dtype)
            n = n + pe[:frames][None]
            q = linear(n, p(ab + "to_q.weight"))
            k = linear(n, p(ab + "to_k.weight")) * motion_scale
            v = linear(n, p(ab + "to_v.weight"))
            o = linear(attention(q, k, v, heads), p(ab + "to_out.0.weight"), p(ab + "to_out.0.bias"))
            o = o.reshape(b, hgt * wid, frames, c).permute(0, 2, 1, 3).reshape(bf, hgt * wid, c)
            h = h + o
        z = layer_norm(h, p(tb + "ff_norm.weight"), p(tb + "ff_norm.bias"))
        u, g = linear(z, p(tb + "ff.net.0.proj.weight"), p(tb + "ff.net.0.proj.bias")).chunk(2, dim=-1)
        h = h + linear(u * gelu(g), p(tb + "ff.net.2.weight"), p(tb + "ff.net.2.bias"))
    h = linear(h, p("proj_out.weight"), p("proj_out.bias"))
    return x + effect * h.reshape(bf, hgt, wid, c).permute(0, 3, 1, 2)


def standardize_per_frame_group(x, groups=GROUPS):
    """x [(b f), C, H, W] shifted and scaled so each (frame, group) slice has mean 0 and variance 1: then
    GroupNorm per frame and across frames see identical statistics. Computed in float64 and returned in x's
    dtype: standardising in fp32 leaves per-frame mean/variance errors of ~1e-7 that attention over 32+
    frames amplifies to ~3e-5 differences between the two statistics."""
    n, c, hgt, wid = x.shape
    g = x.double().reshape(n, groups, -1)
    g = (g - g.mean(dim=-1, keepdim=True)) / g.std(dim=-1, unbiased=False, keepdim=True)
    return g.reshape(n, c, hgt, wid).to(x.dtype)


def frame_varying(b, frames, c, hgt, wid, seed=0, dtype=torch.float32):
    """Input whose per-frame statistics differ strongly (mean and scale change with the frame)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, frames, c, hgt, wid, generator=gen, dtype=torch.float64)
    f = torch.arange(frames, dtype=torch.float64)[None, :, None, None, None]
    x = x * (0.5 + f / max(frames - 1, 1) * 2.5) + (f - frames / 2) * 0.7
    return x.reshape(b * frames, c, hgt, wid).to(dtype)
