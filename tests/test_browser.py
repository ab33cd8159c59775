"""Notebook 08 in a real browser: JupyterLab on localhost, headless Chromium driven by Playwright.

The test copies the notebook into a temporary root (JupyterLab autosaves; the committed notebook must not change),
starts JupyterLab there, runs all cells, picks a person and a garment in the playground, clicks *Run try-on* and waits
for the result image. Screenshots go to ``tests/_artifacts/browser/`` (git-ignored): ``playground.png`` (the whole
page) and ``playground_widget.png`` (the app).

Needs Debian's ``chromium`` at ``/usr/bin/chromium`` (or ``$CHROMIUM``; ``.ci/run`` installs it). Without it the test is
skipped, except in CI (``$CI`` set), where it fails.
"""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = "08_tryon_playground.ipynb"
ARTIFACTS = REPO / "tests" / "_artifacts" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
RESULT_TIMEOUT_S = 150  # run-all (two short toy try-ons) + the clicked try-on, on a slow shared CPU

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


def _require_chromium():
    if not Path(CHROMIUM).is_file():
        msg = f"headless Chromium not found at {CHROMIUM}: `apt-get install chromium` (or set $CHROMIUM)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyter_lab(tmp_path):
    """A JupyterLab server on a free port serving a temporary copy of the notebooks; yields its base URL and token."""
    root = tmp_path / "root"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(REPO / "notebooks" / NOTEBOOK, root / "notebooks" / NOTEBOOK)
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, OOTD_PROFILE="toy", JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"), PYTHONUNBUFFERED="1")
    log = open(tmp_path / "jupyter.log", "w")
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False",
           "--allow-root",  # containers and CI often run as root; Jupyter refuses that without the flag
           "--LabApp.expose_app_in_browser=True"]
    # own process group: the kernel the server starts is ended with it
    server = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not start; log:\n{(tmp_path / 'jupyter.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield base, token
    finally:
        _kill_group(server)
        log.close()


def _kill_group(proc: subprocess.Popen):
    """End a process started with ``start_new_session=True`` and everything it started (the kernel)."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def test_playground_in_jupyterlab(jupyter_lab, tmp_path):
    _require_chromium()
    from playwright.sync_api import expect, sync_playwright

    base, token = jupyter_lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 2400})  # tall: the whole app fits the notebook panel
        try:
            page = browser.new_page()
            page.goto(f"{base}/lab/tree/notebooks/{NOTEBOOK}?token={token}", timeout=60_000)
            # the notebook is open and its kernel is ready when the status bar says Idle
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.wait_for_function("() => window.jupyterapp && document.body.innerText.includes('Idle')",
                                   timeout=60_000)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")

            # the app's widget rendered: its status line and the thumbnail buttons are there
            app = page.locator(".widget-vbox:has(> .ootd-outputs)")
            expect(app).to_have_count(1, timeout=RESULT_TIMEOUT_S * 1000)
            app.get_by_role("button", name="person 3", exact=True).click()
            app.get_by_role("button", name="garment 4", exact=True).click()
            status = app.locator(".ootd-status")
            expect(status).to_contain_text("garment: ", timeout=RESULT_TIMEOUT_S * 1000)  # the kernel answered
            assert app.locator(".ootd-outputs img").count() == 0  # nothing shown before Run
            app.get_by_role("button", name="Run try-on").click()

            result = app.locator(".ootd-outputs img.ootd-result").first
            expect(result).to_be_visible(timeout=RESULT_TIMEOUT_S * 1000)
            expect(status).to_contain_text("done: 1 image(s)")
            size = result.evaluate("img => [img.naturalWidth, img.naturalHeight]")
            assert size[0] > 0 and size[1] > size[0], size  # a decoded portrait image, not a broken <img>
            news = page.get_by_role("button", name="No", exact=True)  # JupyterLab's "get news?" toast covers a corner
            if news.count():
                news.first.click()
            result.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "playground.png"))
            app.screenshot(path=str(ARTIFACTS / "playground_widget.png"))
        finally:
            browser.close()
    assert (ARTIFACTS / "playground_widget.png").stat().st_size > 10_000
