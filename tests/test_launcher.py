"""``specwidgets dashboard``: the command line, the Voila settings, and a real server.

The helpers at the top (:class:`Server`, :func:`free_port`, :func:`fetch`,
:func:`write_fits_folder`) are shared with the browser and Binder tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from specwidgets.app import launcher
from specwidgets.app.page import DATA_ENV, NOTEBOOK
from specwidgets.core.frames import median_frames

ROOT = Path(__file__).resolve().parents[1]

# What Voila puts in a page when a cell failed, with tracebacks on or off.
ERROR_MARKERS = ("Traceback", "There was an error when executing cell", "ExecutionError",
                 "An exception occurred at the server", "stopped on an error")


# ------------------------------------------------------------------ helpers
def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fetch(url, timeout=120):
    """GET ``url``; returns (status, text), or raises TimeoutError once ``timeout`` seconds have passed in all.

    The whole response within ``timeout``, not each read: a page whose kernel
    did not start (a port taken by another process between its choice and its
    bind) kept its streamed response open, and a read timeout alone let the
    test wait 15 minutes.
    """
    deadline = time.monotonic() + timeout
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback only
        chunks = []
        while chunk := response.read1(1 << 16):
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} still sending after {timeout} s (its server's log says why)")
        return response.status, b"".join(chunks).decode("utf-8", "replace")


class Server:
    """A server process of ours on 127.0.0.1, its output in a log file, stopped by its own id."""

    def __init__(self, command, port, *, cwd=ROOT, env=None, log_path=None):
        self.command = [str(c) for c in command]
        self.port = port
        self.url = f"http://127.0.0.1:{port}/"
        self.log_path = Path(log_path) if log_path else None
        self._log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            self.command, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )

    def log(self, tail=4000):
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-tail:]

    def listening(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def wait_listening(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            if self.listening():
                return self
            time.sleep(0.2)
        raise TimeoutError(f"nothing listens on port {self.port} after {timeout} s:\n{self.log()}")

    def stop(self, timeout=20):
        """SIGTERM to our process; if it lingers, SIGKILL to the process group it leads."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if self._log is not subprocess.DEVNULL:
            self._log.close()
        return self.process.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def voila_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != DATA_ENV}
    env.update(extra)
    return env


def write_fits_folder(folder, shape=(80, 512), broken=("arc_002.fits",)):
    """A small night of generic FITS frames (ADU, no gain): bias, arc, science, and broken files."""
    from astropy.io import fits

    from specwidgets.io.synthetic import make_synthetic_longslit

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frames = make_synthetic_longslit(shape=shape, n_exposures=2, n_arc_lines=14, n_sky_lines=15, seed=7)
    rng = np.random.default_rng(3)
    level = 300.0
    for i in range(3):
        fits.writeto(folder / f"bias_{i:03d}.fits", (level + rng.normal(0, 4, shape)).astype(np.float32))
    for i in range(2):
        fits.writeto(folder / f"arc_{i:03d}.fits", (level + frames.arc).astype(np.float32))
    for i, image in enumerate(frames.science):
        fits.writeto(folder / f"sci_{i:03d}.fits", (level + image).astype(np.float32))
    for name in broken:
        (folder / name).write_bytes(b"this is not a FITS file\n" * 10)
    return frames


# ------------------------------------------------------------------ tests
def test_voila_json_matches_the_launcher():
    """voila.json (voila run at the root, Binder) and the launcher use the same settings."""
    settings = json.loads((ROOT / "voila.json").read_text())
    assert settings == launcher.VOILA_SETTINGS
    assert settings["VoilaConfiguration"]["show_tracebacks"] is False
    assert settings["VoilaConfiguration"]["theme"] in ("light", "dark")


def test_packaged_notebook_exists():
    assert NOTEBOOK.is_file()
    assert NOTEBOOK.parent == Path(launcher.__file__).parent  # both in specwidgets/app/


def parse(argv):
    parser = argparse.ArgumentParser(prog="specwidgets")
    launcher.add_dashboard_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_parser_arguments():
    args = parse(["dashboard"])
    assert (args.data_folder, args.port, args.no_browser, args.ip) == (None, 8866, False, "127.0.0.1")
    assert args.func is launcher.run_dashboard_command
    args = parse(["dashboard", "night1", "--port", "9001", "--no-browser"])
    assert (args.data_folder, args.port, args.no_browser) == ("night1", 9001, True)


