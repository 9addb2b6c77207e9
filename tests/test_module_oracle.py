"""Each motion module against two independent implementations.

* diffusers' `MotionAdapter.from_single_file`, loaded from the same file the pack's loader reads (the pack's
  module comes from `pack_nodes.motion.load_motion_module`, the node's code path). diffusers normalises the motion
  module's GroupNorm across the frames of a clip, the original SD1.5 code per frame, so the inputs here are
  standardised per (frame, group) slice: both statistics are then identical and any difference is a bug.
* `reference.py`, the format notes' forward math written out on plain tensors, on raw frame-varying input:
  this is where per-frame versus across-frames GroupNorm is tested, per format.

Every level's down modules, every up module and the mid module; b = 2 clips, H != W, frame counts 1, 7, 16
and the full positions table L.
"""
import functools
import json
import os
import sys

import pytest
import torch

import builders

sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch"))  # tests/torch/reference.py
import reference  # noqa: E402

SD15 = (32, 64, 64, 64)
SDXL = (32, 64, 64)
HEIGHT, WIDTH = 3, 5
CLIPS = 2
# fp32 against diffusers: measured max |ours - diffusers| 3.8e-6 on outputs up to ~10 (SDXL beta: 0, both normalise
# across frames with the same kernels); the format notes measured 3e-6 to 7e-6 on full-size modules. 1e-4 leaves
# margin for other BLAS / attention kernels and is far below any real difference (a pe row off by one or the
# other GroupNorm statistics: >= 1).
ORACLE_TOL = dict(atol=1e-4, rtol=1e-4)
# fp32 module against the float64 reference on raw input: measured up to 2.2e-5 on outputs up to 36 (relative
# 6e-7, fp32 rounding; the frame-varying input has per-frame offsets up to +-22 at 64 frames). The two GroupNorm
# formulations differ by >= 4.6 on the same inputs.
REFERENCE_TOL = dict(atol=5e-5, rtol=1e-5)

FORMATS = ("v1", "v2", "v3", "sdxl_beta", "hotshot", "animatelcm", "lightning")


def channels(fmt):
    return SDXL if fmt in builders.SDXL_FORMATS else SD15


def positions(fmt):
    return builders.PE_ROWS[fmt] or 64  # AnimateLCM stores no table; the pack builds 64 rows


def frame_counts(fmt):
    return (1, 7, 16, positions(fmt))


def locations(fmt):
    """State-dict prefix of every module of a file: down_blocks.i (2 each), up_blocks.j (3 each), mid_block."""
    return [prefix for prefix, _ in builders.module_prefixes(channels(fmt), fmt in builders.MID_FORMATS)]


def prefix_of(block, level, module):
    """prefix_of("down_blocks", 1, 0) = "down_blocks.1.motion_modules.0.temporal_transformer."; mid: level None."""
    return f"{block}.{'' if level is None else f'{level}.'}motion_modules.{module}.temporal_transformer."


def animatediff_layout(sd):
    """A Hotshot-XL state dict under AnimateDiff key names (the same tensors)."""
    return {builders.hotshot_to_animatediff_key(k): v for k, v in sd.items()}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("module_oracle")


def write_diffusers_config(folder, fmt):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"_class_name": "MotionAdapter", "block_out_channels": list(channels(fmt)),
                   "motion_layers_per_block": 2, "motion_mid_block_layers_per_block": 1,
                   "motion_num_attention_heads": 8, "motion_norm_num_groups": 32,
                   "motion_max_seq_length": positions(fmt),
                   "use_motion_mid_block": fmt in builders.MID_FORMATS}, f)
    return folder


def diffusers_adapter(path, config_folder):
    from diffusers import MotionAdapter
    from diffusers.utils import logging as diffusers_logging
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        adapter = MotionAdapter.from_single_file(path, config=config_folder, local_files_only=True,
                                                 torch_dtype=torch.float32)
    finally:
        diffusers_logging.set_verbosity(level)
    return adapter.eval()


# Lightning files are usually fp16 re-saves: the loader casts to the UNet dtype (fp32 on CPU), diffusers too.
FILE_DTYPE = {"lightning": torch.float16}


