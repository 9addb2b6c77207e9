"""Text to animation with AnimateDiff, headless: run workflows/txt2vid.json on ComfyUI and save the WEBP
(or any workflow in workflows/ with --workflow, and what it saves: vid2vid_controlnet.json an MP4).

    python scripts/txt2vid.py                          # starts a ComfyUI of its own (base directory .demo/)
    python scripts/txt2vid.py --server http://127.0.0.1:8188 --prompt "waves crashing on rocks" --seed 7

Without --server it starts ComfyUI on 127.0.0.1 (a free port) with `.demo/` as its base directory and this
pack linked into `.demo/custom_nodes/`, and stops it at the end. Models then live in `.demo/models/`:
checkpoints/ and animatediff_models/. When the checkpoint or the motion module the workflow names is not
there (or any other file the workflow loads: MotionLoRA, domain adapter, ControlNet, hint or reference frames,
the input video, a mask), small random-weight stand-ins (for inputs: a short generated video, a gradient) are
written in their place so that the whole pipeline runs on a CPU in a few minutes; the animation is then random
noise (it says so). Put real files there to get real ones.

Standard library only (scripts/comfy_client.py talks to ComfyUI), except that making the stand-ins imports
scripts/weights.py (torch, safetensors: what ComfyUI and the pack need anyway).
"""
import argparse
import json
import os
import shutil
import signal
import sys
import time
import uuid

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(SCRIPTS)
sys.path.insert(0, SCRIPTS)
import comfy_client  # noqa: E402
import comfyui_path  # noqa: E402
import workflow as wf  # noqa: E402

DEFAULT_WORKFLOW = os.path.join(REPO, "workflows", "txt2vid.json")
DEFAULT_BASE = os.path.join(REPO, ".demo")
RANDOM_WEIGHTS_RECORD = "random-weights.json"   # in the base directory: the stand-ins written so far
STAGING = ".stand-ins-partial"   # in the base directory: the stand-in being written
# Size of a run on random-weight stand-ins (any of these given on the command line wins); train_steps and
# clip_length shrink the MotionLoRA trainer of a training workflow.
TINY = dict(width=64, height=64, steps=4, train_steps=2, clip_length=4)
TRAINING_KNOBS = ("train_steps", "clip_length")
STAND_IN_VIDEO = (24, 80, 48, 8)  # the stand-in input video of a video-to-video workflow: frames, width, height, fps


def show(path):
    """A path as the user reads it: relative when it is under the current folder."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


log = comfy_client.log


class Failed(Exception):
    """A readable reason to stop (printed without a traceback)."""


# ------------------------------------------------------------------------------------- local server

class LocalServer(comfy_client.Server):
    """The ComfyUI this script starts (and stops) on the base directory."""

    FOLDERS = ("models/checkpoints", "models/animatediff_models", "models/animatediff_motion_lora",
               "models/controlnet", "input", "output")

    def __init__(self, base, port=None):
        super().__init__(comfyui_path.require(), base, port)

    def start(self, timeout=300, env=None):
        comfy_client.prepare_base(self.base, self.FOLDERS)
        log(f"Starting ComfyUI ({self.comfyui}) on {self.url}, base directory {self.base}")
        log(f"  log: {self.log_path}")
        try:
            client = super().start(timeout, env)
        except comfy_client.ServerError as e:
            raise Failed(str(e)) from None
        log(f"  up after {self.startup_seconds:.1f}s")
        return client

    def pack_import_error(self):
        """The log's lines about this pack failing to import, if any."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            return ""
        marker, link = "Traceback", comfy_client.PACK_LINK
        chunks = [c for c in text.split(marker)[1:] if link in c]
        if not chunks:
            return ""
        lines = []
        for line in (marker + chunks[-1]).splitlines():
            if not line.strip() and lines and not lines[-1].startswith((" ", marker)):
                break  # the blank line after the exception line ends the traceback
            lines.append(line)
        cannot = [line for line in text.splitlines() if line.startswith("Cannot import") and link in line]
        return "\n".join([line for line in lines if line.strip()] + cannot[-1:])

    def stop(self, grace=10.0):
        if super().stop(grace):
            log("Stopped ComfyUI.")


