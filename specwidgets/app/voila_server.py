"""Voila with the guards a shared dashboard needs: ``python -m specwidgets.app.voila_server NOTEBOOK [voila options]``.

The launcher (:mod:`specwidgets.app.launcher`) runs this instead of ``voila``.
It is Voila 0.5 with four changes, configured by environment variables:

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
  Pre-heated kernels (``--VoilaConfiguration.preheat_kernel=True``, which
  the launcher's ``--pool-size`` turns on) wait for a page and are not
  counted as pages.

With pre-heated kernels Voila also opens an unauthenticated websocket route,
``/voila/query/<kernel id>``, that hands a page's request (its query string,
which may carry the token) to a notebook calling ``voila.utils.wait_for_request``.
The dashboard does not call it, so the route is not served and nothing is
kept for it.
"""

from __future__ import annotations

import os
import re
import sys

import tornado.web

__all__ = ["HOSTS_ENV", "MAX_SESSIONS_ENV", "ORIGINS_ENV", "TOKEN_ENV", "V1_PROTOCOL", "main"]

HOSTS_ENV = "SPECWIDGETS_VOILA_ALLOWED_HOSTS"
#: The access token (kept out of the command line, where ``ps`` shows it).
TOKEN_ENV = "SPECWIDGETS_VOILA_TOKEN"
ORIGINS_ENV = "SPECWIDGETS_VOILA_ALLOWED_ORIGINS"
MAX_SESSIONS_ENV = "SPECWIDGETS_VOILA_MAX_SESSIONS"

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


def open_pages(kernel_manager):
    """Kernels serving pages: all of them but those kept pre-heated in Voila's pool.

    A pool entry is a task that is done once its kernel has started (the
    notebook then runs in it); a refill still starting its kernel holds none
    yet, so only done entries are subtracted.
    """
    pooled = set()
    for pool in getattr(kernel_manager, "_pools", {}).values():
        for task in pool:
            try:
                if task.done() and not task.cancelled() and task.exception() is None:
                    pooled.add(task.result()["kernel_id"])
            except Exception:  # noqa: BLE001 - an entry that failed to start holds no kernel
                continue
    return len(set(kernel_manager.list_kernel_ids()) - pooled)


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


def _app_class():
    from voila.app import Voila

    class SafeVoila(Voila):
        """Voila with the host allow-list, v1-only websockets, ``_xsrf`` cookie and session cap."""

        def init_settings(self):
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
    tornado.web.Application.find_handler = _find_handler(tornado.web.Application.find_handler)
    app = _app_class()
    app.launch_instance(argv=sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":  # pragma: no cover
    main()
