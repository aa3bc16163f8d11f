"""Voila with the guards a shared dashboard needs: ``python -m specwidgets.app.voila_server NOTEBOOK [voila options]``.

The launcher (:mod:`specwidgets.app.launcher`) runs this instead of ``voila``.
It is Voila 0.5 with these changes, configured by environment variables and Voila's options:

* **Host check** (:data:`HOSTS_ENV`, comma-separated): a request whose
  ``Host`` header names anything else gets 403. Voila itself sets
  ``allow_remote_access=True``, so any host name was served, and a
  DNS-rebinding page (``attacker.test`` resolving to 127.0.0.1) could drive
  the server. ``Origin`` must then match the host or the allowed origins
  (:data:`ORIGINS_ENV`), as Jupyter Server checks it.
* **Kernel websockets must speak the v1 protocol**: Voila 0.5.13 (the latest)
  parses every binary kernel message as v1; a client that connects without
  the ``v1.kernel.websocket.jupyter.org`` subprotocol gets legacy binary
  messages, whose first 8 bytes Voila then reads as a count of offsets:
  one widget update blocked the event loop for everyone while the server
  grew past 1 GB. Such connections are refused (400) before the upgrade.
* **Closed pages free their kernels**: the page's close beacon sends the
  ``_xsrf`` cookie, which Voila never set, so every shutdown answered
  ``403 '_xsrf' argument missing``. The page handler now sets it.
* **A session cap** (:data:`MAX_SESSIONS_ENV`): past it a new page gets a
  short "server busy" page (503) instead of another ~330 MB kernel.
  The pages counted are the kernels handed to a page (:func:`track_pages`):
  pre-heated kernels (``--VoilaConfiguration.preheat_kernel=True``, which
  the launcher's ``--pool-size`` turns on) wait for a page and are not
  counted, nor is a refill whose kernel is still starting; a page admitted
  and still waiting for its kernel is (so a burst cannot pass the cap).
* **Text responses are gzipped** (:data:`COMPRESS_ENV` ``=0`` turns it
  off): the page's scripts and styles, ~6 MB, travel as ~1.7 MB.
* **The pool's refill waits** (``--VoilaKernelManager.fill_delay``, the
  launcher's ``--pool-refill-delay``) while other pre-heated kernels are
  ready, so that it does not compete with the pages just opened, and a
  page that then finds no ready kernel wakes it; with none left it waits
  1 s, as Voila does (:func:`_wait_before`).

With pre-heated kernels Voila also opens an unauthenticated websocket route,
``/voila/query/<kernel id>``, that hands a page's request (its query string,
which may carry the token) to a notebook calling ``voila.utils.wait_for_request``.
The dashboard does not call it, so the route is not served and nothing is
kept for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import re
import sys

import tornado.web

__all__ = ["COMPRESS_ENV", "HOSTS_ENV", "MAX_SESSIONS_ENV", "ORIGINS_ENV", "TOKEN_ENV", "V1_PROTOCOL", "main"]

HOSTS_ENV = "SPECWIDGETS_VOILA_ALLOWED_HOSTS"
#: The access token (kept out of the command line, where ``ps`` shows it).
TOKEN_ENV = "SPECWIDGETS_VOILA_TOKEN"
ORIGINS_ENV = "SPECWIDGETS_VOILA_ALLOWED_ORIGINS"
MAX_SESSIONS_ENV = "SPECWIDGETS_VOILA_MAX_SESSIONS"
#: "0": do not gzip text responses (they are by default).
COMPRESS_ENV = "SPECWIDGETS_VOILA_COMPRESS"

#: The kernel websocket subprotocol whose binary framing Voila understands.
V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"

BUSY_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Server busy</title></head>
<body style="font-family:sans-serif;max-width:40em;margin:4em auto">
<h1>The dashboard is busy</h1>
<p>It already serves {n} open page(s), its limit. Close a page you no
longer use, or try again in a minute.</p>
</body></html>
"""


def _host_of(value):
    """``host`` of ``host:port`` / ``[v6]:port``, lower case."""
    match = re.match(r"^(.*?)(:\d+)?$", value or "")
    host = match.group(1) if match else ""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.lower()


