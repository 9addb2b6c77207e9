"""FreeInit (Wu et al. 2023, arXiv 2312.07537) in ComfyUI: AnimateDiff FreeInit puts a SAMPLER_SAMPLE wrapper on a
clone of the model that samples N times, each pass restarting from the last result's low frequencies
(`motion_modules.free_init` has the filters and the reinitialisation). SAMPLER_SAMPLE runs inside the initial
noise's FreeNoise (an OUTER_SAMPLE wrapper of the context windows), so every pass starts from the same noise.
"""
import dataclasses
import functools
import logging
from typing import Callable

import torch
from comfy_api.latest import io

import comfy.patcher_extension

from ..motion_modules import free_init as filters

KEY = "animatediff_free_init"


@dataclasses.dataclass(frozen=True)
class Settings:
    iterations: int  # samplings in all
    kind: str  # the low-pass filter (filters.FILTERS)
    spatial: float  # stop frequencies, 1 = Nyquist
    temporal: float
    report: Callable[[int], None]  # told each iteration's number


def apply_free_init(model, iterations, filter_kind, spatial, temporal, report):
    """A clone of `model` that samples in `iterations` FreeInit iterations (a SAMPLER_SAMPLE wrapper, inside the
    initial noise's FreeNoise); `report(i)` is told each iteration's number. 1 iteration leaves sampling as it is."""
    m = model.clone()
    if iterations > 1:
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, KEY, functools.partial(
            sample_free_init, Settings(iterations, filter_kind, spatial, temporal, report)))
    return m


def sample_free_init(settings, executor, guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask,
                     disable_pbar):
    """SAMPLER_SAMPLE: sample, then (FreeInit) restart from the result's low frequencies diffused back with the
    initial noise plus fresh noise's high frequencies (seeded by the sampling seed and the iteration), N times."""
    h = filters.low_pass_filter(noise.shape[0], noise.shape[2], noise.shape[3], settings.kind, settings.spatial,
                                settings.temporal)

    def run(i, start_noise, start_latent):
        logging.info("AnimateDiff FreeInit: iteration %d of %d", i, settings.iterations)
        settings.report(i)
        return executor(guider, sigmas, extra_args, callback, start_noise, start_latent, denoise_mask, disable_pbar)

    out = run(1, noise, latent_image)
    for i in range(2, settings.iterations + 1):
        fresh = torch.randn(noise.shape, generator=torch.Generator().manual_seed((extra_args.get("seed") or 0) + i - 1))
        start_latent, start_noise = filters.reinitialise(out, noise, fresh.to(noise), h)
        out = run(i, start_noise, start_latent)
    return out


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
                io.Combo.Input("filter", options=filters.FILTERS, default="butterworth",
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

        return io.NodeOutput(apply_free_init(model, iterations, filter, spatial_stop_frequency,
                                             temporal_stop_frequency, report))


NODES = [AnimateDiffFreeInit]
