"""Finding calibration (arc) lines in one row of an arc frame."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.ndimage import median_filter

from ._stats import clipped_std, quiet_nanmedian
from ._warnings import warn_at_caller
from .inputs import as_image, check_number
from .peaks import fit_gaussian_windows, window_indices

__all__ = ["find_cal_lines", "lines_along_rows", "row_profile", "robust_noise", "saturated_peaks"]

# Rows median-combined around the chosen row: enough to beat cosmic rays and
# pixel noise, few enough that a tilted line does not smear (tilt/row << 0.1 px).
_PROFILE_ROWS = 5


def find_peaks(x, height=None, distance=None, prominence=None):
    """Peaks of ``x`` at least ``height`` high, at least ``distance`` apart: ``(indices, properties)``.

    The same peaks as ``scipy.signal.find_peaks(x, height=height,
    distance=distance, prominence=prominence)``: local maxima (the middle of
    a flat top, rounded down), then those below ``height`` dropped, then,
    from the highest down, each kept peak removes the lower ones closer than
    ``distance``, then those less prominent than ``prominence`` dropped
    (``properties["prominences"]`` holds the kept peaks' prominences when
    ``prominence`` is given). Here rather than from SciPy because importing
    ``scipy.signal`` pulls in ``scipy.sparse``, ``stats``, ``optimize``, ...
    (~45 MB resident, 0.8 s on every dashboard page's kernel) for this one
    function.

    Examples
    --------
    >>> x = np.array([0, 3, 0, 1, 5, 5, 0, 2, 0.0])
    >>> find_peaks(x, height=1.5, distance=3)[0]
    array([1, 4, 7])
    >>> find_peaks(x, height=1.5, distance=4)[0]  # the peak at 4 (5.0) removes both neighbours
    array([4])
    >>> peaks, props = find_peaks(x, prominence=2.5)
    >>> peaks, props["prominences"]
    (array([1, 4]), array([3., 5.]))
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"find_peaks needs a 1D array; got shape {x.shape}")
    n = x.size
    # Candidate rises: x[i-1] < x[i]; each is followed to the end of its flat top.
    peaks = []
    i = 1
    while i < n - 1:
        if x[i - 1] < x[i]:
            ahead = i + 1
            while ahead < n - 1 and x[ahead] == x[i]:
                ahead += 1
            if x[ahead] < x[i]:
                peaks.append((i + ahead - 1) // 2)
                i = ahead
        i += 1
    peaks = np.asarray(peaks, dtype=np.intp)
    if height is not None:
        peaks = peaks[x[peaks] >= height]
    limit = 1 if distance is None else int(np.ceil(distance))
    if peaks.size > 1 and limit > 1:
        keep = np.ones(peaks.size, bool)
        by_height = np.argsort(x[peaks])  # SciPy's tie order (the default sort) kept
        for j in by_height[::-1]:
            if not keep[j]:
                continue
            k = j - 1
            while k >= 0 and peaks[j] - peaks[k] < limit:
                keep[k] = False
                k -= 1
            k = j + 1
            while k < peaks.size and peaks[k] - peaks[j] < limit:
                keep[k] = False
                k += 1
        peaks = peaks[keep]
    if prominence is None:
        return peaks, {}
    prominences = peak_prominences(x, peaks)
    keep = prominences >= prominence
    return peaks[keep], {"prominences": prominences[keep]}


def peak_prominences(x, peaks):
    """Prominence of each peak of ``x``: its height above the higher of its two bases.

    SciPy's definition (``scipy.signal.peak_prominences`` with no window):
    on each side, the lowest point between the peak and the first higher
    sample (or the array's end); the base is the higher of the two minima.

    Examples
    --------
    >>> peak_prominences(np.array([0, 3, 1, 5, 2, 4, 0.0]), np.array([1, 3, 5]))
    array([2., 5., 2.])
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    peaks = np.asarray(peaks, dtype=np.intp)
    out = np.empty(peaks.size)
    for k, p in enumerate(peaks):
        height = x[p]
        left = x[:p][::-1]
        higher = np.flatnonzero(left > height)
        left_min = left[: higher[0] if higher.size else left.size].min(initial=height)
        right = x[p + 1 :]
        higher = np.flatnonzero(right > height)
        right_min = right[: higher[0] if higher.size else right.size].min(initial=height)
        out[k] = height - max(left_min, right_min)
    return out


def row_profile(image, row=None):
    """Median of a few rows centred on ``row`` (default: the middle row).

    Returns ``(profile, row)``.
    """
    image = as_image(image, "image")
    n_rows = image.shape[0]
    if row is None:
        row = n_rows // 2
    if not (isinstance(row, (int, np.integer)) and 0 <= row < n_rows):
        raise ValueError(f"row must be an integer in 0..{n_rows - 1}; got {row!r}")
    lo = max(0, row - _PROFILE_ROWS // 2)
    hi = min(n_rows, lo + _PROFILE_ROWS)
    profile = quiet_nanmedian(image[lo:hi], axis=0)  # (all-NaN columns stay NaN)
    return profile, int(row)


# Significance of a line across the rows that makes a transposed frame likely.
_ACROSS_SIGMA = 20.0


def _lines_across_rows(image, resolved=False):
    """How many lines stand out (``_ACROSS_SIGMA``) in the frame's middle columns, read down the rows.

    An arc whose dispersion runs along the rows shows its lines there, and
    almost none along a row. ``resolved``: only those wider than a row (a
    neighbour above half the peak), not a hot column's one bright pixel.
    """
    if image.shape[0] < 16:
        return 0
    profile, _ = row_profile(np.ascontiguousarray(image.T))
    if np.isfinite(profile).sum() < 16:
        return 0
    _, excess, noise = _profile_excess(profile)
    if noise <= 0:
        return 0
    peaks, _ = find_peaks(excess, height=_ACROSS_SIGMA * noise, distance=3)
    if resolved and peaks.size:
        left = excess[np.clip(peaks - 1, 0, excess.size - 1)]
        right = excess[np.clip(peaks + 1, 0, excess.size - 1)]
        peaks = peaks[np.maximum(left, right) > 0.5 * excess[peaks]]
    return int(peaks.size)


def lines_along_rows(image):
    """True when an arc's lines lie along its rows (wavelength changes with the row): the frame wants transposing.

    At least 3 lines stand out (20 noise sigmas) down the frame's middle
    columns, and more than twice as many as along its middle row: an arc
    as specwidgets wants it (wavelength along the columns) shows its lines
    along a row, and at most a few bright rows (a source's trace) down a
    column.

    Examples
    --------
    >>> from specwidgets.io.synthetic import make_synthetic_longslit
    >>> arc = make_synthetic_longslit(shape=(60, 300), seed=1).arc
    >>> lines_along_rows(arc), lines_along_rows(arc.T)
    (False, True)
    """
    image = as_image(image, "image (the arc frame)")
    across = _lines_across_rows(image)
    return across >= 3 and across > 2 * _lines_across_rows(image.T)


def _profile_excess(profile):
    """``(filled, excess, noise)``: the profile with NaN as its median, its excess over a running
    median (the lines), and its pixel noise (:func:`robust_noise`)."""
    filled = np.where(np.isfinite(profile), profile, np.nanmedian(profile))
    excess = filled - median_filter(filled, size=min(51, filled.size | 1), mode="nearest")
    return filled, excess, robust_noise(profile)


def robust_noise(profile):
    """Pixel-to-pixel noise of a 1D profile from the MAD of its first differences.

    Differences cancel the smooth continuum and lines occupy few pixels, so
    the median absolute difference reflects the noise alone.
    """
    diff = np.diff(profile[np.isfinite(profile)])
    if diff.size == 0:
        return 0.0
    diff = diff - np.median(diff)
    mad = float(np.median(np.abs(diff)))
    if mad > 0:
        return 1.4826 * mad / np.sqrt(2.0)
    # Whole-numbered values (the median of an odd number of rows of integer
    # ADU): most differences are 0 and so is their MAD, where a clipped
    # standard deviation still reads the noise (a trial's sky spectrum: 0, and
    # the lines' own scatter, 465 counts, was taken for the noise instead).
    return clipped_std(diff) / np.sqrt(2.0)


def saturated_peaks(profile, peaks, saturation=None, rows=None):
    """Which of ``peaks`` (columns of ``profile``) are saturated.

    A line is saturated when its top reaches ``saturation`` (in ``rows``, the
    image rows the profile was made of, when given) or, without a level, when
    its top is flat: three or more pixels within 0.2% of the top, at the
    frame's ceiling (within 1% of the profile's maximum). A Gaussian line
    needs a width above 15 pixels to look that flat; clipped lines all share
    the ceiling, so the bias subtracted from a raw arc does not hide them.

    Returns
    -------
    ndarray of bool, one per peak
    """
    profile = np.asarray(profile, float)
    peaks = np.asarray(peaks, int)
    flagged = np.zeros(peaks.size, bool)
    if peaks.size == 0:
        return flagged
    n = profile.size
    if saturation is not None:
        level = float(saturation)
        data = profile[None] if rows is None else np.asarray(rows, float)
        for i, p in enumerate(peaks):
            window = data[:, max(0, p - 2): min(n, p + 3)]
            flagged[i] = bool(np.nanmax(window) >= level) if np.isfinite(window).any() else False
        return flagged
    ceiling = np.nanmax(profile)
    if not np.isfinite(ceiling) or ceiling <= 0:
        return flagged
    for i, p in enumerate(peaks):
        window = profile[max(0, p - 3): min(n, p + 4)]
        top = np.nanmax(window)
        if top < 0.99 * ceiling:
            continue
        flagged[i] = int(np.sum(window >= top - 2e-3 * abs(top))) >= 3
    return flagged


def find_cal_lines(image: ArrayLike, std_variation: float = 50.0, row: int | None = None, debug: bool = False,
                   saturation: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Find the emission lines of an arc-lamp frame along one row.

    Parameters
    ----------
    image : (n_rows, n_cols) array_like
        The arc frame (bias subtracted), dispersion along columns.
    std_variation : float
        Detection threshold: a line's peak must rise this many noise standard
        deviations above the local baseline (a running median 51 columns wide).
    row : int, optional
        Row to search; default the middle row. The median of five rows
        around it is used to reject cosmic rays.
    debug : bool
        Print a table of the lines found.
    saturation : float, optional
        The level (in the image's units) at which the detector saturates,
        e.g. the header's ``SATURATE`` minus the bias. Without it, lines with
        a flat top at the frame's ceiling count as saturated (see
        :func:`saturated_peaks`). Saturated lines are left out, with a
        warning: their centres are biased and their tilt is unreliable.

    Returns
    -------
    positions : ndarray
        Sub-pixel column of each line (a pixel-integrated Gaussian fit).
    relative_intensities : ndarray
        Peak height of each line divided by the brightest line's.

    Raises
    ------
    ValueError
        If the image is not 2D, or no line rises above the threshold.

    Examples
    --------
    >>> from specwidgets.io.synthetic import make_synthetic_longslit
    >>> frames = make_synthetic_longslit(seed=1)
    >>> positions, intensities = find_cal_lines(frames.arc, std_variation=50)
    >>> bool(intensities.max() == 1.0)
    True
    """
    return _find_cal_lines(image, std_variation, row, debug, saturation)


def _say(message):
    warn_at_caller(message, UserWarning)


def _find_cal_lines(image, std_variation=50.0, row=None, debug=False, saturation=None, *, say=_say):
    """:func:`find_cal_lines`, its warnings given to ``say`` (the sky lines' search drops them: what it
    would say of an arc is not for the user there, and ``warnings.catch_warnings`` is not thread-safe)."""
    image = as_image(image, "image (the arc frame)")
    std_variation = check_number(std_variation, "std_variation", minimum=0, strict_minimum=True)
    if saturation is not None:
        saturation = check_number(saturation, "saturation", minimum=0, strict_minimum=True)
    profile, row = row_profile(image, row)
    finite = np.isfinite(profile)
    if finite.sum() < 8:
        raise ValueError(f"row {row} of the arc frame has fewer than 8 finite pixels")
    filled, excess, noise = _profile_excess(profile)
    if noise <= 0:
        if not np.any(excess):
            level = float(np.nanmedian(profile))
            raise ValueError(f"row {row} of the arc frame is flat (every pixel {level:g}): it holds no line; "
                             "is this the arc frame?")
        noise = max(float(np.std(excess)), 1e-12)
    threshold = std_variation * noise
    peaks, _ = find_peaks(excess, height=threshold, distance=3)
    if peaks.size == 0:
        best = float(np.nanmax(excess) / noise)
        across = _lines_across_rows(image)
        # One or two bright rows are a source's trace (a science frame), not an arc turned.
        if across >= 3:
            raise ValueError(
                f"no line rises above std_variation={std_variation:g} times the noise in row {row} of the "
                f"arc frame, but {across} stand out down its middle columns: its lines lie across the frame (each "
                f"along a row), so wavelength changes with the row ({image.shape[0]} rows x {image.shape[1]} "
                "columns). specwidgets wants it to change with the column: transpose the frames (np.transpose, or "
                "load with dispersion_axis=0)"
            )
        raise ValueError(
            f"no line rises above std_variation={std_variation:g} times the noise "
            f"({noise:.3g} counts) in row {row}; the brightest peak reaches {best:.1f} "
            "times the noise: lower std_variation"
            + (f", or check that this is the arc frame ({across} bright row(s) run along it, as a source's "
               "trace does in a science frame)" if across else "")
        )
    if peaks.size < 3 and (across := _lines_across_rows(image)) > 2 * peaks.size:
        say(
            f"only {peaks.size} arc line(s) in row {row}, but {across} down the middle column: the arc's lines "
            f"seem to lie across the frame, each along a row (wavelength changing with the row, {image.shape[0]} "
            f"rows x {image.shape[1]} columns); specwidgets wants it to change with the column: transpose the "
            "frames (np.transpose, or load with dispersion_axis=0)"
        )
    n_rows = image.shape[0]
    lo = max(0, row - _PROFILE_ROWS // 2)
    saturated = saturated_peaks(filled, peaks, saturation, image[lo:min(n_rows, lo + _PROFILE_ROWS)])
    if saturated.any():
        where = ", ".join(f"{c}" for c in peaks[saturated])
        if saturated.all():
            raise ValueError(
                f"every line found in row {row} of the arc frame is saturated (columns {where}): "
                "use an arc exposure short enough that the lines stay below saturation"
            )
        say(
            f"{int(saturated.sum())} saturated arc line(s) left out (flat-topped, near columns {where}): "
            "their centres would be biased; a shorter arc exposure keeps them"
        )
        peaks = peaks[~saturated]
    half = min(4, (profile.size - 1) // 2)
    cols = window_indices(peaks, half, profile.size)
    holed = ~finite[cols].all(axis=1)
    if holed.any():
        # A NaN or inf core, filled with the continuum, splits a line into two
        # peaks at its flanks; either centre would be off by a pixel or more.
        where = ", ".join(f"{c}" for c in peaks[holed][:8]) + (", ..." if holed.sum() > 8 else "")
        if holed.all():
            raise ValueError(f"every line found in row {row} of the arc frame has NaN or inf pixels within "
                             f"{half} columns of its peak (columns {where}): those pixels cannot be measured")
        say(
            f"{int(holed.sum())} arc line(s) left out: NaN or inf pixels within {half} columns of the peak (near "
            f"columns {where}) would bias their centres"
        )
        peaks, cols = peaks[~holed], cols[~holed]
    mu, _, _, _, ok = fit_gaussian_windows(cols, filled[cols])
    # A peak the Gaussian cannot fit is a shoulder of a blend, not a clean
    # line; and two peaks that converge on one line are one line.
    positions, heights = mu[ok], excess[peaks][ok]
    distinct = np.r_[True, np.diff(positions) > 1.0]
    positions, heights = positions[distinct], heights[distinct]
    if positions.size == 0:
        raise ValueError(f"no peak above the threshold in row {row} could be fit as a line")
    intensities = heights / heights.max()
    if debug:
        print(f"find_cal_lines: row {row}, noise {noise:.3g}, threshold {threshold:.3g}")
        for x, h in zip(positions, intensities):
            print(f"  x = {x:9.3f}   relative intensity {h:.3f}")
    return positions, intensities
