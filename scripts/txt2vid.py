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

Standard library only, except that making the stand-ins imports tests/builders.py (torch, safetensors).
"""
import argparse
import base64
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(SCRIPTS)
sys.path.insert(0, SCRIPTS)
import comfyui_path  # noqa: E402
import workflow as wf  # noqa: E402

DEFAULT_WORKFLOW = os.path.join(REPO, "workflows", "txt2vid.json")
DEFAULT_BASE = os.path.join(REPO, ".demo")
PACK_LINK = "comfyui-animatediff"   # name of the pack's link in <base>/custom_nodes/
RANDOM_WEIGHTS_RECORD = "random-weights.json"   # in the base directory: the stand-ins written so far
# Size of a run on random-weight stand-ins (any of these given on the command line wins); train_steps and
# clip_length shrink the MotionLoRA trainer of a training workflow.
TINY = dict(width=64, height=64, steps=4, train_steps=2, clip_length=4)
TRAINING_KNOBS = ("train_steps", "clip_length")
BAR = 30  # characters of the sampling progress bar
STAND_IN_VIDEO = (24, 80, 48, 8)  # the stand-in input video of a video-to-video workflow: frames, width, height, fps


def show(path):
    """A path as the user reads it: relative when it is under the current folder."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def log(*parts):
    print(*parts, flush=True)


class Failed(Exception):
    """A readable reason to stop (printed without a traceback)."""


# ------------------------------------------------------------------------------------------------ HTTP

