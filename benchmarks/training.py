"""MotionLoRA training: seconds per step and peak memory, with and without gradient checkpointing.

The same models as overhead.py (SD1.5 block layout, random fp32 weights, a v2 motion module), trained with
`training.train(part="motion_lora")` on one 16-frame clip per step (rank 64, AdamW). Three ways, each in a fresh
process per config:
  script:        weights made outside inference mode, as scripts/train.py loads them;
  checkpointing: the same with gradient_checkpointing (each UNet block recomputed in the backward);
  node:          weights made under torch.inference_mode(), as ComfyUI's loaders make them for the node: every
                 frozen weight then gets an identity wrapper, i.e. a copy per forward that autograd can keep.
Peak memory is the most bytes of tensors created during one training step alive at once (overhead.LiveTensorPeak:
activations kept for the backward, gradients, AdamW state; weights aside; on CUDA max_memory_allocated over the
allocation before it). Seconds per step are the compute thread's CPU time on CPU (median of --repeats steps after
one warm-up step).

    .venv/bin/python benchmarks/training.py                      # tiny and ad320: about 10 minutes on CPU
    .venv/bin/python benchmarks/training.py --configs tiny --latent 8
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import overhead  # noqa: E402  (the models and the machine description)

MODES = ("script", "checkpointing", "node")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--configs", default="tiny,ad320", help="comma-separated, from: " + ", ".join(overhead.CONFIGS))
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--latent", type=int, default=16, help="latent height = width (pixels / 8)")
    p.add_argument("--repeats", type=int, default=3, help="timed training steps per cell")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--child", nargs=3, metavar=("CONFIG", "MODE", "MM_PATH"), help=argparse.SUPPRESS)
    return p.parse_args()


def cell(ns, args, config, mode, mm_path):
    torch = ns.torch
    training = ns.nodes.training
    with torch.inference_mode(mode == "node"):
        model = overhead.build_unet(ns, config)
        motion = ns.nodes.motion.load_motion_module(mm_path, f"v2 {config}")
    g = torch.Generator().manual_seed(0)
    clip = [torch.randn(args.frames, 4, args.latent, args.latent, generator=g)]
    positive = [[torch.randn(1, 77, 768, generator=g), {}]]
    kwargs = dict(learning_rate=1e-4, clip_length=args.frames, seed=0, motion_module=motion, rank=64,
                  gradient_checkpointing=mode == "checkpointing")
    if ns.device.type == "cuda":
        training.train(model, "motion_lora", clip, positive, 1, **kwargs)  # loads the models
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        training.train(model, "motion_lora", clip, positive, 1, **kwargs)
        peak = torch.cuda.max_memory_allocated() - before
    else:
        tracker = overhead.LiveTensorPeak(torch, [*model.model.parameters(), *model.model.buffers(),
                                                  *motion.patcher.model.parameters(), *motion.patcher.model.buffers()])
        with tracker.mode:
            training.train(model, "motion_lora", clip, positive, 1, **kwargs)
        peak = tracker.peak
    stamps = []
    training.train(model, "motion_lora", clip, positive, 1 + args.repeats,
                   report=lambda step, loss: stamps.append(overhead.clock(ns)[1]), **kwargs)
    times = [b - a for a, b in zip(stamps, stamps[1:])]
    weights = sum(p.numel() * p.element_size() for p in [*model.model.diffusion_model.parameters(),
                                                         *motion.patcher.model.parameters()])
    return {"config": config, "mode": mode, "times": times, "peak": peak, "weights": weights}


def main():
    args = parse_args()
    ns = overhead.setup(args)
    if args.child:
        config, mode, mm_path = args.child
        print("RESULT " + json.dumps(cell(ns, args, config, mode, mm_path)))
        return
    print(f"device: {overhead.machine_description(ns)}; {args.frames} frames of {args.latent}x{args.latent} "
          "latents per step, MotionLoRA rank 64", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="animatediff-bench-") as tmp:
        for config in [c for c in args.configs.split(",") if c]:
            mm_path = overhead.write_motion_module(ns, config, os.path.join(tmp, f"{config}.safetensors"))
            for mode in MODES:
                cmd = [sys.executable, os.path.abspath(__file__), "--device", args.device, "--threads",
                       str(args.threads), "--latent", str(args.latent), "--frames", str(args.frames),
                       "--repeats", str(args.repeats), "--child", config, mode, mm_path]
                out = subprocess.run(cmd, capture_output=True, text=True,
                                     env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
                line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    sys.exit(f"{config} {mode} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
                results.append(json.loads(line[len("RESULT "):]))
                print(f"  {config} {mode}: done", flush=True)

    unit = "CPU s" if ns.device.type == "cpu" else "s"
    head = (f"{'config':<6} {'mode':<13} {unit + '/step min / median':>24} {'vs script':>9} {'peak memory':>12} "
            f"{'vs script':>9} {'weights':>10}")
    print("\n" + head + "\n" + "-" * len(head))
    for r in results:
        base = next(b for b in results if b["config"] == r["config"] and b["mode"] == "script")
        t, tb = statistics.median(r["times"]), statistics.median(base["times"])
        print(f"{r['config']:<6} {r['mode']:<13} {min(r['times']):>11.3f} / {t:>10.3f} {t / tb:>8.2f}x "
              f"{overhead.mib(r['peak']):>12} {r['peak'] / base['peak']:>8.2f}x {overhead.mib(r['weights']):>10}")


if __name__ == "__main__":
    main()
