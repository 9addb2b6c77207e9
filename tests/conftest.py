"""Test harness: a real, unmodified ComfyUI with this pack installed the way a user installs it.

At import (before any test module, so tests may import comfy modules at their top):
  * OMP_NUM_THREADS=1 unless already set; scripts/ on sys.path (after everything else: the tests import
    comfy_client, comfy_models, weights, ... from there);
  * a base directory for the session (models/checkpoints, models/animatediff_models, custom_nodes, input,
    output, user, temp) with this repository symlinked as custom_nodes/comfyui-animatediff
    (scripts/comfy_client.py: prepare_base);
  * ComfyUI (scripts/comfyui_path.py: use_comfyui) first on sys.path and comfy.cli_args.args: cpu,
    base_directory, disable_api_nodes, before folder_paths / model code loads.
ComfyUI's nodes (built-in, comfy_extras and custom nodes, so this pack) load once, in the `comfy` fixture.

Fixtures: comfy, pack, pack_nodes, no_loaded_models, sd15_checkpoint, sd15_ad_checkpoint, comfy_server, tiny_sd15, tiny_sdxl.
Set COMFYUI_TEST_KEEP_BASE=1 to keep the base directory after the session (its path is logged).
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import asyncio
import collections
import json
import logging
import shutil
import sys
import tempfile
import time
import uuid

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(TESTS_DIR)
SCRIPTS_DIR = os.path.join(REPO_DIR, "scripts")
if SCRIPTS_DIR not in sys.path:
    sys.path.append(SCRIPTS_DIR)  # after everything else: scripts/ shadows no other module

import comfy_client  # noqa: E402
import comfyui_path  # noqa: E402

PACK_DIR_NAME = comfy_client.PACK_LINK

log = logging.getLogger("harness")

COMFYUI_DIR = comfyui_path.require()


BASE_PREFIX = "comfyui-test-base-"


def _remove_stale_base_dirs():
    """Base directories of sessions that were killed (their owner process is gone)."""
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        owner = os.path.join(tmp, name, ".owner-pid")
        if not name.startswith(BASE_PREFIX) or not os.path.isfile(owner):
            continue
        try:
            with open(owner) as f:
                os.kill(int(f.read().strip()), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
        except (OSError, ValueError):
            pass


def _make_base_dir():
    _remove_stale_base_dirs()
    base = tempfile.mkdtemp(prefix=BASE_PREFIX)
    with open(os.path.join(base, ".owner-pid"), "w") as f:
        f.write(str(os.getpid()))
    comfy_client.prepare_base(base, ("models/checkpoints", "models/animatediff_models", "models/loras", "input",
                                     "output", "user", "temp"))
    return base


BASE_DIR = _make_base_dir()
PACK_MODULE_PATH = os.path.join(BASE_DIR, "custom_nodes", PACK_DIR_NAME)
# nodes.load_custom_node registers a package folder under this sys.modules name
PACK_SYS_MODULE = PACK_MODULE_PATH.replace(".", "_x_")

# The pack is reachable only as ComfyUI loads it (comfy.pack, comfy.pack.nodes, ...), never as top-level
# `nodes` / `motion_modules` from the repository root, exactly as in a user's install.
sys.path[:] = [p for p in sys.path
               if os.path.realpath(p or os.getcwd()) not in {os.path.realpath(d) for d in (REPO_DIR, COMFYUI_DIR, TESTS_DIR)}]
sys.path.insert(0, TESTS_DIR)
# ComfyUI first on sys.path (its `nodes`, `utils`, ... must win over anything else), and its arguments
# (argument parsing is off unless main.py enables it)
comfyui_path.use_comfyui(cpu=True, base_directory=BASE_DIR, disable_auto_launch=True, auto_launch=False)

import torch  # noqa: E402

torch.set_num_threads(1)

import folder_paths  # noqa: E402

assert folder_paths.base_path == os.path.abspath(BASE_DIR), "folder_paths was imported before conftest set args"
folder_paths.set_temp_directory(os.path.join(BASE_DIR, "temp"))

import comfy_models  # noqa: E402  (imports comfy.model_management: after args)


class _RepoRootIsNotATestPackage:
    """The repository root is the pack's package (it has an __init__.py). pytest would collect it as a
    Package and import that __init__.py itself, under the folder's name (a second copy of the pack beside
    the one ComfyUI loads, with the folder's parent put on sys.path). Collect it as a plain directory."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path, parent):
        if os.path.realpath(path) == os.path.realpath(REPO_DIR) and hasattr(pytest, "Dir"):
            return pytest.Dir.from_parent(parent, path=path)
        return None


