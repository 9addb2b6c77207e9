"""Prompt schedules: the keyframe text users paste from prompt-travel tools, and how much of each keyframe's prompt
each frame takes (pure Python and torch; `nodes/prompt_travel.py` encodes the prompts).

One keyframe per line:

    "0": "a forest in spring",
    "16": "a forest in (winter:1.2)",

(surrounding braces, trailing commas and blank lines are allowed). Frame f takes the blend of the keyframes on
either side of it (`linear`) or the one at or before it (`hold`). Frames before the first keyframe take its
prompt, frames after the last take the last's; a keyframe at or past the frame count still pulls the frames
before it toward its prompt (`linear`) but has no frame of its own.
"""
import json
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
