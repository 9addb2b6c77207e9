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
import math

import torch
from comfy_api.latest import io

from ..motion_modules.prompt_schedule import INTERPOLATIONS, parse, weights


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
                io.Combo.Input("interpolation", options=INTERPOLATIONS, default="linear",
                               tooltip="linear: frames between two keyframes blend their prompts; hold: each "
                                       "frame takes the prompt of the last keyframe at or before it."),
            ],
            outputs=[io.Conditioning.Output(tooltip="A conditioning with one row per frame, for the sampler's "
                                                    "positive (or negative) input.")],
        )

    @classmethod
    def execute(cls, clip, text, frames, interpolation):
        return io.NodeOutput(encode(clip, text, frames, interpolation))


NODES = [AnimateDiffPromptTravel]
