"""AnimateDiff for ComfyUI: motion modules that animate SD1.5/SDXL models inside the stock samplers."""
from .nodes import comfy_entrypoint

__all__ = ["comfy_entrypoint"]
