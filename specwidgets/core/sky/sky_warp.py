"""The warp measured on the science frame's own sky lines.

An arc's warp may not fit the sky lines of a science exposure taken later
(flexure that bends, not only shifts, the lines; a warp model that the arc's
lines constrain poorly between them). Two tools:

* :func:`refine_warp` traces the bright sky lines row by row (their
  centroids in small blocks of rows, as
  :func:`~specwidgets.warp.generate_warp_model` traces arc lines) and fits
  how far they sit from where the arc's warp puts them with a smooth shift
  ``delta(e, t)``; the arc's warp plus that shift is used only when it
  predicts the traced positions of held-out rows better than the arc's warp;
* :func:`sky_warp_model` fits a warp with no arc at all, from the same
  traced sky lines.

The shift is

    delta(e, t) = sum_{k=1..2} sum_{j=0..2} d[k-1, j] * t**k * u**j

in the warp model's own coordinates (``t`` the row, ``u`` the effective
pixel, both scaled; so the refined model is the arc's with ``d`` added to
its coefficients), without the term ``t * u**0`` (it is fit, but not
applied): a uniform change of tilt is the flexure that
:func:`~specwidgets.fit_sky` measures per exposure, and reports as such.

This module belongs to the core (``specwidgets/core/sky/``, next to the sky fit).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from .._stats import median_along, quiet_nanmedian
from .._threads import map_in_threads
from ..warp import WarpModel
from .quality import _robust_var

__all__ = ["WarpRefinement", "refine_warp", "sky_warp_model"]

# Held-out chi-square the refinement must win, per coefficient, over both
# folds together (each fold must gain too). Akaike would ask 2 per coefficient
# on rows held out; this asks more, so that a correction at the noise level
# is not applied.
MIN_GAIN_PER_COEF = 4.0

#: A traced sky-line position this far [px] from its line's trend (offset to
#: the arc's warp along the slit) is a trace that jumped to another line
#: (steep lines across a masked gap did: 6-13 px), not a correction of the warp.
MAX_TRACE_JUMP = 2.0


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
        Decrease of the held-out chi-square of the traced sky-line positions
        with the correction (in units of their scatter), summed over the two
        folds (positive: the correction helps).
    heldout_gain_per_pixel : float
        The same per traced position.
    n_coefficients : int
        Coefficients of the correction.
    reason : str
        Why it was (not) used, in a sentence.
    tilt_change : tuple of float
        Each exposure's sky lines' uniform change of tilt against the warp:
        how far they move between the slit's first and last rows [px], as
        :func:`~specwidgets.fit_sky` measures flexure (empty when not
        measured). The correction leaves it out; the flexure measurement
        starts from it when it is large (its linearised steps converge
        slowly from 0 beyond a fraction of a line's width).
    """

    used: bool
    source: str
    max_shift: float = 0.0
    heldout_gain: float = 0.0
    heldout_gain_per_pixel: float = 0.0
    n_coefficients: int = 0
    reason: str = ""
    tilt_change: tuple = ()


