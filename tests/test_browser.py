"""The dashboard in a real browser: Voila serves it, headless Chromium uses it as a person would.

Needs the ``playwright`` Python package and Debian's ``chromium`` at
/usr/bin/chromium (``.ci/run`` installs both; ``playwright install`` cannot
download browsers here). Locally the tests are skipped without them; under CI
(``CI`` set) they fail instead, so a missing browser cannot pass unseen.

Screenshots go to ``artifacts/screenshots/`` (kept by CI, ignored by git).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_launcher import ROOT, Server, free_port, voila_env, write_fits_folder

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
    # Pre-heated kernels, as `specwidgets dashboard` serves pages: each test's
    # page takes a kernel that has already run the notebook while the previous
    # test ran (two, so one is always ready).
    # The dashboard's own Voila (specwidgets.app.voila_server, as `specwidgets dashboard` runs it: its
    # template fetches nothing from outside), with Voila's command line and voila.json.
    command = [sys.executable, "-m", "specwidgets.app.voila_server", str(notebook), "--no-browser", f"--port={port}",
               "--Voila.ip=127.0.0.1", "--VoilaConfiguration.preheat_kernel=True",
               "--VoilaConfiguration.default_pool_size=2"]
    server = Server(command, port, cwd=ROOT, env=voila_env(**env), log_path=tmp / f"{name}.log")
    server.wait_listening(timeout=60)
    # The pool's kernels run the notebook as the server starts: numba's
    # on-disk caches are written then (a first run after install, which a
    # user pays once), before the first timed page.
    return server


@pytest.fixture(scope="module")
def dashboard_server(tmp_path_factory):
    """The dashboard's Voila on ``notebooks/dashboard.ipynb`` from the repository root (so voila.json applies)."""
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


# Tests use no network: any outside request is refused and fails the test. (Voila's lab template
# links Font Awesome from a CDN; the dashboard's template, specwidgets/app/jupyter, does not.)


# The Load button's icon has its glyph, in Font Awesome's font as loaded by the page.
ICONS_DRAWN = """() => {
  const icon = document.querySelector('button i.fa-upload');
  if (!icon) return 'no icon';
  const glyph = getComputedStyle(icon, '::before').content === '"\\uf093"';
  const loaded = [...document.fonts].some(f => f.family.replace(/"/g, '') === 'Font Awesome 5 Free'
                                               && f.status === 'loaded');
  return [glyph, loaded];
}"""


class Visit:
    """One page of the dashboard, with what it reported: page errors, console errors, websocket bytes."""

    def __init__(self, browser, url):
        self.context = browser.new_context(viewport=VIEWPORT)
        self.outside_requests = []
        self.context.route(lambda u: not u.startswith(("http://127.0.0.1", "ws://127.0.0.1")), self._outside)
        self.page = self.context.new_page()
        self.page_errors = []
        self.console_errors = []
        self.frames = []  # (monotonic time, "in"/"out", bytes)
        self.page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        self.page.on("console", self._on_console)
        self.failed_requests = []
        self.page.on("requestfailed", lambda request: self.failed_requests.append(request.url))
        self.page.on("websocket", self._on_websocket)
        start = time.monotonic()
        self.page.goto(url, timeout=int(READY_S * 1000) + 30000, wait_until="domcontentloaded")
        self.page.wait_for_selector(".sw-image-viewer image", timeout=60000)
        self.page.wait_for_selector(".sw-sed-explorer .bqplot path.line", timeout=60000)
        self.wait_idle()
        self.ready_s = time.monotonic() - start

    def _outside(self, route):
        self.outside_requests.append(route.request.url)
        route.abort()

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
        assert not self.outside_requests, f"the page fetched from outside: {self.outside_requests}"
        # Any console error fails: bqplot's "<rect> attribute width: A negative
        # value" once came 12 times per load and hid real ones.
        assert not self.console_errors, f"console errors: {self.console_errors} (failed requests: {self.failed_requests})"
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


TRUNCATED = """() => [...document.querySelectorAll('.widget-label, .widget-toggle-button, .jupyter-button, .widget-label-basic')]
  .filter(e => e.offsetParent !== null && e.scrollWidth > e.clientWidth + 1)
  .map(e => e.textContent.trim())"""


