"""Model files: the pack's model folders, reading a file safely, what kind of file it is, and building a pure-torch
module from a state dict. A leaf: it imports nothing else of the pack's nodes.

- `read_file` loads a state dict with `weights_only=True` (a pickle that asks to run code is refused, never run)
  and turns every reading failure into an error that says what is wrong with the file and what to do.
- `files_of_kind` lists the files of one kind (`formats.classify`, from the keys alone) for a combo; each file is
  read once per (path, mtime, size), and the whole listing is reused while the folder listing stays the same.
- `build` makes a `motion_modules` class on the offload device in the UNet's dtype with ComfyUI's manual-cast
  layers, loads the converted state dict strictly, and names a layout mismatch.
"""
import os
import pickle
import re
import zipfile

import safetensors
import torch

import comfy.model_management
import comfy.ops
import comfy.utils
import folder_paths

from ..motion_modules import formats

MODELS, MOTION_LORAS = "animatediff_models", "animatediff_motion_lora"
ADAPTER_FOLDERS = (MODELS, "loras")
SPARSECTRL_FOLDERS = ("controlnet", MODELS)

WHERE = {  # kind (formats.KINDS): where such a file belongs in ComfyUI
    "motion_module": "load it with Load AnimateDiff Motion Module (models/animatediff_models)",
    "motion_lora": "load it with Load AnimateDiff MotionLoRA on a loaded motion module "
                   "(models/animatediff_motion_lora)",
    "domain_adapter": "apply it to the checkpoint's model with Apply AnimateDiff Domain Adapter",
    "image_lora": "apply it to the checkpoint with Load LoRA (models/loras)",
    "sparsectrl": "load it with Load AnimateDiff SparseCtrl (models/controlnet)",
    "controlnet": "load it with Load ControlNet Model (models/controlnet)",
    "animatelcm_i2v": "it is not supported here",
    "cameractrl": "it is not supported here",
    "pia": "it is not supported here",
    "sd_checkpoint": "load it with Load Checkpoint (models/checkpoints)",
    "incomplete": "download it again (compare its size with the original)",
    "other_layout": "it is not supported here",
    "unknown": "check that it is the file you meant",
}
# torch's wordings for a pickle that asks to run code (or build an object) it does not allow, and what it names
CODE = re.compile(r"(?:GLOBAL|unrecognized function|but got) (\S+?)[.,]?(?:\s|$)")


class AnimateDiffError(ValueError):
    """A refusal whose message says what is wrong and how to fix it."""


def register_folders():
    """The pack's model folders (models/animatediff_models, models/animatediff_motion_lora) with ComfyUI's model
    file extensions; entries that extra_model_paths.yaml adds are kept."""
    for folder in (MODELS, MOTION_LORAS):
        folder_paths.add_model_folder_path(folder, os.path.join(folder_paths.models_dir, folder), is_default=True)
        folder_paths.folder_names_and_paths[folder] = (folder_paths.get_folder_paths(folder),
                                                       folder_paths.supported_pt_extensions)


def describe(refusal):
    """'This file is <what>: <where it belongs>.' for a formats.NotAMotionModule."""
    return f"{str(refusal).rstrip('.')}: {WHERE[refusal.kind]}."


def full_path(folders, name):
    """The path of `name` in the first of `folders` that has it; else an error that names the folders and the fix."""
    for folder in folders:
        path = folder_paths.get_full_path(folder, name)
        if path:
            return path
    raise AnimateDiffError(
        f"'{name}' is not in {' or '.join('models/' + f for f in folders)} (or a folder extra_model_paths.yaml adds "
        "for it). Put the file there and refresh the page, or pick one of the listed files.")


def read_file(path, name):
    """The state dict in the file at `path` (`name` for messages); a pickle is read with weights_only=True."""
    try:
        return comfy.utils.load_torch_file(path, safe_load=True)
    except Exception as e:
        code = CODE.search(str(e)) if isinstance(e, pickle.UnpicklingError) else None
        if code:
            raise AnimateDiffError(
                f"Refused to load '{name}': it is a pickle that asks to run Python code ({code.group(1)}), and only "
                "plain weights are loaded (nothing in it was run). Use a .safetensors copy of this file.") from None
        reason = "not valid pickle data" if isinstance(e, pickle.UnpicklingError) else str(e).strip().splitlines()[0]
        raise AnimateDiffError(
            f"Could not read '{name}' ({reason[:200]}). The file is damaged or incomplete (compare its size with "
            "the original) or is not a model file; download it again.") from None


KINDS = {}  # (path, mtime_ns, size) -> kind
LISTINGS = {}  # (folders, kind) -> (listing, names)


def file_kind(path, mtime_ns, size):
    """formats.classify of the file at `path`, from its keys alone (safetensors header; a zip pickle memory-
    mapped with weights_only=True, an old-style one read whole); None when it cannot be read. Remembered per
    (path, mtime, size)."""
    if (path, mtime_ns, size) not in KINDS:
        try:
            if path.endswith(".safetensors"):
                with safetensors.safe_open(path, framework="pt") as f:
                    keys = list(f.keys())
            else:
                sd = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
                keys = list(sd.get("state_dict", sd))
            KINDS[path, mtime_ns, size] = formats.classify(dict.fromkeys(keys))
        except Exception:
            KINDS[path, mtime_ns, size] = None
    return KINDS[path, mtime_ns, size]


def files_of_kind(folders, kind):
    """The files in `folders` whose keys say they are `kind` (formats.KINDS), for a combo. Files are only looked at
    again when the folders' listing (names, sizes, times) changes."""
    listing = []
    for folder in folders:
        for name in folder_paths.get_filename_list(folder):
            path = folder_paths.get_full_path(folder, name)
            stat = os.stat(path)
            listing.append((name, path, stat.st_mtime_ns, stat.st_size))
    cached = LISTINGS.get((folders, kind))
    if cached is None or cached[0] != listing:
        names = []
        for name, path, mtime_ns, size in listing:
            if name not in names and file_kind(path, mtime_ns, size) == kind:
                names.append(name)
        LISTINGS[folders, kind] = cached = (listing, names)
    return list(cached[1])


def build(cls, kwargs, sd, name, what):
    """`cls(**kwargs)` (a motion_modules class) on the offload device in the UNet's dtype with ComfyUI's manual-cast
    layers, holding the state dict `sd`; `what` names the layout in the error when the keys do not fit."""
    dtype = comfy.model_management.unet_dtype(model_params=sum(v.numel() for v in sd.values()))
    model = cls(**kwargs, dtype=dtype, device=comfy.model_management.unet_offload_device(),
                operations=comfy.ops.manual_cast)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise AnimateDiffError(f"'{name}' has an unexpected {what} layout ({len(missing)} missing keys such as "
                               f"{missing[:2]}, {len(unexpected)} unexpected such as {unexpected[:2]}).")
    return model
