"""MotionLoRA and the v3 domain adapter against diffusers + PEFT as the independent oracle.

The oracle is diffusers' own LoRA path (format notes section 6): `load_lora_adapter` on a diffusers model that has
PeftAdapterMixin, `set_adapters(names, strengths)`, `fuse_lora()`; PEFT then merges W + strength * up @ down into
each target weight (alpha = rank, so no extra scale). The key mapping from the files' processor-LoRA names to
PEFT's names is written out here (`motion_lora_to_peft`, `adapter_to_peft`), independently of the pack's.

* MotionLoRA: the motion module file is loaded by diffusers (`MotionAdapter.from_single_file`, as in
  test_module_oracle) and put into a `UNetMotionModel` (`from_unet2d` on a tiny random UNet2DConditionModel with
  the module's channels; only its motion modules are compared). Ours: `pack_nodes.lora.load_motion_lora` on the patcher
  of `pack_nodes.motion.load_motion_module`, weights read after ComfyUI loads the patcher (`load_models_gpu`).
* Domain adapter: a tiny SD1.5 ComfyUI UNet (comfy_models, spatial transformers where SD1.5 has them) and the same
  weights in a diffusers `UNet2DConditionModel` (ComfyUI's own name map `comfy.utils.unet_to_diffusers`). Ours:
  `pack_nodes.lora.apply_domain_adapter`.

Each oracle is first checked against the plain formula computed here from the file's tensors, so a wrong mapping
(an entry PEFT silently left out, a projection swapped) fails there and not as a mystery in the comparison.
"""
import contextlib
import copy
import json
import os
import re
import sys
import warnings

import pytest
import torch

import builders
import comfy_models

sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch"))  # tests/torch/reference.py
from reference import get_module  # noqa: E402

CHANNELS = (32, 64, 64, 64)  # tiny SD1.5 levels; the motion modules, the LoRAs and the UNets all use these
RANK = 4
CONTEXT_DIM = 48  # the tiny UNet's cross-attention width (the adapter's attn2 to_k / to_v input)
STRENGTHS = (0.7, -0.5)
CHAIN = (0.7, -0.5)  # strengths a, b of two chained MotionLoRAs
FRAMES, HEIGHT, WIDTH, CLIPS = 8, 3, 5, 2

# fp32 throughout. The oracle and the pack both compute W + s * (up @ down) with one torch.mm and one add per LoRA,
# in the same order for chained LoRAs: measured max |ours - diffusers| = 0 (bit-identical) on every weight, and
# |diffusers - formula here| = 0 too. 1e-6 leaves room for a different BLAS kernel or summation order (fp32 ulp
# at |W| ~ 1 is 1.2e-7). The LoRA deltas |up @ down| are 0.40 to 1.2 per weight (max entry), so a wrong strength
# (even by 1e-4 relative), sign, transpose or target fails by orders of magnitude; MIN_DELTA asserts that every
# target really changed.
WEIGHT_TOL = dict(atol=1e-6, rtol=0)
MIN_DELTA = 1e-2
# UNet outputs, ComfyUI's UNet against diffusers' on the same weights (different attention, conv and norm code):
# measured max 2.4e-6 without the adapter and 4.6e-6 with it, on outputs up to 2.0.
OUTPUT_TOL = dict(atol=1e-4, rtol=1e-4)

MOTION_PROJ = re.compile(r"\.attention_blocks\.(\d+)\.(to_q|to_k|to_v|to_out\.0)\.weight$")
ADAPTER_PROJ = re.compile(r"\.transformer_blocks\.0\.attn[12]\.(to_q|to_k|to_v|to_out\.0)\.weight$")


# ------------------------------------------------------------------------------------------ key mapping

def _proj(name):
    """`to_q_lora` -> `to_q`, `to_out_lora` -> `to_out.0` (diffusers' Attention keeps to_out as a ModuleList)."""
    assert name.endswith("_lora"), name
    name = name[:-len("_lora")]
    return "to_out.0" if name == "to_out" else name


def motion_lora_entry(key):
    """MotionLoRA key -> (target weight in the AnimateDiff file layout, "up" | "down")."""
    m = re.fullmatch(r"(.+\.attention_blocks\.\d+)\.processor\.(to_\w+)\.(up|down)\.weight", key)
    assert m, key
    return f"{m.group(1)}.{_proj(m.group(2))}.weight", m.group(3)


