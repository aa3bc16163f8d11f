"""Sky-background estimation from the super-sampled sky spectrum.

:func:`fit_sky` returns a :class:`SkyResult` (background, variance, mask,
effective-pixel map, samples, model curve, chi image); :func:`extract_background`
is the seed-compatible front that returns arrays.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import numbers
import threading
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from .._stats import median, median_along, percentile, value_quantum
from .._threads import interp_in_threads, map_in_threads
from .._warnings import warn_at_caller
from ..frames import CEILING_BAND, CEILING_PIXELS, check_gain, check_read_noise, without_readout_note
from ..inputs import as_image_stack, check_spatial_order
from ..rows import RowRanges
from ..warp import WarpModel
from ._kernels import _PARALLEL_MIN_SAMPLES, add_dither, dither  # noqa: F401 - dither: SkySamples' doc
from ._select import drop_flagged_rows, pixel_rows, sorted_pixel_order, unmasked_pixels
from .bspline import StretchedBSplineSky, TooFewSamplesError, adaptive_coordinate, choose_knot_threshold
from .median import median_of_bins
from .options import resolve_options
from .quality import (  # noqa: E402
    BLOCK_SIZE,
    CHI_LIMITS,
    FINE_BLOCKS,
    LEAK_LIMIT,
    LINE_MISFIT_LIMIT,
    MAX_AUTO_ORDER,
    REJECTED_LIMIT,
    ROW_CHI_HIGH,
    UNLIT_FRACTION,
    FirstLook,
    SkyQuality,
    _far_above,
    _fit_noise_bins,
    _legendre_design,
    _ranges,
    _row_chi_means,
    _row_chi_means_in_rows,
    _spread,
    added_light_profile,
    analyse_rows,
    block_chi_scatter,
    chi_square_profiles,
    column_chi_means,
    effpix_chi_sums,
    fine_chi_scatter,
    gain_spread,
    line_misfit_beside_mask,
    line_shape_change,
    line_shape_model,
    measure_flexure,
    noise_bins,
    noise_pedestal,
    provisional_noise,
    row_profile,
    scatter_step,
    sky_ceiling,
)
from .slit import MAX_PROFILE_DEGREE, fit_slit_correction, illumination_profile
from .slit import SAMPLE_LIMIT as SLIT_SAMPLES

# Coarsest knot spacing of adaptive knots (px), used on a flat continuum; see
# :func:`specwidgets.core.sky.bspline.adaptive_coordinate`.
COARSE_SPACING = 5.0

# Largest max/min of a slit-illumination profile divided out before the
# fit (see ``_fit_bspline``); steeper ones are left to the spatial terms.
SLIT_PROFILE_RANGE = 1.5

#: Knot spacing (px) of the sky that the rows' brightness along the slit is
#: measured against (see ``_lit_profile``): one coefficient per column.
PROFILE_KNOT_SPACING = 1.0
#: Samples this many times the median sky level count as the sky lines'
#: when the slit's illumination is checked on the lines alone.
LINE_LEVEL = 4.0
#: How far (chi-square per term, in units of their scatter) the lines'
#: brightness may depart from the slit's illumination profile.
LINES_DISAGREE = 9.0

# Pixels per block when the background is evaluated over the frame (bounds
# the temporaries; large enough for the kernels' threads).
_EVAL_BLOCK_PIXELS = 1 << 20
# Samples gathered per np.take call in ``sky_samples``.
_GATHER_CHUNK = 1 << 18

__all__ = ["SkyQuality", "SkyResult", "SkySamples", "SuspectSkyWarning", "assess_later", "fit_sky",
           "extract_background", "METHODS"]


class SuspectSkyWarning(UserWarning):
    """A sky fit that flags itself as probably wrong, from a call that returns the background alone
    (:func:`extract_background`): its ``quality`` would not be seen otherwise."""

METHODS = ("bspline", "median")


@dataclass(eq=False)
class SkySamples:
    """The super-sampled sky spectrum: every unmasked pixel, sorted by effective position.

    Attributes
    ----------
    effpix : (n_samples,) array
        Effective position of each sample, ascending.
    flux : (n_exposures, n_samples) array
        Each exposure's value at those pixels (NaN where the input was NaN).
    index : (n_samples,) int array
        Flat index (``row * n_cols + col``) of each sample's pixel.
    n_cols : int
        Columns of the images.
    quantum : float
        The step of the values when the frames hold whole numbers of a unit (integer ADU, or ADU times a
        gain: :func:`value_quantum`), 0 otherwise. Such samples carry a dither of a step's width
        (:func:`dither`): their scatter's robust measures (MADs) then follow the noise.
    """

    effpix: np.ndarray
    flux: np.ndarray
    index: np.ndarray
    n_cols: int
    quantum: float = 0.0

    @property
    def rows(self):
        """Row of each sample's pixel."""
        return pixel_rows(self.index, self.n_cols)


