"""Browser tier (``-m browser``, ``make test-browser``): headless Chromium from the system's packages,
driven by Playwright, with every request that would leave the machine aborted and recorded.

* the offline report: a smoke run of notebooks 00 and 10 by the project's runner, served from
  loopback; every link and image of ``index.html`` loads, every notebook page typesets its
  equations from the local MathJax copy and no request leaves the machine;
* the explorer in JupyterLab (the notebook run as a user would) and as the Voilà page of
  ``make explore``: tick A and B, press Run, read the status line and the figure (shown at the size
  it was drawn), and no figure shows up outside the app.

Screenshots go to ``build/browser/`` for a human to look at. ``MLNB_BROWSER_RESULTS=<results folder>``
checks an existing results tree (e.g. ``results/`` of ``make run``) instead of a fresh smoke run.
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "build" / "browser"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# the flags that keep Chromium from calling home (this machine refuses those connections anyway)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]
LOCAL = {"127.0.0.1", "localhost", "::1", ""}
VOILA_CDN_CSS = "https://cdn.jsdelivr.net/npm/@fortawesome/fontawesome-free@"
# a display_data message whose parent is a widget (comm) message: output outside any cell (JupyterLab's log)
STRAY = re.compile(rb'"msg_type":\s*"display_data".*"msg_type":\s*"comm_msg"'
                   rb'|"msg_type":\s*"comm_msg".*"msg_type":\s*"display_data"', re.S)

if not CHROMIUM:
    pytest.skip("no chromium on PATH: as root, apt-get install -y chromium chromium-driver", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the server for port {port} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} after {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    """End the server this test started: its own process group, by id."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)  # a fresh profile each launch
        yield b
        b.close()


@pytest.fixture
def offline(browser):
    """A browser context in which every request to another host is aborted; yields (context, blocked)."""
    blocked: list[str] = []

    def leaves(url: str) -> bool:
        u = urlparse(url)
        return u.scheme not in ("data", "blob", "file", "about") and u.hostname not in LOCAL

    def route(r):
        if leaves(r.request.url):
            return r.abort()  # recorded by the request listener below
        return r.continue_()

    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.route("**/*", route)
    ctx.on("request", lambda req: blocked.append(req.url) if leaves(req.url) else None)
    yield ctx, blocked
    ctx.close()


@pytest.fixture(scope="module")
def results_tree(tmp_path_factory):
    """A results folder rendered by the project's runner: notebooks 00 (equations) and 10 (the app), smoke."""
    given = os.environ.get("MLNB_BROWSER_RESULTS")
    if given:
        return Path(given)
    root = tmp_path_factory.mktemp("browser-results")
    env = dict(os.environ, MLNB_RESULTS=str(root), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "mlnb.running.pipeline", "run", "--preset", "smoke", "--only", "00,10"],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    return root


