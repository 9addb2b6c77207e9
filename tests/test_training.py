"""Training on ComfyUI's own model machinery at tiny scale: the loss falls, frozen weights stay bit-identical,
the saved files have exactly the documented layouts and load in the loader nodes, resume equals an
uninterrupted run, gradient checkpointing and autocast, cancelling."""

import pytest
import torch

import builders

TINY = (32, 64, 64, 64)  # comfy_models.tiny_sd15_model's level channels
RANK = 4


def moving_square(frames=12, size=8, channels=4, seed=0, step=1):
    """Latents [frames, channels, size, size] of a bright 3x3 square moving right by `step` per frame."""
    g = torch.Generator().manual_seed(seed)
    video = 0.1 * torch.randn(frames, channels, size, size, generator=g)
    for f in range(frames):
        x = (f * step) % (size - 3)
        video[f, :, 2:5, x:x + 3] += 2.0
    return video


def conditioning(seed=0, width=768):
    return [[torch.randn(1, 4, width, generator=torch.Generator().manual_seed(seed)), {}]]


@pytest.fixture
def motion_module(pack_nodes, tmp_path):
    path = builders.save_file(builders.motion_module_sd("v2", channels=TINY), tmp_path / "mm_v2.safetensors")
    return pack_nodes.motion.load_motion_module(str(path), "mm_v2.safetensors")


@pytest.fixture
def training(pack):
    return pack.nodes.training


def snapshot(*patchers):
    return [{k: v.clone() for k, v in p.model.state_dict().items()} for p in patchers]


def assert_identical(before, *patchers):
    import comfy.model_management
    comfy.model_management.unload_all_models()  # a loaded model holds its object patches (the beta schedule)
    for saved, p in zip(before, patchers):
        now = p.model.state_dict()
        assert saved.keys() == now.keys()
        changed = [k for k in saved if not torch.equal(saved[k], now[k])]
        assert not changed, f"{len(changed)} frozen weights changed, e.g. {changed[:3]}"


@pytest.mark.usefixtures("no_loaded_models")
def test_motion_lora_loss_falls_frozen_weights_identical_layout(training, motion_module, tiny_sd15):
    videos = [moving_square(seed=0), moving_square(seed=1)]
    before = snapshot(tiny_sd15, motion_module.patcher)
    kwargs = dict(steps=40, clip_length=8, seed=3, motion_module=motion_module, rank=RANK)
    base, base_losses = training.train(tiny_sd15, "motion_lora", videos, conditioning(), learning_rate=0.0, **kwargs)
    weights, losses = training.train(tiny_sd15, "motion_lora", videos, conditioning(), learning_rate=3e-3, **kwargs)
    assert_identical(before, tiny_sd15, motion_module.patcher)
    # learning rate 0 sees the same clips, timesteps and noise per step (seeded by step): the paired losses
    # show what training bought on the same samples
    assert losses[0] == pytest.approx(base_losses[0], rel=1e-6)
    late, late_base = sum(losses[-10:]), sum(base_losses[-10:])
    assert late < 0.9 * late_base, (late, late_base)
    assert sorted(weights) == sorted(k for k, _ in builders.motion_lora_shapes(TINY, RANK, mid=True))
    for k, shape in builders.motion_lora_shapes(TINY, RANK, mid=True):
        assert tuple(weights[k].shape) == shape and weights[k].dtype == torch.float32
    assert all(not base[k].any() for k in base if k.endswith("up.weight"))  # learning rate 0: up stays zero


@pytest.mark.usefixtures("no_loaded_models")
def test_domain_adapter_stage_layout_and_round_trip(training, pack_nodes, tiny_sd15, tmp_path):
    frames = [moving_square(seed=s) for s in range(2)]
    before = snapshot(tiny_sd15)
    kwargs = dict(steps=30, clip_length=4, seed=5, rank=RANK)
    _, base = training.train(tiny_sd15, "domain_adapter", frames, conditioning(), learning_rate=0.0, **kwargs)
    weights, losses = training.train(tiny_sd15, "domain_adapter", frames, conditioning(), learning_rate=3e-3, **kwargs)
    assert_identical(before, tiny_sd15)
    assert sum(losses[-10:]) < 0.9 * sum(base[-10:]), (sum(losses[-10:]), sum(base[-10:]))
    expected = dict(builders.v3_adapter_shapes(RANK, TINY, 768))
    assert {k: tuple(v.shape) for k, v in weights.items()} == expected
    path = training.save(weights, str(tmp_path / "adapter.safetensors"))
    adapted = pack_nodes.lora.apply_domain_adapter(tiny_sd15, path, "adapter.safetensors", 1.0)
    assert len(adapted.patches) == len(expected) // 2


@pytest.mark.usefixtures("no_loaded_models")
def test_motion_module_stage_from_scratch(training, pack_nodes, tiny_sd15, tmp_path):
    module = pack_nodes.motion.new_motion_module(tiny_sd15, 32, seed=0)
    assert module.info.format == "v3"
    assert all(not v.any() for k, v in module.patcher.model.state_dict().items() if ".proj_out." in k)
    before = snapshot(tiny_sd15)
    kwargs = dict(steps=30, clip_length=8, seed=1, motion_module=module)
    _, base = training.train(tiny_sd15, "motion_module", [moving_square(seed=0)], conditioning(), learning_rate=0.0,
                             **kwargs)
    weights, losses = training.train(tiny_sd15, "motion_module", [moving_square(seed=0)], conditioning(),
                                     learning_rate=1e-3, **kwargs)
    assert_identical(before, tiny_sd15)
    assert sum(losses[-10:]) < 0.9 * sum(base[-10:]), (sum(losses[-10:]), sum(base[-10:]))
    sd = module.patcher.model.state_dict()
    assert any(v.any() for k, v in sd.items() if ".proj_out." in k)
    path = training.save(sd, str(tmp_path / "mm.safetensors"))
    loaded = pack_nodes.motion.load_motion_module(path, "mm.safetensors")
    assert loaded.info.format == "v3"
    assert all(torch.equal(loaded.patcher.model.state_dict()[k], v) for k, v in sd.items())