def animatediff_to_diffusers(key):
    """AnimateDiff motion-module key -> diffusers UNetMotionModel key (`{block}.motion_modules.{m}.` then
    `transformer_blocks.0.attn1/attn2/norm1/norm2/norm3`); pe tables -> the one `pos_embed.pe` per block."""
    key = key.replace(".temporal_transformer.", ".")
    key = re.sub(r"\.attention_blocks\.(\d+)\.pos_encoder\.pe$", ".pos_embed.pe", key)
    key = re.sub(r"\.attention_blocks\.(\d+)\.", lambda m: f".attn{int(m.group(1)) + 1}.", key)
    key = re.sub(r"\.norms\.(\d+)\.", lambda m: f".norm{int(m.group(1)) + 1}.", key)
    return key.replace(".ff_norm.", ".norm3.")


def peft_names(weight_key, part):
    """diffusers weight key + "up"/"down" -> the PEFT adapter key load_lora_adapter takes."""
    return weight_key[:-len(".weight")] + (".lora_B.weight" if part == "up" else ".lora_A.weight")


def motion_lora_to_peft(sd):
    return {peft_names(animatediff_to_diffusers(motion_lora_entry(k)[0]), motion_lora_entry(k)[1]): v
            for k, v in sd.items()}


def adapter_entry(key):
    """Domain adapter key (diffusers UNet naming) -> (target weight key of UNet2DConditionModel, "up" | "down")."""
    m = re.fullmatch(r"(.+\.transformer_blocks\.0\.attn[12])\.processor\.(to_\w+)\.(up|down)\.weight", key)
    assert m, key
    return f"{m.group(1)}.{_proj(m.group(2))}.weight", m.group(3)


def adapter_to_peft(sd):
    return {peft_names(*adapter_entry(k)): v for k, v in sd.items()}


def plain_formula(base, loras, entry):
    """{target: W + s_1 * up_1 @ down_1 + s_2 * up_2 @ down_2 ...} for [(lora_sd, s_i)], written out in fp32."""
    out = {}
    for sd, s in loras:
        for k, down in sd.items():
            target, part = entry(k)
            if part != "down":
                continue
            up = sd[k[:-len("down.weight")] + "up.weight"]
            w = out.get(target, base[target])
            out[target] = w + s * (up @ down)
    return out


# ------------------------------------------------------------------------------------------ diffusers side

@contextlib.contextmanager
def quiet():
    """diffusers' info / warning log and PEFT's note on a second adapter off, for this block only."""
    from diffusers.utils import logging as diffusers_logging
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            yield
    finally:
        diffusers_logging.set_verbosity(level)


def fused(model, adapters):
    """Load [(peft_sd, strength)] as adapters on a copy of `model`, set their strengths, fuse; the merged state
    dict (PEFT's `base_layer.` level removed, LoRA tensors dropped) and the number of LoRA-wrapped layers."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    model = copy.deepcopy(model)
    names = [f"lora{i}" for i in range(len(adapters))]
    with quiet():
        for name, (sd, _) in zip(names, adapters):
            model.load_lora_adapter(sd, prefix=None, adapter_name=name)
        model.set_adapters(names, [s for _, s in adapters])
        model.fuse_lora()
    wrapped = sum(isinstance(m, BaseTunerLayer) for m in model.modules())
    sd = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}
    return sd, wrapped


def diffusers_unet(cross_attention_dim, **kw):
    """SD1.5's diffusers block structure at CHANNELS (attention_head_dim 8 is diffusers' name for SD1.5's 8 heads),
    conv proj_in/proj_out as ComfyUI's SD15; random init from a fixed seed, without touching the global RNG."""
    from diffusers import UNet2DConditionModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=CHANNELS, layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=cross_attention_dim,
            attention_head_dim=8, norm_num_groups=32, use_linear_projection=False, **kw).eval()


def motion_unet(path, fmt, folder):
    """diffusers UNetMotionModel whose motion modules come from the file at `path` (via MotionAdapter)."""
    from diffusers import MotionAdapter, UNetMotionModel
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"_class_name": "MotionAdapter", "block_out_channels": list(CHANNELS),
                   "motion_layers_per_block": 2, "motion_mid_block_layers_per_block": 1,
                   "motion_num_attention_heads": 8, "motion_norm_num_groups": 32,
                   "motion_max_seq_length": builders.PE_ROWS[fmt], "use_motion_mid_block": fmt in builders.MID_FORMATS}, f)
    with quiet():
        adapter = MotionAdapter.from_single_file(path, config=folder, local_files_only=True, torch_dtype=torch.float32)
        return UNetMotionModel.from_unet2d(diffusers_unet(16), adapter).eval()


