"""Tests of specwidgets.io.sample_data.

Downloads are served by a local ``http.server`` on 127.0.0.1: no test
contacts the real source.
"""

from __future__ import annotations

import hashlib
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from specwidgets.io import sample_data
from specwidgets.io.sample_data import (
    GOODMAN_REGISTRY,
    fetch_goodman,
    find_local_goodman,
    goodman_available,
    goodman_path,
    load_goodman,
)

needs_goodman = pytest.mark.skipif(not goodman_available(), reason="Goodman sample not on this machine")


class _QuietHandler(SimpleHTTPRequestHandler):
    requests_seen: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).requests_seen.append(self.path)
        super().do_GET()


@pytest.fixture
def serve(monkeypatch):
    """Return ``start(folder) -> base_url``; servers stop after the test."""
    # A proxy in the environment would otherwise receive the 127.0.0.1 requests.
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    servers = []

    def start(folder):
        _QuietHandler.requests_seen = []
        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(folder)))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/files"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def small_remote(tmp_path):
    """A served folder holding one small file, and its registry."""
    remote = tmp_path / "remote" / "files" / "bias"
    remote.mkdir(parents=True)
    content = b"SIMPLE  = T" + bytes(range(256)) * 8
    (remote / "tiny.fits.fz").write_bytes(content)
    return tmp_path / "remote", {"bias/tiny.fits.fz": hashlib.sha256(content).hexdigest()}


def test_download_verifies_checksum_and_uses_cache(serve, small_remote, tmp_path):
    root, registry = small_remote
    base_url = serve(root)
    cache = tmp_path / "cache"
    folder = fetch_goodman(base_url=base_url, registry=registry, cache_dir=cache)
    assert folder == cache.resolve()
    assert (folder / "bias/tiny.fits.fz").read_bytes() == (root / "files/bias/tiny.fits.fz").read_bytes()
    assert _QuietHandler.requests_seen == ["/files/bias/tiny.fits.fz"]
    fetch_goodman(base_url=base_url, registry=registry, cache_dir=cache)
    assert len(_QuietHandler.requests_seen) == 1  # verified copy in the cache: no second download


def test_download_base_url_from_environment(serve, small_remote, tmp_path, monkeypatch):
    root, registry = small_remote
    monkeypatch.setenv("SPECWIDGETS_DATA_URL", serve(root))
    monkeypatch.setenv("SPECWIDGETS_CACHE_DIR", str(tmp_path / "envcache"))
    folder = fetch_goodman(registry=registry)
    assert folder == (tmp_path / "envcache").resolve()
    assert (folder / "bias/tiny.fits.fz").is_file()


def test_tampered_file_is_refused(serve, small_remote, tmp_path):
    root, registry = small_remote
    (root / "files/bias/tiny.fits.fz").write_bytes(b"tampered")
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=r"checksum mismatch for bias/tiny\.fits\.fz downloaded from http://127\.0\.0\.1"):
        fetch_goodman(base_url=serve(root), registry=registry, cache_dir=cache)
    assert not (cache / "bias/tiny.fits.fz").exists()


def test_missing_remote_file_raises_oserror(serve, small_remote, tmp_path):
    root, _ = small_remote
    with pytest.raises(OSError, match=r"could not download bias/absent\.fits\.fz.*SPECWIDGETS_DATA_DIR"):
        fetch_goodman(base_url=serve(root), registry={"bias/absent.fits.fz": "0" * 64}, cache_dir=tmp_path / "c")


def test_data_dir_env_that_lacks_the_sample(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECWIDGETS_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="SPECWIDGETS_DATA_DIR.*does not hold the Goodman sample"):
        goodman_path()
    assert goodman_available() is False


def test_nothing_local_and_no_download(tmp_path, monkeypatch):
    monkeypatch.delenv("SPECWIDGETS_DATA_DIR", raising=False)
    monkeypatch.setenv("SPECWIDGETS_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(sample_data, "_candidate_dirs", lambda: [])
    assert find_local_goodman() is None and goodman_available() is False
    with pytest.raises(FileNotFoundError, match="not on this machine"):
        goodman_path(download=False)


# ------------------------------------------------------------------ real data
def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.goodman
@needs_goodman
def test_local_copy_matches_embedded_registry():
    folder = goodman_path(download=False)
    assert len(GOODMAN_REGISTRY) == 14
    for name, digest in GOODMAN_REGISTRY.items():
        assert _sha256(folder / name) == digest, name


@pytest.mark.goodman
@needs_goodman
def test_data_dir_env_accepts_parent_or_goodman_folder(tmp_path, monkeypatch):
    folder = goodman_path(download=False)
    monkeypatch.setenv("SPECWIDGETS_DATA_DIR", str(folder.parent))
    assert goodman_path() == folder
    monkeypatch.setenv("SPECWIDGETS_DATA_DIR", str(folder))
    assert goodman_path() == folder


@pytest.mark.goodman
@needs_goodman
def test_goodman_path_downloads_when_nothing_is_local(serve, tmp_path, monkeypatch):
    # Serve the shared copy itself (no copying) as if it were the remote.
    source = goodman_path(download=False)
    monkeypatch.delenv("SPECWIDGETS_DATA_DIR", raising=False)
    monkeypatch.setattr(sample_data, "_candidate_dirs", lambda: [])
    monkeypatch.setenv("SPECWIDGETS_DATA_URL", serve(source).removesuffix("/files"))
    monkeypatch.setenv("SPECWIDGETS_CACHE_DIR", str(tmp_path / "cache"))
    assert not goodman_available()
    folder = goodman_path()
    assert folder == (tmp_path / "cache").resolve()
    assert sorted(p.name for p in folder.iterdir()) == ["bias", "flats", "lamp", "spec_PKSJ0049_5738", "std_star"]
    assert goodman_available()


@pytest.mark.goodman
@needs_goodman
def test_load_goodman():
    sample = load_goodman()
    assert sample.science.shape == (2, 120, 2030)
    assert sample.arc.shape == sample.bias.shape == (120, 2030)
    assert sample.gain == 1.4 and sample.read_noise == 4.74
    assert sample.path == goodman_path()
    # The bias (~481 ADU = ~673 e-) is gone: the arc's dim blue end and the
    # science frame's sky rows sit far below it.
    assert 600 < np.median(sample.bias) < 700
    assert abs(np.median(sample.arc[:, :100])) < 60
    profile = np.median(sample.science[0], axis=1)
    assert np.all(profile[:20] < 200)
    # The bright trace near raw row 740 is row ~60 of the 680:800 crop.
    assert 50 <= np.argmax(profile) <= 70
    assert profile.max() > 10 * np.median(profile[:20])
