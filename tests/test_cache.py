"""Compiled kernels go to a per-user cache folder, never into the installed package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from specwidgets.core import _cache

ROOT = Path(__file__).resolve().parents[1]


def test_cache_folder_follows_the_platform_and_the_override():
    home = Path.home()
    assert _cache.user_cache_dir({"SPECWIDGETS_CACHE_DIR": "~/x"}, "linux") == home / "x"
    assert _cache.user_cache_dir({}, "linux") == home / ".cache" / "specwidgets"
    assert _cache.user_cache_dir({"XDG_CACHE_HOME": "/c"}, "linux") == Path("/c/specwidgets")
    assert _cache.user_cache_dir({}, "darwin") == home / "Library" / "Caches" / "specwidgets"
    assert _cache.user_cache_dir({"LOCALAPPDATA": "C:/L"}, "win32") == Path("C:/L/specwidgets/Cache")


def test_a_numba_cache_dir_set_by_the_user_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("SPECWIDGETS_CACHE_DIR", str(tmp_path / "sw"))
    assert _cache.configure_numba_cache() == tmp_path / "mine"
    assert os.environ["NUMBA_CACHE_DIR"] == str(tmp_path / "mine")
    assert not (tmp_path / "sw").exists()


def test_kernels_are_cached_in_the_user_folder_not_beside_the_module(tmp_path):
    """A ``cache=True`` kernel compiled after ``import specwidgets`` writes only under SPECWIDGETS_CACHE_DIR."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "kernels.py").write_text(
        "from numba import njit\n\n@njit(cache=True)\ndef plus_one(x):\n    return x + 1\n"
    )
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(SPECWIDGETS_CACHE_DIR=str(cache), PYTHONPATH=os.pathsep.join([str(ROOT), str(package)]))
    code = "import specwidgets, kernels, os; assert kernels.plus_one(1) == 2; print(os.environ['NUMBA_CACHE_DIR'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(cache / "numba")
    cached = [p.suffix for p in (cache / "numba").rglob("*") if p.is_file()]
    assert ".nbi" in cached and ".nbc" in cached
    beside = [p.name for p in package.rglob("*") if p.suffix in (".nbi", ".nbc")]
    assert beside == []
