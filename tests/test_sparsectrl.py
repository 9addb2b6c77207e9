"""SparseCtrl: the official layouts load through the node (their detection at full size and the encoder's shapes:
tests/torch/test_pure_sparse_controlnet.py); weights.py's written-out layout and the encoder equal diffusers'
SparseControlNetModel, the encoder set to the original's per-frame motion-module GroupNorm; in ComfyUI graphs (Load
AnimateDiff SparseCtrl + the stock Apply ControlNet (Advanced) + KSampler) each UNet call's encoder gets the
condition of its frames: the given frames (VAE latents for RGB, pixels for scribble) at their indices, zeros and
mask 0 elsewhere, per context window; bad indices and a missing VAE fail clearly."""
import json
import os

import pytest
import torch
from einops import rearrange
from PIL import Image

import builders
from conftest import REPO_DIR

TINY = (32, 64, 64, 64)
AD_LAYOUT = (320,) * 4  # the channels of the SD1.5 test checkpoint (conftest's sd15_ad_checkpoint) on every level
WIDTH, HEIGHT = 64, 48
RGB, SCRIBBLE, MOTION_MODULE = "sc_rgb.safetensors", "sc_scribble.ckpt", "sc_v3.safetensors"


@pytest.fixture(scope="module")
def sparsectrl(pack):
    return pack.nodes.sparsectrl


@pytest.fixture(scope="module")
def files(comfy):
    folder = os.path.join(comfy.models, "controlnet")
    os.makedirs(folder, exist_ok=True)
    builders.save_file(builders.sparsectrl_sd(AD_LAYOUT, latent=True, seed=3), os.path.join(folder, RGB))
    builders.save_file(builders.sparsectrl_sd(AD_LAYOUT, latent=False, seed=4), os.path.join(folder, SCRIBBLE),
                       wrapper=True)
    builders.save_file(builders.motion_module_sd("v3", channels=AD_LAYOUT),
                       os.path.join(comfy.models, "animatediff_models", MOTION_MODULE))
    builders.save_hint_frames(os.path.join(comfy.input_dir, "sc_keys_2.webp"), 2, HEIGHT, WIDTH)
    builders.save_hint_frames(os.path.join(comfy.input_dir, "sc_keys_3.webp"), 3, HEIGHT, WIDTH)


def test_full_size_file_loads_through_the_node(comfy, pack, tmp_path, sparsectrl):
    path = builders.save_file(builders.sparsectrl_sd(builders.SD15_CHANNELS, latent=False, dtype=torch.float16),
                              str(tmp_path / "v3_sd15_sparsectrl_scribble.safetensors"))
    control = sparsectrl.load_sparsectrl(path, "v3_sd15_sparsectrl_scribble.safetensors", [0])
    assert control.latent_format is None and not control.control_model.latent_condition
    assert len(control.control_model.controlnet_down_blocks) == 12


def test_other_files_are_refused_saying_what_they_are(comfy, tmp_path, sparsectrl):
    path = builders.save_file(builders.motion_module_sd("v3", channels=TINY), str(tmp_path / "mm.safetensors"))
    with pytest.raises(sparsectrl.SparseCtrlError, match="is not a SparseCtrl encoder. This file is an AnimateDiff "
                                                         "motion module: load it with Load AnimateDiff Motion Module"):
        sparsectrl.load_sparsectrl(path, "mm.safetensors", [])
    plain = {k: v for k, v in builders.sparsectrl_sd(TINY).items() if ".motion_modules." not in k}
    path = builders.save_file(plain, str(tmp_path / "cn.safetensors"))
    with pytest.raises(sparsectrl.SparseCtrlError, match="This file is a ControlNet: load it with Load ControlNet"):
        sparsectrl.load_sparsectrl(path, "cn.safetensors", [])


