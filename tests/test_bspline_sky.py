"""Tests of the Kelson-style B-spline sky fitter on synthetic long-slit frames.

The synthetic sky is a continuum plus Gaussian emission lines whose peaks
span 10 to 20000 e-, integrated over each pixel's width in effective pixels
``e`` on a detector whose lines are tilted by 3 px over the frame, so every
row samples the spectrum at a different sub-pixel phase. Noise is Poisson
plus 4 e- read noise, with cosmic rays added.
"""


import numpy as np
import pytest
from numpy.polynomial import legendre
from scipy.interpolate import BSpline
from scipy.special import erf

from specwidgets.core.sky.bspline import (
    THRESHOLD_CANDIDATES,
    BSplineSky,
    _constant_to_band,
    _general_to_band,
    _normal_pass,
    _normal_pass_constant,
    adaptive_coordinate,
    choose_knot_threshold,
    fit_bspline_sky,
)

READ_NOISE = 4.0
N_ROWS, N_COLS = 100, 1024
HELD_OUT = np.arange(N_ROWS) % 10 == 5  # 10 rows predicted, 90 rows fitted


# ---------------------------------------------------------------------------
# synthetic data
# ---------------------------------------------------------------------------


def pixel_sky(e, lines, continuum=(150.0, 40.0, 300.0)):
    """Integral of the sky spectrum S over each pixel, ``[e - 0.5, e + 0.5]``.

    S(e) = c0 + c1 sin(2 pi e / period) + sum of Gaussians (peak, sigma).
    """
    c0, c1, period = continuum
    lo, hi = e - 0.5, e + 0.5
    k = 2 * np.pi / period
    out = c0 * (hi - lo) + c1 * (np.cos(k * lo) - np.cos(k * hi)) / k
    for mu, peak, sig in lines:
        near = np.abs(e - mu) < 10 * sig + 1  # the rest is below 1e-20
        a = (lo[near] - mu) / (np.sqrt(2) * sig)
        b = (hi[near] - mu) / (np.sqrt(2) * sig)
        out[near] += peak * sig * np.sqrt(np.pi / 2) * (erf(b) - erf(a))
    return out


def make_frame(n_rows=N_ROWS, n_cols=N_COLS, *, tilt=3.0, seed=0, n_lines=70,
               n_cosmics=80, gradient=None):
    """A noisy sky frame with its truth; ``gradient=(g0, g1)`` scales rows."""
    rng = np.random.default_rng(seed)
    mu = rng.uniform(5, n_cols - 5, n_lines)
    peak = 10 ** rng.uniform(1, np.log10(20000), n_lines)
    peak[:3] = [20000, 12000, 10]  # make sure both extremes are present
    sig = rng.uniform(2, 3, n_lines) / (2 * np.sqrt(2 * np.log(2)))  # FWHM 2-3 px
    y, x = np.mgrid[0:n_rows, 0:n_cols].astype(float)
    e = x - tilt * (y - n_rows / 2) / n_rows
    truth = pixel_sky(e.ravel(), list(zip(mu, peak, sig))).reshape(e.shape)
    if gradient is not None:
        g0, g1 = gradient
        truth = truth * (g0 + (g1 - g0) * y / (n_rows - 1))
    flux = rng.poisson(truth) + rng.normal(0, READ_NOISE, truth.shape)
    sigma = np.sqrt(truth + READ_NOISE**2)
    cosmic = np.zeros(truth.shape, bool)
    cosmic.flat[rng.choice(truth.size, n_cosmics, replace=False)] = True
    # At least 15 sigma, so every one is unambiguously an outlier.
    flux[cosmic] += np.maximum(rng.uniform(200, 30000, n_cosmics), 15 * sigma[cosmic])
    return dict(e=e, y=y, truth=truth, flux=flux, cosmic=cosmic, sigma=sigma)


