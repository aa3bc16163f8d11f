"""The notebooks: committed clean, and every one runs without an error.

Each notebook in ``notebooks/`` is executed with nbclient on the ``python3``
kernel, from the ``notebooks/`` folder as a reader would open it, in the
Binder environment (``test_binder_env``; once per session). The Goodman
notebook needs the sample frames and is skipped when they are absent.
"""

from __future__ import annotations

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
# would check the same thing again at the end of the session.
BACKGROUND_BUILDS = test_binder_env.BACKGROUND_BUILDS


@pytest.fixture
def binder_venv(venv_builds):
    """test_binder_env's background run (notebooks included), shared with that test."""
    return venv_builds.result("binder_venv", test_binder_env.build_binder_venv)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_clean(path, binder_venv):
    if path.name in NEEDS_GOODMAN and not goodman_available():
        pytest.skip("Goodman sample not available (set SPECWIDGETS_DATA_DIR)")
    result = binder_venv["report"]["notebooks"][path.name]
    assert not result["errors"], f"{path.name}: {result['errors']}"
    assert result["cells_run"] == result["code_cells"]
    print(f"{path.name}: {result['code_cells']} cells in {result['seconds']:.1f} s (Binder environment)")
