"""Headless Chromium on ComfyUI's real frontend, through Playwright for Python.

The browser is Debian's `chromium` package (Playwright is only the driver: no browser of its own is
downloaded). Set CHROMIUM_PATH to use another Chromium binary.

    with launch() as browser:
        page = ComfyPage(browser, server_url)
        page.open()
        page.drop_workflow("txt2vid.json", text)       # a real `drop` event carrying the file
        page.set_widget(4, "width", 64)
        page.queue()                                     # clicks the Run button
        page.wait_for_output(9)
"""
import contextlib
import json
import os
import shutil
import time

INSTALL_HINT = (
    "headless Chromium is needed for the browser tests: install Debian's package with\n"
    "    apt-get update && apt-get install -y chromium\n"
    "and Playwright for Python into the venv with\n"
    "    .venv/bin/python -m pip install -r requirements-test.txt\n"
    "(never `playwright install`: the tests drive the system chromium; CHROMIUM_PATH overrides its path)")


def find_chromium():
    """Path of the Chromium binary to drive, or None."""
    path = os.environ.get("CHROMIUM_PATH")
    if path:
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


class BrowserMissing(RuntimeError):
    pass


@contextlib.contextmanager
def launch(headless=True):
    """A Playwright Browser on the system Chromium; raises BrowserMissing (with INSTALL_HINT) without one."""
    executable = find_chromium()
    if executable is None:
        where = f"CHROMIUM_PATH={os.environ['CHROMIUM_PATH']!r} is not an executable" \
            if os.environ.get("CHROMIUM_PATH") else "no `chromium` on PATH"
        raise BrowserMissing(f"{where}.\n{INSTALL_HINT}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        raise BrowserMissing(f"Playwright for Python is not installed ({e}).\n{INSTALL_HINT}") from None
    with sync_playwright() as p:
        # --no-sandbox: the tests run as root in CI; the software GL keeps the canvas working headless.
        browser = p.chromium.launch(executable_path=executable, headless=headless,
                                    args=["--no-sandbox", "--disable-dev-shm-usage", "--use-gl=swiftshader",
                                          "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()


# Installed in the page before the frontend's own scripts run: records what the frontend reports while it
# loads a workflow (its missing-node and missing-model dialogs, uncaught errors) and what the server sends.
_INIT_SCRIPT = r"""
window.__test = {missingNodes: [], missingNodesDialog: [], missingModelsDialog: [], pageErrors: [], loaded: 0,
                 events: []};
// (a ResizeObserver that could not deliver everything within one frame is the browser's notice, not an error)
window.addEventListener('error', e => /^ResizeObserver loop/.test(e.message) || window.__test.pageErrors.push(String(e.message || e)));
window.addEventListener('unhandledrejection', e => window.__test.pageErrors.push(String(e.reason && (e.reason.stack || e.reason))));
"""

# Once the app is up: wrap the dialogs the frontend opens for missing node types / models, register an
# extension whose afterConfigureGraph hook gets the list of missing types loadGraphData collected.
_INSTRUMENT = r"""
() => {
  const app = window.app, t = window.__test;
  if (t.instrumented) return;
  t.instrumented = true;
  const nodesDialog = app.showMissingNodesError.bind(app);
  app.showMissingNodesError = (types) => {
    t.missingNodesDialog.push(...types.map(x => typeof x === 'string' ? x : x.type));
    return nodesDialog(types);
  };
  if (app.showMissingModelsError) {  // frontend 1.32.9; 1.49.6 lists missing models in a side panel instead
    const modelsDialog = app.showMissingModelsError.bind(app);
    app.showMissingModelsError = (models, paths) => { t.missingModelsDialog.push(...models); return modelsDialog(models, paths); };
  }
  app.registerExtension({
    name: 'test.browser.recorder',
    async afterConfigureGraph(missing) {
      t.missingNodes.push(...(missing || []).map(x => typeof x === 'string' ? x : x.type));
      t.loaded += 1;
    },
  });
  for (const name of ['execution_start', 'execution_success', 'execution_error', 'execution_interrupted', 'executed'])
    app.api.addEventListener(name, ({detail}) => t.events.push([name, detail]));
}
"""

# A real drop event, as the OS sends when a file is dragged onto the page: a DataTransfer holding a File.
_DROP = r"""
async ([name, text]) => {
  const file = new File([text], name, {type: 'application/json', lastModified: Date.now()});
  const data = new DataTransfer();
  data.items.add(file);
  const target = document.querySelector('#graph-canvas') || document.body;
  const box = target.getBoundingClientRect();
  const at = {clientX: box.left + box.width / 2, clientY: box.top + box.height / 2};
  const init = {bubbles: true, cancelable: true, composed: true, dataTransfer: data, ...at};
  target.dispatchEvent(new DragEvent('dragenter', init));
  target.dispatchEvent(new DragEvent('dragover', init));
  return target.dispatchEvent(new DragEvent('drop', init));
}
"""

# Where the frontend tells the user what is wrong: its dialogs, and 1.49.6's error overlay (missing nodes).
DIALOGS = ".p-dialog, [role=dialog], [role=alertdialog], [data-testid=error-overlay]"

# The missing node types and models the frontend showed: its dialogs' arguments (1.32.9) and the active
# workflow's pendingWarnings (1.49.6, which surfaces them in an error overlay and a side panel instead).
_MISSING = r"""
() => {
  const t = window.__test, pending = window.app.extensionManager?.workflow?.activeWorkflow?.pendingWarnings ?? {};
  const name = x => typeof x === 'string' ? x : (x.type ?? x.name);
  return {nodes: t.missingNodes,
          nodes_dialog: [...t.missingNodesDialog, ...(pending.missingNodeTypes ?? []).map(name)],
          models_dialog: [...t.missingModelsDialog, ...(pending.missingModelCandidates ?? []).map(name)]};
}
"""

# Every node of the graph with its widgets as the frontend holds them.
_NODES = r"""
() => (window.app.rootGraph ?? window.app.graph).nodes.map(n => ({
  id: n.id, type: n.type, registered: n.type in LiteGraph.registered_node_types,
  has_errors: !!n.has_errors, mode: n.mode,
  widgets: (n.widgets || []).map(w => ({
    name: w.name, type: w.type, value: w.value, serialize: w.serialize !== false && w.options?.serialize !== false,
    options: Array.isArray(w.options?.values) ? w.options.values
             : (typeof w.options?.values === 'function' ? w.options.values(w, n) : null),
  })),
  widgets_values: n.serialize().widgets_values ?? null,
}))
"""

_SET_WIDGET = r"""
([id, name, value]) => {
  const node = (window.app.rootGraph ?? window.app.graph).getNodeById(id);
  if (!node) throw new Error(`no node ${id}`);
  const widget = (node.widgets || []).find(w => w.name === name);
  if (!widget) throw new Error(`node ${id} (${node.type}) has no widget ${name}: ${(node.widgets || []).map(w => w.name)}`);
  // what the canvas does when a value is typed into a widget's prompt
  widget.value = value;
  widget.callback?.(widget.value, window.app.canvas, node, window.app.canvas.graph_mouse, null);
  node.onWidgetChanged?.(widget.name, widget.value, null, widget);
  node.graph?.setDirtyCanvas(true, true);
  return widget.value;
}
"""

# The <img> or <video> the frontend shows on a node's output (SaveAnimatedWEBP: its animated preview widget;
# SaveVideo: a video player); null until it is there and decoded (a video: its first frame).
_OUTPUT_IMAGE = r"""
(id) => {
  const outputs = window.app.nodeOutputs?.[String(id)];
  const images = outputs?.images || [];
  if (!images.length) return null;
  const wanted = images.map(i => i.filename);
  const node = (window.app.rootGraph ?? window.app.graph).getNodeById(id);
  const media = [...document.querySelectorAll('img, video')].filter(el => wanted.some(f => el.src.includes(encodeURIComponent(f))));
  const size = el => el.tagName === 'VIDEO' ? [el.readyState >= 2 ? el.videoWidth : 0, el.videoHeight]
                                            : [el.complete ? el.naturalWidth : 0, el.naturalHeight];
  const shown = media.find(el => size(el)[0] > 0);
  if (!shown) return null;
  const box = shown.getBoundingClientRect();
  const [width, height] = size(shown);
  return {images, animated: outputs.animated ?? null, src: shown.src, tag: shown.tagName.toLowerCase(), width,
          height, visible: box.width > 0 && box.height > 0, node_imgs: (node?.imgs || []).length};
}
"""


class ComfyPage:
    """One tab on the ComfyUI frontend served by `url`."""

    def __init__(self, browser, url, viewport=(1600, 1000)):
        self.url = url.rstrip("/")
        self.context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        self.page = self.context.new_page()
        self.console = []
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        self.page.on("response", lambda r: r.status >= 400 and self.console.append(f"http {r.status}: {r.url}"))
        self.page.on("requestfailed", lambda r: self.console.append(f"failed ({r.failure}): {r.url}"))
        self.page.add_init_script(_INIT_SCRIPT)
        # nothing leaves the machine: the frontend's look-ups on the node registry and the like are refused
        self.context.route(lambda url: not url.startswith(self.url + "/"), lambda route: route.abort())

    def close(self):
        self.context.close()

    def evaluate(self, script, arg=None):
        return self.page.evaluate(script, arg)

    def open(self, timeout=90.0):
        """Load the page and wait until the app has its node definitions and canvas."""
        self.page.goto(self.url + "/", wait_until="load", timeout=timeout * 1000)
        self.page.wait_for_function(
            "window.app && window.app.graph && window.app.canvas && window.app.vueAppReady && "
            "window.LiteGraph && Object.keys(LiteGraph.registered_node_types).length > 100",
            timeout=timeout * 1000)
        self.evaluate(_INSTRUMENT)
        # the first graph (blank or restored) is configured when the app starts; let that settle
        self.page.wait_for_timeout(300)

    # ------------------------------------------------------------------ loading
    def drop_workflow(self, name, text, timeout=30.0):
        """Drop a workflow file on the canvas as a user does (a `drop` event whose DataTransfer holds it)
        and wait until the frontend has configured the graph from it."""
        before = self.evaluate("window.__test.loaded")
        self.evaluate("() => { const t = window.__test; t.missingNodes = []; t.missingNodesDialog = []; "
                      "t.missingModelsDialog = []; t.pageErrors = []; }")
        self.evaluate(_DROP, [name, text])
        self.page.wait_for_function(f"window.__test.loaded > {before}", timeout=timeout * 1000)
        expected = os.path.splitext(name)[0]
        # afterLoadNewGraph: the workflow tab now holds the dropped file's name
        self.page.wait_for_function(
            "(n) => window.app.extensionManager?.workflow?.activeWorkflow?.filename === n", arg=expected,
            timeout=timeout * 1000)

    def missing_reported(self):
        """What the frontend reported for the last dropped workflow: `nodes`, the missing node types its
        loadGraphData collected (handed to afterConfigureGraph); `nodes_dialog` / `models_dialog`, what it
        showed the user as missing: what it passed to its missing-nodes / missing-models dialogs (1.32.9), or
        the workflow's pending warnings that its error overlay and side panel show (1.49.6)."""
        return self.evaluate(_MISSING)

    def shown_errors(self):
        """What the page tells the user is wrong: the open dialogs' texts (1.32.9) and, where the frontend sums
        the errors up in its overlay (1.49.6), the error groups its "View details" opens in the side panel."""
        texts = self.open_dialogs()
        details = self.page.locator("[data-testid=error-overlay] button", has_text="View details")
        if details.count():
            details.first.click()
            self.page.wait_for_selector("[data-testid^=error-group-]", timeout=10000)
            texts += self.evaluate("[...document.querySelectorAll('[data-testid^=error-group-]')]"
                                   ".map(d => d.innerText.trim().slice(0, 500))")
        return texts

    def open_dialogs(self):
        """Texts of the dialogs open on the page (missing nodes / models, errors, ...)."""
        return self.evaluate(
            f"[...document.querySelectorAll({DIALOGS!r})]"
            ".filter(d => d.getClientRects().length).map(d => d.innerText.trim().slice(0, 500))")

    def page_errors(self):
        """Uncaught errors and unhandled rejections in the page since the last drop."""
        return self.evaluate("window.__test.pageErrors")

    def nodes(self):
        return self.evaluate(_NODES)

    def serialize(self):
        return self.evaluate("(window.app.rootGraph ?? window.app.graph).serialize()")

    def graph_to_prompt(self):
        """{"output": API prompt, "workflow": UI workflow}, exactly what the frontend sends when queueing."""
        return self.evaluate("async () => { const p = await window.app.graphToPrompt(); "
                             "return JSON.parse(JSON.stringify({output: p.output, workflow: p.workflow})); }")

    # ------------------------------------------------------------------ editing and running
    def set_widget(self, node_id, name, value):
        return self.evaluate(_SET_WIDGET, [node_id, name, value])

    def fit_view(self):
        self.evaluate("async () => { await window.app.extensionManager.command.execute('Comfy.Canvas.FitView'); "
                      "window.app.canvas.setDirty(true, true); }")

    def queue(self):
        """Click the Run button (the frontend's queue button); returns the prompt id the server gave."""
        with self.page.expect_response(lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST",
                                       timeout=30000) as response:
            self.page.get_by_role("button", name="Run", exact=True).first.click()
        body = response.value.json()
        if response.value.status != 200:
            raise AssertionError(f"the server refused the prompt the page queued: {json.dumps(body)[:2000]}")
        return body["prompt_id"]

    def wait_for_run(self, prompt_id, timeout):
        """Wait for execution_success / execution_error of prompt_id as the page's websocket receives it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, detail in self.evaluate("window.__test.events"):
                if (detail or {}).get("prompt_id") != prompt_id:
                    continue
                if name == "execution_success":
                    return
                if name in ("execution_error", "execution_interrupted"):
                    raise AssertionError(f"{name} for the page's prompt: {json.dumps(detail)[:4000]}")
            self.page.wait_for_timeout(250)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    def wait_for_output(self, node_id, timeout=30.0):
        """The node's output image or video as the page shows it (see _OUTPUT_IMAGE)."""
        handle = self.page.wait_for_function(_OUTPUT_IMAGE, arg=node_id, timeout=timeout * 1000)
        return handle.json_value()

    def history(self, prompt_id):
        """GET /history/<id> from the page (the frontend's api object)."""
        return self.evaluate("async (id) => (await (await window.app.api.fetchApi('/history/' + id)).json())[id]",
                             prompt_id)

    def screenshot(self, path, size=(2200, 1300)):
        """A screenshot of the whole workflow: a larger window, the view fitted to the graph."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.page.set_viewport_size({"width": size[0], "height": size[1]})
        self.page.wait_for_timeout(200)
        self.fit_view()
        self.page.wait_for_timeout(400)
        self.page.screenshot(path=path)
        return path

    def console_log(self, path):
        """The page's console messages, failed requests and uncaught errors, one a line."""
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(self.console) + "\n")
        return path