# ------------------------------------------------------------------ tests
def test_dashboard_renders(visit):
    page = visit.page
    assert visit.ready_s < READY_S, f"ready after {visit.ready_s:.1f} s"
    viewer, sed = page.locator(".sw-image-viewer"), page.locator(".sw-sed-explorer")
    assert image_href(viewer).startswith(("blob:", "data:"))
    assert_not_blank(figures(viewer).first, "image viewer")
    assert_not_blank(figures(sed).first, "SED explorer")
    assert page.evaluate(TRUNCATED) == [], "labels cut off with an ellipsis"
    # The buttons' icons, drawn offline from the page's own fonts (no stylesheet from a CDN).
    assert page.evaluate(ICONS_DRAWN) == [True, True], "button icons not drawn"
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
    assert page.evaluate(TRUNCATED) == [], "labels cut off with an ellipsis"
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
    label = page.locator(".sw-mask-label")
    before_label = label.inner_text()

    t0 = time.monotonic()
    drag(page, slider.locator(".noUi-handle-upper"), dx=45)
    released = time.monotonic()
    while image_href(viewer) == before_href and time.monotonic() - released < 10:
        page.wait_for_timeout(20)
    update_s = time.monotonic() - released
    visit.wait_idle()
    received, sent = visit.bytes_since(t0, "in"), visit.bytes_since(t0, "out")

    assert label.inner_text() != before_label, "the slider did not move"
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


def open_warp_picker(visit):
    """Open the "Warp guesses" tab and wait until its profile is drawn and the kernel is idle."""
    visit.page.get_by_role("tab", name="Warp guesses").click()
    picker = visit.page.locator(".sw-warp-picker")
    picker.locator(".bqplot path.dot").first.wait_for(timeout=10000)
    visit.wait_idle()
    return picker


def test_clicks_on_the_arc_profile(visit):
    page = visit.page
    picker = open_warp_picker(visit)
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
    print(f"arc click: guess added and curves redrawn in {seconds:.2f} s")

    # A click on the profile where there is no line says so and adds nothing
    # (the same page: each page costs a kernel).
    # The arc image, put in the page when its tab opened, reads out under the mouse too.
    arc = figures(picker).nth(1)
    arc.scroll_into_view_if_needed()
    box = arc.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.3)
    picker.locator("code", has_text="arc =").wait_for(timeout=10000)
    picker.locator(".bqplot").first.scroll_into_view_if_needed()
    visit.wait_idle()
    before = picker.evaluate(PICKER_STATE)
    xs = sorted(g["x"] for g in before["guesses"])
    gaps = [(b - a, (a + b) / 2) for a, b in zip(xs, xs[1:])]
    _, middle = max(gaps)  # the middle of the widest gap between lines: continuum
    area = before["area"]
    page.mouse.click(middle, area["y"] + area["height"] - 6)
    picker.locator(".sw-click-message").get_by_text("No arc line within").wait_for(timeout=10000)
    visit.wait_idle()
    assert len(picker.evaluate(PICKER_STATE)["guesses"]) == len(before["guesses"])
    visit.screenshot("arc-click-no-line")
    visit.assert_clean()


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
    assert "leaving out" in text and "arc_002.fits: could not read" in text
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


# ``specwidgets dashboard DATA_FOLDER`` opening on that folder's frames in the
# page: test_launcher.py::test_launcher_starts_and_serves, on its server.


def test_goodman_sample_in_the_page(visit):
    from specwidgets.io.sample_data import goodman_available

    if not goodman_available():
        pytest.skip("Goodman sample not available (set SPECWIDGETS_DATA_DIR)")
    page = visit.page
    page.locator(".sw-source button", has_text="Goodman sample").click()
    page.locator(".sw-load").click()
    page.locator(".sw-message").get_by_text("Loaded the Goodman sample").wait_for(timeout=60000)
    page.wait_for_function(X_AXIS_MAX + " >= 2000", timeout=20000)  # 2030 columns
    visit.wait_idle()
    # The slider's range as a Python slice, as the range list and the form write it.
    assert page.locator(".sw-mask-label").inner_text().strip() == "20:100"
    assert "rows 20:100" in page.locator(".sw-image-viewer select").last.inner_text().replace("\xa0", " ")
    assert_not_blank(figures(page.locator(".sw-image-viewer")).first, "Goodman image")
    assert_not_blank(figures(page.locator(".sw-sed-explorer")).first, "Goodman sky spectrum")
    visit.screenshot("goodman-sample")
    # The chi view of the Goodman crop: a diverging map with limits symmetric about zero.
    show_view(page, "Chi")
    visit.wait_idle()
    state = colorbar_state(page.locator(".sw-image-viewer"))
    values = [float(t.replace("\u2212", "-")) for t in state["ticks"] if t.strip()]
    assert min(values) < 0 < max(values) and abs(min(values) + max(values)) < 1e-9, values
    assert [state["stops"][0].lower(), state["stops"][-1].lower()] == ["#053061", "#67001f"]
    page.locator(".sw-image-viewer").scroll_into_view_if_needed()
    visit.screenshot("goodman-chi")
    visit.assert_clean()


