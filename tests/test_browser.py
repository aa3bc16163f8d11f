"""The dashboard in a real browser: Voila serves it, headless Chromium uses it as a person would.

Needs the ``playwright`` Python package and Debian's ``chromium`` at
/usr/bin/chromium (``.ci/run`` installs both; ``playwright install`` cannot
download browsers here). Locally the tests are skipped without them; under CI
(``CI`` set) they fail instead, so a missing browser cannot pass unseen.

Screenshots go to ``artifacts/screenshots/`` (kept by CI, ignored by git).
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from test_launcher import ROOT, Server, fetch, free_port, voila_env, write_fits_folder

CHROMIUM = Path(os.environ.get("SPECWIDGETS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-gpu",
    "--no-first-run",
]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
VIEWPORT = {"width": 1400, "height": 1000}
READY_S = 30.0
UPDATE_S = 2.0
UPDATE_BYTES = 1024 * 1024
TRACEBACK_TEXT = ("Traceback", "There was an error when executing cell", "ExecutionError",
                  "An exception occurred at the server", "stopped on an error")

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

_missing = None
if sync_playwright is None:
    _missing = "the playwright package is not installed (pip install playwright)"
elif not CHROMIUM.exists():
    _missing = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
if _missing and os.environ.get("CI"):
    raise RuntimeError(f"browser tests cannot run in CI: {_missing}")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing is not None, reason=_missing or "")]


# ------------------------------------------------------------------ fixtures
def _voila(notebook, tmp, name, **env):
    port = free_port()
    command = [sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--port={port}",
               "--Voila.ip=127.0.0.1"]
    server = Server(command, port, cwd=ROOT, env=voila_env(**env), log_path=tmp / f"{name}.log")
    server.wait_listening(timeout=60)
    # One render before the timed ones: numba's on-disk caches are written on
    # a first run after install, which a user pays once, not per page.
    fetch(server.url, timeout=300)
    return server


@pytest.fixture(scope="module")
def dashboard_server(tmp_path_factory):
    """``voila notebooks/dashboard.ipynb`` from the repository root (so voila.json applies)."""
    server = _voila(ROOT / "notebooks" / "dashboard.ipynb", tmp_path_factory.mktemp("voila"), "dashboard")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    (SCREENSHOTS / "console-errors.log").unlink(missing_ok=True)  # this run's console errors only
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


class Visit:
    """One page of the dashboard, with what it reported: page errors, console errors, websocket bytes."""

    def __init__(self, browser, url):
        self.context = browser.new_context(viewport=VIEWPORT)
        self.page = self.context.new_page()
        self.page_errors = []
        self.console_errors = []
        self.frames = []  # (monotonic time, "in"/"out", bytes)
        self.page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        self.page.on("console", self._on_console)
        self.page.on("websocket", self._on_websocket)
        start = time.monotonic()
        self.page.goto(url, timeout=int(READY_S * 1000) + 30000, wait_until="domcontentloaded")
        self.page.wait_for_selector(".sw-image-viewer image", timeout=60000)
        self.page.wait_for_selector(".sw-sed-explorer .bqplot path.line", timeout=60000)
        self.wait_idle()
        self.ready_s = time.monotonic() - start

    def _on_console(self, message):
        if message.type == "error":
            self.console_errors.append(message.text)

    def _on_websocket(self, ws):
        def size(payload):
            return len(payload) if isinstance(payload, (bytes, bytearray)) else len(payload.encode("utf-8"))

        ws.on("framereceived", lambda payload: self.frames.append((time.monotonic(), "in", size(payload))))
        ws.on("framesent", lambda payload: self.frames.append((time.monotonic(), "out", size(payload))))

    def bytes_since(self, t0, direction="in"):
        return sum(n for t, d, n in self.frames if t >= t0 and d == direction)

    def wait_idle(self, quiet=0.5, timeout=20.0):
        """Wait until no websocket frame has arrived for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = self.frames[-1][0] if self.frames else 0.0
            if time.monotonic() - last >= quiet:
                return
            self.page.wait_for_timeout(100)

    def text(self):
        return self.page.inner_text("body")

    def screenshot(self, name, locator=None):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        (locator or self.page).screenshot(path=str(path))
        return path

    def assert_clean(self):
        assert not self.page_errors, f"page errors: {self.page_errors}"
        text = self.text()
        for marker in TRACEBACK_TEXT:
            assert marker not in text, f"{marker!r} shown in the page"

    def close(self):
        log = SCREENSHOTS / "console-errors.log"
        if self.console_errors:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            with log.open("a") as f:
                f.writelines(f"{line}\n" for line in self.console_errors)
        self.context.close()


