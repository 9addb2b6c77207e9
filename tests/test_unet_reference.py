"""The whole UNet with a motion module applied by the pack, against a reference forward written here.

The pack's side is a real ComfyUI sampling call (comfy.sample.sample, euler, cfg 3, positive and negative
prompts that differ) on a tiny UNet built with ComfyUI's own model classes, the motion module loaded by
`pack_nodes.motion.load_motion_module` and applied by `pack_nodes.motion.apply_motion_module`. A DIFFUSION_MODEL wrapper records
every UNet call (inputs, `cond_or_uncond`, output): ComfyUI batches uncond and cond, so each call is 2 clips of
F frames with cond_or_uncond = [1, 0].

The reference walks the un-injected UNet itself (time embedding, input blocks, middle block, output blocks with
skip concatenation, out), calling ComfyUI's ResBlock / SpatialTransformer / Downsample / Upsample layers, and
runs `reference.motion_module` where the format notes place the motion modules: in each block after the last
SpatialTransformer, else after the first ResBlock (before any Downsample/Upsample), in the middle block between
the transformer and the second ResBlock. Which module goes where follows the file layout (down_blocks.i.m:
the m-th ResBlock of level i; up_blocks.j.m: output level j, deepest first). For v1 the reference's ResBlocks
and output norm normalise across the frames of each clip (written here from the ResBlock's parameters); for
SDXL beta the motion modules normalise across frames.

Also: where the modules are inserted (number, order, channels, block and layer index), that ejecting restores
the UNet's module tree, that a second motion module applied while a first patched model is still loaded is
placed and computed as on a clean UNet, and that a motion module of the other family is refused.
"""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

import comfy.model_management
import comfy.patcher_extension
import comfy.sample
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, ResBlock, Upsample
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding

import builders
import comfy_models

sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch"))  # tests/torch/reference.py
import reference  # noqa: E402

SD15 = (32, 64, 64, 64)
SDXL = (32, 64, 64)
CONTEXT_DIM = 64      # the tiny models' cross-attention width (the test builds its own conditioning)
TOKENS = 5
FRAMES = 6
HEIGHT, WIDTH = 8, 12  # latent; W: 12 -> 6 -> 3 -> 2, so Upsample needs ComfyUI's output_shape
RES_BLOCKS = 2

# Measured max |pack - reference| over all recorded UNet calls (outputs of magnitude ~2.4): v2 SD1.5 2.6e-6,
# v1 SD1.5 3.0e-6, SDXL beta 2.4e-6, Hotshot-XL 2.6e-6, AnimateLCM 2.9e-6, v2 with motion_scale 1.3 / effect
# 0.6 2.9e-6. Both sides are fp32 and run the same ComfyUI layers; what differs is the motion module (sdpa /
# ComfyUI attention in the pack, an fp64 einsum reference cast back to fp32 here), i.e. fp32 rounding (~1e-7
# relative) carried through ~20 modules and the residual stacks. 5e-5 absolute + 1e-5 relative is ~15x the
# measurement and far below what an error produces: modules at the wrong layer index 0.9 to 2.3, the wrong
# GroupNorm statistics 0.46 (motion modules) and 0.53 (v1's ResBlocks), see test_reference_detects_wrong_statistics.
UNET_TOL = dict(atol=5e-5, rtol=1e-5)


pytestmark = pytest.mark.usefixtures("no_loaded_models")


@pytest.fixture(scope="module")
def motion_model_cls(comfy):
    return comfy.pack.motion_modules.model


def sd15_unet():
    return comfy_models.tiny_sd15_model(context_dim=CONTEXT_DIM)


def sdxl_unet():
    return comfy_models.tiny_sdxl_model(context_dim=CONTEXT_DIM)


def load_module(pack_nodes, tmp_path, fmt, channels, seed=1):
    """(the node loader's ModelPatcher, the file's tensors under AnimateDiff key names for the reference)."""
    sd = builders.motion_module_sd(fmt, channels, seed=seed)
    path = builders.save_file(sd, str(tmp_path / f"unet_{fmt}.safetensors"))
    return pack_nodes.motion.load_motion_module(path, f"unet_{fmt}.safetensors"), \
        {builders.hotshot_to_animatediff_key(k): v for k, v in sd.items()}


