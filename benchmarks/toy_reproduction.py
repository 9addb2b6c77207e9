"""A toy reproduction of AnimateDiff's three claims (arXiv 2307.04725) with this pack's training code and nodes.

Everything happens in latent space: the "images" are 4 x 8 x 8 tensors that ARE the latents (there is no VAE and
no text encoder). Values below are in the UNet's input space (after SD1.5's process_latent_in scale 0.18215);
the files the pack trains on are these values / 0.18215, as VAE latents would be.

  * a frame: background 0, one 3 x 3 square (channel 0 at +1.5, channel 1 at +1.0) at any position (positions
    wrap around the edges), N(0, 0.05) noise on every value;
  * the video-only artefact ("watermark"): channel 3 at +2.0 in the top-left 3 x 3 corner of every video frame
    (channel 3 is otherwise empty, so the square never touches it). Still images have no watermark;
  * still-scene videos: the square stays where it is in every frame, each frame with its own noise;
  * pan videos: the whole content (square and noise pattern) shifts by 1 px per frame left or right (wrapping);
  * the motion videos (stage 2): still scenes, or with --base-motion still+pan a third each still scenes, pans
    left and pans right (mean displacement 0);
  * "pan left" videos (stage 3): the whole content (square and noise pattern) shifts left by 1 px per frame
    (x -> x - 1, wrapping); the watermark stays where it is, as a screen overlay does. With --pan square only
    the square moves left, every frame with its own noise.

The toy image model is a tiny SD1.5-class UNet built with ComfyUI's classes (comfy.supported_models.SD15:
32 channels, channel_mult (1, 2, 2, 2), 2 ResBlocks per level, conv-projection transformers on levels 0-2 and
the middle block, context 32), random-initialised as the test suite initialises its models, then trained.
The conditioning is one fixed random token. The toy model predicts v (as SD2-v does) instead of SD1.5's eps: a
briefly trained eps model blows its samples up (errors in eps are multiplied by sigma, up to 29 here). It runs on
AnimateDiff's beta schedule (sqrt_linear) from the start: both come as an object patch on `model_sampling`
(the pack's beta_schedules.model_sampling keeps the prediction type), so the image stages and every sampling use the
schedule that `apply_motion_module` ("autoselect") and the motion stages use.

Stages (parts of training.train), each with the earlier ones frozen, as in the paper:
  0. image_model on still images (no watermark);
  1. domain_adapter (LoRA on spatial attention) on single frames of the watermarked motion videos;
  2. motion_module (fresh v3-layout module, zero proj_out) on 8-frame clips of the motion videos, with the
     adapter at strength 1;
  3. motion_lora (LoRA on temporal attention) on 8-frame "pan left" clips, image model + adapter + module frozen.

Measurements, on samples from comfy.sample.sample (euler, 20 steps, "normal" scheduler, cfg 1) through the
pack's apply_domain_adapter / apply_motion_module / load_motion_lora:
  (a) watermark = mean of channel 3 in the 3 x 3 corner minus its mean elsewhere, adapter strength 0 / 0.5 / 1;
  (b) frame-to-frame consistency of 8-frame animations with the motion module vs the same noise without it;
  (c) mean x / y displacement of the square between consecutive frames (position: the 3 x 3 window with the
      largest channel-0 sum) with the MotionLoRA vs the base motion module.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/toy_reproduction.py           # about 11 minutes on 1 thread
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/toy_reproduction.py --quick   # about 2 minutes, fewer steps
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import overhead  # noqa: E402  (ComfyUI and the pack, as the benchmarks load them; puts scripts/ on sys.path)

SCALE = 0.18215  # SD1.5's latent scale: UNet-space value = file latent * SCALE
SIZE, SIDE, FRAMES, CONTEXT = 8, 3, 8, 32
MARK = 2.0  # watermark value (channel 3, top-left SIDE x SIDE)
NOISE = 0.05  # std of the per-value noise
# stage: (steps, learning rate, frames per step) for the full run; --quick divides the steps by 5
STAGES = {"image_model": (250, 2e-3, 32), "domain_adapter": (150, 1e-3, 16), "motion_module": (600, 2e-3, 8),
          "motion_lora": (300, 1e-3, 8)}
PAN = "content"  # stage 3's pan-left clips: the whole "content" moves, or only the "square" (fresh noise per frame)
BASE_MOTION = "still"  # stage 2's videos: "still" scenes, or "still+pan" (a third still, pan left, pan right)
RANK = 8


# ---------------------------------------------------------------------------------------------- the data

def frame(torch, g, x, y, mark):
    """One UNet-space frame [4, SIZE, SIZE]: the square with its top-left corner at (x, y), noise, watermark."""
    f = NOISE * torch.randn(4, SIZE, SIZE, generator=g)
    f[0, :SIDE, :SIDE] += 1.5
    f[1, :SIDE, :SIDE] += 1.0
    f[:3] = f[:3].roll((y, x), dims=(1, 2))
    if mark:
        f[3, :SIDE, :SIDE] += MARK
    return f


def still_images(torch, count, seed):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randint(SIZE, (count, 2), generator=g).tolist()
    return torch.stack([frame(torch, g, x, y, mark=False) for x, y in pos])


def moving_video(torch, g, frames, dx, dy, pan=False):
    """The square moving by (dx, dy) px per frame (0, 0: a still scene, every frame with its own noise); pan: the
    whole content moves (noise pattern included)."""
    x, y = torch.randint(SIZE, (2,), generator=g).tolist()
    if not pan:
        return torch.stack([frame(torch, g, x + dx * i, y + dy * i, mark=True) for i in range(frames)])
    first = frame(torch, g, x, y, mark=False)
    video = torch.stack([first.roll((dy * i, dx * i), dims=(1, 2)) for i in range(frames)])
    video[:, 3, :SIDE, :SIDE] += MARK
    return video


def datasets(torch, seed=0, base_motion=BASE_MOTION, pan=PAN):
    g = torch.Generator().manual_seed(seed)
    if base_motion == "still":
        motion = [moving_video(torch, g, 16, 0, 0) for i in range(48)]
    else:  # a third each: still scenes, pans left, pans right
        motion = [moving_video(torch, g, 16, (0, -1, 1)[i % 3], 0, pan=i % 3 > 0) for i in range(48)]
    return {
        "stills": [still_images(torch, 16, seed + i) for i in range(16)],  # 256 images, in 16 "videos"
        "motion": motion,
        "pan_left": [moving_video(torch, g, 16, -1, 0, pan=pan == "content") for i in range(16)],
    }


# ----------------------------------------------------------------------------------------- measurements

def watermark(x):
    """Per image: mean of channel 3 in the corner patch minus its mean elsewhere."""
    c = x[:, 3]
    corner = c[:, :SIDE, :SIDE].mean(dim=(1, 2))
    rest = (c.sum(dim=(1, 2)) - c[:, :SIDE, :SIDE].sum(dim=(1, 2))) / (SIZE * SIZE - SIDE * SIDE)
    return corner - rest


def one_square(x):
    """Per frame: whether channel 0 shows one square (5..13 values above 0.75; the real square has 9)."""
    n = (x[:, 0] > 0.75).sum(dim=(1, 2))
    return (n >= 5) & (n <= 13)


def corr(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm() + 1e-8))


def square_position(f):
    """(x, y) of the 3 x 3 window (wrapping) with the largest channel-0 sum: where the square is."""
    c = f[0]
    box = sum(c.roll((-dy, -dx), dims=(0, 1)) for dy in range(SIDE) for dx in range(SIDE))
    i = int(box.argmax())
    return i % SIZE, i // SIZE


def displacement(a, b):
    """Circular (dx, dy) of the square from frame a to frame b, each in [-SIZE / 2, SIZE / 2)."""
    (xa, ya), (xb, yb) = square_position(a), square_position(b)
    wrap = lambda d: (d + SIZE // 2) % SIZE - SIZE // 2  # noqa: E731
    return wrap(xb - xa), wrap(yb - ya)


def motion_stats(torch, clips):
    """Frame-to-frame statistics over a list of clips [frames, 4, SIZE, SIZE] (UNet space). A pair is "tracked"
    when the square moved at most 1 px along each axis (chance for independent positions: 9 / 64 = 14 %)."""
    diff, raw, moves, square = [], [], [], []
    for clip in clips:
        square += one_square(clip).tolist()
        for a, b in zip(clip[:-1], clip[1:]):
            diff.append(float((a[:2] - b[:2]).abs().mean()))
            raw.append(corr(a[0], b[0]))
            moves.append(displacement(a, b))
    mean = lambda v: sum(v) / len(v) if v else float("nan")  # noqa: E731
    tracked = [(dx, dy) for dx, dy in moves if abs(dx) <= 1 and abs(dy) <= 1]
    return {"abs_diff": mean(diff), "corr": mean(raw), "tracked": len(tracked) / len(moves),
            "dx_all": mean([dx for dx, _ in moves]), "dx": mean([dx for dx, _ in tracked]), "dy": mean([dy for _, dy in tracked]),
            "left": mean([m == (-1, 0) for m in moves]), "right": mean([m == (1, 0) for m in moves]),
            "square": mean(square)}


# ------------------------------------------------------------------------------------------- the run

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: steps / 5, fewer samples (about 2 minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--motion-steps", type=int, default=STAGES["motion_module"][0],
                   help="training steps of the motion module (default %(default)s)")
    p.add_argument("--base-motion", choices=("still", "still+pan"), default=BASE_MOTION,
                   help="stage 2's videos (default %(default)s)")
    p.add_argument("--pan", choices=("content", "square"), default=PAN,
                   help="what moves in stage 3's pan-left clips (default %(default)s)")
    p.add_argument("--lora-steps", type=int, default=STAGES["motion_lora"][0])
    p.add_argument("--lora-lr", type=float, default=STAGES["motion_lora"][1])
    args = p.parse_args(argv)
    STAGES["motion_module"] = (args.motion_steps,) + STAGES["motion_module"][1:]
    STAGES["motion_lora"] = (args.lora_steps, args.lora_lr) + STAGES["motion_lora"][2:]
    started = time.perf_counter()
    ns = overhead.setup(types.SimpleNamespace(threads=1, device="cpu"))  # ComfyUI + the pack, as the benchmark
    torch, nodes = ns.torch, ns.nodes
    training = nodes.training
    import comfy_models  # (scripts/: ComfyUI after setup)
    import comfy.model_sampling
    import comfy.utils
    comfy.utils.set_progress_bar_enabled(False)
    torch.manual_seed(args.seed)

    data = {k: [v / SCALE for v in vs] for k, vs in datasets(torch, args.seed, args.base_motion, args.pan).items()}  # file-latent space
    positive = [[torch.randn(1, 1, CONTEXT, generator=torch.Generator().manual_seed(args.seed)), {}]]
    base = comfy_models.tiny_sd15_model(model_channels=32, channel_mult=(1, 2, 2, 2), context_dim=CONTEXT,
                                        seed=args.seed)
    v_prediction = type("ToyModelSampling", (comfy.model_sampling.ModelSamplingDiscrete,
                                             comfy.model_sampling.V_PREDICTION), {})
    base.add_object_patch("model_sampling", v_prediction(base.model.model_config))
    base.add_object_patch("model_sampling", nodes.beta_schedules.model_sampling(base, "sqrt_linear"))  # keeps v-prediction
    tmp = tempfile.mkdtemp(prefix="animatediff_toy_")
    timings, losses = {}, {}

    def train(stage, model, videos, **kwargs):
        steps, lr, frames = STAGES[stage]
        steps = steps // 5 if args.quick else steps
        comfy.model_management.unload_all_models()
        t = time.perf_counter()
        weights, loss = training.train(model, stage, videos, positive, steps, lr, frames, args.seed + len(timings),
                                       **kwargs)
        timings[stage] = (time.perf_counter() - t, steps)
        k = max(1, steps // 10)
        losses[stage] = (sum(loss[:k]) / k, sum(loss[-k:]) / k)
        print(f"{stage}: {steps} steps in {timings[stage][0]:.0f} s, loss {losses[stage][0]:.3f} -> "
              f"{losses[stage][1]:.3f}", flush=True)
        return weights

    def generate(model, seed, frames=FRAMES):
        """comfy.sample.sample as KSampler runs it; returns UNet-space frames [frames, 4, SIZE, SIZE]."""
        comfy.model_management.unload_all_models()
        latent = torch.zeros(frames, 4, SIZE, SIZE)
        noise = comfy.sample.prepare_noise(latent, seed)
        with torch.inference_mode():
            out = comfy.sample.sample(model, noise, 20, 1.0, "euler", "normal", positive, positive, latent,
                                      disable_pbar=True, seed=seed)
        return out.float() * SCALE

    # stage 0: the toy image model, on clean stills
    train("image_model", base, data["stills"])
    # stage 1: the domain adapter, on single frames of the (watermarked) videos
    adapter = training.save(train("domain_adapter", base, data["motion"], rank=RANK),
                            os.path.join(tmp, "adapter.safetensors"))
    adapted = {s: nodes.lora.apply_domain_adapter(base, adapter, "adapter", s) for s in (0.0, 0.5, 1.0)}
    # stage 2: the motion module, from scratch, image model + adapter (strength 1) frozen
    module = nodes.motion.new_motion_module(base, 32, seed=args.seed)
    train("motion_module", adapted[1.0], data["motion"], motion_module=module)
    animate = nodes.motion.apply_motion_module(adapted[1.0], module, "autoselect", 1.0, 1.0)
    # stage 3: the MotionLoRA, on pan-left clips
    lora = training.save(train("motion_lora", adapted[1.0], data["pan_left"], motion_module=module, rank=RANK),
                         os.path.join(tmp, "pan_left.safetensors"))
    pan = nodes.motion.apply_motion_module(adapted[1.0], nodes.lora.load_motion_lora(module, lora, "pan_left", 1.0),
                                       "autoselect", 1.0, 1.0)

    t = time.perf_counter()
    seeds = range(100, 102 if args.quick else 106)
    images = {s: torch.cat([generate(m, seed) for seed in seeds]) for s, m in adapted.items()}
    clips = {name: [generate(m, seed) for seed in seeds]
             for name, m in (("independent", adapted[1.0]), ("motion module", animate), ("MotionLoRA", pan))}
    timings["sampling"] = (time.perf_counter() - t, len(seeds) * 6)

    # ------------------------------------------------------------------------------------------ report
    up = lambda vs: [v * SCALE for v in vs]  # noqa: E731
    ref_frames = torch.cat([v[:FRAMES] for v in up(data["motion"])])
    print(f"\n## Results ({'--quick' if args.quick else 'full run'}, seed {args.seed}, motion module "
          f"{timings['motion_module'][1]} steps on {args.base_motion} videos)\n")
    print("| stage | steps | frames/step | lr | loss first 10 % -> last 10 % | time (s) |\n|---|---|---|---|---|---|")
    for stage, (steps, lr, frames) in STAGES.items():
        secs, n = timings[stage]
        print(f"| {stage} | {n} | {frames} | {lr:g} | {losses[stage][0]:.3f} -> {losses[stage][1]:.3f} | {secs:.0f} |")
    print(f"\n(a) watermark = corner mean - rest mean of channel 3 ({len(images[0.0])} images; training video "
          f"frames: {watermark(ref_frames).mean():.2f}, still images: "
          f"{watermark(torch.cat(up(data['stills']))).mean():.2f})\n")
    print("| adapter strength | watermark mean | watermark std | images with one square |\n|---|---|---|---|")
    for s, x in images.items():
        w = watermark(x)
        print(f"| {s:g} | {w.mean():.3f} | {w.std():.3f} | {one_square(x).float().mean():.0%} |")
    rows = [(f"training clips, {args.base_motion}", [v[:FRAMES] for v in up(data["motion"])]),
            ("training clips, pan left", [v[:FRAMES] for v in up(data["pan_left"])])] + list(clips.items())
    print(f"\n(b, c) consecutive frames of {len(seeds)} animations x {FRAMES} frames (adapter at 1; generated rows "
          "share their noise)\n")
    print("| frames | mean abs diff (ch 0-1) | corr | frames with one square | tracked pairs | mean dx (tracked) "
          "| mean dy (tracked) | mean dx (all) | pairs moving 1 px left | 1 px right |\n|---|---|---|---|---|---|---|---|---|---|")
    for name, cs in rows:
        m = motion_stats(torch, cs)
        print(f"| {name} | {m['abs_diff']:.3f} | {m['corr']:.3f} | {m['square']:.0%} | {m['tracked']:.0%} | "
              f"{m['dx']:+.2f} | {m['dy']:+.2f} | {m['dx_all']:+.2f} | {m['left']:.0%} | {m['right']:.0%} |")
    print(f"\nsampling: {timings['sampling'][1]} samplings of {FRAMES} frames in {timings['sampling'][0]:.0f} s; "
          f"total {time.perf_counter() - started:.0f} s")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
