"""Noise schedules for AnimateDiff sampling: motion modules were trained on `sqrt_linear` betas (AnimateLCM on LCM
over those betas), while SD checkpoints default to `linear`. Apply AnimateDiff Motion Module's `beta_schedule`
puts one in place as an object patch on `model_sampling`, keeping the model's prediction type and settings.
"""
import types

import comfy.model_sampling

BETA_SCHEDULES = ["autoselect", "use_model_default", "sqrt_linear", "linear", "cosine", "squaredcos_cap_v2",
                  "sqrt", "lcm"]


def model_sampling(model, schedule):
    """A `model_sampling` object with the beta schedule `schedule`, the model's prediction type and settings."""
    if schedule == "use_model_default":
        return None
    base = comfy.model_sampling.ModelSamplingDiscrete
    prediction = type(model.get_model_object("model_sampling")).__bases__[-1]
    if schedule == "lcm":  # AnimateLCM: LCM's boundary condition and 50 original steps, on AnimateDiff's betas
        from comfy_extras.nodes_model_advanced import LCM, ModelSamplingDiscreteDistilled
        base, prediction, schedule = ModelSamplingDiscreteDistilled, LCM, "sqrt_linear"
    settings = dict(model.model.model_config.sampling_settings, beta_schedule=schedule)
    return type("AnimateDiffModelSampling", (base, prediction), {})(types.SimpleNamespace(sampling_settings=settings))