def _check_host(self):
    """Replacement of ``JupyterHandler.check_host``: the Host must be on the allow-list."""
    allowed = self.settings.get("specwidgets_allowed_hosts")
    if not allowed:
        return True
    host = _host_of(self.request.host)
    if host in allowed:
        return True
    self.log.warning("specwidgets: refused a request for host %r (allowed: %s)", host, ", ".join(allowed))
    return False


def _find_handler(original):
    """Wrap ``tornado.web.Application.find_handler``: a request for another host gets 403, whatever its path.

    Jupyter's own check covers Jupyter's handlers only; Voila's static and
    template files are served by plain tornado handlers.
    """

    def find_handler(self, request, **kwargs):
        allowed = self.settings.get("specwidgets_allowed_hosts")
        if allowed and _host_of(request.host) not in allowed:
            return self.get_handler_delegate(request, tornado.web.ErrorHandler, {"status_code": 403})
        return original(self, request, **kwargs)

    return find_handler


#: The page request being served (set by the page handler, read where its kernel is handed over).
_PAGE_SLOT = contextvars.ContextVar("specwidgets_page_slot", default=None)


def track_pages(kernel_manager):
    """Record, from now on, the kernels ``kernel_manager`` hands to pages; the record (once per manager).

    A page gets its kernel from Voila's pool (``get_rendered_notebook``) or
    has one started for it (``start_kernel``); the pool fills itself through
    the base class's ``start_kernel``, which this does not wrap, so a
    pre-heated kernel, ready or still starting, is never taken for a page.
    ``pending`` counts the pages admitted (:func:`admit_page`) that do not
    hold their kernel yet.
    """
    record = getattr(kernel_manager, "_specwidgets_pages", None)
    if record is not None:
        return record
    record = {"ids": set(), "pending": 0}

    def wrap(name, kernel_id_of, before=None):
        original = getattr(kernel_manager, name, None)
        if original is None:
            return

        async def handed_to_a_page(*args, **kwargs):
            if before is not None:
                before(*args, **kwargs)
            result = original(*args, **kwargs)
            if hasattr(result, "__await__"):
                result = await result
            record["ids"].add(kernel_id_of(result))
            _release(record)  # the page now counts by its kernel
            return result

        setattr(kernel_manager, name, handed_to_a_page)

    # (render task, rendered cells, kernel id); a page about to wait for a refill wakes it first.
    wrap("get_rendered_notebook", lambda result: result[2],
         before=lambda notebook_name=None, *args, **kwargs: _wake_if_waited_for(kernel_manager, notebook_name))
    wrap("start_kernel", lambda result: result)
    kernel_manager._specwidgets_pages = record
    _POOL_OWNER["manager"] = kernel_manager
    return record


#: Refills of Voila's pool sleeping out their delay (``--pool-refill-delay``); see :func:`_wait_before`.
_DELAYED_REFILLS = set()
#: The kernel manager whose pool :func:`_wait_before` looks at (one per server process).
_POOL_OWNER = {"manager": None}
#: A refill's delay when no pre-heated kernel is left (Voila's own default).
EMPTY_POOL_DELAY = 1.0


async def _wait_before(delay, awaitable):
    """Voila's ``wait_before`` (a refill's delay): long while other pre-heated kernels are ready, short otherwise.

    The delay keeps a refill (a kernel start and the notebook run, seconds of
    CPU) from competing with the pages just opened, as long as the pool still
    has ready kernels for the next pages; a page that then finds none (it
    waits for a refill) wakes the sleeping ones. With none left when the
    refill is made, it waits :data:`EMPTY_POOL_DELAY`, as Voila does.
    """
    if delay and delay > 0 and not _ready_kernel_left():
        # Voila's own behaviour (its default delay, no wake-up).
        await asyncio.sleep(min(delay, EMPTY_POOL_DELAY))
    elif delay and delay > 0:
        woken = asyncio.Event()
        _DELAYED_REFILLS.add(woken)
        try:
            await asyncio.wait_for(woken.wait(), delay)
        except asyncio.TimeoutError:
            pass
        finally:
            _DELAYED_REFILLS.discard(woken)
    return await awaitable


