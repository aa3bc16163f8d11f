"""The specialised kernels of the default sky path agree with their general forms to the last bit.

They exist only for speed (issue 13): the default ``fit_sky`` must give the
same backgrounds with them as without.
"""

import warnings

import numpy as np
import pytest

import specwidgets as sw
from specwidgets.core.sky import bspline as bs
from specwidgets.core.sky import quality as sq


def _row_profile_numpy(rows, flux, model, variance, n_rows, clip=5.0, n_iter=3):
    """The NumPy form ``row_profile`` had before its loop went to numba."""
    ok = np.isfinite(flux) & np.isfinite(model) & (variance > 0)
    w = np.where(ok, 1.0 / np.where(ok, variance, 1.0), 0.0)
    f = np.where(ok, flux, 0.0)
    m = np.where(ok, model, 0.0)
    wm = w * m
    keep = ok
    for it in range(n_iter + 1):
        num = np.bincount(rows, np.where(keep, wm * f, 0.0), minlength=n_rows)
        info = np.bincount(rows, np.where(keep, wm * m, 0.0), minlength=n_rows)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(info > 0, num / info, np.nan)
        if it == n_iter:
            break
        scale = np.nan_to_num(ratio, nan=1.0)[rows]
        var_row = variance * np.maximum(np.abs(scale), 0.05)
        keep = ok & ((f - scale * m) ** 2 <= clip**2 * np.maximum(var_row, variance * 0.05))
    return ratio, info


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_row_profile_matches_numpy_form(rng):
    n, n_rows = 40_000, 60
    rows = rng.integers(0, n_rows - 2, n)  # the last rows have no samples
    model = rng.uniform(-5, 800, n)
    model[rng.random(n) < 0.01] = np.nan
    variance = np.abs(model) / 1.3 + 20
    variance[rng.random(n) < 0.01] = 0.0
    lit = rng.uniform(0.2, 1.3, n_rows)
    flux = model * lit[rows] + rng.normal(0, 1, n) * np.sqrt(np.nan_to_num(variance))
    flux[rng.random(n) < 0.02] += 5e3  # cosmic rays, clipped
    flux[rng.random(n) < 0.01] = np.nan
    ratio, info = sq.row_profile(rows.astype(np.int32), flux, model, variance, n_rows)
    ref_ratio, ref_info = _row_profile_numpy(rows, flux, model, variance, n_rows)
    np.testing.assert_array_equal(ratio, ref_ratio)
    np.testing.assert_array_equal(info, ref_info)
    assert np.isnan(ratio[-2:]).all() and (info[-2:] == 0).all()
    # And it measures the illumination it was given.
    np.testing.assert_allclose(ratio[:-2], lit[:-2], rtol=0.02)


def test_row_profile_rejects_rows_out_of_range():
    with pytest.raises(ValueError, match="rows must lie in"):
        sq.row_profile(np.array([0, 5]), np.ones(2), np.ones(2), np.ones(2), 3)


def test_far_above_matches_numpy_form(rng):
    n_exp, n, n_rows = 2, 30_000, 50
    rows = rng.integers(0, n_rows, n).astype(np.int32)
    level = rng.uniform(-10, 1000, (n_exp, n))
    level[0, ::50] = np.nan
    ratios = rng.uniform(0, 1.5, (n_exp, n_rows))
    ratios[:, ::7] = np.nan
    lit = level * np.nan_to_num(ratios, nan=0.0)[:, rows]
    flux = lit + rng.normal(0, 30, (n_exp, n))
    flux[:, ::13] += 1e3
    flux[1, ::77] = np.nan
    ref = (flux - lit) ** 2 > 64 * (np.clip(lit, 0, None) / 1.4 + (4.7 / 1.4) ** 2)
    got = sq._far_above(flux, level, ratios, rows, 1.4, 4.7, 8.0)
    np.testing.assert_array_equal(got, ref)
    assert 0 < got.sum() < got.size


def test_row_chi_means_match_bincount(rng):
    n_rows, n_cols = 40, 300
    index = np.sort(rng.choice(n_rows * n_cols, 8000, replace=False)).astype(np.int32)
    background = rng.uniform(-2, 500, n_rows * n_cols)
    flux = background[index] + rng.normal(0, 10, index.size)
    flux[::97] = np.nan
    flux[::31] += 1e3  # clipped at +3 (ROW_CHI_HIGH)
    var = np.clip(background[index], 0, None) / 1.4 + (4.7 / 1.4) ** 2
    chi = (flux - background[index]) / np.sqrt(var)
    finite = np.isfinite(chi)
    rows = index // n_cols
    ref_n = np.bincount(rows, finite, minlength=n_rows)
    ref_sums = np.bincount(rows, np.clip(np.where(finite, chi, 0.0), -5, sq.ROW_CHI_HIGH), minlength=n_rows)
    counts, sums = sq._row_chi_means(index, n_cols, n_rows, background, flux, 1.4, 4.7)
    np.testing.assert_array_equal(counts, ref_n)
    np.testing.assert_array_equal(sums, ref_sums)


@pytest.mark.parametrize("n_terms", [1, 2, 3])
def test_scalar_evaluation_matches_general_kernel(rng, n_terms):
    n_int = 40
    coef = rng.normal(size=(n_int + 3) * n_terms)
    e = rng.uniform(-3, 25, 20_000)
    e[::97] = np.nan
    y = rng.uniform(0, 100, e.size)
    general, small = np.empty(e.size), np.empty(e.size)
    bs._evaluate(e, y, 0.0, 20.0, 2.0, n_int, 3.0, 0.02, n_terms, coef, False, general)
    bs._evaluate_small(e, y, 0.0, 20.0, 2.0, n_int, 3.0, 0.02, n_terms, coef, small)
    np.testing.assert_array_equal(small, general)


