"""Offline, missing files and missing packages reach the page as one plain sentence with the fix."""

from __future__ import annotations

import pytest

from specwidgets.io import sample_data


def test_goodman_download_offline_is_one_plain_sentence(tmp_path, monkeypatch):
    """No local copy and no network: the error names the fix, not the connection pool."""
    monkeypatch.delenv("SPECWIDGETS_DATA_DIR", raising=False)
    monkeypatch.setenv("SPECWIDGETS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sample_data, "find_local_goodman", lambda: None)
    # conftest makes every name but this machine's unresolvable, as offline.
    with pytest.raises(OSError) as info:
        sample_data.fetch_goodman(base_url="https://sample.example.org/goodman/",
                                  registry={"bias/x.fits": "0" * 64})
    text = str(info.value)
    assert text.startswith("The Goodman sample is not on this machine and could not be downloaded")
    assert "SPECWIDGETS_DATA_DIR" in text and "sample.example.org" in text
    assert "ConnectionPool" not in text and "Errno" not in text and "\n" not in text


def test_goodman_in_the_dashboard_offline(tmp_path, monkeypatch):
    from specwidgets.app.page import DashboardApp

    monkeypatch.delenv("SPECWIDGETS_DATA_DIR", raising=False)
    monkeypatch.setenv("SPECWIDGETS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SPECWIDGETS_DATA_URL", "https://sample.example.org/goodman/")
    monkeypatch.setattr(sample_data, "find_local_goodman", lambda: None)
    app = DashboardApp()
    app.source.value = "goodman"
    assert app.load() is False
    message = app.message.value
    assert "could not be downloaded" in message and "SPECWIDGETS_DATA_DIR" in message
    assert "ConnectionPool" not in message and "NameResolution" not in message
    assert app.dashboard is not None  # the demo stays on show


def test_missing_package_and_file_system_errors_are_sentences():
    from specwidgets.app.page import _describe

    missing = ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")
    assert _describe(missing) == ("this needs the Python package matplotlib, which is not installed here; "
                                  "install it (pip install matplotlib) and restart the dashboard")
    denied = PermissionError(13, "Permission denied", "/data/night1")
    assert _describe(denied) == "Permission denied: /data/night1"
    raw = OSError("HTTPSConnectionPool(host='x', port=443): Max retries exceeded")
    assert "ConnectionPool" not in _describe(raw) and "log" in _describe(raw)