def fit_rows(frame, rows_mask=~HELD_OUT, flux=None, **kwargs):
    """Fit the samples of the rows in ``rows_mask``."""
    flux = frame["flux"] if flux is None else flux
    kwargs.setdefault("read_noise", READ_NOISE)
    return fit_bspline_sky(
        frame["e"][rows_mask].ravel(), flux[rows_mask].ravel(),
        frame["y"][rows_mask].ravel(), **kwargs,
    )


@pytest.fixture(scope="module")
def frame():
    return make_frame(seed=3)


@pytest.fixture(scope="module")
def sky(frame):
    return fit_rows(frame)


# ---------------------------------------------------------------------------
# accuracy
# ---------------------------------------------------------------------------


def test_held_out_rows_are_predicted_to_the_noise(frame, sky):
    e, flux = frame["e"][HELD_OUT], frame["flux"][HELD_OUT]
    good = ~frame["cosmic"][HELD_OUT]
    chi = (flux - sky(e)) / np.sqrt(sky.noise_variance(e) + sky.model_variance(e))
    assert 0.97 <= chi[good].std() <= 1.03
    assert abs(chi[good].mean()) < 0.03


def test_model_matches_the_true_pixel_integrated_sky(frame, sky):
    err = (sky(frame["e"]) - frame["truth"]) / frame["sigma"]
    assert np.sqrt(np.mean(err**2)) <= 0.25
    # The brightest lines (20000 e- peaks) are modelled as well as the rest.
    bright = frame["truth"] > 3000
    assert bright.sum() > 1000
    assert np.sqrt(np.mean(err[bright] ** 2)) <= 0.25


def test_model_variance_describes_the_model_error(frame, sky):
    # If the covariance is right, errors against the truth are ~N(0, 1) in
    # units of sqrt(model_variance).
    err = sky(frame["e"]) - frame["truth"]
    z = err / np.sqrt(sky.model_variance(frame["e"]))
    assert 0.9 < z.std() < 1.1


def test_gain_in_data_units(frame):
    gain = 2.5
    sky = fit_rows(frame, flux=frame["flux"] / gain, gain=gain)
    e, flux = frame["e"][HELD_OUT], frame["flux"][HELD_OUT] / gain
    good = ~frame["cosmic"][HELD_OUT]
    chi = (flux - sky(e)) / np.sqrt(sky.noise_variance(e) + sky.model_variance(e))
    assert 0.97 <= chi[good].std() <= 1.03
    err = (sky(frame["e"]) * gain - frame["truth"]) / frame["sigma"]
    assert np.sqrt(np.mean(err**2)) <= 0.25


# ---------------------------------------------------------------------------
# rejection
# ---------------------------------------------------------------------------


def test_cosmic_rays_are_rejected_and_do_not_bias_the_fit(frame, sky):
    cosmic = frame["cosmic"][~HELD_OUT].ravel()
    assert cosmic.sum() > 50
    assert sky.outliers[cosmic].all()
    # A 4-sigma two-sided clip flags ~6e-5 of good samples by chance.
    assert sky.outliers[~cosmic].mean() < 5e-4
    assert sky.converged

    clean = frame["flux"].copy()
    clean[frame["cosmic"]] = np.nan
    reference = fit_rows(frame, flux=clean)
    diff = (sky(frame["e"]) - reference(frame["e"])) / frame["sigma"]
    assert np.sqrt(np.mean(diff**2)) < 0.01
    assert np.abs(diff).max() < 0.25


def test_rejected_samples_are_readmitted():
    # A bright leak confined to a narrow e-range drags the initial fit up so
    # far that the first rejection also throws out the good samples around
    # it; they must come back once the leak alone is rejected.
    rng = np.random.default_rng(7)
    e = rng.uniform(0, 100, 20000)
    flux = rng.poisson(1000.0, e.size) + rng.normal(0, READ_NOISE, e.size)
    leak = (e > 50) & (e < 50.5) & (rng.random(e.size) < 0.4)
    flux[leak] += 1e6
    first = fit_bspline_sky(e, flux, read_noise=READ_NOISE, max_iterations=1)
    final = fit_bspline_sky(e, flux, read_noise=READ_NOISE)
    good_rejected_first = first.outliers & ~leak
    assert good_rejected_first.sum() > 20
    assert final.outliers[leak].all()
    assert (final.outliers & ~leak).sum() <= 3
    assert final.converged and final.n_iterations > 1
    assert np.abs(final(np.linspace(45, 55, 50)) - 1000).max() < 10


