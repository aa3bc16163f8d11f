"""The sky estimators against synthetic truth, scored on held-out sky rows."""

import numpy as np
import pytest
from conftest import rms

import specwidgets as sw
from specwidgets.io.synthetic import make_synthetic_longslit

HELD_OUT = (70, 82)


def score(frames, model, method, **options):
    masks = [frames.trace_rows, HELD_OUT]
    res = sw.fit_sky(frames.science, model, masks, method=method, read_noise=frames.read_noise, **options)
    rows = slice(*HELD_OUT)
    chi = res.chi[:, rows]
    err = (res.background - frames.sky) / np.sqrt(frames.sky + frames.read_noise**2)
    return float(np.std(chi)), rms(err[:, rows]), rms(err)


@pytest.fixture(scope="module")
def standard():
    return make_synthetic_longslit(shape=(100, 2048), n_exposures=2, tilt=3.0, n_sky_lines=60, seed=21)


@pytest.mark.parametrize("warp", ["true", "fitted"])
def test_bspline_meets_goals(standard, warp):
    if warp == "true":
        model = standard.warp
    else:
        locs, _ = sw.find_cal_lines(standard.arc)
        model = sw.generate_warp_model(standard.arc, locs)
    chi_std, err_held, err_all = score(standard, model, "bspline")
    assert chi_std <= 1.03, chi_std
    assert err_held <= 0.25 and err_all <= 0.25, (err_held, err_all)


def test_bspline_beats_median_of_bins(standard):
    _, median_err, _ = score(standard, standard.warp, "median")
    _, bspline_err, _ = score(standard, standard.warp, "bspline")
    assert bspline_err < 0.6 * median_err, (bspline_err, median_err)


def test_large_tilt():
    frames = make_synthetic_longslit(shape=(200, 2048), n_exposures=1, tilt=6.0, n_sky_lines=60, seed=22)
    locs, _ = sw.find_cal_lines(frames.arc)
    model = sw.generate_warp_model(frames.arc, locs)
    chi_std, err_held, _ = score(frames, model, "bspline")
    assert chi_std <= 1.03 and err_held <= 0.25, (chi_std, err_held)


def test_gradient_needs_spatial_order():
    """The seed's non-uniform background: a 0.5-1.5 ramp along the slit."""
    frames = make_synthetic_longslit(shape=(100, 2048), n_exposures=1, tilt=3.0, gradient=(0.5, 1.5), seed=23)
    _, _, flat_err = score(frames, frames.warp, "bspline", spatial_order=0)
    _, held, ramp_err = score(frames, frames.warp, "bspline", spatial_order=1)
    assert ramp_err <= 0.3, ramp_err
    assert flat_err > 3 * ramp_err


def test_cosmic_rays_are_rejected_not_fit():
    clean = make_synthetic_longslit(shape=(100, 1024), tilt=2.0, seed=24)
    hit = make_synthetic_longslit(shape=(100, 1024), tilt=2.0, seed=24, cosmic_rays=150)
    sigma = np.sqrt(clean.sky + 16)
    # Uniform knots: the same knots with and without the hits, so the two
    # fits must agree far below the noise.
    res = sw.fit_sky(hit.science, hit.warp, hit.trace_rows, read_noise=4.0, knots="uniform")
    assert res.rejected.sum() >= 100
    ref = sw.fit_sky(clean.science, clean.warp, clean.trace_rows, read_noise=4.0, knots="uniform")
    assert rms((res.background - ref.background) / sigma) < 0.05
    # Adaptive knots (the default) may place a few knots differently when the
    # data differ, so the fits are compared with the truth instead.
    res = sw.fit_sky(hit.science, hit.warp, hit.trace_rows, read_noise=4.0)
    ref = sw.fit_sky(clean.science, clean.warp, clean.trace_rows, read_noise=4.0)
    assert res.rejected.sum() >= 100
    hit_err = rms((res.background - clean.sky) / sigma)
    clean_err = rms((ref.background - clean.sky) / sigma)
    assert hit_err <= clean_err + 0.02, (hit_err, clean_err)


