"""The one module that touches ComfyUI's ModelPatcher, through its public extension points only.

- The motion module gets a ModelPatcher of its own, attached to the model with `set_additional_models`, so
  ComfyUI loads and offloads it together with the UNet.
- A `PatcherInjection` inserts its modules into the UNet's block sequences when the model is loaded for
  sampling, and removes them when the model is unloaded (the UNet's module tree is then as before).
- A `forward_timestep_embed_patch` runs each inserted module with `transformer_options`: the frames per clip
  are derived on every call from the batch and `cond_or_uncond`; the node's settings travel in
  `transformer_options["animatediff"]`.
- For v1 modules the same injection wraps the UNet's ResBlock and output GroupNorms so that they normalise over
  the clip (as v1's un-inflated UNet does); a DIFFUSION_MODEL wrapper scopes the frame count those norms read.
- An object patch swaps the noise schedule (`model_sampling`).
- An OUTER_SAMPLE wrapper checks the frame count before the first step, logs what AnimateDiff does in the
  sampling, and warns when the motion module's layers never ran.
- Context windows: `context_windows.AnimateDiffContextHandler` (a subclass of ComfyUI's own handler) as the
  model's `context_handler`, ComfyUI's PREPARE_SAMPLING wrapper that sizes memory for one window, and an
  OUTER_SAMPLE wrapper that logs the window plan and applies FreeNoise to the initial noise.
- MotionLoRAs and the domain adapter: ComfyUI's LoRA weight patches (`add_patches`). Training them: trainable
  LoRAs as weight wrappers (`add_weight_wrapper`) on clones, and for gradient checkpointing an injection that
  puts each UNet block behind a `forward_timestep_embed_patch` running it under torch.utils.checkpoint.
"""
import contextvars
import functools
import logging
import pickle
import re
import types
import zipfile

import safetensors
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange

import comfy.lora
import comfy.model_management
import comfy.model_patcher
import comfy.model_sampling
import comfy.ops
import comfy.patcher_extension
import comfy.utils
from comfy.ldm.modules.attention import SpatialTransformer, optimized_attention
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, ResBlock, Upsample, forward_timestep_embed
from comfy.supported_models import SD15, SDXL

from ..motion_modules import formats
from ..motion_modules.model import LoRA, MotionModel, VanillaTemporalModule

from . import compat, free_init as freeinit

if compat.core is not None:
    from . import context_windows
else:  # a ComfyUI without comfy.context_windows
    context_windows = None

KEY = "animatediff"
LORAS, ADAPTER = KEY + "_motion_loras", KEY + "_domain_adapter"  # in the patchers' model_options, for the log
BETA_SCHEDULES = ["autoselect", "use_model_default", "sqrt_linear", "linear", "cosine", "squaredcos_cap_v2",
                  "sqrt", "lcm"]
CLIP_FRAMES = contextvars.ContextVar("animatediff_clip_frames")


class MotionModuleError(ValueError):
    pass


def read_file(path, name):
    """The state dict in the file at `path` (`name` for messages); a pickle is read with weights_only=True."""
    try:
        return comfy.utils.load_torch_file(path, safe_load=True)
    except Exception as e:
        code = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if code:
            raise MotionModuleError(
                f"Refused to load '{name}': it is a pickle that asks to run Python code ({code.group(1)}), and only "
                "plain weights are loaded (nothing in it was run). Use a .safetensors copy of this file.") from None
        reason = "not valid pickle data" if isinstance(e, pickle.UnpicklingError) else str(e).strip().splitlines()[0]
        raise MotionModuleError(
            f"Could not read '{name}' ({reason[:200]}). The file is damaged or incomplete (compare its size with "
            "the original) or is not a model file; download it again.") from None


@functools.lru_cache(maxsize=1024)
def file_kind(path, mtime_ns, size):
    """formats.classify of the file at `path`, from its keys alone (safetensors header; a zip pickle memory-
    mapped with weights_only=True, an old-style one read whole); None when it cannot be read. Cached per
    (path, mtime, size)."""
    try:
        if path.endswith(".safetensors"):
            with safetensors.safe_open(path, framework="pt") as f:
                keys = list(f.keys())
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
            keys = list(sd.get("state_dict", sd))
    except Exception:
        return None
    return formats.classify(dict.fromkeys(keys))


