"""ComfyUI nodes (V3 schema): thin glue over `patching`."""
import os

import folder_paths
from comfy_api.latest import ComfyExtension, io

from . import free_init, patching, prompt_travel, sparsectrl, training

MODELS, MOTION_LORAS = "animatediff_models", "animatediff_motion_lora"
for folder in (MODELS, MOTION_LORAS):
    folder_paths.add_model_folder_path(folder, os.path.join(folder_paths.models_dir, folder), is_default=True)
    folder_paths.folder_names_and_paths[folder] = (folder_paths.get_folder_paths(folder),
                                                   folder_paths.supported_pt_extensions)
ADAPTER_FOLDERS = (MODELS, "loras")
SPARSECTRL_FOLDERS = ("controlnet", MODELS)


def files_of_kind(folders, kind):
    """The files in `folders` whose keys say they are `kind` (formats.KINDS)."""
    names = []
    for folder in folders:
        for name in folder_paths.get_filename_list(folder):
            path = folder_paths.get_full_path(folder, name)
            stat = os.stat(path)
            if name not in names and patching.file_kind(path, stat.st_mtime_ns, stat.st_size) == kind:
                names.append(name)
    return names


def full_path(folders, name):
    for folder in folders:
        path = folder_paths.get_full_path(folder, name)
        if path:
            return path
    return folder_paths.get_full_path_or_raise(folders[0], name)


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
        return io.NodeOutput(patching.apply_motion_module(model, motion_module, beta_schedule, motion_scale, effect,
                                                          motion_scale_schedule, effect_schedule))


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
                MotionModule.Input("motion_module", tooltip="From Load AnimateDiff Motion Module (or another "
                                                            "MotionLoRA loader)."),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list(MOTION_LORAS),
                               tooltip="A MotionLoRA file in models/animatediff_motion_lora, e.g. "
                                       "v2_lora_ZoomIn.ckpt."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="How strongly the camera move is applied: 1 as trained, 0 off, negative "
                                       "values push the other way."),
            ],
            outputs=[MotionModule.Output(tooltip="A copy of the motion module with the MotionLoRA applied while "
                                                 "it samples.")],
        )

    @classmethod
    def execute(cls, motion_module, lora_name, strength):
        path = folder_paths.get_full_path_or_raise(MOTION_LORAS, lora_name)
        return io.NodeOutput(patching.load_motion_lora(motion_module, path, lora_name, strength))


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
                io.Combo.Input("adapter_name", options=files_of_kind(ADAPTER_FOLDERS, "domain_adapter"),
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
        return io.NodeOutput(patching.apply_domain_adapter(model, full_path(ADAPTER_FOLDERS, adapter_name), adapter_name,
                                                            strength))


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


class AnimateDiffPromptTravel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AnimateDiffPromptTravel",
            display_name="AnimateDiff Prompt Travel",
            category="animatediff",
            description="Changes the prompt over the frames: one prompt per keyframe, each encoded once as CLIP "
                        "Text Encode does, and every frame gets its own conditioning (blended between the "
                        "keyframes on either side, or held). Connect it to the sampler's positive input; the "
                        "latent batch size must be the frame count. Works with AnimateDiff Context Windows.",
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP model that encodes the prompts (from the checkpoint)."),
                io.String.Input("text", multiline=True, default='"0": "a forest in spring",\n'
                                                                '"16": "a forest in winter",',
                                tooltip='One keyframe per line: "frame": "prompt", (frames count from 0; '
                                        "(word:1.2) weights work as in CLIP Text Encode). Frames before the "
                                        "first keyframe take its prompt, frames after the last keyframe take "
                                        "the last one's."),
                io.Int.Input("frames", default=16, min=1, max=4096,
                             tooltip="Number of frames: the latent batch size (Empty Latent Image's batch_size)."),
                io.Combo.Input("interpolation", options=prompt_travel.INTERPOLATIONS, default="linear",
                               tooltip="linear: frames between two keyframes blend their prompts; hold: each "
                                       "frame takes the prompt of the last keyframe at or before it."),
            ],
            outputs=[io.Conditioning.Output(tooltip="A conditioning with one row per frame, for the sampler's "
                                                    "positive (or negative) input.")],
        )

    @classmethod
    def execute(cls, clip, text, frames, interpolation):
        return io.NodeOutput(prompt_travel.encode(clip, text, frames, interpolation))