def motion_weights(diffusers_sd, module_keys):
    """The UNetMotionModel's motion-module weights under AnimateDiff names (every key of the file but pe)."""
    return {k: diffusers_sd[animatediff_to_diffusers(k)] for k in module_keys if not k.endswith("pos_encoder.pe")}


# ------------------------------------------------------------------------------------------ files

class Files:
    pass


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora_oracle")
    f = Files()
    f.dir = d
    f.module_sd = {fmt: builders.motion_module_sd(fmt, CHANNELS, seed=7) for fmt in ("v2", "v3")}
    f.module = {fmt: builders.save_file(sd, str(d / f"{fmt}.safetensors")) for fmt, sd in f.module_sd.items()}
    # Official MotionLoRAs are fp32 .ckpt pickles with mid-block entries: the first as such, the second .safetensors.
    f.lora_sd = [builders.motion_lora_sd(CHANNELS, RANK, mid=True, seed=s) for s in (3, 4)]
    f.lora = [builders.save_file(f.lora_sd[0], str(d / "motion_lora_a.ckpt")),
              builders.save_file(f.lora_sd[1], str(d / "motion_lora_b.safetensors"))]
    f.adapter_sd = builders.v3_adapter_sd(RANK, channels=CHANNELS, context_dim=CONTEXT_DIM, seed=5)
    f.adapter = builders.save_file(f.adapter_sd, str(d / "v3_adapter.ckpt"))
    return f


@pytest.fixture(scope="module")
def motion_oracle(files):
    """(fmt, [(index into files.lora_sd, strength)]) -> (fused weights under AnimateDiff names, LoRA-wrapped
    layer count) from diffusers + PEFT; cached."""
    bases, cache = {}, {}

    def get(fmt, loras):
        key = (fmt, tuple(loras))
        if key in cache:
            return cache[key]
        if fmt not in bases:
            bases[fmt] = motion_unet(files.module[fmt], fmt, str(files.dir / f"config_{fmt}"))
        has_mid = fmt in builders.MID_FORMATS
        # A module without a mid block has no target for the official files' mid entries: the oracle gets the
        # LoRA without them (diffusers would report them as unused), and the pack is expected to skip them.
        adapters = [(motion_lora_to_peft({k: v for k, v in files.lora_sd[i].items()
                                          if has_mid or not k.startswith("mid_block.")}), s) for i, s in loras]
        sd, wrapped = fused(bases[fmt], adapters)
        cache[key] = motion_weights(sd, files.module_sd[fmt]), wrapped
        return cache[key]
    return get


def unet_diffusers_state(unet_config, comfy_sd):
    """ComfyUI UNet state dict (no prefix) under diffusers names, through ComfyUI's own map (diffusers -> comfy).
    The map also lists modules this UNet does not have (the last level's downsampler): those are left out."""
    import comfy.utils
    mapping = comfy.utils.unet_to_diffusers(unet_config)
    out = {dk: comfy_sd[ck] for dk, ck in mapping.items() if ck in comfy_sd}
    covered = {ck for dk, ck in mapping.items() if ck in comfy_sd}
    assert covered == set(comfy_sd), sorted(set(comfy_sd) - covered)[:5]
    return out, {dk: ck for dk, ck in mapping.items() if ck in comfy_sd}


@pytest.fixture(scope="module")
def sd15_pair(comfy):
    """(tiny ComfyUI SD1.5 patcher factory, its diffusers twin UNet2DConditionModel, diffusers -> comfy key map)."""
    def make():
        return comfy_models.tiny_sd15_model(channels=CHANNELS, context_dim=CONTEXT_DIM, seed=0)
    model = make()
    comfy_sd = model.model.diffusion_model.state_dict()
    dsd, names = unet_diffusers_state(model.model.model_config.unet_config, comfy_sd)
    unet = diffusers_unet(CONTEXT_DIM)
    unet.load_state_dict(dsd, strict=True)
    return make, unet, names


