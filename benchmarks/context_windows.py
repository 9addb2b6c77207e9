"""Context windows: seconds per sampling step and peak memory at 16, 64 and 256 frames with 16-frame windows.

The same models as overhead.py (SD1.5 block layout, random fp32 weights, a v2 motion module), sampled as
KSampler samples (euler, cfg 7: cond and uncond batched) through `context_windows.apply` (context_length 16,
overlap 4, standard_static, pyramid, FreeNoise). Each (config, frames) cell runs in a fresh process: one 1-step
sample() call measures peak memory (on CPU the exact peak of live tensors created during the call, tracked by
overhead.LiveTensorPeak, weights aside; on CUDA max_memory_allocated over the allocation before it), then
`--repeats` more are timed (the compute thread's CPU time on CPU). The size of one full-length latent batch is
printed beside it: noise, latent and the handler's fused outputs are a few of those.

    .venv/bin/python benchmarks/context_windows.py                      # tiny and ad320: about 25 minutes on CPU
    .venv/bin/python benchmarks/context_windows.py --configs tiny --frames 16,64
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import overhead  # noqa: E402  (the models, sampling and the machine description)

CONTEXT = dict(context_length=16, context_overlap=4, context_schedule="standard_static", context_stride=1,
               closed_loop=False, fuse_method="pyramid", freenoise=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--configs", default="tiny,ad320", help="comma-separated, from: " + ", ".join(overhead.CONFIGS))
    p.add_argument("--frames", default="16,64,256")
    p.add_argument("--latent", type=int, default=16, help="latent height = width (pixels / 8)")
    p.add_argument("--repeats", type=int, default=2, help="timed 1-step sample() calls per cell")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--child", nargs=3, metavar=("CONFIG", "FRAMES", "MM_PATH"), help=argparse.SUPPRESS)
    return p.parse_args()


def cell(ns, args, config, frames, mm_path):
    torch = ns.torch
    motion = ns.nodes.motion.load_motion_module(mm_path, f"v2 {config}")
    model = ns.nodes.motion.apply_motion_module(overhead.build_unet(ns, config), motion, "autoselect", 1.0, 1.0)
    model = ns.nodes.context_windows.apply(model, **CONTEXT)
    windows = len(model.model_options["context_handler"].plan(frames)) if frames > CONTEXT["context_length"] else 1
    ns.comfy.model_management.load_models_gpu([model] + model.get_nested_additional_models())
    if ns.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        overhead.sample(ns, model, args.latent, 1, frames)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        tracker = overhead.LiveTensorPeak(torch, [*model.model.parameters(), *model.model.buffers(),
                                                  *motion.patcher.model.parameters(), *motion.patcher.model.buffers()])
        with tracker.mode:
            overhead.sample(ns, model, args.latent, 1, frames)
        peak = tracker.peak
    times = []
    for _ in range(args.repeats):
        t0 = overhead.clock(ns)[1]
        overhead.sample(ns, model, args.latent, 1, frames)
        times.append(overhead.clock(ns)[1] - t0)
    latent_bytes = frames * 4 * args.latent * args.latent * 4
    return {"config": config, "frames": frames, "windows": windows, "times": times,
            "peak": peak, "latent_bytes": latent_bytes}


def main():
    args = parse_args()
    ns = overhead.setup(args)
    if args.child:
        config, frames, mm_path = args.child
        print("RESULT " + json.dumps(cell(ns, args, config, int(frames), mm_path)))
        return
    configs = [c for c in args.configs.split(",") if c]
    frame_counts = [int(f) for f in args.frames.split(",")]
    print(f"device: {overhead.machine_description(ns)}; latent {args.latent}x{args.latent}; windows "
          f"{CONTEXT['context_length']}/{CONTEXT['context_overlap']} {CONTEXT['context_schedule']}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="animatediff-bench-") as tmp:
        for config in configs:
            mm_path = overhead.write_motion_module(ns, config, os.path.join(tmp, f"{config}.safetensors"))
            for frames in frame_counts:
                t0 = time.perf_counter()
                cmd = [sys.executable, os.path.abspath(__file__), "--device", args.device, "--threads",
                       str(args.threads), "--latent", str(args.latent), "--repeats", str(args.repeats),
                       "--child", config, str(frames), mm_path]
                out = subprocess.run(cmd, capture_output=True, text=True,
                                     env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
                line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
                if line is None:
                    sys.exit(f"{config} {frames} frames failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
                results.append(json.loads(line[len("RESULT "):]))
                print(f"  {config} {frames} frames: {time.perf_counter() - t0:.0f} s", flush=True)

    unit = "CPU s" if ns.device.type == "cpu" else "s"
    head = (f"{'config':<6} {'frames':>6} {'windows':>7} {unit + '/step min / median':>24} {unit + '/window':>12} "
            f"{'peak memory':>15} {'vs 16 frames':>12} {'full latents':>12}")
    print("\n" + head + "\n" + "-" * len(head))
    for r in results:
        base = next(b for b in results if b["config"] == r["config"] and b["frames"] == frame_counts[0])
        t = statistics.median(r["times"])
        print(f"{r['config']:<6} {r['frames']:>6} {r['windows']:>7} {min(r['times']):>11.3f} / {t:>10.3f} "
              f"{t / r['windows']:>12.3f} {overhead.mib(r['peak']):>15} "
              f"{r['peak'] / base['peak']:>11.2f}x {overhead.mib(r['latent_bytes']):>12}")
    print(f"  peak memory: the most bytes of tensors created during the first 1-step sample() alive at once (CUDA: "
          f"allocated bytes over those before it), weights aside; full latents: one {args.latent}x{args.latent} "
          "fp32 latent batch of all frames")


if __name__ == "__main__":
    main()