def _ready_kernel_left():
    """Whether the pool holds a kernel ready for the next page (True when no pool is known)."""
    manager = _POOL_OWNER["manager"]
    if manager is None:
        return True
    for pool in getattr(manager, "_pools", {}).values():
        for entry in pool:
            if entry.done() and not entry.cancelled() and entry.exception() is None:
                return True
    return False


def _wake_if_waited_for(kernel_manager, notebook_name):
    """Start the delayed refills now if the page asking will wait for one (its pool holds no ready kernel)."""
    pool = getattr(kernel_manager, "_pools", {}).get(notebook_name) or []
    # Voila hands out the oldest entry: a page waits when it is still starting.
    if pool and not pool[0].done():
        for woken in list(_DELAYED_REFILLS):
            woken.set()


def _release(record):
    slot = _PAGE_SLOT.get()
    if slot is not None and slot["pending"]:
        slot["pending"] = False
        record["pending"] -= 1


def open_pages(kernel_manager):
    """Pages open: kernels handed to a page that still run, and pages admitted that wait for theirs.

    Kernels kept pre-heated in Voila's pool are not pages, whether their
    start has finished or not (a refill's kernel is listed while it starts).
    """
    record = track_pages(kernel_manager)
    record["ids"] &= set(kernel_manager.list_kernel_ids())  # forget the kernels shut down
    return len(record["ids"]) + record["pending"]


@contextlib.contextmanager
def admit_page(kernel_manager):
    """Count a page request as open from its admission until its kernel is handed over (or it fails).

    Between the cap's check and the kernel's start the handler waits (a
    kernel starts in seconds): without this, every request of a burst would
    pass the check before the first kernel is listed.
    """
    record = track_pages(kernel_manager)
    slot = {"pending": True}
    record["pending"] += 1
    token = _PAGE_SLOT.set(slot)
    try:
        yield
    finally:
        _release(record)
        _PAGE_SLOT.reset(token)