def test_iteration_controls():
    rng = np.random.default_rng(2)
    e = rng.uniform(0, 50, 5000)
    flux = 300 + rng.normal(0, 10, e.size)
    flux[:5] += 1e4
    once = fit_bspline_sky(e, flux, read_noise=10, max_iterations=0)
    assert once.n_iterations == 0 and not once.outliers.any() and not once.converged
    off = fit_bspline_sky(e, flux, read_noise=10, reject_sigma=None)
    assert not off.outliers.any() and off.converged and off.n_iterations == 1
    on = fit_bspline_sky(e, flux, read_noise=10)
    assert on.outliers[:5].all()


# ---------------------------------------------------------------------------
# spatial terms
# ---------------------------------------------------------------------------


def test_spatial_order_1_recovers_a_gradient_along_the_slit():
    frame = make_frame(seed=5, gradient=(0.5, 1.5))
    rows = (0, N_ROWS)
    linear = fit_rows(frame, spatial_order=1, row_range=rows)
    err = (linear(frame["e"], frame["y"]) - frame["truth"]) / frame["sigma"]
    assert np.sqrt(np.mean(err**2)) <= 0.3

    constant = fit_rows(frame, spatial_order=0)
    err0 = (constant(frame["e"]) - frame["truth"]) / frame["sigma"]
    # A sky constant along the slit cannot follow a 0.5-1.5 gradient.
    assert np.sqrt(np.mean(err0**2)) > 3.0


def test_constant_term_is_the_row_average(frame):
    sky = fit_rows(frame, spatial_order=1, row_range=(0, N_ROWS))
    e, s0 = sky.curve(n=500)
    # P_1 is odd about the middle of row_range, so S_0 is the mean of the
    # model at rows symmetric about it.
    ends = 0.5 * (sky(e, 10.0) + sky(e, 90.0))
    np.testing.assert_allclose(s0, ends, rtol=1e-10, atol=1e-8)
    e_row, at_row = sky.curve(n=500, row=25.0)
    np.testing.assert_allclose(at_row, sky(e_row, 25.0))


def test_spatial_terms_stay_finite_when_all_samples_share_a_row():
    rng = np.random.default_rng(4)
    e = rng.uniform(0, 40, 4000)
    flux = 500 + 100 * np.sin(e) + rng.normal(0, 5, e.size)
    sky = fit_bspline_sky(e, flux, np.full(e.size, 30.0), spatial_order=2,
                          row_range=(0, 100), read_noise=5)
    # Nothing constrains how the sky changes along the slit: the guard keeps
    # the solution finite and the model right on the row that was sampled.
    assert np.all(np.isfinite(sky.coefficients))
    assert np.abs(sky(e, 30.0) - (500 + 100 * np.sin(e))).max() < 10


# ---------------------------------------------------------------------------
# inputs, geometry and exactness
# ---------------------------------------------------------------------------