# ------------------------------------------------------- viewer conventions
def colorbar_state(locator):
    """Tick numbers of the colorbar and the colours of its gradient."""
    return locator.evaluate("""el => {
      const bars = [...el.querySelectorAll('.bqplot g.g-rect')].map(r => r.parentNode);
      const ticks = bars.flatMap(b => [...b.querySelectorAll('.tick text')].map(t => t.textContent));
      const stops = [...el.querySelectorAll('.bqplot linearGradient stop')].map(s => s.getAttribute('stop-color'));
      return {ticks: ticks, stops: stops};
    }""")


def show_view(page, name):
    viewer = page.locator(".sw-image-viewer")
    viewer.locator("button", has_text=name).click()
    page.wait_for_function(
        f"() => document.querySelector('.sw-image-viewer .bqplot').textContent.includes('{name},')",
        timeout=10000,
    )


def test_chi_view_is_diverging_with_symmetric_limits(visit):
    page = visit.page
    show_view(page, "Chi")
    visit.wait_idle()
    viewer = page.locator(".sw-image-viewer")
    state = colorbar_state(viewer)
    values = [float(t.replace("\u2212", "-")) for t in state["ticks"] if t.strip()]
    assert values and min(values) < 0 < max(values), state
    assert abs(min(values) + max(values)) < 1e-9, f"colorbar ticks not symmetric about 0: {values}"
    assert max(values) < 20, f"chi limits {values}: the trace stretched them"
    stops = [s.lower() for s in state["stops"]]
    assert stops[0] == "#053061" and stops[-1] == "#67001f", f"not RdBu_r: {stops[:2]}...{stops[-2:]}"
    # A person sees both red and blue residuals on a pale background.
    from PIL import Image

    shot = np.asarray(Image.open(io.BytesIO(figures(viewer).first.screenshot())).convert("RGB")).astype(int)
    red = (shot[..., 0] > shot[..., 2] + 60).sum()
    blue = (shot[..., 2] > shot[..., 0] + 60).sum()
    assert red > 500 and blue > 500, f"{red} red and {blue} blue pixels"
    visit.screenshot("chi-diverging")
    # The cursor readout under pan/zoom: the mouse over the x tick "500", mid-height.
    tick = viewer.locator(".bqplot g.axis .tick", has_text="500").first.bounding_box()
    plot = viewer.locator(".bqplot").first.bounding_box()
    page.mouse.move(tick["x"] + tick["width"] / 2, plot["y"] + plot["height"] * 0.3)
    readout = viewer.locator("code", has_text="chi =")
    readout.wait_for(timeout=10000)
    col = int(readout.inner_text().split("col ")[1].split(":")[0])
    assert abs(col - 500) <= 3, f"readout says col {col} with the mouse at column 500"
    visit.assert_clean()


X_TICKS = """sel => [...document.querySelectorAll(sel + ' .bqplot g.axis')]
  .filter(a => a.textContent.includes('Dispersion axis') || a.textContent.includes('Column'))
  .flatMap(a => [...a.querySelectorAll('.tick text')].map(t => parseFloat(t.textContent.replace('\u2212', '-'))))
  .filter(v => !isNaN(v))"""


def test_wheel_zoom_in_the_image_moves_the_1d_preview(visit):
    page = visit.page
    viewer, preview = page.locator(".sw-image-viewer"), page.locator(".sw-preview")
    preview.locator("path.line").first.wait_for(timeout=10000)
    before_image, before_preview = page.evaluate(X_TICKS, ".sw-image-viewer"), page.evaluate(X_TICKS, ".sw-preview")
    assert max(before_image) >= 1000 and max(before_preview) >= 1000
    area = figures(viewer).first.bounding_box()
    page.mouse.move(area["x"] + area["width"] * 0.5, area["y"] + area["height"] * 0.35)
    for _ in range(6):
        page.mouse.wheel(0, -240)  # wheel up: zoom in
        page.wait_for_timeout(60)
    t0 = time.monotonic()
    while max(page.evaluate(X_TICKS, ".sw-preview")) >= 1000 and time.monotonic() - t0 < 10:
        page.wait_for_timeout(50)
    visit.wait_idle()
    image, spectrum = page.evaluate(X_TICKS, ".sw-image-viewer"), page.evaluate(X_TICKS, ".sw-preview")
    span_image, span_preview = max(image) - min(image), max(spectrum) - min(spectrum)
    assert span_image < 0.7 * (max(before_image) - min(before_image)), f"image did not zoom: {image}"
    assert span_preview < 0.7 * (max(before_preview) - min(before_preview)), f"preview did not follow: {spectrum}"
    assert abs(np.mean(image) - np.mean(spectrum)) < 0.25 * span_image, (image, spectrum)
    # The zoomed part is re-rendered at screen resolution: still a picture, not blocks.
    assert_not_blank(figures(viewer).first, "zoomed image")
    page.locator(".sw-preview").scroll_into_view_if_needed()
    visit.screenshot("zoom-shared")
    visit.assert_clean()


