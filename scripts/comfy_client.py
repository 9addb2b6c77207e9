"""Talking to a ComfyUI server, standard library only: the HTTP client, the websocket progress listener, ComfyUI
started as a subprocess on a base directory with this pack linked in, and ComfyUI's errors in words.

Shared by the headless runner (scripts/txt2vid.py) and the tests (tests/conftest.py's comfy_server).
"""
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

PACK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK_LINK = "comfyui-animatediff"   # name of the pack's link in <base>/custom_nodes/
BAR = 30  # characters of the sampling progress bar


def log(*parts):
    print(*parts, flush=True)


# ------------------------------------------------------------------------------------------------ HTTP

class Client:
    """ComfyUI's HTTP API at `url`."""

    def __init__(self, url):
        self.url = url.rstrip("/")

    def _open(self, path, data=None, timeout=60):
        headers = {"Content-Type": "application/json"} if data is not None else {}
        body = json.dumps(data).encode("utf-8") if data is not None else None
        request = urllib.request.Request(self.url + path, data=body, headers=headers)
        return urllib.request.urlopen(request, timeout=timeout)

    def get_json(self, path, timeout=60):
        """GET `path` as JSON (an HTTP error status raises urllib.error.HTTPError)."""
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

    def queue(self, prompt, client_id, extra_data=None):
        """POST /prompt: (status, answer); answer["prompt_id"] when it was queued, else ComfyUI's errors."""
        return self.post_json("/prompt", {"prompt": prompt, "client_id": client_id, "extra_data": extra_data or {}})

    def wait(self, prompt_id, timeout, poll=0.5, check=None):
        """Poll /history/<prompt_id> until the prompt has finished (ran or failed); returns its history entry.
        check(), when given, is called on every poll (it may raise). TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self.get_json("/history/" + prompt_id).get(prompt_id)
            if entry is not None and ((entry.get("status") or {}).get("status_str") in ("success", "error")
                                      or not entry.get("status")):
                return entry
            if check is not None:
                check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} not done after {timeout:.0f} s")
            time.sleep(poll)

    def cancel(self, prompt_id):
        """Take the prompt off the queue, or stop it when it is running (quietly, as far as the server answers)."""
        try:
            self.post_json("/queue", {"delete": [prompt_id]}, timeout=10)
            self.post_json("/interrupt", {"prompt_id": prompt_id}, timeout=10)
        except OSError:
            pass

    def download(self, file_info, dest_dir):
        """A file ComfyUI saved (an item of a node's outputs) into dest_dir; returns its path."""
        query = urllib.parse.urlencode({k: file_info.get(k, "") for k in ("filename", "subfolder", "type")})
        os.makedirs(dest_dir, exist_ok=True)
        path = os.path.join(dest_dir, os.path.basename(file_info["filename"]))
        with self._open("/view?" + query, timeout=300) as r, open(path, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
        return path

    def ready(self, timeout=5):
        try:
            self.get_json("/system_stats", timeout=timeout)
            return True
        except (OSError, ValueError):
            return False


class ProgressListener(threading.Thread):
    """Prints the progress ComfyUI reports on its websocket (/ws?clientId=...) for one prompt (`show`; a subclass
    may record instead). A minimal RFC 6455 client: reads server frames, answers pings; anything unexpected just
    ends the listener (the result is still picked up by polling /history)."""

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


# ------------------------------------------------------------------------------------- a local server

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_base(base, folders):
    """The base directory's `folders` and this pack linked as custom_nodes/comfyui-animatediff (a link to
    another checkout is replaced)."""
    for sub in ("custom_nodes",) + tuple(folders):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    link = os.path.join(base, "custom_nodes", PACK_LINK)
    if os.path.islink(link) and os.path.realpath(link) != os.path.realpath(PACK):
        os.remove(link)
    if not os.path.lexists(link):
        os.symlink(PACK, link, target_is_directory=True)


class ServerError(RuntimeError):
    """ComfyUI did not start: it exited, or did not answer in time (the message ends with its log's tail)."""


class Server:
    """ComfyUI's main.py as a subprocess: --cpu on 127.0.0.1 (a free port unless given), `base` as its base
    directory, no API nodes, an in-memory database; its output goes to `log_path` (default <base>/comfyui.log)."""

    def __init__(self, comfyui, base, port=None, log_path=None, extra_args=()):
        self.comfyui, self.base = comfyui, base
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or os.path.join(base, "comfyui.log")
        self.extra_args = list(extra_args)
        self.proc = self._log = None
        self.startup_seconds = None

    def start(self, timeout=300, env=None):
        """Start ComfyUI and wait until it answers; returns a Client for it. OMP_NUM_THREADS defaults to 1;
        `env` overrides the environment. ServerError (ComfyUI stopped again) when it does not come up."""
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", self.base, "--disable-api-nodes", "--database-url", "sqlite:///:memory:",
               *self.extra_args]
        env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._log = open(self.log_path, "wb")
        start = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=self.comfyui, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        client = Client(self.url)
        try:
            while not client.ready(timeout=2):
                if self.proc.poll() is not None:
                    raise ServerError(f"ComfyUI exited with status {self.proc.returncode} while starting:\n"
                                      + self.log_tail())
                if time.monotonic() - start > timeout:
                    raise ServerError(f"ComfyUI did not answer within {timeout:.0f} s:\n" + self.log_tail())
                time.sleep(0.25)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - start
        return client

    def log_tail(self, lines=60):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace=10.0):
        """Terminate ComfyUI (kill it after `grace` seconds); True when it was running."""
        running = self.proc is not None and self.proc.poll() is None
        if running:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
        return running