@pytest.fixture
def visit(browser, dashboard_server):
    page = Visit(browser, dashboard_server.url)
    yield page
    page.close()


def pixel_spread(png_bytes):
    """Standard deviation of the grey levels of a screenshot, and its number of distinct colours."""
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(png_bytes)).convert("RGB"), dtype=float)
    return float(image.mean(axis=2).std()), len(np.unique(image.reshape(-1, 3), axis=0))


def image_href(locator):
    return locator.evaluate(
        "el => { const im = el.querySelector('image'); "
        "return im ? (im.getAttribute('href') || im.getAttribute('xlink:href') || '') : ''; }"
    )


def figures(locator):
    return locator.locator(".bqplot")


def assert_not_blank(figure, name):
    std, colours = pixel_spread(figure.screenshot())
    assert std > 8 and colours > 50, f"{name} looks blank: grey std {std:.1f}, {colours} colours"


def drag(page, locator, dx, dy=0.0, steps=10):
    box = locator.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + dx, y + dy, steps=steps)
    page.mouse.up()


# ------------------------------------------------------------------ tests
def test_dashboard_renders(visit):
    page = visit.page
    assert visit.ready_s < READY_S, f"ready after {visit.ready_s:.1f} s"
    viewer, sed = page.locator(".sw-image-viewer"), page.locator(".sw-sed-explorer")
    assert image_href(viewer).startswith(("blob:", "data:"))
    assert_not_blank(figures(viewer).first, "image viewer")
    assert_not_blank(figures(sed).first, "SED explorer")
    visit.screenshot("dashboard-sky")

    page.get_by_role("tab", name="Warp guesses").click()
    picker = page.locator(".sw-warp-picker")
    picker.locator(".bqplot path.dot").first.wait_for(timeout=10000)
    page.wait_for_timeout(500)
    profile, arc = figures(picker).nth(0), figures(picker).nth(1)
    assert image_href(arc).startswith(("blob:", "data:"))
    assert_not_blank(profile, "arc profile")
    assert_not_blank(arc, "arc image")
    assert picker.locator(".bqplot").nth(1).locator("path.line").count() > 5  # fitted line curves
    visit.screenshot("dashboard-warp-guesses")
    visit.assert_clean()
    print(f"dashboard ready in {visit.ready_s:.1f} s")


def test_mask_slider_updates_the_image(visit):
    page = visit.page
    viewer = page.locator(".sw-image-viewer")
    # The corrected frame depends on the mask (the science frame does not).
    viewer.locator("button", has_text="Corrected").click()
    page.wait_for_function(
        "() => document.querySelector('.sw-image-viewer .bqplot').textContent.includes('Corrected')",
        timeout=10000,
    )
    visit.wait_idle()
    figure = figures(viewer).first
    before_href, before_png = image_href(viewer), figure.screenshot()
    slider = page.locator(".sw-mask-slider")
    before_label = slider.inner_text()

    t0 = time.monotonic()
    drag(page, slider.locator(".noUi-handle-upper"), dx=45)
    released = time.monotonic()
    while image_href(viewer) == before_href and time.monotonic() - released < 10:
        page.wait_for_timeout(20)
    update_s = time.monotonic() - released
    visit.wait_idle()
    received, sent = visit.bytes_since(t0, "in"), visit.bytes_since(t0, "out")

    assert slider.inner_text() != before_label, "the slider did not move"
    assert image_href(viewer) != before_href, "the image was not replaced"
    assert figure.screenshot() != before_png, "the image looks the same"
    assert update_s < UPDATE_S, f"image updated {update_s:.2f} s after the release"
    assert received < UPDATE_BYTES, f"the update sent {received / 1024:.0f} KiB over the websocket"
    visit.screenshot("mask-slider-dragged")
    visit.assert_clean()
    print(f"mask drag: image replaced in {update_s:.2f} s, {received / 1024:.1f} KiB in, {sent / 1024:.1f} KiB out")


