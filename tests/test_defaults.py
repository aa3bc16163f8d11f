"""Right by default (issue 10): fit_sky with the seed API's own arguments on frames built to break defaults.

Every test compares against the synthetic truth the frames were made from.
"""

import dataclasses
import re
import warnings

import numpy as np
import pytest
from conftest import rms

import specwidgets as sw
from specwidgets.core.frames import FrameArray
from specwidgets.io.synthetic import make_synthetic_longslit

SHAPE = (120, 1024)


def frames(**kw):
    """Synthetic frames as from an instrument whose headers give no gain or read noise."""
    base = dict(shape=SHAPE, n_exposures=1, tilt=3.0, n_sky_lines=40, seed=41)
    base.update(kw)
    f = make_synthetic_longslit(**base)
    return dataclasses.replace(f, science=np.asarray(f.science), arc=np.asarray(f.arc))


def held_out(f):
    t0, t1 = f.trace_rows
    return (t1 + 6, t1 + 16)


def truth_error(f, res, rows):
    sigma = np.sqrt(np.clip(f.sky, 0, None) / f.gain + (f.read_noise / f.gain) ** 2)
    return rms(((res.background - f.sky) / sigma)[:, slice(*rows)])


def fit(f, **kw):
    hold = held_out(f)
    return sw.fit_sky(f.science, f.warp, [tuple(f.trace_rows), hold], **kw), hold


def with_noise(array, gain, read_noise, source):
    return FrameArray(array, gain=gain, read_noise=read_noise, noise_source=source)


# ----------------------------------------------------------------------- the generator
def test_generator_options():
    f = frames(gain=2.5, read_noise=10.0, n_lamps=3, unlit_rows=30, shift=0.7, shift_tilt=0.5)
    assert f.gain == 2.5 and f.arc_lamps.shape == (3,) + SHAPE
    np.testing.assert_allclose(f.arc, f.arc_lamps.sum(axis=0))
    assert f.unlit_rows == [(SHAPE[0] - 30, SHAPE[0])]
    assert np.all(f.sky[:, SHAPE[0] - 30:] == 0)
    # Data in ADU: the lit sky's scatter about the truth is sqrt(sky/g + (rn/g)^2) in ADU.
    rows = slice(0, 20)
    chi = (f.science - f.sky - f.trace)[:, rows] / np.sqrt(f.sky[:, rows] / 2.5 + (10 / 2.5) ** 2)
    assert 0.95 < np.std(chi) < 1.05
    assert f.science_warp is not f.warp
    # The default call is unchanged by the new options (same random draws).
    a = make_synthetic_longslit(shape=(40, 256), seed=3)
    b = make_synthetic_longslit(shape=(40, 256), seed=3, gain=1.0, n_lamps=1)
    np.testing.assert_array_equal(a.science, b.science)
    # unlit_rows as the pair its docstring allows (its check had refused every pair: trial F2).
    g = make_synthetic_longslit(shape=(40, 256), seed=3, unlit_rows=(0, 8))
    assert g.unlit_rows == [(0, 8)] and np.all(g.sky[:, :8] == 0) and np.all(g.sky[:, 8:] > 0)
    with pytest.raises(ValueError, match=r"unlit_rows as a pair must be \(start, stop\)"):
        make_synthetic_longslit(shape=(40, 256), unlit_rows=(8, 4))


# ----------------------------------------------------------------------- noise model
def test_noise_is_estimated_when_unknown():
    f = frames(gain=2.5, read_noise=10.0)
    res, _ = fit(f)
    q = res.quality
    assert q.noise_source == "estimated from the sky residuals"
    assert abs(q.gain / 2.5 - 1) < 0.15, q.gain
    assert abs(q.read_noise / 10.0 - 1) < 0.25, q.read_noise
    assert 0.93 < q.chi_std < 1.07
    assert not q.suspect, q.warnings


@pytest.mark.parametrize("seed", [1, 6])
def test_a_read_noise_hidden_by_a_bright_sky_is_said_to_be_unmeasured(seed):
    """A twilight sky of 1000 e- hides 5 e- of read noise: the estimate lands anywhere from 0 to twice
    the truth (here 7.7 e- and a few thousandths; a trial's 0.004 e- said nothing, only an exact 0 did);
    the source says it is unmeasured."""
    f = frames(shape=(100, 2048), sky_continuum=1000.0, read_noise=5.0, seed=seed)
    q = fit(f)[0].quality
    assert "read noise too small to measure against the sky's noise" in q.noise_source, (q.read_noise, q.noise_source)


@pytest.mark.parametrize("method", ["bspline", "median"])
def test_a_gain_the_sky_cannot_measure_is_said_to_be_a_guess(method):
    """A faint sky of one level (5 e-, no lines; read noise 4 e-), no gain given: any split of its variance
    into photon and read noise fits, and the estimated gain came out 0.55-6.8 for 1 over five seeds (a
    trial), the variance of the source's pixels 0.2-1.8x the truth, "ok". The gain's standard error says so."""
    from specwidgets.core.warp import WarpModel

    rng = np.random.default_rng(1)
    rows = np.arange(100)[:, None]
    trace = 500.0 * np.exp(-0.5 * ((rows - 45) / 2.5) ** 2) * np.ones((1, 1024))
    image = rng.poisson(5.0 + trace).astype(float) + rng.normal(0, 4.0, (100, 1024))
    q = sw.fit_sky(image, WarpModel.from_tilt((100, 1024), 2.5), (33, 58), method=method).quality
    assert q.suspect and any(w.startswith("The gain could not be measured from the sky") for w in q.warnings), (
        q.gain, q.warnings)
    # The same frames with sky lines and a continuum of 60 e- measure it: no such warning (and the
    # estimated gain is right).
    f = frames(seed=2)
    q = sw.fit_sky(f.science, f.warp, f.trace_rows, method=method).quality
    assert not any("The gain could not be measured" in w for w in q.warnings) and abs(q.gain - 1) < 0.15, (
        q.gain, q.warnings)


def test_noise_precedence():
    f = frames(gain=2.5, read_noise=10.0)
    tagged = with_noise(f.science, 2.5, 10.0, "header GAIN/RDNOISE")
    res = sw.fit_sky(tagged, f.warp, f.trace_rows)
    assert (res.gain, res.read_noise, res.quality.noise_source) == (2.5, 10.0, "header GAIN/RDNOISE")
    res = sw.fit_sky(tagged, f.warp, f.trace_rows, gain=2.0, read_noise=9.0)
    assert (res.gain, res.read_noise, res.quality.noise_source) == (2.0, 9.0, "argument")
    # Only the read noise known: the gain is estimated, and the source says so.
    res = sw.fit_sky(f.science, f.warp, f.trace_rows, read_noise=10.0)
    assert res.read_noise == 10.0 and abs(res.gain / 2.5 - 1) < 0.15
    assert "estimated" in res.quality.noise_source and "argument" in res.quality.noise_source
    # Attributes set to None mean "unknown", never zero.
    res = sw.fit_sky(with_noise(f.science, None, None, "frames"), f.warp, f.trace_rows)
    assert res.read_noise > 5 and res.quality.noise_source.startswith("estimated")


def test_wrong_noise_model_is_suspect():
    f = frames(gain=2.5, read_noise=10.0)
    # ADU data fit as if in electrons with no read noise: the scatter is off.
    res = sw.fit_sky(f.science, f.warp, f.trace_rows, gain=1.0, read_noise=0.0)
    assert res.quality.suspect
    assert any("noise model" in w for w in res.quality.warnings)


def _pedestal_warnings(res):
    return [w for w in res.quality.warnings if "photon noise allows" in w]


def test_a_bias_level_left_in_the_frames_is_suspect():
    """300 data units of bias left in (noise estimated): the estimate tilts (read noise 0, gain 4x) and
    the report says so and why; the same frames without it do not get the warning."""
    import re

    f = frames(gain=2.5, read_noise=10.0)
    clean, _ = fit(f)
    assert not _pedestal_warnings(clean)
    assert clean.quality.read_noise > 5
    biased, _ = fit(dataclasses.replace(f, science=f.science + 300.0))
    assert biased.quality.suspect
    [warning] = _pedestal_warnings(biased)
    assert "bias" in warning and "gain=" in warning
    least = float(re.search(r"at least ([0-9.e+]+) data units", warning).group(1))
    assert 150 < least < 330, warning  # 300, less what the read noise's variance hides
    # Its sky is still the sky (with the bias): only the noise model is off.
    unbiased = dataclasses.replace(biased, background=biased.background - 300.0)
    assert truth_error(f, unbiased, held_out(f)) < 1.2 * truth_error(f, clean, held_out(f)) + 0.02


