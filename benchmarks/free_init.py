"""FreeInit: seconds per sampling with 1 (off), 2 and 3 iterations, and the ratio to plain sampling.

The models of overhead.py (SD1.5 block layout, random fp32 weights, a v2 motion module), 16 frames sampled as
KSampler samples them (euler, cfg and uncond batched) through the pack's apply_motion_module and
apply_free_init (butterworth, 0.25 / 0.25). In one process the cells are timed in turns, `--repeats` rounds
(the compute thread's CPU time on CPU), and min / median are printed with each one's ratio to plain sampling in
the same round. FreeInit's own work (two 3D FFTs of the latent per extra iteration) is what the ratio shows
beyond N.

    .venv/bin/python benchmarks/free_init.py                    # tiny, CPU: about 2 minutes
    .venv/bin/python benchmarks/free_init.py --configs ad320 --steps 4
"""
import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import overhead  # noqa: E402  (the models, sampling and the machine description)

ITERATIONS = (1, 2, 3)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--configs", default="tiny", help="comma-separated, from: " + ", ".join(overhead.CONFIGS))
    p.add_argument("--latent", type=int, default=16, help="latent height = width (pixels / 8)")
    p.add_argument("--steps", type=int, default=4, help="sampling steps per pass")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (each: plain, then every iteration count)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    return p.parse_args()


def main():
    args = parse_args()
    ns = overhead.setup(args)
    print(f"FreeInit, {overhead.FRAMES} frames, latent {args.latent}x{args.latent}, {args.steps} steps per pass, "
          f"{args.repeats} rounds; {overhead.machine_description(ns)}")
    for config in args.configs.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            path = overhead.write_motion_module(ns, config, os.path.join(tmp, "mm.pt"))
            mm = ns.nodes.motion.load_motion_module(path, "mm")
            animated = ns.nodes.motion.apply_motion_module(overhead.build_unet(ns, config), mm, "autoselect", 1.0, 1.0)
            models = {n: ns.nodes.free_init.apply_free_init(animated, n, "butterworth", 0.25, 0.25, lambda i: None)
                      for n in ITERATIONS}
            overhead.sample(ns, animated, args.latent, 1)  # warm-up: loads the models
            seconds = {n: [] for n in ("plain", *ITERATIONS)}
            for _ in range(args.repeats):
                for name in seconds:
                    t0 = overhead.clock(ns)
                    overhead.sample(ns, animated if name == "plain" else models[name], args.latent, args.steps)
                    seconds[name].append(overhead.clock(ns)[1] - t0[1])
        print(f"\n{config}:\n| iterations | s per sampling min | median | ratio to plain (median of rounds) |")
        print("|---|---|---|---|")
        for name, values in seconds.items():
            ratio = statistics.median(v / p for v, p in zip(values, seconds["plain"]))
            print(f"| {name} | {min(values):.2f} | {statistics.median(values):.2f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