def test_nan_samples_are_ignored(frame):
    rng = np.random.default_rng(11)
    e = frame["e"][~HELD_OUT].ravel().copy()
    flux = frame["flux"][~HELD_OUT].ravel().copy()
    bad_flux = rng.random(e.size) < 0.02
    bad_e = rng.random(e.size) < 0.01
    flux[bad_flux] = np.nan
    e[bad_e] = np.nan
    flux[0] = np.inf
    bad = bad_flux | bad_e
    bad[0] = True

    sky = fit_bspline_sky(e, flux, read_noise=READ_NOISE)
    subset = fit_bspline_sky(e[~bad], flux[~bad], read_noise=READ_NOISE)
    np.testing.assert_array_equal(sky.excluded, bad)
    assert sky.rejected[bad].all()
    assert not sky.outliers[bad].any()
    np.testing.assert_allclose(sky.coefficients, subset.coefficients, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(sky.outliers[~bad], subset.outliers)
    assert np.all(np.isfinite(sky(frame["e"])))


def test_closed_form_basis_matches_scipy(sky):
    e = np.linspace(sky.e_min, sky.e_max, 3001)
    reference = BSpline(sky.knots, sky.coefficients[:, 0], 3)(e)
    np.testing.assert_allclose(sky(e), reference, rtol=1e-12, atol=1e-9)


def test_evaluation_shapes_clamping_and_nan(sky):
    grid = np.arange(12.0).reshape(3, 4) * 50
    assert sky(grid).shape == (3, 4)
    assert sky.model_variance(grid).shape == (3, 4)
    assert sky.noise_variance(grid).shape == (3, 4)
    assert np.ndim(sky(10.0)) == 0
    lo, hi = sky.extent
    assert sky(lo - 50) == sky(lo) and sky(hi + 50) == sky(hi)
    assert np.all(np.isfinite(sky(np.array([-1e6, lo, hi, 1e6]))))
    assert np.isnan(sky(np.array([np.nan, 3.0]))[0])
    e, s0 = sky.curve()
    assert e.shape == s0.shape == (4 * sky.n_intervals + 1,)
    np.testing.assert_allclose(s0, sky(e))


def test_extent_excludes_samples_outside():
    rng = np.random.default_rng(8)
    e = rng.uniform(0, 100, 10000)
    flux = 200 + e + rng.normal(0, 3, e.size)
    sky = fit_bspline_sky(e, flux, read_noise=3, extent=(20, 80), knot_spacing=1.0)
    np.testing.assert_array_equal(sky.excluded, (e < 20) | (e > 80))
    assert sky.extent == (20.0, 80.0)
    assert abs(sky(50.0) - 250) < 1


def test_empty_knot_intervals_do_not_make_the_system_singular():
    rng = np.random.default_rng(9)
    e = rng.uniform(0, 100, 20000)
    e = e[(e < 40) | (e > 50)]  # 20 empty knot intervals
    flux = 1000 + 5 * e + rng.normal(0, 3, e.size)
    for guard in (1e-9, 0.0):  # without the guard, the retry must kick in
        sky = fit_bspline_sky(e, flux, read_noise=3, singular_guard=guard)
        assert np.all(np.isfinite(sky.coefficients))
        outside = (np.linspace(0, 100, 1001) < 39) | (np.linspace(0, 100, 1001) > 51)
        q = np.linspace(0, 100, 1001)[outside]
        assert np.abs(sky(q) - (1000 + 5 * q)).max() < 3
        assert np.all(np.isfinite(sky.model_variance(np.linspace(0, 100, 101))))


def dense_design(sky, e, rows):
    """Dense design matrix from scipy's B-splines and numpy's Legendre."""
    n_terms = sky.spatial_order + 1
    basis = BSpline.design_matrix(np.clip(e, *sky.extent), sky.knots, 3).toarray()
    if n_terms == 1:
        return basis
    r0, r1 = sky.row_range
    ys = 2 * (rows - r0) / (r1 - r0) - 1
    leg = np.stack([legendre.legval(ys, np.eye(n_terms)[p]) for p in range(n_terms)], 1)
    # Unknowns are interleaved by knot: (basis i, term p) -> i * n_terms + p.
    return (basis[:, :, None] * leg[:, None, :]).reshape(e.size, -1)


@pytest.mark.parametrize("spatial_order", [0, 1, 2])
def test_model_variance_matches_a_dense_inverse(spatial_order):
    rng = np.random.default_rng(3 + spatial_order)
    n = 600
    e = rng.uniform(0, 20, n)
    rows = rng.uniform(0, 10, n)
    flux = 100 + 30 * np.sin(e) * (1 + 0.1 * rows) + rng.normal(0, 1.3, n)
    # A huge gain with read_noise = 1.3 * gain makes the noise model
    # var = 1.3**2 (+ model/gain ~ 1e-10 relative), so the weights are known.
    gain = 1e12
    sky = fit_bspline_sky(
        e, flux, rows, spatial_order=spatial_order, row_range=(0, 10),
        knot_spacing=1.0, read_noise=1.3 * gain, gain=gain, reject_sigma=None,
        singular_guard=0.0,
    )
    x = dense_design(sky, e, rows)
    covariance = np.linalg.inv(x.T @ x / 1.3**2)
    expected_coef = np.linalg.solve(x.T @ x, x.T @ flux)
    np.testing.assert_allclose(sky.coefficients.ravel(), expected_coef, rtol=1e-9,
                               atol=1e-9 * np.abs(expected_coef).max())
    eq = rng.uniform(-1, 21, 200)  # includes clamped points beyond both ends
    rq = rng.uniform(0, 10, 200)
    xq = dense_design(sky, eq, rq)
    expected = np.einsum("ij,jk,ik->i", xq, covariance, xq)
    got = sky.model_variance(eq, rq if spatial_order else None)
    np.testing.assert_allclose(got, expected, rtol=1e-8)
    np.testing.assert_allclose(sky(eq, rq if spatial_order else None), xq @ sky.coefficients.ravel(),
                               rtol=1e-12)


def test_fast_kernel_matches_general_kernel(frame):
    # The spatial_order == 0 kernel is a hand-specialised copy of the
    # general one; both must build the same normal equations.
    e = frame["e"].ravel()
    flux = frame["flux"].ravel()
    n_int, lo = 2100, float(e.min())
    coef = np.full(n_int + 3, 300.0)
    noise = (1.0, READ_NOISE**2, 1e-3, 16.0)
    results = []
    for general in (False, True):
        excluded = np.zeros(e.size, bool)
        rejected = np.zeros(e.size, bool)
        band, rhs = np.zeros((4, n_int + 3)), np.zeros(n_int + 3)
        if general:
            acc = np.zeros((n_int, 4, 5))
            counts = _normal_pass(e, flux, np.zeros(e.size), excluded, rejected, lo, 2.0,
                                  n_int, 0.0, 1.0, 1, coef, True, *noise, acc)
            _general_to_band(acc, band, rhs, 1)
        else:
            acc = np.zeros((n_int, 14))
            counts = _normal_pass_constant(e, flux, excluded, rejected, lo, 2.0, n_int,
                                           coef, True, *noise, acc)
            _constant_to_band(acc, band, rhs)
        results.append((band, rhs, rejected, counts))
    (b0, r0, m0, c0), (b1, r1, m1, c1) = results
    np.testing.assert_allclose(b0, b1, rtol=1e-12)
    np.testing.assert_allclose(r0, r1, rtol=1e-12)
    np.testing.assert_array_equal(m0, m1)
    assert c0 == c1


def test_result_object(sky):
    assert isinstance(sky, BSplineSky)
    assert sky.coefficients.shape == (sky.n_basis, 1)
    assert sky.knots.size == sky.n_basis + 4
    assert sky.spatial_order == 0 and sky.row_range is None
    assert sky.n_used == sky.rejected.size - sky.rejected.sum()
    assert "BSplineSky(" in repr(sky)


# ---------------------------------------------------------------------------
# argument errors
# ---------------------------------------------------------------------------


E = np.linspace(0, 10, 200)
F = np.full(200, 100.0)


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((E, F[:-1]), {}, ValueError, "differ in length"),
        ((E, F, E[:-1]), {}, ValueError, "differ in length"),
        ((E, F), {"knot_spacing": -0.5}, ValueError, "knot_spacing"),
        ((E, F), {"knot_spacing": 0}, ValueError, "knot_spacing"),
        ((E, F), {"knot_spacing": np.inf}, ValueError, "knot_spacing"),
        ((E, F), {"knot_spacing": "0.5"}, TypeError, "knot_spacing"),
        ((E, F), {"spatial_order": 1}, ValueError, "needs rows"),
        ((E, F), {"spatial_order": -1}, ValueError, "spatial_order"),
        ((E, F), {"spatial_order": 1.0}, TypeError, "spatial_order"),
        ((E, np.full(200, np.nan)), {}, ValueError, "none of the 200 samples"),
        ((E[:3], F[:3]), {}, ValueError, "too few samples"),
        ((E, F), {"knot_spacing": 0.01}, ValueError, "too few samples"),
        ((E.reshape(10, 20), F.reshape(10, 20)), {}, ValueError, "must be 1D"),
        ((E, ["a"] * 200), {}, TypeError, "flux"),
        ((None, F), {}, TypeError, "effpix"),
        ((E, F), {"gain": 0}, ValueError, "gain"),
        ((E, F), {"read_noise": -1}, ValueError, "read_noise"),
        ((E, F), {"reject_sigma": 0}, ValueError, "reject_sigma"),
        ((E, F), {"max_iterations": -1}, ValueError, "max_iterations"),
        ((E, F), {"max_iterations": 2.5}, TypeError, "max_iterations"),
        ((E, F), {"extent": (5, 1)}, ValueError, "extent"),
        ((E, F), {"extent": 5}, TypeError, "extent"),
        ((E, F, E), {"spatial_order": 1, "row_range": (3, 3)}, ValueError, "row_range"),
        ((E, F), {"min_variance": 0}, ValueError, "min_variance"),
    ],
)
def test_bad_arguments_raise(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        fit_bspline_sky(*args, **kwargs)


def test_spatial_model_needs_rows_to_evaluate():
    rows = np.tile(np.arange(10.0), 20)
    sky = fit_bspline_sky(E, F, rows, spatial_order=1, knot_spacing=1.0)
    with pytest.raises(ValueError, match="rows"):
        sky(E)
    with pytest.raises(ValueError, match="n must be"):
        sky.curve(n=1)


# ---------------------------------------------------------------------------
# adaptive knots (issue 13)
# ---------------------------------------------------------------------------


def _line_sky(e):
    return 60 + 20000 * np.exp(-0.5 * ((e - 40) / 1.1) ** 2) + 300 * np.exp(-0.5 * ((e - 70) / 1.1) ** 2)


def test_adaptive_coordinate_is_fine_on_lines_and_coarse_on_the_continuum():
    e = np.linspace(0, 100, 401)
    u = adaptive_coordinate(e, _line_sky(e), 1.0, 4.0, 50, 0.5, 5.0)
    spacing = 1 / np.gradient(u, e)
    assert np.all(np.diff(u) > 0)
    assert spacing[160] <= 0.8, spacing[160]          # the bright line's core (e = 40)
    assert spacing[280] <= 1.6, spacing[280]          # a faint line still gets knots (e = 70)
    assert spacing[e > 96].min() >= 4.5               # flat continuum far from lines: coarse knots
    assert spacing[np.abs(e - 20) < 3].min() >= 1.9   # nearer the bright line, still 2.5x the line's
    # A larger threshold trusts the bias estimate less: never finer knots.
    u8 = adaptive_coordinate(e, _line_sky(e), 1.0, 4.0, 50, 0.5, 5.0, threshold=8.0)
    assert u8[-1] <= u[-1] + 1e-9


def test_adaptive_coordinate_rejects_bad_arguments():
    e = np.linspace(0, 100, 401)
    with pytest.raises(ValueError, match="threshold"):
        adaptive_coordinate(e, _line_sky(e), 1.0, 4.0, 50, 0.5, 5.0, threshold=0)
    with pytest.raises(ValueError, match="coarse"):
        adaptive_coordinate(e, _line_sky(e), 1.0, 4.0, 50, 0.5, 0.25)


def _rows_of_samples(n_rows=40, n_cols=400, tilt=0.03, seed=3):
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n_rows), n_cols)
    e = np.tile(np.linspace(0, 100, n_cols), n_rows) + rows * tilt
    return e, rows, rng