@pytest.mark.parametrize("method", ["bspline", "median"])
def test_frames_differenced_already_say_so(method):
    """An A-B pair (sky subtracted by the nod): the noise model estimated from it was nonsense (a gain of
    8.5 or 0.02) and the warnings blamed hot columns, or there were none (the median of bins: "ok")."""
    # (Seed 42's two exposures' lines differ both ways: the difference's lines go below and above zero.
    # Where they differ one way only, a difference looks like a faint raw sky, and its sky is fit as one.)
    f = frames(n_exposures=2, gain=2.0, read_noise=5.0, seed=42)
    pair = f.science[:1] - f.science[1:] * 1.03  # the sky changed 3 % between the two
    res = sw.fit_sky(pair, f.warp, f.trace_rows, method=method)
    assert res.quality.suspect and "sky-subtracted already" in res.quality.warnings[0]
    # A faint raw sky, read-noise dominated (half its pixels below zero), is not taken for one.
    faint = frames(sky_continuum=1.0, read_noise=10.0)
    assert not any("sky-subtracted" in w for w in sw.fit_sky(faint.science, faint.warp, faint.trace_rows,
                                                               method=method).quality.warnings)



@pytest.mark.parametrize("method", ["bspline", "median"])
def test_saturated_sky_lines_are_suspect(method):
    """Sky lines clipped at a detector's ceiling: the report says so (either method); unclipped, it does not."""
    f = frames()
    clean, _ = fit(f, method=method)
    assert not [w for w in clean.quality.warnings if "saturated" in w]
    ceiling = float(np.percentile(f.science, 99.95))
    clipped, _ = fit(dataclasses.replace(f, science=np.minimum(f.science, ceiling)), method=method)
    assert clipped.quality.suspect
    [warning] = [w for w in clipped.quality.warnings if "saturated" in w]
    assert f"({ceiling:.6g})" in warning


def test_noise_pedestal_sign():
    """Photon and read noise put the variance's line above zero at level 0; a level without light below."""
    from specwidgets.core.sky.quality import noise_bins, noise_pedestal

    rng = np.random.default_rng(2)
    level = rng.uniform(50, 3000, 100_000)
    res = rng.normal(0, np.sqrt(level / 2.5 + 16.0))
    assert noise_pedestal(*noise_bins(level, res))[1] > 5
    pedestal, z = noise_pedestal(*noise_bins(level + 100.0, res))
    assert z < -5 and 40 < pedestal < 80  # 100, less the read noise's 16 * 2.5
    assert noise_pedestal(*noise_bins(level[:600], res[:600])) is None  # 3 bins: no verdict


def test_median_missing_tilted_lines_is_not_blamed_on_the_noise_model():
    """The median of bins misses tilted lines' peaks: the warning names that, not the gain."""
    f = sw.datasets.load_demo()
    locs, _ = sw.find_cal_lines(f.arc)
    warp = sw.generate_warp_model(f.arc, locs)
    res = sw.fit_sky(f.science, warp, [f.trace_rows], method="median", read_noise=f.read_noise)
    (warning,) = res.quality.warnings
    assert "misses the lines' peaks" in warning and "check gain" not in warning
    # A wrong gain is still called one with this method.
    res = sw.fit_sky(f.science, warp, [f.trace_rows], method="median", read_noise=f.read_noise, gain=2.0)
    assert res.quality.suspect and any("check gain" in w for w in res.quality.warnings)
    # And the B-spline on the same frames is not flagged.
    assert not sw.fit_sky(f.science, warp, [f.trace_rows], read_noise=f.read_noise).quality.suspect


@pytest.mark.parametrize("kw", [dict(gradient=(0.5, 1.5)), dict(unlit_rows=40)])
def test_median_estimates_the_noise_on_an_unevenly_lit_slit(kw):
    """ADU without a gain, a slit lit unevenly: the median of bins' noise estimate is about the
    sky as lit row by row (it gave gain 0.16 and 0.04 for 2.5 before), and the fit, which has no
    spatial terms, is flagged as not following the data."""
    f = make_synthetic_longslit(shape=(120, 1024), n_exposures=2, gain=2.5, read_noise=10.0, seed=21, **kw)
    res = sw.fit_sky(np.asarray(f.science), f.warp, [f.trace_rows], method="median")
    assert abs(res.gain / 2.5 - 1) < 0.12 and abs(res.read_noise / 10.0 - 1) < 0.2, (res.gain, res.read_noise)
    assert res.quality.suspect and any("does not follow the data" in w for w in res.quality.warnings)


