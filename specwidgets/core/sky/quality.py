"""The sky fit's automatic choices and its self-assessment.

:func:`specwidgets.fit_sky` uses these helpers to be right by default on real
frames:

* the noise model (gain, read noise) when nobody gave it:
  :func:`estimate_noise` fits ``variance = level / gain + (read_noise / gain)**2``
  to the scatter of the sky about a first-pass model, level by level;
* the slit's illumination: :func:`row_profile` measures how bright each row's
  sky is relative to the first-pass model; :func:`analyse_rows` finds the
  unlit rows and picks the spatial order by the expected held-out chi-square;
* flexure: :func:`measure_flexure` measures how far each exposure's sky lines
  are shifted, relative to the arc's warp, from one end of the slit to the
  other;
* :class:`SkyQuality`: what came out, with plain-sentence warnings and a
  ``suspect`` flag, and FITS cards for batch output.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from .._stats import clipped_std, median, median_along, median_rows, percentile, quiet_nanmean, quiet_nanmedian, value_quantum
from .._threads import _n_threads, chunk_bounds, run_in_threads
from ._kernels import _PARALLEL_MIN_SAMPLES
from ._kernels import KERNEL_MIN_SAMPLES as _KERNEL_MIN_SAMPLES

__all__ = ["SkyQuality", "added_light_profile", "analyse_rows", "block_chi_scatter", "chi_square_profiles",
           "column_chi_means", "dark_rows", "effpix_chi_sums", "estimate_noise", "fine_chi_scatter", "group_quantiles",
           "line_shape_change",
           "measure_flexure", "noise_bins", "noise_pedestal", "row_profile", "scatter_step", "sky_ceiling"]

# Thresholds for ``suspect`` (see SkyQuality): chosen so that the good fits of
# the benchmark (Goodman crop and full frame, synthetic cases) stay clear of
# them and the failures of issue 10 (trace in the sky rows, ADU fit as
# electrons, 89 % rejected) cross them.
REJECTED_LIMIT = 0.10
CHI_LIMITS = (0.75, 1.4)
LEAK_LIMIT = 0.4
# Largest ``line_misfit`` of a fit that follows the sky lines: the good
# B-spline fits of the benchmark reach 1.07, a model that misses lines 20-40 %
# broader at one slit end 1.3, a median of bins on tilted lines 1.7 and more.
LINE_MISFIT_LIMIT = 1.2
# "auto" tries Legendre orders up to this: each order costs as many
# coefficients as the whole spline (noise) and a slower kernel (time), and
# on the real frames tried, order 2 was never beaten by 3 or 4 on held-out rows.
MAX_AUTO_ORDER = 2
# A row is unlit when its sky is below this fraction of the brightly lit rows'.
UNLIT_FRACTION = 0.2
# Rows at an end of the slit below this fraction of the brightly lit rows' sky are unlit too (a pedestal's shelf).
SHELF_FRACTION = 0.5
# Rows beyond a shelf (past its soft edge) whose sky must stand twice the shelf's.
SHELF_STEP_ROWS = 10
# A shelf holds at most this fraction of the rows: a slit lit at 0.3-0.45 over half its length is lit
# (its sky has lines), and taken for unlit rows the half beside a trace under the mask went 7 sigma off.
SHELF_MAX = 0.25


def _fit_card(keyword, value, comment):
    """``(keyword, value, comment)`` with the comment cut to what fits in one 80-character card.

    A string value takes its quotes (and doubled inner quotes), at least 20
    columns; the comment follows after " / ". Cut here, astropy does not
    warn ("Card is too long, comment will be truncated") on every file
    written; a string value is cut to the 68 columns one card holds.
    """
    if isinstance(value, str):
        # 68 columns between the quotes, where a quote takes two.
        while len(value.replace("'", "''")) > 68:
            value = value[:-1]
        width = max(20, len(value.replace("'", "''")) + 2)
    else:
        width = 20
    room = 80 - 10 - width - 3
    return (keyword, value, comment if len(comment) <= room else (comment[:room] if room >= 8 else ""))


@dataclass(frozen=True)
class SkyQuality:
    """How far to trust a sky fit, and the automatic choices it made.

    Attributes
    ----------
    rejected_fraction : float
        Fraction of the sky samples the fit rejected as outliers (0 for the
        median of bins). Cosmic rays take well under 1 %; above
        ``REJECTED_LIMIT`` (10 %) the model or the noise model is wrong.
    chi_std : float
        Robust standard deviation (1.4826 x MAD) of ``(data - sky) / sigma``
        on the fitted sky rows, sigma from the noise model used: about 1 when
        the noise model matches the data (the residuals are the fit's own,
        scaled back for what the fit spent on them: ``sqrt(N / (N - p))`` for
        a B-spline of ``p`` coefficients on ``N`` samples; for a median of
        ``n`` samples per bin, ``1 / (1 - 1.15 / n)``, from a simulated
        table below 13). The fit is also suspect when this
        number, taken over the faintest half or the brightest tenth of the
        sky pixels alone, is outside ``CHI_LIMITS`` (a wrong gain shows on
        the bright lines even when the continuum happens to match).
    leak : float
        Trace light leaking into the sky rows: the largest mean of
        ``(data - sky) / sigma`` (clipped at -5 and +3: cosmic rays) over one sky row, among
        all the sky rows (a second source in them counts too), in units of
        one pixel's sigma; the warning names the row and whether it lies
        where a masked trace's wings reach (within 10 rows of the mask). About 0 when the sky rows hold only sky; 0.3 means
        that row carries source light of 0.3 sigma per pixel on average.
        Above ``LEAK_LIMIT`` (0.4) the fit is suspect: good fits of the
        benchmark reach 0.3 (the faint wings of Goodman's bright trace),
        half a trace left in the sky rows gives several.
    read_noise, gain : float
        The noise model used: read noise in electrons, gain in electrons per
        data unit (data variance = max(sky, 0) / gain + (read_noise / gain)**2).
    noise_source : str
        Where they came from: "argument", the loader's source (e.g. "header
        GAIN/RDNOISE"), or "estimated from the sky residuals".
    flexure : tuple of float
        Per exposure, the shift of the sky lines relative to the arc's warp
        between the bottom and the top row of the image, in pixels (the
        difference that was corrected). A shift common to all rows moves
        the sky spectrum as a whole, which the fit follows by itself: it
        changes no background and is not measured.
    flexure_applied : bool
        Whether a flexure correction was applied.
    unlit_rows : list of (int, int)
        Row ranges left out of the fit because they receive little or no sky
        light (vignetted, beyond the slit's ends).
    spatial_order : int
        Degree of the polynomial along the slit used by the fit.
    line_misfit : float
        How much the sky model misses the sky lines, independent of the noise
        model: on the brightest tenth of the sky pixels, the variance of the
        residuals over the variance of the differences between vertically
        adjacent sky pixels (halved). A misfit that changes slowly along the
        slit (a line broader at one end, a warp off by a fraction of a pixel,
        the peaks a median of bins misses) is in the first and cancels in the
        second. About 1 for a good fit; above ``LINE_MISFIT_LIMIT`` (1.2) the
        fit is suspect.
    illumination : float
        Peak-to-peak of the slit-illumination factor the fit applied over
        the sky rows (0.03: the sky is 3 % brighter at one place of the slit
        than at another; 0 when none was needed). See
        :mod:`specwidgets.core.sky.slit`.
    smooth_light : float
        Largest smooth extra light (scattered light, a source's far wings)
        the fit added over the sky rows, in data units (0 when none).
    warnings : list of str
        Plain sentences: what looks wrong and what to do.
    suspect : bool
        True when the result is probably wrong (see ``warnings``).
    warp_source : str
        The warp the fit used: "arc", "arc refined on sky lines" (the
        science frame's sky lines corrected its shape; see
        :func:`specwidgets.core.sky.sky_warp.refine_warp`) or "sky lines" (no arc).
    warp_shift : float
        Largest correction the sky lines made to the arc's warp over the sky
        rows [px] (0 when not refined).
    warp_note : str
        What the sky-line measurement found, in a sentence (empty when not tried).
    bad_columns : tuple of int
        Detector columns found dead or hot (a dip or spike no sky makes, in
        most sky rows): left out of the sky fit; their own data are not usable.
    blank_columns : tuple of (int, int)
        ``(start, stop)`` of the columns that hold one value in every row (a
        mosaic's gap between CCDs filled with 0): no data, left out as NaN.
    """

    rejected_fraction: float
    chi_std: float
    leak: float
    read_noise: float
    gain: float
    noise_source: str
    flexure: tuple = ()
    flexure_applied: bool = False
    unlit_rows: list = field(default_factory=list)
    spatial_order: int = 0
    line_misfit: float = 1.0
    illumination: float = 0.0
    smooth_light: float = 0.0
    warnings: list = field(default_factory=list)
    suspect: bool = False
    warp_source: str = "arc"
    warp_shift: float = 0.0
    warp_note: str = ""
    blank_columns: tuple = ()
    bad_columns: tuple = ()

    def header_cards(self):
        """FITS header cards ``(keyword, value, comment)`` describing the fit.

        Keywords are at most 8 characters, values plain numbers, booleans or
        short strings, so they can go straight into ``astropy.io.fits.Header``.

        Examples
        --------
        >>> q = SkyQuality(0.01, 1.02, 0.0, 4.7, 1.4, "argument")
        >>> [c[0] for c in q.header_cards()][:4]
        ['SKYSUSP', 'SKYCHI', 'SKYREJ', 'SKYLEAK']
        """
        flex = max((abs(f) for f in self.flexure), default=0.0)
        unlit = ",".join(f"{a}:{b}" for a, b in self.unlit_rows) or "none"
        cards = [
            ("SKYSUSP", bool(self.suspect), "sky fit is probably wrong (see SKYWARN)"),
            ("SKYCHI", round(float(self.chi_std), 4), "robust std of sky-row chi (1 = noise)"),
            ("SKYREJ", round(float(self.rejected_fraction), 5), "fraction of sky samples rejected"),
            ("SKYLEAK", round(float(self.leak), 4), "source light in sky rows [sigma/pixel]"),
            ("RDNOISE", round(float(self.read_noise), 4), "read noise used by sky fit [e-]"),
            ("GAIN", round(float(self.gain), 5), "gain used by sky fit [e-/data unit]"),
            ("NOISESRC", self.noise_source[:60], "source of GAIN and RDNOISE"),
            ("FLEXURE", round(float(flex), 4), "largest sky-line shift over slit [px]"),
            ("FLEXCORR", bool(self.flexure_applied), "flexure correction applied"),
            ("SKYSPORD", int(self.spatial_order), "spatial order of the sky model"),
            ("SKYLMIS", round(float(self.line_misfit), 4), "sky-line misfit (1 = none)"),
            ("SKYILLUM", round(float(self.illumination), 5), "slit illumination range corrected"),
            ("SKYLIGHT", round(float(self.smooth_light), 4), "smooth extra light fit [data units]"),
            ("SKYUNLIT", unlit[:60], "unlit rows left out of the sky fit"),
            ("SKYBADC", _listed(self.bad_columns, 60), "dead/hot columns left out of sky fit"),
            ("SKYWARP", self.warp_source[:60], "warp used by the sky fit"),
            ("WARPDPX", round(float(self.warp_shift), 4), "largest sky-line correction of warp [px]"),
            ("SKYNWARN", len(self.warnings), "number of sky-fit warnings"),
        ] + [("SKYWARN", w, "sky-fit warning") for w in self.warnings[:5]]
        return [_fit_card(*card) for card in cards]

    def summary(self):
        """One line for a status bar or a log."""
        state = "SUSPECT" if self.suspect else "ok"
        text = (
            f"sky fit {state}: chi {self.chi_std:.3f}, rejected {100 * self.rejected_fraction:.2f} %, "
            f"leak {self.leak:.2f} sigma, gain {self.gain:.3g}, read noise {self.read_noise:.3g} e- "
            f"({self.noise_source}), spatial order {self.spatial_order}"
        )
        if self.illumination:
            text += f", slit illumination {100 * self.illumination:.1f} %"
        if self.smooth_light:
            text += f", smooth light up to {self.smooth_light:.3g}"
        if self.blank_columns:
            spans = ", ".join(f"{a}" if b == a + 1 else f"{a}-{b - 1}" for a, b in self.blank_columns)
            text += f", columns {spans} hold one value in every row (no data: left out)"
        if self.bad_columns:
            text += (f", columns {_listed(self.bad_columns, 60)} dead or hot (left out of the sky fit; their pixels "
                     "not usable: quality.bad_columns, MASK)")
        if self.warp_source != "arc":
            text += f", warp: {self.warp_source}"
            if self.warp_shift:
                text += f" (up to {self.warp_shift:.2f} px)"
        if self.warnings:
            text += " - " + " ".join(self.warnings)
        return text


# --------------------------------------------------------------------------- noise model
def _robust_var(values):
    med = median(values)
    return (1.4826 * median(np.abs(values - med))) ** 2


def _stable_argsort(values):
    """``np.argsort(values, kind="stable")``, faster: the default (SIMD) sort is
    several times quicker, and without ties the order is the same; with
    ties the stable sort is done after all."""
    order = np.argsort(values)
    ordered = values[order]
    if np.any(ordered[1:] == ordered[:-1]):
        order = np.argsort(values, kind="stable")
    return order


def _binned_medians(level, residual, n_bins):
    """Per bin of ``np.array_split(range(len), n_bins)``: the median level,
    the MAD variance of the residuals (``_robust_var``) and the bin size.

    The bins have one of two sizes, so the medians are taken along the rows
    of (at most) two 2-D arrays: the same values as a median per bin,
    without a hundred small NumPy calls.
    """
    size, n_big = divmod(level.size, n_bins)
    split = n_big * (size + 1)
    lv, var, n = [], [], []
    for lo, hi, m in ((0, split, size + 1), (split, level.size, size)):
        if hi <= lo:
            continue
        lev = level[lo:hi].reshape(-1, m)
        res = residual[lo:hi].reshape(-1, m)
        lv.append(median_rows(lev))
        med = median_rows(res)
        mad = 1.4826 * median_rows(np.abs(res - med[:, None]))
        # Squared one by one as NumPy scalars, as ``_robust_var`` does (the
        # scalar power can differ from the array's x * x in the last bit).
        var.append(np.array([m**2 for m in mad]))
        n.append(np.full(lev.shape[0], float(m)))
    return np.concatenate(lv), np.concatenate(var), np.concatenate(n)


def estimate_noise(level, residual, n_bins=24, min_per_bin=200, fixed_gain=None, fixed_read_noise=None,
                   extra_variance=0.0):
    """Effective gain and read noise from the scatter of residuals by sky level.

    Parameters
    ----------
    level : array
        Model sky level of each sample (data units).
    residual : array
        Data minus model at the same samples.
    n_bins, min_per_bin : int
        Level bins (of equal counts) and the fewest samples per bin.
    fixed_gain, fixed_read_noise : float, optional
        A part of the noise model that is known: only the other is fit.
    extra_variance : float
        Variance added to the residuals that is not the data's (a dither), taken off each bin's.

    Returns
    -------
    (gain, read_noise) or None
        ``gain`` in electrons per data unit, ``read_noise`` in electrons, from
        a weighted straight-line fit ``var = level / gain + (read_noise /
        gain)**2`` to the robust (MAD) variance of the residuals in bins of
        level (robust to cosmic rays and the odd bad pixel). None when the
        samples cannot constrain it.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> level = rng.uniform(20, 3000, 200000)
    >>> g, rn = 2.0, 8.0
    >>> res = rng.normal(0, np.sqrt(level / g + (rn / g) ** 2))
    >>> gain, read_noise = estimate_noise(level, res)
    >>> bool(abs(gain / g - 1) < 0.05), bool(abs(read_noise / rn - 1) < 0.15)
    (True, True)
    """
    bins = noise_bins(level, residual, n_bins, min_per_bin, extra_variance=extra_variance)
    if bins is None:
        return None
    return _fit_noise_bins(*bins, fixed_gain, fixed_read_noise)


def noise_bins(level, residual, n_bins=24, min_per_bin=200, extra_variance=0.0):
    """``(level, variance, count)`` per bin of sky level (equal counts), as :func:`estimate_noise` fits them.

    The median level and the robust (MAD) variance of the residuals in each
    bin; bins without a positive variance are left out. None when fewer
    than ``2 * min_per_bin`` finite samples or two bins remain.
    """
    level = np.asarray(level, dtype=float)
    residual = np.asarray(residual, dtype=float)
    ok = np.isfinite(level) & np.isfinite(residual)
    level, residual = level[ok], residual[ok]
    if level.size < 2 * min_per_bin:
        return None
    n_bins = int(min(n_bins, level.size // min_per_bin))
    # Bins of equal counts in level, but the top bins hold bright-line
    # pixels, where a small model error adds scatter; they still count, as
    # that scatter is real for the weights too.
    order = _stable_argsort(level)
    lv, var, n = _binned_medians(level[order], residual[order], n_bins)
    if extra_variance:
        var = var - extra_variance
    good = np.isfinite(var) & (var > 0)
    lv, var, n = lv[good], var[good], n[good]
    if lv.size < 2:
        return None
    return lv, var, n


def noise_pedestal(lv, var, n):
    """``(pedestal, z)``: how far the binned variance's straight line ``var = level / gain + c`` puts ``c``
    below zero, or None (fewer than 4 bins, or no rise with level).

    Photon and read noise give ``c = (read_noise / gain)**2 >= 0``. A level
    that carries no photon noise (a bias or overscan level left in the
    frames; a sky model that misses the bright lines, whose excess scatter
    tilts the line, does the same) gives ``c < 0``: ``pedestal = -c * gain``
    is the least such level in data units, and ``z`` the significance of
    ``c`` (its value over its standard error; the MAD variance of ``n``
    samples has a relative error of ~1.65 / sqrt(n)). :func:`estimate_noise`
    clips ``c`` at zero (read noise 0) and tilts the gain instead.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> level = rng.uniform(20, 3000, 200000)
    >>> res = rng.normal(0, np.sqrt(level / 2.0 + 16.0))
    >>> noise_pedestal(*noise_bins(level + 300.0, res))[0] > 250  # 300 data units of bias left in
    True
    """
    line = _noise_line(lv, var, n)
    if line is None:
        return None
    (slope, c), cov = line
    if not (slope > 0 and cov[1, 1] > 0):
        return None
    return float(-c / slope), float(c / np.sqrt(cov[1, 1]))


def gain_spread(lv, var, n):
    """The relative standard error of ``1 / gain`` (the slope of the binned variance in level), or None
    (fewer than 4 bins, or no rise with level).

    A sky of one level (faint, no lines: a blue spectrum) holds the variance
    at that level only, and any split of it into photon and read noise fits:
    the estimated gain is then a guess (a trial: 0.55-6.8 for 1 over five
    seeds), and so is the variance of anything brighter than the sky.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> level = rng.uniform(20, 3000, 200000)
    >>> res = rng.normal(0, np.sqrt(level / 2.0 + 16.0))
    >>> bool(gain_spread(*noise_bins(level, res)) < 0.02)
    True
    >>> level = rng.normal(5.0, 0.3, 200000)  # one level
    >>> bool(gain_spread(*noise_bins(level, rng.normal(0, np.sqrt(level + 16.0)))) > 0.3)
    True
    """
    line = _noise_line(lv, var, n)
    if line is None:
        return None
    (slope, _), cov = line
    if not (slope > 0 and cov[0, 0] >= 0):
        return None
    return float(np.sqrt(cov[0, 0]) / slope)


def _noise_line(lv, var, n):
    """``((slope, constant), covariance)`` of the weighted straight line ``var = slope * level + constant``
    through the bins (the MAD variance of ``n`` samples has a relative error of ~1.65 / sqrt(n)); None
    with fewer than 4 bins or a singular fit."""
    if lv.size < 4:
        return None
    w = n / (1.65 * var) ** 2
    design = np.stack([lv, np.ones_like(lv)], axis=1)
    normal = design.T @ (w[:, None] * design)
    try:
        cov = np.linalg.inv(normal)
    except np.linalg.LinAlgError:
        return None
    return cov @ (design.T @ (w * var)), cov


def _fit_noise_bins(lv, var, n, fixed_gain=None, fixed_read_noise=None):
    """:func:`estimate_noise`'s fit to the bins of :func:`noise_bins`."""
    # The MAD variance of n samples has a relative error of about 1.65/sqrt(n).
    w = n / (var**2)
    if fixed_gain is not None and fixed_read_noise is not None:
        return float(fixed_gain), float(fixed_read_noise)
    if fixed_gain is not None:
        alpha = 1.0 / fixed_gain
        beta = max(float(np.sum(w * (var - alpha * lv)) / np.sum(w)), 0.0)
        return float(fixed_gain), float(np.sqrt(beta) * fixed_gain)
    if fixed_read_noise is not None:
        # var = alpha * level + (read_noise * alpha)**2: one unknown, scanned.
        alphas = np.geomspace(1e-8, 1e8, 1601) * (np.median(var) / max(np.median(lv), np.finfo(float).tiny))

        def cost(a):
            a = a[:, None]  # every candidate at once: one row of bins each
            return np.sum(w * (var - a * lv - (fixed_read_noise * a) ** 2) ** 2, axis=1)

        i = int(np.argmin(cost(alphas)))
        lo, hi = alphas[max(i - 1, 0)], alphas[min(i + 1, alphas.size - 1)]
        fine = np.geomspace(lo, hi, 201)
        return float(1.0 / fine[int(np.argmin(cost(fine)))]), float(fixed_read_noise)
    design = np.stack([lv, np.ones_like(lv)], axis=1)
    alpha, beta = _nonneg_lstsq(design, var, w)
    if not alpha > 0:
        # No trend with level (a narrow range of levels): all is read noise
        # plus what the lowest level allows; the weights are flat anyway.
        positive = lv > 0
        if positive.any():  # (relative: data in flux units have levels ~1e-17)
            alpha = max(float(np.min(var[positive] / lv[positive])) * 0.5, np.finfo(float).tiny)
        else:  # no level above zero (frames differenced): as before, flagged by the fit's checks
            alpha = max(float(np.min(var / 1e-30)) * 0.5, 1e-12)
        beta = max(float(np.average(var - alpha * lv, weights=w)), 0.0)
    gain = 1.0 / alpha
    read_noise = float(np.sqrt(max(beta, 0.0)) * gain)
    return float(gain), read_noise


def _nonneg_lstsq(design, y, w):
    """Weighted least squares for two coefficients, each clipped at >= 0 (refit the other)."""
    sw = np.sqrt(w)
    # Each column to unit norm: levels of data in flux units (~1e-17) beside a
    # column of ones are 17 orders apart, and lstsq's cut-off dropped the first.
    a = design * sw[:, None]
    norms = np.sqrt(np.sum(a * a, axis=0))
    norms[norms == 0] = 1.0
    coef, *_ = np.linalg.lstsq(a / norms, y * sw, rcond=None)
    coef = coef / norms
    if coef[0] >= 0 and coef[1] >= 0:
        return coef
    fits = []
    for keep in (0, 1):
        col = design[:, keep]
        c = np.sum(w * col * y) / np.sum(w * col * col)
        c = max(c, 0.0)
        out = np.zeros(2)
        out[keep] = c
        fits.append((np.sum(w * (y - design @ out) ** 2), out))
    return min(fits, key=lambda t: t[0])[1]


def provisional_levels(stack, masked_rows):
    """``(var_low, level_low)`` of :func:`provisional_noise`, which do not depend on the gain; None if too few.

    The variance (half that of adjacent-row differences, robust) and the
    median level of the faintest quarter of the pixels of pairs of adjacent
    unmasked rows.
    """
    lit = np.flatnonzero(~masked_rows)
    pairs = lit[:-1][np.diff(lit) == 1]
    if pairs.size == 0:
        return None
    pairs = pairs[:: max(1, pairs.size // 64)]  # a sample of rows is plenty
    a = stack[:, pairs]
    b = stack[:, pairs + 1]
    diff = (b - a).ravel()
    level = (0.5 * (a + b)).ravel()
    ok = np.isfinite(diff) & np.isfinite(level)
    diff, level = diff[ok], level[ok]
    if diff.size < 50:
        return None
    low = level <= percentile(level, 25)
    var = _robust_var(diff[low])
    if var == 0:
        # Whole ADU under a read noise of less than one (5 e-/ADU, 3 e-): most differences are 0,
        # and so was their MAD, the read noise, and with it the first pass's weights (the rows'
        # scales 0.0007-0.08 for 1, dozens of rows inside the slit "unlit"; trial R3). A clipped
        # standard deviation instead, as the line search's noise takes (``robust_noise``).
        d = diff[low]
        var = clipped_std(d - median(d)) ** 2
    return var / 2, max(median(level[low]), 0.0)


def provisional_noise(stack, masked_rows, gain=None, levels=None):
    """A first guess of the noise (gain, read noise) from adjacent-row differences.

    Only for the weights of the first pass: the variance of the faintest
    quarter of the pixels (continuum, where the lines' tilt does not matter)
    gives the read-noise part once the Poisson part of the assumed gain is
    taken off; it is floored at a quarter of that variance so that a wrong
    assumed gain cannot give a zero read noise. ``levels``: what
    :func:`provisional_levels` gives for these frames, when known.
    Returns ``(gain, read_noise, var_low)``.
    """
    gain = 1.0 if gain is None else float(gain)
    if levels is None:
        levels = provisional_levels(stack, masked_rows)
    if levels is None:
        return gain, 0.0, 0.0
    var_low, level_low = levels
    rn_var = max(var_low - level_low / gain, 0.25 * var_low)
    return gain, float(np.sqrt(rn_var) * gain), float(var_low)


class FirstLook:
    """A frame's faint-pixel noise and dark rows for a mask, each measured once, when first asked.

    ``levels`` (:func:`provisional_levels`, which the gain does not change)
    and ``dark`` (:func:`dark_rows` with that noise): a pass over the frame
    each (the dark rows: ~0.05 s on 4096 x 4096). One per fit, shared by
    the sky-warp measurements and the fit's first stage.
    """

    def __init__(self, stack, masked_rows):
        self._stack, self._masked_rows = stack, masked_rows

    @functools.cached_property
    def levels(self):
        return provisional_levels(self._stack, self._masked_rows)

    @functools.cached_property
    def _dark_and_edge(self):
        var_low = provisional_noise(self._stack, self._masked_rows, levels=self.levels)[2]
        return dark_rows(self._stack, self._masked_rows, var_low, edges=True)

    @property
    def dark(self):
        return self._dark_and_edge[0]

    def with_dark(self, rows):
        """The same look with ``rows`` (bool, per row) dark too; the levels are shared."""
        other = FirstLook(self._stack, self._masked_rows)
        other.__dict__["levels"] = self.levels
        dark, edge = self._dark_and_edge
        other.__dict__["_dark_and_edge"] = (dark | rows, edge)
        return other

    @property
    def edge(self):
        """Rows that the slit's lit edge crosses (lit in some columns only): part of ``dark``."""
        return self._dark_and_edge[1]


# --------------------------------------------------------------------------- rows
def dark_rows(stack, masked_rows, noise_var, edges=False):
    """Rows with (almost) no sky light, from the rows' median level; a first cut.

    A row is dark when its median (over every 4th column, all exposures) is
    below ``UNLIT_FRACTION`` of the median row's, and that median stands
    clear of the noise (so that a sky of lines
    on a zero continuum does not make every row "dark"). Grown by one row.
    Masked rows are never reported. So are the rows at the slit's ends that
    its lit edge crosses in some columns (:func:`_slanted_edge_rows`).
    Frames of whole steps (integer ADU) coarse beside the sky's level are
    read from the rows' means (values clipped at the 2nd and 98th
    percentiles) instead of their medians.
    ``edges=True`` returns ``(dark, crossed)``: ``crossed`` the dark rows lit
    in some blocks of columns (and the next two, the edge's soft part), when
    an edge crosses rows.
    """
    n_exp, n_rows, n_cols = stack.shape
    lit_candidates = ~masked_rows
    none = np.zeros(n_rows, bool)
    if lit_candidates.sum() < 4:
        return (none, none) if edges else none
    every4 = stack[:, :, ::4]
    med = _row_medians(every4)
    # The median row, not a high percentile: a trace left in the sky rows
    # must not make the sky rows look dark next to it.
    lit_med = med[lit_candidates]
    if not np.isfinite(lit_med).any():
        return (none, none) if edges else none
    bright = np.nanmedian(lit_med)
    if _coarsely_quantised(every4, bright):
        # Whole numbers of ADU on a sky of a few: each row's median is one of
        # them, and with the median row's at 1 every row at 0 was "dark" (a
        # sky of 0.5 ADU: 3-24 runs of rows inside the slit). Their means,
        # the values clipped at the frame's 2nd and 98th percentiles (cosmic
        # rays), step by far less. (Means of 4 columns still stepped by a
        # quarter: at 5 e-/ADU and a 0.4 ADU sky, 46 rows went "dark".)
        lo, hi = np.nanpercentile(every4[:, :: max(1, n_rows // 64)], [2, 98])
        med = quiet_nanmean(np.clip(every4, lo, hi), axis=2).mean(axis=0)
        lit_med = med[lit_candidates]
        bright = np.nanmedian(lit_med)
    # Scatter of a row median: 1.25 sigma / sqrt(n); the lit level must stand out.
    n_used = max(1, n_cols // 4 * n_exp)
    if not bright > 10 * 1.25 * np.sqrt(max(noise_var, 0.0) / n_used):
        return (none, none) if edges else none
    dark = lit_candidates & (med < UNLIT_FRACTION * bright)
    if dark.any() or np.any(med[lit_candidates] < EDGE_FRACTION * bright):
        past, lit_somewhere = _slanted_edge_rows(every4, lit_candidates, dark, noise_var)
    else:  # (every row lit in most columns: no edge crosses the frame; the blocks' medians cost a pass)
        past = lit_somewhere = np.zeros(n_rows, bool)
    crossed = (past | dark) & lit_somewhere if past.any() else past
    dark |= past
    grown = dark.copy()
    grown[1:] |= dark[:-1]
    grown[:-1] |= dark[1:]
    if not edges:
        return grown & lit_candidates
    near = crossed.copy()
    for step in (1, 2):
        near[step:] |= crossed[:-step]
        near[:-step] |= crossed[step:]
    return grown & lit_candidates, near & grown & lit_candidates


#: Frames whose values step by more than this fraction of the median row's level read their rows'
#: light from clipped means (:func:`dark_rows`).
QUANTISED_FRACTION = 0.05


def _coarsely_quantised(images, level):
    """Whether the values of ``images`` are whole numbers of a step (integer ADU) coarse beside ``level``."""
    rows = images[0, :: max(1, images.shape[1] // 64)]
    q = value_quantum(rows.ravel())
    return q > 0 and not abs(level) > q / QUANTISED_FRACTION


def _row_medians(images):
    """Each row's median over the columns of ``images`` (``(n_exp, n_rows, n)``), averaged over the
    exposures; NaN for a row without a finite pixel."""
    # np.median's values (as np.nanmedian's without NaN), several times faster.
    if np.isnan(images).any():
        # A row with no finite pixel (a blanked edge) has a NaN median: never
        # dark. Filled first, not by silencing numpy's All-NaN warning (the
        # filters are process-wide; this runs beside other threads).
        blank = ~np.isfinite(images).any(axis=2)
        med = np.nanmedian(np.where(blank[..., None], 0.0, images), axis=2)
        med[blank] = np.nan
        return med.mean(axis=0)
    return median_along(images, axis=2, nan_checked=True).mean(axis=0)


#: Column blocks :func:`_slanted_edge_rows` reads the rows' light in.
EDGE_BLOCKS = 8

#: A row is past the slit's lit edge in a block of columns where its light falls below this fraction
#: of the same row's in the other blocks (the median block).
EDGE_FRACTION = 0.85

#: Rows beyond the dark ones of a block that its edge's soft part may dim (:func:`_slanted_edge_rows`).
EDGE_SOFT_ROWS = 3


def _slanted_edge_rows(every4, lit, dark, noise_var):
    """Rows at the slit's ends that its lit edge crosses in some columns: a boolean array.

    A slit's image need not end parallel to the rows: its edge may slant or
    curve by several rows across the frame. The rows' median over all
    columns then sees a row dark in half the columns as lit (0.5 > 0.2 of
    the median row), and its dark and half-lit pixels went into the sky
    fit: 1.1 sigma RMS over the sky rows, 41 sigma at worst, "sky fit ok".
    So the rows' light is also read in ``EDGE_BLOCKS`` blocks of columns,
    each relative to its own median row. In each block, the rows from the
    frame's first (or last) row on that are dark there (below
    ``UNLIT_FRACTION``; rows dark already pass too) are past the edge, and
    so are up to :data:`EDGE_SOFT_ROWS` more beyond them that are dimmer
    than ``EDGE_FRACTION`` of the same row's median over the blocks, by 5
    times the noise: the edge's soft part (the slit's illumination along
    the rows is the same in every block; an edge is not). (A bright sky
    line tilted across a narrow block moves its median by 40 % from row to
    row: dimmer alone is no edge.)
    """
    n_exp, n_rows, n = every4.shape
    n_blocks = min(EDGE_BLOCKS, n // 16)
    out = np.zeros(n_rows, bool)
    if n_blocks < 2:
        return out, out
    edges = np.linspace(0, n, n_blocks + 1).astype(int)
    prof = np.stack([_row_medians(every4[:, :, a:b]) for a, b in zip(edges[:-1], edges[1:])])
    use = lit & ~dark & np.isfinite(prof).all(axis=0)
    if use.sum() < 4:
        return out, out
    bright = np.median(prof[:, use], axis=1)
    # A block median of the row scatters by 1.25 sigma / sqrt(pixels).
    noise = 1.25 * np.sqrt(max(noise_var, 0.0) / (np.diff(edges) * n_exp))
    good = bright > 10 * noise
    if good.sum() < 2:
        return out, out
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = prof[good] / bright[good, None]
        rel_noise = (noise[good] / bright[good])[:, None]
        typical = np.median(rel, axis=0)
        gone = rel < UNLIT_FRACTION
        soft = (rel < EDGE_FRACTION * typical) & (typical - rel > 5 * rel_noise)
    passable = dark | ~np.isfinite(prof).any(axis=0)
    for b in range(rel.shape[0]):
        for rows in (range(n_rows), range(n_rows - 1, -1, -1)):
            seen_dark, extra = False, 0
            for r in rows:
                if gone[b, r] or passable[r]:
                    if extra:  # dark again after a soft row: not the slit's end
                        break
                    seen_dark |= bool(gone[b, r])
                    out[r] |= bool(gone[b, r])
                elif seen_dark and soft[b, r] and extra < EDGE_SOFT_ROWS:
                    out[r] = True
                    extra += 1
                else:
                    break
    # Rows lit in some block: those whose sky changes along the columns (the unlit rows' sky takes that).
    return out & lit, (rel > 0.5).any(axis=0) & lit


_FLOAT_MAX = float(np.finfo(np.float64).max)  # what np.nan_to_num puts for +inf


@njit(cache=True, nogil=True, error_model="numpy")
def _row_profile_kernel(rows, flux, model, variance, clip2, n_iter, ratio, info):
    """``row_profile``'s loop: the same operations in the same order as its
    NumPy form (per-row sums accumulated in sample order, as ``np.bincount``
    does), without a dozen full-size temporaries per iteration."""
    n = rows.shape[0]
    n_rows = ratio.shape[0]
    num = np.zeros(n_rows)
    keep = np.empty(n, np.bool_)
    for i in range(n):
        keep[i] = math.isfinite(flux[i]) and math.isfinite(model[i]) and variance[i] > 0
    big = _FLOAT_MAX
    for it in range(n_iter + 1):
        num[:] = 0.0
        info[:] = 0.0
        for i in range(n):
            if keep[i]:
                wm = (1.0 / variance[i]) * model[i]
                num[rows[i]] += wm * flux[i]
                info[rows[i]] += wm * model[i]
        for r in range(n_rows):
            ratio[r] = num[r] / info[r] if info[r] > 0 else np.nan
        if it == n_iter:
            break
        for i in range(n):
            v = variance[i]
            if not (math.isfinite(flux[i]) and math.isfinite(model[i]) and v > 0):
                continue
            s = ratio[rows[i]]
            # As np.nan_to_num(ratio, nan=1.0).
            if math.isnan(s):
                s = 1.0
            elif s == math.inf:
                s = big
            elif s == -math.inf:
                s = -big
            # The variance at the row's level: Poisson part scaled, read part
            # not; ``variance`` already holds both at the model's level, so
            # scaling it by max(scale, small) is a close, conservative
            # approximation.
            var_row = v * max(abs(s), 0.05)
            d = flux[i] - s * model[i]
            keep[i] = d * d <= clip2 * max(var_row, v * 0.05)


def row_profile(rows, flux, model, variance, n_rows, clip=5.0, n_iter=3):
    """Each row's sky relative to the model: ``(ratio, information)`` per row.

    ``ratio[y]`` is the weighted least-squares scale ``sum(w f m) / sum(w m m)``
    over the row's samples (w = 1 / variance), recomputed ``n_iter`` times
    without the samples beyond ``clip`` sigma of ``ratio * model`` (cosmic
    rays). The clipping is judged against each row's own scale, not the
    model's: a row lit at half the model's level must not lose its line
    peaks. ``information[y] = sum(w m m)`` is the ratio's inverse variance,
    i.e. how much chi-square a wrong scale costs. Rows without samples get
    ratio NaN and information 0.
    """
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    n_rows = int(n_rows)
    if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
        raise ValueError(f"rows must lie in 0..{n_rows - 1} (n_rows={n_rows})")
    ratio = np.empty(n_rows)
    info = np.empty(n_rows)
    # One compiled signature: contiguous float64 inputs.
    _row_profile_kernel(rows, np.ascontiguousarray(flux, dtype=np.float64),
                        np.ascontiguousarray(model, dtype=np.float64),
                        np.ascontiguousarray(variance, dtype=np.float64),
                        float(clip) ** 2, int(n_iter), ratio, info)
    return ratio, info


def added_light_profile(rows, effpix, flux, model, variance, n_rows, bin_width=8.0, clip=5.0):
    """Each row's light that does not scale with the sky's spectrum: ``(added, faint)`` per row, in sigma per
    pixel (``faint``: the faint half of the spectrum's excess over the model, scale and all).

    Each row's samples are summed in bins of ``bin_width`` effective pixels
    (wider where the samples are sparse, so that a bin holds ~8 of them),
    data and model alike, and the bins fit as ``scale * model + added *
    count`` (weighted least squares, ``w = 1 / variance`` of the bin's sum,
    once more without the bins beyond ``clip`` sigma, e.g. a cosmic ray's):
    ``scale`` takes the slit's illumination, which brightens the sky lines
    and the continuum alike, and ``added`` the light without the sky's lines
    (a source's wings, scattered light), per pixel. The bins hold whole lines,
    so a line's shape (its width or position changing along the slit, which
    the model averages over the rows) does not pass for added light; fit
    sample by sample it read +-0.05 sigma, rising towards the slit's middle.
    ``added`` is given in units of the row's noise per pixel; rows without
    samples, or whose spectrum cannot tell the two apart (no lines), get NaN. ``faint`` is the continuum's own excess
    over the model (the bins at or below the median level), per pixel, in
    the same units: added light raises it, while sky lines that brighten
    along the slit against the continuum (an OH group) move ``added`` alone,
    through the scale.

    ``flux``, ``model`` and ``variance`` may be ``(n_exposures, n_samples)``:
    the exposures' sums are fit, and the results given per exposure (over
    one exposure's noise).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> e = np.tile(np.arange(2000.0), 4)
    >>> sky = np.where(e % 50 < 10, 2000.0, 100.0)                 # continuum and lines
    >>> rows = np.repeat(np.arange(4), 2000)
    >>> light = np.array([0.0, 0.0, 30.0, 30.0])[rows]             # added to rows 2 and 3
    >>> flux = 1.1 * sky + light + rng.normal(0, np.sqrt(sky))
    >>> added, faint = added_light_profile(rows, e, flux, sky, sky, 4)
    >>> np.round(added, 1) + 0.0                                   # 30 e- over the rows' noise, ~11 e-
    array([0. , 0. , 2.7, 2.7])
    """
    rows = np.asarray(rows, np.int64)
    effpix, flux, model, variance = (np.asarray(a, float) for a in (effpix, flux, model, variance))
    n_exp = 1
    if flux.ndim == 2:
        # Several exposures of the same samples: their sums, one fit (a sample blanked in one is left out),
        # in units of one exposure's noise (the sums' light grows as n, their noise as sqrt(n)).
        n_exp = flux.shape[0]
        flux, model, variance = (a.sum(axis=0) for a in (flux, model, variance))
    keep = np.isfinite(flux) & np.isfinite(model) & np.isfinite(effpix) & (variance > 0)
    added = np.full(n_rows, np.nan)
    if not keep.any():
        return added, np.full(n_rows, np.nan)
    if not keep.all():  # (most often all are: no copies)
        rows, effpix, flux, model, variance = (a[keep] for a in (rows, effpix, flux, model, variance))
    e_min = effpix.min()
    # Bins of at least ~8 samples (a subsample of a large frame is sparse): wider than ``bin_width`` there.
    n_lit = max(int(np.count_nonzero(np.bincount(rows, minlength=n_rows))), 1)
    bin_width = max(float(bin_width), 8.0 * n_lit * (float(effpix.max()) - e_min) / max(rows.size, 1))
    key = ((effpix - e_min) * (1.0 / bin_width)).astype(np.int64)
    n_bins = int(key.max()) + 1
    key += rows * n_bins
    size = n_rows * n_bins
    f_bin = np.bincount(key, weights=flux, minlength=size)
    m_bin = np.bincount(key, weights=model, minlength=size)
    v_bin = np.bincount(key, weights=variance, minlength=size)
    n_bin = np.bincount(key, minlength=size).astype(float)
    # The row's noise per pixel: the harmonic mean of its samples' variances.
    count = n_bin.reshape(n_rows, n_bins).sum(axis=1)
    inv = np.bincount(rows, weights=1.0 / variance, minlength=n_rows)
    filled = np.flatnonzero(n_bin)
    row_of = filled // n_bins
    f_bin, m_bin, v_bin, n_bin = f_bin[filled], m_bin[filled], v_bin[filled], n_bin[filled]
    # The continuum's own excess over the model: the bins at or below the median level.
    faint_bins = m_bin / n_bin <= np.median(m_bin / n_bin)
    faint_n = np.bincount(row_of[faint_bins], weights=n_bin[faint_bins], minlength=n_rows)
    faint_d = np.bincount(row_of[faint_bins], weights=(f_bin - m_bin)[faint_bins], minlength=n_rows)
    use = np.ones(filled.size, bool)
    for _ in range(2):
        ro, f, m, n = row_of[use], f_bin[use], m_bin[use], n_bin[use]
        w = 1.0 / v_bin[use]
        s_mm, s_mn, s_nn, s_fm, s_fn, n_used = (
            np.bincount(ro, weights=v, minlength=n_rows)
            for v in (w * m * m, w * m * n, w * n * n, w * f * m, w * f * n, np.ones(ro.size)))
        det = s_mm * s_nn - s_mn * s_mn
        # A row whose bins hardly differ (no lines) cannot part the two.
        ok = (n_used >= 3) & (det > 1e-6 * s_mm * s_nn)
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = np.where(ok, (s_nn * s_fm - s_mn * s_fn) / det, np.nan)
            offset = np.where(ok, (s_mm * s_fn - s_mn * s_fm) / det, np.nan)
            per_pixel = np.sqrt(np.where(ok & (inv > 0), count / inv, np.nan) * n_exp)
            added = offset / per_pixel
            resid = f_bin - (scale[row_of] * m_bin + offset[row_of] * n_bin)
            use = resid * resid <= clip * clip * v_bin
    with np.errstate(invalid="ignore", divide="ignore"):
        faint = np.where(faint_n > 0, faint_d / faint_n, np.nan) / per_pixel
    return added, faint


#: The rows' mean chi (the leak and dim-row checks) counts a pixel at most
#: this far above the sky: a cosmic ray's track along a row (a tenth of a
#: row of pixels at +5 read +0.5: "light above the sky" on a good fit) weighs
#: less, while a source's light spread along the row is far below it.
ROW_CHI_HIGH = 3.0


@njit(inline="always", error_model="numpy")
def _pixel_chi(value, bg, gain, rn_var):
    """``(value - bg) / sqrt(max(bg, 0) / gain + rn_var)``: non-finite where the variance is 0."""
    return (value - bg) / math.sqrt((bg if bg > 0.0 else 0.0) / gain + rn_var)


def _kernel_views(*arrays_and_types):
    """Contiguous read-only views of ``(array, dtype)`` pairs: one compiled signature for a kernel
    whether or not the caller's arrays are writable."""
    views = [np.ascontiguousarray(a, dtype=t).view() for a, t in arrays_and_types]
    for view in views:
        view.flags.writeable = False
    return views


@njit(cache=True, nogil=True, error_model="numpy")
def _row_chi_sums(index, n_cols, background, flux, gain, rn_var, counts, sums, p_lo, p_hi):
    """Per row: how many sky samples have a finite chi, and the sum of their
    chi clipped to -5 .. ``ROW_CHI_HIGH``, with ``chi = (flux - bg) / sqrt(max(bg, 0) / gain +
    rn_var)`` and ``bg = background[index]`` (flat pixel index; ``counts``
    and ``sums`` zeroed by the caller). Sums in sample order, as
    ``np.bincount`` adds them. Only the samples of pixels ``p_lo <= index <
    p_hi`` (whole rows: threads share the rows)."""
    for i in range(index.shape[0]):
        p = index[i]
        if p < p_lo or p >= p_hi:
            continue
        chi = _pixel_chi(flux[i], background[p], gain, rn_var)
        if math.isfinite(chi):
            row = p // n_cols
            counts[row] += 1.0
            sums[row] += min(max(chi, -5.0), ROW_CHI_HIGH)


def _row_chi_means(index, n_cols, n_rows, background, flux, gain, read_noise):
    """``(counts, sums)`` per row of the clipped chi of one exposure's sky samples (see ``_row_chi_sums``).

    ``index`` are the samples' flat pixel indices into ``background``
    (``n_rows * n_cols``), ``flux`` their values.
    """
    index = np.asarray(index)
    if index.dtype != np.int32:
        index = index.astype(np.int64)  # a second signature only for frames over 2**31 pixels
    counts = np.zeros(n_rows)
    sums = np.zeros(n_rows)
    background = np.ascontiguousarray(background, dtype=np.float64).ravel()
    flux = np.ascontiguousarray(flux, dtype=np.float64)
    # Each row's sums come from one thread, in sample order; the threads
    # share the (random) reads of the background.
    pieces = chunk_bounds(n_rows, _n_threads() if index.size >= _PARALLEL_MIN_SAMPLES else 1)
    run_in_threads([(lambda r0=r0, r1=r1: _row_chi_sums(index, int(n_cols), background, flux, float(gain),
                                                        float((read_noise / gain) ** 2), counts, sums,
                                                        r0 * n_cols, r1 * n_cols))
                    for r0, r1 in pieces])
    return counts, sums


@njit(cache=True, nogil=True, error_model="numpy")
def _row_chi_sums_in_rows(data, background, rows, gain, rn_var, counts, sums, r_lo, r_hi):
    """``_row_chi_sums`` when the samples are every pixel of the rows flagged in ``rows``: read
    row by row in memory order (``data`` and ``background`` are ``(n_rows, n_cols)``), not
    gathered at random in sample order; each row's sum runs along its columns."""
    for r in range(r_lo, r_hi):
        if not rows[r]:
            continue
        n = 0.0
        total = 0.0
        for c in range(data.shape[1]):
            chi = _pixel_chi(data[r, c], background[r, c], gain, rn_var)
            if math.isfinite(chi):
                n += 1.0
                total += min(max(chi, -5.0), ROW_CHI_HIGH)
        counts[r] = n
        sums[r] = total


def _row_chi_means_in_rows(data, background, rows, gain, read_noise):
    """``(counts, sums)`` per row of the clipped chi of every pixel of the flagged ``rows``.

    The same numbers as :func:`_row_chi_means` for samples that are all the
    pixels of those rows (in effective-pixel order, a row's samples come in
    column order: the map grows along each row), from two reads in memory
    order instead of a random read of the background per sample.

    Examples
    --------
    >>> data = np.array([[3.0, 5.0], [1.0, np.nan], [9.0, 9.0]])
    >>> counts, sums = _row_chi_means_in_rows(data, np.full((3, 2), 4.0), np.array([True, True, False]), 1.0, 0.0)
    >>> counts.tolist(), sums.tolist()
    ([2.0, 1.0, 0.0], [0.0, -1.5, 0.0])
    """
    data, background, rows = _kernel_views((data, np.float64), (background, np.float64), (rows, np.bool_))
    n_rows = data.shape[0]
    counts = np.zeros(n_rows)
    sums = np.zeros(n_rows)
    pieces = chunk_bounds(n_rows, _n_threads() if data.size >= _PARALLEL_MIN_SAMPLES else 1)
    run_in_threads([(lambda r0=r0, r1=r1: _row_chi_sums_in_rows(data, background, rows, float(gain),
                                                                float((read_noise / gain) ** 2), counts, sums,
                                                                r0, r1))
                    for r0, r1 in pieces])
    return counts, sums


#: Rows read per exposure for each column's mean chi (evenly spread over the sky rows).
COLUMN_CHI_ROWS = 256


def _spread(rows):
    """At most :data:`COLUMN_CHI_ROWS` of ``rows``, evenly spread."""
    rows = np.asarray(rows, dtype=np.int64)
    return rows[:: max(1, -(-rows.size // COLUMN_CHI_ROWS))]


def column_chi_means(data, background, rows, gain, read_noise, clip=5.0, *, rejected=None):
    """``(means, z)``: each column's mean chi over the sky ``rows`` of one exposure, and its significance.

    ``chi = (data - background) / sqrt(max(background, 0) / gain + (read_noise / gain)**2)``,
    clipped to +-``clip`` (a cosmic ray is one pixel, not a column),
    non-finite values (and ``rejected`` pixels, when given) left out;
    ``z = mean * sqrt(n)`` for the ``n`` pixels
    counted. At most :data:`COLUMN_CHI_ROWS` rows are read, evenly spread.
    A model that follows the sky leaves every column's mean near 0 (``z``
    of a few at most among thousands of columns); a defect the model took
    for sky (two hot columns under a sky line) leaves its own columns above
    it and their neighbours below, in every exposure.

    Examples
    --------
    >>> data = np.full((4, 3), 100.0)
    >>> data[:, 1] += 20.0
    >>> data[0, 2] += 90.0  # a cosmic ray
    >>> means, z = column_chi_means(data, np.full((4, 3), 100.0), np.arange(4), 1.0, 0.0)
    >>> means.round(2).tolist(), z.round(1).tolist()
    ([0.0, 2.0, 1.25], [0.0, 4.0, 2.5])

    The fit's rejected pixels left out:

    >>> rejected = np.zeros((4, 3), bool)
    >>> rejected[0, 2] = True
    >>> column_chi_means(data, np.full((4, 3), 100.0), np.arange(4), 1.0, 0.0, rejected=rejected)[0].tolist()
    [0.0, 2.0, 0.0]
    """
    skip = np.zeros((1, 1), np.bool_) if rejected is None else rejected
    data, background, skip, rows = _kernel_views((data, np.float64), (background, np.float64), (skip, np.bool_),
                                                 (_spread(rows), np.int64))
    n_cols = data.shape[1]
    sums, counts = np.zeros(n_cols), np.zeros(n_cols)
    _column_chi_sums(data, background, skip, rejected is not None, rows, float(gain), float((read_noise / gain) ** 2),
                     float(clip), sums, counts)
    means = sums / np.maximum(counts, 1.0)
    return means, means * np.sqrt(counts)


def chi_square_profiles(chi, level, index, n_cols, gain, read_noise, clip=5.0, block=16, group=4):
    """The robust variance of sky samples' chi (``(1.4826 MAD)**2``) per group of ``group`` columns
    (item ``j`` for columns ``group * j`` on): ~1 where the noise model holds; NaN where no sample counts.

    ``chi`` are the samples' residuals over the noise model's sigma, ``level``
    the sky model there and ``index`` their pixels' flat indices (``row *
    n_cols + col``), a subsample of one exposure's sky samples. Each chi is
    clipped to +-``clip`` before squaring, and the sky lines are left out,
    wings and all: samples whose level is above 1.2 times the 30th
    percentile of the levels in their block of ``block`` columns plus 2
    noise sigmas of it (a model that misses the lines' shape, where it
    changes along the slit, raised their columns' mean by 1.3-1.7x). A sky
    model and a noise model that fit give ~1 everywhere; a part of the frame
    whose gain is not the one applied (a second amplifier) scatters more or
    less than the rest, at every level. Medians: cosmic rays (trial F, 3 %
    of the pixels rejected) and a trace that drifts into the sky rows (trial
    H2) raised columns' means by 1.7-1.8x, where a gain does every row; and
    about each group's own median, so that a sky a little off there (the
    slit's illumination missed at its ends) does not read as more noise.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> index = np.arange(200 * 40)
    >>> chi = rng.normal(size=index.size) * np.where(index % 40 < 20, 1.0, 0.8)  # the right half 0.8x
    >>> by_columns = chi_square_profiles(chi, np.full(index.size, 100.0), index, 40, 1.0, 0.0)
    >>> round(float(np.median(by_columns[:5])), 1), round(float(np.median(by_columns[5:])), 1)
    (1.0, 0.6)
    """
    chi = np.asarray(chi, dtype=np.float64)
    level = np.asarray(level, dtype=np.float64)
    index = np.asarray(index, dtype=np.int64)
    n = index.size
    n_groups = -(-n_cols // group)
    if not n:
        return np.full(n_groups, np.nan)
    cols = index % n_cols
    # The continuum's level per block of columns: the 30th percentile of its finite levels, read on at
    # most ~16 samples per column (256 per block: plenty for a level).
    pick = slice(None, None, max(1, n // (16 * n_cols)))
    finite = np.isfinite(level[pick])
    base = np.clip(group_quantiles((cols[pick] // block)[finite], level[pick][finite], -(-n_cols // block), 0.3),
                   0, None)
    with np.errstate(invalid="ignore"):
        cut = np.where(np.isfinite(base), 1.2 * base + 2.0 * np.sqrt(base / gain + (read_noise / gain) ** 2), np.inf)
        keep = np.isfinite(chi) & (level <= cut[cols // block])
    return _spread_squared(cols[keep] // group, np.clip(chi[keep], -clip, clip), n_groups, clip)


def _spread_squared(groups, chi, n_groups, clip):
    """Each group's squared robust spread of ``chi`` (in ``[-clip, clip]``) about its own median:
    ``(1.4826 MAD)**2``, ~1 for unit Gaussian noise. About the group's median, so that a sky a little
    off in some rows (a slit's illumination missed at its ends: 2.1x in its squares' median) does not
    pass for other noise, as a second amplifier's gain does."""
    span = 2.0 * clip + 1.0
    centre = _bounded_medians(groups, chi + clip, n_groups, span) - clip
    spread = _bounded_medians(groups, np.abs(chi - centre[groups]), n_groups, span)
    return (1.4826 * spread) ** 2


def _bounded_medians(groups, values, n_groups, span):
    """Each group's median of ``values`` in ``[0, span)`` (the upper middle one; NaN for an empty group):
    one sort of ``group * span + value``, 3x quicker than sorting by the two keys."""
    out = np.full(int(n_groups), np.nan)
    if not values.size:
        return out
    order = np.argsort(groups * span + values)
    counts = np.bincount(groups, minlength=int(n_groups))
    have = np.flatnonzero(counts)
    starts = np.cumsum(counts) - counts
    out[have] = values[order[starts[have] + counts[have] // 2]]
    return out


def group_quantiles(groups, values, n_groups, q):
    """Each group's ``q`` quantile of ``values`` (the value at ``int(q * (m - 1))`` of its ``m`` sorted;
    NaN for a group without one), ``groups`` the group of each value (``0 <= groups < n_groups``).

    Examples
    --------
    >>> group_quantiles(np.array([0, 1, 0, 0, 2]), np.array([3.0, 5.0, 1.0, 2.0, 7.0]), 4, 0.5).tolist()
    [2.0, 5.0, 7.0, nan]
    """
    groups = np.asarray(groups, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    out = np.full(int(n_groups), np.nan)
    if not values.size:
        return out
    order = np.lexsort((values, groups))
    counts = np.bincount(groups, minlength=int(n_groups))
    have = np.flatnonzero(counts)
    starts = np.cumsum(counts) - counts
    out[have] = values[order[starts[have] + (q * (counts[have] - 1)).astype(np.int64)]]
    return out


def scatter_step(profile, block=16, min_blocks=4, sharp=0.5, z=4.0):
    """``(index, before, after)``: where a profile of chi**2 (:func:`chi_square_profiles`) steps from one
    level to another, or None.

    The profile's medians in blocks of ``block`` values, in logarithm; the
    split between blocks (``min_blocks`` at least on each side) that best
    cuts them into two levels (least squares); ``before`` and ``after`` are
    the medians of the blocks on either side. None unless the step is
    sharp: the ``min_blocks`` blocks on either side of the split differ
    by ``sharp`` times the step or more, the same way (a ramp, such as
    fringes rising towards the red, is not a step; a part of the frame read
    through another amplifier is); and unless it stands ``z`` standard
    errors clear of the blocks' own scatter (a median's error on each side):
    few sky rows make noisy blocks, whose chance steps of 1.25-1.3x near an
    end of the frame were taken for an amplifier's (trial O1, good fits made
    suspect).

    Examples
    --------
    >>> profile = np.r_[np.full(512, 1.1), np.full(512, 0.77)]
    >>> scatter_step(profile)
    (512, 1.1, 0.77)
    >>> scatter_step(np.linspace(0.8, 1.2, 1024)) is None
    True
    """
    profile = np.asarray(profile, dtype=float)
    n_blocks = profile.size // block
    if n_blocks < 2 * min_blocks:
        return None
    medians = quiet_nanmedian(profile[:n_blocks * block].reshape(n_blocks, block), axis=1)  # (no value: NaN)
    use = np.isfinite(medians) & (medians > 0)
    index = np.flatnonzero(use)
    logs = np.log(medians[use])
    if logs.size < 2 * min_blocks:
        return None
    # The two levels' squared residuals at every split, from cumulative sums.
    n = logs.size
    j = np.arange(min_blocks, n - min_blocks + 1)
    total, squares = np.cumsum(logs), np.cumsum(logs**2)
    left = squares[j - 1] - total[j - 1] ** 2 / j
    right = (squares[-1] - squares[j - 1]) - (total[-1] - total[j - 1]) ** 2 / (n - j)
    split = int(j[np.argmin(left + right)])
    before, after = logs[:split], logs[split:]
    step = float(np.median(after) - np.median(before))
    local = float(np.median(after[:min_blocks]) - np.median(before[-min_blocks:]))
    if not (step != 0 and local / step >= sharp):
        return None
    # The blocks' scatter about their side's level (robust, pooled); a median's error is ~1.25x a mean's.
    spread = 1.4826 * float(np.median(np.abs(np.r_[before - np.median(before), after - np.median(after)])))
    if abs(step) <= z * 1.2533 * spread * np.sqrt(1.0 / before.size + 1.0 / after.size):
        return None
    return (_refined_split(profile, int(index[split] * block), block),
            round(float(np.exp(np.median(before))), 6), round(float(np.exp(np.median(after))), 6))


def _refined_split(profile, at, block):
    """The value index within ``block`` of ``at`` that best splits the profile's logarithm near it into
    two levels (least squares over 4 blocks each side)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        logs = np.log(profile)
    lo, hi = max(0, at - 4 * block), min(profile.size, at + 4 * block)
    best, where = np.inf, at
    for k in range(max(lo + 1, at - block), min(hi - 1, at + block) + 1):
        a, b = logs[lo:k], logs[k:hi]
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        if not a.size or not b.size:
            continue
        cost = float(np.sum((a - a.mean()) ** 2) + np.sum((b - b.mean()) ** 2))
        if cost < best:
            best, where = cost, k
    return int(where)


@njit(cache=True, nogil=True, error_model="numpy")
def _column_chi_sums(data, background, rejected, use_rejected, rows, gain, rn_var, clip, sums, counts):
    """Per column, the sum of the clipped chi over ``rows`` and their count (rows read in memory order;
    ``rejected`` pixels left out when ``use_rejected``)."""
    for r in rows:
        for c in range(data.shape[1]):
            if use_rejected and rejected[r, c]:
                continue
            chi = _pixel_chi(data[r, c], background[r, c], gain, rn_var)
            if math.isfinite(chi):
                sums[c] += min(max(chi, -clip), clip)
                counts[c] += 1.0


def effpix_chi_sums(data, background, rejected, rows, emap, flexure, gain, read_noise, start, width, n_bins,
                    skip_columns, clip=5.0):
    """``(sums, counts)``: the clipped chi (see :func:`column_chi_means`) of one exposure's sky ``rows``
    (at most :data:`COLUMN_CHI_ROWS`, evenly spread), summed in bins of ``width`` effective pixels from
    ``start`` (``n_bins`` of them; beyond, the end bins); ``rejected`` pixels, ``skip_columns`` and
    non-finite values left out. ``emap`` is the effective-pixel map; ``flexure``, None or
    ``(shift, t)``, makes it ``emap - shift * t[row]`` (the exposure's flexure shift).

    Examples
    --------
    >>> data = np.full((4, 3), 100.0)
    >>> data[:, 1] += 20.0
    >>> emap = np.tile(np.arange(3.0), (4, 1))
    >>> sums, counts = effpix_chi_sums(data, np.full((4, 3), 100.0), np.zeros((4, 3), bool), np.arange(4),
    ...                                emap, None, 1.0, 0.0, 0.0, 1.0, 3, np.zeros(3, bool))
    >>> (sums / counts).round(2).tolist()
    [0.0, 2.0, 0.0]
    """
    shift, t = (0.0, np.zeros(np.shape(data)[0])) if flexure is None else (float(flexure[0]), flexure[1])
    data, background, emap, t = _kernel_views((data, np.float64), (background, np.float64), (emap, np.float64),
                                              (t, np.float64))
    rejected, rows, skip = _kernel_views((rejected, np.bool_), (_spread(rows), np.int64), (skip_columns, np.bool_))
    sums, counts = np.zeros(int(n_bins)), np.zeros(int(n_bins))
    _effpix_chi_sums(data, background, rejected, rows, emap, shift, t, float(gain), float((read_noise / gain) ** 2),
                     float(clip), float(start), float(width), skip, sums, counts)
    return sums, counts


@njit(cache=True, nogil=True, error_model="numpy")
def _effpix_chi_sums(data, background, rejected, rows, emap, shift, t, gain, rn_var, clip, start, width, skip, sums,
                     counts):
    """Per bin of effective pixel, the sum of the clipped chi over ``rows`` and their count."""
    last = sums.size - 1
    for r in rows:
        for c in range(data.shape[1]):
            if skip[c] or rejected[r, c]:
                continue
            chi = _pixel_chi(data[r, c], background[r, c], gain, rn_var)
            e = (emap[r, c] - shift * t[r] - start) / width
            if math.isfinite(chi) and math.isfinite(e):
                b = min(max(int(math.floor(e)), 0), last)
                sums[b] += min(max(chi, -clip), clip)
                counts[b] += 1.0


#: Side (px) of the square blocks :func:`block_chi_scatter` averages the residuals in.
BLOCK_SIZE = 8


def _with_columns(rejected, shape, columns):
    """``rejected`` (None: nothing) with every pixel of ``columns`` set; ``rejected`` itself when there are none
    (a ``(1, 1)`` placeholder for None)."""
    if not len(columns):
        return np.zeros((1, 1), np.bool_) if rejected is None else rejected
    skip = np.zeros(shape, np.bool_) if rejected is None else np.array(rejected, dtype=np.bool_)
    skip[:, list(columns)] = True
    return skip


def block_chi_scatter(data, background, rejected, rows, gain, read_noise, size=BLOCK_SIZE, clip=5.0, columns=()):
    """How much more the residuals scatter averaged in blocks than pixel by pixel: ~1 for noise.

    The clipped chi (see :func:`column_chi_means`) of the sky ``rows`` (at
    most :data:`COLUMN_CHI_ROWS`, evenly spread), rejected and non-finite
    pixels and the ``columns`` (dead or hot ones, already marked) left
    out, is averaged in blocks of ``size`` rows by ``size`` columns; each
    block's mean times the square root of its count (its ``z``) scatters
    as one pixel's chi when the residuals are noise. Returns the RMS of
    the blocks' ``z`` over the RMS of the pixels' chi (NaN with fewer than
    50 blocks at least half full): the structure beyond the noise,
    whatever the noise model's scale. Fringes, or a flat-field pattern,
    that the sky model (one spectrum along the slit) cannot follow raise
    it; a sky line the model misses is a few blocks among thousands.
    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> sky = np.full((64, 256), 400.0)
    >>> noise = rng.normal(0.0, 20.0, sky.shape)
    >>> bool(abs(block_chi_scatter(sky + noise, sky, None, np.arange(64), 1.0, 0.0) - 1.0) < 0.1)
    True
    >>> fringes = 12.0 * np.sin(np.arange(256) / 3.0)  # 0.6 sigma, ~19 px period
    >>> round(block_chi_scatter(sky + noise + fringes, sky, None, np.arange(64), 1.0, 0.0), 1)
    2.5
    """
    skip = _with_columns(rejected, np.shape(data), columns)
    data, background, skip, rows = _kernel_views((data, np.float64), (background, np.float64), (skip, np.bool_),
                                                 (_spread(rows), np.int64))
    n_rb, n_cb = rows.size // size, data.shape[1] // size
    sums, counts = np.zeros((n_rb, n_cb)), np.zeros((n_rb, n_cb))
    square = np.zeros(1)
    _block_chi_sums(data, background, skip, rejected is not None or len(columns) > 0, rows[: n_rb * size],
                    float(gain), float((read_noise / gain) ** 2), float(clip), int(size), sums, counts, square)
    full = counts >= 0.5 * size * size
    n_pixels = counts.sum()
    if np.count_nonzero(full) < 50 or n_pixels == 0 or square[0] == 0:
        return math.nan
    z = sums[full] / np.sqrt(counts[full])
    return float(math.sqrt(np.mean(z**2) / (square[0] / n_pixels)))


#: Heights and widths (rows x columns) of the small blocks :func:`fine_chi_scatter` averages the residuals in:
#: a pattern whose period along the dispersion is ~10 px (fringes at high dispersion, a readout's pick-up
#: noise) averages out in 8 x 8 blocks, and columns that alternate (an odd-even pattern of a readout: +-0.27
#: sigma left in the sky rows, "ok" before, trial T1) in any block of even width.
FINE_BLOCKS = ((4, 4), (16, 2), (16, 1))
#: Adjacent sky rows per band that :func:`fine_chi_scatter` reads (a multiple of every block's height).
FINE_BAND = 16
#: Effective-pixel bins (px) whose mean residual :func:`fine_chi_scatter` takes off first.
FINE_BIN = 0.5
#: At most this many sky rows :func:`fine_chi_scatter` reads (its blocks are thousands then).
FINE_ROWS = 128


def _bands(rows, height, max_rows=COLUMN_CHI_ROWS):
    """``rows`` (sorted) cut into runs of ``height`` adjacent rows, at most ``max_rows`` rows in all, the runs
    evenly spread; ``(n_runs * height,)``, run by run."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size < height:
        return rows[:0]
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    runs = []
    for run in np.split(rows, breaks):
        runs.extend(run[i:i + height] for i in range(0, run.size - height + 1, height))
    if not runs:
        return rows[:0]
    keep = max(1, max_rows // height)
    if len(runs) > keep:
        runs = [runs[i] for i in np.linspace(0, len(runs) - 1, keep).round().astype(int)]
    return np.concatenate(runs)


def fine_chi_scatter(data, background, rejected, rows, effpix, gain, read_noise, blocks=FINE_BLOCKS,
                     clip=5.0, bin_width=FINE_BIN, shift=0.0, t_rows=None, columns=()):
    """:func:`block_chi_scatter` in small blocks of adjacent rows (``blocks``: ``(rows, columns)`` each), after
    the residuals' mean at each effective pixel is taken off; the largest of the blocks' ratios (~1 for noise).

    The sky rows are read in bands of :data:`FINE_BAND` adjacent rows (at most
    :data:`FINE_ROWS` rows, evenly spread). The clipped chi of each pixel
    (rejected and non-finite ones left out) less the mean chi in its bin
    of ``bin_width`` effective pixels (``effpix``: the frame's map; less
    ``shift`` times ``t_rows``, each row's coordinate, when the fit
    corrected a shift) is what the blocks average (the ``columns``, dead
    or hot ones already marked, left out): a sky spectrum the model misses
    a little is the same in every row at an effective pixel, and where the
    lines hardly tilt it runs down whole columns, which narrow blocks
    would take for structure. What is left is what no sky spectrum holds:
    a pattern fixed to the detector. A pattern of period ~10 px along the
    dispersion (fringes at high dispersion, a readout's pick-up noise)
    averages out in 8 x 8 blocks: 0.4-0.7 sigma RMS left in the sky read
    0.9-1.3 there, "ok" (trial G). NaN when no block geometry has 50
    blocks at least half full.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> sky = np.full((64, 400), 400.0)
    >>> effpix = np.tile(np.arange(400.0), (64, 1)) + 0.1 * np.arange(64)[:, None]  # lines tilt 6 px
    >>> noise = rng.normal(0.0, 20.0, sky.shape)
    >>> bool(abs(fine_chi_scatter(sky + noise, sky, None, np.arange(64), effpix, 1.0, 0.0) - 1.0) < 0.1)
    True
    >>> x, y = np.meshgrid(np.arange(400.0), np.arange(64.0))
    >>> pattern = 12.0 * np.sin(2 * np.pi * (x / 10 + y / 200))     # 0.4 sigma RMS, 10 px period
    >>> round(fine_chi_scatter(sky + noise + pattern, sky, None, np.arange(64), effpix, 1.0, 0.0), 1)
    1.5
    """
    band = _bands(np.unique(np.asarray(rows, dtype=np.int64)), FINE_BAND, FINE_ROWS)
    if band.size == 0:
        return math.nan
    bg = np.asarray(background, dtype=np.float64)[band]
    with np.errstate(invalid="ignore", divide="ignore"):
        chi = np.asarray(data, dtype=np.float64)[band] - bg
        np.clip(bg, 0, None, out=bg)
        bg *= 1.0 / gain
        bg += (read_noise / gain) ** 2
        np.sqrt(bg, out=bg)
        chi /= bg
    np.clip(chi, -clip, clip, out=chi)
    e = np.asarray(effpix, dtype=np.float64)[band]
    if shift:
        e -= shift * np.asarray(t_rows, dtype=np.float64)[band][:, None]
    ok = np.isfinite(chi)
    ok &= np.isfinite(e)
    if rejected is not None:
        ok &= ~np.asarray(rejected, dtype=bool)[band]
    ok[:, list(columns)] = False
    if not ok.any():
        return math.nan
    # Each pixel's mean chi at its effective pixel off (the bins hold every row of the bands).
    count = ok.astype(np.float64)
    chi[~ok] = 0.0
    e_lo = float(np.min(e, where=ok, initial=np.inf))
    e[~ok] = e_lo
    e -= e_lo
    e *= 1.0 / bin_width
    key = e.astype(np.int64).ravel()
    means = np.bincount(key, weights=chi.ravel()) / np.maximum(np.bincount(key, weights=count.ravel()), 1)
    chi -= means[key].reshape(chi.shape)
    chi *= count
    square = float(np.vdot(chi, chi))
    if square == 0:
        return math.nan
    n_pixels = int(np.count_nonzero(ok))
    best = math.nan
    for height, width in blocks:
        # Block sums as sums of strided slices (a reshape's sum over two axes is several times slower).
        n_rb, n_cb = chi.shape[0] // height, chi.shape[1] // width
        sums = _strided_sum(_strided_sum(chi[: n_rb * height], height, axis=0)[:, : n_cb * width], width, axis=1)
        n = _strided_sum(_strided_sum(count[: n_rb * height], height, axis=0)[:, : n_cb * width], width, axis=1)
        full = n >= 0.5 * height * width
        if np.count_nonzero(full) < 50:
            continue
        ratio = math.sqrt(float(np.mean(sums[full] ** 2 / n[full])) / (square / n_pixels))
        best = ratio if not best >= ratio else best
    return best


def _strided_sum(a, step, axis):
    """``a``'s sums over runs of ``step`` along ``axis`` (its length a multiple of ``step``)."""
    pick = [slice(None)] * a.ndim
    pick[axis] = slice(0, None, step)
    out = a[tuple(pick)].copy()
    for i in range(1, step):
        pick[axis] = slice(i, None, step)
        out += a[tuple(pick)]
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def _block_chi_sums(data, background, rejected, use_rejected, rows, gain, rn_var, clip, size, sums, counts, square):
    """Sums and counts of the clipped chi in blocks of ``size`` of ``rows`` by ``size`` columns, and
    the sum of its squares (``square[0]``)."""
    n_cb = sums.shape[1]
    for i in range(rows.size):
        r = rows[i]
        rb = i // size
        for c in range(n_cb * size):
            if use_rejected and rejected[r, c]:
                continue
            chi = _pixel_chi(data[r, c], background[r, c], gain, rn_var)
            if math.isfinite(chi):
                chi = min(max(chi, -clip), clip)
                sums[rb, c // size] += chi
                counts[rb, c // size] += 1.0
                square[0] += chi * chi


@njit(cache=True, nogil=True)
def _ceiling_kernel(flux, index, rejected, band):
    """``(ceiling, n, any_kept)`` of :func:`sky_ceiling` in two passes (no sample-sized temporaries)."""
    ceiling = -np.inf
    any_kept = False
    for k in range(flux.shape[0]):
        for i in range(flux.shape[1]):
            v = flux[k, i]
            # The rejected flag (a read anywhere in a frame-sized array: a
            # cache miss) only for samples that would raise the ceiling.
            if math.isfinite(v) and v > ceiling and not rejected[k, index[i]]:
                any_kept = True
                ceiling = v
    n = 0
    if any_kept and ceiling > 0.0:
        floor = ceiling * (1.0 - band)
        for k in range(flux.shape[0]):
            for i in range(flux.shape[1]):
                v = flux[k, i]
                if math.isfinite(v) and v >= floor and not rejected[k, index[i]]:
                    n += 1
    return ceiling, n, any_kept


def sky_ceiling(flux, index, rejected, band):
    """``(ceiling, n)``: the highest sky sample not rejected and how many sit within ``band`` (a fraction) of it.

    ``flux`` is ``(n_exposures, n_samples)``, ``index`` each sample's flat
    pixel index and ``rejected`` ``(n_exposures, n_pixels)``; NaN and
    rejected samples are left out. None when no sample is kept or the
    highest is not above zero. The same numbers as a boolean ``kept`` array
    with ``np.max(flux, where=kept)`` and a count, without its 2 bytes per
    sample (32 MB and ~0.1 s on a 4096 x 4096 frame).
    """
    flux = np.ascontiguousarray(flux, dtype=float)
    if flux.size < _KERNEL_MIN_SAMPLES:  # (NumPy: no compilation for a small fit)
        kept = np.isfinite(flux) & ~np.asarray(rejected, bool)[:, np.asarray(index)]
        if not kept.any():
            return None
        ceiling = float(np.max(flux, where=kept, initial=-np.inf))
        if not ceiling > 0:
            return None
        return ceiling, int(np.count_nonzero(kept & (flux >= ceiling * (1.0 - band))))
    ceiling, n, any_kept = _ceiling_kernel(flux, np.asarray(index), np.ascontiguousarray(rejected, dtype=np.bool_),
                                           float(band))
    if not any_kept or not ceiling > 0:
        return None
    return float(ceiling), int(n)


@njit(cache=True, nogil=True)
def _far_above_kernel(flux, level, ratios, rows, gain, rn_var, limit2, out):
    """``out[k, i]``: ``(flux - lit)**2 > limit2 * var(lit)`` with ``lit =
    level * ratio of the sample's row`` (NaN ratio as 0) and ``var(lit) =
    max(lit, 0) / gain + rn_var``; False where anything is NaN."""
    for k in range(flux.shape[0]):
        for i in range(flux.shape[1]):
            s = ratios[k, rows[i]]
            if math.isnan(s):
                s = 0.0
            lit = level[k, i] * s
            var = (lit if lit > 0.0 else 0.0) / gain + rn_var
            d = flux[k, i] - lit
            out[k, i] = d * d > limit2 * var


def _far_above(flux, level, ratios, rows, gain, read_noise, n_sigma=8.0):
    """Samples far from the sky as lit row by row (cosmic rays): a boolean array like ``flux``.

    ``flux`` and ``level`` are ``(n_exposures, n_samples)``, ``ratios`` the
    rows' brightness relative to ``level`` per exposure (``(n_exposures,
    n_rows)``, NaN counts as 0), ``rows`` each sample's row. A sample is
    flagged when it is more than ``n_sigma`` noise sigmas (noise model
    ``gain``, ``read_noise``) from ``level * ratio``. The same flags as
    ``(flux - lit) ** 2 > n_sigma**2 * (np.clip(lit, 0, None) / gain +
    (read_noise / gain) ** 2)`` in NumPy, in one pass.
    """
    rows = np.asarray(rows)
    if rows.dtype != np.int32:
        rows = rows.astype(np.int64)  # a second signature only for frames over 2**31 pixels
    flux = np.ascontiguousarray(flux, dtype=np.float64)
    out = np.empty(flux.shape, bool)
    _far_above_kernel(flux, np.ascontiguousarray(level, dtype=np.float64),
                      np.ascontiguousarray(ratios, dtype=np.float64), rows, float(gain),
                      float((read_noise / gain) ** 2), float(n_sigma) ** 2, out)
    return out


def _listed(values, width):
    """``"1,5,9"``, or as many as fit in ``width`` then ``"+N"`` (never a number cut in two); ``"none"`` if empty."""
    items = [str(v) for v in values]
    if not items:
        return "none"
    text = ",".join(items)
    for n in range(len(items), 0, -1):
        text = ",".join(items[:n]) + (f",+{len(items) - n}" if n < len(items) else "")
        if len(text) <= width:
            return text
    return f"+{len(items)}"


def _ranges(flags):
    """(start, stop) of the runs of True in a boolean array."""
    flags = np.asarray(flags, bool)
    edges = np.flatnonzero(np.diff(np.r_[0, flags.astype(np.int8), 0]))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def _legendre_design(y, row_range, degree):
    r0, r1 = row_range
    t = (np.asarray(y, float) - r0) * (2.0 / (r1 - r0)) - 1.0
    return np.polynomial.legendre.legvander(t, degree)


def _shelves(ratio, have, dim, bright):
    """Rows in a run from either end of the frame (past rows ``~have | dim`` there) whose sky scale is
    below ``SHELF_FRACTION * bright``, where the rows inside the slit beyond the run (past a soft edge
    of 3) stand at least twice as bright: a step, not a slit lit less and less towards its end (the
    seed's gradient 0.5-1.5 had its first 9 rows taken out).

    >>> r = np.r_[0.3, 0.3, 0.3, 0.6, 0.9, np.ones(20), np.linspace(1.0, 0.4, 40)]  # a step; a fall
    >>> np.flatnonzero(_shelves(r, np.ones(r.size, bool), np.zeros(r.size, bool), 1.0))
    array([0, 1, 2])
    """
    n = ratio.size
    low = have & (ratio < SHELF_FRACTION * bright)
    out = np.zeros(n, bool)
    for order in (np.arange(n), np.arange(n)[::-1]):
        run, inner = [], n
        for k, i in enumerate(order):
            if low[i]:
                run.append(i)
            elif have[i] and not dim[i]:
                inner = k
                break
        beyond = [i for i in order[inner + 3:inner + 3 + SHELF_STEP_ROWS] if have[i] and not dim[i]]
        if (run and len(run) <= SHELF_MAX * n and len(beyond) >= 3
                and np.median(ratio[beyond]) >= 2.0 * np.median(ratio[run])):
            out[run] = True
    return out


def analyse_rows(ratio, info, n_coef_of_order, detect_unlit=True, choose_order=True, order=0, dark=None):
    """Unlit rows and the spatial order, from the rows' sky scale.

    Parameters
    ----------
    ratio, info : (n_rows,) arrays
        From :func:`row_profile` (summed over exposures: ``info`` added,
        ``ratio`` information-weighted).
    n_coef_of_order : callable
        ``n_coef_of_order(p)``: how many coefficients the sky model has with
        spatial order ``p`` (with its knot spacing).
    detect_unlit, choose_order : bool
    order : int
        The order to use when ``choose_order`` is False.
    dark : (n_rows,) bool array, optional
        Rows already known to be dark (:func:`dark_rows`): a vignetting
        edge next to them is looked for as at the image's edges.

    Returns
    -------
    unlit : (n_rows,) bool array
        Rows to leave out: sky below ``UNLIT_FRACTION`` of the median row's, a
        shelf below ``SHELF_FRACTION`` of it at an end of the slit
        (:func:`_shelves`), and rows at the ends of the lit part whose sky
        departs from the smooth illumination (a vignetting edge), plus one row
        of margin. None when the median row's scale is not positive.
    order : int
        The spatial order with the lowest expected held-out chi-square:
        chi-square of the rows' scales about a Legendre polynomial of that
        degree, plus twice the number of sky-model coefficients (Akaike: on
        rows held out of the fit, each fitted coefficient adds about one to
        the chi-square, and each is paid twice relative to the training rows).
        Orders up to ``MAX_AUTO_ORDER`` are tried.
    """
    n_rows = ratio.size
    have = np.isfinite(ratio) & (info > 0)
    unlit = np.zeros(n_rows, bool)
    # (A sky model the rows scale to with a negative or no median has gone wrong elsewhere:
    # every row fell below a fraction of it, and the fit was left without sky rows.)
    if detect_unlit and have.sum() >= 4 and np.median(ratio[have]) > 0:
        bright = np.median(ratio[have])
        dim = have & (ratio < UNLIT_FRACTION * bright)
        # And a shelf at an end of the slit below half the sky: unlit rows
        # that a pedestal (a bias offset, dark current, scattered light)
        # keeps above the dark level. The vignetting-edge test below reads
        # them off a polynomial they bend (15 + 20 such rows of 120 at 0.35
        # of the sky: none found). Lit rows that dim (vignetting) rarely
        # fall below half; if they do, they are scaled row by row as unlit.
        dim |= _shelves(ratio, have, dim, bright)
        if dim.any():
            # One row of margin: the rows next to a dark run are half lit.
            grown = dim.copy()
            grown[1:] |= dim[:-1]
            grown[:-1] |= dim[1:]
            unlit = grown & have
    lit = have & ~unlit
    if lit.sum() < 3:
        return unlit, 0 if choose_order else order
    lit_rows = np.flatnonzero(lit)
    row_range = (float(lit_rows[0]), float(lit_rows[-1] + 1))

    def fit(degree, use):
        a = _legendre_design(lit_rows[use], row_range, degree)
        w = info[lit_rows[use]]
        sw = np.sqrt(w)
        coef, *_ = np.linalg.lstsq(a * sw[:, None], ratio[lit_rows[use]] * sw, rcond=None)
        resid = ratio[lit_rows] - _legendre_design(lit_rows, row_range, degree) @ coef
        return resid

    degrees = range(0, min(MAX_AUTO_ORDER, lit_rows.size - 2) + 1) if choose_order else [order]
    all_rows = np.ones(lit_rows.size, bool)
    best, best_score = (0 if choose_order else order), np.inf
    for d in degrees:
        resid = fit(d, all_rows)
        score = float(np.sum(info[lit_rows] * resid**2)) + 2.0 * n_coef_of_order(d)
        if score < best_score:
            best, best_score = d, score
    if detect_unlit:
        # A vignetting edge falls faster than any low-order polynomial: rows
        # at the ends of the lit part that miss the smooth profile by more
        # than 5 % are left out too (and scored again without them).
        resid = fit(best, all_rows)
        scale = np.median(ratio[lit_rows])
        # Only darker than the profile (vignetting dims), and only a run of
        # adjacent rows that starts at the image's edge or at a dark row: a
        # masked gap (the trace) stops it.
        off = resid < -0.05 * abs(scale)
        drop = np.zeros(lit_rows.size, bool)
        for idx, end in ((range(lit_rows.size), 0), (range(lit_rows.size - 1, -1, -1), n_rows - 1)):
            prev = None
            for i in idx:
                row = lit_rows[i]
                neighbour = row - 1 if end == 0 else row + 1
                at_edge = row == end or unlit[neighbour] or (dark is not None and dark[neighbour])
                if not off[i] or (prev is None and not at_edge) or (prev is not None and abs(row - prev) != 1):
                    break
                drop[i] = True
                prev = row
        if drop.any() and (~drop).sum() >= 3:
            unlit[lit_rows[drop]] = True
            keep = ~drop
            lit_rows = lit_rows[keep]
            row_range = (float(lit_rows[0]), float(lit_rows[-1] + 1))
            if choose_order:
                best_score = np.inf
                for d in degrees:
                    resid = fit(d, np.ones(lit_rows.size, bool))
                    score = float(np.sum(info[lit_rows] * resid**2)) + 2.0 * n_coef_of_order(d)
                    if score < best_score:
                        best, best_score = d, score
    return unlit, int(best)


# --------------------------------------------------------------------------- line shape
def line_shape_change(t, residual, curvature, variance, max_degree=2, clip=5.0):
    """How much the sky lines' width changes along the slit, by linearised least squares.

    Lines a little broader in some rows read ``S(e) + c(y) S''(e)`` there
    (``c`` half the change of the squared width), so the residuals about a
    model without it regress on ``S'' P_p(t)``, ``P_p`` the Legendre
    polynomials of degree ``p = 1..max_degree`` in the row coordinate ``t``
    (-1..1); the brightness and the shift along the slit are measured apart
    (:func:`row_profile`, :func:`measure_flexure`).

    Parameters
    ----------
    t : array
        Row coordinate of each sample, -1 (first row) to +1 (last).
    residual, curvature, variance : arrays
        Data minus model (each row's brightness applied), the model's second
        derivative in effective pixels, and the variance of each sample.
    max_degree : int
    clip : float
        Residuals beyond ``clip`` sigma (cosmic rays) are left out.

    Returns
    -------
    drops : (max_degree + 1,) array
        The chi-square drop of the model with the terms up to each degree
        (``drops[0] = 0``).
    coef : array
        The highest degree's coefficients (see :func:`line_shape_model`).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> e = rng.uniform(0, 200, 40000); t = rng.uniform(-1, 1, e.size)
    >>> d2 = -np.cos(e)  # the second derivative of a wiggly sky cos(e)
    >>> res = 0.05 * t * d2 + rng.normal(0, 0.01, e.size)
    >>> drops, coef = line_shape_change(t, res, d2, np.full(e.size, 1e-4))
    >>> bool(drops[1] > 1e4), bool(drops[2] - drops[1] < 20), round(float(coef[0]), 2)
    (True, True, 0.05)
    """
    t = np.asarray(t, float)
    residual = np.asarray(residual, float)
    curvature = np.asarray(curvature, float)
    variance = np.asarray(variance, float)
    ok = np.isfinite(residual) & np.isfinite(curvature) & (variance > 0)
    ok &= residual * residual <= clip * clip * np.where(ok, variance, 0.0)
    drops = np.zeros(int(max_degree) + 1)
    if max_degree < 1 or np.count_nonzero(ok) < 10 * max_degree:
        return drops, np.zeros(0)
    basis = np.polynomial.legendre.legvander(t[ok], int(max_degree))[:, 1:] * curvature[ok][:, None]
    w = 1.0 / variance[ok]
    # Small sums by einsum's own loops: a BLAS product would start threads
    # that spin (twice the CPU time for nothing on a shared machine).
    a = np.einsum("ni,nj->ij", basis * w[:, None], basis)
    b = np.einsum("ni,n->i", basis, w * residual[ok])
    coef = np.zeros(0)
    for p in range(1, int(max_degree) + 1):
        try:
            coef = np.linalg.solve(a[:p, :p], b[:p])
        except np.linalg.LinAlgError:
            break
        drops[p] = float(b[:p] @ coef)
    return drops, coef


def line_shape_model(t, curvature, coef):
    """The fitted change of :func:`line_shape_change` at samples ``(t, curvature)`` (0 where not finite)."""
    if len(coef) == 0:
        return np.zeros(np.shape(t))
    poly = np.polynomial.legendre.legvander(np.asarray(t, float), len(coef))[:, 1:]
    out = np.einsum("np,p->n", poly, coef) * np.asarray(curvature)
    return np.where(np.isfinite(out), out, 0.0)


# --------------------------------------------------------------------------- flexure
@njit(cache=True, nogil=True, error_model="numpy")
def _flexure_terms(t, flux, model, slope, variance, pick, out):
    """The products :func:`measure_flexure` sums, of the picked samples with finite values and a
    positive variance, packed in order into ``out[0:5, :n]``; returns ``n``.

    Each product is computed with the operations, in the order, of NumPy's
    elementwise version (the same numbers), in one pass without its ten
    gathered copies.
    """
    n = 0
    for i in range(flux.size):
        if not pick[i]:
            continue
        f, m, s, v = flux[i], model[i], slope[i], variance[i]
        if not (np.isfinite(f) and np.isfinite(m) and np.isfinite(s) and v > 0):
            continue
        r = f - m
        w = 1.0 / v
        g0 = -s
        g1 = g0 * t[i]
        # Residuals clipped at 5 sigma: cosmic rays must not move the estimate.
        lim = 5.0 * np.sqrt(v)
        if r < -lim:
            r = -lim
        if r > lim:
            r = lim
        wg0 = w * g0
        wg1 = w * g1
        out[0, n] = wg0 * g0
        out[1, n] = wg0 * g1
        out[2, n] = wg1 * g1
        out[3, n] = wg0 * r
        out[4, n] = wg1 * r
        n += 1
    return n


def measure_flexure(t, flux, model, slope, variance, pick=None):
    """Row-dependent shift of the sky lines against the model, by linearised least squares.

    Data shifted by ``delta(t) = a + b t`` pixels read ``S(e - delta) ~ S(e) -
    S'(e) delta``, so ``(a, b)`` come from regressing the residual on
    ``-S'`` and ``-S' t`` with weights ``1 / variance``. Residuals beyond
    5 sigma are clipped (cosmic rays must not move the estimate).

    Parameters
    ----------
    t : array
        Row coordinate of each sample, from -0.5 (bottom row) to +0.5 (top).
    flux, model, slope, variance : arrays
        Data, model value, model derivative d(model)/d(effpix), variance.
        Samples with a value that is not finite or a variance <= 0 are left out.
    pick : bool array, optional
        The samples to use (default all).

    Returns
    -------
    (b, sigma_b)
        The shift difference top minus bottom (px) and its standard error.

    Examples
    --------
    Lines that move by 0.1 px from the bottom row to the top one:

    >>> e = np.tile(np.linspace(0, 60, 600), 20)
    >>> t = np.repeat(np.linspace(-0.5, 0.5, 20), 600)
    >>> sky = lambda x: 100 + 5000 * np.exp(-0.5 * ((x % 10 - 5) / 1.2) ** 2)
    >>> slope = (sky(e + 0.01) - sky(e - 0.01)) / 0.02
    >>> b, sigma = measure_flexure(t, sky(e - 0.1 * t), sky(e), slope, sky(e))
    >>> round(b, 3), bool(sigma < 0.002)
    (0.1, True)
    """
    flux = np.ascontiguousarray(flux, dtype=np.float64)
    pick = np.ones(flux.size, bool) if pick is None else np.ascontiguousarray(pick, dtype=bool)
    terms = np.empty((5, flux.size))
    n = _flexure_terms(np.ascontiguousarray(t, dtype=np.float64), flux,
                       np.ascontiguousarray(model, dtype=np.float64), np.ascontiguousarray(slope, dtype=np.float64),
                       np.ascontiguousarray(variance, dtype=np.float64), pick, terms)
    # Summed as NumPy sums the products (pairwise): the same numbers as before the kernel.
    a00, a01, a11, b0, b1 = (np.sum(terms[j, :n]) for j in range(5))
    det = a00 * a11 - a01 * a01
    if not det > 0:
        return 0.0, np.inf
    b = (a00 * b1 - a01 * b0) / det
    sigma_b = np.sqrt(a00 / det)
    return float(b), float(sigma_b)


#: Sky rows this near a masked range (on each side) are compared with the others (:func:`line_misfit_beside_mask`).
BESIDE_MASK_ROWS = 8
#: The brightest share of the sky pixels (by the sky's level) that the comparison reads: the lines' peaks.
BESIDE_MASK_TOP = 0.03
#: Fewer bright pixels than this on a side of the mask: that side is not judged.
BESIDE_MASK_MIN_PIXELS = 300
#: The ratio above which the rows beside the mask fit the lines worse than the others (see the function);
#: raised for fewer pixels by five standard errors, about ``3.3 / sqrt(n)`` each.
BESIDE_MASK_LIMIT = 1.5
#: About this many sky rows, evenly spread, are the reference of :func:`line_misfit_beside_mask`.
BESIDE_MASK_REFERENCE_ROWS = 64
#: At most this many continuum pixels enter a median of :func:`line_misfit_beside_mask` (evenly spread).
_BESIDE_MASK_CONTINUUM = 200_000


def _chi2_medians(data, background, rows, keep, cut, gain, read_noise):
    """``(line, continuum, n)`` over ``rows`` and the columns ``keep`` (None: all): the median chi**2 of the
    ``n`` pixels whose sky is at or above ``cut`` (one level per exposure), and that of the others."""
    d, b = data[:, rows], background[:, rows]
    if keep is not None:
        d, b = d[:, :, keep], b[:, :, keep]
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.clip(b, 0.0, None)
        var /= gain
        var += (read_noise / gain) ** 2
        chi2 = d - b
        chi2 *= chi2
        chi2 /= var
    chi2[~(var > 0)] = np.nan
    bright = b >= cut[:, None, None]
    line, cont = chi2[bright], chi2[~bright]
    line, cont = line[np.isfinite(line)], cont[np.isfinite(cont)]
    cont = cont[:: max(1, cont.size // _BESIDE_MASK_CONTINUUM)]
    return (median(line) if line.size else np.nan), (median(cont) if cont.size else np.nan), int(line.size)


def line_misfit_beside_mask(data, background, masked_rows, skip_rows, gain, read_noise, columns=(),
                            reach=BESIDE_MASK_ROWS, top=BESIDE_MASK_TOP):
    """``(ratio, (start, stop), n, limit)`` for the side of a masked range whose sky rows fit the sky lines
    worst against the other sky rows, or None when no side can be judged.

    Per side (the sky rows within ``reach`` rows of a run of ``masked_rows``,
    rows ``skip_rows`` left out), the median chi**2 of its brightest pixels
    (the top ``top`` share of the sky's level: the lines' peaks) over that of
    all the sky rows, divided by the same ratio on the other pixels (the
    continuum), so that a wrong noise model or a source's wings, which change
    the whole rows, do not count. About 1 for a model as good beside the
    mask as elsewhere; the rows there are the masked rows' nearest samples,
    so a model that misses the lines there misses them under the mask.
    ``n``: the side's bright pixels; ``limit``: :data:`BESIDE_MASK_LIMIT`, or
    five standard errors of the ratio above 1 when more. ``columns``
    (dead or hot ones, already marked) are left out.

    Examples
    --------
    A model that misses the lines' peaks by 3 sigma in the five rows beside the mask alone:

    >>> rng = np.random.default_rng(1)
    >>> sky = np.tile(100.0 + 5000.0 * (np.arange(2000) % 10 == 0), (60, 1))[None]
    >>> data = sky + rng.normal(0.0, 1.0, sky.shape) * np.sqrt(sky)
    >>> masked = np.zeros(60, bool); masked[5:20] = True
    >>> model = sky.copy(); model[0, :5] += 3.0 * np.sqrt(sky[0, :5]) * (sky[0, :5] > 1000)
    >>> ratio, rows, n, limit = line_misfit_beside_mask(data, model, masked, masked, 1.0, 0.0)
    >>> rows, bool(ratio > limit)
    ((0, 5), True)
    >>> ratio, rows, n, limit = line_misfit_beside_mask(data, sky, masked, masked, 1.0, 0.0)
    >>> bool(ratio < limit)
    True
    """
    masked = np.asarray(masked_rows, bool)
    sky_rows = ~np.asarray(skip_rows, bool)
    n_exp, n_rows, n_cols = data.shape
    if not masked.any() or not sky_rows.any():
        return None
    keep = None
    if len(columns):
        keep = np.ones(n_cols, bool)
        keep[list(columns)] = False
    edges = np.flatnonzero(np.diff(np.concatenate([[0], masked.astype(np.int8), [0]])))
    sides = []
    for start, stop in zip(edges[::2], edges[1::2]):
        for rows in (np.arange(max(0, start - reach), start), np.arange(stop, min(n_rows, stop + reach))):
            rows = rows[sky_rows[rows]]
            if rows.size:
                sides.append(rows)
    if not sides:
        return None
    every = np.flatnonzero(sky_rows)
    # (64 rows spread over the slit: thousands of bright pixels, a reference ~3 % precise.)
    every = every[:: max(1, every.size // BESIDE_MASK_REFERENCE_ROWS)]
    # Each exposure's level of its brightest pixels, on the rows read for the reference.
    levels = background[:, every] if keep is None else background[:, every][:, :, keep]
    cut = np.array([percentile(v[np.isfinite(v)], 100.0 * (1.0 - top)) if np.isfinite(v).any() else np.inf
                    for v in levels.reshape(n_exp, -1)])
    line_all, cont_all, _ = _chi2_medians(data, background, every, keep, cut, gain, read_noise)
    if not (line_all > 0 and cont_all > 0):
        return None
    worst = None
    for rows in sides:
        line, cont, n = _chi2_medians(data, background, rows, keep, cut, gain, read_noise)
        if n < BESIDE_MASK_MIN_PIXELS or not cont > 0:
            continue
        ratio = (line / line_all) / (cont / cont_all)
        limit = max(BESIDE_MASK_LIMIT, 1.0 + 5.0 * 3.3 / math.sqrt(n))
        found = (float(ratio), (int(rows[0]), int(rows[-1]) + 1), n, float(limit))
        if worst is None or ratio / limit > worst[0] / worst[3]:
            worst = found
    return worst