# ------------------------------------------------------------------------------------- the pack's side

def record_unet_calls(model_patcher, motion_model_cls):
    """A DIFFUSION_MODEL wrapper that records each UNet call: inputs, cond_or_uncond, output, and how many
    motion modules the UNet held while it ran."""
    calls = []

    def recorder(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        out = executor(x, timesteps, context, y, control, transformer_options, **kwargs)
        unet = executor.class_obj
        calls.append(dict(
            x=x.detach().clone(), timesteps=timesteps.detach().clone(), context=context.detach().clone(),
            y=None if y is None else y.detach().clone(), cond_or_uncond=list(transformer_options["cond_or_uncond"]),
            out=out.detach().clone(),
            injected=sum(isinstance(m, motion_model_cls.VanillaTemporalModule) for m in unet.modules())))
        return out

    model_patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test-recorder", recorder)
    return calls


def sample(model_patcher, sdxl, seed=0, steps=2):
    """A real ComfyUI sampling call on FRAMES latent frames with different positive / negative prompts."""
    g = torch.Generator().manual_seed(seed)
    extra = (lambda: {"pooled_output": torch.randn(1, 1280, generator=g), "width": 96, "height": 64}) if sdxl \
        else (lambda: {})
    positive = [[torch.randn(1, TOKENS, CONTEXT_DIM, generator=g), extra()]]
    negative = [[torch.randn(1, TOKENS, CONTEXT_DIM, generator=g), extra()]]
    latent = torch.zeros(FRAMES, 4, HEIGHT, WIDTH)
    noise = torch.randn(FRAMES, 4, HEIGHT, WIDTH, generator=g)
    with torch.no_grad():
        return comfy.sample.sample(model_patcher, noise, steps, 3.0, "euler", "normal", positive, negative, latent,
                                   denoise=1.0, disable_pbar=True, seed=seed)


# ------------------------------------------------------------------------------------------ reference

def module_prefixes(levels, mid=True):
    """{(section, block index): motion-module prefix} from the file layout (2 ResBlocks per level down, 3 up).

    input_blocks: [conv], then per level RES_BLOCKS ResBlock blocks and a Downsample block (not after the last
    level): down_blocks.i.m is input block 1 + i * (RES_BLOCKS + 1) + m. output_blocks: RES_BLOCKS + 1 per
    level, deepest level first: up_blocks.j.m is output block j * (RES_BLOCKS + 1) + m."""
    out = {}
    for i in range(levels):
        for m in range(RES_BLOCKS):
            out[("input", 1 + i * (RES_BLOCKS + 1) + m)] = f"down_blocks.{i}.motion_modules.{m}.temporal_transformer."
    if mid:
        out[("middle", 0)] = "mid_block.motion_modules.0.temporal_transformer."
    for j in range(levels):
        for m in range(RES_BLOCKS + 1):
            out[("output", j * (RES_BLOCKS + 1) + m)] = f"up_blocks.{j}.motion_modules.{m}.temporal_transformer."
    return out


def insert_position(block):
    """After the last SpatialTransformer, else after the first ResBlock (the format notes' placement rule)."""
    attention = [i for i, layer in enumerate(block) if isinstance(layer, SpatialTransformer)]
    if attention:
        return attention[-1] + 1
    assert isinstance(block[0], ResBlock)
    return 1


def conv(layer, x):
    return F.conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding)


def clip_resblock(block, x, emb, frames):
    """ComfyUI's ResBlock (no scale-shift norm, no up/down) with both GroupNorms over each clip's frames, as
    the original v1 code runs its un-inflated UNet on the 5-D clip. frames=None: per frame (ComfyUI's)."""
    assert not block.use_scale_shift_norm and not block.updown and not block.skip_t_emb
    n1, c1 = block.in_layers[0], block.in_layers[2]
    n2, c2 = block.out_layers[0], block.out_layers[3]
    h = reference.group_norm(x, n1.weight, n1.bias, frames, groups=n1.num_groups, eps=n1.eps)
    h = conv(c1, F.silu(h))
    h = h + F.linear(F.silu(emb), block.emb_layers[1].weight, block.emb_layers[1].bias)[:, :, None, None]
    h = reference.group_norm(h, n2.weight, n2.bias, frames, groups=n2.num_groups, eps=n2.eps)
    h = conv(c2, F.silu(h))  # out_layers[2] is dropout: nothing at inference
    skip = x if isinstance(block.skip_connection, torch.nn.Identity) else conv(block.skip_connection, x)
    return skip + h