def test_cli_registers_the_dashboard_command(capsys):
    from specwidgets.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["dashboard", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "DATA_FOLDER" in out and "--no-browser" in out and "--port" in out


def test_python_dash_m_runs_the_command(tmp_path):
    """Where the ``specwidgets`` script is not on PATH (a user's venv not activated), ``python -m specwidgets``
    is what one types: it said "cannot be directly executed" (trial J1)."""
    out = subprocess.run([sys.executable, "-m", "specwidgets", "batch", "--help"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: specwidgets batch")


def test_missing_data_folder_is_an_error(tmp_path, capsys):
    code = launcher.run_dashboard_command(parse(["dashboard", str(tmp_path / "nope"), "--no-browser"]))
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("option, value, says", [
    ("--max-sessions", "0", "give at least 1"),
    ("--pool-size", "-1", "0 (no pre-heated kernels) or more"),
    ("--pool-refill-delay", "-2", "0 or more"),
    ("--pool-refill-delay", "nan", "0 or more"),
])
def test_bad_server_limits_are_named(monkeypatch, capsys, option, value, says):
    monkeypatch.setattr(launcher.subprocess, "Popen", lambda *a, **k: pytest.fail("Voila started"))
    code = launcher.run_dashboard_command(parse(["dashboard", "--port", str(free_port()), "--no-browser",
                                                 option, value]))
    assert code == 2
    err = capsys.readouterr().err
    assert option in err and says in err


def test_the_refill_delay_reaches_voila_only_with_a_pool():
    assert "--VoilaKernelManager.fill_delay=12.5" in launcher.voila_command(pool_size=2, refill_delay=12.5)
    assert not any("fill_delay" in part for part in launcher.voila_command(pool_size=0, refill_delay=12.5))


def test_taken_port_is_an_error(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        code = launcher.run_dashboard_command(parse(["dashboard", "--port", str(port), "--no-browser"]))
    assert code == 2
    assert "in use" in capsys.readouterr().err


@pytest.mark.skipif(os.name == "nt", reason="TIME_WAIT reuse is the POSIX SO_REUSEADDR behaviour")
def test_a_port_left_in_time_wait_is_free_again():
    """Right after a dashboard stopped, its port's old connections wait in TIME_WAIT: that port is free."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    assert launcher._port_taken("127.0.0.1", port)  # listening: taken
    served.close()  # the server side closes first: its end (port) goes to TIME_WAIT
    time.sleep(0.05)
    client.close()
    listener.close()
    assert not launcher._port_taken("127.0.0.1", port), "a port in TIME_WAIT only was called in use"


def test_missing_python_kernel_is_named_before_voila_starts(monkeypatch, capsys):
    """No kernelspec for Python (ipykernel absent): say so and how to fix it; Voila is not started."""
    from jupyter_client.kernelspec import KernelSpecManager

    monkeypatch.setattr(KernelSpecManager, "find_kernel_specs", lambda self: {})
    monkeypatch.setattr(launcher.subprocess, "Popen", lambda *a, **k: pytest.fail("Voila started"))
    code = launcher.run_dashboard_command(parse(["dashboard", "--port", str(free_port()), "--no-browser"]))
    err = capsys.readouterr().err
    assert code == 2
    assert "ipykernel" in err and "pip install ipykernel" in err and "ready" not in err


def test_kernel_problem_is_none_here():
    assert launcher.kernel_problem() is None


class _FakeVoila:
    """A process stand-in that stays alive until stopped."""

    returncode = None

    def poll(self):
        return self.returncode

    def terminate(self):
        self.returncode = -15

    def wait(self, timeout=None):
        return self.returncode


@pytest.mark.parametrize("status", [200, 500])
def test_ready_only_after_the_page_answers_200(status, monkeypatch, capsys):
    """The launcher GETs the page: 200 -> "ready"; 500 -> Voila's message and a non-zero exit."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = (b"<html><body>ok</body></html>" if status == 200 else
                    b"<html><body><pre>No Jupyter kernel for language 'python' found</pre></body></html>")
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake = _FakeVoila()
    try:
        url = f"http://127.0.0.1:{port}/"
        problem = launcher._wait_for_page(fake, url, timeout=20)
    finally:
        server.shutdown()
        server.server_close()
    if status == 200:
        assert problem is None
    else:
        assert "HTTP 500" in problem and "No Jupyter kernel for language 'python' found" in problem


def test_voila_that_dies_is_reported(capsys):
    fake = _FakeVoila()
    fake.returncode = 1
    problem = launcher._wait_for_page(fake, f"http://127.0.0.1:{free_port()}/", timeout=5)
    assert "exit code 1" in problem


def test_command_and_environment(tmp_path, monkeypatch, capsys):
    """DATA_FOLDER reaches the notebook as an absolute path; Voila gets the settings and the port."""
    seen = {}

    class FakeProcess:
        returncode = 0

        def __init__(self, command, env):
            seen["command"], seen["env"] = command, env

        def poll(self):
            return 0

    monkeypatch.setattr(launcher.subprocess, "Popen", lambda command, env: FakeProcess(command, env))
    monkeypatch.setattr(launcher, "_wait_for_page", lambda process, url: None)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "night").mkdir()
    port = free_port()
    assert launcher.run_dashboard_command(parse(["dashboard", "night", "--port", str(port), "--no-browser"])) == 0
    command, env = seen["command"], seen["env"]
    assert command[:4] == [sys.executable, "-m", "specwidgets.app.voila_server", str(NOTEBOOK)]
    assert f"--port={port}" in command and "--no-browser" in command and "--Voila.ip=127.0.0.1" in command
    assert "--VoilaConfiguration.show_tracebacks=False" in command
    # One kernel kept pre-heated by default (the page opens from it at once).
    assert "--VoilaConfiguration.preheat_kernel=True" in command
    assert "--VoilaConfiguration.default_pool_size=1" in command
    assert f"--VoilaKernelManager.fill_delay={launcher.DEFAULT_REFILL_DELAY!r}" in command
    assert env[DATA_ENV] == str((tmp_path / "night").resolve())
    assert f"http://127.0.0.1:{port}/" in capsys.readouterr().out


@pytest.mark.slow
def test_launcher_starts_and_serves(tmp_path):
    """``specwidgets dashboard DATA_FOLDER``: ready once the page answers, and the page opens on that folder."""
    folder = tmp_path / "night"
    write_fits_folder(folder, broken=())
    (folder / "flat_000.fits").write_bytes(b"broken")  # neither arc nor bias: taken as science, unreadable
    port = free_port()
    # No pre-heated kernel (--pool-size 0): the test checks that the probe's kernel goes.
    command = [sys.executable, "-m", "specwidgets.cli", "dashboard", str(folder), "--port", str(port),
               "--no-browser", "--pool-size", "0"]
    start = time.perf_counter()
    server = Server(command, port, cwd=tmp_path, env=voila_env(), log_path=tmp_path / "launcher.log")
    try:
        server.wait_listening(timeout=60)
        # "ready" comes once the launcher's own request of the page answered 200.
        deadline = time.monotonic() + 300
        while f"ready at {server.url}" not in server.log(tail=10**7):
            assert time.monotonic() < deadline and server.process.poll() is None, server.log()
            time.sleep(0.2)
        # The kernel of that request is shut down, not left idling (it would hold a session).
        import psutil

        def kernels():
            found = []
            for child in psutil.Process(server.process.pid).children(recursive=True):
                try:
                    if "ipykernel" in " ".join(child.cmdline()):
                        found.append(child)
                except psutil.Error:
                    pass  # exited meanwhile
            return found

        deadline = time.monotonic() + 30
        while kernels() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not kernels(), "the launcher's probe kernel is still running"
        # The page itself, in a browser when there is one (each request costs a kernel and a render).
        page = _page_opens_on_the_data_folder(server.url)
        elapsed = time.perf_counter() - start
        assert "sw-app" in page, server.log()  # served or rendered: the app's own class
        for marker in ERROR_MARKERS:
            assert marker not in page, f"{marker!r} in the page:\n{server.log()}"
        print(f"launcher: served the dashboard in {elapsed:.1f} s")
    finally:
        code = server.stop()
    # SIGTERM stopped Voila too: nothing listens any more.
    assert not server.listening()
    assert code == 0, server.log()


def _page_opens_on_the_data_folder(url):
    """In headless Chromium: the page opens on DATA_FOLDER's frames and names its unreadable file.

    Returns the page's HTML. Without a browser (outside CI; see test_browser)
    the page is fetched instead and only its HTML is checked.
    """
    from test_browser import CHROMIUM, CHROMIUM_ARGS, Visit, _missing, sync_playwright

    if _missing:
        if os.environ.get("CI"):
            raise AssertionError(f"the launcher test needs a browser in CI: {_missing}")
        print(f"launcher: browser part skipped ({_missing})")
        status, html = fetch(url)
        assert status == 200
        return html
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = Visit(browser, url)
            try:
                message = page.page.locator(".sw-message").inner_text()
                assert "flat_000.fits" in message, message
                # Shown relative to the data root (the launcher makes DATA_FOLDER the root).
                assert page.page.locator(".sw-folder-form input").first.input_value() == "."
                page.screenshot("launcher-data-folder")
                page.assert_clean()
                return page.page.content()
            finally:
                page.close()
        finally:
            browser.close()


@pytest.mark.slow
def test_failing_cell_is_still_shown_as_an_error(tmp_path):
    """Tracebacks are hidden (voila.json), but a failing cell still shows as an error in the page."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell("raise RuntimeError('secret-detail-31415')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "fails.ipynb"
    nbformat.write(nb, path)
    port = free_port()
    # Run from the repository root, as Binder and `voila` there do: voila.json applies.
    command = [sys.executable, "-m", "voila", str(path), "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1"]
    with Server(command, port, cwd=ROOT, env=voila_env(), log_path=tmp_path / "voila.log") as server:
        server.wait_listening(timeout=60)
        status, page = fetch(server.url)
    assert status == 200
    assert "secret-detail-31415" not in page  # no traceback, no message from the code
    assert "stopped on an error" in page  # voila.json's cell_error_instruction
    assert "ExecutionError" in page or "error" in page.lower()


@pytest.mark.slow
def test_wheel_ships_the_dashboard_notebook(tmp_path):
    """A plain ``pip install`` (a wheel) holds the notebook the launcher serves."""
    import zipfile

    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "specwidgets", source / "specwidgets",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("specwidgets-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "specwidgets/app/__init__.py" in names
    assert "specwidgets/app/dashboard.ipynb" in names, (
        "the wheel lacks specwidgets/app/dashboard.ipynb: add \"app/*.ipynb\" to "
        "[tool.setuptools.package-data] specwidgets in pyproject.toml"
    )


# ------------------------------------------------------------------ the app behind the page
def test_app_starts_on_the_demo(monkeypatch):
    from specwidgets.app.page import DashboardApp

    monkeypatch.delenv(DATA_ENV, raising=False)
    app = DashboardApp.from_environment()
    assert app.source.value == "demo"
    assert app.dashboard.background.shape == (2, 120, 1024)
    assert app.body.children == (app.dashboard,)
    assert "sw-image-viewer" in app.dashboard.viewer._dom_classes


def test_app_loads_a_folder_and_names_unreadable_files(tmp_path):
    from specwidgets.app.page import DashboardApp

    folder = tmp_path / "night"
    frames = write_fits_folder(folder, broken=("arc_002.fits", "sci_009.fits"))
    seen = []
    app = DashboardApp(folder)
    app._show_progress = lambda done, total, name: seen.append((done, total, name))  # noqa: SLF001
    assert app.source.value == "folder" and app.folder.value == str(folder)
    assert app.dashboard.background.shape == (2, 80, 512), app.message.value
    assert "arc_002.fits" in app.message.value and "sci_009.fits" in app.message.value
    assert "no gain" in app.message.value  # generic FITS without GAIN: ADU
    # The trace was found and masked: every row with more than 1% of its peak, and sky rows left.
    (start, stop), = app.dashboard.mask_region
    bright = np.flatnonzero(frames.trace.max(axis=1) > 0.01 * frames.trace.max())
    assert start <= bright.min() and stop > bright.max() and stop - start < 40
    # Loading again reports progress file by file and keeps the new dashboard.
    old = app.dashboard
    app.mask.value = "10:30"
    assert app.load()
    assert app.dashboard is not old and app.dashboard.mask_region == [(10, 30)]
    # The user's sky method and options stay for the next frames, and the page says so.
    app.dashboard.method.value = "median"
    app.dashboard.sky_controls.knot_spacing.value = "0.7"
    assert app.load()
    assert app.dashboard.state.method == "median" and app.dashboard.state.knot_spacing == 0.7
    assert app.dashboard.method.value == "median" and app.dashboard.sky_controls.knot_spacing.value == "0.7"
    assert "Kept your sky settings: method median, knot spacing 0.7." in app.message.value
    names = [name for _, _, name in seen if name]
    assert len(names) == 18 and names[0].startswith("arc_")
    assert seen[-1][:2] == (9, 9)


def test_app_turns_frames_whose_wavelength_runs_down_the_rows(tmp_path):
    """A camera that stores the dispersion along y: the page turns the frames (the arc tells) and says so."""
    from astropy.io import fits

    from specwidgets.app.page import DashboardApp

    folder = tmp_path / "night"
    write_fits_folder(folder, broken=())
    for path in folder.iterdir():
        fits.writeto(path, fits.getdata(path).T, overwrite=True)
    app = DashboardApp(folder)
    assert app.dashboard.background.shape == (2, 80, 512), app.message.value
    assert "lines lie along the rows (arc_000.fits" in app.message.value


@pytest.mark.parametrize(
    "change, words",
    [
        ({"folder": "/no/such/place"}, "does not exist"),
        ({"arc_tag": "lamp"}, "no arc frame"),
        ({"crop": "0:5000"}, "out of range"),
        ({"crop": "rows 3 to 5"}, "start:stop"),
        ({"mask": "70:90"}, "Not loaded: the Mask rows field: mask rows (70, 90) is out of range: the images "
                            "have 80 rows"),
        ({"mask": "0:80"}, "Not loaded: the Mask rows field: mask rows [(0, 80)] covers every one of the 80 rows"),
        ({"crop": "5"}, "Not loaded: the Crop rows field"),
    ],
)
def test_app_reports_bad_input_without_raising(tmp_path, change, words):
    from specwidgets.app.page import DashboardApp

    folder = tmp_path / "night"
    write_fits_folder(folder, broken=())
    app = DashboardApp()
    demo = app.dashboard
    app.source.value = "folder"
    app.folder.value = str(folder)
    for name, value in change.items():
        getattr(app, name).value = value
    assert app.load() is False
    assert words in app.message.value, app.message.value
    assert app.dashboard is demo  # what was shown stays
    assert not app.load_button.disabled


def test_frames_of_different_shapes_are_named(tmp_path):
    from astropy.io import fits

    from specwidgets.app.page import load_folder

    write_fits_folder(tmp_path, broken=())
    fits.writeto(tmp_path / "sci_odd.fits", np.zeros((60, 512), np.float32))
    with pytest.raises(ValueError, match=r"differ in shape.*60 x 512: sci_odd.fits"):
        load_folder(tmp_path, science_tag="sci_")


def test_a_bad_data_folder_falls_back_to_the_demo(tmp_path):
    from specwidgets.app.page import DashboardApp

    (tmp_path / "empty").mkdir()
    app = DashboardApp(tmp_path / "empty")
    assert app.dashboard.background.shape == (2, 120, 1024)
    assert "no arc frame" in app.message.value and "synthetic demo instead" in app.message.value


def test_relative_folders_are_taken_from_the_launcher_directory(tmp_path, monkeypatch):
    from specwidgets.app.page import find_frames, load_folder

    write_fits_folder(tmp_path / "night", broken=())
    monkeypatch.setenv(launcher.CWD_ENV, str(tmp_path))
    data = load_folder("night", science_tag="sci_")
    assert data.science.shape == (2, 80, 512)
    assert [p.name for p in find_frames(tmp_path / "night", "bias")] == [f"bias_{i:03d}.fits" for i in range(3)]


@pytest.mark.goodman
def test_goodman_folder_gets_the_goodman_settings():
    from specwidgets.app.page import GOODMAN_PRESET, DashboardApp, folder_preset
    from specwidgets.io.sample_data import goodman_available, goodman_path

    if not goodman_available():
        pytest.skip("Goodman sample not available (set SPECWIDGETS_DATA_DIR)")
    assert folder_preset(goodman_path()) == GOODMAN_PRESET
    app = DashboardApp(goodman_path())
    assert app.dashboard.background.shape == (2, 120, 2030)
    assert app.dashboard.mask_region == [(20, 100)]
    # The headers' read noise travels with the frames (not as a user override), with the master bias's
    # (the median of 5 frames subtracted).
    assert app.dashboard.state.frames_noise[0] == pytest.approx(4.74 * np.sqrt(1 + 1 / median_frames(5)))
    assert app.dashboard.result.read_noise == pytest.approx(4.74 * np.sqrt(1 + 1 / median_frames(5)))


def test_the_dashboards_untrusted_notebook_warning_is_dropped():
    import logging

    from specwidgets.app.voila_server import _QuietUntrusted

    def record(msg, *args):
        return logging.LogRecord("SafeVoila", logging.WARNING, __file__, 1, msg, args, None)

    quiet = _QuietUntrusted()
    assert not quiet.filter(record("Notebook %s is not trusted", "dashboard.ipynb"))
    assert quiet.filter(record("Notebook %s is not trusted", "someone_elses.ipynb"))
    assert quiet.filter(record("specwidgets: refused a request for host %r (allowed: %s)", "evil", "localhost"))
