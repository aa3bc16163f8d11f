"""The warp measured on the science frame's own sky lines.

An arc's warp may not fit the sky lines of a science exposure taken later
(flexure that bends, not only shifts, the lines; a warp model that the arc's
lines constrain poorly between them). Two tools:

* :func:`refine_warp` corrects an arc-based warp with a smooth shift
  ``delta(e, t)`` measured on the sky lines by linearised least squares (the
  residual of a sky pixel about the sky spectrum ``S`` is ``-S'(e) delta``),
  and keeps it only when it lowers the chi-square of sky rows held out of
  that measurement;
* :func:`sky_warp_model` fits a warp with no arc at all: the sky lines are
  traced row by row as :func:`~specwidgets.warp.generate_warp_model` traces
  arc lines, then refined as above.

The shift modelled by :func:`refine_warp` is

    delta(e, t) = sum_{k=1..2} sum_{j=0..2} d[k-1, j] * t**k * u**j

in the warp model's own coordinates (so the refined model is the arc's with
``d`` added to its coefficients), without the term ``t * u**0``: a uniform
change of tilt is the flexure that :func:`~specwidgets.fit_sky` measures per
exposure, and reports as such.

This module belongs to the core (with the sky fit, e.g. ``core/sky/``).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass

import numpy as np

from .warp import WarpModel

__all__ = ["WarpRefinement", "refine_warp", "sky_warp_model"]

# Rows of the frame the measurement uses at most (evenly spaced): a few
# coefficients need far fewer pixels than a frame has.
MAX_ROWS = 160
# Knot spacing of the sky spectrum while measuring (px): fine enough for the
# line profiles, whose slopes carry the measurement.
KNOT_SPACING = 0.5
# Held-out chi-square the refinement must win, per coefficient, on each fold
# (Akaike would ask 1 per coefficient on rows held out; this asks more, so
# that a correction at the noise level is not applied).
MIN_GAIN_PER_COEF = 4.0


@dataclass(frozen=True)
class WarpRefinement:
    """What :func:`refine_warp` measured and whether it was used.

    Attributes
    ----------
    used : bool
        Whether the refined warp replaced the given one.
    source : str
        Where the warp used comes from: "arc", "arc refined on sky lines" or
        "sky lines" (no arc).
    max_shift : float
        Largest shift of the correction over the frame's sky rows [px]
        (0 when not used).
    heldout_gain : float
        Decrease of the chi-square of held-out sky rows with the correction,
        summed over the two folds (positive: the correction helps).
    heldout_gain_per_pixel : float
        The same per held-out pixel.
    n_coefficients : int
        Coefficients of the correction.
    reason : str
        Why it was (not) used, in a sentence.
    """

    used: bool
    source: str
    max_shift: float = 0.0
    heldout_gain: float = 0.0
    heldout_gain_per_pixel: float = 0.0
    n_coefficients: int = 0
    reason: str = ""


def fingerprint(stack):
    """A cheap identity of an image stack's values (shape, dtype and a regular sample of pixels)."""
    flat = np.asarray(stack).reshape(-1)
    step = max(1, flat.size // 400_000)
    h = hashlib.blake2b(np.ascontiguousarray(flat[::step]).tobytes(), digest_size=16)
    h.update(repr((np.shape(stack), str(np.asarray(stack).dtype), float(np.nansum(flat[1::step])))).encode())
    return h.hexdigest()


def _terms(line_order=2, warp_order=2):
    """(k, j) of the correction's terms: t**k * u**j without the flexure's (1, 0)."""
    return [(k, j) for k in range(1, line_order + 1) for j in range(warp_order + 1) if (k, j) != (1, 0)]


def _with_delta(warp, terms, d):
    """The warp with the correction ``d`` (one value per term) added to its coefficients."""
    k_max = max([warp.line_order] + [k for k, _ in terms])
    j_max = max([warp.warp_order] + [j for _, j in terms])
    coef = np.zeros((k_max, j_max + 1))
    if warp.coefficients.size:
        coef[: warp.line_order, : warp.warp_order + 1] = warp.coefficients
    for (k, j), v in zip(terms, d):
        coef[k - 1, j] += v
    return WarpModel(warp.shape, warp.ref_row, coef, warp.row_scale, warp.col_centre, warp.col_scale)


class _Frame:
    """The pixels the measurement uses: a sample of the sky rows, every column."""

    def __init__(self, stack, sky_rows, gain, read_noise):
        n_exp, n_rows, n_cols = stack.shape
        rows = sky_rows[:: max(1, -(-sky_rows.size // MAX_ROWS))]
        self.rows = rows
        self.cols = np.arange(n_cols, dtype=float)
        self.flux = stack[:, rows, :]  # (n_exp, n_r, n_cols)
        self.gain, self.rn_var = float(gain), float((read_noise / gain) ** 2)
        # Two folds of interleaved blocks of sampled rows: each block is held
        # out of the other fold's measurement.
        self.fold = (np.arange(rows.size) // 4) % 2

    def effpix(self, warp):
        return warp.effective_pixel(self.cols[None, :], self.rows[:, None].astype(float))

    def fit(self, e, use_rows):
        """Per exposure, the sky spectrum S(e) and each row's scale on ``use_rows``; returns a callable."""
        from .bspline_sky import fit_bspline_sky
        from .sky_quality import row_profile

        n_exp = self.flux.shape[0]
        extent = (float(np.nanmin(e)), float(np.nanmax(e)))
        e_use = e[use_rows].ravel()
        models, scales = [], []
        for k in range(n_exp):
            f = self.flux[k][use_rows].ravel()
            model = fit_bspline_sky(e_use, f, None, read_noise=np.sqrt(self.rn_var) * self.gain, gain=self.gain,
                                    extent=extent, knot_spacing=KNOT_SPACING, reject_sigma=None,
                                    max_iterations=1)
            # Each row's brightness relative to S (slit illumination), then S
            # again on the rows brought to one level.
            level = model(e).ravel()
            var = np.clip(level, 0, None) / self.gain + self.rn_var
            r_idx = np.repeat(np.arange(e.shape[0]), e.shape[1])
            ratio, _ = row_profile(r_idx, self.flux[k].ravel(), level, var, e.shape[0])
            ratio = np.where(np.isfinite(ratio) & (ratio > 0.05), ratio, np.nan)
            s = ratio[:, None]
            model = fit_bspline_sky(e_use, (self.flux[k] / s)[use_rows].ravel(), None,
                                    read_noise=np.sqrt(self.rn_var) * self.gain, gain=self.gain, extent=extent,
                                    knot_spacing=KNOT_SPACING, reject_sigma=None, max_iterations=1)
            models.append(model)
            scales.append(s)
        return models, scales

    def chi2(self, e, models, scales, rows_mask):
        """Clipped chi-square of the rows ``rows_mask`` about ``scale * S(e)``, and its pixel count."""
        total, n = 0.0, 0
        for k, (model, s) in enumerate(zip(models, scales)):
            m = s[rows_mask] * model(e[rows_mask])
            var = np.clip(m, 0, None) / self.gain + self.rn_var
            chi2 = (self.flux[k][rows_mask] - m) ** 2 / var
            ok = np.isfinite(chi2)
            total += float(np.sum(np.minimum(chi2[ok], 25.0)))
            n += int(ok.sum())
        return total, n


def _sky_rows(stack, masked_rows):
    from .sky_quality import dark_rows, provisional_noise

    _, _, var_low = provisional_noise(stack, masked_rows)
    dark = dark_rows(stack, masked_rows, var_low)
    return np.flatnonzero(~masked_rows & ~dark)


def _traced_warp(stack, warp, keep_rows, line_order=2, warp_order=2):
    """A warp traced on the sky lines of the rows ``keep_rows`` (others blanked), its
    uniform tilt set to the arc's (that part is the flexure, measured per exposure)."""
    from .lines import find_cal_lines
    from .warp import generate_warp_model

    n_rows, n_cols = stack.shape[1:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        summed = np.nansum(stack, axis=0)
        blank = np.ones(n_rows, bool)
        blank[keep_rows] = False
        image = summed.copy()
        image[blank] = np.nan
        ref = int(keep_rows[np.argmin(np.abs(keep_rows - warp.ref_row))])
        filled = np.where(np.isfinite(image), image, np.nanmedian(image[keep_rows], axis=0)[None, :])
        locs, _ = find_cal_lines(filled)
        if len(locs) < warp_order + 2:
            raise ValueError(f"only {len(locs)} sky line(s) found")
        traced = generate_warp_model(image, locs, line_order=line_order, warp_order=warp_order, ref_idx=ref)
    if int(traced.traces.used.sum()) < warp_order + 2:
        raise ValueError(f"only {int(traced.traces.used.sum())} sky line(s) could be traced")
    # Uniform tilt change between the arc's warp and the sky's: taken out.
    e = np.linspace(0, n_cols - 1, 65)
    top, bottom = float(keep_rows[-1]), float(keep_rows[0])
    d_sky = traced.column_of(e, top) - traced.column_of(e, bottom)
    d_arc = warp.column_of(e, top) - warp.column_of(e, bottom)
    delta = float(np.mean(d_sky - d_arc))
    span = (top - bottom) / traced.row_scale
    if traced.line_order and span > 0:
        traced.coefficients[0, 0] -= delta / span
    traced._cache.clear()
    return traced


def refine_warp(stack, warp, masked_rows, gain, read_noise, *, source="arc"):
    """The warp measured on the sky lines, when that helps on held-out rows.

    The bright sky lines are found in the sky rows and traced row by row, as
    :func:`~specwidgets.generate_warp_model` traces arc lines (``line_order``
    2, ``warp_order`` 2: the tilt and the curvature may change along the
    dispersion); the tilt change common to all columns is set back to the
    arc's, since that part is the flexure, which the sky fit measures and
    reports per exposure.

    Parameters
    ----------
    stack : (n_exposures, n_rows, n_cols) array
        Science frames (the warp is common to all).
    warp : WarpModel
        The warp to refine (from the arc).
    masked_rows : (n_rows,) bool array
        Rows to leave out (the traces).
    gain, read_noise : float
        Noise model for the validation's chi-square (electrons per data unit, electrons).
    source : str
        Where ``warp`` comes from, for the report.

    Returns
    -------
    (WarpModel, WarpRefinement)
        The warp to use (``warp`` itself when the sky lines' warp is not
        better) and what was measured. Validation: the sky rows are split in
        two halves of interleaved blocks; the sky lines' warp is traced on
        one half, the sky spectrum fit on that half with each warp, and the
        chi-square of the other half compared; the sky lines' warp is used
        only when it wins by more than ``MIN_GAIN_PER_COEF`` per coefficient
        both ways round.
    """
    stack = np.asarray(stack, dtype=float)
    n_exp, n_rows, n_cols = stack.shape
    sky_rows = _sky_rows(stack, np.asarray(masked_rows, bool))
    refined_source = "arc refined on sky lines" if source == "arc" else source
    if sky_rows.size < 16 or n_cols < 50:
        return warp, WarpRefinement(False, source, reason="too few sky rows to measure the sky lines' warp")
    frame = _Frame(stack, sky_rows, gain, read_noise)
    # Folds by blocks of whole frame rows (the sampled rows' blocks, mapped back).
    fold_of_row = np.full(n_rows, -1)
    fold_of_row[frame.rows] = frame.fold
    gains, n_pix, n_coef = [], 0, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            e0 = frame.effpix(warp)
            for train_fold in (0, 1):
                train = frame.fold == train_fold
                test = ~train
                # Training rows: every sky row nearer a training block than a test block.
                near = np.searchsorted(frame.rows, sky_rows).clip(0, frame.rows.size - 1)
                train_rows = sky_rows[frame.fold[near] == train_fold]
                candidate = _traced_warp(stack, warp, train_rows)
                n_coef = candidate.coefficients.size - 1
                models, scales = frame.fit(e0, train)
                before, n = frame.chi2(e0, models, scales, test)
                e1 = frame.effpix(candidate)
                models, scales = frame.fit(e1, train)
                after, _ = frame.chi2(e1, models, scales, test)
                gains.append(before - after)
                n_pix += n
        except ValueError as exc:  # too few lines, or a warp that folds over
            return warp, WarpRefinement(False, source, reason=f"the sky lines' warp was not measured: {exc}")
    total = float(sum(gains))
    per_pixel = total / max(n_pix, 1)
    need = MIN_GAIN_PER_COEF * n_coef
    if min(gains) <= need:
        return warp, WarpRefinement(
            False, source, heldout_gain=total, heldout_gain_per_pixel=per_pixel, n_coefficients=n_coef,
            reason=(f"the sky lines' warp lowered the held-out chi-square by "
                    f"{gains[0]:.0f} and {gains[1]:.0f} (needs > {need:.0f} each): not used"),
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            refined = _traced_warp(stack, warp, sky_rows)
        refined.effpix_map()
    except ValueError as exc:
        return warp, WarpRefinement(False, source, reason=f"the sky lines' warp was not measured: {exc}")
    grid_r = sky_rows[:: max(1, sky_rows.size // 40)].astype(float)
    grid_e = np.linspace(0, n_cols - 1, 64)
    # Compared at equal wavelength: both warps' columns of the reference row's columns.
    e_ref = refined.effective_pixel(warp.column_of(grid_e, float(refined.ref_row)), float(refined.ref_row))
    shift = refined.column_of(e_ref[None, :], grid_r[:, None]) - warp.column_of(grid_e[None, :], grid_r[:, None])
    shift -= np.median(shift)
    max_shift = float(np.max(np.abs(shift)))
    return refined, WarpRefinement(
        True, refined_source, max_shift=max_shift, heldout_gain=total, heldout_gain_per_pixel=per_pixel,
        n_coefficients=n_coef,
        reason=(f"the sky lines' warp differs from the arc's by up to {max_shift:.2f} px; held-out "
                f"chi-square lower by {gains[0]:.0f} and {gains[1]:.0f}"),
    )


def cached_refinement(stack, warp, masked_rows, gain, read_noise):
    """:func:`refine_warp`, once per science frame and warp (cached on the warp model).

    The key is the warp model and the values of the frames (:func:`fingerprint`),
    not the mask: moving the mask (a slider) must not pay for the measurement
    again, and the warp is a property of the frame and the instrument, not of
    where the trace is. It is measured with the mask of the first call.
    """
    key = ("sky_refinement", fingerprint(stack))
    cache = warp._cache
    if key not in cache:
        # One frame's refinement at a time per warp model: a new science
        # frame replaces the old entry (its refined warp holds full-frame maps).
        for old in [k for k in cache if isinstance(k, tuple) and k and k[0] == "sky_refinement"]:
            del cache[old]
        cache[key] = refine_warp(stack, warp, masked_rows, gain, read_noise)
    return cache[key]


def sky_warp_model(images, mask_region=(None, None), *, line_order=2, warp_order=1, gain=None, read_noise=None,
                   tolerance=16):
    """Fit a warp model on the science frame's own sky lines (no arc).

    The sky lines are found in the sky rows (:func:`~specwidgets.find_cal_lines`
    on the frame with the masked rows blanked), traced row by row as
    :func:`~specwidgets.generate_warp_model` traces arc lines, and the model
    is then refined on the sky by :func:`refine_warp`.

    Parameters
    ----------
    images : (n_rows, n_cols) or (n_exposures, n_rows, n_cols) array_like
        Science frames (the exposures are summed to trace the lines).
    mask_region : (int, int) or list of (int, int)
        Rows to leave out (the traces), as for :func:`~specwidgets.fit_sky`.
    line_order, warp_order, tolerance
        As for :func:`~specwidgets.generate_warp_model`.
    gain, read_noise : float, optional
        Noise model for the refinement's weights (default: from the frames'
        attributes, else a rough estimate from adjacent rows).

    Returns
    -------
    WarpModel
        With ``traces`` of the sky lines; ``model._cache["sky_refinement_report"]``
        holds the :class:`WarpRefinement` of the refinement step.

    Raises
    ------
    ValueError
        When the sky rows hold too few lines to trace.

    Examples
    --------
    >>> from specwidgets.datasets import make_synthetic_longslit
    >>> f = make_synthetic_longslit(shape=(120, 800), tilt=3.0, n_sky_lines=30, seed=5)
    >>> model = sky_warp_model(f.science, f.trace_rows)
    >>> bool(abs(model.column_of(400.0, 119) - model.column_of(400.0, 0) - 3.0 * 119 / 120) < 0.2)
    True
    """
    from .inputs import as_image_stack, mask_ranges, mask_rows
    from .lines import find_cal_lines
    from .sky_quality import provisional_noise
    from .warp import generate_warp_model

    stack, _ = as_image_stack(images, "images")
    n_exp, n_rows, n_cols = stack.shape
    masked = mask_rows(mask_ranges(mask_region, n_rows), n_rows)
    sky_rows = _sky_rows(stack, masked)
    if sky_rows.size < 8:
        raise ValueError(f"only {sky_rows.size} sky rows are left outside the mask: too few to trace sky lines")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        summed = np.nansum(stack, axis=0)
    blank = np.ones(n_rows, bool)
    blank[sky_rows] = False
    image = summed.copy()
    image[blank] = np.nan
    # The reference row: the sky row nearest the middle.
    ref = int(sky_rows[np.argmin(np.abs(sky_rows - n_rows // 2))])
    sky_image = np.where(np.isfinite(image), image, np.nanmedian(image[sky_rows], axis=0)[None, :])
    locs, _ = find_cal_lines(sky_image)
    if len(locs) < warp_order + 1:
        raise ValueError(
            f"only {len(locs)} sky line(s) found in the sky rows: too few to fit a warp without an arc "
            "(give an arc frame)"
        )
    model = generate_warp_model(image, locs, tolerance=tolerance, line_order=line_order, warp_order=warp_order,
                                ref_idx=ref)
    if gain is None:
        gain = getattr(images, "gain", None)
    if read_noise is None:
        read_noise = getattr(images, "read_noise", None)
    if gain is None or read_noise is None:
        g, rn, _ = provisional_noise(stack, masked, gain)
        gain = g if gain is None else gain
        read_noise = rn if read_noise is None else read_noise
    refined, report = refine_warp(stack, model, masked, gain, read_noise, source="sky lines")
    if refined is not model:
        refined.traces = model.traces
        refined._cache["warnings"] = list(model._cache.get("warnings", []))
    refined._cache["sky_refinement_report"] = report
    refined._cache["warp_source"] = "sky lines"
    return refined