@functools.lru_cache(maxsize=None)
def _state_dict(fmt):
    return builders.motion_module_sd(fmt, channels(fmt), seed=7, dtype=FILE_DTYPE.get(fmt, torch.float32))


class Loaded:
    def __init__(self, fmt, ours, info, sd, diffusers):
        self.fmt, self.ours, self.info, self.sd, self.diffusers = fmt, ours, info, sd, diffusers


@pytest.fixture(scope="module")
def loaded(comfy, workdir):
    """fmt -> Loaded(ours: MotionModel from the node's loader, info: what its file is, sd: AnimateDiff-layout
    tensors, diffusers)."""
    pack_nodes = comfy.pack.nodes
    cache = {}

    def get(fmt):
        if fmt not in cache:
            sd = _state_dict(fmt)
            path = builders.save_file(sd, str(workdir / f"{fmt}.safetensors"))
            motion = pack_nodes.motion.load_motion_module(path, f"{fmt}.safetensors")
            canonical = animatediff_layout(sd) if fmt == "hotshot" else sd
            # diffusers 0.35.2's single-file converter knows no `temporal_attentions` keys: on a Hotshot-XL file
            # it silently keeps random weights. Its oracle loads the same tensors under AnimateDiff names.
            oracle_path = path if fmt != "hotshot" else builders.save_file(
                canonical, str(workdir / "hotshot_as_animatediff.safetensors"))
            adapter = diffusers_adapter(oracle_path, write_diffusers_config(str(workdir / f"config_{fmt}"), fmt))
            if fmt in FILE_DTYPE:
                use_stored_positions(adapter, canonical)
            cache[fmt] = Loaded(fmt, motion.patcher.model, motion.info, canonical, adapter)
        return cache[fmt]
    return get


def use_stored_positions(adapter, sd):
    """diffusers ignores the file's pe tables and computes its own in fp32; the original code (and the pack) use
    the stored table, which an fp16 file holds rounded (|error| up to 5e-4). Give diffusers the stored table so
    the comparison tests everything else at fp32 precision. diffusers shares one table between both attention
    blocks of a transformer block: the file's two tables are identical."""
    for prefix in reference.module_prefixes(sd):
        tb = prefix + "transformer_blocks.0.attention_blocks."
        pe0, pe1 = sd[tb + "0.pos_encoder.pe"], sd[tb + "1.pos_encoder.pe"]
        assert torch.equal(pe0, pe1)
        reference.get_module(adapter, prefix).transformer_blocks[0].pos_embed.pe.copy_(pe0.to(torch.float32))


def standardized_input(n, c, seed):
    return reference.standardize_per_frame_group(reference.frame_varying(1, n, c, HEIGHT, WIDTH, seed=seed))


# ------------------------------------------------------------------------------------------ diffusers

