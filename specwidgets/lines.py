"""Finding calibration (arc) lines in one row of an arc frame."""

from __future__ import annotations

import warnings

import numpy as np
from scipy.ndimage import median_filter
from scipy.signal import find_peaks

from .inputs import as_image
from .peaks import fit_gaussian_windows, window_indices

__all__ = ["find_cal_lines", "row_profile", "robust_noise"]

# Rows median-combined around the chosen row: enough to beat cosmic rays and
# pixel noise, few enough that a tilted line does not smear (tilt/row << 0.1 px).
_PROFILE_ROWS = 5


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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        profile = np.nanmedian(image[lo:hi], axis=0)
    return profile, int(row)


def robust_noise(profile):
    """Pixel-to-pixel noise of a 1D profile from the MAD of its first differences.

    Differences cancel the smooth continuum and lines occupy few pixels, so
    the median absolute difference reflects the noise alone.
    """
    diff = np.diff(profile[np.isfinite(profile)])
    if diff.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(diff - np.median(diff))) / np.sqrt(2.0))


def find_cal_lines(image, std_variation=50.0, row=None, debug=False):
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
    >>> from specwidgets.datasets import make_synthetic_longslit
    >>> frames = make_synthetic_longslit(seed=1)
    >>> positions, intensities = find_cal_lines(frames.arc, std_variation=50)
    >>> bool(intensities.max() == 1.0)
    True
    """
    image = as_image(image, "image (the arc frame)")
    if not np.isfinite(std_variation) or std_variation <= 0:
        raise ValueError(f"std_variation must be a positive number; got {std_variation!r}")
    profile, row = row_profile(image, row)
    finite = np.isfinite(profile)
    if finite.sum() < 8:
        raise ValueError(f"row {row} of the arc frame has fewer than 8 finite pixels")
    filled = np.where(finite, profile, np.nanmedian(profile))
    baseline = median_filter(filled, size=min(51, filled.size | 1), mode="nearest")
    excess = filled - baseline
    noise = robust_noise(profile)
    if noise <= 0:
        noise = max(float(np.std(excess)), 1e-12)
    threshold = std_variation * noise
    peaks, _ = find_peaks(excess, height=threshold, distance=3)
    if peaks.size == 0:
        best = float(np.nanmax(excess) / noise)
        raise ValueError(
            f"no line rises above std_variation={std_variation:g} times the noise "
            f"({noise:.3g} counts) in row {row}; the brightest peak reaches {best:.1f} "
            "times the noise: lower std_variation"
        )
    half = min(4, (profile.size - 1) // 2)
    cols = window_indices(peaks, half, profile.size)
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