def reference_unet(unet, motion_sd, call, frames, has_mid, motion_across=False, unet_across=False,
                   motion_scale=1.0, effect=1.0):
    """The UNet forward with motion modules, walked here. unet: the un-injected ComfyUI UNetModel."""
    x, context = call["x"], call["context"]
    emb = unet.time_embed(timestep_embedding(call["timesteps"], unet.model_channels).to(x.dtype))
    if unet.num_classes is not None:
        emb = emb + unet.label_emb(call["y"])
    levels = len(unet.input_blocks) // (RES_BLOCKS + 1)  # conv + RES_BLOCKS per level + a Downsample between
    prefixes = module_prefixes(levels, mid=has_mid)

    def motion(h, prefix):
        return reference.motion_module(motion_sd, prefix, h.double(), frames, motion_across, motion_scale,
                                       effect).to(h.dtype)

    def run(section, index, block, h, output_shape=None):
        prefix = prefixes.get((section, index))
        at = insert_position(block) if prefix else None
        for i, layer in enumerate(block):
            if i == at:
                h = motion(h, prefix)
            if isinstance(layer, ResBlock):
                h = clip_resblock(layer, h, emb, frames) if unet_across else layer(h, emb)
            elif isinstance(layer, SpatialTransformer):
                h = layer(h, context=context, transformer_options={})
            elif isinstance(layer, Upsample):
                h = layer(h, output_shape=output_shape)
            else:  # Downsample, the input conv
                h = layer(h)
        if at == len(block):
            h = motion(h, prefix)
        return h

    skips, h = [], x
    for i, block in enumerate(unet.input_blocks):
        h = run("input", i, block, h)
        skips.append(h)
    h = run("middle", 0, unet.middle_block, h)
    for i, block in enumerate(unet.output_blocks):
        h = torch.cat([h, skips.pop()], dim=1)
        h = run("output", i, block, h, skips[-1].shape if skips else None)
    norm, act, out_conv = unet.out
    if unet_across:
        h = reference.group_norm(h, norm.weight, norm.bias, frames, groups=norm.num_groups, eps=norm.eps)
    else:
        h = norm(h)
    return out_conv(act(h))


def module_tree(unet):
    return ([(name, type(m)) for name, m in unet.named_modules()], list(unet.state_dict()))


def check_against_reference(pack_nodes, motion_model_cls, tmp_path, model, fmt, channels, sdxl):
    """Sample with the motion module applied; compare every recorded UNet call with the reference."""
    unet = model.model.diffusion_model
    tree = module_tree(unet)
    mm, motion_sd = load_module(pack_nodes, tmp_path, fmt, channels)
    info = mm.info
    m = pack_nodes.motion.apply_motion_module(model, mm, "autoselect", 1.0, 1.0)
    calls = record_unet_calls(m, motion_model_cls)
    sample(m, sdxl)
    expected_modules = 2 * len(channels) + 3 * len(channels) + (1 if info.mid else 0)
    assert len(calls) == 2 and all(c["injected"] == expected_modules for c in calls)
    comfy.model_management.unload_all_models()
    assert module_tree(unet) == tree  # the reference runs the un-injected UNet
    worst = 0.0
    for call in calls:
        assert call["cond_or_uncond"] == [1, 0] and call["x"].shape == (2 * FRAMES, 4, HEIGHT, WIDTH)
        with torch.no_grad():
            expected = reference_unet(unet, motion_sd, call, FRAMES, has_mid=info.mid is not None,
                                      motion_across=info.norm_across_frames, unet_across=info.unet_norm_across_frames)
            plain = unet(call["x"], call["timesteps"], call["context"], call["y"])
        assert (call["out"] - plain).abs().max() > 1e-2  # the motion modules change the output
        torch.testing.assert_close(call["out"], expected, **UNET_TOL)
        worst = max(worst, (call["out"] - expected).abs().max().item())
    print(f"{fmt}: max |pack - reference| = {worst:.2e} (output max {calls[0]['out'].abs().max():.2f})")
    return calls, motion_sd, info


