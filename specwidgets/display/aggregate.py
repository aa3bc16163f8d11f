"""Reduce big arrays to what a plot can show: plain numpy, no widgets.

The super-sampled sky spectrum of a full Goodman frame holds ~1.8 million
samples per exposure; a plot is ~1000 pixels wide. :func:`aggregate_sed`
bins the samples by effective position into about one bin per screen
column and keeps, per bin, the exact minimum and maximum (so a single hot
sample, or trace light leaking into the sky rows, is never averaged away)
plus the median and the 99th percentile from an evenly spread subsample.

Examples
--------
>>> import numpy as np
>>> e = np.sort(np.random.default_rng(0).uniform(0, 100, 100_000))
>>> flux = np.ones_like(e); flux[5000] = 50.0
>>> agg = aggregate_sed(e, flux, n_bins=200)
>>> agg.x.size <= 200, float(agg.high.max()), float(np.median(agg.median))
(True, 50.0, 1.0)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "SEDAggregate",
    "aggregate_sed",
    "decimate_curve",
    "highlight_mask",
    "iso_effpix_polygon",
    "leak_rows",
    "row_ranges",
]

#: Samples used for the per-bin median and percentile: an exact per-bin sort
#: of 1.8 million samples costs ~150 ms, this subsample ~15 ms.
MAX_QUANTILE_SAMPLES = 200_000


class SEDAggregate(NamedTuple):
    """Per-bin summary of the sky samples; only bins holding samples are kept.

    Attributes
    ----------
    x : (n,) array
        Bin centres (effective pixel).
    low, high : (n,) array
        Exact minimum and maximum of the finite samples in each bin.
    median, p99 : (n,) array
        Median and 99th percentile (from the subsample; NaN if it missed the bin).
    count : (n,) int array
        Samples in each bin.
    n_samples : int
        Samples in the aggregated range.
    edges : (n_bins + 1,) array
        All bin edges.
    """

    x: np.ndarray
    low: np.ndarray
    high: np.ndarray
    median: np.ndarray
    p99: np.ndarray
    count: np.ndarray
    n_samples: int
    edges: np.ndarray


def _quantiles(e, f, edges, qs, max_samples):
    """Per-bin quantiles ``qs`` of ``f`` from an evenly spread subsample."""
    n_bins = edges.size - 1
    step = max(1, -(-e.size // max_samples))
    e, f = e[::step], f[::step]
    keep = np.isfinite(f)
    if not keep.all():
        e, f = e[keep], f[keep]
    out = np.full((len(qs), n_bins), np.nan)
    if e.size == 0:
        return out
    bounds = np.searchsorted(e, edges)
    bounds[-1] = e.size
    counts = np.diff(bounds)
    e, f = e[bounds[0] :], f[bounds[0] :]
    bins = np.repeat(np.arange(n_bins), counts)
    # Samples are in bin order already (e is sorted), so sorting by value
    # within bins is one float sort of ``bin + scaled value`` keys, three
    # times faster than a lexsort; the scaled value stays below 1.
    f_min = float(f.min())
    span = float(f.max()) - f_min or 1.0
    key = bins + (f - f_min) * (0.5 / span)
    key.sort()
    values = (key - bins) * (span / 0.5) + f_min
    starts = bounds[:-1] - bounds[0]
    have = counts > 0
    for i, q in enumerate(qs):
        pos = starts[have] + q * (counts[have] - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, starts[have] + counts[have] - 1)
        frac = pos - lo
        out[i, have] = values[lo] * (1 - frac) + values[hi] * frac
    return out


def aggregate_sed(effpix, flux, lo=None, hi=None, n_bins=1500, max_quantile_samples=MAX_QUANTILE_SAMPLES):
    """Min/max envelope, median and 99th percentile of sorted samples, per bin.

    Parameters
    ----------
    effpix : (n,) array
        Effective positions, ascending (``SkySamples.effpix``).
    flux : (n,) array
        One exposure's values (``SkySamples.flux[k]``); NaN is skipped.
    lo, hi : float, optional
        The range to aggregate (the visible x range); default all samples.
    n_bins : int
        About the plot's width in screen pixels.
    max_quantile_samples : int
        Subsample size for the median and percentile.

    Returns
    -------
    SEDAggregate
    """
    effpix = np.asarray(effpix)
    flux = np.asarray(flux)
    if effpix.size == 0:
        empty = np.empty(0)
        return SEDAggregate(empty, empty, empty, empty, empty, np.empty(0, np.int64), 0, empty)
    lo = float(effpix[0]) if lo is None else float(lo)
    hi = float(effpix[-1]) if hi is None else float(hi)
    if not hi > lo:
        hi = lo + 1.0
    n_bins = max(1, int(n_bins))
    edges = np.linspace(lo, hi, n_bins + 1)
    i0, i1 = np.searchsorted(effpix, [lo, hi], side="left")
    i1 = max(i1, np.searchsorted(effpix, hi, side="right"))
    e, f = effpix[i0:i1], flux[i0:i1]
    bounds = np.searchsorted(e, edges, side="left")
    bounds[-1] = e.size  # the last bin includes hi itself
    count = np.diff(bounds)
    have = count > 0
    starts = bounds[:-1][have]
    with np.errstate(invalid="ignore"):
        low = np.fmin.reduceat(f, starts) if starts.size else np.empty(0)
        high = np.fmax.reduceat(f, starts) if starts.size else np.empty(0)
    median, p99 = _quantiles(e, f, edges, (0.5, 0.99), max_quantile_samples)
    centres = 0.5 * (edges[:-1] + edges[1:])
    return SEDAggregate(
        centres[have], low, high, median[have], p99[have], count[have], int(e.size), edges
    )


def decimate_curve(x, y, lo=None, hi=None, n_bins=1500):
    """The part of a curve inside ``[lo, hi]``, at most ~``2 * n_bins`` points.

    Long curves keep each bin's lowest and highest point, in order, so
    narrow peaks (sky lines) keep their height.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.linspace(0, 10, 100_001); y = np.exp(-((x - 5) / 0.001) ** 2)
    >>> xs, ys = decimate_curve(x, y, n_bins=100)
    >>> xs.size <= 200, float(ys.max())
    (True, 1.0)
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.size == 0:
        return x, y
    lo = x[0] if lo is None else lo
    hi = x[-1] if hi is None else hi
    i0, i1 = np.searchsorted(x, [lo, hi])
    i0, i1 = max(i0 - 1, 0), min(i1 + 1, x.size)
    x, y = x[i0:i1], y[i0:i1]
    if x.size <= 2 * n_bins:
        return x, y
    bins = np.minimum(((x - x[0]) / (x[-1] - x[0]) * n_bins).astype(np.int64), n_bins - 1)
    starts = np.flatnonzero(np.r_[True, np.diff(bins) > 0])
    sizes = np.diff(np.r_[starts, x.size])
    filled = np.where(np.isfinite(y), y, -np.inf)
    # Index of each bin's max and min: sort by (bin, value) is overkill;
    # reduceat finds the values, a comparison finds their first positions.
    top = np.maximum.reduceat(filled, starts)
    bottom = np.minimum.reduceat(np.where(np.isfinite(y), y, np.inf), starts)
    owner = np.repeat(np.arange(starts.size), sizes)
    idx_top = _first_where(filled == top[owner], owner, starts.size)
    idx_bottom = _first_where(np.where(np.isfinite(y), y, np.inf) == bottom[owner], owner, starts.size)
    keep = np.unique(np.r_[idx_top, idx_bottom, 0, x.size - 1])
    return x[keep], y[keep]


