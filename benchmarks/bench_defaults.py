"""Right by default: the held-out sky score with the seed API's own arguments only.

Issue 10's protocol. On each data set a band of sky rows is held out (masked
from the fit together with the traces) and scored:

    score = clipped std(data - model) / noise floor        (5-sigma clipping)
    noise floor = clipped std of adjacent-row differences / sqrt(2)

both on the held-out rows, so 1.00 is the floor a perfect model reaches. The
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
def clipped_std(x, n_sigma=5.0, n_iter=10):
    x = np.asarray(x, float).ravel()
    x = x[np.isfinite(x)]
    if x.size < 3:
        return float("nan")
    keep = np.ones(x.size, bool)
    for _ in range(n_iter):
        mu, sd = x[keep].mean(), x[keep].std()
        new = np.abs(x - mu) <= n_sigma * sd
        if np.array_equal(new, keep):
            break
        keep = new
    return float(x[keep].std())


def noise_floor(data, rows, pixels=None):
    """Clipped std of adjacent-row differences / sqrt(2) on the held-out rows."""
    d = np.diff(data[:, rows], axis=1)
    if pixels is not None:
        both = pixels[:-1] & pixels[1:]
        d = d[:, both]
    return clipped_std(d) / np.sqrt(2)


def line_pixels(median_bg, rows, floor):
    """Held-out pixels on sky lines: the median-of-bins sky more than 3 noise floors above the continuum."""
    band = median_bg[:, rows].mean(axis=0)  # (n_held, n_cols)
    spec = np.median(band, axis=0)
    cont = median_filter(minimum_filter1d(spec, 25), 51)
    return band - cont[None, :] > 3 * floor


def scores(data, model, rows, lines):
    resid = data[:, rows] - model[:, rows]
    out = {}
    for name, pix in (("all", None), ("lines", lines), ("cont", ~lines)):
        r = resid if pix is None else resid[:, pix]
        out[name] = clipped_std(r) / noise_floor(data, rows, pix)
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


def synthetic(name, **kw):
    base = dict(shape=(200, 2048), n_exposures=2, tilt=3.0, n_sky_lines=60, cosmic_rays=30, seed=31)
    base.update(kw)
    f = make_synthetic_longslit(**base)
    t0, t1 = f.trace_rows
    held = (t1 + 10, t1 + 20)
    # As from an instrument whose headers hold no gain or read noise: plain arrays.
    return dict(name=name, data=np.asarray(f.science), arc=np.asarray(f.arc), masks=[tuple(f.trace_rows)], held=held,
                truth=f.sky, gain=f.gain, read_noise=f.read_noise, full_frame=bool(f.unlit_rows))


def goodman(name, crop, masks, held):
    from specwidgets.io.synthetic import goodman_available, load_goodman

    if not goodman_available():
        print(f"{name}: Goodman sample not found, skipped")
        return None
    s = load_goodman(crop_bds=crop)
    return dict(name=name, data=s.science, arc=s.arc, masks=masks, held=held, truth=None,
                gain=s.gain, read_noise=s.read_noise, full_frame=crop[1] is None)


def data_sets(only):
    makers = {
        "goodman-crop": lambda: goodman("goodman-crop", (680, 800), [(20, 100)], (104, 114)),
        "goodman-full": lambda: goodman("goodman-full", (0, None), [(436, 500), (680, 810)], (600, 610)),
        "syn-plain": lambda: synthetic("syn-plain"),
        "syn-adu": lambda: synthetic("syn-adu", gain=2.5, read_noise=10.0),
        "syn-lamps": lambda: synthetic("syn-lamps", n_lamps=3),
        "syn-unlit": lambda: synthetic("syn-unlit", unlit_rows=60),
        "syn-gradient": lambda: synthetic("syn-gradient", gradient=(0.5, 1.5)),
        "syn-flexure": lambda: synthetic("syn-flexure", shift=0.7, shift_tilt=0.7),
        "syn-all": lambda: synthetic("syn-all", n_lamps=3, unlit_rows=60, gradient=(0.5, 1.5), shift=0.7,
                                     shift_tilt=0.7, gain=2.5, read_noise=10.0),
    }
    for name, make in makers.items():
        if only and name not in only:
            continue
        ds = make()
        if ds is not None:
            yield ds


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
        # The protocol's own floor: the true sky scores about 1.00 but not
        # exactly (the clipping treats bright-line pixels as outliers), and
        # an estimator that misses line peaks can score below it.
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


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-pypeit", action="store_true", help="skip the PypeIt column")
    ap.add_argument("--only", nargs="*", help="data set names (e.g. goodman-crop syn-all)")
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
    heading("Summary: held-out score (1.00 = noise floor), defaults only")
    print(table([[n, f"{m:.3f}", f"{d:.3f}", "" if p is None else f"{p:.3f}", "" if t is None else f"{t:.3f}",
                  str(s), v] for n, m, d, p, t, s, v in summary],
                ["data set", "median of bins", "default", "PypeIt", "true sky", "suspect", "goal"]))


if __name__ == "__main__":
    main()
