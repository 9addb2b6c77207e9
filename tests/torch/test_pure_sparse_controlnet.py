"""motion_modules.sparse_controlnet and formats.sparsectrl, pure torch: the two official layouts (RGB, scribble) are
detected and fit the encoder at full size (meta device) and tiny; a tiny forward's residuals, its determinism,
the zeroed noisy-latent input and the condition reaching the other frames through the motion modules.
(The encoder against diffusers' SparseControlNetModel is in tests/test_sparsectrl.py.)"""
import pytest
import torch

import weights
from motion_modules import formats
from motion_modules.sparse_controlnet import SparseControlNet

TINY = (32, 64, 64, 64)
CLIPS, FRAMES, HEIGHT, WIDTH = 1, 3, 16, 24


@pytest.mark.parametrize("latent", [True, False], ids=["rgb", "scribble"])
def test_full_size_layouts_are_detected_and_fit_the_encoder(latent):
    shapes = dict(weights.sparsectrl_shapes(weights.SD15_CHANNELS, latent))
    sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    assert formats.classify(sd) == "sparsectrl"
    kwargs, converted = formats.sparsectrl(sd)
    assert kwargs == dict(channels=weights.SD15_CHANNELS, condition_channels=4 if latent else 3,
                          latent_condition=latent, context_channels=768, pe_rows=32,
                          embedding_widths=(320,) if latent else (16, 32, 96, 256))
    model = SparseControlNet(**kwargs, device="meta")
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    # 496.7 M / 497.8 M parameters besides the 8 positional tables: the 1.99 GB fp32 files
    params = sum(v.numel() for k, v in model.state_dict().items() if not k.endswith(".pe"))
    assert params == (496_730_880 if latent else 497_802_784)


def test_a_wrapped_file_without_positions_gets_them_built():
    """Files may wrap the encoder in {"controlnet": ...} and drop the positional tables: 32 rows are built."""
    sd = {k: v for k, v in weights.sparsectrl_sd(TINY, latent=True).items() if not k.endswith(".pe")}
    kwargs, converted = formats.sparsectrl({"controlnet": sd})
    assert kwargs["pe_rows"] == 32
    tables = [k for k in converted if k.endswith(".pos_encoder.pe")]
    assert len(tables) == 8  # 2 motion modules per level
    for k in tables:
        torch.testing.assert_close(converted[k], weights.sinusoid_pe(32, converted[k].shape[-1]), atol=1e-6, rtol=0)


def test_other_files_are_refused_saying_what_they_are():
    with pytest.raises(formats.NotAMotionModule) as failure:
        formats.sparsectrl(weights.motion_module_sd("v3", channels=TINY))
    assert failure.value.kind == "motion_module"
    plain = {k: v for k, v in weights.sparsectrl_sd(TINY).items() if ".motion_modules." not in k}
    with pytest.raises(formats.NotAMotionModule) as failure:
        formats.sparsectrl(plain)
    assert failure.value.kind == "controlnet"


def encoder(latent, seed=7):
    kwargs, converted = formats.sparsectrl(weights.sparsectrl_sd(TINY, latent, seed=seed))
    model = SparseControlNet(**kwargs)
    model.load_state_dict(converted, strict=True)
    return model.eval()


def inputs(latent, seed=0):
    """(noisy latents, condition with the mask last: frames 0 and 2 given, timesteps, context) of one clip."""
    g = torch.Generator().manual_seed(seed)
    size = (HEIGHT, WIDTH) if latent else (8 * HEIGHT, 8 * WIDTH)
    mask = torch.zeros(CLIPS * FRAMES, 1, *size)
    mask[[0, 2]] = 1
    condition = torch.randn(CLIPS * FRAMES, 4 if latent else 3, *size, generator=g) * mask
    return (torch.randn(CLIPS * FRAMES, 4, HEIGHT, WIDTH, generator=g), torch.cat([condition, mask], 1),
            torch.full((CLIPS * FRAMES,), 500.0), torch.randn(CLIPS * FRAMES, 7, 768, generator=g))


def run(model, x, condition, timesteps, context):
    with torch.no_grad():
        return model(x, condition, timesteps, context, FRAMES)


@pytest.mark.parametrize("latent", [True, False], ids=["rgb", "scribble"])
def test_a_tiny_forward_gives_a_residual_per_skip_connection(latent):
    out = run(encoder(latent), *inputs(latent))
    # conv_in's output, then per level 2 layers (+ the Downsample except at the last): the UNet's 12 skips
    levels = [0] * 4 + [1] * 3 + [2] * 3 + [3] * 2
    assert [tuple(r.shape) for r in out["output"]] == \
        [(CLIPS * FRAMES, TINY[i], HEIGHT >> min(i + (n in (3, 6, 9)), 3), WIDTH >> min(i + (n in (3, 6, 9)), 3))
         for n, i in enumerate(levels)]
    assert [tuple(r.shape) for r in out["middle"]] == [(CLIPS * FRAMES, TINY[-1], HEIGHT >> 3, WIDTH >> 3)]
    assert all(torch.isfinite(r).all() and r.abs().max() > 0 for r in out["output"] + out["middle"])


@pytest.mark.parametrize("latent", [True, False], ids=["rgb", "scribble"])
def test_the_forward_is_deterministic_and_ignores_the_noisy_latents(latent):
    x, condition, timesteps, context = inputs(latent)
    model = encoder(latent)
    first = run(model, x, condition, timesteps, context)
    again = run(encoder(latent), torch.randn_like(x), condition, timesteps, context)  # rebuilt, other latents
    for a, b in zip(first["output"] + first["middle"], again["output"] + again["middle"]):
        assert torch.equal(a, b)
    other = run(encoder(latent, seed=8), x, condition, timesteps, context)
    assert (other["middle"][0] - first["middle"][0]).abs().max() > 1e-3  # the weights matter


def test_a_given_frame_reaches_the_other_frames():
    """Changing frame 0's condition changes frame 1's residuals (no condition there): the motion modules spread
    it over the clip. Changing the timestep changes the result too."""
    model = encoder(True)
    x, condition, timesteps, context = inputs(True)
    base = run(model, x, condition, timesteps, context)
    changed = condition.clone()
    changed[0, :4] += 1.0
    moved = run(model, x, changed, timesteps, context)
    assert (moved["output"][-1][1] - base["output"][-1][1]).abs().max() > 1e-4
    assert torch.equal(moved["output"][0][1], base["output"][0][1])  # before any motion module: per frame
    later = run(model, x, condition, torch.full_like(timesteps, 900.0), context)
    assert (later["middle"][0] - base["middle"][0]).abs().max() > 1e-4