def load_motion_module(path, name):
    """A ModelPatcher around the motion module in the file at `path` (`name` for messages)."""
    return motion_module_patcher(read_file(path, name), name)


def new_motion_module(model, positions, seed, name="new motion module"):
    """A freshly initialised v1 (24 positions) or v3 (32) layout motion module for `model`'s UNet, as the paper
    starts stage 2: torch's default initialisation and a zero `proj_out`, so the model starts as the image
    model."""
    down, up = unet_levels(model.get_model_object("diffusion_model"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sd = MotionModel([(b[0][0].out_channels, len(b)) for b in down],
                         [(b[0][0].out_channels, len(b)) for b in up], None, positions).state_dict()
    return motion_module_patcher({k: torch.zeros_like(v) if ".proj_out." in k else v for k, v in sd.items()}, name)


def motion_module_patcher(sd, name):
    try:
        info, sd = formats.load(sd)
    except formats.NotAMotionModule as e:
        raise MotionModuleError(f"'{name}' is not a motion module. {e}") from None
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    dtype = comfy.model_management.unet_dtype(model_params=sum(v.numel() for v in sd.values()))
    model = MotionModel(**info.model_kwargs(), dtype=dtype, device=offload_device, operations=comfy.ops.manual_cast)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise MotionModuleError(f"'{name}' has an unexpected motion-module layout ({len(missing)} missing keys such "
                                f"as {missing[:2]}, {len(unexpected)} unexpected such as {unexpected[:2]}).")
    model.info = info
    model.name = name
    logging.info("AnimateDiff: loaded %s: %s %s motion module, %d frame positions", name, info.family, info.format,
                 info.pe_rows)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def model_family(model):
    config = model.model.model_config
    return "SD1.5" if isinstance(config, SD15) else "SDXL" if isinstance(config, SDXL) else type(config).__name__


def apply_motion_module(model, motion_module, beta_schedule, motion_scale, effect, motion_scale_schedule=None,
                        effect_schedule=None):
    """A clone of `model` that runs `motion_module` (a patcher from `load_motion_module`) while sampling. A schedule
    (floats, one per frame, or a MASK batch [frames or 1, H, W], per frame and pixel) takes the place of its
    scalar."""
    info = motion_module.model.info
    family = model_family(model)
    if family != info.family:
        raise MotionModuleError(
            f"The motion module '{motion_module.model.name}' is for {info.family} ({info.format}), but the model is "
            f"{family}. Use it with an {info.family} checkpoint, or load a motion module made for {family}.")
    m = model.clone()
    places = placements(m.get_model_object("diffusion_model"), motion_module.model)
    clip_norms = info.unet_norm_across_frames
    m.set_injections(KEY, [comfy.patcher_extension.PatcherInjection(
        inject=functools.partial(inject, places, clip_norms), eject=functools.partial(eject, places, clip_norms))])
    m.set_additional_models(KEY, [motion_module])
    patches = m.model_options["transformer_options"].get("patches", {}).get("forward_timestep_embed_patch", [])
    if not any(cls is VanillaTemporalModule for cls, _ in patches):
        m.set_model_forward_timestep_embed_patch((VanillaTemporalModule, run_motion_module))
    m.model_options["transformer_options"][KEY] = {
        "name": motion_module.model.name, "format": info.format, "positions": info.pe_rows,
        "motion_scale": strength(motion_scale, motion_scale_schedule), "effect": strength(effect, effect_schedule),
        "loras": motion_module.model_options.get(LORAS, ()),
        "ran": types.SimpleNamespace(calls=0)}  # motion-module calls; each sampling counts its own
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, KEY, sample_animation)
    if clip_norms:
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, KEY, scope_clip_frames)
    sampling = model_sampling(m, info.beta_schedule if beta_schedule == "autoselect" else beta_schedule)
    if sampling is not None:
        m.add_object_patch("model_sampling", sampling)
    return m