SCORE = """() => { const m = document.querySelector('.sw-preview').innerText.match(/Sky-line residual: ([0-9.]+)/);
  return m ? m[1] : null; }"""


def test_preview_score_updates_after_a_mask_change_and_undo_restores_it(visit):
    page = visit.page
    page.locator(".sw-preview path.line").first.wait_for(timeout=10000)
    score = page.evaluate(SCORE)
    assert score is not None and 0.3 < float(score) < 3.0, f"sky-line score {score} on the demo"
    label = page.locator(".sw-mask-label")
    before_label = label.inner_text().strip()
    first_flux = page.locator(".sw-preview path.line").nth(1).get_attribute("d")
    visit.screenshot("preview-before", page.locator(".sw-preview"))

    slider = page.locator(".sw-mask-slider")
    slider.scroll_into_view_if_needed()
    drag(page, slider.locator(".noUi-handle-lower"), dx=-60)
    t0 = time.monotonic()
    while page.locator(".sw-preview path.line").nth(1).get_attribute("d") == first_flux and time.monotonic() - t0 < 10:
        page.wait_for_timeout(50)
    visit.wait_idle()
    moved_label = label.inner_text().strip()
    assert moved_label != before_label, "the mask did not change"
    assert page.locator(".sw-preview path.line").nth(1).get_attribute("d") != first_flux, "the 1D preview did not update"
    assert page.evaluate(SCORE) is not None
    visit.screenshot("preview-after-mask-change", page.locator(".sw-preview"))

    # Undo restores the previous mask (and the spectrum with it).
    page.locator(".sw-undo").click()
    page.wait_for_function(f"() => document.querySelector('.sw-mask-label').innerText.trim() === '{before_label}'",
                           timeout=10000)
    visit.wait_idle()
    assert page.evaluate(SCORE) == score
    # Redo, then Ctrl-Z with the pointer over the page.
    page.locator(".sw-redo").click()
    page.wait_for_function(f"() => document.querySelector('.sw-mask-label').innerText.trim() === '{moved_label}'",
                           timeout=10000)
    spectrum = figures(page.locator(".sw-preview")).first
    spectrum.scroll_into_view_if_needed()
    box = spectrum.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.keyboard.press("Control+z")
    page.wait_for_function(f"() => document.querySelector('.sw-mask-label').innerText.trim() === '{before_label}'",
                           timeout=10000)
    visit.screenshot("undo-restored")
    visit.assert_clean()


def test_blink_alternates_science_and_corrected(visit):
    page = visit.page
    viewer = page.locator(".sw-image-viewer")
    titles = set()
    viewer.locator("button", has_text="Blink").click()
    t0 = time.monotonic()
    while len(titles) < 2 and time.monotonic() - t0 < 10:
        titles.add(viewer.locator(".bqplot .mainheading").first.text_content().split(",")[0])
        page.wait_for_timeout(100)
    viewer.locator("button", has_text="Blink").click()  # stop
    visit.wait_idle()
    assert titles >= {"Science", "Corrected"}, titles
    visit.assert_clean()


def test_session_saved_and_loaded_in_the_page(visit, tmp_path):
    page = visit.page
    path = tmp_path / "night.json"
    label = page.locator(".sw-mask-label")
    saved_label = label.inner_text().strip()
    field = page.get_by_label("Session")
    field.fill(str(path))
    field.press("Tab")
    page.locator(".sw-save-session").click()
    page.locator(".sw-session-message").get_by_text("saved the settings").wait_for(timeout=10000)
    assert path.exists() and '"mask_region"' in path.read_text()

    slider = page.locator(".sw-mask-slider")
    slider.scroll_into_view_if_needed()
    drag(page, slider.locator(".noUi-handle-upper"), dx=40)
    page.wait_for_function(f"() => document.querySelector('.sw-mask-label').innerText.trim() !== '{saved_label}'",
                           timeout=10000)
    visit.wait_idle()
    page.locator(".sw-load-session").click()
    page.wait_for_function(f"() => document.querySelector('.sw-mask-label').innerText.trim() === '{saved_label}'",
                           timeout=10000)
    page.locator(".sw-session-message").get_by_text("loaded the settings").wait_for(timeout=10000)
    page.locator(".sw-session-message").scroll_into_view_if_needed()
    visit.screenshot("session-loaded")
    visit.assert_clean()


