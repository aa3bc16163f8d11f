"""What a shared dashboard may touch: the data root, the output root, and who may connect.

The dashboard runs Python as the user who started it. Anyone who can open the
page can type a folder to read and a folder to export to, so the launcher
confines both (``specwidgets dashboard --data-root DIR --output-root DIR``):

* a typed path is taken relative to its root (``~`` is not the server's home:
  it is just a folder name), resolved with every symlink followed, and then
  checked to lie inside the root;
* a path outside gets one message, whatever is there, so the page cannot be
  used to probe the server's file system;
* the launcher passes the roots to the page's kernel in the environment
  variables :data:`DATA_ROOT_ENV` and :data:`OUTPUT_ROOT_ENV`.

The network side (token, Host/Origin allow-list, session cap) is set up by
:mod:`specwidgets.app.launcher` with :func:`allowed_hosts` and
:func:`voila_security_settings`.

Examples
--------
>>> import tempfile
>>> root = Path(tempfile.mkdtemp()).resolve()
>>> (root / "night1").mkdir()
>>> inside_root("night1", root) == root / "night1"
True
>>> inside_root("/etc", root)
Traceback (most recent call last):
...
specwidgets.app.security.OutsideRootError: '/etc' is not inside the data root: type a folder under it (relative paths start there)
>>> inside_root("~", root) == root / "~"          # not the server's home
True
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path

__all__ = [
    "DATA_ROOT_ENV",
    "OUTPUT_ROOT_ENV",
    "OutsideRootError",
    "allowed_hosts",
    "escape_outside_links",
    "generate_token",
    "inside_root",
    "is_loopback",
    "root_from_environment",
]

#: Environment variable through which the launcher gives the page its data root.
DATA_ROOT_ENV = "SPECWIDGETS_DASHBOARD_DATA_ROOT"

#: Environment variable through which the launcher gives the page its output root.
OUTPUT_ROOT_ENV = "SPECWIDGETS_DASHBOARD_OUTPUT_ROOT"


class OutsideRootError(ValueError):
    """A path typed in the page lies outside its root (the message says nothing of what is there)."""


def root_from_environment(variable):
    """The root the launcher set in ``variable`` (resolved), or None when unset."""
    value = os.environ.get(variable, "").strip()
    return Path(value).resolve() if value else None


def inside_root(text, root, what="data"):
    """Resolve ``text`` against ``root`` and return it, or raise :class:`OutsideRootError`.

    Parameters
    ----------
    text : str or os.PathLike
        What the user typed. Relative paths start at ``root``; ``~`` is a
        plain folder name (never expanded to the server user's home).
    root : str or os.PathLike
        The folder the page is confined to.
    what : str
        ``"data"`` or ``"output"``, for the message.

    Returns
    -------
    pathlib.Path
        The resolved path (every symlink followed), inside ``root``.

    Raises
    ------
    OutsideRootError
        When the resolved path is not ``root`` or below it. The message is
        the same whether the path exists or not.
    """
    root = Path(root).resolve()
    typed = str(os.fspath(text)).strip()
    path = Path(typed)
    if not path.is_absolute():
        path = root / path
    # strict=False: a path that does not exist resolves as far as it can,
    # symlinks included, so a missing path and a link out are told apart from
    # an inside path by where they point, not by whether they exist.
    resolved = path.resolve(strict=False)
    if resolved != root and root not in resolved.parents:
        raise OutsideRootError(
            f"{typed!r} is not inside the {what} root: type a folder under it (relative paths start there)"
        )
    return resolved


def escape_outside_links(folder, root, depth=1):
    """Names (relative to ``folder``) of entries, down ``depth`` subfolder levels, that resolve outside ``root``.

    The folder loaders follow symlinks; a link inside the data root to a
    file or folder outside it would let the page read beyond the root.
    """
    root = Path(root).resolve()
    folder = Path(folder)
    escaping = []

    def walk(current, level):
        try:
            entries = sorted(current.iterdir())
        except OSError:
            return
        for entry in entries:
            target = entry.resolve(strict=False)
            if target != root and root not in target.parents:
                escaping.append(entry.relative_to(folder).as_posix())
                continue
            if level < depth and entry.is_dir():
                walk(entry, level + 1)

    walk(folder, 0)
    return escaping


# ------------------------------------------------------------------ network
def is_loopback(ip):
    """True for an address that only this machine can reach (127.0.0.0/8, ::1, ``localhost``)."""
    if ip in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def allowed_hosts(ip, extra=()):
    """Host names the server answers to: the loopback names, the bound address, and ``extra``.

    A request whose ``Host`` (or ``Origin``) header names anything else is
    refused, which is what stops a DNS-rebinding page (a site whose name
    suddenly points at 127.0.0.1) from reaching the server.
    """
    hosts = ["localhost", "127.0.0.1", "::1"]
    if ip in ("0.0.0.0", "::", ""):
        # Every interface: the machine's own names and addresses.
        extra = [*_own_names(), *extra]
    elif ip.lower() not in hosts:
        hosts.append(ip.lower())
    for item in extra:
        item = str(item).strip().lower()
        if item and item not in hosts:
            hosts.append(item)
    return hosts


def _own_names():
    import socket

    names = []
    try:
        name = socket.gethostname()
        names += [name, socket.getfqdn()]
        names += [info[4][0] for info in socket.getaddrinfo(name, None)]
    except OSError:
        pass
    return [n.lower() for n in names if n]


def generate_token():
    """A fresh random access token (URL-safe, 256 bits)."""
    return secrets.token_urlsafe(32)
