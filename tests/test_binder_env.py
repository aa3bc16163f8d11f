"""The Binder environment, built here as repo2docker would build it, from ``binder/`` alone.

A clean copy of the repository (the files git would check out) gets a fresh
virtual environment; ``binder/requirements.txt`` is installed into it, then
``binder/postBuild`` runs from the copy's root. In that environment every
notebook is executed on its own ``python3`` kernel, and the dashboard is
rendered by Voila twice: standalone (``voila notebooks/dashboard.ipynb``) and
through the Jupyter server at the Binder badge's ``voila/render/...`` URL.

pip's cache makes a rebuild take about a minute; a cold one downloads the
scientific stack (a few minutes). Nothing here is timed, so all of it (build,
notebooks, renders) runs in the background from the start of the session
(``build_binder_venv``, see conftest.py), at a lower priority; the tests
check its results at the end. ``test_notebooks`` checks each notebook's run
from the same report.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_fresh_install import _run as run_logged
from test_fresh_install import pip_install, stopped_with_the_session
from test_launcher import ERROR_MARKERS, ROOT, Server, fetch, free_port

from specwidgets.io.sample_data import find_local_goodman, goodman_available

BINDER = ROOT / "binder"

# The background build's servers and notebook runs, at the builds' lower priority.
_NICE = ["nice", "-n", "10"] if shutil.which("nice") else []

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

RUNNER = r'''
"""Run in the Binder venv: check it is the venv, then execute the notebooks given."""
import json, sys, time
from pathlib import Path

import nbclient, nbformat
import specwidgets

report = {"prefix": sys.prefix, "specwidgets": specwidgets.__file__, "notebooks": {}}
for name in sys.argv[1:]:
    path = Path(name)
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    errors = []
    try:
        client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                         resources={"metadata": {"path": str(path.parent)}})
        client.execute()
    except Exception as exc:  # the report says which notebook and why
        errors.append(f"{type(exc).__name__}: {str(exc)[-2000:]}")
    for index, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                errors.append(f"cell {index}: {out.get('ename')}: {out.get('evalue')}")
            elif out.get("output_type") == "stream" and out.get("name") == "stderr" and "Traceback" in out.get("text", ""):
                errors.append(f"cell {index}: traceback on stderr: {out['text'][:500]}")
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    report["notebooks"][path.name] = {"seconds": time.perf_counter() - start, "errors": errors,
                                      "code_cells": len(code),
                                      "cells_run": sum(cell.execution_count is not None for cell in code)}
# The kernel the notebooks ran on is the venv's own Python.
probe = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.prefix)")])
probe.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbclient.NotebookClient(probe, timeout=120, kernel_name="python3").execute()
report["kernel_prefix"] = probe.cells[0].outputs[0]["text"].strip()
print("REPORT " + json.dumps(report))
'''


def runner_report(output):
    """The report :data:`RUNNER` printed in ``output`` (its last ``REPORT`` line)."""
    lines = [line for line in output.splitlines() if line.startswith("REPORT ")]
    assert lines, f"the notebook runner gave no report:\n{output[-3000:]}"
    return json.loads(lines[-1][len("REPORT "):])


def checkout_copy(dest):
    """The files a clone would hold: tracked and new files that .gitignore does not exclude."""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, check=True,
        ).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: copy the tree, less build debris
        junk = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", "*.egg-info", "build", "dist", "artifacts",
                                      ".pytest_cache", ".ipynb_checkpoints", ".venv*")
        shutil.copytree(ROOT, dest, ignore=junk)
        return dest
    for name in filter(None, listing):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def run(command, *, cwd, env, log, timeout):
    """Run in the background build, appending the output to ``log``; returns the wall seconds.

    See ``test_fresh_install._run`` (a lower CPU priority, stopped if the session is interrupted).
    """
    return run_logged(command, cwd=cwd, env=env, log=log, timeout=timeout, background=True)[0]


def _name(requirement):
    return re.split(r"[\[<>=!~; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_binder_files():
    import tomllib

    requirements = (BINDER / "requirements.txt").read_text().splitlines()
    pins = [line.strip() for line in requirements if line.strip() and not line.startswith("#")]
    names = {_name(line) for line in pins}
    assert all("==" in line for line in pins), "pin every requirement"
    # Everything the package needs, and what the notebooks use, pinned for Binder.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = {_name(d) for d in project["dependencies"]} | {"ipykernel", "matplotlib"}
    assert needed <= names, f"pin these in binder/requirements.txt too: {sorted(needed - names)}"
    assert (BINDER / "runtime.txt").read_text().strip().startswith("python-3.")
    post_build = (BINDER / "postBuild").read_text()
    assert post_build.startswith("#!") and "set -e" in post_build
    assert os.access(BINDER / "postBuild", os.X_OK), "postBuild must be executable"


def build_binder_venv(folder):
    """A clean copy, a new venv, requirements.txt and postBuild: run in the background from the session's start."""
    timings = {}
    repo = checkout_copy(folder / "repo")
    env_dir = folder / "env"
    log = folder / "build.log"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "SPECWIDGETS_DASHBOARD_DATA", "JUPYTER_PATH")}
    timings["new venv"] = run([sys.executable, "-m", "venv", "--clear", env_dir], cwd=folder, env=env, log=log,
                              timeout=300)
    python = env_dir / "bin" / "python"
    env.update(VIRTUAL_ENV=str(env_dir), PATH=f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_PROGRESS_BAR="off")
    goodman = find_local_goodman() if goodman_available() else None
    if goodman is not None:
        env["SPECWIDGETS_DATA_DIR"] = str(goodman)  # as if fetched in postBuild
    else:
        # No network in tests: postBuild's fetch fails at once (a closed local
        # port) and the build goes on without the sample, as it is written to.
        env["SPECWIDGETS_DATA_URL"] = f"http://127.0.0.1:{free_port()}/"

    # --no-compile: byte-compiling the scientific stack is half of the install
    # time here and proves nothing about the environment.
    timings["requirements"] = pip_install([python, "-m", "pip", "install", "-q", "--no-compile", "-r",
                                           repo / "binder" / "requirements.txt"],
                                          cwd=repo, env=env, log=log, timeout=900, background=True)[0]
    timings["postBuild"] = run(["bash", repo / "binder" / "postBuild"], cwd=repo, env=env, log=log, timeout=600)

    # Every notebook, on the environment's own kernel (nothing here is timed:
    # it all runs in the background, at a lower priority).
    notebooks = sorted((repo / "notebooks").glob("*.ipynb"))
    if goodman is None:
        notebooks = [p for p in notebooks if p.name != "01_background_subtraction.ipynb"]
    (folder / "runner.py").write_text(RUNNER)
    runner_log = folder / "runner.log"
    timings["notebooks"] = run([python, folder / "runner.py", *notebooks], cwd=repo, env=env, log=runner_log,
                               timeout=1200)
    report = runner_report(runner_log.read_text())

    # Voila, standalone, from the root (voila.json applies) ...
    renders = {}
    port = free_port()
    command = [*_NICE, python, "-m", "voila", "notebooks/dashboard.ipynb", "--no-browser", f"--port={port}",
               "--Voila.ip=127.0.0.1"]
    with Server(command, port, cwd=repo, env=env, log_path=folder / "voila.log") as server, \
            stopped_with_the_session(server.process):
        server.wait_listening(timeout=120)
        t0 = time.perf_counter()
        renders["voila"] = (*fetch(server.url, timeout=300), server.log())
        timings["voila render"] = time.perf_counter() - t0

    # ... and through the Jupyter server, at the Binder badge's URL.
    port = free_port()
    command = [*_NICE, python, "-m", "jupyter_server", "--no-browser", f"--ServerApp.port={port}",
               "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0", "--IdentityProvider.token=",
               "--ServerApp.allow_root=True", f"--ServerApp.root_dir={repo}"]
    with Server(command, port, cwd=repo, env=env, log_path=folder / "jupyter-server.log") as server, \
            stopped_with_the_session(server.process):
        server.wait_listening(timeout=120)
        t0 = time.perf_counter()
        renders["voila/render via the server"] = (
            *fetch(server.url + "voila/render/notebooks/dashboard.ipynb", timeout=300), server.log())
        timings["voila/render via the server"] = time.perf_counter() - t0
    return dict(env_dir=env_dir, report=report, renders=renders, timings=timings)


