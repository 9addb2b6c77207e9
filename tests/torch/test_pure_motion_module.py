"""motion_modules.model against the float64 reference (reference.py), pure torch: every format's file as
weights.py builds it, detected and converted by motion_modules.formats, every module of it on raw frame-varying
input (2 clips, H != W, 1 / 7 / 16 / all positions frames), with the GroupNorm statistics of the format's original
code; effect and motion_scale."""
import functools

import pytest
import torch

import reference
import weights
from motion_modules import formats, model

SD15 = (32, 64, 64, 64)
SDXL = (32, 64, 64)
HEIGHT, WIDTH = 3, 5
CLIPS = 2
# fp32 module against the float64 reference on raw input (as tests/test_module_oracle.py): measured up to 2.2e-5 on
# outputs up to 36 (relative 6e-7, fp32 rounding). The two GroupNorm formulations differ by >= 4.6 on the same inputs.
REFERENCE_TOL = dict(atol=5e-5, rtol=1e-5)
# Lightning files are usually fp16 re-saves: the model holds them in fp32.
FILE_DTYPE = {"lightning": torch.float16}


def channels(fmt):
    return SDXL if fmt in weights.SDXL_FORMATS else SD15


def positions(fmt):
    return weights.PE_ROWS[fmt] or formats.ANIMATELCM_POSITIONS  # AnimateLCM stores no table


def locations(fmt):
    return [prefix for prefix, _ in weights.module_prefixes(channels(fmt), fmt in weights.MID_FORMATS)]


@functools.lru_cache(maxsize=None)
def loaded(fmt):
    """(info, MotionModel with the file's weights, the file's tensors under AnimateDiff names: the reference's input;
    AnimateDiff's has no table there, so the reference computes its own)."""
    raw = weights.motion_module_sd(fmt, channels(fmt), seed=7, dtype=FILE_DTYPE.get(fmt, torch.float32))
    info, converted = formats.load(raw)
    motion_model = model.MotionModel(**info.model_kwargs())
    motion_model.load_state_dict(converted, strict=True)
    return info, motion_model.eval(), {weights.hotshot_to_animatediff_key(k): v for k, v in raw.items()}


@pytest.mark.parametrize("fmt", weights.FORMATS)
def test_every_module_matches_the_reference(fmt):
    info, motion_model, sd = loaded(fmt)
    assert next(motion_model.parameters()).dtype == torch.float32
    across = fmt == "sdxl_beta"
    assert info.norm_across_frames is across
    frame_counts = (1, 7, 16, positions(fmt))
    for n, prefix in enumerate(locations(fmt)):
        c = sd[prefix + "norm.weight"].shape[0]
        frames = frame_counts[n % 4]
        x = reference.frame_varying(CLIPS, frames, c, HEIGHT, WIDTH, seed=n)
        with torch.no_grad():
            ours = reference.get_module(motion_model, prefix)(x, frames)
        expected = reference.motion_module(sd, prefix, x.double(), frames, norm_across_frames=across)
        torch.testing.assert_close(ours.double(), expected, **REFERENCE_TOL,
                                   msg=lambda m: f"{fmt} {prefix} F={frames}: {m}")


@pytest.mark.parametrize("fmt", ["v2", "sdxl_beta"])
def test_groupnorm_statistics_decide_the_result(fmt):
    """On raw frame-varying input the per-frame and across-frames formulations differ by O(1) and ours is its
    format's; standardised per (frame, group) the two agree."""
    _, motion_model, sd = loaded(fmt)
    across = fmt == "sdxl_beta"
    prefix = "down_blocks.1.motion_modules.0.temporal_transformer."
    x = reference.frame_varying(CLIPS, 16, sd[prefix + "norm.weight"].shape[0], HEIGHT, WIDTH, seed=21)
    with torch.no_grad():
        ours = reference.get_module(motion_model, prefix)(x, 16).double()
    right = reference.motion_module(sd, prefix, x.double(), 16, norm_across_frames=across)
    wrong = reference.motion_module(sd, prefix, x.double(), 16, norm_across_frames=not across)
    assert (right - wrong).abs().max() > 1.0
    assert (ours - wrong).abs().max() > 1.0
    torch.testing.assert_close(ours, right, **REFERENCE_TOL)
    xs = reference.standardize_per_frame_group(x.double())
    a = reference.motion_module(sd, prefix, xs, 16, norm_across_frames=False)
    b = reference.motion_module(sd, prefix, xs, 16, norm_across_frames=True)
    torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_effect_scales_the_residual():
    _, motion_model, _ = loaded("v2")
    for prefix in ("down_blocks.1.motion_modules.0.temporal_transformer.",
                   "mid_block.motion_modules.0.temporal_transformer."):
        module = reference.get_module(motion_model, prefix)
        x = reference.frame_varying(CLIPS, 8, module.temporal_transformer.norm.weight.shape[0], HEIGHT, WIDTH)
        with torch.no_grad():
            off, full, half = module(x, 8, effect=0.0), module(x, 8), module(x, 8, effect=0.5)
        assert torch.equal(off, x)
        assert (full - x).abs().max() > 0.1  # the module does change the input
        torch.testing.assert_close(half - x, 0.5 * (full - x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale", [0.5, 1.7])
def test_motion_scale_scales_k(scale):
    """motion_scale s: the reference with k scaled by s, and the same module with every to_k weight times s."""
    _, motion_model, sd = loaded("v2")
    prefix = "down_blocks.2.motion_modules.1.temporal_transformer."
    module = reference.get_module(motion_model, prefix)
    c = module.temporal_transformer.norm.weight.shape[0]
    x = reference.frame_varying(CLIPS, 16, c, HEIGHT, WIDTH, seed=5)
    twin = model.VanillaTemporalModule(c, 32)
    twin.load_state_dict({k: v * scale if k.endswith("to_k.weight") else v for k, v in module.state_dict().items()})
    with torch.no_grad():
        ours, plain, scaled = module(x, 16, motion_scale=scale), module(x, 16), twin(x, 16)
    assert (ours - plain).abs().max() > 1e-2  # the scale matters on this input
    torch.testing.assert_close(ours, scaled, atol=1e-5, rtol=1e-5)
    expected = reference.motion_module(sd, prefix, x.double(), 16, motion_scale=scale)
    torch.testing.assert_close(ours.double(), expected, **REFERENCE_TOL)


def test_positions_are_the_sinusoid():
    """The table the model builds (AnimateLCM) and the one weights.py stores equal the float64 formula."""
    for fmt in ("animatelcm", "v1"):
        _, motion_model, _ = loaded(fmt)
        pe = reference.get_module(motion_model, locations(fmt)[0]).temporal_transformer.transformer_blocks[0] \
            .attention_blocks[0].pos_encoder.pe
        assert pe.shape == (1, positions(fmt), SD15[0])
        torch.testing.assert_close(pe[0].double(), reference.sinusoid(positions(fmt), SD15[0]), atol=1e-5, rtol=0)