def test_choose_knot_threshold_scores_and_choice():
    e, rows, rng = _rows_of_samples()
    flux = rng.poisson(_line_sky(e)) + rng.normal(0, 4, e.size)
    best, scores = choose_knot_threshold(e, flux, rows, 1.0, 4.0, 0.5, 5.0)
    assert best in scores and set(scores) == set(THRESHOLD_CANDIDATES)
    # Held-out chi^2 of a good model on Poisson data: about 1.
    assert all(0.9 < s < 1.2 for s in scores.values()), scores
    # Several exposures: knots from their mean, the first one scored.
    two = np.stack([flux, rng.poisson(_line_sky(e)) + rng.normal(0, 4, e.size)])
    best2, scores2 = choose_knot_threshold(e, two, rows, 1.0, 4.0, 0.5, 5.0, candidates=(2.0, 4.0))
    assert best2 in (2.0, 4.0) and set(scores2) == {2.0, 4.0}


def test_choose_knot_threshold_keeps_the_default_unless_another_is_significantly_better():
    e, rows, rng = _rows_of_samples(seed=5)
    flux = rng.poisson(_line_sky(e)) + rng.normal(0, 4, e.size)
    # A huge threshold ignores the bias: 5 px knots across the bright line,
    # which the held-out rows show at once; the default is given up.
    best, scores = choose_knot_threshold(e, flux, rows, 1.0, 4.0, 0.5, 5.0, candidates=(1e6, 4.0), default=1e6)
    assert scores[1e6] > scores[4.0] + 0.05, scores
    assert best == 4.0
    # Two nearly equal candidates: no significant difference, the default stays.
    for default in (3.9, 4.0):
        best, scores = choose_knot_threshold(e, flux, rows, 1.0, 4.0, 0.5, 5.0, candidates=(3.9, 4.0),
                                             default=default)
        assert best == default, scores