def test_adaptive_knots_beat_uniform_knots_on_the_continuum(standard):
    """Issue 13: fewer knots on the continuum, as fine as needed on the lines."""
    from scipy.ndimage import median_filter, minimum_filter1d

    rows = slice(*HELD_OUT)
    sky = standard.sky[:, rows]
    sig = np.sqrt(sky + standard.read_noise**2)
    spec = np.median(sky.mean(axis=0), axis=0)
    lines = sky - median_filter(minimum_filter1d(spec, 25), 51) > 3 * sig

    def errors(**options):
        res = sw.fit_sky(standard.science, standard.warp, [standard.trace_rows, HELD_OUT],
                         read_noise=standard.read_noise, **options)
        err = (res.background[:, rows] - sky) / sig
        return rms(err[~lines]), rms(err[lines]), res

    cont, line, res = errors()
    cont_uniform, line_uniform, _ = errors(knots="uniform")
    assert res.options["knots"] == "adaptive" and res.options["knot_threshold"] in (2.0, 4.0, 8.0)
    # Measured 0.105 / 0.198 (adaptive) and 0.197 / 0.196 (uniform 0.5 px).
    assert cont <= 0.13 and cont < 0.7 * cont_uniform, (cont, cont_uniform)
    assert line <= 0.23 and line < 1.15 * line_uniform, (line, line_uniform)


def test_a_line_the_adaptive_knots_missed_gets_finer_knots(monkeypatch):
    """The knots follow the first pass's sky; where the final fit still misses a line's shape in every
    sky row (the same effective pixels, whatever the column), they are made finer there and the fit
    redone, kept when it mends that line without losing elsewhere (a user's frame: 1.9 sigma on a
    line's flank in every row, "ok")."""
    from specwidgets.core.sky import api

    f = make_synthetic_longslit(shape=(100, 800), seed=2, n_exposures=2, tilt=3.0, line_sigma=1.3,
                                sky_continuum=200.0)
    locs, _ = sw.find_cal_lines(np.asarray(f.arc))
    warp = sw.generate_warp_model(np.asarray(f.arc), locs)
    sigma = np.sqrt(np.clip(f.sky, 0, None) / f.gain + (f.read_noise / f.gain) ** 2)
    sky_rows = np.ones(100, bool)
    sky_rows[slice(*f.trace_rows)] = False

    def errors():
        err = ((sw.fit_sky(f.science, warp, f.trace_rows).background - f.sky) / sigma)[:, sky_rows]
        return rms(err), float(np.abs(err).max())

    mended = errors()
    monkeypatch.setattr(api, "EFFPIX_MISFIT_Z", np.inf)  # never refined
    missed = errors()
    # Measured 0.117 / 0.92 against 0.135 / 1.48.
    assert mended[1] < 1.1 < missed[1] and mended[0] < 0.9 * missed[0], (mended, missed)


def test_undersampled_lines_get_finer_knots(monkeypatch):
    """Sky lines of FWHM ~1 px (trial L1: FWHM 1.2 px, 0.46 sigma RMS on the lines, "ok"): the finest
    knots go from 0.5 to 0.35 px. Lines of a usual width keep theirs (the other tests here)."""
    from specwidgets.core.sky import api

    f = make_synthetic_longslit(shape=(100, 800), seed=4, n_exposures=2, tilt=3.0, line_sigma=0.45)
    locs, _ = sw.find_cal_lines(np.asarray(f.arc))
    warp = sw.generate_warp_model(np.asarray(f.arc), locs)
    sigma = np.sqrt(np.clip(f.sky, 0, None) / f.gain + (f.read_noise / f.gain) ** 2)
    sky_rows = np.ones(100, bool)
    sky_rows[slice(*f.trace_rows)] = False
    lines = ((f.sky - np.percentile(f.sky, 20)) > 3 * sigma) & sky_rows[None, :, None]

    def errors():
        err = (sw.fit_sky(f.science, warp, f.trace_rows).background - f.sky) / sigma
        return rms(err[:, sky_rows]), rms(err[lines])

    finer = errors()
    monkeypatch.setattr(api, "NARROW_FWHM", 0.0)  # never narrow
    usual = errors()
    # Measured 0.135 / 0.213 against 0.157 / 0.328.
    assert finer[1] < 0.25 and finer[1] < 0.8 * usual[1] and finer[0] < usual[0], (finer, usual)


