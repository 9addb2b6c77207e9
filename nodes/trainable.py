"""What a training step trains, with everything else frozen, on clones of the models (nothing other nodes hold
changes): LoRAs as weight wrappers, or a module's own weights; and gradient checkpointing as an injection that puts
the UNet's blocks behind a `forward_timestep_embed_patch` running each under torch.utils.checkpoint.
"""
import dataclasses
import re

import torch
import torch.utils.checkpoint

import comfy.lora
import comfy.patcher_extension
from comfy.ldm.modules.diffusionmodules.openaimodel import forward_timestep_embed

from ..motion_modules import formats
from ..motion_modules.model import LoRA

from . import motion

KEY = "animatediff_checkpointing"

# the v3 adapter's entries: diffusers names of the spatial attention projections, as comfy.lora maps them
ADAPTER_ENTRY = re.compile(r"(down_blocks|mid_block|up_blocks)\.\S+\.attn[12]\.processor\.to_(q|k|v|out)")


def trainable(model, motion_module, part, rank, seed, gradient_checkpointing=False):
    # motion_module: a motion.MotionModule or None
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
    m, module, params = model.clone(), motion_module and motion_module.patcher.clone(), {}

    def add_loras(patcher, key_map):
        weights = patcher.model.state_dict()
        for entry, key in sorted(key_map.items()):
            low_rank = LoRA(weights[key], rank, generator)
            patcher.add_weight_wrapper(key, low_rank)
            params[entry + "_lora.down.weight"], params[entry + "_lora.up.weight"] = low_rank.down, low_rank.up

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
    if gradient_checkpointing:  # before the motion module's injection, so it comes out of the middle block first
        m.set_injections(KEY, [comfy.patcher_extension.PatcherInjection(inject=checkpoint_blocks,
                                                                          eject=restore_blocks)])
        m.set_model_forward_timestep_embed_patch((Checkpointed, run_checkpointed))
    if module:
        m = motion.apply_motion_module(m, dataclasses.replace(motion_module, patcher=module), "autoselect", 1.0, 1.0)
    return m, params


class Checkpointed(torch.nn.Module):
    """Stands in for one UNet block (one layer in the middle block) while training with gradient checkpointing
    (see `run_checkpointed`)."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def __iter__(self):  # the UNet hands blocks to forward_timestep_embed, which iterates their layers
        return iter([self])


def checkpointed_lists(unet):
    """The sequences whose items are checkpointed: the input and output blocks, and the middle block's layers."""
    return unet.input_blocks, unet.middle_block, unet.output_blocks


def checkpoint_blocks(model_patcher):
    for layers in checkpointed_lists(model_patcher.model.diffusion_model):
        for i, layer in enumerate(layers):
            layers[i] = Checkpointed(layer)


def restore_blocks(model_patcher):
    for layers in checkpointed_lists(model_patcher.model.diffusion_model):
        for i, layer in enumerate(layers):
            if isinstance(layer, Checkpointed):
                layers[i] = layer.block


def run_checkpointed(layer, x, emb, context, transformer_options, *args):
    layers = layer.block if isinstance(layer.block, torch.nn.Sequential) else [layer.block]  # a block, or one layer
    return torch.utils.checkpoint.checkpoint(forward_timestep_embed, layers, x, emb, context, transformer_options,
                                             *args, use_reentrant=False)