class Client:
    def __init__(self, url):
        self.url = url.rstrip("/")

    def _open(self, path, data=None, timeout=60):
        headers = {"Content-Type": "application/json"} if data is not None else {}
        body = json.dumps(data).encode("utf-8") if data is not None else None
        request = urllib.request.Request(self.url + path, data=body, headers=headers)
        return urllib.request.urlopen(request, timeout=timeout)

    def get_json(self, path, timeout=60):
        with self._open(path, timeout=timeout) as r:
            return json.load(r)

    def post_json(self, path, data, timeout=60):
        """(status, answer) for a POST; an HTTP error status is returned, not raised."""
        try:
            with self._open(path, data, timeout) as r:
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        try:
            return status, json.loads(raw) if raw else {}
        except ValueError:
            return status, {"error": {"message": raw.decode("utf-8", "replace")}}

    def download(self, file_info, dest_dir):
        query = urllib.parse.urlencode({k: file_info.get(k, "") for k in ("filename", "subfolder", "type")})
        os.makedirs(dest_dir, exist_ok=True)
        path = os.path.join(dest_dir, os.path.basename(file_info["filename"]))
        with self._open("/view?" + query, timeout=300) as r, open(path, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
        return path

    def ready(self):
        try:
            self.get_json("/system_stats", timeout=5)
            return True
        except (OSError, ValueError):
            return False


class ProgressListener(threading.Thread):
    """Prints the progress ComfyUI reports on its websocket (/ws?clientId=...) for one prompt. A minimal
    RFC 6455 client: reads server frames, answers pings; anything unexpected just ends the listener
    (the result is still picked up by polling /history)."""

    def __init__(self, url, client_id, titles):
        super().__init__(daemon=True)
        parsed = urllib.parse.urlsplit(url)
        self.secure = parsed.scheme == "https"
        self.host = parsed.hostname
        self.port = parsed.port or (443 if self.secure else 80)
        self.path = (parsed.path.rstrip("/") or "") + "/ws?clientId=" + client_id
        self.titles = titles
        self.prompt_id = None
        self.sock = None
        self.connected = threading.Event()
        self._last = None

    def connect(self, timeout=10):
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        if self.secure:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                     .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise OSError("websocket handshake: connection closed")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise OSError("websocket handshake refused")
        self.sock = sock
        self._buffer = head.split(b"\r\n\r\n", 1)[1]
        sock.settimeout(None)
        self.connected.set()

    def _read(self, n):
        while len(self._buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self._buffer += chunk
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def _send(self, opcode, payload=b""):
        mask = os.urandom(4)
        header = bytes([0x80 | opcode, 0x80 | len(payload)])  # control frames only: payload < 126
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def messages(self):
        fragments, message_opcode = [], None
        while True:
            b0, b1 = self._read(2)
            opcode, length = b0 & 0x0F, b1 & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(length)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x8:
                return
            if opcode == 0x9:
                self._send(0xA, payload[:125])
                continue
            if opcode in (0x1, 0x2):
                message_opcode, fragments = opcode, [payload]
            elif opcode == 0x0:
                fragments.append(payload)
            else:
                continue
            if b0 & 0x80 and message_opcode == 0x1:
                yield json.loads(b"".join(fragments).decode("utf-8"))

    def run(self):
        try:
            for message in self.messages():
                self.show(message.get("type"), message.get("data") or {})
        except Exception:  # noqa: BLE001 - progress is a nicety; /history polling decides the outcome
            pass

    def show(self, kind, data):
        if self.prompt_id is None or data.get("prompt_id") not in (None, self.prompt_id):
            return
        if kind == "execution_start":
            log("  started")
        elif kind == "execution_cached" and data.get("nodes"):
            log(f"  cached: {', '.join(self.describe(n) for n in data['nodes'])}")
        elif kind == "executing" and data.get("node") is not None:
            log(f"  running {self.describe(data['node'])}")
        elif kind == "progress":
            value, total = data.get("value") or 0, data.get("max") or 1
            filled = round(BAR * value / total)
            line = f"    {self.describe(data.get('node'))} [{'#' * filled}{'.' * (BAR - filled)}] {value}/{total}"
            if line != self._last:
                if sys.stdout.isatty():  # one bar, redrawn in place; a log file gets a line per step
                    print("\r" + line, end="\n" if value >= total else "", flush=True)
                else:
                    log(line)
                self._last = line

    def describe(self, node_id):
        title = self.titles.get(str(node_id))
        return f"node {node_id} ({title})" if title else f"node {node_id}"

    def close(self):
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
                self.sock.close()
            except OSError:
                pass


# ------------------------------------------------------------------------------------- local server

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_base(base):
    for sub in ("custom_nodes", "models/checkpoints", "models/animatediff_models", "models/animatediff_motion_lora",
                "models/controlnet", "input", "output"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    link = os.path.join(base, "custom_nodes", PACK_LINK)
    if os.path.islink(link) and os.path.realpath(link) != os.path.realpath(REPO):
        os.remove(link)
    if not os.path.lexists(link):
        os.symlink(REPO, link, target_is_directory=True)


class LocalServer:
    def __init__(self, base, port=None, startup_timeout=300):
        self.base = base
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        self.log_path = os.path.join(base, "comfyui.log")
        self.proc = None

    def start(self):
        comfy = comfyui_path.locate()
        if not comfyui_path.is_comfyui(comfy):
            raise Failed(f"no ComfyUI at {comfy}: run scripts/setup.sh (or set COMFYUI_PATH)")
        prepare_base(self.base)
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", self.base, "--disable-api-nodes", "--database-url", "sqlite:///:memory:"]
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        log(f"Starting ComfyUI ({comfy}) on {self.url}, base directory {self.base}")
        log(f"  log: {self.log_path}")
        self._log = open(self.log_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen(cmd, cwd=comfy, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        client = Client(self.url)
        start = time.monotonic()
        while not client.ready():
            if self.proc.poll() is not None:
                raise Failed(f"ComfyUI exited with status {self.proc.returncode} while starting:\n"
                             + self.log_tail())
            if time.monotonic() - start > self.startup_timeout:
                raise Failed(f"ComfyUI did not answer within {self.startup_timeout}s:\n" + self.log_tail())
            time.sleep(0.5)
        log(f"  up after {time.monotonic() - start:.1f}s")
        return client

    def log_tail(self, lines=40):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def pack_import_error(self):
        """The log's lines about this pack failing to import, if any."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            return ""
        marker = "Traceback"
        chunks = [c for c in text.split(marker)[1:] if PACK_LINK in c]
        if not chunks:
            return ""
        lines = []
        for line in (marker + chunks[-1]).splitlines():
            if not line.strip() and lines and not lines[-1].startswith((" ", marker)):
                break  # the blank line after the exception line ends the traceback
            lines.append(line)
        cannot = [line for line in text.splitlines() if line.startswith("Cannot import") and PACK_LINK in line]
        return "\n".join([line for line in lines if line.strip()] + cannot[-1:])

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        log("Stopped ComfyUI.")


# ------------------------------------------------------------------------------- stand-in weights

def _load_record(base):
    try:
        with open(os.path.join(base, RANDOM_WEIGHTS_RECORD), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _stamp(path):
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def is_stand_in(base, path):
    return _load_record(base).get(os.path.relpath(path, base)) == _stamp(path)


def write_stand_in(builders, class_type, path):
    """A random-weight file for `class_type`'s input at `path`; they all fit the stand-in checkpoint (SD1.5 block
    structure at 320 channels on every level)."""
    if class_type == "CheckpointLoaderSimple":
        builders.write_sd15_checkpoint(path, layout="animatediff")
    elif class_type == "AnimateDiffLoadMotionModule":
        builders.save_file(builders.motion_module_sd("v2", channels=(320, 320, 320, 320)), path)
    elif class_type == "AnimateDiffLoadMotionLoRA":
        builders.save_file(builders.motion_lora_sd((320, 320, 320, 320), rank=4), path)
    elif class_type == "AnimateDiffApplyDomainAdapter":
        builders.save_file(builders.v3_adapter_sd_for_ad_layout(), path)
    elif class_type == "ControlNetLoader":
        builders.save_file(builders.controlnet_sd(), path)
    elif class_type == "AnimateDiffLoadSparseCtrl":
        builders.save_file(builders.sparsectrl_sd((320, 320, 320, 320), dtype=builders.torch.float16), path)
    elif class_type == "SparseCtrlKeyFrames":  # a Load Image that feeds SparseCtrl: two key frames
        builders.save_hint_frames(path, 2, 64, 64)
    elif class_type == "LoadVideo":  # a vid2vid workflow's input video: a square crossing the picture
        frames, width, height, fps = STAND_IN_VIDEO
        builders.write_video(path, builders.moving_square_frames(frames, height, width), fps)
    elif class_type == "LoadImageMask":  # a motion strength mask: 0 at the left edge to 1 at the right
        from PIL import Image
        Image.linear_gradient("L").rotate(90).save(path)
    else:  # LoadImage: 48 frames, an animated image (ControlNet hint frames, or a trainer's reference video)
        builders.save_hint_frames(path, 48, 64, 64)


def write_stand_ins(base, missing):
    """Write random-weight stand-ins for the missing files, {path: class_type}; returns the paths written."""
    if not missing:
        return []
    sys.path.insert(0, os.path.join(REPO, "tests"))
    try:
        import builders
    except ImportError as e:
        raise Failed(f"cannot make stand-in weights: tests/builders.py did not import ({e})") from None
    record = _load_record(base)
    for path, class_type in missing.items():
        log(f"Writing random-weight stand-in {show(path)} ...")
        start = time.monotonic()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        partial = path + ".partial" + os.path.splitext(path)[1]
        write_stand_in(builders, class_type, partial)
        os.replace(partial, path)
        record[os.path.relpath(path, base)] = _stamp(path)
        log(f"  done in {time.monotonic() - start:.1f}s")
    with open(os.path.join(base, RANDOM_WEIGHTS_RECORD), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    return list(missing)


# ------------------------------------------------------------------------------------------ errors

def format_prompt_error(answer, prompt):
    """ComfyUI's answer to a refused POST /prompt, one line per failing input."""
    error = answer.get("error") or {}
    if isinstance(error, str):
        error = {"message": error}
    lines = [f"ComfyUI refused the prompt: {error.get('message', 'unknown error')}"]
    if error.get("details"):
        lines.append(f"  {error['details']}")
    for node_id, info in (answer.get("node_errors") or {}).items():
        node = prompt.get(str(node_id), {})
        title = (node.get("_meta") or {}).get("title", "")
        lines.append(f"  node {node_id} {info.get('class_type', node.get('class_type', ''))} \"{title}\":")
        for e in info.get("errors", []):
            detail = f" ({e['details']})" if e.get("details") else ""
            lines.append(f"    - {e.get('message', e)}{detail}")
    return "\n".join(lines)


def format_execution_error(entry, prompt):
    lines = []
    for kind, data in (entry.get("status") or {}).get("messages", []):
        if kind == "execution_error":
            node_id = data.get("node_id")
            title = (prompt.get(str(node_id), {}).get("_meta") or {}).get("title", "")
            exception = (data.get("exception_type") or "").rsplit(".", 1)[-1]
            lines.append(f"ComfyUI failed in node {node_id} {data.get('node_type', '')} \"{title}\": "
                         f"{exception}: {(data.get('exception_message') or '').strip()}")
            traceback = [line for line in "".join(data.get("traceback") or []).rstrip().splitlines()
                         if line.strip(" ^~")]  # without the ^^^ underlines
            if traceback:
                lines.append("  traceback (last lines):")
                lines += ["    " + line for line in traceback[-8:]]
        elif kind == "execution_interrupted":
            lines.append(f"ComfyUI interrupted the prompt in node {data.get('node_id')}")
    return "\n".join(lines) or f"ComfyUI reported: {json.dumps(entry.get('status'))}"


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


def cancel(client, prompt_id):
    """Take the prompt off the queue, or stop it when it is running."""
    try:
        client.post_json("/queue", {"delete": [prompt_id]}, timeout=10)
        client.post_json("/interrupt", {"prompt_id": prompt_id}, timeout=10)
    except OSError:
        pass


def run_prompt(client, prompt, workflow, timeout):
    client_id = uuid.uuid4().hex
    titles = {k: (v.get("_meta") or {}).get("title", v["class_type"]) for k, v in prompt.items()}
    listener = ProgressListener(client.url, client_id, titles)
    try:
        listener.connect()
        listener.start()
    except OSError:
        listener = None
    status, answer = client.post_json("/prompt", {"prompt": prompt, "client_id": client_id,
                                                  "extra_data": {"extra_pnginfo": {"workflow": workflow}}})
    if status != 200 or answer.get("node_errors"):
        raise Failed(format_prompt_error(answer, prompt))
    prompt_id = answer["prompt_id"]
    if listener:
        listener.prompt_id = prompt_id
    log(f"Queued prompt {prompt_id}")
    start = last_note = time.monotonic()
    try:
        while True:
            entry = client.get_json("/history/" + prompt_id).get(prompt_id)
            if entry and (entry.get("status") or {}).get("completed") is not None \
                    and entry["status"].get("status_str") in ("success", "error"):
                break
            if entry and entry.get("outputs") and not entry.get("status"):
                break
            now = time.monotonic()
            if now - start > timeout:
                cancel(client, prompt_id)
                raise Failed(f"gave up after {timeout}s (the prompt was cancelled)")
            if listener is None and now - last_note > 15:
                log(f"  ... running, {now - start:.0f}s")
                last_note = now
            time.sleep(0.5)
    except KeyboardInterrupt:
        cancel(client, prompt_id)
        raise
    finally:
        if listener:
            listener.close()
    elapsed = time.monotonic() - start
    if entry.get("status", {}).get("status_str") == "error":
        raise Failed(format_execution_error(entry, prompt))
    log(f"Finished in {elapsed:.1f}s")
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
                     "https://huggingface.co/guoyww/animatediff (mm_sd_v15_v2.ckpt).")
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
    with open(args.workflow, encoding="utf-8") as f:
        workflow = json.load(f)
    server = None
    try:
        if args.server:
            client = Client(args.server)
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