def pytest_configure(config):
    # registered as a plugin: a conftest's own collection hooks only see paths below tests/
    config.pluginmanager.register(_RepoRootIsNotATestPackage(), "repo-root-is-not-a-test-package")


def pytest_unconfigure(config):
    if os.environ.get("COMFYUI_TEST_KEEP_BASE"):
        print(f"\nComfyUI test base directory kept: {BASE_DIR}")
        return
    shutil.rmtree(BASE_DIR, ignore_errors=True)


# ------------------------------------------------------------------------------------------ errors

class PromptFailed(Exception):
    """A prompt ComfyUI refused or failed to run; str() is ComfyUI's error in words, as the headless runner shows
    it (scripts/comfy_client.py: execution_error / prompt_error).

    message: ComfyUI's text (execution_error's exception_message, stripped, or the validation error in words:
    its message, details and each node's errors); node_id / node_type: the failing node (None when not
    attributable); exception_type: ComfyUI's exception_type (e.g. "ValueError"), or "validation" /
    "interrupted" / ...; details: the raw dict ComfyUI sent (execution_error message, or {"error": ...,
    "node_errors": ...}).
    """

    def __init__(self, message, node_id=None, node_type=None, exception_type=None, details=None, text=None):
        self.message = message
        self.node_id = node_id
        self.node_type = node_type
        self.exception_type = exception_type
        self.details = details or {}
        where = f"{node_type} (node {node_id})" if node_id is not None else "prompt"
        super().__init__(text or f"{where} failed: {exception_type}: {message}")

    @property
    def traceback(self):
        return "".join(self.details.get("traceback", []))

    @classmethod
    def from_execution_error(cls, mes, prompt=None):
        return cls((mes.get("exception_message") or "").strip(), mes.get("node_id"), mes.get("node_type"),
                   mes.get("exception_type"), mes, text=comfy_client.execution_error(mes, prompt))

    @classmethod
    def from_validation(cls, error, node_errors, prompt=None):
        answer = {"error": error or {}, "node_errors": node_errors or {}}
        node_id, info = next(iter(answer["node_errors"].items()), (None, {}))
        message = comfy_client.prompt_error(answer, prompt)
        return cls(message, node_id, info.get("class_type"), "validation", answer, text=message)


class PackNotLoaded(RuntimeError):
    pass


# ------------------------------------------------------------------------------ in-process ComfyUI

class RecordingServer:
    """Stand-in for server.PromptServer as PromptExecutor and the progress handler use it.

    execution.py reads/writes client_id and last_node_id and calls send_sync(event, data, sid);
    comfy_execution.progress.WebUIProgressHandler calls send_sync and reads sockets_metadata (previews);
    main.prompt_worker sets last_prompt_id; nodes may call send_progress_text and queue_updated.
    Every message is recorded in `messages` as (event, data, sid).
    """

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}
        self.messages = []
        try:
            from aiohttp import web
            self.routes = web.RouteTableDef()  # packs that register HTTP routes at import time
        except ImportError:  # pragma: no cover
            self.routes = None

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data, sid))

    def send_progress_text(self, text, node_id, sid=None):
        self.messages.append(("progress_text", {"node_id": node_id, "text": text}, sid))

    def queue_updated(self):
        pass

    def events(self, name):
        return [data for event, data, _ in self.messages if event == name]