@pytest.mark.parametrize(
    "kwargs, exc, message",
    [
        (dict(spatial_order=5), ValueError, "0..4"),
        (dict(spatial_order="linear"), ValueError, "auto"),
        (dict(spatial_order=1.5), TypeError, "spatial_order"),
        (dict(gain=0), ValueError, "gain"),
        (dict(read_noise=-1), ValueError, "read_noise"),
        (dict(read_noise="4"), TypeError, "read_noise"),
        (dict(flexure="yes"), ValueError, "flexure"),
        (dict(unlit=True), ValueError, "unlit"),
        (dict(knots="dense"), ValueError, "knots"),
        (dict(knot_threshold=0), ValueError, "knot_threshold"),
        (dict(knot_threshold="4"), TypeError, "knot_threshold"),
    ],
)
def test_bad_options(small, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        sw.fit_sky(small.science, small.warp, small.trace_rows, **kwargs)


# ----------------------------------------------------------------------- slit illumination
def test_unlit_rows_found_and_left_out():
    n_rows = 160
    f = frames(unlit_rows=40, n_exposures=2, shape=(n_rows, 1024))
    res, hold = fit(f)
    assert hold[1] < n_rows - 43  # the held-out rows are lit
    q = res.quality
    assert len(q.unlit_rows) == 1
    start, stop = q.unlit_rows[0]
    # The 3 soft-edge rows above the dark ones may go too.
    assert stop == n_rows and n_rows - 40 - 12 <= start <= n_rows - 40 + 1, q.unlit_rows
    assert truth_error(f, res, hold) < 0.25
    # Left in, the dark rows drag the sky model down.
    kept = sw.fit_sky(f.science, f.warp, [tuple(f.trace_rows), hold], unlit=False, spatial_order=0)
    assert truth_error(f, kept, hold) > 3 * truth_error(f, res, hold)
    assert not q.suspect, q.warnings


def test_a_mask_reaching_past_the_slits_lit_end_says_so():
    """The mask's rows beyond the slit's end (a trial: the star near the end of the slit) got the full sky,
    4-38 sigma RMS off under the mask, with "ok". Data below the sky there, which a source cannot make,
    now make the fit suspect and name the row; a mask within the lit slit does not."""
    f = make_synthetic_longslit(shape=(160, 1024), n_exposures=2, unlit_rows=40, trace_row=60, seed=5, tilt=3.0)
    past = sw.fit_sky(f.science, f.warp, (40, 128))
    said = [w for w in past.quality.warnings if w.startswith("Masked row ")]
    assert past.quality.suspect and said and "darker than the sky model" in said[0], past.quality.warnings
    assert "reaches past the slit's lit part (rows found without sky light: 128:160)" in said[0]
    within = sw.fit_sky(f.science, f.warp, (40, 100))
    assert not within.quality.suspect and not any(w.startswith("Masked row ") for w in within.quality.warnings)


def test_a_dark_row_inside_a_mask_is_not_the_skys_fault():
    """A dead row under the trace, or a nod pair's negative trace under a second mask range: the sky is
    right (0.12-0.13 sigma RMS) and the fit is not suspect (the masked-row check reads only a mask's
    edge by the slit's end: it had flagged these)."""
    f = make_synthetic_longslit(shape=(100, 1024), seed=31)
    a, b = f.trace_rows
    dead = np.array(f.science)
    dead[:, a + 1] = 0.0
    assert not sw.fit_sky(dead, f.warp, (a, b)).quality.suspect
    g = make_synthetic_longslit(shape=(100, 1024), seed=32, trace_row=30)
    nodded = np.array(g.science) - np.roll(g.trace, 40, axis=0)[None]
    res = sw.fit_sky(nodded, g.warp, [(20, 42), (60, 82)])
    assert not res.quality.suspect, res.quality.warnings


def test_unlit_rows_keep_the_light_that_is_not_sky():
    """Scattered light over the whole frame, unlit rows included: there the sky's spectrum, scaled,
    is not all the light (it got ~0.1-0.5 of it: 1.5 sigma RMS here, 6-7 sigma in a trial); a smooth
    term along each unlit row follows it."""
    n_rows = 160
    f = frames(unlit_rows=40, n_exposures=2, shape=(n_rows, 1024))
    cols = np.linspace(0, 1, 1024)
    light = 12.0 * (0.6 + 0.4 * np.cos(2 * np.pi * (cols - 0.3)))[None, None, :] * np.ones((1, n_rows, 1))
    science = f.science + np.random.default_rng(5).poisson(light)
    truth = f.sky + light
    res = sw.fit_sky(science, f.warp, [tuple(f.trace_rows)])
    (start, stop), = res.quality.unlit_rows
    dark = slice(n_rows - 35, n_rows)  # within the unlit rows, past their soft edge
    assert start <= n_rows - 35 and stop == n_rows
    assert not res.quality.suspect, res.quality.summary()
    sigma = np.sqrt(np.clip(truth, 0, None) + f.read_noise**2)
    z = ((res.background - truth) / sigma)[:, dark]
    assert rms(z) < 0.3 and np.abs(z).max() < 2.0, (rms(z), np.abs(z).max())
    # Without such light, nothing is added: a block median of noise alone would scatter by 0.16 sigma.
    plain = sw.fit_sky(f.science, f.warp, [tuple(f.trace_rows)])
    z = ((plain.background - f.sky) / np.sqrt(np.clip(f.sky, 0, None) + f.read_noise**2))[:, dark]
    assert rms(z) < 0.05, rms(z)


def _faint_sky_with_a_pedestal(pedestal, seed=0, read_noise=5.4):
    """A short exposure's faint sky (8 e- of continuum, lines at 0.05 of the synthetic ones) on a 300-row
    slit lit over rows 20-270 (3-row soft edges), and ``pedestal`` e- everywhere (a bias offset, dark
    current, scattered light): the unlit rows hold the pedestal alone, as on the Goodman standard star's
    frame (another night's bias: ~2.4 e- beside ~10 e- of sky). Returns ``(frames, science, truth, lit)``."""
    n_rows = 300
    ill = np.ones(n_rows)
    ill[:20] = ill[270:] = 0.0
    for i in range(3):
        ill[20 + i] = ill[269 - i] = (i + 1) / 4
    f = make_synthetic_longslit(shape=(n_rows, 2048), sky_continuum=1000.0, read_noise=0.0, illumination=ill,
                                trace_flux=300.0, seed=seed)
    continuum = 1000.0 * ill[None, :, None]
    truth = 8.0 / 1000.0 * continuum + 0.05 * (f.sky - continuum) + pedestal
    rng = np.random.default_rng(seed + 7)
    science = rng.poisson(truth + f.trace).astype(float) + rng.normal(0.0, read_noise, truth.shape)
    lit = ill >= 1
    lit[slice(*f.trace_rows)] = False
    return f, science, truth, lit


def _z(res, truth, read_noise=5.4):
    return (res.background - truth) / np.sqrt(np.clip(truth, 0, None) + read_noise**2)


def test_faint_light_in_unlit_rows_is_kept():
    """1 e- in the unlit rows under 5.4 e- of read noise: below the 64-column blocks' threshold
    (1.2 e- here), it was left at 0 (-0.18 sigma over every unlit pixel, "ok"); the run's mean knows
    it to ~0.03 e-."""
    f, science, truth, _ = _faint_sky_with_a_pedestal(1.0)
    res = sw.fit_sky(science, f.warp, [f.trace_rows])
    assert res.quality.unlit_rows == [(0, 23), (267, 300)]
    dark = np.r_[0:20, 270:300]
    err = (res.background - truth)[:, dark]
    assert abs(float(err.mean())) < 0.15, float(err.mean())
    # Pure read noise in unlit rows stays at 0 (no level is made up).
    g, science0, truth0, _ = _faint_sky_with_a_pedestal(0.0)
    assert abs(float((sw.fit_sky(science0, g.warp, [g.trace_rows]).background - truth0)[:, dark].mean())) < 0.05


@pytest.mark.parametrize("pedestal,seed", [(3.5, 0), (5.0, 1), (8.0, 0)])
def test_unlit_rows_above_the_dark_level_are_found_and_left_out(pedestal, seed):
    """A pedestal of 0.3-0.5 of the faint sky keeps the unlit rows above the dark level (0.2 of the sky):
    they went into the first pass, whose spline rang over the line peaks (their faint data weigh most,
    in a narrow band of effective pixels per column), the peaks passed for cosmic rays, and the rows
    were found unlit only at the slit's outermost rows: 0.63-0.80 sigma RMS over the lit rows
    (suspect, for columns and sky rows), or, where they were found, knots for undersampled lines
    (0.105 sigma RMS against 0.05). Now a shelf below half the sky at an end of the slit is unlit, and
    rows found unlit after the first pass make the fit start again without them."""
    f, science, truth, lit = _faint_sky_with_a_pedestal(pedestal, seed)
    res = sw.fit_sky(science, f.warp, [f.trace_rows])
    q = res.quality
    assert q.unlit_rows == [(0, 23), (267, 300)], q.unlit_rows
    z = _z(res, truth)
    assert rms(z[:, lit]) < 0.07, rms(z[:, lit])
    assert abs(float(z[:, np.r_[0:20, 270:300]].mean())) < 0.05
    assert not q.suspect, q.warnings


@pytest.mark.parametrize("low,high", [(15, 100), (30, 100), (0, 100)])
def test_a_shelf_at_the_slits_ends_is_unlit(low, high):
    """Rows' sky scales of 0.35 (a pedestal's) from an end of the slit, past rows without samples there:
    above the dark level, and a quadratic through them bent below their outermost rows, so the
    vignetting-edge test found none (15 + 20 of 120). A dim run inside the slit is not an end."""
    from specwidgets.core.sky.quality import analyse_rows

    ratio = 1.0 + np.random.default_rng(4).normal(0, 0.003, 120)
    ratio[:low] = ratio[high:] = 0.35
    ratio[:3] = np.nan  # (dark rows, dropped before the first pass)
    ratio[50:55] = 0.4
    unlit, _ = analyse_rows(ratio, np.full(120, 1e5), lambda p: 50 * (p + 1))
    assert not unlit[50:55].any() and not unlit[low + 1:high - 5].any()
    assert unlit[max(low, 3):low + 1].all() and unlit[high - 1:].all()
    # A smooth fall to 0.88 at the end (vignetting) stays lit, and so does the seed's gradient
    # (0.5-1.5 along the slit: its first rows are below half the median row's, but with no step).
    smooth = 1.0 - 0.12 * np.linspace(0, 1, 120) ** 2
    assert not analyse_rows(smooth, np.full(120, 1e5), lambda p: 50 * (p + 1))[0].any()
    ramp = np.linspace(0.5, 1.5, 200) * (1 + np.random.default_rng(5).normal(0, 0.003, 200))
    assert not analyse_rows(ramp / 1.02, np.full(200, 1e5), lambda p: 50 * (p + 1))[0].any()


@pytest.mark.parametrize("tilt", [0.3, 2.5])
def test_half_lit_rows_at_the_slit_end_get_the_fits_sky(tilt):
    """The soft edge of unlit rows (lit at 0.3-0.7) with lines whose width changes along the slit:
    the unlit rows' sky was the first pass's, the lines' mean shape (16-20 sigma there, "ok"); now it
    is the final fit's, its spatial terms read at the nearest lit row, scaled to each row."""
    f = frames(unlit_rows=25, n_exposures=2, line_sigma_change=0.3, tilt=tilt, seed=9)
    res = sw.fit_sky(f.science, f.warp, [tuple(f.trace_rows)])
    (start, stop), = res.quality.unlit_rows
    assert start <= SHAPE[0] - 25 and stop == SHAPE[0]
    z = (res.background - f.sky) / np.sqrt(np.clip(f.sky, 0, None) + f.read_noise**2)
    edge = z[:, SHAPE[0] - 28:SHAPE[0] - 22]
    assert np.abs(edge).max() < 3.0 and rms(z) < 0.2, (np.abs(edge).max(), rms(z))
    assert not res.quality.suspect, res.quality.summary()


def test_spatial_order_auto():
    flat = frames()
    res, hold = fit(flat)
    assert res.quality.spatial_order == 0 and res.options["spatial_order"] == 0
    ramp = frames(gradient=(0.5, 1.5))
    res, hold = fit(ramp)
    assert res.quality.spatial_order >= 1
    assert truth_error(ramp, res, hold) < 0.3
    flat_fit = sw.fit_sky(ramp.science, ramp.warp, [tuple(ramp.trace_rows), hold], spatial_order=0)
    assert truth_error(ramp, flat_fit, hold) > 3 * truth_error(ramp, res, hold)
    # An explicit order is used as given.
    res = sw.fit_sky(ramp.science, ramp.warp, ramp.trace_rows, spatial_order=1)
    assert res.quality.spatial_order == 1


# ----------------------------------------------------------------------- flexure
def test_flexure_comes_out_as_if_there_were_none():
    """Science lines 0.7 px right of the arc's warp and tilted 0.7 px more over the slit.

    A shift common to all rows moves the whole sky spectrum, which the fit
    follows by itself; the tilt change is what would leave residuals on
    every line, and what the correction must remove.
    """
    kw = dict(n_exposures=2, n_sky_lines=50, seed=43)
    none = frames(**kw)
    shifted = frames(shift=0.7, shift_tilt=0.7, **kw)
    ref, hold = fit(none)
    res, _ = fit(shifted)
    assert ref.quality.flexure == (0.0, 0.0) and not ref.quality.flexure_applied
    assert res.quality.flexure_applied
    np.testing.assert_allclose(res.quality.flexure, 0.7, atol=0.05)
    err_ref, err = truth_error(none, ref, hold), truth_error(shifted, res, hold)
    assert err < 1.15 * err_ref + 0.01, (err, err_ref)
    off = sw.fit_sky(shifted.science, shifted.warp, [tuple(shifted.trace_rows), hold], flexure=False)
    assert truth_error(shifted, off, hold) > 3 * err
    cards = {key: value for key, value, _ in res.quality.header_cards()}
    assert round(cards["FLEXURE"], 1) == 0.7 and cards["FLEXCORR"] is True


def test_flexure_under_an_illumination_gradient():
    """The same tilt change on a slit lit 0.5-1.5 from end to end: the model that the
    shift is measured against once followed the bright rows' lines, and the
    steps stopped at half the shift (0.37 px; the sky then scored 1.5 times
    the noise floor, and the fit said "ok")."""
    kw = dict(n_exposures=2, n_sky_lines=50, seed=43, gradient=(0.5, 1.5))
    none = frames(**kw)
    shifted = frames(shift=0.7, shift_tilt=0.7, **kw)
    ref, hold = fit(none)
    res, _ = fit(shifted)
    np.testing.assert_allclose(res.quality.flexure, 0.7, atol=0.05)
    assert truth_error(shifted, res, hold) < 1.15 * truth_error(none, ref, hold) + 0.01
    assert not res.quality.suspect, res.quality.warnings


def test_lines_broader_at_one_end_of_the_slit():
    """Sky lines 20 % broader at the top than at the bottom (the camera's focus): the
    rows' brightness cannot show it, so the spatial order is chosen on the lines'
    shape too; the noise is estimated about the final sky (gain 0.78 and read noise
    0 for 1 and 4 before); 40 % is beyond what order 1 follows, and the fit says so."""
    kw = dict(n_exposures=2, n_sky_lines=50, seed=44, shape=(160, 1024))
    even = frames(**kw)
    broad = frames(line_sigma_change=0.2, **kw)
    ref, hold = fit(even)
    res, _ = fit(broad)
    q = res.quality
    assert q.spatial_order >= 1 and ref.quality.spatial_order == 0
    assert truth_error(broad, res, hold) < 1.3 * truth_error(even, ref, hold) + 0.02
    assert abs(q.gain - 1) < 0.08 and abs(q.read_noise / 4.0 - 1) < 0.25, (q.gain, q.read_noise)
    assert not q.suspect and q.line_misfit < 1.15, q.warnings
    worse = frames(line_sigma_change=0.4, **kw)
    q = fit(worse)[0].quality
    assert q.suspect and q.line_misfit > 1.2 and any("misses the lines' shape" in w for w in q.warnings)


def test_a_line_misfit_is_named_before_the_noise_model():
    """Lines 60 % broader at one end of the slit, the true gain and read noise given: the fit misses the
    lines' shape, which raises the scatter at the brightest levels alone. Its first warning names the
    misfit, says the continuum scatters as the noise model says, and offers a spatial order above the
    one used (trial L1: "check gain and read noise" came first for exact ones, and "try spatial_order=2"
    for a fit of order 2); the step in scatter the lines make along the columns is not an amplifier's."""
    f = frames(line_sigma_change=0.6, n_exposures=2, n_sky_lines=50, seed=44, shape=(160, 1024))
    q = sw.fit_sky(f.science, f.warp, f.trace_rows, read_noise=4.0, gain=1.0).quality
    assert q.suspect and q.line_misfit > 1.2
    # (Spatial order 2 is kept since it halves the misfit's excess, 1.86 -> 1.28, and 0.61 -> 0.30 sigma RMS:
    # the scatter at the brightest levels no longer puts the noise model in doubt; a column it still
    # misses is named first.)
    misfit = [w for w in q.warnings if "misses the lines' shape" in w]
    assert misfit, q.warnings
    assert f"try spatial_order={max(2, q.spatial_order + 2)} (this fit used {q.spatial_order})" in misfit[0]
    assert not any("check gain and read noise" in w or "amplifiers" in w for w in q.warnings), q.warnings


# ----------------------------------------------------------------------- quality
@pytest.mark.parametrize("method", ["median", "bspline"])
def test_chi_is_about_one_for_the_true_noise_model(method):
    """``chi_std`` is scaled back for what the fit spent on its own samples: the spread of
    residuals about a 30-sample bin median is ~4 % below the data's (it read 0.959 here before),
    about a B-spline ~1 % (0.991)."""
    f = make_synthetic_longslit(shape=(60, 1024), n_exposures=2, tilt=0.0, n_sky_lines=30, seed=5,
                                sky_continuum=200.0)
    res = sw.fit_sky(f.science, f.warp, [f.trace_rows], method=method, read_noise=f.read_noise, gain=f.gain)
    assert abs(res.quality.chi_std - 1) < 0.015, res.quality.chi_std


def test_quality_of_a_good_fit():
    f = frames(n_exposures=2, cosmic_rays=30)
    res, _ = fit(f)
    q = res.quality
    assert isinstance(q, sw.SkyQuality)
    assert not q.suspect and q.warnings == []
    assert 0 < q.rejected_fraction < 0.01
    assert 0.95 < q.chi_std < 1.05
    assert q.leak < 0.2
    assert "auto" not in res.options.values() or res.options["unlit"] == "auto"
    assert res.options["spatial_order"] == 0 and res.options["knots"] == "adaptive"
    cards = q.header_cards()
    assert all(len(key) <= 8 for key, _, _ in cards)
    keys = {key for key, _, _ in cards}
    assert {"SKYSUSP", "SKYCHI", "SKYREJ", "SKYLEAK", "RDNOISE", "GAIN", "NOISESRC", "FLEXURE"} <= keys
    from astropy.io import fits

    header = fits.Header()
    for card in cards:
        header.append(card)
    assert header["SKYSUSP"] is False


def test_trace_in_sky_rows_is_suspect():
    f = frames()
    res = sw.fit_sky(f.science, f.warp)  # nothing masked: the trace is fit as sky
    assert res.quality.suspect
    assert "light above the sky" in res.quality.warnings[0] and "mask_region=(start, stop)" in res.quality.warnings[0]


@pytest.mark.goodman
def test_an_unmasked_trace_comes_first_among_the_reasons(goodman):
    """The tutorial's call without mask_region, or a mask beside the trace: the trace's light in the sky
    rows is why the lines misfit (this came first, with "try spatial_order=4"), the columns miss and
    the blocks scatter; it is named first."""
    locs, _ = sw.find_cal_lines(goodman.arc, std_variation=200)
    warp = sw.generate_warp_model(goodman.arc, locs)
    for mask, where in [(None, "with no mask"), ((0, 30), "the trace itself if the mask is not over it")]:
        res = sw.fit_sky(goodman.science, warp, mask)
        first = res.quality.warnings[0]
        assert res.quality.suspect and "light above the sky" in first and where in first, res.quality.warnings
        assert any("quality.line_misfit" in w for w in res.quality.warnings[1:])


def test_light_in_the_sky_rows_is_told_by_where_it_lies():
    """Beside the mask: a trace's wings (widen the mask); far from it: another source or unmodelled light."""
    f = frames()
    centre = int(np.argmax(f.trace.sum(axis=-1).ravel()))
    near = sw.fit_sky(f.science, f.warp, [(centre - 3, centre + 4)], read_noise=f.read_noise, gain=f.gain)
    said = [w for w in near.quality.warnings if "light above the sky" in w]
    assert near.quality.suspect and len(said) == 1 and "widen the mask" in said[0], said
    rows = np.arange(f.science.shape[1])
    far_row = 10
    second = f.science + 200 * np.exp(-0.5 * ((rows - far_row) / 2.0) ** 2)[None, :, None]
    far = sw.fit_sky(second, f.warp, [f.trace_rows], read_noise=f.read_noise, gain=f.gain)
    said = [w for w in far.quality.warnings if "light above the sky" in w]
    assert far.quality.suspect and len(said) == 1, said
    assert "not the masked trace's wings" in said[0] and "widen" not in said[0]


def test_light_in_two_places_of_a_stack_names_both():
    """A stack whose first exposure has light across row 10 (a satellite) and whose other two have a
    source at row 100: the warning named the brightest place only (trial P1: a satellite hid five
    exposures' seeing wings). Each place is named with its exposures."""
    f = frames(n_exposures=3, shape=(120, 1024))
    rows = np.arange(f.science.shape[1])
    science = np.array(f.science, dtype=float)
    science[0] += 300 * np.exp(-0.5 * ((rows - 10) / 1.5) ** 2)[:, None]
    science[1:] += 60 * np.exp(-0.5 * ((rows - 100) / 2.0) ** 2)[None, :, None]
    res = sw.fit_sky(science, f.warp, f.trace_rows, read_noise=f.read_noise, gain=f.gain)
    said = [w for w in res.quality.warnings if "holds light above the sky" in w]
    assert len(said) == 2, res.quality.warnings
    assert any("exposure(s) 1 of 3" in w for w in said) and any("exposure(s) 2, 3 of 3" in w for w in said), said


def test_a_cosmic_rays_track_along_a_sky_row_is_not_light_above_the_sky():
    """A ray's track along 100 of a sky row's 1024 pixels: with each pixel counted up to +5 sigma in
    the row's mean chi it read 0.53 ("holds light above the sky", suspect); counted up to +3, 0.34.
    A faint second source spread along the row is still found (the test above)."""
    f = frames(n_exposures=2, tilt=2.5, seed=5)
    science = np.array(f.science, float)
    row = f.trace_rows[1] + 25
    science[0, row, 300:400] += np.random.default_rng(1).uniform(300, 3000, 100)
    q = sw.fit_sky(science, f.warp, [f.trace_rows]).quality
    assert not q.suspect and q.leak < 0.4, q.summary()


def test_median_on_a_lit_gradient_names_the_illumination_not_only_the_noise_model():
    f = frames(gradient=(0.5, 1.5), tilt=0.0, sky_continuum=300.0)
    res = sw.fit_sky(f.science, f.warp, [f.trace_rows], read_noise=f.read_noise, gain=f.gain, method="median")
    text = " ".join(res.quality.warnings)
    assert res.quality.suspect and "its illumination" in text and "not the masked trace's wings" in text


def test_many_rejections_are_suspect():
    f = frames()
    res = sw.fit_sky(f.science, f.warp, f.trace_rows, reject_sigma=1.0)
    assert res.quality.rejected_fraction > 0.2
    assert res.quality.suspect
    assert any("rejected" in w for w in res.quality.warnings)


def test_median_has_a_quality_too():
    f = frames(gain=2.5, read_noise=10.0)
    res = sw.fit_sky(f.science, f.warp, f.trace_rows, method="median")
    q = res.quality
    assert q.rejected_fraction == 0 and q.noise_source.startswith("estimated")
    assert abs(q.gain / 2.5 - 1) < 0.25
    # These lines tilt 3 px over the slit: the median of bins misses their
    # peaks, and says so (not blaming the noise model, which it estimated).
    assert q.suspect and q.line_misfit > 1.5
    (warning,) = q.warnings
    assert "misses the lines' peaks" in warning and "gain" not in warning
    # The default method follows them.
    good = sw.fit_sky(f.science, f.warp, f.trace_rows).quality
    assert not good.suspect and good.line_misfit < 1.1, good.warnings


def test_result_depends_only_on_its_inputs():
    f = frames(n_exposures=2)
    hold = held_out(f)
    direct = sw.fit_sky(f.science, f.warp, [tuple(f.trace_rows), hold])
    sw.fit_sky(f.science, f.warp, [(0, 10)])  # another call in between
    again = sw.fit_sky(f.science, f.warp, [tuple(f.trace_rows), hold])
    np.testing.assert_array_equal(direct.background, again.background)
    assert direct.quality == again.quality


def test_explicit_everything_is_the_plain_fit():
    """All choices given: one fit, uniform knots, as before issue 10."""
    f = frames()
    res = sw.fit_sky(f.science, f.warp, f.trace_rows, read_noise=4.0, gain=1.0, spatial_order=0,
                     flexure=False, unlit=False, knot_spacing=0.5)
    assert res.options["knots"] == "uniform" and res.quality.noise_source == "argument"
    from specwidgets.core.sky.bspline import BSplineSky

    assert isinstance(res.models[0], BSplineSky)


# ----------------------------------------------------------------------- real frames
@pytest.mark.goodman
def test_goodman_defaults_beat_the_median(goodman):
    """Issue 10's held-out protocol on the Goodman crop, seed arguments only."""
    locs, _ = sw.find_cal_lines(goodman.arc)
    model = sw.generate_warp_model(goodman.arc, locs)
    masks = [(20, 100), (104, 114)]
    rows = slice(104, 114)
    data = goodman.science

    def clipped_std(x):
        x = x[np.isfinite(x)]
        keep = np.ones(x.size, bool)
        for _ in range(10):
            mu, sd = x[keep].mean(), x[keep].std()
            keep = np.abs(x - mu) <= 5 * sd
        return x[keep].std()

    floor = clipped_std(np.diff(data[:, rows], axis=1).ravel()) / np.sqrt(2)
    scores = {}
    for method in ("median", "bspline"):
        res = sw.fit_sky(data, model, masks, method=method)
        scores[method] = clipped_std((data - res.background)[:, rows].ravel()) / floor
        assert not res.quality.suspect, (method, res.quality.warnings)
    assert scores["bspline"] <= scores["median"] + 0.005, scores
    assert scores["bspline"] < 1.06, scores


@pytest.mark.goodman
def test_goodman_full_frames_by_default(goodman):
    """Both full Goodman frames with the headers' noise model, as the dashboard fits them: not
    suspect, the sky-line refinement used (its correction reaches 1.4-2 px at the slit's ends: a cap
    there once made the fit suspect and worse, which the crop cannot show; and it predicts held-out
    sky pixels better than the arc's warp), and the held-out rows at the noise floor."""
    from specwidgets.io.sample_data import load_goodman

    full = load_goodman(crop_bds=(0, None))
    locs, _ = sw.find_cal_lines(full.arc)
    model = sw.generate_warp_model(full.arc, locs)
    rows = slice(600, 610)
    res = sw.fit_sky(full.science, model, [(436, 500), (680, 810), (600, 610)], read_noise=full.read_noise, gain=1.0)
    q = res.quality
    assert not q.suspect, q.summary()
    assert q.warp_source == "arc refined on sky lines" and 1.0 < q.warp_shift < 3.0, q.warp_note

    def clipped_std(x):  # (cosmic rays out, as the benchmark's held-out score)
        x = x[np.isfinite(x)]
        keep = np.ones(x.size, bool)
        for _ in range(10):
            keep = np.abs(x - x[keep].mean()) <= 5 * x[keep].std()
        return x[keep].std()

    floor = clipped_std(np.diff(full.science[:, rows], axis=1).ravel()) / np.sqrt(2)
    score = clipped_std((full.science - res.background)[:, rows].ravel()) / floor
    assert 0.9 < score < 1.02, score  # 1.005 here (bench_defaults.py, its own rows and masks: 0.983)


@pytest.mark.goodman
def test_goodman_noise_estimated_is_not_called_a_pedestal(goodman):
    """Real frames (bias subtracted) with their noise model estimated: no pedestal warning, not suspect."""
    locs, _ = sw.find_cal_lines(goodman.arc)
    model = sw.generate_warp_model(goodman.arc, locs)
    res = sw.fit_sky(np.asarray(goodman.science), model, [(20, 100), (104, 114)])
    assert "estimated" in res.quality.noise_source
    assert not _pedestal_warnings(res) and not res.quality.suspect, res.quality.warnings


@pytest.mark.goodman
def test_goodman_seed_flow_chi(goodman):
    """The seed tutorial's flow (mask 20-100, no noise arguments): default chi <= the median's, on the sky rows.

    (On the 12 rows 104-116 alone the two nearly tie since the B-spline's knots are at least a pixel apart
    on this crop, 1.364 against 1.365: knots 0.5 px apart followed the sky rows' noise further, 1.362, and
    missed the sky under the mask by up to 2.7 sigma per column; tests/test_sky_rows_hole.py compares there.)"""
    locs, _ = sw.find_cal_lines(goodman.arc)
    model = sw.generate_warp_model(goodman.arc, locs)
    chi = {}
    for method in ("median", "bspline"):
        res = sw.fit_sky(goodman.science, model, (20, 100), method=method)
        # One noise model for both (the header's), so that the chi values
        # compare the sky models, not two noise estimates.
        sigma = np.sqrt(np.clip(res.background, 0, None) / goodman.gain + (goodman.read_noise / goodman.gain) ** 2)
        c = ((goodman.science - res.background) / sigma)[:, np.r_[0:20, 100:120]]
        c = c[np.abs(c) < 5]
        chi[method] = float(np.std(c))
        chi[method + " quality"] = res.quality.chi_std
    assert chi["bspline"] <= chi["median"], chi
    # The fit's own report on all its sky rows (robust, scaled for what each
    # estimator spent on its samples) says the same.
    assert chi["bspline quality"] <= chi["median quality"], chi


def test_knot_threshold_given_or_chosen_on_held_out_rows(small):
    """Adaptive knots: the threshold is chosen on held-out rows unless given (issue 13)."""
    chosen = sw.fit_sky(small.science, small.warp, small.trace_rows, read_noise=small.read_noise)
    assert chosen.options["knots"] == "adaptive" and chosen.options["knot_threshold"] in (2.0, 4.0, 8.0)
    given = sw.fit_sky(small.science, small.warp, small.trace_rows, read_noise=small.read_noise, knot_threshold=16)
    assert given.options["knot_threshold"] == 16.0
    # Trusting the bias estimate less never adds knots.
    n_chosen = chosen.models[0].n_basis
    assert given.models[0].n_basis <= n_chosen


def test_quality_cards_fit_in_one_card_each_without_astropy_warnings():
    """Long warnings and noise sources are cut so that writing a header warns of nothing."""
    import warnings

    from astropy.io import fits
    from astropy.io.fits.verify import VerifyWarning

    from specwidgets.core.sky.quality import SkyQuality

    q = SkyQuality(0.01, 1.6, 0.0, 4.7, 1.4, "gain: estimated from the sky residuals; read noise: header RDNOISE",
                   warnings=["x" * 200, "The sky's scatter is 'high'" * 5], suspect=True, unlit_rows=[(0, 12), (900, 947)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", VerifyWarning)
        header = fits.Header(q.header_cards())
        text = header.tostring()
    assert all(len(card.image) == 80 for card in header.cards)
    assert header["SKYWARN"] == "x" * 68 and header["SKYSUSP"] is True
    assert "CONTINUE" not in text


def test_row_subsample_reaches_every_row_of_a_regular_warp():
    # Sorted by effective pixel, a straight tilt orders the rows in a
    # lattice: every 4th sample misses rows; one drawn per run of 4 does not.
    from specwidgets.core.sky.api import _scattered_subsample

    shape = (512, 512)
    emap = sw.WarpModel.from_tilt(shape, 8.0).effpix_map()
    rows = np.argsort(emap.T.ravel(), kind="stable") % shape[0]
    assert np.unique(rows[::4]).size < shape[0] - 50
    pick, step = _scattered_subsample(rows.size, rows.size // 4)
    assert step == 4 and np.unique(rows[pick]).size == shape[0]
    assert np.all(np.diff(pick) > 0) and np.array_equal(pick // 4, np.arange(pick.size))
    again, _ = _scattered_subsample(rows.size, rows.size // 4)
    assert np.array_equal(pick, again)  # the same draw for the same inputs


def test_large_frame_rows_all_measured_no_false_cosmic_rays(monkeypatch):
    # Over 400 000 sky samples the rows' brightness is measured on a
    # subsample; a regular one (every 2nd sample here) left 112 of 992 rows
    # without a measurement, and all their samples passed for cosmic rays.
    import specwidgets.core.sky.api as api

    seen = []
    far_above = api._far_above

    def spy(flux, level, ratios, rows, *args):
        hits = far_above(flux, level, ratios, rows, *args)
        seen.append((hits.mean(), np.isnan(ratios[:, np.unique(rows)]).sum()))
        return hits

    monkeypatch.setattr(api, "_far_above", spy)
    f = make_synthetic_longslit(shape=(1024, 512), n_exposures=1, tilt=4.0, n_sky_lines=20, seed=3)
    res = sw.fit_sky(np.asarray(f.science), sw.WarpModel.from_tilt((1024, 512), 4.0), tuple(f.trace_rows),
                     read_noise=f.read_noise, gain=f.gain)
    (hit_fraction, nan_rows), = seen
    assert nan_rows == 0 and hit_fraction < 1e-3, seen
    assert res.samples.index.size > 400_000
    assert not res.quality.suspect, res.quality.warnings


def test_large_frame_with_every_failure_finds_only_the_true_unlit_rows():
    # Above 400 000 samples per exposure the rows' brightness comes from a
    # subsample: a regular one left rows 0-9 unmeasured here, and they
    # passed for unlit.
    f = make_synthetic_longslit(shape=(320, 2048), n_exposures=2, tilt=5.0, n_sky_lines=60, cosmic_rays=200,
                                seed=21, n_lamps=3, unlit_rows=60, gradient=(0.5, 1.5), shift=0.7,
                                shift_tilt=0.7, gain=2.5, read_noise=10.0)
    data, arc = np.asarray(f.science), np.asarray(f.arc)
    locs, _ = sw.find_cal_lines(arc)
    res = sw.fit_sky(data, sw.generate_warp_model(arc, locs), tuple(f.trace_rows))
    assert res.samples.index.size > 400_000
    q = res.quality
    assert len(q.unlit_rows) == 1 and q.unlit_rows[0][1] == 320 and 245 <= q.unlit_rows[0][0] <= 261, q.unlit_rows
    assert abs(res.gain / 2.5 - 1) < 0.1
    lit = np.ones(320, bool)
    lit[slice(*f.trace_rows)] = False
    lit[250:] = False
    sigma = np.sqrt(np.clip(f.sky, 0, None) / f.gain + (f.read_noise / f.gain) ** 2)
    assert rms(((res.background - f.sky) / sigma)[:, lit]) < 0.085
    assert not q.suspect, q.warnings


# ----------------------------------------------------------------------- trial G (2026-11-29)
def _sigma(f):
    return np.sqrt(np.clip(f.sky, 0, None) / f.gain + (f.read_noise / f.gain) ** 2)


@pytest.mark.parametrize("method", ["bspline", "median"])
def test_a_sources_wings_in_the_sky_rows_are_suspect(method):
    """An extended source whose exponential wings reach the sky rows (0.6-1.5 sigma RMS off in a
    trial, reported "ok"): the sky rows brighten towards the mask from both sides."""
    f = frames(n_exposures=2, shape=(160, 1024), seed=7)
    rows, cols = np.arange(160)[:, None], np.arange(1024)[None, :]
    noise = float(np.median(_sigma(f)))
    wings = 5 * noise * np.exp(-np.abs(rows - 80) / 18.0) * (0.8 + 0.2 * np.sin(cols / 150.0))
    mask = [(55, 105)]
    control = sw.fit_sky(f.science, f.warp, mask, read_noise=f.read_noise, gain=f.gain, method=method).quality
    assert not any("brighten towards the mask" in w for w in control.warnings), control.warnings
    q = sw.fit_sky(f.science + wings, f.warp, mask, read_noise=f.read_noise, gain=f.gain, method=method).quality
    said = [w for w in q.warnings if "brighten towards the mask 55:105 from both sides" in w]
    assert q.suspect and len(said) == 1 and "Widen the mask" in said[0], q.warnings


def test_dust_on_the_slit_is_mended_in_the_sky_rows():
    """A notch in the slit's light (dust; no flat field): its rows get their own scale. Before, 10-20 %
    over 2-3 rows left them 18-64 sigma off, reported "ok". Beside the mask it makes the fit suspect."""
    f = frames(n_exposures=2, shape=(160, 1024), seed=8)
    t0, t1 = f.trace_rows
    notch = np.ones(160)
    far = t1 + 40
    notch[far - 1:far + 2] = (0.9, 0.8, 0.9)
    science = f.science * notch[None, :, None]
    truth = f.sky * notch[:, None]
    res = sw.fit_sky(science, f.warp, [f.trace_rows], read_noise=f.read_noise, gain=f.gain)
    err = (res.background - truth) / _sigma(f)
    assert rms(err[:, far - 1:far + 2]) < 0.2 and np.abs(err[:, far - 1:far + 2]).max() < 1.5
    assert not res.quality.suspect, res.quality.warnings
    near = t1 + 3
    notch = np.ones(160)
    notch[near:near + 2] = 0.85
    q = sw.fit_sky(f.science * notch[None, :, None], f.warp, [f.trace_rows], read_noise=f.read_noise,
                   gain=f.gain).quality
    assert q.suspect and any(w.startswith((f"Sky row {near},", f"Sky row {near + 1},"))
                             and "dimmer than the sky model" in w for w in q.warnings), q.warnings


def test_overscan_columns_left_in_are_named():
    """An overscan strip left in the frames: suspect for its edge, and the warning says why (it had named
    only a "hot column" beside it)."""
    f = frames(n_exposures=1, shape=(120, 1060), seed=9)
    science = np.array(f.science)
    science[:, :, 1024:] = np.random.default_rng(2).normal(0, f.read_noise / f.gain, science[:, :, 1024:].shape)
    q = sw.fit_sky(science, f.warp, [f.trace_rows], read_noise=f.read_noise, gain=f.gain).quality
    assert q.suspect and any("Columns 1024-1059 (counting from 0), at the frame's edge, hold no sky light" in w
                             for w in q.warnings), q.warnings


@pytest.mark.parametrize("seed", [1, 2])
def test_a_bright_line_beside_a_dark_edge_is_no_overscan(seed):
    """50 dark columns at the edge and a bright line (12000 e-) 6 px from them, on 300 rows: the last lit
    columns' small misfit (0.3-0.8 sigma) is many standard errors over so many rows, and the block was named
    as an overscan misfitting its neighbours, on a fit right to 0.07 sigma (trial A2)."""
    from specwidgets.io.synthetic import _integrated_lines

    rn, cols, rows = 4.0, 2048, 300
    warp = sw.WarpModel.from_tilt((rows, cols), 1.0)
    edges = warp.edge_map()
    rng = np.random.default_rng(seed + 100)
    at = np.r_[np.sort(rng.uniform(80, 1968, 35)), 1992.0]
    peak = np.r_[np.exp(rng.uniform(np.log(10), np.log(20000), 35)), 12000.0]
    sky = 60.0 * np.diff(edges, axis=1) + _integrated_lines(edges, at, peak * np.sqrt(2 * np.pi), 1.0)
    trace = 2000.0 * np.exp(-0.5 * ((np.arange(rows)[:, None] - rows // 2) / (4 / 2.3548)) ** 2)
    r = np.random.default_rng(seed)
    science = r.poisson(np.clip(sky + trace, 0, None)) + r.normal(0, rn, sky.shape)
    science[:, -50:] = np.random.default_rng(seed + 7).normal(0, rn, (rows, 50))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sw.fit_sky(science[None], warp, [(rows // 2 - 6, rows // 2 + 7)], gain=1.0, read_noise=rn)
    assert not any("at the frame's edge, hold no sky light" in w for w in res.quality.warnings), res.quality.warnings


def test_an_overscan_behind_nan_columns_is_named():
    """The first 10 columns NaN (trimmed), the next 32 without light (an overscan left in): the block was not
    "at the frame's edge", and the fit "ok" with the column beside it 4.7 sigma off under the mask (trial A2)."""
    from specwidgets.io.synthetic import _integrated_lines

    rows, cols, rn = 100, 2048, 4.0
    warp = sw.WarpModel.from_tilt((rows, cols), 2.0)
    edges = warp.edge_map()
    rng = np.random.default_rng(3)
    at, peak = np.sort(rng.uniform(30, 2018, 35)), np.exp(rng.uniform(np.log(10), np.log(20000), 35))
    sky = 60.0 * np.diff(edges, axis=1) + _integrated_lines(edges, at, peak * np.sqrt(2 * np.pi), 1.0)
    trace = 2000.0 * np.exp(-0.5 * ((np.arange(rows)[:, None] - 50) / 1.7) ** 2)
    r = np.random.default_rng(4)
    science = r.poisson(sky + trace) + r.normal(0, rn, sky.shape)
    science[:, :42] = np.random.default_rng(9).normal(0, rn, (rows, 42))
    science[:, :10] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sw.fit_sky(science[None], warp, [(44, 57)], gain=1.0, read_noise=rn)
    assert any("Columns 0-41 (counting from 0), at the frame's edge, hold no sky light" in w
               for w in res.quality.warnings), res.quality.warnings


@pytest.mark.parametrize("exposure", [0, 1])
def test_overscan_columns_left_in_are_named_when_no_column_is(exposure):
    """The same with a warp fitted on an arc that has the strip too: the two columns beside it 4.3 sigma
    off per pixel (a mean chi of 5.5 over the sky rows), and one of the two exposures, with no column
    named, "ok" (trial F1)."""
    f = make_synthetic_longslit(shape=(100, 1024), n_exposures=2, gain=2.0, read_noise=5.0, seed=1)
    rng = np.random.default_rng(3)
    science = np.concatenate([np.asarray(f.science), rng.normal(0, 2.5, (2, 100, 32))], axis=2)
    arc = np.concatenate([np.asarray(f.arc), rng.normal(0, 2.5, (100, 32))], axis=1)
    warp = sw.generate_warp_model(arc, sw.find_cal_lines(arc)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sw.fit_sky(science[exposure:exposure + 1], warp, (25, 66), read_noise=5.0, gain=2.0)
    assert res.quality.suspect and any(
        "Columns 1024-1055 (counting from 0), at the frame's edge, hold no sky light" in w
        for w in res.quality.warnings), res.quality.warnings


def test_fringes_make_the_fit_suspect():
    """Fringes (6 %, a 25 px period drifting along the slit) that no flat field took out.

    The sky model, one spectrum along the slit, cannot follow them: 0.22
    sigma RMS and 2 sigma off, and the fit said "sky fit ok". Averaged in
    8 x 8 blocks the residuals scatter 1.65 times more than noise allows;
    without the fringes, ~1.
    """
    f = make_synthetic_longslit(shape=(100, 800), seed=1, n_exposures=2, n_sky_lines=5)
    locs, _ = sw.find_cal_lines(np.asarray(f.arc))
    warp = sw.generate_warp_model(np.asarray(f.arc), locs)
    rows, cols = np.mgrid[0:100, 0:800]
    fringes = 1 + 0.06 * np.sin(2 * np.pi * (cols / 25.0 + rows / 400.0))
    clean = sw.fit_sky(np.asarray(f.science), warp, f.trace_rows).quality
    assert not clean.warnings, clean.warnings
    q = sw.fit_sky(np.asarray(f.science) * fringes, warp, f.trace_rows).quality
    assert q.suspect
    assert any("averaged in blocks of 8 x 8 pixels scatter 1." in w and "flat field" in w for w in q.warnings), \
        q.warnings


def test_a_pattern_of_ten_pixels_makes_the_fit_suspect():
    """A pattern fixed to the detector with a 10 px period along the dispersion (fringes at high dispersion,
    a readout's pick-up noise), which 8 x 8 blocks average out.

    At 0.45 and 0.6 of the continuum's noise it left the sky 0.31 and 0.40
    sigma RMS off, and the fit said "sky fit ok" (trial G: 0.4-0.7 sigma,
    also with the noise estimated, which took the pattern for read noise).
    Averaged in 4 x 4 and 16 x 2 blocks, less the residuals' mean at each
    effective pixel, the residuals scatter more than noise allows; without
    the pattern, ~1 (the real Goodman frames: 0.88-1.00).
    """
    f = frames(n_exposures=2)
    sigma = np.sqrt(np.clip(f.sky, 0, None) / f.gain + (f.read_noise / f.gain) ** 2)
    rows, cols = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    sky_rows = np.ones(SHAPE[0], bool)
    sky_rows[slice(*f.trace_rows)] = False
    clean = sw.fit_sky(f.science, f.warp, [f.trace_rows]).quality
    assert not clean.suspect, clean.warnings
    for amplitude in (0.45, 0.6):
        pattern = amplitude * np.median(sigma) * np.sin(2 * np.pi * (cols / 10.0 + rows / 200.0))
        res = sw.fit_sky(f.science + pattern, f.warp, [f.trace_rows])
        err = rms(((res.background - f.sky - pattern) / sigma)[:, sky_rows])
        assert err > 0.25  # (what is at stake)
        assert res.quality.suspect, (amplitude, err)
        assert any("blocks of 4 x 4, 16 x 2 or 16 x 1 pixels" in w and "fixed to the detector" in w
                   for w in res.quality.warnings), res.quality.warnings


@pytest.mark.parametrize("seed", [41, 42])
def test_lines_broader_at_both_ends_of_the_slit_are_followed(seed):
    """A focus best at the slit's centre: the lines' width changes as a curve along the slit (+5 % at both
    ends), which the width check's first degree does not see and one more spatial order does not follow.

    The sky missed the lines by 0.64-0.69 sigma RMS with the noise estimated
    (which took the misfit for noise: gain 0.68-0.74 for 1), one of two fits
    "ok" (trial T1: FWHM 2.0 -> 2.15 px, 0.46 sigma, "ok").
    """
    f = frames(shape=(200, 2048), n_sky_lines=60, seed=seed, line_sigma=0.9, line_sigma_curve=0.05,
               sky_continuum=20.0, read_noise=10.0)
    sigma = np.sqrt(np.clip(f.sky, 0, None) / f.gain + (f.read_noise / f.gain) ** 2)
    sky_rows = np.ones(200, bool)
    sky_rows[slice(*f.trace_rows)] = False
    res = sw.fit_sky(f.science, f.warp, [f.trace_rows])
    z = ((res.background - f.sky) / sigma)[:, sky_rows]
    assert rms(z[(f.sky > 10 * np.median(f.sky))[:, sky_rows]]) < 0.3
    assert res.options["spatial_order"] == 2 and not res.quality.suspect, res.quality.warnings
    assert abs(res.gain - 1.0) < 0.1


def test_columns_that_alternate_make_the_fit_suspect():
    """An odd-even column pattern of a readout (+-0.3 of the noise), which any block of even width averages
    out: the sky, one spectrum along the slit, cannot follow it where the lines tilt, and the fit said "ok"
    with the pattern left in the sky rows (trial T1: +-5 e- under 18 e- of read noise, 0.28 sigma RMS)."""
    f = frames(n_exposures=2, shape=(200, 2048), tilt=6.0)
    sigma = np.sqrt(np.clip(f.sky, 0, None) / f.gain + (f.read_noise / f.gain) ** 2)
    sky_rows = np.ones(200, bool)
    sky_rows[slice(*f.trace_rows)] = False
    assert not sw.fit_sky(f.science, f.warp, [f.trace_rows]).quality.suspect
    pattern = 0.3 * np.median(sigma) * np.where(np.arange(2048) % 2, 1.0, -1.0)
    res = sw.fit_sky(f.science + pattern, f.warp, [f.trace_rows])
    assert rms(((res.background - f.sky - pattern) / sigma)[:, sky_rows]) > 0.25  # (what is at stake; clean ~0.1)
    assert res.quality.suspect
    assert any("odd-even" in w for w in res.quality.warnings), res.quality.warnings


def test_a_line_core_the_fit_rejected_whole_is_named():
    """Three columns at 0.85 response (no flat field) under the brightest sky line.

    The fit rejected the line's core wherever it crossed them, then, pulled
    away, the rest of the core: its sky there went to 1.7x the highest data
    value, 2 sigma RMS off over the sky rows, and the warnings named only
    some of the columns (trial G: 2.7x, up to 323 sigma off, columns 919-922
    named of 917-924). Where the fit rejected most samples at an effective
    pixel, it now says so, with the columns that effective pixel crosses.
    """
    f = frames(n_exposures=2)
    peak = int(np.argmax(f.sky[0, 10]))
    science = f.science.copy()
    science[:, :, peak - 1:peak + 2] *= 0.85
    q = sw.fit_sky(science, f.warp, [f.trace_rows]).quality
    assert q.suspect
    said = [w for w in q.warnings if w.startswith("The fit rejected most of the sky samples at effective pixels")]
    assert said, q.warnings
    spans = [tuple(map(int, m)) for m in re.findall(r"columns (\d+)-(\d+) in the sky rows", said[0])]
    assert spans and min(a for a, _ in spans) <= peak - 1 and max(b for _, b in spans) >= peak + 1, said
    clean = sw.fit_sky(f.science, f.warp, [f.trace_rows]).quality
    assert not any("most of the sky samples" in w for w in clean.warnings), clean.warnings


def test_a_cosmic_ray_track_along_a_column_is_not_a_line_core_rejected_whole():
    """One cosmic ray's track down 50 rows of a column, where the lines hardly tilt: it fills a 0.5 px bin
    of effective pixel, and the fit, rightly rejecting it, was called suspect for a line core rejected
    whole (trial V2). A bin's rejected samples must come from two columns or more."""
    f = frames(n_exposures=2, tilt=1.0)
    science = f.science.copy()
    column = 300
    science[0, 2:52, column] += 50.0 * np.sqrt(np.median(f.sky))
    q = sw.fit_sky(science, f.warp, [f.trace_rows]).quality
    assert not any("most of the sky samples" in w for w in q.warnings), q.warnings
    assert not q.suspect, q.warnings


def test_a_gain_given_too_low_is_named_when_the_read_noise_is_estimated():
    """A gain 4x too low (ADU/e- passed as e-/ADU: 0.5 for 2) with the read noise estimated: the read noise
    came out 0 and the warning blamed the warp model and the mask (trial H); the gain is named now."""
    f = frames(gain=2.0, read_noise=5.0)
    ok = sw.fit_sky(f.science, f.warp, [f.trace_rows], gain=2.0).quality
    assert not ok.suspect, ok.warnings
    q = sw.fit_sky(f.science, f.warp, [f.trace_rows], gain=0.5).quality
    assert q.suspect
    assert any("less than the photon noise of the gain given (0.5 e-/unit, from the argument)" in w
               and "is the inverse, 2" in w for w in q.warnings), q.warnings
    assert not any("check the warp model and the mask" in w for w in q.warnings), q.warnings
