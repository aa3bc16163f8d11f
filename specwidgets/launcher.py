"""``specwidgets dashboard [DATA_FOLDER] [--port N] [--no-browser]``: serve the dashboard with Voila.

The dashboard notebook ships inside the package (:data:`specwidgets.app.NOTEBOOK`),
so a plain ``pip install`` can serve it. Voila renders a notebook without
arguments: DATA_FOLDER reaches it through the ``SPECWIDGETS_DASHBOARD_DATA``
environment variable (:data:`specwidgets.app.DATA_ENV`), as an absolute path.

Examples
--------
>>> import argparse
>>> parser = argparse.ArgumentParser(prog="specwidgets")
>>> _ = add_dashboard_parser(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["dashboard", "--port", "9000", "--no-browser"])
>>> args.port, args.no_browser, args.data_folder, args.func is run_dashboard_command
(9000, True, None, True)
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = [
    "VOILA_SETTINGS",
    "DEFAULT_PORT",
    "add_dashboard_parser",
    "kernel_problem",
    "run_dashboard_command",
    "voila_command",
]

DEFAULT_PORT = 8866

#: Seconds the launcher waits for the first page (it runs the notebook, so a
#: first start that compiles numba's kernels takes a while) before giving up.
READY_TIMEOUT = 300

#: Voila settings of the dashboard; ``voila.json`` at the repository root holds
#: the same (a test keeps the two in step) for ``voila`` run there and Binder.
VOILA_SETTINGS = {
    "VoilaConfiguration": {
        "theme": "light",
        "show_tracebacks": False,
    },
    "VoilaExecutor": {
        "cell_error_instruction": (
            "The dashboard stopped on an error; the details are in the log of the server that runs it."
        ),
    },
    # On a shared server, the kernel of a page that was closed without
    # saying so (a lost connection, a killed browser) goes after 10 idle minutes.
    "MappingKernelManager": {
        "cull_idle_timeout": 600,
        "cull_interval": 60,
    },
}

#: Environment variable giving the launcher's working directory to the app,
#: so relative folders typed in the dashboard mean what the user expects.
CWD_ENV = "SPECWIDGETS_DASHBOARD_CWD"


def add_dashboard_parser(subparsers):
    """Register ``dashboard`` on an ``argparse`` subparsers object; returns its parser."""
    parser = subparsers.add_parser(
        "dashboard",
        help="serve the interactive dashboard in the browser (Voila)",
        description=(
            "Serve the specwidgets dashboard with Voila. Without DATA_FOLDER it opens on the synthetic "
            "demo; with one it loads the FITS frames there (the arc, bias and science tags, crop and mask "
            "rows can be changed in the page)."
        ),
    )
    parser.add_argument("data_folder", nargs="?", metavar="DATA_FOLDER",
                        help="folder of FITS frames to open (default: the synthetic demo)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port to serve on (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--ip", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")
    parser.set_defaults(func=run_dashboard_command)
    return parser


def _settings_args(settings):
    args = []
    for section, values in settings.items():
        for name, value in values.items():
            args.append(f"--{section}.{name}={value}")
    return args


def voila_command(notebook=None, *, port=DEFAULT_PORT, ip="127.0.0.1", open_browser=False):
    """The Voila command line that serves ``notebook`` (default: the packaged dashboard)."""
    from .app import NOTEBOOK

    notebook = Path(notebook) if notebook is not None else NOTEBOOK
    command = [
        sys.executable, "-m", "voila", str(notebook),
        f"--port={int(port)}", f"--Voila.ip={ip}", "--Voila.port_retries=0",
        *_settings_args(VOILA_SETTINGS),
    ]
    if not open_browser:
        command.append("--no-browser")
    return command


def kernel_problem(kernel_name="python3"):
    """What keeps Voila from starting the dashboard's Python kernel, as one sentence with the fix; None if nothing.

    Voila runs the dashboard notebook in a Jupyter kernel of the notebook's
    language; without one every page answers HTTP 500 ("No Jupyter kernel for
    language 'python' found"). A kernelspec that runs ``python -m
    ipykernel_launcher`` uses this interpreter, so ``ipykernel`` must import here.

    Examples
    --------
    >>> kernel_problem() is None   # ipykernel is installed with specwidgets
    True
    """
    import importlib.util

    fix = f"install it into this environment with: {sys.executable} -m pip install ipykernel"
    try:
        from jupyter_client.kernelspec import KernelSpecManager
    except ImportError:
        return ("jupyter_client (needed to start the notebook's kernel) is not installed; "
                f"reinstall specwidgets or run: {sys.executable} -m pip install jupyter_client ipykernel")
    manager = KernelSpecManager()
    try:
        names = manager.find_kernel_specs()
        specs = {name: manager.get_kernel_spec(name) for name in names}
    except Exception as exc:  # noqa: BLE001 - a broken kernelspec folder: say which
        return f"the Jupyter kernel specifications could not be read ({exc}); {fix}"
    python = {name: spec for name, spec in specs.items() if (spec.language or "").lower() == "python"}
    if not python:
        return f"no Jupyter kernel for Python is installed (the package ipykernel is missing); {fix}"
    spec = python.get(kernel_name) or next(iter(python.values()))
    argv = list(spec.argv or [])
    # jupyter_client runs a "python"/"python3" kernel with this very interpreter.
    here = not argv or Path(argv[0]).name in {"python", f"python{sys.version_info[0]}",
                                              f"python{sys.version_info[0]}.{sys.version_info[1]}"}
    if here and "ipykernel_launcher" in argv and importlib.util.find_spec("ipykernel") is None:
        return f"the Python kernel needs the package ipykernel, which this environment lacks; {fix}"
    return None


def _free_port(ip):
    with socket.socket() as sock:
        sock.bind((ip, 0))
        return sock.getsockname()[1]


def _port_taken(ip, port):
    with socket.socket() as sock:
        try:
            sock.bind((ip, port))
        except OSError:
            return True
    return False


def _url(ip, port):
    host = "127.0.0.1" if ip in ("0.0.0.0", "") else ("localhost" if ip == "::" else ip)
    return f"http://{host}:{port}/"


def run_dashboard_command(args):
    """Run ``specwidgets dashboard``: start Voila, say where, wait until it stops. Returns the exit code."""
    from .app import DATA_ENV, NOTEBOOK

    env = dict(os.environ)
    if args.data_folder is not None:
        folder = Path(args.data_folder).expanduser()
        if not folder.is_dir():
            what = "is not a folder" if folder.exists() else "does not exist"
            print(f"specwidgets dashboard: error: DATA_FOLDER {str(folder)!r} {what}", file=sys.stderr)
            return 2
        env[DATA_ENV] = str(folder.resolve())
    env[CWD_ENV] = os.getcwd()
    if not NOTEBOOK.is_file():
        print(f"specwidgets dashboard: error: the dashboard notebook is missing from the package ({NOTEBOOK}); "
              "reinstall specwidgets", file=sys.stderr)
        return 2
    port = args.port
    if port == 0:
        port = _free_port(args.ip)
    elif not 0 < port < 65536:
        print(f"specwidgets dashboard: error: --port {port} is not a port number", file=sys.stderr)
        return 2
    elif _port_taken(args.ip, port):
        print(f"specwidgets dashboard: error: port {port} on {args.ip} is in use; choose another with --port N",
              file=sys.stderr)
        return 2

    problem = kernel_problem()
    if problem is not None:
        print(f"specwidgets dashboard: error: {problem}", file=sys.stderr)
        return 2

    url = _url(args.ip, port)
    data = env.get(DATA_ENV) or "the synthetic demo"
    print(f"specwidgets dashboard: starting Voila on {url} with {data} (Ctrl-C stops it)", flush=True)
    command = voila_command(port=port, ip=args.ip, open_browser=not args.no_browser)
    # On a first run, compile the sky kernels into the user cache here, on
    # the other core, while Voila and its kernel start: the page then loads
    # them instead of compiling, and the first switch of method is quick.
    from ._warmup import start_warm_up

    start_warm_up(("bspline", "median"))
    try:
        process = subprocess.Popen(command, env=env)
    except OSError as exc:
        print(f"specwidgets dashboard: error: could not start Voila: {exc}", file=sys.stderr)
        return 2
    # A SIGTERM (a service manager, a test) must stop Voila too, not orphan it.
    previous = signal.signal(signal.SIGTERM, _raise_exit) if _main_thread() else None
    try:
        problem = _wait_for_page(process, url)
        if problem is not None:
            print(f"specwidgets dashboard: error: {problem}", file=sys.stderr, flush=True)
            if process.poll() is None:
                _stop(process)
            return process.returncode or 1
        print(f"specwidgets dashboard: ready at {url}", flush=True)
        while process.poll() is None:
            time.sleep(0.2)
        return process.returncode
    except KeyboardInterrupt:
        return _stop(process)
    except SystemExit:
        return _stop(process)
    finally:
        if process.poll() is None:
            _stop(process)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _wait_for_page(process, url, timeout=None):
    """GET ``url`` until it answers 200; None then, else what went wrong (one sentence).

    The page runs the dashboard notebook, so a 200 means the kernel started
    and the app rendered. The probe's kernel is shut down afterwards so that
    it does not idle until culled.
    """
    timeout = READY_TIMEOUT if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            return f"Voila stopped (exit code {process.returncode}) before serving the page; its log is above"
        if time.monotonic() > deadline:
            return f"the page {url} did not answer within {timeout} s; see Voila's log above"
        try:
            with urllib.request.urlopen(url, timeout=max(1.0, deadline - time.monotonic())) as response:  # noqa: S310
                page = response.read().decode("utf-8", "replace")
                status = response.status
                cookies = response.headers.get_all("Set-Cookie") or []
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", "replace")
            return f"the page {url} answered HTTP {exc.code}: {_page_error(body) or exc.reason}"
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            time.sleep(0.2)  # not listening yet
            continue
        if status == 200:
            _shutdown_probe_kernel(url, page, cookies)
            return None
        return f"the page {url} answered HTTP {status}"


def _page_error(body):
    """The message of a Voila/Tornado error page, as text."""
    import html
    import re

    match = re.search(r"<pre[^>]*>(.*?)</pre>", body, flags=re.S) or re.search(r"<body[^>]*>(.*?)</body>", body, re.S)
    text = match.group(1) if match else body
    text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    return " ".join(text.split())[:500]


def _shutdown_probe_kernel(url, page, cookies=()):
    import re
    import secrets

    match = re.search(r'"?kernelId"?\s*[:=]\s*"([0-9a-f-]{36})"', page)
    if match is None:
        return
    # Tornado's XSRF check wants the same token in a cookie and a header.
    token = next((c.split(";", 1)[0].split("=", 1)[1] for c in cookies if c.startswith("_xsrf=")),
                 secrets.token_hex(16))
    request = urllib.request.Request(
        f"{url}voila/api/shutdown/{match.group(1)}", data=b"", method="POST",
        headers={"Cookie": f"_xsrf={token}", "X-XSRFToken": token},
    )
    try:
        urllib.request.urlopen(request, timeout=10).close()  # noqa: S310 - our own server
    except (urllib.error.URLError, OSError):
        pass  # culled after its idle timeout instead


def _raise_exit(signum, frame):
    raise SystemExit(0)


def _main_thread():
    import threading

    return threading.current_thread() is threading.main_thread()


def _stop(process):
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return 0


def main(argv=None):
    """``python -m specwidgets.launcher dashboard ...`` (the same as ``specwidgets dashboard ...``)."""
    parser = argparse.ArgumentParser(prog="specwidgets")
    add_dashboard_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
