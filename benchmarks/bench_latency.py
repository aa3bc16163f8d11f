"""Kernel-side latency and payload of a mask-slider change in the Dashboard.

The Dashboard is built without a browser and driven as the front end
drives it: ``dashboard.viewer.mask_slider.value = (a, b)`` is what arrives
when the user lets go of the "Mask rows" slider. Without a running event
loop the widgets apply the change synchronously, so the call returns when
every view has been updated. Two times are taken per change:

* **background**: until the new background is in ``dashboard.background``
  (an observer registered on the state before the widgets' own);
* **all views**: until the call returns (image re-rendered, sky spectrum
  re-aggregated, mask bands and status redrawn).

The CPU time of the whole change (all threads; on a loaded machine the
steadier number) is printed beside them.

Also the bytes sent to the browser per change (``PayloadMeter``: widget
updates, custom messages and newly opened widgets, JSON plus buffers).

Cases (goals from the widget issue):

* ``crop``: the two Goodman exposures, rows 680-800 (2 x 120 x 2030), mask
  around (20, 100): median <= 100 ms;
* ``full``: one full Goodman frame (947 x 2030), mask around (700, 790):
  median <= 300 ms;

each with ``method="bspline"`` (default) and ``"median"``, and every update
<= 1 MiB. The image viewer shows the corrected frame, so each change also
re-renders the picture (the science view would skip that).

Run::

    python benchmarks/bench_latency.py [--only crop|full] [--changes 20] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import heading, machine_line, source_line, table  # noqa: E402

MIB = 2**20
GOALS_MS = {"crop": 100.0, "full": 300.0}


def mask_sequence(mask, n, n_rows):
    """``n`` slider positions around ``mask``: each differs from the last."""
    a, b = mask
    out = []
    for i in range(n):
        lo = a - 4 + (i * 3) % 9
        hi = b - 3 + (i * 5) % 8
        out.append((max(0, lo), min(n_rows, hi)))
    for i in range(1, n):
        if out[i] == out[i - 1]:
            out[i] = (out[i][0], out[i][1] - 1)
    return out


def measure(science, arc, mask, method, read_noise, n_changes, view):
    from specwidgets.interactive import Dashboard
    from specwidgets.interactive.state import SkyState
    from specwidgets.testing import PayloadMeter

    t0 = time.perf_counter()
    state = SkyState(science, arc, mask_region=[mask], read_noise=read_noise, method=method)
    stamps = []
    # Registered before the widgets' observers: fires when the background is set.
    state.observe(lambda change: stamps.append(time.perf_counter()), names="result")
    dash = Dashboard(state=state)
    dash.viewer.view = view
    build = time.perf_counter() - t0

    positions = mask_sequence(mask, n_changes + 2, state.shape[0])
    to_background, to_views, sizes, cpu = [], [], [], []
    for i, value in enumerate(positions):
        stamps.clear()
        with PayloadMeter() as meter:
            start, cpu_start = time.perf_counter(), time.process_time()
            dash.viewer.mask_slider.value = value
            end, cpu_end = time.perf_counter(), time.process_time()
        if dash.error or dash.mask_region != [value] or not stamps:
            raise RuntimeError(f"mask {value} was not applied: {dash.error or dash.status.widget_error}")
        if i < 2:  # warm-up: first passes load cached numba code
            continue
        to_background.append(stamps[0] - start)
        to_views.append(end - start)
        cpu.append(cpu_end - cpu_start)
        sizes.append(meter.total_bytes)
    return {
        "build": build,
        "background": to_background,
        "views": to_views,
        "cpu": cpu,
        "bytes": sizes,
        "by_widget": meter.by_widget(),
    }


def ms(values, q=None):
    if q is None:
        return 1000 * statistics.median(values)
    return 1000 * sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["crop", "full"])
    parser.add_argument("--changes", type=int, default=20, help="timed slider changes per case (default 20)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per case; the best median is kept")
    parser.add_argument("--method", choices=["bspline", "median"], help="only this sky method")
    parser.add_argument("--view", default="corrected", choices=["science", "background", "corrected", "chi"])
    args = parser.parse_args(argv)

    heading("specwidgets: mask-slider latency and payload (kernel side, no browser)")
    print(machine_line())
    print(source_line())

    from specwidgets.io.sample_data import goodman_available, load_goodman

    if not goodman_available():
        print("\nThe Goodman sample is not available (SPECWIDGETS_DATA_DIR or ../shared/data): nothing to measure.")
        return 0

    cases = []
    if args.only in (None, "crop"):
        sample = load_goodman(crop_bds=(680, 800))
        cases.append(("crop", "2 x 120 x 2030", sample.science, sample.arc, (20, 100), sample.read_noise))
    if args.only in (None, "full"):
        sample = load_goodman(crop_bds=(0, None))
        cases.append(("full", "1 x 947 x 2030", sample.science[:1], sample.arc, (700, 790), sample.read_noise))
    methods = [args.method] if args.method else ["bspline", "median"]

    rows = []
    details = []
    for name, shape, science, arc, mask, read_noise in cases:
        for method in methods:
            best = None
            for _ in range(max(1, args.repeat)):
                run = measure(science, arc, mask, method, read_noise, args.changes, args.view)
                if best is None or statistics.median(run["views"]) < statistics.median(best["views"]):
                    best = run
            goal = GOALS_MS[name]
            med_bg, med_all = ms(best["background"]), ms(best["views"])
            worst = max(best["bytes"])
            rows.append([
                name, shape, method,
                f"{med_bg:.0f}", f"{med_all:.0f}", f"{ms(best['views'], 0.9):.0f}", f"{ms(best['cpu']):.0f}",
                f"<= {goal:.0f}", "yes" if med_bg <= goal else "NO", "yes" if med_all <= goal else "NO",
                f"{statistics.median(best['bytes']) / 1024:.0f}", f"{worst / 1024:.0f}",
                "yes" if worst <= MIB else "NO",
            ])
            details.append((name, method, best))

    heading(f"Median over {args.changes} slider changes (best of {args.repeat} runs); viewer shows '{args.view}'", "-")
    print(table(rows, [
        "case", "frames", "method", "to background [ms]", "all views [ms]", "p90 all [ms]", "CPU all views [ms]", "goal",
        "met (bg)", "met (all)", "KiB/update (median)", "KiB max", "<= 1 MiB",
    ]))
    heading("Where the bytes of the last update went", "-")
    for name, method, best in details:
        parts = ", ".join(f"{k} {v / 1024:.1f} KiB" for k, v in list(best["by_widget"].items())[:5])
        print(f"{name:5s} {method:8s} build {best['build']:.2f} s; {parts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
