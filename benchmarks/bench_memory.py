"""Peak memory of specwidgets' sky estimators on the full Goodman frames (2 x 947 x 2030).

Each case runs in a FRESH subprocess so peaks do not mix:

* ``load``: load the two science frames, bias and arc at full frame
  (``load_goodman(crop_bds=(0, None))``) and fit the warp model
  (``find_cal_lines`` + ``generate_warp_model`` on the full arc); no sky
  fit. This is the floor the other cases start from.
* ``bspline`` / ``median``: the same, then ``extract_background(science,
  model, mask_region=(700, 780), method=...)`` (the trace: rows 20-100 of the
  680-800 crop).

Printed per case: the resident size after the imports and after numba's kernels are loaded (a sky fit
on a tiny frame), the peak resident set size of the whole process
(``VmHWM``: its own high-water mark, see ``_rss.maxrss_mb``) after loading the frames,
after fitting the warp model and at the end, the resident size just before the extraction (VmRSS), and the
tracemalloc peak during the extraction (Python and numpy allocations only;
memory that numba-compiled code allocates itself is not traced, the RSS
figures include it). Goal: peak RSS <= 300 MB (issue 13).

    python benchmarks/bench_memory.py [--specsuite]

``--specsuite`` adds a specsuite ``extract_background`` case (needs the
bench venv's Python; slow: one to two minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _rss import maxrss_mb, vmrss_mb  # noqa: E402

GOAL_MB = 300.0  # issue 13 (was 1 GB)
MASK = (700, 780)



def child(case):
    import tracemalloc
    import warnings

    import numpy as np

    import specwidgets as sw
    from specwidgets.io.sample_data import load_goodman

    start = maxrss_mb()
    kernels = start
    if case in ("bspline", "median"):
        # Load numba's compiled kernels first on a tiny frame, so that what
        # they cost (their code, resident) is apart from the data's share.
        from specwidgets.core.warp import WarpModel
        from specwidgets.io.synthetic import make_synthetic_longslit

        tiny = make_synthetic_longslit(shape=(40, 200), n_exposures=2, tilt=1.0, trace_row=10, seed=3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sw.extract_background(tiny.science, WarpModel.from_tilt((40, 200), 1.0), mask_region=(4, 16),
                                  method=case, read_noise=4.0)
        kernels = maxrss_mb()
    g = load_goodman(crop_bds=(0, None))
    out = dict(case=case, shape=list(g.science.shape), rss_at_start=start, rss_kernels=kernels,
               peak_rss_data=maxrss_mb())
    if case == "specsuite":
        from _common import import_specsuite_warping

        ss = import_specsuite_warping()
        if ss is None:
            print(json.dumps(dict(case=case, error="specsuite is not importable from this Python")))
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = ss.generate_warp_model(g.arc, ss.find_cal_lines(g.arc)[0])
        run = lambda: ss.extract_background(g.science, model, mask_region=MASK)  # noqa: E731
    else:
        locs, _ = sw.find_cal_lines(g.arc)
        model = sw.generate_warp_model(g.arc, locs)
        run = lambda: sw.extract_background(  # noqa: E731
            g.science, model, mask_region=MASK, method=case, read_noise=g.read_noise
        )
    out["peak_rss_after_warp"] = maxrss_mb()
    out["rss_before_extraction"] = vmrss_mb()
    if case != "load":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tracemalloc.start()
            t0 = time.perf_counter()
            bg = run()
            out["seconds_with_tracemalloc"] = time.perf_counter() - t0
            out["tracemalloc_peak"] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
        out["background_finite"] = bool(np.isfinite(bg).all())
        out["background_mb"] = bg.nbytes / 2**20
    out["peak_rss_end"] = maxrss_mb()
    print(json.dumps(out))


def parent(args):
    from _common import heading, machine_line, source_line, table

    heading("bench_memory: peak memory on the full Goodman frames, one fresh process per case")
    print(machine_line())
    print(source_line())
    from specwidgets.io.sample_data import goodman_available

    if not goodman_available():
        print("skipped: the Goodman sample is not on this machine (set SPECWIDGETS_DATA_DIR).")
        return 0
    cases = ["load", "bspline", "median"] + (["specsuite"] if args.specsuite else [])
    rows, floors = [], []
    here = os.path.dirname(os.path.abspath(__file__))
    for case in cases:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", case],
                              capture_output=True, text=True, cwd=os.getcwd(),
                              env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                                  [here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])))
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not line:
            print(f"case {case} FAILED (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}")
            continue
        r = json.loads(line[-1])
        if "error" in r:
            print(f"case {case}: {r['error']}")
            continue
        if "background_mb" in r and case != "specsuite":
            floors.append(r)
        goal = "" if case in ("load", "specsuite") else (
            f"<= {GOAL_MB:.0f} MB: {'met' if r['peak_rss_end'] <= GOAL_MB else 'MISSED'}")
        rows.append([
            case if case in ("load", "specsuite") else f"specwidgets {case}",
            "x".join(map(str, r["shape"])),
            f"{r['rss_at_start']:.0f}",
            f"{r.get('rss_kernels', r['rss_at_start']):.0f}",
            f"{r['peak_rss_data']:.0f}",
            f"{r['peak_rss_after_warp']:.0f}",
            f"{r['rss_before_extraction']:.0f}",
            f"{r['tracemalloc_peak']:.0f}" if "tracemalloc_peak" in r else "",
            f"{r['peak_rss_end']:.0f}",
            f"{r['seconds_with_tracemalloc']:.2f}" if "seconds_with_tracemalloc" in r else "",
            goal,
        ])
    print(f"mask_region={MASK} (full-frame rows of the trace); sizes in MB (2^20 bytes).")
    print(table(rows, ["case", "images", "imports", "+ numba kernels", "peak RSS: data loaded", "+ warp fit",
                       "RSS before extract", "tracemalloc peak (extract)", "peak RSS (VmHWM, end)",
                       "extract s (tracemalloc on)", "goal"],
                ["<", "<", ">", ">", ">", ">", ">", ">", ">", ">", "<"]))
    print("'imports': the process after importing numpy, astropy and specwidgets; '+ numba kernels': after one "
          "sky fit on a tiny frame (numba's compiled kernels loaded from its cache); then "
          "'peak RSS' columns are the whole process's high-water mark (VmHWM) after loading the frames, "
          "after fitting the warp model (each tool its own), and at the end; the tracemalloc peak covers only "
          "the extraction call's Python/numpy allocations.")
    for r in floors:
        # What no sky fit in this process can go below: what it holds before the
        # call (imports, numba's kernels, the frames) and the background it returns.
        print(f"floor of the {r['case']} case: {r['rss_before_extraction']:.0f} MB held before the extraction "
              f"+ {r['background_mb']:.0f} MB of returned background = "
              f"{r['rss_before_extraction'] + r['background_mb']:.0f} MB before any working memory "
              f"(peak {r['peak_rss_end']:.0f} MB: {r['peak_rss_end'] - r['rss_before_extraction'] - r['background_mb']:.0f}"
              f" MB of work)")
    if args.specsuite:
        print("specsuite: the warp model is its own (find_cal_lines + generate_warp_model); memory of any "
              "worker processes it starts is not in this process's peak.")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", choices=["load", "bspline", "median", "specsuite"], help=argparse.SUPPRESS)
    p.add_argument("--specsuite", action="store_true", help="also measure specsuite's extract_background")
    args = p.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