def sky_samples(stack, warp_model, masked_rows):
    """Gather the unmasked pixels of every exposure in effective-pixel order.

    The sort of the whole effective-pixel map is cached on the warp model, so
    a new mask costs one pass over the pixels, not a new sort.
    """
    n_exp, n_rows, n_cols = stack.shape
    order = warp_model._cache.get("order")
    if order is None:
        # Pixel indices fit in int32 below 2**31 pixels: half the memory of
        # the cached order and of every sample index (the same values).
        order = sorted_pixel_order(warp_model.effpix_map())
        warp_model._cache["order"] = order
    index = unmasked_pixels(order, n_cols, masked_rows)
    emap, flat = warp_model.effpix_map().ravel(), stack.reshape(n_exp, -1)
    effpix = np.empty(index.size)
    flux = np.empty((n_exp, index.size))

    def gather(source, out):
        # In chunks: np.take converts the indices to np.intp, and a copy of
        # them all would add its size to the peak memory. "clip": the
        # indices are valid, and "raise" would buffer ``out``.
        for a in range(0, index.size, _GATHER_CHUNK):
            np.take(source, index[a:a + _GATHER_CHUNK], out=out[a:a + _GATHER_CHUNK], mode="clip")

    # The gathers (effective pixels, each exposure's flux) side by side:
    # np.take releases the GIL, and they are most of this pass.
    map_in_threads(lambda job: gather(*job), [(emap, effpix)] + [(flat[k], flux[k]) for k in range(n_exp)])
    quantum = value_quantum(flux[0, ::max(1, flux.shape[1] // _QUANTUM_SAMPLES)])
    if quantum:
        for k in range(n_exp):
            add_dither(flux[k], index, k * flat.shape[1], quantum)
    return SkySamples(effpix, flux, index, n_cols, quantum)


#: Samples looked at to tell whether the frames' values are whole steps (:func:`value_quantum`).
_QUANTUM_SAMPLES = 20_000


@dataclass(eq=False)
class SkyResult:
    """A sky-background estimate and everything needed to judge it.

    Attributes
    ----------
    data : (n_exposures, n_rows, n_cols) array
        The images the sky was fit to.
    background : (n_exposures, n_rows, n_cols) array
        The estimated sky in every pixel (masked rows included).
    variance : (n_exposures, n_rows, n_cols) array
        Variance of the background estimate itself.
    mask : (n_rows, n_cols) bool array
        True on pixels excluded from the fit (the masked rows).
    rejected : (n_exposures, n_rows, n_cols) bool array
        Sky pixels the fit rejected as outliers (cosmic rays, hot pixels).
    effpix_map : (n_rows, n_cols) array
        Effective pixel of every pixel.
    samples : SkySamples
        The super-sampled sky spectrum the fit used.
    method : str
    read_noise, gain : float
        Noise model: data variance = max(sky, 0) / gain + (read_noise / gain)**2.
    mask_region : RowRanges
        The masked rows, resolved for these frames (``SWMASK`` in an output).
    models : list
        Per exposure, the fitted sky model (a ``BSplineSky``) or None.
    options : dict
        The options the fit used, resolved (e.g. the spatial order chosen).
    quality : SkyQuality
        How far to trust the fit: noise model and its source, unlit rows,
        flexure, rejected fraction, chi, leak, ``warnings``, ``suspect``.
    warp_model : WarpModel
        The warp the fit used (the one given, its refinement on the sky
        lines, or the sky lines' own; see ``quality.warp_source``).
    flexure_shift : tuple of float
        Per exposure, the sky lines' shift between the bottom and top rows
        that was corrected (px; 0 when none): exposure ``k`` was fit on
        ``effpix_map - shift * (row - mid) / (n_rows - 1)``
        (:meth:`exposure_effpix`).
    row_scale : (n_exposures, n_rows) array or None
        The slit illumination each exposure's model is multiplied by, row by
        row: the profile divided out before the fit
        (:func:`specwidgets.core.sky.slit.illumination_profile`) times the
        exposure's slit correction (:mod:`specwidgets.core.sky.slit`); None
        when neither was used.
    unit : str or None
        The frames' data unit when they carried one (the loaders' arrays
        do: "electron" once the gain is applied, "adu" without); the
        background is in the same unit. FITS output writes it (``BUNIT``).
    """

    data: np.ndarray
    background: np.ndarray
    mask: np.ndarray
    rejected: np.ndarray
    effpix_map: np.ndarray
    samples: SkySamples
    method: str
    ref_row: int = 0
    read_noise: float = 0.0
    gain: float = 1.0
    mask_region: RowRanges = field(default_factory=RowRanges)
    models: list = field(default_factory=list)
    options: dict = field(default_factory=dict)
    quality: SkyQuality | None = None
    flexure_shift: tuple = ()
    warp_model: WarpModel | None = field(default=None, repr=False)
    row_scale: np.ndarray | None = field(default=None, repr=False)
    unit: str | None = None
    _variance: np.ndarray | None = field(default=None, repr=False)
    _exposure_variance: dict = field(default_factory=dict, repr=False)
    # The median of bins: samples in each pixel's bin, from which its
    # variance is computed on first use (a slider change or
    # ``extract_background`` that never looks at it does not pay for it).
    _bin_counts: np.ndarray | None = field(default=None, repr=False)
    # The rows the quality report leaves out (masked or unlit), and its line misfit once measured.
    _skip_rows: np.ndarray | None = field(default=None, repr=False)
    _line_misfit: tuple | None = field(default=None, repr=False)
    # The spatial order a width that changes as a curve along the slit asks for, beyond the fit's (or None).
    _width_hint: int | None = field(default=None, repr=False)
    # The spatial order the sky lines' brightness alone chose (0: it chose none); see _held_out_lines_order.
    _lines_order: int = field(default=0, repr=False)

    def _median_variance(self, k):
        """The median of bins' variance of exposure ``k``: the median of n samples
        scatters sqrt(pi/2) times more than their mean, so
        ``(pi / 2) * (max(bg, 0) / gain + (rn / gain)**2) / max(n, 1)``."""
        # The operations in this order, in place: no frame-sized temporaries.
        variance = np.clip(self.background[k], 0, None)
        variance /= self.gain
        variance += (self.read_noise / self.gain) ** 2
        variance *= np.pi / 2
        variance /= np.maximum(self._bin_counts, 1)
        return variance

    def exposure_variance(self, k, rows=None):
        """Variance of exposure ``k``'s background estimate (computed on first use).

        ``rows`` (a slice) asks for those rows only: a view of one target's
        aperture need not pay for the whole frame.
        """
        if self._variance is not None:
            return self._variance[k] if rows is None else self._variance[k][rows]
        if self._bin_counts is not None:
            if k not in self._exposure_variance:
                self._exposure_variance[k] = self._median_variance(k)
            full = self._exposure_variance[k]
            return full if rows is None else full[rows]
        if rows is not None and k not in self._exposure_variance:
            emap = self.exposure_effpix(k)[rows]
            index = np.arange(self.effpix_map.shape[0])[rows]
            var = self.models[k].model_variance(emap, np.broadcast_to(index[:, None], emap.shape))
            return var if self.row_scale is None else var * self.row_scale[k, index, None] ** 2
        if k not in self._exposure_variance:
            n_rows, n_cols = self.effpix_map.shape
            grid = np.broadcast_to(np.arange(n_rows)[:, None], (n_rows, n_cols))
            var = self.models[k].model_variance(self.exposure_effpix(k), grid)
            if self.row_scale is not None:
                var *= self.row_scale[k, :, None] ** 2
            self._exposure_variance[k] = var
        full = self._exposure_variance[k]
        return full if rows is None else full[rows]

    def exposure_effpix(self, k):
        """Effective-pixel map exposure ``k`` was fit on (``effpix_map`` corrected for its flexure)."""
        shift = self.flexure_shift[k] if k < len(self.flexure_shift) else 0.0
        if not shift:
            return self.effpix_map
        n_rows = self.effpix_map.shape[0]
        t = (np.arange(n_rows) - 0.5 * (n_rows - 1)) / max(n_rows - 1, 1)
        return self.effpix_map - shift * t[:, None]

    @property
    def variance(self):
        """Variance of the background estimate in every pixel (computed on first use)."""
        if self._variance is None:
            n_exp = self.background.shape[0] if self._bin_counts is not None else len(self.models)
            self._variance = np.stack([self.exposure_variance(k) for k in range(n_exp)])
            self._exposure_variance.clear()
        return self._variance

    def exposure_chi(self, k):
        """:attr:`chi` of exposure ``k`` alone (a viewer showing one exposure need not pay for all)."""
        background = self.background[k]
        noise = np.clip(background, 0, None) / self.gain + (self.read_noise / self.gain) ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            return (self.data[k] - background) / np.sqrt(noise + self.exposure_variance(k))

    @property
    def corrected(self):
        """Data minus background."""
        return self.data - self.background

    @property
    def noise_variance(self):
        """Expected variance of each sky pixel's value about the background."""
        return np.clip(self.background, 0, None) / self.gain + (self.read_noise / self.gain) ** 2

    @property
    def sigma(self):
        """Standard deviation of (data - background) in a sky pixel."""
        return np.sqrt(self.noise_variance + self.variance)

    @property
    def chi(self):
        """``(data - background) / sigma``: unit scatter where the sky is modelled well."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.corrected / self.sigma

    def model_curve(self, exposure=0):
        """The sky model as a curve ``(effpix, counts)`` for plotting over the samples."""
        model = self.models[exposure] if self.models else None
        if model is not None:
            effpix, counts = model.curve()
            if self.row_scale is not None:
                # The model is the evenly lit sky; at the reference row it is lit so.
                counts = counts * self.row_scale[exposure, self.ref_row]
            return effpix, counts
        # The median of bins has no curve of its own; at the reference row the
        # effective pixel equals the column, so that row traces it.
        return self.effpix_map[self.ref_row].copy(), self.background[exposure, self.ref_row].copy()

    # ``quality`` is a property (below) over ``_quality``: a fit made inside
    # ``assess_later()`` leaves its steps in ``_quality_steps``, run on first access.

    def _assess_later(self, step):
        """Add ``step`` (previous report -> report) to the quality report's pending steps."""
        self.__dict__.setdefault("_quality_steps", []).append(step)

    def _amend_quality(self, step):
        """``quality = step(quality)``: now, or after the pending steps when the report waits for its first read."""
        if self.__dict__.get("_quality_steps"):
            self._assess_later(step)
        else:
            self.quality = step(self.quality)

    def __getstate__(self):
        # The pending steps are closures (not picklable): a pickled result carries its report.
        _ = self.quality
        return dict(self.__dict__)


def _get_quality(self):
    if self.__dict__.get("_quality_steps"):
        with _QUALITY_LOCK:  # two readers at once: the report is made once
            steps = self.__dict__.pop("_quality_steps", None)
            if steps:
                try:
                    report = self.__dict__.get("_quality")
                    for step in steps:
                        report = step(report)
                except Exception as exc:
                    # Every later reader gets the failure too, not a missing report.
                    self.__dict__["_quality_error"] = exc
                    raise
                self.__dict__["_quality"] = report
    if self.__dict__.get("_quality_error") is not None:
        raise self.__dict__["_quality_error"]
    return self.__dict__.get("_quality")


def _set_quality(self, report):
    self.__dict__.pop("_quality_steps", None)
    self.__dict__.pop("_quality_error", None)
    self.__dict__["_quality"] = report


_QUALITY_LOCK = threading.RLock()
# The dataclass took ``quality``'s default (None) from the class; the
# property replaces it now, and __init__'s ``self.quality = ...`` goes through it.
SkyResult.quality = property(_get_quality, _set_quality, doc="""SkyQuality: how far to trust the fit (see the class).

Made when the fit ends, or, for a fit made inside :func:`assess_later`, on
first access.""")

_ASSESS_LATER = contextvars.ContextVar("specwidgets_assess_later", default=False)


@contextlib.contextmanager
def assess_later():
    """Within this block, fits leave their quality report to the first access of ``result.quality``.

    For a dashboard: the new background can be shown before the report (a
    few medians of the sky samples, ~10 ms on the Goodman crop) is made. The
    report is that of the result's arrays when it is read, so they must not
    be changed before (the dashboard never changes them). An error in making
    it is raised by that access.

    Examples
    --------
    >>> from specwidgets.io.synthetic import make_synthetic_longslit
    >>> from specwidgets.core.warp import WarpModel
    >>> frames = make_synthetic_longslit(shape=(40, 300), n_exposures=1, seed=1)
    >>> warp = WarpModel.from_tilt((40, 300), 1.0)
    >>> with assess_later():
    ...     res = fit_sky(frames.science, warp, frames.trace_rows, method="median", gain=1.0, read_noise=4.0)
    >>> "_quality_steps" in res.__dict__, res.quality.noise_source, "_quality_steps" in res.__dict__
    (True, 'argument', False)
    """
    token = _ASSESS_LATER.set(True)
    try:
        yield
    finally:
        _ASSESS_LATER.reset(token)


def _set_assessment(result, assess):
    """``result.quality = assess()``, or on first access inside :func:`assess_later`."""
    if _ASSESS_LATER.get():
        result._assess_later(lambda _: assess())
    else:
        result.quality = assess()


def _resolve_noise(images, read_noise, gain):
    """``(read_noise, gain, rn_source, gain_source)``; None where still unknown.

    An explicit argument wins; then the loader's attributes on the frames
    (``images.read_noise``, ``images.gain``, ``images.noise_source``); what
    is still None is estimated from the data by :func:`fit_sky`.
    """
    read_noise = check_read_noise(read_noise)
    gain = check_gain(gain)
    frames_source = str(getattr(images, "noise_source", None) or "frames")
    rn_source = "argument" if read_noise is not None else None
    gain_source = "argument" if gain is not None else None
    if read_noise is None and getattr(images, "read_noise", None) is not None:
        read_noise = check_read_noise(images.read_noise, "images.read_noise")
        rn_source = frames_source
    if gain is None and getattr(images, "gain", None) is not None:
        gain = check_gain(images.gain, "images.gain")
        gain_source = frames_source
    return read_noise, gain, rn_source, gain_source


#: The frames' own noise model is not used when it predicts this many times more (or fewer) the variance
#: of their faint sky (adjacent sky rows' differences) than they show.
FRAMES_NOISE_FACTOR = 10.0


def _check_frames_noise(first_look, read_noise, gain, rn_source, gain_source):
    """The noise model with the frames' own gain and read noise dropped (to be estimated) when they are far
    from the data: ``(read_noise, gain, rn_source, gain_source, note)``, ``note`` "" when kept.

    A header's gain is for counts: frames divided by the exposure time
    (ADU/s without a BUNIT to say so) scatter 600 times less in variance
    than it predicts, and the fit weighted by it was 2.4 sigma RMS off. The
    faint sky's variance (:func:`provisional_levels`) against the model's at
    its level tells, before any fit; a factor :data:`FRAMES_NOISE_FACTOR`
    is far beyond a model's error (a bias left in, resampled frames). The
    caller's own arguments are kept.
    """
    from_frames = gain is not None and gain_source not in (None, "argument")
    levels = first_look.levels if from_frames else None
    if levels is None:
        return read_noise, gain, rn_source, gain_source, ""
    var_low, level_low = levels
    rn = read_noise if read_noise is not None else 0.0
    predicted = max(level_low, 0.0) / gain + (rn / gain) ** 2
    if not (predicted > 0 and var_low > 0):
        return read_noise, gain, rn_source, gain_source, ""
    ratio = predicted / var_low
    if 1.0 / FRAMES_NOISE_FACTOR <= ratio <= FRAMES_NOISE_FACTOR:
        return read_noise, gain, rn_source, gain_source, ""
    note = (f"the frames' noise model ({gain_source}: gain {gain:g} per data unit) predicts {ratio:.3g} times "
            "the variance their faint sky shows: not used")
    cause = ("frames divided by the exposure time, or a bias level left in? give gain= for these values"
             if ratio > 1 else "a gain for other units, or frames summed or scaled up? give gain= for these values")
    warn_at_caller(f"{note}; the noise model is estimated from the sky instead ({cause})", UserWarning)
    if rn_source not in (None, "argument"):
        read_noise, rn_source = None, None
    return read_noise, None, rn_source, None, note


def _header_gain_applied(images):
    """``(card, gain)``: the header card whose gain took frames in electrons from ADU when they were read
    (``images.noise_source`` "header GAIN, ..."), or None (not in electrons, no header, no such card)."""
    source = str(getattr(images, "noise_source", "") or "")
    header = getattr(images, "header", None)
    if getattr(images, "unit", None) != "electron" or header is None or not source.startswith("header "):
        return None
    first = source[len("header "):].split(",")[0].split(";")[0]
    card = first.split(" (")[0].strip()
    try:
        value = float(header[card])
    except (KeyError, TypeError, ValueError):
        return None
    gain = 1.0 / value if "inverted" in first and value > 0 else value
    return (card, gain) if math.isfinite(gain) and gain > 0 else None


#: The advice of the warning of a sky that scatters off a given noise model.
_NOISE_MODEL_PHRASE = "check gain and read noise"

#: A header gain whose square root the sky's scatter reads (its variance ratio over the gain within these
#: bounds) is named. (Gains applied twice read 0.84-1.23 in trial F1's frames; frames not flat-fielded by
#: 3-4 %, gain 2, read 0.68-0.80 and were told so, wrongly: trial A3.)
GAIN_TWICE_BOUNDS = (0.84, 1.35)


def _gain_twice_hint(quality, card, gain):
    """``quality`` with its warning of a scatter off the noise model told, when the scatter's square is
    about the gain applied from header card ``card``, that frames in electrons already get it twice.

    A pipeline's frames in electrons often keep the camera's GAIN card and no ``BUNIT``: read as ADU, they
    are multiplied by it, their variance then ``gain`` times what the model says (trial F1: the sky 2x, and
    the warning said only "check gain and read noise"). Other causes (frames not flat-fielded, a bias left
    in) scatter otherwise, so the hint is given only when the numbers agree.
    """
    ratio = quality.chi_std ** 2 / gain
    if (not math.isfinite(ratio) or abs(math.log(gain)) < math.log(1.25)
            or not GAIN_TWICE_BOUNDS[0] <= ratio <= GAIN_TWICE_BOUNDS[1]):
        return quality
    hint = (f" Overall their variance is {quality.chi_std ** 2:.2f} times the model's, about the gain applied when "
            f"the frames were read ({card} = {gain:g} e-/ADU): frames in electrons already (a pipeline's output that "
            f"kept the camera's {card} card) get it a second time. If so, the data and the sky are {gain:g} times "
            "what they are in electrons: add BUNIT = 'electron' to their headers, or read them with gain=1 (batch: "
            "--gain 1).")
    warnings = [w + hint if _NOISE_MODEL_PHRASE in w else w for w in quality.warnings]
    return dataclasses.replace(quality, warnings=warnings) if warnings != quality.warnings else quality


def _noise_source(rn_source, gain_source):
    if rn_source == gain_source:
        return rn_source
    # (The frames' source may say how their read noise was made, which is not the one used then.)
    return f"gain: {without_readout_note(gain_source) or gain_source}; read noise: {rn_source}"


def _check_choice(value, name, allowed):
    # False by identity: 0 == False, and a 0 must not pass for "off".
    if not any(value is a if isinstance(a, bool) else (isinstance(value, str) and value == a) for a in allowed):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def _row_coordinate(rows, n_rows):
    """Rows mapped to -0.5 (row 0) .. +0.5 (last row): the flexure's lever arm."""
    return (np.asarray(rows, float) - 0.5 * (n_rows - 1)) / max(n_rows - 1, 1)


def _drop_rows(samples, flagged, rows=None):
    """``samples`` without those in the ``flagged`` rows, and their rows.

    What ``sky_samples`` would give with those rows masked too, without a
    new pass over the frame. ``rows``: ``samples.rows`` if already at hand.
    """
    rows = samples.rows if rows is None else rows
    effpix, flux, index, rows = drop_flagged_rows(samples.effpix, samples.flux, samples.index, rows, flagged)
    return SkySamples(effpix, flux, index, samples.n_cols, samples.quantum), rows


def _every_nth_true(flags, step, chunk=1 << 20):
    """``np.flatnonzero(flags)[::step]`` without the full index array (8 bytes per True).

    Examples
    --------
    >>> flags = np.arange(20) % 3 != 0
    >>> bool(np.array_equal(_every_nth_true(flags, 4, chunk=7), np.flatnonzero(flags)[::4]))
    True
    """
    parts, seen = [], 0
    for start in range(0, flags.size, chunk):
        hits = np.flatnonzero(flags[start:start + chunk])
        parts.append(hits[(-seen) % step::step] + start)
        seen += hits.size
    return np.concatenate(parts) if parts else np.zeros(0, np.intp)


def _subsample(n, limit=250_000):
    """A regular index subsample of at most ``limit`` of ``n`` items (statistics need no more)."""
    return slice(None, None, max(1, -(-n // limit)))


def _scattered_subsample(n, limit):
    """``(pick, step)``: one item drawn from each run of ``step`` items, about ``n / step <= limit`` in all.

    For per-row statistics of the samples, which are sorted by effective
    pixel: a smooth warp orders the rows in a lattice, and every ``step``-th
    sample can then miss whole rows (half the rows of a 4096 x 4096 frame
    tilted 8 px, where ``step`` is 42). Drawing within each run keeps the
    subsample spread along the spectrum and reaches every row. The draw is
    seeded by ``n``: a fit depends on its inputs only. ``pick`` is a slice
    (every item) when ``n <= limit``.

    Examples
    --------
    >>> pick, step = _scattered_subsample(10, 4)
    >>> step, pick.size, bool(np.all(pick // step == np.arange(4)))
    (3, 4, True)
    >>> _scattered_subsample(10, 20)
    (slice(None, None, None), 1)
    """
    step = max(1, -(-n // limit))
    if step == 1:
        return slice(None), 1
    starts = np.arange(0, n, step)
    pick = starts + np.random.default_rng(n).integers(0, step, starts.size)
    if pick[-1] >= n:  # the last run is short
        pick[-1] = starts[-1] + (pick[-1] - starts[-1]) % (n - starts[-1])
    return pick, step


def fit_sky(
    images: ArrayLike,
    warp_model: WarpModel,
    mask_region=(None, None),
    method: str = "bspline",
    *,
    read_noise: float | str | None = None,
    gain: float | str | None = None,
    progress: bool = False,
    **options,
) -> SkyResult:
    """Estimate the sky background of every pixel of one image or a stack.

    Parameters
    ----------
    images : array_like
        ``(n_rows, n_cols)`` or ``(n_exposures, n_rows, n_cols)``; NaN pixels
        (bad columns, cosmic-ray holes) are ignored. An array carrying
        ``gain``, ``read_noise`` and ``noise_source`` attributes (as the
        loaders return) supplies its noise model.
    warp_model : WarpModel or None
        Fit on an arc of the same shape (see :func:`generate_warp_model`).
        None: fit on the science frame's own sky lines
        (:func:`specwidgets.core.sky.sky_warp.sky_warp_model`, once per frame), for
        when there is no arc; ``quality.warp_source`` is then "sky lines".
    mask_region : (int, int), list of (int, int) or RowRanges
        Rows ``start:stop`` to keep out of the sky fit (the trace); several
        ranges may be given. ``(None, None)`` masks nothing. Read as a
        :class:`~specwidgets.core.rows.RowRanges` (ranges sharing rows are
        merged); the result's ``mask_region`` is that value, the very object
        given when it was already resolved for these frames.
    method : {"bspline", "median"}
        ``"median"``: the seed's estimator, the median of the samples inside
        each pixel's edges. ``"bspline"``: a Kelson (2003) B-spline fit with
        outlier rejection and a noise model.
    read_noise, gain : float or None
        Noise model: read noise in electrons, gain in electrons per data unit
        (data variance = max(sky, 0) / gain + (read_noise / gain)**2). None
        (default): from the frames' attributes, else estimated from the
        scatter of the sky about a first-pass fit. Never silently zero:
        ``result.quality`` says which was used and where it came from.
    progress : bool
        Print one line per exposure.
    **options
        For ``"bspline"``:

        ``spatial_order`` : "auto" (default) or int 0-4
            Degree of the Legendre polynomial along the slit. "auto" picks
            it from the rows' sky brightness by the expected chi-square on
            held-out rows (see :func:`specwidgets.core.sky.quality.analyse_rows`).
        ``unlit`` : "auto" (default) or False
            Find rows with little or no sky light and leave them out of the fit.
        ``flexure`` : "auto" (default) or False
            Measure the shift of each exposure's sky lines against the warp
            from one end of the slit to the other, and correct it when it is
            significant.
        ``sky_warp`` : "auto" (default) or False
            Trace the science frame's own bright sky lines and correct the
            warp's shape (tilt and curvature changing along the dispersion)
            where they disagree with it, when that predicts sky-line
            positions on held-out rows better
            (:func:`specwidgets.core.sky.sky_warp.refine_warp`). Measured once per
            science frame and warp model (cached on the warp model, with the
            mask of the first fit), so a moved mask does not pay for it.
            ``result.quality.warp_source`` says which warp was used.
        ``slit_correction`` : "auto" (default), "illumination" or False
            After the fit, model the slit's illumination (a factor along the
            slit) and smooth extra light (scattered light, a source's far
            wings) from the sky rows' residuals, each only when it pays for
            its coefficients (:mod:`specwidgets.core.sky.slit`);
            ``result.quality.illumination`` and ``smooth_light`` say how much.
            "illumination" tries the illumination factor only. The smooth
            light is what a source's far wings in the sky rows look like; it
            is interpolated under the source as background (a small,
            smooth pedestal: see ``quality.smooth_light``). Then a sky row
            clearly dimmer than the model (5 times its error and by 0.5 % or
            more: dust on the slit, frames not flat-fielded) gets its own scale;
            one within 20 rows of the mask makes the fit suspect, since the
            sky under the mask cannot be measured. False: none of these.
        ``knot_spacing``, ``reject_sigma``, ``max_iterations``, ... : see
        :func:`specwidgets.core.sky.bspline.fit_bspline_sky`.

    Returns
    -------
    SkyResult
        With ``quality`` (:class:`SkyQuality`): the noise model and its
        source, unlit rows, spatial order, flexure, rejected fraction, chi,
        leak, warnings and ``suspect``. ``options`` holds the options used:
        the fit's choices resolved (``spatial_order``, ``knots``,
        ``knot_spacing``, ``knot_threshold``); the decisions it makes per
        frame (``unlit``, ``flexure``, ``sky_warp``, ``slit_correction``)
        stay ``"auto"``, and what they found is in ``quality`` (unlit rows,
        flexure, warp source).

    Raises
    ------
    TypeError, ValueError
        For bad images, warp model, method, noise model or options.

    Examples
    --------
    >>> from specwidgets.io.synthetic import make_synthetic_longslit
    >>> f = make_synthetic_longslit(shape=(80, 600), gain=2.5, read_noise=10, seed=4)
    >>> res = fit_sky(np.asarray(f.science), f.warp, f.trace_rows)  # no noise keywords: estimated
    >>> res.quality.noise_source, bool(abs(res.gain / 2.5 - 1) < 0.15)
    ('estimated from the sky residuals', True)
    >>> res.quality.suspect
    False
    """
    stack, _ = as_image_stack(images, "images")
    stack, blank_columns = _blank_constant_columns(stack)
    if warp_model is not None and not isinstance(warp_model, WarpModel):
        raise TypeError(
            f"warp_model must be a WarpModel (from generate_warp_model, or sky_warp_model without an arc) "
            f"or None (fit on the sky lines); got {type(warp_model).__name__}"
        )
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    read_noise, gain, rn_source, gain_source = _resolve_noise(images, read_noise, gain)
    n_exp, n_rows, n_cols = stack.shape
    if n_cols < 2:
        raise ValueError(
            f"images have {n_cols} column(s); a sky fit needs a spectrum along the columns "
            "(dispersion along x): check the instrument's dispersion_axis (transpose the frames?)"
        )
    # One value from the caller to the result: a RowRanges already resolved
    # for this height (the state's) passes through as the same object.
    ranges = RowRanges.coerce(mask_region, text=False).resolve(n_rows)
    masked_rows = ranges.rows()
    # What the sky-warp measurements and the fit's first stage share, measured once.
    first_look = FirstLook(stack, masked_rows)
    read_noise, gain, rn_source, gain_source, noise_note = _check_frames_noise(
        first_look, read_noise, gain, rn_source, gain_source)
    if warp_model is None:
        # No arc: the warp from the frame's own sky lines, once per frame.
        from .sky_warp import cached_sky_warp_model

        warp_model = cached_sky_warp_model(stack, masked_rows, first_look)
    if warp_model.coefficients.size and not np.isfinite(warp_model.coefficients).all():
        raise ValueError(
            "warp_model has NaN or infinite coefficients: refit it (generate_warp_model) on the arc"
        )
    warp_model._check_shape((n_rows, n_cols))
    refinement = None
    sky_warp = False
    if method == "bspline":
        sky_warp = _check_choice(options.pop("sky_warp", "auto"), "sky_warp", ("auto", False))
        if sky_warp == "auto":
            # Once per science frame and warp (cached on the warp model): a
            # moved mask reuses it, and the refined warp's maps and sort.
            from .sky_warp import cached_refinement

            warp_model, refinement = cached_refinement(stack, warp_model, masked_rows, first_look)
    emap = warp_model.effpix_map((n_rows, n_cols))
    samples = sky_samples(stack, warp_model, masked_rows)
    finite = np.isfinite(samples.flux).any(axis=1)
    if not finite.any():
        raise ValueError("every unmasked pixel is NaN: there is no sky to fit")
    if not finite.all():
        empty = ", ".join(str(k + 1) for k in np.flatnonzero(~finite))
        raise ValueError(f"exposure(s) {empty} of {n_exp} (counting from 1) have no finite pixel in the sky rows "
                         "(all NaN or inf): leave them out of the stack")
    constant = _constant_exposures(samples.flux)
    if constant:
        which = ", ".join(str(k + 1) for k, _ in constant)
        values = ", ".join(f"{value:.6g}" for _, value in constant)
        raise ValueError(f"exposure(s) {which} of {n_exp} (counting from 1) hold a single value in every sky pixel "
                         f"({values}): no sky to fit (an empty or failed read?); leave them out of the stack")
    samples_box = [samples]
    del samples

    if "initial" in options:
        # Warm starts went: a warm start could stop at another rejected set,
        # so a result would depend on the fits before it, not on its inputs.
        raise TypeError("fit_sky takes no initial= (warm start): each fit starts fresh from its inputs")
    if method == "median" and options:
        raise TypeError(f"method='median' takes no options; got {sorted(options)}")
    given_spacing = options.get("knot_spacing")
    try:
        if method == "median":
            result = _fit_median(stack, warp_model, emap, _hand_over(samples_box), ranges, masked_rows,
                                 (read_noise, gain, rn_source, gain_source), progress, first_look)
        else:
            given = dict(options)
            noise = (read_noise, gain, rn_source, gain_source)
            # The traced sky lines' tilt change starts the flexure measurement (when large).
            hint = () if refinement is None else refinement.tilt_change

            def fit_bspline(look, samples):
                result = _fit_bspline(stack, warp_model, emap, samples, ranges, masked_rows, noise,
                                      progress, dict(given), look, tilt_hint=hint)
                if given.get("spatial_order", "auto") == "auto":
                    def with_order(order, fine=False, rows=masked_rows):
                        return _fit_bspline(stack, warp_model, emap, sky_samples(stack, warp_model, rows), ranges, rows,
                                            noise, progress, {**given, "spatial_order": order}, look, tilt_hint=hint,
                                            finest=fine)

                    result = _held_out_lines_order(result, masked_rows, with_order)
                    result = _lines_changing_along_the_slit(result, with_order)
                return result

            result = fit_bspline(first_look, _hand_over(samples_box))
            late = _late_unlit_rows(result, first_look, masked_rows) if given.get("unlit", "auto") else None
            # (Not for frames whose sky is at or below zero, sky-subtracted or their bias over-subtracted:
            # their rows' scales mean nothing, and a refit on them put unlit rows 88 sigma off.)
            if late is not None and float(np.nanmedian(result.background[:, :, ::7][:, ~result._skip_rows])) > 0:
                # Unlit rows that a pedestal (a bias offset, scattered light)
                # kept above the first look's dark level were in the first
                # pass: weighted by their faint data and sitting at a narrow
                # band of effective pixels in each column, they made its
                # spline ring (line peaks every other half pixel, taken for
                # cosmic rays), and every choice read from it was wrong (knots
                # for undersampled lines: 0.05 -> 0.11 sigma RMS). Fit again
                # with them out from the start. (The first result goes first: its
                # arrays would add to the peak.)
                del result
                result = fit_bspline(first_look.with_dark(late), sky_samples(stack, warp_model, masked_rows))
            result.options["sky_warp"] = sky_warp
    except TooFewSamplesError as exc:
        n_sky = int(np.count_nonzero(~masked_rows))
        span = float(np.nanmax(emap) - np.nanmin(emap))
        usable = exc.n_usable
        if span > 2 * n_cols:
            raise ValueError(f"the warp model spreads the frame's {n_cols} columns over {span:.0f} effective pixels, "
                             f"leaving too few sky samples for each ({exc}): check the warp model") from None
        # (Each exposure is fit on its own: its usable samples against its sky pixels.)
        if usable < 0.5 * n_sky * n_cols:
            raise ValueError(f"only {usable} of an exposure's {n_sky * n_cols} sky pixels are finite, too few to "
                             f"measure the sky ({exc}): check the frames for NaN") from None
        if given_spacing is not None:
            raise ValueError(f"knot_spacing={given_spacing!r} asks for more sky-model coefficients than there are "
                             f"sky samples ({exc}): give a wider knot_spacing") from None
        raise ValueError(f"the mask {ranges.text} leaves {n_sky} sky row(s) of {n_rows}: too few to measure the "
                         f"sky ({exc}); mask fewer rows") from None
    result.warp_model = warp_model
    if blank_columns:
        result._amend_quality(lambda quality: dataclasses.replace(quality, blank_columns=tuple(blank_columns)))
    unit = getattr(images, "unit", None)
    if unit == "electron" and gain_source == "argument" and abs(gain - 1.0) > 1e-3:
        # The detector's gain typed where the frames are in electrons already (the page's Gain field):
        # the variance came out 0.63 of the truth under "ready" (trial J1).
        twice = (f"The frames are in electrons (their gain was applied when they were read), yet gain={gain:g} "
                 f"was given: the gain would count again, and the noise model's variance is {1 / gain:.2g} times "
                 "the data's. For frames in electrons the gain is 1: leave it blank (the frames' own) or give 1.")
        result._amend_quality(lambda quality: dataclasses.replace(
            quality, warnings=[twice, *quality.warnings], suspect=True))
    if noise_note:
        result._amend_quality(lambda quality: dataclasses.replace(
            quality, noise_source=f"{quality.noise_source} ({noise_note})"))
    applied = _header_gain_applied(images) if gain_source not in (None, "argument") else None
    if applied is not None:
        result._amend_quality(lambda quality: _gain_twice_hint(quality, *applied))
    result.unit = None if unit is None else str(unit)
    report = refinement if refinement is not None else warp_model._cache.get("sky_refinement_report")
    unchecked, columns = _unchecked_poor_warp(warp_model, report, method)
    if unchecked and (_misfit_at_features(result, masked_rows, columns) if columns is not None
                      else _sky_has_features(result, masked_rows)):
        # First: the likely cause of what the other checks see.
        result._amend_quality(lambda quality: dataclasses.replace(
            quality, warnings=[unchecked, *quality.warnings], suspect=True))
    elif warp_model.quality_warnings and any(_MISFIT_PHRASE in w for w in result.quality.warnings):
        # The sky lines checked the warp and could not mend it (their correction bends the lines by a
        # square of the row at most): the arc's own warning names the fix (S-shaped lines: line_order=3;
        # a trial's sky was 0.7-1.6 sigma off with hints of columns, a bias and fringes).
        why = (f"The sky misses the lines' shape, and the warp model says why: {warp_model.quality_warnings[0]} "
               "(warp_model.quality_warnings).")
        result._amend_quality(lambda quality: dataclasses.replace(
            quality, warnings=[why, *quality.warnings], suspect=True))
    if report is not None:
        def with_warp(quality, report=report):
            return dataclasses.replace(quality, warp_source=report.source, warp_shift=float(report.max_shift),
                                       warp_note=report.reason)

        result._amend_quality(with_warp)
    return result


def _sky_has_features(result, masked_rows, n_sigma=2.0):
    """Whether the sky has lines or dips (its model 2 pixel noise sigma from its running median, in a sky row;
    the model, fit to every sky row, hardly scatters): where it is a smooth continuum, the warp does not
    matter to it."""
    rows = np.flatnonzero(~masked_rows)
    if not rows.size:
        return False
    spectrum = np.asarray(result.background[0, rows[rows.size // 2]], dtype=float)
    spectrum = np.where(np.isfinite(spectrum), spectrum, np.nanmedian(spectrum))
    return bool(np.any(_features(spectrum, result.gain, result.read_noise, n_sigma)[0]))


def _features(model, gain, read_noise, n_sigma=2.0):
    """``(features, sigma)``: where the sky ``model`` (one row, or rows along the last axis) stands
    ``n_sigma`` pixel noise sigma from its running median over 61 columns (its lines or dips), and that
    sigma (inf where the variance is not positive)."""
    from scipy.ndimage import median_filter

    var = np.clip(model, 0, None) / gain + (read_noise / gain) ** 2
    sigma = np.sqrt(np.where(var > 0, var, np.inf))
    size = (1,) * (model.ndim - 1) + (61,)
    return np.abs(model - median_filter(model, size=size, mode="nearest")) > n_sigma * sigma, sigma


#: The sky's lines or dips in the columns a warp fit on the sky lines extrapolates to misfit when the
#: data's chi-square there exceeds this many times the chi-square of the continuum beside them.
FEATURE_MISFIT_LIMIT = 1.5


def _misfit_at_features(result, masked_rows, columns, n_rows=24):
    """Whether the sky misses its lines or dips in ``columns`` (bool per column): on up to ``n_rows`` sky rows
    of the first exposure, the data's mean chi-square (each pixel's capped at 25: a cosmic ray is not a
    misfit) on the pixels 2 noise sigma off the model's running median (its features), against that of the
    other pixels of those columns, above :data:`FEATURE_MISFIT_LIMIT`; False with fewer than 100 such
    pixels (:func:`_features`, as :func:`_sky_has_features` reads them)."""
    rows = np.flatnonzero(~np.asarray(masked_rows, bool))
    if not rows.size or not columns.any():
        return False
    rows = rows[np.unique(np.linspace(0, rows.size - 1, min(n_rows, rows.size)).astype(int))]
    model = np.asarray(result.background[0][rows][:, columns], dtype=float)
    data = np.asarray(result.data[0][rows][:, columns], dtype=float)
    feature, sigma = _features(model, result.gain, result.read_noise)
    chi2 = np.minimum(np.square((data - model) / sigma), 25.0)
    ok = np.isfinite(chi2)
    on, off = feature & ok, ~feature & ok
    if np.count_nonzero(on) < 100 or np.count_nonzero(off) < 100:
        return False
    return float(chi2[on].mean()) > FEATURE_MISFIT_LIMIT * float(chi2[off].mean())


def _unchecked_poor_warp(warp_model, report, method="bspline"):
    """``(warning, columns)``: the warning for a warp model that judges itself probably poor and that the
    science frame's sky lines did not check (not traced, or not tried), and the columns (bool, or None: all)
    where a sky with lines or dips would suffer from it; ``("", None)`` when there is none.

    ``generate_warp_model`` warns of it, but the sky fit said "ok": arc lines
    in half the frame left the other half's warp 2.1 px off, and a blue sky
    with no bright lines to correct it 9 sigma off there, blamed on columns.
    Where the sky lines were traced and a correction tested (used or not),
    they checked it.

    A warp fit on the science frame's own sky lines (no arc) is checked by
    them where they are (their scatter about it is the sky fit's own line
    misfit, which other checks read): what is left unchecked is where none
    was traced and the model is extrapolated. Every no-arc fit of the
    Goodman frames was suspect, "the sky lines did not check it (warp fit
    on 10 sky lines ...)", while within 0.06-0.08 sigma RMS of the arc's
    fit (trial M2): only sky lines or dips beyond the traced lines count.
    """
    none = "", None
    if not warp_model.quality_warnings or warp_model.traces is None:
        return none
    if warp_model._cache.get("warp_source") == "sky lines":
        return _unchecked_sky_line_warp(warp_model)
    if method != "median" and report is not None and (report.used or report.n_coefficients > 0):
        return none  # (the median of bins fits on the warp as given: a report is the B-spline's)
    if method == "median":
        why = " (the median of bins does not measure them; the default method does)"
    elif report is None:
        why = " (sky_warp=False)"
    else:
        why = f" ({report.reason})" if report.reason else ""
    return (f"The warp model is probably poor ({warp_model.quality_warnings[0]}) and the science frame's sky "
            f"lines did not check it{why}: the sky follows the lines' shape only as well as the warp does, so "
            "where the warp is off, so is the sky (warp_model.quality_warnings lists why)."), None


def _unchecked_sky_line_warp(warp_model):
    """:func:`_unchecked_poor_warp` for a warp fit on the sky lines: the columns beyond the traced lines,
    when the model says it is extrapolated there."""
    extrapolated = [w for w in warp_model.quality_warnings if "extrapolated" in w]
    t = warp_model.traces
    used = t.ref_positions[t.used]
    if not extrapolated or not np.isfinite(used).any():
        return "", None
    lo, hi = float(np.nanmin(used)), float(np.nanmax(used))
    cols = np.arange(warp_model.shape[1])
    return (f"The warp model, fit on the science frame's own sky lines (no arc), is extrapolated beyond them "
            f"({extrapolated[0]}), and the sky has lines or dips there: the sky follows their shape only as well "
            "as the extrapolated warp does. An arc frame measures the warp there (give one), or check the sky "
            f"outside columns {lo:.0f}-{hi:.0f}."), (cols < lo - 5) | (cols > hi + 5)


def _blank_constant_columns(stack, min_rows=8):
    """``(stack, ranges)``: the columns that hold one value in every row of an exposure set to NaN (in a
    copy; the stack itself when there are none), and their ``(start, stop)`` ranges.

    A mosaic's gap between CCDs filled with 0 (or a bias level) is no data,
    but passed for a dead column beside the sky: with the noise estimated,
    the zeros made the sky 20 sigma low. A column of noise never holds one
    value in every row; NaN is what the fit leaves out. An exposure that is
    one value throughout is left as it is (refused below as no sky).
    """
    n_exp, n_rows, n_cols = stack.shape
    if n_rows < min_rows:
        return stack, []
    first = stack[:, 0, :]
    # Three rows first: a handful of columns of noise pass them by chance.
    maybe = (first == stack[:, -1, :]) & (first == stack[:, n_rows // 2, :]) & np.isfinite(first)
    if not maybe.any():
        return stack, []
    constant = np.zeros((n_exp, n_cols), bool)
    for k, c in zip(*np.nonzero(maybe)):
        constant[k, c] = bool(np.all(stack[k, :, c] == first[k, c]))
    constant &= ~constant.all(axis=1, keepdims=True)
    if not constant.any():
        return stack, []
    out = np.array(stack, dtype=np.float64)
    out[np.broadcast_to(constant[:, None, :], out.shape)] = np.nan
    return out, _ranges(constant.any(axis=0))


def _hand_over(box):
    """The one object in ``box``, which no longer holds it.

    The fits replace their samples by smaller sets (rows dropped); with no
    reference left in the caller's frame the originals are freed then, not
    kept to the end of the fit (tens of MB on a full frame).
    """
    return box.pop()


#: An estimated read noise whose variance is under this fraction of the faintest tenth of the sky's
#: photon noise is said to be unmeasured (``noise_source``).
UNMEASURED_READ_NOISE = 0.05

#: An estimated gain whose inverse has a relative standard error above this (:func:`quality.gain_spread`)
#: is not measured: the sky's levels span too narrow a range to tell photon from read noise. Skies with
#: lines, or a continuum that changes along the dispersion, measure it to 0.7-2.6 % (the synthetic sets,
#: the Goodman frames); a faint sky with five faint lines gave 22 % and a gain of 0.49 for 1.
GAIN_SPREAD_LIMIT = 0.1


_GAIN_UNMEASURED = "The gain could not be measured from the sky"
_KEEP_FIRST = object()  # (see _final_noise)


def _given_gain_source(source):
    """Where a given gain came from, in a noise source that estimated only the read noise
    (``"gain: header GAIN; read noise: estimated ..."``); "" otherwise."""
    parts = [p.strip() for p in str(source).split(";")]
    gain = next((p[len("gain:"):].strip() for p in parts if p.startswith("gain:")), "")
    return "" if not gain or "estimated" in gain else gain


def _gain_unmeasured_warning(spread, bins, gain, read_noise):
    """The warning for a gain the sky's levels do not measure (``spread``: :func:`quality.gain_spread`
    of the noise ``bins``), or None when it is measured (or the gain was given)."""
    if spread is None and bins is not None and bins[0].size >= 4:
        spread = math.inf  # (no rise with level at all)
    if spread is None or not spread > GAIN_SPREAD_LIMIT:
        return None
    lo, hi = float(np.min(bins[0])), float(np.max(bins[0]))
    return (
        f"{_GAIN_UNMEASURED}: its levels span only {lo:.3g}-{hi:.3g} data units "
        f"(the inverse gain's standard error is {_percent(spread)}), too narrow a range to tell its photon "
        "noise from the read noise (a sky of one level: no lines, a flat continuum). The noise at the sky's "
        f"level is right, but the estimated gain ({gain:.3g}) and read noise ({read_noise:.3g} e-) are a guess, "
        "and so is the variance of every pixel brighter than the sky (the source: VAR, the extraction's "
        "errors), by up to a factor of two or more. Give gain= (and read_noise=) from the detector's header or "
        "manual."
    )


def _percent(x):
    return f"{100 * x:.0f} %" if math.isfinite(x) else "unbounded"


def _complete_noise(noise, level, residual, quantum=0.0):
    """Fill the unknown parts of the noise model from the residuals (of samples dithered by ``quantum``);
    returns (rn, gain, source, warnings)."""
    read_noise, gain, rn_source, gain_source = noise
    warnings = []
    if read_noise is None or gain is None:
        pick = _subsample(level.size)
        bins = noise_bins(level[pick], residual[pick], extra_variance=quantum**2 / 12.0)
        est = None if bins is None else _fit_noise_bins(*bins, fixed_gain=gain, fixed_read_noise=read_noise)
        estimated = "estimated from the sky residuals"
        if est is None:
            warnings.append(
                "The noise model could not be estimated from the sky (too few sky pixels): "
                "the fit used gain 1 and read noise 0; give gain= and read_noise=."
            )
            est = (1.0 if gain is None else gain, 0.0 if read_noise is None else read_noise)
            estimated = "default (estimate failed)"
        if gain is None:
            gain, gain_source = est[0], estimated
        if read_noise is None:
            read_noise, rn_source = est[1], estimated
            # A bright sky's photon noise hides a few electrons: the estimate (often 0, or any value up to
            # twice the truth: a trial's twilight frames gave 0-9.7 e- for 5) is not the detector's. Said
            # when the read noise's variance is under 5 % of the faintest sky's photon noise.
            faint = float(np.percentile(level[pick], 10)) if level.size else 0.0
            if estimated != "default (estimate failed)" and est[1] ** 2 < UNMEASURED_READ_NOISE * max(faint, 0.0) * est[0]:
                rn_source = f"{estimated}; read noise too small to measure against the sky's noise"
        if noise[1] is None and bins is not None:
            unmeasured = _gain_unmeasured_warning(gain_spread(*bins), bins, gain, read_noise)
            if unmeasured is not None:
                warnings.append(unmeasured)
    return float(read_noise), float(gain), _noise_source(rn_source, gain_source), warnings


def _fit_median(stack, warp_model, emap, samples, ranges, masked_rows, noise, progress, first_look=None):
    n_exp, n_rows, n_cols = stack.shape
    # Dead or hot columns out of the bins (a bin's median follows one that
    # fills a quarter of it): judged with the given noise, else a provisional one.
    provisional = None
    if noise[0] is not None and noise[1] is not None:
        col_gain, col_rn = noise[1], noise[0]
    else:
        # (The faint pixels' levels as the frames' noise check measured them, when it did.)
        provisional = provisional_noise(stack, masked_rows, noise[1],
                                        levels=None if first_look is None else first_look.levels)
        col_gain, col_rn = provisional[0], provisional[1]
    bad_columns, bad_samples = _bad_columns(stack, masked_rows, samples, col_gain, col_rn, emap)
    if bad_samples is not None:
        samples.flux[bad_samples] = np.nan
    background, counts = median_of_bins(samples.effpix, samples.flux, warp_model.edge_map())
    if noise[0] is None or noise[1] is None:
        # The median of bins misses the line peaks by more than the noise, so
        # the noise is measured about a quick spline fit instead (one pass,
        # cosmic rays down-weighted by the data's own weights).
        from .bspline import fit_bspline_sky

        prov_gain, prov_rn, _ = provisional
        extent = (float(emap.min()), float(emap.max()))
        # ``_complete_noise`` looks at a regular subsample of the flattened
        # (exposure, sample) values only: the model is evaluated there alone
        # (the same values, without two sample-sized arrays per exposure).
        n_s = samples.effpix.size
        pick = np.arange(n_exp * n_s)[_subsample(n_exp * n_s)]
        pick_k, pick_s = np.divmod(pick, n_s)
        level = np.empty(pick.size)
        rows = samples.rows
        for k in range(n_exp):
            model = fit_bspline_sky(samples.effpix, samples.flux[k], None, read_noise=prov_rn, gain=prov_gain,
                                    extent=extent, reject_sigma=None, max_iterations=0)
            these = pick_k == k
            level[these] = model(samples.effpix[pick_s[these]])
            # The sky as lit row by row (as the B-spline's noise estimate
            # does): an illumination gradient or unlit rows must not pass for
            # noise that grows with the level, i.e. a wrong gain.
            at = pick_s[these]
            var = np.clip(level[these], 0, None) / prov_gain + (prov_rn / prov_gain) ** 2
            ratio, _ = row_profile(rows[at], samples.flux[k][at], level[these], var, n_rows)
            level[these] *= np.nan_to_num(ratio, nan=0.0)[rows[at]]
        read_noise, gain, source, warnings = _complete_noise(
            noise, level, samples.flux[pick_k, pick_s] - level, samples.quantum
        )
        del level, pick, pick_k, pick_s
    else:
        # Nothing to estimate: no sample-sized level or residual arrays.
        read_noise, gain, source, warnings = _complete_noise(noise, None, None)
    if progress:
        print(f"median of bins: {n_exp} exposure(s), {samples.effpix.size} sky samples each")
    mask = np.broadcast_to(masked_rows[:, None], (n_rows, n_cols)).copy()
    result = SkyResult(
        data=stack,
        background=background,
        mask=mask,
        rejected=np.zeros(stack.shape, bool),
        effpix_map=emap,
        samples=samples,
        method="median",
        ref_row=warp_model.ref_row,
        read_noise=read_noise,
        gain=gain,
        mask_region=ranges,
        models=[],
        options={},
        _bin_counts=counts,  # the variance is computed from them on first use
    )
    # (Dead or hot columns: left out and marked, quality.bad_columns; not a warning, see _fit_bspline.)
    # A source's wings in the sky rows, as the B-spline judges them on its first pass: here the sky
    # is a function of the effective pixel alone already.
    pick, _ = _scattered_subsample(samples.index.size, 400_000)
    index_p = samples.index[pick]
    wings = _wings_check(index_p // n_cols, samples.effpix[pick], samples.flux[:, pick],
                         background.reshape(n_exp, -1)[:, index_p], gain, read_noise, masked_rows,
                         np.zeros(n_rows, bool))
    if wings:
        warnings = list(warnings) + [wings]
    _set_assessment(result, lambda: _assess(result, samples, [None] * n_exp, source, warnings, [], 0,
                                            (0.0,) * n_exp, False, method="median", bad_columns=bad_columns))
    return result


def _fit_bspline(stack, warp_model, emap, samples, ranges, masked_rows, noise, progress, options, first_look,
                 tilt_hint=(), finest=False):
    """The B-spline sky of :func:`fit_sky` (``finest``: the adaptive knots as fine as the plain fit's, whatever
    the spatial order; see :func:`_lines_changing_along_the_slit`)."""
    from .bspline import default_knot_spacing, fit_bspline_sky

    n_exp, n_rows, n_cols = stack.shape
    given = dict(options)
    options = dict(options)

    def each_exposure(fn):
        """``[fn(k) for k in range(n_exp)]``; the exposures of a short slit side by side on the cores.

        A long slit's passes are split between the cores inside each fit
        (``_PARALLEL_MIN_SAMPLES``); a short one's are too small to split,
        and one at a time its exposures would leave the other cores idle.
        """
        if n_exp > 1 and samples.index.size < _PARALLEL_MIN_SAMPLES:
            return map_in_threads(fn, range(n_exp))
        return [fn(k) for k in range(n_exp)]

    spatial_order = check_spatial_order(options.pop("spatial_order", "auto"))
    unlit_mode = _check_choice(options.pop("unlit", "auto"), "unlit", ("auto", False))
    flexure_mode = _check_choice(options.pop("flexure", "auto"), "flexure", ("auto", False))
    slit_mode = _check_choice(options.pop("slit_correction", "auto"), "slit_correction",
                              ("auto", "illumination", False))
    knot_spacing = options.pop("knot_spacing", None)
    knots = _check_choice(options.pop("knots", "adaptive" if knot_spacing is None else "uniform"),
                          "knots", ("adaptive", "uniform"))
    coarse = options.pop("coarse_spacing", COARSE_SPACING)
    knot_threshold = options.pop("knot_threshold", None)
    if knot_threshold is not None:
        if isinstance(knot_threshold, bool) or not isinstance(knot_threshold, numbers.Real):
            raise TypeError(f"knot_threshold must be a number or None (chosen on held-out rows), "
                            f"got {type(knot_threshold).__name__}")
        if not (math.isfinite(knot_threshold) and knot_threshold > 0):
            raise ValueError(f"knot_threshold must be a finite number > 0, or None (chosen on held-out rows); "
                             f"got {knot_threshold!r}")
        knot_threshold = float(knot_threshold)
    unknown = sorted(set(options) - _PASSED_TO_BSPLINE)
    if unknown:
        raise TypeError(
            f"fit_sky got unknown option(s) {', '.join(map(repr, unknown))}; the B-spline's options are "
            f"{', '.join(_FIT_SKY_BSPLINE_OPTIONS + tuple(sorted(_PASSED_TO_BSPLINE)))} (the effective-pixel "
            "extent, rows and row range come from the frames and the mask)"
        )
    read_noise, gain = noise[0], noise[1]
    extent = (float(emap.min()), float(emap.max()))

    # Lines that move less than a pixel over the sky rows leave each column's
    # samples on a sliver of the effective pixels (see _knot_floors).
    span, gap = _span_and_gap(emap, masked_rows)
    floor, first_floor = _knot_floors(span)
    # A mask over the middle of a short slit: the sky rows' slivers leave a hole (see _hole_in_pixels).
    hole = knots == "adaptive" and knot_spacing is None and _hole_in_pixels(span, gap)
    if span < STRAIGHT_SPAN and knots == "adaptive" and "knots" not in given and knot_threshold is None:
        # Lines straight over the sky rows: each column's samples sit at one
        # effective pixel, and the sky is one value per column, which knots a
        # pixel apart give. The adaptive knots, placed by a first-pass sky that
        # nothing constrains between the columns, missed lines barely wider
        # than a pixel (FWHM 1.2-1.6 px, straight: 0.5-4 sigma RMS, where
        # these give 0.12).
        knots = "uniform"

    def spacing(order):
        return max(default_knot_spacing(order), floor) if knot_spacing is None else knot_spacing

    # The adaptive knots' finest spacing, when chosen (see below).
    fine_spacing = spacing(0) if finest and knots == "adaptive" and knot_spacing is None else None
    width_hint = None  # the spatial order a width curving along the slit asks for (see _line_shape)
    lines_order = 0  # the spatial order the sky lines' brightness alone asked for (see _held_out_lines_order)
    # The first pass's knots: what the defaults are chosen on.
    first_spacing = max(spacing(0), first_floor) if knot_spacing is None else knot_spacing

    need_first = (
        read_noise is None or gain is None or spatial_order == "auto" or unlit_mode or flexure_mode
        or knots == "adaptive"
    )
    warnings = []
    unlit = np.zeros(n_rows, bool)
    illum = None
    order = 0 if spatial_order == "auto" else spatial_order
    shifts = np.zeros(n_exp)
    flexure_applied = False
    first = [None] * n_exp
    ratios = np.full((n_exp, n_rows), np.nan)
    rows = None  # each sample's row, once computed
    bad_columns = []
    if need_first:
        # First pass: the plain sky S(e), light rejection, provisional noise.
        # It measures what the defaults need: the noise model, how the sky's
        # brightness changes along the slit, and the sky lines' shift.
        prov_gain, prov_rn, _ = provisional_noise(stack, masked_rows, gain, levels=first_look.levels)
        if read_noise is not None:
            prov_rn = read_noise
        if unlit_mode:
            # Dark rows out before the first pass: their zero sky would drag
            # the sky spectrum's shape towards zero (they weigh the most).
            dark = first_look.dark  # (as the refinement saw them)
            if dark.any():
                samples, rows = _drop_rows(samples, dark)
        level = np.empty(samples.flux.shape)
        if rows is None:
            rows = samples.rows
        # The rows' brightness relative to the first pass (``ratios[k]``),
        # exposure by exposure, on a scattered subsample (each row keeps
        # hundreds of samples: plenty for one number per row). Each
        # exposure's is made in the thread that just fit it, and redone only
        # when its level changes.
        psub, psub_step = _scattered_subsample(rows.size, 400_000)
        rows_psub = rows[psub]
        # The profiles read the data as they came, cosmic rays included (a
        # copy of these few is made before the rays are blanked below).
        flux_psub = samples.flux[:, psub]

        def profile_of(k, var_gain, var_rn):
            """``ratios[k]``; the variance is the noise model ``(var_gain, var_rn)`` at the first-pass level."""
            level_sub = level[k][psub]
            var_sub = np.clip(level_sub, 0, None) / var_gain + (var_rn / var_gain) ** 2
            ratios[k] = row_profile(rows_psub, flux_psub[k], level_sub, var_sub, n_rows)[0]

        def first_pass(k):
            first[k] = fit_bspline_sky(
                samples.effpix, samples.flux[k], None, read_noise=prov_rn, gain=prov_gain,
                extent=extent, knot_spacing=first_spacing, reject_sigma=None, max_iterations=0,
            )
            first[k](samples.effpix, out=level[k])
            # The rows' brightness first (with the provisional noise): the
            # sky as lit row by row is what the shift is measured against and
            # what the noise is the scatter about, so that neither a slit
            # illumination gradient nor unlit rows pass for flexure or noise.
            profile_of(k, prov_gain, prov_rn)

        each_exposure(first_pass)
        used = np.isfinite(samples.flux) & ~np.stack([m.rejected for m in first])
        # Cosmic rays out (far above the sky as lit row by row), and the
        # first pass again without them: they must not pass for structure
        # (adaptive knots), shift or noise.
        hits = _far_above(samples.flux, level, ratios, rows, prov_gain, prov_rn, 8.0)
        # Dead or hot detector columns: out of the refit and of the final fit
        # (which would judge a whole column against a model it pulled).
        bad_columns, bad_samples = _bad_columns(stack, masked_rows, samples, prov_gain, prov_rn, emap)
        # The rays are blanked in the samples themselves and their values
        # put back before the final fit, which judges them anew: a copy of
        # the samples would be the first stage's largest array (127 MB on a
        # 4096 x 4096 frame). Until then the samples are read without them,
        # except by the profiles (``flux_psub``); the noise estimate below
        # reads only samples of ``used``, where nothing was blanked.
        clean = samples.flux
        ray_values = None
        if hits.any() or bad_samples is not None:
            if np.may_share_memory(flux_psub, clean):  # (all samples: a view of them)
                flux_psub = flux_psub.copy()
        if hits.any():
            ray_values = clean[hits]
            clean[hits] = np.nan
        if bad_samples is not None:
            clean[bad_samples] = np.nan
        blanked = hits if bad_samples is None else hits | bad_samples

        def refit_and_shift(k):
            """Exposure ``k`` refit without its cosmic rays, then its sky lines' shift (if asked)."""
            if blanked[k].any():
                # Started from the first pass (the same knots): one pass
                # weighted by that model, not a data-weighted pass over every
                # sample and then that one (a few cosmic rays cost a whole
                # pass otherwise: ~0.1 s on a 4096 x 4096 frame).
                first[k] = fit_bspline_sky(
                    samples.effpix, clean[k], None, read_noise=prov_rn, gain=prov_gain,
                    extent=extent, knot_spacing=first_spacing, reject_sigma=None, max_iterations=1,
                    initial=first[k],
                )
                first[k](samples.effpix, out=level[k])
                profile_of(k, prov_gain, prov_rn)
            if not flexure_mode:
                return 0.0
            shift = _measure_shift(first, k, samples.effpix, clean[k], rows, n_rows, level, ratios[k], prov_gain,
                                   prov_rn, extent, first_spacing,
                                   start=tilt_hint[k] if k < len(tilt_hint) else 0.0)
            if shift:
                profile_of(k, prov_gain, prov_rn)  # its level moved with the shift
            return shift

        if blanked.any() or flexure_mode:
            shifts[:] = each_exposure(refit_and_shift)
        flexure_applied = bool(np.any(shifts != 0))
        if blanked.any():
            used = np.isfinite(clean)
        if flexure_applied:
            used = np.isfinite(clean) & ~np.stack([m.rejected for m in first])
        # The lines' width along the slit (the camera's focus): a broader
        # line holds the same light, so the brightness profile cannot see
        # it, and a fit without spatial terms would leave it in every line's
        # residual (and in the noise estimate, as a wrong gain).
        width_drop, width_coef = np.zeros(3), [np.zeros(0)] * n_exp
        if spatial_order == "auto" or noise[0] is None or noise[1] is None:
            width_drop, width_coef = _line_shape(first, samples.effpix, clean, rows, n_rows, level, ratios, shifts,
                                                 prov_gain, prov_rn, used)
        # The noise estimate needs only a regular subsample of the used
        # samples (``_complete_noise`` takes every ``_subsample``-th): the
        # lit level is computed there only (the same values).
        if noise[0] is None or noise[1] is None:
            pick = _every_nth_true(used.ravel(), _subsample(int(np.count_nonzero(used))).step)
            pick_k, pick_s = np.divmod(pick, rows.size)
            lit_level = level[pick_k, pick_s] * np.nan_to_num(ratios, nan=0.0)[pick_k, rows[pick_s]]
            resid = samples.flux[pick_k, pick_s] - lit_level
            for k in range(n_exp):
                these = np.flatnonzero(pick_k == k)
                resid[these] -= _line_shape_at(first[k], samples.effpix[pick_s[these]], rows[pick_s[these]],
                                               n_rows, level[k][pick_s[these]], ratios[k], shifts[k], width_coef[k])
            read_noise, gain, source, warnings = _complete_noise(noise, lit_level, resid, samples.quantum)
            del lit_level, pick, pick_k, pick_s, resid
        else:
            read_noise, gain, source, warnings = _complete_noise(noise, None, None)
        # The slit's illumination and its unlit rows are read from the rows'
        # brightness relative to a sky that cannot follow the rows' light.
        # (A copy: the rays are put back into ``clean`` before the fine curve is fit to these.)
        effpix_psub, clean_psub = samples.effpix[psub], np.array(clean[:, psub])
        ratio, info_sum, line_ratio, line_info = _lit_profile(
            effpix_psub, clean_psub, flux_psub, rows_psub, n_rows, psub_step, shifts, gain, read_noise, extent,
            max(PROFILE_KNOT_SPACING, first_spacing), each_exposure, lines=bool(slit_mode and spatial_order == "auto"))

        def n_coef(p):
            return n_exp * (int(np.ceil((extent[1] - extent[0]) / spacing(p))) + 3) * (p + 1)

        unlit, order = analyse_rows(ratio, info_sum, n_coef, detect_unlit=bool(unlit_mode),
                                    choose_order=spatial_order == "auto", order=order,
                                    dark=dark if unlit_mode else None)
        # Light without the sky's lines that brightens the sky rows towards a mask from both sides:
        # a source's wings in the sky rows (judged on the first pass, before spatial terms take them).
        # (The exposures' sums: one fit, the same rows.)
        wings = _wings_check(rows_psub, effpix_psub, clean_psub, level[:, psub], gain, read_noise, masked_rows,
                             unlit | dark if unlit_mode else unlit)
        if wings:
            warnings = [*warnings, wings]

        # The spatial order the lines' width asks for, and whether more than the rows' brightness does.
        width_order, width_alone = 0, False
        if spatial_order == "auto":
            # Spatial terms for the lines' width where they pay for their
            # coefficients (as ``analyse_rows`` asks of the brightness).
            costs = [-width_drop[p] + 2.0 * (n_coef(p) - n_coef(0)) for p in range(width_drop.size)]
            width_order = int(np.argmin(costs[:-1]))
            # (The second degree's: a hint, tried after the fit, see _lines_changing_along_the_slit.)
            width_hint = width_drop.size - 1 if np.argmin(costs) == width_drop.size - 1 else None
            width_alone = width_order > order
            order = max(order, width_order)
        if slit_mode and spatial_order == "auto" and not width_order:
            # The slit's illumination as a profile along the rows (a few
            # coefficients), divided out before the fit; the spatial order
            # (a whole spectrum per term) is then chosen on what is left.
            illum = illumination_profile(ratio, info_sum, unlit)
            lit_idx = np.flatnonzero(~unlit)
            # Only where it explains the rows' brightness (no spatial term
            # needed after it), and within a factor 1.5: the fit's weights
            # assume the noise of an evenly lit slit, which a steeper
            # profile would make wrong; the spatial terms weigh exactly.
            # And only where the sky lines follow it too (see _lines_disagree).
            if illum is not None and (illum[lit_idx].max() > SLIT_PROFILE_RANGE * illum[lit_idx].min()
                                      or analyse_rows(ratio / illum, info_sum * illum**2, n_coef,
                                                      detect_unlit=False)[1] > 0
                                      or _lines_disagree(illum, line_ratio, line_info, ~unlit)):
                illum = None
            if illum is not None:
                order = 0
        if spatial_order == "auto" and illum is None and line_ratio is not None and not order:
            # The sky lines' own brightness along the slit, where it changes
            # unlike the continuum (vignetting that depends on wavelength):
            # a spectrum scaled cannot follow it, spatial terms can (+-10 %
            # at one end, reversed at the other: 0.37 sigma RMS, 5.9 sigma).
            # (Only where the rows' light asks for no order: where it does,
            # or the lines' width does, that order is chosen already, and
            # the lines' brightness, measured on their bright samples,
            # changes with their width and with any misfit: a gradient
            # along the slit then took order 2 for 1, 0.076 -> 0.109 sigma.)
            lit_info = np.where(unlit | dark, 0.0, line_info) if unlit_mode else np.where(unlit, 0.0, line_info)
            order = lines_order = max(order, analyse_rows(line_ratio, lit_info, n_coef, detect_unlit=False)[1])
        if unlit_mode:
            unlit |= dark
        del level
        if knots == "adaptive" and knot_threshold is None:
            # The finest knots too, unless the spatial terms are for the
            # lines' width alone: the order's own, or the plain fit's. The
            # order's wider knots missed lines of 0.8 px sigma (order 2: 0.40
            # sigma RMS, 5 sigma), while the plain fit's lost 0.236 -> 0.286
            # sigma on broader lines. Terms for the lines' width keep the
            # order's knots, on which their order was chosen (finer ones
            # hid a 40 % width change that order 1 misses from the line
            # misfit check: 0.30 sigma RMS, 7.7 sigma, "ok").
            fines = ((spacing(order),) if spacing(order) == spacing(0) or width_alone
                     else (spacing(order), spacing(0)))
            if fine_spacing is not None:
                fines = (fine_spacing,)
            # (Choosing the finest knots needs a first pass that shows the
            # lines' shape: the plain fit's spacing, as for the final knots'
            # curve; the threshold alone is chosen on the first pass's.)
            fine_spacing, knot_threshold = _cv_knot_threshold(samples.effpix, clean, rows, unlit, order, shifts,
                                                              n_rows, gain, read_noise, extent, fines,
                                                              spacing(0) if len(fines) > 1 else first_spacing,
                                                              max(coarse, spacing(order)))
        if ray_values is not None:
            clean[hits] = ray_values
        if bad_samples is not None:
            # The final fit would judge a whole column against a model the column pulled.
            clean[bad_samples] = np.nan
        # Only the samples and the first-pass models go on to the final fit.
        del clean, used, hits, blanked, ray_values, flux_psub
    else:
        source = _noise_source(noise[2], noise[3])
        # (The noise is given when no first pass runs.)
        bad_columns, bad_samples = _bad_columns(stack, masked_rows, samples, gain, read_noise, emap)
        if bad_samples is not None:
            samples.flux[bad_samples] = np.nan
    fit_rows = masked_rows | unlit
    final_rows = None
    if unlit.any() and samples.index.size != int(np.count_nonzero(~fit_rows)) * n_cols:
        # The samples so far left out a subset of these rows (the mask and
        # the dark rows): the rest is dropped from them.
        samples, final_rows = _drop_rows(samples, fit_rows, rows)
    lit_rows = np.flatnonzero(~unlit)
    row_range = (0, n_rows) if not unlit.any() else (int(lit_rows[0]), int(lit_rows[-1]) + 1)
    if (order or flexure_applied or illum is not None) and final_rows is None:
        final_rows = samples.rows if rows is None else rows
    # (The first stage's rows go, unless they are ``final_rows``: 64 MB on a 4096 x 4096 frame.)
    rows = None
    sample_rows = final_rows.astype(float) if order else None
    t_samples = _row_coordinate(final_rows, n_rows) if flexure_applied else None
    # The fit sees the sky as if the slit were evenly lit.
    fit_flux = samples.flux if illum is None else samples.flux / illum[final_rows]

    table = None
    if knots == "adaptive":
        # One stretched coordinate for all exposures, from their mean first-pass sky.
        grid_e = np.linspace(extent[0], extent[1], max(2, int(np.ceil((extent[1] - extent[0]) / 0.25)) + 1))
        if first_spacing != spacing(0):
            # The first pass's knots were too coarse to show the lines'
            # shape: the knots follow a finer sky, fit to the profiles' subsample.
            curves = np.array([_plain_sky(effpix_psub, clean_psub[k], rows_psub, n_rows, shifts[k], gain, read_noise,
                                          extent, spacing(0))[0](grid_e) for k in range(n_exp)])
        else:
            curves = np.array([first[k](grid_e) for k in range(n_exp)])
        curve = np.mean(curves, axis=0)
        curve_spacing = spacing(0)
        fine = fine_spacing or spacing(order)
        if (knot_spacing is None and not floor and fine == spacing(0) and NARROW_SPACING < fine
                and not flexure_applied):
            # Lines hardly wider than a pixel (undersampled): knots every
            # 0.5 px cannot follow them (trial L1: FWHM 1.2 px, 0.46 sigma
            # RMS on the lines and an extraction's sky off by 6.9 sigma of its
            # noise, "ok"; 1.0 px, 1.05 sigma, suspect). Their knots, and the
            # sky they are placed by, go to 0.35 px. Not when a flexure
            # correction moved the lines: a trial frame whose lines turned 3 px
            # over the slit from the arc's (FWHM 3 px) measured 1.6 in the
            # first pass, and finer knots lost 0.149 -> 0.226 sigma on its lines.
            if _line_fwhm(grid_e, curve, gain, read_noise) < NARROW_FWHM:
                fine = curve_spacing = NARROW_SPACING
                curves = np.array([_plain_sky(effpix_psub, clean_psub[k], rows_psub, n_rows, shifts[k], gain,
                                              read_noise, extent, fine)[0](grid_e) for k in range(n_exp)])
                curve = np.mean(curves, axis=0)
        # Knots a pixel apart across a hole only for lines they follow (see _hole_in_pixels).
        hole = (hole and curve_spacing == spacing(0) and _line_fwhm(grid_e, curve, gain, read_noise) >= HOLE_FWHM
                and _hole_knots_follow(effpix_psub, clean_psub[0], rows_psub, n_rows, shifts[0], gain, read_noise,
                                       extent, spacing(0)))
        if n_exp > 1 and _lines_apart(grid_e, curves):
            # Exposures whose lines sit at other effective pixels (a stack
            # shifted along the dispersion): their mean smears each line
            # over the others' places, and knots placed by it were too
            # coarse for every exposure (trial K2: 0 / 1.5 / 3 px, bright
            # lines 0.35 sigma RMS off, 0.13-0.16 each alone).
            curve = curves
        del effpix_psub, clean_psub, rows_psub
        n_sky_rows = samples.index.size / n_cols
        stretched = adaptive_coordinate(grid_e, curve, gain, read_noise, n_sky_rows, fine, max(coarse, spacing(order)),
                                        knot_threshold, first_spacing=curve_spacing, n_curves=n_exp,
                                        spatial_order=order)
        if not floor:
            # (A frame whose lines move a pixel or more over the sky rows, as a rule: its parts
            # where they do not get the floors too.)
            stretched = _floored_coordinate(grid_e, stretched, *_local_floors(emap, fit_rows, grid_e))
        if hole:
            stretched = _floored_coordinate(grid_e, stretched, np.full(grid_e.size, HOLE_SPACING),
                                            np.zeros(grid_e.size, bool))
        table = (grid_e, stretched)
    background = np.empty(stack.shape)
    rejected = np.zeros(stack.shape, bool)
    rows_f = np.arange(n_rows, dtype=float)[:, None]
    t_grid = _row_coordinate(np.arange(n_rows), n_rows)[:, None]
    # The background is evaluated a block of rows at a time: the shifted and
    # stretched coordinates and the row of every pixel would otherwise be
    # frame-sized float64 temporaries (134 MB each on a 4096 x 4096 frame).
    block = max(1, _EVAL_BLOCK_PIXELS // n_cols)

    def emap_rows(k, rows):
        """The effective pixel of exposure ``k`` (its flexure shift applied) on ``rows``."""
        return emap[rows] if not shifts[k] else emap[rows] - shifts[k] * t_grid[rows]

    def final_fit(k):
        """Exposure ``k``'s final fit, its background (in ``background[k]``) and rejected samples."""
        e_k = samples.effpix if not shifts[k] else samples.effpix - shifts[k] * t_samples
        # The first pass starts the final fit only when it fit the same sky:
        # after unlit rows are dropped or a shift corrected, its lines would
        # be too faint or too broad, and the rejection, judged against it,
        # could throw away the line peaks for good.
        start = first[k] if not (unlit.any() or shifts[k] or illum is not None) else None
        if table is None:
            model = fit_bspline_sky(
                e_k, fit_flux[k], sample_rows, spatial_order=order, row_range=row_range,
                read_noise=read_noise, gain=gain, extent=extent, knot_spacing=spacing(order),
                initial=start, **options,
            )
        else:
            start = None
            # The samples' stretched coordinate: ``e_k`` is the (shifted) map
            # at ``samples.index`` and np.interp works point by point, so these
            # are the map's values there; in ``e_k``'s sorted order, not
            # gathered from a frame-sized map.
            inner = fit_bspline_sky(
                interp_in_threads(e_k, *table), fit_flux[k], sample_rows, spatial_order=order,
                row_range=row_range, read_noise=read_noise, gain=gain,
                extent=(0.0, float(table[1][-1])), knot_spacing=1.0, initial=start, **options,
            )
            model = StretchedBSplineSky(inner, *table)
        # Pixels whose effective pixel lies beyond every sky sample's (the
        # far corners of masked rows, where the lines' tilt carries them past
        # the sampled range) get the sky at the nearest sampled position: the
        # spline has no data there, and continued it reached 12000 counts
        # on a sky of 100 (a trace masked up to the slit's end).
        # (The samples are sorted by effective pixel: without a shift their
        # range is their ends.) Only samples with a value count: columns of
        # NaN at the frame's edges (a trimmed or vignetted area) left the
        # spline free over them, -1.7e5 to 1.4e5 on a sky of 100-3000, and
        # its variance there made a good fit "poorly determined" (trial F1).
        valued = np.isfinite(fit_flux[k])
        if valued.all():
            e_lo, e_hi = ((float(e_k[0]), float(e_k[-1])) if not shifts[k]
                          else (float(e_k.min()), float(e_k.max())))
        elif not shifts[k]:
            e_lo, e_hi = float(e_k[int(np.argmax(valued))]), float(e_k[e_k.size - 1 - int(np.argmax(valued[::-1]))])
        else:
            e_lo, e_hi = float(np.min(e_k, where=valued, initial=np.inf)), float(np.max(e_k, where=valued, initial=-np.inf))
        sampled[k] = (e_lo, e_hi)

        def sky_on(rows, model_rows):
            """The fit's sky on ``rows`` (its spatial terms read at ``model_rows``), the slit's profile not applied."""
            e_rows = emap_rows(k, rows)
            if e_rows.min() < e_lo or e_rows.max() > e_hi:  # most blocks: no copy
                e_rows = np.clip(e_rows, e_lo, e_hi)
            rows_grid = np.broadcast_to(model_rows, e_rows.shape)
            if table is None:
                return model(e_rows, rows_grid)
            return inner(interp_in_threads(e_rows, *table), rows_grid)

        for r0 in range(0, n_rows, block):
            row_block = slice(r0, min(n_rows, r0 + block))
            background[k, row_block] = sky_on(row_block, rows_f[row_block])
            if illum is not None:
                background[k, row_block] *= illum[row_block, None]
        if unlit.any():
            # Unlit rows are outside the fit: there the fit's sky, its
            # spatial terms read at the nearest lit row, scaled to each row's
            # own level, is the best guess of what little sky there is (zero
            # where the row has no sky at all). The first pass's sky was
            # worse: on lines that hardly tilt its knots are too coarse for
            # the lines, which left 14 sigma on the half-lit rows of a slit's
            # soft edge.
            unlit_idx = np.flatnonzero(unlit)
            guess = sky_on(unlit_idx, np.clip(unlit_idx, row_range[0], row_range[1] - 1).astype(float)[:, None])
            obs = stack[k, unlit_idx]
            ok = use = np.isfinite(obs)
            # And the light that is not the sky's spectrum (scattered light,
            # a lamp's glow): smooth, so the median of what is left in blocks
            # of columns, averaged over nearby rows, fit in turn with the sky's
            # scale (the light would pass for sky otherwise). Without it, 30 e-
            # of scattered light in unlit rows got a sky of 0.7 e- (6-7 sigma).
            # Not on masked rows: a target there would be taken for that light.
            free = ~masked_rows[unlit_idx]
            some_free = bool(free.any())
            light = np.zeros(obs.shape)
            # A row the slit's lit edge crosses (slanted) is lit in some
            # columns only: its scale along them, where that fits better.
            # (Those rows alone: elsewhere a scale per block would take
            # smooth light, which has no lines, for sky, which has.)
            crossed = first_look.edge[unlit_idx] if unlit_mode else None
            for step in range(4 if some_free else 3):
                num = np.sum(np.where(use, (obs - light) * guess, 0.0), axis=1)
                den = np.sum(np.where(use, guess * guess, 0.0), axis=1)
                scale = np.clip(np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0), 0, None)[:, None]
                if crossed is not None and crossed.any():
                    scale = np.broadcast_to(scale, obs.shape).copy()
                    scale[crossed] = _scale_along_columns((obs - light)[crossed], guess[crossed], use[crossed],
                                                          scale[crossed][:, :1], gain, read_noise)
                if some_free:
                    light[free] = _smooth_light(obs[free] - scale[free] * guess[free], unlit_idx[free])
                if step < 2:
                    # Cosmic rays and hot pixels out of the next scale: the plain
                    # sum took a cosmic ray on a line for sky (a lit row beside a
                    # slit bar, 1.33x the true sky, 12.5 sigma, "ok": trial K1).
                    scaled = scale * guess + light
                    spread = np.sqrt(np.clip(scaled, 0, None) / gain + (read_noise / gain) ** 2)
                    with np.errstate(invalid="ignore"):
                        use = ok & (np.abs(obs - scaled) <= UNLIT_CLIP * spread)
            background[k, unlit_idx] = scale * guess + light
        rejected[k].ravel()[samples.index[model.outliers]] = True
        corr = None
        if slit_mode:
            # A regular subsample (``fit_slit_correction`` would take one
            # anyway), gathered once.
            step = -(-samples.index.size // SLIT_SAMPLES)
            idx = samples.index[::step]
            flux_s = samples.flux[k][::step]
            bg_s = background[k].ravel()[idx]
            keep = ~(model.outliers | model.excluded)[::step]
            corr = fit_slit_correction(idx, flux_s, bg_s, n_rows, n_cols, gain, read_noise, use=keep,
                                       skip_rows=unlit, light=slit_mode == "auto")
            if corr.active:
                for r0 in range(0, n_rows, block):
                    row_block = slice(r0, min(n_rows, r0 + block))
                    corr.apply(background[k, row_block], row_block)
            # Narrow dips in the slit's light (dust on the slit, no flat field):
            # sky rows clearly dimmer than the smooth model get their own scale.
            dips[k], near_dims[k] = _row_dips(background[k], flux_s, np.ascontiguousarray(idx), n_cols, gain,
                                              read_noise, masked_rows, masked_rows | unlit)
            for row in np.flatnonzero(dips[k] != 1.0):
                background[k, row] *= dips[k][row]
        return model, corr

    dips, near_dims = [None] * n_exp, [None] * n_exp
    sampled = [None] * n_exp  # each exposure's range of sampled effective pixels (the sky is held beyond)
    fitted = each_exposure(final_fit)
    # A defect the fit took for sky (two hot columns side by side under a sky
    # line pass for the line in each row of the dip/spike test): out, and the
    # fit again, kept if it mends the columns beside it. Left in, two hot
    # columns put their neighbours' sky 4-28 sigma off, some fits "ok".
    sky_rows = np.flatnonzero(~(masked_rows | unlit))
    means, z, off = _column_misfit(stack, background, sky_rows, gain, read_noise, bad_columns)
    defects = _defect_columns(means, z, off, emap, sky_rows) if off.any() else []
    if defects:
        # (Judged on the columns the lines carry the defect's effective pixels to.)
        near = _around(defects, int(np.ceil(_line_span(emap, masked_rows | unlit))) + 2, n_cols)
        out = np.isin(samples.index % n_cols, defects)
        first_fit = (fitted, background.copy(), rejected.copy(), list(dips), list(near_dims))
        first_check = (means, z, off)
        own_flux = [samples.flux[:, out].copy()] + ([fit_flux[:, out].copy()] if fit_flux is not samples.flux else [])
        for flux in {id(a): a for a in (samples.flux, fit_flux)}.values():
            flux[:, out] = np.nan
        rejected[:] = False
        fitted = each_exposure(final_fit)
        means, z, off = _column_misfit(stack, background, sky_rows, gain, read_noise, defects + list(bad_columns))
        if (np.sum(z[:, near] ** 2) < 0.5 * np.sum(first_check[1][:, near] ** 2)
                and _one_sided(stack, background, sky_rows, defects, np.sign(first_check[0][0, defects]))):
            bad_columns = sorted(set(bad_columns) | set(defects))
        else:  # (it did not mend them: the first fit stands)
            fitted, background[:], rejected[:], dips[:], near_dims[:] = first_fit
            means, z, off = first_check
            for flux, values in zip((samples.flux, fit_flux), own_flux):
                flux[:, out] = values
        del first_fit, own_flux
    if table is not None:
        # Where the sky spectrum's model misses a line's shape in every sky
        # row (its knots, placed on the first pass's sky, too far apart on a
        # flank: 1.5 sigma per pixel, "ok"), the finest knots there and the
        # fit again, kept if it mends what it missed.
        fine = fine_spacing or spacing(order)
        where = _effpix_misfit(stack, background, rejected, sky_rows, emap, shifts, t_grid[:, 0], gain, read_noise,
                               bad_columns, extent)
        refined = _refined_table(table, where, fine) if where is not None else None
        if refined is not None:
            first_fit = (fitted, background.copy(), rejected.copy(), list(dips), list(near_dims), table)
            table = refined
            rejected[:] = False  # (the refit marks its own)
            fitted = each_exposure(final_fit)
            after = _effpix_misfit(stack, background, rejected, sky_rows, emap, shifts, t_grid[:, 0], gain,
                                   read_noise, bad_columns, extent, bins=where.bins)
            # (Mended where it missed, and no worse over the rest of the spectrum.)
            if after is not None and after.chi2 < 0.5 * where.chi2 and after.total < where.total - where.chi2 / 2:
                means, z, off = _column_misfit(stack, background, sky_rows, gain, read_noise, bad_columns)
            else:  # (finer knots did not follow it: a line whose shape changes along the slit)
                fitted, background[:], rejected[:], dips[:], near_dims[:], table = first_fit
            del first_fit
    models = [m for m, _ in fitted]
    dimmest = min((d for d in near_dims if d is not None), default=None)
    if dimmest is not None:
        warnings = list(warnings) + [_dim_warning(*dimmest, masked_rows)]
    slit = [c for _, c in fitted if c is not None]
    if progress:
        for k, model in enumerate(models):
            print(f"exposure {k + 1}/{n_exp}: B-spline sky, {int(model.rejected.sum())} samples rejected")
    gap_text = _gap_warning(models, stack, emap)
    if gap_text:
        warnings = list(warnings) + [gap_text]
    n_sky_rows = int(np.count_nonzero(~(masked_rows | unlit)))
    under = np.flatnonzero(masked_rows & ~unlit)
    # Where the sky rows are many beside the mask, their samples cover what the masked rows need: the check
    # (and the compilation of its kernels, ~1.3 s of CPU on a new machine) only where they are not.
    if under.size and (n_sky_rows < 2 * under.size or n_sky_rows < 2 * MIN_SKY_ROWS):
        # A scattered subsample of the masked pixels (the same for a given mask and frame size).
        pick = np.random.default_rng(under.size * n_cols).integers(0, under.size * n_cols, _PRECISION_PIXELS)
        rows_p, cols_p = under[pick // n_cols], pick % n_cols
        precision = max(
            _masked_precision(model, np.clip(emap[rows_p, cols_p] - shifts[k] * t_grid[rows_p, 0], *sampled[k]),
                              rows_p.astype(float))
            for k, model in enumerate(models)
        )
        if precision > MASKED_PRECISION_LIMIT:
            warnings = list(warnings) + [_precision_warning(precision)]
    n_fit, n_coef = _fitted_counts(models)
    if n_sky_rows < MIN_SKY_ROWS and n_sky_rows < MIN_SKY_FRACTION * np.count_nonzero(~unlit):
        # How the sky changes along the slit cannot be seen on so few rows (5
        # at each end of a 300-row slit lit 16 % unevenly: 2.9 sigma RMS, 8
        # at one end: 9.8; the leak check's advice, to widen the mask, would
        # make it worse). Unless they are most of a short slit's (a slitlet
        # of 25 rows, 19 of sky, lit 5-20 % unevenly: 0.19-0.23 sigma RMS,
        # every fit suspect: trial O1); the fit's own precision under the
        # mask (below) is checked either way.
        warnings = list(warnings) + [
            f"Only {n_sky_rows} sky row(s) ({100 * n_sky_rows / n_rows:.0f} % of the slit): too few to see how the "
            "sky changes along the slit (its illumination), so the sky under the mask is poorly known. Leave "
            "more sky rows unmasked."
        ]
    elif n_fit < MIN_SAMPLES_PER_COEFFICIENT * n_coef:
        # Few sky rows: the samples no longer cover each knot interval many
        # times over (5 sky rows of 100: 3 sigma off on average, 30 at lines).
        warnings = list(warnings) + [
            f"Only {n_fit} sky samples for {n_coef} sky-model coefficients ({n_fit / max(n_coef, 1):.1f} each): "
            "the sky between them is poorly measured, worst at the sky lines. Leave more sky rows unmasked, or "
            "give a wider knot_spacing."
        ]
    # Dead or hot columns are left out and marked (quality.bad_columns, the summary, MASK): not a wrong
    # sky, so not a warning (as one, they made every raw night without a flat suspect: trial B1).
    # Hot columns a dip/spike test cannot tell from a narrow line that the fit
    # rejected anyway: a column rejected in most of its sky rows is bad too
    # (the science under it keeps the excess).
    rejected_columns = [c for c in _rejected_columns(rejected, masked_rows | unlit) if c not in bad_columns]
    # Where the lines cross BAD_COLUMN_SPIKE_TILT columns or more over the sky rows no sky line stays in one
    # column: such a column is a detector's, marked like the others (as a warning, hot columns the fit had
    # rightly left out made it suspect, the sky 0.2 sigma RMS about them: a trial's +100 e- column).
    if rejected_columns:
        travel = _column_travel(emap, sky_rows)
        stays = [c for c in rejected_columns if travel[c] < BAD_COLUMN_SPIKE_TILT]
    else:
        stays = []
    if stays:
        listed = ", ".join(map(str, stays[:8])) + (f" and {len(stays) - 8} more" if len(stays) > 8 else "")
        warnings = list(warnings) + [
            f"The fit rejected most of the sky pixels of column(s) {listed}: a hot column, or a narrow sky line "
            "that stays in one column and that the model misses. Their pixels (the science under them too) are "
            "not to be trusted (quality.bad_columns)."
        ]
    bad_columns = sorted(set(bad_columns) | set(rejected_columns))
    # Where the fit rejected most samples at some effective pixels, the sky there follows no data.
    unheld = _unmeasured_effpix(models, samples, shifts, t_samples, bad_columns, n_cols)
    if unheld:
        warnings = list(warnings) + [_unmeasured_warning(unheld, emap, sky_rows, background, stack, shifts,
                                                         t_grid[:, 0])]
    # What the model still misses column by column (a defect where the lines hardly move, a line it
    # does not follow there): said, not mended.
    off[:, bad_columns] = False
    missed = _missed_columns(stack, background, rejected, sky_rows, gain, read_noise, np.flatnonzero(off.all(axis=0)),
                             means)
    if missed.size:
        worst = float(np.abs(means[:, missed]).max())
        warnings = list(warnings) + [_misfit_columns_warning(missed.tolist(), worst)]
    # Structure beyond the noise over much of the frame, in every exposure: fringes or a flat-field pattern.
    # (Dead or hot columns, marked, left out: 4 hot columns side by side read as fringes, trial G.)
    structure = min((block_chi_scatter(stack[k], background[k], rejected[k], sky_rows, gain, read_noise,
                                       columns=bad_columns) for k in range(n_exp)), default=math.nan)
    if structure > BLOCK_SCATTER_LIMIT:
        warnings = list(warnings) + [_structure_warning(structure)]
    else:
        # A pattern of ~10 px along the dispersion, which 8 x 8 blocks average out.
        fine = min((fine_chi_scatter(stack[k], background[k], rejected[k], sky_rows, emap, gain, read_noise,
                                     shift=shifts[k], t_rows=t_grid[:, 0], columns=bad_columns)
                    for k in range(n_exp)), default=math.nan)
        if fine > FINE_SCATTER_LIMIT:
            warnings = list(warnings) + [_fine_structure_warning(fine)]
    if (noise[0] is None or noise[1] is None) and "default" not in source:
        # The noise once more, about the final sky: the first pass lacks the
        # spatial terms and the slit correction, and a sky it misfits (lines
        # broader at one end of the slit) passes for noise growing with the
        # level, i.e. a wrong gain, in the variance the result reports.
        read_noise, gain, few, pedestal, unmeasured = _final_noise(background, rejected, samples, noise,
                                                                    read_noise, gain, models)
        if unmeasured is not _KEEP_FIRST:
            # (The gain as the final estimate measures it, not the first pass's.)
            warnings = [w for w in warnings if not w.startswith(_GAIN_UNMEASURED)] + [unmeasured] * bool(unmeasured)
        if few is not None:
            warnings = list(warnings) + [
                f"Only {few[0]} sky samples for {few[1]} sky-model coefficients: the noise model estimated "
                "from them is poorly constrained (the fit follows their noise); give gain= and read_noise=, "
                "or leave more sky rows unmasked."
            ]
        if pedestal is not None and pedestal[1] < PEDESTAL_Z:
            # The read noise came out 0 and the gain tilted to make up for
            # it: the variance the result reports is wrong at the sky lines.
            warnings = list(warnings) + [
                f"The sky's scatter at its faintest is {_PEDESTAL_PHRASE}, as if at "
                f"least {pedestal[0]:.3g} data units of every pixel were not light: the noise model estimated "
                f"from it (gain {gain:.3g}, read noise {read_noise:.3g} e-) is wrong. A bias or overscan level "
                "left in the frames does this (subtract it); so does sky structure the model does not follow "
                "(lines it misses, fringes, a flat-field pattern), whose scatter grows faster than the level. "
                "Give gain= and read_noise= if you know them."
            ]
    mask = np.broadcast_to(masked_rows[:, None], (n_rows, n_cols)).copy()
    used_options = resolve_options("bspline", given, spatial_order=order,
                                   knot_threshold=knot_threshold if knots == "adaptive" else None)
    result = SkyResult(
        data=stack,
        background=background,
        mask=mask,
        rejected=rejected,
        effpix_map=emap,
        samples=samples,
        method="bspline",
        ref_row=warp_model.ref_row,
        read_noise=read_noise,
        gain=gain,
        mask_region=ranges,
        models=models,
        options=used_options,
        flexure_shift=tuple(float(s) for s in shifts),
        row_scale=_row_scales(illum, slit, n_exp, n_rows, dips),
    )
    unlit_ranges = _ranges(unlit)
    # The rows the samples come from: every pixel of a row outside the
    # mask is a sample, unless the row was found unlit (and dropped).
    slit_rows = np.flatnonzero(~masked_rows & ~unlit)
    scales = result.row_scale
    slit_summary = (0.0 if scales is None else max(_range(row[slit_rows]) for row in scales),
                    max((c.light_peak(slit_rows) for c in slit), default=0.0))
    flexure = tuple(float(s) for s in shifts)
    result._skip_rows = masked_rows | unlit
    result._width_hint = width_hint if width_hint is not None and width_hint > order else None
    result._lines_order = lines_order if lines_order == order else 0
    _set_assessment(result, lambda: _assess(result, samples, models, source, warnings, unlit_ranges, order, flexure,
                                            flexure_applied, slit=slit_summary, bad_columns=bad_columns,
                                            missed_columns=missed.tolist()))
    return result


def _cv_knot_threshold(effpix, flux, rows, skip_rows, order, shifts, n_rows, gain, read_noise, extent, fines,
                       first_spacing, coarse):
    """The adaptive knots' ``(finest spacing, threshold)``, chosen on held-out (odd/even) rows of the
    first-pass samples; the finest spacing among ``fines`` (the first unless another predicts better).

    As in the final fit, the knots are placed from the exposures' mean and
    the spline has ``order`` spatial terms; the first exposure (at its own
    flexure shift) is fit and scored: the final fits are per exposure, and
    the best threshold depends on their signal to noise. Rows in
    ``skip_rows`` (unlit) are left out, as from the final fit.
    """
    from .bspline import DEFAULT_THRESHOLD

    lit = np.flatnonzero(~skip_rows)
    if lit.size < 4:
        return fines[0], DEFAULT_THRESHOLD
    e = effpix if not shifts[0] else effpix - shifts[0] * _row_coordinate(rows, n_rows)
    try:
        best, _ = choose_knot_threshold(e, flux, rows, gain, read_noise, fines[0], coarse, first_spacing=first_spacing,
                                        extent=extent, spatial_order=order, row_range=(int(lit[0]), int(lit[-1]) + 1),
                                        fine_candidates=fines, skip_rows=skip_rows)
    except ValueError:
        # Too few samples or rows to split: the usual values.
        best = fines[0], DEFAULT_THRESHOLD
    return best


def _fitted_counts(models):
    """``(N, p)``: the samples the B-spline models were fit to and their coefficients, all exposures."""
    return (sum(int(np.count_nonzero(~m.excluded)) for m in models if m is not None),
            sum(int(np.size(m.coefficients)) for m in models if m is not None))


def _final_noise(background, rejected, samples, noise, read_noise, gain, models):
    """``(read_noise, gain)`` estimated again from the sky samples about ``background``
    (the unknown parts of ``noise`` only; the given ones, and the first estimate
    when this one fails or the fit spent more than half its samples, are kept).

    The residuals are the fit's own: scaled by ``sqrt(N / (N - p))`` for the
    ``p`` coefficients fit to ``N`` samples (with 3 sky rows per column, they
    otherwise gave gain 4.5 for 1). Returns ``(read_noise, gain, few, pedestal, unmeasured)``:
    ``few`` is ``(N, p)`` when too few samples were left to estimate it,
    ``pedestal`` :func:`~specwidgets.core.sky.quality.noise_pedestal` of the residuals, and
    ``unmeasured`` the warning of a gain they do not measure (None when they do; ``_KEEP_FIRST`` when
    this estimate did not run: the first one's stands)."""
    n_fit, n_coef = _fitted_counts(models)
    if not n_fit > 2 * n_coef:
        return read_noise, gain, (n_fit, n_coef), None, _KEEP_FIRST
    dof = math.sqrt(n_fit / (n_fit - n_coef))
    n_exp = background.shape[0]
    n_s = samples.index.size
    # Two numbers: 120000 samples (5000 per level bin) give them to ~2 %.
    sub = _subsample(n_exp * n_s, 120_000)
    flat = np.arange(sub.start or 0, n_exp * n_s, sub.step or 1)
    k_i, s_i = np.divmod(flat, n_s)
    pix = samples.index[s_i]
    bg = background.reshape(n_exp, -1)[k_i, pix]
    f = samples.flux[k_i, s_i]
    keep = np.isfinite(f) & np.isfinite(bg) & ~rejected.reshape(n_exp, -1)[k_i, pix]
    # (The dither of whole-numbered samples is not the data's noise: its variance is taken off.)
    bins = noise_bins(bg[keep], (f - bg)[keep] * dof, extra_variance=(samples.quantum * dof) ** 2 / 12.0)
    if bins is None:
        return read_noise, gain, None, None, _KEEP_FIRST
    est = _fit_noise_bins(*bins, fixed_gain=noise[1], fixed_read_noise=noise[0])
    unmeasured = None if noise[1] is not None else _gain_unmeasured_warning(gain_spread(*bins), bins, *est)
    return float(est[1]), float(est[0]), None, noise_pedestal(*bins), unmeasured


#: The constant of the noise's straight line in level (``noise_pedestal``) this many standard errors
#: below zero: a level without photon noise in the frames (the synthetic sets and the Goodman frames,
#: bias subtracted, are +10 to +76; 30 data units of bias left in, -8), or structure the sky model
#: misses (a 1 % fringe pattern on a 600 e- continuum, -7: residuals of ~0.7 sigma at the bright lines;
#: 0.5 %, -1.5).
PEDESTAL_Z = -5.0

_SHAPE_STEP = 0.25  # px: the finite-difference step of the model's second derivative


def _curvature(model, e, base, scale):
    """``scale`` times the second derivative of ``model`` at ``e`` (``base`` is ``model(e)``)."""
    h = _SHAPE_STEP
    return scale * (model(e + h) - 2.0 * base + model(e - h)) / (h * h)


def _line_shape_at(model, effpix, rows, n_rows, base, ratio, shift, coef):
    """The fitted width change (:func:`line_shape_change`) of one exposure at samples ``effpix`` / ``rows``;
    ``base`` is ``model`` at the (shifted) samples, ``ratio`` the rows' brightness."""
    if len(coef) == 0:
        return np.zeros(np.shape(effpix))
    t = _row_coordinate(rows, n_rows)
    e = effpix - shift * t if shift else effpix
    return line_shape_model(2.0 * t, _curvature(model, e, base, np.nan_to_num(ratio, nan=0.0)[rows]), coef)


def _line_shape(first, effpix, flux, rows, n_rows, level, ratios, shifts, gain, read_noise, used,
                max_degree=None):
    """``(drops, coefs)``: the chi-square drops of width terms along the slit, summed over the
    exposures and scaled to all samples, and each exposure's coefficients (see
    :func:`~.quality.line_shape_change`), from a regular subsample against the first pass.

    ``drops`` has one more degree than ``coefs``, the hint of a width that
    changes as a curve along the slit (see :func:`_lines_changing_along_the_slit`).
    """
    # Degree 1 only: a width changing steadily along the slit. A second
    # degree's drop would buy spatial order 2, whose knots are twice as far
    # apart (a line's shape then suffers more than the second degree gains;
    # and it read 1700-2100 on frames of a brightness gradient alone, where
    # order 2 put the sky under the mask 0.24 sigma RMS off for 0.12).
    max_degree = 1 if max_degree is None else max_degree
    # Two or three numbers per exposure: a regular subsample of 60000 samples
    # measures them well (a width change that matters lowers the chi-square
    # by thousands, which the stride scales back to all samples).
    sub = _subsample(effpix.size, 60_000)
    stride = sub.step or 1
    rows_s = rows[sub]
    t = _row_coordinate(rows_s, n_rows)
    drops = np.zeros(max_degree + 2)
    coefs = []
    for k in range(len(first)):
        e = effpix[sub] - shifts[k] * t if shifts[k] else effpix[sub]
        scale = np.nan_to_num(ratios[k], nan=0.0)[rows_s]
        base = level[k][sub]
        d2 = _curvature(first[k], e, base, scale)
        m = scale * base
        var = np.clip(m, 0, None) / gain + (read_noise / gain) ** 2
        ok = used[k][sub] & (scale > 0)
        args = (2.0 * t[ok], flux[k][sub][ok] - m[ok], d2[ok], var[ok])
        d, c = line_shape_change(*args, max_degree)
        drops[:-1] += d * stride
        drops[-1] += line_shape_change(*args, max_degree + 1)[0][-1] * stride
        coefs.append(c)
    return drops, coefs


#: Lines that move this many pixels or more over the sky rows sample every
#: part of a pixel: the knots are not held apart (see _knot_floors).
SLIVER_SPAN = 1.0

#: Lines that move less than this (px) over the sky rows are straight: the
#: default knots are uniform, a pixel apart (see ``_fit_bspline``). Lines
#: that move 0.01-0.03 px fit alike either way (0.11-0.28 sigma RMS, lines
#: FWHM 1.2-1.6 px); below 0.01, adaptive knots missed 1 in 3 such frames.
STRAIGHT_SPAN = 0.01


def _line_span(emap, masked_rows, max_columns=256):
    """How far the lines move over the sky rows: the median over (at most ``max_columns``) columns of
    the range of their effective pixel on the unmasked rows, in px."""
    sky_rows = np.flatnonzero(~np.asarray(masked_rows, bool))
    if sky_rows.size < 2:
        return 0.0
    lo, hi = _column_extent(emap, sky_rows, np.arange(0, emap.shape[1], max(1, emap.shape[1] // max_columns)))
    return float(np.median(hi - lo))


def _column_extent(emap, rows, cols, block=256):
    """``(lo, hi)``: the least and greatest effective pixel of each of ``cols`` over ``rows``, a block of
    rows at a time (no copy of the frame-sized map)."""
    lo = np.full(cols.size, np.inf)
    hi = np.full(cols.size, -np.inf)
    for start in range(0, rows.size, block):
        part = emap[np.ix_(rows[start:start + block], cols)]
        np.minimum(lo, part.min(axis=0), out=lo)
        np.maximum(hi, part.max(axis=0), out=hi)
    return lo, hi


def _local_floors(emap, skip_rows, e, max_columns=512):
    """``(floor, straight)`` on the effective pixels ``e``: :func:`_knot_floors`' final floor where the lines
    cross them (``1 - span`` where they move ``span < SLIVER_SPAN`` px over the rows not in ``skip_rows``,
    0 elsewhere), and where they are straight (``span < STRAIGHT_SPAN``); the span read on at most
    ``max_columns`` columns (it changes slowly along the dispersion).

    The span changes along the dispersion (a tilt that grows from 0 at one end
    of the frame to 3 px at the other): the frame's median span alone left the
    straight end's knots closer than its columns (lines of FWHM 1.2-1.4 px,
    2.3-4.2 sigma RMS there, 0.1-0.2 elsewhere).
    """
    from scipy.ndimage import maximum_filter1d

    rows = np.flatnonzero(~np.asarray(skip_rows, bool))
    if rows.size < 2:
        return np.zeros(e.size), np.zeros(e.size, bool)
    cols = np.unique(np.r_[np.arange(0, emap.shape[1], max(1, emap.shape[1] // max_columns)), emap.shape[1] - 1])
    lo, hi = _column_extent(emap, rows, cols)
    span = hi - lo
    centre = 0.5 * (hi + lo)
    order = np.argsort(centre)
    at = np.interp(e, centre[order], span[order])
    # (The closest floor within a pixel: a line's samples reach that far.)
    reach = max(1, int(round(2.0 / float(e[1] - e[0]))) + 1) if e.size > 1 else 1
    floor = maximum_filter1d(np.where(at < SLIVER_SPAN, 1.0 - at, 0.0), reach)
    return floor, floor > 1.0 - STRAIGHT_SPAN


def _floored_coordinate(e, u, floor, straight):
    """The stretched coordinate ``u(e)`` with its knots (unit steps of ``u``) at least ``floor`` px apart,
    and exactly ``floor`` apart where the lines are ``straight`` (see ``_fit_bspline``)."""
    if not floor.any():
        return u
    density = np.gradient(u, e)
    with np.errstate(divide="ignore"):
        most = np.where(floor > 0, 1.0 / floor, np.inf)
    density = np.where(straight, most, np.minimum(density, most))
    return np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(e))])


def _phase_gap(emap, masked_rows, max_columns=256):
    """The widest part of a pixel (px) that no sky row samples: the median over (at most ``max_columns``)
    columns of the largest gap, around the circle, among the effective pixels (modulo 1, so that the next
    columns' samples count) that each run of sky rows covers (from its least to its greatest: a line moves
    little from one row to the next). One run whose lines move ``span`` < 1 px leaves ``1 - span``
    (:func:`_knot_floors`); two runs, what lies between their slivers."""
    return _span_and_gap(emap, masked_rows, max_columns)[1]


def _span_and_gap(emap, masked_rows, max_columns=256):
    """``(_line_span(...), _phase_gap(...))`` from one read of the sky rows' effective pixels, each run's
    extent (the whole's is the least and greatest of the runs'). ``(0.0, 1.0)`` with fewer than 2 sky rows."""
    rows = np.flatnonzero(~np.asarray(masked_rows, bool))
    if rows.size < 2:
        return 0.0, 1.0
    cols = np.arange(0, emap.shape[1], max(1, emap.shape[1] // max_columns))
    cut = np.flatnonzero(np.diff(rows) > 1) + 1
    extents = [_column_extent(emap, run, cols) for run in np.split(rows, cut)]
    lo = np.array([e[0] for e in extents])
    hi = np.array([e[1] for e in extents])
    span = float(np.median(hi.max(axis=0) - lo.min(axis=0)))
    length = hi - lo
    start = np.mod(lo, 1.0)
    order = np.argsort(start, axis=0)
    start, end = np.take_along_axis(start, order, 0), np.take_along_axis(start + length, order, 0)
    gap, reach = np.zeros(cols.size), end[0].copy()
    for k in range(1, start.shape[0]):
        gap = np.maximum(gap, start[k] - reach)
        reach = np.maximum(reach, end[k])
    gap = np.maximum(gap, start[0] + 1.0 - reach)
    gap = np.where((length >= 1.0).any(axis=0), 0.0, np.clip(gap, 0.0, 1.0))
    gap = gap[np.isfinite(gap)]
    return span, float(np.median(gap)) if gap.size else 1.0


#: A part of every pixel this wide (px) that no sky row samples, where the sky rows' lines span more
#: (a mask in the middle of a short slit: two runs of rows, each on its own sliver), holds the final
#: knots :data:`HOLE_SPACING` apart, for lines of a first-pass FWHM of :data:`HOLE_FWHM` px or more.
HOLE_MIN = 0.6
HOLE_SPACING = 1.0
HOLE_FWHM = 2.5


def _hole_in_pixels(span, gap):
    """Whether the sky rows leave a hole ``gap`` px wide in every pixel (:func:`_phase_gap`) that their lines'
    ``span`` does not account for: a mask over the middle of a short slit.

    The span alone took the rows between the sky rows' ends for sampled
    (:func:`_knot_floors`): a mask over the middle of a short slit leaves
    two runs of sky rows, each on a sliver of its own, and the masked
    rows' effective pixels in the part of each pixel between them, which no
    sky row samples. Knots closer than a pixel there (0.5 px: the adaptive
    knots on the lines) leave the sky under the mask to the spline's guess:
    the Goodman crop of the README (rows 680-800, mask 20-100; the lines
    move 0.9 px over the slit, the sky rows sample 0.34 px of each pixel)
    was 2.7-4.0 sigma off in some columns against the full frame's fit, and
    a reversed wavelength axis moved it by as much, "ok" (trial M1);
    synthetic slits whose lines move 1 px over it, 0.24-0.36 sigma RMS under
    the mask (0.15-0.19 on the sky rows). With a hole of :data:`HOLE_MIN` px
    or more the final knots are held :data:`HOLE_SPACING` apart, so that each
    knot interval holds every sliver: the sky under the mask is then as
    good as on the sky rows (0.30-0.32 on the crop and its variants, worst
    column 1.0-1.5 sigma; 0.16-0.21 on the synthetic slits). Only for lines
    as wide as :data:`HOLE_FWHM` on the first pass (FWHM ~2.3 px and more)
    that such knots fit (:func:`_hole_knots_follow`): knots a pixel apart
    cannot follow narrower ones, on the sky rows either (trial A3: FWHM 1.4
    px, 0.29 -> 4.5 sigma RMS; 2.0 px, 0.16 -> 0.30). A smaller hole kept the
    plain knots better (a third of a pixel: 0.11 sigma, 0.16 with knots a
    pixel apart).
    """
    return gap >= HOLE_MIN and gap > 1.0 - min(span, SLIVER_SPAN) + 0.05


#: Knots a pixel apart follow the lines when their chi-square on the brightest tenth of the sky samples is
#: at most this many times that of the plain knots (:func:`_hole_knots_follow`): Gaussian lines of FWHM
#: 2.4-3.8 px read 0.98-1.13 (the Goodman crop 1.04), close doublets 1.18-2.1, flat-topped lines 1.28-2.2.
HOLE_CHI2_RATIO = 1.15


def _hole_knots_follow(effpix, flux, rows, n_rows, shift, gain, read_noise, extent, spacing):
    """Whether a plain sky with knots :data:`HOLE_SPACING` apart fits the brightest tenth of the samples
    (the lines) as well as one with knots ``spacing`` apart: their chi-square within :data:`HOLE_CHI2_RATIO`.

    A FWHM alone did not tell (trial A4): flat-topped lines (a slit wider
    than the seeing) and close doublets of FWHM 2.5-3.4 px have edges as
    sharp as narrow lines, and knots a pixel apart put the sky 8-27 sigma off
    in columns, where the plain knots had 2-5 (a doublet's fit, suspect
    before, was "ok" at 5 sigma). The plain fits are the first pass's kind
    (one data-weighted pass, spatial order 0) on the profiles' subsample.
    """
    ok = np.isfinite(flux)
    if np.count_nonzero(ok) < 200:
        return False
    e, f, r = effpix[ok], flux[ok], rows[ok]
    chi2 = []
    for knots in (spacing, HOLE_SPACING):
        model, shifted = _plain_sky(e, f, r, n_rows, shift, gain, read_noise, extent, knots)
        m = np.asarray(model(shifted), dtype=float)
        chi2.append((f - m) ** 2 / (np.clip(m, 0, None) / gain + (read_noise / gain) ** 2))
    bright = m >= np.percentile(m, 90)
    fine, coarse = (float(np.mean(np.minimum(c[bright], 25.0))) for c in chi2)
    return coarse <= HOLE_CHI2_RATIO * fine


def _knot_floors(span):
    """``(final, first)``: the closest knot spacings (px) of the final fit and of the first pass
    when the lines move ``span`` px over the sky rows (0 when not held apart).

    With less than a pixel (:data:`SLIVER_SPAN`), each column's samples lie
    on a sliver ``span`` wide of the effective pixels, with a gap of
    ``1 - span`` to the next column's: knots closer than that gap add
    coefficients that only the noise, or a trend along the rows, decides.
    A spline then bends within each sliver to follow the rows' light: the
    slit's illumination, a line width changing along the slit (the
    camera's focus) or a shift. The final fit keeps its knots ``1 - span``
    apart (straight lines on a short slit: 0.31 -> 0.17 sigma RMS, the
    noise of a plain column mean); the first pass, on which the spatial
    order, the noise model and the flexure are chosen, keeps them
    ``0.5 / span`` apart, at most one pixel (a width change of 10-30 %
    along a slit with lines 0.1-0.6 px from straight: spatial order 1
    chosen, 0.18-1.0 -> 0.08-0.20 sigma RMS).
    """
    if not (span < SLIVER_SPAN):
        return 0.0, 0.0
    return 1.0 - span, min(1.0, 0.5 / max(span, 1e-12))


#: Sky lines narrower than this (full width at half maximum, px, of the pixel-integrated profile a
#: 0.5 px first pass shows: 1.41 for Gaussian lines of FWHM 1.2 px, 1.67 for 1.5, 1.75 for 1.6) get
#: finer knots.
NARROW_FWHM = 1.7

#: The finest knot spacing (px) for such lines (trial L1's, FWHM 1.0-1.5 px: 0.19-1.05 -> 0.13-0.21
#: sigma RMS on the lines; at FWHM 1.6 a little worse than 0.5 px, 0.114 -> 0.119; at 1.8 the same).
NARROW_SPACING = 0.35


#: Lines this close (px) to either end of the effective pixels are not measured by :func:`_line_fwhm`.
EDGE_PX = 10.0


def _line_fwhm(e, sky, gain, read_noise, n_lines=7):
    """The median full width at half maximum (px) of the ``n_lines`` brightest lines of ``sky`` (on
    the uniform grid ``e``), inf when none stands 5 sigma of one pixel's noise above its continuum
    (a running 20th percentile over 20 px): a continuum's noise bumps are not lines.

    >>> e = np.arange(0, 200, 0.25)
    >>> sky = 50 + sum(2000 * np.exp(-0.5 * ((e - c) / 0.6) ** 2) for c in (40, 90, 150))
    >>> # Gaussians of sigma 0.6 px (FWHM 1.41), and a flat continuum
    >>> round(_line_fwhm(e, sky, 1.0, 4.0), 2), _line_fwhm(e, np.full(e.size, 50.0), 1.0, 4.0)
    (1.42, inf)
    """
    from scipy.ndimage import maximum_filter1d, percentile_filter

    step = float(e[1] - e[0])
    base = percentile_filter(sky, 20, size=max(3, int(round(20.0 / step))), mode="nearest")
    h = sky - base
    sigma = np.sqrt(np.clip(sky, 0, None) / gain + (read_noise / gain) ** 2)
    peak = (h == maximum_filter1d(h, max(3, int(round(3.0 / step))), mode="nearest")) & (h > 5.0 * sigma)
    # Not within 10 px of the ends, where few rows reach and the spline runs free (a trial frame's first
    # pass rose to 34000 there in spikes narrower than any line, ten times its brightest line).
    peak &= (e > e[0] + EDGE_PX) & (e < e[-1] - EDGE_PX)
    idx = np.flatnonzero(peak)
    idx = idx[np.argsort(h[idx])[::-1][:n_lines]]
    widths = []
    for i in idx:
        half = 0.5 * h[i]
        lo, hi = i, i
        while lo > 0 and h[lo] > half:
            lo -= 1
        while hi < h.size - 1 and h[hi] > half:
            hi += 1
        if h[lo] > half or h[hi] > half:
            continue  # at an end of the range
        left = lo + (half - h[lo]) / (h[lo + 1] - h[lo])
        right = hi - (half - h[hi]) / (h[hi - 1] - h[hi])
        widths.append((right - left) * step)
    return float(np.median(widths)) if widths else math.inf


def _plain_sky(effpix, flux, rows, n_rows, shift, gain, read_noise, extent, knot_spacing):
    """``(model, e)``: one exposure's plain sky spectrum (one data-weighted pass, ``knot_spacing``) fit to
    the samples given, and their effective pixels ``e`` with its flexure ``shift`` applied."""
    from .bspline import fit_bspline_sky

    e = effpix - shift * _row_coordinate(rows, n_rows) if shift else effpix
    return fit_bspline_sky(e, flux, None, read_noise=read_noise, gain=gain, extent=extent, knot_spacing=knot_spacing,
                           reject_sigma=None, max_iterations=0), e


def _lit_profile(effpix, clean, flux, rows, n_rows, step, shifts, gain, read_noise, extent, knot_spacing,
                 each_exposure, lines=True):
    """The rows' brightness along the slit, all exposures together: ``(ratio, information)`` per row,
    then the same from the sky lines' samples alone (level >= ``LINE_LEVEL`` times the median;
    all NaN and 0 unless ``lines``).

    Each exposure's rows are scaled to a sky spectrum fit with knots a
    whole pixel apart (:data:`PROFILE_KNOT_SPACING`) to its samples
    ``clean[k]`` (cosmic rays and bad columns NaN), its flexure shift
    applied; the ratios (of ``flux``, rays included: the profile clips them)
    are averaged with their information as weights, the information scaled
    by ``step`` (the samples are every ``step``-th).

    Not the first pass's knots: where the lines hardly tilt over the sky
    rows (less than a pixel), each column's samples cover a sliver of the
    effective pixels, and a spline with two knots per pixel bends within
    each sliver to follow a brightness trend along the rows. The first
    pass's rows then hold only part of the slit's illumination (a 16 %
    gradient came out 3-5 %, and the sky 0.3-0.7 sigma RMS off, up to 25
    sigma on narrow lines, under "sky fit ok"); one coefficient per pixel
    has no such freedom. With lines that tilt more, both read the same.
    """
    ratios = np.full((2, len(shifts), n_rows), np.nan)
    infos = np.zeros((2, len(shifts), n_rows))

    def one(k):
        model, e = _plain_sky(effpix, clean[k], rows, n_rows, shifts[k], gain, read_noise, extent, knot_spacing)
        level = model(e)
        var = np.clip(level, 0, None) / gain + (read_noise / gain) ** 2
        ratios[0, k], infos[0, k] = row_profile(rows, flux[k], level, var, n_rows)
        bright = level > LINE_LEVEL * np.nanmedian(level) if lines else None
        if lines and bright.any():
            ratios[1, k], infos[1, k] = row_profile(rows[bright], flux[k][bright], level[bright], var[bright], n_rows)

    each_exposure(one)
    info = infos.sum(axis=1) * step
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(info > 0, np.sum(np.nan_to_num(ratios) * infos, axis=1) * step / info, np.nan)
    return ratio[0], info[0], ratio[1], info[1]


def _lines_disagree(profile, ratio, info, lit):
    """Whether the sky lines' brightness along the slit (``ratio``, ``info``
    from their samples alone) departs from ``profile`` more than from a free
    curve of as many terms: then the rows' light is not the sky's spectrum
    scaled (scattered light, a glow adds to the faint sky and hardly to the
    lines), and a factor along the slit would scale the lines by what the
    continuum does. The chi-squares are in units of the free curve's scatter.
    """
    have = lit & np.isfinite(ratio) & (info > 0)
    rows = np.flatnonzero(have)
    if rows.size < 8:
        return False
    w = np.sqrt(info[rows])
    y = ratio[rows] * w
    degree = min(MAX_PROFILE_DEGREE, rows.size - 3)
    free = _legendre_design(rows, (rows[0], rows[-1] + 1), degree) * w[:, None]
    chi_free = float(np.sum((y - free @ np.linalg.lstsq(free, y, rcond=None)[0]) ** 2))
    scaled = (profile[rows] * w)[:, None]
    chi_scaled = float(np.sum((y - scaled @ np.linalg.lstsq(scaled, y, rcond=None)[0]) ** 2))
    spread = max(chi_free / (rows.size - degree - 1), 1.0)
    return (chi_scaled - chi_free) / spread > LINES_DISAGREE * degree


#: Pixels of an unlit row this many sigma from its first scaled sky are left
#: out of its scale (cosmic rays, hot pixels).
UNLIT_CLIP = 5.0

#: A tilt change of the traced sky lines beyond this [px between the slit's ends]
#: is the flexure (below it the steps from 0 converge in a few, and their bias under Poisson
#: noise, ~1.6 % of the shift, stays under 0.01 px).
FLEXURE_START = 0.5
#: ... unless a step measured from it is larger than this [px], or this fraction of it.
FLEXURE_CHECK, FLEXURE_CHECK_FRACTION = 0.1, 0.05


def _lines_apart(e, curves, max_lag=5.0, min_shift=0.5):
    """True when some first-pass sky of ``curves`` has its lines ``min_shift`` px or more from the first's.

    The shift is the peak of the cross-correlation of the curves' slopes
    (lines, not the continuum) within ``max_lag`` px, taken only where that
    peak is clear (correlation above 0.5): a sky without lines has no shift.
    """
    step = float(e[1] - e[0])
    lags = int(round(max_lag / step))
    slopes = np.gradient(np.asarray(curves, float), axis=1)
    slopes -= slopes.mean(axis=1, keepdims=True)
    ref = slopes[0]
    n = ref.size
    if n <= 2 * lags + 1:
        return False
    core = ref[lags:n - lags]
    norm_ref = np.sqrt(np.sum(core * core))
    for other in slopes[1:]:
        windows = np.lib.stride_tricks.sliding_window_view(other, n - 2 * lags)
        corr = windows @ core
        norm = np.sqrt(np.sum(windows * windows, axis=1)) * norm_ref
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = np.where(norm > 0, corr / norm, 0.0)
        best = int(np.argmax(rho))
        if rho[best] > 0.5 and abs(best - lags) * step >= min_shift:
            return True
    return False


def _measure_shift(first, k, effpix, flux, rows, n_rows, level, ratio, gain, read_noise, extent, knot_spacing,
                   max_steps=5, start=0.0):
    """Exposure ``k``'s sky-line shift between the slit's ends, in px (0 if not significant).

    Gauss-Newton: measure the shift against the current first-pass model
    (:func:`measure_flexure`), refit that model on the corrected effective
    pixels, and measure again, until the step is well below a pixel's
    hundredth.

    ``start`` (px): the traced sky lines' tilt change. Beyond
    :data:`FLEXURE_START` it is the shift, unless a step measured from it
    says otherwise: from 0, a shift of a line's width or more blurs the
    first model's lines and each step moves only part of the way (a 3 px
    tilt change over the slit: 1.7 px after 5 steps, the sky 2.6 sigma RMS
    off, trial K2), and the steps stop short of a large shift by ~1.6 % of
    it under Poisson noise (on bright lines, 0.27 sigma RMS left over a
    300-row slit), where the traced lines measure it without that bias.
    ``ratio`` is each row's brightness relative to the model (the slit
    illumination; NaN for rows without samples). ``first[k]`` and
    ``level[k]`` are replaced by the corrected fit when a shift is found.
    """
    from .bspline import fit_bspline_sky

    model = first[k]
    total = 0.0
    h = 0.1
    # The shift is two numbers: a regular subsample of the samples measures
    # it to far better than a hundredth of a pixel.
    sub = _subsample(effpix.size, 400_000)
    rows_s = rows[sub]
    # Row coordinate and scale on the subsample only (the full-size ones
    # only if a shift is found).
    t_s, f_s = _row_coordinate(rows_s, n_rows), flux[sub]
    scale_s = np.nan_to_num(ratio, nan=0.0)[rows_s]
    t = None

    def refit(total, ratio):
        # The refit sees the rows evenly lit: with a brightness gradient
        # along the slit, the bright rows would otherwise set the lines'
        # positions in the model, and a part of the shift would look common
        # to all rows (which the steps do not correct).
        # Rows lit at under half the middle's (vignetting edges) are left
        # out: divided by their light, their noise would weigh as much as a
        # bright row's (the fit's weights assume an evenly lit slit).
        lit = np.isfinite(ratio) & (ratio > 0) & (ratio >= 0.5 * np.nanmedian(ratio))
        inverse = np.where(lit, 1.0 / np.where(lit, ratio, 1.0), np.nan)  # per row: one gather below
        return fit_bspline_sky(
            effpix - total * t, flux * inverse[rows], None,
            read_noise=read_noise, gain=gain, extent=extent, knot_spacing=knot_spacing, reject_sigma=None,
            max_iterations=1,
        )

    trusted = abs(start) > FLEXURE_START
    if trusted:
        unshifted = (ratio, scale_s)
        total, t = float(start), _row_coordinate(rows, n_rows)
        model = refit(total, ratio)
    for _ in range(max_steps):
        e = effpix[sub] if not total else effpix[sub] - total * t_s
        base = level[k][sub] if not total else model(e)
        if total:
            # The rows' brightness again, about the corrected model: misaligned
            # lines had made the rows far from the middle look dimmer, and
            # with rows masked unevenly that would bias the next step.
            var0 = np.clip(base, 0, None) / gain + (read_noise / gain) ** 2
            ratio, _ = row_profile(rows_s, f_s, base, var0, n_rows)
            scale_s = np.where(scale_s > 0, np.nan_to_num(ratio, nan=0.0)[rows_s], 0.0)
        m = scale_s * base
        slope = scale_s * (model(e + h) - model(e - h)) / (2 * h)
        var = np.clip(m, 0, None) / gain + (read_noise / gain) ** 2
        pick = ~model.rejected[sub] & (scale_s > 0)
        step, sigma = measure_flexure(t_s, f_s, m, slope, var, pick=pick)
        if trusted:
            # The traced lines' value stands unless the data say it is well off
            # (a trace gone wrong): then the steps go on from there. And only
            # if the sky fits better shifted than not: a few sky rows at each
            # end of a wide mask traced a tilt change of -8.6 px on lines
            # tilted 2.5 px, a false match of other lines where the steps stop
            # as well as at the true one (the sky 58 sigma off, flagged).
            trusted = False
            ratio0, scale0 = unshifted
            m0 = scale0 * level[k][sub]
            var0 = np.clip(m0, 0, None) / gain + (read_noise / gain) ** 2
            both = pick & ~first[k].rejected[sub] & (scale0 > 0)
            if not _fits_better(f_s, m, var, m0, var0, both):
                total, model, ratio, scale_s = 0.0, first[k], ratio0, scale0
                continue
            if abs(step) <= max(FLEXURE_CHECK, FLEXURE_CHECK_FRACTION * abs(total)):
                break
        # The subsample's error is larger by sqrt(stride) than the full set's;
        # the significance test uses the subsample's own error (conservative).
        # Only a clear shift is corrected: one at the noise level would add
        # noise. Once one is found, the steps go on until they are tiny.
        if not total and not abs(step) > max(5 * sigma, 0.05):
            break
        total += step
        if t is None:
            t = _row_coordinate(rows, n_rows)
        model = refit(total, ratio)
        # A hundredth of a pixel over the whole slit (or twice the step's own
        # error, if larger) is below what moves a sky line's residual.
        if abs(step) < max(0.01, 2 * sigma):
            break
    if total:
        first[k] = model
        model(effpix - total * t, out=level[k])
    return float(total)


def _fits_better(f, m, var, m0, var0, use):
    """Whether the model ``m`` (variance ``var``) fits ``f`` better than ``m0`` (``var0``) on ``use``: a lower
    chi-square (each with its own variance)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        chi = np.sum(((f - m) ** 2 / var)[use])
        chi0 = np.sum(((f - m0) ** 2 / var0)[use])
    return bool(np.isfinite(chi) and (not np.isfinite(chi0) or chi < chi0))


def _robust_std(x):
    """1.4826 x the median absolute deviation (NaN for no values)."""
    if x.size == 0:
        return float("nan")
    return float(1.4826 * median(np.abs(x - median(x))))


# Robust spread (1.4826 x MAD) of residuals about their own bin's median, in
# units of the data's, for bins of n = 2..12 samples (Gaussian simulation,
# 10^5+ bins each; odd n are lower: the middle sample's residual is 0).
_MEDIAN_SPREAD = np.array([np.nan, np.nan, 0.707, 0.464, 0.721, 0.728, 0.783, 0.817, 0.834, 0.863, 0.873,
                           0.892, 0.895])


def _median_spread(n):
    """The in-sample spread factor of a median of ``n`` samples (NaN for n < 2: a
    sample that is its own median says nothing); ``1 - 1.15 / n`` beyond 12
    (within 0.2 % of the simulation at 29)."""
    n = np.asarray(n, dtype=np.int64)
    small = _MEDIAN_SPREAD[np.clip(n, 0, _MEDIAN_SPREAD.size - 1)]
    return np.where(n < _MEDIAN_SPREAD.size, small, 1.0 - 1.15 / np.maximum(n, 1))


#: Rows found unlit only after the first pass (see ``_late_unlit_rows``), as a fraction of the rows
#: that pass held, that make the fit start again (a few rows of a vignetting edge do not).
LATE_UNLIT_FRACTION = 0.05


def _late_unlit_rows(result, first_look, masked_rows):
    """The rows ``result`` found unlit that the first look did not, in runs from an end of the frame
    (past dark or masked rows there), when they are at least :data:`LATE_UNLIT_FRACTION` of the rows its
    first pass held (else None).

    Only at the ends: where a pedestal keeps the rows beyond the slit's ends lit. Rows found unlit
    inside the slit (whole ADU on a sky of a fraction of one) are no reason to start again: dropped
    from the first pass they made the next choices worse (0.38 -> 3.0 sigma RMS, trial R3).
    """
    if result._skip_rows is None:
        return None
    late = result._skip_rows & ~masked_rows & ~first_look.dark
    passing = masked_rows | first_look.dark
    ends = np.zeros(late.size, bool)
    for order in (range(late.size), range(late.size - 1, -1, -1)):
        for i in order:
            if late[i]:
                ends[i] = True
            elif not passing[i]:
                break
    held = int(np.count_nonzero(~masked_rows & ~first_look.dark))
    return ends if int(np.count_nonzero(ends)) >= max(3, LATE_UNLIT_FRACTION * held) else None


#: The rows held out by :func:`_held_out_lines_order`: the middle third of the longest run of sky rows,
#: when that third is at least this many rows.
HELD_OUT_MIN_ROWS = 4


def _held_out_rows(sky):
    """The rows a choice is checked on: the middle third of the longest run of ``sky`` rows, as a mask of
    rows (None when that third is under :data:`HELD_OUT_MIN_ROWS`)."""
    runs = _ranges(sky)
    if not runs:
        return None
    start, stop = max(runs, key=lambda run: run[1] - run[0])
    third = (stop - start) // 3
    if third < HELD_OUT_MIN_ROWS:
        return None
    held = np.zeros(len(sky), bool)
    held[start + third: start + 2 * third] = True
    return held


def _held_out_lines_order(result, masked_rows, fit_with_order):
    """``result``, or a fit of a lower spatial order (``fit_with_order(order)``) when the order that the
    sky lines' brightness alone chose (``result._lines_order``) predicts held-out sky rows worse.

    The lines' brightness per row is read from a first pass whose knots are
    a pixel apart. Lines narrower than that (FWHM 1.2 px) it misses by how
    their peak falls within the pixels, and where the lines tilt that phase
    changes along the slit: their brightness seemed to change, order 2 was
    taken for a uniform slit, and its terms, fit to the phase's pattern in
    the sky rows, put the sky under the mask 0.51 sigma RMS off (31 sigma in
    a column; order 0: 0.13), "ok". A change the sky really has is seen in
    rows the fit never saw too; a phase's pattern is not. So the middle third
    of the longest run of sky rows is left out, each order up to the chosen
    one fit without it, and the order whose sky scatters least about those
    rows' data (chi-square, each term capped at 25) is kept.
    """
    order = int(result._lines_order)
    if not order or result._skip_rows is None:
        return result
    held = _held_out_rows(~result._skip_rows)
    if held is None:
        return result
    # One noise model and one set of rejected pixels (the whole fit's, which saw these rows) for every order.
    data = result.data[:, held]
    variance = np.maximum(result.background[:, held], 0.0) / result.gain + (result.read_noise / result.gain) ** 2
    use = np.isfinite(data) & ~result.rejected[:, held]
    if not use.any():
        return result
    chi2 = []
    for p in range(order + 1):
        try:
            trial = fit_with_order(p, rows=masked_rows | held)
        except (ValueError, TooFewSamplesError):
            return result
        chi2.append(float(np.mean(np.minimum((data - trial.background[:, held]) ** 2 / variance, 25.0)[use])))
    best = int(np.argmin(chi2))
    return result if best == order else fit_with_order(best)


def _lines_changing_along_the_slit(result, fit_with_order):
    """``result``, or a fit with more spatial terms (``fit_with_order(order, fine)``) when ``result``'s
    line misfit says the sky lines change along the slit in a way its model does not follow, and
    the other fit follows them better: its misfit at most half as far above 1.

    The spatial order is chosen on the rows' brightness and the lines' width
    and brightness as a whole; sky lines that brighten along the slit, each
    its own way (OH emission varying across the sky), change none of these:
    order 0 missed them (+-10 % end to end: 0.35 sigma RMS, 6 sigma; order 1:
    0.08). The line misfit sees them (1.65; 1.0 with order 1). One more
    order is tried when the misfit is above its limit; then, where the
    lines' width asked for order 2 by its second degree (a focus best at the
    slit's centre: ``result._width_hint``) and the misfit is more than half
    way to its limit, order 2 with the plain fit's finest knots (the order's
    own, 1 px apart, miss narrow lines as much as the width does). A trial's
    lines of FWHM 2.0 px at the centre and 2.15 at the ends: the misfit 1.19,
    "ok", 0.46 sigma RMS on the lines with the noise estimated (which took
    the misfit for noise: gain 0.80 for 1); order 2, 0.18.
    """
    order = int(result.options.get("spatial_order", 0))
    if order >= MAX_AUTO_ORDER or result._skip_rows is None:
        return result
    # (Measured once, for the report too: it is the report's own measure.)
    result._line_misfit = misfit, limit = _line_misfit(result, result._skip_rows)
    hint = result._width_hint
    tries = ([(order + 1, False)] if misfit > limit else []) + (
        [(hint, True)] if hint is not None and misfit > 1.0 + 0.5 * (limit - 1.0) else [])
    for new_order, fine in tries:
        other = fit_with_order(new_order, fine)
        other._line_misfit = got, _ = _line_misfit(other, other._skip_rows)
        # Kept when it halves the misfit's excess, even if not below the limit (its warning then stands): a
        # trial's frame with lines tilting 25 px and a warp poor along the dispersion missed by 2.07 with
        # order 0 and 1.23 with order 1 (1.66 -> 0.24 sigma RMS), and the worse fit stood.
        if got - 1.0 <= 0.5 * (misfit - 1.0):
            return other
    return result


#: The second row's dither in ``_line_misfit``: a Weyl sequence of another step than ``dither``'s.
_SECOND_DITHER = 0.7548776662466927


def _line_misfit(result, skip_rows, limit=120_000):
    """``(misfit, threshold)``. How much the sky model misses the bright sky: the largest, over exposures, of
    ``var(r_a) / var((r_a - r_b) / sqrt(2))`` over the brightest tenth of the pairs of
    vertically adjacent sky pixels ``a``, ``b`` (``r`` data minus sky, robust variances;
    rows ``skip_rows`` and rejected pixels left out; a regular subset of the row pairs).

    A misfit that changes slowly along the slit (a line broader at one end, a
    warp off by a tenth of a pixel, the peaks a median of bins misses) is in
    each residual but cancels in the difference of neighbouring rows; noise
    is in both alike. So about 1 for a sky that follows the lines, whatever
    the noise model (a wrong gain does not change it); 1 when there are too
    few pairs to tell. ``threshold``: :data:`LINE_MISFIT_LIMIT`, or above it
    by three standard errors of the ratio of two robust variances of the
    fewest bright pairs an exposure had (about 3.3 / sqrt(n): on a 60-row
    slit, ~800 pairs, a clean fit reached 1.26).
    """
    n_exp, n_rows, n_cols = result.data.shape
    use = ~np.asarray(skip_rows, bool)
    ys = np.flatnonzero(use[:-1] & use[1:])
    ys = ys[:: max(1, ys.size * n_cols // limit)]
    if ys.size * n_cols < 5000:
        return 1.0, LINE_MISFIT_LIMIT
    worst, fewest = 1.0, None
    # Whole numbers of ADU on a faint sky: neighbouring rows' differences sit
    # near whole steps, and their robust spread is too small (a fit as good as
    # its float frame's read 1.16-1.21, "misses the lines' shape"). A dither
    # of a step's width spreads them (the same per pixel; the second row's by
    # another sequence: the samples' one differs by a constant a row apart).
    quantum = value_quantum(result.data[0].ravel()[:: max(1, n_rows * n_cols // _QUANTUM_SAMPLES)])
    cols = np.arange(n_cols)
    for k in range(n_exp):
        bg_a, bg_b = result.background[k, ys], result.background[k, ys + 1]
        ra, rb = result.data[k, ys] - bg_a, result.data[k, ys + 1] - bg_b
        if quantum:
            index = (k * n_rows + ys[:, None]) * n_cols + cols
            ra += dither(index, 0, quantum)
            rb += dither(index, 0, quantum, step=_SECOND_DITHER)
        ok = np.isfinite(ra) & np.isfinite(rb) & ~result.rejected[k, ys] & ~result.rejected[k, ys + 1]
        level = 0.5 * (bg_a + bg_b)[ok]
        ra, rb = ra[ok], rb[ok]
        if level.size < 5000:
            continue
        bright = level >= percentile(level, 90)
        n_bright = int(np.count_nonzero(bright))
        fewest = n_bright if fewest is None else min(fewest, n_bright)
        diff = _robust_std((ra[bright] - rb[bright]) / math.sqrt(2.0))
        if diff > 0:
            worst = max(worst, (_robust_std(ra[bright]) / diff) ** 2)
    threshold = LINE_MISFIT_LIMIT if fewest is None else max(LINE_MISFIT_LIMIT, 1.0 + 10.0 / math.sqrt(fewest))
    return float(worst), threshold


def _row_scales(profile, corrections, n_exp, n_rows, dips=None):
    """``(n_exp, n_rows)``: the profile (or 1) times each exposure's slit-correction
    illumination and its rows' dips; None when all are absent (an evenly lit model)."""
    dipped = dips is not None and any(d is not None and np.any(d != 1.0) for d in dips)
    if profile is None and not any(c.illumination_degree for c in corrections) and not dipped:
        return None
    base = np.ones(n_rows) if profile is None else np.asarray(profile, float)
    out = np.tile(base, (n_exp, 1))
    for k, c in enumerate(corrections):
        if c.illumination_degree:
            out[k] *= c.illumination
    if dipped:
        for k, d in enumerate(dips):
            if d is not None:
                out[k] *= d
    return out


#: A sky row is a dip (:func:`_row_dips`) when its light is below the smooth sky model's by this many
#: times its error and by at least ``DIP_MIN`` (a fraction).
DIP_SIGNIFICANCE = 5.0
DIP_MIN = 0.005


def _row_dips(background, flux, index, n_cols, gain, read_noise, masked_rows, skip_rows):
    """``(factors, near)``: each row's scale (1, or its own below 1 where it dips; ``skip_rows`` keep 1)
    and, for a dip within ``DIM_NEAR_MASK`` rows of a masked row, ``(chi, row)`` of
    the dimmest such row before the scale (its mean chi), when below ``-LEAK_LIMIT``; else None.

    Dust on the slit dims a few rows by 10-30 % in every column, which no
    smooth profile along the slit follows: 18-64 sigma off on those rows,
    reported "ok". A row's own scale mends its sky. Under the mask no row
    can be measured, so a dip next to it makes the fit suspect.
    """
    n_rows = skip_rows.size
    rows = index // n_cols
    bg = background.ravel()[index]
    var = np.clip(bg, 0, None) / gain + (read_noise / gain) ** 2
    ratio, info = row_profile(rows, flux, bg, var, n_rows)
    with np.errstate(invalid="ignore"):
        deficit = 1.0 - ratio
        dip = (deficit * np.sqrt(info) > DIP_SIGNIFICANCE) & (deficit > DIP_MIN) & ~skip_rows
    factors = np.where(dip, ratio, 1.0)
    near = None
    close = dip & _near_mask(masked_rows, DIM_NEAR_MASK)
    if close.any():
        counts, sums = _row_chi_means(index, n_cols, n_rows, background, flux, gain, read_noise)
        means = sums / np.maximum(counts, 1)
        row = int(np.flatnonzero(close)[np.argmin(means[close])])
        if means[row] < -LEAK_LIMIT:
            near = (float(means[row]), row)
    return factors, near


def _range(values):
    """Peak-to-peak of ``values`` (0 for none)."""
    return float(np.ptp(values)) if len(values) else 0.0


def _scale_along_columns(obs, guess, ok, scale, gain, read_noise, block=64):
    """Each unlit row's sky scale, ``(n_rows, 1)`` as given or ``(n_rows, n_cols)`` along the columns.

    ``obs`` (the rows' data), ``guess`` (the sky at the nearest lit row) and
    ``ok`` (finite) are ``(n_rows, n_cols)``; ``scale`` each row's one scale
    (``(n_rows, 1)``). A row gets a scale per block of ``block`` columns,
    joined by straight lines through the blocks' centres, where that lowers
    its chi-square (noise model ``gain``, ``read_noise``, at the one scale's
    sky) by more than 10 plus 4 per extra coefficient: a row that the slit's
    lit edge crosses is dark in some columns and lit in others (one scale
    gave the lit ones half their sky, 40 sigma), where a row evenly dim keeps
    its one scale (the blocks' own noise would add to it).
    """
    n_rows, n_cols = obs.shape
    n_blocks = n_cols // block
    if n_blocks < 2 or not n_rows:
        return scale
    edges = np.linspace(0, n_cols, n_blocks + 1).astype(int)
    centres = 0.5 * (edges[:-1] + edges[1:] - 1)
    var = np.clip(scale * guess, 0, None) / gain + (read_noise / gain) ** 2
    w = np.where(ok, 1.0 / np.where(var > 0, var, np.inf), 0.0)
    wo, wg = np.where(ok, obs, 0.0) * w, np.where(ok, guess, 0.0) * w
    num_b = np.add.reduceat(wo * guess, edges[:-1], axis=1)
    den_b = np.add.reduceat(wg * guess, edges[:-1], axis=1)
    num, den = num_b.sum(axis=1), den_b.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        # The chi-square drop of a scale per block over one per row (weighted least squares).
        drop = np.sum(np.where(den_b > 0, num_b**2 / den_b, 0.0), axis=1) - np.where(den > 0, num**2 / den, 0.0)
        s_b = np.clip(np.where(den_b > 0, num_b / den_b, np.nan), 0, None)
    better = drop > 10.0 + 4.0 * (n_blocks - 1)
    if not better.any():
        return scale
    out = np.broadcast_to(scale, (n_rows, n_cols)).copy()
    cols = np.arange(n_cols)
    for r in np.flatnonzero(better):
        have = np.isfinite(s_b[r])
        if have.sum() >= 2:
            out[r] = np.interp(cols, centres[have], s_b[r][have])
    return out


def _smooth_light(values, rows, block=64, window=5, significance=3.0):
    """Smooth light in ``values`` (on ``rows``, sorted): the medians of blocks of ``block`` columns
    (NaN read as 0: no light), averaged over ``window`` rows within each run of adjacent rows, and
    joined by straight lines through the blocks' centres, where they stand ``significance`` times
    their noise above zero (RMS): pure noise would otherwise be subtracted (a block median of read
    noise alone scatters by 0.16 sigma). Where they do not, the same averaged over the whole run,
    then the run's one level, each tested against its own (smaller) noise; else 0.
    """
    from scipy.ndimage import uniform_filter1d

    n_rows, n_cols = values.shape
    out = np.zeros(values.shape)
    if not n_rows:
        return out
    n_blocks = max(1, n_cols // block)
    edges = np.linspace(0, n_cols, n_blocks + 1).astype(int)
    centres = 0.5 * (edges[:-1] + edges[1:] - 1)
    filled = np.where(np.isfinite(values), values, 0.0)
    # (NumPy's medians: median_along gives their numbers faster, as median does below.)
    medians = np.stack([median_along(filled[:, a:b], axis=1, nan_checked=True)
                        for a, b in zip(edges[:-1], edges[1:])], axis=1)
    cols = np.arange(n_cols)
    starts = np.flatnonzero(np.r_[True, np.diff(rows) > 1])
    for a, b in zip(starts, np.r_[starts[1:], n_rows]):
        size = min(window, b - a)
        smooth = uniform_filter1d(medians[a:b], size, axis=0, mode="nearest")
        pixels = filled[a:b].ravel()
        noise = 1.4826 * median(np.abs(pixels - median(pixels)))
        expected = 1.2533 * noise / math.sqrt(max(edges[1] - edges[0], 1)) / math.sqrt(size)
        if math.sqrt(float(np.mean(smooth**2))) > significance * expected:
            for r in range(a, b):
                out[r] = np.interp(cols, centres, smooth[r - a])
            continue
        # Fainter light, even over the run: 1 e- of a bias offset or dark
        # current over unlit rows read with 5.4 e- of read noise stood under
        # the blocks' threshold (1.2 e-) and was left at 0 (-0.18 sigma over
        # every unlit pixel), where the run's mean knows it to 0.03 e-.
        per_block = smooth.mean(axis=0)
        if math.sqrt(float(np.mean(per_block**2))) > significance * expected * math.sqrt(size / (b - a)):
            out[a:b] = np.interp(cols, centres, per_block)
            continue
        level = float(per_block.mean())
        if abs(level) > significance * expected * math.sqrt(size / (b - a) / n_blocks):
            out[a:b] = level
    return out


def _row_means(background, samples, k, gain, read_noise, data=None, sample_rows=None):
    """Each row's mean of clipped chi over exposure ``k``'s sky samples (NaN for a row with too few).

    With ``data`` (exposure ``k``'s image) and ``sample_rows`` (the rows the
    samples come from, flagged), when the samples are all the pixels of
    those rows, the rows are read in memory order instead of the samples.
    """
    n_rows, n_cols = background.shape
    if sample_rows is not None and int(np.count_nonzero(sample_rows)) * n_cols == samples.index.size:
        n_k, sums = _row_chi_means_in_rows(data, background, sample_rows, gain, read_noise)
    else:
        n_k, sums = _row_chi_means(samples.index, n_cols, n_rows, background, samples.flux[k], gain, read_noise)
    ok = n_k >= max(20, 0.25 * n_cols)
    return np.where(ok, sums / np.maximum(n_k, 1), np.nan)


def _extreme_row(means, sign):
    """``(value, row)`` of the row mean farthest from 0 on the side of ``sign`` (``(0.0, None)`` when none)."""
    if np.isfinite(means).any():
        r = int(np.nanargmax(sign * means))
        if sign * means[r] > 0.0:
            return float(means[r]), r
    return 0.0, None


#: Sky rows within this many rows of a masked range are checked for being dimmer than the sky model.
DIM_NEAR_MASK = 20


def _near_mask(masked_rows, reach):
    """Flags of the unmasked rows within ``reach`` rows of a masked row (none without a mask)."""
    from scipy.ndimage import binary_dilation

    masked = np.asarray(masked_rows, bool)
    if not masked.any():
        return np.zeros(masked.size, bool)
    return binary_dilation(masked, iterations=int(reach)) & ~masked


def _dim_warning(dim, row, masked_rows, method="bspline"):
    """The warning for a sky row near a mask dimmer than the sky model: the slit's light changes faster than the model."""
    distance = rows_from_mask(masked_rows, row)
    head = f"Sky row {row}, {distance} row(s) from the mask, is dimmer than the sky model ({dim:.2f} sigma per pixel "
    if method == "median":
        # The median of bins has no illumination term: any gradient along the slit shows here.
        return head + ("on average): the median of bins does not model the slit's illumination, so the sky under "
                       "the mask is likely off too; the default method (B-spline) does.")
    return head + ("on average): the slit's illumination changes there faster than the model follows (a narrow dip), "
                   "so the sky under the mask, drawn from rows like it, is likely off too. Divide the frames by a flat "
                   "field that shows the slit's illumination, or move the mask's edge.")


#: A masked row at the lit slit's end whose data lie this far below the sky model (mean of the pixels'
#: clipped chi, sigma per pixel) has a sky too high: a source only adds light. Good fits' masked rows
#: of sky alone read within +-0.3; a mask reaching past the slit's lit end, -2 to -5 (a trial: the sky
#: under the mask 4-38 sigma RMS off, "ok").
MASKED_DARK_LIMIT = LEAK_LIMIT  # (the leak's: _exposures_with names the exposures by it)


def _dark_masked_row(result, skip):
    """``(mean, row, exposures)`` of the darkest masked row at an edge of a masked range that borders
    rows without sky light (``skip``: the masked rows and those) or the frame's edge, when below
    ``-MASKED_DARK_LIMIT`` (``exposures``: the ones whose row is, when not all); else None.

    Only there: the mask may reach past the slit's lit end, which the sky rows cannot show. A dark row
    inside a mask is a detector defect (a dead or cold row) or a negative trace (a nod pair's), not
    a sky too high (a trial of the check: both made good fits suspect).
    """
    n_exp, n_rows, n_cols = result.data.shape
    unlit = skip & ~result.mask[:, 0]
    rows = np.zeros(n_rows, bool)
    for a, b in result.mask_region:
        rows[a] |= a == 0 or unlit[max(a - 2, 0):a].any()
        rows[b - 1] |= b == n_rows or unlit[b:b + 2].any()
    if not rows.any():
        return None
    means = []
    for k in range(n_exp):
        counts, sums = _row_chi_means_in_rows(result.data[k], result.background[k], rows, result.gain,
                                              result.read_noise)
        means.append(np.where(rows & (counts >= max(20, 0.25 * n_cols)), sums / np.maximum(counts, 1), np.nan))
    means = np.array(means)
    if not np.isfinite(means).any():
        return None
    k, row = np.unravel_index(int(np.nanargmin(means)), means.shape)
    if not means[k, row] < -MASKED_DARK_LIMIT:
        return None
    return float(means[k, row]), int(row), _exposures_with(-means, row)


def _dark_masked_warning(mean, row, which, unlit_ranges):
    """The warning for a masked row darker than the sky model (:func:`_dark_masked_row`)."""
    where = f" in {which}" if which else ""
    unlit = ", ".join(f"{a}:{b}" for a, b in unlit_ranges)
    beside = f" (rows found without sky light: {unlit})" if unlit else ""
    return (f"Masked row {row}, at the mask's edge by the slit's end, is darker than the sky model{where} "
            f"({mean:.2f} sigma per pixel on average), which a source under the mask cannot make: the sky there is "
            f"too high. The mask reaches past the slit's lit part{beside}, or the slit's light falls off under the "
            "mask faster than the model follows (or that row is a detector defect). Start the mask where the slit "
            "is lit, or divide the frames by a flat field that shows the slit's illumination.")


# A sky row this close to a masked range (rows) is where a masked trace's wings would reach.
LEAK_NEAR_MASK = 10


def rows_from_mask(masked_rows, rows):
    """How many rows the nearest of ``rows`` lies from a masked row (flags ``masked_rows``); None without a mask."""
    masked = np.flatnonzero(masked_rows)
    if not masked.size:
        return None
    return int(np.min(np.abs(masked[:, None] - np.atleast_1d(rows)[None, :])))


#: What the B-spline's line-misfit warning says (``fit_sky`` finds it by it).
_MISFIT_PHRASE = "the sky model misses the lines' shape"
#: What the warnings of light in the sky rows say (``_structure_after_rows`` finds them by it).
_LEAK_PHRASE = "holds light above the sky"
_WINGS_PHRASE = "brighten towards the mask"


def _exposures_with(row_means, row):
    """The text naming the exposures whose ``row`` holds light above :data:`LEAK_LIMIT`, when not all do ("").
    (Negated means: the exposures whose row is that far below the sky.)"""
    if row is None or len(row_means) < 2:
        return ""
    lit = [k for k, m in enumerate(row_means) if np.isfinite(m[row]) and m[row] > LEAK_LIMIT]
    if not lit or len(lit) == len(row_means):
        return ""
    return f"exposure(s) {', '.join(str(k + 1) for k in lit)} of {len(row_means)} (counting from 1)"


#: Rows within this many of the brightest leaking row belong to the same light (see :func:`_other_leak`).
LEAK_SAME_PLACE = 5


def _other_leak(row_means, row, masked_rows):
    """``(value, row)`` of the brightest row holding light above :data:`LEAK_LIMIT` more than
    :data:`LEAK_SAME_PLACE` rows from ``row`` (another source, or another exposure's light), else None.

    When ``row`` lies where a masked trace's wings reach, so do the others near a mask: one warning
    ("widen the mask") says it for both sides.
    """
    same = np.zeros(len(masked_rows), bool)
    same[max(0, row - LEAK_SAME_PLACE):row + LEAK_SAME_PLACE + 1] = True
    distance = rows_from_mask(masked_rows, row)
    if distance is not None and distance <= LEAK_NEAR_MASK:
        same |= _near_mask(masked_rows, LEAK_NEAR_MASK)
    best = (0.0, None)
    for means in row_means:
        best = max(best, _extreme_row(np.where(same, np.nan, means), 1.0), key=lambda lr: lr[0])
    return best if best[1] is not None and best[0] > LEAK_LIMIT else None


#: A row's mean light above the sky (sigma per pixel, with the pixels' +3 clip) from which the leak
#: warning comes first: a source's trace (2.8 on the Goodman crop fit with no mask, or a mask beside
#: the trace); a masked trace's faint wings reach 0.3.
LEAK_FIRST = 1.0


def _leak_warning(leak, row, masked_rows, which=""):
    """The warning for light above the sky in sky row ``row``: its likely cause by where the row lies.

    ``which`` names the exposures that hold the light when not all do (a
    stack fit together: a star in one exposure made every file of a
    ``--fit-together`` run suspect with a row empty in the others, trial K3).
    """
    distance = rows_from_mask(masked_rows, row)
    where_in = f" in {which}" if which else ""
    # (Each pixel's chi is clipped at ROW_CHI_HIGH: a row at the clip is brighter than it can say.)
    level = (f"{leak:.2f} sigma per pixel on average" if leak < ROW_CHI_HIGH - 0.05
             else f"{ROW_CHI_HIGH:g} sigma or more in nearly every pixel")
    head = f"Sky row {row} {_LEAK_PHRASE}{where_in} ({level}): "
    if distance is not None and distance <= LEAK_NEAR_MASK:
        return head + (f"{distance} row(s) from the mask, where a masked trace's wings reach: widen the mask "
                       "(or mask another source there).")
    tail = ("light along the slit the sky model does not follow (a bias level left in, or the slit's "
            "illumination for a method that does not model it).")
    if distance is None:
        return head + ("with no mask: a source's trace in the sky rows? Mask its rows (mask_region=(start, "
                       f"stop), a few rows wider than the trace), or {tail}")
    return head + (f"{distance} rows from the mask, so not the masked trace's wings: another source there, or "
                   f"the trace itself if the mask is not over it (mask it), or {tail}")


#: The source-wings check: the sky rows' light without the sky's lines (``added_light_profile``) must
#: rise towards a mask from both sides by this much (sigma per pixel, nearest third of the rows on a side
#: against the farthest third) and by ``WINGS_SIGNIFICANCE`` times its error, and the faint continuum's
#: own excess with it. Exponential galaxies whose
#: wings put 0.5-1.3 sigma into the sky rows read 0.11-0.56; a trial's compact extended source, with no
#: light in the sky rows, 0.06-0.07 (tilted lines leave a trend of that size along the slit, absent when
#: they do not tilt); the Goodman full frames 0.054, the other fits of the comparison sets and trials 0.075
#: or less (but a median-of-bins fit of a quadratically lit slit, suspect already: 0.125).
WINGS_LIMIT = 0.1
WINGS_SIGNIFICANCE = 4.0
#: Rows a side needs (a third of them is compared with another third).
WINGS_MIN_ROWS = 6


def _source_wings(added, faint, masked_rows, skip):
    """``(rise, start, stop)`` for the masked range whose sky rows brighten towards it the most from
    both sides (``rise``: the smaller side's, sigma per pixel), when beyond the limits; else None.

    A side is the sky rows from the range's edge to the next masked row or the frame's edge (``skip``:
    rows left out, e.g. unlit). Its error is the rows' scatter (row to row) over the thirds' rows.
    The light without the sky's lines (``added``) must rise, and so must the faint continuum's own
    excess (``faint``): sky lines that brighten towards the slit's ends against a flat continuum
    make ``added`` rise towards a mask in the middle (a trial's OH group: 0.58-0.76), not ``faint``.
    """
    masked_rows = np.asarray(masked_rows, bool)
    usable = ~masked_rows & ~np.asarray(skip, bool) & np.isfinite(added) & np.isfinite(faint)
    best = None
    for start, stop in _ranges(masked_rows):
        rises = []
        for side in (np.arange(start - 1, -1, -1), np.arange(stop, masked_rows.size)):
            ends = np.flatnonzero(masked_rows[side])
            side = side[: ends[0]] if ends.size else side  # up to the next mask
            side = side[usable[side]]  # nearest first
            if side.size < WINGS_MIN_ROWS:
                break
            third = side.size // 3
            rise = float(np.mean(added[side[:third]]) - np.mean(added[side[-third:]]))
            steps = np.diff(added[side])
            scatter = 1.4826 * float(np.median(np.abs(steps - np.median(steps)))) / math.sqrt(2.0)
            if not (rise > WINGS_LIMIT and rise > WINGS_SIGNIFICANCE * scatter * math.sqrt(2.0 / third)):
                break
            if not np.mean(faint[side[:third]]) - np.mean(faint[side[-third:]]) > WINGS_LIMIT:
                break
            # Wings keep rising up to the mask's edge; light that peaks farther out and falls towards
            # the mask (scattered light's broad bump 20 rows off, trial K1: "widen the mask" for a
            # right sky) is not the masked source's.
            sixth = max(2, side.size // 6)
            falls = np.mean(added[side[sixth:2 * sixth]]) - np.mean(added[side[:sixth]])
            if falls > 2.0 * scatter * math.sqrt(2.0 / sixth):
                break
            rises.append(rise)
        if len(rises) == 2 and (best is None or min(rises) > best[0]):
            best = (min(rises), int(start), int(stop))
    return best


def _wings_check(rows, effpix, flux, level, gain, read_noise, masked_rows, skip):
    """The source-wings warning for the sky samples (``flux`` and the sky ``level`` per exposure), or ""."""
    added, faint = added_light_profile(rows, effpix, flux, level,
                                       np.clip(level, 0, None) / gain + (read_noise / gain) ** 2, masked_rows.size)
    wings = _source_wings(added, faint, masked_rows, skip)
    return "" if wings is None else _wings_warning(*wings)


def _wings_warning(rise, start, stop):
    return (f"The sky rows {_WINGS_PHRASE} {start}:{stop} from both sides, with light that lacks "
            f"the sky's lines ({rise:.2f} sigma per pixel more next to the mask than farther out): a source's "
            "wings, or an extended source, reach the sky rows, so the sky there and under the mask holds its "
            "light. Widen the mask, or take the sky from rows (or an exposure) without the source.")


def _constant_exposures(flux):
    """``[(k, value)]`` of the exposures whose finite sky samples all hold one value (an all-zero frame)."""
    out = []
    for k, row in enumerate(flux):
        # A spread subsample first: a sky that varies shows it there, and only a constant one is read whole.
        few = row[:: max(1, row.size // 4096)]
        few = few[np.isfinite(few)]
        if few.size and few.min() == few.max():
            every = row[np.isfinite(row)]
            if every.min() == every.max():
                out.append((k, float(every[0])))
    return out


#: fit_sky's own B-spline options, and those it hands on to fit_bspline_sky as given.
_FIT_SKY_BSPLINE_OPTIONS = ("spatial_order", "unlit", "flexure", "sky_warp", "slit_correction", "knots",
                            "knot_spacing", "coarse_spacing", "knot_threshold")
_PASSED_TO_BSPLINE = {"reject_sigma", "max_iterations", "min_variance", "singular_guard"}

#: Fewer lit sky rows than this make the fit suspect, if they are less than this fraction of the lit slit.
MIN_SKY_ROWS = 20
MIN_SKY_FRACTION = 0.5

#: Fewer sky samples than this per sky-model coefficient make the fit suspect.
MIN_SAMPLES_PER_COEFFICIENT = 4

#: A stretch of effective pixels this wide (or wider) without a sky sample is reported.
GAP_WARN_PX = 1.0

#: The fit's own uncertainty of the sky under the masked rows (RMS over them, in units of the pixels'
#: noise) above which the fit is suspect. Good fits: 0.09-0.31 (the demo 0.09, the Goodman crop 0.20,
#: slits of 25-50 rows 0.13-0.20, ten sky rows at each end of 100-300 0.18-0.31); seven sky rows of 40,
#: the sky under the mask 2.4 sigma off: 3.4; trial O1's wide masks with a false flexure start (since
#: fixed), 1.6-12 sigma off under "ok": 0.45-319.
MASKED_PRECISION_LIMIT = 0.4

#: Masked pixels looked at for it (a scattered subsample).
_PRECISION_PIXELS = 20_000

#: Dead or hot columns (see _bad_columns): a dip below this fraction of the
#: column's continuum, or a spike above this many times the pixels beside it,
#: by BAD_COLUMN_SIGMA noise sigmas, in at least these fractions of the sky rows.
BAD_COLUMN_DIP = 0.5
BAD_COLUMN_SPIKE = 5.0
BAD_COLUMN_DIP_ROWS = 0.5
BAD_COLUMN_SPIKE_ROWS = 0.5
BAD_COLUMN_SIGMA = 4.0
#: Pixels each side a column is compared with (its continuum: among the faintest of them).
BAD_COLUMN_REACH = 12
#: And for a dip, its continuum also among the faintest this far each side.
BAD_COLUMN_DIP_REACH = 40
#: A spike is judged only where the lines move by this many columns over the
#: sky rows: a narrow line that stays in one column is a spike too.
BAD_COLUMN_SPIKE_TILT = 2.0
#: Fewer sky rows than this cannot tell a bad column from the sky.
BAD_COLUMN_MIN_ROWS = 10


def _dips_and_spikes(x, gain, rn_var, dip_factor=BAD_COLUMN_DIP, spike_factor=BAD_COLUMN_SPIKE):
    """``(dip, spike)``: where the middle of ``2 * BAD_COLUMN_DIP_REACH + 1`` pixels (last axis; NaN beyond a
    frame's edge) is one that no sky makes.

    A dip: below ``dip_factor`` (:data:`BAD_COLUMN_DIP`) times the third
    faintest of the others within :data:`BAD_COLUMN_REACH` and within
    :data:`BAD_COLUMN_DIP_REACH`, the fainter (the sky's continuum, with
    room for two more bad columns; sky is never fainter than its continuum,
    and the valleys between lines keep it too; a valley between two bright
    lines 10 px apart has few columns at the continuum near it). A spike:
    above ``spike_factor`` (:data:`BAD_COLUMN_SPIKE`) times the brightest
    of the four within 2 px (a sky line 1.3 px wide, FWHM, peaks at up to
    ~2.5 times the pixel beside it; two hot columns side by side are not
    told from such a line). With ``gain`` (None: means, no noise test) also
    off by :data:`BAD_COLUMN_SIGMA` noise sigmas (a dip from the others'
    median within :data:`BAD_COLUMN_REACH`, a spike from that brightest).
    NaN pixels count as neither.
    """
    w = BAD_COLUMN_DIP_REACH
    mid = x[..., w]
    # (The continuum farther out: a 101 sigma sky, "ok", where a valley's column was taken for a dead one.)
    far = np.partition(np.delete(x, w, axis=-1), 2, axis=-1)[..., 2]  # (NaN last)
    near = x[..., w - BAD_COLUMN_REACH:w + BAD_COLUMN_REACH + 1]
    c = BAD_COLUMN_REACH
    others = np.sort(np.delete(near, c, axis=-1), axis=-1)
    n_finite = np.count_nonzero(np.isfinite(others), axis=-1)
    low = np.fmin(others[..., 2], far)
    typical = np.take_along_axis(others, np.maximum(n_finite // 2, 0)[..., None], axis=-1)[..., 0]
    high = np.max(np.nan_to_num(near[..., [c - 2, c - 1, c + 1, c + 2]], nan=-np.inf), axis=-1)
    with np.errstate(invalid="ignore"):
        dip = (mid < dip_factor * low) & (n_finite >= 3)
        spike = (mid > spike_factor * high) & np.isfinite(high)
        if gain is not None:
            limit = BAD_COLUMN_SIGMA**2
            dip &= (typical - mid) ** 2 > limit * (np.clip(typical, 0, None) / gain + rn_var)
            spike &= (mid - high) ** 2 > limit * (np.clip(high, 0, None) / gain + rn_var)
    return dip, spike


def _column_travel(emap, sky_rows):
    """How far the lines move in each column over ``sky_rows`` (sorted): the effective pixel's change from the
    first to the last, px."""
    return np.abs(emap[sky_rows[-1]] - emap[sky_rows[0]])


def _some_rows(sky_rows):
    """At most ~256 of the sky rows, evenly spread: enough for each column's mean."""
    return sky_rows[:: max(1, sky_rows.size // 256)]


def _column_means(part):
    """Each column's mean over the rows of ``part`` (NaN left out; NaN for a column without a value)."""
    finite = np.isfinite(part)
    means = np.where(finite, part, 0.0).sum(axis=0) / np.maximum(finite.sum(axis=0), 1)
    means[~finite.any(axis=0)] = np.nan
    return means


def _bad_columns(stack, masked_rows, samples, gain, read_noise, emap):
    """``(columns, samples)``: dead or hot detector columns, and (per exposure) every sky sample of them.

    A column is bad when, in at least :data:`BAD_COLUMN_DIP_ROWS` of its sky
    rows (with a finite value), it is a dip that no sky makes, or in
    :data:`BAD_COLUMN_SPIKE_ROWS` of them a spike, judged only where the
    lines move by :data:`BAD_COLUMN_SPIKE_TILT` columns or more over the sky
    rows (``emap``, the effective-pixel map) (:func:`_dips_and_spikes`). Only
    the columns whose mean over (at most ~256) sky rows is such a dip or
    spike, looser by half, are read row by row. ``samples`` is None when
    there is none.
    """
    sky = ~np.asarray(masked_rows, bool)
    sky_rows = np.flatnonzero(sky)
    n_sky = sky_rows.size
    n_exp, _, n_cols = stack.shape
    reach = BAD_COLUMN_REACH
    if n_sky < BAD_COLUMN_MIN_ROWS or n_cols < 2 * reach + 1:
        return [], None
    columns, flags = set(), None
    rn_var = (read_noise / gain) ** 2
    wide = BAD_COLUMN_DIP_REACH
    window = np.arange(-wide, wide + 1)
    inner = np.arange(reach, n_cols - reach)
    tilted = _column_travel(emap, sky_rows) >= BAD_COLUMN_SPIKE_TILT
    some = _some_rows(sky_rows)
    for k in range(n_exp):
        means = np.pad(_column_means(stack[k][some]), wide, constant_values=np.nan)  # (NaN beyond the edges)
        # Candidates: the means' dips or spikes, judged half as strictly (a column bad in part of its rows).
        dip, spike = _dips_and_spikes(means[inner[:, None] + window + wide], None, 0.0,
                                      (1 + BAD_COLUMN_DIP) / 2, (1 + BAD_COLUMN_SPIKE) / 2)
        cand = inner[dip | (spike & tilted[inner])]
        if not cand.size:
            continue
        # Only the candidates' windows are read (rows and columns at once: no copy of the sky rows).
        cols = (cand[:, None] + window).ravel()
        x = np.asarray(stack[k][np.ix_(sky_rows, np.clip(cols, 0, n_cols - 1))], dtype=float)
        x[:, (cols < 0) | (cols >= n_cols)] = np.nan
        x = x.reshape(n_sky, cand.size, -1)
        dip, spike = _dips_and_spikes(x, gain, rn_var)
        n_valid = np.maximum(np.count_nonzero(np.isfinite(x[..., wide]), axis=0), 1)
        bad_dip = np.count_nonzero(dip, axis=0) >= BAD_COLUMN_DIP_ROWS * n_valid
        bad_spike = (np.count_nonzero(spike, axis=0) >= BAD_COLUMN_SPIKE_ROWS * n_valid) & tilted[cand]
        bad = cand[bad_dip | bad_spike]
        if not bad.size:
            continue
        is_bad = np.zeros(n_cols, bool)
        is_bad[bad] = True
        if flags is None:
            flags = np.zeros((n_exp, samples.index.size), bool)
        flags[k] = is_bad[samples.index % n_cols]
        columns.update(int(col) for col in bad)
    return sorted(columns), flags


#: A column whose sky pixels the fit's sky misses by this many noise sigmas on average over the sky
#: rows (at ``COLUMN_MISFIT_Z`` standard errors) is misfit (see _column_misfit); in every exposure
#: (a trail of cosmic rays along a column is in one), the fit is suspect.
COLUMN_MISFIT_MEAN = 1.0
COLUMN_MISFIT_Z = 8.0


#: A column beside a defect's that the fit's sky misses the other way by this many standard errors
#: (see _defect_columns).
COLUMN_VICTIM_Z = 3.0
#: A defect is told from the sky only where the lines move by at least this many px over the sky rows.
DEFECT_MIN_SPAN = 1.0


def _column_misfit(stack, background, sky_rows, gain, read_noise, known):
    """``(means, z, off)``: each exposure's column means of chi over the sky rows and their
    significance (:func:`quality.column_chi_means`; 0 in ``known``), and where (``(n_exposures,
    n_cols)``) the fit's sky misses a column by :data:`COLUMN_MISFIT_MEAN` sigmas per pixel on
    average, at :data:`COLUMN_MISFIT_Z` standard errors; nowhere on fewer than
    ``BAD_COLUMN_MIN_ROWS`` rows."""
    n_exp, _, n_cols = stack.shape
    means, z = np.zeros((2, n_exp, n_cols))
    if sky_rows.size >= BAD_COLUMN_MIN_ROWS:
        for k in range(n_exp):
            means[k], z[k] = column_chi_means(stack[k], background[k], sky_rows, gain, read_noise)
    means[:, list(known)] = z[:, list(known)] = 0.0
    off = (np.abs(means) >= COLUMN_MISFIT_MEAN) & (np.abs(z) >= COLUMN_MISFIT_Z)
    return means, z, off


def _defect_columns(means, z, off, emap, sky_rows):
    """Columns of defects the fit took for sky.

    Runs of columns the sky misses the same way in every exposure (``off``
    of :func:`_column_misfit`), where the lines move by
    :data:`DEFECT_MIN_SPAN` px or more over the sky rows, with a column
    missed the other way (at :data:`COLUMN_VICTIM_Z`) on a side as near as
    the lines move, are grouped where they lie that near each other; of
    each group, the run missed the most (its ``|z|`` summed) is taken for
    the defect.

    A hot column the dip/spike test passed (two side by side under a sky
    line look like the line in each row) makes the fit's line brighter: the
    hot columns stay above the model, and columns on one side or both, which
    see the same effective pixels in other rows, fall below it (a cold one
    the other way round); the defect is missed by more than the columns it
    pulls. Where the lines move less than a pixel, a narrow line that stays
    in one column is missed like that too: a defect is not told from the
    sky. (The caller keeps the new fit only if it mends the columns about
    it, and the defect is then off the sky in nearly every row: a step
    between amplifiers is not.)
    """
    n_cols = means.shape[1]
    span = _column_travel(emap, sky_rows)
    signs = np.where(off.all(axis=0), np.sign(means[0]), 0).astype(int)
    signs[(np.sign(means) != signs).any(axis=0)] = 0
    edges = np.flatnonzero(np.diff(np.r_[0, signs, 0]))
    runs = []  # (start, stop, sum of |z|, reach)
    for a, b in zip(edges[:-1], edges[1:]):
        sign = signs[a]
        if not sign or span[a:b].min() < DEFECT_MIN_SPAN or a == 0 or b == n_cols:
            continue
        reach = int(np.ceil(span[a:b].max())) + 1  # (the columns that share its effective pixels)
        left, right = sign * z[:, max(a - reach, 0):a], sign * z[:, b:b + reach]
        pulled = (left.min(axis=1, initial=0) <= -COLUMN_VICTIM_Z) | (right.min(axis=1, initial=0) <= -COLUMN_VICTIM_Z)
        if pulled.all():
            runs.append((int(a), int(b), float(np.abs(z[:, a:b]).sum()), reach))
    found, group = [], []
    for run in runs + [None]:
        if group and (run is None or run[0] - group[-1][1] > max(run[3], group[-1][3])):
            a, b, _, _ = max(group, key=lambda r: r[2])
            found.extend(range(a, b))
            group = []
        if run is not None:
            group.append(run)
    return found


#: A defect's columns, left out, sit the same way off the new fit's sky in every exposure, by at least
#: this much: (rows off that way - rows off the other way) / rows, 0.95 when 97.5 % are (see _one_sided).
DEFECT_BALANCE = 0.95


def _one_sided(stack, background, sky_rows, columns, signs):
    """Whether ``columns`` sit off the sky the ``signs`` way in nearly every sky row (by
    :data:`DEFECT_BALANCE`), in every exposure: a detector's defect, there in every row; sky
    structure the fit misses (a step between amplifiers: 0.76-0.87) comes and goes with the sky."""
    for k in range(stack.shape[0]):
        with np.errstate(invalid="ignore"):
            off = np.sign(stack[k][np.ix_(sky_rows, columns)] - background[k][np.ix_(sky_rows, columns)])
        if np.any(signs * np.nanmean(off, axis=0) < DEFECT_BALANCE):
            return False
    return True


def _around(columns, reach, n_cols):
    """The columns within ``reach`` of ``columns``, but not those."""
    near = np.zeros(n_cols, bool)
    for c in columns:
        near[max(c - reach, 0):c + reach + 1] = True
    near[columns] = False
    return near


#: Residuals averaged in 8 x 8 blocks scattering this many times more than pixel by pixel (in every
#: exposure) make the fit suspect (see quality.block_chi_scatter): the trials' clean fits 0.96-1.01,
#: the Goodman frames 1.04-1.10, G2's fringes 1.37-3.6.
BLOCK_SCATTER_LIMIT = 1.3


_STRUCTURE_HEAD = "The residuals (data minus sky) averaged in blocks of"
_STRUCTURE_CAUSE = ("Fringes (red wavelengths) or a flat-field pattern do this: divide the frames by a flat field "
                    "(and a fringe frame) before the sky fit; so does light across part of the frame that is not "
                    "the sky's (a satellite's or meteor's trail: leave that exposure out, or mask its rows).")


def _structure_warning(structure):
    return (f"{_STRUCTURE_HEAD} {BLOCK_SIZE} x {BLOCK_SIZE} pixels scatter "
            f"{structure:.2f} times more than noise allows (specwidgets.core.sky.quality.block_chi_scatter): "
            f"structure over the frame that the sky model, one spectrum along the slit, does not follow. "
            f"{_STRUCTURE_CAUSE}")


#: Residuals averaged in small blocks of adjacent rows (:data:`quality.FINE_BLOCKS`), less their mean at each
#: effective pixel, scattering this many times more than pixel by pixel (in every exposure) make the fit
#: suspect (see quality.fine_chi_scatter).
FINE_SCATTER_LIMIT = 1.2


def _fine_structure_warning(fine):
    sizes = [f"{h} x {w}" for h, w in FINE_BLOCKS]
    blocks = ", ".join(sizes[:-1]) + f" or {sizes[-1]}"
    return (f"{_STRUCTURE_HEAD} {blocks} pixels (rows x columns), less their mean at each effective pixel, "
            f"scatter {fine:.2f} times more than noise allows (specwidgets.core.sky.quality.fine_chi_scatter): a "
            f"pattern of a few pixels fixed to the detector, which no sky spectrum along the slit holds. {_FINE_CAUSE}")


_FINE_CAUSE = ("Fringes at high dispersion, a readout's pick-up noise (a pattern a bias frame does not repeat), or "
               "columns that differ from their neighbours (an odd-even pattern, readout channels' own bias levels) do "
               "this: divide the frames by a flat field and a fringe frame, or take the pattern out (channels and "
               "columns: from reference pixels or the overscan), before the sky fit.")


def _structure_after_rows(warnings):
    """``warnings`` with the block-scatter one after those naming light in sky rows, which it then names
    as the likely cause: an unmasked faint source (or a persistence ghost) raises the blocks' scatter too,
    and "fringes" came first where there were none (trial J2)."""
    rows = [w for w in warnings if _LEAK_PHRASE in w or _WINGS_PHRASE in w]
    structure = [w for w in warnings if w.startswith(_STRUCTURE_HEAD)]
    if not rows or not structure:
        return warnings
    moved = structure[0].replace(_FINE_CAUSE, _STRUCTURE_CAUSE).replace(_STRUCTURE_CAUSE, (
        "The light in the sky rows named above does this (mask it first); so do fringes (red wavelengths) "
        "or a flat-field pattern, which a flat field (and a fringe frame) takes out."))
    return [w for w in warnings if w is not structure[0]] + [moved]


#: Effective-pixel bins (px) in which the sky spectrum's misfit is read (all exposures and sky rows together),
#: and a bin's misfit (mean chi per pixel, and its standard errors) that asks for finer knots there.
EFFPIX_MISFIT_BIN = 0.25
EFFPIX_MISFIT_MEAN = 0.5
EFFPIX_MISFIT_Z = 8.0
#: Bins with fewer samples are not judged.
EFFPIX_MISFIT_MIN_COUNT = 20
#: Finer knots reach this far (px) on each side of a missed bin.
EFFPIX_REFINE_REACH = 1.5


@dataclass
class _EffpixMisfit:
    """Bins of effective pixel the sky model misses (``bins``, their centres ``centres``), and their chi-square."""

    bins: np.ndarray
    centres: np.ndarray
    chi2: float
    total: float  # (over every bin judged)


def _effpix_misfit(stack, background, rejected, sky_rows, emap, shifts, t_rows, gain, read_noise, known, extent,
                   bins=None):
    """The bins of :data:`EFFPIX_MISFIT_BIN` px the sky misses by :data:`EFFPIX_MISFIT_MEAN` sigma per pixel
    at :data:`EFFPIX_MISFIT_Z` standard errors (or the given ``bins``), the clipped chi of at most
    ``COLUMN_CHI_ROWS`` sky rows averaged over the exposures, their kept pixels (``known`` columns left
    out; :func:`quality.effpix_chi_sums`); None when there are none. Exposure ``k``'s effective pixel
    is ``emap - shifts[k] * t_rows`` (its flexure).

    A sky line's shape the model misses in every row is missed at the same
    effective pixels, whatever the columns (the lines tilt): the column check
    does not see it.
    """
    if sky_rows.size < BAD_COLUMN_MIN_ROWS:
        return None
    n_bins = int(np.ceil((extent[1] - extent[0]) / EFFPIX_MISFIT_BIN)) + 1
    skip = np.zeros(stack.shape[2], bool)
    skip[list(known)] = True
    sums, counts = np.zeros(n_bins), np.zeros(n_bins)
    for k in range(stack.shape[0]):
        s_k, c_k = effpix_chi_sums(stack[k], background[k], rejected[k], sky_rows, emap,
                                   (shifts[k], t_rows) if shifts[k] else None, gain, read_noise, extent[0],
                                   EFFPIX_MISFIT_BIN, n_bins, skip)
        sums += s_k
        counts += c_k
    means = sums / np.maximum(counts, 1.0)
    z = means * np.sqrt(counts)
    judged = counts >= EFFPIX_MISFIT_MIN_COUNT
    if bins is None:
        bins = np.flatnonzero(judged & (np.abs(means) >= EFFPIX_MISFIT_MEAN) & (np.abs(z) >= EFFPIX_MISFIT_Z))
        if not bins.size:
            return None
    return _EffpixMisfit(bins, extent[0] + (bins + 0.5) * EFFPIX_MISFIT_BIN, float(np.sum(z[bins] ** 2)),
                         float(np.sum(z[judged] ** 2)))


def _refined_table(table, misfit, fine):
    """The stretched coordinate ``(grid_e, u)`` with knots every ``fine`` px (or closer, as they were) within
    :data:`EFFPIX_REFINE_REACH` px of the missed bins; None when they are that fine there already."""
    grid_e, u = table
    slope = np.gradient(u, grid_e)
    near = np.zeros(grid_e.size, bool)
    for centre in misfit.centres:
        near |= np.abs(grid_e - centre) <= EFFPIX_REFINE_REACH
    if not near.any() or np.all(slope[near] >= 0.99 / fine):
        return None
    slope = np.where(near, np.maximum(slope, 1.0 / fine), slope)
    return grid_e, np.concatenate([[0.0], np.cumsum(0.5 * (slope[1:] + slope[:-1]) * np.diff(grid_e))])


def _missed_columns(stack, background, rejected, sky_rows, gain, read_noise, columns, means):
    """Of ``columns`` (off in every exposure; ``means`` their column means of chi, every pixel counted,
    from :func:`_column_misfit`), those the sky also misses on the pixels the fit kept (the same way,
    at :data:`COLUMN_VICTIM_Z` standard errors, in every exposure).

    A column whose excess is all in pixels the fit rejected is data the sky
    did not follow, rightly: a cosmic-ray trail along it (~50 of 180 rows, one
    exposure: a mean chi of 1.3 with them, -0.07 without), which the row and
    rejection checks answer for. (A step between amplifiers keeps most of
    its misfit: 1.06-1.14 with its few rejected pixels, 0.94-1.07 without.)
    """
    columns = np.asarray(columns, dtype=np.int64)
    if not columns.size:
        return columns
    keep = np.ones(columns.size, bool)
    for k in range(stack.shape[0]):
        z = column_chi_means(stack[k], background[k], sky_rows, gain, read_noise, rejected=rejected[k])[1][columns]
        keep &= (np.sign(z) == np.sign(means[k, columns])) & (np.abs(z) >= COLUMN_VICTIM_Z)
    return columns[keep]


def _misfit_columns_warning(columns, worst):
    listed = ", ".join(map(str, columns[:8])) + (f" and {len(columns) - 8} more" if len(columns) > 8 else "")
    return (f"The sky misses column(s) {listed} by up to {worst:.1f} sigma per pixel, on average over the sky "
            "rows: a defect the fit took for sky (a hot or trapped column under a sky line), or a line whose "
            "shape it does not follow there. The sky of these columns (and of the science under them) is not to "
            "be trusted; set a defect's columns to NaN to leave them out of the fit.")


#: Bins of effective pixel (px) in which :func:`_unmeasured_effpix` counts the rejected samples.
UNMEASURED_BIN = 0.5
#: A bin in which the fit rejected more than this fraction of its samples (at least
#: :data:`UNMEASURED_MIN_SAMPLES` of them), in some exposure, holds a sky that no data hold.
UNMEASURED_FRACTION = 0.5
UNMEASURED_MIN_SAMPLES = 10
_CHUNK = 1 << 20


def _unmeasured_effpix(models, samples, shifts, t_samples, bad_columns, n_cols):
    """``[(start, stop), ...]``: runs of effective pixels (bins of :data:`UNMEASURED_BIN`) where the fit
    rejected more than :data:`UNMEASURED_FRACTION` of the sky samples, from two columns or more, in some
    exposure (those of ``bad_columns``, already named, left out).

    Rejection is for a few samples (cosmic rays); where it took most of
    them, the model, pulled away from the data, rejected the rest in turn,
    and the sky there followed nothing: three columns at 0.85 response under
    the brightest line left its core without a sample, and the sky there
    2.7x the highest data value, up to 323 sigma off in every row, with only
    the three columns named (trial G). A cosmic ray's track along a column
    where the lines hardly tilt fills a bin too, from one column, the sky
    there right (trial V2: "suspect" for one track).
    """
    if not models or not samples.index.size:
        return []
    bad = np.zeros(n_cols, bool)
    bad[list(bad_columns)] = True
    lo = float(np.nanmin(samples.effpix)) - 2.0
    n_bins = int((float(np.nanmax(samples.effpix)) + 2.0 - lo) / UNMEASURED_BIN) + 1
    found = np.zeros(n_bins, bool)
    sorted_counts = None

    def bins_of(e):
        return ((e - lo) * (1.0 / UNMEASURED_BIN)).astype(np.int64).clip(0, n_bins - 1)

    for k, model in enumerate(models):
        outliers = np.flatnonzero(model.rejected & ~model.excluded)
        if outliers.size < UNMEASURED_FRACTION * UNMEASURED_MIN_SAMPLES:
            continue
        if not shifts[k]:
            # The samples are sorted by effective pixel: each bin's count is a search, and only the few
            # samples to leave out (excluded, bad columns) are binned one by one.
            if sorted_counts is None:
                edges = lo + UNMEASURED_BIN * np.arange(n_bins + 1)
                sorted_counts = np.diff(np.searchsorted(samples.effpix, edges)).astype(float)
                if bad.any():
                    on_bad = np.flatnonzero(bad[samples.index % n_cols])
                    sorted_counts -= np.bincount(bins_of(samples.effpix[on_bad]), minlength=n_bins)
            counts = sorted_counts.copy()
            dropped = np.flatnonzero(model.excluded)
            if bad.any():
                dropped = dropped[~bad[samples.index[dropped] % n_cols]]  # (counted out above)
            counts -= np.bincount(bins_of(samples.effpix[dropped]), minlength=n_bins)
            e_out = samples.effpix[outliers]
        else:
            counts = np.zeros(n_bins)
            # (In chunks: a frame's samples at once would need their bins' index, 128 MB on 4096 x 4096.)
            for start in range(0, samples.index.size, _CHUNK):
                part = slice(start, start + _CHUNK)
                e = samples.effpix[part] - shifts[k] * t_samples[part]
                use = ~model.excluded[part] & ~bad[samples.index[part] % n_cols]
                counts += np.bincount(bins_of(e[use]), minlength=n_bins)
            e_out = samples.effpix[outliers] - shifts[k] * t_samples[outliers]
        out_bins, out_cols = bins_of(e_out), samples.index[outliers] % n_cols
        hit = np.bincount(out_bins[~bad[out_cols]], minlength=n_bins)
        held = counts >= UNMEASURED_MIN_SAMPLES
        # (Two columns or more, a bad column's among them (a step at an overscan left in rejects the last
        # lit column and its neighbour): the distinct (bin, column) pairs of the rejected samples, per bin.)
        pairs = np.unique(out_bins * np.int64(n_cols) + out_cols)
        columns = np.bincount(pairs // n_cols, minlength=n_bins)
        found |= held & (hit > UNMEASURED_FRACTION * counts) & (columns >= 2)
    if not found.any():
        return []
    edges = np.flatnonzero(np.diff(np.r_[0, found.astype(np.int8), 0]))
    return [(lo + a * UNMEASURED_BIN, lo + b * UNMEASURED_BIN) for a, b in zip(edges[::2], edges[1::2])]


def _unmeasured_warning(runs, emap, sky_rows, background, stack, shifts, t_rows):
    """The warning for :func:`_unmeasured_effpix`'s ``runs``: where they fall in the sky rows, and how far the
    sky there is from the data there."""
    rows = _spread(sky_rows)
    # Each exposure's effective pixels on those rows, its shift applied (once, not per run).
    effpix = [emap[rows] - shift * t_rows[rows][:, None] if shift else emap[rows] for shift in shifts]
    parts = []
    worst = None
    for a, b in runs[:5]:
        cols = set()
        for k, e in enumerate(effpix):
            inside = (e >= a) & (e < b)
            cols.update(np.flatnonzero(inside.any(axis=0)).tolist())
            if inside.any():
                sky, data = background[k][rows][inside], stack[k][rows][inside]
                with np.errstate(invalid="ignore"):
                    ratio = float(np.nanmax(sky) / np.nanmax(data)) if np.nanmax(data) > 0 else math.nan
                worst = ratio if worst is None or ratio > worst else worst
        where = f" (columns {min(cols)}-{max(cols)} in the sky rows)" if cols else ""
        parts.append(f"{a:.1f}-{b:.1f}{where}")
    more = f" and {len(runs) - 5} more" if len(runs) > 5 else ""
    far = (f"; its highest value there is {worst:.2g} times the highest data value there"
           if worst is not None and math.isfinite(worst) and worst > 1.1 else "")
    return (f"The fit rejected most of the sky samples at effective pixels {', '.join(parts)}{more}: no data hold "
            f"the sky there, which may be far off in every row{far}. A defect under a sky line (columns of lower or "
            "higher response, not flat-fielded), a line whose shape changes along the slit, or the step at an "
            "overscan left in does this: divide by a flat field, or set the defect's columns to NaN (trim the "
            "overscan), and fit again.")


def _rejected_columns(rejected, not_sky):
    """Columns whose sky pixels the fit rejected in at least half of the sky rows, in any exposure."""
    sky = ~np.asarray(not_sky, bool)
    n_sky = int(np.count_nonzero(sky))
    if n_sky < BAD_COLUMN_MIN_ROWS or rejected is None or not np.size(rejected):
        return []
    found = set()
    for k in range(rejected.shape[0]):
        counts = np.count_nonzero(rejected[k][sky], axis=0)
        found.update(int(c) for c in np.flatnonzero(counts >= 0.5 * n_sky))
    return sorted(found)


#: A block of at least this many columns at the frame's left or right edge, each with its sky rows' mean
#: below ``UNLIT_FRACTION`` of the median column's: no light there (an overscan or prescan left in).
DARK_EDGE_MIN_COLUMNS = 3
#: Bad columns this close to such a block's inner edge are its step's misfit.
DARK_EDGE_REACH = 5


def _dark_edge_columns(stack, masked_rows, gain, read_noise):
    """``[(start, stop)]``: blocks of columns at the frame's edges whose sky rows hold no light, in every exposure
    (columns without a value at the very edge counted with them; at least :data:`DARK_EDGE_MIN_COLUMNS` dark)."""
    sky_rows = np.flatnonzero(~np.asarray(masked_rows, bool))
    n_exp, _, n_cols = stack.shape
    if sky_rows.size < 4 or n_cols < 4 * DARK_EDGE_MIN_COLUMNS:
        return []
    some = _some_rows(sky_rows)
    dark = np.ones(n_cols, bool)
    empty = np.ones(n_cols, bool)
    for k in range(n_exp):
        means = _column_means(stack[k][some])
        bright = float(np.nanmedian(means)) if np.isfinite(means).any() else np.nan
        # The lit columns must stand clear of a column mean's noise (read noise alone, in data units).
        if not bright > 10 * (read_noise / gain) / math.sqrt(some.size):
            return []
        empty &= np.isnan(means)
        dark &= (means < UNLIT_FRACTION * bright) | np.isnan(means)
    # Columns without a value at the very edge (trimmed to NaN) come before the dark ones; a block needs
    # dark columns of its own (trial A2: NaN in columns 0-9 before an overscan hid it, 4.7 sigma beside it).
    blocks = []
    left = int(np.argmin(dark)) if not dark.all() else n_cols
    right = int(np.argmin(dark[::-1])) if not dark.all() else n_cols
    if left < n_cols and np.count_nonzero(~empty[:left]) >= DARK_EDGE_MIN_COLUMNS:
        blocks.append((0, left))
    if right < n_cols and np.count_nonzero(~empty[n_cols - right:]) >= DARK_EDGE_MIN_COLUMNS:
        blocks.append((n_cols - right, n_cols))
    return blocks


def _beside_mask_warning(ratio, rows, n, limit):
    """The warning for sky rows beside the mask that fit the sky lines worse than the others."""
    return (f"The sky rows beside the mask ({rows[0]}-{rows[1] - 1}) miss the sky lines more than the other sky "
            f"rows: on the lines' peaks their residuals' chi-square is {ratio:.1f} times the others' (the same on "
            f"the continuum; above {limit:.2f} is not noise). The sky under the mask comes from the same model "
            "beside it and is probably off at the lines as much. Lines narrow for the pixels (FWHM under ~1.5 px) "
            "that hardly tilt leave the rows near the slit's ends sampling positions along the lines the other "
            "rows do not; lines changing along the slit near its end do the same. Unmask rows the target leaves "
            "free, put the target nearer the slit's middle, or check the warp model and spatial_order.")


#: A lit column beside a dark edge block whose mean chi over the sky rows is this many standard errors
#: from 0, and at least ``DARK_EDGE_MEAN`` (a step's misfit: 4.7-5.5 on trial F1's overscan), in some
#: exposure, is the block's step misfit. (The significance alone took a bright line's 0.3-0.8 beside a
#: dark block, on 300 rows, for one: trial A2.)
DARK_EDGE_Z = 8.0
DARK_EDGE_MEAN = 1.5


def _misfit_beside_edge(result, sky_rows, start, stop, n_cols):
    """Whether the sky misses a lit column within :data:`DARK_EDGE_REACH` of the dark block ``start:stop``
    at the frame's edge by :data:`DARK_EDGE_Z` standard errors and :data:`DARK_EDGE_MEAN`, in some exposure."""
    beside = (np.arange(stop, min(n_cols, stop + DARK_EDGE_REACH)) if start == 0
              else np.arange(max(0, start - DARK_EDGE_REACH), start))
    rows = np.flatnonzero(sky_rows)
    if not beside.size or not rows.size:
        return False
    for k in range(result.data.shape[0]):
        # (Each column's mean is its own: the few columns beside the block, not the frame.)
        means, z = column_chi_means(result.data[k][:, beside], result.background[k][:, beside], rows, result.gain,
                                    result.read_noise)
        if np.any((np.abs(z) >= DARK_EDGE_Z) & (np.abs(means) >= DARK_EDGE_MEAN)):
            return True
    return False


def _dark_edge_warning(blocks, n_cols):
    listed = " and ".join(f"{a}-{b - 1}" for a, b in blocks)
    lit = (blocks[0][1] if blocks[0][0] == 0 else 0, blocks[-1][0] if blocks[-1][1] == n_cols else n_cols)
    return (f"Columns {listed} (counting from 0), at the frame's edge, hold no sky light: an overscan or prescan "
            "region left in the frames? The sky model's edge is a step there that it does not follow, and the "
            "columns beside it are off. Trim them when reading the frames (trimsec= with the data section, e.g. "
            f"columns {lit[0] + 1}-{lit[1]} in FITS numbering).")


def _masked_precision(model, e, rows):
    """The RMS over pixels at effective pixels ``e`` of rows ``rows`` of the model's own standard error in
    units of the pixel's noise: ``sqrt(mean(model variance / noise variance))``."""
    ratio = model.model_variance(e, rows) / model.noise_variance(e, rows)
    ratio = ratio[np.isfinite(ratio)]
    return float(np.sqrt(np.mean(ratio))) if ratio.size else 0.0


def _precision_warning(precision):
    return (f"The sky under the masked rows is poorly determined: the fit's own uncertainty there is {precision:.2g} "
            "times the pixels' noise (RMS; well-sampled fits 0.1-0.25), and its errors there can reach several "
            "sigma. The sky rows sample too few of the positions along the lines that the masked rows need (few sky "
            "rows beside a wide mask, on tilted lines); unmask rows the target leaves free, or add exposures with the "
            "target elsewhere on the slit. The variance of the background (VAR) includes this uncertainty.")


def _gap_warning(models, stack, emap):
    """The warning for effective pixels the sky rows left without a sample (the B-spline bridges them), or "".

    Only for gaps where some pixel of ``stack`` holds data: a detector's gap
    between CCDs (NaN in every row, as a mosaic gives it) needs no sky, and
    made every such frame suspect."""
    spans = sorted({(round(a, 1), round(b, 1)) for m in models for a, b in m.gaps() if b - a >= GAP_WARN_PX})
    if spans:
        finite = np.isfinite(stack).any(axis=0)
        spans = [(a, b) for a, b in spans if np.any(finite & (emap > a) & (emap < b))]
    if not spans:
        return ""
    listed = ", ".join(f"{a:g}-{b:g}" for a, b in spans[:5]) + (f" and {len(spans) - 5} more" if len(spans) > 5 else "")
    return (f"The sky rows hold no usable sample at effective pixels {listed}: the sky there is bridged smoothly "
            "from both sides, not measured, and a sky line inside would be missed. NaN or bad columns in the sky "
            "rows do this, or a fit that rejected every sample there (a model that misses them); method='median' "
            "leaves such pixels NaN.")


def _assess(result, samples, models, source, warnings, unlit_ranges, order, flexure, flexure_applied,
            method="bspline", slit=None, bad_columns=(), missed_columns=()):
    """The :class:`SkyQuality` of a finished fit (from the sky samples; cheap).

    The row leak is judged on the final sky, after the slit correction:
    judged before it, scattered light that the correction's smooth light
    follows made good fits suspect (a trial: every scattered-light case at
    0.07-0.14 sigma RMS); a trace left in the sky rows is a few rows wide,
    which the smooth light (degree <= 3 along the slit) does not absorb."""
    n_exp, n_rows, n_cols = result.data.shape
    warnings = list(warnings)
    skip = result.mask[:, 0].copy()
    for a, b in unlit_ranges:
        skip[a:b] = True
    # Independent measures (the chi scatter's medians, the line misfit and
    # each exposure's rows against the sky): side by side on the cores.
    tasks = [lambda: _chi_scatter(result, samples, models, steps=method == "bspline"),
             lambda: result._line_misfit or _line_misfit(result, skip)]
    # Each exposure's rows against the final sky (the leak, and rows dimmer than it).
    tasks += [(lambda k=k: _row_means(result.background[k], samples, k, result.gain, result.read_noise,
                                      result.data[k], ~skip))
              for k in range(n_exp)]
    # (map_in_threads: within the thread budget, e.g. a batch worker's one thread.)
    (chi_std, by_level, steps), (misfit, misfit_limit), *row_means = map_in_threads(lambda task: task(), tasks)
    leak = max((_extreme_row(m, 1.0) for m in row_means), key=lambda lr: lr[0])
    # Rows dimmer than the sky near a mask: the sky under the mask is drawn from them. (Far from
    # the masks, the edge of a vignetted part misfit by 0.3-0.5 sigma: the Goodman frames' rows 30-37.)
    near = _near_mask(result.mask[:, 0], DIM_NEAR_MASK)
    dim, dim_row = min((_extreme_row(np.where(near, m, np.nan), -1.0) for m in row_means), key=lambda lr: lr[0])
    if not math.isfinite(chi_std):
        warnings.append("Too few sky samples to judge the sky's scatter against the noise model.")

    n_used = sum(int(np.count_nonzero(~m.excluded)) for m in models if m is not None)
    n_out = sum(int(np.count_nonzero(m.outliers)) for m in models if m is not None)
    rejected_fraction = n_out / n_used if n_used else 0.0

    leak, leak_row = leak

    if rejected_fraction > REJECTED_LIMIT:
        warnings.append(
            f"{100 * rejected_fraction:.0f} % of the sky pixels were rejected as outliers: the sky "
            "model does not fit them (check the mask over the trace, the gain and the read noise)."
        )
    source_given = not source.startswith("estimated") and "estimated" not in source
    # By level only for a given noise model (a wrong gain); with an estimated
    # one the overall scatter is the test (the median of bins always misses
    # bright line peaks, which is its known limit, not a broken fit).
    worst = max([chi_std] + (by_level if source_given else []),
                key=lambda c: abs(np.log(c)) if c > 0 else np.inf)
    def within(c):
        return CHI_LIMITS[0] <= c <= CHI_LIMITS[1]

    # The median of bins misses the peaks of lines that tilt or curve across
    # the slit: its scatter is then high at the brightest sky levels only,
    # with the overall and the continuum's scatter as the noise model says.
    # That is the estimator's known limit, not a wrong gain: say so.
    lines_only = (method == "median" and source_given and len(by_level) == 2 and within(chi_std)
                  and within(by_level[0]) and not within(by_level[1]))
    # A B-spline that misses the lines' shape (the misfit check below, which does not read the noise
    # model) scatters too much at the brightest levels alone: not a wrong gain, which the continuum's
    # scatter, as the noise model says, rules out (trial L1: "check gain and read noise" came first for
    # a coma whose skew reverses along the slit, the true gain and read noise given).
    misfit_at_lines = (method != "median" and misfit > misfit_limit and len(by_level) == 2
                       and within(by_level[0]) and not within(by_level[1]))
    if lines_only:
        warnings.append(
            f"The sky scatters {by_level[1]:.2f} times the noise model at the brightest sky levels (the sky "
            f"lines) and {by_level[0]:.2f} times on the continuum: the median of bins misses the lines' peaks "
            "(its limit where the lines tilt or curve across the slit); the default method (B-spline) follows them."
        )
    elif math.isfinite(worst) and not within(worst) and not misfit_at_lines:
        if source_given:
            warnings.append(
                f"The sky scatters {worst:.2f} times what the noise model predicts (gain "
                f"{result.gain:.3g} e-/unit, read noise {result.read_noise:.3g} e-, from {source}): "
                f"{_NOISE_MODEL_PHRASE} (data in ADU need the gain"
                + ("; a bias level left in the frames lowers the scatter for the level" if worst < 1 else "")
                + "), or leave them out to estimate them."
                + (" The median of bins also scatters more where the sky's brightness changes along the slit "
                   "(its illumination: the frames not flat-fielded) or its lines tilt across it, which it does "
                   "not model; the default method (B-spline) does." if method == "median" and worst > 1 else "")
            )
        elif worst < 1 and (gain_from := _given_gain_source(source)):
            # Less scatter than the given gain's photon noise alone, whatever read noise is estimated
            # (it came out 0): that gain is too low (trial H: a gain in ADU/e-, 0.5 for 2, passed as
            # given; the warning blamed the warp model and the mask).
            warnings.append(
                f"The sky scatters {worst:.2f} times the noise model, less than the photon noise of the gain given "
                f"({result.gain:.3g} e-/unit, from the {gain_from}) allows with any read noise: that gain is too low (a gain "
                f"written in ADU/e- is the inverse, {1.0 / result.gain:.3g}), or a bias level is left in the "
                "frames. Check it, or leave it out to estimate it."
            )
        else:
            warnings.append(
                f"The sky scatters {worst:.2f} times the estimated noise model: the sky model "
                "does not follow the data (check the warp model and the mask)."
            )
    if misfit > misfit_limit and not lines_only:
        # The scatter (a standard deviation) reads naturally; the check is on its square (quality.line_misfit).
        spread = f"{math.sqrt(misfit):.2f}"
        ratio = f" (their variance ratio, quality.line_misfit, {misfit:.2f} > {misfit_limit:.2f})"
        if method == "median":
            warnings.append(
                f"On the brightest sky pixels (the sky lines) the residuals scatter {spread} times more than "
                f"neighbouring rows differ{ratio}: the median of bins misses the lines' peaks (its limit where the lines "
                "tilt, curve or shift across the slit); the default method (B-spline) follows them."
            )
        else:
            scatter = (f" The sky scatters {by_level[1]:.2f} times the noise model at the brightest sky levels and "
                       f"{by_level[0]:.2f} times on the continuum: the lines' misfit, not the noise model."
                       if misfit_at_lines else "")
            # (The order this fit used, and one that follows more: trial L1's coma took 4, its fit had 2.)
            higher = f"spatial_order={max(2, order + 2)} (this fit used {order})"
            text = (f"On the brightest sky pixels (the sky lines) the residuals scatter {spread} times more than "
                    f"neighbouring rows differ{ratio}: {_MISFIT_PHRASE} (lines that change width "
                    f"or position along the slit, or a warp model that does not fit them); check the warp model, or "
                    f"try {higher}.{scatter}")
            if misfit_at_lines or any(_PEDESTAL_PHRASE in w for w in warnings):
                # First: it explains the scatter at the lines, and a noise model estimated from that
                # scatter, tilted by it, reads as a pedestal ("a bias left in": trial L1, none was).
                warnings.insert(0, text)
            else:
                warnings.append(text)
    leak_text = None
    if leak > LEAK_LIMIT:
        leak_text = _leak_warning(leak, leak_row, result.mask[:, 0], _exposures_with(row_means, leak_row))
        warnings.append(leak_text)
        other = _other_leak(row_means, leak_row, result.mask[:, 0])
        if other is not None:
            # Another place too (a stack: a satellite in one exposure had hidden the wings of a bad
            # seeing in five others, 0.4-0.7 sigma off under the mask; trial P1).
            warnings.append(_leak_warning(*other, result.mask[:, 0], _exposures_with(row_means, other[1])))
    if dim < -LEAK_LIMIT:
        warnings.append(_dim_warning(dim, dim_row, result.mask[:, 0], method))
    dark = _dark_masked_row(result, skip)
    if dark is not None:
        warnings.append(_dark_masked_warning(*dark, unlit_ranges))
    named = list(bad_columns) + list(missed_columns)
    # Why columns beside a block of edge columns without light (an overscan left in) misfit: the
    # sky's step there, which the bad-column warning alone had blamed on a hot column (and the
    # misfit-column one on a defect: trial H, in 3 of 5 noise draws). Named too when no column
    # was: the two columns beside a 32-column overscan 4.3 sigma off per pixel, "ok" (trial F1).
    dark = [(a, b) for a, b in _dark_edge_columns(result.data, result.mask[:, 0], result.gain, result.read_noise)
            if any(abs(c - (b if a == 0 else a)) <= DARK_EDGE_REACH for c in named)
            or _misfit_beside_edge(result, ~skip, a, b, n_cols)]
    if dark:
        warnings.append(_dark_edge_warning(dark, n_cols))
    beside = line_misfit_beside_mask(result.data, result.background, result.mask[:, 0], skip, result.gain,
                                     result.read_noise, columns=named)
    if beside is not None and beside[0] > beside[3]:
        warnings.append(_beside_mask_warning(*beside))
    changing = _changing_lines(models, ~skip, result.effpix_map, result.gain, result.read_noise) if method == "bspline" else None
    if changing is not None:
        listed = ", ".join(f"{e:.0f}" for e, _ in changing[:6]) + (" and more" if len(changing) > 6 else "")
        worst = max(c for _, c in changing)
        warnings.append(
            f"Sky lines at effective pixels {listed} change by up to {100 * worst:.0f} % from one end of the sky "
            "rows to the other in the sky model, unlike the sky's other lines: emission of an extended source in "
            "the sky rows (a nebula, a galaxy filling the slit)? The fit takes it for sky and carries it under "
            "the mask, as a curve through the sky rows: if that emission is your source, mask it, or take the "
            "sky from frames off the source. (Or a model that does not follow those lines along the slit: "
            "their width or shape changing there.)"
        )
    differenced = _differenced(result.background, ~skip)
    negative = None
    if differenced is not None:
        # First: it is why the noise model and the other checks read as they do.
        warnings.insert(0, (
            f"The sky found goes below zero nearly as far as above it (0.5th percentile {differenced[0]:.3g}, "
            f"99.5th {differenced[1]:.3g}, in data units): the frames look sky-subtracted already (an A-B pair, "
            "nod-and-shuffle) or their bias over-subtracted. The noise model (Poisson in the sky level) does not "
            "hold for them, nor the noise estimated from it: fit the sky of the frames before differencing, or "
            "read this sky with care."
        ))
    else:
        negative = _below_zero(result.background, ~skip, result.read_noise, result.gain)
        if negative is not None:
            warnings.insert(0, (
                f"The sky found is below zero in {100 * negative[0]:.1f} % of the sky pixels (down to "
                f"{negative[1]:.3g} in data units; the read noise is {result.read_noise / result.gain:.3g}), which a raw "
                "sky never is: the "
                "bias over-subtracted (a bias of another level, or a level subtracted twice)? The noise model "
                "(Poisson in the sky level) does not hold there, nor the checks that read it: subtract the "
                "frames' own bias."
            ))
    # A seam between amplifiers of different gains. (The B-spline's fits only: the median of bins
    # misses the slit's illumination and unlit rows, whose chi**2 steps there, 9-40x on the
    # comparison sets, for reasons its own warnings give. Not for frames whose sky goes below zero,
    # for which the noise model does not hold: a difference of frames stepped 1.11 -> 0.83.)
    seam = _amplifier_seam(steps) if steps is not None and differenced is None and negative is None else None
    if seam is not None:
        # First: a part of the frame in other units makes the noise model, and every check that reads it, wrong.
        warnings.insert(0, _seam_warning(seam, bad_columns))
    ceiling = _saturated_sky(result, samples)
    if ceiling is not None:
        warnings.append(
            f"{ceiling[1]} sky pixels sit within {100 * SATURATION_BAND:.1f} % of the frames' highest sky value "
            f"({ceiling[0]:.6g}), as clipped values do: saturated sky lines? Their values are lower limits, "
            "which no sky model follows (the sky, and the science under it, are wrong there): set them to "
            "NaN, or take shorter exposures."
        )
    if leak_text is not None and leak >= LEAK_FIRST:
        # A source's light in the sky rows (the mask missing the trace, or no mask) explains the line
        # misfit, the columns, the rejected pixels and the blocks' scatter that it causes: it comes
        # before them (after a seam or a sky below zero, which make the noise model itself wrong).
        warnings.remove(leak_text)
        warnings.insert(sum(w is not None for w in (seam, negative, differenced)), leak_text)
    warnings = _structure_after_rows(warnings)
    return SkyQuality(
        rejected_fraction=float(rejected_fraction),
        chi_std=chi_std,
        leak=float(leak),
        read_noise=float(result.read_noise),
        gain=float(result.gain),
        noise_source=source,
        flexure=tuple(flexure),
        flexure_applied=bool(flexure_applied),
        unlit_rows=list(unlit_ranges),
        spatial_order=int(order),
        line_misfit=float(misfit),
        illumination=float(slit[0]) if slit else 0.0,
        smooth_light=float(slit[1]) if slit else 0.0,
        warnings=warnings,
        suspect=bool(warnings),
        bad_columns=tuple(bad_columns),
    )


#: A sharp step in the sky's chi**2 along the columns or the rows (:func:`quality.scatter_step`) by this
#: ratio, at the same place in every exposure, is taken for a seam between amplifiers of different gains.
#: B-spline fits of one gain stay below it (trial L2's frames, the comparison sets, trials D, F, G2, H2);
#: two amplifiers whose gains differ by 1.5x, one gain applied, 1.45; the same, gain estimated, 1.39.
SEAM_RATIO = 1.25


#: The words of the warning of a noise model whose variance line meets zero above zero level.
_PEDESTAL_PHRASE = "less than photon noise allows for its level"


def _seam_ratio(step):
    """Whether a step of :func:`quality.scatter_step` is one of :data:`SEAM_RATIO` or more (either way)."""
    return step is not None and step[1] > 0 and not (1.0 / SEAM_RATIO < step[2] / step[1] < SEAM_RATIO)


def _amplifier_seam(steps):
    """``(index, before, after)`` of a step in the chi's scatter along the columns by :data:`SEAM_RATIO`
    at the same place (within 2 blocks of 16 columns) in every exposure, the same way; else None
    (``before``/``after`` the exposures' means)."""
    if not steps or not all(_seam_ratio(f) for f in steps):
        return None
    if len({f[2] > f[1] for f in steps}) > 1 or max(f[0] for f in steps) - min(f[0] for f in steps) > 32:
        return None
    return (int(round(float(np.median([f[0] for f in steps])))), float(np.mean([f[1] for f in steps])),
            float(np.mean([f[2] for f in steps])))


def _seam_warning(seam, bad_columns=()):
    """The warning for a step in the sky's scatter (:func:`_amplifier_seam`)."""
    index, before, after = seam
    # ("About": where the lines tilt, the model mixes both sides for a few pixels.)
    where = f"left of about column {index} and {after:.2f} times right of it"
    text = (f"The sky scatters {before:.2f} times the noise model's variance {where}, a sharp step in every "
            "exposure: the two parts of the frame were probably read through amplifiers of different gains, one "
            "gain applied to both (a header with one GAIN card, or GAINA/GAINB cards not read), or of different "
            "bias levels, one overscan subtracted from both (a level left in one part carries no photon noise). "
            "The sky, the data and their variance are then off in one part, and the noise model suits neither: "
            "convert each amplifier's part to electrons with its own gain, and subtract its own overscan (or a "
            "master bias), before the fit.")
    near = [c for c in bad_columns if abs(c - index) <= 4]
    if near:
        text += f" The column(s) {', '.join(map(str, near))} flagged as a defect lie on that seam."
    return text


def _scatter_steps(chi, level, index, n_cols, gain, read_noise):
    """Each exposure's step in the scatter of its sky samples' chi along the columns (``chi`` and
    ``level`` ``(n_exposures, n)`` at pixels ``index``; :func:`quality.chi_square_profiles`,
    :func:`quality.scatter_step`). (Not along the rows: the slit's illumination and its lit edges,
    which a model follows less well near the ends, stepped them 0.47-2.1x where the gain was one.)"""
    out = []
    for k in range(chi.shape[0]):
        by_columns = chi_square_profiles(chi[k], level[k], index, n_cols, gain, read_noise, group=4)
        step = scatter_step(by_columns, block=4)  # (blocks of 16 columns; the step at its first column)
        out.append(None if step is None else (4 * step[0], *step[1:]))
        if not _seam_ratio(out[-1]):
            break  # (a seam steps every exposure: one without such a step settles it)
    return out


#: A sky whose 0.5th percentile is below minus this fraction of its 99.5th, in every exposure, is not a raw
#: sky (which is at or above zero, its lines far above): a difference of frames.
DIFFERENCED_RATIO = 0.3


#: A sky line whose flux changes by this fraction of itself between the ends of the sky rows, and by
#: :data:`CHANGING_LINE_FACTOR` times the lines' median change, is not the sky's (:func:`_changing_lines`).
CHANGING_LINE_LIMIT = 0.5
CHANGING_LINE_FACTOR = 4.0
#: Nor is a line judged whose continuum's change from one end to the other, over 8 px, differs from the
#: lines' median change by more than this fraction of its flux.
CHANGING_LINE_CONTINUUM = 0.5


def _changing_lines(models, sky_rows, effpix_map, gain=1.0, read_noise=0.0):
    """``[(effective pixel, change), ...]`` of the sky's lines whose flux changes along the slit unlike the
    others (see :data:`CHANGING_LINE_LIMIT`), or None.

    The night sky's lines brighten and fade along a slit together (the
    slit's illumination) or by a few per cent each; a nebula or a galaxy
    filling the slit adds lines that change by its own profile (x3.3 from
    one end to the other: the fit took it for sky, 51 sigma off under the
    mask, "sky fit ok"). Read on the first exposure's sky model where it
    changes along the slit (spatial order 1 or more), at its first, middle
    and last sky rows: each line's flux over the continuum (a running
    median), summed within 4 px of its peak at the middle row, so that a
    width changing along the slit does not pass for a change of flux.
    ``change`` is the difference between the ends over the middle's. (The
    data themselves, read window by window, took cosmic rays, faint lines
    and lines that hardly tilt for changes: false alarms in trials F and G2.)

    Where the lines move less than a pixel over the sky rows, each row
    samples only some positions along a line (its pixels' effective
    pixels, ``effpix_map``), and the model in between is its own guess: read
    there, lines 1.2 px wide tilting 0.5 px over the slit changed by up to
    196 % in a fit right to 0.12 sigma (trial S1). The flux is then summed
    over each row's own pixels (the edges of the window interpolated), and
    a line with a brighter one within 5 px is not judged: the brighter
    one's wing, moving through the window's edge pixel, changed it by 52 %.
    """
    model = models[0] if models else None
    rows = np.flatnonzero(sky_rows)
    if model is None or rows.size < 6 or getattr(model, "spatial_order", 0) < 1:
        return None
    if _line_span(effpix_map, ~np.asarray(sky_rows, bool)) < 1.0:
        return _changing_lines_in_pixels(model, rows, effpix_map, gain, read_noise)
    e_lo, e_hi = model.extent
    step = 0.25
    grid = np.arange(e_lo + 10.0, e_hi - 10.0, step)
    if grid.size < 400:
        return None
    ends = (float(rows[0]), float(np.median(rows)), float(rows[-1]))
    sky = np.stack([np.asarray(model(grid, np.full(grid.size, r)), dtype=float) for r in ends])
    lines, peak = _line_peaks(sky, 121, 17, 16)
    index = np.flatnonzero(peak)
    if index.size < 5:
        return None
    half = int(round(4.0 / step))
    window = np.arange(-half, half + 1)
    flux = np.stack([lines[k][np.clip(index[:, None] + window[None, :], 0, grid.size - 1)].sum(axis=1) * step
                     for k in range(3)])
    continuum = sky[:, index] - lines[:, index]
    return _odd_lines(flux, continuum, sky[1][index], grid[index], gain, read_noise,
                      _line_fwhm(grid, sky[1], gain, read_noise))


def _changing_lines_in_pixels(model, rows, effpix_map, gain, read_noise):
    """:func:`_changing_lines` read on the sky rows' own pixels (see there)."""
    from scipy.ndimage import maximum_filter1d

    n_cols = effpix_map.shape[1]
    ends = (int(rows[0]), int(rows[rows.size // 2]), int(rows[-1]))
    e_rows = [np.asarray(effpix_map[r], dtype=float) for r in ends]
    if n_cols < 100 or not all(np.all(np.isfinite(e)) and np.all(np.diff(e) > 0) for e in e_rows):
        return None
    sky = np.stack([np.asarray(model(e, np.full(n_cols, float(r))), dtype=float) for e, r in zip(e_rows, ends)])
    lines, peak = _line_peaks(sky, 31, 5, 10)
    # (A brighter line within 5 px: see _changing_lines.)
    peak &= lines[1] >= maximum_filter1d(lines[1], size=11, mode="nearest")
    index = np.flatnonzero(peak)
    if index.size < 5:
        return None
    centre = e_rows[1][index]
    flux = np.empty((3, index.size))
    for k, e in enumerate(e_rows):
        # The flux summed up to each pixel's edges, read at the window's ends between them.
        edges = np.concatenate([[e[0] - 0.5], 0.5 * (e[1:] + e[:-1]), [e[-1] + 0.5]])
        summed = np.concatenate([[0.0], np.cumsum(lines[k])])
        flux[k] = np.interp(centre + 4.0, edges, summed) - np.interp(centre - 4.0, edges, summed)
    continuum = sky[:, index] - lines[:, index]
    return _odd_lines(flux, continuum, sky[1][index], centre, gain, read_noise)


def _line_peaks(sky, median_size, peak_size, edge):
    """``(lines, peak)``: the three rows of ``sky`` over their continuum (a running median of ``median_size``
    samples) and the middle row's line peaks (the highest within ``peak_size``, clear of the continuum's
    scatter and of a fifth of its level, none within ``edge`` of the ends)."""
    from scipy.ndimage import maximum_filter1d

    from ..extract import running_median_rows

    lines = sky - running_median_rows(sky, median_size)  # (scipy's median_filter, size (1, median_size), "nearest")
    mid = lines[1]
    floor = max(5.0 * float(np.median(np.abs(mid))), 0.2 * float(np.median(sky[1])))
    peak = (mid > floor) & (mid == maximum_filter1d(mid, size=peak_size, mode="nearest"))
    peak[:edge] = peak[-edge:] = False
    return lines, peak


def _odd_lines(flux, continuum, level, centre, gain, read_noise, fwhm=None):
    """The lines of ``flux`` (first, middle and last row; their ``continuum`` there, at sky ``level`` and
    effective pixel ``centre`` in the middle row; the lines' ``fwhm``, px, None if not known) that change
    unlike the others, as :func:`_changing_lines` returns them."""
    # Lines whose flux stands clear of a pixel's noise (a faint line's spatial terms follow its noise).
    noise = np.sqrt(np.clip(level, 0, None) / gain + (read_noise / gain) ** 2)
    strong = flux[1] > 10.0 * noise
    # ... and of the change of the continuum under them, beyond the lines' typical one: a faint line beside
    # a bright one that broadens along the slit sits on the bright one's wings, which raise the running
    # median (60 -> 132 per px under a line of 142 over 8 px: "changes by 146 %", with every line the same
    # along the slit; trial U1). A galaxy's continuum rises under all its lines alike (trial A2: judged
    # against zero, its lines were left out and the galaxy, 2.6-5.4 sigma off under the mask, was "ok").
    step = continuum[2] - continuum[0]
    strong &= np.abs(step - median(step)) * 8.0 < CHANGING_LINE_CONTINUUM * flux[1]
    # ... and of a far brighter line's wings: a faint line within 3 widths of one 10 times brighter
    # changes with that line's width along the slit (broad lines, FWHM 5-7 px, focused 40 % better at
    # one end: faint lines 15-20 px from ones 20-130 times brighter read "changing by 150 %", trial A3).
    # (3 times brighter left out a nebula's lines 7 px from sky lines 3.7 times brighter: trial A4.)
    if fwhm is not None and np.isfinite(fwhm):
        near = np.abs(centre[:, None] - centre[None, :]) < 3.0 * fwhm
        strong &= ~(near & (flux[1][None, :] > 10.0 * flux[1][:, None])).any(axis=1)
    if np.count_nonzero(strong) < 5:
        return None
    # Each row's lines over the median of their ratios to the middle row: the slit's illumination, which
    # the sky's lines follow together, is no change (a slit lit 1.3 -> 0.7 changed every line by 60 %, and
    # a nebula rising 20x along it, 4 times less than 2.4, was "ok", 0.5-1.7 sigma off under the mask;
    # trial A2). (Not each row's median line: that may be another line in each row.)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.median(flux[:, strong] / flux[1, strong], axis=1)
    if np.all(np.isfinite(scale) & (scale > 0)):
        flux = flux / scale[:, None]
    signed = (flux[2] - flux[0]) / np.where(flux[1] > 0, flux[1], np.inf)
    change = np.abs(signed)
    typical = float(np.median(change[strong]))
    odd = strong & (change > CHANGING_LINE_LIMIT) & (change > CHANGING_LINE_FACTOR * typical)
    # Two lines at least, changing the same way: a source's emission has several (H-alpha and [N II],
    # [O III], [S II], [O II]), which follow its profile along the slit. (Two faint lines beside bright
    # ones, one read rising and one falling against the others, passed for a source; trial U1's g3_low06.)
    rising = odd & (signed > 0)
    odd = rising if np.count_nonzero(rising) * 2 >= np.count_nonzero(odd) else odd & ~rising
    if np.count_nonzero(odd) < 2:
        return None
    return sorted(zip(centre[odd].tolist(), change[odd].tolist()), key=lambda ec: -ec[1])


#: A sky below zero (by 3 read-noise sigma) in this share of the sky pixels, in every exposure, is not a raw sky.
NEGATIVE_SHARE = 0.005
#: Nor is a sky whose median is below zero by this fraction of the read noise.
NEGATIVE_MEDIAN = 0.1


def _below_zero(background, sky_rows, read_noise, gain):
    """``(share, lowest)`` when, in every exposure, at least :data:`NEGATIVE_SHARE` of the sky on ``sky_rows``
    (every 7th column) is below minus 3 times the read noise (data units), or its median is below minus
    :data:`NEGATIVE_MEDIAN` times it (``share`` then of the sky below zero); else None."""
    found = None
    for k in range(background.shape[0]):
        # (Columns first: rows picked from every column would copy the whole sky, 134 MB on 4096 x 4096.)
        values = background[k][:, ::7][sky_rows]
        values = values[np.isfinite(values)]
        if not values.size:
            return None
        noise = read_noise / gain if read_noise > 0 else 0.01 * abs(float(np.percentile(values, 99.5)))
        low = values < -3.0 * noise
        share = float(np.mean(low))
        if share < NEGATIVE_SHARE:
            # A faint sky over a bias of another level sits below zero as a whole, though within 3
            # read-noise sigma of it (2 e- of sky less 5 e- of bias: the lit rows 0.4 sigma RMS off,
            # the unlit rows half found, "ok"). A model's median is good to far better than that.
            if not float(np.median(values)) < -NEGATIVE_MEDIAN * noise:
                return None
            low = values < 0
            share = float(np.mean(low))
        lowest = float(values[low].min())
        found = (share, lowest) if found is None else (min(found[0], share), min(found[1], lowest))
    return found


def _differenced(background, sky_rows):
    """``(lowest, highest)`` (the 0.5th and 99.5th percentiles) of the sky on ``sky_rows`` when, in every
    exposure, it goes below zero by :data:`DIFFERENCED_RATIO` of how far it goes above; else None."""
    found = None
    for k in range(background.shape[0]):
        values = background[k][:, ::7][sky_rows]  # (every 7th column: percentiles of the whole sky)
        values = values[np.isfinite(values)]
        if not values.size:
            return None
        low, high = np.percentile(values, [0.5, 99.5])
        if not low < -DIFFERENCED_RATIO * abs(high):
            return None
        found = (float(low), float(high)) if found is None else (min(found[0], low), max(found[1], high))
    return found


#: Sky pixels (not rejected) within this fraction of the highest one count as at the frames' ceiling,
#: and this many of them as a plateau: saturated sky. The sets of ``bench_defaults.py`` and the Goodman
#: frames have 1-3 there; a synthetic sky clipped at its 99.98th percentile, 128.
SATURATION_BAND = CEILING_BAND
SATURATION_PIXELS = CEILING_PIXELS


def _saturated_sky(result, samples):
    """``(ceiling, n)``: the highest sky sample and how many sit within ``SATURATION_BAND`` of it, when
    they are ``SATURATION_PIXELS`` or more (a plateau, as saturation clips them); else None.

    A line's brightest pixels scatter by their photon noise (1.6 % at 4000
    e-), so only a few reach the top fifth of a percent; clipped ones all
    do. Rejected samples (cosmic rays, which saturate one by one) are left
    out.
    """
    found = sky_ceiling(samples.flux, samples.index, result.rejected.reshape(result.data.shape[0], -1),
                        SATURATION_BAND)
    return found if found is not None and found[1] >= SATURATION_PIXELS else None


def _chi_scatter(result, samples, models, steps=False):
    """``(chi_std, by_level, steps)``: the sky samples' robust chi scatter, overall and at the faintest
    half and the brightest tenth of the sky levels (a wrong gain shows where the sky is bright); with
    ``steps``, each exposure's steps in its chi**2 along the columns and the rows (:func:`_scatter_steps`),
    read on the same samples; else None."""
    n_exp = result.data.shape[0]
    # A regular subsample of the sky samples (all of them are summed per row
    # for the leak, in ``_leak``).
    pick = _subsample(samples.index.size)
    bg = result.background.reshape(n_exp, -1)[:, samples.index[pick]]
    var = np.clip(bg, 0, None) / result.gain + (result.read_noise / result.gain) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        chi = (samples.flux[:, pick] - bg) / np.sqrt(var)
    # The residuals are in-sample: they scatter less than the data by what the
    # fit spent on them, so the chi is scaled back to the data's. A B-spline
    # with p coefficients on N samples: sqrt(N / (N - p)). A median of bins
    # of n samples: see ``_median_spread`` (3.8 % low for the ~29 samples a
    # Goodman crop's bins hold).
    if result._bin_counts is not None:
        n_bin = np.asarray(result._bin_counts).reshape(-1)[samples.index[pick]].astype(np.int64)
        chi = chi / _median_spread(n_bin)
    else:
        n_fit, n_coef = _fitted_counts(models)
        if n_fit > 2 * n_coef > 0:
            chi = chi * math.sqrt(n_fit / (n_fit - n_coef))
    found = _scatter_steps(chi, bg, samples.index[pick], result.data.shape[2], result.gain,
                           result.read_noise) if steps else None
    finite = np.isfinite(chi)
    sub = chi[finite]
    chi_std = _robust_std(sub)
    levels = bg[finite]
    by_level = []
    if sub.size >= 2000:
        cut = (percentile(levels, 50), percentile(levels, 90))
        for part in (levels <= cut[0], levels >= cut[1]):
            if part.sum() >= 500:
                by_level.append(_robust_std(sub[part]))
    return chi_std, by_level, found


def extract_background(
    images,
    warp_model,
    mask_region=(None, None),
    return_spectrum=False,
    progress=False,
    method="bspline",
    **options,
):
    """Estimate the sky background in every pixel (the seed's interface, without drawing).

    :func:`specwidgets.extract_background` is this function plus the seed's
    ``debug=True`` (which draws with the display layer, so it lives above the core).

    Parameters
    ----------
    images : array_like
        One 2D image (a 2D background is returned) or a 3D stack.
    warp_model : WarpModel
    mask_region : (int, int) or list of (int, int)
        Rows ``start:stop`` excluded from the sky (the trace).
    return_spectrum : bool
        Also return the super-sampled spectrum: ``(background, effpix, flux,
        effpix_map)`` where ``effpix`` is the flattened effective-pixel map
        with NaN on masked pixels, ``flux`` is ``(n_exposures, n_pixels)``
        and ``effpix_map`` is 2D with NaN on masked rows.
    progress : bool
        Print progress.
    method : {"bspline", "median"}
        Sky estimator; see :func:`fit_sky`. ``"median"`` is the seed's.
    **options
        ``read_noise``, ``gain`` (default: from the frames, else estimated;
        never silently 0) and the method's options (see :func:`fit_sky`).

    Returns
    -------
    background : ndarray, or the tuple above

    Warns
    -----
    SuspectSkyWarning
        When the fit flags itself as probably wrong (``fit_sky(...).quality``
        says why, and the warning repeats its reasons).

    Examples
    --------
    >>> from specwidgets.io.synthetic import make_synthetic_longslit
    >>> frames = make_synthetic_longslit(shape=(60, 400), seed=2)
    >>> bg = extract_background(frames.science, frames.warp, mask_region=frames.trace_rows)
    >>> bg.shape
    (1, 60, 400)
    """
    result = fit_sky(images, warp_model, mask_region, method=method, progress=progress, **options)
    warn_if_suspect(result)
    return seed_returns(result, two_d=np.ndim(images) == 2, return_spectrum=return_spectrum)


def warn_if_suspect(result):
    """Issue a :class:`SuspectSkyWarning` at the user's line when ``result`` flags itself as probably wrong.

    For the calls that return arrays (the seed's interface), which drop the
    result's ``quality``: a wrong sky must not look fine there either.
    """
    quality = result.quality
    if quality.suspect:
        reasons = " ".join(quality.warnings) or "see fit_sky(...).quality"
        warn_at_caller(SuspectSkyWarning(
            f"the {result.method} sky fit is probably wrong (fit_sky(...).quality.suspect; the same call "
            f"returns the result with its quality): {reasons}"
        ))


def seed_returns(result, two_d=False, return_spectrum=False):
    """What the seed's ``extract_background`` returns, from a :class:`SkyResult`.

    ``two_d`` gives a 2D background (the input was one image);
    ``return_spectrum`` adds ``(effpix, flux, effpix_map)`` as documented in
    :func:`extract_background`.
    """
    background = result.background[0] if two_d else result.background
    if not return_spectrum:
        return background
    emap = result.effpix_map.copy()
    emap[result.mask] = np.nan
    n_exp = result.data.shape[0]
    flux = result.data.reshape(n_exp, -1)
    return background, emap.ravel(), flux, emap
