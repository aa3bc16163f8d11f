"""Frames as detectors and pipelines deliver them, which a new user's trial (I1) found wrong or misread.

A slit whose lit edge slants across the frame, a mosaic's gap between CCDs
(filled with 0, or NaN), frames in flux units (~1e-17) or divided by the
exposure time, and an over-subtracted bias. Each test compares the default
fit against the synthetic truth the frames were made from.
"""

import re
import warnings

import numpy as np
import pytest
from astropy.io import fits
from conftest import rms

import specwidgets as sw
from specwidgets.core.frames import FrameArray
from specwidgets.io.synthetic import make_synthetic_longslit


def _sigma(f):
    return np.sqrt(np.clip(f.sky, 0, None) / f.gain + (f.read_noise / f.gain) ** 2)


def _sky_rows(f):
    keep = np.ones(f.sky.shape[1], bool)
    keep[slice(*f.trace_rows)] = False
    return keep


def _quiet_fit(*args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sw.fit_sky(*args, **kw)


@pytest.fixture(scope="module")
def plain():
    return make_synthetic_longslit(shape=(100, 800), n_exposures=2, seed=5, sky_continuum=150.0)


def test_a_slit_edge_that_slants_across_the_frame():
    """The slit's lit ends move 8 and 6 rows across the columns: the rows' median over all columns called the
    half-lit rows lit, and their dark pixels went into the fit (2.1 sigma RMS on the lit sky, 71 sigma, aperture
    +0.65 sigma, "sky fit ok"). The edge is now found in blocks of columns, and the unlit rows' sky scaled along
    them."""
    n_rows, n_cols = 120, 1000
    rows, x = np.arange(n_rows)[:, None], np.arange(n_cols)[None, :] / n_cols
    lo, hi = 10 + 8 * x, 108 + 6 * x
    light = 1 / (1 + np.exp(-(rows - lo) / 0.7)) / (1 + np.exp((rows - hi) / 0.7))
    f = make_synthetic_longslit(shape=(n_rows, n_cols), n_exposures=2, seed=7, illumination=light, trace_row=60,
                                sky_continuum=200.0)
    res = _quiet_fit(f.science, f.warp, f.trace_rows)
    (a0, a1), (b0, b1) = res.quality.unlit_rows
    assert a0 == 0 and a1 >= 19 and b0 <= 108 and b1 == n_rows  # past the edge in every column
    z = (res.background - f.sky) / _sigma(f)
    lit = np.broadcast_to((light > 0.5)[None] & _sky_rows(f)[None, :, None], z.shape)
    assert rms(z[lit]) < 0.3 and np.abs(z[lit]).max() < 8
    t0, t1 = f.trace_rows
    aperture = (res.background - f.sky)[:, t0:t1].sum(axis=1) / np.sqrt((_sigma(f)[:, t0:t1] ** 2).sum(axis=1))
    assert abs(aperture.mean()) < 0.15


@pytest.mark.parametrize("fill", [0.0, 300.0])
def test_a_gap_between_ccds_filled_with_one_value_is_no_data(plain, fill):
    """A mosaic's gaps filled with 0 (or a bias level): with the noise estimated the zeros made the sky 20 sigma
    low, blamed on fringes; with it given, the gap's edges were named hot columns."""
    science = np.array(plain.science)
    science[:, :, 300:330] = fill
    science[:, :, 600:615] = fill
    res = _quiet_fit(science, plain.warp, plain.trace_rows)
    assert res.quality.blank_columns == ((300, 330), (600, 615))
    assert not res.quality.suspect, res.quality.warnings
    assert "columns 300-329, 600-614 hold one value in every row" in res.quality.summary()
    keep = np.ones(science.shape[2], bool)
    keep[300:330] = keep[600:615] = False
    z = ((res.background - plain.sky) / _sigma(plain))[:, _sky_rows(plain)][:, :, keep]
    assert rms(z) < 0.15
    assert np.isnan(res.data[:, :, 300:330]).all() and np.array_equal(science[:, :, 330:600], res.data[:, :, 330:600])


def test_a_gap_of_nan_columns_needs_no_sky(plain):
    """NaN in every row of a mosaic's gap: the sky bridged across it was called "not measured", so every
    gapped frame read as suspect. A gap in the sky rows only (data under the mask) still is."""
    science = np.array(plain.science)
    science[:, :, 300:330] = np.nan
    res = _quiet_fit(science, plain.warp, plain.trace_rows)
    assert not res.quality.suspect, res.quality.warnings
    science = np.array(plain.science)
    science[:, _sky_rows(plain), 300:330] = np.nan
    res = _quiet_fit(science, plain.warp, plain.trace_rows)
    assert any("no usable sample" in w for w in res.quality.warnings)



@pytest.mark.parametrize("noise", [{}, {"read_noise": 5.0, "gain": 2.0}])
def test_nan_columns_at_the_frames_edges_get_the_nearest_sky(noise):
    """Columns of NaN at both edges (a trimmed or vignetted area): the spline ran free over them (-1.7e5 to
    1.4e5 on a sky of 30-3200) and its variance there called a good fit "poorly determined" and "sky-subtracted
    already" (trial F1). The sky there is the nearest sampled one; the fit is "ok"."""
    f = make_synthetic_longslit(shape=(100, 1024), n_exposures=2, gain=2.0, read_noise=5.0, seed=1)
    science = np.array(f.science)
    science[:, :, :15] = np.nan
    science[:, :, 980:] = np.nan
    res = _quiet_fit(science, f.warp, (25, 66), **noise)
    assert not res.quality.suspect, res.quality.warnings
    inside = res.background[:, :, 15:980]
    for edge in (res.background[:, :, :15], res.background[:, :, 980:]):
        assert inside.min() <= edge.min() and edge.max() <= inside.max()
    truth = np.asarray(f.sky)[:, :, 15:980]
    sigma = np.sqrt(np.clip(truth, 0, None) / 2.0 + (5.0 / 2.0) ** 2)
    assert rms((inside - truth) / sigma) < 0.2

def test_the_fit_does_not_depend_on_the_datas_scale(plain):
    """Frames in flux units (~1e-17 per pixel): absolute floors in the knot choice and the noise fit made the
    sky 33 sigma off; the same frames in counts were right."""
    science = np.asarray(plain.science)
    sigma = _sigma(plain)
    errors = []
    for scale in (1.0, 2.0**-60, 1e-18):
        res = _quiet_fit(science * scale, plain.warp, plain.trace_rows)
        errors.append(rms(((res.background / scale - plain.sky) / sigma)[:, _sky_rows(plain)]))
        assert not res.quality.suspect
    assert max(errors) < 1.05 * min(errors) and max(errors) < 0.15


def test_frames_whose_noise_model_is_far_from_their_scatter_are_estimated(plain):
    """Frames divided by the exposure time that keep the header's gain (no BUNIT to say so): the fit weighted
    by it was 2.4 sigma off. The faint sky's scatter tells, before the fit: the noise is estimated instead."""
    exptime = 600.0
    science = FrameArray(np.asarray(plain.science) / exptime, gain=1.0, read_noise=4.0, noise_source="header GAIN")
    with pytest.warns(UserWarning, match=r"noise model \(header GAIN: gain 1 per data unit\) predicts .* times "
                                         r"the variance their faint sky shows: not used"):
        res = sw.fit_sky(science, plain.warp, plain.trace_rows)
    assert res.quality.noise_source.startswith("estimated from the sky residuals (the frames' noise model")
    assert abs(res.gain / exptime - 1) < 0.15
    z = ((res.background * exptime - plain.sky) / _sigma(plain))[:, _sky_rows(plain)]
    assert rms(z) < 0.15
    # The caller's own values are the caller's: kept.
    assert sw.fit_sky(science, plain.warp, plain.trace_rows, gain=1.0, read_noise=4.0).gain == 1.0


def test_a_rate_in_bunit_does_not_take_the_headers_gain(tmp_path, plain):
    """BUNIT = 'adu/s' with the camera's GAIN card: the loader multiplied by GAIN and called the result
    electrons."""
    from specwidgets.io.loading import read_frame

    header = fits.Header({"GAIN": 2.0, "RDNOISE": 4.0, "BUNIT": "adu/s", "EXPTIME": 600.0})
    fits.PrimaryHDU(np.asarray(plain.science[0]) / 1200.0, header).writeto(tmp_path / "rate.fits")
    with pytest.warns(UserWarning, match=r"frames are in 'adu/s' \(BUNIT\), not counts: the header GAIN \(2\) "
                                         r"does not give their noise.*pass gain=GAIN\*EXPTIME"):
        frame = read_frame(tmp_path / "rate.fits")
    assert frame.gain is None and frame.unit == "adu/s" and frame.read_noise == 4.0
    assert read_frame(tmp_path / "rate.fits", gain=1200.0).gain == 1.0  # given: applied


@pytest.mark.parametrize("arc_unit", ["e-/s", None])
def test_batch_outputs_of_a_rate_carry_its_unit(tmp_path, plain, arc_unit):
    """Frames in e-/s (BUNIT), the camera's GAIN kept: the outputs said BUNIT = 'adu' (trial T1). An arc
    in ADU (raw) gives the geometry alone: it does not refuse the run."""
    from specwidgets.batch import run_batch

    header = fits.Header({"GAIN": 2.5, "RDNOISE": 4.0, "BUNIT": "e-/s", "EXPTIME": 600.0})
    fits.PrimaryHDU(np.asarray(plain.science[0]) / 600.0, header).writeto(tmp_path / "sci.fits")
    arc_header = fits.Header({"GAIN": 2.5, "RDNOISE": 4.0, **({"BUNIT": arc_unit} if arc_unit else {})})
    fits.PrimaryHDU(np.asarray(plain.arc) / (600.0 if arc_unit else 2.5), arc_header).writeto(tmp_path / "arc.fits")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_batch([tmp_path / "sci.fits"], [tmp_path / "arc.fits"], masks=[plain.trace_rows], out_dir=tmp_path / "out",
                  workers=1, processes=False, progress=False)
    with fits.open(tmp_path / "out" / "sci_sky.fits") as out:
        assert out["SKY"].header["BUNIT"] == "e-/s" and out["VAR"].header["BUNIT"] == "e-/s**2"
        np.testing.assert_allclose(out["SCI"].data + out["SKY"].data, np.asarray(plain.science[0]) / 600.0,
                                   rtol=1e-5, atol=1e-6)


def test_frames_in_electrons_do_not_take_the_cameras_gain_again(tmp_path, plain):
    """Pipeline frames in electrons (BUNIT = 'ELECTRONS') that keep the camera's GAIN = 2.2: the loader
    multiplied them by it again (2.2x too bright, SKY/truth 2.19 in batch, the fit blaming the gain: trial K1)."""
    from specwidgets.io.loading import input_gain, read_frame

    header = fits.Header({"GAIN": 2.2, "RDNOISE": 4.0, "BUNIT": "ELECTRONS"})
    data = np.asarray(plain.science[0])
    fits.PrimaryHDU(data, header).writeto(tmp_path / "e.fits")
    with pytest.warns(UserWarning, match=r"frames are in electrons \(BUNIT = 'ELECTRONS'\): the header GAIN \(2.2\) "
                                         r"is the camera's, already applied, so it is not applied again"):
        frame = read_frame(tmp_path / "e.fits")
    np.testing.assert_array_equal(frame, data)
    assert frame.gain == 1.0 and frame.unit == "electron" and "BUNIT 'ELECTRONS'" in frame.noise_source
    assert input_gain("generic", frame) == 1.0  # SWINGAIN: nothing was applied
    given = read_frame(tmp_path / "e.fits", gain=2.2)  # the user's word wins
    np.testing.assert_allclose(given, 2.2 * data)


@pytest.mark.parametrize("gain", [2.0, 0.5])
def test_frames_in_electrons_without_bunit_are_told_the_gain_went_twice(tmp_path, gain):
    """Pipeline frames in electrons that keep the camera's GAIN card and no BUNIT (trial F1): read as ADU they
    are multiplied by it, their sky ``gain`` times too high, and the warning said only "check gain and read
    noise". The scatter's variance is about the gain: the warning says the gain went in twice, and how to
    read them; in ADU, with the same card, nothing of the kind is said."""
    f = make_synthetic_longslit(shape=(100, 800), n_exposures=2, seed=5, sky_continuum=150.0, gain=gain,
                                read_noise=4.0)
    for name, factor in (("e", gain), ("adu", 1.0)):
        for k, image in enumerate(f.science):
            fits.PrimaryHDU(np.asarray(image) * factor, fits.Header({"GAIN": gain, "RDNOISE": 4.0})).writeto(
                tmp_path / f"{name}{k}.fits")
    electrons = sw.collect_images_array(tmp_path, "e")
    res = _quiet_fit(electrons, f.warp, f.trace_rows)
    told = [w for w in res.quality.warnings if "check gain and read noise" in w]
    assert res.quality.suspect and len(told) == 1, res.quality.warnings
    assert f"about the gain applied when the frames were read (GAIN = {gain:g} e-/ADU)" in told[0]
    assert "add BUNIT = 'electron' to their headers, or read them with gain=1" in told[0]
    variance = float(re.search(r"their variance is ([\d.]+) times", told[0]).group(1))
    assert 1 / 1.5 < variance / gain < 1.5
    # As they read them: right, and not told.
    fixed = _quiet_fit(sw.collect_images_array(tmp_path, "e", gain=1), f.warp, f.trace_rows)
    assert not fixed.quality.suspect, fixed.quality.warnings
    adu = _quiet_fit(sw.collect_images_array(tmp_path, "adu"), f.warp, f.trace_rows)
    assert not any("second time" in w for w in adu.quality.warnings)


def test_frames_not_flat_fielded_are_not_told_the_gain_went_twice():
    """ADU frames with their true GAIN = 2 card, not flat-fielded (3-4 % pixel to pixel; trial A3): the scatter
    is off the noise model, but its variance ratio (0.68-0.80 of the gain) is not the gain's, and the hint that
    they are in electrons already, which had been given, is not."""
    f = make_synthetic_longslit(shape=(100, 800), n_exposures=2, seed=5, sky_continuum=300.0, gain=2.0,
                                read_noise=4.0)
    flat = 1.0 + 0.04 * np.random.default_rng(8).standard_normal(f.sky.shape[1:])
    science = FrameArray(np.asarray(f.science) * flat * 2.0, gain=1.0, read_noise=4.0, unit="electron",
                         noise_source="header GAIN, header RDNOISE", header=fits.Header({"GAIN": 2.0}))
    res = _quiet_fit(science, f.warp, f.trace_rows)
    assert res.quality.suspect and any("check gain and read noise" in w for w in res.quality.warnings)
    assert not any("second time" in w for w in res.quality.warnings)


@pytest.mark.parametrize("seed,line_sigma,change", [(63, 3.0, 0.4), (52, 2.5, 0.5), (51, 2.5, 0.3)])
def test_broad_lines_whose_width_changes_are_no_extended_source(seed, line_sigma, change):
    """Broad sky lines (FWHM 6-7 px) focused 30-40 % better at one end of the slit, nothing else (trial A3):
    faint lines on their wings, whose window's continuum follows the width, read "changing by 150 %", and
    the fit (0.10-0.16 sigma) was called an extended source. A line within 3 widths of one 3 times brighter
    is not judged."""
    f = make_synthetic_longslit(shape=(200, 1024), tilt=3.0, trace_row=100, trace_flux=3000.0, trace_fwhm=5,
                                trace_bend=2, seed=seed, line_sigma=line_sigma, line_sigma_change=change)
    res = _quiet_fit(f.science, f.warp, f.trace_rows, read_noise=f.read_noise, gain=f.gain)
    z = (np.asarray(res.background) - f.sky) / _sigma(f)
    assert rms(z) < 0.2
    assert not any(w.startswith("Sky lines at effective pixels") for w in res.quality.warnings), res.quality.warnings


def test_a_warp_fit_on_the_sky_lines_is_judged_where_it_is_extrapolated():
    """No arc: the warp is fit on the sky's bright lines, in the red third of the frame, and extrapolated to the
    rest. Every such fit of the Goodman frames was suspect, "the sky lines did not check it", at 0.06-0.08
    sigma RMS of the arc's fit (trial M2). The sky's dips beyond the lines tell: where the sky follows them
    (a tilt the extrapolation gets right), nothing is said; where it misses them (the tilt there is another),
    the warp's extrapolation is named first."""
    f = make_synthetic_longslit(shape=(100, 1200), tilt=6.0, n_sky_lines=0, sky_continuum=300.0, seed=3)
    rows = np.zeros(100, bool)
    rows[slice(*f.trace_rows)] = True
    for left_tilt, named in ((6.0, False), (0.0, True)):
        left = sw.WarpModel.from_tilt((100, 1200), left_tilt).effpix_map()
        weight = 1 / (1 + np.exp(-(np.arange(1200) - 650) / 30.0))[None, :]
        emap = left * (1 - weight) + f.warp.effpix_map() * weight
        sky = 300.0 * (1.0 - sum(0.5 * np.exp(-0.5 * ((emap - c) / 1.5) ** 2) for c in np.arange(40.0, 600.0, 40.0)))
        sky = sky + sum(3000 * np.exp(-0.5 * ((emap - c) / 1.3) ** 2) for c in np.arange(760.0, 1150.0, 35.0))
        rng = np.random.default_rng(4)
        science = (rng.poisson(sky + np.asarray(f.trace)) + rng.normal(0.0, f.read_noise, sky.shape))[None]
        res = _quiet_fit(science, None, f.trace_rows, read_noise=f.read_noise, gain=f.gain)
        assert res.quality.warp_source == "sky lines"
        said = [w for w in res.quality.warnings if w.startswith("The warp model, fit on the science frame's own")]
        assert bool(said) == named, res.quality.warnings
        if named:
            assert res.quality.suspect and res.quality.warnings[0] is said[0]
        else:
            assert rms(((np.asarray(res.background)[0] - sky) / np.sqrt(sky + f.read_noise ** 2))[~rows]) < 0.2


def test_a_sky_below_zero_says_the_bias_was_over_subtracted():
    """A bias 50 ADU too high: the low blue sky went negative and the fit blamed dead columns and the gain."""
    f = make_synthetic_longslit(shape=(100, 800), n_exposures=2, seed=9, sky_continuum=15.0, gain=2.0)
    res = _quiet_fit(np.asarray(f.science) - 25.0, f.warp, f.trace_rows)
    assert res.quality.suspect
    assert res.quality.warnings[0].startswith("The sky found is below zero in ")
    assert "bias over-subtracted" in res.quality.warnings[0]
    plain = _quiet_fit(np.asarray(f.science), f.warp, f.trace_rows)
    assert not any("below zero" in w for w in plain.quality.warnings)


@pytest.mark.parametrize("bias,says", [(-5.0, True), (5.0, False), (0.0, False)])
def test_a_faint_sky_below_zero_as_a_whole_says_so(bias, says):
    """2 e- of sky less 5 e- of another night's bias (read noise 5 e-): the sky sits below zero as a
    whole but within 3 read-noise sigma of it; its unlit rows were half found and the lit rows 0.4 sigma
    RMS off under "ok" (trial F2). A median below zero by a tenth of the read noise names the bias."""
    f = make_synthetic_longslit(shape=(300, 2048), sky_continuum=40.0, read_noise=0.0, seed=0, unlit_rows=30)
    rng = np.random.default_rng(1000)
    sky = np.asarray(f.sky)[0] * 0.05
    data = rng.poisson(sky + f.trace).astype(float) + rng.normal(0, 5.0, sky.shape) + bias
    q = _quiet_fit(data, f.warp, [f.trace_rows]).quality
    said = [w for w in q.warnings if w.startswith("The sky found is below zero in ")]
    assert bool(said) == says and (q.suspect if says else True), q.warnings
    assert not says or "bias over-subtracted" in said[0] and q.warnings[0] is said[0]


def test_an_extended_source_in_the_sky_rows_is_named(plain):
    """A nebula filling the slit, brighter at one end (x3.3): its lines in the sky rows were fit as sky and
    carried under the mask, 51 sigma off, "sky fit ok" (trial I2). The night sky's own lines change along the
    slit together; these do not."""
    emap = plain.warp.effpix_map()
    rows = np.arange(emap.shape[0])[:, None]
    nebula = sum(peak * np.exp(-0.5 * ((emap - centre) / 1.5) ** 2)
                 for centre, peak in ((210.0, 900.0), (226.0, 2500.0), (242.0, 800.0), (520.0, 600.0), (532.0, 500.0)))
    nebula = (nebula + 40.0) * (0.3 + 0.7 * rows / emap.shape[0])  # its lines and its continuum
    science = np.asarray(plain.science) + np.random.default_rng(2).poisson(nebula)[None]
    res = _quiet_fit(science, plain.warp, plain.trace_rows)
    assert res.quality.suspect
    (warning,) = [w for w in res.quality.warnings if w.startswith("Sky lines at effective pixels")]
    assert "extended source in the sky rows" in warning
    named = [float(v) for v in warning.split("effective pixels ")[1].split(" change")[0].replace("and more", "")
             .split(",") if v.strip()]
    assert named and all(min(abs(v - c) for c in (210, 226, 242, 520, 532)) < 3 for v in named)
    assert not _quiet_fit(np.asarray(plain.science), plain.warp, plain.trace_rows).quality.warnings


def test_an_extended_source_on_lines_that_hardly_tilt_is_named():
    """The same nebula where the lines move 0.3 px over the slit: the check reads the model on the rows' own
    pixels there (between them it is the fit's guess; trial S1), and still names the nebula's lines."""
    f = make_synthetic_longslit(shape=(100, 800), n_exposures=2, seed=5, sky_continuum=150.0, tilt=0.3)
    emap = f.warp.effpix_map()
    rows = np.arange(emap.shape[0])[:, None]
    nebula = sum(peak * np.exp(-0.5 * ((emap - centre) / 1.5) ** 2)
                 for centre, peak in ((210.0, 900.0), (226.0, 2500.0), (242.0, 800.0), (520.0, 600.0), (532.0, 500.0)))
    nebula = (nebula + 40.0) * (0.3 + 0.7 * rows / emap.shape[0])
    science = np.asarray(f.science) + np.random.default_rng(2).poisson(nebula)[None]
    res = _quiet_fit(science, f.warp, f.trace_rows)
    (warning,) = [w for w in res.quality.warnings if w.startswith("Sky lines at effective pixels")]
    named = [float(v) for v in warning.split("effective pixels ")[1].split(" change")[0].replace("and more", "")
             .split(",") if v.strip()]
    assert named and all(min(abs(v - c) for c in (210, 226, 242, 520, 532)) < 3 for v in named)
    assert not _quiet_fit(np.asarray(f.science), f.warp, f.trace_rows).quality.warnings


@pytest.mark.parametrize("tilt", [3.0, 0.3])
def test_an_extended_source_on_a_slit_lit_unevenly_is_named(tilt):
    """The nebula on a slit lit 1.3 -> 0.7 along it (trial A2): every sky line changed by ~60 % with the light,
    and a line was odd only beyond 4 times that, so the nebula's lines (x20 along the slit) passed, "ok", the
    sky 0.5-1.7 sigma off under the mask. Each row's lines are taken over their median there first: the
    light's change is no change."""
    light = np.linspace(1.3, 0.7, 100)[:, None] * np.ones((1, 800))
    f = make_synthetic_longslit(shape=(100, 800), n_exposures=2, seed=5, sky_continuum=150.0, tilt=tilt,
                                illumination=light)
    emap = f.warp.effpix_map()
    rows = np.arange(emap.shape[0])[:, None]
    nebula = sum(peak * np.exp(-0.5 * ((emap - centre) / 1.5) ** 2)
                 for centre, peak in ((210.0, 900.0), (226.0, 2500.0), (242.0, 800.0), (520.0, 600.0), (532.0, 500.0)))
    nebula = nebula * (0.05 + 0.95 * rows / emap.shape[0])
    science = np.asarray(f.science) + np.random.default_rng(2).poisson(nebula)[None]
    res = _quiet_fit(science, f.warp, f.trace_rows)
    assert res.quality.suspect
    (warning,) = [w for w in res.quality.warnings if w.startswith("Sky lines at effective pixels")]
    named = [float(v) for v in warning.split("effective pixels ")[1].split(" change")[0].replace("and more", "")
             .split(",") if v.strip()]
    assert named and all(min(abs(v - c) for c in (210, 226, 242, 520, 532)) < 3 for v in named)
    # The sky alone on that slit: its lines follow the light together.
    alone = _quiet_fit(np.asarray(f.science), f.warp, f.trace_rows).quality
    assert not any(w.startswith("Sky lines at effective pixels") for w in alone.warnings), alone.warnings


def test_a_galaxy_whose_continuum_rises_along_the_slit_is_named():
    """A galaxy filling the slit, its lines and its continuum (5 -> 80 e-/px) rising along it (trial A2): a
    guard against lines on a bright neighbour's changing wings, judged against no change at all, left every
    galaxy line out, and the sky, 5 sigma off under the mask, was "ok". Its continuum rises under all its
    lines alike."""
    from specwidgets.io.synthetic import _integrated_lines

    rows, cols, rn = 100, 2048, 4.0
    warp = sw.WarpModel.from_tilt((rows, cols), 0.3)
    edges = warp.edge_map()
    rng = np.random.default_rng(0)
    at = np.linspace(80, 1960, 30)
    rng.shuffle(at)
    peak = np.exp(rng.uniform(np.log(200), np.log(15000), 30))
    sky = 60.0 * np.diff(edges, axis=1) + _integrated_lines(edges, at, peak * np.sqrt(2 * np.pi), 1.0)
    galaxy = _integrated_lines(edges, np.array([400.0, 600.0, 900.0, 1100.0, 1300.7, 1700.0]),
                               np.full(6, 300 * np.sqrt(2 * np.pi)), 1.0) * np.linspace(0.05, 1.0, rows)[:, None]
    galaxy = galaxy + np.linspace(5, 80, rows)[:, None]
    trace = 2000.0 * np.exp(-0.5 * ((np.arange(rows)[:, None] - 50) / 1.7) ** 2)
    r = np.random.default_rng(5)
    science = (r.poisson(sky + galaxy + trace) + r.normal(0, rn, sky.shape))[None]
    res = _quiet_fit(science, warp, [(44, 57)], gain=1.0, read_noise=rn)
    assert any(w.startswith("Sky lines at effective pixels") and "extended source" in w for w in res.quality.warnings)


def test_a_poor_warp_that_the_sky_lines_cannot_check_makes_the_sky_suspect():
    """A warp the arc's own lines call poor (warp_order too low for them), on a sky whose lines cannot be
    traced (a faint continuum, a moonlit blue arm): the fit said "ok" at 0.19 sigma RMS, 3 sigma (trial I2)."""
    f = make_synthetic_longslit(shape=(100, 1200), tilt=(3.0, 1.0, 1.5), n_arc_lines=40, n_sky_lines=0,
                                sky_continuum=300.0, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warp = sw.generate_warp_model(np.asarray(f.arc), sw.find_cal_lines(np.asarray(f.arc))[0])
    assert warp.is_poor
    # Absorption dips (a moonlit sky's solar lines) too faint to trace, deep enough for the warp to matter.
    emap = f.warp.effpix_map()
    dips = 1.0 - sum(0.25 * np.exp(-0.5 * ((emap - c) / 1.5) ** 2) for c in np.arange(60.0, 1150.0, 45.0))
    rng = np.random.default_rng(4)
    science = rng.poisson(f.sky * dips[None] + f.trace[None]) + rng.normal(0.0, f.read_noise, f.sky.shape)
    for method in ("bspline", "median"):
        res = _quiet_fit(science, warp, f.trace_rows, method=method)
        assert res.quality.suspect and res.quality.warnings[0].startswith("The warp model is probably poor (")
    # A featureless continuum does not care about the warp: nothing to say.
    assert not _quiet_fit(f.science, warp, f.trace_rows).quality.warnings
    # Where the sky's bright lines are traced, they check (and correct) it: no such warning.
    g = make_synthetic_longslit(shape=(100, 1200), tilt=(3.0, 1.0, 1.5), n_arc_lines=40, seed=3)
    res = _quiet_fit(g.science, warp, g.trace_rows)
    assert not any(w.startswith("The warp model is probably poor") for w in res.quality.warnings)


def test_a_gain_given_for_frames_in_electrons_is_named(plain):
    """The page's Gain field filled with the detector's gain (1.5) on frames the loader had put in electrons:
    the variance came out 0.63 of the truth under "ready" (trial J1)."""
    science = FrameArray(np.asarray(plain.science), gain=1.0, read_noise=4.0, noise_source="header GAIN",
                         unit="electron")
    res = sw.fit_sky(science, plain.warp, plain.trace_rows, gain=1.5)
    assert res.quality.suspect
    assert res.quality.warnings[0].startswith("The frames are in electrons (their gain was applied when they were "
                                              "read), yet gain=1.5 was given")
    assert not sw.fit_sky(science, plain.warp, plain.trace_rows, gain=1.0).quality.suspect


def test_cosmic_rays_do_not_set_the_sky_of_rows_beside_a_slit_bar():
    """A bar across the slit (rows 135-139 dark, 134 and 140 dimmed) and a cosmic ray on three of their
    brightest sky pixels: each unlit row's sky scale was a plain least-squares sum, which took the ray for
    sky (a lit row 1.33x the true sky, 12.5 sigma, "ok": trial K1; here 18.6 sigma beside the bar, 95.6 in
    it). The pixels far from the first scaled sky are left out of the scale."""
    light = np.ones(200)
    light[135:140] = 0.02
    light[134] = light[140] = 0.6
    f = make_synthetic_longslit(shape=(200, 1024), n_exposures=1, seed=7, illumination=light, n_sky_lines=30)
    science = np.array(f.science, dtype=float)
    sky = np.asarray(f.sky)[0]
    for row in (134, 137, 140):
        science[0, row, np.argsort(sky[row])[-3:]] += 3000.0
    res = _quiet_fit(science, f.warp, f.trace_rows)
    assert (134, 141) in [tuple(r) for r in res.quality.unlit_rows]
    z = (res.background[0] - sky) / np.sqrt(np.clip(sky, 0, None) / f.gain + (f.read_noise / f.gain) ** 2)
    for row in range(133, 142):
        assert np.sqrt(np.mean(z[row] ** 2)) < 0.3 and np.abs(z[row]).max() < 3.0, row


def test_light_in_one_exposure_of_a_stack_is_named_with_its_exposure():
    """A star in one exposure of a stack fit together: every file of the run was suspect for "Sky row 87 holds
    light", a row empty in all the others, with no word of which exposure holds it (trial K3)."""
    f = make_synthetic_longslit(shape=(120, 800), n_exposures=3, seed=5, n_sky_lines=20)
    science = np.array(f.science, dtype=float)
    rows = np.arange(120)[:, None]
    row = 15 if f.trace_rows[0] > 40 else 100
    science[2] += 60.0 * np.exp(-0.5 * ((rows - row) / 1.5) ** 2)
    res = _quiet_fit(science, f.warp, f.trace_rows)
    light = [w for w in res.quality.warnings if "holds light above the sky" in w]
    assert light and "holds light above the sky in exposure(s) 3 of 3 (counting from 1)" in light[0], light


def test_scattered_light_peaking_away_from_the_mask_is_not_a_sources_wings():
    """Smooth scattered light whose broad bump peaks 25 rows beside the mask: the sky follows it, but the fit
    was suspect and said "a source's wings ... widen the mask" (trial K1). Wings rise up to the mask's edge;
    this light falls towards it on one side."""
    f = make_synthetic_longslit(shape=(200, 1024), n_exposures=2, seed=4, n_sky_lines=30)
    lo, hi = f.trace_rows
    rows, cols = np.arange(200)[:, None], np.arange(1024)[None, :]
    bump = 40 * (0.6 + 0.4 * np.exp(-((rows - (lo - 25)) / 70.0) ** 2)) * (0.5 + cols / 1024)
    science = np.asarray(f.science, float) + np.random.default_rng(1).poisson(np.broadcast_to(bump, f.science.shape))
    res = _quiet_fit(science, f.warp, f.trace_rows, read_noise=f.read_noise, gain=f.gain)
    assert not any("brighten towards the mask" in w for w in res.quality.warnings), res.quality.warnings


def test_two_amplifiers_with_one_gain_applied_are_named(plain):
    """A frame read through two amplifiers whose gains differ by 1.5x, one gain applied to both (a header
    with one GAIN card): half the frame is 0.67x its electrons, and its scatter 0.67x the noise model's.
    The fit is suspect and says why first (trial L2: "ok" once the seam column was set to NaN, as the
    bad-column warning advised, with half the sky 3.3 sigma RMS off); the same frame read right is not."""
    data = np.array(plain.science)
    data[:, :, 400:] *= 1.2 / 1.8
    res = _quiet_fit(data, plain.warp, plain.trace_rows, read_noise=plain.read_noise, gain=plain.gain)
    assert res.quality.suspect
    first = res.quality.warnings[0]
    assert "amplifiers of different gains" in first, res.quality.warnings
    where = re.search(r"left of about column (\d+)", first)
    assert where and abs(int(where.group(1)) - 400) <= 8, first  # (columns are read in groups of 4)
    clean = _quiet_fit(plain.science, plain.warp, plain.trace_rows, read_noise=plain.read_noise, gain=plain.gain)
    assert not any("amplifiers" in w for w in clean.quality.warnings), clean.quality.warnings


def test_a_chance_step_on_few_sky_rows_is_not_an_amplifiers():
    """Twenty sky rows (ten at each end of a 120-row slit): the blocks of the chi's scatter are noisy, and a
    chance step of 1.29x near one end was taken for a seam between amplifiers (trial O1: good fits made
    suspect). A step must stand clear of the blocks' own scatter."""
    f = make_synthetic_longslit(seed=1, shape=(120, 1024), tilt=1.5, n_exposures=1)
    res = sw.fit_sky(f.science, f.warp, (10, 110))
    assert not any("amplifiers" in w for w in res.quality.warnings), res.quality.warnings


def test_cards_of_several_amplifiers_are_named(tmp_path):
    """GAINA/GAINB (and RDNOISEA/B) of different values and BIASSECA/B, which the generic reader does not
    read: one warning says the frame has several amplifiers and what to do (trial L2: only GAINA was
    suggested, which applied to both halves gave a wrong half; the overscans went unsubtracted unsaid)."""
    header = fits.Header({"GAINA": 1.2, "GAINB": 1.8, "RDNOISEA": 4.0, "RDNOISEB": 5.0,
                          "BIASSECA": "[1:4,1:20]", "BIASSECB": "[37:40,1:20]"})
    fits.writeto(tmp_path / "sci_1.fits", np.full((20, 40), 100.0, np.float32), header)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = sw.collect_images_array(tmp_path, "sci_")
    texts = [str(w.message) for w in caught]
    assert any("GAINA = 1.2, GAINB = 1.8, RDNOISEA = 4, RDNOISEB = 5: the gains of several amplifiers" in t
               for t in texts), texts
    assert any("BIASSECA, BIASSECB: overscan sections of several amplifiers" in t for t in texts), texts
    assert not any("pass gain=1.2" in t or "pass read_noise=4" in t for t in texts), texts
    assert frame.unit == "adu"


@pytest.mark.parametrize("gain_b,says", [(1.6, True), (1.4, False)])
def test_amplifier_gains_beside_the_gain_read_are_named(tmp_path, gain_b, says):
    """GAIN = 1.4 beside GAINA = 1.4 and GAINB = 1.6 (trial M2): GAIN was applied to the whole frame, the B
    amplifier's half 12.5 % off in electrons, and nothing was said (the amplifiers' warning came only when
    no gain was read). Equal amplifier gains are one gain: nothing to say."""
    header = fits.Header({"GAIN": 1.4, "GAINA": 1.4, "GAINB": gain_b, "RDNOISE": 4.0})
    fits.writeto(tmp_path / "sci_1.fits", np.full((20, 40), 100.0, np.float32), header)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = sw.collect_images_array(tmp_path, "sci_")
    said = [str(w.message) for w in caught if "the gains of several amplifiers" in str(w.message)]
    assert frame.unit == "electron" and bool(said) == says, [str(w.message) for w in caught]
    if says:
        assert "GAINA = 1.4, GAINB = 1.6 beside the gain read (1.4)" in said[0] and "up to 14 % off" in said[0]
    # Frames in electrons (BUNIT) that kept their amplifiers' cards had each one applied (trial A4).
    header["BUNIT"] = "electron"
    header["GAIN"] = 1.0
    fits.writeto(tmp_path / "e_1.fits", np.full((20, 40), 100.0, np.float32), header)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sw.collect_images_array(tmp_path, "e_")
    assert not any("the gains of several amplifiers" in str(w.message) for w in caught)
    # The user's own gain is the user's word: nothing to say.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sw.collect_images_array(tmp_path, "sci_", gain=1.4)
    assert not any("the gains of several amplifiers" in str(w.message) for w in caught)


def _integer_adu_frame(seed, sky_e, gain=3.0, read_noise=4.0, line_scale=0.05):
    """A short exposure in whole ADU (gain 3): a sky of ``sky_e`` e- (a third to two thirds of an ADU),
    its lines at 5 % of the synthetic ones. Returns ``(frames, data, truth, sigma)`` in ADU."""
    f = make_synthetic_longslit(shape=(300, 2048), sky_continuum=sky_e / line_scale, read_noise=0.0, seed=seed)
    rng = np.random.default_rng(1000 + seed)
    sky = np.asarray(f.sky)[0] * line_scale
    data = np.round((rng.poisson(sky + f.trace).astype(float) + rng.normal(0, read_noise, sky.shape)) / gain)
    return f, data, sky / gain, np.sqrt(sky + read_noise**2) / gain


@pytest.mark.parametrize("seed,sky_e", [(1, 1.0), (1, 1.5), (1, 2.0)])
def test_faint_whole_adu_frames_are_read_as_their_float_frames(seed, sky_e):
    """Rows' medians of 0 or 1 ADU: with the median row's at 1, every row at 0 was "unlit" (24 runs,
    211 rows inside the slit: 0.115 sigma RMS against 0.049); and neighbouring rows' differences near
    whole steps read as a line misfit (1.21, suspect, on a fit as good as the float frame's). Trial F2."""
    f, data, truth, sigma = _integer_adu_frame(seed, sky_e)
    res = _quiet_fit(data, f.warp, [f.trace_rows], gain=3.0, read_noise=4.0)
    q = res.quality
    assert q.unlit_rows == [], q.unlit_rows
    assert q.line_misfit < 1.1 and not q.suspect, (q.line_misfit, q.warnings)
    assert rms(((res.background[0] - truth) / sigma)[_sky_rows(f)]) < 0.06


def test_faint_lines_of_an_arc_of_another_night_get_the_sky_line_correction():
    """Faint lines (a short exposure) whose tilt differs from the arc's along the dispersion (an arc of
    another night). The correction traced on them was declined: the sky-pixel test's fits had no noise
    floor, and a faint sky's pixels at or below zero weighed ~1000 times the rest (the corrected warp
    scored 6.6 against the arc's 3.3). The sky lines under the mask were 1-2.4 sigma off per column,
    "ok"; with the noise estimated, the rows' scales all came out near -2, every row was "unlit" and
    fit_sky raised "none of the 0 samples is usable". Trial F2."""
    f = make_synthetic_longslit(shape=(300, 2048), sky_continuum=100.0, read_noise=0.0, seed=1, shift_tilt=(0, 3.0))
    rng = np.random.default_rng(1001)
    truth = np.asarray(f.sky) * 0.05
    data = rng.poisson(truth + f.trace[None]).astype(float) + rng.normal(0, 5.0, truth.shape)
    res = _quiet_fit(data, f.warp, [f.trace_rows])
    q = res.quality
    assert q.warp_source == "arc refined on sky lines" and not q.suspect, (q.warp_source, q.warnings)
    z = (res.background - truth) / np.sqrt(truth + 25.0)
    a, b = f.trace_rows
    assert np.abs(z[0, a:b].mean(axis=0)).max() < 0.6 and rms(z[0][_sky_rows(f)]) < 0.07


def test_rows_scaled_to_a_sky_gone_negative_are_not_all_unlit():
    from specwidgets.core.sky.quality import analyse_rows

    ratio = -2.2 + np.random.default_rng(2).normal(0, 0.1, 300)
    unlit, _ = analyse_rows(ratio, np.full(300, 1e4), lambda p: 100 * (p + 1))
    assert not unlit.any()


@pytest.mark.parametrize("seed,sky_e", [(21, 1.0), (85, 2.0)])
def test_whole_adu_under_one_adu_of_read_noise(seed, sky_e):
    """5 e-/ADU, 3 e- of read noise (0.6 ADU), a sky of 0.2-0.4 ADU, four exposures: most neighbouring
    pixels differ by 0, so did the MAD, and the first pass was weighted with no read noise (the rows'
    scales 0.0007-0.08 for 1): 9-11 runs of rows inside the slit "unlit", 0.19-0.96 sigma RMS
    (trial R3). A clipped plain variance where the MAD is 0."""
    f = make_synthetic_longslit(shape=(120, 1024), n_exposures=4, seed=seed, gain=5.0, sky_continuum=sky_e,
                                read_noise=3.0)
    data = np.round(np.asarray(f.science, float))
    res = _quiet_fit(data, f.warp, f.trace_rows)
    assert res.quality.unlit_rows == [], res.quality.unlit_rows
    assert rms(((res.background - f.sky) / _sigma(f))[:, _sky_rows(f)]) < 0.13


def test_half_a_slit_lit_less_is_no_shelf():
    """A slit lit at 0.4 over 40 % of its length is lit (its sky has lines): taken for unlit rows, the
    half beside a trace at the step put the sky under the mask 7 sigma off (trial R3)."""
    from specwidgets.core.sky.quality import analyse_rows

    ratio = np.where(np.arange(120) < 48, 0.4, 1.0) * (1 + np.random.default_rng(3).normal(0, 0.003, 120))
    unlit, _ = analyse_rows(ratio, np.full(120, 1e5), lambda p: 50 * (p + 1))
    assert not unlit[:48].any(), np.flatnonzero(unlit)


def test_a_row_far_above_the_sky_is_not_said_to_be_3_sigma():
    """A row 300 e- above the sky (a hot row, or a bright source's continuum; trial M2): each pixel's chi is
    clipped at 3 in the row means, so the warning said "3.00 sigma per pixel on average" (here 2.99) of a row
    ~25 sigma up. It says the row is at the clip."""
    f = make_synthetic_longslit(shape=(100, 800), n_exposures=2, seed=5, sky_continuum=150.0)
    science = np.asarray(f.science).copy()
    science[:, 85] += 300.0
    res = _quiet_fit(science, f.warp, f.trace_rows, read_noise=f.read_noise, gain=f.gain)
    (said,) = [w for w in res.quality.warnings if w.startswith("Sky row 85 ")]
    assert "(3 sigma or more in nearly every pixel)" in said and "sigma per pixel on average" not in said
