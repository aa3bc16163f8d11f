"""Smooth light along the slit that the sky spectrum model does not hold.

The B-spline sky is one spectrum ``S(e)`` (plus, when chosen, Legendre terms
along the slit, each a whole spectrum: many coefficients, so "auto" picks
them only for strong gradients). Two smooth effects are cheaper to model on
their own, after the fit, from the residuals of the sky rows:

* the slit's illumination: the sky, lines and continuum alike, a few percent
  dimmer at one end (vignetting, a slit of uneven width), a factor
  ``1 + sum_p b_p Q_p(y)``;
* smooth extra light: scattered light, the far wings of a bright source,
  ``sum_p Q_p(y) A_p(x)`` with ``A_p`` a cubic spline of a few intervals
  along the columns ``x``.

``Q_p`` is the Legendre polynomial of degree ``p`` (1..3) over the fitted
rows. The degrees of both are chosen per exposure by the Bayesian
information criterion on the sky samples (each coefficient must lower the
chi-square by ``log(n_samples)``), so a sky that needs neither gets neither
(the synthetic frames of the benchmark) and the Goodman crop gets both
(its top rows are ~3 % dimmer; its sky rows carry the star's far wings).

Between sky rows (a masked trace, held-out rows) the correction is the
straight line between its values on the nearest sky rows on each side, and
beyond the last sky row its value there: a polynomial fit to both sides of a
trace must not bulge under it (the smooth light near a trace is mostly the
source's own wings). The illumination profile divided out before the fit
(:func:`illumination_profile`) is light that scales the sky lines as it
scales the continuum, and follows its curve under a trace instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

__all__ = ["SlitCorrection", "fit_slit_correction", "illumination_profile"]

#: Highest Legendre degree along the slit tried for either term.
MAX_DEGREE = 3
#: Highest Legendre degree tried for the illumination profile the fit divides out
#: (4 fit a ripple of a few tenths of a percent onto a plain ramp; a 12 % quartic
#: vignetting scores the same with 3).
MAX_PROFILE_DEGREE = 3
#: Cubic-spline intervals along the columns for the smooth light.
LIGHT_INTERVALS = 8
#: Samples used at most (a regular subsample of a larger frame's).
SAMPLE_LIMIT = 300_000
#: Residuals beyond this many sigma (cosmic-ray remains) are left out.
CLIP_SIGMA = 5.0


@njit(cache=True, nogil=True, error_model="numpy")
def _column_sums(index, n_cols, flux, model, use, poly, rn_var, inv_gain, clip2, mm, m1, one, rm, r1, out):
    """Per column ``x``, sums over the used samples of ``w m^2 P_a P_b``,
    ``w m P_a P_b``, ``w P_a P_b``, ``w r m P_a``, ``w r P_a`` (``w`` the
    inverse variance of the model level, ``r = flux - model``, ``P`` the
    row's Legendre values, degrees 1..D); ``out`` = ``(sum w r^2, n)``."""
    n_deg = poly.shape[1]
    chi0 = 0.0
    n = 0
    for i in range(index.shape[0]):
        if not use[i]:
            continue
        m = model[i]
        f = flux[i]
        if not (math.isfinite(m) and math.isfinite(f)):
            continue
        var = (m if m > 0.0 else 0.0) * inv_gain + rn_var
        r = f - m
        if r * r > clip2 * var:
            continue
        w = 1.0 / var
        p = index[i]
        row = p // n_cols
        x = p - row * n_cols
        chi0 += w * r * r
        n += 1
        for a in range(n_deg):
            pa = poly[row, a]
            wpa = w * pa
            rm[x, a] += wpa * r * m
            r1[x, a] += wpa * r
            for b in range(n_deg):
                v = wpa * poly[row, b]
                one[x, a, b] += v
                m1[x, a, b] += v * m
                mm[x, a, b] += v * m * m
    out[0] = chi0
    out[1] = n


def _column_basis(n_cols, n_intervals):
    """Uniform cubic B-spline basis over the columns, ``(n_cols, n_intervals + 3)``, rows summing to 1.

    (The same uniform basis as the sky's spline; scipy's ``BSpline.design_matrix``
    would import ``scipy.sparse`` into every kernel.)
    """
    u = np.arange(n_cols, dtype=float) * (n_intervals / max(n_cols - 1, 1))
    i = np.minimum(u.astype(np.int64), n_intervals - 1)
    t = u - i
    b = np.zeros((n_cols, n_intervals + 3))
    rows = np.arange(n_cols)
    b[rows, i] = (1 - t) ** 3 / 6
    b[rows, i + 1] = (3 * t**3 - 6 * t**2 + 4) / 6
    b[rows, i + 2] = (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6
    b[rows, i + 3] = t**3 / 6
    return b


def _bridge(rows, values, slope, n_rows):
    """``values`` (at the sorted ``rows``) on every row: straight lines between
    consecutive rows, and beyond the first and last row straight lines of
    ``slope`` (per row) from the end values.
    A trace at the slit's end must not cut a gradient off (holding the end
    value did: a 10 % ramp along the slit was missed under it), and between
    sky rows a polynomial must not bulge."""
    all_rows = np.arange(n_rows, dtype=float)
    out = np.interp(all_rows, rows, values)
    below, above = all_rows < rows[0], all_rows > rows[-1]
    out[below] = values[0] + slope * (all_rows[below] - rows[0])
    out[above] = values[-1] + slope * (all_rows[above] - rows[-1])
    return out


def _gaps(rows):
    """``[(start, stop)]``: the runs of rows missing between the sorted ``rows``."""
    jumps = np.flatnonzero(np.diff(rows) > 1)
    return [(int(rows[i]) + 1, int(rows[i + 1])) for i in jumps]


def _line_slope(rows, values, weights=None):
    """Slope per row of the (weighted) straight line through ``values`` at ``rows``."""
    w = np.ones(rows.size) if weights is None else np.asarray(weights, float)
    x = rows - np.average(rows, weights=w)
    den = float(np.sum(w * x * x))
    return float(np.sum(w * x * values) / den) if den > 0 else 0.0


def _legendre_on_rows(rows, degree):
    """Legendre values of degrees 1..degree on ``rows`` (mapped to -1..1 over
    their span), and the slope of each one's straight-line fit over them (how
    it is continued beyond the rows: a curve's own tangent at its end,
    continued over a long masked stretch, amplifies its end's error)."""
    r0, r1 = rows[0], rows[-1] + 1
    t = (rows - r0) * (2.0 / max(r1 - r0, 1)) - 1.0
    vals = np.polynomial.legendre.legvander(t, degree)[:, 1:]
    return vals, [_line_slope(rows, vals[:, p]) for p in range(degree)]


def _row_basis(sample_rows, n_rows, degree):
    """``Q``: ``(n_rows, degree)`` Legendre values (degrees 1..degree) over the
    sample rows' span, joined by straight lines across rows without samples
    and continued beyond them with the slope of their straight-line fit (see
    :func:`_bridge`; zeros when no rows)."""
    q = np.zeros((n_rows, degree))
    have = np.zeros(n_rows, bool)
    have[sample_rows] = True
    rows = np.flatnonzero(have)
    if rows.size == 0 or degree == 0:
        return q
    vals, slopes = _legendre_on_rows(rows, degree)
    for p in range(degree):
        q[:, p] = _bridge(rows, vals[:, p], slopes[p], n_rows)
    return q


def illumination_profile(ratio, info, skip=None, max_degree=MAX_PROFILE_DEGREE):
    """The slit's illumination along the rows, from each row's sky scale.

    ``ratio[y]`` is row ``y``'s sky relative to a first-pass model (NaN for
    rows without samples) and ``info[y]`` its inverse variance
    (:func:`specwidgets.core.sky.quality.row_profile`). A Legendre
    polynomial is fit to them, its degree (0 to ``max_degree``) chosen by
    the Bayesian information criterion (with the ratios' errors scaled up to
    their actual scatter about the highest degree); between fitted rows (a
    masked trace) the profile is that polynomial (a dome-shaped slit is
    brightest under a centred trace) where the fitted rows reach at least
    half the gap's width on each side, else the straight line between the
    gap's edges; beyond them, from the last one on, the
    slope of a straight line fit to all of them (kept within half the lowest
    and twice the highest fitted value).

    Returns
    -------
    (n_rows,) array or None
        The factor, with information-weighted mean 1 over the fitted rows;
        None when a constant wins (no illumination to correct), when fewer
        than 4 rows have samples, or when the fit would not stay positive.

    Examples
    --------
    >>> import numpy as np
    >>> rows = np.arange(50.0)
    >>> ratio = 1.1 - 0.2 * rows / 49
    >>> ratio[20:30] = np.nan  # a masked trace
    >>> prof = illumination_profile(ratio, np.full(50, 1e6))
    >>> round(float(prof[0] / prof[-1]), 3), bool(np.all(np.diff(prof) < 0))
    (1.222, True)
    """
    ratio = np.asarray(ratio, dtype=float)
    info = np.asarray(info, dtype=float)
    have = np.isfinite(ratio) & (info > 0)
    if skip is not None:
        have &= ~np.asarray(skip, bool)
    rows = np.flatnonzero(have)
    if rows.size < 4:
        return None
    r0, r1 = rows[0], rows[-1] + 1
    t = (rows - r0) * (2.0 / (r1 - r0)) - 1.0
    w = np.sqrt(info[rows])
    y = ratio[rows]
    top = min(int(max_degree), rows.size - 2)
    fits = []
    for d in range(top + 1):
        a = np.polynomial.legendre.legvander(t, d)
        coef, *_ = np.linalg.lstsq(a * w[:, None], y * w, rcond=None)
        fits.append((coef, float(np.sum((w * (y - a @ coef)) ** 2))))
    # The rows' scales scatter more than their photon noise says (a first pass
    # misfits tilted lines a little, row by row): the chi-squares are judged
    # in units of the highest degree's scatter, or a degree-4 ripple of a
    # few tenths of a percent wins over a plain ramp.
    spread = max(fits[-1][1] / max(rows.size - top - 1, 1), 1.0)
    penalty = math.log(rows.size)
    best, best_crit = None, np.inf
    for d, (coef, chi2) in enumerate(fits):
        fit = np.polynomial.legendre.legval(t, coef)
        crit = chi2 / spread + penalty * (d + 1)
        if crit < best_crit and np.all(fit > 0.05 * np.median(y)):
            best, best_crit = (d, coef), crit
    if best is None or best[0] == 0:
        return None
    d, coef = best
    fit = np.polynomial.legendre.legval(t, coef)
    norm = np.average(fit, weights=info[rows])
    # Beyond the sky rows: the ramp of the rows' light as a whole (the chosen
    # curve's own tangent at its end, continued over a trace at the slit's
    # end, amplified its end's error: 1.33 for 1.17 over 70 rows).
    slope = _line_slope(rows, fit, info[rows]) / norm
    out = _bridge(rows, fit / norm, slope, ratio.size)
    # Between the fitted rows (a masked trace) the chosen curve itself: the
    # light there follows the slit as on both sides (a dome 25 % lower at
    # the ends was 2.8 % low under a wide mask with a straight line). Only
    # where the fitted rows reach on each side at least half as far as the
    # gap is wide: a few rows beyond it would let the curve swing there.
    for g0, g1 in _gaps(rows):
        if min(g0 - r0, r1 - g1) >= 0.5 * (g1 - g0):
            inside = np.arange(g0, g1)
            out[inside] = np.polynomial.legendre.legval((inside - r0) * (2.0 / (r1 - r0)) - 1.0, coef) / norm
    # Continued far beyond the sky rows, it must stay a plausible light.
    return np.clip(out, 0.5 * fit.min() / norm, 2.0 * fit.max() / norm)


@dataclass(eq=False)
class SlitCorrection:
    """One exposure's smooth correction along the slit (see the module's text).

    Attributes
    ----------
    illumination_degree, light_degree : int
        Legendre degrees chosen for the illumination factor and the smooth
        light (0: none).
    illumination : (n_rows,) array
        The factor the sky spectrum model is multiplied by, row by row (1
        where not corrected).
    light_rows : (n_rows, light_degree) array
        ``Q_p(y)`` of the smooth light's terms.
    light_columns : (light_degree, n_cols) array
        ``A_p(x)`` in data units.
    chi_drop : float
        How much the correction lowered the sky samples' chi-square.
    """

    illumination_degree: int
    light_degree: int
    illumination: np.ndarray
    light_rows: np.ndarray
    light_columns: np.ndarray
    chi_drop: float = 0.0

    @property
    def active(self):
        return bool(self.illumination_degree or self.light_degree)

    def light(self, rows):
        """The smooth light on ``rows`` (an index or slice of rows): ``(n, n_cols)``."""
        q = self.light_rows[rows]
        out = q[:, :1] * self.light_columns[0]
        for p in range(1, self.light_degree):
            out += q[:, p:p + 1] * self.light_columns[p]
        return out

    def apply(self, background, rows=slice(None)):
        """``background`` (rows ``rows`` of one exposure) corrected, in place."""
        if self.illumination_degree:
            background *= self.illumination[rows][:, None]
        if self.light_degree:
            background += self.light(rows)
        return background

    def illumination_range(self, rows):
        """Peak-to-peak of the illumination factor over ``rows`` (0 when not corrected)."""
        if not self.illumination_degree or len(rows) == 0:
            return 0.0
        v = self.illumination[rows]
        return float(v.max() - v.min())

    def light_peak(self, rows):
        """Largest absolute smooth light over ``rows`` [data units] (0 when none)."""
        if not self.light_degree or len(rows) == 0:
            return 0.0
        rows = np.asarray(rows)
        # The light is smooth along the slit: 64 rows spread over ``rows`` find its peak.
        rows = rows[np.unique(np.linspace(0, rows.size - 1, min(rows.size, 64)).astype(int))]
        return float(np.abs(self.light(rows)).max())


def fit_slit_correction(index, flux, model, n_rows, n_cols, gain, read_noise, *, use=None, skip_rows=None, light=True,
                        max_degree=MAX_DEGREE, n_intervals=LIGHT_INTERVALS, limit=SAMPLE_LIMIT):
    """Fit the illumination factor and the smooth light to one exposure's sky samples.

    Parameters
    ----------
    index : (n,) int array
        Flat pixel index (``row * n_cols + col``) of each sky sample.
    flux, model : (n,) arrays
        The samples' data and the fitted sky there.
    n_rows, n_cols : int
        The frame's shape.
    gain, read_noise : float
        The noise model (variance ``max(model, 0) / gain + (read_noise / gain)**2``).
    use : (n,) bool array, optional
        Samples to fit (default all); rejected samples are left out by the caller.
    skip_rows : (n_rows,) bool array, optional
        Rows never corrected (unlit rows, which have their own sky).
    light : bool
        Whether the smooth light is tried (False: the illumination only).
    max_degree, n_intervals : int
        Highest Legendre degree tried for each term; spline intervals of the light.
    limit : int
        At most this many samples are used (a regular subsample): a few
        dozen coefficients need far fewer than a full frame's millions.

    Returns
    -------
    SlitCorrection
        With both degrees 0 when neither term pays for its coefficients
        (Bayesian information criterion), or when fewer than two sample
        rows exist.

    Examples
    --------
    A slit whose top half is 4 % dimmer than the model says:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> n_rows, n_cols = 40, 300
    >>> sky = np.full((n_rows, n_cols), 500.0)
    >>> sky[:, ::25] += 3000.0  # sky lines
    >>> light = 1.0 - 0.04 * np.linspace(0, 1, n_rows)[:, None]
    >>> data = rng.poisson(sky * light).astype(float)
    >>> idx = np.arange(n_rows * n_cols)
    >>> c = fit_slit_correction(idx, data.ravel(), sky.ravel(), n_rows, n_cols, 1.0, 3.0)
    >>> c.illumination_degree >= 1, round(c.illumination_range(np.arange(n_rows)), 2)
    (True, 0.04)
    """
    index = np.asarray(index)
    if index.dtype != np.int32:
        index = index.astype(np.int64)
    n_rows, n_cols = int(n_rows), int(n_cols)
    none = SlitCorrection(0, 0, np.ones(n_rows), np.zeros((n_rows, 0)), np.zeros((0, n_cols)))
    if use is None:
        use = np.ones(index.shape, bool)
    if index.size > limit:
        step = -(-index.size // int(limit))
        index, flux, model, use = index[::step], np.asarray(flux)[::step], np.asarray(model)[::step], use[::step]
    rows_of = index // n_cols
    sample_rows = np.flatnonzero(np.bincount(rows_of[use], minlength=n_rows))
    if skip_rows is not None:
        sample_rows = sample_rows[~np.asarray(skip_rows, bool)[sample_rows]]
    degree = min(int(max_degree), max(0, sample_rows.size - 2))
    if degree < 1 or n_cols < 4:
        return none
    # The Legendre values on the sample rows; rows without samples are never read.
    poly = np.zeros((n_rows, degree))
    r0, r1 = sample_rows[0], sample_rows[-1] + 1
    t = (sample_rows - r0) * (2.0 / (r1 - r0)) - 1.0
    poly[sample_rows] = np.polynomial.legendre.legvander(t, degree)[:, 1:]
    if skip_rows is not None:
        use = use & ~np.asarray(skip_rows, bool)[rows_of]
    sums = [np.zeros((n_cols, degree, degree)) for _ in range(3)] + [np.zeros((n_cols, degree)) for _ in range(2)]
    out = np.zeros(2)
    _column_sums(index, n_cols, np.ascontiguousarray(flux, dtype=np.float64),
                 np.ascontiguousarray(model, dtype=np.float64), np.ascontiguousarray(use), poly,
                 float((read_noise / gain) ** 2), 1.0 / float(gain), CLIP_SIGMA**2, *sums, out)
    mm, m1, one, rm, r1s = sums
    n_used = int(out[1])
    if n_used < 10 * (degree + degree * (n_intervals + 3)):
        return none
    basis = _column_basis(n_cols, n_intervals)  # (n_cols, nb)
    nb = basis.shape[1]
    # The normal equations of all terms (illumination 1..D, then light (p, j)).
    a_ii = mm.sum(axis=0)
    # Two-operand einsums over the columns, by einsum's own loops: a BLAS
    # product would start threads that spin (CPU time for nothing), and a
    # three-operand einsum is ~10x slower.
    a_il = np.einsum("xk,xj->kj", m1.reshape(n_cols, -1), basis).reshape(degree, degree, nb)  # (D, D, nb)
    pairs = (basis[:, :, None] * basis[:, None, :]).reshape(n_cols, nb * nb)
    a_ll = np.einsum("xk,xm->km", one.reshape(n_cols, -1), pairs).reshape(degree, degree, nb, nb).transpose(0, 2, 1, 3)
    b_i = rm.sum(axis=0)
    b_l = np.einsum("xa,xj->aj", r1s, basis)
    size = degree + degree * nb
    normal = np.empty((size, size))
    normal[:degree, :degree] = a_ii
    normal[:degree, degree:] = a_il.reshape(degree, degree * nb)
    normal[degree:, :degree] = normal[:degree, degree:].T
    normal[degree:, degree:] = a_ll.reshape(degree * nb, degree * nb)
    rhs = np.r_[b_i, b_l.ravel()]
    penalty = math.log(max(n_used, 2))
    best = (0.0, 0, 0, None, 0.0)  # (criterion relative to no correction, dI, dA, coefficients)
    for d_i in range(degree + 1):
        for d_l in range(degree + 1 if light else 1):
            if not (d_i or d_l):
                continue
            pick = np.r_[np.arange(d_i), degree + np.arange(d_l * nb)]
            sub = normal[np.ix_(pick, pick)]
            scale = np.sqrt(np.clip(np.diag(sub), 1e-300, None))
            try:
                coef = np.linalg.solve(sub / np.outer(scale, scale), rhs[pick] / scale) / scale
            except np.linalg.LinAlgError:
                continue
            drop = float(rhs[pick] @ coef)
            crit = -drop + penalty * pick.size
            if crit < best[0]:
                best = (crit, d_i, d_l, coef, drop)
    if best[3] is None:
        return none
    _, d_i, d_l, coef, drop = best
    q = _row_basis(sample_rows, n_rows, degree)
    skip = np.zeros(n_rows, bool) if skip_rows is None else np.asarray(skip_rows, bool)
    q[skip] = 0.0
    illumination = np.clip(1.0 + q[:, :d_i] @ coef[:d_i], 0.5, 2.0)
    light_cols = coef[d_i:].reshape(d_l, nb) @ basis.T if d_l else np.zeros((0, n_cols))
    return SlitCorrection(d_i, d_l, illumination, np.ascontiguousarray(q[:, :d_l]), light_cols, drop)
