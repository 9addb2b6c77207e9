"""The motion module in ComfyUI: loading it, attaching it to a model, and running it inside the stock samplers.

- Load AnimateDiff Motion Module gives a `MotionModule`: the pure-torch `MotionModel` in a ModelPatcher of its
  own (so ComfyUI loads and offloads it with the UNet, and MotionLoRAs are weight patches on it), what its file
  is (`formats.MotionModuleInfo`) and the MotionLoRAs applied.
- Apply AnimateDiff Motion Module clones the model and attaches it through public extension points only: the
  patcher as an additional model; a `PatcherInjection` that inserts its modules into the UNet's blocks while the
  model is loaded and takes them out when it is unloaded; a `forward_timestep_embed_patch` that runs each of them
  with the call's `transformer_options`; an OUTER_SAMPLE wrapper with the checks before the first step; an object
  patch for the noise schedule; and, for v1, `clip_norms`.
- The settings travel in `transformer_options["animatediff"]` as a `Settings`.
"""
import dataclasses
import functools
import logging

import torch
from comfy_api.latest import io
from einops import rearrange

import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import folder_paths
from comfy.ldm.modules.attention import SpatialTransformer, optimized_attention
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, ResBlock, Upsample
from comfy.supported_models import SD15, SDXL

from ..motion_modules import formats
from ..motion_modules.model import MotionModel, VanillaTemporalModule

from . import beta_schedules, clip_norms, context_windows, files, frames as frame_calls, strengths

KEY = "animatediff"
ADAPTER = KEY + "_domain_adapter"  # model_options: the domain adapter's (file name, strength), for the log line


class MotionModuleError(files.AnimateDiffError):
    pass


@dataclasses.dataclass(frozen=True)
class MotionModule:
    """What the ANIMATEDIFF_MOTION_MODULE socket carries."""
    patcher: comfy.model_patcher.ModelPatcher  # the MotionModel, with MotionLoRAs as weight patches
    info: formats.MotionModuleInfo
    name: str
    loras: tuple = ()  # ((file name, strength), ...) applied to the patcher


class Calls:
    """How often the motion module's layers ran; a sampling compares the count before and after."""

    def __init__(self):
        self.count = 0

    def add(self):
        self.count += 1


@dataclasses.dataclass(frozen=True)
class Settings:
    """transformer_options["animatediff"]: what the motion module's calls need. Shared, never copied, by every copy
    core makes of the options (deep copies included), so `calls` counts the calls of all of them."""
    name: str
    format: str
    positions: int
    motion_scale: float | torch.Tensor  # a float, or a schedule (see `strength`)
    effect: float | torch.Tensor
    loras: tuple
    calls: Calls = dataclasses.field(default_factory=Calls)

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


def load_motion_module(path, name):
    """The motion module in the file at `path` (`name` for messages)."""
    return motion_module(files.read_file(path, name), name)


def new_motion_module(model, positions, seed, name="new motion module"):
    """A freshly initialised v1 (24 positions) or v3 (32) layout motion module for `model`'s UNet, as the paper
    starts stage 2: torch's default initialisation and a zero `proj_out`, so the model starts as the image
    model."""
    down, up = unet_layout(model.get_model_object("diffusion_model"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sd = MotionModel(down, up, None, positions).state_dict()
    return motion_module({k: torch.zeros_like(v) if ".proj_out." in k else v for k, v in sd.items()}, name)


def motion_module(sd, name):
    try:
        info, sd = formats.load(sd)
    except formats.NotAMotionModule as e:
        raise MotionModuleError(f"'{name}' is not a motion module. {files.describe(e)}") from None
    model = files.build(MotionModel, info.model_kwargs(), sd, name, "motion-module")
    logging.info("AnimateDiff: loaded %s: %s %s motion module, %d frame positions", name, info.family, info.format,
                 info.pe_rows)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                               offload_device=comfy.model_management.unet_offload_device())
    return MotionModule(patcher, info, name)


def model_family(model):
    config = model.model.model_config
    return "SD1.5" if isinstance(config, SD15) else "SDXL" if isinstance(config, SDXL) else type(config).__name__


def apply_motion_module(model, motion, beta_schedule, motion_scale, effect, motion_scale_schedule=None,
                        effect_schedule=None):
    """A clone of `model` that runs `motion` (a MotionModule) while sampling. A schedule (floats, one per frame, or a
    MASK batch [frames or 1, H, W], per frame and pixel) takes the place of its scalar."""
    family = model_family(model)
    if family != motion.info.family:
        raise MotionModuleError(
            f"The motion module '{motion.name}' is for {motion.info.family} ({motion.info.format}), but the model is "
            f"{family}. Use it with an {motion.info.family} checkpoint, or load a motion module made for {family}.")
    m = model.clone()
    places = placements(m.get_model_object("diffusion_model"), motion)
    m.set_injections(KEY, [comfy.patcher_extension.PatcherInjection(
        inject=functools.partial(inject, places), eject=functools.partial(eject, places))])
    m.set_additional_models(KEY, [motion.patcher])
    patches = m.model_options["transformer_options"].get("patches", {}).get("forward_timestep_embed_patch", [])
    if not any(cls is VanillaTemporalModule for cls, _ in patches):
        m.set_model_forward_timestep_embed_patch((VanillaTemporalModule, run_motion_module))
    m.model_options["transformer_options"][KEY] = Settings(
        motion.name, motion.info.format, motion.info.pe_rows, strengths.strength(motion_scale, motion_scale_schedule),
        strengths.strength(effect, effect_schedule), motion.loras)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, KEY, sample_animation)
    if motion.info.unet_norm_across_frames:
        clip_norms.attach(m)
    schedule = motion.info.beta_schedule if beta_schedule == "autoselect" else beta_schedule
    sampling = beta_schedules.model_sampling(m, schedule)
    if sampling is not None:
        m.add_object_patch("model_sampling", sampling)
    return m


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