class RunResult(dict):
    """Outputs per node id, as ComfyUI's history holds them ({node_id: {"images": [...], ...}}).

    prompt_id; node_errors: validation errors of output nodes left out (the rest ran, as on the server);
    messages: what the server was sent, [(event, data, sid)]; status_messages: the
    executor's [(event, data)] (what history's status.messages holds); cached: node ids served from the
    executor's cache; executor: the PromptExecutor (its caches still hold this prompt's node outputs).
    """

    def __init__(self, outputs, prompt_id, executor, server, node_errors=None):
        super().__init__(outputs)
        self.prompt_id = prompt_id
        self.node_errors = node_errors or {}  # validation errors of outputs that were left out
        self.executor = executor
        self.messages = list(server.messages)
        self.status_messages = list(executor.status_messages)
        cached = [d for e, d in self.status_messages if e == "execution_cached"]
        self.cached = list(cached[0]["nodes"]) if cached else []
        self.executed = [d["node"] for e, d, _ in self.messages if e == "executing" and d.get("node") is not None]

    def node_outputs(self, node_id):
        """Raw return values of any node of the prompt: one list per output slot (one item per call)."""
        entry = self.executor.caches.outputs.get(str(node_id))
        if asyncio.iscoroutine(entry):  # ComfyUI 0.33's caches are async
            entry = asyncio.run(entry)
        if entry is None:
            raise KeyError(f"node {node_id} has no cached outputs")
        return entry.outputs

    def output(self, node_id, slot=0):
        """Raw value of one output slot of a node (the single value, or the list for list outputs)."""
        values = self.node_outputs(node_id)[slot]
        return values[0] if len(values) == 1 else values


Validation = collections.namedtuple("Validation", "ok error outputs node_errors")


class Executor:
    """A PromptExecutor with its stand-in server, reusable across runs to share the node cache on purpose."""

    def __init__(self, execution, cache_type=None):
        self.server = RecordingServer()
        cache_type = cache_type if cache_type is not None else execution.CacheType.CLASSIC
        cache_args = {"lru": 0, "ram": 0, "ram_inactive": 0}  # (0.33 reads ram_inactive too)
        self.executor = execution.PromptExecutor(self.server, cache_type=cache_type, cache_args=cache_args)


class ComfyHarness:
    """The in-process ComfyUI (see module docstring). Built once per session by the `comfy` fixture."""

    PromptFailed = PromptFailed

    def __init__(self):
        self.path = COMFYUI_DIR
        self.base = BASE_DIR
        self.models = os.path.join(BASE_DIR, "models")
        self.input_dir = os.path.join(BASE_DIR, "input")
        self.output_dir = os.path.join(BASE_DIR, "output")
        self.temp_dir = os.path.join(BASE_DIR, "temp")
        self.pack_path = PACK_MODULE_PATH
        self.pack_log = []

        import utils.install_util  # noqa: F401  (main.py imports it before nodes)
        import nodes
        import execution
        self.nodes = nodes
        self.execution = execution
        self._install_prompt_server()

        handler = _ListHandler(self.pack_log, PACK_DIR_NAME)
        root = logging.getLogger()
        root.addHandler(handler)
        t0 = time.perf_counter()
        try:
            asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        finally:
            root.removeHandler(handler)
        self.init_seconds = time.perf_counter() - t0

    def _install_prompt_server(self):
        # Nodes reach the server through server.PromptServer.instance; the real one needs an event loop and
        # an HTTP app, so the recording stand-in takes its place (the HTTP server is the comfy_server fixture).
        try:
            import server
        except Exception as e:  # pragma: no cover
            log.warning("server module not importable (%s): PromptServer.instance not set", e)
            return
        if getattr(server.PromptServer, "instance", None) is None:
            server.PromptServer.instance = RecordingServer()

    # -- the pack
    @property
    def pack_loaded(self):
        return PACK_DIR_NAME in self.nodes.LOADED_MODULE_DIRS

    @property
    def pack(self):
        """The pack's package module as ComfyUI loaded it (PackNotLoaded, with ComfyUI's log, if it failed)."""
        if not self.pack_loaded:
            raise PackNotLoaded(f"ComfyUI did not load the pack from {self.pack_path}:\n" + "\n".join(self.pack_log))
        return sys.modules[PACK_SYS_MODULE]

    def node_class(self, class_type):
        return self.nodes.NODE_CLASS_MAPPINGS[class_type]

    # -- prompts
    def validate(self, prompt, partial_execution_list=None, prompt_id=None):
        """ComfyUI's own validation (execution.validate_prompt is a coroutine in 0.3.75)."""
        ok, error, outputs, node_errors = asyncio.run(
            self.execution.validate_prompt(prompt_id or str(uuid.uuid4()), prompt, partial_execution_list))
        return Validation(ok, error, outputs, node_errors)

    def executor(self, cache_type=None):
        """A PromptExecutor to pass to several run() calls that are meant to share its cache."""
        return Executor(self.execution, cache_type)

    def run(self, prompt, executor=None, extra_data=None, client_id="pytest", validate=True, outputs=None):
        """Validate and execute an API-format prompt as the server's prompt worker would; returns RunResult.

        Each call uses a fresh prompt id and, unless `executor` (from self.executor()) is given, a fresh
        PromptExecutor, so no node outputs are cached between calls. Loaded models stay in
        comfy.model_management as they would in a running ComfyUI. Raises PromptFailed.
        outputs: node ids to execute. With validation they pick among the output nodes (ComfyUI's
        partial_execution_targets); validate=False skips execution.validate_prompt and executes `outputs`
        (default: every node), so a prompt without an output node can run and be inspected with
        RunResult.output().
        """
        prompt = json.loads(json.dumps(prompt))  # as it arrives over HTTP: plain JSON, string keys
        prompt_id = str(uuid.uuid4())
        given = outputs is not None
        outputs, node_errors = [str(o) for o in (outputs if given else prompt)], {}
        if validate:
            v = self.validate(prompt, partial_execution_list=outputs if given else None,
                              prompt_id=prompt_id)
            if not v.ok:
                raise PromptFailed.from_validation(v.error, v.node_errors, prompt)
            outputs, node_errors = v.outputs, v.node_errors
        ex = executor or self.executor()
        ex.server.messages.clear()
        extra = dict(extra_data or {})
        if client_id is not None:
            extra["client_id"] = client_id
        extra["create_time"] = int(time.time() * 1000)
        ex.server.last_prompt_id = prompt_id
        ex.executor.execute(prompt, prompt_id, extra, outputs)
        status = ex.executor.status_messages
        errors = [d for e, d in status if e == "execution_error"]
        if errors:
            raise PromptFailed.from_execution_error(errors[-1], prompt)
        interrupted = [d for e, d in status if e == "execution_interrupted"]
        if interrupted:
            d = interrupted[-1]
            raise PromptFailed("interrupted", d.get("node_id"), d.get("node_type"), "interrupted", d)
        if not ex.executor.success or not any(e == "execution_success" for e, _ in status):
            raise PromptFailed("execution did not finish", exception_type="unknown",
                               details={"status_messages": status})
        return RunResult(ex.executor.history_result["outputs"], prompt_id, ex.executor, ex.server, node_errors)


