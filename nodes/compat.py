"""What differs between the ComfyUI versions the pack runs on, in one place. Everything here is detected from
what core offers (its signatures, and its behaviour on a tiny input), never from a version number, so a core
that fixes or changes something is followed without a release of the pack.

- `FrameWindow` / `handler_options()`: core's context-window classes grew keyword arguments (0.33: a window's
  `total_frames` and `context_overlap`, the handler's `freenoise`, `causal_window_fix`, ...); only the ones this
  core takes are passed, by name.
- `STEPS_FROM_FRAME_BATCH`: whether core's handler finds the sampling step from a frame batch's timesteps (one
  per frame) and keeps it on a sampler's substeps (0.3.75: no; 0.33: yes).
- `SLICES_FRAME_CONDS`: whether core's handler slices per-frame model conditioning when the frames are the batch,
  dim 0 (0.3.75: no; 0.33: yes).
- `apply_freenoise`: core's FreeNoise where core has it (0.33), else the same algorithm here (0.3.75).

The context-window handler applies its repairs only where the flags say core is still wrong; a probe that fails
counts as "core is wrong", and every repair is a no-op where core already does the right thing.
"""
import inspect

import torch

import comfy.conds

import comfy.context_windows as core

TESTED = ("0.3.75", "0.33.0")  # the ComfyUI versions the whole test suite runs on


def taken(function, **kwargs):
    """The keyword arguments that `function` takes."""
    parameters = inspect.signature(function).parameters
    return {k: v for k, v in kwargs.items() if k in parameters}


class FrameWindow(core.IndexListContextWindow):
    """Core's window over the frames (dim 0) of an animation of `total_frames`, which it carries on every core."""

    def __init__(self, index_list, total_frames, context_overlap):
        super().__init__(**taken(core.IndexListContextWindow.__init__, index_list=index_list, dim=0,
                                 total_frames=total_frames, context_overlap=context_overlap))
        self.total_frames = total_frames


def handler_options(**options):
    """Keyword arguments for core's `IndexListContextHandler`, frames as the batch (dim 0). The causal anchor of
    0.33 (a frame before each window, for causal video models) stays off: it would add a frame to each of the
    motion module's clips."""
    return taken(core.IndexListContextHandler.__init__, dim=0, causal_window_fix=False, **options)


def freenoise(noise, dim, context_length, context_overlap, seed):
    """FreeNoise (Qiu et al. 2023, as core 0.33 has it), in place on `noise`: after the first window, each stretch of
    `context_length - context_overlap` frames takes the noise of the frames that left the window, shuffled by a
    CPU generator seeded with `seed`."""
    generator, stride = torch.Generator().manual_seed(seed), context_length - context_overlap
    for start in range(0, noise.shape[dim] - context_length, stride):
        count = min(stride, noise.shape[dim] - start - context_length)
        target = noise.narrow(dim, start + context_length, count)
        target.copy_(noise.index_select(dim, torch.randperm(count, generator=generator) + start))
    return noise


class CoreHandler(core.IndexListContextHandler):
    """Core's handler as it is, outside a sampling: `execute()` sets the model that some cores ask how to slice."""
    _model = None


def core_handler(**options):
    """Core's own handler on the frames (standard_static, flat), as the probes and tests look at it."""
    return CoreHandler(core.get_matching_context_schedule("standard_static"), core.get_matching_fuse_method("flat"),
                       **handler_options(**options))


def probe_steps_from_frame_batch():
    handler = core_handler()
    options = {"transformer_options": {"sample_sigmas": torch.tensor([2.0, 1.0, 0.0])}}
    try:
        handler.set_step(torch.tensor([1.0, 1.0, 1.0]), options)  # three frames at step 1
        handler.set_step(torch.tensor([1.5, 1.5, 1.5]), options)  # a substep between steps 1 and 2
    except Exception:
        return False
    return handler._step == 1


def probe_slices_frame_conds():
    handler = core_handler(context_length=2)
    cond = [{"model_conds": {"c_concat": comfy.conds.CONDNoiseShape(torch.arange(4.0).reshape(4, 1))}}]
    try:
        (resized,) = handler.get_resized_cond(cond, torch.zeros(4, 1), FrameWindow([1, 2], 4, 1))
    except Exception:
        return False
    return resized["model_conds"]["c_concat"].cond.flatten().tolist() == [1.0, 2.0]


STEPS_FROM_FRAME_BATCH = probe_steps_from_frame_batch()
SLICES_FRAME_CONDS = probe_slices_frame_conds()
apply_freenoise = getattr(core, "apply_freenoise", freenoise)
