"""Speed of the sky estimators: specsuite 1.2.1 against specwidgets, same inputs, one process.

Data set A: synthetic, 5 exposures of 100 x 2048 (lines tilted 3 px over the slit).
Data set B: the two SOAR/Goodman exposures, rows 680-800 (120 x 2030), trace rows 20-100.

Each tool fits its own warp model on the same arc (find_cal_lines +
generate_warp_model, defaults), then ``extract_background`` is timed:
specsuite's (the seed's median of bins), specwidgets' ``method="median"``
and ``method="bspline"``. One warm-up call per estimator is excluded from the
medians (its time is printed as "first call").

specwidgets caches the effective-pixel map and its sort order on the
WarpModel object, so two timings are shown for it: "fresh warp" (a new
WarpModel from the same coefficients for every call: the cost of a single
call from scratch, comparable to specsuite's call) and "cached warp" (the
same object reused, as when re-extracting with the same model). The goals
are checked against the fresh-warp medians.

Run with the bench venv's Python (see benchmarks/README.md):

    benchmarks/.venv-bench/bin/python benchmarks/bench_sky.py [--quick] [--only A|B]
"""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np
from _common import (
    SETUP_HINT,
    fmt_times,
    heading,
    import_specsuite_warping,
    machine_line,
    median,
    repeat_times,
    source_line,
    specsuite_version,
    specwidgets_version,
    table,
    timed,
)

import specwidgets as sw
from specwidgets.core.warp import WarpModel
from specwidgets.io.synthetic import make_synthetic_longslit

GOALS = {"median": 100.0, "bspline": 20.0}


def load_sets(args):
    sets = []
    if args.only in (None, "A"):
        frames = make_synthetic_longslit(shape=(100, 2048), n_exposures=5, tilt=3.0, seed=args.seed)
        sets.append(
            dict(
                name="A",
                label=f"A: synthetic 5 x 100 x 2048, tilt 3 px, seed {args.seed}",
                images=frames.science,
                arc=frames.arc,
                mask=tuple(int(v) for v in frames.trace_rows),
                read_noise=frames.read_noise,
                truth=frames.sky,
            )
        )
    if args.only in (None, "B"):
        from specwidgets.io.sample_data import goodman_available, load_goodman

        if not goodman_available():
            print("Data set B skipped: the Goodman sample is not on this machine "
                  "(set SPECWIDGETS_DATA_DIR or see specwidgets.io.sample_data).")
        else:
            g = load_goodman(crop_bds=(680, 800))
            sets.append(
                dict(
                    name="B",
                    label=f"B: Goodman 2 x {g.science.shape[1]} x {g.science.shape[2]} (rows 680-800), e-",
                    images=g.science,
                    arc=g.arc,
                    mask=(20, 100),
                    read_noise=g.read_noise,
                    truth=None,
                )
            )
    return sets


def fresh(model):
    """A WarpModel with the same coefficients and an empty cache."""
    return WarpModel.from_dict(model.to_dict())


def agreement(ds, bg_ss, bg_med, bg_bs):
    """How closely specsuite's median background matches specwidgets' (sigma units)."""
    rn = ds["read_noise"]
    lo, hi = ds["mask"]
    rows = np.ones(ds["images"].shape[1], bool)
    rows[lo:hi] = False
    sigma = np.sqrt(np.clip(bg_bs, 0, None) + rn**2)
    # Pixels where the sky is locally flat (no line within a pixel or two):
    # there a difference between the two warp models cannot matter.
    slope = np.abs(np.gradient(bg_bs, axis=-1)) / sigma
    flat = np.zeros_like(slope, bool)
    flat[..., 2:-2] = (
        (slope[..., 2:-2] < 0.1) & (slope[..., 1:-3] < 0.1) & (slope[..., 3:-1] < 0.1)
        & (slope[..., :-4] < 0.1) & (slope[..., 4:] < 0.1)
    )
    sky = np.broadcast_to(rows[None, :, None], bg_ss.shape)
    out = []
    pairs = [("specsuite - specwidgets median", bg_ss - bg_med)]
    if ds["truth"] is not None:
        pairs += [
            ("specsuite - true sky", bg_ss - ds["truth"]),
            ("specwidgets median - true sky", bg_med - ds["truth"]),
            ("specwidgets bspline - true sky", bg_bs - ds["truth"]),
        ]
    for name, diff in pairs:
        z = np.abs(diff) / sigma
        out.append(
            [
                name,
                f"{np.median(z[sky]):.3f}",
                f"{np.percentile(z[sky], 95):.3f}",
                f"{np.median(z[sky & flat]):.3f}",
                f"{np.percentile(z[sky & flat], 95):.3f}",
            ]
        )
    n_flat = int((sky & flat).sum())
    return out, n_flat, int(sky.sum())