class PerFrameNorm(torch.nn.Module):
    """diffusers' motion-module GroupNorm on [b, c, f, h, w] per frame, as the original SparseCtrl code has it."""

    def __init__(self, norm):
        super().__init__()
        self.norm = norm

    def forward(self, x):
        frames = x.shape[2]
        return rearrange(self.norm(rearrange(x, "b c f h w -> (b f) c h w")), "(b f) c h w -> b c f h w", f=frames)


def diffusers_key(key):
    """The diffusers SparseControlNetModel key of a SparseCtrl file's key."""
    block, sep, rest = key.partition(".motion_modules.")
    if not sep:
        return key
    index, _, rest = rest.partition(".temporal_transformer")
    for new, old in builders.SPARSECTRL_MOTION_NAMES:
        rest = rest.replace(old, new)
    return f"{block}.motion_modules.{index}{rest}"


@pytest.mark.parametrize("channels", [builders.SD15_CHANNELS, TINY], ids=["sd15", "tiny"])
@pytest.mark.parametrize("latent", [True, False], ids=["rgb", "scribble"])
def test_written_out_layout_is_diffusers_sparse_controlnet(latent, channels):
    """scripts/weights.py writes the SparseCtrl layout out (no diffusers at run time): it must be diffusers'
    SparseControlNetModel's, key for key in its order, with the motion modules renamed."""
    from diffusers import SparseControlNetModel
    with torch.device("meta"):
        model = SparseControlNetModel(block_out_channels=channels, conditioning_channels=4 if latent else 3,
                                      use_simplified_condition_embedding=latent)
    expected = [(key, tuple(v.shape)) for key, v in model.state_dict().items()]
    assert [(diffusers_key(key), shape) for key, shape in builders.sparsectrl_shapes(channels, latent)] == expected


@pytest.mark.parametrize("latent", [True, False], ids=["rgb", "scribble"])
def test_encoder_equals_diffusers_with_the_originals_per_frame_norm(pack, latent):
    from diffusers import SparseControlNetModel
    SparseControlNet = pack.motion_modules.sparse_controlnet.SparseControlNet
    sd = builders.sparsectrl_sd(TINY, latent, seed=7)
    kwargs, converted = pack.motion_modules.formats.sparsectrl(sd)
    ours = SparseControlNet(**kwargs)
    ours.load_state_dict(converted, strict=True)
    oracle = SparseControlNetModel(block_out_channels=TINY, conditioning_channels=4 if latent else 3,
                                   use_simplified_condition_embedding=latent)
    oracle.load_state_dict({diffusers_key(k): v for k, v in sd.items()}, strict=True)
    for block in oracle.down_blocks:
        for module in block.motion_modules:
            module.norm = PerFrameNorm(module.norm)
    clips, frames, h, w = 2, 5, 16, 24  # the last level 2 x 3: enough pixels per group for stable statistics
    size = (h, w) if latent else (8 * h, 8 * w)
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(clips, 1, frames, *size)
    mask[:, :, [0, 3]] = 1
    condition = torch.randn(clips, 4 if latent else 3, frames, *size, generator=g) * mask
    context = torch.randn(clips * frames, 7, 768, generator=g)
    timesteps = torch.tensor([500.0, 321.0])
    with torch.no_grad():
        down, mid = oracle(torch.randn(clips, 4, frames, h, w, generator=g), timesteps, context, condition,
                           conditioning_mask=mask, return_dict=False)
        out = ours(torch.randn(clips * frames, 4, h, w, generator=g),
                   rearrange(torch.cat([condition, mask], 1), "b c f h w -> (b f) c h w"),
                   timesteps.repeat_interleave(frames), context, frames)
    assert len(out["output"]) == len(down) == 12
    # fp32: measured max |ours - diffusers| 4.7e-5 on residuals up to 29 (summation order); a wrong norm, mask or
    # zero input changes them by >= 0.1
    for a, b in zip(out["output"] + out["middle"], list(down) + [mid]):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)


