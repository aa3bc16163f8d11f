"""The sky kernels compile once (one signature each) and ahead of need."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = """
import json
import numpy as np
import specwidgets as sw
from numba.core.registry import CPUDispatcher
from specwidgets.core.sky import bspline as bspline_sky
from specwidgets.core.sky import median as median_sky
from specwidgets.core.sky import quality as sky_quality
from specwidgets.core._warmup import warm_up

warm_up()
frames = sw.datasets.load_demo()
locs, _ = sw.find_cal_lines(frames.arc)
model = sw.generate_warp_model(frames.arc, locs)
science = frames.science.copy()
science.flags.writeable = False     # read-only inputs must not add a signature
for method in sw.METHODS:
    sw.fit_sky(frames.science, model, [frames.trace_rows], method=method, read_noise=frames.read_noise)
    sw.fit_sky(science, model, [frames.trace_rows], method=method, read_noise=frames.read_noise)
sw.fit_sky(frames.science, model, [frames.trace_rows])  # every default choice
sw.fit_sky(frames.science, model, [frames.trace_rows], spatial_order=2)
counts = {f"{mod.__name__}.{name}": len(obj.signatures)
          for mod in (bspline_sky, median_sky, sky_quality) for name, obj in vars(mod).items()
          if isinstance(obj, CPUDispatcher) and obj.signatures}
print(json.dumps(counts))
"""


def test_each_kernel_compiles_one_signature_and_warm_up_covers_the_fits():
    """warm_up() compiles exactly what the demo's fits use: the fits add no signature."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert "specwidgets.core.sky.median._median_blocks" in counts
    assert "specwidgets.core.sky.bspline._normal_pass_constant" in counts
    assert "specwidgets.core.sky.bspline._normal_pass_3" in counts
    assert "specwidgets.core.sky.quality._row_profile_kernel" in counts
    assert {name: n for name, n in counts.items() if n != 1} == {}


def test_state_warms_the_other_method_in_the_background():
    from specwidgets.core import _warmup
    from specwidgets.interactive.state import SkyState
    from specwidgets.io.synthetic import make_synthetic_longslit

    frames = make_synthetic_longslit(shape=(40, 300), n_exposures=1, n_arc_lines=8, seed=3)
    SkyState(frames.science, frames.arc, mask_region=[frames.trace_rows], method="bspline")
    assert "median" in _warmup._started
    thread = _warmup.start_warm_up(["median"])  # already started: not twice
    assert thread is None


def test_the_median_kernels_binary_search_is_numpys_searchsorted():
    """_first_not_below replaces np.searchsorted (slow to compile) in the median kernel: same index, NaN and inf too."""
    import numpy as np

    from specwidgets.core.sky.median import _first_not_below

    rng = np.random.default_rng(0)
    for trial in range(300):
        a = np.sort(rng.integers(-5, 5, rng.integers(0, 30)).astype(float))
        if trial % 3 == 0 and a.size:
            a[rng.integers(0, a.size):] = np.nan  # NaN sorts last
        for v in (*rng.integers(-6, 6, 4).astype(float), 0.5, np.nan, np.inf, -np.inf):
            assert _first_not_below(a, v) == np.searchsorted(a, v), (a, v)


def test_warm_up_process_fills_a_cold_cache(tmp_path):
    """On an empty kernel cache the median's kernels compile in another process, into the same cache; then none."""
    code = (
        "from specwidgets.core._warmup import kernels_cached, start_warm_up_process\n"
        "assert not kernels_cached('median')\n"
        "helper = start_warm_up_process(('median',))\n"
        "assert helper is not None and helper.wait(timeout=300) == 0\n"
        "assert kernels_cached('median')\n"
        "assert start_warm_up_process(('median',)) is None\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["SPECWIDGETS_CACHE_DIR"] = str(tmp_path / "cache")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