@pytest.mark.parametrize("fmt", FORMATS)
def test_loader_reads_every_tensor(loaded, fmt):
    """The node's loader keeps every tensor of the file bit for bit (Hotshot-XL: after renaming, pe included;
    fp16 Lightning: exactly widened to fp32); AnimateLCM gets the sinusoid table it does not store."""
    got = loaded(fmt)
    ours = got.ours.state_dict()
    assert {k.split(".")[0] for k in ours} >= {"down_blocks", "up_blocks"}
    assert next(got.ours.parameters()).dtype == torch.float32
    stored = got.sd
    expected_keys = set(stored)
    if fmt == "animatelcm":
        expected_keys |= {k.replace("to_q.weight", "pos_encoder.pe") for k in stored if k.endswith("to_q.weight")}
    assert set(ours) == expected_keys
    for k, v in stored.items():
        assert torch.equal(ours[k], v.to(torch.float32)), k
    pe_tol = 1e-3 if fmt in FILE_DTYPE else 1e-5  # the tables are computed in fp32 (and stored in fp16)
    for k, v in ours.items():
        if k.endswith("pos_encoder.pe"):
            assert v.shape == (1, positions(fmt), v.shape[-1])
            torch.testing.assert_close(v[0].double(), reference.sinusoid(positions(fmt), v.shape[-1]),
                                       atol=pe_tol, rtol=0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_diffusers_oracle(loaded, fmt):
    """Every module, 1 / 7 / 16 / L frames, 2 clips, H != W, standardised input: ours == diffusers."""
    got = loaded(fmt)
    worst = 0.0
    for n, prefix in enumerate(locations(fmt)):
        ours, theirs = reference.get_module(got.ours, prefix), reference.get_module(got.diffusers, prefix)
        c = got.sd[prefix + "norm.weight"].shape[0]
        for frames in frame_counts(fmt):
            x = standardized_input(CLIPS * frames, c, seed=100 * n + frames)
            with torch.no_grad():
                a, b = ours(x, frames), theirs(x, num_frames=frames)
            torch.testing.assert_close(a, b, **ORACLE_TOL, msg=lambda m: f"{fmt} {prefix} F={frames}: {m}")
            worst = max(worst, (a - b).abs().max().item())
    print(f"{fmt}: max |ours - diffusers| = {worst:.2e}")


def test_hotshot_conversion_is_lossless(loaded, comfy):
    """Hotshot-XL equals the same tensors under AnimateDiff names: the converted state dict is identical, and the
    modules agree exactly on raw input when both normalise per frame."""
    formats = comfy.pack.motion_modules.formats
    model = comfy.pack.motion_modules.model
    hotshot_raw = _state_dict("hotshot")
    info, converted = formats.load(hotshot_raw)
    canonical = animatediff_layout(hotshot_raw)
    assert info.format == "hotshot" and info.family == "SDXL" and info.pe_rows == 24
    assert not info.norm_across_frames
    assert set(converted) == set(canonical)
    assert all(torch.equal(converted[k], canonical[k]) for k in canonical)
    # The same tensors in an AnimateDiff-layout file read as an SDXL module with per-frame norm.
    info2, sd2 = formats.load(canonical)
    plain = model.MotionModel(**dict(info2.model_kwargs(), norm_across_frames=False))
    plain.load_state_dict(sd2)
    ours = loaded("hotshot").ours
    for prefix in locations("hotshot"):
        c = canonical[prefix + "norm.weight"].shape[0]
        x = reference.frame_varying(CLIPS, 7, c, HEIGHT, WIDTH, seed=3)
        with torch.no_grad():
            assert torch.equal(reference.get_module(ours, prefix)(x, 7), reference.get_module(plain, prefix)(x, 7)), prefix


def test_comfy_attention_matches_diffusers(loaded, comfy):
    """The attention function the UNet patch passes (ComfyUI's optimized_attention) gives the same result."""
    from comfy.ldm.modules.attention import optimized_attention
    attention = functools.partial(optimized_attention, transformer_options={})
    got = loaded("v2")
    for prefix in (prefix_of("down_blocks", 0, 1), prefix_of("up_blocks", 2, 2), prefix_of("mid_block", None, 0)):
        c = got.sd[prefix + "norm.weight"].shape[0]
        x = standardized_input(CLIPS * 16, c, seed=11)
        with torch.no_grad():
            a = reference.get_module(got.ours, prefix)(x, 16, attention)
            b = reference.get_module(got.diffusers, prefix)(x, num_frames=16)
        torch.testing.assert_close(a, b, **ORACLE_TOL)


# ----------------------------------------------------------------------------- effect / motion_scale

def test_effect_zero_returns_input_exactly(loaded):
    got = loaded("v2")
    for prefix in (prefix_of("down_blocks", 1, 0), prefix_of("mid_block", None, 0)):
        module = reference.get_module(got.ours, prefix)
        x = reference.frame_varying(CLIPS, 8, module.temporal_transformer.norm.weight.shape[0], HEIGHT, WIDTH)
        with torch.no_grad():
            out = module(x, 8, effect=0.0)
            full = module(x, 8)
            half = module(x, 8, effect=0.5)
        assert torch.equal(out, x)
        assert (full - x).abs().max() > 0.1  # the module does change the input
        torch.testing.assert_close(half - x, 0.5 * (full - x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale", [0.5, 1.7])
def test_motion_scale_is_scaled_to_k(loaded, scale):
    """motion_scale s == the same module with every to_k weight multiplied by s (ours and diffusers)."""
    got = loaded("v2")
    prefix = prefix_of("down_blocks", 2, 1)
    module, theirs = reference.get_module(got.ours, prefix), reference.get_module(got.diffusers, prefix)
    x = standardized_input(CLIPS * 16, module.temporal_transformer.norm.weight.shape[0], seed=5)
    scaled = {k: v * scale if k.endswith("to_k.weight") else v for k, v in module.state_dict().items()}
    original = {k: v.clone() for k, v in theirs.state_dict().items()}
    try:
        with torch.no_grad():
            for name, p in theirs.named_parameters():
                if name.endswith("to_k.weight"):
                    p.mul_(scale)
            expected = theirs(x, num_frames=16)
            ours = module(x, 16, motion_scale=scale)
            plain = module(x, 16)
    finally:
        theirs.load_state_dict(original)
    torch.testing.assert_close(ours, expected, **ORACLE_TOL)
    assert (ours - plain).abs().max() > 1e-2  # the scale matters on this input
    twin = type(module)(module.temporal_transformer.norm.weight.shape[0], 32)
    twin.load_state_dict(scaled)
    with torch.no_grad():
        torch.testing.assert_close(ours, twin(x, 16), atol=1e-5, rtol=1e-5)
    ref = reference.motion_module(got.sd, prefix, x.double(), 16, motion_scale=scale)
    torch.testing.assert_close(ours.double(), ref, **REFERENCE_TOL)


# ---------------------------------------------------------------- GroupNorm statistics on raw input

@pytest.mark.parametrize("fmt", FORMATS)
def test_raw_input_matches_reference(loaded, fmt):
    """Raw frame-varying input: ours equals the reference with the GroupNorm statistics of the format's
    original code (per frame for v1/v2/v3/Hotshot/AnimateLCM/Lightning, across the clip for SDXL beta)."""
    got = loaded(fmt)
    across = fmt == "sdxl_beta"
    assert got.info.norm_across_frames is across
    for n, prefix in enumerate(locations(fmt)):
        c = got.sd[prefix + "norm.weight"].shape[0]
        frames = frame_counts(fmt)[n % 4]
        x = reference.frame_varying(CLIPS, frames, c, HEIGHT, WIDTH, seed=n)
        with torch.no_grad():
            ours = reference.get_module(got.ours, prefix)(x, frames)
        expected = reference.motion_module(got.sd, prefix, x.double(), frames, norm_across_frames=across)
        torch.testing.assert_close(ours.double(), expected, **REFERENCE_TOL,
                                   msg=lambda m: f"{fmt} {prefix} F={frames}: {m}")


@pytest.mark.parametrize("fmt", ["v2", "sdxl_beta"])
def test_groupnorm_statistics_decide_the_result(loaded, fmt):
    """On raw frame-varying input the per-frame and the across-frames formulations differ by O(1), and ours is
    the one of its format: the reference tests above can fail."""
    got = loaded(fmt)
    across = fmt == "sdxl_beta"
    prefix = prefix_of("down_blocks", 1, 0)
    c = got.sd[prefix + "norm.weight"].shape[0]
    x = reference.frame_varying(CLIPS, 16, c, HEIGHT, WIDTH, seed=21)
    with torch.no_grad():
        ours = reference.get_module(got.ours, prefix)(x, 16).double()
        theirs = reference.get_module(got.diffusers, prefix)(x, num_frames=16).double()
    right = reference.motion_module(got.sd, prefix, x.double(), 16, norm_across_frames=across)
    wrong = reference.motion_module(got.sd, prefix, x.double(), 16, norm_across_frames=not across)
    assert (right - wrong).abs().max() > 1.0
    assert (ours - wrong).abs().max() > 1.0
    torch.testing.assert_close(ours, right, **REFERENCE_TOL)
    # diffusers normalises across frames: it agrees with the SDXL-beta formulation and not with per frame.
    across_ref = right if across else wrong
    torch.testing.assert_close(theirs, across_ref, **REFERENCE_TOL)
    # standardising per (frame, group) makes the two formulations agree
    xs = reference.standardize_per_frame_group(x.double())
    a = reference.motion_module(got.sd, prefix, xs.double(), 16, norm_across_frames=False)
    b = reference.motion_module(got.sd, prefix, xs.double(), 16, norm_across_frames=True)
    torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