class _ListHandler(logging.Handler):
    def __init__(self, sink, needle):
        super().__init__(logging.WARNING)
        self.sink, self.needle = sink, needle

    def emit(self, record):
        msg = record.getMessage()
        if self.needle in msg:
            self.sink.append(msg)


_harness = None


def get_harness():
    """The session's ComfyHarness (built on first use; also usable outside fixtures)."""
    global _harness
    if _harness is None:
        _harness = ComfyHarness()
        log.info("ComfyUI nodes initialised in %.1f s; pack loaded: %s", _harness.init_seconds, _harness.pack_loaded)
    return _harness


@pytest.fixture(scope="session")
def comfy():
    return get_harness()


@pytest.fixture(scope="session")
def pack_nodes(pack):
    """The pack's `nodes` package, as ComfyUI loaded it (`pack_nodes.motion`, `pack_nodes.lora`, ...)."""
    return pack.nodes


@pytest.fixture
def no_loaded_models():
    """Tests that load models themselves start and end with nothing loaded (use with pytest.mark.usefixtures)."""
    import comfy.model_management
    comfy.model_management.unload_all_models()
    yield
    comfy.model_management.unload_all_models()


@pytest.fixture(scope="session")
def pack(comfy):
    """The pack's module as ComfyUI loaded it; fails the test with ComfyUI's import log if it did not load."""
    try:
        return comfy.pack
    except PackNotLoaded as e:
        pytest.fail(str(e), pytrace=False)


# --------------------------------------------------------------------------------------- model files

def _write_checkpoint(name, layout):
    import builders
    path = os.path.join(BASE_DIR, "models", "checkpoints", name)
    t0 = time.perf_counter()
    builders.write_sd15_checkpoint(path + ".partial", seed=0, layout=layout)
    os.replace(path + ".partial", path)
    log.info("wrote %s (%s layout, %.0f MB) in %.1f s", name, layout, os.path.getsize(path) / 2 ** 20,
             time.perf_counter() - t0)
    return name


