"""What the motion module costs per sampling step: time, FLOPs and peak memory, with and without it.

For a 16-frame latent batch sampled the way KSampler does it (cond and uncond batched: 32 images through the
UNet per step), on the SAME ComfyUI model (a ModelPatcher, and `apply_motion_module`'s clone of it):

  * seconds per UNet forward, timed inside real `comfy.sample.sample` calls (KSampler: euler, cfg 7) through
    the model's `model_function_wrapper`, i.e. exactly the `apply_model` call the sampler makes each step.
    Calls with and without the motion module alternate; the first of each is an untimed warm-up. On CPU the
    time is the compute thread's CPU time (time.thread_time), which other processes on the same cores do not
    inflate the way they inflate wall-clock time (wall-clock medians are printed too);
  * FLOPs of the same forward (convolutions, matmuls, attention's batched matmuls), counted on the warm-up
    call with torch.utils.flop_counter.FlopCounterMode; the motion modules' share = (with - without) / with,
    and the FLOP floor of the time ratio = FLOPs with / FLOPs without;
  * the time inside the motion modules themselves (forward hooks on them), against what their FLOPs would
    take at the rate the plain UNet achieves;
  * peak memory of one forward, in a fresh subprocess per cell: on CPU the peak resident set size (VmHWM,
    reset through /proc/self/clear_refs right before the forward) over the resident size right before it,
    and the process's total peak; on CUDA torch.cuda.max_memory_allocated likewise.

Each configuration runs in a fresh subprocess, so one configuration's allocator state does not change the next
one's timings. Configurations:
  sd15: SD1.5's UNet (320 channels, channel_mult (1, 2, 4, 4), 2 ResBlocks per level, depth-1 transformers on
        levels 0-2 and in the middle block, 8 heads, context 768: 859.5 M parameters) with a full-size v2
        motion module (21 modules, 453.2 M parameters);
  tiny: the test suite's tiny SD1.5 layout (32 channels, channel_mult (1, 2, 2, 2)) with a v2 module of
        channels (32, 64, 64, 64).
Weights are random, fp32 (N(0, 1) / sqrt(fan_in), ...), built as the tests build theirs: the UNet by
scripts/comfy_models.py, the motion module by scripts/weights.py. Default latent: 16x16 on CPU, 64x64 on CUDA.
Measured numbers: benchmarks/README.md.

    .venv/bin/python benchmarks/overhead.py                # both configurations, CPU: about 9 minutes
    .venv/bin/python benchmarks/overhead.py --quick        # 1 timed pair, no memory cells
    .venv/bin/python benchmarks/overhead.py --device cuda --latent 64
"""
import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(PACK_DIR, "scripts"))
import comfyui_path  # noqa: E402

FRAMES = 16
CFG = 7.0  # > 1, so every step evaluates cond and uncond