@pytest.mark.usefixtures("no_loaded_models")
def test_resume_equals_uninterrupted(training, motion_module, tiny_sd15, tmp_path):
    videos, state = [moving_square(seed=0)], str(tmp_path / "state.pt")
    kwargs = dict(clip_length=4, seed=2, motion_module=motion_module, rank=RANK, learning_rate=1e-2)
    straight, straight_losses = training.train(tiny_sd15, "motion_lora", videos, conditioning(), steps=6, **kwargs)
    training.train(tiny_sd15, "motion_lora", videos, conditioning(), steps=3, checkpoint=state, **kwargs)
    assert torch.load(state, weights_only=True)["step"] == 3
    resumed, losses = training.train(tiny_sd15, "motion_lora", videos, conditioning(), steps=6, checkpoint=state,
                                     **kwargs)
    assert losses == straight_losses
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    with pytest.raises(ValueError, match="another part"):
        training.train(tiny_sd15, "domain_adapter", videos, conditioning(), steps=7, checkpoint=state, rank=RANK,
                       clip_length=4, seed=2, learning_rate=1e-2)


@pytest.mark.usefixtures("no_loaded_models")
def test_gradient_checkpointing_gives_the_same_training(training, pack_nodes, tiny_sd15):
    """Recomputing every UNet block in the backward changes memory, not the result; the blocks are restored."""
    videos = [moving_square(seed=0)]
    kwargs = dict(steps=2, clip_length=4, seed=4, rank=RANK, learning_rate=1e-2)
    module = pack_nodes.motion.new_motion_module(tiny_sd15, 32, seed=0)
    plain, plain_losses = training.train(tiny_sd15, "motion_lora", videos, conditioning(), motion_module=module,
                                         **kwargs)
    unet = tiny_sd15.model.diffusion_model
    middle, ran = unet.middle_block, []
    hook = middle[0].register_forward_pre_hook(lambda m, a: ran.append(m))  # its first ResBlock
    checked, checked_losses = training.train(tiny_sd15, "motion_lora", videos, conditioning(), motion_module=module,
                                             gradient_checkpointing=True, **kwargs)
    hook.remove()
    assert checked_losses == pytest.approx(plain_losses, rel=1e-5)
    assert all(torch.allclose(checked[k], plain[k], rtol=1e-4, atol=1e-7) for k in plain)
    # the middle block ran twice per step: in the forward, and again in the backward
    assert len(ran) == 2 * kwargs["steps"]
    import comfy.model_management
    comfy.model_management.unload_all_models()  # ejects the injections
    assert unet.middle_block is middle
    assert all(type(b).__name__ == "TimestepEmbedSequential" for b in unet.input_blocks)


@pytest.mark.usefixtures("no_loaded_models")
def test_bf16_autocast_trains(training, motion_module, tiny_sd15):
    weights, losses = training.train(tiny_sd15, "motion_lora", [moving_square(seed=0)], conditioning(), steps=3,
                                     learning_rate=1e-2, clip_length=4, seed=0, motion_module=motion_module,
                                     rank=RANK, precision="bf16")
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(v.dtype == torch.float32 for v in weights.values())
    assert any(weights[k].any() for k in weights if k.endswith("up.weight"))


@pytest.mark.usefixtures("no_loaded_models")
def test_cancel_stops_training_and_leaves_models_clean(training, motion_module, tiny_sd15):
    import comfy.model_management
    before = snapshot(tiny_sd15, motion_module.patcher)
    steps = []

    def cancel_after_two(step, loss):
        steps.append(step)
        if step == 2:
            comfy.model_management.interrupt_current_processing(True)

    with pytest.raises(comfy.model_management.InterruptProcessingException):
        training.train(tiny_sd15, "motion_lora", [moving_square(seed=0)], conditioning(), steps=50,
                       learning_rate=1e-2, clip_length=4, seed=0, motion_module=motion_module, rank=RANK,
                       report=cancel_after_two)
    comfy.model_management.interrupt_current_processing(False)
    assert steps == [1, 2]
    assert_identical(before, tiny_sd15, motion_module.patcher)
    unet = tiny_sd15.model.diffusion_model
    assert not any(type(m).__name__ == "VanillaTemporalModule" for m in unet.modules())
    assert all(not getattr(m, "weight_function", []) for m in unet.modules())


def test_read_videos_in_frame_order(training, tmp_path):
    frames = builders.moving_square_frames(frames=10, height=48, width=64, step=4)
    builders.write_video(tmp_path / "b.avi", frames)
    builders.write_video(tmp_path / "a.mp4", frames[:6])
    (tmp_path / "notes.txt").write_text("not a video")
    videos = training.read_videos(str(tmp_path), 32, 32, stride=2)
    assert [tuple(v.shape) for v in videos] == [(3, 32, 32, 3), (5, 32, 32, 3)]  # a.mp4, b.avi; every 2nd frame
    # at half size the square's centre moves right 4 px per kept frame (2 frames of 4 px, halved)
    centres = [(v[..., 0] > 0.7).float().nonzero()[:, 1].float().mean().item()
               for v in training.read_videos(str(tmp_path), 32, 24, stride=2)[1]]
    assert [b - a for a, b in zip(centres, centres[1:])] == pytest.approx([4.0] * 4, abs=0.5), centres
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No video files"):
        training.read_videos(str(tmp_path / "empty"), 32, 32)
