"""The notebooks: committed clean, and every one runs without an error.

Each notebook in ``notebooks/`` is executed with nbclient on the ``python3``
kernel, from the ``notebooks/`` folder as a reader would open it. The
Goodman notebook needs the sample frames and is skipped when they are absent.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from specwidgets.io.sample_data import goodman_available  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
PACKAGED = ROOT / "specwidgets" / "app" / "dashboard.ipynb"
NEEDS_GOODMAN = {"01_background_subtraction.ipynb"}
CELL_TIMEOUT = 600


def execute(path, kernel_name="python3", timeout=CELL_TIMEOUT, **client_options):
    """Run a notebook in its folder; returns (executed notebook, seconds). Raises on a cell error."""
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=timeout, kernel_name=kernel_name,
        resources={"metadata": {"path": str(Path(path).parent)}}, **client_options,
    )
    start = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - start


def error_outputs(nb):
    """Every error output, and any stderr that carries a traceback, as text."""
    found = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                found.append(f"cell {index}: {output.get('ename')}: {output.get('evalue')}")
            elif output.get("output_type") == "stream" and output.get("name") == "stderr":
                if "Traceback" in output.get("text", ""):
                    found.append(f"cell {index}: traceback on stderr: {output['text'][:500]}")
    return found


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


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_clean(path, monkeypatch):
    if path.name in NEEDS_GOODMAN and not goodman_available():
        pytest.skip("Goodman sample not available (set SPECWIDGETS_DATA_DIR)")
    monkeypatch.delenv("SPECWIDGETS_DASHBOARD_DATA", raising=False)
    nb, seconds = execute(path)
    assert not error_outputs(nb)
    n_code = sum(cell.cell_type == "code" for cell in nb.cells)
    n_run = sum(cell.cell_type == "code" and cell.execution_count is not None for cell in nb.cells)
    assert n_run == n_code
    print(f"{path.name}: {n_code} cells in {seconds:.1f} s")
