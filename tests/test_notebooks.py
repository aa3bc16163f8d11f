"""The notebooks: committed clean, and every one runs without an error.

Each notebook in ``notebooks/`` is executed with nbclient on the ``python3``
kernel, from the ``notebooks/`` folder as a reader would open it, in the
Binder environment (``test_binder_env``; once per session). The Goodman
notebook needs the sample frames and is skipped when they are absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

import test_binder_env  # noqa: E402

from specwidgets.io.sample_data import goodman_available  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
PACKAGED = ROOT / "specwidgets" / "app" / "dashboard.ipynb"
NEEDS_GOODMAN = {"01_background_subtraction.ipynb"}


def test_the_expected_notebooks_are_there():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_background_subtraction.ipynb", "02_widgets.ipynb", "dashboard.ipynb"} <= names


@pytest.mark.parametrize("path", [*NOTEBOOKS, PACKAGED], ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {index} has outputs: clear them before committing"
            assert cell.execution_count is None, f"{path.name} cell {index} has an execution count"


def test_dashboard_notebook_is_the_packaged_one():
    # One app: the Binder/Voila copy in notebooks/ and the one the launcher serves.
    assert (NOTEBOOK_DIR / "dashboard.ipynb").read_bytes() == PACKAGED.read_bytes(), (
        "notebooks/dashboard.ipynb and specwidgets/app/dashboard.ipynb differ: edit one and copy it over"
    )


# Every notebook is executed once per session, in the Binder environment that
# test_binder_env builds in the background (a new venv from binder/ alone; the
# notebooks run from notebooks/ on that venv's own python3 kernel, without
# SPECWIDGETS_DASHBOARD_DATA): a second run here in the test environment
# would check the same thing again at the end of the session. Offline, where
# pip cannot build that environment, they run here instead (not skipped).
BACKGROUND_BUILDS = test_binder_env.BACKGROUND_BUILDS


_LOCAL = {}


def _local_report(tmp_path_factory):
    """The notebooks run on this environment's kernel, in a copy of the checkout (once per session)."""
    if "report" not in _LOCAL:
        folder = tmp_path_factory.mktemp("notebooks-here")
        repo = test_binder_env.checkout_copy(folder / "repo")
        (folder / "runner.py").write_text(test_binder_env.RUNNER)
        env = {k: v for k, v in os.environ.items() if k not in ("SPECWIDGETS_DASHBOARD_DATA", "JUPYTER_PATH")}
        names = [n for n in sorted(p.name for p in NOTEBOOKS) if goodman_available() or n not in NEEDS_GOODMAN]
        out = subprocess.run([sys.executable, str(folder / "runner.py"), *(str(repo / "notebooks" / n) for n in names)],
                             cwd=repo, env=env, capture_output=True, text=True, timeout=1800)
        _LOCAL["report"] = test_binder_env.runner_report(out.stdout + out.stderr)
    return _LOCAL["report"]


@pytest.fixture
def binder_venv(venv_builds, tmp_path_factory):
    """test_binder_env's background run (notebooks included), shared with that test.

    Offline, where that environment cannot be built (its test is skipped),
    the notebooks run on this environment's kernel instead, so that they
    are still executed.
    """
    try:
        return dict(venv_builds.result("binder_venv", test_binder_env.build_binder_venv), where="Binder environment")
    except pytest.skip.Exception as skip:
        if "offline" not in str(skip):
            raise
    return {"report": _local_report(tmp_path_factory),
            "where": "this environment: offline, no Binder environment could be built"}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_clean(path, binder_venv):
    if path.name in NEEDS_GOODMAN and not goodman_available():
        pytest.skip("Goodman sample not available (set SPECWIDGETS_DATA_DIR)")
    report, where = binder_venv["report"], binder_venv["where"]
    result = report["notebooks"][path.name]
    assert not result["errors"], f"{path.name}: {result['errors']}"
    assert result["cells_run"] == result["code_cells"]
    print(f"{path.name}: {result['code_cells']} cells in {result['seconds']:.1f} s ({where})")