PICKER_STATE = """el => {
  const figs = el.querySelectorAll('.bqplot');
  const dots = [...figs[0].querySelectorAll('path.dot')].map(d => {
    const r = d.getBoundingClientRect();
    return {x: r.x + r.width / 2, y: r.y + r.height / 2, stroke: getComputedStyle(d).stroke};
  });
  const curves = [...figs[1].querySelectorAll('path.line')].map(p => p.getAttribute('d') || '').filter(d => d);
  const area = figs[0].querySelector('rect.plotarea_events').getBoundingClientRect();
  return {guesses: dots.filter(d => d.stroke === 'rgb(0, 0, 0)'), curves: curves,
          area: {x: area.x, y: area.y, width: area.width, height: area.height}};
}"""


def test_clicks_on_the_arc_profile(visit):
    page = visit.page
    page.get_by_role("tab", name="Warp guesses").click()
    picker = page.locator(".sw-warp-picker")
    picker.locator(".bqplot path.dot").first.wait_for(timeout=10000)
    visit.wait_idle()
    start = picker.evaluate(PICKER_STATE)
    n_guesses, n_curves = len(start["guesses"]), len(start["curves"])
    assert n_guesses > 5 and n_curves > 5

    def wait_for(condition, what, timeout=10.0):
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            state = picker.evaluate(PICKER_STATE)
            if condition(state):
                return state, time.monotonic() - t0
            page.wait_for_timeout(50)
        raise AssertionError(f"{what} did not happen within {timeout} s")

    # A click on a guess removes it, and its line curve goes.
    guess = start["guesses"][len(start["guesses"]) // 2]
    page.mouse.click(guess["x"], guess["y"])
    removed, _ = wait_for(lambda s: len(s["curves"]) == n_curves - 1, "removing a guess")
    assert len(removed["guesses"]) == n_guesses - 1

    # A click on the profile at that line adds a guess there, and the curves redraw.
    area = removed["area"]
    page.mouse.click(guess["x"] + 1, area["y"] + area["height"] - 6)
    added, seconds = wait_for(lambda s: len(s["curves"]) == n_curves, "adding a guess")
    assert len(added["guesses"]) == n_guesses
    assert added["curves"] != removed["curves"]
    visit.screenshot("arc-profile-clicked")
    visit.assert_clean()
    print(f"arc click: guess added and curves redrawn in {seconds:.2f} s")


HIGHLIGHT = """el => [...el.querySelectorAll('.bqplot path')]
  .filter(p => getComputedStyle(p).fill === 'rgb(0, 229, 255)' && (p.getAttribute('d') || '').length > 10).length"""


def test_brushing_the_sed_highlights_pixels(visit):
    page = visit.page
    viewer, sed = page.locator(".sw-image-viewer"), page.locator(".sw-sed-explorer")
    assert viewer.evaluate(HIGHLIGHT) == 0
    area = sed.locator("rect.plotarea_events").first
    area.scroll_into_view_if_needed()
    box = area.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 0.40 * box["width"], y)
    page.mouse.down()
    page.mouse.move(box["x"] + 0.55 * box["width"], y, steps=12)
    page.mouse.up()
    t0 = time.monotonic()
    while viewer.evaluate(HIGHLIGHT) == 0 and time.monotonic() - t0 < 10:
        page.wait_for_timeout(50)
    seconds = time.monotonic() - t0
    assert viewer.evaluate(HIGHLIGHT) > 0, "no highlight on the image after brushing the SED"
    assert "highlighted" in sed.inner_text()
    viewer.scroll_into_view_if_needed()
    # A person sees the cyan outline on the image.
    from PIL import Image

    shot = np.asarray(Image.open(io.BytesIO(figures(viewer).first.screenshot())).convert("RGB")).astype(int)
    cyan = (shot[..., 0] < 120) & (shot[..., 1] > 150) & (shot[..., 2] > 150)
    assert cyan.sum() > 200, f"only {int(cyan.sum())} cyan pixels on the image"
    visit.screenshot("sed-brushed")
    visit.assert_clean()
    print(f"SED brush: pixels highlighted in {seconds:.2f} s")


# The largest tick value on the image viewer's x (column) axis.
X_AXIS_MAX = """Math.max(...[...document.querySelectorAll('.sw-image-viewer .bqplot g.axis')]
  .filter(a => a.textContent.includes('Dispersion axis'))
  .flatMap(a => [...a.querySelectorAll('.tick text')].map(t => parseFloat(t.textContent)))
  .filter(v => !isNaN(v)))"""