@pytest.mark.parametrize("n_terms", [2, 3])
@pytest.mark.parametrize("use_model", [False, True])
def test_scalar_normal_pass_matches_general_kernel(rng, n_terms, use_model):
    n, n_int = 20_000, 30
    e = np.sort(rng.uniform(0, 15, n))
    y = rng.uniform(0, 100, n)
    f = rng.uniform(50, 500, n)
    f[::53] += 5e3  # rejected against the model
    excluded = rng.random(n) < 0.02
    coef = rng.uniform(50, 500, (n_int + 3) * n_terms)
    noise = (1.0 / 1.4, (4.7 / 1.4) ** 2, 0.1, 16.0)
    n_loc = 4 * n_terms
    rej_general, rej_scalar = excluded.copy(), excluded.copy()
    acc_general = np.zeros((n_int, n_loc, n_loc + 1))
    acc_scalar = np.zeros((n_int, n_loc * (n_loc + 1) // 2 + n_loc))
    out_general = bs._normal_pass(e, f, y, excluded, rej_general, 0.0, 2.0, n_int, 0.0, 0.02, n_terms,
                                  coef, use_model, *noise, acc_general)
    out_scalar = bs._SCALAR_PASSES[n_terms](e, f, y, excluded, rej_scalar, 0.0, 2.0, n_int, 0.0, 0.02,
                                            coef, use_model, *noise, acc_scalar)
    assert out_scalar == out_general
    np.testing.assert_array_equal(rej_scalar, rej_general)
    n_coef = (n_int + 3) * n_terms
    band_g, rhs_g = np.empty((n_loc, n_coef)), np.empty(n_coef)
    band_s, rhs_s = np.empty((n_loc, n_coef)), np.empty(n_coef)
    bs._general_to_band(acc_general, band_g, rhs_g, n_terms)
    bs._scalar_to_band(acc_scalar, band_s, rhs_s, n_terms)
    np.testing.assert_array_equal(band_s, band_g)
    np.testing.assert_array_equal(rhs_s, rhs_g)
    if use_model:
        assert rej_scalar[::53].any()


@pytest.mark.parametrize("n, n_bins", [(12_000, 24), (12_007, 24), (401, 2)])
def test_binned_medians_match_per_bin_medians(rng, n, n_bins):
    level = np.sort(rng.uniform(0, 3000, n))
    residual = rng.standard_t(3, n) * 5
    chunks = np.array_split(np.arange(n), n_bins)
    lv, var, counts = sq._binned_medians(level, residual, n_bins)
    np.testing.assert_array_equal(lv, [np.median(level[c]) for c in chunks])
    np.testing.assert_array_equal(var, [sq._robust_var(residual[c]) for c in chunks])
    np.testing.assert_array_equal(counts, [c.size for c in chunks])


def _median_of_bins_brute(e, flux, edges):
    """Per pixel: np.median of the finite samples with L <= e < R (the two straddling an empty bin)."""
    n_rows, n_cols = edges.shape[0], edges.shape[1] - 1
    out = np.full((flux.shape[0], n_rows, n_cols), np.nan)
    counts = np.zeros((n_rows, n_cols), int)
    for y in range(n_rows):
        for x in range(n_cols):
            a = np.searchsorted(e, edges[y, x], "left")
            b = np.searchsorted(e, edges[y, x + 1], "left")
            if b <= a:
                a, b = max(a - 1, 0), min(a + 1, e.size)
            counts[y, x] = b - a
            for k in range(flux.shape[0]):
                v = flux[k, a:b]
                v = v[np.isfinite(v)]
                if v.size:
                    out[k, y, x] = np.median(v)
    return out, counts


@pytest.mark.parametrize("tilt, n_rows", [(0.0, 30), (2.5, 37), (9.0, 64)])
def test_median_of_bins_matches_per_bin_medians(rng, tilt, n_rows):
    """The sliding bitmap walk gives each bin's median exactly: ties, NaN, even counts, empty bins."""
    from specwidgets.core.sky.median import median_of_bins

    n_cols = 45
    rows = np.arange(n_rows)[:, None]
    cols = np.arange(n_cols)[None, :]
    emap = cols + tilt * (rows / (n_rows - 1) - 0.5) + 0.01 * np.sin(cols)  # effective pixel of each pixel
    edges = np.concatenate([emap[:, :1] - 0.5, 0.5 * (emap[:, 1:] + emap[:, :-1]), emap[:, -1:] + 0.5], axis=1)
    keep = np.ones(n_rows, bool)
    keep[n_rows // 3: n_rows // 3 + 5] = False  # a masked band
    e = emap[keep].ravel()
    order = np.argsort(e, kind="stable")
    e = e[order]
    flux = rng.integers(0, 40, size=(3, e.size)).astype(float)  # many ties
    flux[0, rng.random(e.size) < 0.05] = np.nan
    flux[2, : e.size // 2] = np.nan  # half the samples missing: empty and all-NaN bins
    # Bins past the data at both ends (empty: the straddling samples decide).
    edges = np.concatenate([edges[:, :1] - 3.0, edges, edges[:, -1:] + 3.0], axis=1)
    got, counts = median_of_bins(e, flux, edges)
    want, want_counts = _median_of_bins_brute(e, flux, edges)
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_array_equal(got, want)


def test_running_median_matches_scipy_median_filter(rng):
    """The preview's profile smoothing: scipy's values (ties, even sizes, rows shorter than the window)."""
    from scipy.ndimage import median_filter

    from specwidgets.core.extract import running_median_rows

    for shape, size in [((3, 50), 7), ((5, 700), 31), ((4, 10), 31), ((2, 40), 30), ((3, 9), 1), ((1, 1), 5),
                        ((6, 100), 2), ((4, 300), 4)]:
        x = rng.normal(size=shape)
        x[:, ::7] = 0.0  # ties
        x[:, 1::9] = np.inf
        np.testing.assert_array_equal(running_median_rows(x, size),
                                      median_filter(x, size=(1, size), mode="nearest"))
    nan = rng.normal(size=(3, 40))
    nan[1, 5] = np.nan  # handed to scipy: a NaN has no place in the sorted window
    np.testing.assert_array_equal(running_median_rows(nan, 5), median_filter(nan, size=(1, 5), mode="nearest"))
    with pytest.raises(ValueError, match="size"):
        running_median_rows(nan, 0)


def test_exposures_side_by_side_give_the_serial_fit(monkeypatch):
    """Short-slit exposures fit in threads (``map_in_threads``): the one-thread result, to the last bit."""
    import specwidgets as sw
    from specwidgets.core import _threads
    from specwidgets.io.synthetic import make_synthetic_longslit

    f = make_synthetic_longslit(shape=(60, 512), n_exposures=3, tilt=2.0, n_sky_lines=20, cosmic_rays=10, seed=4)
    warp = sw.WarpModel.from_tilt(f.science.shape[1:], 2.0)
    fits = {}
    for n in (2, 1):  # two threads even on a one-core machine
        monkeypatch.setattr(_threads, "_n_threads", lambda n=n: n)
        fits[n] = sw.fit_sky(f.science, warp, [f.trace_rows])
    np.testing.assert_array_equal(fits[2].background, fits[1].background)
    np.testing.assert_array_equal(fits[2].rejected, fits[1].rejected)
    assert fits[2].quality == fits[1].quality


def test_map_in_threads_keeps_order_runs_nested_work_serially_and_raises(monkeypatch):
    import threading

    from specwidgets.core import _threads

    monkeypatch.setattr(_threads, "_n_threads", lambda: 2)
    assert _threads.map_in_threads(lambda x: x * x, range(9)) == [x * x for x in range(9)]
    # Inside, run_in_threads runs its tasks one after the other in the calling thread.
    idents = _threads.map_in_threads(lambda _: _threads.run_in_threads([threading.get_ident] * 2), range(2))
    assert all(a == b for a, b in idents), idents
    assert idents[0][0] != idents[1][0]  # the two items did run in two threads

    def boom(x):
        if x == 3:
            raise ValueError("exposure 3")
        return x

    with pytest.raises(ValueError, match="exposure 3"):
        _threads.map_in_threads(boom, range(5))


def test_sky_samples_gather_in_chunks_matches_fancy_indexing(monkeypatch):
    """``sky_samples`` gathers in chunks, the exposures side by side: NumPy's fancy-indexing values."""
    from specwidgets.core.sky import api
    from specwidgets.core.warp import WarpModel

    monkeypatch.setattr(api, "_GATHER_CHUNK", 37)  # many chunks, the last one short
    rng = np.random.default_rng(3)
    stack = rng.normal(size=(3, 20, 50))
    warp = WarpModel.from_tilt((20, 50), 1.5)
    masked = np.zeros(20, bool)
    masked[5:9] = True
    s = api.sky_samples(stack, warp, masked)
    order = warp._cache["order"]
    index = order[~masked[order // 50]]
    np.testing.assert_array_equal(s.index, index)
    np.testing.assert_array_equal(s.effpix, warp.effpix_map().ravel()[index])
    np.testing.assert_array_equal(s.flux, stack.reshape(3, -1)[:, index])


def test_map_in_threads_keeps_to_numbas_thread_budget():
    """A batch worker sets numba to one thread: the work stays in its thread."""
    import threading

    import numba

    from specwidgets.core._threads import map_in_threads

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        assert set(map_in_threads(lambda _: threading.get_ident(), range(4))) == {threading.get_ident()}
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("n_exp", [1, 3])
def test_median_sky_spectrum_in_column_blocks_matches_the_whole_band(monkeypatch, n_exp):
    """The sky-line guesses' spectrum, by column blocks in threads: the whole band's medians, NaN and all."""
    from specwidgets.core.sky import sky_warp

    monkeypatch.setattr(sky_warp, "_SPECTRUM_BLOCK_COLS", 7)  # many blocks, the last one short
    rng = np.random.default_rng(5)
    stack = rng.normal(100.0, 5.0, size=(n_exp, 40, 60))
    stack[:, 10:13, 20:24] = np.nan  # some columns hold NaN in a few rows ...
    stack[:, :, 50] = np.nan  # ... one holds nothing else
    rows = np.r_[0:8, 14:40]  # an even count: the mean of the two middle values
    band = stack[:, rows].mean(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the all-NaN column
        expected = np.nanmedian(band.T, axis=1)
        got = sky_warp._median_sky_spectrum(stack, rows)
    np.testing.assert_array_equal(got, expected)
    clean = stack[:, :, :20]  # no NaN: np.median's values
    np.testing.assert_array_equal(sky_warp._median_sky_spectrum(clean, rows), np.median(clean[:, rows].mean(axis=0), axis=0))


def test_sky_model_evaluates_into_a_given_array():
    """``sky(e, out=level[k])`` fills that row in place, with the values of ``sky(e)``; a wrong ``out`` is refused."""
    rng = np.random.default_rng(2)
    e = np.sort(rng.uniform(0, 50, 3000))
    flux = 100 + 50 * np.exp(-0.5 * ((e - 25) / 1.5) ** 2) + rng.normal(0, 2, e.size)
    sky = bs.fit_bspline_sky(e, flux, read_noise=2.0)
    level = np.zeros((2, e.size))
    row = level[1]
    assert sky(e, out=row) is row
    np.testing.assert_array_equal(level[1], sky(e))
    assert not level[0].any()
    grid = e[:2000].reshape(40, 50)
    out = np.empty((40, 50))
    np.testing.assert_array_equal(sky(grid, out=out), sky(grid))
    for bad in (np.empty(e.size, np.float32), np.empty(e.size + 1), level[:, 0], level.T[0]):
        with pytest.raises(ValueError, match="out must be"):
            sky(e, out=bad)


# --- issue 13, exact helpers of the full-frame path ------------------------------------------


def _same_float(a, b):
    return (np.isnan(a) and np.isnan(b)) or (a == b and np.signbit(a) == np.signbit(b))


def test_median_and_percentile_are_numpys_numbers(rng):
    """One-position partitions give np.median's and np.percentile's values (NaN and infinities included)."""
    from specwidgets.core._stats import median, percentile

    n_checked = 0
    for trial in range(600):
        n = int(rng.integers(1, 40)) if trial % 3 else int(rng.integers(1, 3000))
        x = rng.normal(size=n) * (1e300 if trial % 7 == 0 else 1.0)
        if trial % 5 == 1:
            x[rng.random(n) < 0.2] = np.inf
        if trial % 5 == 2:
            x[rng.random(n) < 0.2] = -np.inf
        if trial % 5 == 3:
            x = rng.integers(-3, 3, n).astype(float)  # ties
        if trial % 11 == 4:
            x[rng.integers(0, n)] = np.nan  # NumPy's own path
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            assert _same_float(median(x), float(np.median(x))), (trial, x)
            for q in (0, 25, 50, 90, 100, 33.3, float(rng.uniform(0, 100))):
                assert _same_float(percentile(x, q), float(np.percentile(x, q))), (trial, q, x)
                n_checked += 1
    assert n_checked == 600 * 7
    # Row by row, as np.median(axis=1) gives them.
    from specwidgets.core._stats import median_rows

    for trial in range(100):
        a = rng.normal(size=(int(rng.integers(1, 20)), int(rng.integers(1, 200))))
        if trial % 3 == 0:
            a = np.where(rng.random(a.shape) < 0.5, -0.0, 0.0)
        ref = np.median(a, axis=1)
        np.testing.assert_array_equal(median_rows(a), ref)
        np.testing.assert_array_equal(np.signbit(median_rows(a)), np.signbit(ref))
    # Along any axis of an array of any shape, in place or not, as np.median gives them.
    from specwidgets.core._stats import median_along

    for trial in range(1200):
        shape = tuple(int(rng.integers(1, 12)) for _ in range(int(rng.integers(1, 4))))
        if trial % 100 == 0:
            shape = (3, 4065) if trial % 200 else (4064, 7)  # long slices: odd, even
        a = rng.normal(size=shape)
        kind = trial % 6
        if kind == 1:
            a[rng.random(shape) < 0.3] = np.inf
        if kind == 2:
            a[rng.random(shape) < 0.3] = -np.inf
        if kind == 3:
            a = np.where(rng.random(shape) < 0.5, -0.0, 0.0)
        if kind == 4:
            a = rng.integers(-2, 2, shape).astype(float)  # ties
        if kind == 5:
            a[rng.random(shape) < 0.1] = np.nan  # NumPy's own path
        axis = int(rng.integers(-len(shape), len(shape)))
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ref = np.median(a, axis=axis)
            work = a.copy()
            for got in (median_along(a, axis=axis), median_along(work, axis=axis, overwrite_input=True)):
                assert type(got) is type(ref) and np.shape(got) == np.shape(ref)
                np.testing.assert_array_equal(got, ref)
                np.testing.assert_array_equal(np.signbit(got), np.signbit(ref))
    a = rng.normal(size=(5, 8))
    kept = a.copy()
    median_along(a, axis=1)
    np.testing.assert_array_equal(a, kept)  # not in place unless asked
    # Zeros of both signs: the median's sign is NumPy's; a percentile's value (its zero's sign is
    # whichever zero the partition puts there).
    z = np.where(rng.random(30) < 0.5, -0.0, 0.0)
    assert _same_float(median(z), float(np.median(z)))
    assert percentile(z, 25) == 0.0


def test_interp_in_threads_is_np_interp(monkeypatch, rng):
    from specwidgets.core import _threads

    monkeypatch.setattr(_threads, "_n_threads", lambda: 3)
    monkeypatch.setattr(_threads, "_INTERP_MIN_POINTS", 10)
    xp = np.sort(rng.uniform(0, 100, 50))
    fp = rng.normal(size=50)
    x = np.sort(rng.uniform(-10, 110, (7, 41)), axis=None).reshape(7, 41)  # 2D, both ends outside
    x[0, 0] = np.nan
    x[3, 5] = xp[-1]
    out = _threads.interp_in_threads(x, xp, fp)
    assert out.shape == x.shape
    np.testing.assert_array_equal(out, np.interp(x, xp, fp))
    # Pieces shorter than the table would take NumPy's other slope formula: one call then.
    np.testing.assert_array_equal(_threads.interp_in_threads(x.ravel()[:60], xp, fp), np.interp(x.ravel()[:60], xp, fp))
    # A table NumPy alone takes (a repeated entry): each thread's share in
    # parts, none shorter than the table.
    calls = []
    real = np.interp
    monkeypatch.setattr(np, "interp", lambda a, *args: calls.append(a.size) or real(a, *args))
    monkeypatch.setattr(_threads, "_INTERP_PART", 20)
    x = rng.uniform(-10, 110, 2000)
    xp[10] = xp[11]
    np.testing.assert_array_equal(_threads.interp_in_threads(x, xp, fp), real(x, xp, fp))
    assert len(calls) > 20 and min(calls) >= xp.size and sum(calls) == x.size
    # A strictly increasing, finite table: the compiled twin, no np.interp call.
    calls.clear()
    xp = np.linspace(0.0, 100.0, 50)
    np.testing.assert_array_equal(_threads.interp_in_threads(x, xp, fp), real(x, xp, fp))
    assert not calls


def test_interp_table_is_np_interp(rng):
    from specwidgets.core._threads import _interp_table

    for trial in range(60):
        n = int(rng.integers(2, 60))
        if trial % 3 == 0:  # evenly spaced, as the adaptive knots' tables
            xp = np.linspace(rng.uniform(-5, 0), rng.uniform(1, 50), n)
        else:
            xp = np.cumsum(rng.uniform(1e-3, 2, n)) - rng.uniform(0, 10)
        fp = rng.normal(0, 5, n) if trial % 2 else np.cumsum(rng.uniform(0, 3, n))
        x = np.concatenate([rng.uniform(xp[0] - 2, xp[-1] + 2, 300), xp, np.nextafter(xp, np.inf),
                            np.nextafter(xp, -np.inf), [np.nan, -np.inf, np.inf]])
        out = np.empty_like(x)
        _interp_table(x, xp, fp, out)
        np.testing.assert_array_equal(out, np.interp(x, xp, fp))


def test_drop_flagged_rows_is_boolean_indexing_c_ordered(rng):
    from specwidgets.core.sky._select import drop_flagged_rows

    n, n_rows = 5000, 40
    rows = rng.integers(0, n_rows, n).astype(np.int32)
    effpix, flux, index = rng.normal(size=n), rng.normal(size=(3, n)), rows * 77 + 3
    flagged = rng.random(n_rows) < 0.3
    keep = ~flagged[rows]
    e, f, i, r = drop_flagged_rows(effpix, flux, index, rows, flagged)
    np.testing.assert_array_equal(e, effpix[keep])
    np.testing.assert_array_equal(f, flux[:, keep])
    np.testing.assert_array_equal(i, index[keep])
    np.testing.assert_array_equal(r, rows[keep])
    assert f.flags.c_contiguous and i.dtype == index.dtype and r.dtype == np.int32


def test_pixel_order_and_unmasked_pixels_kernels_match_numpy(monkeypatch, rng):
    from specwidgets.core.sky import _select

    n_rows, n_cols = 37, 53
    by_column = rng.permutation(n_rows * n_cols)
    masked = rng.random(n_rows) < 0.3
    results = {}
    for threshold in (1 << 40, 0):  # NumPy, then the kernels
        monkeypatch.setattr(_select, "KERNEL_MIN_PIXELS", threshold)
        order = _select.pixel_order(by_column.copy(), n_rows, n_cols)
        results[threshold] = order, _select.unmasked_pixels(order, n_cols, masked)
    for a, b in zip(*results.values()):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype == np.int32
    order = results[0][0]
    np.testing.assert_array_equal(order, (by_column % n_rows) * n_cols + by_column // n_rows)
    np.testing.assert_array_equal(results[0][1], order[~masked[order // n_cols]])


def test_sorted_pixel_order_is_the_stable_argsort(monkeypatch, rng):
    """The effective pixels sorted as two halves of columns merged: the stable argsort's order, ties
    (in column-major order) and NaN (last) included."""
    from specwidgets.core.sky import _select

    monkeypatch.setattr(_select, "KERNEL_MIN_PIXELS", 0)
    for trial in range(60):
        n_rows, n_cols = int(rng.integers(1, 40)), int(rng.integers(2, 40))
        emap = np.add.outer(rng.normal(0, [0.1, 3.0, 30.0][trial % 3], n_rows), np.arange(n_cols, dtype=float))
        if trial % 4 == 1:
            emap = np.round(emap * 2) / 2  # ties
        if trial % 5 == 2:
            emap[rng.random(emap.shape) < 0.1] = np.nan
        if trial % 7 == 3:
            emap = rng.normal(size=emap.shape)  # no order at all
        expected = _select.pixel_order(np.argsort(emap.T.ravel(), kind="stable"), n_rows, n_cols)
        got = _select.sorted_pixel_order(emap)
        np.testing.assert_array_equal(got, expected)
        assert got.dtype == expected.dtype == np.int32


def test_pixel_rows_is_integer_division(monkeypatch, rng):
    """The rows of pixel indices by a corrected float quotient: ``index // n_cols`` exactly, at every remainder."""
    from specwidgets.core.sky import _select

    monkeypatch.setattr(_select, "KERNEL_MIN_PIXELS", 0)
    for n_cols in (1, 2, 3, 7, 2030, 4093, 4096, 65521):
        # Every remainder near a multiple (where a rounded quotient is one off), up to the int32 limit.
        q = rng.integers(0, (2**31 - 1) // n_cols, 500)
        index = np.concatenate([q * n_cols + d for d in (0, 1, n_cols - 1)] + [rng.integers(0, 2**31 - 1, 500)])
        index = np.clip(index, 0, 2**31 - 1).astype(np.int32)
        rows = _select.pixel_rows(index, n_cols)
        np.testing.assert_array_equal(rows, index // n_cols)
        assert rows.dtype == np.int32


@pytest.mark.parametrize("threshold", [1 << 40, 0])  # NumPy, then the kernel
def test_excluded_samples_kernel_matches_numpy(rng, monkeypatch, threshold):
    """The fit's unusable samples in one pass: NumPy's flags (non-finite effpix, flux or rows; outside the extent)."""
    from specwidgets.core.sky import _kernels
    from specwidgets.core.sky._kernels import excluded_samples, usable_in_rows

    monkeypatch.setattr(_kernels, "KERNEL_MIN_SAMPLES", threshold)
    n = 300_000  # over the threads' threshold: the chunks' counts add up
    e, f, y = rng.uniform(-5, 105, n), rng.normal(size=n), rng.uniform(0, 50, n)
    for a in (e, f, y):
        a[rng.integers(0, n, 300)] = rng.choice([np.nan, np.inf, -np.inf], 300)
    for rows, extent in ((None, None), (y, None), (None, (0.0, 100.0)), (y, (10.0, 20.0))):
        ref = ~(np.isfinite(e) & np.isfinite(f))
        if rows is not None:
            ref |= ~np.isfinite(rows)
        if extent is not None:
            with np.errstate(invalid="ignore"):
                ref |= (e < extent[0]) | (e > extent[1])
        got, n_out, positive = excluded_samples(e, f, rows, extent)
        np.testing.assert_array_equal(got, ref)
        assert n_out == int(ref.sum())
        assert positive == pytest.approx(float(np.sum(f, where=~ref & (f > 0))), rel=1e-12)
    # The knot choice's held-out samples: finite, within the extent, their row not dropped.
    row_of = rng.integers(0, 50, n).astype(np.int32)
    dropped = rng.random(50) < 0.3
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(e) & np.isfinite(f) & (e >= 10.0) & (e <= 90.0) & ~dropped[row_of]
    np.testing.assert_array_equal(usable_in_rows(e, f, row_of, (10.0, 90.0), dropped), np.flatnonzero(ok))
    assert usable_in_rows(e, f, row_of, (10.0, 90.0), dropped, count_only=True) == int(ok.sum())


def test_sky_ceiling_matches_numpy(rng, monkeypatch):
    """The saturation check's ceiling and plateau count: rejected and NaN samples out, as a boolean mask did
    (the kernel a large fit takes, here on small ones)."""
    monkeypatch.setattr(sq, "_KERNEL_MIN_SAMPLES", 0)
    for trial in range(200):
        n, n_exp = int(rng.integers(1, 300)), int(rng.integers(1, 3))
        n_pix = n + int(rng.integers(0, 50))
        flux = rng.normal(0, 1, (n_exp, n)) * rng.choice([1, 100])
        flux[rng.random((n_exp, n)) < 0.1] = np.nan
        if trial % 3 == 0 and np.isfinite(flux).any():
            flux[:, rng.integers(0, n, 5)] = np.nanmax(flux)  # a plateau (some of it rejected)
        index = rng.permutation(n_pix)[:n].astype(np.int32)
        rejected = rng.random((n_exp, n_pix)) < rng.random()
        kept = np.isfinite(flux) & ~rejected[:, index]
        ref = None
        if kept.any():
            top = float(np.max(flux, where=kept, initial=-np.inf))
            ref = (top, int(np.count_nonzero(kept & (flux >= top * (1 - 2e-3))))) if top > 0 else None
        assert sq.sky_ceiling(flux, index, rejected, 2e-3) == ref


def test_block_profiles_kernel_is_nanmean(monkeypatch, rng):
    """The arc tracer's block means in one compiled pass: np.nanmean's numbers, NaN and signed zeros too."""
    from specwidgets.core import warp as wm

    for trial in range(40):
        n_rows, n_cols = int(rng.integers(3, 200)), int(rng.integers(1, 40))
        if trial % 13 == 0:
            n_rows, n_cols = 9, 9000  # wider than NumPy's buffer
        block = int(rng.integers(1, max(2, n_rows // 2)))
        image = rng.normal(0, 100, (n_rows, n_cols))
        image[rng.random(image.shape) < 0.3 * (trial % 2)] = np.nan
        if trial % 5 == 0:
            image[: n_rows // 2] = np.nan  # whole blocks without a number
        if trial % 3 == 0:
            image[rng.random(image.shape) < 0.2] = -0.0
        monkeypatch.setattr(wm, "_BLOCK_KERNEL_MIN_PIXELS", 1 << 40)
        ref, ref_rows = wm._block_profiles(image, block)
        monkeypatch.setattr(wm, "_BLOCK_KERNEL_MIN_PIXELS", 0)
        got, rows = wm._block_profiles(image, block)
        np.testing.assert_array_equal(rows, ref_rows)
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(ref))
        # Rows blanked as they are read: the numbers of a copy with those rows NaN.
        blank = rng.random(n_rows) < 0.3
        blanked = image.copy()
        blanked[blank] = np.nan
        monkeypatch.setattr(wm, "_BLOCK_KERNEL_MIN_PIXELS", 1 << 40)
        ref, _ = wm._block_profiles(blanked, block)
        monkeypatch.setattr(wm, "_BLOCK_KERNEL_MIN_PIXELS", 0)
        got, _ = wm._block_profiles(image, block, blank)
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(ref))


@pytest.mark.parametrize("kernel", [True, False])
def test_warp_model_with_blank_rows_is_the_blanked_copys(monkeypatch, kernel):
    """The sky lines' tracer reads a science frame with its other rows blanked, without copying it."""
    from specwidgets.core import warp as wm
    from specwidgets.io.synthetic import make_synthetic_longslit

    f = make_synthetic_longslit(shape=(120, 600), tilt=4.0, seed=21)
    image = np.asarray(f.arc)
    before = image.copy()
    blank = np.zeros(image.shape[0], bool)
    blank[f.trace_rows[0]:f.trace_rows[1]] = True
    ref = f.trace_rows[1] + 3
    # Three of the five rows the reference row's profile reads, made bad (their median would be theirs).
    for r in (ref - 2, ref - 1, ref + 1):
        blank[r] = True
        image[r] = 1e6
    before = image.copy()
    blanked = image.copy()
    blanked[blank] = np.nan
    monkeypatch.setattr(wm, "_BLOCK_KERNEL_MIN_PIXELS", 0 if kernel else 1 << 40)
    locs, _ = sw.find_cal_lines(np.asarray(f.arc))
    want = wm._generate_warp_model(blanked, locs, ref_idx=ref, check_fold=False)
    got = wm._generate_warp_model(image, locs, ref_idx=ref, check_fold=False, blank_rows=blank)
    np.testing.assert_array_equal(got.coefficients, want.coefficients)
    np.testing.assert_array_equal(got.traces.positions, want.traces.positions)
    np.testing.assert_array_equal(got.traces.ref_positions, want.traces.ref_positions)
    np.testing.assert_array_equal(image, before)  # the frame itself is left as it was
    with pytest.raises(ValueError, match="one flag per row"):
        wm._generate_warp_model(image, locs, blank_rows=blank[:-1])


def test_fit_sky_looks_for_dark_rows_once(monkeypatch):
    """The sky-line refinement and the fit's first stage share one look at the dark rows and the faint
    pixels' noise."""
    from specwidgets.io.synthetic import make_synthetic_longslit

    f = make_synthetic_longslit(shape=(160, 800), n_exposures=2, tilt=3.0, n_sky_lines=30, unlit_rows=20, seed=5)
    calls = []
    for name in ("dark_rows", "provisional_levels"):
        real = getattr(sq, name)
        # (FirstLook, in the quality module, measures both for the fit and the refinement.)
        monkeypatch.setattr(sq, name, lambda *a, real=real, name=name, **k: calls.append(name) or real(*a, **k))
    warp = sw.WarpModel.from_tilt(f.science.shape[1:], 3.0)
    res = sw.fit_sky(np.asarray(f.science), warp, f.trace_rows)
    assert sorted(calls) == ["dark_rows", "provisional_levels"]
    assert res.quality.unlit_rows  # the dark rows were found and used
    assert res.quality.warp_source  # the refinement was measured in this call
    calls.clear()
    sw.fit_sky(np.asarray(f.science), warp, (f.trace_rows[0] - 2, f.trace_rows[1]))  # refinement cached
    assert sorted(calls) == ["dark_rows", "provisional_levels"]


def test_line_windows_in_threads_match_one_call(monkeypatch, rng):
    from specwidgets.core import _threads, peaks

    cols = np.arange(11.0)[None, :] + np.arange(3000)[:, None]
    centres = cols[:, 5] + rng.uniform(-1, 1, 3000)
    data = 20 + 500 * np.exp(-0.5 * ((cols - centres[:, None]) / 1.3) ** 2) + rng.normal(0, 3, cols.shape)
    data[::17, 3] = np.nan
    monkeypatch.setattr(_threads, "_n_threads", lambda: 1)
    monkeypatch.setattr(peaks, "_n_threads", lambda: 1)
    one = peaks.fit_gaussian_windows(cols, data, n_iter=8)
    monkeypatch.setattr(peaks, "_n_threads", lambda: 3)
    monkeypatch.setattr(peaks, "_THREAD_MIN_WINDOWS", 100)
    split = peaks.fit_gaussian_windows(cols, data, n_iter=8)
    for a, b in zip(one, split):
        np.testing.assert_array_equal(a, b)


def test_row_chi_means_in_rows_match_the_samples_pass(monkeypatch):
    # The sky samples are every pixel of the unmasked rows, in effective-pixel
    # order: read row by row instead, the counts and sums are the same numbers.
    import specwidgets as sw
    from specwidgets.core.sky import api
    from specwidgets.io.synthetic import make_synthetic_longslit

    f = make_synthetic_longslit(shape=(90, 700), n_exposures=1, tilt=6.0, cosmic_rays=30, seed=8)
    data = np.asarray(f.science[0]).copy()
    data[40:43, 100:200] = np.nan
    rows = np.ones(90, bool)
    rows[slice(*f.trace_rows)] = False
    rows[5] = False
    samples = api.sky_samples(data[None], f.warp, ~rows)
    background = data + np.random.default_rng(2).normal(0, 3, data.shape)
    background[60] = -5.0  # a negative model: the variance is the read noise's
    ref = sq._row_chi_means(samples.index, 700, 90, background, samples.flux[0], 1.4, 4.7)
    for n_threads in (1, 3):
        monkeypatch.setattr(sq, "_PARALLEL_MIN_SAMPLES", 0)
        monkeypatch.setattr(sq, "_n_threads", lambda n=n_threads: n)
        got = sq._row_chi_means_in_rows(data, background, rows, 1.4, 4.7)
        for a, b in zip(ref, got):
            np.testing.assert_array_equal(a, b)
    fast = api._row_means(background, samples, 0, 1.4, 4.7, data, rows)
    np.testing.assert_array_equal(fast, api._row_means(background, samples, 0, 1.4, 4.7))
    # Samples that are not whole rows: the samples' pass.
    fewer = api.SkySamples(samples.effpix[::2], samples.flux[:, ::2], samples.index[::2], 700)
    np.testing.assert_array_equal(api._row_means(background, fewer, 0, 1.4, 4.7, data, rows),
                                  api._row_means(background, fewer, 0, 1.4, 4.7))
    assert sw.fit_sky(data, f.warp, f.trace_rows).quality.leak >= 0.0


def test_row_chi_means_split_by_rows_match_one_pass(monkeypatch, rng):
    n_rows, n_cols = 40, 300
    index = rng.permutation(n_rows * n_cols)[:9000].astype(np.int32)  # any order
    background = rng.uniform(-2, 500, n_rows * n_cols)
    flux = background[index] + rng.normal(0, 10, index.size)
    flux[::97] = np.nan
    monkeypatch.setattr(sq, "_PARALLEL_MIN_SAMPLES", 1 << 40)
    one = sq._row_chi_means(index, n_cols, n_rows, background, flux, 1.4, 4.7)
    monkeypatch.setattr(sq, "_PARALLEL_MIN_SAMPLES", 0)
    monkeypatch.setattr(sq, "_n_threads", lambda: 3)
    split = sq._row_chi_means(index, n_cols, n_rows, background, flux, 1.4, 4.7)
    for a, b in zip(one, split):
        np.testing.assert_array_equal(a, b)


def test_full_frame_helpers_leave_the_fit_unchanged(monkeypatch):
    """The default fit with the kernels and threads of the full-frame path (forced on a small frame)
    equals the fit without them, to the last bit: background, rejections and quality report."""
    import specwidgets as sw
    from specwidgets.core import _threads, peaks
    from specwidgets.core import warp as wm
    from specwidgets.core.sky import _select, api
    from specwidgets.io.synthetic import make_synthetic_longslit

    f = make_synthetic_longslit(shape=(80, 700), n_exposures=2, tilt=2.5, n_sky_lines=25, cosmic_rays=10, seed=11)
    science = np.array(f.science)
    science[:, :4] = 0.0  # unlit rows at the slit's end: dropped from the samples before the first pass
    science[:, 4:7] *= 0.3  # dimmer ones: dropped before the final fit
    fits = []
    for fast in (False, True):
        big = 0 if fast else 1 << 40
        monkeypatch.setattr(_select, "KERNEL_MIN_PIXELS", big)
        monkeypatch.setattr(wm, "_BLOCK_KERNEL_MIN_PIXELS", big)
        monkeypatch.setattr(_threads, "_INTERP_MIN_POINTS", 100 if fast else 1 << 40)
        monkeypatch.setattr(api, "_PARALLEL_MIN_SAMPLES", 0 if fast else 1 << 40)
        monkeypatch.setattr(sq, "_PARALLEL_MIN_SAMPLES", 0 if fast else 1 << 40)
        monkeypatch.setattr(peaks, "_THREAD_MIN_WINDOWS", 10 if fast else 1 << 40)
        locs, _ = sw.find_cal_lines(f.arc)
        warp = sw.generate_warp_model(f.arc, locs)
        fits.append(sw.fit_sky(science, warp, [f.trace_rows]))
    np.testing.assert_array_equal(fits[0].background, fits[1].background)
    np.testing.assert_array_equal(fits[0].rejected, fits[1].rejected)
    assert fits[0].quality == fits[1].quality


def test_effective_pixel_map_in_blocks_on_threads_is_the_whole_grids(monkeypatch):
    """The map's row blocks, inverted side by side, give the numbers of one Newton iteration over
    the whole grid (blocks that converge early take the missing steps); a fold still raises."""
    from specwidgets.core import _threads
    from specwidgets.core.warp import WarpModel

    monkeypatch.setattr(_threads, "_n_threads", lambda: 3)
    warp = WarpModel.from_tilt((301, 257), 6.0, curvature=4.0)
    maps = {}
    for rows in (1 << 20, 7):  # one block; many, on three threads
        monkeypatch.setattr(WarpModel, "_GRID_BLOCK_ROWS", rows)
        fresh = warp.replace(coefficients=warp.coefficients.copy())
        maps[rows] = (fresh.effpix_map(), fresh.edge_map())
    for whole, blocks in zip(maps[1 << 20], maps[7]):
        np.testing.assert_array_equal(whole, blocks)
    folding = WarpModel((301, 257), 150, np.array([[0.0, -400.0]]), 301.0, 128.0, 128.0)
    with pytest.raises(ValueError, match="folds over"):
        folding.effpix_map()