@pytest.fixture(scope="module")
def adapter_oracle(files, sd15_pair):
    """strength -> (the diffusers UNet's state dict with the adapter fused by PEFT, LoRA-wrapped layer count); cached."""
    _, unet, _ = sd15_pair
    cache = {}

    def get(strength):
        if strength not in cache:
            cache[strength] = fused(unet, [(adapter_to_peft(files.adapter_sd), strength)])
        return cache[strength]
    return get


# ------------------------------------------------------------------------------------------ oracles alone

def test_motion_lora_oracle_is_the_formula(files, motion_oracle):
    """diffusers + PEFT with this file's key mapping: every to_q/k/v/out.0 of all 21 v2 modules gets
    W + s * up @ down (one adapter, two adapters); nothing else changes."""
    sd = files.module_sd["v2"]
    targets = {motion_lora_entry(k)[0] for k in files.lora_sd[0]}
    assert targets == {k for k in sd if MOTION_PROJ.search(k)} and len(targets) == 21 * 8
    for loras in ([(0, 0.7)], [(0, CHAIN[0]), (1, CHAIN[1])]):
        got, wrapped = motion_oracle("v2", loras)
        assert wrapped == len(targets)
        expected = plain_formula(sd, [(files.lora_sd[i], s) for i, s in loras], motion_lora_entry)
        for k, v in got.items():
            if k in targets:
                torch.testing.assert_close(v, expected[k], **WEIGHT_TOL, msg=k)
                assert (v - sd[k]).abs().max() > MIN_DELTA, k
            else:
                assert torch.equal(v, sd[k]), k


def test_domain_adapter_keys_target_the_tiny_unet(files, sd15_pair):
    """builders.v3_adapter_sd's entries name exactly the attn1/attn2 projections of the tiny UNet's 16 spatial
    transformers (diffusers names), with matching shapes."""
    _, unet, _ = sd15_pair
    dsd = unet.state_dict()
    for k, v in files.adapter_sd.items():
        target, part = adapter_entry(k)
        assert target in dsd, k
        dim = 0 if part == "up" else 1
        assert v.shape[dim] == dsd[target].shape[dim], k
    targets = {adapter_entry(k)[0] for k in files.adapter_sd}
    assert targets == {k for k in dsd if ADAPTER_PROJ.search(k)} and len(targets) == 16 * 2 * 4


def test_domain_adapter_oracle_is_the_formula(files, sd15_pair, adapter_oracle):
    """diffusers + PEFT with this file's key mapping: each of the 128 attn1/attn2 projections gets
    W + s * up @ down; nothing else changes."""
    _, unet, _ = sd15_pair
    base = unet.state_dict()
    got, wrapped = adapter_oracle(0.7)
    expected = plain_formula(base, [(files.adapter_sd, 0.7)], adapter_entry)
    assert wrapped == len(expected) == 128
    for k, v in got.items():
        if k in expected:
            torch.testing.assert_close(v, expected[k], **WEIGHT_TOL, msg=k)
            assert (v - base[k]).abs().max() > MIN_DELTA, k
        else:
            assert torch.equal(v, base[k]), k


# ------------------------------------------------------------------------------------------ the pack

def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def loaded_state(patcher):
    """The weights the patcher's model holds once ComfyUI has loaded it (weight patches applied)."""
    import comfy.model_management
    comfy.model_management.load_models_gpu([patcher])
    return snapshot(patcher.model)


def assert_unpatched(module, before):
    """After unload_all_models: every tensor bit-identical to the snapshot."""
    import comfy.model_management
    comfy.model_management.unload_all_models()
    now = module.state_dict()
    assert set(now) == set(before)
    for k, v in before.items():
        assert torch.equal(now[k], v), k


def compare(label, got, before, expected, targets):
    """got: our loaded weights; expected: the oracle's fused weights (same names, may lack pe); targets: the keys
    the LoRA changes. Targets within WEIGHT_TOL of the oracle and changed by the LoRA, everything else untouched."""
    assert set(got) == set(before)
    assert targets <= set(expected)
    worst = 0.0
    for k, v in got.items():
        if k in targets:
            torch.testing.assert_close(v, expected[k], **WEIGHT_TOL, msg=lambda m: f"{label} {k}: {m}")
            assert (v - before[k]).abs().max() > MIN_DELTA, k
            worst = max(worst, (v - expected[k]).abs().max().item())
        else:
            assert torch.equal(v, before[k]), f"{label}: {k} changed"
            if k in expected:  # the oracle started from the same weights
                assert torch.equal(expected[k], before[k]), k
    print(f"max |ours - diffusers/PEFT| {label}: {worst:.2e}")


