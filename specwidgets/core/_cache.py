"""Where specwidgets keeps what it writes for itself: a per-user cache folder.

numba's ``cache=True`` writes compiled kernels (``.nbi``/``.nbc`` files) next
to the module by default, that is into the installed package. A package
folder written at run time outlives ``pip uninstall`` and can shadow a later
install, so the kernels go to a per-user cache folder instead:

1. ``$SPECWIDGETS_CACHE_DIR`` when set;
2. otherwise the platform's convention: ``$XDG_CACHE_HOME/specwidgets`` or
   ``~/.cache/specwidgets`` (Linux and other Unix), ``~/Library/Caches/specwidgets``
   (macOS), ``%LOCALAPPDATA%\\specwidgets\\Cache`` (Windows).

numba reads ``NUMBA_CACHE_DIR`` when it is first imported, so this module is
imported first by ``specwidgets/__init__.py``. A ``NUMBA_CACHE_DIR`` the user
set is left alone.

Examples
--------
>>> import os
>>> from specwidgets.core._cache import user_cache_dir
>>> str(user_cache_dir(environ={"SPECWIDGETS_CACHE_DIR": "/tmp/sw"}))
'/tmp/sw'
>>> user_cache_dir(environ={"XDG_CACHE_HOME": "/c"}, platform="linux").as_posix()
'/c/specwidgets'
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["CACHE_ENV", "configure_numba_cache", "user_cache_dir"]

#: Environment variable that chooses specwidgets' cache folder.
CACHE_ENV = "SPECWIDGETS_CACHE_DIR"


def user_cache_dir(environ=None, platform=None):
    """The per-user folder for specwidgets' caches (not created here).

    Parameters
    ----------
    environ : mapping, optional
        Environment to read (default ``os.environ``).
    platform : str, optional
        ``sys.platform`` value to follow (default the running one).

    Returns
    -------
    pathlib.Path
    """
    environ = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    if environ.get(CACHE_ENV):
        return Path(environ[CACHE_ENV]).expanduser()
    if platform.startswith("win"):
        base = environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "specwidgets" / "Cache"
    if platform == "darwin":
        return Path.home() / "Library" / "Caches" / "specwidgets"
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "specwidgets"


def configure_numba_cache():
    """Point numba's kernel cache at ``user_cache_dir() / "numba"`` unless the user chose one.

    Sets ``NUMBA_CACHE_DIR`` in the environment (Dask workers and kernels
    started from here inherit it) and, when numba was already imported,
    its configuration too. Returns the folder numba will use (None when no
    folder at all can be created).
    """
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    folder = user_cache_dir() / "numba"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        # No writable home (a locked-down service account): a private
        # temporary folder still keeps the kernels out of the package.
        import tempfile

        user = getattr(os, "getuid", lambda: os.environ.get("USERNAME", "user"))()
        folder = Path(tempfile.gettempdir()) / f"specwidgets-{user}" / "numba"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
    os.environ["NUMBA_CACHE_DIR"] = str(folder)
    config = sys.modules.get("numba.core.config")
    if config is not None and not getattr(config, "CACHE_DIR", ""):
        config.CACHE_DIR = str(folder)
    return folder
