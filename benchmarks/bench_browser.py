"""Browser round trips of the dashboard, in Chromium against a real ``specwidgets dashboard`` server.

For each interaction the time from the front-end event to the new picture is
split where it goes:

* **to kernel**: from the browser event (``pointerup``, taken in the page
  with ``performance.now()``) to the start of the first kernel callback;
* **kernel**: the widget callbacks (``SPECWIDGETS_TIMING_LOG``, see
  :mod:`specwidgets.core._timing`), of which **compute** is the sky/warp
  recomputation and **render** the picture's reduction, colouring and PNG
  encoding;
* **to DOM**: from the end of the last kernel callback to the moment the
  page's ``<image>`` gets its new ``href`` (a ``MutationObserver``), which
  covers the websocket message (its size is counted from Chromium's
  websocket frames) and the widget manager's decoding;
* **paint**: from the new ``href`` to the next frame the browser produced
  (``requestAnimationFrame`` then a task), plus, separately, the time to
  decode the PNG (``HTMLImageElement.decode()`` of the same blob).

Interactions (goals of issue 13, quiet machine):

* page ready, demo: navigation to the image and the sky spectrum drawn (<= 2 s);
* slider release -> new picture (corrected view) (<= 100 ms);
* view switch: science -> background -> corrected -> chi (<= 100 ms, no recomputation);
* arc click -> curves: remove a guess, add it back (<= 200 ms);
* method switch bspline -> median after a mask change (the median is fit anew), corrected view
  (<= 250 ms); and **switch back** to bspline, whose fit of the same inputs the page keeps (nothing
  is recomputed: the "fits" column reads 0);

on the demo, the Goodman crop (rows 680:800 of both exposures) and one
Goodman full frame (947 x 2030, loaded in the page with blank crop rows).
Every figure is a median over ``--repeat`` tries (the machine is shared).

Run::

    python benchmarks/bench_browser.py [--repeat 5] [--only ready,demo,crop,full] [--pages 3]
        [--together 8] [--server-args "--pool-size 0"]

(``--together N``: N demo pages opened at once as well, e.g. with
``--server-args "--pool-size 8"`` so that each finds a pre-heated kernel.)

(``ready``: the page loads only.)

Needs playwright and Chromium at /usr/bin/chromium, and the Goodman sample
(``SPECWIDGETS_GOODMAN`` or /work/shared/data/goodman) for crop and full.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import heading, machine_line, source_line, table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("SPECWIDGETS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-gpu", "--no-first-run"]
GOODMAN = Path(os.environ.get("SPECWIDGETS_GOODMAN", "/work/shared/data/goodman"))
VIEWPORT = {"width": 1400, "height": 1000}
CDN = "https://cdn.jsdelivr.net/npm/@fortawesome/fontawesome-free@"
GOALS_MS = {"page ready": 2000, "slider release": 100, "view switch": 100, "arc click": 200, "method switch": 250,
            "switch back": 250}

# In the page: wait for a change under ``root`` (a MutationObserver), then for
# the next frame; also decode the new picture on its own.
WATCH_JS = """([selector, kind]) => {
  const all = document.querySelectorAll(selector); const root = all[all.length - 1];  // the newest dashboard
  const href = el => { const im = el.querySelector('image'); return im ? (im.getAttribute('href') || im.getAttribute('xlink:href') || '') : ''; };
  const curves = el => { const f = el.querySelectorAll('.bqplot')[1];
    return f ? [...f.querySelectorAll('path.line')].map(p => p.getAttribute('d') || '').join('|') : ''; };
  const probe = kind === 'curves' ? curves : href;
  const before = probe(root);
  window.__sw = {up: null, dom: null, frame: null, decode: null};
  document.addEventListener('pointerup', () => { window.__sw.up = performance.now(); },
                            {capture: true, once: true});
  const observer = new MutationObserver(() => {
    const now = probe(root);
    if (now === before || window.__sw.dom !== null) return;
    window.__sw.dom = performance.now();
    observer.disconnect();
    requestAnimationFrame(() => setTimeout(() => { window.__sw.frame = performance.now(); }, 0));
    if (kind !== 'curves' && now) {
      const img = new Image(); const t0 = performance.now(); img.src = now;
      img.decode().then(() => { window.__sw.decode = performance.now() - t0; }, () => { window.__sw.decode = -1; });
    } else { window.__sw.decode = 0; }
  });
  observer.observe(root, {subtree: true, childList: true, attributes: true, attributeFilter: ['href', 'd']});
  return performance.timeOrigin;
}"""

READY_JS = """() => {
  const im = document.querySelector('.sw-image-viewer image');
  const line = document.querySelector('.sw-sed-explorer .bqplot path.line');
  const href = im ? (im.getAttribute('href') || im.getAttribute('xlink:href') || '') : '';
  if (href && line && (line.getAttribute('d') || '').length > 10) {
    if (window.__swReady === undefined) window.__swReady = performance.now();
    return true;
  }
  return false;
}"""


BUSY_JS = """() => [...document.querySelectorAll('.sw-status')].some(e => e.innerText.includes('computing'))"""


class _Done(Exception):
    """Nothing more to measure on this server."""


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DashboardServer:
    """``specwidgets dashboard [DATA] --port P --no-browser`` with kernel timings logged to a file."""

    def __init__(self, data=None, extra=(), workdir=None):
        self.port = free_port()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="bench_browser_"))
        self.timing_log = self.workdir / f"timings_{self.port}.jsonl"
        self.log_path = self.workdir / f"server_{self.port}.log"
        env = dict(os.environ, SPECWIDGETS_TIMING_LOG=str(self.timing_log), PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        command = [sys.executable, "-m", "specwidgets.cli", "dashboard", *([str(data)] if data else []),
                   "--port", str(self.port), "--no-browser", *extra]
        self._log = open(self.log_path, "w")
        self.started = time.monotonic()
        self.process = subprocess.Popen(command, cwd=self.workdir, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}/"

    def wait_ready(self, timeout=300):
        """Until the launcher says "ready at" (its probe page rendered); returns the seconds it took."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready at" in self.log_path.read_text():
                return time.monotonic() - self.started
            if self.process.poll() is not None:
                raise RuntimeError(f"the dashboard stopped:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"the dashboard was not ready within {timeout} s")

    def timings(self, t0, t1):
        """Kernel records whose end falls in ``[t0, t1]`` (wall-clock seconds)."""
        if not self.timing_log.exists():
            return []
        out = []
        for line in self.timing_log.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if t0 <= entry["t"] <= t1:
                out.append(entry)
        return out

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()  # the launcher stops Voila and its kernels
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class Page:
    """One dashboard page in its own browser context, with its websocket frames counted."""

    def __init__(self, browser, url, wait=True):
        self.context = browser.new_context(viewport=VIEWPORT)
        self.context.route(lambda u: not u.startswith(("http://127.0.0.1", "ws://127.0.0.1")), self._outside)
        self.page = self.context.new_page()
        self.frames = []
        self.page.on("websocket", self._on_websocket)
        self.errors = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(url, timeout=300000, wait_until="commit")
        if wait:
            self.finish()

    def finish(self):
        """Wait until the page is ready (image and sky spectrum drawn) and read where the time went."""
        self.page.wait_for_function(READY_JS, timeout=300000, polling=20)
        self.ready_ms = self.page.evaluate("window.__swReady")
        # Where the time went: the HTML (Voila runs the notebook unless a
        # pre-heated kernel has), the page's scripts, the first kernel message.
        self.phases = self.page.evaluate("""() => { const n = performance.getEntriesByType('navigation')[0];
            return {html: n.responseEnd, dom: n.domContentLoadedEventEnd, load: n.loadEventEnd}; }""")
        first_in = min((t for t, d, _ in self.frames if d == "in"), default=float("nan"))
        origin = self.page.evaluate("performance.timeOrigin") / 1000.0
        self.phases["first_ws"] = 1000.0 * (first_in - origin)

    @staticmethod
    def _outside(route):
        if route.request.url.startswith(CDN):
            route.fulfill(status=200, content_type="text/css", body="/* offline */")
        else:
            route.abort()

    def _on_websocket(self, ws):
        def size(payload):
            return len(payload) if isinstance(payload, (bytes, bytearray)) else len(payload.encode("utf-8"))

        ws.on("framereceived", lambda p: self.frames.append((time.time(), "in", size(p))))
        ws.on("framesent", lambda p: self.frames.append((time.time(), "out", size(p))))

    def wait_idle(self, quiet=0.4, timeout=60.0):
        """Until the websocket has been quiet for ``quiet`` s and the status bar no longer says "computing"."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = self.frames[-1][0] if self.frames else 0.0
            if time.time() - last >= quiet and not self.page.evaluate(BUSY_JS):
                return
            self.page.wait_for_timeout(50)

    def close(self):
        # As a user closing the tab: the page's close beacon shuts its kernel
        # down (closing the context alone tears the page down without it, and
        # the kernel would count as an open page until culled).
        self.page.close(run_before_unload=True)
        time.sleep(0.5)
        self.context.close()


def measure(server, page, selector, kind, action, timeout=30.0):
    """Run ``action`` (mouse events) and split the time to the changed picture/curves; a dict of ms."""
    page.wait_idle()
    origin = page.page.evaluate(WATCH_JS, [selector, kind]) / 1000.0
    wall0 = time.time()
    action()
    page.page.wait_for_function("window.__sw.frame !== null && window.__sw.decode !== null",
                                timeout=int(timeout * 1000), polling=10)
    sw = page.page.evaluate("window.__sw")
    page.wait_idle()
    wall1 = time.time()
    up = origin + sw["up"] / 1000.0
    dom = origin + sw["dom"] / 1000.0
    records = server.timings(wall0 - 0.05, wall1)
    eps = 0.002  # clocks: the kernel's time.time() and the page's timeOrigin + now()
    started = [r for r in records if r["t"] - r["ms"] / 1000.0 >= up - eps and r["t"] - r["ms"] / 1000.0 <= dom]
    kernel_start = min((r["t"] - r["ms"] / 1000.0 for r in started), default=float("nan"))
    # The last piece of kernel work that ended before the page changed sent the picture.
    done = [r["t"] for r in records if up - eps <= r["t"] <= dom + eps]
    sent = max(done, default=float("nan"))
    renders = [r for r in records if r["what"] == "render" and up - eps <= r["t"] <= dom + eps]
    fits = [r for r in records if r["what"] == "compute" and r["t"] - r["ms"] / 1000.0 >= up - eps
            and r["t"] - r["ms"] / 1000.0 <= dom]
    received = sum(n for t, d, n in page.frames if up <= t <= dom + 0.005 and d == "in")
    return {
        "total": 1000.0 * (dom - up) + (sw["frame"] - sw["dom"]),
        "to_kernel": 1000.0 * (kernel_start - up),
        "kernel": 1000.0 * (sent - kernel_start),
        "render": sum(r["ms"] for r in renders),
        "png_kib": sum(r.get("png_bytes", 0) for r in renders) / 1024.0,
        "n_compute": len(fits),
        "after_kernel": 1000.0 * (dom - sent),
        "paint": sw["frame"] - sw["dom"],
        "decode": sw["decode"],
        "msg_kib": received / 1024.0,
    }


def click_center(page, locator):
    box = locator.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)


def drag(page, locator, dx):
    box = locator.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + dx, y, steps=6)
    page.mouse.up()


TITLE_JS = """name => { const all = document.querySelectorAll('.sw-image-viewer .bqplot .mainheading');
  const t = all.length ? all[all.length - 1] : null;
  return t !== null && t.textContent.startsWith(name); }"""


def set_view(page, name):
    viewer = page.page.locator(".sw-image-viewer").last
    for _ in range(3):
        button = viewer.locator(".widget-toggle-button", has_text=name).first
        button.scroll_into_view_if_needed()
        button.click()
        try:
            page.page.wait_for_function(TITLE_JS, arg=name, timeout=20000)
            break
        except Exception:  # noqa: BLE001 - a click lost while the page was busy: again
            continue
    page.wait_idle()


def run_slider(server, page, repeat):
    set_view(page, "Corrected")
    handle = page.page.locator(".sw-mask-slider .noUi-handle-upper").last
    handle.scroll_into_view_if_needed()
    out = []
    for i in range(repeat):
        dx = 12 if i % 2 == 0 else -12
        out.append(measure(server, page, ".sw-image-viewer", "href", lambda: drag(page.page, handle, dx)))
    return out


def run_views(server, page, repeat):
    set_view(page, "Science")
    viewer = page.page.locator(".sw-image-viewer").last
    out = []
    for _ in range(repeat):
        for name in ("Background", "Corrected", "Chi", "Science"):
            button = viewer.locator(".widget-toggle-button", has_text=name).first
            out.append(measure(server, page, ".sw-image-viewer", "href", lambda: click_center(page.page, button)))
    return out


def run_method(server, page, repeat):
    """``(switches that fit, switches back)``: bspline -> median after a mask change (a new fit), then
    back to bspline (its fit of these inputs is kept by the page: nothing is recomputed)."""
    set_view(page, "Corrected")
    fitted, back = [], []
    bar = page.page.locator(".sw-dashboard").last.locator(":scope > .widget-hbox").first
    handle = page.page.locator(".sw-mask-slider .noUi-handle-upper").last
    for i in range(repeat):
        # A new mask first (its picture awaited, not counted), so that the
        # median has no fit of these inputs yet.
        handle.scroll_into_view_if_needed()
        measure(server, page, ".sw-image-viewer", "href", lambda: drag(page.page, handle, 12 if i % 2 == 0 else -12))
        for name, out in (("median", fitted), ("bspline", back)):
            button = bar.locator(".widget-toggle-button", has_text=name).first
            button.scroll_into_view_if_needed()  # the slider's drag may have scrolled it away
            out.append(measure(server, page, ".sw-image-viewer", "href", lambda b=button: click_center(page.page, b)))
    return fitted, back


PICKER_JS = """el => {
  const figs = el.querySelectorAll('.bqplot');
  const dots = [...figs[0].querySelectorAll('path.dot')].map(d => {
    const r = d.getBoundingClientRect();
    return {x: r.x + r.width / 2, y: r.y + r.height / 2, stroke: getComputedStyle(d).stroke};
  }).filter(d => d.stroke === 'rgb(0, 0, 0)');
  const area = figs[0].querySelector('rect.plotarea_events').getBoundingClientRect();
  return {guesses: dots, area: {x: area.x, y: area.y, width: area.width, height: area.height}};
}"""


def run_arc(server, page, repeat):
    p = page.page
    p.get_by_role("tab", name="Warp guesses").last.click()
    picker = p.locator(".sw-warp-picker").last
    picker.locator(".bqplot path.dot").first.wait_for(timeout=60000)
    picker.locator(".bqplot").first.scroll_into_view_if_needed()
    page.wait_idle()
    out = []
    for i in range(repeat):
        state = picker.evaluate(PICKER_JS)
        guess = state["guesses"][(len(state["guesses"]) // 2 + i) % len(state["guesses"])]
        area = state["area"]
        out.append(measure(server, page, ".sw-warp-picker", "curves", lambda: p.mouse.click(guess["x"], guess["y"])))
        out.append(measure(server, page, ".sw-warp-picker", "curves",
                           lambda: p.mouse.click(guess["x"] + 1, area["y"] + area["height"] - 6)))
    p.get_by_role("tab", name="Sky").last.click()
    page.wait_idle()
    return out


def load_full_frame(page):
    p = page.page
    form = p.locator(".sw-folder-form")
    if not form.is_visible():
        p.locator(".sw-source button", has_text="FITS folder").click()
        form.wait_for(state="visible")
    for label, value in (("Crop rows", ""), ("Mask rows", "700:790")):
        field = form.get_by_label(label)
        field.fill(value)
        field.press("Tab")
    p.wait_for_timeout(300)
    page.wait_idle()
    p.locator(".sw-load").click()
    # The new dashboard's mask label shows the typed mask rows.
    p.wait_for_function(
        "() => { const all = document.querySelectorAll('.sw-mask-label');"
        " return all.length && all[all.length - 1].innerText.trim() === '700:790'; }",
        timeout=300000)
    page.wait_idle(quiet=1.0)


def summarize(name, case, rows):
    row = _summarize(name, case, rows)
    print("  " + "  ".join(fmt(row)), flush=True)
    return row


def _summarize(name, case, rows):
    def med(key):
        values = [r[key] for r in rows if r[key] == r[key]]  # drop NaN
        return statistics.median(values) if values else float("nan")

    return [name, case, len(rows), med("total"), min(r["total"] for r in rows), max(r["total"] for r in rows),
            med("to_kernel"), med("kernel"), med("render"), med("png_kib"), med("after_kernel"), med("msg_kib"),
            med("paint"), med("decode"), med("n_compute"), GOALS_MS[name]]


COLUMNS = ["interaction", "case", "n", "median ms", "min", "max", "to kernel", "kernel", "of which PNG",
           "PNG KiB", "kernel->DOM", "WS KiB", "paint", "decode", "fits", "goal ms"]


def fmt(row):
    return [v if isinstance(v, str) else (f"{v:.0f}" if isinstance(v, int) or abs(v) >= 10 else f"{v:.1f}")
            for v in row]


def page_ready(browser, server, n_pages, pause):
    times = []
    for i in range(n_pages):
        if i:
            time.sleep(pause)  # a pre-heated pool refills (fill delay + kernel start + the notebook)
        page = Page(browser, server.url)
        times.append((page.ready_ms, page.phases))
        page.close()
    return times


def _cpu_seconds(server):
    """CPU seconds used so far by the server's kernels, the rest of the server (Voila), and Chromium."""
    import psutil

    def used(proc):
        try:
            t = proc.cpu_times()  # its own, not its children's: they are counted themselves
            return t.user + t.system
        except psutil.Error:
            return 0.0

    out = {"kernels": 0.0, "server": 0.0, "chromium": 0.0}
    try:
        root = psutil.Process(server.process.pid)
        tree = [root] + root.children(recursive=True)
    except psutil.Error:
        tree = []
    for proc in tree:
        try:
            kind = "kernels" if "ipykernel" in " ".join(proc.cmdline()) else "server"
        except psutil.Error:
            continue
        out[kind] += used(proc)
    for proc in psutil.process_iter(["name"]):
        if "chrom" in (proc.info["name"] or "").lower():
            out["chromium"] += used(proc)
    return out


def pages_together(browser, server, n_pages):
    """``n_pages`` pages opened at once (each navigation started before any is waited for).

    Each page's time runs from its own navigation start, so a page the
    others delayed shows it. Returns ``(ready_ms, phases)`` per page and the
    CPU seconds the kernels, the rest of the server (Voila) and Chromium
    used meanwhile: here the browsers share the server's cores, where
    users' browsers run on their own machines.
    """
    before = _cpu_seconds(server)
    pages = [Page(browser, server.url, wait=False) for _ in range(n_pages)]
    try:
        for page in pages:
            page.finish()
        after = _cpu_seconds(server)
        return [(page.ready_ms, page.phases) for page in pages], {k: after[k] - before[k] for k in after}
    finally:
        for page in pages:
            page.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pages", type=int, default=3, help="page loads timed on the demo")
    parser.add_argument("--pause", type=float, default=20.0,
                        help="seconds between page loads (the pre-heated kernel's refill)")
    parser.add_argument("--together", type=int, default=0, metavar="N",
                        help="also open N demo pages at once (after the pre-heated pool has refilled)")
    parser.add_argument("--only", default="demo,crop,full")
    parser.add_argument("--server-args", default="", help="extra arguments to specwidgets dashboard")
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.only.split(",") if c.strip()]

    from playwright.sync_api import sync_playwright

    heading("Browser round trips (Chromium, specwidgets dashboard)")
    print(machine_line())
    print(source_line())
    rows, ready_rows = [], []
    extra = args.server_args.split()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            if "demo" in cases or "ready" in cases:
                server = DashboardServer(extra=extra)
                try:
                    start_s = server.wait_ready()
                    time.sleep(args.pause)
                    for ready_ms, phases in page_ready(browser, server, args.pages, args.pause):
                        ready_rows.append(["page ready", "demo", ready_ms, phases])
                    print(f"(demo server ready in {start_s:.1f} s)")
                    if args.together:
                        time.sleep(args.pause)
                        together, cpu = pages_together(browser, server, args.together)
                        for ready_ms, phases in together:
                            ready_rows.append([f"page ready, {args.together} at once", "demo", ready_ms, phases])
                        print(f"({args.together} pages at once: CPU seconds until the last was ready: "
                              + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()) + ")")
                    if "demo" not in cases:
                        raise _Done
                    time.sleep(args.pause)
                    page = Page(browser, server.url)
                    rows.append(summarize("slider release", "demo", run_slider(server, page, args.repeat)))
                    rows.append(summarize("view switch", "demo", run_views(server, page, max(1, args.repeat // 2))))
                    rows.append(summarize("arc click", "demo", run_arc(server, page, args.repeat)))
                    fitted, back = run_method(server, page, args.repeat)
                    rows.append(summarize("method switch", "demo", fitted))
                    rows.append(summarize("switch back", "demo", back))
                    page.close()
                except _Done:
                    pass
                finally:
                    server.stop()
            if ("crop" in cases or "full" in cases) and GOODMAN.is_dir():
                server = DashboardServer(GOODMAN, extra=extra)
                try:
                    server.wait_ready()
                    time.sleep(args.pause)
                    page = Page(browser, server.url)
                    print(f"(Goodman crop page ready in {page.ready_ms / 1000:.1f} s)")
                    sets = []
                    if "crop" in cases:
                        sets.append("crop")
                    if "full" in cases:
                        sets.append("full")
                    for case in sets:
                        if case == "full":
                            t0 = time.monotonic()
                            load_full_frame(page)
                            print(f"(full frame loaded in the page in {time.monotonic() - t0:.1f} s)")
                        rows.append(summarize("slider release", case, run_slider(server, page, args.repeat)))
                        rows.append(summarize("view switch", case, run_views(server, page, max(1, args.repeat // 2))))
                        rows.append(summarize("arc click", case, run_arc(server, page, args.repeat)))
                        fitted, back = run_method(server, page, args.repeat)
                        rows.append(summarize("method switch", case, fitted))
                        rows.append(summarize("switch back", case, back))
                    page.close()
                finally:
                    server.stop()
            elif "crop" in cases or "full" in cases:
                print(f"(no Goodman sample at {GOODMAN}: crop and full skipped)")
        finally:
            browser.close()

    if ready_rows:
        print()
        print("Page ready (navigation -> image and sky spectrum drawn), ms:")
        out = []
        for label in dict.fromkeys(r[0] for r in ready_rows):
            these = [r for r in ready_rows if r[0] == label]
            values = [r[2] for r in these]

            def phase(key, these=these):
                return f"{statistics.median(r[3][key] for r in these):.0f}"

            # Pages opened at once: the last page ready is what the last user waits.
            out.append([label, "demo", len(values), f"{statistics.median(values):.0f}", f"{max(values):.0f}",
                        " ".join(f"{v:.0f}" for v in values), phase("html"), phase("dom"), phase("first_ws"), "2000"])
        print(table(out, ["pages", "case", "tries", "median", "slowest", "each", "HTML received", "DOM ready",
                          "first kernel msg", "goal"]))
    if rows:
        print()
        print("Round trips, event -> new picture/curves, medians (ms; 'kernel': first callback start -> last kernel "
              "step before the page changed; 'of which PNG': rendering and encoding; 'fits': sky/warp fits started "
              "before the picture changed):")
        print(table([fmt(r) for r in rows], COLUMNS))
        print()
        for r in rows:
            verdict = "meets" if r[3] <= r[-1] else "MISSES"
            print(f"{r[0]:>15} {r[1]:>5}: {r[3]:6.0f} ms vs goal {r[-1]} ms -> {verdict}")


if __name__ == "__main__":
    main()
