import os
import socket
import sys

# Some containers (this one) set PYTHONDONTWRITEBYTECODE=1: every Python the
# tests start (about 70 page kernels, CLI runs and workers) would compile
# specwidgets from source again (~0.3 s each). Python's default, which users
# have, caches the bytecode (in __pycache__, ignored by git); so do the tests.
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
    sys.dont_write_bytecode = False

import numpy as np
import pytest

from specwidgets.io.sample_data import goodman_available
from specwidgets.io.synthetic import make_synthetic_longslit

# Tests never use the network: only this machine's own addresses resolve, so
# a test that would download behaves here as it does offline (subprocesses
# are not covered; they get SPECWIDGETS_DATA_DIR or a 127.0.0.1 server).
_getaddrinfo = socket.getaddrinfo
_LOCAL = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "::", "", socket.gethostname()}


def _local_getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if name is not None and name not in _LOCAL and not str(name).startswith("127."):
        raise socket.gaierror(socket.EAI_NONAME, f"the tests do not use the network (tried to resolve {name!r})")
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _local_getaddrinfo


@pytest.fixture(scope="session")
def tilted():
    """100 x 2048, lines tilted 3 px over the slit: the issues' standard synthetic case."""
    return make_synthetic_longslit(shape=(100, 2048), n_exposures=2, tilt=3.0, seed=11)


@pytest.fixture(scope="session")
def small():
    return make_synthetic_longslit(shape=(60, 400), n_exposures=2, tilt=2.0, n_sky_lines=12, n_arc_lines=10, seed=5)


@pytest.fixture(scope="session")
def goodman():
    if not goodman_available():
        pytest.skip("Goodman sample not available (set SPECWIDGETS_DATA_DIR)")
    from specwidgets.io.sample_data import load_goodman

    return load_goodman(crop_bds=(680, 800))


def rms(a):
    return float(np.sqrt(np.nanmean(np.square(a))))


# ------------------------------------------------------------------ new virtual environments
# Two tests build a new virtual environment (test_fresh_install: a clean clone
# and `pip install .`; test_binder_env: binder/requirements.txt and postBuild).
# pip spends most of that time waiting on the disk (about 20 s of CPU in 70 s
# here), so those installs start in background threads when the session
# starts, at a lower CPU priority (`nice`) so that the timed tests are not
# slowed; the tests that use them run last and wait for them. A test module
# declares its builds in ``BACKGROUND_BUILDS`` ({fixture name: function of a
# folder}); its fixture of that name returns ``venv_builds.result(name)``.
def pytest_collection_modifyitems(config, items):
    """Run the tests that use a background build last (a stable sort keeps the rest in order).

    A module with ``RUN_LAST = True`` (one that times things) comes after the
    other builds' tests, which have waited for their background work to end.
    """
    items.sort(key=lambda item: (bool(_builds_of(item)),
                                 bool(getattr(getattr(item, "module", None), "RUN_LAST", False))))


def _builds_of(item):
    declared = getattr(getattr(item, "module", None), "BACKGROUND_BUILDS", None) or {}
    return {name: declared[name] for name in getattr(item, "fixturenames", ()) if name in declared}


class BackgroundBuilds:
    """The session's background builds: started once, awaited by the tests that need them."""

    def __init__(self, tmp_path_factory):
        from concurrent.futures import ThreadPoolExecutor

        self._tmp = tmp_path_factory
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="venv-build")
        self._futures = {}
        self._functions = {}

    def start(self, name, function):
        if name not in self._futures:
            self._functions[name] = function
            self._futures[name] = self._pool.submit(function, self._tmp.mktemp(name))

    def result(self, name, function=None, timeout=1500):
        """The build's result (its exception, a skip included, is raised here); started now if it was not."""
        if name not in self._futures:
            self.start(name, function)
        return self._futures[name].result(timeout=timeout)

    def close(self):
        if self._futures:
            from test_fresh_install import stop_background_commands

            # Builds still running (the session was interrupted) are stopped, not waited for.
            self._pool.shutdown(wait=False, cancel_futures=True)
            stop_background_commands()
        self._pool.shutdown(wait=True)


@pytest.fixture(scope="session", autouse=True)
def venv_builds(request, tmp_path_factory):
    builds = BackgroundBuilds(tmp_path_factory)
    for item in request.session.items:
        for name, function in _builds_of(item).items():
            builds.start(name, function)
    yield builds
    builds.close()