def test_session_saved_in_the_page_replays_in_batch(visit, tmp_path):
    """Load a FITS folder (two arc lamps), move the mask, Save session and Export; batch --settings gives that sky."""
    from astropy.io import fits
    from test_session_batch import write_night

    folder = tmp_path / "night"
    write_night(folder)
    page = visit.page
    page.locator(".sw-source button", has_text="FITS folder").click()
    form = page.locator(".sw-folder-form")
    form.wait_for(state="visible")
    form.get_by_label("Folder").fill(str(folder))
    form.get_by_label("Folder").press("Enter")
    page.wait_for_timeout(200)
    visit.wait_idle()
    for label, value in (("Arc tag", "arc_"), ("Bias tag", "bias_"), ("Science tag", "sci_"), ("Crop rows", "3:68"),
                         ("Mask rows", "")):
        field = form.get_by_label(label)
        field.fill(value)
        field.press("Tab")
    page.wait_for_timeout(300)
    page.locator(".sw-load").click()
    page.wait_for_function(X_AXIS_MAX + " < 500", timeout=30000)  # the folder's 400 columns
    visit.wait_idle()
    slider = page.locator(".sw-mask-slider")
    slider.scroll_into_view_if_needed()
    before = page.locator(".sw-mask-label").inner_text().strip()
    drag(page, slider.locator(".noUi-handle-upper"), dx=30)
    page.wait_for_function(f"() => document.querySelector('.sw-mask-label').innerText.trim() !== '{before}'",
                           timeout=10000)
    visit.wait_idle()

    session = tmp_path / "night_session.json"
    field = page.get_by_label("Session")
    field.fill(str(session))
    field.press("Tab")
    page.locator(".sw-save-session").click()
    page.locator(".sw-session-message").get_by_text("saved the settings").wait_for(timeout=10000)
    exported = tmp_path / "exported"
    field = page.get_by_label("Export to")
    field.fill(str(exported))
    field.press("Tab")
    page.locator(".jupyter-button", has_text="Export FITS").click()
    page.get_by_text("wrote 2 file(s)").wait_for(timeout=20000)
    visit.screenshot("session-saved-for-batch")
    visit.assert_clean()

    saved = json.loads(session.read_text())
    assert saved["source"]["kind"] == "folder" and saved["source"]["crop"] == "3:68"
    assert saved["state"]["mask_region"] != [] and ":" in saved["state"]["mask_region"][0]
    out = tmp_path / "batch"
    run = subprocess.run([sys.executable, "-m", "specwidgets.cli", "batch", "--settings", str(session), "--out",
                          str(out), "--workers", "1", "--no-progress"], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    worst = 0.0
    for name in ("sci_000_sky.fits", "sci_001_sky.fits"):
        with fits.open(exported / name) as a, fits.open(out / name) as b:
            page_sky, batch_sky = a["SKY"].data.astype(float), b["SKY"].data.astype(float)
        worst = max(worst, float(np.nanmax(np.abs(batch_sky - page_sky)) / np.nanmax(np.abs(page_sky))))
    print(f"page export vs batch --settings: max relative SKY difference {worst:.2e}")
    assert worst <= 1e-6

    # A session with an invalid mask: the page says which key, and keeps its mask.
    label = page.locator(".sw-mask-label").inner_text().strip()
    bad = tmp_path / "bad_session.json"
    bad.write_text(json.dumps({**saved, "state": {**saved["state"], "mask_region": ["50:10"]}}))
    field = page.get_by_label("Session")
    field.fill(str(bad))
    field.press("Tab")
    page.locator(".sw-load-session").click()
    page.locator(".sw-session-message").get_by_text("could not load the session").wait_for(timeout=10000)
    assert "state.mask_region" in page.locator(".sw-session-message").inner_text()
    assert page.locator(".sw-mask-label").inner_text().strip() == label
    page.locator(".sw-session-message").scroll_into_view_if_needed()
    visit.screenshot("session-invalid-mask")
    visit.assert_clean()
