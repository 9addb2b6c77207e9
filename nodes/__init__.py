"""ComfyUI nodes (V3 schema). Each module under nodes/ is one concept: its node classes (`NODES`) and the hooks it
registers on a model; this file only registers them."""
from comfy_api.latest import ComfyExtension

from . import context_windows, files, free_init, lora, motion, prompt_travel, sparsectrl, training

files.register_folders()


class AnimateDiffExtension(ComfyExtension):
    async def get_node_list(self):
        return [node for module in (motion, context_windows, lora, training, prompt_travel, free_init, sparsectrl)
                for node in module.NODES]


async def comfy_entrypoint():
    return AnimateDiffExtension()
