"""The course site, a slide deck and JupyterLab, checked in a real browser (headless Chromium).

These tests are slow and need Chromium, its driver and a built site, so they run only when asked:

    CNN_BROWSER_TESTS=1 python -m pytest -q -p no:nbval tests/test_browser.py

.ci/run builds the site and a deck under smoke first (``python -m utils.site build --profile
smoke``, ``python -m utils.slides deck --profile smoke 01``), then runs this file. The README's
test command collects this file too and skips it (the reason is printed) unless
CNN_BROWSER_TESTS is set; with it set and no Chromium, the tests skip saying so.
CNN_SITE_PROFILE (default smoke) picks the site build. Screenshots for a person to look at go
to build/screenshots/.
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from utils.config import REPO_ROOT

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
PROFILE = os.environ.get("CNN_SITE_PROFILE", "smoke")
SITE = REPO_ROOT / "build" / "site" / PROFILE / "_build" / "html"
SLIDES = REPO_ROOT / "build" / "slides"
SHOTS = REPO_ROOT / "build" / "screenshots"
WIDTH, HEIGHT = 1280, 720

if not os.environ.get("CNN_BROWSER_TESTS"):
    pytest.skip("browser tests run only with CNN_BROWSER_TESTS=1 (.ci/run sets it after building the site)",
                allow_module_level=True)
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(f"{CHROMIUM} and {CHROMEDRIVER} are needed: apt-get install chromium chromium-driver",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (requirements.txt)")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

# Console messages that are not the page's fault: the local test server has no favicon.
HARMLESS_CONSOLE = (re.compile(r"/favicon\.ico - Failed to load resource"),)


def chromium(user_data: Path):
    """Headless Chromium whose viewport is WIDTH x HEIGHT; never downloads a browser or driver."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--window-size={WIDTH},{HEIGHT}", f"--user-data-dir={user_data}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    browser = chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def server():
    """A local HTTP server for build/ (fonts and scripts load as they would from a web host)."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(REPO_ROOT / "build"))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and not any(p.search(entry["message"]) for p in HARMLESS_CONSOLE)]


def shot(driver, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def wait_for(driver, script: str, timeout: float = 30):
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: d.execute_script(script))


IMAGES = """return [...document.images].map(i => ({src: i.currentSrc.slice(-80), ok: i.complete && i.naturalWidth > 0}));"""


# ------------------------------------------------------------------ the site

def site_pages() -> list[Path]:
    return sorted(SITE.glob("chapters/*.html")) + [SITE / "intro.html", SITE / "references.html"]


def test_site_is_built():
    assert (SITE / "index.html").is_file(), f"no site in {SITE}: python -m utils.site build --profile {PROFILE}"


@pytest.mark.parametrize("page", [p.relative_to(SITE).as_posix() for p in site_pages()] if SITE.is_dir() else [])
def test_site_page(driver, server, page):
    driver.get_log("browser")  # drop what earlier pages left
    driver.get(f"{server}/site/{PROFILE}/_build/html/{page}")
    wait_for(driver, "return document.readyState === 'complete'")
    # MathJax 3 has typeset the page once its startup promise resolves.
    if driver.execute_script("return !!document.querySelector('script[src*=mathjax]')"):
        wait_for(driver, "return !!(window.MathJax && MathJax.startup && MathJax.startup.promise)")
        driver.execute_async_script("const done = arguments[0]; MathJax.startup.promise.then(() => done(true));")
    images = driver.execute_script(IMAGES)
    broken = [image["src"] for image in images if not image["ok"]]
    assert not broken, f"{page}: images not decoded: {broken}"
    math = driver.execute_script("return document.querySelectorAll('.math').length")
    typeset = driver.execute_script("return document.querySelectorAll('mjx-container').length")
    assert typeset >= math, f"{page}: {math} formulas, {typeset} typeset by MathJax"
    assert driver.execute_script("return !!document.querySelector('form.bd-search, .search-button, #search-input, input[name=q]')"), \
        f"{page}: no search box"
    shot(driver, "site-" + page.replace("/", "-").removesuffix(".html"))
    assert not console_errors(driver), f"{page}: console errors"


def test_site_has_chapters_math_and_figures(driver, server):
    """The chapters together show figures and formulas (a site without them is not the course)."""
    pages = sorted(SITE.glob("chapters/*.html"))
    assert pages
    text = "".join(p.read_text() for p in pages)
    assert text.count("<img") >= len(pages), "fewer figures than chapters"
    assert 'class="math' in text, "no formula on any chapter page"


# ------------------------------------------------------------------ slides

def test_slide_deck_opens_advances_and_shows_a_figure(driver, server):
    deck = SLIDES / "01_alexnet.slides.html"
    assert deck.is_file(), f"no deck: python -m utils.slides deck --profile {PROFILE} 01"
    driver.get_log("browser")
    driver.get(f"{server}/slides/{deck.name}")
    wait_for(driver, "return !!(window.Reveal && Reveal.isReady && Reveal.isReady())")
    first = driver.execute_script("return Reveal.getIndices()")
    total = driver.execute_script("return Reveal.getTotalSlides()")
    assert total > 5, f"only {total} slides"
    driver.execute_script("Reveal.next()")
    assert driver.execute_script("return Reveal.getIndices()") != first, "Reveal.next() did not advance"
    shot(driver, "slides-01-second")
    for _ in range(total):   # walk on until a slide shows a decoded figure
        shown = driver.execute_script(
            "return [...Reveal.getCurrentSlide().querySelectorAll('img')].some(i => i.complete && i.naturalWidth > 0)")
        if shown:
            break
        driver.execute_script("Reveal.next()")
        time.sleep(0.1)
    assert shown, "no slide shows a decoded figure"
    time.sleep(1)  # the slide transition
    shot(driver, "slides-01-figure")
    assert not console_errors(driver)


def test_slide_screenful_measure(driver, server, tmp_path):
    """SCREEN_LINES code lines fit a 1280x720 slide: a deck with one 60-line code cell, measured."""
    import nbformat

    from utils import slides

    code = "\n".join(f"line_{i:02d} = {i}" for i in range(1, 61))
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code, metadata={"slideshow": {"slide_type": "slide"}})])
    path = slides.deck("measure", notebook=notebook, out=SLIDES)
    driver.get(f"{server}/slides/{path.name}")
    wait_for(driver, "return !!(window.Reveal && Reveal.isReady && Reveal.isReady())")
    time.sleep(0.5)
    fit = driver.execute_script("""
        const pre = Reveal.getCurrentSlide().querySelector('.jp-InputArea pre');
        const top = pre.getBoundingClientRect().top;
        const line = parseFloat(getComputedStyle(pre).lineHeight) * Reveal.getScale();
        return Math.floor((Math.min(window.innerHeight, document.querySelector('.reveal .slides').getBoundingClientRect().bottom) - top) / line);""")
    shot(driver, "slides-measure")
    path.unlink()
    assert fit >= slides.SCREEN_LINES, f"{fit} code lines fit a slide, SCREEN_LINES is {slides.SCREEN_LINES}"
    assert fit <= slides.SCREEN_LINES + 4, f"{fit} code lines fit: SCREEN_LINES ({slides.SCREEN_LINES}) is too strict"


# ------------------------------------------------------------------ JupyterLab

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    port, token = free_port(), "browser-test-token"
    # Every cell in the page (no windowing), so the test sees every output area.
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    # Never save: the run's outputs must not land in the repository's notebook.
    docmanager = tmp_path / "settings" / "@jupyterlab" / "docmanager-extension"
    docmanager.mkdir(parents=True)
    (docmanager / "plugin.jupyterlab-settings").write_text(json.dumps({"autosave": False}))
    notification = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    # CNN_PLOT_BUDGET=1: a smoke fit lasts seconds, less than the default budget needs for a redraw
    environment = {**os.environ, "CNN_PROFILE": "smoke", "CNN_PLOT_BUDGET": "1", "CNN_RESULTS_DIR": str(tmp_path / "results"),
                   "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    server = subprocess.Popen(
        [shutil.which("jupyter") or "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={REPO_ROOT}", "--LabApp.expose_app_in_browser=True",
         f"--LabApp.user_settings_dir={tmp_path / 'settings'}", f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
         "--ServerApp.open_browser=False", *(["--allow-root"] if os.geteuid() == 0 else []), "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=environment, stdout=open(tmp_path / "jupyter.log", "w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        if server.poll() is not None:
            pytest.fail(f"jupyter lab exited: {(tmp_path / 'jupyter.log').read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}", token, tmp_path / "jupyter.log"
    server.terminate()
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        server.kill()


FRAMES = """return [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell')].map(cell =>
    [...cell.querySelectorAll('.jp-OutputArea-output img')].map(i => i.src.length + ':' + i.src.slice(-40)).join('|'));"""
STATE = """const w = window.jupyterapp.shell.currentWidget;
    const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
    return k ? k.status : 'none';"""


def test_jupyterlab_runs_chapter_01_with_a_live_plot(driver, jupyterlab):
    url, token, log = jupyterlab
    budget = time.time() + 180
    driver.get(f"{url}/lab/tree/chapters/01_alexnet.ipynb?token={token}")
    wait_for(driver, "return !!(window.jupyterapp && document.querySelector('.jp-NotebookPanel .jp-Cell'))", 90)
    wait_for(driver, STATE.replace("return k ? k.status : 'none';", "return !!k && k.status === 'idle';"), 60)
    cells = json.loads((REPO_ROOT / "chapters" / "01_alexnet.ipynb").read_text())["cells"]
    fit_cells = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and re.search(r"\bfit\(", "".join(c["source"]))]
    driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    changes, last, frames_per_cell, started = 0, None, {}, time.time()
    busy_seen, running_shot = False, None
    while time.time() < budget:
        frames = driver.execute_script(FRAMES)
        for i, frame in enumerate(frames):
            if frame:
                frames_per_cell.setdefault(i, set()).add(frame)
        if last is not None and frames != last:
            changes += 1
        last = frames
        state = driver.execute_script(STATE)
        busy_seen = busy_seen or state == "busy"
        running = driver.execute_script("return document.querySelectorAll('.jp-InputPrompt').length && "
                                        "[...document.querySelectorAll('.jp-InputPrompt')].some(p => p.textContent.includes('*'))")
        if busy_seen and state == "idle" and not running and time.time() - started > 5:
            break
        if changes >= 1 and not running_shot:
            running_shot = shot(driver, "lab-running")
        time.sleep(0.5)
    else:
        shot(driver, "lab-timeout")
        pytest.fail(f"chapter 01 did not finish within 3 minutes under smoke; server log {log}")
    shot(driver, "lab-finished")
    errors = driver.execute_script("""return [...document.querySelectorAll(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"], .jp-RenderedText[data-mime-type="application/vnd.jupyter.error"]')]
        .map(e => e.textContent).filter(t => /Traceback|Error/.test(t)).map(t => t.slice(0, 300));""")
    assert not errors, f"cells show errors: {errors}"
    assert changes >= 2, f"the output images changed {changes} times while the notebook ran"
    live = {i: len(frames_per_cell.get(i, ())) for i in fit_cells}
    assert any(n >= 2 for n in live.values()), f"no fit cell's live plot showed two frames: {live}"