# ------------------------------------------------------------------------------------------ errors

def _node(prompt, node_id, class_type):
    """'node 7 KSampler "title"' (the title when the prompt gives one)."""
    title = ((prompt or {}).get(str(node_id), {}).get("_meta") or {}).get("title")
    return f"node {node_id} {class_type}" + (f' "{title}"' if title else "")


def prompt_error(answer, prompt=None):
    """ComfyUI's answer to a refused POST /prompt ({"error": ..., "node_errors": ...}, as execution.validate_prompt
    returns them too) in words, one line per failing input; node titles from `prompt` when given."""
    error = answer.get("error") or {}
    if isinstance(error, str):
        error = {"message": error}
    lines = [f"ComfyUI refused the prompt: {error.get('message', 'unknown error')}"]
    if error.get("details"):
        lines.append(f"  {error['details']}")
    for node_id, info in (answer.get("node_errors") or {}).items():
        class_type = info.get("class_type") or (prompt or {}).get(str(node_id), {}).get("class_type", "")
        lines.append(f"  {_node(prompt, node_id, class_type)}:")
        for e in info.get("errors", []):
            detail = f" ({e['details']})" if e.get("details") else ""
            lines.append(f"    - {e.get('message', e)}{detail}")
    return "\n".join(lines)


def execution_error(data, prompt=None):
    """An execution_error message (in /history's status, on the websocket, in PromptExecutor.status_messages) in
    words: the node, the exception, the traceback's last lines."""
    exception = (data.get("exception_type") or "").rsplit(".", 1)[-1]
    lines = [f"ComfyUI failed in {_node(prompt, data.get('node_id'), data.get('node_type', ''))}: "
             f"{exception}: {(data.get('exception_message') or '').strip()}"]
    traceback = [line for line in "".join(data.get("traceback") or []).rstrip().splitlines()
                 if line.strip(" ^~")]  # without the ^^^ underlines
    if traceback:
        lines.append("  traceback (last lines):")
        lines += ["    " + line for line in traceback[-8:]]
    return "\n".join(lines)


def history_error(entry, prompt=None):
    """Why a /history entry did not succeed, in words."""
    lines = []
    for kind, data in (entry.get("status") or {}).get("messages", []):
        if kind == "execution_error":
            lines.append(execution_error(data, prompt))
        elif kind == "execution_interrupted":
            lines.append(f"ComfyUI interrupted the prompt in node {data.get('node_id')}")
    return "\n".join(lines) or f"ComfyUI reported: {json.dumps(entry.get('status'))}"
