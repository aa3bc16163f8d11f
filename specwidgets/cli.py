"""The ``specwidgets`` command.

``specwidgets demo`` runs the whole method (lines, warp model, sky) on the
embedded synthetic frames, or on the Goodman sample with ``--goodman``, and
prints what it found and how well the sky matches. ``specwidgets dashboard``
serves the interactive dashboard with Voila (:mod:`specwidgets.app.launcher`);
``specwidgets batch``
applies a warp model and masks to many exposures on Dask
(:mod:`specwidgets.batch`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import warnings

import numpy as np

from .app.launcher import add_dashboard_parser
from .batch.cli import add_batch_parser, join_range_values

__all__ = ["main"]


def _demo(args):
    import specwidgets as sw

    # On a cold kernel cache, the median's kernels (the slowest to compile)
    # compile on the other core while this process compiles the warp and
    # B-spline ones; nothing to do once they are cached.
    from .core._warmup import start_warm_up_process

    helper = start_warm_up_process(("median",))
    t0 = time.perf_counter()
    if args.goodman:
        from .io.sample_data import load_goodman

        data = load_goodman(crop_bds=(680, 800))
        science, arc, read_noise = data.science, data.arc, data.read_noise
        masks, truth = [(20, 100)], None
        source = f"Goodman sample, rows 680-800 ({data.path})"
    else:
        frames = sw.datasets.load_demo()
        science, arc, read_noise = frames.science, frames.arc, frames.read_noise
        masks, truth = [frames.trace_rows], frames.sky
        source = "embedded synthetic demo"
    t_load = time.perf_counter() - t0
    print(f"data: {source}: {science.shape[0]} exposure(s) of {science.shape[1]} x {science.shape[2]} (loaded in {t_load:.2f} s)")

    t0 = time.perf_counter()
    locs, _ = sw.find_cal_lines(arc, std_variation=args.std_variation)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sw.PoorWarpWarning)  # printed below with the model's summary
        model = sw.generate_warp_model(arc, locs)
    t_warp = time.perf_counter() - t0
    used = int(model.traces.used.sum())
    ref = model.traces.ref_positions[model.traces.used]
    shift = model.column_of(ref, arc.shape[0] - 1) - model.column_of(ref, 0)
    print(
        f"warp model: {len(locs)} lines found, {used} used, median line RMS "
        f"{np.nanmedian(model.line_rms):.3f} px, line shift from the first to the last row "
        f"{np.median(shift):+.2f} px ({t_warp:.2f} s)"
    )
    for warning in model.quality_warnings:
        print(f"  warning: {warning}")

    for method in sw.METHODS:
        if method == "median" and helper is not None:
            try:
                helper.wait(timeout=300)
            except subprocess.TimeoutExpired:  # it only saves time: carry on and compile here
                helper.kill()
        t0 = time.perf_counter()
        result = sw.fit_sky(science, model, masks, method=method, read_noise=read_noise)
        elapsed = time.perf_counter() - t0
        sky_rows = ~result.mask[:, 0]
        chi = result.chi[:, sky_rows]
        chi = chi[np.isfinite(chi) & (np.abs(chi) < 5)]
        line = f"sky ({method:>7}): {elapsed * 1e3:7.1f} ms, chi std on sky rows {np.std(chi):.3f}"
        if truth is not None:
            err = (result.background - truth) / np.sqrt(truth + read_noise**2)
            line += f", error vs true sky {np.sqrt(np.mean(err**2)):.3f} sigma RMS"
        quality = getattr(result, "quality", None)
        if quality is not None and getattr(quality, "suspect", False):
            line += "; SUSPECT: " + "; ".join(map(str, getattr(quality, "warnings", []) or ["flagged by the fit"]))
        print(line)
    return 0


def main(argv=None):
    """Entry point of the ``specwidgets`` command."""
    parser = argparse.ArgumentParser(
        prog="specwidgets",
        description="Sky-background subtraction for long-slit spectra: the demo in the terminal, the interactive "
                    "dashboard, or a batch of exposures. 'specwidgets COMMAND --help' describes each command.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="run the method on the embedded demo (or the Goodman sample)",
        description="Run the whole method (arc lines, warp model, sky with both methods) on the embedded synthetic "
                    "frames, or on the Goodman sample with --goodman, and print how well each sky matches the truth "
                    "(or the held-out rows) and whether the fit is flagged suspect.",
    )
    demo.add_argument("--goodman", action="store_true", help="use the real Goodman frames instead")
    demo.add_argument("--std-variation", type=float, default=50.0, help="line detection threshold")
    demo.set_defaults(func=_demo)
    add_dashboard_parser(sub)
    add_batch_parser(sub)
    args = parser.parse_args(join_range_values(sys.argv[1:] if argv is None else argv))
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"specwidgets: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
