"""The Binder environment, built here as repo2docker would build it, from ``binder/`` alone.

A clean copy of the repository (the files git would check out) gets a fresh
virtual environment; ``binder/requirements.txt`` is installed into it, then
``binder/postBuild`` runs from the copy's root. In that environment every
notebook is executed on its own ``python3`` kernel, and the dashboard is
rendered by Voila twice: standalone (``voila notebooks/dashboard.ipynb``) and
through the Jupyter server at the Binder badge's ``voila/render/...`` URL.

pip's cache makes a rebuild take about a minute; a cold one downloads the
scientific stack (a few minutes).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import venv
from pathlib import Path

import pytest
from test_fresh_install import _run as run_logged
from test_launcher import ERROR_MARKERS, ROOT, Server, fetch, free_port

from specwidgets.io.sample_data import find_local_goodman, goodman_available

BINDER = ROOT / "binder"

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
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                errors.append(f"{out.get('ename')}: {out.get('evalue')}")
    report["notebooks"][path.name] = {"seconds": time.perf_counter() - start, "errors": errors}
# The kernel the notebooks ran on is the venv's own Python.
probe = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.prefix)")])
probe.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbclient.NotebookClient(probe, timeout=120, kernel_name="python3").execute()
report["kernel_prefix"] = probe.cells[0].outputs[0]["text"].strip()
print("REPORT " + json.dumps(report))
'''


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
    """Run, appending the output to ``log``; returns the wall seconds (see ``test_fresh_install._run``)."""
    return run_logged(command, cwd=cwd, env=env, log=log, timeout=timeout)[0]


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


def test_binder_environment_runs_the_notebooks_and_the_dashboard(tmp_path):
    timings = {}
    start = time.perf_counter()
    repo = checkout_copy(tmp_path / "repo")
    env_dir = tmp_path / "env"
    log = tmp_path / "build.log"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "SPECWIDGETS_DASHBOARD_DATA", "JUPYTER_PATH")}
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
    timings["requirements"] = run([python, "-m", "pip", "install", "-q", "--no-compile", "-r",
                                   repo / "binder" / "requirements.txt"],
                                  cwd=repo, env=env, log=log, timeout=900)
    timings["postBuild"] = run(["bash", repo / "binder" / "postBuild"], cwd=repo, env=env, log=log, timeout=600)

    # Every notebook, on the environment's own kernel.
    notebooks = sorted((repo / "notebooks").glob("*.ipynb"))
    if goodman is None:
        notebooks = [p for p in notebooks if p.name != "01_background_subtraction.ipynb"]
    (tmp_path / "runner.py").write_text(RUNNER)
    out = subprocess.run([str(python), str(tmp_path / "runner.py"), *map(str, notebooks)], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=1200)
    lines = [line for line in out.stdout.splitlines() if line.startswith("REPORT ")]
    assert out.returncode == 0 and lines, f"runner failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    report = json.loads(lines[-1][len("REPORT "):])
    here = env_dir.resolve()
    assert Path(report["prefix"]).resolve() == here, report
    assert Path(report["kernel_prefix"]).resolve() == here, "the notebooks must run on the environment's kernel"
    assert Path(report["specwidgets"]).resolve().is_relative_to(here), "specwidgets must come from the environment"
    for name, result in report["notebooks"].items():
        assert not result["errors"], f"{name}: {result['errors']}"
        timings[name] = result["seconds"]

    # Voila, standalone, from the root (voila.json applies) ...
    port = free_port()
    command = [python, "-m", "voila", "notebooks/dashboard.ipynb", "--no-browser", f"--port={port}",
               "--Voila.ip=127.0.0.1"]
    with Server(command, port, cwd=repo, env=env, log_path=tmp_path / "voila.log") as server:
        server.wait_listening(timeout=120)
        t0 = time.perf_counter()
        status, page = fetch(server.url, timeout=300)
        timings["voila render"] = time.perf_counter() - t0
        assert_rendered(status, page, server)

    # ... and through the Jupyter server, at the Binder badge's URL.
    port = free_port()
    command = [python, "-m", "jupyter_server", "--no-browser", f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1",
               "--ServerApp.port_retries=0", "--IdentityProvider.token=", "--ServerApp.allow_root=True",
               f"--ServerApp.root_dir={repo}"]
    with Server(command, port, cwd=repo, env=env, log_path=tmp_path / "jupyter-server.log") as server:
        server.wait_listening(timeout=120)
        t0 = time.perf_counter()
        status, page = fetch(server.url + "voila/render/notebooks/dashboard.ipynb", timeout=300)
        timings["voila/render via the server"] = time.perf_counter() - t0
        assert_rendered(status, page, server)

    timings["total"] = time.perf_counter() - start
    print("binder environment: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))


def assert_rendered(status, page, server):
    assert status == 200
    assert "application/vnd.jupyter.widget-view+json" in page, server.log()
    for marker in ERROR_MARKERS:
        assert marker not in page, f"{marker!r} in the rendered dashboard:\n{server.log()}"