# ------------------------------------------------------------------------------------ reference tests

def test_v2_sd15_unet_matches_reference(pack_nodes, motion_model_cls, tmp_path):
    check_against_reference(pack_nodes, motion_model_cls, tmp_path, sd15_unet(), "v2", SD15, sdxl=False)


def test_v1_sd15_unet_matches_reference(pack_nodes, motion_model_cls, tmp_path):
    """v1: ResBlock GroupNorms and the output norm over each clip's frames, motion modules per frame."""
    model = sd15_unet()
    calls, motion_sd, info = check_against_reference(pack_nodes, motion_model_cls, tmp_path, model, "v1", SD15,
                                                     sdxl=False)
    assert info.unet_norm_across_frames and not info.norm_across_frames
    # The hand-written ResBlock is ComfyUI's when it normalises per frame (so the across-frames one is too).
    unet = model.model.diffusion_model
    emb = unet.time_embed(timestep_embedding(calls[0]["timesteps"], unet.model_channels))
    with torch.no_grad():
        for block in (unet.input_blocks[1][0], unet.output_blocks[0][0]):
            hb = reference.frame_varying(2, FRAMES, block.channels, HEIGHT, WIDTH, seed=4)
            torch.testing.assert_close(clip_resblock(block, hb, emb, None), block(hb, emb), atol=1e-5, rtol=1e-5)
            assert (clip_resblock(block, hb, emb, FRAMES) - block(hb, emb)).abs().max() > 1e-1


def test_sdxl_beta_unet_matches_reference(pack_nodes, motion_model_cls, tmp_path):
    """SDXL: 3 levels, no attention on level 0; the motion modules normalise across frames."""
    _, _, info = check_against_reference(pack_nodes, motion_model_cls, tmp_path, sdxl_unet(), "sdxl_beta", SDXL,
                                         sdxl=True)
    assert info.norm_across_frames and not info.unet_norm_across_frames


@pytest.mark.parametrize("fmt", ["hotshot", "animatelcm"])
def test_other_formats_unet_match_reference(pack_nodes, motion_model_cls, tmp_path, fmt):
    """Hotshot-XL (SDXL, per-frame norm, model's own schedule) and AnimateLCM (SD1.5 with mid module, built
    positions, LCM sampling) through the same UNet comparison."""
    sdxl = fmt == "hotshot"
    _, _, info = check_against_reference(pack_nodes, motion_model_cls, tmp_path, sdxl_unet() if sdxl else sd15_unet(),
                                         fmt, SDXL if sdxl else SD15, sdxl=sdxl)
    assert not info.norm_across_frames and not info.unet_norm_across_frames


def test_reference_detects_wrong_statistics(pack_nodes, motion_model_cls, tmp_path):
    """The UNet comparison can fail: with the other GroupNorm statistics (v1's UNet per frame, the modules
    across frames) the reference moves far outside the tolerance from what the pack computes."""
    model = sd15_unet()
    mm, motion_sd = load_module(pack_nodes, tmp_path, "v1", SD15)
    m = pack_nodes.motion.apply_motion_module(model, mm, "autoselect", 1.0, 1.0)
    calls = record_unet_calls(m, motion_model_cls)
    sample(m, sdxl=False, steps=1)
    comfy.model_management.unload_all_models()
    unet = model.model.diffusion_model
    with torch.no_grad():
        right = reference_unet(unet, motion_sd, calls[0], FRAMES, has_mid=False, unet_across=True)
        unet_wrong = reference_unet(unet, motion_sd, calls[0], FRAMES, has_mid=False, unet_across=False)
        module_wrong = reference_unet(unet, motion_sd, calls[0], FRAMES, has_mid=False, unet_across=True,
                                      motion_across=True)
    torch.testing.assert_close(calls[0]["out"], right, **UNET_TOL)
    assert (calls[0]["out"] - unet_wrong).abs().max() > 1e-2
    assert (calls[0]["out"] - module_wrong).abs().max() > 1e-2


