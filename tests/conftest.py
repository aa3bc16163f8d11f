import socket

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
