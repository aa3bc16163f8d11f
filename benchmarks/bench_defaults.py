"""Right by default: the held-out sky score with the seed API's own arguments only.

Issue 10's protocol. On each data set a band of sky rows is held out (masked
from the fit together with the traces) and scored:

    score = RMS(data - model) / noise floor
    noise floor = RMS of second differences along the rows / sqrt(6)

both on the held-out rows, without the pixels a cosmic ray hit (found in
the data alone, the same for every estimator), so 1.00 is the floor a
perfect model reaches. (The first version clipped each estimator's own
residuals at 5 sigma and took adjacent-row differences for the floor; both
favoured a model that misses the line peaks: see "scoring" below.) The
score is also split into sky-line pixels and continuum pixels (a pixel is a
line pixel when the median-of-bins sky there exceeds the local continuum by
more than 3 noise floors). On synthetic frames the RMS error against the
true sky, in units of the true noise, is printed as well.

specwidgets is called with defaults only: ``fit_sky(images, warp, masks,
method=...)``, no read_noise, gain or spatial_order; the warp comes from
``find_cal_lines`` + ``generate_warp_model`` on the (summed) arc with their
defaults.

PypeIt 2.0.1 is the reference peer (skipped when not installed, or with
``--no-pypeit``): ``pypeit.core.skysub.global_skysub`` on the transposed
frame (PypeIt puts the spectral axis first), given this project's
effective-pixel map divided by ``n_cols - 1`` as ``tilts``, the sky rows
(traces and held-out rows masked) as ``inmask``, the whole slit as
``thismask``, and ``ivar`` from the true (synthetic) or header (Goodman)
noise model, which PypeIt would read from its spectrograph description.
Its import asks astropy for the observatory sites (network), so
``EarthLocation.of_site`` is replaced by an offline stub in this process
before pypeit is imported. It is used as a black box through that
documented function only.

Run:

    PYTHONPATH=. python3 benchmarks/bench_defaults.py [--no-pypeit] [--only NAME]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import numpy as np
from _common import heading, machine_line, source_line, table
from scipy.ndimage import median_filter, minimum_filter1d

import specwidgets as sw
from specwidgets.io.synthetic import make_synthetic_longslit

SCORE_GOAL = 1.03
FULL_FRAME_GOAL = 1.05


# ---------------------------------------------------------------------- scoring
# The protocol (issue 10) as first written scored the 5-sigma-clipped std of
# data - model over the clipped std of adjacent-row differences / sqrt(2). On
# synthetic frames the median of bins then scored *below* the true sky
# (0.972 vs 1.007 with a 0.7 px flexure), which no model that never saw the
# held-out rows can do honestly. Two biases, both in the estimator's favour
# when it misses the line peaks:
#
# * the floor: where a sky line tilts across the slit, adjacent rows differ
#   by the line's own motion (a slope of thousands of counts per pixel times
#   a hundredth of a pixel per row), not only by noise. The floor was too
#   high on line pixels (the true sky scored 0.81-0.88 there).
# * the clipping: each estimator's residuals were clipped at 5 sigma of
#   themselves, so large model errors (the median's missed line peaks, 3.3x
#   the floor) were thrown away as if they were cosmic rays.
#
# Now the floor comes from second differences along the rows,
# x[r-1] - 2 x[r] + x[r+1] (a line moving linearly across rows cancels),
# divided by sqrt(6); and the pixels left out (cosmic rays) are chosen from
# the data alone, the same for every estimator: a pixel more than 6 sigma
# above the mean of its two row neighbours (sigma from the level of the
# second differences). The score is the plain RMS of data - model over the
# remaining held-out pixels (a bias counts too) divided by that floor.
CR_SIGMA = 6.0
CAP_SIGMA = 5.0


def _local_sigma(level, d2):
    """Noise sigma of one pixel as a function of level: var(d2)/6 in level bins, fit by a + b*level."""
    ok = np.isfinite(level) & np.isfinite(d2)
    lv, dv = level[ok], d2[ok]
    order = np.argsort(lv)
    bins = np.array_split(order, 20)
    x = np.array([np.median(lv[i]) for i in bins])
    y = np.array([(1.4826 * np.median(np.abs(dv[i] - np.median(dv[i])))) ** 2 / 6 for i in bins])
    b, a = np.polyfit(x, y, 1)
    if b < 0:
        b, a = 0.0, float(np.mean(y))

    def sigma(v):
        return np.sqrt(np.clip(a + b * np.asarray(v, float), 1e-12, None))

    return sigma


def protocol_masks(data, rows):
    """``(good, d2, sigma)``: held-out pixels not hit by a cosmic ray (data only), the second
    differences along the rows, and each pixel's noise sigma (from its level)."""
    r0, r1 = rows.start, rows.stop
    if r0 < 1 or r1 >= data.shape[1]:
        raise ValueError("the held-out rows need one data row on each side")
    x = data[:, r0 - 1: r1 + 1]
    d2 = x[:, :-2] - 2 * x[:, 1:-1] + x[:, 2:]
    level = np.median(np.stack([x[:, :-2], x[:, 1:-1], x[:, 2:]]), axis=0)
    sigma = _local_sigma(level.ravel(), d2.ravel())(level)
    dev = x[:, 1:-1] - 0.5 * (x[:, :-2] + x[:, 2:])
    hit = dev > CR_SIGMA * np.sqrt(1.5) * sigma
    # Hits in the rows just outside the band spoil the band's edge rows' second differences.
    out_lo = data[:, r0 - 1] - 0.5 * (data[:, r0 - 2] + data[:, r0]) if r0 >= 2 else np.zeros_like(data[:, r0])
    out_hi = data[:, r1] - 0.5 * (data[:, r1 - 1] + data[:, r1 + 1]) if r1 + 1 < data.shape[1] else np.zeros_like(data[:, r0])
    nb = np.zeros_like(hit)
    nb[:, 1:] |= hit[:, :-1]
    nb[:, :-1] |= hit[:, 1:]
    nb[:, 0] |= out_lo > CR_SIGMA * np.sqrt(1.5) * sigma[:, 0]
    nb[:, -1] |= out_hi > CR_SIGMA * np.sqrt(1.5) * sigma[:, -1]
    good = ~hit & np.isfinite(x[:, 1:-1])
    return good, np.where(good & ~nb & np.isfinite(d2), d2, np.nan), sigma