def prompt(ckpt, frames, name=RGB, indices="0, -1", keys=2, windows=True, vae=True, strength=1.0, steps=1):
    p = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a boat on a lake", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": WIDTH, "height": HEIGHT, "batch_size": frames}},
        "5": {"class_type": "AnimateDiffLoadSparseCtrl", "inputs": {"sparsectrl_name": name,
                                                                    "frame_indices": indices}},
        "6": {"class_type": "LoadImage", "inputs": {"image": f"sc_keys_{keys}.webp"}},
        "8": {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["2", 0], "negative": ["3", 0], "control_net": ["5", 0], "image": ["6", 0],
            "strength": strength, "start_percent": 0.0, "end_percent": 1.0}},
        "10": {"class_type": "AnimateDiffLoadMotionModule", "inputs": {"motion_module": MOTION_MODULE}},
        "11": {"class_type": "AnimateDiffApplyMotionModule", "inputs": {
            "model": ["1", 0], "motion_module": ["10", 0], "beta_schedule": "autoselect", "motion_scale": 1.0,
            "effect": 1.0}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["11", 0], "positive": ["8", 0], "negative": ["8", 1], "latent_image": ["4", 0], "seed": 9,
            "steps": steps, "cfg": 2.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "sc/lat"}},
    }
    if vae:
        p["8"]["inputs"]["vae"] = ["1", 2]
    if windows:
        p["12"] = {"class_type": "AnimateDiffContextWindows", "inputs": {
            "model": ["11", 0], "context_length": 8, "context_overlap": 2, "context_schedule": "standard_static",
            "context_stride": 1, "closed_loop": False, "fuse_method": "pyramid", "freenoise": False}}
        p["7"]["inputs"]["model"] = ["12", 0]
    return p


def run_recorded(comfy, p):
    """Run the prompt with a pre-hook on the SparseCtrl encoder: each call's condition [(b f), c + 1, H, W]."""
    ex = comfy.executor()
    control = comfy.run(p, executor=ex, validate=False, outputs=["5"]).output("5")
    calls = []
    hook = control.control_model.register_forward_pre_hook(lambda module, args: calls.append(args[1].float()))
    try:
        result = comfy.run(p, executor=ex)
    finally:
        hook.remove()
    return calls, result