def strength(scalar, schedule):
    """The scalar as a float, or the schedule as a tensor: [frames, 1, 1] from floats, a MASK [frames or 1, H, W]."""
    if schedule is None:
        return float(scalar)
    values = torch.as_tensor(schedule, dtype=torch.float32).cpu()
    return values.reshape(-1, 1, 1) if values.ndim <= 1 else values.reshape(-1, *values.shape[-2:])


def describe(value):
    """A strength as the log line says it."""
    if isinstance(value, float):
        return f"{value:g}"
    return f"{'per frame' if value.shape[1:] == (1, 1) else 'per pixel'} ({value.shape[0]} frames)"


def unet_levels(unet):
    """The UNet's ResBlock-led blocks per level: ([[block, ...] per down level], [... per up level])."""
    def level_blocks(blocks, ends_level):
        levels, level = [], []
        for block in blocks:
            if isinstance(block[0], ResBlock):
                level.append(block)
            if ends_level(block):
                levels.append(level)
                level = []
        return levels + [level] if level else levels

    return (level_blocks(unet.input_blocks[1:], lambda b: isinstance(b[0], Downsample)),
            level_blocks(unet.output_blocks, lambda b: isinstance(b[-1], Upsample)))


def placements(unet, motion_model):
    """[(block, index, motion module)]: in each UNet block after its last SpatialTransformer, else after its
    first ResBlock (so before any Downsample/Upsample); in the middle block between transformer and ResBlock."""
    def index(block):
        attention = [i for i, layer in enumerate(block) if isinstance(layer, SpatialTransformer)]
        return attention[-1] + 1 if attention else 1

    down, up = unet_levels(unet)
    unet_layout = ([(b[0][0].out_channels, len(b)) for b in down], [(b[0][0].out_channels, len(b)) for b in up])
    info = motion_model.info
    if unet_layout != (list(info.down), list(info.up)):
        raise MotionModuleError(
            f"The motion module '{motion_model.name}' does not fit this UNet: its (channels, modules) per level are "
            f"down {list(info.down)}, up {list(info.up)}; the UNet's are down {unet_layout[0]}, up {unet_layout[1]}.")
    places = [(block, index(block), motion.motion_modules[i])
              for levels, motion_blocks in ((down, motion_model.down_blocks), (up, motion_model.up_blocks))
              for level, motion in zip(levels, motion_blocks) for i, block in enumerate(level)]
    if motion_model.mid_block is not None:
        places.append((unet.middle_block, index(unet.middle_block), motion_model.mid_block.motion_modules[0]))
    return places


def inject(places, clip_norms, model_patcher):
    """Insert the motion modules (and v1's clip norms) where they are not in place already. Both this and eject
    look at the UNet, not at the patcher's is_injected: a clone of a loaded patcher copies that flag, so on a
    warm ComfyUI (a cached Apply AnimateDiff Motion Module, cloned by Context Windows or FreeInit) the clone comes
    to eject modules its original's unloading took out already."""
    for block, i, module in places:
        if not (i < len(block) and block[i] is module):
            block.insert(i, module)
    if clip_norms:
        for layers in norm_sequences(model_patcher.model.diffusion_model):
            if not isinstance(layers[0], ClipGroupNorm):
                layers[0] = ClipGroupNorm(layers[0])


def eject(places, clip_norms, model_patcher):
    if clip_norms:
        for layers in norm_sequences(model_patcher.model.diffusion_model):
            if isinstance(layers[0], ClipGroupNorm):
                layers[0] = layers[0].norm
    for block, i, module in places:
        if i < len(block) and block[i] is module:
            del block[i]


def norm_sequences(unet):
    """The layer sequences that start with a GroupNorm v1's UNet normalises over the clip: ResBlocks', output's."""
    resblocks = [m for m in unet.modules() if isinstance(m, ResBlock)]
    return [r.in_layers for r in resblocks] + [r.out_layers for r in resblocks] + [unet.out]


def run_motion_module(layer, x, emb, context, transformer_options, *args):
    settings = transformer_options[KEY]
    settings["ran"].calls += 1
    if isinstance(settings["effect"], float) and settings["effect"] == 0:
        return x
    batches = len(transformer_options.get("cond_or_uncond", [0]))
    frames = x.shape[0] // batches
    motion_scale, effect = settings["motion_scale"], settings["effect"]
    if not isinstance(effect, float):
        effect = per_frame(effect, transformer_options, frames, batches, x)
    if not isinstance(motion_scale, float):  # [(b f), 1, h, w] -> the keys' layout
        motion_scale = rearrange(per_frame(motion_scale, transformer_options, frames, batches, x),
                                 "(b f) 1 h w -> (b h w) f 1", f=frames)
    attention = functools.partial(optimized_attention, transformer_options=transformer_options)
    return layer(x, frames, attention, motion_scale, effect)