def noise_floor(data, rows, pixels=None):
    """The noise floor on the held-out rows: RMS of second differences along the rows / sqrt(6)."""
    _, d2, _ = protocol_masks(data, rows)
    if pixels is not None:
        d2 = d2[:, pixels]
    d2 = d2[np.isfinite(d2)]
    return float(np.sqrt(np.mean(d2**2) / 6))


def line_pixels(median_bg, rows, floor):
    """Held-out pixels on sky lines: the median-of-bins sky more than 3 noise floors above the continuum."""
    band = median_bg[:, rows].mean(axis=0)  # (n_held, n_cols)
    spec = np.median(band, axis=0)
    cont = median_filter(minimum_filter1d(spec, 25), 51)
    return band - cont[None, :] > 3 * floor


def scores(data, model, rows, lines):
    good, d2, sigma = protocol_masks(data, rows)
    cap = CAP_SIGMA * sigma
    resid = np.where(good, np.clip(data[:, rows] - model[:, rows], -cap, cap), np.nan)
    out = {}
    for name, pix in (("all", None), ("lines", lines), ("cont", ~lines)):
        r = resid if pix is None else resid[:, pix]
        f = d2 if pix is None else d2[:, pix]
        r, f = r[np.isfinite(r)], f[np.isfinite(f)]
        out[name] = float(np.sqrt(np.mean(r**2)) / np.sqrt(np.mean(f**2) / 6))
    return out