def test_node_settings_reach_the_modules(pack_nodes, motion_model_cls, tmp_path):
    """motion_scale and effect given to apply_motion_module are what the modules run with; effect 0 leaves the
    UNet's output exactly as without motion modules."""
    model = sd15_unet()
    unet = model.model.diffusion_model
    mm, motion_sd = load_module(pack_nodes, tmp_path, "v2", SD15)
    scaled = pack_nodes.motion.apply_motion_module(model, mm, "autoselect", 1.3, 0.6)
    off = pack_nodes.motion.apply_motion_module(model, mm, "autoselect", 1.0, 0.0)
    calls = record_unet_calls(scaled, motion_model_cls)
    calls_off = record_unet_calls(off, motion_model_cls)
    sample(scaled, sdxl=False, steps=1)
    sample(off, sdxl=False, steps=1)
    comfy.model_management.unload_all_models()
    assert calls_off[0]["injected"] == 21
    with torch.no_grad():
        expected = reference_unet(unet, motion_sd, calls[0], FRAMES, has_mid=True, motion_scale=1.3, effect=0.6)
        default = reference_unet(unet, motion_sd, calls[0], FRAMES, has_mid=True)
        c = calls_off[0]
        plain = unet(c["x"], c["timesteps"], c["context"], c["y"])
    torch.testing.assert_close(calls[0]["out"], expected, **UNET_TOL)
    assert (calls[0]["out"] - default).abs().max() > 1e-2
    print(f"v2 scale 1.3 effect 0.6: max |pack - reference| = {(calls[0]['out'] - expected).abs().max():.2e}")
    assert torch.equal(c["out"], plain)


# ----------------------------------------------------------------------------------------- placement

def injected_modules(unet, motion_model, motion_model_cls):
    """[(section, block index, layer index, channels, module path in `motion_model`, None if not from it)] of
    every inserted motion module, in forward order."""
    paths = {id(m): name for name, m in motion_model.named_modules()
             if isinstance(m, motion_model_cls.VanillaTemporalModule)}
    out = []
    sections = [("input", unet.input_blocks), ("middle", [unet.middle_block]), ("output", unet.output_blocks)]
    for section, blocks in sections:
        for b, block in enumerate(blocks):
            for i, layer in enumerate(block):
                if isinstance(layer, motion_model_cls.VanillaTemporalModule):
                    out.append((section, b, i, layer.temporal_transformer.norm.weight.shape[0], paths.get(id(layer))))
    return out


# (section, block index, layer index, channels, module) for the tiny UNets, written out from their layout:
# SD1.5 input blocks 1, 2 | 4, 5 | 7, 8 hold [ResBlock, SpatialTransformer] (module at 2), 10, 11 [ResBlock]
# (module at 1); middle [ResBlock, SpatialTransformer, ResBlock] (module at 2); output blocks 0-2 [ResBlock]
# (+ Upsample in 2; module at 1), 3-11 [ResBlock, SpatialTransformer] (+ Upsample in 5, 8; module at 2).
SD15_PLACES = (
    [("input", 1, 2, 32, "down_blocks.0.motion_modules.0"), ("input", 2, 2, 32, "down_blocks.0.motion_modules.1"),
     ("input", 4, 2, 64, "down_blocks.1.motion_modules.0"), ("input", 5, 2, 64, "down_blocks.1.motion_modules.1"),
     ("input", 7, 2, 64, "down_blocks.2.motion_modules.0"), ("input", 8, 2, 64, "down_blocks.2.motion_modules.1"),
     ("input", 10, 1, 64, "down_blocks.3.motion_modules.0"), ("input", 11, 1, 64, "down_blocks.3.motion_modules.1")],
    [("middle", 0, 2, 64, "mid_block.motion_modules.0")],
    [("output", b, 1, 64, f"up_blocks.0.motion_modules.{b}") for b in range(3)]
    + [("output", 3 * j + m, 2, 64 if j < 3 else 32, f"up_blocks.{j}.motion_modules.{m}")
       for j in (1, 2, 3) for m in range(3)],
)
# SDXL input blocks 1, 2 [ResBlock] (module at 1), 4, 5 | 7, 8 [ResBlock, SpatialTransformer] (module at 2);
# output blocks 0-5 [ResBlock, SpatialTransformer] (+ Upsample in 2, 5; module at 2), 6-8 [ResBlock] (at 1).
SDXL_PLACES = (
    [("input", 1, 1, 32, "down_blocks.0.motion_modules.0"), ("input", 2, 1, 32, "down_blocks.0.motion_modules.1"),
     ("input", 4, 2, 64, "down_blocks.1.motion_modules.0"), ("input", 5, 2, 64, "down_blocks.1.motion_modules.1"),
     ("input", 7, 2, 64, "down_blocks.2.motion_modules.0"), ("input", 8, 2, 64, "down_blocks.2.motion_modules.1")],
    [],
    [("output", 3 * j + m, 2 if j < 2 else 1, 64 if j < 2 else 32, f"up_blocks.{j}.motion_modules.{m}")
     for j in range(3) for m in range(3)],
)