@pytest.fixture(scope="module")
def served(results_tree):
    """``results_tree`` served as is on loopback (a plain static file server)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(results_tree))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def _images_ok(page) -> list[str]:
    """The ``src`` of every image on the page that does not load (lazy ones included)."""
    return page.evaluate("""async () => {
        const bad = [];
        await Promise.all([...document.images].map(img => new Promise(done => {
            const probe = new Image();
            probe.onload = () => { if (!probe.naturalWidth) bad.push(img.src); done(); };
            probe.onerror = () => { bad.push(img.src); done(); };
            probe.src = img.src;
        })));
        return bad;
    }""")


def test_report_offline(offline, served, results_tree):
    ctx, blocked = offline
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = ctx.new_page()
    assert page.goto(served + "index.html").ok
    page.screenshot(path=str(SHOTS / "report-index.png"), full_page=True)
    links = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
    assert links, "the index links the rendered notebooks and their files"
    assert _images_ok(page) == []
    broken = [u for u in links if urlparse(u).hostname in LOCAL and ctx.request.get(u).status != 200]
    assert broken == [], f"broken links in index.html: {broken}"
    pages = sorted({u for u in links if u.endswith(".html")})
    assert any(u.endswith("html/10_explorer.html") for u in pages)
    for url in pages:
        assert page.goto(url).ok
        page.wait_for_function("() => window.MathJax && MathJax.Hub && MathJax.Hub.queue"
                               " && MathJax.Hub.queue.pending === 0 && !MathJax.Hub.queue.running"
                               " && document.querySelectorAll('script[type^=\"math/tex\"]').length"
                               " <= document.querySelectorAll('.MathJax, .MathJax_Display').length",
                               timeout=60_000)
        markdown = page.eval_on_selector_all(".jp-RenderedMarkdown", "els => els.map(e => e.innerText).join('\\n')")
        raw = re.findall(r"\$[^$\n]{0,80}\\[A-Za-z]+[^$\n]{0,80}\$", markdown)
        assert raw == [], f"{url}: raw LaTeX left in the markdown: {raw[:3]}"
        assert _images_ok(page) == [], url
        name = Path(urlparse(url).path).stem
        if name.startswith("00"):
            assert page.locator(".MathJax, .MathJax_Display").count() > 0, "notebook 00's equations are typeset"
            page.locator(".MathJax_Display, .MathJax").first.scroll_into_view_if_needed()
            page.screenshot(path=str(SHOTS / f"report-{name}.png"))
        if name.startswith("10"):  # where the app stood: its picture, not an empty area
            pic = page.locator(".jp-OutputArea-output img").first
            assert pic.evaluate("img => img.naturalWidth") > 500
            pic.scroll_into_view_if_needed()
            page.screenshot(path=str(SHOTS / f"report-{name}.png"))
    assert blocked == [], f"requests tried to leave the machine: {blocked}"


def _settled(page, app, quiet_s: float = 1.5, timeout_s: float = 120) -> str:
    """Wait until the app's figure has not changed for ``quiet_s`` (the kernel has caught up with
    every click) and return its ``src``."""
    figure = app.locator("img").last
    end = time.monotonic() + timeout_s
    src, since = figure.get_attribute("src"), time.monotonic()
    while time.monotonic() < end:
        page.wait_for_timeout(250)
        now = figure.get_attribute("src")
        if now != src:
            src, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s and figure.evaluate("i => i.complete && i.naturalWidth > 0"):
            return src
    raise TimeoutError("the explorer's figure kept changing")


def _drive_app(page, shot: str) -> None:
    """Put every label in C, then label 0 in A and label 1 in B; screenshot; Run; wait for the
    outcome and the new figure; screenshot. The figure is shown at the size it was drawn, before
    and after the Run (issue 16: the first one was stretched)."""
    run = page.get_by_role("button", name="Run", exact=True).last
    run.wait_for(timeout=120_000)
    app = page.locator(".widget-vbox").filter(has=run).last
    app.scroll_into_view_if_needed()
    groups = app.locator(".widget-toggle-buttons")
    assert groups.count() >= 4
    names = [groups.nth(j).locator(".widget-label").first.inner_text().strip() for j in range(2)]
    for j in range(groups.count()):
        groups.nth(j).get_by_role("button", name="C", exact=True).click()
    groups.nth(0).get_by_role("button", name="A", exact=True).click()
    groups.nth(1).get_by_role("button", name="B", exact=True).click()
    status = app.locator(".widget-html-content").last
    expected = f"A = {{{names[0]}}}, B = {{{names[1]}}}"
    page.wait_for_function("([el, want]) => el.innerText.includes(want) && !el.innerText.includes('constraints')",
                           arg=[status.element_handle(), expected], timeout=120_000)
    figure = app.locator("img").last

    def not_stretched():
        w, h, nw, nh = figure.evaluate("i => [i.getBoundingClientRect().width, i.getBoundingClientRect().height,"
                                       " i.naturalWidth, i.naturalHeight]")
        assert nw > 500 and abs(w / h - nw / nh) < 0.02 and w <= nw + 1, (w, h, nw, nh)
        return nw, nh

    src_before = _settled(page, app)
    size_before = not_stretched()
    app.screenshot(path=str(SHOTS / f"{shot}-before-run.png"))
    run.click()
    page.wait_for_function("el => /constraints, RMSD/.test(el.innerText)", arg=status.element_handle(),
                           timeout=120_000)
    text = status.inner_text()
    assert expected in text and re.search(r"-> (success|failure), \d/2 constraints, RMSD \d", text), text
    assert _settled(page, app) != src_before, "Run drew a new figure"
    assert not_stretched() == size_before, "one size before and after a Run"
    app.screenshot(path=str(SHOTS / f"{shot}-after-run.png"))


def _server(cmd: list[str], env: dict, port: int, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_port(port, proc)
    except (RuntimeError, TimeoutError) as err:
        _stop(proc)
        raise RuntimeError(f"{err}; its log ends:\n{log.read_text(errors='replace')[-3000:]}") from None
    return proc


@pytest.fixture(scope="module")
def smoke_notebook(tmp_path_factory):
    from mlnb.running.pipeline import prepare_notebooks

    return prepare_notebooks(tmp_path_factory.mktemp("lab"), "smoke", only=["10"])[0]


def _env(tmp: Path) -> dict:
    home = tmp / "jupyter"
    # no "would you like to get notified about Jupyter news?" prompt over the app
    notes = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notes.parent.mkdir(parents=True, exist_ok=True)
    notes.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    return dict(os.environ, OMP_NUM_THREADS="1", MLNB_RESULTS=str(tmp / "results"),
                JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
                JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"), JUPYTERLAB_SETTINGS_DIR=str(home / "settings"))


def test_explorer_in_jupyterlab(offline, smoke_notebook, tmp_path):
    ctx, blocked = offline
    port = _free_port()
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", "--IdentityProvider.token=", "--ServerApp.password=",
           f"--ServerApp.root_dir={smoke_notebook.parent}", "--LabApp.expose_app_in_browser=True",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    cmd += ["--allow-root"] if os.geteuid() == 0 else []
    proc = _server(cmd, _env(tmp_path), port, tmp_path / "lab.log")
    try:
        page = ctx.new_page()
        frames: list[bytes] = []
        page.on("websocket", lambda ws: ws.on("framereceived", lambda f: frames.append(
            f if isinstance(f, bytes) else f.encode())))
        page.goto(f"http://127.0.0.1:{port}/lab/tree/{smoke_notebook.name}")
        idle = ("() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                " const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
                " return k && k.status === 'idle'; }")
        page.wait_for_function(idle, timeout=120_000)
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        metrics = tmp_path / "results" / "10_explorer" / "metrics.json"  # written by the last code cell
        end = time.monotonic() + 240
        while not metrics.is_file() and time.monotonic() < end:
            page.wait_for_timeout(500)
        assert metrics.is_file(), "JupyterLab ran every cell of the notebook"
        page.wait_for_function(idle, timeout=60_000)
        assert page.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']").count() == 0
        page.get_by_role("button", name="Run", exact=True).last.scroll_into_view_if_needed()
        _drive_app(page, "jupyterlab")
        stray = [f for f in frames if STRAY.search(f)]
        if stray:
            (SHOTS / "jupyterlab-stray-messages.bin").write_bytes(b"\n----\n".join(stray))
        assert not stray, f"{len(stray)} output(s) displayed outside the app after a widget event: build/browser/"
    finally:
        _stop(proc)
    assert blocked == [], f"requests tried to leave the machine: {blocked}"


def test_explorer_as_voila_page(offline, tmp_path):
    """What ``make explore`` serves (here on the smoke preset): a standalone page, no code, on
    loopback, equations typeset from the local MathJax copy; the app works."""
    ctx, blocked = offline
    dry = subprocess.run(["make", "-n", "--no-print-directory", "explore"], cwd=ROOT, capture_output=True, text=True)
    assert "-m mlnb.running.pipeline explore" in dry.stdout and "--ip 127.0.0.1" in dry.stdout, dry.stdout
    port = _free_port()
    cmd = [sys.executable, "-m", "mlnb.running.pipeline", "explore", "--preset", "smoke", "--port", str(port),
           "--dir", str(tmp_path / "explore")]
    proc = _server(cmd, _env(tmp_path), port, tmp_path / "voila.log")
    try:
        assert f"http://127.0.0.1:{port}/" in (tmp_path / "voila.log").read_text(), "the address is printed"
        page = ctx.new_page()
        page.goto(f"http://127.0.0.1:{port}/", timeout=300_000)
        page.get_by_role("button", name="Run", exact=True).last.wait_for(timeout=180_000)
        assert page.locator(".jp-CodeCell .jp-InputArea, .jp-CodeMirrorEditor, pre.cm-line").count() == 0, "no code"
        assert "from mlnb" not in page.inner_text("body")
        page.wait_for_function("() => document.querySelectorAll('.MathJax, .MathJax_Display, mjx-container').length > 0",
                               timeout=60_000)
        _drive_app(page, "voila")
        page.screenshot(path=str(SHOTS / "voila-page.png"), full_page=True)
    finally:
        _stop(proc)
    # Voila 0.5's lab template links Font Awesome's CSS from jsDelivr (widget icons; the explorer has none):
    # aborted here as offline, and nothing else may leave
    others = [u for u in blocked if not u.startswith(VOILA_CDN_CSS)]
    assert others == [], f"requests tried to leave the machine: {others}"
    record = json.loads((tmp_path / "results" / "10_explorer" / "metrics.json").read_text())
    assert record["params"]["PRESET"] == "smoke", "the page ran the notebook on the preset asked for"