def test_choose_knot_threshold_chooses_the_finest_spacing_too():
    """With ``fine_candidates`` the pairs (finest spacing, threshold) compete: a line of 0.7 px sigma
    needs knots finer than 1.5 px, which the held-out rows show (the first pass, whose shape the
    knots follow, on 0.5 px); the first spacing is the default."""
    e, rows, rng = _rows_of_samples(seed=7, tilt=0.05)
    sky = 300 + 20000 * np.exp(-0.5 * ((e - 50) / 0.7) ** 2)
    flux = rng.poisson(sky) + rng.normal(0, 4, e.size)
    best, scores = choose_knot_threshold(e, flux, rows, 1.0, 4.0, 1.5, 5.0, candidates=(2.0, 4.0),
                                         fine_candidates=(1.5, 0.5), first_spacing=0.5)
    assert set(scores) == {(1.5, 2.0), (1.5, 4.0), (0.5, 2.0), (0.5, 4.0)}
    assert best[0] == 0.5 and min(scores[(1.5, 2.0)], scores[(1.5, 4.0)]) > scores[best], scores
    # Equal candidates: the first spacing and the default threshold stay.
    best, _ = choose_knot_threshold(e, flux, rows, 1.0, 4.0, 0.5, 5.0, fine_candidates=(0.5, 0.5))
    assert best == (0.5, 4.0)
    with pytest.raises(ValueError, match="fine_candidates"):
        choose_knot_threshold(e, flux, rows, 1.0, 4.0, 0.5, 5.0, fine_candidates=())