@pytest.mark.parametrize("fmt", ["v2", "v1", "sdxl_beta"])
def test_placement_and_ejection(pack_nodes, motion_model_cls, tmp_path, fmt):
    """Loaded for sampling: the modules sit exactly where the tables above say (number, forward order, channels,
    block and layer index, which module of the file); v1 also swaps the ResBlock norms and out.0. Unloaded: the
    UNet's module tree, state-dict keys and values are as before."""
    sdxl = fmt == "sdxl_beta"
    model = sdxl_unet() if sdxl else sd15_unet()
    unet = model.model.diffusion_model
    tree = module_tree(unet)
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    mm, _ = load_module(pack_nodes, tmp_path, fmt, SDXL if sdxl else SD15)
    before = (repr(model.model_options), dict(model.object_patches), dict(model.injections), repr(model.wrappers),
              dict(model.additional_models))
    m = pack_nodes.motion.apply_motion_module(model, mm, "autoselect", 1.0, 1.0)
    assert module_tree(unet) == tree  # applying only records patches: nothing changes before loading
    # ... on the clone: the input model is left as it was
    assert (repr(model.model_options), dict(model.object_patches), dict(model.injections), repr(model.wrappers),
            dict(model.additional_models)) == before
    comfy.model_management.load_models_gpu([m] + m.get_nested_additional_models())

    down, mid, up = SDXL_PLACES if sdxl else SD15_PLACES
    mid = mid if fmt == "v2" else []
    assert (len(down), len(mid), len(up)) == ((6, 0, 9) if sdxl else (8, 1 if fmt == "v2" else 0, 12))
    assert injected_modules(unet, mm.patcher.model, motion_model_cls) == down + mid + up
    if fmt != "v2":
        assert [type(layer) for layer in unet.middle_block] == [ResBlock, SpatialTransformer, ResBlock]
    # the module comes before the level's Downsample / Upsample: nothing resamples before it
    blocks = {"input": unet.input_blocks, "middle": [unet.middle_block], "output": unet.output_blocks}
    for section, b, i, _, _ in down + mid + up:
        assert not any(isinstance(layer, (Downsample, Upsample)) for layer in list(blocks[section][b])[:i])
    assert sum(isinstance(block[-1], Upsample) for block in unet.output_blocks) == (2 if sdxl else 3)
    if fmt == "v1":  # the UNet's ResBlock norms and out.0 normalise over the clip while loaded
        clip_norms = [n for n, layer in unet.named_modules() if isinstance(layer, pack_nodes.clip_norms.ClipGroupNorm)]
        resblocks = [n for n, layer in unet.named_modules() if isinstance(layer, ResBlock)]
        assert sorted(clip_norms) == sorted([f"{r}.in_layers.0" for r in resblocks]
                                            + [f"{r}.out_layers.0" for r in resblocks] + ["out.0"])
    else:
        assert not any(isinstance(layer, pack_nodes.clip_norms.ClipGroupNorm) for layer in unet.modules())

    comfy.model_management.unload_all_models()
    assert module_tree(unet) == tree
    after = unet.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())


