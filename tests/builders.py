"""The tests' file builders: the random-weight builders of scripts/weights.py (re-exported, so tests call
`builders.motion_module_sd(...)` etc.) and the test-only helpers that read hint batches back (hint_frame_indices,
hint_module, HintFrameRecorder). Nothing here imports ComfyUI.
"""
import os
import sys

import torch

SCRIPTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
if SCRIPTS_DIR not in sys.path:
    sys.path.append(SCRIPTS_DIR)  # after everything else: scripts/ shadows no other module

from weights import (  # noqa: E402, F401 (re-exported: tests call builders.<name>)
    SD15_CHANNELS, SDXL_CHANNELS, FORMATS, SDXL_FORMATS, MID_FORMATS, PE_ROWS, PE_SUFFIXES, random_tensor,
    sinusoid_pe, is_pe_key, materialize, param_count, module_shapes, module_prefixes, default_channels,
    motion_module_shapes, hotshot_to_animatediff_key, motion_module_sd, save_file, motion_lora_shapes,
    motion_lora_sd, v3_adapter_shapes, v3_adapter_sd, v3_adapter_sd_for_ad_layout, SPARSECTRL_MOTION_NAMES,
    SPARSECTRL_EMBEDDING_WIDTHS, SPARSECTRL_CONTEXT, SPARSECTRL_POSITIONS, sparsectrl_shapes, sparsectrl_sd, pia_sd,
    animatelcm_i2v_sd, cameractrl_sd, sd15_checkpoint_keys_sd, CLIP_L, SD15_LAYOUTS, ldm_unet_shapes, clip_l_shapes,
    taesd_shapes, sd15_checkpoint_shapes, write_sd15_checkpoint, CLDM_HINT_CHANNELS, controlnet_shapes,
    controlnet_sd, controlnet_diff_sd, t2i_adapter_shapes, t2i_adapter_sd, HINT_FRAME_SCALE, hint_frames,
    save_hint_frames, moving_square_frames, write_video, save_animation
)


# ------------------------------------------------------------------------------ reading hints back

def hint_frame_indices(hint):
    """Frame index of every image of a hint batch built from hint_frames: round(mean * 64 - 1) per image
    (batch on dim 0, any layout after it; 8-bit images are close enough: the error is at most 0.125)."""
    means = hint.detach().float().reshape(hint.shape[0], -1).mean(dim=1)
    return [int(v) for v in torch.round(means * HINT_FRAME_SCALE - 1).tolist()]


def hint_module(control):
    """The module of a loaded ComfyUI control object that receives the hint image batch first: cldm
    ControlNet: `control_model.input_hint_block` (called once per UNet call); T2I-Adapter: the adapter's
    first layer (`t2i_model.unshuffle`, or the adapter itself if it has none; ComfyUI runs it once per
    sampling run and reuses its features). Duck-typed: no ComfyUI import."""
    model = getattr(control, "control_model", None)
    if model is not None and hasattr(model, "input_hint_block"):
        return model.input_hint_block
    adapter = getattr(control, "t2i_model", None)
    if adapter is not None:
        return getattr(adapter, "unshuffle", adapter)
    raise TypeError(f"no hint-embedding module found on {type(control).__name__}")


class HintFrameRecorder:
    """Forward pre-hook on hint_module(control) that records hint_frame_indices of each batch it receives.

        with builders.HintFrameRecorder(control_net) as calls:
            ...sample...
        calls == [[0, 1, ..., 7, 0, 1, ..., 7], ...]  # one list per call (cond and uncond batched: twice)

    Copies ComfyUI makes of the control object (ControlNetApply* do) share the hooked module, so hooking the
    loader's output sees every use. `shapes` holds each call's hint shape.
    """

    def __init__(self, control):
        self.module = hint_module(control)
        self.calls, self.shapes, self._handle = [], [], None

    def _hook(self, module, args):
        self.calls.append(hint_frame_indices(args[0]))
        self.shapes.append(tuple(args[0].shape))

    def __enter__(self):
        self._handle = self.module.register_forward_pre_hook(self._hook)
        return self.calls

    def __exit__(self, *exc):
        self._handle.remove()
        self._handle = None
        return False