def test_choose_knot_threshold_skip_rows_are_as_nan_flux():
    """Rows left out by ``skip_rows`` (unlit rows) give the scores of those rows' flux set to NaN, with
    and without the random choice of rows above ``max_samples`` and a given extent."""
    e, rows, rng = _rows_of_samples(n_rows=60)
    two = np.stack([rng.poisson(_line_sky(e)) + rng.normal(0, 4, e.size) for _ in range(2)])
    two[0, rng.integers(0, e.size, 50)] = np.nan
    skip = np.zeros(60, bool)
    skip[:7] = skip[50:] = True
    blanked = np.where(skip[rows][None], np.nan, two)
    for extent in (None, (5.0, 95.0)):
        for max_samples in (100_000, 9_000):
            kw = dict(extent=extent, max_samples=max_samples, candidates=(2.0, 4.0, 8.0))
            assert (choose_knot_threshold(e, two, rows, 1.0, 4.0, 0.5, 5.0, skip_rows=skip, **kw)
                    == choose_knot_threshold(e, blanked, rows, 1.0, 4.0, 0.5, 5.0, **kw))


def test_choose_knot_threshold_rejects_bad_input():
    e, rows, rng = _rows_of_samples()
    flux = rng.poisson(_line_sky(e)).astype(float)
    with pytest.raises(ValueError, match="same length"):
        choose_knot_threshold(e, flux[:-1], rows, 1.0, 4.0, 0.5, 5.0)
    with pytest.raises(TypeError, match="rows"):
        choose_knot_threshold(e, flux, rows + 0.5, 1.0, 4.0, 0.5, 5.0)
    with pytest.raises(ValueError, match="even and odd"):
        choose_knot_threshold(e, flux, np.zeros(e.size, int), 1.0, 4.0, 0.5, 5.0)
    with pytest.raises(ValueError, match="candidates"):
        choose_knot_threshold(e, flux, rows, 1.0, 4.0, 0.5, 5.0, candidates=())