def test_loading_a_fits_folder_in_the_page(visit, tmp_path):
    """FITS folder: fill the form, Load; progress shows, the unreadable file is named, the data load."""
    folder = tmp_path / "night"
    write_fits_folder(folder, broken=("arc_002.fits",))
    page = visit.page
    assert page.evaluate(X_AXIS_MAX) >= 1000  # the demo first
    page.locator(".sw-source button", has_text="FITS folder").click()
    form = page.locator(".sw-folder-form")
    form.wait_for(state="visible")
    form.get_by_label("Folder").fill(str(folder))
    form.get_by_label("Folder").press("Enter")
    page.wait_for_timeout(200)
    visit.wait_idle()  # the folder's preset tags arrive first; then ours
    for label, value in (("Arc tag", "arc_"), ("Bias tag", "bias_"), ("Science tag", "sci_"), ("Crop rows", ""),
                         ("Mask rows", "")):
        field = form.get_by_label(label)
        field.fill(value)
        field.press("Tab")
    page.wait_for_timeout(300)
    # Record every progress message the page shows, however briefly.
    page.evaluate("""() => {
      window.swProgress = [];
      new MutationObserver(() => {
        const t = document.querySelector('.sw-app').innerText;
        const m = t.match(/reading \\d+\\/\\d+: \\S+/g);
        if (m) window.swProgress.push(...m);
      }).observe(document.querySelector('.sw-app'), {subtree: true, childList: true, characterData: true});
    }""")
    page.locator(".sw-load").click()
    message = page.locator(".sw-message")
    message.get_by_text("arc_002.fits").wait_for(timeout=30000)
    visit.wait_idle()
    text = message.inner_text()
    assert "could not be read" in text and "arc_002.fits" in text
    progress = page.evaluate("() => window.swProgress")
    assert any("reading" in p for p in progress), "no progress was shown while loading"
    # The dashboard now shows the folder's frames: 512 columns, not the demo's 1024.
    page.wait_for_function(X_AXIS_MAX + " < 600", timeout=20000)
    visit.screenshot("fits-folder-loaded")
    visit.assert_clean()

    # A folder that does not exist: an error in words, the dashboard stays.
    form.get_by_label("Folder").fill(str(tmp_path / "missing"))
    form.get_by_label("Folder").press("Enter")
    page.locator(".sw-load").click()
    message.get_by_text("does not exist").wait_for(timeout=20000)
    assert page.locator(".sw-image-viewer image").count() == 1
    visit.assert_clean()


def test_launcher_data_folder_opens_in_the_page(browser, tmp_path):
    """``specwidgets dashboard DATA_FOLDER``: the page opens on that folder's frames."""
    folder = tmp_path / "night"
    write_fits_folder(folder, broken=())
    (folder / "flat_000.fits").write_bytes(b"broken")  # neither arc nor bias: taken as science, unreadable
    port = free_port()
    command = [sys.executable, "-m", "specwidgets.cli", "dashboard", str(folder), "--port", str(port),
               "--no-browser"]
    with Server(command, port, cwd=tmp_path, env=voila_env(), log_path=tmp_path / "launcher.log") as server:
        server.wait_listening(timeout=60)
        page = Visit(browser, server.url)
        try:
            message = page.page.locator(".sw-message").inner_text()
            assert "flat_000.fits" in message, message
            # Shown relative to the data root (the launcher makes DATA_FOLDER the root).
            assert page.page.locator(".sw-folder-form input").first.input_value() == "."
            page.screenshot("launcher-data-folder")
            page.assert_clean()
        finally:
            page.close()


def test_goodman_sample_in_the_page(visit):
    from specwidgets.sample_data import goodman_available

    if not goodman_available():
        pytest.skip("Goodman sample not available (set SPECWIDGETS_DATA_DIR)")
    page = visit.page
    page.locator(".sw-source button", has_text="Goodman sample").click()
    page.locator(".sw-load").click()
    page.locator(".sw-message").get_by_text("Loaded the Goodman sample").wait_for(timeout=60000)
    page.wait_for_function(X_AXIS_MAX + " >= 2000", timeout=20000)  # 2030 columns
    visit.wait_idle()
    assert page.locator(".sw-mask-slider").inner_text().replace(" ", "").endswith("20–100")
    assert_not_blank(figures(page.locator(".sw-image-viewer")).first, "Goodman image")
    assert_not_blank(figures(page.locator(".sw-sed-explorer")).first, "Goodman sky spectrum")
    visit.screenshot("goodman-sample")
    visit.assert_clean()
