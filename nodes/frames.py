"""Which frames a model call computes. Every motion module, v1 clip norm and SparseCtrl call asks here.

A latent batch holds the frames of one animation; ComfyUI batches cond and uncond into one call (`cond_or_uncond`),
so a call's batch is [(b f), ...] with b chunks of f frames each. With context windows, core's handler publishes
the window it is computing in `transformer_options["context_window"]` (its frame indices); without them a call
computes every frame.
"""


def per_clip(x, transformer_options):
    """The frames of each clip in the batch x [(b f), ...]."""
    return x.shape[0] // len(transformer_options.get("cond_or_uncond", [0]))


def window(transformer_options, frames):
    """(the animation frames this call computes, the animation's frame count): its context window's (core's
    `context_window`, which the pack's windows give `total_frames` on every core), else all `frames`."""
    current = transformer_options.get("context_window")
    if current is None:
        return list(range(frames)), frames
    return list(current.index_list), current.total_frames
