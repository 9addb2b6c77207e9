"""Prompt travel: one prompt per keyframe, a conditioning row per frame.

The schedule is the text users paste from other prompt-travel tools, one keyframe per line:

    "0": "a forest in spring",
    "16": "a forest in (winter:1.2)",

(surrounding braces, trailing commas and blank lines are allowed). Each keyframe's prompt is encoded once, as
CLIP Text Encode encodes it (ComfyUI's `(word:1.2)` weights included); frame f gets the blend of the keyframes on
either side of it (`linear`) or the one at or before it (`hold`). Frames before the first keyframe take its
prompt, frames after the last take the last's; a keyframe at or past the frame count still pulls the frames
before it toward its prompt (`linear`) but has no frame of its own. The cross-attention rows and the pooled
output (SDXL's size conditioning reads it) are blended alike, so a sampler, and a context window, sees frame f's
prompt at frame f.
"""
import json
import math
import re

import torch

LINE = re.compile(r'"?(\d+)"?\s*:\s*("(?:[^"\\]|\\.)*")\s*,?')
INTERPOLATIONS = ["linear", "hold"]


def parse(text):
    """[(frame, prompt)] in frame order from the schedule text; a ValueError names the line that is wrong."""
    keyframes = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip().strip("{}").strip()
        if not line:
            continue
        match = LINE.fullmatch(line)
        if not match:
            raise ValueError(f'Prompt schedule line {number}: {line!r} is not a keyframe. Write one per line as '
                             '"frame": "prompt", e.g. "0": "a forest in spring",')
        frame = int(match.group(1))
        if frame in keyframes:
            raise ValueError(f"Prompt schedule line {number}: frame {frame} has a prompt already; give each "
                             "keyframe one line.")
        keyframes[frame] = json.loads(match.group(2))
    if not keyframes:
        raise ValueError('The prompt schedule has no keyframes: write one per line as "frame": "prompt", e.g. '
                         '"0": "a forest in spring",')
    return sorted(keyframes.items())


def weights(frames_at, frames, interpolation):
    """[frames, keyframes]: how much of each keyframe's prompt each frame takes (rows sum to 1)."""
    w = torch.zeros(frames, len(frames_at))
    for f in range(frames):
        after = next((i for i, k in enumerate(frames_at) if k > f), len(frames_at))
        before = max(after - 1, 0)
        if after == 0 or after == len(frames_at) or interpolation == "hold":
            w[f, before] = 1.0
        else:
            t = (f - frames_at[before]) / (frames_at[after] - frames_at[before])
            w[f, before], w[f, after] = 1.0 - t, t
    return w


def encode(clip, text, frames, interpolation):
    """CONDITIONING with one cross-attention row (and pooled output) per frame."""
    keyframes = parse(text)
    encoded = [clip.encode_from_tokens_scheduled(clip.tokenize(prompt))[0] for _, prompt in keyframes]
    # prompts of over 75 tokens are longer: repeat each to a common length, as ComfyUI batches them
    # (the same tokens repeated leave cross-attention's result as it is)
    length = math.lcm(*(cond.shape[1] for cond, _ in encoded))
    conds = torch.cat([cond.repeat(1, length // cond.shape[1], 1) for cond, _ in encoded])  # [keyframes, tokens, ch]
    w = weights([k for k, _ in keyframes], frames, interpolation).to(conds)
    extra = dict(encoded[0][1])
    if extra.get("pooled_output") is not None:
        pooled = torch.cat([e["pooled_output"] for _, e in encoded])  # [keyframes, ch]
        extra["pooled_output"] = w @ pooled.to(w)  # [frames, ch]
    return [[torch.einsum("fk,ktc->ftc", w, conds), extra]]  # [frames, tokens, ch]