# ---------------------------------------------------------------------- PypeIt
def import_pypeit_skysub():
    try:
        from astropy.coordinates import EarthLocation

        # PypeIt's import builds its observatory list with EarthLocation.of_site,
        # which downloads the site registry; a fixed location keeps this offline.
        EarthLocation.of_site = classmethod(lambda cls, *a, **k: EarthLocation.from_geodetic(0.0, 0.0, 0.0))
        from pypeit.core import skysub
    except Exception as exc:  # noqa: BLE001 - optional peer
        print(f"PypeIt not available ({type(exc).__name__}: {exc}); its column is skipped")
        return None
    import logging

    # Its logger writes every fit iteration to the terminal (not through sys.stdout).
    logging.getLogger("pypeit").setLevel(logging.ERROR)
    return skysub


def pypeit_sky(skysub, data, emap, fit_rows, gain, read_noise):
    n_exp, n_rows, n_cols = data.shape
    tilts = (emap / (n_cols - 1)).T.copy()
    out = np.empty_like(data)
    for k in range(n_exp):
        image = data[k].T.copy()
        var = np.clip(image, 0, None) / gain + (read_noise / gain) ** 2
        ivar = 1.0 / var
        inmask = np.broadcast_to(fit_rows[None, :], image.shape).copy() & np.isfinite(image)
        thismask = np.ones(image.shape, bool)
        left = np.full(n_cols, -0.5)
        right = np.full(n_cols, n_rows - 0.5)
        sky = np.zeros_like(image)
        sky[thismask] = skysub.global_skysub(image, ivar, tilts, thismask, left, right, inmask=inmask)
        out[k] = sky.T
    return out


# ---------------------------------------------------------------------- data sets
def fitted_warp(arc):
    locs, _ = sw.find_cal_lines(arc)
    return sw.generate_warp_model(arc, locs)


def synthetic(name, held_gap=10, held_rows=10, **kw):
    base = dict(shape=(200, 2048), n_exposures=2, tilt=3.0, n_sky_lines=60, cosmic_rays=30, seed=31)
    base.update(kw)
    f = make_synthetic_longslit(**base)
    t0, t1 = f.trace_rows
    held = (t1 + held_gap, t1 + held_gap + held_rows)
    # As from an instrument whose headers hold no gain or read noise: plain arrays.
    return dict(name=name, data=np.asarray(f.science), arc=np.asarray(f.arc), masks=[tuple(f.trace_rows)], held=held,
                truth=f.sky, gain=f.gain, read_noise=f.read_noise, full_frame=bool(f.unlit_rows))


def goodman(name, crop, masks, held):
    from specwidgets.io.synthetic import goodman_available, load_goodman

    if not goodman_available():
        print(f"{name}: Goodman sample not found, skipped")
        return None
    s = load_goodman(crop_bds=crop)
    # The sample is in electrons already: its noise model is gain 1 and the
    # headers' read noise (``s.gain``, 1.4, is the headers' e-/ADU; handing it
    # to PypeIt's ivar, as before, underestimated every variance by ~1.4x).
    return dict(name=name, data=s.science, arc=s.arc, masks=masks, held=held, truth=None,
                gain=1.0, read_noise=s.read_noise, full_frame=crop[1] is None)


# The Goodman sets (issue 10's protocol): crop, trace mask, held-out rows.
GOODMAN_SETS = {
    "goodman-crop": lambda: goodman("goodman-crop", (680, 800), [(20, 100)], (104, 114)),
    "goodman-full": lambda: goodman("goodman-full", (0, None), [(436, 500), (680, 810)], (600, 610)),
}


def made(makers, only):
    """The data sets of ``makers`` named in ``only`` (all without it), skipping those not available."""
    for name, make in makers.items():
        if only and name not in only:
            continue
        ds = make()
        if ds is not None:
            yield ds