BACKGROUND_BUILDS = {"binder_venv": build_binder_venv}


@pytest.fixture
def binder_venv(venv_builds):
    """The result of :func:`build_binder_venv`, run in the background (conftest.py)."""
    return venv_builds.result("binder_venv", build_binder_venv)


def test_binder_environment_runs_the_notebooks_and_the_dashboard(binder_venv):
    report, timings = binder_venv["report"], binder_venv["timings"]
    here = binder_venv["env_dir"].resolve()
    assert Path(report["prefix"]).resolve() == here, report
    assert Path(report["kernel_prefix"]).resolve() == here, "the notebooks must run on the environment's kernel"
    assert Path(report["specwidgets"]).resolve().is_relative_to(here), "specwidgets must come from the environment"
    for name, result in report["notebooks"].items():
        assert not result["errors"], f"{name}: {result['errors']}"
        assert result["cells_run"] == result["code_cells"], f"{name}: not every code cell ran"
        timings[name] = result["seconds"]
    for name, (status, page, log) in binder_venv["renders"].items():
        assert_rendered(status, page, log, name)
    print("binder environment (in the background): " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))


def assert_rendered(status, page, log, name):
    assert status == 200, f"{name}: HTTP {status}"
    assert "application/vnd.jupyter.widget-view+json" in page, f"{name}:\n{log}"
    for marker in ERROR_MARKERS:
        assert marker not in page, f"{marker!r} in the dashboard rendered by {name}:\n{log}"