def per_frame(schedule, transformer_options, frames, batches, x):
    """A strength per frame ([frames]) or per frame and pixel (a MASK, [frames or 1, H, W]) for the frames of this
    call (its context window's, else all), at x's resolution: [(b f), 1, h, w]."""
    window = transformer_options.get("ad_params", {}).get("sub_idxs", list(range(frames)))
    values = schedule[window] if schedule.shape[0] > 1 else schedule.expand(len(window), *schedule.shape[1:])
    values = F.interpolate(values.reshape(len(window), 1, *values.shape[1:]).to(x), size=x.shape[2:],
                           mode="area")  # a mask at pixel size: each latent cell its average
    return values.repeat(batches, 1, 1, 1)


def sample_animation(executor, noise, *args, **kwargs):
    """OUTER_SAMPLE: check the frames against the positions and per-frame conditioning, say what AnimateDiff does
    in this sampling, and warn when the motion module's layers never ran."""
    model_options = executor.class_obj.model_options
    settings, frames = model_options["transformer_options"][KEY], noise.shape[0]
    handler, positions = model_options.get("context_handler"), settings["positions"]
    ours = context_windows is not None and isinstance(handler, context_windows.AnimateDiffContextHandler)
    if frames > positions and not ours:
        raise MotionModuleError(
            f"{frames} frames is more than the {positions} frame positions of the motion module "
            f"'{settings['name']}'. Set the latent batch size (Empty Latent Image's batch_size) to at most "
            f"{positions}, or sample in context windows: put AnimateDiff Context Windows after Apply AnimateDiff "
            f"Motion Module" + (" (instead of ComfyUI's Context Windows (Manual), which does not handle frames "
                                "as the batch)" if handler is not None else "") + ".")
    if ours and handler.context_length > positions:
        raise MotionModuleError(
            f"context_length {handler.context_length} is more than the {positions} frame positions of the motion "
            f"module '{settings['name']}'. Set AnimateDiff Context Windows' context_length to at most {positions} "
            "(16 is what the modules were trained on).")
    for name, conds in executor.class_obj.conds.items():
        rows = max((c["cross_attn"].shape[0] for c in conds if c.get("cross_attn") is not None), default=1)
        if 1 < rows != frames:
            raise MotionModuleError(
                f"The {name} conditioning has {rows} rows, one per frame (AnimateDiff Prompt Travel's frames), but "
                f"the latent batch has {frames} frames. Set Prompt Travel's frames to {frames}, or Empty Latent "
                f"Image's batch_size to {rows}.")
    if frames < 2:
        logging.warning("AnimateDiff needs a batch of frames: the latent batch has %d. Set the Empty Latent Image's "
                        "batch_size to the number of frames (16 is typical).", frames)
    windows = len(handler.plan(frames)) if ours and frames > handler.context_length else 0
    adapter = model_options.get(ADAPTER)
    for name in ("motion_scale", "effect"):
        if not isinstance(settings[name], float) and 1 < settings[name].shape[0] != frames:
            raise MotionModuleError(
                f"The {name} schedule of Apply AnimateDiff Motion Module has {settings[name].shape[0]} values, one "
                f"per frame, but the latent batch has {frames} frames. Give one value (or mask) per frame, or a "
                "single mask for every frame.")
    logging.info("AnimateDiff: %s motion module %s on %d frames%s; motion_scale %s, effect %s; MotionLoRAs: %s; "
                 "domain adapter: %s", settings["format"], settings["name"], frames,
                 f" in {windows} context windows of {handler.context_length}" if windows else "",
                 describe(settings["motion_scale"]), describe(settings["effect"]),
                 ", ".join(f"{n} ({s:g})" for n, s in settings["loras"]) or "none",
                 f"{adapter[0]} ({adapter[1]:g})" if adapter else "none")
    settings["ran"] = types.SimpleNamespace(calls=0)  # not a dict, so the per-step copies of the options share it
    out = executor(noise, *args, **kwargs)
    if settings["ran"].calls == 0:
        logging.warning("AnimateDiff: the motion module %s was attached but its layers never ran in this sampling, "
                        "so the frames were sampled as independent images: something answered for the UNet (a "
                        "wrapper or model patch of another node). Check the nodes that patch the model after "
                        "Apply AnimateDiff Motion Module.", settings["name"])
    return out


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


