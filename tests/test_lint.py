"""The repository passes ruff with the config committed in pyproject.toml."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff():
    exe = shutil.which("ruff")
    if exe:
        return [exe]
    try:
        import ruff  # noqa: F401
    except ImportError:
        return None
    return [sys.executable, "-m", "ruff"]


def test_ruff_check_passes():
    cmd = _ruff()
    if cmd is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]' installs it)")
    run = subprocess.run([*cmd, "check", "--no-cache", str(ROOT)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"ruff check found problems (fix them, or `ruff check --fix`):\n{run.stdout}{run.stderr}"


def test_the_config_is_committed():
    text = (ROOT / "pyproject.toml").read_text()
    assert "[tool.ruff.lint]" in text and '"NPY"' in text


def test_the_public_functions_are_typed():
    import inspect

    import specwidgets as sw
    from specwidgets.batch import prepare_calibrations, run_batch
    from specwidgets.io.folder import load_folder
    from specwidgets.io.loading import read_frame

    functions = [getattr(sw, name) for name in sw.__all__ if inspect.isfunction(getattr(sw, name, None))
                 and name != "plot_image"]  # plot_image: the display layer, imported lazily
    functions += [run_batch, prepare_calibrations, load_folder, read_frame, sw.WarpModel.replace,
                  sw.WarpModel.identity, sw.WarpModel.from_tilt]
    assert len(functions) >= 18
    untyped = [f.__qualname__ for f in functions if inspect.signature(f).return_annotation is inspect.Signature.empty]
    assert not untyped, f"public functions without a return type: {untyped}"