def _first_where(flags, owner, n_groups):
    idx = np.flatnonzero(flags)
    first = np.full(n_groups, -1, np.int64)
    # Reversed assignment leaves the first index of each group.
    first[owner[idx][::-1]] = idx[::-1]
    return first[first >= 0]


def iso_effpix_polygon(warp_model, e0, e1, n_points=48):
    """Closed outline of the pixels whose effective position lies in ``[e0, e1]``.

    The two sides follow the warp model (``column_of``) from the bottom to
    the top of the slit; returns ``(x, y)`` in pixel coordinates.

    Examples
    --------
    >>> from specwidgets.core.warp import WarpModel
    >>> x, y = iso_effpix_polygon(WarpModel.identity((10, 50)), 20, 25, n_points=3)
    >>> x.tolist()
    [20.0, 20.0, 20.0, 25.0, 25.0, 25.0, 20.0]
    """
    n_rows = warp_model.shape[0]
    rows = np.linspace(-0.5, n_rows - 0.5, int(n_points))
    left = warp_model.column_of(np.full(rows.size, float(e0)), rows)
    right = warp_model.column_of(np.full(rows.size, float(e1)), rows)
    x = np.r_[left, right[::-1], left[:1]]
    y = np.r_[rows, rows[::-1], rows[:1]]
    return x, y