def test_adaptive_model_curve_stays_on_the_samples():
    """The display curve of the default (adaptive-knot) fit covers the samples' range only.

    Its knot grid ends on a whole interval past the last sample: points there
    had no effective pixel of their own and showed the unconstrained spline
    (a 3860 e- spike at the Goodman crop's red end, where the sky is ~100 e-).
    """
    import specwidgets as sw
    from specwidgets.io.synthetic import make_synthetic_longslit

    f = make_synthetic_longslit(shape=(60, 700), n_exposures=1, tilt=2.0, n_sky_lines=15, seed=4)
    result = sw.fit_sky(f.science, f.warp, [f.trace_rows], read_noise=f.read_noise)
    assert type(result.models[0]).__name__ == "StretchedBSplineSky"
    e, sky = result.model_curve(0)
    samples = result.samples.effpix
    assert np.all(np.diff(e) > 0)
    assert samples.min() - 1e-9 <= e[0] and e[-1] <= samples.max() + 1e-9
    # The curve reads what the pixels read: the model at those effective pixels.
    np.testing.assert_allclose(sky, result.models[0](e), rtol=1e-9, atol=1e-9)
    assert sky.max() <= 1.2 * np.nanmax(result.background[0])


def test_a_run_of_intervals_the_rejection_empties_is_bridged():
    """Every sample of 3 px rejected (two groups, neither near the first pass's level: a hot column pair,
    or a line core the model misses) left coefficients to the weak curvature guard alone: the sky
    came out 164000 over a level of 200. Such a run is bridged from both sides, and reported as a gap."""
    rng = np.random.default_rng(1)
    e = np.sort(rng.uniform(0, 100, 20000))
    sky = 200 + 50 * np.sin(e / 7)
    flux = sky + rng.normal(0, np.sqrt(sky))
    block = (e > 50) & (e < 53)
    flux[block] += np.where(rng.random(block.sum()) < 0.5, 3000.0, 9000.0)
    model = fit_bspline_sky(e, flux, read_noise=5.0, gain=1.0)
    assert model.outliers[block].mean() > 0.95
    x = np.linspace(49, 54, 51)
    assert np.abs(model(x) - (200 + 50 * np.sin(x / 7))).max() < 300
    assert any(a < 51 and b > 52 for a, b in model.gaps())
    far = (e < 45) | (e > 58)
    assert np.abs(model(e[far]) - sky[far]).max() < 30
