"""Data for demos and tests: a synthetic long-slit generator with known truth,
and the real SOAR/Goodman sample (``load_goodman``, ``goodman_path``: a local
folder or a checksummed download; see :mod:`specwidgets.io.sample_data`).

The synthetic frames are the embedded default: every demo runs with no data
files at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import erf

from ..core.frames import FrameArray
from ..core.warp import WarpModel
from .sample_data import GoodmanSample, goodman_available, goodman_path, load_goodman

__all__ = [
    "GoodmanSample",
    "SyntheticFrames",
    "goodman_available",
    "goodman_path",
    "load_demo",
    "load_goodman",
    "make_synthetic_longslit",
    "sky_line_list",
]

_SQRT2 = np.sqrt(2.0)


@dataclass
class SyntheticFrames:
    """Synthetic science and arc frames with the truth they were made from.

    Attributes
    ----------
    science : (n_exposures, n_rows, n_cols) FrameArray
        Sky + trace + noise, in data units (electrons when ``gain`` is 1); the
        true ``gain`` and ``read_noise`` ride along as attributes (source
        "synthetic truth"), as a loader's header keywords would: pass
        ``np.asarray(science)`` to play an instrument whose headers hold none.
    arc : (n_rows, n_cols) FrameArray
        Arc-lamp frame (noisy), in electrons, with the same attributes.
    sky : (n_exposures, n_rows, n_cols) array
        Noise-free sky of each exposure: the true background.
    trace : (n_rows, n_cols) array
        Noise-free source light (the same in every exposure).
    warp : WarpModel
        The true warp.
    effpix_map : (n_rows, n_cols) array
        True effective pixel of every pixel centre.
    arc_lines : (n_lines,) array
        True effective-pixel positions of the arc lines.
    trace_rows : (int, int)
        Rows holding the trace (to mask).
    read_noise, gain : float
        Noise model: read noise in electrons, gain in electrons per data unit
        (gain 1 means data are in electrons; otherwise ``science``, ``arc``,
        ``sky`` and ``trace`` are in data units, e.g. ADU).
    arc_lamps : (n_lamps, n_rows, n_cols) array
        Each lamp's arc frame; ``arc`` is their sum.
    science_warp : WarpModel
        The warp the science frames were drawn with (differs from ``warp``
        when a flexure ``shift``/``shift_tilt`` was asked for).
    unlit_rows : list of (int, int)
        Row ranges that receive no sky light.
    """

    science: np.ndarray
    arc: np.ndarray
    sky: np.ndarray
    trace: np.ndarray
    warp: WarpModel
    effpix_map: np.ndarray
    arc_lines: np.ndarray
    trace_rows: tuple
    read_noise: float
    gain: float = 1.0
    params: dict = field(default_factory=dict)
    arc_lamps: np.ndarray | None = None
    science_warp: WarpModel | None = None
    unlit_rows: list = field(default_factory=list)


def sky_line_list(n_cols, n_lines, rng, faint=10.0, bright=20000.0):
    """Random sky lines: positions, peak heights spread log-uniformly from faint to bright."""
    pos = np.sort(rng.uniform(8, n_cols - 8, n_lines))
    peak = np.exp(rng.uniform(np.log(faint), np.log(bright), n_lines))
    return pos, peak


def _integrated_lines(edges, positions, fluxes, sigma):
    """Integral, between consecutive ``edges`` (last axis), of a sum of Gaussians of total ``fluxes``."""
    n = edges.shape[-1] - 1
    out = np.zeros(edges.shape[:-1] + (n,))
    # Only the columns a line can reach (its width plus the warp's largest shift) are computed.
    shift = float(np.abs(edges - (np.arange(n + 1) - 0.5)).max()) + 1.0
    for mu, flux in zip(positions, fluxes):
        reach = 8 * float(np.max(sigma))
        c0 = max(0, int(mu - reach - shift))
        c1 = min(n, int(mu + reach + shift) + 1)
        if c1 <= c0:
            continue
        cdf = 0.5 * erf((edges[..., c0 : c1 + 1] - mu) / (sigma * _SQRT2))
        out[..., c0:c1] += flux * np.diff(cdf, axis=-1)
    return out


def make_synthetic_longslit(
    shape=(100, 2048),
    n_exposures=1,
    tilt=3.0,
    curvature=0.0,
    n_sky_lines=40,
    sky_continuum=60.0,
    line_sigma=1.1,
    n_arc_lines=30,
    arc_peak=(2000.0, 40000.0),
    trace_row=None,
    trace_fwhm=6.0,
    trace_flux=3000.0,
    trace_bend=4.0,
    gradient=None,
    read_noise=4.0,
    cosmic_rays=0,
    variation=0.05,
    seed=0,
    *,
    gain=1.0,
    n_lamps=1,
    unlit_rows=0,
    shift=0.0,
    shift_tilt=0.0,
    illumination=None,
    trace_wings=0.0,
    line_sigma_change=0.0,
    line_sigma_curve=0.0,
):
    """Make synthetic long-slit frames with a known warp, sky, trace and noise.

    Parameters
    ----------
    shape : (int, int)
        ``(n_rows, n_cols)``; dispersion along columns.
    n_exposures : int
        Science exposures; each has the same sky lines scaled by a random
        factor (``1 +- variation``) and its own noise.
    tilt : float or sequence
        How far lines shift from the bottom row to the top row (columns); a
        sequence ``(c0, c1, c2)`` varies it along x as ``c0 + c1*u + c2*u**2``,
        ``u`` from -1 to 1 across the columns (see :meth:`WarpModel.from_tilt`).
    curvature : float
        Quadratic bow of the lines along the slit (columns at the slit ends).
    n_sky_lines, sky_continuum, line_sigma :
        Sky: this many lines with peaks from 10 to 20000 e- per pixel over a
        flat continuum (e- per pixel); Gaussian sigma of sky and arc lines.
    n_arc_lines, arc_peak :
        The arc lamp: line count and the range of peak heights.
    trace_row, trace_fwhm, trace_flux, trace_bend :
        A point-source trace: centre row at the middle column (default: 0.45
        of the rows), its FWHM in rows, its peak e- per pixel, and how many
        rows it bends over the columns.
    gradient : (float, float), optional
        Multiply the sky by a linear ramp from ``gradient[0]`` (row 0) to
        ``gradient[1]`` (last row): the seed's non-uniform background.
    read_noise : float
        Gaussian read noise, electrons.
    cosmic_rays : int
        Cosmic-ray hits per exposure (a few bright pixels each).
    seed : int
        Random seed: the same seed gives the same frames.
    gain : float
        Electrons per data unit of the returned frames (e.g. 2.5 for data in
        ADU); the noise is drawn in electrons, then divided by ``gain``.
    n_lamps : int
        The arc lines are shared out between this many lamps (line ``i``
        belongs to lamp ``i % n_lamps``); ``arc_lamps`` holds each lamp's
        frame (with its own noise) and ``arc`` their sum.
    unlit_rows : int or (int, int)
        Rows that receive no sky light (vignetted, beyond the slit's end): an
        int ``n`` darkens the last ``n`` rows (with a 3-row soft edge), a pair
        gives ``start, stop``. The trace stays where it is.
    shift, shift_tilt : float
        Flexure between arc and science: the science's sky lines sit
        ``shift`` columns to the right of where the arc's warp puts them, and
        their tilt over the slit differs from the arc's by ``shift_tilt``
        columns (bottom to top). ``warp`` stays the arc's. A sequence
        ``shift_tilt`` changes the tilt's coefficients as ``tilt`` gives them
        (``(0, 1)``: one column more tilt at the last column, one less at the
        first), a change of the warp's shape along the dispersion.

    illumination : (n_rows,) or (n_rows, n_cols) array, optional
        Multiply the sky (lines and continuum) row by row by this factor: a
        slit illumination of any shape (``gradient`` is the linear one); per
        pixel, e.g. a slit whose lit edge slants across the frame.
    line_sigma_change : float
        The sky lines' width changes along the slit (the camera's focus):
        sigma is ``line_sigma * (1 + line_sigma_change * t)``, ``t`` from
        -0.5 (row 0) to +0.5 (last row).
    line_sigma_curve : float
        A width that changes as a curve along the slit (a focus best at its
        centre): ``line_sigma_curve * (2 t)**2`` added to that factor.
    trace_wings : float
        Give the trace far wings that reach into the sky rows: a Lorentzian
        along the rows of half-width 3 FWHM and this fraction of the core's
        peak (real point-spread functions fall as a power of the distance,
        not as a Gaussian). ``trace_rows`` still covers the core only.

    Returns
    -------
    SyntheticFrames

    Examples
    --------
    >>> frames = make_synthetic_longslit(shape=(60, 300), n_exposures=2, seed=3)
    >>> frames.science.shape, frames.arc.shape
    ((2, 60, 300), (60, 300))
    """
    try:
        n_rows, n_cols = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (rows, cols); got {shape!r}") from None
    if n_rows < 8 or n_cols < 64:
        raise ValueError(f"shape must be at least (8, 64); got {shape}")
    for name, value, least in (("n_exposures", n_exposures, 1), ("n_arc_lines", n_arc_lines, 1),
                               ("n_sky_lines", n_sky_lines, 0), ("cosmic_rays", cosmic_rays, 0),
                               ("unlit_rows", unlit_rows, 0)):
        if name == "unlit_rows" and np.ndim(value) == 1:  # (a pair: start, stop)
            if len(value) != 2 or any(int(v) != v or not 0 <= v <= n_rows for v in value) or value[0] >= value[1]:
                raise ValueError(f"unlit_rows as a pair must be (start, stop) within the {n_rows} rows; got {value!r}")
            continue
        if np.ndim(value) != 0 or int(value) != value or value < least:
            raise ValueError(f"{name} must be a whole number >= {least}; got {value!r}")
    if not float(read_noise) >= 0:
        raise ValueError(f"read_noise must be >= 0 (electrons); got {read_noise!r}")
    if trace_row is not None and not 0 <= trace_row < n_rows:
        raise ValueError(f"trace_row {trace_row} is outside the frame's {n_rows} rows")
    gain = float(gain)
    if not gain > 0:
        raise ValueError(f"gain must be positive (electrons per data unit); got {gain!r}")
    n_lamps = int(n_lamps)
    if n_lamps < 1:
        raise ValueError(f"n_lamps must be at least 1; got {n_lamps!r}")
    rng = np.random.default_rng(seed)
    warp = WarpModel.from_tilt((n_rows, n_cols), tilt, curvature=curvature)
    edges = warp.edge_map()
    emap = warp.effpix_map()
    if np.any(shift_tilt):
        # A sequence changes the tilt's coefficients along the dispersion too.
        base = np.atleast_1d(np.asarray(tilt, dtype=float))
        extra = np.atleast_1d(np.asarray(shift_tilt, dtype=float))
        tilt_sci = np.zeros(max(base.size, extra.size))
        tilt_sci[: base.size] += base
        tilt_sci[: extra.size] += extra
        science_warp = WarpModel.from_tilt((n_rows, n_cols), tilt_sci, curvature=curvature)
    else:
        science_warp = warp
    sci_edges = science_warp.edge_map()

    sky_pos, sky_peak = sky_line_list(n_cols, n_sky_lines, rng)
    sky_flux = sky_peak * line_sigma * np.sqrt(2 * np.pi)
    widths = np.diff(sci_edges, axis=1)
    # A sky line at effective pixel p of the science warp lands ``shift``
    # columns right of where the arc's warp expects it.
    sky_sigma = line_sigma
    if line_sigma_change or line_sigma_curve:
        t = np.linspace(-0.5, 0.5, n_rows)[:, None]
        sky_sigma = line_sigma * (1.0 + float(line_sigma_change) * t + float(line_sigma_curve) * (2.0 * t) ** 2)
    sky_unit = sky_continuum * widths + _integrated_lines(sci_edges, sky_pos + shift, sky_flux, sky_sigma)
    if gradient is not None:
        ramp = np.linspace(gradient[0], gradient[1], n_rows)[:, None]
        sky_unit = sky_unit * ramp
    if illumination is not None:
        illumination = np.asarray(illumination, dtype=float)
        if illumination.shape not in ((n_rows,), (n_rows, n_cols)):
            raise ValueError(f"illumination must hold one factor per row ({n_rows}) or per pixel "
                             f"({n_rows, n_cols}); got shape {illumination.shape}")
        sky_unit = sky_unit * (illumination[:, None] if illumination.ndim == 1 else illumination)
    unlit = []
    if np.ndim(unlit_rows) == 0 and int(unlit_rows) > 0:
        n_dark = int(unlit_rows)
        light = np.ones(n_rows)
        light[n_rows - n_dark:] = 0.0
        edge = np.arange(1, 4)
        light[max(0, n_rows - n_dark - 3):n_rows - n_dark] = (1 - edge / 4.0)[: min(3, n_rows - n_dark)]
        sky_unit = sky_unit * light[:, None]
        unlit.append((n_rows - n_dark, n_rows))
    elif np.ndim(unlit_rows) == 1:
        r0, r1 = (int(v) for v in unlit_rows)
        sky_unit[r0:r1] = 0.0
        unlit.append((r0, r1))

    arc_pos = np.sort(rng.uniform(10, n_cols - 10, n_arc_lines))
    # Keep arc lines apart so that each is a clean, unblended feature.
    keep = np.r_[True, np.diff(arc_pos) > 12]
    arc_pos = arc_pos[keep]
    arc_heights = np.exp(rng.uniform(np.log(arc_peak[0]), np.log(arc_peak[1]), arc_pos.size))
    arc_widths = np.diff(edges, axis=1)
    lamps = []
    for lamp in range(n_lamps):
        mine = np.arange(arc_pos.size) % n_lamps == lamp
        lamp_true = (20.0 / n_lamps) * arc_widths + _integrated_lines(
            edges, arc_pos[mine], arc_heights[mine] * line_sigma * np.sqrt(2 * np.pi), line_sigma
        )
        lamps.append((rng.poisson(lamp_true).astype(float) + rng.normal(0, read_noise, lamp_true.shape)) / gain)
    arc_lamps = np.stack(lamps)
    arc = arc_lamps.sum(axis=0)

    if trace_row is None:
        trace_row = 0.45 * n_rows
    x = np.arange(n_cols)
    centre = trace_row + trace_bend * ((x - n_cols / 2) / (n_cols / 2)) ** 2
    s = trace_fwhm / 2.3548
    y = np.arange(n_rows)[:, None]
    continuum = trace_flux * (0.6 + 0.4 * np.sin(x / n_cols * np.pi))
    trace = continuum[None, :] * np.exp(-0.5 * ((y - centre[None, :]) / s) ** 2)
    if trace_wings:
        trace = trace + float(trace_wings) * continuum[None, :] / (
            1.0 + ((y - centre[None, :]) / (3.0 * trace_fwhm)) ** 2)
    reach = 4 * s + abs(trace_bend) + 1
    trace_rows = (max(0, int(np.floor(trace_row - reach))), min(n_rows, int(np.ceil(trace_row + reach)) + 1))

    sky = np.empty((n_exposures, n_rows, n_cols))
    science = np.empty_like(sky)
    for i in range(n_exposures):
        scale = 1.0 + rng.uniform(-variation, variation)
        sky[i] = sky_unit * scale
        expected = sky[i] + trace
        science[i] = rng.poisson(expected).astype(float) + rng.normal(0, read_noise, expected.shape)
        for _ in range(cosmic_rays):
            r, c = rng.integers(0, n_rows), rng.integers(0, n_cols - 2)
            science[i, r, c : c + rng.integers(1, 3)] += rng.uniform(500, 5000)
    if gain != 1.0:
        science /= gain
        sky /= gain
        trace = trace / gain

    # The frames carry their known noise, as the loaders' frames do.
    truth = dict(gain=gain, read_noise=float(read_noise), noise_source="synthetic truth",
                 unit="electron" if gain == 1.0 else "adu")
    return SyntheticFrames(
        science=FrameArray(science, **truth),
        arc=FrameArray(arc, **truth),
        sky=sky,
        trace=trace,
        warp=warp,
        effpix_map=emap,
        arc_lines=arc_pos,
        trace_rows=trace_rows,
        read_noise=float(read_noise),
        gain=gain,
        params=dict(shape=(n_rows, n_cols), tilt=tilt, curvature=curvature, gradient=gradient, seed=seed,
                    trace_wings=trace_wings,
                    gain=gain, n_lamps=n_lamps, unlit_rows=unlit_rows, shift=shift, shift_tilt=shift_tilt),
        arc_lamps=arc_lamps,
        science_warp=science_warp,
        unlit_rows=unlit,
    )


def load_demo(seed=2024):
    """The embedded demo: two 120 x 1024 exposures with tilted sky lines and a bright trace."""
    return make_synthetic_longslit(shape=(120, 1024), n_exposures=2, tilt=2.5, n_sky_lines=30, cosmic_rays=20, seed=seed)