def straight_line_check(ss, seed):
    """With straight lines both medians should reduce to the plain median of each column."""
    frames = make_synthetic_longslit(shape=(100, 2048), n_exposures=1, tilt=0.0, seed=seed)
    lo, hi = (int(v) for v in frames.trace_rows)
    keep = np.r_[0:lo, hi:frames.science.shape[1]]
    plain = np.median(frames.science[:, keep, :], axis=1)[:, None, :]
    sigma = np.sqrt(frames.sky + frames.read_noise**2)
    rows = []
    bg = sw.extract_background(frames.science, WarpModel.identity(frames.arc.shape), mask_region=(lo, hi),
                               method="median")
    rows.append(["specwidgets median, identity warp", bg])
    locs, _ = sw.find_cal_lines(frames.arc)
    bg = sw.extract_background(frames.science, sw.generate_warp_model(frames.arc, locs), mask_region=(lo, hi),
                               method="median")
    rows.append(["specwidgets median, its fitted warp", bg])
    if ss is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = ss.generate_warp_model(frames.arc, ss.find_cal_lines(frames.arc)[0])
            bg = ss.extract_background(frames.science, model, mask_region=(lo, hi))
        rows.append(["specsuite, its fitted warp", bg])
    out = []
    for name, bg in rows:
        z = np.abs(bg - plain) / sigma
        out.append([name, f"{z.max():.3g}", f"{np.median(z):.3g}", f"{(z > 1e-9).mean():.1%}"])
    heading("Same estimator? Straight lines (tilt 0), 1 x 100 x 2048: |background - per-column median of "
            "the unmasked rows| / sigma", "-")
    print("With vertical lines each pixel's bin holds exactly that column's unmasked pixels, so the seed's "
          "median of bins is numpy.median over those rows.")
    print(table(out, ["background", "max", "median", "pixels differing"]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats (4 specwidgets, 1 specsuite after warm-up)")
    p.add_argument("--only", choices=["A", "B"], help="run one data set")
    p.add_argument("--seed", type=int, default=1, help="seed of data set A (default 1)")
    p.add_argument("--repeats", type=int, help="timed specwidgets calls per variant (default 8, quick 4)")
    p.add_argument("--ss-repeats", type=int, help="timed specsuite calls after its warm-up (default 2, quick 1)")
    args = p.parse_args(argv)
    n_sw = max(2, args.repeats or (4 if args.quick else 8))
    n_ss = args.ss_repeats or (1 if args.quick else 2)

    heading("bench_sky: sky-estimator speed, specsuite vs specwidgets")
    print(machine_line())
    print(source_line())
    ss = import_specsuite_warping()
    print(f"specwidgets {specwidgets_version()}; specsuite "
          + (specsuite_version() if ss else "NOT AVAILABLE"))
    if ss is None:
        print(SETUP_HINT.format(exe=sys.executable))
        print("Timing specwidgets only.")
    print(f"Timed calls: specwidgets {n_sw} per variant (half before specsuite's calls, half after), "
          f"specsuite {n_ss}; one warm-up call per estimator is EXCLUDED from the medians (its time is the "
          "'first call' column).")
    print("numba compiles with cache=True, so the first specwidgets call loads compiled code from the "
          "on-disk cache (or compiles it once if the cache is cold).")

    rows_out = []
    agreement_blocks = []
    for ds in load_sets(args):
        heading(ds["label"], "-")
        images, arc, mask, rn = ds["images"], ds["arc"], ds["mask"], ds["read_noise"]
        print(f"images {images.shape}, mask_region={mask}, read_noise={rn:g} e-")

        # --- warp models: each tool fits its own on the same arc
        t_sw_fit, (locs_sw, _) = timed(sw.find_cal_lines, arc)
        t, model = timed(sw.generate_warp_model, arc, locs_sw)
        t_sw_fit += t
        print(f"specwidgets warp: {len(locs_sw)} lines found, fit in {t_sw_fit:.3f} s"
              + (f"; warnings: {model.quality_warnings}" if model.quality_warnings else ""))
        if ss is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t_ss_fit, (locs_ss, _) = timed(ss.find_cal_lines, arc)
                t, ss_model = timed(ss.generate_warp_model, arc, locs_ss)
            t_ss_fit += t
            print(f"specsuite   warp: {len(locs_ss)} lines found, fit in {t_ss_fit:.3f} s")

        # --- specwidgets: half the timed calls before specsuite's, half after,
        # so that a change of machine load hits both tools alike.
        results = {m: dict(fresh=[], cached=[]) for m in ("median", "bspline")}

        def sw_round(n):
            for method in ("median", "bspline"):
                kw = dict(mask_region=mask, method=method)
                if method == "bspline":
                    kw["read_noise"] = rn
                r = results[method]
                if "first" not in r:
                    r["first"], r["bg"] = timed(sw.extract_background, images, fresh(model), **kw)
                it = iter([fresh(model) for _ in range(n)])
                r["fresh"] += repeat_times(lambda: sw.extract_background(images, next(it), **kw), n)
                cached = fresh(model)
                sw.extract_background(images, cached, **kw)  # fills the cache (not timed)
                r["cached"] += repeat_times(lambda: sw.extract_background(images, cached, **kw), n)

        sw_round((n_sw + 1) // 2)

        # --- specsuite
        ss_med = None
        if ss is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t_first_ss, bg_ss = timed(ss.extract_background, images, ss_model, mask_region=mask)
                t_ss = repeat_times(lambda: ss.extract_background(images, ss_model, mask_region=mask), n_ss)
            ss_med = median(t_ss)
            ss_min = min(t_ss)
            print(f"specsuite extract_background: first call {t_first_ss:.2f} s; timed [{fmt_times(t_ss)}] s")
            rows_out.append([ds["name"], "specsuite extract_background (median of bins)",
                             f"{t_first_ss:.2f}", f"{ss_med:.3f} ({n_ss})", f"{ss_min:.3f}", "1.0", "1.0", ""])

        sw_round(n_sw // 2)
        for method in ("median", "bspline"):
            r = results[method]
            print(f"specwidgets {method:7s}: first call {r['first']:.3f} s; fresh warp [{fmt_times(r['fresh'])}] s; "
                  f"cached warp [{fmt_times(r['cached'])}] s")
        if ss is not None:
            block = agreement(ds, bg_ss, results["median"]["bg"], results["bspline"]["bg"])
            agreement_blocks.append((ds, block))

        for method in ("median", "bspline"):
            r = results[method]
            for variant in ("fresh", "cached"):
                m = median(r[variant])
                ratio = f"{ss_med / m:.0f}x" if ss_med else "n/a"
                best = f"{ss_min / min(r[variant]):.0f}x" if ss_med else "n/a"
                goal = ""
                if variant == "fresh":
                    target = GOALS[method]
                    if ss_med:
                        goal = f">= {target:.0f}x: {'met' if ss_med / m >= target else 'MISSED'}"
                    else:
                        goal = f">= {target:.0f}x"
                first = f"{r['first']:.3f}" if variant == "fresh" else ""
                rows_out.append([ds["name"], f"specwidgets {method}, {variant} warp", first,
                                 f"{m:.4f} ({len(r[variant])})", f"{min(r[variant]):.4f}", ratio, best, goal])

    heading("Speed (seconds per extract_background call on the whole stack; warm-up excluded)")
    print(table(rows_out, ["set", "tool / method", "first call", "median s (runs)", "min s", "specsuite / this",
                           "ratio of mins", "goal (on medians)"],
                ["<", "<", ">", ">", ">", ">", ">", "<"]))
    print("'fresh warp': a new WarpModel per call (effective-pixel map and its sort computed inside the "
          "call); 'cached warp': the same WarpModel reused. 'specsuite / this' divides the medians; "
          "'ratio of mins' the fastest calls of each (less sensitive to other load on the machine).")

    for ds, (rows, n_flat, n_sky) in agreement_blocks:
        heading(f"Same estimator? Data set {ds['name']}: |difference| / sigma on the unmasked rows", "-")
        print("sigma = sqrt(max(specwidgets bspline background, 0) + read_noise^2); each tool uses its OWN "
              "warp model, so differences near sky lines come from the warp models, not the estimator.")
        print(f"'line-free' = pixels where the sky is locally flat ({n_flat} of {n_sky} unmasked pixels): "
              "there the warp cannot matter.")
        print(table(rows, ["difference", "median", "95th pct", "median line-free", "95th pct line-free"]))
    if args.only in (None, "A"):
        straight_line_check(ss, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
