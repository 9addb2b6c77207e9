"""SparseCtrl: seconds per sampling step with the encoder against AnimateDiff alone, and peak memory.

The models of overhead.py (SD1.5 block layout, random fp32 weights, a v2 motion module) and a SparseCtrl scribble
encoder of the same channels (scripts/weights.py, the official layout; the RGB encoder differs only in its first
conv), 16 frames sampled as KSampler samples them (euler, cfg: cond and uncond batched), two key frames (0 and
15) given through the control object that Apply ControlNet (Advanced) makes. In one process the two cells are
timed in turns, `--repeats` rounds (the compute thread's CPU time on CPU); min / median per step and the median
of the rounds' ratios are printed. Peak memory: each cell once more in a fresh process, during its sampling
(resident set on CPU, the loaded models included; allocator peak on CUDA); the plain cell has no encoder.

    .venv/bin/python benchmarks/sparsectrl.py                              # tiny, CPU: about 1 minute
    .venv/bin/python benchmarks/sparsectrl.py --configs sd15 --steps 1 --repeats 2
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import overhead  # noqa: E402  (the models, sampling and the machine description)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--configs", default="tiny", help="comma-separated, from: " + ", ".join(overhead.CONFIGS))
    p.add_argument("--latent", type=int, default=16, help="latent height = width (pixels / 8)")
    p.add_argument("--steps", type=int, default=2, help="sampling steps per timed sampling")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (each: plain, then with SparseCtrl)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--memory", nargs=3, metavar=("CONFIG", "CELL", "DIR"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def models(ns, config, folder, sparse=True):
    """(AnimateDiff model, the SparseCtrl control object as Apply ControlNet makes it, or None) for `config`."""
    channels, mult = overhead.CONFIGS[config]
    import weights  # (torch: after setup)
    path = os.path.join(folder, "sparsectrl.safetensors")
    if not os.path.exists(path):
        weights.save_file(weights.sparsectrl_sd(tuple(channels * m for m in mult), latent=False), path)
    mm_path = overhead.write_motion_module(ns, config, os.path.join(folder, "mm.pt"))
    mm = ns.nodes.motion.load_motion_module(mm_path, "mm")
    animated = ns.nodes.motion.apply_motion_module(overhead.build_unet(ns, config), mm, "autoselect", 1.0, 1.0)
    if not sparse:
        return animated, None
    sparsectrl = ns.nodes.sparsectrl
    keys = ns.torch.rand(2, 3, 8, 8, generator=ns.torch.Generator().manual_seed(2))  # scaled to the latent's size
    control = sparsectrl.load_sparsectrl(path, "sparsectrl", [0, -1]).copy().set_cond_hint(keys, 1.0, (0.0, 1.0))
    return animated, control


def sample(ns, animated, control, latent, steps):
    """overhead.sample's sampling, with `control` on the positive and negative prompts (or none)."""
    torch = ns.torch
    g = torch.Generator().manual_seed(1)
    extra = {"control": control} if control is not None else {}
    positive = [[torch.randn(1, 77, 768, generator=g), dict(extra)]]
    negative = [[torch.randn(1, 77, 768, generator=g), dict(extra)]]
    latent_image = torch.zeros(overhead.FRAMES, 4, latent, latent)
    noise = torch.randn(latent_image.shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return ns.comfy.sample.sample(animated, noise, steps, overhead.CFG, "euler", "normal", positive, negative,
                                      latent_image, disable_pbar=True, seed=0)


def peak_memory(ns, args):
    config, cell, folder = args.memory
    animated, control = models(ns, config, folder, sparse=cell == "sparsectrl")
    if ns.device.type == "cpu":
        with open("/proc/self/clear_refs", "w") as f:  # the peak resident set from here: the sampling's
            f.write("5")
    sample(ns, animated, control, args.latent, 1)
    if ns.device.type == "cuda":
        print(ns.torch.cuda.max_memory_allocated() / 2 ** 20)
    else:
        print(overhead.proc_status_kib("VmHWM") / 1024)


def main():
    args = parse_args()
    ns = overhead.setup(args)
    if args.memory:
        return peak_memory(ns, args)
    print(f"SparseCtrl, {overhead.FRAMES} frames, key frames 0 and 15, latent {args.latent}x{args.latent}, "
          f"{args.steps} steps, {args.repeats} rounds; {overhead.machine_description(ns)}")
    for config in args.configs.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            animated, control = models(ns, config, tmp)
            cells = {"plain": None, "sparsectrl": control}
            for c in cells.values():
                sample(ns, animated, c, args.latent, 1)  # warm-up: loads the models
            seconds = {name: [] for name in cells}
            for _ in range(args.repeats):
                for name, c in cells.items():
                    t0 = overhead.clock(ns)
                    sample(ns, animated, c, args.latent, args.steps)
                    seconds[name].append((overhead.clock(ns)[1] - t0[1]) / args.steps)
            memory = {name: float(subprocess.run(
                [sys.executable, __file__, "--device", args.device, "--latent", str(args.latent), "--threads",
                 str(args.threads), "--memory", config, name, tmp], check=True, capture_output=True,
                text=True).stdout.split()[-1]) for name in cells}
        params = sum(p.numel() for p in control.control_model.parameters()) / 1e6
        print(f"\n{config} (SparseCtrl encoder {params:.1f} M parameters):\n"
              "| cell | s/step min | median | ratio to plain (median of rounds) | peak memory MiB |")
        print("|---|---|---|---|---|")
        for name, values in seconds.items():
            ratio = statistics.median(v / p for v, p in zip(values, seconds["plain"]))
            print(f"| {name} | {min(values):.3f} | {statistics.median(values):.3f} | {ratio:.3f} | "
                  f"{memory[name]:,.0f} |")


if __name__ == "__main__":
    main()