def unet_layout(unet):
    """([(channels, blocks) per down level], [... per up level]): what a motion module must match."""
    return tuple([(level[0][0].out_channels, len(level)) for level in levels] for levels in unet_levels(unet))


def placements(unet, motion):
    """[(block, index, motion module)]: in each UNet block after its last SpatialTransformer, else after its
    first ResBlock (so before any Downsample/Upsample); in the middle block between transformer and ResBlock."""
    def index(block):
        attention = [i for i, layer in enumerate(block) if isinstance(layer, SpatialTransformer)]
        return attention[-1] + 1 if attention else 1

    layout, info, model = unet_layout(unet), motion.info, motion.patcher.model
    if layout != (list(info.down), list(info.up)):
        raise MotionModuleError(
            f"The motion module '{motion.name}' does not fit this UNet: its (channels, modules) per level are "
            f"down {list(info.down)}, up {list(info.up)}; the UNet's are down {layout[0]}, up {layout[1]}.")
    places = [(block, index(block), motion_block.motion_modules[i])
              for levels, motion_blocks in zip(unet_levels(unet), (model.down_blocks, model.up_blocks))
              for level, motion_block in zip(levels, motion_blocks) for i, block in enumerate(level)]
    if model.mid_block is not None:
        places.append((unet.middle_block, index(unet.middle_block), model.mid_block.motion_modules[0]))
    return places


def inject(places, model_patcher):
    """Insert the motion modules where they are not in place already. Both this and eject look at the UNet, not
    at the patcher's is_injected: a clone of a loaded patcher copies that flag, so on a warm ComfyUI (a cached
    Apply AnimateDiff Motion Module, cloned by Context Windows or FreeInit) the clone comes to eject modules its
    original's unloading took out already."""
    for block, i, module in places:
        if not (i < len(block) and block[i] is module):
            block.insert(i, module)


def eject(places, model_patcher):
    for block, i, module in places:
        if i < len(block) and block[i] is module:
            del block[i]


def run_motion_module(layer, x, emb, context, transformer_options, *args):
    """forward_timestep_embed_patch: one motion module on x [(b f), c, h, w]."""
    settings = transformer_options[KEY]
    settings.calls.add()
    if isinstance(settings.effect, float) and settings.effect == 0:
        return x
    frames = frame_calls.per_clip(x, transformer_options)
    motion_scale, effect = settings.motion_scale, settings.effect
    if not isinstance(effect, float):
        effect = strengths.per_frame(effect, transformer_options, frames, x)
    if not isinstance(motion_scale, float):  # [(b f), 1, h, w] -> the keys' layout
        motion_scale = rearrange(strengths.per_frame(motion_scale, transformer_options, frames, x),
                                 "(b f) 1 h w -> (b h w) f 1", f=frames)
    attention = functools.partial(optimized_attention, transformer_options=transformer_options)
    return layer(x, frames, attention, motion_scale, effect)


