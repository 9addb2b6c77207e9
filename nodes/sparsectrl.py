"""SparseCtrl (arXiv 2311.16933) as a ComfyUI CONTROL_NET: the encoder of `motion_modules.sparse_controlnet` behind
core's ControlNet class, so the stock Apply ControlNet (Advanced) node applies it (strength, start/end percent,
VAE) and chains it with other ControlNets.

Apply ControlNet's image batch holds the given frames; the loader's frame indices say where they stand in the
animation. Each call builds the condition over all frames (the given frames at their indices, zeros elsewhere, a
mask channel that is 1 on given frames) and hands the encoder the frames of the current context window
(`frames.window`), else all frames. The RGB encoder reads the frames as SD1.5 latents (core's VAE
encode, scaled by the latent format, as the original encodes them); the scribble encoder reads the images as they
are.
"""
import re

import torch
from comfy_api.latest import io

import comfy.controlnet
import comfy.latent_formats
import comfy.model_management
import comfy.utils
from comfy.ldm.modules.attention import optimized_attention

from ..motion_modules import formats
from ..motion_modules.sparse_controlnet import SparseControlNet

from . import files, frames as frame_calls


class SparseCtrlError(files.AnimateDiffError):
    pass


def parse_indices(text, name="frame_indices"):
    """'0, 15' -> [0, 15]; '' -> [] (spread evenly). Negative numbers count from the last frame (-1)."""
    parts = [p for p in re.split(r"[\s,]+", text.strip()) if p]
    for p in parts:
        if not re.fullmatch(r"-?\d+", p):
            raise SparseCtrlError(f"{name}: '{p}' is not a frame number. Write frame numbers separated by commas, "
                                  "counting from 0 (e.g. 0, 15; -1 is the last frame), or leave it empty to spread "
                                  "the images evenly over the frames.")
    return [int(p) for p in parts]


def frame_indices(indices, images, frames):
    """The frame of each of `images` given images in an animation of `frames`: `indices`, or evenly from the first
    frame to the last."""
    if not indices:
        if images > frames:
            raise SparseCtrlError(f"SparseCtrl got {images} images for {frames} frames: give at most one image per "
                                  "frame.")
        return [0] if images == 1 else [round(k * (frames - 1) / (images - 1)) for k in range(images)]
    if len(indices) != images:
        raise SparseCtrlError(f"Load AnimateDiff SparseCtrl's frame_indices names {len(indices)} frames, but Apply "
                              f"ControlNet's image batch has {images} images: give one frame index per image, in "
                              "the batch's order (or leave frame_indices empty to spread them evenly).")
    at = [i + frames if i < 0 else i for i in indices]
    wrong = [i for i, a in zip(indices, at) if not 0 <= a < frames]
    if wrong or len(set(at)) != len(at):
        raise SparseCtrlError(f"frame_indices {indices}: " + (
            f"frame {wrong[0]} is outside the animation's {frames} frames (0 to {frames - 1}, or -1 to -{frames})"
            if wrong else "a frame is named twice") + ". Fix Load AnimateDiff SparseCtrl's frame_indices or the "
            "latent batch size.")
    return at


def load_sparsectrl(path, name, indices):
    """A SparseCtrl control object for the file at `path` (`name` for messages)."""
    try:
        kwargs, sd = formats.sparsectrl(files.read_file(path, name))
    except formats.NotAMotionModule as e:
        raise SparseCtrlError(f"'{name}' is not a SparseCtrl encoder. {files.describe(e)}") from None
    model = files.build(SparseControlNet, kwargs, sd, name, "SparseCtrl")
    load_device = comfy.model_management.get_torch_device()
    return SparseCtrl(model, name, indices, load_device,
                      comfy.model_management.unet_manual_cast(model.dtype, load_device))