def test_each_window_gets_its_key_frames_as_vae_latents(comfy, files, sd15_ad_checkpoint):
    calls, result = run_recorded(comfy, prompt(sd15_ad_checkpoint, 14))
    windows = [list(range(0, 8)), list(range(6, 14))]  # 14 frames, windows of 8 overlapping by 2
    assert [c.shape[0] for c in calls] == [16, 16]  # cond and uncond of each window
    assert [c[:, -1].mean(dim=(1, 2)).tolist() for c in calls] == \
        [[float(i in (0, 13)) for i in w] * 2 for w in windows]
    vae = comfy.run({"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd15_ad_checkpoint}}},
                    validate=False, outputs=["1"]).output("1", 2)
    with torch.inference_mode():
        latents = vae.encode(builders.hint_frames(2, HEIGHT, WIDTH)) * 0.18215  # SD1.5 latent scale
    (first, last) = calls
    torch.testing.assert_close(first[0, :4], latents[0], atol=2e-3, rtol=0)  # 8-bit webp frames
    torch.testing.assert_close(last[7, :4], latents[1], atol=2e-3, rtol=0)
    assert first[1:8, :4].abs().max() == 0 and last[0:7, :4].abs().max() == 0
    assert first[0, :4].abs().max() > 0.01


def test_the_key_frames_change_the_animation(comfy, files, sd15_ad_checkpoint):
    with_keys = comfy.run(prompt(sd15_ad_checkpoint, 8, windows=False)).output("7")["samples"]
    without = comfy.run(prompt(sd15_ad_checkpoint, 8, windows=False, strength=0.0)).output("7")["samples"]
    assert (with_keys - without).abs().mean() > 1e-3


def test_scribble_takes_the_images_as_they_are_spread_evenly(comfy, files, sd15_ad_checkpoint):
    calls, _ = run_recorded(comfy, prompt(sd15_ad_checkpoint, 9, name=SCRIBBLE, indices="", keys=3, windows=False,
                                          vae=False))
    (condition,) = calls
    assert condition.shape == (18, 4, HEIGHT, WIDTH)
    given = [0, 4, 8]  # 3 images over 9 frames
    assert condition[:9, -1].mean(dim=(1, 2)).tolist() == [float(i in given) for i in range(9)]
    assert builders.hint_frame_indices(condition[given, :3]) == [0, 1, 2]
    assert condition[[1, 2, 3, 5, 6, 7], :3].abs().max() == 0


@pytest.mark.parametrize("case, match", [
    (dict(indices="0, 20"), r"frame 20 is outside the animation's 10 frames \(0 to 9, or -1 to -10\)"),
    (dict(indices="0"), "frame_indices names 1 frames, but Apply ControlNet's image batch has 2 images"),
    (dict(indices="0, x"), "frame_indices: 'x' is not a frame number"),
    (dict(vae=False), "reads its frames as latents: connect the VAE to Apply ControlNet \\(Advanced\\)'s vae input"),
])
def test_bad_input_fails_clearly(comfy, files, sd15_ad_checkpoint, case, match):
    with pytest.raises(Exception, match=match):
        comfy.run(prompt(sd15_ad_checkpoint, 10, windows=False, **case))


def keyframes_prompt(ckpt, object_info):
    """workflows/sparsectrl_keyframes.json as the headless runner sends it: 8 frames of 64x48, 1 step, the test
    files in place of the real ones."""
    import test_workflow_run
    workflow = test_workflow_run.workflow
    with open(os.path.join(REPO_DIR, "workflows", "sparsectrl_keyframes.json")) as f:
        ui = json.load(f)
    prompt = workflow.apply_overrides(workflow.ui_to_api(ui, object_info), width=WIDTH, height=HEIGHT, frames=8,
                                      steps=1, checkpoint=ckpt, motion_module=MOTION_MODULE)
    workflow.set_inputs(prompt, {"AnimateDiffLoadSparseCtrl": {"sparsectrl_name": RGB},
                                 "LoadImage": {"image": "sc_keys_2.webp"}})
    (loader,) = workflow.find_nodes(prompt, "AnimateDiffLoadSparseCtrl")
    (apply,) = workflow.find_nodes(prompt, "ControlNetApplyAdvanced")
    assert prompt[loader]["inputs"]["frame_indices"] == "0, -1"
    assert prompt[apply]["inputs"]["control_net"] == [loader, 0] and prompt[apply]["inputs"]["vae"][1] == 2
    return prompt, loader


def test_keyframes_workflow_in_process_and_over_http(comfy, comfy_server, files, sd15_ad_checkpoint):
    info = comfy_server.get("/object_info")
    prompt, loader = keyframes_prompt(sd15_ad_checkpoint, info)
    ex = comfy.executor()
    control = comfy.run(prompt, executor=ex, validate=False, outputs=[loader]).output(loader)
    masks = []
    hook = control.control_model.register_forward_pre_hook(
        lambda module, args: masks.append(args[1][:, -1].float().mean(dim=(1, 2)).tolist()))
    try:
        outputs = comfy.run(prompt, executor=ex)
    finally:
        hook.remove()
    assert masks == [([1.0] + [0.0] * 6 + [1.0]) * 2]  # cond and uncond batched; the first and last frame given
    for saved in ([o["images"][0] for o in outputs.values() if "images" in o][0],
                  [o["images"][0] for o in comfy_server.run(prompt, timeout=300).values() if "images" in o][0]):
        with Image.open(os.path.join(comfy.output_dir, saved["subfolder"], saved["filename"])) as image:
            assert (image.n_frames, image.size) == (8, (WIDTH, HEIGHT))