def scope_clip_frames(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
    token = CLIP_FRAMES.set(x.shape[0] // len(transformer_options.get("cond_or_uncond", [0])))
    try:
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
    finally:
        CLIP_FRAMES.reset(token)


def model_sampling(model, schedule):
    """A `model_sampling` object with the beta schedule `schedule`, the model's prediction type and settings."""
    if schedule == "use_model_default":
        return None
    base = comfy.model_sampling.ModelSamplingDiscrete
    prediction = type(model.get_model_object("model_sampling")).__bases__[-1]
    if schedule == "lcm":  # AnimateLCM: LCM's boundary condition and 50 original steps, on AnimateDiff's betas
        from comfy_extras.nodes_model_advanced import LCM, ModelSamplingDiscreteDistilled
        base, prediction, schedule = ModelSamplingDiscreteDistilled, LCM, "sqrt_linear"
    settings = dict(model.model.model_config.sampling_settings, beta_schedule=schedule)
    return type("AnimateDiffModelSampling", (base, prediction), {})(types.SimpleNamespace(sampling_settings=settings))


def apply_context_windows(model, context_length, context_overlap, context_schedule, context_stride, closed_loop,
                          fuse_method, freenoise):
    """A clone of `model` that samples its frames in overlapping windows (ComfyUI's context handler)."""
    if context_windows is None:
        raise MotionModuleError(compat.too_old("AnimateDiff Context Windows",
                                               "ComfyUI's context windows (comfy.context_windows)"))
    if context_overlap >= context_length:
        raise MotionModuleError(f"context_overlap ({context_overlap}) must be smaller than context_length "
                                f"({context_length}): windows that overlap completely never advance.")
    m = model.clone()
    m.model_options["context_handler"] = context_windows.AnimateDiffContextHandler(
        compat.core.get_matching_context_schedule(context_schedule),
        compat.core.get_matching_fuse_method(fuse_method),
        context_length, context_overlap, context_stride, closed_loop, freenoise)
    compat.core.create_prepare_sampling_wrapper(m)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, KEY + "_context", start_context_windows)
    return m


def start_context_windows(executor, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                          disable_pbar=False, seed=None, **kwargs):
    handler = executor.class_obj.model_options["context_handler"]
    handler.log_plan(noise.shape[0])
    if handler.freenoise:
        noise = compat.apply_freenoise(noise.clone(), 0, handler.context_length, handler.context_overlap, seed or 0)
    return executor(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed, **kwargs)


def apply_free_init(model, iterations, filter_kind, spatial, temporal, report):
    """A clone of `model` that samples in `iterations` FreeInit iterations (a SAMPLER_SAMPLE wrapper, inside the
    initial noise's FreeNoise); `report(i)` is told each iteration's number. 1 iteration leaves sampling as it is."""
    m = model.clone()
    if iterations > 1:
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, KEY + "_free_init", functools.partial(
            sample_free_init, dict(iterations=iterations, kind=filter_kind, spatial=spatial, temporal=temporal,
                                   report=report)))
    return m


def sample_free_init(settings, executor, guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask,
                     disable_pbar):
    """SAMPLER_SAMPLE: sample, then (FreeInit) restart from the result's low frequencies diffused back with the
    initial noise plus fresh noise's high frequencies (seeded by the sampling seed and the iteration), N times."""
    h = freeinit.low_pass_filter(noise.shape[0], noise.shape[2], noise.shape[3], settings["kind"], settings["spatial"],
                                 settings["temporal"])

    def run(i, start_noise, start_latent):
        logging.info("AnimateDiff FreeInit: iteration %d of %d", i, settings["iterations"])
        settings["report"](i)
        return executor(guider, sigmas, extra_args, callback, start_noise, start_latent, denoise_mask, disable_pbar)

    out = run(1, noise, latent_image)
    for i in range(2, settings["iterations"] + 1):
        fresh = torch.randn(noise.shape, generator=torch.Generator().manual_seed((extra_args.get("seed") or 0) + i - 1))
        start_latent, start_noise = freeinit.reinitialise(out, noise, fresh.to(noise), h)
        out = run(i, start_noise, start_latent)
    return out


