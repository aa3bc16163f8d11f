"""``specwidgets dashboard [DATA_FOLDER] [--port N] [--no-browser]``: serve the dashboard with Voila.

What the page may touch and who may connect (see :mod:`specwidgets.app.security`
and :mod:`specwidgets.app.voila_server`, which the launcher runs instead of plain
``voila``):

* ``--data-root DIR`` (default: DATA_FOLDER, else the folder the command was
  started in): the page reads and lists nothing outside it.
* ``--output-root DIR`` (default: the folder the command was started in, so
  a data folder of raw frames is not written into unless asked; the data root
  when the page is served beyond loopback): exports go below it, and never
  replace a file unless the page's Overwrite box is ticked.
* ``--ip`` other than loopback requires a token: ``--token T`` or one
  generated and printed with the URL. The server answers only to the host
  names on its allow-list (loopback names, the bound address and
  ``--allow-origin`` ones), so a DNS-rebinding page is refused.
* ``--max-sessions N`` (default 8) open pages; past it a "server busy" page.
* ``--pool-size N`` (default 1) kernels kept pre-heated: each has already run
  the dashboard notebook, so a page opens in about a second instead of the
  time to start Python and build the app (Voila's ``preheat_kernel``). Each
  costs an idle kernel (~330 MB); 0 turns it off. Pre-heated kernels do not
  count as open pages.
* ``--pool-refill-delay S`` (default 10): while other pre-heated kernels are
  ready, a used one is replaced S seconds later, so that the replacement (a
  kernel start and the notebook run) does not compete with the pages being
  opened (a page that then finds none ready starts it at once); with none
  left, 1 s later, as Voila does.

The dashboard notebook ships inside the package (:data:`specwidgets.app.page.NOTEBOOK`),
so a plain ``pip install`` can serve it. Voila renders a notebook without
arguments: DATA_FOLDER reaches it through the ``SPECWIDGETS_DASHBOARD_DATA``
environment variable (:data:`specwidgets.app.page.DATA_ENV`), as an absolute path.

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
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from .security import DATA_ROOT_ENV, OUTPUT_ROOT_ENV
from .voila_server import HOSTS_ENV, MAX_SESSIONS_ENV, ORIGINS_ENV, TOKEN_ENV

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

#: Pages served at once by default: each holds a kernel of about 330 MB.
DEFAULT_MAX_SESSIONS = 8
#: Seconds between a page taking a pre-heated kernel and the start of its replacement.
DEFAULT_REFILL_DELAY = 10.0

#: Kernels kept pre-heated by default (the notebook already run in them):
#: the next page opens from one in ~1 s instead of ~5 s.
DEFAULT_POOL_SIZE = 1

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
                        help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for every "
                             "interface, which requires a token: see --token)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")
    parser.add_argument("--data-root", metavar="DIR", default=None,
                        help="the page reads and lists nothing outside DIR (default: DATA_FOLDER, else the "
                             "current folder); folders typed in the page are relative to it")
    parser.add_argument("--output-root", metavar="DIR", default=None,
                        help="exports are written below DIR only (default: the current folder)")
    parser.add_argument("--token", default=None,
                        help="access token for the page (required, and generated when not given, for an --ip "
                             "other than loopback; the URL printed carries it)")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="URL",
                        help="also answer to this origin/host name, e.g. https://dash.example.org behind a "
                             "reverse proxy (repeatable)")
    parser.add_argument("--max-sessions", type=int, default=DEFAULT_MAX_SESSIONS, metavar="N",
                        help=f"open pages served at once (each holds a ~330 MB kernel; default "
                             f"{DEFAULT_MAX_SESSIONS}); past it a 'server busy' page")
    parser.add_argument("--pool-size", type=int, default=DEFAULT_POOL_SIZE, metavar="N",
                        help=f"kernels kept ready with the dashboard already built, so that a page opens at once "
                             f"(default {DEFAULT_POOL_SIZE}; each idles at ~330 MB; 0 starts a kernel per page)")
    parser.add_argument("--pool-refill-delay", type=float, default=DEFAULT_REFILL_DELAY, metavar="SECONDS",
                        help=f"while other pre-heated kernels are ready, wait this long after a page takes one "
                             f"before starting its replacement (default {DEFAULT_REFILL_DELAY:g}), so that the "
                             f"refill does not compete with the pages being opened (with none left: 1 s)")
    parser.set_defaults(func=run_dashboard_command)
    return parser


def _settings_args(settings):
    args = []
    for section, values in settings.items():
        for name, value in values.items():
            args.append(f"--{section}.{name}={value}")
    return args


def voila_command(notebook=None, *, port=DEFAULT_PORT, ip="127.0.0.1", open_browser=False, pool_size=0,
                  refill_delay=None):
    """The Voila command line that serves ``notebook`` (default: the packaged dashboard).

    ``pool_size`` > 0 keeps that many kernels pre-heated (Voila's
    ``preheat_kernel``): each has run the notebook before a page asks for it.

    Examples
    --------
    >>> command = voila_command(pool_size=2)
    >>> "--VoilaConfiguration.preheat_kernel=True" in command, "--VoilaConfiguration.default_pool_size=2" in command
    (True, True)
    >>> any("preheat" in part for part in voila_command())
    False
    """
    from .page import NOTEBOOK

    notebook = Path(notebook) if notebook is not None else NOTEBOOK
    # Voila with the host allow-list, v1-only kernel websockets, the _xsrf
    # cookie for closing pages and the session cap (specwidgets.app.voila_server).
    command = [
        sys.executable, "-m", "specwidgets.app.voila_server", str(notebook),
        f"--port={int(port)}", f"--Voila.ip={ip}", "--Voila.port_retries=0",
        *_settings_args(VOILA_SETTINGS),
    ]
    pool_size = int(pool_size)
    if pool_size < 0:
        raise ValueError(f"pool_size must be 0 (no pre-heated kernels) or more; got {pool_size}")
    if pool_size:
        command += ["--VoilaConfiguration.preheat_kernel=True", f"--VoilaConfiguration.default_pool_size={pool_size}"]
        if refill_delay is not None:
            command.append(f"--VoilaKernelManager.fill_delay={float(refill_delay)!r}")
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
    """Whether something listens on ``(ip, port)``: a test bind, as Voila (Tornado) will bind.

    With ``SO_REUSEADDR`` (what Tornado sets outside Windows) a port whose
    last connections are only in TIME_WAIT, e.g. right after a dashboard on
    it stopped, counts as free; a listening socket still makes the bind fail.
    """
    with socket.socket() as sock:
        if os.name != "nt":  # on Windows the option would let the bind steal a port in use
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
    from .page import DATA_ENV, NOTEBOOK

    env = dict(os.environ)
    if args.data_folder is not None:
        folder = Path(args.data_folder).expanduser()
        if not folder.is_dir():
            what = "is not a folder" if folder.exists() else "does not exist"
            print(f"specwidgets dashboard: error: DATA_FOLDER {str(folder)!r} {what}", file=sys.stderr)
            return 2
        env[DATA_ENV] = str(folder.resolve())
    env[CWD_ENV] = os.getcwd()
    problem = _security_environment(args, env)
    if problem:
        print(f"specwidgets dashboard: error: {problem}", file=sys.stderr)
        return 2
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
    print(f"specwidgets dashboard: data root {env[DATA_ROOT_ENV]}, output root {env[OUTPUT_ROOT_ENV]}; "
          f"at most {args.max_sessions} open page(s)", flush=True)
    token = env.get(TOKEN_ENV)
    if token:
        url = f"{url}?token={token}"
        print(f"specwidgets dashboard: sharing on {args.ip}: open {url} (anyone with this URL can use the "
              "page; share it only with those who should)", flush=True)
    command = voila_command(port=port, ip=args.ip, open_browser=not args.no_browser,
                            pool_size=getattr(args, "pool_size", 0),
                            refill_delay=getattr(args, "pool_refill_delay", DEFAULT_REFILL_DELAY))
    # On a first run, compile the sky kernels into the user cache here, on
    # the other core, while Voila and its kernel start: the page then loads
    # them instead of compiling, and the first switch of method is quick.
    from ..core._warmup import start_warm_up

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
    parts = urlsplit(url)  # the page's URL may carry ?token=...
    query = f"?{parts.query}" if parts.query else ""
    request = urllib.request.Request(
        f"{parts.scheme}://{parts.netloc}{parts.path}voila/api/shutdown/{match.group(1)}{query}", data=b"",
        method="POST",
        headers={"Cookie": f"_xsrf={token}", "X-XSRFToken": token, "Origin": f"{parts.scheme}://{parts.netloc}"},
    )
    try:
        urllib.request.urlopen(request, timeout=10).close()  # noqa: S310 - our own server
    except (urllib.error.URLError, OSError):
        pass  # culled after its idle timeout instead


def _security_environment(args, env):
    """Put the roots, host allow-list, token and session cap in ``env``; return an error message or None."""
    from .page import DATA_ENV
    from .security import allowed_hosts, generate_token, is_loopback

    start = Path(os.getcwd())
    if args.data_root is not None:
        data_root = Path(args.data_root)
    elif args.data_folder is not None:
        data_root = Path(env[DATA_ENV])
    else:
        data_root = start
    if not data_root.is_dir():
        return f"--data-root {str(args.data_root)!r} is not a folder"
    data_root = data_root.resolve()
    if args.data_folder is not None:
        folder = Path(env[DATA_ENV])
        if folder != data_root and data_root not in folder.parents:
            return f"DATA_FOLDER {args.data_folder!r} is not inside --data-root {str(data_root)!r}"
    # On this machine's own loopback: the start folder, so raw frames stay
    # apart from what the page writes. Served to others: the data root as
    # before (the start folder may be a home folder, too wide to hand them).
    default_output = start if is_loopback(args.ip) else data_root
    output_root = Path(args.output_root) if args.output_root is not None else default_output
    if not output_root.is_dir():
        return f"--output-root {str(args.output_root)!r} is not a folder"
    env[DATA_ROOT_ENV] = str(data_root)
    env[OUTPUT_ROOT_ENV] = str(output_root.resolve())

    if args.max_sessions < 1:
        return f"--max-sessions {args.max_sessions}: give at least 1"
    if getattr(args, "pool_size", 0) < 0:
        return f"--pool-size {args.pool_size}: give 0 (no pre-heated kernels) or more"
    delay = getattr(args, "pool_refill_delay", DEFAULT_REFILL_DELAY)
    if not (delay >= 0 and math.isfinite(delay)):
        return f"--pool-refill-delay {delay}: give a number of seconds, 0 or more"
    env[MAX_SESSIONS_ENV] = str(args.max_sessions)
    origins = [o.rstrip("/") for o in args.allow_origin]
    names = [urlsplit(o).hostname or o for o in origins]
    env[HOSTS_ENV] = ",".join(allowed_hosts(args.ip, names))
    env[ORIGINS_ENV] = ",".join(o for o in origins if "://" in o)
    token = args.token
    if token is not None and not token.strip():
        return "--token is empty"
    if token is None and not is_loopback(args.ip):
        token = generate_token()
    env.pop(TOKEN_ENV, None)
    if token:
        env[TOKEN_ENV] = token
    return None


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
    """``python -m specwidgets.app.launcher dashboard ...`` (the same as ``specwidgets dashboard ...``)."""
    parser = argparse.ArgumentParser(prog="specwidgets")
    add_dashboard_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
