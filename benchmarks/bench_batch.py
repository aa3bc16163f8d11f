"""Batch runner at scale: 200 synthetic 100 x 2048 exposures through ``run_batch``.

Measures

* wall time of 200 exposures with 1 and with 2 local worker processes
  (``run_batch`` from call to return: calibrations, warp fit, cluster start,
  every exposure read, fit and written, cluster stop), and the fixed cost
  (the same for 1 exposure: calibrations, warp fit, cluster start and stop);
* the driver's peak memory (its own high-water mark, ``VmHWM``; the
  workers are separate processes) at 50 and at 200 exposures: it should
  stay flat, since the driver sends paths and gets back small records.

Every run is a fresh ``python bench_batch.py --run ...`` subprocess so each
peak is its own. The exposures are written once as float32 FITS files in a
temporary folder (one noiseless sky + trace, Poisson and read noise per
file); each run writes its outputs to a fresh folder, deleted afterwards.

    python benchmarks/bench_batch.py [--n 200] [--small 50] [--repeat 3] [--keep DIR]

Wall times are the fastest of ``--repeat`` runs (the machine may be shared);
the peak memory is the largest.

Needs ``dask[distributed]`` and ``tqdm`` (the ``batch`` extra), in the
Python that has specwidgets installed (not the specsuite bench venv).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (100, 2048)


def make_data(folder, n, seed=7):
    """``n`` science exposures and one arc as float32 FITS files; returns (science paths, arc path, mask)."""
    from astropy.io import fits

    from specwidgets.io.synthetic import make_synthetic_longslit

    folder.mkdir(parents=True, exist_ok=True)
    frames = make_synthetic_longslit(shape=SHAPE, n_exposures=1, tilt=3.0, seed=seed)
    expected = frames.sky[0] + frames.trace
    rng = np.random.default_rng(seed)
    arc = folder / "arc.fits"
    fits.PrimaryHDU(frames.arc.astype(np.float32)).writeto(arc, overwrite=True)
    paths = []
    for i in range(n):
        path = folder / f"exp_{i:04d}.fits"
        if not path.exists():
            image = rng.poisson(expected).astype(np.float32) + rng.normal(0, frames.read_noise, SHAPE).astype(np.float32)
            fits.PrimaryHDU(image).writeto(path)
        paths.append(path)
    return paths, arc, frames.trace_rows


def run_once(args):
    """One measured run (in its own process): print a JSON record."""
    from _rss import maxrss_mb

    from specwidgets.batch import run_batch

    data = Path(args.data)
    science = sorted(data.glob("exp_*.fits"))[: args.n]
    mask = tuple(json.loads(args.mask))
    rss_before = maxrss_mb()
    t0 = time.perf_counter()
    summary = run_batch(
        science, [data / "arc.fits"], masks=[mask], out_dir=args.out, workers=args.workers,
        read_noise=4.0, progress=False,
    )
    wall = time.perf_counter() - t0
    me = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "n": len(science), "workers": args.workers, "wall": wall, "done": len(summary.done),
        "failed": len(summary.failed), "rss_before_mib": rss_before, "peak_rss_mib": maxrss_mb(),
        # The workers report their own CPU time (forked by a fork server, they are not our children).
        "driver_cpu": me.ru_utime + me.ru_stime, "workers_cpu": getattr(summary, "timings", {}).get("worker_cpu", float("nan")),
        "timings": getattr(summary, "timings", {}),  # older specwidgets: none
    }))
    return 0 if summary.ok else 1


def measured(script, data, mask, n, workers, scratch):
    out = scratch / f"out_{n}_{workers}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, script, "--run", "--data", str(data), "--n", str(n), "--workers", str(workers),
           "--mask", json.dumps(list(mask)), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        sys.exit(f"run failed ({' '.join(cmd)}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="exposures in the large runs (default 200)")
    parser.add_argument("--small", type=int, default=50, help="exposures in the small memory run (default 50)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each case; the fastest is reported (default 3)")
    parser.add_argument("--keep", default=None, help="keep the generated exposures in this folder")
    # Internal: one measured run.
    parser.add_argument("--run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--mask", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        return run_once(args)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import machine_line, table

    import specwidgets

    scratch = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    data = Path(args.keep) if args.keep else scratch / "raw"
    try:
        t0 = time.perf_counter()
        _, _, mask = make_data(data, args.n)
        print(f"specwidgets {specwidgets.__version__}; {machine_line()}")
        print(f"{args.n} exposures of {SHAPE[0]} x {SHAPE[1]} written in {time.perf_counter() - t0:.1f} s to {data}")
        script = str(Path(__file__).resolve())
        plan = [(1, 1), (1, 2), (args.n, 1), (args.n, 2), (args.small, 1), (args.small, 2)]
        results = []
        for n, workers in plan:
            runs = [measured(script, data, mask, n, workers, scratch) for _ in range(max(1, args.repeat))]
            rec = dict(min(runs, key=lambda r: r["wall"]))
            rec["walls"] = [r["wall"] for r in runs]
            rec["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
            results.append(rec)
            walls = ", ".join(f"{w:.1f}" for w in rec["walls"])
            print(f"  {n:>4} exposures, {workers} worker(s): wall {walls} s; driver peak {rec['peak_rss_mib']:.0f} MiB",
                  flush=True)
        fixed = {rec["workers"]: rec["wall"] for rec in results if rec["n"] == 1}
        rows = []
        for rec in results:
            per = (rec["wall"] - fixed[rec["workers"]]) / (rec["n"] - 1) if rec["n"] > 1 else float("nan")
            rows.append([
                str(rec["n"]), str(rec["workers"]), f"{rec['wall']:.1f}",
                "-" if np.isnan(per) else f"{1e3 * per:.0f}",
                f"{rec['rss_before_mib']:.0f}", f"{rec['peak_rss_mib']:.0f}",
            ])
        print()
        print(f"fastest of {max(1, args.repeat)} run(s) per case; {machine_line()}")
        print(table(rows, ["exposures", "workers", "wall s", "ms/exposure beyond fixed", "driver RSS after imports MiB",
                           "driver peak RSS MiB"]))
        if not all(rec["timings"] for rec in results):
            print("\n(this specwidgets records no BatchSummary.timings: no breakdown)")
            walls = {(r["n"], r["workers"]): r["wall"] for r in results}
            if (args.n, 1) in walls and (args.n, 2) in walls:
                print(f"{args.n} exposures, 1 vs 2 workers: whole run {walls[(args.n, 1)]:.1f} s vs "
                      f"{walls[(args.n, 2)]:.1f} s = {walls[(args.n, 1)] / walls[(args.n, 2)]:.2f}x; {machine_line()}")
            return 0
        print()
        print("where the time goes (the same fastest runs; seconds unless said):")
        rows = []
        for rec in results:
            t = rec["timings"]
            n = rec["n"]
            steady = (t["tasks"] - t["first_result"]) / (n - 1) if n > 1 else float("nan")
            rows.append([
                str(n), str(rec["workers"]), f"{rec['wall']:.1f}",
                f"{t['calibrations']:.2f}", f"{t['cluster_start']:.2f}", f"{t['first_result']:.2f}",
                f"{t['tasks']:.2f}", f"{t['cluster_stop']:.2f}",
                "-" if n == 1 else f"{1e3 * steady:.0f}",
                f"{1e3 * t['task_wall'] / n:.0f}", f"{1e3 * t['task_cpu'] / n:.0f}",
                f"{rec['driver_cpu']:.1f}", f"{rec['workers_cpu']:.1f}",
            ])
        print(table(rows, ["exp", "workers", "wall", "calibrations", "cluster start", "first result", "tasks",
                           "cluster stop", "steady ms/exp", "task wall ms", "task CPU ms", "driver CPU",
                           "workers CPU"]))
        walls = {(r["n"], r["workers"]): r for r in results}
        one, two = walls.get((args.n, 1)), walls.get((args.n, 2))
        if one and two:
            ratio = one["wall"] / two["wall"]
            t1, t2 = one["timings"], two["timings"]
            s1 = (t1["tasks"] - t1["first_result"]) / (args.n - 1)
            s2 = (t2["tasks"] - t2["first_result"]) / (args.n - 1)
            print(f"\n{args.n} exposures, 1 vs 2 workers: whole run {one['wall']:.1f} s vs {two['wall']:.1f} s = "
                  f"{ratio:.2f}x (goal >= 1.7x: {'met' if ratio >= 1.7 else 'MISSED'}); steady state "
                  f"{1e3 * s1:.0f} vs {1e3 * s2:.0f} ms/exposure = {s1 / s2:.2f}x; start-up (calibrations + cluster "
                  f"start + first result) {t1['calibrations'] + t1['cluster_start'] + t1['first_result']:.1f} s vs "
                  f"{t2['calibrations'] + t2['cluster_start'] + t2['first_result']:.1f} s; {machine_line()}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
