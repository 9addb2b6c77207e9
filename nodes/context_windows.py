"""Context windows for AnimateDiff: ComfyUI's own `IndexListContextHandler`, for frames as the batch dimension.

A motion module knows 24 or 32 frame positions; longer animations are sampled in overlapping windows of frames
whose results ComfyUI's handler fuses (its schedules and fuse weights, unchanged). What this subclass adds, each
only where core needs it (`compat` detects what core does):

- `set_step` (cores before 0.33): core matched the whole timestep tensor against the sampling sigmas, which
  breaks when the frames are the batch (one timestep per frame), and failed on a sampler's substeps; as later
  cores do, the first frame decides, and a substep keeps the step.
- `get_resized_cond` (cores before 0.33): per-frame model conditioning (`c_concat`, per-frame `c_crossattn`, ...)
  is sliced to the window; those cores only sliced it when frames were not the batch dimension.
- `get_context_windows`: the uniform schedules' windows with `context_stride` > 1 can reach past the last frame,
  hold a frame twice or leave frames out; those are repaired, so every frame is in a window on every step.
- an EVALUATE_CONTEXT_WINDOWS callback that gives every ControlNet / T2I adapter in a cond's chain the hint
  frames of the window (core alone hands each window the first frames of the hint batch); `execute` restores the
  hints afterwards, also when sampling is cancelled between windows. A control that picks its window's frames
  itself keeps its full hint batch: SparseCtrl (`places_window_frames`), and Advanced-ControlNet's controls,
  which read `ad_params` and slice their batch by its `sub_idxs` (they show it with `sub_idxs` and
  `full_latent_length` attributes). The pack's own code reads the window from core's
  `transformer_options["context_window"]` (`frames.window`); the callback also publishes it as
  `transformer_options["ad_params"]` (`full_length`, `context_length`, `sub_idxs`), the surface other packs
  (IPAdapter_plus, Advanced-ControlNet) read.
- `freenoise`: FreeNoise's initial noise (Qiu et al. 2023; core's `apply_freenoise` where core has it): frames
  beyond the first window reuse the shuffled noise of the frames that left the window, so overlapping windows
  start from the same noises (an OUTER_SAMPLE wrapper, with the log line of the window plan).

AnimateDiff Context Windows (`apply`) puts the handler on a clone of the model with core's PREPARE_SAMPLING
wrapper (memory sized for one window), as core's own Context Windows node does.
"""
import logging

import torch
from comfy_api.latest import io

import comfy.context_windows as core
import comfy.controlnet
import comfy.patcher_extension
from comfy.context_windows import IndexListCallbacks, IndexListContextHandler

from . import compat, files

KEY = "animatediff_context"
SCHEDULES = [core.ContextSchedules.STATIC_STANDARD, core.ContextSchedules.UNIFORM_STANDARD,
             core.ContextSchedules.UNIFORM_LOOPED, core.ContextSchedules.BATCHED]  # as core's node lists them
FUSE_METHODS = [core.ContextFuseMethods.PYRAMID, core.ContextFuseMethods.FLAT, core.ContextFuseMethods.OVERLAP_LINEAR,
                core.ContextFuseMethods.RELATIVE]  # core's LIST_STATIC, in the order the node shipped with