def highlight_mask(effpix_map, e0, e1):
    """Pixels whose effective position lies in ``[e0, e1]``."""
    return (effpix_map >= e0) & (effpix_map <= e1)


def row_ranges(rows):
    """Group sorted row indices into ``(start, stop)`` runs.

    >>> row_ranges([3, 4, 5, 9])
    [(3, 6), (9, 10)]
    """
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) > 1)
    starts = np.r_[rows[0], rows[breaks + 1]]
    stops = np.r_[rows[breaks], rows[-1]] + 1
    return [(int(a), int(b)) for a, b in zip(starts, stops)]


def _row_nanmedian(a):
    """Median of each row, skipping NaN (NaN for an all-NaN row).

    One sort per row: numpy's ``nanmedian`` along an axis loops in Python
    and costs ten times more on a 1000-row frame.
    """
    a = np.sort(a, axis=1)  # NaN sorts last
    n = np.isfinite(a).sum(axis=1)
    lo = np.maximum((n - 1) // 2, 0)
    hi = np.maximum(n // 2, 0)
    rows = np.arange(a.shape[0])
    out = 0.5 * (a[rows, lo] + a[rows, hi])
    out[n == 0] = np.nan
    return out


def leak_rows(result, exposure=0, min_excess=0.5, n_sigma=5.0, max_cols=512):
    """Sky rows whose light stands well above the fitted background.

    A row is flagged when its median residual (data - background) is both
    large against one pixel's scatter (``min_excess``: a sky gradient the
    model misses by a few percent stays below) and significant against the
    standard error of the median (``n_sigma``). Such rows usually hold the
    wings of the trace outside the mask, or another source on the slit.

    Parameters
    ----------
    result : SkyResult
    exposure : int
    min_excess : float
        Threshold on the row's median residual in units of its pixel scatter.
    n_sigma : float
        Threshold in standard errors of the row median.
    max_cols : int
        Columns used per row (an even subsample): enough for a median.

    Returns
    -------
    rows : (n,) int array
        Unmasked rows with excess light.
    excess : (n_rows,) array
        Median residual of every row over its pixel scatter (NaN on masked rows).
    """
    data = result.data[exposure]
    n_rows, n_cols = data.shape
    step = max(1, n_cols // max_cols)
    resid = data[:, ::step] - result.background[exposure][:, ::step]
    sky = ~result.mask[:, 0]
    excess = np.full(n_rows, np.nan)
    if not sky.any():
        return np.empty(0, np.int64), excess
    r = resid[sky]
    med = _row_nanmedian(r)
    sigma = 1.4826 * _row_nanmedian(np.abs(r - med[:, None]))
    n = np.isfinite(r).sum(axis=1)
    # The median of n normal values scatters sqrt(pi/2) times the mean's.
    stderr = 1.2533 * sigma / np.sqrt(np.maximum(n, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        excess[sky] = med / sigma
        significant = np.zeros(n_rows, bool)
        significant[sky] = med > n_sigma * stderr
    flagged = np.flatnonzero(significant & (np.nan_to_num(excess, nan=0.0) > min_excess))
    return flagged, excess