@pytest.fixture(scope="session")
def sd15_checkpoint():
    """File name (in models/checkpoints) of a tiny SD1.5 checkpoint: builders.write_sd15_checkpoint "minimal"."""
    return _write_checkpoint("tiny_sd15.safetensors", "minimal")


@pytest.fixture(scope="session")
def sd15_ad_checkpoint():
    """File name of an SD1.5 checkpoint with SD1.5's block structure at 320 channels on every level
    (builders.write_sd15_checkpoint "animatediff"): motion modules with channels (320,) * 4 fit it."""
    return _write_checkpoint("tiny_sd15_ad.safetensors", "animatediff")


@pytest.fixture
def tiny_sd15():
    """A fresh tiny SD1.5 ModelPatcher (comfy_models.tiny_sd15_model defaults: channels (32, 64, 64, 64))."""
    return comfy_models.tiny_sd15_model()


@pytest.fixture
def tiny_sdxl():
    """A fresh tiny SDXL ModelPatcher (comfy_models.tiny_sdxl_model defaults: channels (32, 64, 64))."""
    return comfy_models.tiny_sdxl_model()


# ------------------------------------------------------------------------------- real HTTP server

EXTRA_MODELS = os.path.join(BASE_DIR, "extra_models")


def write_extra_model_paths():
    """An extra_model_paths.yaml as users of other AnimateDiff packs have: animatediff_models kept elsewhere."""
    os.makedirs(os.path.join(EXTRA_MODELS, "animatediff_models"), exist_ok=True)
    path = os.path.join(BASE_DIR, "extra_model_paths.yaml")
    with open(path, "w") as f:
        f.write(f"elsewhere:\n    base_path: {EXTRA_MODELS}\n    animatediff_models: animatediff_models\n")
    return path


class ComfyServer(comfy_client.Server):
    """ComfyUI's main.py as a subprocess on the session's base directory (see the comfy_server fixture), started by
    the runner's starter (scripts/comfy_client.py), talked to through its HTTP client (`client`)."""

    def __init__(self, startup_timeout=120.0):
        port = comfy_client.free_port()
        super().__init__(COMFYUI_DIR, BASE_DIR, port, os.path.join(BASE_DIR, f"server-{port}.log"),
                         ["--extra-model-paths-config", write_extra_model_paths()])
        self.client_id = str(uuid.uuid4())
        self.client = self.start(startup_timeout, env={"OMP_NUM_THREADS": "1"})

    def get(self, route, timeout=30):
        return self.client.get_json(route, timeout=timeout)

    def _alive(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"ComfyUI server died:\n{self.log_tail()}")

    def run(self, prompt, timeout=120.0):
        """POST /prompt, poll /history/<id> until done; returns the outputs per node id. Raises PromptFailed."""
        status, answer = self.client.queue(prompt, self.client_id)
        if status != 200:
            raise PromptFailed.from_validation(answer.get("error"), answer.get("node_errors"), prompt)
        try:
            item = self.client.wait(answer["prompt_id"], timeout, poll=0.1, check=self._alive)
        except TimeoutError as e:
            raise TimeoutError(f"{e}:\n{self.log_tail()}") from None
        status = item.get("status") or {}
        if status.get("status_str") != "success":
            for event, data in status.get("messages", []):
                if event == "execution_error":
                    raise PromptFailed.from_execution_error(data, prompt)
            raise PromptFailed(f"prompt ended with status {status!r}", exception_type=status.get("status_str"),
                               details=item)
        return item["outputs"]


@pytest.fixture(scope="session")
def comfy_server():
    """The real ComfyUI server (main.py --cpu ... --base-directory <the session base>), started on first use.

    Yields an object with `url`, `run(prompt, timeout=120)`, `get(route)`, `log_tail()`; stopped at the end
    of the session (terminate, then kill after 10 s). It also reads an extra_model_paths.yaml that adds
    EXTRA_MODELS/animatediff_models."""
    srv = ComfyServer()
    log.info("ComfyUI server on %s ready in %.1f s", srv.url, srv.startup_seconds)
    yield srv
    srv.stop()