def lora_patches(sd, key_map, weights, name, kind, target):
    """ComfyUI LoRA patches of the processor-LoRA state dict `sd` ({name}_lora.up/down.weight) on the weights
    `key_map` names, shapes checked; also the entry names that have no target."""
    found = formats.classify(sd)
    if found != kind:
        raise MotionModuleError(f"'{name}' is not {formats.KINDS[kind][0]}. {formats.describe(found)}")
    patches = comfy.lora.load_lora(sd, key_map, log_missing=False)
    if not patches:
        raise MotionModuleError(f"None of the {len(sd)} tensors of '{name}' (such as '{next(iter(sd))}') matches a "
                                f"weight of {target}: it was made for another model.")
    unmatched = sorted({k.rsplit("_lora.", 1)[0] for k in sd if "_lora." in k} - set(key_map))
    for key, patch in patches.items():
        up, down = patch.weights[0], patch.weights[1]
        if (up.shape[0], down.shape[1]) != tuple(weights[key].shape):
            raise MotionModuleError(f"'{name}' was made for another model: its entry for {key} is "
                                    f"{up.shape[0]}x{down.shape[1]}, but the weight of {target} is "
                                    f"{tuple(weights[key].shape)}.")
    return patches, unmatched


def load_motion_lora(motion_module, path, name, strength):
    """A clone of the motion-module patcher with the MotionLoRA at `path` as weight patches: W + strength * up @
    down."""
    module = motion_module.model
    weights = module.state_dict()
    patches, unmatched = lora_patches(read_file(path, name), formats.motion_lora_key_map(weights), weights, name,
                                      "motion_lora", f"the motion module '{module.name}'")
    other = [e for e in unmatched if not e.startswith("mid_block.")]
    if other:
        raise MotionModuleError(f"{len(other)} LoRA entries of '{name}' (such as '{other[0]}') match no weight of "
                                f"the motion module '{module.name}' ({module.info.format}): it was made for another "
                                "kind of motion module.")
    m = motion_module.clone()
    m.add_patches(patches, strength)
    m.model_options[LORAS] = motion_module.model_options.get(LORAS, ()) + ((name, strength),)
    logging.info("AnimateDiff: MotionLoRA %s at strength %g on %s: %d of %d LoRA weights applied%s", name, strength,
                 module.name, len(patches), len(patches) + len(unmatched),
                 f"; {len(unmatched)} mid-block weights skipped (this {module.info.format} module has no mid block)"
                 if unmatched else "")
    return m


def apply_domain_adapter(model, path, name, strength):
    """A clone of `model` with the v3 domain adapter at `path` applied through ComfyUI's LoRA patching."""
    family = model_family(model)
    if family != "SD1.5":
        raise MotionModuleError(f"The domain adapter '{name}' is for SD1.5 (AnimateDiff v3), but the model is "
                                f"{family}. Use it with an SD1.5 checkpoint.")
    weights = model.model_state_dict()
    patches, unmatched = lora_patches(read_file(path, name), comfy.lora.model_lora_keys_unet(model.model, {}),
                                      weights, name, "domain_adapter", "this SD1.5 UNet")
    if unmatched:
        raise MotionModuleError(f"{len(unmatched)} LoRA entries of '{name}' (such as '{unmatched[0]}') match no "
                                "weight of this SD1.5 UNet: it was made for another model.")
    m = model.clone()
    m.add_patches(patches, strength)
    m.model_options[ADAPTER] = (name, strength)
    logging.info("AnimateDiff: domain adapter %s at strength %g: %d LoRA weights", name, strength, len(patches))
    return m


# ------------------------------------------------------------------------------------------------ training

