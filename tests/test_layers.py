"""The package's layers: each imports only the layers below it.

core < io < display < interactive < app; batch sits on core and io.
Lazy imports inside functions count too: a layer that needs an upper one
only sometimes still depends on it.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "specwidgets"
LAYERS = ("core", "io", "display", "interactive", "app", "batch")

#: What each layer may import from specwidgets (besides itself).
ALLOWED = {
    "core": set(),
    "io": {"core"},
    "display": {"core", "io"},
    "interactive": {"core", "io", "display"},
    "app": {"core", "io", "display", "interactive"},
    "batch": {"core", "io"},
}
#: Third-party packages a layer must not import.
FORBIDDEN_THIRD_PARTY = {
    "core": {"ipywidgets", "bqplot", "IPython", "traitlets", "voila", "dask", "distributed"},
    "io": {"ipywidgets", "bqplot", "IPython", "traitlets", "voila", "dask", "distributed"},
    "batch": {"ipywidgets", "bqplot", "voila"},
}


def _imports(path):
    """Absolute module names a file imports, relative imports resolved."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    if path.name == "__init__.py":
        module = module.rsplit(".", 1)[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:  # "from . import x": x may be a module
                    names += [f"{target}.{alias.name}" for alias in node.names]
                    continue
            else:
                target = node.module
            names.append(target)
    return names


def _layer_of(name):
    parts = name.split(".")
    if parts[0] != "specwidgets":
        return None
    if len(parts) == 1:
        return "specwidgets"  # the top-level package: the facade above everything
    return parts[1]


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_imports_only_layers_below(layer):
    bad = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for name in _imports(path):
            target = _layer_of(name)
            if target is not None and target != layer and target not in ALLOWED[layer]:
                bad.append(f"{path.relative_to(PACKAGE)} imports {name}")
            if name.split(".")[0] in FORBIDDEN_THIRD_PARTY.get(layer, ()):
                bad.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not bad, "\n".join(bad)


def test_every_module_lives_in_a_layer():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    # The facade (seed names), the command line (and ``python -m specwidgets``), and the test helpers.
    assert top == ["__init__.py", "__main__.py", "cli.py", "seed.py", "testing.py"]


BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"ipywidgets", "bqplot", "traitlets", "voila"}:
            raise ImportError(f"blocked {name}")
sys.meta_path.insert(0, Block())
"""


@pytest.mark.parametrize("module", ["specwidgets.core", "specwidgets", "specwidgets.io.loading", "specwidgets.batch"])
def test_import_without_widget_libraries(module):
    code = BLOCK + f"import {module}\nimport specwidgets.core as c\nassert callable(c.fit_sky)\nprint('ok')"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_the_block_works():
    run = subprocess.run([sys.executable, "-c", BLOCK + "import specwidgets.interactive"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode != 0 and "blocked" in run.stderr