def _handlers():
    """The handler classes, built on first use (importing Voila is slow)."""
    from voila.tornado.handler import TornadoVoilaHandler
    from voila.tornado.kernel_websocket_handler import VoilaKernelWebsocketHandler

    class PageHandler(TornadoVoilaHandler):
        """The notebook page: refuses past the session cap, and sets the ``_xsrf`` cookie."""

        @tornado.web.authenticated
        async def get(self, path=None):
            cap = self.settings.get("specwidgets_max_sessions") or 0
            n = open_pages(self.kernel_manager)
            if cap and n >= cap:
                self.set_status(503)
                self.set_header("Retry-After", "60")
                self.set_header("Content-Type", "text/html; charset=UTF-8")
                self.finish(BUSY_PAGE.format(n=n))
                return
            # Reading the token sets the cookie the page's close beacon sends
            # back with its shutdown request (without it: 403, kernel kept).
            self.xsrf_token  # noqa: B018
            with admit_page(self.kernel_manager):
                return await super().get(path)

    class WebsocketHandler(VoilaKernelWebsocketHandler):
        """Kernel channels: only for clients that speak the v1 protocol."""

        async def get(self, *args, **kwargs):
            offered = [p.strip() for p in self.request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
            if V1_PROTOCOL not in offered:
                self.log.warning("specwidgets: refused a kernel websocket without the %s subprotocol", V1_PROTOCOL)
                raise tornado.web.HTTPError(400, f"kernel websockets must use the {V1_PROTOCOL} subprotocol")
            return await super().get(*args, **kwargs)

    return {TornadoVoilaHandler: PageHandler, VoilaKernelWebsocketHandler: WebsocketHandler}


class _QuietUntrusted(logging.Filter):
    """Drops Jupyter Server's "Notebook dashboard.ipynb is not trusted".

    The dashboard notebook ships without outputs (nothing to trust or
    distrust), and signing it would write a key into the user's Jupyter
    folder; the warning only alarmed new users reading the log.
    """

    def filter(self, record):
        return not (record.msg == "Notebook %s is not trusted" and record.args
                    and str(record.args[0]).endswith("dashboard.ipynb"))


def _app_class():
    from voila.app import Voila

    class SafeVoila(Voila):
        """Voila with the host allow-list, v1-only websockets, ``_xsrf`` cookie and session cap."""

        def init_settings(self):
            self.log.addFilter(_QuietUntrusted())
            token = os.environ.get(TOKEN_ENV, "")
            if token:
                self.token = token  # read by the identity provider super() builds
            settings = super().init_settings()
            hosts = [h.strip().lower() for h in os.environ.get(HOSTS_ENV, "").split(",") if h.strip()]
            if hosts:
                # Jupyter Server then calls check_host (patched in main) on every request.
                settings["allow_remote_access"] = False
                settings["specwidgets_allowed_hosts"] = hosts
            origins = [o.strip() for o in os.environ.get(ORIGINS_ENV, "").split(",") if o.strip()]
            if origins:
                settings["allow_origin_pat"] = re.compile("|".join(f"^{re.escape(o)}$" for o in origins))
            try:
                settings["specwidgets_max_sessions"] = int(os.environ.get(MAX_SESSIONS_ENV, "0") or 0)
            except ValueError:
                settings["specwidgets_max_sessions"] = 0
            # Before any page is served: the cap counts the kernels handed to pages.
            track_pages(self.kernel_manager)
            # Gzip for text responses: the page's ~6 MB of scripts and styles
            # become ~1.7 MB (a first page over 20 Mbit/s: 4.1 -> 2.9 s). Read
            # when the application is built, so here and not in Voila's
            # tornado_settings, which are applied after that.
            if os.environ.get(COMPRESS_ENV, "1") != "0":
                settings["compress_response"] = True
            return settings

        def init_handlers(self):
            from voila.request_info_handler import RequestInfoSocketHandler

            swap = _handlers()
            handlers = []
            for spec in super().init_handlers():
                if isinstance(spec, tuple) and len(spec) >= 2 and spec[1] is RequestInfoSocketHandler:
                    continue  # no token check; the dashboard never asks for the request info
                if isinstance(spec, tuple) and len(spec) >= 2 and spec[1] in swap:
                    spec = (spec[0], swap[spec[1]], *spec[2:])
                handlers.append(spec)
            return handlers

    return SafeVoila


def main(argv=None):
    """Run the hardened Voila with Voila's own command line."""
    from jupyter_server.base.handlers import JupyterHandler

    # This process is the dashboard's server and nothing else: the patch
    # applies to every handler (pages, static files, API, websockets).
    JupyterHandler.check_host = _check_host
    # Pre-heated pages post their request info for the route dropped above;
    # with nobody listening Voila would keep each page's payload for ever.
    from voila.request_info_handler import RequestInfoSocketHandler

    RequestInfoSocketHandler.send_updates = classmethod(lambda cls, msg: None)
    # The pool's refill delay, woken by a page that waits for the refill.
    import voila.voila_kernel_manager

    voila.voila_kernel_manager.wait_before = _wait_before
    tornado.web.Application.find_handler = _find_handler(tornado.web.Application.find_handler)
    argv = _with_offline_template(list(sys.argv[1:] if argv is None else argv))
    app = _app_class()
    app.launch_instance(argv=argv)


#: The packaged Voila template (:data:`TEMPLATE_DIR`): Voila's lab page without its stylesheets from a CDN.
TEMPLATE = "specwidgets"
#: A Jupyter data directory holding ``voila/templates/specwidgets``.
TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jupyter")


def _with_offline_template(argv):
    """``argv`` with the packaged template, unless it names one; its folder put on ``JUPYTER_PATH``.

    Voila's lab template links Font Awesome from cdn.jsdelivr.net, which its
    own scripts already carry: offline, that request held the page's first
    paint until it failed, and on line it told a third party of every page.

    >>> _with_offline_template(["dashboard.ipynb", "--template=lab"])
    ['dashboard.ipynb', '--template=lab']
    """
    if any(a.startswith(("--template", "--VoilaConfiguration.template")) for a in argv):
        return argv
    paths = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    if TEMPLATE_DIR not in paths:
        os.environ["JUPYTER_PATH"] = os.pathsep.join([TEMPLATE_DIR, *paths])
    return [*argv, f"--VoilaConfiguration.template={TEMPLATE}"]


if __name__ == "__main__":  # pragma: no cover
    main()