# the v3 adapter's entries: diffusers names of the spatial attention projections, as comfy.lora maps them
ADAPTER_ENTRY = re.compile(r"(down_blocks|mid_block|up_blocks)\.\S+\.attn[12]\.processor\.to_(q|k|v|out)")


def trainable(model, motion_module, part, rank, seed, gradient_checkpointing=False):
    """(patched model to run, {file key: parameter}) for training `part` with everything else frozen:
    "domain_adapter" (LoRAs on the image model's spatial attention, attn1/attn2 q, k, v, out), "motion_module"
    (the motion module's own weights), "motion_lora" (LoRAs on its temporal attention q, k, v, out) or
    "image_model" (the UNet's own weights, for toy models).

    LoRAs are weight wrappers (`add_weight_wrapper`) on clones, so nothing the other nodes hold changes; their
    keys are the MotionLoRA layout (shared doc 4) or the v3 adapter layout. `motion_module` and `image_model`
    train the weights of the given module or UNet themselves (in fp32). Frozen weights and biases made under
    inference mode (by ComfyUI's loaders) get an identity wrapper: wrapped tensors are copied for each forward,
    and autograd can save a copy. `gradient_checkpointing` recomputes each UNet block in the backward."""
    generator = torch.Generator().manual_seed(seed)
    m, module, params = model.clone(), motion_module and motion_module.clone(), {}

    def add_loras(patcher, key_map):
        weights = patcher.model.state_dict()
        for entry, key in sorted(key_map.items()):
            lora = LoRA(weights[key], rank, generator)
            patcher.add_weight_wrapper(key, lora)
            params[entry + "_lora.down.weight"], params[entry + "_lora.up.weight"] = lora.down, lora.up

    if part == "domain_adapter":
        add_loras(m, {entry: key for entry, key in comfy.lora.model_lora_keys_unet(m.model, {}).items()
                      if ADAPTER_ENTRY.fullmatch(entry)})
    elif part == "motion_lora":
        add_loras(module, formats.motion_lora_key_map(module.model.state_dict()))
    elif part == "motion_module":
        params = dict(module.model.float().named_parameters())
    elif part == "image_model":
        params = {"diffusion_model." + k: v for k, v in m.model.diffusion_model.float().named_parameters()}
    for patcher in (m, module) if module else (m,):
        patcher.model.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    for patcher in (m, module) if module else (m,):
        for name, layer in patcher.model.named_modules():
            for kind in ("weight", "bias") if hasattr(layer, "weight_function") else ():
                tensor, key = getattr(layer, kind, None), f"{name}.{kind}"
                if tensor is not None and tensor.is_inference() and key not in patcher.weight_wrapper_patches:
                    patcher.add_weight_wrapper(key, torch.nn.Identity())
    if module:
        m = apply_motion_module(m, module, "autoselect", 1.0, 1.0)
    if gradient_checkpointing:
        unet = m.get_model_object("diffusion_model")
        blocks = [(unet.input_blocks, str(i)) for i in range(len(unet.input_blocks))] + [(unet, "middle_block")] + \
                 [(unet.output_blocks, str(i)) for i in range(len(unet.output_blocks))]
        m.set_injections(KEY + "_checkpointing", [comfy.patcher_extension.PatcherInjection(
            inject=functools.partial(checkpoint_blocks, blocks), eject=functools.partial(restore_blocks, blocks))])
        m.set_model_forward_timestep_embed_patch((Checkpointed, run_checkpointed))
    return m, params


class Checkpointed(torch.nn.Module):
    """Stands in for one UNet block while training with gradient checkpointing (see `run_checkpointed`)."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def __iter__(self):  # the UNet hands blocks to forward_timestep_embed, which iterates their layers
        return iter([self])


def checkpoint_blocks(blocks, model_patcher):
    for parent, name in blocks:
        setattr(parent, name, Checkpointed(getattr(parent, name)))


def restore_blocks(blocks, model_patcher):
    for parent, name in blocks:
        setattr(parent, name, getattr(parent, name).block)


def run_checkpointed(layer, x, emb, context, transformer_options, *args):
    return torch.utils.checkpoint.checkpoint(forward_timestep_embed, layer.block, x, emb, context,
                                             transformer_options, *args, use_reentrant=False)
