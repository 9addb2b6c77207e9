"""Motion strength per frame and pixel: Apply AnimateDiff Motion Module's `motion_scale` and `effect` as a scalar, or
as a schedule (floats, one per frame, or a MASK batch, per frame and pixel) that each motion module reads for
the frames of its call at its own resolution.
"""
import torch
import torch.nn.functional as F

from . import frames as frame_calls


def strength(scalar, schedule):
    """The scalar as a float, or the schedule as a tensor: [frames, 1, 1] from floats, a MASK [frames or 1, H, W]."""
    if schedule is None:
        return float(scalar)
    values = torch.as_tensor(schedule, dtype=torch.float32).cpu()
    return values.reshape(-1, 1, 1) if values.ndim <= 1 else values.reshape(-1, *values.shape[-2:])


def describe(value):
    """A strength as the log line says it."""
    if isinstance(value, float):
        return f"{value:g}"
    return f"{'per frame' if value.shape[1:] == (1, 1) else 'per pixel'} ({value.shape[0]} frames)"


def per_frame(schedule, transformer_options, frames, x):
    """A strength per frame ([frames]) or per frame and pixel (a MASK, [frames or 1, H, W]) for the frames of this
    call (its context window's, else all), at x's resolution: [(b f), 1, h, w]."""
    window, _ = frame_calls.window(transformer_options, frames)
    values = schedule[window] if schedule.shape[0] > 1 else schedule.expand(len(window), *schedule.shape[1:])
    values = F.interpolate(values.reshape(len(window), 1, *values.shape[1:]).to(x), size=x.shape[2:],
                           mode="area")  # a mask at pixel size: each latent cell its average
    return values.repeat(x.shape[0] // frames, 1, 1, 1)
