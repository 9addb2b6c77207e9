"""ComfyUI nodes (V3 schema): thin glue over `patching`."""
import os

import folder_paths
from comfy_api.latest import ComfyExtension, io

from . import patching

MODELS = "animatediff_models"
folder_paths.add_model_folder_path(MODELS, os.path.join(folder_paths.models_dir, MODELS), is_default=True)
folder_paths.folder_names_and_paths[MODELS] = (folder_paths.get_folder_paths(MODELS),
                                               folder_paths.supported_pt_extensions)

MotionModule = io.Custom("ANIMATEDIFF_MOTION_MODULE")
CONTEXT_SCHEDULES = ["standard_static", "standard_uniform", "looped_uniform", "batched"]
FUSE_METHODS = ["pyramid", "flat", "overlap-linear", "relative"]


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
            inputs=[io.Combo.Input("motion_module", options=folder_paths.get_filename_list(MODELS),
                                   tooltip="A motion-module file in models/animatediff_models, e.g. mm_sd_v15_v2.ckpt.")],
            outputs=[MotionModule.Output(tooltip="The motion module, ready for Apply AnimateDiff Motion Module.")],
        )

    @classmethod
    def execute(cls, motion_module):
        path = folder_paths.get_full_path_or_raise(MODELS, motion_module)
        return io.NodeOutput(patching.load_motion_module(path, motion_module))


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
                MotionModule.Input("motion_module", tooltip="From Load AnimateDiff Motion Module; it must match the "
                                   "model's family (SD1.5 or SDXL)."),
                io.Combo.Input("beta_schedule", options=patching.BETA_SCHEDULES, default="autoselect",
                               tooltip="Noise schedule while sampling. autoselect: the one the motion module was "
                                       "trained with (sqrt_linear for AnimateDiff, lcm for AnimateLCM); "
                                       "use_model_default keeps the model's own."),
                io.Float.Input("motion_scale", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="Multiplies the temporal attention's keys: above 1 sharpens which frames "
                                       "each frame follows, below 1 softens it."),
                io.Float.Input("effect", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Blends each motion module's output with its input: 1 full motion, 0 "
                                       "disables the motion module."),
            ],
            outputs=[io.Model.Output(tooltip="A clone of the model that animates its latent batch.")],
        )

    @classmethod
    def execute(cls, model, motion_module, beta_schedule, motion_scale, effect):
        return io.NodeOutput(patching.apply_motion_module(model, motion_module, beta_schedule, motion_scale, effect))


class AnimateDiffContextWindows(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AnimateDiffContextWindows",
            display_name="AnimateDiff Context Windows",
            category="animatediff",
            description="Samples animations longer than the motion module's 24/32 frame positions in overlapping "
                        "windows of frames (ComfyUI's own context windows, with frames as the batch), fusing the "
                        "windows' results. ControlNet hint batches and per-frame conditioning follow each window. "
                        "The input model is left unchanged.",
            inputs=[
                io.Model.Input("model", tooltip="The animated model (after Apply AnimateDiff Motion Module)."),
                io.Int.Input("context_length", default=16, min=1, max=4096,
                             tooltip="Frames per window: at most the motion module's frame positions (24 or 32); "
                                     "16 is what the modules were trained on."),
                io.Int.Input("context_overlap", default=4, min=0, max=4096,
                             tooltip="Frames shared by neighbouring windows; smaller than context_length. More "
                                     "overlap gives smoother transitions and more windows to compute."),
                io.Combo.Input("context_schedule", options=CONTEXT_SCHEDULES, default="standard_static",
                               tooltip="standard_static: the same windows every step. standard_uniform: windows "
                                       "that shift every step. looped_uniform: shifting windows that wrap around "
                                       "(for looping animations). batched: back-to-back windows, no overlap."),
                io.Int.Input("context_stride", default=1, min=1, max=16,
                             tooltip="Uniform schedules only: above 1 also samples windows of every 2nd, 4th, ... "
                                     "frame, tying distant frames together."),
                io.Boolean.Input("closed_loop", default=False,
                                 tooltip="looped_uniform only: add windows that join the end to the start, so the "
                                         "animation loops."),
                io.Combo.Input("fuse_method", options=FUSE_METHODS, default="pyramid",
                               tooltip="How overlapping windows are blended: pyramid weights frames by their "
                                       "distance from the window's edge, flat averages, overlap-linear ramps only "
                                       "the overlap, relative weights by distance from the window's centre."),
                io.Boolean.Input("freenoise", default=True,
                                 tooltip="FreeNoise: frames past the first window start from shuffled copies of "
                                         "the earlier frames' noise, so windows agree better. Off: plain noise."),
            ],
            outputs=[io.Model.Output(tooltip="A clone of the model that samples in context windows.")],
        )

    @classmethod
    def execute(cls, model, context_length, context_overlap, context_schedule, context_stride, closed_loop,
                fuse_method, freenoise):
        return io.NodeOutput(patching.apply_context_windows(
            model, context_length, context_overlap, context_schedule, context_stride, closed_loop, fuse_method,
            freenoise))


class AnimateDiffExtension(ComfyExtension):
    async def get_node_list(self):
        return [AnimateDiffLoadMotionModule, AnimateDiffApplyMotionModule, AnimateDiffContextWindows]


async def comfy_entrypoint():
    return AnimateDiffExtension()