class AnimateDiffFreeInit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AnimateDiffFreeInit",
            display_name="AnimateDiff FreeInit",
            category="animatediff",
            description="FreeInit (arXiv 2312.07537): samples the animation several times; after each pass the "
                        "result is diffused back to the first step with the same initial noise, its low "
                        "frequencies over frames, height and width are kept and its high frequencies come from "
                        "fresh noise. Steadier layout and less flicker, for N times the sampling time. The input "
                        "model is left unchanged.",
            inputs=[
                io.Model.Input("model", tooltip="The animated model (after Apply AnimateDiff Motion Module, with or "
                                                "without AnimateDiff Context Windows)."),
                io.Int.Input("iterations", default=3, min=1, max=10,
                             tooltip="Samplings in all (each costs a full sampling); 1 turns FreeInit off."),
                io.Combo.Input("filter", options=free_init.FILTERS, default="butterworth",
                               tooltip="Low-pass filter that keeps the low frequencies: butterworth (order 4, as "
                                       "the paper recommends), gaussian, ideal (a sharp sphere) or box."),
                io.Float.Input("spatial_stop_frequency", default=0.25, min=0.01, max=1.0, step=0.01,
                               tooltip="Where the filter stops over height and width (1 is the highest frequency); "
                                       "higher keeps more of the previous pass."),
                io.Float.Input("temporal_stop_frequency", default=0.25, min=0.01, max=1.0, step=0.01,
                               tooltip="Where the filter stops over the frames (1 is the highest frequency)."),
            ],
            outputs=[io.Model.Output(tooltip="A clone of the model that samples with FreeInit.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, iterations, filter, spatial_stop_frequency, temporal_stop_frequency):
        from server import PromptServer
        node = cls.hidden.unique_id

        def report(iteration):  # shown on the node while the sampler's progress bar runs each pass
            PromptServer.instance.send_progress_text(f"FreeInit iteration {iteration}/{iterations}", node)

        return io.NodeOutput(patching.apply_free_init(model, iterations, filter, spatial_stop_frequency,
                                                      temporal_stop_frequency, report))


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
                io.Combo.Input("sparsectrl_name", options=files_of_kind(SPARSECTRL_FOLDERS, "sparsectrl"),
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
        return io.NodeOutput(sparsectrl.load_sparsectrl(full_path(SPARSECTRL_FOLDERS, sparsectrl_name),
                                                        sparsectrl_name, sparsectrl.parse_indices(frame_indices)))


class AnimateDiffTrainMotionLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AnimateDiffTrainMotionLoRA",
            display_name="Train AnimateDiff MotionLoRA",
            category="animatediff/training",
            description="Trains a MotionLoRA (a camera move such as a zoom or pan) from reference videos: LoRAs on "
                        "the motion module's temporal attention (q, k, v, out) learn the move from contiguous clips "
                        "in frame order, while the image model and the motion module stay frozen (the paper trains "
                        "on 20-50 videos of one move, about 2,000 steps). The file is saved in the official "
                        "MotionLoRA layout into models/animatediff_motion_lora; the output motion module already "
                        "has it applied.",
            inputs=[
                io.Model.Input("model", tooltip="The image model the MotionLoRA is trained with (SD1.5 or SDXL, "
                                                "with the domain adapter if the motion module is v3)."),
                MotionModule.Input("motion_module", tooltip="From Load AnimateDiff Motion Module: the module whose "
                                                            "temporal attention learns the move (official "
                                                            "MotionLoRAs use mm_sd_v15_v2)."),
                io.Vae.Input("vae", tooltip="The checkpoint's VAE, to encode the reference frames."),
                io.Conditioning.Input("positive", tooltip="The prompt the clips are trained with (CLIP Text "
                                                          "Encode), e.g. a short description of the videos."),
                io.Image.Input("images", optional=True,
                               tooltip="Optional: one reference video as a batch of frames in order (e.g. from "
                                       "Load Image batch or a video loader)."),
                io.String.Input("video_folder", default="", optional=True,
                                tooltip="Optional: a folder of reference videos (.mp4, .webm, .mov, .avi, .mkv, "
                                        ".gif), read with opencv; relative paths are under ComfyUI's input folder."),
                io.Int.Input("width", default=512, min=64, max=4096, step=8,
                             tooltip="Frames are resized to cover width x height and centre-cropped."),
                io.Int.Input("height", default=512, min=64, max=4096, step=8,
                             tooltip="Frames are resized to cover width x height and centre-cropped."),
                io.Int.Input("rank", default=64, min=1, max=1024, tooltip="LoRA rank (official MotionLoRAs: 64)."),
                io.Int.Input("steps", default=500, min=1, max=100000,
                             tooltip="Training steps, one clip each (the paper: about 2,000 on a GPU)."),
                io.Float.Input("learning_rate", default=0.0001, min=0.0000001, max=1.0, step=0.0000001,
                               tooltip="AdamW learning rate (AnimateDiff's MotionLoRA training: 1e-4)."),
                io.Int.Input("clip_length", default=16, min=2, max=64,
                             tooltip="Contiguous frames per training clip; at most the motion module's frame "
                                     "positions (16 as in the paper)."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff,
                             tooltip="Seed for the LoRA's initial weights and for the clips, timesteps and noise."),
                io.String.Input("output_name", default="motion_lora",
                                tooltip="File name in models/animatediff_motion_lora (.safetensors is added; an "
                                        "existing file is never overwritten: a number is appended)."),
                io.Combo.Input("precision", options=list(training.PRECISIONS), default="fp32",
                               tooltip="Autocast dtype of the forward: fp32, or bf16/fp16 on GPUs to save memory "
                                       "and time (the LoRA weights stay fp32)."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Recompute the UNet's blocks in the backward pass instead of keeping "
                                         "their activations: about a quarter of the memory for 1.5x the time."),
            ],
            outputs=[MotionModule.Output(tooltip="The motion module with the trained MotionLoRA applied at "
                                                 "strength 1."),
                     io.String.Output(display_name="lora_name", tooltip="The saved file's name, for Load "
                                                                        "AnimateDiff MotionLoRA.")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, motion_module, vae, positive, width, height, rank, steps, learning_rate, clip_length,
                seed, output_name, precision="fp32", gradient_checkpointing=False, images=None, video_folder=""):
        videos = [] if images is None else [training.fit(images, width, height)]
        if video_folder.strip():
            videos += training.read_videos(os.path.join(folder_paths.get_input_directory(), video_folder.strip()),
                                           width, height)
        if not videos:
            raise ValueError("Train AnimateDiff MotionLoRA needs reference clips: connect images (a batch of frames "
                             "in order) or set video_folder to a folder of videos.")
        from server import PromptServer

        def report(step, loss):  # the loss, shown on the node
            PromptServer.instance.send_progress_text(f"step {step}/{steps}, loss {loss:.4f}", cls.hidden.unique_id)

        weights, losses = training.train(model, "motion_lora", training.encode(vae, videos), positive, steps,
                                         learning_rate, clip_length, seed, motion_module=motion_module, rank=rank,
                                         precision=precision, gradient_checkpointing=gradient_checkpointing,
                                         report=report)
        folder = folder_paths.get_folder_paths(MOTION_LORAS)[0]
        name = training.free_name(folder, output_name)
        path = training.save(weights, os.path.join(folder, name),
                             motion_module=motion_module.model.name, rank=rank, steps=steps,
                             learning_rate=learning_rate, clip_length=clip_length, seed=seed,
                             final_loss=f"{losses[-1]:.6f}")
        return io.NodeOutput(patching.load_motion_lora(motion_module, path, name, 1.0), name)


class AnimateDiffExtension(ComfyExtension):
    async def get_node_list(self):
        return [AnimateDiffLoadMotionModule, AnimateDiffApplyMotionModule, AnimateDiffContextWindows,
                AnimateDiffLoadMotionLoRA, AnimateDiffApplyDomainAdapter, AnimateDiffTrainMotionLoRA,
                AnimateDiffPromptTravel, AnimateDiffFreeInit, AnimateDiffLoadSparseCtrl]


async def comfy_entrypoint():
    return AnimateDiffExtension()
