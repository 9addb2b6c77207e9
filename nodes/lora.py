"""MotionLoRAs and the v3 domain adapter: LoRA files applied through ComfyUI's own LoRA patching.

Both files are processor-LoRA state dicts (`{name}_lora.up.weight`, `{name}_lora.down.weight`, no alpha, as the
original code trains them): W + strength * up @ down. A MotionLoRA patches the motion module's temporal attention
(q, k, v, out) on a clone of its patcher; the domain adapter patches the SD1.5 UNet's spatial attention on a clone
of the model. Entries are matched by name and shape, and a file made for another model is refused by name.
"""
import dataclasses
import logging

from comfy_api.latest import io

import comfy.lora
import folder_paths

from ..motion_modules import formats

from . import files, motion
from .motion import MotionModuleError, model_family


def lora_patches(sd, key_map, weights, name, kind, target):
    """ComfyUI LoRA patches of the processor-LoRA state dict `sd` ({name}_lora.up/down.weight) on the weights
    `key_map` names, shapes checked; also the entry names that have no target."""
    found = formats.classify(sd)
    if found != kind:
        raise MotionModuleError(
            f"'{name}' is not {formats.KINDS[kind]}. {files.describe(formats.NotAMotionModule(found))}")
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


def load_motion_lora(motion, path, name, strength):
    """`motion` (a MotionModule) with the MotionLoRA at `path` added to its patcher's weight patches (on a clone):
    W + strength * up @ down."""
    weights = motion.patcher.model.state_dict()
    patches, unmatched = lora_patches(files.read_file(path, name), formats.motion_lora_key_map(weights), weights,
                                      name, "motion_lora", f"the motion module '{motion.name}'")
    other = [e for e in unmatched if not e.startswith("mid_block.")]
    if other:
        raise MotionModuleError(f"{len(other)} LoRA entries of '{name}' (such as '{other[0]}') match no weight of "
                                f"the motion module '{motion.name}' ({motion.info.format}): it was made for another "
                                "kind of motion module.")
    patcher = motion.patcher.clone()
    patcher.add_patches(patches, strength)
    logging.info("AnimateDiff: MotionLoRA %s at strength %g on %s: %d of %d LoRA weights applied%s", name, strength,
                 motion.name, len(patches), len(patches) + len(unmatched),
                 f"; {len(unmatched)} mid-block weights skipped (this {motion.info.format} module has no mid block)"
                 if unmatched else "")
    return dataclasses.replace(motion, patcher=patcher, loras=motion.loras + ((name, strength),))


def apply_domain_adapter(model, path, name, strength):
    """A clone of `model` with the v3 domain adapter at `path` applied through ComfyUI's LoRA patching."""
    family = model_family(model)
    if family != "SD1.5":
        raise MotionModuleError(f"The domain adapter '{name}' is for SD1.5 (AnimateDiff v3), but the model is "
                                f"{family}. Use it with an SD1.5 checkpoint.")
    weights = model.model_state_dict()
    patches, unmatched = lora_patches(files.read_file(path, name), comfy.lora.model_lora_keys_unet(model.model, {}),
                                      weights, name, "domain_adapter", "this SD1.5 UNet")
    if unmatched:
        raise MotionModuleError(f"{len(unmatched)} LoRA entries of '{name}' (such as '{unmatched[0]}') match no "
                                "weight of this SD1.5 UNet: it was made for another model.")
    m = model.clone()
    m.add_patches(patches, strength)
    m.model_options[motion.ADAPTER] = (name, strength)
    logging.info("AnimateDiff: domain adapter %s at strength %g: %d LoRA weights", name, strength, len(patches))
    return m


class AnimateDiffLoadMotionLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AnimateDiffLoadMotionLoRA",
            display_name="Load AnimateDiff MotionLoRA",
            category="animatediff",
            description="Adds a MotionLoRA (a camera move such as ZoomIn, PanLeft or RollingClockwise, learned on the "
                        "motion module's temporal attention) to a motion module. Chain several to combine moves. "
                        "Official MotionLoRAs are trained on the v2 module (mm_sd_v15_v2).",
            inputs=[
                motion.Socket.Input("motion_module", tooltip="From Load AnimateDiff Motion Module (or another "
                                                            "MotionLoRA loader)."),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list(files.MOTION_LORAS),
                               tooltip="A MotionLoRA file in models/animatediff_motion_lora, e.g. "
                                       "v2_lora_ZoomIn.ckpt."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="How strongly the camera move is applied: 1 as trained, 0 off, negative "
                                       "values push the other way."),
            ],
            outputs=[motion.Socket.Output(tooltip="A copy of the motion module with the MotionLoRA applied while "
                                                 "it samples.")],
        )

    @classmethod
    def execute(cls, motion_module, lora_name, strength):
        path = files.full_path((files.MOTION_LORAS,), lora_name)
        return io.NodeOutput(load_motion_lora(motion_module, path, lora_name, strength))


class AnimateDiffApplyDomainAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AnimateDiffApplyDomainAdapter",
            display_name="Apply AnimateDiff Domain Adapter",
            category="animatediff",
            description="Applies the AnimateDiff v3 domain adapter (v3_sd15_adapter.ckpt), a LoRA on the SD1.5 "
                        "model's spatial attention that was trained on video frames: at strength 1 the images "
                        "take on the look of the training videos the v3 motion module expects; lower it (or leave "
                        "the adapter out) to keep the checkpoint's own look. The input model is left unchanged.",
            inputs=[
                io.Model.Input("model", tooltip="The SD1.5 image model, usually before Apply AnimateDiff Motion "
                                                "Module with a v3 motion module."),
                io.Combo.Input("adapter_name", options=files.files_of_kind(files.ADAPTER_FOLDERS, "domain_adapter"),
                               tooltip="A v3 domain adapter file in models/animatediff_models or models/loras "
                                       "(only domain adapters are listed)."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="1 as trained, 0 leaves the model as it is; values in between soften "
                                       "the video look."),
            ],
            outputs=[io.Model.Output(tooltip="A clone of the model with the domain adapter applied.")],
        )

    @classmethod
    def execute(cls, model, adapter_name, strength):
        return io.NodeOutput(apply_domain_adapter(model, files.full_path(files.ADAPTER_FOLDERS, adapter_name),
                                                  adapter_name, strength))


NODES = [AnimateDiffLoadMotionLoRA, AnimateDiffApplyDomainAdapter]