class AnimateDiffContextHandler(IndexListContextHandler):
    def __init__(self, *, context_schedule, fuse_method, context_length, context_overlap, context_stride, closed_loop,
                 freenoise):
        super().__init__(**compat.handler_options(
            context_schedule=context_schedule, fuse_method=fuse_method, context_length=context_length,
            context_overlap=context_overlap, context_stride=context_stride, closed_loop=closed_loop,
            freenoise=freenoise))
        self.freenoise = freenoise
        self.hints = {}  # control object -> its full hint batch, while a step runs windows on it
        comfy.patcher_extension.add_callback_with_key(IndexListCallbacks.EVALUATE_CONTEXT_WINDOWS, KEY,
                                                      self.enter_window, self.callbacks)

    def should_use_context(self, model, conds, x_in, timestep, model_options):
        return x_in.size(0) > self.context_length  # the core handler logs this every step; see log_plan

    if not compat.STEPS_FROM_FRAME_BATCH:
        def set_step(self, timestep, model_options):
            sigmas = model_options["transformer_options"]["sample_sigmas"]
            if torch.isclose(sigmas, timestep[0].to(sigmas.dtype), rtol=0.0001).any():  # else a substep
                super().set_step(timestep[:1], model_options)

    def get_context_windows(self, model, x_in, model_options):
        """The core schedule's windows, repaired where its uniform schedules go wrong with context_stride > 1
        (indices past the last frame, a frame twice in one window, frames in no window): each window keeps its
        distinct valid frames, and a frame left out gets a window of its neighbours."""
        frames, windows = x_in.size(0), []
        for window in super().get_context_windows(model, x_in, model_options):
            frame_list = list(dict.fromkeys(i for i in window.index_list if 0 <= i < frames))
            if frame_list and frame_list not in windows:
                windows.append(frame_list)
        missing = sorted(set(range(frames)).difference(*windows))
        while missing:
            start = min(missing[0], frames - self.context_length)
            windows.append(list(range(start, start + self.context_length)))
            missing = [i for i in missing if i >= start + self.context_length]
        return [compat.FrameWindow(w, frames, self.context_overlap) for w in windows]

    def plan(self, frames, step=0):
        """The windows (lists of frame indices) of `step` for `frames` frames."""
        if frames <= self.context_length:
            return [list(range(frames))]
        self._step = step
        return [w.index_list for w in self.get_context_windows(None, torch.empty(frames), {})]

    def log_plan(self, frames):
        windows = self.plan(frames)
        shifts = " (uniform schedules shift them every step)" if "uniform" in self.context_schedule.name else ""
        logging.info("AnimateDiff context windows: %d window(s) over %d frames, %s, length %d, overlap %d, %s "
                     "fuse%s: %s", len(windows), frames, self.context_schedule.name, self.context_length,
                     self.context_overlap, self.fuse_method.name, shifts, " ".join(
                         f"[{w[0]}-{w[-1]}]" if w == list(range(w[0], w[-1] + 1)) else str(w) for w in windows))

    if not compat.SLICES_FRAME_CONDS:
        def get_resized_cond(self, cond_in, x_in, window, device=None):
            resized = super().get_resized_cond(cond_in, x_in, window, device)
            for cond in resized or []:
                cond["model_conds"] = {
                    k: v._copy_with(window.get_tensor(v.cond, device))
                    if isinstance(v.cond, torch.Tensor) and v.cond.size(0) == x_in.size(0) else v
                    for k, v in cond["model_conds"].items()}
            return resized

    def enter_window(self, handler, model, x_in, conds, timestep, model_options, window_idx, window, *args):
        # written for other packs (IPAdapter_plus, Advanced-ControlNet read it); the pack reads core's context_window
        model_options["transformer_options"]["ad_params"] = {
            "full_length": x_in.size(0), "context_length": len(window.index_list), "sub_idxs": window.index_list}
        for cond in conds:
            for c in cond or []:
                control = c.get("control")
                while control is not None:
                    full = self.hints.get(control, control.cond_hint_original)
                    if isinstance(full, torch.Tensor) and full.shape[0] == x_in.size(0) and \
                            not picks_window_frames(control):
                        self.hints[control] = full
                        set_hint(control, full[window.index_list])
                    control = control.previous_controlnet

    def execute(self, calc_cond_batch, model, conds, x_in, timestep, model_options):
        try:
            return super().execute(calc_cond_batch, model, conds, x_in, timestep, model_options)
        finally:
            for control, full in self.hints.items():
                set_hint(control, full)
            self.hints = {}


def picks_window_frames(control):
    """Whether a control object takes its window's frames from its full hint batch itself: SparseCtrl, or a control
    that slices by `ad_params` as Advanced-ControlNet's do (else the handler slicing too would cut twice)."""
    return getattr(control, "places_window_frames", False) or \
        (hasattr(control, "sub_idxs") and hasattr(control, "full_latent_length"))


def set_hint(control, hint):
    """Give a control object another hint batch; it recomputes what it cached from the old one. Core has no public
    way to do this (`set_cond_hint` keeps the upscaled hint it cached), so the fields are set here, and
    `AnimateDiffContextHandler.execute` puts the full batch back."""
    control.cond_hint_original = hint
    control.cond_hint = None
    if isinstance(control, comfy.controlnet.T2IAdapter):
        control.control_input = None


def apply(model, **settings):
    """A clone of `model` that samples its frames in overlapping windows; `settings` are the node's inputs."""
    if settings["context_overlap"] >= settings["context_length"]:
        raise files.AnimateDiffError(
            f"context_overlap ({settings['context_overlap']}) must be smaller than context_length "
            f"({settings['context_length']}): windows that overlap completely never advance.")
    m = model.clone()
    m.model_options["context_handler"] = AnimateDiffContextHandler(**dict(
        settings, context_schedule=core.get_matching_context_schedule(settings["context_schedule"]),
        fuse_method=core.get_matching_fuse_method(settings["fuse_method"])))
    core.create_prepare_sampling_wrapper(m)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, KEY, start)
    return m


def start(executor, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
          seed=None, **kwargs):
    """OUTER_SAMPLE: log the window plan, and apply FreeNoise to the initial noise."""
    handler = executor.class_obj.model_options["context_handler"]
    handler.log_plan(noise.shape[0])
    if handler.freenoise:
        noise = compat.apply_freenoise(noise.clone(), 0, handler.context_length, handler.context_overlap, seed or 0)
    return executor(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed, **kwargs)


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
                io.Combo.Input("context_schedule", options=SCHEDULES, default="standard_static",
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
        return io.NodeOutput(apply(
            model, context_length=context_length, context_overlap=context_overlap, context_schedule=context_schedule,
            context_stride=context_stride, closed_loop=closed_loop, fuse_method=fuse_method, freenoise=freenoise))


NODES = [AnimateDiffContextWindows]
