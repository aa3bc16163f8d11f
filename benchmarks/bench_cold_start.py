"""Cold versus warm ``specwidgets demo``: the first-use stall of issue 9.

A cold run starts with an empty compiled-kernel cache (``SPECWIDGETS_CACHE_DIR``
pointing at a new folder), so numba compiles every kernel the demo uses; the
warm runs that follow read them from that cache. Each figure is the child
process's wall time and its CPU time (user + system, from ``os.wait4``), so
another job on the machine inflates the wall column but hardly the CPU one.

Goal (issue 9): cold <= 2 x warm + 3 s.

Usage::

    PYTHONPATH=. python3 benchmarks/bench_cold_start.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def run_demo(cache_dir):
    """Wall and CPU seconds of one ``specwidgets demo`` with ``cache_dir`` as the kernel cache."""
    env = dict(os.environ, SPECWIDGETS_CACHE_DIR=cache_dir)
    t0 = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "specwidgets.cli", "demo"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"specwidgets demo failed:\n{process.stderr.read().decode()[-2000:]}")
    process.stderr.close()
    return wall, usage.ru_utime + usage.ru_stime


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="cold/warm pairs (default 3)")
    args = parser.parse_args(argv)
    rows = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="sw-cold-") as cache:
            cold = run_demo(cache)
            warm = min((run_demo(cache) for _ in range(2)), key=lambda t: t[1])
        rows.append((cold, warm))
        print(f"cold {cold[0]:5.2f} s wall {cold[1]:5.2f} s CPU | warm {warm[0]:5.2f} s wall {warm[1]:5.2f} s CPU")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (2 cores)")
    for i, name in ((0, "wall"), (1, "CPU")):
        cold = statistics.median(r[0][i] for r in rows)
        warm = statistics.median(r[1][i] for r in rows)
        limit = 2 * warm + 3
        verdict = "met" if cold <= limit else "MISSED"
        print(f"median {name:>4}: cold {cold:.2f} s, warm {warm:.2f} s, cold/warm {cold / warm:.1f}x, "
              f"goal cold <= 2 x warm + 3 s = {limit:.2f} s: {verdict}")


if __name__ == "__main__":
    main()