def test_unpatch_model_ejects(pack_nodes, motion_model_cls, tmp_path):
    """The patcher's own patch_model / unpatch_model insert and remove the modules and the v1 norms."""
    model = sd15_unet()
    unet = model.model.diffusion_model
    tree = module_tree(unet)
    mm, _ = load_module(pack_nodes, tmp_path, "v1", SD15)
    m = pack_nodes.motion.apply_motion_module(model, mm, "autoselect", 1.0, 1.0)
    m.patch_model()
    try:
        assert len(injected_modules(unet, mm.patcher.model, motion_model_cls)) == 20
        assert module_tree(unet) != tree
    finally:
        m.unpatch_model()
    assert module_tree(unet) == tree
    m.patch_model()
    m.eject_model()  # the modules and v1's clip norms go with the injection
    assert injected_modules(unet, mm.patcher.model, motion_model_cls) == []
    assert not any(isinstance(layer, pack_nodes.clip_norms.ClipGroupNorm) for layer in unet.modules())
    assert module_tree(unet) == tree
    m.unpatch_model()
    assert module_tree(unet) == tree


# ---------------------------------------------------------------------------------- wrong family

def test_sd15_module_on_sdxl_model_is_refused(pack_nodes, tmp_path):
    mm, _ = load_module(pack_nodes, tmp_path, "v2", SD15)
    with pytest.raises(pack_nodes.motion.MotionModuleError) as e:
        pack_nodes.motion.apply_motion_module(sdxl_unet(), mm, "autoselect", 1.0, 1.0)
    assert "SD1.5" in str(e.value) and "SDXL" in str(e.value)


def test_sdxl_module_on_sd15_model_is_refused(pack_nodes, tmp_path):
    mm, _ = load_module(pack_nodes, tmp_path, "sdxl_beta", SDXL)
    with pytest.raises(pack_nodes.motion.MotionModuleError) as e:
        pack_nodes.motion.apply_motion_module(sd15_unet(), mm, "autoselect", 1.0, 1.0)
    assert "SD1.5" in str(e.value) and "SDXL" in str(e.value)


@pytest.mark.parametrize("first,second", [("v1", "v2"), ("v2", "v1")])
def test_second_module_applied_while_first_is_loaded(pack_nodes, motion_model_cls, tmp_path, first, second):
    """Two passes on one checkpoint (e.g. a workflow whose second KSampler uses another motion module): the first
    patched model is still loaded and injected when the second motion module is applied and sampled. The second
    must be placed and computed as on a clean UNet, and the first's modules and norms must be gone."""
    model = sd15_unet()
    unet = model.model.diffusion_model
    tree = module_tree(unet)
    mm1, _ = load_module(pack_nodes, tmp_path, first, SD15)
    mm2, sd2 = load_module(pack_nodes, tmp_path, second, SD15, seed=2)
    m1 = pack_nodes.motion.apply_motion_module(model, mm1, "autoselect", 1.0, 1.0)
    sample(m1, sdxl=False, steps=1)
    assert len(injected_modules(unet, mm1.patcher.model, motion_model_cls)) == (21 if first == "v2" else 20)  # loaded
    m2 = pack_nodes.motion.apply_motion_module(model, mm2, "autoselect", 1.0, 1.0)
    calls = record_unet_calls(m2, motion_model_cls)
    sample(m2, sdxl=False, steps=1)
    places = injected_modules(unet, mm2.patcher.model, motion_model_cls)
    down, mid, up = SD15_PLACES
    assert [p[:4] for p in places] == [p[:4] for p in down + (mid if second == "v2" else []) + up]
    assert all(p[4] is not None for p in places)  # all of them the second file's
    assert any(isinstance(layer, pack_nodes.clip_norms.ClipGroupNorm) for layer in unet.modules()) == (second == "v1")
    comfy.model_management.unload_all_models()
    assert module_tree(unet) == tree
    with torch.no_grad():
        expected = reference_unet(unet, sd2, calls[0], FRAMES, has_mid=second == "v2", unet_across=second == "v1")
    torch.testing.assert_close(calls[0]["out"], expected, **UNET_TOL)