def sample_animation(executor, noise, *args, **kwargs):
    """OUTER_SAMPLE: check the frames against the positions and per-frame conditioning, say what AnimateDiff does
    in this sampling, and warn when the motion module's layers never ran."""
    model_options = executor.class_obj.model_options
    settings, frames = model_options["transformer_options"][KEY], noise.shape[0]
    handler = model_options.get("context_handler")
    ours = isinstance(handler, context_windows.AnimateDiffContextHandler)
    if frames > settings.positions and not ours:
        raise MotionModuleError(
            f"{frames} frames is more than the {settings.positions} frame positions of the motion module "
            f"'{settings.name}'. Set the latent batch size (Empty Latent Image's batch_size) to at most "
            f"{settings.positions}, or sample in context windows: put AnimateDiff Context Windows after Apply "
            "AnimateDiff Motion Module" + (" (instead of ComfyUI's Context Windows (Manual), which does not handle "
                                           "frames as the batch)" if handler is not None else "") + ".")
    if ours and handler.context_length > settings.positions:
        raise MotionModuleError(
            f"context_length {handler.context_length} is more than the {settings.positions} frame positions of the "
            f"motion module '{settings.name}'. Set AnimateDiff Context Windows' context_length to at most "
            f"{settings.positions} (16 is what the modules were trained on).")
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
    for name in ("motion_scale", "effect"):
        value = getattr(settings, name)
        if not isinstance(value, float) and 1 < value.shape[0] != frames:
            raise MotionModuleError(
                f"The {name} schedule of Apply AnimateDiff Motion Module has {value.shape[0]} values, one per frame, "
                f"but the latent batch has {frames} frames. Give one value (or mask) per frame, or a single mask "
                "for every frame.")
    windows = len(handler.plan(frames)) if ours and frames > handler.context_length else 0
    adapter = model_options.get(ADAPTER)
    logging.info("AnimateDiff: %s motion module %s on %d frames%s; motion_scale %s, effect %s; MotionLoRAs: %s; "
                 "domain adapter: %s", settings.format, settings.name, frames,
                 f" in {windows} context windows of {handler.context_length}" if windows else "",
                 strengths.describe(settings.motion_scale), strengths.describe(settings.effect),
                 ", ".join(f"{n} ({s:g})" for n, s in settings.loras) or "none",
                 f"{adapter[0]} ({adapter[1]:g})" if adapter else "none")
    start = settings.calls.count
    out = executor(noise, *args, **kwargs)
    if settings.calls.count == start:
        logging.warning("AnimateDiff: the motion module %s was attached but its layers never ran in this sampling, "
                        "so the frames were sampled as independent images: something answered for the UNet (a "
                        "wrapper or model patch of another node). Check the nodes that patch the model after "
                        "Apply AnimateDiff Motion Module.", settings.name)
    return out


Socket = io.Custom("ANIMATEDIFF_MOTION_MODULE")


class AnimateDiffLoadMotionModule(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AnimateDiffLoadMotionModule",
            display_name="Load AnimateDiff Motion Module",
            category="animatediff",
            description="Loads an AnimateDiff motion module (v1, v2, v3, SDXL beta, Hotshot-XL, AnimateLCM, "
                        "Lightning; .ckpt or .safetensors) from models/animatediff_models. The format is detected "
                        "from the file's keys.",
            inputs=[io.Combo.Input("motion_module", options=folder_paths.get_filename_list(files.MODELS),
                                   tooltip="A motion-module file in models/animatediff_models, e.g. mm_sd_v15_v2.ckpt.")],
            outputs=[Socket.Output(tooltip="The motion module, ready for Apply AnimateDiff Motion Module.")],
        )

    @classmethod
    def execute(cls, motion_module):
        path = files.full_path((files.MODELS,), motion_module)
        return io.NodeOutput(load_motion_module(path, motion_module))


class AnimateDiffApplyMotionModule(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AnimateDiffApplyMotionModule",
            display_name="Apply AnimateDiff Motion Module",
            category="animatediff",
            description="Animates an SD1.5 or SDXL model: its latent batch becomes the frames of one animation, "
                        "which the motion module's temporal layers tie together while the stock samplers run. "
                        "The input model is left unchanged.",
            inputs=[
                io.Model.Input("model", tooltip="The image model (checkpoint, with any LoRAs) to animate."),
                Socket.Input("motion_module", tooltip="From Load AnimateDiff Motion Module; it must match the "
                                   "model's family (SD1.5 or SDXL)."),
                io.Combo.Input("beta_schedule", options=beta_schedules.BETA_SCHEDULES, default="autoselect",
                               tooltip="Noise schedule while sampling. autoselect: the one the motion module was "
                                       "trained with (sqrt_linear for AnimateDiff, lcm for AnimateLCM); "
                                       "use_model_default keeps the model's own."),
                io.Float.Input("motion_scale", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="Multiplies the temporal attention's keys: above 1 sharpens which frames "
                                       "each frame follows, below 1 softens it."),
                io.Float.Input("effect", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Blends each motion module's output with its input: 1 full motion, 0 "
                                       "disables the motion module."),
                io.MultiType.Input("motion_scale_schedule", types=[io.Float, io.Mask], optional=True,
                                   tooltip="Optional, instead of motion_scale: one value per frame (a list of "
                                           "floats) or a MASK batch (one mask per frame, or one for all) for a "
                                           "strength per frame and pixel."),
                io.MultiType.Input("effect_schedule", types=[io.Float, io.Mask], optional=True,
                                   tooltip="Optional, instead of effect: one value per frame (a list of floats) or a "
                                           "MASK batch (one mask per frame, or one for all): where it is 0 the frames "
                                           "are sampled as independent images."),
            ],
            outputs=[io.Model.Output(tooltip="A clone of the model that animates its latent batch.")],
        )

    @classmethod
    def execute(cls, model, motion_module, beta_schedule, motion_scale, effect, motion_scale_schedule=None,
                effect_schedule=None):
        return io.NodeOutput(apply_motion_module(model, motion_module, beta_schedule, motion_scale, effect,
                                                 motion_scale_schedule, effect_schedule))


NODES = [AnimateDiffLoadMotionModule, AnimateDiffApplyMotionModule]