def data_sets(only):
    makers = {
        **GOODMAN_SETS,
        "syn-plain": lambda: synthetic("syn-plain"),
        "syn-adu": lambda: synthetic("syn-adu", gain=2.5, read_noise=10.0),
        "syn-lamps": lambda: synthetic("syn-lamps", n_lamps=3),
        "syn-unlit": lambda: synthetic("syn-unlit", unlit_rows=60),
        "syn-gradient": lambda: synthetic("syn-gradient", gradient=(0.5, 1.5)),
        "syn-flexure": lambda: synthetic("syn-flexure", shift=0.7, shift_tilt=0.7),
        # A short slit (50 rows, 28 sky rows), as on the Goodman crop: few sky rows per pixel.
        "syn-short": lambda: synthetic("syn-short", held_gap=2, held_rows=6, shape=(50, 2048), trace_fwhm=3.0,
                                       trace_bend=0.5),
        # A slit whose illumination falls off towards one end (not a polynomial of low order).
        "syn-vignette": lambda: synthetic("syn-vignette", illumination=1.0 - 0.12 * np.linspace(0, 1, 200) ** 4),
        # A trace whose far wings reach into the sky rows (a Lorentzian, as real PSFs fall).
        "syn-wings": lambda: synthetic("syn-wings", trace_wings=0.003),
        # Sky lines 20 % broader at one end of the slit than at the other (the camera's focus).
        "syn-focus": lambda: synthetic("syn-focus", line_sigma_change=0.2),
        "syn-all": lambda: synthetic("syn-all", n_lamps=3, unlit_rows=60, gradient=(0.5, 1.5), shift=0.7,
                                     shift_tilt=0.7, gain=2.5, read_noise=10.0),
    }
    yield from made(makers, only)


# ---------------------------------------------------------------------- main
def run_case(ds, skysub):
    heading(f"{ds['name']}: {ds['data'].shape}, masks {ds['masks']}, held-out rows {ds['held']}", "-")
    data = ds["data"]
    warp = fitted_warp(ds["arc"])
    masks = list(ds["masks"]) + [ds["held"]]
    rows = slice(*ds["held"])
    # warm up numba once per process
    t_med, med = _timed(lambda: sw.fit_sky(data, warp, masks, method="median"))
    t_bs, res = _timed(lambda: sw.fit_sky(data, warp, masks))
    lines = line_pixels(med.background, rows, noise_floor(data, rows))
    q = res.quality
    print(f"default fit: {q.summary()}")
    print(f"  flexure {[f'{f:.3f}' for f in q.flexure]} px (applied: {q.flexure_applied}); unlit rows {q.unlit_rows}")
    entries = [("median of bins", med.background, t_med), ("default (bspline)", res.background, t_bs)]
    if skysub is not None:
        fit_rows = ~sw.core.inputs.mask_rows(sw.mask_ranges(masks, data.shape[1]), data.shape[1])
        # PypeIt logs every iteration; its messages are not part of the table.
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            t_py, py = _timed(lambda: pypeit_sky(skysub, data, warp.effpix_map(), fit_rows, ds["gain"], ds["read_noise"]))
        entries.append(("PypeIt global_skysub", py, t_py))
    if ds["truth"] is not None:
        # The protocol's own check: the true sky must score 1.00 (to the
        # floor's statistical error), on line and continuum pixels alike.
        entries.insert(0, ("true sky (reference)", ds["truth"], 0.0))
    out = []
    goal = FULL_FRAME_GOAL if ds["full_frame"] else SCORE_GOAL
    for label, bg, t in entries:
        s = scores(data, bg, rows, lines)
        row = [label, f"{s['all']:.3f}", f"{s['lines']:.3f}", f"{s['cont']:.3f}"]
        if ds["truth"] is not None:
            sig = np.sqrt(np.clip(ds["truth"][:, rows], 0, None) / ds["gain"] + (ds["read_noise"] / ds["gain"]) ** 2)
            err = (bg[:, rows] - ds["truth"][:, rows]) / sig
            row += [f"{np.sqrt(np.mean(err[:, lines] ** 2)):.3f}", f"{np.sqrt(np.mean(err[:, ~lines] ** 2)):.3f}"]
        else:
            row += ["", ""]
        row.append(f"{t:.3f}")
        out.append((label, s))
        ds.setdefault("rows", []).append(row)
    print(table(ds["rows"], ["estimator", "score", "lines", "continuum", "err lines [σ]", "err cont [σ]", "s"]))
    by_label = {label: sc for label, sc in out}
    default, median = by_label["default (bspline)"]["all"], by_label["median of bins"]["all"]
    verdict = (f"{'met' if default <= goal else 'MISSED'} (<= {goal}); "
               f"{'<=' if default <= median + 1e-3 else '>'} median")
    print(f"default score {default:.3f}, median of bins {median:.3f}: {verdict}")
    peer = by_label.get("PypeIt global_skysub", {}).get("all")
    truth = by_label.get("true sky (reference)", {}).get("all")
    return ds["name"], median, default, peer, truth, q.suspect, verdict