def motion_targets(module_keys):
    """The to_q / to_k / to_v / to_out.0 weights of every motion module (both attention blocks)."""
    return {k for k in module_keys if MOTION_PROJ.search(k)}


def module_outputs(patcher, fmt):
    """Every module's output on fixed random input, with the patcher loaded by ComfyUI."""
    import comfy.model_management
    comfy.model_management.load_models_gpu([patcher])
    outs = {}
    g = torch.Generator().manual_seed(11)
    for prefix, c in builders.module_prefixes(CHANNELS, fmt in builders.MID_FORMATS):
        x = torch.randn(CLIPS * FRAMES, c, HEIGHT, WIDTH, generator=g)
        with torch.no_grad():
            outs[prefix] = get_module(patcher.model, prefix)(x, FRAMES)
    return outs


@pytest.mark.usefixtures("no_loaded_models")
@pytest.mark.parametrize("strength", STRENGTHS)
def test_motion_lora_matches_peft(pack_nodes, files, motion_oracle, strength):
    mm = pack_nodes.motion.load_motion_module(files.module["v2"], "v2.safetensors")
    before = snapshot(mm.patcher.model)
    ours = pack_nodes.lora.load_motion_lora(mm, files.lora[0], "motion_lora_a.ckpt", strength)
    assert ours is not mm
    expected, _ = motion_oracle("v2", [(0, strength)])
    compare(f"MotionLoRA s={strength}", loaded_state(ours.patcher), before, expected, motion_targets(before))
    assert_unpatched(mm.patcher.model, before)


@pytest.mark.usefixtures("no_loaded_models")
def test_chained_motion_loras_match_peft(pack_nodes, files, motion_oracle):
    """load_motion_lora on its own result: W + a * u1 @ d1 + b * u2 @ d2, against PEFT fusing both adapters with
    strengths a and b (PEFT merges them one after the other, as ComfyUI applies a key's patches in order). The
    patchers it was built from keep their own patches: the first LoRA alone, and the module with none."""
    a, b = CHAIN
    mm = pack_nodes.motion.load_motion_module(files.module["v2"], "v2.safetensors")
    before = snapshot(mm.patcher.model)
    first = pack_nodes.lora.load_motion_lora(mm, files.lora[0], "motion_lora_a.ckpt", a)
    both = pack_nodes.lora.load_motion_lora(first, files.lora[1], "motion_lora_b.safetensors", b)
    targets = motion_targets(before)
    expected, _ = motion_oracle("v2", [(0, a), (1, b)])
    compare(f"two MotionLoRAs a={a} b={b}", loaded_state(both.patcher), before, expected, targets)
    expected_first, _ = motion_oracle("v2", [(0, a)])
    compare(f"first of the chain a={a}", loaded_state(first.patcher), before, expected_first, targets)
    plain = loaded_state(mm.patcher)
    assert all(torch.equal(plain[k], v) for k, v in before.items())
    assert_unpatched(mm.patcher.model, before)


@pytest.mark.usefixtures("no_loaded_models")
def test_motion_lora_strength_zero_is_no_lora(pack_nodes, files):
    """Strength 0: every module's output bit-identical to the module without the LoRA (and strength 0.7 differs)."""
    mm = pack_nodes.motion.load_motion_module(files.module["v2"], "v2.safetensors")
    before = snapshot(mm.patcher.model)
    plain = module_outputs(mm.patcher, "v2")
    zero = module_outputs(pack_nodes.lora.load_motion_lora(mm, files.lora[0], "motion_lora_a.ckpt", 0.0).patcher, "v2")
    some = module_outputs(pack_nodes.lora.load_motion_lora(mm, files.lora[0], "motion_lora_a.ckpt", 0.7).patcher, "v2")
    for prefix, out in plain.items():
        assert torch.equal(zero[prefix], out), prefix
        assert (some[prefix] - out).abs().max() > MIN_DELTA, prefix
    assert_unpatched(mm.patcher.model, before)


