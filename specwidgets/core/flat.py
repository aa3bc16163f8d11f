"""Flat fielding: the normalised flat a science frame is divided by.

Shared by the page's folder loader (:func:`specwidgets.io.folder.load_folder`,
its *Flat tag*) and batch runs (``--flat``), so both divide by the same flat.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["FLAT_FLOOR", "FLAT_NORMS", "FlatNoise", "normalise_flat", "usable_flat"]

#: Flat normalisations: the pixel-to-pixel response alone (the flat over its
#: smoothed self), by the median along the slit of each column, or overall.
FLAT_NORMS = ("pixel", "column", "global")

#: Normalised-flat values at or below this are unusable.
FLAT_FLOOR = 0.05

#: ``"pixel"``: the flat's running median over this many pixels, along the
#: dispersion then along the slit, is its large-scale part.
PIXEL_FLAT_WINDOW = 9

#: ``"pixel"``: where the mean along the slit differs from the median along the
#: dispersion by more than this many times their difference's spread over the
#: frame, the light changes along the slit too fast for the mean (a lit edge):
#: the median alone is used.
PIXEL_FLAT_EDGE = 6.0

#: ``"pixel"``: where the smoothed flat is below this fraction of its median
#: the lamp lit too little to measure a response: those pixels are left as
#: they are (response 1).
PIXEL_FLAT_LIT = 0.1


def normalise_flat(flat, how="pixel"):
    """Normalised flat (bias already subtracted), NaN where unusable.

    ``"pixel"`` (the default) keeps the pixel-to-pixel response only: the
    flat divided by its running median over :data:`PIXEL_FLAT_WINDOW` pixels
    along the dispersion, averaged over as many rows along the slit (but
    where the light changes faster along the slit than that mean follows,
    near the slit's ends or a slit bar, the running median alone). The lamp's spectrum and its
    illumination of the slit go, which the sky fit models from the sky
    itself: a lamp lights the slit otherwise than the sky does (on the
    Goodman sample, ``"column"`` left sky-line residuals 1.3x larger and a
    suspect fit). ``"column"`` divides each column by its median along the
    slit (the lamp's illumination stays), ``"global"`` by the overall median.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> response = 1 + 0.01 * rng.standard_normal((40, 200))
    >>> lamp = np.linspace(0.5, 1.5, 200)[None, :] * np.linspace(0.8, 1.0, 40)[:, None]
    >>> flat = 30000 * lamp * response
    >>> def error(how):  # RMS of the normalised flat over the true response, minus 1
    ...     return float(np.std(normalise_flat(flat, how) / response - 1))
    >>> print(f"{error('pixel'):.4f} {error('column'):.3f}")
    0.0027 0.066
    """
    if how not in FLAT_NORMS:
        raise ValueError(f"unknown flat normalisation {how!r}; choose one of {', '.join(FLAT_NORMS)}")
    if how == "pixel":
        from scipy.ndimage import uniform_filter1d

        from .extract import running_median_rows

        flat = np.asarray(flat, dtype=np.float64)
        # A median along the dispersion (bad columns and cosmic rays go), then a
        # mean along the slit (a fifth of a second median's noise, no row lost).
        along = running_median_rows(flat, PIXEL_FLAT_WINDOW)
        smooth = uniform_filter1d(along, PIXEL_FLAT_WINDOW, axis=0, mode="nearest")
        # Where the light changes along the slit faster than that mean follows
        # (the slit's ends, a slit bar, dust), the mean mixed lit and dark rows:
        # rows next to a lit edge came out 0.6-0.8 of the truth (trial K1). There
        # the median along the dispersion alone is the smooth flat.
        with np.errstate(divide="ignore", invalid="ignore"):
            # The two differ by the running median's noise (robust spread over
            # the frame), and by much more where the light changes.
            differ = smooth / along - 1.0
            ok = np.isfinite(differ) & (along > 0)
            spread = 1.4826 * np.median(np.abs(differ[ok] - np.median(differ[ok]))) if ok.any() else np.inf
            off = ok & (np.abs(differ) > PIXEL_FLAT_EDGE * spread)
        smooth = np.where(off, along, smooth)
        finite = np.isfinite(smooth)
        level = np.median(smooth[finite]) if finite.any() else np.nan
        with np.errstate(divide="ignore", invalid="ignore"):
            lit = smooth > PIXEL_FLAT_LIT * level
            # Unlit by the lamp: no response measured (1); not finite: unusable (NaN).
            out = np.where(lit, flat / np.where(lit, smooth, 1.0), np.where(np.isfinite(flat), 1.0, np.nan))
        out[~np.isfinite(out) | (out <= FLAT_FLOOR)] = np.nan
        return out
    with np.errstate(divide="ignore", invalid="ignore"):
        if how == "column":
            norm = np.nanmedian(flat, axis=0, keepdims=True)
        else:
            norm = np.nanmedian(flat)
        out = flat / np.where(norm > 0, norm, np.nan)
    out[~np.isfinite(out) | (out <= FLAT_FLOOR)] = np.nan
    return out


def usable_flat(raw_flat, how="pixel", files=(), fix="check them, or leave them out"):
    """:func:`normalise_flat` of a bias-subtracted combined flat; ValueError when most of it is unusable.

    A pixel is usable where the flat is finite and well above its own pixel
    noise: a "flat" of bias frames alone (noise about zero, half of it
    positive) or of a closed shutter is refused, naming the flat ``files``
    (paths) and ``fix``, instead of dividing the science by noise.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> usable_flat(20000 + 100 * rng.standard_normal((30, 100))).shape
    (30, 100)
    >>> usable_flat(5 * rng.standard_normal((30, 100)), files=["night/bias1.fits"])
    Traceback (most recent call last):
    ...
    ValueError: the flat frames (bias1.fits) are unusable in 100 % of the pixels (...): check them, or leave them out
    """
    raw_flat = np.asarray(raw_flat, dtype=np.float64)
    flat = normalise_flat(raw_flat, how)
    # Lit: well above the flat's own pixel noise (a flat of bias alone is
    # noise about zero, half of it "positive").
    steps = np.abs(np.diff(raw_flat, axis=1))
    steps = steps[np.isfinite(steps)]
    bad = 1.0
    if steps.size:
        noise = 1.4826 * np.median(steps) / np.sqrt(2.0)
        with np.errstate(invalid="ignore"):
            lit = np.isfinite(flat) & (raw_flat > 3.0 * noise)
        if np.nanmedian(raw_flat) > 3.0 * noise:
            bad = 1.0 - np.count_nonzero(lit) / flat.size
    if bad > 0.5:
        files = list(files)
        names = ", ".join(Path(f).name for f in files[:4]) + (", ..." if len(files) > 4 else "")
        what = f"the flat frames ({names})" if names else "the flat frames"
        raise ValueError(
            f"{what} are unusable in {100 * bad:.0f} % of the pixels (the bias-subtracted median is not well "
            f"above its noise, or not finite, there): {fix}"
        )
    return flat


@dataclass(eq=False)
class FlatNoise:
    """The noise a flat field adds to the frames divided by it: its photon and read noise, per pixel.

    Dividing by a flat of ``F`` counts per pixel (a combination of ``frames``
    frames) adds a relative variance ``(F / gain + (read_noise / gain)**2) /
    (frames * F**2)`` to each pixel: the flat's own noise, which the frames'
    noise model does not hold (trial M1: three flats of 10000 e-, a sky of
    1600-12500 e- per pixel, the variance 1.09-1.65x what ``VAR`` said).

    The frames' own photon and read noise are also changed by the division:
    a pixel divided by ``f`` holds ``data * f`` counts, and its variance is
    ``(data * f / gain + (read_noise / gain)**2) / f**2``. :func:`photon_variance`
    reads ``normalised`` for it (a trial: a ``"column"`` flat, 0.63-1.37 along
    the slit, left VAR 1.56x and 0.74x the true variance there).

    Attributes
    ----------
    level : (n_rows, n_cols) array
        The combined flat less the bias, before normalising (the frames' units).
    frames : float
        How many flat frames its values average (a median of n:
        :func:`~specwidgets.core.frames.median_frames`).
    normalised : (n_rows, n_cols) array, optional
        The normalised flat the frames were divided by (:func:`usable_flat`);
        None: taken as 1 (a pixel-to-pixel flat is within a few % of it).

    Examples
    --------
    >>> noise = FlatNoise(np.full((2, 3), 10000.0), 3.0)
    >>> float(noise.relative_variance(1.0, 0.0)[0, 0]) == 1 / 30000
    True
    """

    level: np.ndarray
    frames: float
    normalised: np.ndarray | None = None

    def photon_variance(self, data, gain, read_noise):
        """The variance of ``data`` (frames divided by ``normalised``) from their own photon and read noise.

        >>> noise = FlatNoise(np.full((1, 2), 10000.0), 3.0, np.array([[0.5, 1.0]]))
        >>> noise.photon_variance(np.array([[100.0, 100.0]]), 1.0, 0.0).tolist()  # 50 counts / 0.5**2
        [[200.0, 100.0]]
        """
        data = np.asarray(data, dtype=float)
        f = 1.0 if self.normalised is None else np.asarray(self.normalised, dtype=float)
        f = np.where(np.isfinite(f) & (f > 0), f, 1.0)
        return (np.clip(data * f, 0, None) / gain + (read_noise / gain) ** 2) / f**2

    def relative_variance(self, gain, read_noise):
        """Relative variance per pixel for the noise model ``gain``, ``read_noise`` (0 where unlit)."""
        level = np.asarray(self.level, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = (np.clip(level, 0, None) / gain + (read_noise / gain) ** 2) / (float(self.frames) * level**2)
        return np.where(np.isfinite(rel) & (level > 0), rel, 0.0)