def fingerprint(stack):
    """A cheap identity of an image stack's values (shape, dtype and a regular sample of pixels)."""
    flat = np.asarray(stack).reshape(-1)
    step = max(1, flat.size // 100_000)
    h = hashlib.blake2b(np.ascontiguousarray(flat[::step]).tobytes(), digest_size=16)
    h.update(repr((np.shape(stack), str(np.asarray(stack).dtype), float(np.nansum(flat[1::step])))).encode())
    return h.hexdigest()


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


def _sky_rows(stack, masked_rows, dark=None):
    """The rows neither masked nor ``dark`` (:func:`~specwidgets.core.sky.quality.dark_rows`, found if None)."""
    from .quality import FirstLook

    if dark is None:
        dark = FirstLook(stack, masked_rows).dark
    return np.flatnonzero(~masked_rows & ~dark)


#: Columns per block of :func:`_median_sky_spectrum` (a block's copies are a few MB on a 4k-row frame).
_SPECTRUM_BLOCK_COLS = 256


def _median_sky_spectrum(stack, sky_rows):
    """Each column's median over ``sky_rows`` of the exposures' mean (NaN-aware where NaN).

    Column blocks at a time, side by side in threads (the copies and
    ``np.partition`` release the GIL): no frame-sized copy, and the values
    of the medians of the whole band at once (each column's median depends
    on that column only).
    """
    n_exp, _, n_cols = stack.shape
    out = np.empty(n_cols)

    def block(bounds):
        c0, c1 = bounds
        # The exposures' mean, as ``stack[:, sky_rows].mean(axis=0)`` gives it.
        band = stack[0, sky_rows, c0:c1] if n_exp == 1 else stack[:, sky_rows, c0:c1].mean(axis=0)
        # Each column's median from a transposed copy: about twice as fast as
        # down the columns of a big frame.
        columns = np.ascontiguousarray(band.T)
        del band
        if np.isnan(columns).any():
            out[c0:c1] = quiet_nanmedian(columns, axis=1)  # (a blanked column: NaN)
        else:
            out[c0:c1] = median_along(columns, axis=1, nan_checked=True, overwrite_input=True)

    map_in_threads(block, [(c0, min(c0 + _SPECTRUM_BLOCK_COLS, n_cols))
                           for c0 in range(0, n_cols, _SPECTRUM_BLOCK_COLS)])
    return out


def _sky_line_guesses(stack, sky_rows, std_variation=20.0):
    """Columns of the sky lines: peaks of the median sky spectrum of the sky rows."""
    from ..lines import _find_cal_lines

    # Every sky row: the fewer rows, the noisier the spectrum and the
    # fewer lines clear the threshold.
    spectrum = _median_sky_spectrum(stack, sky_rows)
    spectrum = np.where(np.isfinite(spectrum), spectrum, quiet_nanmedian(spectrum))
    # The median of many rows: the threshold (in noise units of that
    # spectrum) finds the bright lines, not the noise peaks. What it would
    # say of an arc (saturated lines, NaN holes) is not for the user here.
    with np.errstate(all="ignore"):
        try:
            locs, _ = _find_cal_lines(np.tile(spectrum, (5, 1)), std_variation=std_variation, say=_silent)
        except ValueError:
            # (Its words are an arc's, of a row of a tiled spectrum: the caller says "no sky lines".)
            return np.empty(0)
    return np.asarray(locs, float)


def _silent(message):
    """Drop ``message`` (see :func:`_sky_line_guesses`)."""


def _trace_sky_lines(stack, sky_rows, ref_row, line_order=2, warp_order=1, check_fold=True):
    """Sky lines traced row by row on the sky rows (others blanked): a :class:`WarpModel` with ``traces``.

    ``check_fold=False``: the model's quality warnings leave out the fold-over
    check (for a model used only for its traces).
    """
    from ..warp import _generate_warp_model

    n_rows = stack.shape[1]
    locs = _sky_line_guesses(stack, sky_rows)
    if locs.size < 2:
        raise ValueError(f"only {locs.size} sky line(s) found in the sky rows")
    # (np.errstate, per thread; not warnings.catch_warnings, which swaps the
    # process's filters under fits in other threads: see quiet_nanmedian.)
    with np.errstate(all="ignore"):
        # A plain sum: a NaN pixel stays NaN (left out of the block means
        # that trace the lines), where nansum would put a dip of zero. One
        # exposure is read as it is, its other rows blanked as it is read
        # (a blanked copy: 128 MB of fresh memory on 4096 x 4096).
        summed = stack[0] if stack.shape[0] == 1 else stack.sum(axis=0)
        blank = np.ones(n_rows, bool)
        blank[sky_rows] = False
        ref = int(sky_rows[np.argmin(np.abs(sky_rows - ref_row))])
        return _generate_warp_model(summed, locs, line_order=line_order, warp_order=min(warp_order, locs.size - 1),
                                    ref_idx=ref, check_fold=check_fold, blank_rows=blank)


def _jumped(R, t):
    """Positions in ``R`` (lines x rows, NaN where not traced) more than
    ``MAX_TRACE_JUMP`` px from their line's straight trend along the slit
    (``t``): the trend is fit to the positions within twice that of the
    line's median, so that the jumped part does not pull it, and a real
    change of the lines' tilt (flexure) is not taken for a jump."""
    have = np.isfinite(R)
    some = have.any(axis=1)
    median = np.full(R.shape[0], np.nan)
    median[some] = np.nanmedian(R[some], axis=1)
    near = have & (np.abs(np.where(have, R, 0.0) - median[:, None]) <= 2 * MAX_TRACE_JUMP)
    w = near.astype(float)
    tt = np.broadcast_to(t, R.shape)
    r = np.where(near, R, 0.0)
    n, st, stt = w.sum(axis=1), (w * tt).sum(axis=1), (w * tt * tt).sum(axis=1)
    sr, str_ = r.sum(axis=1), (r * tt).sum(axis=1)
    det = n * stt - st * st
    ok = det > 1e-12 * np.maximum(n * stt, 1.0)
    slope = np.where(ok, (n * str_ - st * sr) / np.where(ok, det, 1.0), 0.0)
    level = np.where(n > 0, (sr - slope * st) / np.maximum(n, 1.0), median)
    trend = level[:, None] + slope[:, None] * tt
    return have & (np.abs(np.where(have, R, 0.0) - trend) > MAX_TRACE_JUMP)


def _design(terms, t, u):
    return np.stack([t**k * u**j for k, j in terms], axis=-1)


def _fit_offsets_and_terms(R, t, u, terms, use):
    """Least squares ``R[i, b] = o_i + sum_terms c * t_b**k * u_i**j`` on ``use``; returns (o, c).

    The offsets are eliminated first (each line's values and design less
    their mean over its positions), which leaves a least-squares problem in
    the few terms alone; the offsets follow from the means. The same
    solution as one problem with an offset column per line (Frisch-Waugh-
    Lovell), without its (positions x lines) matrix: 16 000 x 75 on a
    4096 x 4096 frame, 0.01 s per solve. A line without positions gets
    offset 0, as that problem's least-norm solution gives it.
    """
    n_lines = R.shape[0]
    ii, bb = np.nonzero(use)
    y = R[ii, bb]
    counts = np.maximum(np.bincount(ii, minlength=n_lines), 1)
    y_mean = np.bincount(ii, y, n_lines) / counts
    if not terms:
        return y_mean, np.zeros(0)
    a = _design(terms, t[bb], u[ii])
    a_mean = np.stack([np.bincount(ii, a[:, j], n_lines) for j in range(a.shape[1])], axis=1) / counts[:, None]
    c, *_ = np.linalg.lstsq(a - a_mean[ii], y - y_mean[ii], rcond=None)
    return y_mean - a_mean @ c, c


def _predict(o, c, terms, t, u):
    out = o[:, None] + 0.0 * t[None, :]
    if terms:
        out = out + _design(terms, t[None, :], u[:, None]) @ c
    return out


def _offsets_to_warp(traced, warp):
    """The traced sky lines' positions less where ``warp`` puts them: ``(R, t, u, n_lines)``.

    ``R[line, block]`` [px] (NaN where untraced or where a trace jumped to
    another line), ``t`` the blocks' rows and ``u`` the lines' effective
    pixels in the warp's scaled coordinates.
    """
    tr = traced.traces
    used = tr.used & np.isfinite(tr.ref_positions)
    P = tr.positions[used]
    rows = tr.rows
    # Each line's effective pixel in the arc's warp, from its traced position at the sky's reference row.
    e_line = warp.effective_pixel(tr.ref_positions[used], float(traced.ref_row))
    R = P - warp.column_of(e_line[:, None], rows[None, :])
    t = warp._t(rows)
    R[_jumped(R, t)] = np.nan
    return R, t, warp._u(e_line), P.shape[0]


def _terms_for(n_lines):
    """The shift's terms ``(k, j)`` (``t**k * u**j``) that ``n_lines`` traced lines constrain."""
    max_j = 2 if n_lines >= 5 else 1
    return [(k, j) for k in (1, 2) for j in range(max_j + 1)]


def _tilt_of(c, terms, warp, n_rows):
    """The t * u**0 coefficient over the frame's rows: the sky lines' tilt change in fit_sky's flexure units (px)."""
    tilt = float(c[terms.index((1, 0))] * (n_rows - 1) / warp.row_scale)
    return tilt if np.isfinite(tilt) else 0.0


def _each_exposure_offsets(stack, sky_rows, warp):
    """:func:`_offsets_to_warp` of each exposure's own traced sky lines (None where they could not be traced)."""
    out = []
    for k in range(stack.shape[0]):
        try:
            traced = _trace_sky_lines(stack[k:k + 1], sky_rows, warp.ref_row, check_fold=False)
        except ValueError:
            out.append(None)
            continue
        R, t, u, n_lines = _offsets_to_warp(traced, warp)
        out.append((R, t, u, n_lines) if n_lines >= 3 and np.isfinite(R).sum() >= 3 * 6 + n_lines else None)
    return out


def _tilts_each(offsets, warp, n_rows):
    """Each exposure's sky-line tilt change against ``warp`` (px; 0 where its lines could not be traced).

    Exposures of a night each have their own flexure: the stack's sum
    would give their mean.
    """
    tilts = []
    for item in offsets:
        if item is None:
            tilts.append(0.0)
            continue
        R, t, u, n_lines = item
        terms = _terms_for(n_lines)
        _, c = _fit_offsets_and_terms(R, t, u, terms, np.isfinite(R))
        tilts.append(_tilt_of(c, terms, warp, n_rows))
    return tuple(tilts)


def _worse_for(offsets, extra, d):
    """The exposures (indices) whose own traced lines the stack's correction ``d`` fits worse.

    Each exposure's positions are fit with their own offsets and tilt
    change (its flexure), with and without the correction; it is worse when
    its squared residual grows by more than one (of its positions' scatter)
    per coefficient. Exposures with different flexure and different line
    strengths make the sum's lines lean by line: a correction fit to that
    sum was applied to every exposure (trial K3: an exposure without flexure
    went from 0.15 to 0.34 sigma on its lines).
    """
    worse = []
    for k, item in enumerate(offsets):
        if item is None:
            continue
        R, t, u, _ = item
        have = np.isfinite(R)
        sse = []
        for data in (R, R - _predict(np.zeros(R.shape[0]), d, extra, t, u)):
            o, c = _fit_offsets_and_terms(data, t, u, [(1, 0)], have)
            sse.append((data - _predict(o, c, [(1, 0)], t, u))[have] ** 2)
        scale = float((1.4826 * np.median(np.sqrt(sse[0]))) ** 2) + 1e-6
        clip = 25.0 * scale
        if (np.sum(np.minimum(sse[1], clip)) - np.sum(np.minimum(sse[0], clip))) / scale > len(extra):
            worse.append(k)
    return worse


def _heldout_gain(R, t, u, simple, full, train, test, clip, sigma2):
    """How much lower (in ``sigma2`` units) the ``full`` terms' fit on ``train`` puts the squared residuals
    of the traced positions on ``test`` than the ``simple`` terms' (each clipped at ``clip``)."""
    sse = []
    for terms in (simple, full):
        o, c = _fit_offsets_and_terms(R, t, u, terms, train)
        sse.append(float(np.sum(np.minimum((R - _predict(o, c, terms, t, u))[test] ** 2, clip))))
    return (sse[0] - sse[1]) / sigma2


#: Masked rows reaching beyond the sky rows by this many rows (or this fraction of the slit, if more) make the
#: correction pass a test of extrapolation too (:func:`_extrapolation_gain`).
EXTRAPOLATION_ROWS, EXTRAPOLATION_FRACTION = 5, 0.1


def _extrapolation_gain(R, t, u, have, terms_all, flex_only, clip, sigma2, masked_rows, dark, sky_rows):
    """``(gain, n_rows)`` of the correction on the sky rows nearest the masked rows that lie beyond every sky
    row, fit on the others (the held-out chi-square it saves there, in ``sigma2`` units: the worst side's),
    or None when the masked rows lie between sky rows or the test cannot be made.

    The held-out halves of :func:`refine_warp` interleave blocks of rows, which tests a correction between
    sky rows only. With sky at one end of the slit (a trial: rows 0-40 of 100, the target over the rest) a
    correction of 0.13 px on a perfect arc warp passed them, and carried over the masked rows it put the sky
    there 1.1 sigma RMS off (1.9 at the far end), under "ok".
    """
    masked = np.asarray(masked_rows, bool)
    lit = np.flatnonzero(masked if dark is None else masked & ~np.asarray(dark, bool))
    if lit.size == 0 or sky_rows.size == 0:
        return None
    reach = max(EXTRAPOLATION_ROWS, EXTRAPOLATION_FRACTION * masked.size)
    worst = None
    for side, n_beyond in ((1, int(np.count_nonzero(lit > sky_rows.max()))),
                           (-1, int(np.count_nonzero(lit < sky_rows.min())))):
        if n_beyond < reach:
            continue
        toward = side * t
        near = toward >= np.median(toward[have.any(axis=0)])  # (the half of the traced rows nearer the mask)
        train, test = have & ~near[None, :], have & near[None, :]
        if train.sum() < 3 * len(terms_all) + R.shape[0] or test.sum() < 10:
            continue
        gain = _heldout_gain(R, t, u, flex_only, terms_all, train, test, clip, sigma2)
        if worst is None or gain < worst[0]:
            worst = (gain, n_beyond)
    return worst


def refine_warp(stack, warp, masked_rows, gain=None, read_noise=None, *, source="arc", dark=None):
    """The arc's warp corrected to the science frame's sky lines, when that predicts held-out rows better.

    The bright sky lines are found in the sky rows and traced row by row
    (their centroid in small blocks of rows), as
    :func:`~specwidgets.generate_warp_model` traces arc lines. Each traced
    position is compared with where the arc's warp puts that line; the
    difference is fit by a per-line offset plus the shift ``delta(e, t)``
    of the module docstring (5 coefficients: the tilt's change along the
    dispersion, and the curvature's change). The term of a uniform tilt
    change (the flexure) is fit too but not applied: :func:`~specwidgets.fit_sky`
    measures it per exposure and reports it as flexure.

    Parameters
    ----------
    stack : (n_exposures, n_rows, n_cols) array
        Science frames (the correction is common to all).
    warp : WarpModel
        The warp to refine (from the arc).
    masked_rows : (n_rows,) bool array
        Rows to leave out (the traces).
    gain, read_noise : float, optional
        Not needed by the measurement (kept for a common signature).
    source : str
        Where ``warp`` comes from, for the report.
    dark : (n_rows,) bool array, optional
        The rows without sky light (:func:`~specwidgets.core.sky.quality.dark_rows`),
        when the caller has them already; found here otherwise.

    Returns
    -------
    (WarpModel, WarpRefinement)
        The warp to use (``warp`` itself when the correction is not used)
        and what was measured. Validation: the row blocks are split into two
        halves (interleaved runs of 4 blocks); the correction is fit on one
        half and predicts the traced positions of the other, against the
        flexure-only model; it is used only when the held-out squared
        residual (in units of the positions' scatter) drops on both halves,
        and by more than ``MIN_GAIN_PER_COEF`` per coefficient in all.
    """
    stack = np.asarray(stack, dtype=float)
    n_exp, n_rows, n_cols = stack.shape
    sky_rows = _sky_rows(stack, np.asarray(masked_rows, bool), dark)
    refined_source = "arc refined on sky lines" if source == "arc" else source
    if sky_rows.size < 16 or n_cols < 50:
        return warp, WarpRefinement(False, source, reason="too few sky rows to measure the sky lines' warp")
    try:
        # Only its traces are used: its quality warnings (the fold-over check) are not made.
        traced = _trace_sky_lines(stack, sky_rows, warp.ref_row, check_fold=False)
    except ValueError as exc:
        return warp, WarpRefinement(False, source, reason=f"the sky lines could not be traced: {exc}")
    R, t, u, n_lines = _offsets_to_warp(traced, warp)
    if n_lines < 3:
        return warp, WarpRefinement(False, source, reason=f"only {n_lines} sky line(s) could be traced (3 needed)")
    terms_all = _terms_for(n_lines)
    flex_only = [(1, 0)]
    extra = [tj for tj in terms_all if tj != (1, 0)]
    have = np.isfinite(R)
    block_fold = (np.arange(t.size) // 4) % 2
    gains, sigma2 = [], None
    # The positions' scatter about the full model (all blocks): the unit of the gain.
    o, c = _fit_offsets_and_terms(R, t, u, terms_all, have)
    tilt = (_tilt_of(c, terms_all, warp, n_rows),)
    offsets = None
    if n_exp > 1:
        # Each exposure's own (0.3 s of tracing on two Goodman full frames), when
        # the stack's says there is a tilt change worth measuring at all.
        if abs(tilt[0]) > 0.25:
            offsets = _each_exposure_offsets(stack, sky_rows, warp)
            tilt = _tilts_each(offsets, warp, n_rows)
        else:
            tilt = (0.0,) * n_exp
    resid = (R - _predict(o, c, terms_all, t, u))[have]
    sigma2 = float((1.4826 * np.median(np.abs(resid - np.median(resid)))) ** 2) + 1e-6
    clip = 25.0 * sigma2
    for fold in (0, 1):
        train = have & (block_fold == fold)[None, :]
        test = have & (block_fold != fold)[None, :]
        if train.sum() < 3 * len(terms_all) + n_lines or test.sum() < 10:
            return warp, WarpRefinement(False, source, reason="too few traced sky-line positions to validate",
                                        tilt_change=tilt)
        gains.append(_heldout_gain(R, t, u, flex_only, terms_all, train, test, clip, sigma2))
    total = float(sum(gains))
    n_test = int(have.sum())
    need = MIN_GAIN_PER_COEF * len(extra)

    def declined(reason):
        """The arc's warp, and the report of a correction measured and not used (why: ``reason``)."""
        return warp, WarpRefinement(False, source, heldout_gain=total, heldout_gain_per_pixel=total / max(n_test, 1),
                                    n_coefficients=len(extra), tilt_change=tilt, reason=reason)

    if min(gains) <= 0 or total <= need:
        return declined(f"{n_lines} sky lines traced; a correction of the arc's warp changed the held-out "
                        f"chi-square of their positions by {-gains[0]:+.0f} and {-gains[1]:+.0f} (it must lower "
                        f"it in each half, by more than {need:.0f} in all): not used")
    beyond = _extrapolation_gain(R, t, u, have, terms_all, flex_only, clip, sigma2, masked_rows, dark, sky_rows)
    if beyond is not None and beyond[0] <= 0:
        return declined(f"{n_lines} sky lines traced; a correction of the arc's warp lowered the held-out chi-square "
                        f"of their positions by {gains[0]:.0f} and {gains[1]:.0f}, but fit on the sky rows away from "
                        f"the mask it does not predict those beside it ({-beyond[0]:+.0f}), and the masked rows reach "
                        f"{beyond[1]} rows beyond the sky rows: it would be carried there untested, so not used")
    o, c = _fit_offsets_and_terms(R, t, u, terms_all, have)
    d = np.array([v for tj, v in zip(terms_all, c) if tj != (1, 0)])
    if n_exp > 1:
        # A correction of the stack's summed lines is every exposure's: it must suit each one's own lines.
        offsets = offsets if offsets is not None else _each_exposure_offsets(stack, sky_rows, warp)
        worse = _worse_for(offsets, extra, d)
        if worse:
            shown = ", ".join(str(k + 1) for k in worse)
            return declined(f"{n_lines} sky lines traced in the stack; a correction of the arc's warp lowered the "
                            f"held-out chi-square of their positions by {gains[0]:.0f} and {gains[1]:.0f}, but fits "
                            f"the lines of exposure(s) {shown} (counting from 1) worse than the arc's warp: the "
                            "exposures' lines differ (flexure between them), so not used")
    refined = _with_delta(warp, extra, d)
    try:
        refined.effpix_map()
    except ValueError as exc:
        return warp, WarpRefinement(False, source, reason=f"the sky-line correction folds the warp over: {exc}",
                                    tilt_change=tilt)
    # WarpModel is frozen: a copy with the arc's traces and warnings (the maps just made are kept).
    refined = refined.replace(traces=warp.traces, quality_warnings=warp.quality_warnings)
    grid_r = sky_rows.astype(float)[:: max(1, sky_rows.size // 40)]
    grid_e = np.linspace(0, n_cols - 1, 64)
    shift = refined.column_of(grid_e[None, :], grid_r[:, None]) - warp.column_of(grid_e[None, :], grid_r[:, None])
    max_shift = float(np.max(np.abs(shift)))
    # Tested with the uniform tilt change too: fit_sky measures it as the flexure, and without it a
    # correction whose lines need it (a tilt changing as a square of the column) reads as worse.
    try:
        whole = _with_delta(warp, terms_all, c)
        pixels = _sky_pixel_scores(stack, (warp, whole), sky_rows)
    except ValueError:  # (a tilt change that folds the map over: no test, as before)
        pixels = None
    if pixels is not None and not pixels[1] <= PIXEL_WORSE * pixels[0]:
        return declined(f"{n_lines} sky lines traced; a correction of the arc's warp (up to {max_shift:.2f} px) "
                        f"lowered the held-out chi-square of their positions by {gains[0]:.0f} and {gains[1]:.0f}, "
                        f"but a sky fit on it predicts held-out sky rows worse than on the arc's warp (score "
                        f"{pixels[1]:.4g} against {pixels[0]:.4g}): traces that jumped between lines? Not used")
    return refined, WarpRefinement(
        True, refined_source, max_shift=max_shift, heldout_gain=total, heldout_gain_per_pixel=total / max(n_test, 1),
        n_coefficients=len(extra), tilt_change=tilt,
        reason=(f"{n_lines} sky lines traced: they sit up to {max_shift:.2f} px from the arc's warp; the "
                f"correction lowered the held-out chi-square of their positions by {gains[0]:.0f} and "
                f"{gains[1]:.0f}"),
    )


#: Sky rows read by :func:`_sky_pixel_scores` (every other one to fit, the rest to score).
PIXEL_CHECK_ROWS = 80
#: A correction is declined when its sky-pixel score is more than this times the arc warp's. Its fit's
#: spatial terms absorb a small warp error (a shift linear in the row is a derivative term), so good
#: sub-pixel corrections tie (the true warp of a tilt change scored 1.1425 against the arc's 1.1401);
#: traces that jumped between lines score 1.7-2.3 times worse (a trial's lines tilted 30-40 px).
PIXEL_WORSE = 1.05


def _sky_pixel_scores(stack, warps, sky_rows, n_bins=10):
    """Per warp, how well a sky fit on it predicts held-out sky pixels: the mean clipped squared residual.

    The stack's sum (as its lines were traced) on up to :data:`PIXEL_CHECK_ROWS`
    sky rows: every other one fit by a B-spline sky on the warp's effective
    pixels, the others scored. The fit has spatial order 2, as the sky fit's
    own largest automatic one: with order 0, a sky 20 % brighter at one end
    of the slit than the other scored the true warp worse than the arc's
    (1.43 against 1.27) and good corrections were declined (a trial: the sky
    0.14 -> 0.4-2.7 sigma RMS). A pixel's residual is in units
    of the first warp's residuals' robust scatter at its sky level (``n_bins``
    bins of the model, so the same units for every warp, whatever the data's
    unit), clipped at 5 (cosmic rays). The traced positions' own test can be
    fooled: traces that jump to neighbouring lines agree with a warp tens of
    pixels off (a trial's lines tilted 30-40 px: a 10-22 px correction, the
    sky 6-7 sigma off); the sky pixels cannot. None when too few rows or samples.
    """
    from .bspline import fit_bspline_sky

    summed = stack[0] if stack.shape[0] == 1 else stack.sum(axis=0)
    n_rows, n_cols = summed.shape
    pick = np.asarray(sky_rows)[:: max(1, -(-len(sky_rows) // PIXEL_CHECK_ROWS))]
    train, test = pick[0::2], pick[1::2]
    if train.size < 4 or test.size < 4:
        return None
    f_train, f_test = summed[train].ravel(), summed[test].ravel()
    r_train = np.repeat(train.astype(float), n_cols)
    r_test = np.repeat(test.astype(float), n_cols)
    # The fits' weights with a floor of one pixel's noise (neighbours along the dispersion): with none,
    # a faint sky's pixels at or below zero weighed ~1000 times the rest, its fits were noise, and a
    # right correction of an arc of another night scored 6.6 against the arc's 3.3 (declined: the sky
    # lines under the mask 2 sigma off per column, "ok"; trial F2).
    steps = np.diff(summed[train], axis=1)
    steps = steps[np.isfinite(steps)]
    floor = math.sqrt(_robust_var(steps) / 2.0) if steps.size else 0.0
    scores, scale, use = [], None, None
    for warp in warps:
        emap = warp.effpix_map((n_rows, n_cols))
        try:
            model = fit_bspline_sky(emap[train].ravel(), f_train, r_train, spatial_order=2,
                                    row_range=(0.0, float(n_rows)), knot_spacing=0.75, max_iterations=2,
                                    read_noise=floor)
        except ValueError:
            return None
        e_test = emap[test].ravel()
        lo, hi = model.extent
        inside = np.isfinite(f_test) & np.isfinite(e_test) & (e_test >= lo) & (e_test <= hi)
        r = np.full(e_test.shape, np.nan)
        r[inside] = f_test[inside] - model(e_test[inside], r_test[inside])
        if scale is None:
            use = inside & np.isfinite(r)
            if use.sum() < 20 * n_bins:
                return None
            level = f_test - r
            edges = np.quantile(level[use], np.linspace(0, 1, n_bins + 1)[1:-1])
            which = np.searchsorted(edges, level)
            scale = np.full(n_bins, np.nan)
            for b in range(n_bins):
                rb = r[use & (which == b)]
                if rb.size:
                    scale[b] = 1.4826 * np.median(np.abs(rb - np.median(rb)))
            if not np.all(np.isfinite(scale) & (scale > 0)):
                return None
            scale = scale[which]
        z2 = np.where(use & np.isfinite(r), (r / scale) ** 2, 25.0)
        scores.append(float(np.mean(np.minimum(z2[use], 25.0))))
    return scores


def cached_refinement(stack, warp, masked_rows, first_look=None):
    """:func:`refine_warp`, once per science frame and warp (cached on the warp model).

    ``first_look``: the fit's :class:`~specwidgets.core.sky.quality.FirstLook`
    of these frames and mask, whose dark rows are read only when the
    refinement is measured.

    The key is the values of the frames (:func:`fingerprint`), not the mask:
    moving the mask (a slider) must not pay for the measurement again, and
    the warp is a property of the frame and the instrument, not of where
    the trace is. It is measured with the mask of the first call. A warp
    that is already a refinement (or was fit on the sky) is not refined again.
    """
    if warp._cache.get("warp_source") in ("sky lines", "arc refined on sky lines"):
        report = warp._cache.get("sky_refinement_report")
        return warp, report if report is not None else WarpRefinement(False, warp._cache["warp_source"])
    key = ("sky_refinement", fingerprint(stack))
    cache = warp._cache
    if key not in cache:
        # One frame's refinement per warp model: a new science frame
        # replaces the old entry (its refined warp holds full-frame maps).
        for old in [k for k in cache if isinstance(k, tuple) and k and k[0] == "sky_refinement"]:
            del cache[old]
        refined, report = refine_warp(stack, warp, masked_rows,
                                      dark=None if first_look is None else first_look.dark)
        if refined is not warp:
            refined._cache["warp_source"] = report.source
            refined._cache["sky_refinement_report"] = report
        cache[key] = (refined, report)
    return cache[key]


def sky_warp_model(images, mask_region=(None, None), *, line_order=2, warp_order=None) -> WarpModel:
    """Fit a warp model on the science frame's own sky lines (no arc).

    The bright sky lines are found in the median sky spectrum of the sky
    rows (the rows outside ``mask_region`` that receive light) and traced
    row by row, as :func:`~specwidgets.generate_warp_model` traces arc
    lines, on the sum of the exposures with the masked rows blanked.

    Parameters
    ----------
    images : (n_rows, n_cols) or (n_exposures, n_rows, n_cols) array_like
        Science frames.
    mask_region : (int, int) or list of (int, int)
        Rows to leave out (the traces), as for :func:`~specwidgets.fit_sky`.
    line_order : int
        Polynomial order of a line's column as a function of row.
    warp_order : int, optional
        Its coefficients' order in column; default 2 with 5 or more lines
        traced, else 1.

    Returns
    -------
    WarpModel
        With ``traces`` of the sky lines (``model.report()`` lists them).

    Raises
    ------
    ValueError
        When the sky rows hold too few lines to trace (give an arc frame).

    Examples
    --------
    >>> from specwidgets.io.synthetic import make_synthetic_longslit
    >>> f = make_synthetic_longslit(shape=(120, 800), tilt=3.0, n_sky_lines=30, seed=5)
    >>> model = sky_warp_model(f.science, f.trace_rows)
    >>> tilt = model.column_of(400.0, 119) - model.column_of(400.0, 0)
    >>> bool(abs(tilt - 3.0 * 119 / 120) < 0.1)
    True
    """
    from ..inputs import as_image_stack, mask_ranges, mask_rows

    stack, _ = as_image_stack(images, "images")
    n_rows = stack.shape[1]
    return _sky_warp_model(np.asarray(stack, float), mask_rows(mask_ranges(mask_region, n_rows), n_rows),
                           line_order, warp_order)


def _sky_warp_model(stack, masked, line_order=2, warp_order=None, dark=None):
    """:func:`sky_warp_model` of a float stack and its masked rows (``dark``: its dark rows, if known)."""
    n_rows = stack.shape[1]
    sky_rows = _sky_rows(stack, masked, dark)
    if sky_rows.size < 8:
        raise ValueError(
            f"only {sky_rows.size} lit sky rows are left outside the mask: too few to trace sky lines "
            "(give an arc frame)"
        )
    first = None
    for order in ([warp_order] if warp_order is not None else [2, 1]):
        try:
            model = _trace_sky_lines(stack, sky_rows, n_rows // 2, line_order, order)
        except ValueError as exc:
            first = first or exc
            continue
        n_used = int(model.traces.used.sum())
        if warp_order is None and order == 2 and n_used < 5:
            continue
        model._cache["warp_source"] = "sky lines"
        model._cache["sky_refinement_report"] = WarpRefinement(
            False, "sky lines", reason=f"warp fit on {n_used} sky lines traced in the science frame (no arc)"
        )
        return model
    raise ValueError(
        f"the sky lines could not be traced well enough to fit a warp without an arc ({first}): "
        "give an arc frame (generate_warp_model)"
    )


_SKY_WARPS: dict = {}


def cached_sky_warp_model(stack, masked_rows, first_look=None):
    """:func:`sky_warp_model` once per science frame (the last frame's is kept), as :func:`fit_sky` uses it
    when no warp model is given (``first_look``: the fit's, whose dark rows it reads)."""
    key = fingerprint(stack)
    model = _SKY_WARPS.get(key)
    if model is None:
        masked = np.asarray(masked_rows, bool)
        model = _sky_warp_model(np.asarray(stack, float), masked,
                                dark=None if first_look is None else first_look.dark)
        # One entry (the batch's worker threads each fit their own frames;
        # a model is returned from the local name, never looked up again).
        _SKY_WARPS.clear()
        _SKY_WARPS[key] = model
    return model