class SparseCtrl(comfy.controlnet.ControlNet):
    places_window_frames = True  # context windows leave its images alone: it places them per window itself

    def __init__(self, control_model, name, indices, load_device, manual_cast_dtype):
        latent = control_model is not None and control_model.latent_condition
        super().__init__(control_model, load_device=load_device, manual_cast_dtype=manual_cast_dtype,
                         latent_format=comfy.latent_formats.SD15() if latent else None)
        self.name, self.indices, self.hint_key = name, indices, None

    def copy(self):
        c = SparseCtrl(None, self.name, self.indices, self.load_device, self.manual_cast_dtype)
        c.control_model, c.control_model_wrapped = self.control_model, self.control_model_wrapped
        self.copy_to(c)
        return c

    def condition(self, frames, x):
        """[frames, c + 1, H, W]: the given frames at their indices (latents or pixels), zeros elsewhere, the mask
        channel last. Cached for the sampling's frame count and latent size."""
        if self.cond_hint is None or self.hint_key != (frames, *x.shape[2:]):
            images = comfy.utils.common_upscale(self.cond_hint_original, x.shape[3] * 8, x.shape[2] * 8,
                                                self.upscale_algorithm, "center")
            if self.latent_format is not None:
                if self.vae is None:
                    raise SparseCtrlError(f"The SparseCtrl RGB encoder '{self.name}' reads its frames as latents: "
                                          "connect the VAE to Apply ControlNet (Advanced)'s vae input.")
                loaded = comfy.model_management.loaded_models(only_currently_used=True)
                images = self.latent_format.process_in(self.vae.encode(images.movedim(1, -1)))
                comfy.model_management.load_models_gpu(loaded)
            at = frame_indices(self.indices, images.shape[0], frames)
            hint = torch.zeros(frames, images.shape[1] + 1, *images.shape[2:])
            hint[at, :-1] = images.float().cpu()
            hint[at, -1] = 1.0
            self.cond_hint, self.hint_key = hint, (frames, *x.shape[2:])
        return self.cond_hint

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        previous = None
        if self.previous_controlnet is not None:
            previous = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        if self.timestep_range is not None and not self.timestep_range[1] <= t[0] <= self.timestep_range[0]:
            return previous
        window, total = frame_calls.window(transformer_options, x_noisy.shape[0] // batched_number)
        context = cond.get("crossattn_controlnet", cond["c_crossattn"])
        if context.shape[-1] != self.control_model.context_channels:
            raise SparseCtrlError(f"The SparseCtrl encoder '{self.name}' is for SD1.5 models (768-wide text "
                                  f"conditioning), but this model's is {context.shape[-1]} wide.")
        dtype = self.manual_cast_dtype or self.control_model.dtype
        # the window's frames of each cond/uncond chunk: [(b f), c + 1, H, W]
        hint = self.condition(total, x_noisy)[window].repeat(batched_number, 1, 1, 1)
        control = self.control_model(
            x_noisy.to(dtype), hint.to(x_noisy.device, dtype), self.model_sampling_current.timestep(t).to(dtype),
            comfy.model_management.cast_to_device(context, x_noisy.device, dtype), len(window), optimized_attention)
        return self.control_merge(control, previous, output_dtype=None)


class AnimateDiffLoadSparseCtrl(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AnimateDiffLoadSparseCtrl",
            display_name="Load AnimateDiff SparseCtrl",
            category="animatediff",
            description="Loads a SparseCtrl encoder (v3_sd15_sparsectrl_rgb or _scribble, SD1.5; arXiv 2311.16933) as "
                        "a ControlNet for the stock Apply ControlNet (Advanced) node: its image batch holds a few "
                        "key frames (RGB images, or scribbles), placed at frame_indices; the encoder's motion "
                        "modules carry them to the frames in between. The RGB encoder needs the VAE connected to "
                        "Apply ControlNet. Works with AnimateDiff Context Windows (each window sees its own key "
                        "frames).",
            inputs=[
                io.Combo.Input("sparsectrl_name", options=files.files_of_kind(files.SPARSECTRL_FOLDERS, "sparsectrl"),
                               tooltip="A SparseCtrl file in models/controlnet or models/animatediff_models (only "
                                       "SparseCtrl encoders are listed)."),
                io.String.Input("frame_indices", default="",
                                tooltip="The frame of each image of Apply ControlNet's batch, in order, counting "
                                        "from 0; -1 is the last frame (e.g. 0, -1 for first and last). Empty: the "
                                        "images are spread evenly from the first frame to the last."),
            ],
            outputs=[io.ControlNet.Output(tooltip="The SparseCtrl encoder, for Apply ControlNet (Advanced).")],
        )

    @classmethod
    def execute(cls, sparsectrl_name, frame_indices):
        return io.NodeOutput(load_sparsectrl(files.full_path(files.SPARSECTRL_FOLDERS, sparsectrl_name),
                                             sparsectrl_name, parse_indices(frame_indices)))


NODES = [AnimateDiffLoadSparseCtrl]