def _fitted_warp(frames):
    locs, _ = sw.find_cal_lines(np.asarray(frames.arc))
    return sw.generate_warp_model(np.asarray(frames.arc), locs)


def _sky_error(frames, result):
    """The sky's error in units of the true noise, per pixel."""
    sigma = np.sqrt(np.clip(frames.sky, 0, None) / frames.gain + (frames.read_noise / frames.gain) ** 2)
    return (result.background - frames.sky) / sigma


@pytest.mark.parametrize("seed, line_sigma", [(1, 0.5), (2, 0.7)])
def test_straight_undersampled_lines(seed, line_sigma):
    """Lines that do not move over the slit (straight: tilt 0), barely wider than a pixel (FWHM 1.2 /
    1.6 px): each column's samples sit at one effective pixel. The adaptive knots, placed by a first
    pass that nothing constrains between the columns, missed them (1.92 / 1.73 sigma RMS, 8.5 / 7.0 on
    the lines, suspect with hints of hot columns); knots a pixel apart: 0.12."""
    f = make_synthetic_longslit(shape=(100, 2048), seed=seed, line_sigma=line_sigma, tilt=0.0)
    res = sw.fit_sky(f.science, _fitted_warp(f), f.trace_rows)
    assert rms(_sky_error(f, res)) < 0.2 and not res.quality.suspect, (rms(_sky_error(f, res)),
                                                                        res.quality.warnings)


def test_lines_straight_at_one_end_of_the_frame():
    """A tilt that grows from 0 at the first column to 3 px at the last (FWHM 1.2 px lines): the
    frame's lines move 1.5 px over the slit, as a rule, but near its first columns less than a pixel,
    where knots closer than the columns missed them (the first 256 columns 4.2 sigma RMS, the frame
    1.5; now 0.16 and 0.13)."""
    f = make_synthetic_longslit(shape=(100, 2048), seed=1, line_sigma=0.5, tilt=(1.5, 1.5))
    res = sw.fit_sky(f.science, _fitted_warp(f), f.trace_rows)
    err = _sky_error(f, res)
    assert rms(err[..., :256]) < 0.25 and rms(err) < 0.2 and not res.quality.suspect, (
        rms(err[..., :256]), rms(err), res.quality.warnings)


def test_finer_knots_that_do_not_mend_the_fit_are_not_kept(monkeypatch):
    """Coarse knots asked for (knot_threshold=50): the finer ones lowered the missed bins' chi-square,
    but the spectrum as a whole got worse (0.196 -> 0.217 sigma RMS, 1.6 -> 3.5 sigma): the first fit stands."""
    from specwidgets.core.sky import api

    f = make_synthetic_longslit(shape=(100, 800), seed=3, n_exposures=2, tilt=3.0, line_sigma=1.6)
    locs, _ = sw.find_cal_lines(np.asarray(f.arc))
    warp = sw.generate_warp_model(np.asarray(f.arc), locs)
    tried = []
    refined = api._refined_table

    def spy(*args):
        table = refined(*args)
        tried.append(table is not None)
        return table

    monkeypatch.setattr(api, "_refined_table", spy)
    kept = sw.fit_sky(f.science, warp, f.trace_rows, knot_threshold=50.0)
    assert any(tried)  # a refit was made
    monkeypatch.setattr(api, "EFFPIX_MISFIT_Z", np.inf)
    first = sw.fit_sky(f.science, warp, f.trace_rows, knot_threshold=50.0)
    np.testing.assert_array_equal(kept.background, first.background)
    np.testing.assert_array_equal(kept.rejected, first.rejected)
