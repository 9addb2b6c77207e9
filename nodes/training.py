"""Training the paper's three stages (and toy image models) on ComfyUI's own model machinery.

The model to train is built by `trainable` (LoRA weight wrappers on clones, the motion module attached as for
sampling), and every step runs inside ComfyUI's sampling pipeline: `Guider_Basic.sample` loads the models
with their patches, injections and wrappers and calls a `Sampler` whose `sample` is the training loop. So the
training forward is exactly the sampling forward, on the model's own noise schedule (`model_sampling`, the
motion module's beta schedule when one is attached).

A step, as in AnimateDiff's training: one clip of `clip_length` contiguous frames from one video, in frame order
(the image stages take `clip_length` frames from anywhere instead); one timestep t uniform over the schedule's
1000 for the whole clip; x_t = x_0 + sigma_t * noise; the loss is the MSE between the predicted and the true
noise, eps = (x_t - denoised) / sigma_t. The randomness of step i depends only on (seed, i), so a run resumed
from a checkpoint continues exactly as an uninterrupted one.
"""
import logging
import os

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from comfy_api.latest import io
from tqdm.auto import tqdm

import comfy.model_management
import comfy.samplers
import comfy.utils
import folder_paths
from comfy_extras.nodes_custom_sampler import Guider_Basic

from . import files, lora, motion
from .trainable import trainable

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".gif", ".m4v")
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def read_videos(folder, width, height, stride=1):
    """[frames [n, height, width, 3] in 0..1 (ComfyUI IMAGE)] of each video file in `folder`, read with opencv,
    every `stride`-th frame, each frame resized to cover width x height and centre-cropped."""
    import cv2  # here, so that the nodes load even where opencv cannot (e.g. no libGL)
    if not os.path.isdir(folder):
        raise ValueError(f"The video folder {folder} does not exist (a relative video_folder is looked up in "
                         "ComfyUI's input folder).")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(VIDEO_EXTENSIONS))
    videos = []
    for name in names:
        capture, frames = cv2.VideoCapture(os.path.join(folder, name)), []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        capture.release()
        if not frames:
            raise ValueError(f"opencv could not read any frame of '{name}' in {folder}: convert it to .mp4 (H.264).")
        videos.append(fit(torch.from_numpy(np.stack(frames[::stride])).float() / 255, width, height))
    if not videos:
        raise ValueError(f"No video files ({', '.join(VIDEO_EXTENSIONS)}) in {folder}.")
    return videos


def input_folder(relative):
    """The folder `relative` names inside ComfyUI's input folder; anything outside it is refused."""
    base = os.path.realpath(folder_paths.get_input_directory())
    path = os.path.realpath(os.path.join(base, relative))
    if os.path.commonpath([base, path]) != base:
        raise files.AnimateDiffError(
            f"video_folder '{relative}' is outside ComfyUI's input folder: put the videos in a folder inside the "
            "input folder and give its path relative to it (e.g. videos/zoom).")
    return path