# ---------------------------------------------------------------------- batch
BIAS_LEVEL = 300.0


def _write_raw(folder, name, data, kind):
    """One raw frame as a ``.fits.bz2`` file in ADU, with no GAIN or read-noise keyword."""
    from astropy.io import fits

    header = fits.Header()
    header["IMAGETYP"] = kind
    header["BUNIT"] = "adu"
    path = folder / f"{name}.fits.bz2"
    fits.writeto(path, np.asarray(data, dtype=np.float32), header, overwrite=True)
    return path


def batch_case(name, method_list=("median", "bspline"), **kw):
    """``specwidgets batch`` with defaults on raw files: three lamps in three files, bias frames,
    ``.fits.bz2``, ADU with no gain in the headers; each exposure's SKY scored as above."""
    import re
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from astropy.io import fits

    base = dict(shape=(200, 2048), n_exposures=2, tilt=3.0, n_sky_lines=60, cosmic_rays=30, seed=31)
    base.update(kw)
    f = make_synthetic_longslit(**base)
    rng = np.random.default_rng(5)
    t0, t1 = f.trace_rows
    held = (t1 + 10, t1 + 20)
    rn_adu = f.read_noise / f.gain
    heading(f"batch {name}: {len(f.arc_lamps)} lamp files, 3 bias frames, .fits.bz2 in ADU (no GAIN), "
            f"masks {tuple(f.trace_rows)} and held-out rows {held}", "-")
    rows = slice(*held)
    out_rows = []
    scores_by = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw = tmp / "raw"
        raw.mkdir()
        bias = [_write_raw(raw, f"bias{i}", BIAS_LEVEL + rng.normal(0, rn_adu, f.arc.shape), "BIAS") for i in range(3)]
        lamps = [_write_raw(raw, f"lamp{i}", lamp + BIAS_LEVEL, "COMP") for i, lamp in enumerate(f.arc_lamps)]
        science = [_write_raw(raw, f"sci{k}", f.science[k] + BIAS_LEVEL, "OBJECT") for k in range(f.science.shape[0])]
        for method in method_list:
            out = tmp / f"out-{method}"
            # The installed `specwidgets` command, run by this Python.
            cmd = [sys.executable, "-c", "import sys; from specwidgets.cli import main; sys.exit(main())",
                   "batch", *map(str, science), "--arc", *map(str, lamps),
                   "--bias", *map(str, bias), "--mask", f"{t0}:{t1}", "--mask", f"{held[0]}:{held[1]}",
                   "--out", str(out), "--workers", "1", "--no-progress", "--dtype", "float64"]
            if method != "bspline":
                cmd += ["--method", method]
            run = subprocess.run(cmd, capture_output=True, text=True)
            text = run.stdout + run.stderr
            if run.returncode != 0:
                print(f"{method}: specwidgets batch failed (exit {run.returncode}):\n{text[-2000:]}")
                return name, None, None, None
            line = next((ln for ln in text.splitlines() if re.search(r"suspect", ln)), "")
            sci, sky = [], []
            cards = {}
            for p in science:
                with fits.open(out / p.name.replace(".fits.bz2", "_sky.fits")) as hdul:
                    sci.append(hdul["SCI"].data.astype(float))
                    sky.append(hdul["SKY"].data.astype(float))
                    cards = {k: hdul[0].header.get(k) for k in ("GAIN", "RDNOISE", "NOISESRC", "SKYSUSP", "SKYILLUM",
                                                                  "FLEXURE", "SKYUNLIT")}
            # SCI is the sky-subtracted science: the data are SCI + SKY.
            sky = np.stack(sky)
            sci = np.stack(sci) + sky
            if method == method_list[0]:
                lines = line_pixels(sky, rows, noise_floor(sci, rows))
            s = scores(sci, sky, rows, lines)
            scores_by[method] = s["all"]
            print(f"{method}: {line.strip()}")
            print(f"  header: {cards}")
            out_rows.append([method, f"{s['all']:.3f}", f"{s['lines']:.3f}", f"{s['cont']:.3f}"])
    print(table(out_rows, ["batch --method", "score", "lines", "continuum"]))
    goal = FULL_FRAME_GOAL if f.unlit_rows else SCORE_GOAL
    default, median = scores_by.get("bspline"), scores_by.get("median")
    verdict = (f"{'met' if default <= goal else 'MISSED'} (<= {goal}); "
               f"{'<=' if median is None or default <= median + 1e-3 else '>'} median")
    print(f"batch default score {default:.3f}: {verdict}")
    return name, median, default, verdict