CONFIGS = {  # name: (model_channels, channel_mult)
    "sd15": (320, (1, 2, 4, 4)),
    "tiny": (32, (1, 2, 2, 2)),
    "ad320": (320, (1, 1, 1, 1)),  # the tests' SD1.5-detected checkpoint layout: 320 channels on every level
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--configs", default="sd15,tiny", help="comma-separated, from: " + ", ".join(CONFIGS))
    p.add_argument("--latent", type=int, default=None,
                   help="latent height = width (pixels / 8); default 16 on CPU, 64 on CUDA")
    p.add_argument("--repeats", type=int, default=None, help="timed with/without pairs (default 3, --quick 1)")
    p.add_argument("--steps", type=int, default=1, help="sampling steps per sample() call (default 1)")
    p.add_argument("--quick", action="store_true", help="1 timed pair, no memory cells")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--child", nargs=4, metavar=("TASK", "CONFIG", "LATENT", "MM_PATH"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------- setup

def setup(args):
    """Import torch, ComfyUI and this pack (scripts/comfyui_path.py, as the tests find it); returns a namespace of
    modules."""
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch is imported
    import torch
    torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    comfyui_path.use_comfyui(cpu=args.device == "cpu")
    import logging
    logging.getLogger().setLevel(logging.WARNING)
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sample
    import comfy.supported_models
    pack = comfyui_path.load_pack()

    class Modules:
        pass
    ns = Modules()
    ns.torch, ns.comfy = torch, comfy
    ns.pack = pack
    ns.nodes = pack.nodes  # motion, lora, context_windows, free_init, sparsectrl, training
    ns.mm = sys.modules[pack.__name__ + ".motion_modules.model"]
    ns.device = torch.device(args.device)
    return ns


def clock(ns):
    """(wall, busy) seconds. On CPU `busy` is this thread's CPU time: with one compute thread it is what a step
    costs even while other processes share the cores. On CUDA both are wall time after a synchronize."""
    if ns.device.type == "cuda":
        ns.torch.cuda.synchronize()
        wall = time.perf_counter()
        return wall, wall
    return time.perf_counter(), time.thread_time()


# ------------------------------------------------------------------------------------------ the models

def build_unet(ns, config):
    """A ModelPatcher around an SD15 model with SD1.5's block layout at `config`'s channels (scripts/comfy_models.py:
    the tests' model builder), as comfy.sd wraps a loaded checkpoint."""
    import comfy_models  # (ComfyUI: after setup)
    channels, mult = CONFIGS[config]
    return comfy_models.tiny_sd15_model(model_channels=channels, channel_mult=mult)


def write_motion_module(ns, config, path):
    """A random-weight v2 motion-module file for `config` (scripts/weights.py, as the tests build theirs)."""
    import weights  # (torch: after setup)
    channels, mult = CONFIGS[config]
    weights.save_file(weights.motion_module_sd("v2", channels=tuple(channels * m for m in mult), seed=0), path)
    return path


def sample(ns, patcher, latent, steps, frames=FRAMES):
    """What KSampler does: comfy.sample.sample on an empty latent of `frames` frames, positive and negative
    prompts."""
    torch = ns.torch
    g = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, 77, 768, generator=g), {}]]
    negative = [[torch.randn(1, 77, 768, generator=g), {}]]
    latent_image = torch.zeros(frames, 4, latent, latent)
    noise = torch.randn(latent_image.shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():  # as ComfyUI runs its nodes
        return ns.comfy.sample.sample(patcher, noise, steps, CFG, "euler", "normal", positive, negative,
                                      latent_image, disable_pbar=True, seed=0)


def motion_modules_in(ns, patcher):
    return sum(isinstance(m, ns.mm.VanillaTemporalModule) for m in patcher.model.diffusion_model.modules())


# ---------------------------------------------------------------------------------------------- timing

class StepTimer:
    """model_function_wrapper: times each apply_model call the sampler makes (one UNet forward of the batch).

    `around`: None (a timed call) or a factory of a context manager to run the call in (FLOP counter,
    profiler); such calls are not timed, their context manager is kept in `last`."""

    def __init__(self, ns, patcher):
        self.ns, self.patcher = ns, patcher
        self.times, self.walls, self.seen = [], [], []
        self.around, self.last, self.last_busy = None, None, None
        self.mm_clock, self.mm_times = None, []  # MotionModuleClock: time inside the motion modules per call

    def __call__(self, apply_model, args):
        x, c = args["input"], args["c"]
        self.seen.append((x.shape[0], tuple(args["cond_or_uncond"]), motion_modules_in(self.ns, self.patcher)))
        ctx = self.around() if self.around is not None else contextlib.nullcontext()
        if self.mm_clock is not None:
            self.mm_clock.total = 0.0
        with ctx:
            wall0, busy0 = clock(self.ns)
            out = apply_model(x, args["timestep"], **c)
            wall1, busy1 = clock(self.ns)
        if self.around is None:
            self.times.append(busy1 - busy0)
            self.walls.append(wall1 - wall0)
            if self.mm_clock is not None:
                self.mm_times.append(self.mm_clock.total)
        self.last, self.last_busy = ctx, busy1 - busy0
        return out

    def run(self, latent, around):
        """One 1-step sample() call inside `around`; returns its context manager."""
        self.around = around
        try:
            sample(self.ns, self.patcher, latent, 1)
        finally:
            self.around = None
        return self.last


class MotionModuleClock:
    """Forward hooks on every motion module: seconds spent inside them (`total`)."""

    def __init__(self, ns, modules):
        self.ns, self.t0, self.total = ns, None, 0.0
        for m in modules:
            m.register_forward_pre_hook(self.pre)
            m.register_forward_hook(self.post)

    def pre(self, module, args):
        self.t0 = clock(self.ns)[1]

    def post(self, module, args, out):
        self.total += clock(self.ns)[1] - self.t0


def pair_ratios(without, with_, steps):
    """with/without of each interleaved pair of sample() calls (mean step time of each call)."""
    def calls(t):
        return [statistics.mean(t[i:i + steps]) for i in range(0, len(t), steps)]
    return [w / wo for wo, w in zip(calls(without), calls(with_))]


def stats(values):
    return {"min": min(values), "median": statistics.median(values), "n": len(values)}


def measure(ns, args, config, latent, mm_path):
    """Interleaved timings, FLOPs and the motion modules' own time for one configuration."""
    from torch.utils.flop_counter import FlopCounterMode
    base = build_unet(ns, config)
    motion = ns.nodes.motion.load_motion_module(mm_path, f"v2 {config}")
    with_mm = ns.nodes.motion.apply_motion_module(base, motion, "autoselect", 1.0, 1.0)
    without, withmm = StepTimer(ns, base), StepTimer(ns, with_mm)
    base.set_model_unet_function_wrapper(without)
    with_mm.set_model_unet_function_wrapper(withmm)
    mm_modules = [m for m in motion.patcher.model.modules() if isinstance(m, ns.mm.VanillaTemporalModule)]
    unet_params = sum(p.numel() for p in base.model.diffusion_model.parameters())  # before any injection
    mm_clock = MotionModuleClock(ns, mm_modules)
    withmm.mm_clock = mm_clock

    # warm-up: one call each, FLOPs counted on it (not timed)
    flops = {name: timer.run(latent, lambda: FlopCounterMode(display=False)).get_total_flops()
             for name, timer in (("without", without), ("with", withmm))}
    for _ in range(args.repeats):
        sample(ns, base, latent, args.steps)
        sample(ns, with_mm, latent, args.steps)

    for timer, expected in ((without, 0), (withmm, len(mm_modules))):
        bad = [s for s in timer.seen if s[0] != 2 * FRAMES or len(s[1]) != 2 or s[2] != expected]
        if bad:
            raise RuntimeError(f"{config}: unexpected (batch, cond_or_uncond, motion modules in the UNet) {bad[0]}; "
                               f"expected ({2 * FRAMES}, 2 entries, {expected})")
    result = {
        "config": config, "latent": latent, "frames": FRAMES, "batch": 2 * FRAMES,
        "unet_params": unet_params,
        "mm_params": sum(p.numel() for p in motion.patcher.model.parameters()), "mm_modules": len(mm_modules),
        "without": stats(without.times), "with": stats(withmm.times),
        "without_times": without.times, "with_times": withmm.times,
        "without_wall": stats(without.walls), "with_wall": stats(withmm.walls),
        "pair_ratios": pair_ratios(without.times, withmm.times, args.steps),
        "flops_without": flops["without"], "flops_with": flops["with"],
        "mm_seconds": statistics.median(withmm.mm_times),
    }
    ns.comfy.model_management.unload_all_models()
    return result


# ---------------------------------------------------------------------------------------------- memory

def proc_status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


class LiveTensorPeak:
    """Peak bytes of the tensors created during a forward and alive at once (a TorchDispatchMode that tracks
    every op's output storages until they are freed): exact and independent of the C allocator, like
    torch.cuda.max_memory_allocated on a GPU. Storages that exist before (weights, inputs) are not counted."""

    def __init__(self, torch, existing):
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves
        existing = {t.untyped_storage().data_ptr() for t in existing}
        tracker = self
        self.current = self.peak = 0
        live = {}

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for key in [k for k, (ref, _) in live.items() if ref.expired()]:
                    tracker.current -= live.pop(key)[1]
                for t in tree_leaves(out):
                    if isinstance(t, torch.Tensor) and t.device.type != "meta":
                        storage = t.untyped_storage()
                        key = storage.data_ptr()
                        if key and key not in live and key not in existing:
                            live[key] = (StorageWeakRef(storage), storage.nbytes())
                            tracker.current += storage.nbytes()
                tracker.peak = max(tracker.peak, tracker.current)
                return out
        self.mode = Mode()


class PeakMemory:
    """model_function_wrapper: peak memory of one forward over the memory in use right before it (CUDA:
    allocated bytes; CPU: resident set size), and on CPU a second forward's live-tensor peak."""

    def __init__(self, ns, patcher):
        self.ns, self.patcher, self.result = ns, patcher, None

    def __call__(self, apply_model, args):
        torch = self.ns.torch
        if self.ns.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            out = apply_model(args["input"], args["timestep"], **args["c"])
            torch.cuda.synchronize()
            self.result = {"kind": "CUDA allocated", "before": before, "peak": torch.cuda.max_memory_allocated()}
            return out
        before = proc_status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak RSS (VmHWM) to the current RSS
            f.write("5")
        out = apply_model(args["input"], args["timestep"], **args["c"])
        self.result = {"kind": "RSS", "before": before * 1024, "peak": proc_status_kib("VmHWM") * 1024}
        model = self.patcher.model
        existing = [*model.parameters(), *model.buffers(), args["input"], args["timestep"],
                    *[v for v in args["c"].values() if isinstance(v, torch.Tensor)]]
        tracker = LiveTensorPeak(torch, existing)
        with tracker.mode:
            out = apply_model(args["input"], args["timestep"], **args["c"])
        self.result["tensor_peak"] = tracker.peak
        return out


def memory_cell(ns, config, mode, latent, mm_path):
    patcher = build_unet(ns, config)
    if mode == "with":
        motion = ns.nodes.motion.load_motion_module(mm_path, f"v2 {config}")
        patcher = ns.nodes.motion.apply_motion_module(patcher, motion, "autoselect", 1.0, 1.0)
    probe = PeakMemory(ns, patcher)
    patcher.set_model_unet_function_wrapper(probe)
    sample(ns, patcher, latent, 1)
    return probe.result


# ---------------------------------------------------------------------------------------------- driver

def child(args, ns):
    task, config, latent, mm_path = args.child
    if task == "measure":
        result = measure(ns, args, config, int(latent), mm_path)
    else:
        result = memory_cell(ns, config, task, int(latent), mm_path)
    print("RESULT " + json.dumps(result))


def run_child(args, task, config, latent, mm_path):
    cmd = [sys.executable, os.path.abspath(__file__), "--device", args.device, "--threads", str(args.threads),
           "--repeats", str(args.repeats), "--steps", str(args.steps), "--child", task, config, str(latent), mm_path]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{task} {config} failed (exit {out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")


def mib(n):
    return f"{n / 2**20:,.0f} MiB"


def report(results, device, machine):
    cpu = device == "cpu"
    unit = "CPU s" if cpu else "s"
    print(f"\n{FRAMES} frames, cond + uncond batched (batch {2 * FRAMES} per UNet forward), KSampler euler, cfg {CFG}; "
          f"{machine}")
    for r in results:
        channels, mult = CONFIGS[r["config"]]
        print(f"  {r['config']}: UNet {r['unet_params'] / 1e6:.1f} M parameters ({channels} channels, channel_mult "
              f"{mult}, SD1.5 blocks); v2 motion module, {r['mm_modules']} modules, {r['mm_params'] / 1e6:.1f} M "
              f"parameters; latent {r['latent']}x{r['latent']} ({8 * r['latent']}x{8 * r['latent']} px)")
    head = (f"{'config':<6} {unit + '/step without':>18} {unit + '/step with':>18} {'ratio':>13} "
            f"{'GFLOP without':>13} {'GFLOP with':>10} {'MM share':>8} {'floor':>6} {'ratio/floor':>11}")
    print("\n" + head + "\n" + "-" * len(head))
    for r in results:
        wo, w = r["without"], r["with"]
        ratio = statistics.median(r["pair_ratios"])
        floor = r["flops_with"] / r["flops_without"]
        r.update(ratio=ratio, ratio_min=w["min"] / wo["min"], floor=floor, ratio_over_floor=ratio / floor,
                 mm_flop_share=(r["flops_with"] - r["flops_without"]) / r["flops_with"])
        print(f"{r['config']:<6} {wo['min']:>8.3f} / {wo['median']:>7.3f} {w['min']:>8.3f} / {w['median']:>7.3f}  "
              f"{r['ratio_min']:.3f} / {ratio:.3f} {r['flops_without'] / 1e9:>13.1f} {r['flops_with'] / 1e9:>10.1f} "
              f"{r['mm_flop_share']:>8.1%} {floor:>6.3f} {ratio / floor:>11.3f}")
    print(f"  {unit}/step: min / median over the timed steps"
          + (" (the compute thread's CPU time)" if cpu else "")
          + "; ratio: with/without of the mins / median of the interleaved pairs' ratios;\n"
          "  floor: FLOPs with / FLOPs without; ratio/floor uses the median pair ratio (target <= 1.10)")
    for r in results:
        print(f"  {r['config']}: {r['without']['n']} timed steps each; pair ratios "
              + ", ".join(f"{x:.3f}" for x in r["pair_ratios"])
              + f"; wall-clock medians {r['without_wall']['median']:.3f} s without, {r['with_wall']['median']:.3f} s with")

    head = (f"{'config':<6} {'MM time/step':>12} {'MM GFLOP':>9} {'MM GFLOP/s':>10} {'UNet GFLOP/s':>12} "
            f"{'MM time at UNet rate':>20} {'excess':>8}")
    print("\n" + head + "\n" + "-" * len(head))
    for r in results:
        rate = r["flops_without"] / r["without"]["median"]
        mm_flops = r["flops_with"] - r["flops_without"]
        r.update(unet_gflop_per_s=rate / 1e9, mm_gflop_per_s=mm_flops / r["mm_seconds"] / 1e9)
        print(f"{r['config']:<6} {r['mm_seconds']:>11.3f}s {mm_flops / 1e9:>9.1f} {r['mm_gflop_per_s']:>10.1f} "
              f"{rate / 1e9:>12.1f} {mm_flops / rate:>19.3f}s {r['mm_seconds'] - mm_flops / rate:>+7.3f}s")
    print("  MM time/step: inside the motion modules (forward hooks), median over the timed steps with the module")

    if any("memory" in r for r in results):
        kind = next(r["memory"]["with"]["kind"] for r in results if "memory" in r)
        tensors = any("tensor_peak" in r["memory"]["with"] for r in results if "memory" in r)
        head = (f"{'config':<6} {'MM weights':>10} {'total ' + kind + ' peak: without':>26} {'with':>9} "
                f"{kind + ' peak over start: without':>29} {'with':>9}"
                + (f" {'live-tensor peak: without':>25} {'with':>9}" if tensors else ""))
        print("\n" + head + "\n" + "-" * len(head))
        for r in results:
            if "memory" in r:
                m = r["memory"]
                line = (f"{r['config']:<6} {mib(4 * r['mm_params']):>10} {mib(m['without']['peak']):>26} "
                        f"{mib(m['with']['peak']):>9} {mib(m['without']['peak'] - m['without']['before']):>29} "
                        f"{mib(m['with']['peak'] - m['with']['before']):>9}")
                if tensors:
                    line += f" {mib(m['without']['tensor_peak']):>25} {mib(m['with']['tensor_peak']):>9}"
                print(line)
        print(f"  one forward in a fresh process per cell: the process's total peak {kind} (weights included), and "
              f"its peak over the value right before the forward;")
        if tensors:
            print("  live-tensor peak: the most bytes of tensors created during a forward alive at once (exact; "
                  "what a GPU's allocator would need on top of the weights)")


def machine_description(ns):
    torch = ns.torch
    if ns.device.type == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    cpu = "CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return f"{cpu} ({os.cpu_count()} cores), {torch.get_num_threads()} thread(s), torch {torch.__version__}"


def main():
    args = parse_args()
    ns = setup(args)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.child:
        return child(args, ns)
    latent = args.latent or (16 if ns.device.type == "cpu" else 64)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        sys.exit(f"unknown config(s) {unknown}; choose from {list(CONFIGS)}")
    machine = machine_description(ns)
    print(f"device: {machine}", flush=True)
    results = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="animatediff-bench-") as tmp:
        for config in configs:
            t0 = time.perf_counter()
            mm_path = write_motion_module(ns, config, os.path.join(tmp, f"{config}_v2.safetensors"))
            r = run_child(args, "measure", config, latent, mm_path)
            if not (args.quick or args.no_memory):
                r["memory"] = {mode: run_child(args, mode, config, latent, mm_path) for mode in ("without", "with")}
            os.remove(mm_path)
            print(f"  {config}: {time.perf_counter() - t0:.0f} s", flush=True)
            results.append(r)
    report(results, ns.device.type, machine)
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
