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


class AnimateDiffExtension(ComfyExtension):
    async def get_node_list(self):
        return [AnimateDiffLoadMotionModule, AnimateDiffApplyMotionModule]


async def comfy_entrypoint():
    return AnimateDiffExtension()