@pytest.mark.usefixtures("no_loaded_models")
def test_motion_lora_mid_entries_skipped_without_mid_block(pack_nodes, files, motion_oracle):
    """An official (v2-trained, mid-block) MotionLoRA on a v3 module (no mid block): every other entry applied
    as PEFT applies the LoRA without its mid entries."""
    mm = pack_nodes.motion.load_motion_module(files.module["v3"], "v3.safetensors")
    before = snapshot(mm.patcher.model)
    assert not any(k.startswith("mid_block.") for k in before)
    ours = pack_nodes.lora.load_motion_lora(mm, files.lora[0], "motion_lora_a.ckpt", 0.7)
    expected, wrapped = motion_oracle("v3", [(0, 0.7)])
    targets = motion_targets(before)
    assert wrapped == len(targets) == 20 * 8
    compare("MotionLoRA on v3 (mid skipped)", loaded_state(ours.patcher), before, expected, targets)
    assert_unpatched(mm.patcher.model, before)


def unet_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 6, generator=g)
    t = torch.tensor([999.0, 261.0])
    context = torch.randn(2, 5, CONTEXT_DIM, generator=g)
    return x, t, context


def comfy_unet_output(patcher):
    import comfy.model_management
    comfy.model_management.load_models_gpu([patcher])
    x, t, context = unet_inputs()
    with torch.no_grad():
        return patcher.model.diffusion_model(x, timesteps=t, context=context)


@pytest.mark.usefixtures("no_loaded_models")
@pytest.mark.parametrize("strength", STRENGTHS)
def test_domain_adapter_matches_peft(pack_nodes, files, sd15_pair, adapter_oracle, strength):
    make, _, names = sd15_pair
    model = make()
    before = snapshot(model.model)
    ours = pack_nodes.lora.apply_domain_adapter(model, files.adapter, "v3_adapter.ckpt", strength)
    assert ours is not model
    fused_sd, _ = adapter_oracle(strength)
    # the oracle's weights under ComfyUI's names (model.state_dict(): `diffusion_model.` + UNet key)
    expected = {"diffusion_model." + ck: fused_sd[dk] for dk, ck in names.items()}
    targets = {"diffusion_model." + names[adapter_entry(k)[0]] for k in files.adapter_sd}
    assert len(targets) == 128
    compare(f"domain adapter s={strength}", loaded_state(ours), before, expected, targets)
    assert_unpatched(model.model, before)


@pytest.mark.usefixtures("no_loaded_models")
def test_domain_adapter_unet_output_matches_diffusers(pack_nodes, files, sd15_pair, adapter_oracle):
    """End to end, independent of the key maps: the patched ComfyUI UNet's output equals the fused diffusers
    UNet's on the same input (a weight on the wrong projection or block would show here even if both sides used
    the same wrong name map). Tolerance: OUTPUT_TOL."""
    make, unet, _ = sd15_pair
    model = make()
    before = snapshot(model.model)
    fused_unet = copy.deepcopy(unet)
    fused_unet.load_state_dict(adapter_oracle(0.7)[0], strict=True)
    x, t, context = unet_inputs()
    with torch.no_grad():
        theirs = fused_unet(x, t, encoder_hidden_states=context).sample
        plain_theirs = unet(x, t, encoder_hidden_states=context).sample
    ours = comfy_unet_output(pack_nodes.lora.apply_domain_adapter(model, files.adapter, "v3_adapter.ckpt", 0.7))
    plain = comfy_unet_output(model)
    torch.testing.assert_close(plain, plain_theirs, **OUTPUT_TOL)
    torch.testing.assert_close(ours, theirs, **OUTPUT_TOL)
    assert (ours - plain).abs().max() > MIN_DELTA
    print(f"UNet output |ComfyUI - diffusers|: no adapter {(plain - plain_theirs).abs().max().item():.2e}, "
          f"adapter 0.7 {(ours - theirs).abs().max().item():.2e} (outputs up to {theirs.abs().max().item():.2f})")
    assert_unpatched(model.model, before)


@pytest.mark.usefixtures("no_loaded_models")
def test_domain_adapter_strength_zero_is_no_adapter(pack_nodes, files, sd15_pair):
    make, _, _ = sd15_pair
    model = make()
    before = snapshot(model.model)
    plain = comfy_unet_output(model)
    zero = comfy_unet_output(pack_nodes.lora.apply_domain_adapter(model, files.adapter, "v3_adapter.ckpt", 0.0))
    assert torch.equal(zero, plain)
    assert_unpatched(model.model, before)