BATCH_SETS = {
    "batch-all": dict(n_lamps=3, unlit_rows=60, illumination=1.0 - 0.12 * np.linspace(0, 1, 200) ** 4, shift=0.7,
                      shift_tilt=0.7, gain=2.5, read_noise=10.0),
    "batch-gradient": dict(n_lamps=3, gradient=(0.5, 1.5), gain=2.5, read_noise=10.0),
}


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-pypeit", action="store_true", help="skip the PypeIt column")
    ap.add_argument("--only", nargs="*", help="data set names (e.g. goodman-crop syn-all batch-all)")
    ap.add_argument("--no-batch", action="store_true", help="skip the `specwidgets batch` sets")
    args = ap.parse_args()
    print(machine_line())
    print(source_line())
    skysub = None if args.no_pypeit else import_pypeit_skysub()
    # numba compiles or loads its cache on the first call: not timed.
    f = make_synthetic_longslit(shape=(40, 256), seed=0)
    sw.fit_sky(f.science, f.warp, f.trace_rows)
    sw.fit_sky(f.science, f.warp, f.trace_rows, method="median")
    summary = []
    for ds in data_sets(args.only):
        summary.append(run_case(ds, skysub))
    if not args.no_batch:
        for name, kw in BATCH_SETS.items():
            if not args.only or name in args.only:
                n, m, d, v = batch_case(name, **kw)
                summary.append((n, m if m is not None else float("nan"), d if d is not None else float("nan"),
                                None, None, "see above", v or "failed"))
    heading("Summary: held-out score (1.00 = noise floor), defaults only")
    print(table([[n, f"{m:.3f}", f"{d:.3f}", "" if p is None else f"{p:.3f}", "" if t is None else f"{t:.3f}",
                  str(s), v] for n, m, d, p, t, s, v in summary],
                ["data set", "median of bins", "default", "PypeIt", "true sky", "suspect", "goal"]))


if __name__ == "__main__":
    main()