def fit(images, width, height):
    """IMAGE [n, h, w, 3] resized to cover width x height, centre-cropped to it."""
    scale = max(width / images.shape[2], height / images.shape[1])
    size = (max(height, round(images.shape[1] * scale)), max(width, round(images.shape[2] * scale)))
    x = F.interpolate(images.movedim(-1, 1), size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return x[:, :, top:top + height, left:left + width].movedim(1, -1).clamp(0, 1)


def encode(vae, videos):
    """VAE latents [n, c, h, w] of each video (IMAGE batches)."""
    return [vae.encode(v[..., :3]) for v in videos]


class TrainingSampler(comfy.samplers.Sampler):
    """A ComfyUI sampler whose `sample` runs the training loop with the guider as the denoiser."""

    def __init__(self, loop):
        self.loop = loop

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        self.loop(model_wrap, extra_args)
        return latent_image


def train(model, part, videos, positive, steps, learning_rate, clip_length, seed, motion_module=None, rank=64,
          precision="fp32", gradient_checkpointing=False, checkpoint=None, checkpoint_every=0, report=None):
    """Train `part` (see trainable) of `model` [with `motion_module`] on `videos` (VAE latents [n, c, h, w]) with
    the conditioning `positive`; returns ({file key: trained tensor}, [loss per step]).

    `checkpoint`: a path for the training state (weights, optimizer, step), written every `checkpoint_every`
    steps and at the end; when the file exists, training resumes from it. `report(step, loss)` is called after
    every step."""
    clips = part in ("motion_module", "motion_lora")
    usable = [v for v in videos if v.shape[0] >= clip_length] if clips else videos
    if not usable:
        raise ValueError(f"No video has {clip_length} frames for one clip (the longest has "
                         f"{max(v.shape[0] for v in videos)}): lower clip_length or use longer videos.")
    losses, start = [], 0
    with torch.inference_mode(False), torch.enable_grad():
        m, params = trainable(model, motion_module, part, rank, seed, gradient_checkpointing)
        optimizer = torch.optim.AdamW(params.values(), lr=learning_rate)
        device = m.load_device
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        if checkpoint and os.path.exists(checkpoint):
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            if state["part"] != part or set(state["weights"]) != set(params):
                raise ValueError(f"The checkpoint {checkpoint} is from training another part or model "
                                 f"({state['part']}): use another checkpoint path.")
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(state["weights"][k])
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            start, losses = state["step"], state["losses"].tolist()
            logging.info("AnimateDiff training: resumed %s from step %d (%s)", part, start, checkpoint)
        positive = [[c.detach().clone(), {k: v.detach().clone() if torch.is_tensor(v) else v
                                          for k, v in extra.items()}] for c, extra in positive]
        shape = (clip_length,) + tuple(usable[0].shape[1:])

        def save_state(step):
            torch.save({"part": part, "step": step, "losses": torch.tensor(losses),
                        "weights": {k: p.detach().cpu() for k, p in params.items()},
                        "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()}, checkpoint + ".partial")
            os.replace(checkpoint + ".partial", checkpoint)

        def loop(guider, extra_args):
            schedule = guider.inner_model.model_sampling
            bar = tqdm(total=steps, initial=start, desc=f"Training {part}",
                       disable=not comfy.utils.PROGRESS_BAR_ENABLED)
            progress = comfy.utils.ProgressBar(steps)
            progress.update_absolute(start)
            for step in range(start, steps):
                comfy.model_management.throw_exception_if_processing_interrupted()
                g = torch.Generator().manual_seed((seed * 1_000_003 + step) % 2 ** 63)
                if clips:
                    video = usable[int(torch.randint(len(usable), (), generator=g))]
                    first = int(torch.randint(video.shape[0] - clip_length + 1, (), generator=g))
                    x0 = video[first:first + clip_length]
                    t = torch.randint(len(schedule.sigmas), (1,), generator=g).expand(clip_length)
                else:
                    picks = [(int(torch.randint(len(usable), (), generator=g)), torch.rand((), generator=g))
                             for _ in range(clip_length)]
                    x0 = torch.stack([usable[v][int(r * usable[v].shape[0])] for v, r in picks])
                    t = torch.randint(len(schedule.sigmas), (clip_length,), generator=g)
                noise = torch.randn(x0.shape, generator=g).to(device)
                x0 = guider.inner_model.process_latent_in(x0.to(device, torch.float32))
                sigma = schedule.sigmas[t.to(schedule.sigmas.device)].to(device)
                xt = schedule.noise_scaling(sigma, noise, x0)
                with torch.autocast(device.type, dtype=PRECISIONS[precision], enabled=precision != "fp32"):
                    denoised = guider(xt, sigma, **extra_args)
                eps = (xt - denoised.float()) / sigma[:, None, None, None]
                loss = F.mse_loss(eps, noise)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                bar.update(1)
                progress.update_absolute(step + 1)
                if report:
                    report(step + 1, losses[-1])
                if checkpoint and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
                    save_state(step + 1)
            bar.close()

        guider = Guider_Basic(m)
        guider.set_conds(positive)
        guider.sample(torch.zeros(shape), torch.zeros(shape), TrainingSampler(loop), torch.ones(2), seed=seed)
        if checkpoint:
            save_state(steps)
        for p in params.values():
            p.requires_grad_(False)
        return {k: p.detach().float().cpu().contiguous() for k, p in params.items()}, losses


def save(weights, path, **metadata):
    """Write `weights` as safetensors at `path` (through a .partial file), with string metadata."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    safetensors.torch.save_file(weights, path + ".partial", metadata={k: str(v) for k, v in metadata.items()})
    os.replace(path + ".partial", path)
    return path


def free_name(folder, name):
    """`name`.safetensors, or `name`_2.safetensors, ... : the first that does not exist in `folder`."""
    name = os.path.basename(name.strip()) or "motion_lora"
    name = name[:-len(".safetensors")] if name.endswith(".safetensors") else name
    candidates = (f"{name}.safetensors" if i == 1 else f"{name}_{i}.safetensors" for i in range(1, 100000))
    return next(c for c in candidates if not os.path.exists(os.path.join(folder, c)))


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
                motion.Socket.Input("motion_module", tooltip="From Load AnimateDiff Motion Module: the module whose "
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
                io.Combo.Input("precision", options=list(PRECISIONS), default="fp32",
                               tooltip="Autocast dtype of the forward: fp32, or bf16/fp16 on GPUs to save memory "
                                       "and time (the LoRA weights stay fp32)."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Recompute the UNet's blocks in the backward pass instead of keeping "
                                         "their activations: about a quarter of the memory for 1.5x the time."),
            ],
            outputs=[motion.Socket.Output(tooltip="The motion module with the trained MotionLoRA applied at "
                                                 "strength 1."),
                     io.String.Output(display_name="lora_name", tooltip="The saved file's name, for Load "
                                                                        "AnimateDiff MotionLoRA.")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, motion_module, vae, positive, width, height, rank, steps, learning_rate, clip_length,
                seed, output_name, precision="fp32", gradient_checkpointing=False, images=None, video_folder=""):
        videos = [] if images is None else [fit(images, width, height)]
        if video_folder.strip():
            videos += read_videos(input_folder(video_folder.strip()), width, height)
        if not videos:
            raise ValueError("Train AnimateDiff MotionLoRA needs reference clips: connect images (a batch of frames "
                             "in order) or set video_folder to a folder of videos.")
        from server import PromptServer

        def report(step, loss):  # the loss, shown on the node
            PromptServer.instance.send_progress_text(f"step {step}/{steps}, loss {loss:.4f}", cls.hidden.unique_id)

        weights, losses = train(model, "motion_lora", encode(vae, videos), positive, steps,
                                         learning_rate, clip_length, seed, motion_module=motion_module, rank=rank,
                                         precision=precision, gradient_checkpointing=gradient_checkpointing,
                                         report=report)
        folder = folder_paths.get_folder_paths(files.MOTION_LORAS)[0]
        name = free_name(folder, output_name)
        path = save(weights, os.path.join(folder, name),
                             motion_module=motion_module.name, rank=rank, steps=steps,
                             learning_rate=learning_rate, clip_length=clip_length, seed=seed,
                             final_loss=f"{losses[-1]:.6f}")
        return io.NodeOutput(lora.load_motion_lora(motion_module, path, name, 1.0), name)


NODES = [AnimateDiffTrainMotionLoRA]
