"""1D spectra from a sky-subtracted frame: trace the target, extract it, score the sky lines.

The point of sky subtraction is the extracted spectrum: sky lines that are
badly subtracted leave spikes (or dips) in it at the sky lines' columns.

* :func:`trace_spectrum` finds the target's centre row in every column: a
  robust centroid per block of columns, smoothed by a low-order polynomial.
* :func:`extract_spectrum` sums the target's light per column, by a boxcar
  or by optimal extraction (Horne 1986, PASP 98, 609) with the spatial
  profile measured from the data and the variance of the sky model.
* :func:`sky_line_residual_score` measures what the sky lines left behind.

Dispersion runs along columns, as everywhere in specwidgets. Only numpy and
scipy are used (no widgets).

Examples
--------
>>> import specwidgets as sw
>>> frames = sw.datasets.make_synthetic_longslit(shape=(60, 400), seed=1)
>>> corrected = frames.science[0] - frames.sky[0]
>>> trace = sw.trace_spectrum(corrected, mask_region=frames.trace_rows)
>>> variance = frames.sky[0] + frames.read_noise**2
>>> spec = sw.extract_spectrum(corrected, trace, method="optimal", variance=variance, gain=1.0)
>>> spec.flux.shape, bool(abs(spec.flux.sum() / frames.trace.sum() - 1) < 0.01)
((400,), True)

With a fitted sky (a :class:`~specwidgets.core.sky.api.SkyResult`), the
pixels' noise and the sky model's variance are given apart:

>>> result = sw.fit_sky(frames.science, frames.warp, frames.trace_rows)
>>> spec = sw.extract_spectrum(result.corrected[0], trace, variance=result.noise_variance[0],
...                            sky_variance=result.exposure_variance(0), gain=result.gain)
>>> bool(np.all(spec.variance > 0))
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numba import njit
from numpy.polynomial import Polynomial
from numpy.typing import ArrayLike
from scipy.ndimage import median_filter, uniform_filter1d

from ._stats import quiet_nanmean, quiet_nanmedian
from .inputs import mask_ranges
from .lines import find_peaks

__all__ = [
    "EXTRACTION_METHODS",
    "Extraction",
    "SkyLineScore",
    "Trace",
    "extract_spectrum",
    "sky_line_residual_score",
    "trace_spectrum",
]

EXTRACTION_METHODS = ("boxcar", "optimal")

# --------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------


def _as_frame(image, name="image"):
    if image is None:
        raise TypeError(f"{name} is None; expected a 2D frame (rows, cols)")
    try:
        arr = np.asarray(image, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} could not be read as a numeric array") from None
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        hint = " (one exposure of a stack: pass stack[k])" if arr.ndim == 3 else ""
        raise ValueError(f"{name} must be a 2D frame (rows, cols); got shape {arr.shape}{hint}")
    if min(arr.shape) < 3:
        raise ValueError(f"{name} is too small to hold a spectrum: shape {arr.shape}")
    return arr


# --------------------------------------------------------------------------
# Trace
# --------------------------------------------------------------------------


@dataclass
class Trace:
    """The target's centre row along the dispersion axis: a polynomial in the column.

    Build one with :func:`trace_spectrum`, or by hand (editable) with
    :meth:`from_coefficients` or :meth:`from_rows`.

    Attributes
    ----------
    coefficients : (order + 1,) array
        Polynomial coefficients, lowest power first, in the scaled column
        ``u = (col - (n_cols - 1) / 2) / ((n_cols - 1) / 2)`` (-1 to 1).
    n_cols : int
        Columns of the frame.
    fwhm : float
        Full width at half maximum of the target across the rows (rows).
    block_cols, block_rows : (n,) arrays
        The per-block centroids the polynomial was fit to (empty when built by hand).
    used : (n,) bool array
        Which block centroids the robust fit kept.
    """

    coefficients: np.ndarray
    n_cols: int
    fwhm: float = 4.0
    block_cols: np.ndarray = field(default_factory=lambda: np.empty(0))
    block_rows: np.ndarray = field(default_factory=lambda: np.empty(0))
    used: np.ndarray = field(default_factory=lambda: np.empty(0, bool))

    def __post_init__(self):
        self.coefficients = np.atleast_1d(np.asarray(self.coefficients, dtype=np.float64))
        if self.coefficients.ndim != 1 or self.coefficients.size == 0:
            raise ValueError("coefficients must be a 1D sequence, lowest power first")
        if not np.all(np.isfinite(self.coefficients)):
            raise ValueError(f"coefficients must be finite; got {self.coefficients}")
        self.n_cols = int(self.n_cols)
        if self.n_cols < 1:
            raise ValueError(f"n_cols must be positive; got {self.n_cols}")
        if not (np.isfinite(self.fwhm) and self.fwhm > 0):
            raise ValueError(f"fwhm must be a positive number of rows; got {self.fwhm}")

    @property
    def order(self):
        return self.coefficients.size - 1

    def _u(self, cols):
        half = max((self.n_cols - 1) / 2.0, 0.5)
        return (np.asarray(cols, dtype=np.float64) - (self.n_cols - 1) / 2.0) / half

    def centre(self, cols=None):
        """Centre row at ``cols`` (default: every column)."""
        cols = np.arange(self.n_cols) if cols is None else cols
        return Polynomial(self.coefficients)(self._u(cols))

    @property
    def rows(self):
        """Centre row of every column, ``(n_cols,)``."""
        return self.centre()

    @classmethod
    def from_coefficients(cls, coefficients, n_cols, fwhm=4.0):
        """A trace from polynomial coefficients in the scaled column (see :attr:`coefficients`).

        Examples
        --------
        >>> Trace.from_coefficients([50.0], n_cols=100).rows[:3]
        array([50., 50., 50.])
        """
        return cls(coefficients, n_cols, fwhm)

    @classmethod
    def from_rows(cls, rows, order=2, fwhm=4.0):
        """A trace through given centre rows, one per column (fit by a polynomial of ``order``).

        Examples
        --------
        >>> t = Trace.from_rows(40.0 + 0.01 * np.arange(200), order=1)
        >>> round(float(t.rows[100]), 6)
        41.0
        """
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 1 or rows.size < order + 1:
            raise ValueError(f"rows must be one centre row per column (at least {order + 1}); got shape {rows.shape}")
        cols = np.arange(rows.size)
        keep = np.isfinite(rows)
        if keep.sum() < order + 1:
            raise ValueError("rows has too few finite values to fit the trace")
        trace = cls(np.zeros(order + 1), rows.size, fwhm)
        fit = Polynomial.fit(trace._u(cols[keep]), rows[keep], order, domain=[-1, 1], window=[-1, 1])
        trace.coefficients = fit.coef
        return trace

    def shifted(self, rows):
        """The same trace moved by ``rows`` (an edit: nudge it up or down)."""
        coefficients = self.coefficients.copy()
        coefficients[0] += float(rows)
        return Trace(coefficients, self.n_cols, self.fwhm)


def _window(image, mask_region):
    """Rows ``(start, stop)`` to look for the target in."""
    n_rows = image.shape[0]
    if mask_region is not None:
        ranges = mask_ranges(mask_region, n_rows)
        if not ranges:
            raise ValueError("mask_region is empty: give the target's rows, or None to find the brightest ridge")
        return min(a for a, _ in ranges), max(b for _, b in ranges)
    # Brightest ridge: the row profile above the per-column median (the sky,
    # in a frame not sky-subtracted), collapsed robustly over the columns.
    with np.errstate(invalid="ignore"):
        excess = image - np.nanmedian(image, axis=0, keepdims=True)
    profile = np.nanmedian(excess, axis=1)
    if not np.any(np.isfinite(profile)):
        raise ValueError("the image has no finite values: nothing to trace")
    peak = int(np.nanargmax(profile))
    height = profile[peak]
    if not height > 0:
        raise ValueError("no ridge brighter than the rest of the frame: give mask_region (the target's rows)")
    # Down to 5% of the peak on each side, plus a margin.
    lo = peak
    while lo > 0 and profile[lo - 1] > 0.05 * height:
        lo -= 1
    hi = peak
    while hi < n_rows - 1 and profile[hi + 1] > 0.05 * height:
        hi += 1
    margin = max(2, (hi - lo) // 2)
    return max(0, lo - margin), min(n_rows, hi + 1 + margin)


def _recentred(prof, rows, centre, width, level, n_iter=5):
    """The centroid of ``prof`` (on ``rows``) within 1.5 ``width`` of ``centre``, its level the median of the
    rows beyond 2.5 ``width`` (else ``level``), iterated from ``centre``.

    A faint target's block profile is noise over most of the window: the
    lowest quarter's median, below zero, left a pedestal over the whole
    window that pulled the centroid towards its middle (a trial: a target of
    0.1-0.2x the sky traced 2-3.7 rows off at the frame's ends, 0.4-0.6
    FWHM; now within ~0.5 row).
    """
    half = max(1.0, 1.5 * width)
    far = np.abs(rows - centre) > 2.5 * width
    level = float(np.median(prof[far])) if np.count_nonzero(far) >= 3 else level
    for _ in range(n_iter):
        near = np.abs(rows - centre) <= half
        weights = np.clip(prof - level, 0, None) * near
        total = weights.sum()
        if not total > 0:
            break
        moved = float((weights * rows).sum() / total)
        done = abs(moved - centre) < 0.01
        centre = moved
        if done:
            break
    return centre


def _half_max_width(profile):
    """Full width at half maximum of a 1D profile (rows), interpolated between rows."""
    peak = int(np.argmax(profile))
    half = 0.5 * profile[peak]
    lo = peak
    while lo > 0 and profile[lo - 1] > half:
        lo -= 1
    hi = peak
    while hi < profile.size - 1 and profile[hi + 1] > half:
        hi += 1
    # Linear interpolation of the crossings on each side.
    left = lo - (profile[lo] - half) / (profile[lo] - profile[lo - 1]) if lo > 0 else lo - 0.5
    right = hi + (profile[hi] - half) / (profile[hi] - profile[hi + 1]) if hi < profile.size - 1 else hi + 0.5
    return float(max(right - left, 1.0))


def trace_spectrum(image: ArrayLike, mask_region=None, *, order: int = 2, n_blocks: int | None = None,
                   clip: float = 3.0) -> Trace:
    """Find the target's centre row in every column of a frame.

    Within the rows of ``mask_region`` (the rows masked out of the sky fit,
    which hold the target) or, without one, around the brightest ridge, the
    frame is cut into blocks of columns; each block's median row profile
    (medians ignore cosmic rays and sky-line residuals) above its edge level
    gives a centroid. A polynomial of ``order`` is fit to the centroids
    with iterative ``clip``-sigma rejection.

    Parameters
    ----------
    image : array_like, shape (rows, cols)
        One frame, best sky-subtracted (``result.corrected[k]``); a raw
        frame works when the target is brighter than the sky.
    mask_region : (int, int) or list of (int, int), optional
        Rows ``start:stop`` holding the target (several ranges: their span).
    order : int
        Polynomial order along the columns (2 follows a bent trace).
    n_blocks : int, optional
        Blocks of columns (default: one per ~32 columns, 8 to 64).
    clip : float
        Rejection threshold in robust standard deviations.

    Returns
    -------
    Trace

    Raises
    ------
    ValueError
        If the frame is not 2D, the window is empty, or too few blocks hold
        light to fit the polynomial (the message says how many).
    """
    image = _as_frame(image)
    n_rows, n_cols = image.shape
    order = int(order)
    if order < 0:
        raise ValueError(f"order must be >= 0; got {order}")
    r0, r1 = _window(image, mask_region)
    if r1 - r0 < 3:
        raise ValueError(f"the target window (rows {r0}:{r1}) is narrower than 3 rows")
    if n_blocks is None:
        n_blocks = int(np.clip(n_cols // 32, 8, 64))
    n_blocks = int(min(max(n_blocks, order + 1), n_cols))
    edges = np.linspace(0, n_cols, n_blocks + 1).astype(int)
    rows = np.arange(r0, r1, dtype=np.float64)
    cols, centres, widths = [], [], []
    for c0, c1 in zip(edges[:-1], edges[1:]):
        if c1 <= c0:
            continue
        block = image[r0:r1, c0:c1]
        # np.median where nothing is NaN: the same values, without nanmedian's
        # slow path for short rows (a third of a slider change's preview).
        prof = np.nanmedian(block, axis=1) if np.isnan(block).any() else np.median(block, axis=1)
        if not np.all(np.isfinite(prof)):
            continue
        # Level: the lower edge rows (sky residual or sky), so only the target counts.
        level = np.median(np.sort(prof)[: max(2, prof.size // 4)])
        weights = np.clip(prof - level, 0, None)
        total = weights.sum()
        if not total > 0:
            continue
        # Centroid of the core (above 5% of the peak): the wings of a
        # wide window add only noise.
        core = weights >= 0.05 * weights.max()
        c = float((weights * core * rows).sum() / (weights * core).sum())
        width = _half_max_width(weights)
        cols.append(0.5 * (c0 + c1 - 1))
        centres.append(_recentred(prof, rows, c, width, level))
        widths.append(width)
    cols, centres = np.asarray(cols), np.asarray(centres)
    if cols.size < order + 2:
        raise ValueError(
            f"only {cols.size} of {n_blocks} column blocks hold light in rows {r0}:{r1}; "
            f"an order-{order} trace needs {order + 2}: check mask_region or lower the order"
        )
    trace = Trace(np.zeros(order + 1), n_cols, float(np.median(widths)) or 4.0)
    u = trace._u(cols)
    used = np.ones(cols.size, bool)
    for _ in range(5):
        fit = Polynomial.fit(u[used], centres[used], order, domain=[-1, 1], window=[-1, 1])
        resid = centres - fit(u)
        sigma = 1.4826 * np.median(np.abs(resid[used] - np.median(resid[used]))) or 1e-3
        new = np.abs(resid) <= clip * max(sigma, 0.02)
        if new.sum() < order + 2 or np.array_equal(new, used):
            break
        used = new
    trace.coefficients = fit.coef
    trace.block_cols, trace.block_rows, trace.used = cols, centres, used
    return trace


# --------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------


@dataclass
class Extraction:
    """A 1D spectrum extracted along a trace.

    Attributes
    ----------
    flux : (n_cols,) array
        Target counts per column (NaN where nothing could be extracted).
    variance : (n_cols,) array
        Variance of ``flux`` (NaN when no variance image was given to a boxcar).
    method : str
        ``"boxcar"`` or ``"optimal"``.
    trace : Trace
    width : float
        Aperture width in rows.
    profile : (n_rows, n_cols) array or None
        The normalised spatial profile (optimal extraction).
    n_rejected : int
        Pixels rejected as outliers (cosmic rays) by optimal extraction.
    weights : (n_rows, n_cols) array
        Fraction of each pixel inside the aperture.
    """

    flux: np.ndarray
    variance: np.ndarray
    method: str
    trace: Trace
    width: float
    profile: np.ndarray | None = None
    n_rejected: int = 0
    weights: np.ndarray | None = field(default=None, repr=False)

    @property
    def sigma(self):
        """Standard deviation of ``flux``."""
        return np.sqrt(self.variance)


def _aperture(trace, n_rows, width):
    """Fraction of each pixel within ``centre +- width / 2`` (partial pixels at the edges)."""
    centre = trace.rows[None, :]
    lo, hi = centre - width / 2.0, centre + width / 2.0
    pix = np.arange(n_rows, dtype=np.float64)[:, None]
    return np.clip(np.minimum(pix + 0.5, hi) - np.maximum(pix - 0.5, lo), 0.0, 1.0)


def running_median_rows(image, size):
    """Median of each pixel's ``size`` neighbours along its row (edges extended).

    The values of ``scipy.ndimage.median_filter(image, size=(1, size),
    mode="nearest")`` (for an even ``size`` the upper of the two middle
    values, as there), by a sorted window slid along each row: a frame of
    cosmic-ray-free, NaN-free values in ~a tenth of the time.

    Examples
    --------
    >>> from scipy.ndimage import median_filter
    >>> x = np.random.default_rng(1).normal(size=(3, 50))
    >>> bool(np.array_equal(running_median_rows(x, 7), median_filter(x, size=(1, 7), mode="nearest")))
    True
    """
    image = np.ascontiguousarray(image, dtype=np.float64)
    size = int(size)
    if image.ndim != 2:
        raise ValueError(f"image must be 2D (rows, cols), got shape {image.shape}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if np.isnan(image).any():
        # A NaN has no place in a sorted window: the library's filter says what it gives.
        return median_filter(image, size=(1, size), mode="nearest")
    out = np.empty_like(image)
    _running_median_rows(image, size, out)
    return out


@njit(cache=True, nogil=True)
def _running_median_rows(image, size, out):
    n_rows, n_cols = image.shape
    before = size // 2  # the window is [c - before, c + size - 1 - before], as scipy's origin 0
    window = np.empty(size)
    for r in range(n_rows):
        row = image[r]
        # The first window, edges extended ("nearest"), sorted by insertion.
        for i in range(size):
            c = min(max(i - before, 0), n_cols - 1)
            v = row[c]
            j = i
            while j > 0 and window[j - 1] > v:
                window[j] = window[j - 1]
                j -= 1
            window[j] = v
        out[r, 0] = window[before]
        for c in range(1, n_cols):
            old = row[min(max(c - 1 - before, 0), n_cols - 1)]
            new = row[min(max(c + size - 1 - before, 0), n_cols - 1)]
            # Replace ``old`` by ``new`` and restore the order by shifting.
            j = 0
            while window[j] != old:
                j += 1
            while j > 0 and window[j - 1] > new:
                window[j] = window[j - 1]
                j -= 1
            while j < size - 1 and window[j + 1] < new:
                window[j] = window[j + 1]
                j += 1
            window[j] = new
            out[r, c] = window[before]


def _smooth_profile(image, weights, box, smooth):
    """Horne's profile: each row's fraction of the column's flux, smoothed along the columns."""
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = image * weights / box[None, :]
    bad = ~np.isfinite(frac) | (np.abs(box) <= 0)[None, :]
    frac = np.where(bad, 0.0, frac)
    # A median along the dispersion drops cosmic rays and faint columns; a
    # mean then smooths the steps the median leaves. The frame's ends are
    # mirrored, not repeated: the end column repeated half a window over was
    # the median there, and a faint target's end columns, noise over a box
    # near zero, gave profiles of +-5 that cancelled in the column's sum (a
    # trial: errors 0.0003 of the boxcar's, |chi| > 8 in 0.3 % of columns).
    pad = min(smooth, frac.shape[1] - 1)
    profile = running_median_rows(np.pad(frac, ((0, 0), (pad, pad)), mode="reflect"), smooth)
    profile = uniform_filter1d(profile, size=max(3, smooth // 3), axis=1, mode="reflect")[:, pad:frac.shape[1] + pad]
    # Not clipped at zero: in the wings of a faint target the smoothed profile
    # is noise about zero, and its positive half alone moved a fifth of the
    # profile into the wings, the core's weights with it (a trial: a target of
    # 0.2x the sky came out 13 % high, +0.25 sigma per column; now +2.5 %,
    # +0.02 sigma; a bright one's +0.05 sigma, now +0.01).
    profile = profile * (weights > 0)
    norm = profile.sum(axis=0, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, profile / norm, 0.0)


def _variance_frame(values, name, shape):
    """``values`` as a frame of ``shape`` of variances (>= 0, NaN allowed); ValueError otherwise."""
    values = _as_frame(values, name)
    if values.shape != shape:
        raise ValueError(f"{name} has shape {values.shape} but the image {shape}")
    if np.nanmin(values) < 0:
        raise ValueError(f"{name} has negative values; pass a variance (sigma**2), not a residual")
    return values


def _shared(weights, sky_variance):
    """Variance of ``sum(weights * e)`` over each column for an error ``e`` shared by its rows
    (``e = sigma * z``, one ``z`` per column; ``sigma = sqrt(sky_variance)``): ``(sum weights sigma)**2``."""
    return (weights * np.sqrt(sky_variance)).sum(axis=0) ** 2


def extract_spectrum(image: ArrayLike, trace: Trace, width: float | None = None, method: str = "optimal",
                     variance: ArrayLike | None = None, *, gain: float | None = None,
                     sky_variance: ArrayLike | None = None, clip: float = 5.0, smooth: int = 31,
                     max_iterations: int = 5) -> Extraction:
    """Extract the target's 1D spectrum along ``trace``, by boxcar or optimal extraction.

    Parameters
    ----------
    image : array_like, shape (rows, cols)
        The sky-subtracted frame (``result.corrected[k]``).
    trace : Trace
        From :func:`trace_spectrum` (or built by hand).
    width : float, optional
        Aperture width in rows (default: 4 FWHM of the trace, which holds
        all but ~1e-5 of a Gaussian profile).
    method : {"optimal", "boxcar"}
        ``"boxcar"`` sums the aperture; ``"optimal"`` weights each pixel by
        profile / variance (Horne 1986) with the profile measured from the
        data, and rejects outliers (cosmic rays) beyond ``clip`` sigma.
    variance : array_like, shape (rows, cols), optional
        Variance of each pixel's own noise, independent from pixel to pixel:
        without the target's own light (``result.noise_variance[k]``, the
        sky's photon and read noise; then give ``gain``), or with it (e.g.
        the ``VAR`` image of an output file; then no ``gain``). Required for
        ``"optimal"``; without it a boxcar's variance is NaN.
    gain : float, optional
        Electrons per data unit. When given, the target's own shot noise
        (model flux x profile / gain) is added to ``variance`` and the
        extraction iterated, as Horne does; without it the given variance
        is used as it is (a variance without the target's light then leaves
        its photon noise out of the errors: 3.6x too small at 17x the sky).
    sky_variance : array_like, shape (rows, cols), optional
        Variance of the sky model subtracted from each pixel
        (``result.exposure_variance(k)``). The model's error is shared by
        the rows of a column (a trial: correlation 0.98 between adjacent
        rows, 0.75 at 19 rows), so it is summed as one error along the
        aperture, not as independent ones: added to ``variance`` as
        independent, it counted ~5x too little in sigma, the errors of a
        faint target 9-24 % too small.
    clip : float
        Outlier threshold of optimal extraction, in sigma.
    smooth : int
        Columns over which the profile is smoothed along the dispersion.
    max_iterations : int
        Profile / variance / rejection rounds of optimal extraction.

    Returns
    -------
    Extraction

    Raises
    ------
    TypeError
        If ``trace`` is not a :class:`Trace`.
    ValueError
        On a non-2D image, a variance image of another shape or with
        negative values, a trace for another number of columns, an unknown
        method, a non-positive width, or optimal extraction without variance.
    """
    image = _as_frame(image)
    n_rows, n_cols = image.shape
    if not isinstance(trace, Trace):
        raise TypeError(f"trace must be a Trace (from trace_spectrum); got {type(trace).__name__}")
    if trace.n_cols != n_cols:
        raise ValueError(f"the trace is for {trace.n_cols} columns but the image has {n_cols}")
    if method not in EXTRACTION_METHODS:
        raise ValueError(f"method must be one of {EXTRACTION_METHODS}; got {method!r}")
    width = 4.0 * trace.fwhm if width is None else float(width)
    if not (np.isfinite(width) and width > 0):
        raise ValueError(f"width must be a positive number of rows; got {width}")
    if variance is not None:
        variance = _variance_frame(variance, "variance", image.shape)
    elif method == "optimal":
        raise ValueError(
            "optimal extraction needs a variance image: e.g. variance=result.noise_variance[k] (with "
            "sky_variance=result.exposure_variance(k), gain=result.gain) of a SkyResult (or use method='boxcar')"
        )
    if sky_variance is not None:
        if variance is None:
            raise ValueError("sky_variance is the sky model's part of the errors; give variance= (the pixels' "
                             "noise) too")
        sky_variance = _variance_frame(sky_variance, "sky_variance", image.shape)
        sky_variance = np.where(np.isfinite(sky_variance), sky_variance, 0.0)
    if gain is not None and not (np.isfinite(gain) and gain > 0):
        raise ValueError(f"gain must be a positive number of electrons per data unit; got {gain!r}")

    weights = _aperture(trace, n_rows, width)
    if not np.any(weights.sum(axis=0) > 0):
        raise ValueError(f"the aperture (width {width:g} rows around the trace) misses the image's rows")
    good = np.isfinite(image)
    data = np.where(good, image, 0.0)
    wgood = weights * good
    box = (data * wgood).sum(axis=0)
    if method == "boxcar":
        if variance is None:
            var = np.full(n_cols, np.nan)
        else:
            pixel_var = np.where(good, variance, 0.0)
            if gain is not None:
                pixel_var = pixel_var + np.clip(data, 0.0, None) / gain  # the target's shot noise
            var = (pixel_var * wgood**2).sum(axis=0)
            if sky_variance is not None:
                var = var + _shared(wgood, sky_variance)
        empty = wgood.sum(axis=0) == 0
        box[empty], var[empty] = np.nan, np.nan
        return Extraction(box, var, "boxcar", trace, width, weights=weights)

    # Horne (1986): profile from the data, then weights P / V with the
    # variance revised from the model and outliers rejected, until stable.
    smooth = int(max(3, smooth))
    profile = _smooth_profile(data, wgood, box, smooth)
    use = wgood > 0
    v0 = np.where(good, variance if sky_variance is None else variance + sky_variance, np.inf)
    flux = box.copy()
    n_rejected = 0
    for _ in range(int(max(1, max_iterations))):
        v = v0 + (np.clip(flux[None, :] * profile, 0.0, None) / gain if gain is not None else 0.0)
        v = np.where(v > 0, v, np.inf)
        num = (np.where(use, profile * data / v, 0.0)).sum(axis=0)
        den = (np.where(use, profile**2 / v, 0.0)).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            flux = np.where(den > 0, num / den, np.nan)
        resid2 = (data - flux[None, :] * profile) ** 2
        with np.errstate(invalid="ignore"):
            outlier = use & (resid2 > clip**2 * v)
        # Reject only the worst pixel per column per round (Horne): a bad
        # profile must not throw out the whole column.
        worst = np.where(outlier, resid2 / v, -1.0)
        col_worst = worst.argmax(axis=0)
        hit = worst[col_worst, np.arange(n_cols)] > 0
        if not hit.any():
            break
        use[col_worst[hit], np.nonzero(hit)[0]] = False
        n_rejected += int(hit.sum())
    v = v0 + (np.clip(flux[None, :] * profile, 0.0, None) / gain if gain is not None else 0.0)
    v = np.where(v > 0, v, np.inf)
    # Normalise by the profile fraction still in use, so a rejected pixel
    # does not bias the flux low; the variance is Horne's 1 / sum(P^2 / V).
    den = (np.where(use, profile**2 / v, 0.0)).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.where(den > 0, 1.0 / den, np.nan)
        if sky_variance is not None:
            # The weights took the sky model's variance as independent (in ``v``): its share of
            # ``1 / den`` is replaced by the same error summed along the column.
            a = np.where(use, profile / v, 0.0) / den
            var = var - (a**2 * sky_variance).sum(axis=0) + _shared(a, sky_variance)
    flux = np.where(np.isfinite(var), flux, np.nan)
    return Extraction(flux, var, "optimal", trace, width, profile=profile, n_rejected=n_rejected, weights=weights)


# --------------------------------------------------------------------------
# Sky-line score
# --------------------------------------------------------------------------


@dataclass
class SkyLineScore:
    """How well the sky lines were subtracted, seen in the extracted spectrum.

    Attributes
    ----------
    score : float
        RMS of the residuals at the sky lines, in units of their own error:
        about 1 when the sky lines leave nothing behind, well above 1 when
        they leave spikes or dips.
    lines : (n,) array
        Columns of the sky lines used (the brightest).
    residuals : (n,) array
        Residual of each line, in sigma (NaN for a line that could not be
        scored). With ``measured="profile"``: the light left in the aperture
        that does not follow the target's spatial profile, summed over the
        line's columns; with ``"spectrum"``: the extracted flux minus the
        spectrum's local continuum, summed over the line's columns.
    n_lines : int
        Lines with a finite residual.
    measured : str
        ``"profile"`` (the frame was given: the target's own spectrum,
        absorption lines included, is told apart from sky left over) or
        ``"spectrum"`` (the extracted spectrum alone: any narrow feature of
        the target at a sky line counts as a residual).
    reference : float
        The same RMS at columns between the sky lines (NaN when none could
        be measured): what the target and the measurement give where there
        is little sky to leave behind. Near 1 on a faint target; above 1
        when the target's own structure (or, with ``"profile"``, a bright
        target's profile changing from column to column) shows through.
        A score near the reference says the sky lines left no more than
        the rest of the spectrum shows.
    """

    score: float
    lines: np.ndarray
    residuals: np.ndarray
    n_lines: int
    measured: str = "spectrum"
    reference: float = float("nan")

    @property
    def scale(self):
        """The reference counted as at least 1 (1 when it could not be measured): the residuals' yardstick."""
        return self.reference if np.isfinite(self.reference) and self.reference > 1.0 else 1.0

    @property
    def excess(self):
        """``score`` over ``scale``: about 1 when clean."""
        return self.score / self.scale

    def __str__(self):
        ref = f" ({self.reference:.2f} between them)" if np.isfinite(self.reference) else ""
        return f"sky-line residual {self.score:.2f} sigma RMS over {self.n_lines} lines{ref}"


def sky_line_residual_score(extraction: Extraction, sky: ArrayLike, n_lines: int = 10, half_width: int = 1,
                            continuum: int = 41, *, image: ArrayLike | None = None,
                            variance: ArrayLike | None = None, gain: float | None = None) -> SkyLineScore:
    """RMS of the residuals at the brightest sky lines, in units of their error.

    With the sky-subtracted ``image`` the extraction came from (and its
    ``variance``), each line's residual is the light left in the aperture
    that does not follow the target's spatial profile: in each of the line's
    ``2 * half_width + 1`` columns the aperture's pixels are fit as the
    profile (the median of the ``continuum`` columns about the line) times a
    flux, plus a level; the level, summed over the aperture and the line's
    columns, over its error, is the residual. The target's own spectrum
    (an absorption line, a telluric band that falls on a sky line) changes
    only the flux, so a bright target does not pass for sky left over.

    Without ``image`` the residual is the extracted flux, summed over the
    line's columns, minus the spectrum's local continuum there (a running
    median over ``continuum`` columns): any narrow feature of the target at
    a sky line counts too (on a bright target, its absorption lines can
    score tens of sigma).

    Well-subtracted sky lines give residuals of pure noise: a score near 1.

    Parameters
    ----------
    extraction : Extraction
        With finite variance (give ``variance`` to :func:`extract_spectrum`).
    sky : array_like, shape (n_cols,) or (rows, cols)
        The sky spectrum (e.g. the background extracted along the same
        trace) or the background frame (then extracted here by boxcar).
    n_lines : int
        Brightest sky lines to use.
    half_width : int
        Columns on each side of a line's peak.
    continuum : int
        Columns about each line for the continuum (a running median of the
        spectrum) or the target's profile (a median of the frame's columns).
    image, variance : array_like, shape (rows, cols), optional
        The sky-subtracted frame the extraction was made from, and the
        variance of its pixels; both or neither. As for
        :func:`extract_spectrum`, ``variance`` leaves out the target's own
        light when ``gain`` is given (it is added: flux x profile / gain),
        and is the whole variance when not.
    gain : float, optional
        Electrons per data unit, for the target's own photon noise.

    Returns
    -------
    SkyLineScore
        ``measured`` says which residual was used.

    Raises
    ------
    TypeError, ValueError
        On bad input: not an :class:`Extraction`, no variance, a sky of the
        wrong length, an image without its variance or of the wrong shape,
        or no sky line found (or, with ``image``, none whose sky can be told
        from the target: a target that fills the aperture evenly).

    Examples
    --------
    >>> import specwidgets as sw
    >>> frames = sw.datasets.make_synthetic_longslit(shape=(60, 600), seed=1)
    >>> corrected = frames.science[0] - frames.sky[0]
    >>> variance = frames.sky[0] + frames.read_noise**2
    >>> trace = sw.trace_spectrum(corrected, mask_region=frames.trace_rows)
    >>> spec = sw.extract_spectrum(corrected, trace, variance=variance, gain=1.0)
    >>> score = sw.sky_line_residual_score(spec, frames.sky[0], image=corrected, variance=variance, gain=1.0)
    >>> score.measured, bool(score.score < 2.5)
    ('profile', True)
    """
    if not isinstance(extraction, Extraction):
        raise TypeError(f"extraction must be an Extraction (from extract_spectrum); got {type(extraction).__name__}")
    flux, var = extraction.flux, extraction.variance
    n_cols = flux.size
    if not np.any(np.isfinite(var)):
        raise ValueError("the extraction has no variance: extract with variance= to score the sky lines")
    if (image is None) != (variance is None):
        raise ValueError("give image= and variance= together (the sky-subtracted frame and its pixels' variance), "
                         "or neither")
    if image is not None:
        image = _as_frame(image)
        variance = np.asarray(variance, dtype=np.float64)
        if image.shape[1] != n_cols or variance.shape != image.shape:
            raise ValueError(f"image {image.shape} and variance {variance.shape} must be the extraction's frame "
                             f"(rows, {n_cols})")
    sky = np.asarray(sky, dtype=np.float64)
    if sky.ndim == 2:
        if sky.shape[1] != n_cols:
            raise ValueError(f"sky frame has {sky.shape[1]} columns but the spectrum {n_cols}")
        sky = extract_spectrum(sky, extraction.trace, width=extraction.width, method="boxcar").flux
    if sky.shape != (n_cols,):
        raise ValueError(f"sky must be a spectrum of {n_cols} columns or a frame; got shape {sky.shape}")
    n_lines, half_width = int(n_lines), int(half_width)
    if n_lines < 1 or half_width < 0:
        raise ValueError("n_lines must be >= 1 and half_width >= 0")
    sky = np.nan_to_num(sky)
    base = median_filter(sky, size=min(continuum, n_cols), mode="nearest")
    peaks, props = find_peaks(sky - base, prominence=0, distance=2 * half_width + 3)
    edge = half_width + 1
    keep = (peaks >= edge) & (peaks < n_cols - edge)
    peaks, prominence = peaks[keep], props["prominences"][keep]
    if peaks.size == 0:
        raise ValueError("no sky line found in the sky spectrum")
    order = np.argsort(prominence)[::-1][:n_lines]
    lines = np.sort(peaks[order])
    # The reference columns keep clear of real lines, not of every wiggle
    # of a noisy sky spectrum (a prominence of a few times its noise).
    line_part = sky - base
    # (Not lines.robust_noise, which centres the differences first: the same
    # number to 0.5 %, but the reference columns it picks would move.)
    wiggle = 1.4826 * float(np.median(np.abs(np.diff(line_part)))) / np.sqrt(2.0)
    real = np.union1d(peaks[prominence > 5.0 * wiggle], lines)
    controls = _control_columns(line_part, real, half_width, n_cols)
    if image is not None:
        if gain is not None and not (np.isfinite(gain) and gain > 0):
            raise ValueError(f"gain must be a positive number or None; got {gain!r}")
        (residuals, why), (control, _) = (
            _profile_residuals(image, variance, extraction.trace.rows, extraction.width, cols, half_width,
                               continuum, gain, near_line=lines)
            for cols in (lines, controls)
        )
        measured = "profile"
    else:
        # The continuum of the target, without the line columns themselves.
        masked = flux.copy()
        for p in lines:
            masked[p - half_width - 1 : p + half_width + 2] = np.nan
        fill = np.interp(np.arange(n_cols), np.flatnonzero(np.isfinite(masked)),
                         masked[np.isfinite(masked)]) if np.isfinite(masked).sum() > 1 else np.zeros(n_cols)
        cont = median_filter(fill, size=min(continuum, n_cols), mode="nearest")
        def summed(cols):
            out = []
            for p in cols:
                sl = slice(p - half_width, p + half_width + 1)
                r = np.nansum(flux[sl] - cont[sl])
                s = np.sqrt(np.nansum(var[sl]))
                out.append(r / s if s > 0 else np.nan)
            return np.asarray(out, dtype=np.float64)

        residuals, control = summed(lines), summed(controls)
        measured = "spectrum"
    finite = residuals[np.isfinite(residuals)]
    if finite.size == 0:
        if measured == "profile":
            reasons, counts = np.unique(why[why != ""], return_counts=True)
            reason = str(reasons[np.argmax(counts)]) if reasons.size else "no line could be fit"
            raise ValueError(f"no sky line could be scored from the frame: {reason}; score the spectrum alone "
                             "(without image=)")
        raise ValueError("no sky line has a finite extracted flux and error")
    score = float(np.sqrt(np.mean(finite**2)))
    control = control[np.isfinite(control)]
    reference = float(np.sqrt(np.mean(control**2))) if control.size >= 5 else float("nan")
    return SkyLineScore(score, lines.astype(float), residuals, int(finite.size), measured, reference)


_N_CONTROLS = 60


def _control_columns(line_part, peaks, half_width, n_cols):
    """Up to ``_N_CONTROLS`` columns between the sky lines, spread along the spectrum.

    Their windows (``half_width`` each side) keep ``half_width + 2`` columns
    from every sky-line peak and lie where the sky's line part is at most its
    median: stretches of continuum.
    """
    clear = np.ones(n_cols, bool)
    reach = 2 * half_width + 2
    for p in peaks:
        clear[max(0, p - reach): p + reach + 1] = False
    clear &= line_part <= np.median(line_part)
    edge = half_width + 1
    clear[:edge] = clear[n_cols - edge:] = False
    # Whole windows clear (no blocked column within half_width), then every so many of them.
    blocked = np.convolve((~clear).astype(np.int64), np.ones(2 * half_width + 1, np.int64), mode="same")
    ok = np.flatnonzero(clear & (blocked == 0))
    if ok.size > _N_CONTROLS:
        ok = ok[np.linspace(0, ok.size - 1, _N_CONTROLS).round().astype(int)]
    return ok


# A level and a profile whose weighted correlation in the aperture exceeds
# this (squared) cannot be told apart: the target fills the aperture evenly.
_SEPARABLE_R2 = 0.95
_PROFILE_CLIP = 5.0  # sigma; pixels further off (cosmic rays) leave the line's fit


def _profile_residuals(image, variance, centres, width, lines, half_width, continuum, gain=None, near_line=None):
    """Each line's level in the aperture beside the target's profile, in sigma (see sky_line_residual_score).

    ``lines``: the columns to measure; ``near_line``: the sky lines, whose
    columns the profile leaves out (default ``lines``). All lines at once:
    a preview redraw scores ~70 positions.
    """
    n_rows, n_cols = image.shape
    lines = np.asarray(lines, dtype=np.int64)
    out = np.full(lines.size, np.nan)
    if lines.size == 0:
        return out, np.full(0, "", dtype=object)
    # At least a few columns each side beyond the line's own and its margin.
    half_window = max(half_width + 4, continuum // 2)
    skip = np.zeros(n_cols, bool)
    for p in (lines if near_line is None else near_line):
        skip[max(0, p - half_width - 1): p + half_width + 2] = True
    for p in lines:
        skip[max(0, p - half_width): p + half_width + 1] = True
    centre = centres[lines]
    # Rows whose centre lies in the aperture at the line (as many as the widest; the rest flagged).
    with np.errstate(invalid="ignore"):
        r0 = np.ceil(centre - width / 2.0)
        r1 = np.floor(centre + width / 2.0) + 1
    good_line = np.isfinite(centre)
    r0 = np.where(good_line, r0, 0).astype(np.int64)
    r1 = np.where(good_line, r1, 0).astype(np.int64)
    n_ap = int(max(1, (r1 - r0).max()))
    rows = r0[:, None] + np.arange(n_ap)  # (lines, n_ap)
    in_ap = (rows < r1[:, None]) & (rows >= 0) & (rows < n_rows)
    rows_c = np.clip(rows, 0, n_rows - 1)
    # The profile: the median of the columns about the line, each moved by
    # the trace's drift to the line's column (whole rows).
    offsets = np.arange(-half_window, half_window + 1)
    wcols = lines[:, None] + offsets  # (lines, window)
    wok = (wcols >= 0) & (wcols < n_cols)
    wcols_c = np.clip(wcols, 0, n_cols - 1)
    wcentre = centres[wcols_c]
    wok &= ~skip[wcols_c] & np.isfinite(wcentre)
    with np.errstate(invalid="ignore"):
        drift = np.where(wok, np.round(wcentre - centre[:, None]), 0).astype(np.int64)
    wrows = rows[:, None, :] + drift[:, :, None]  # (lines, window, n_ap)
    wvalid = wok[:, :, None] & in_ap[:, None, :] & (wrows >= 0) & (wrows < n_rows)
    stack = np.where(wvalid, image[np.clip(wrows, 0, n_rows - 1), wcols_c[:, :, None]], np.nan)
    # An all-NaN row of the profile stays NaN: filled, not by silencing
    # numpy's warning (the filters are process-wide).
    empty = ~np.isfinite(stack).any(axis=1)
    profile = np.nanmedian(np.where(empty[:, None, :], 0.0, stack), axis=1)  # (lines, n_ap)
    profile[empty] = np.nan
    profile[wok.sum(axis=1) < 3] = np.nan
    # The line's columns.
    cols = lines[:, None] + np.arange(-half_width, half_width + 1)  # (lines, m)
    cols_ok = (cols >= 0) & (cols < n_cols)
    cols_c = np.clip(cols, 0, n_cols - 1)
    d = image[rows_c[:, None, :], cols_c[:, :, None]]  # (lines, m, n_ap)
    v0 = variance[rows_c[:, None, :], cols_c[:, :, None]]
    prof = np.broadcast_to(profile[:, None, :], d.shape)
    with np.errstate(invalid="ignore"):
        ok = (in_ap[:, None, :] & cols_ok[:, :, None] & np.isfinite(d) & np.isfinite(v0) & (v0 > 0)
              & np.isfinite(prof))
    d0 = np.where(ok, d, 0.0)
    p0 = np.where(np.isfinite(prof), prof, 0.0)
    v0 = np.where(ok, v0, 1.0)
    # The target's own light from the data first, then from the fit.
    v = v0 if gain is None else v0 + np.clip(d0, 0, None) / gain
    fit = None
    for _ in range(3):  # refit with the fit's variance, without pixels far off it
        fit = _level_beside_profile(p0, d0, v, ok)
        level, _, flux = fit
        model = flux[..., None] * p0 + level[..., None]
        if gain is not None:
            v = v0 + np.clip(np.nan_to_num(model), 0, None) / gain
        with np.errstate(invalid="ignore"):
            ok &= ~(np.abs(d0 - model) > _PROFILE_CLIP * np.sqrt(v))
    level, level_var, _ = _level_beside_profile(p0, d0, v, ok)
    n = (r1 - r0).astype(np.float64)[:, None]
    # The line's columns that could be fit (a NaN column leaves the others).
    fitted = np.isfinite(level) & np.isfinite(level_var)
    total = np.sum(np.where(fitted, level * n, 0.0), axis=1)
    total_var = np.sum(np.where(fitted, level_var * n * n, 0.0), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = total / np.sqrt(total_var)
    usable = good_line & (r1 - r0 >= 3) & fitted.any(axis=1) & np.isfinite(z) & (total_var > 0)
    out[usable] = z[usable]
    # Why the others could not be scored (for the message when none could).
    why = np.full(lines.size, "", dtype=object)
    why[~usable] = "no finite pixels in the aperture at the line"
    why[~usable & ~np.isfinite(profile).any(axis=1)] = "no columns about the line to measure the target's profile on"
    inseparable = (np.sum(ok, axis=-1) >= 3) & ~fitted
    why[~usable & inseparable.any(axis=1)] = (
        "in the aperture the target's light is as even as the sky's (an extended target filling it), so the "
        "two cannot be told apart")
    why[~usable & (r1 - r0 < 3)] = "the aperture is narrower than 3 rows"
    return out, why


def _level_beside_profile(profile, d, v, ok):
    """Weighted fits ``d = flux * profile + level`` along the last axis, where ``ok``.

    Returns ``(level, its variance, flux)``, NaN where fewer than 3 pixels
    remain or the level cannot be told from the profile.
    """
    w = np.where(ok, 1.0 / v, 0.0)
    s_pp, s_p1, s_11 = (np.sum(w * profile * profile, axis=-1), np.sum(w * profile, axis=-1), np.sum(w, axis=-1))
    b_p, b_1 = np.sum(w * profile * d, axis=-1), np.sum(w * d, axis=-1)
    det = s_pp * s_11 - s_p1 * s_p1
    good = (ok.sum(axis=-1) >= 3) & (s_pp > 0) & (det > (1.0 - _SEPARABLE_R2) * s_pp * s_11)
    det = np.where(good, det, 1.0)
    level = np.where(good, (s_pp * b_1 - s_p1 * b_p) / det, np.nan)
    level_var = np.where(good, s_pp / det, np.nan)
    flux = np.where(good, (s_11 * b_p - s_p1 * b_1) / det, np.nan)
    return level, level_var, flux


#: ``guess_trace_rows`` keeps the rows whose light stands this many times one pixel's noise above the sky.
WINGS_NOISE = 0.25


def guess_trace_rows(science):
    """Rows holding the brightest trace: where the rows rise well above the sky around them.

    Returns ``(start, stop)``: the run of rows around the brightest one whose
    level (the mean of each row's middle half of values) rises above the rows
    around it (their running median over a third of the slit, at least 31
    rows) by more than 1% of the peak or a quarter of one pixel's noise,
    whichever is lower (and five times the row-to-row scatter), widened by a
    quarter on each side. The running median, not one
    level for the slit, lets the slit's illumination vary: a 12 % gradient
    along the slit with quantised row medians had run the mask over 132 of
    200 rows for a trace 2.5 rows wide (trial K1).

    Examples
    --------
    >>> rows = np.arange(200)[:, None]
    >>> sky = 57 + 7 * rows / 175 + np.zeros((200, 500))  # illumination rising along the slit
    >>> sky[:6] = sky[175:] = 4  # the slit's ends
    >>> trace = 20 * np.exp(-0.5 * ((rows - 95) / 2.5) ** 2)
    >>> guess_trace_rows(np.round((sky + trace) / 2.2) * 2.2)  # ADU times a gain: quantised (was 65:197)
    (88, 103)
    """
    from scipy.ndimage import median_filter

    stack = np.asarray(science, dtype=float)
    image = np.nanmedian(stack, axis=0) if stack.ndim == 3 else stack
    n_rows = image.shape[0]
    # (Rows without a finite pixel skipped rather than warned of: warnings.catch_warnings is not
    # thread-safe, see quiet_nanmedian.)
    some = ~np.isnan(image).all(axis=1)
    low, high = np.full((2, n_rows, 1), np.nan)
    if some.any():
        low[some], high[some] = np.nanpercentile(image[some], [25, 75], axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        middle = np.where((image >= low) & (image <= high), image, np.nan)
    profile = quiet_nanmean(middle, axis=1)
    profile = np.where(np.isfinite(profile), profile, quiet_nanmedian(profile))
    window = max(31, n_rows // 3) | 1
    base = median_filter(profile, size=window, mode="nearest")
    excess = profile - base
    scatter = 1.4826 * float(np.median(np.abs(np.diff(profile)))) / np.sqrt(2)
    # One pixel's noise, from neighbours along the dispersion (the sky lines' flanks are few).
    pixel = 1.4826 * float(quiet_nanmedian(np.abs(np.diff(image, axis=1)))) / np.sqrt(2)
    peak = int(np.argmax(excess))
    # A bright target's wings stand above the sky's noise well below 1 % of its peak: the
    # Goodman standard star (6000 e- over a 10 e- sky) got rows 427:484, and its wings
    # beyond, 2-4x the sky, made the fit suspect ("widen the mask"); a quarter of a
    # pixel's noise takes 363:551.
    wings = WINGS_NOISE * pixel if pixel > 0 else math.inf
    threshold = max(min(0.01 * float(excess[peak]), wings), 5.0 * scatter)
    if not np.isfinite(threshold) or excess[peak] <= threshold:
        middle, half = n_rows // 2, max(1, n_rows // 20)
        return max(0, middle - half), min(n_rows, middle + half)
    start = peak
    while start > 0 and excess[start - 1] > threshold:
        start -= 1
    stop = peak + 1
    while stop < n_rows and excess[stop] > threshold:
        stop += 1
    pad = max(2, (stop - start) // 4)
    start, stop = max(0, start - pad), min(n_rows, stop + pad)
    if stop - start > 0.8 * n_rows:  # no sky left: keep the brightest rows only
        half = max(1, n_rows // 10)
        start, stop = max(0, peak - half), min(n_rows, peak + half + 1)
    return int(start), int(stop)