# ------------------------------------------------------------------------------- stand-in weights

def _load_record(base):
    try:
        with open(os.path.join(base, RANDOM_WEIGHTS_RECORD), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _save_record(base, record):
    """The record, replaced in one step (a reader sees the old one or the new one, never half a file)."""
    path = os.path.join(base, RANDOM_WEIGHTS_RECORD)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    os.replace(path + ".tmp", path)


def _stamp(path):
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def is_stand_in(base, path):
    return _load_record(base).get(os.path.relpath(path, base)) == _stamp(path)


def write_stand_in(class_type, path):
    """A random-weight file for `class_type`'s input at `path` (scripts/weights.py); they all fit the stand-in
    checkpoint (SD1.5 block structure at 320 channels on every level)."""
    import weights
    if class_type == "CheckpointLoaderSimple":
        weights.write_sd15_checkpoint(path, layout="animatediff")
    elif class_type == "AnimateDiffLoadMotionModule":
        weights.save_file(weights.motion_module_sd("v2", channels=(320, 320, 320, 320)), path)
    elif class_type == "AnimateDiffLoadMotionLoRA":
        weights.save_file(weights.motion_lora_sd((320, 320, 320, 320), rank=4), path)
    elif class_type == "AnimateDiffApplyDomainAdapter":
        weights.save_file(weights.v3_adapter_sd_for_ad_layout(), path)
    elif class_type == "ControlNetLoader":
        weights.save_file(weights.controlnet_sd(), path)
    elif class_type == "AnimateDiffLoadSparseCtrl":
        weights.save_file(weights.sparsectrl_sd((320, 320, 320, 320), dtype=weights.torch.float16), path)
    elif class_type == "SparseCtrlKeyFrames":  # a Load Image that feeds SparseCtrl: two key frames
        weights.save_hint_frames(path, 2, 64, 64)
    elif class_type == "LoadVideo":  # a vid2vid workflow's input video: a square crossing the picture
        frames, width, height, fps = STAND_IN_VIDEO
        weights.write_video(path, weights.moving_square_frames(frames, height, width), fps)
    elif class_type == "LoadImageMask":  # a motion strength mask: 0 at the left edge to 1 at the right
        from PIL import Image
        Image.linear_gradient("L").rotate(90).save(path)
    else:  # LoadImage: 48 frames, an animated image (ControlNet hint frames, or a trainer's reference video)
        weights.save_hint_frames(path, 48, 64, 64)


def write_stand_ins(base, missing):
    """Write random-weight stand-ins for the missing files, {path: class_type}; returns the paths written.

    Each file is written in <base>/.stand-ins-partial/, recorded with its size and time there (which os.replace
    keeps), then moved into place. Stopped at any point (an error, Ctrl-C, kill -9), the base directory holds
    complete stand-ins, each recorded, and at most one recorded file that is missing (written again next time)."""
    if not missing:
        return []
    staging = os.path.join(base, STAGING)
    shutil.rmtree(staging, ignore_errors=True)  # what a stopped run left
    os.makedirs(staging)
    record = _load_record(base)
    for path, class_type in missing.items():
        log(f"Writing random-weight stand-in {show(path)} ...")
        start = time.monotonic()
        partial = os.path.join(staging, os.path.basename(path))
        try:
            write_stand_in(class_type, partial)
        except ImportError as e:
            raise Failed(f"cannot make stand-in weights: {e} (install the pack's requirements.txt)") from None
        record[os.path.relpath(path, base)] = _stamp(partial)
        _save_record(base, record)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.replace(partial, path)
        log(f"  done in {time.monotonic() - start:.1f}s")
    os.rmdir(staging)
    return list(missing)


# ---------------------------------------------------------------------------------------------- run

def model_file(prompt, class_type, input_name):
    ids = wf.find_nodes(prompt, class_type)
    return prompt[ids[0]]["inputs"].get(input_name) if ids else None


def check_on_server(object_info, prompt):
    """With a server of someone else's: the files the prompt loads must be in its lists."""
    for class_type, name, folder in MODEL_INPUTS:
        for node_id in wf.find_nodes(prompt, class_type):
            value = prompt[node_id]["inputs"][name]
            spec = object_info[class_type]["input"]["required"][name]
            options = spec[0] if isinstance(spec[0], list) else (spec[1] if len(spec) > 1 else {}).get("options", [])
            if value not in options:
                raise Failed(f"the server has no {name} {value!r} (in {folder}/); it has: "
                             + (", ".join(map(str, options)) or "none"))


def run_prompt(client, prompt, workflow, timeout):
    client_id = uuid.uuid4().hex
    titles = {k: (v.get("_meta") or {}).get("title", v["class_type"]) for k, v in prompt.items()}
    listener = comfy_client.ProgressListener(client.url, client_id, titles)
    try:
        listener.connect()
        listener.start()
    except OSError:
        listener = None
    status, answer = client.queue(prompt, client_id, {"extra_pnginfo": {"workflow": workflow}})
    if status != 200 or answer.get("node_errors"):
        raise Failed(comfy_client.prompt_error(answer, prompt))
    prompt_id = answer["prompt_id"]
    if listener:
        listener.prompt_id = prompt_id
    log(f"Queued prompt {prompt_id}")
    start = last_note = time.monotonic()

    def note():  # without the websocket's progress: a line now and then
        nonlocal last_note
        if listener is None and time.monotonic() - last_note > 15:
            last_note = time.monotonic()
            log(f"  ... running, {last_note - start:.0f}s")
    try:
        entry = client.wait(prompt_id, timeout, check=note)
    except TimeoutError:
        client.cancel(prompt_id)
        raise Failed(f"gave up after {timeout}s (the prompt was cancelled)") from None
    except KeyboardInterrupt:
        client.cancel(prompt_id)
        raise
    finally:
        if listener:
            listener.close()
    if (entry.get("status") or {}).get("status_str") == "error":
        raise Failed(comfy_client.history_error(entry, prompt))
    log(f"Finished in {time.monotonic() - start:.1f}s")
    return entry


# (class_type, input, folder under the base directory): the files a workflow loads, each with its stand-in maker
MODEL_INPUTS = (("CheckpointLoaderSimple", "ckpt_name", "models/checkpoints"),
                ("AnimateDiffLoadMotionModule", "motion_module", "models/animatediff_models"),
                ("AnimateDiffLoadMotionLoRA", "lora_name", "models/animatediff_motion_lora"),
                ("AnimateDiffApplyDomainAdapter", "adapter_name", "models/animatediff_models"),
                ("ControlNetLoader", "control_net_name", "models/controlnet"),
                ("AnimateDiffLoadSparseCtrl", "sparsectrl_name", "models/controlnet"),
                ("LoadImage", "image", "input"),
                ("LoadVideo", "file", "input"),
                ("LoadImageMask", "image", "input"))


def prepare_models(base, prompt):
    """With the ComfyUI this script started: write stand-ins for the model files (and hint images) the prompt
    loads that are missing. Returns the stand-ins the prompt uses. Stand-ins fit each other only (not real SD1.5
    files), so none is made next to a real file."""
    paths = {}
    for class_type, name, folder in MODEL_INPUTS:
        for node_id in wf.find_nodes(prompt, class_type):
            paths[os.path.join(base, folder, prompt[node_id]["inputs"][name])] = class_type
    for apply in wf.find_nodes(prompt, "ControlNetApplyAdvanced"):  # key frames for a SparseCtrl encoder
        images, control = wf.upstream_node(prompt, apply, "image"), wf.upstream_node(prompt, apply, "control_net")
        if prompt.get(control, {}).get("class_type") == "AnimateDiffLoadSparseCtrl" and \
                prompt.get(images, {}).get("class_type") == "LoadImage":
            paths[os.path.join(base, "input", prompt[images]["inputs"]["image"])] = "SparseCtrlKeyFrames"
    missing = {p: t for p, t in paths.items() if not os.path.exists(p)}
    real = [p for p in paths if os.path.exists(p) and not is_stand_in(base, p)]
    if missing and real:
        raise Failed(f"{show(next(iter(missing)))} is missing while {show(real[0])} is a real file: "
                     "put the missing file there too (random-weight stand-ins are only made to replace all of "
                     "them, since they do not fit real weights). Motion modules: "
                     "https://huggingface.co/guoyww/animatediff (mm_sd_v15_v2.ckpt). A stand-in that is not in "
                     f"{show(os.path.join(base, RANDOM_WEIGHTS_RECORD))} (an older version of this script, stopped "
                     "midway, left it unrecorded) counts as real: delete it.")
    write_stand_ins(base, missing)
    return [p for p in paths if is_stand_in(base, p)]


def stand_in_notice(base, stand_ins, tiny):
    shrunk = ", ".join(f"{k}={v}" for k, v in tiny.items()) or "as given"
    models = show(os.path.join(base, "models"))
    log("")
    log("NOTE: no real weights installed. These files are random-weight stand-ins:")
    for p in stand_ins:
        log(f"        {show(p)}")
    log("      so the result will be RANDOM NOISE. It only shows that the pipeline runs end to end.")
    log(f"      The run is shrunk for the CPU ({shrunk}).")
    log(f"      For a real animation put the real files there instead: an SD1.5 checkpoint in {models}/checkpoints/")
    log(f"      and an AnimateDiff motion module (e.g. mm_sd_v15_v2.ckpt) in {models}/animatediff_models/,")
    log("      under the names the workflow uses (or pass --checkpoint/--motion-module), "
        "or run against your own ComfyUI with --server.")
    log("")


def describe_run(prompt):
    for trainer in wf.find_nodes(prompt, wf.TRAINER):
        t = prompt[trainer]["inputs"]
        log(f"Training a MotionLoRA: {t.get('steps')} steps on clips of {t.get('clip_length')} frames at "
            f"{t.get('width')}x{t.get('height')}, rank {t.get('rank')}, saved in models/animatediff_motion_lora/ "
            f"as {t.get('output_name')}")
    samplers = wf.find_nodes(prompt, "KSampler")
    if not samplers:
        return
    sampler = prompt[samplers[0]]["inputs"]
    latent_id = wf.upstream_node(prompt, samplers[0], "latent_image")
    latent = prompt[latent_id]["inputs"] if latent_id else {}
    if latent_id and prompt[latent_id]["class_type"] == "VAEEncode":  # video to video: the frames are the video's
        scale = wf.upstream_node(prompt, latent_id, "pixels")
        size = prompt[scale]["inputs"] if scale else {}
        log(f"Redrawing the frames of {model_file(prompt, 'LoadVideo', 'file')} at {size.get('width', '?')}x"
            f"{size.get('height', '?')}, denoise {sampler.get('denoise')}, {sampler.get('steps')} steps, "
            f"seed {sampler.get('seed')}")
    else:
        log(f"Generating {latent.get('batch_size', '?')} frames of {latent.get('width', '?')}x"
            f"{latent.get('height', '?')}, {sampler.get('steps')} steps, seed {sampler.get('seed')}")
    log(f"  checkpoint {model_file(prompt, 'CheckpointLoaderSimple', 'ckpt_name')}, "
        f"motion module {model_file(prompt, 'AnimateDiffLoadMotionModule', 'motion_module')}")


def saved_files(entry):
    files = []
    for output in (entry.get("outputs") or {}).values():
        for item in output.get("images", []) + output.get("gifs", []):
            if item.get("type", "output") == "output":
                files.append(item)
    return files


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", help="URL of a running ComfyUI (default: start one on --base-directory)")
    p.add_argument("--workflow", default=DEFAULT_WORKFLOW,
                   help="UI-format workflow (default: workflows/txt2vid.json)")
    p.add_argument("--output", default="out", help="folder for the animation, WEBP or MP4 (default: out/)")
    p.add_argument("--seed", type=int)
    p.add_argument("--frames", type=int, help="number of frames (the latent batch size)")
    p.add_argument("--prompt", help="positive prompt")
    p.add_argument("--negative", help="negative prompt")
    p.add_argument("--steps", type=int)
    p.add_argument("--cfg", type=float)
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--checkpoint", help="checkpoint file name (models/checkpoints)")
    p.add_argument("--motion-module", help="motion module file name (models/animatediff_models)")
    p.add_argument("--train-steps", type=int, help="training steps of a MotionLoRA trainer in the workflow")
    p.add_argument("--clip-length", type=int, help="frames per training clip of a MotionLoRA trainer")
    p.add_argument("--base-directory", default=DEFAULT_BASE,
                   help="base directory of the ComfyUI this starts (default: .demo/ in the repository)")
    p.add_argument("--port", type=int, help="port of the ComfyUI this starts (default: a free one)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the result")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # a plain kill (SIGTERM) ends the run as Ctrl-C does: the ComfyUI this started is stopped too
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with open(args.workflow, encoding="utf-8") as f:
        workflow = json.load(f)
    server = None
    try:
        if args.server:
            client = comfy_client.Client(args.server)
            if not client.ready():
                raise Failed(f"no ComfyUI answers at {args.server}")
        else:
            base = os.path.abspath(args.base_directory)
            server = LocalServer(base, args.port)
            client = server.start()
        object_info = client.get_json("/object_info", timeout=120)
        try:
            prompt = wf.ui_to_api(workflow, object_info)
        except wf.MissingNodeTypes as e:
            detail = server.pack_import_error() if server else ""
            raise Failed(str(e) + ("\n" + detail if detail else "")) from None

        overrides = dict(seed=args.seed, frames=args.frames, steps=args.steps, cfg=args.cfg, width=args.width,
                         height=args.height, positive=args.prompt, negative=args.negative,
                         checkpoint=args.checkpoint, motion_module=args.motion_module,
                         train_steps=args.train_steps, clip_length=args.clip_length)
        try:
            prompt = wf.apply_overrides(prompt, **overrides)
        except KeyError as e:
            raise Failed(f"cannot apply the options to {show(args.workflow)}: {e.args[0]}") from None

        random_weights = []
        if server:
            random_weights = prepare_models(server.base, prompt)
        else:
            check_on_server(object_info, prompt)
        if random_weights:
            trains = bool(wf.find_nodes(prompt, wf.TRAINER))
            tiny = {k: v for k, v in TINY.items()
                    if getattr(args, k) is None and (trains or k not in TRAINING_KNOBS)}
            prompt = wf.apply_overrides(prompt, **tiny)
            stand_in_notice(server.base, random_weights, tiny)
        describe_run(prompt)

        entry = run_prompt(client, prompt, wf.sync_widgets(workflow, prompt, object_info), args.timeout)
        files = saved_files(entry)
        if not files:
            raise Failed("the prompt ran but saved no file: " + json.dumps(entry.get("outputs")))
        paths = [client.download(item, args.output) for item in files]
        for path in paths:
            log(f"Saved {path}" + ("  (random noise: stand-in weights)" if random_weights else ""))
        return 0
    except Failed as e:
        log("")
        log(str(e))
        return 1
    except KeyboardInterrupt:
        log("Interrupted.")
        return 130
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
