"""Helpers shared by the benchmark scripts (not a test module).

specsuite is the reference peer. Its package ``__init__`` imports jax and
other heavy dependencies the warping module does not need, so
:func:`import_specsuite_warping` loads ``specsuite.warping`` under a bare
package module instead of running that ``__init__``. specsuite is used as a
black box through its public functions only.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import statistics
import sys
import time
import types

import numpy as np

SETUP_HINT = (
    "specsuite is not importable from this Python ({exe}).\n"
    "Create the bench environment with  bash benchmarks/setup_bench_env.sh  and run this\n"
    "script with  benchmarks/.venv-bench/bin/python  (see benchmarks/README.md)."
)


def import_specsuite_warping():
    """Return ``specsuite.warping`` (without running ``specsuite/__init__``), or None."""
    if "specsuite.warping" in sys.modules:
        return sys.modules["specsuite.warping"]
    spec = importlib.util.find_spec("specsuite")
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg = types.ModuleType("specsuite")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    sys.modules["specsuite"] = pkg
    try:
        return importlib.import_module("specsuite.warping")
    except ImportError as exc:  # e.g. matplotlib/joblib/tqdm missing
        del sys.modules["specsuite"]
        print(f"specsuite.warping failed to import: {exc}")
        return None


def specsuite_version():
    try:
        from importlib.metadata import version

        return version("specsuite")
    except Exception:  # noqa: BLE001 - only for display
        return "?"


def specwidgets_version():
    import specwidgets

    return specwidgets.__version__


def machine_line():
    try:
        load = "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = "load average n/a"
    return (
        f"python {platform.python_version()} ({sys.executable}); "
        f"{os.cpu_count()} CPU(s); {load}"
    )


def source_line():
    """Which specwidgets code was measured: HEAD (read-only git query) and a hash of its sources."""
    import hashlib
    import subprocess
    from pathlib import Path

    import specwidgets

    pkg = Path(specwidgets.__file__).resolve().parent
    digest = hashlib.sha256()
    for f in sorted(pkg.rglob("*.py")):
        digest.update(f.relative_to(pkg).as_posix().encode())
        digest.update(f.read_bytes())
    try:
        head = subprocess.run(["git", "-C", str(pkg), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        head = "?"
    return f"specwidgets from {pkg} (git HEAD {head}; sha256 of its .py files {digest.hexdigest()[:12]})"


def timed(fn, *args, **kwargs):
    """Run ``fn`` once; return (seconds, result)."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def repeat_times(fn, n):
    """Wall-clock seconds of ``n`` calls of ``fn()``."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median(values):
    return statistics.median(values)


def fmt_times(times):
    return ", ".join(f"{t:.3g}" for t in times)


def rms(a):
    a = np.asarray(a, dtype=float)
    a = a[np.isfinite(a)]
    return float(np.sqrt(np.mean(a**2))) if a.size else float("nan")


def table(rows, headers, aligns=None):
    """Plain-text table: ``rows`` are sequences of already formatted strings."""
    cols = list(zip(*([headers] + [list(map(str, r)) for r in rows])))
    widths = [max(len(c) for c in col) for col in cols]
    aligns = aligns or ["<"] + [">"] * (len(headers) - 1)
    def line(cells):
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, aligns, widths))
    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(list(map(str, r))) for r in rows]
    return "\n".join(out)


def heading(text, char="="):
    print()
    print(text)
    print(char * len(text))

