"""Warp models: how arc lines curve across the slit, and the effective-pixel map.

A warp model maps an *effective pixel* ``e`` (the column at the reference row
on which a wavelength falls) and a row ``y`` to the column ``x`` where that
wavelength falls in row ``y``::

    x(e, y) = e + sum_{k=1..line_order} a_k(e) * t**k,   t = (y - ref_row) / row_scale
    a_k(e) = sum_{j=0..warp_order} C[k-1, j] * u**j,     u = (e - col_centre) / col_scale

so ``x(e, ref_row) == e`` by construction. The effective-pixel map is the
inverse, ``e(x, y)``, found by Newton's method for any orders.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field, fields

import numpy as np
from numba import njit
from numpy.typing import ArrayLike
from scipy.ndimage import median_filter

from ._stats import quiet_nanmean
from ._threads import map_in_threads
from .inputs import as_image, check_number
from .lines import _PROFILE_ROWS, robust_noise, row_profile
from .peaks import fit_gaussian_windows, window_indices

__all__ = ["WarpModel", "LineTraces", "PoorWarpWarning", "generate_warp_model"]

# A model whose lines scatter more than this about it is flagged as poor:
# good arcs trace to a few hundredths of a pixel.
POOR_RMS_PX = 0.25


@dataclass
class LineTraces:
    """What was measured of each guessed line, kept for plots and reports.

    Attributes
    ----------
    guesses : (n_lines,) array
        The guesses as given.
    ref_positions : (n_lines,) array
        Fitted column of each line at the reference row (NaN if not found).
    rows : (n_samples,) array
        Row coordinate of each measurement (block centres).
    positions : (n_lines, n_samples) array
        Measured column of each line in each row block (NaN where rejected).
    used : (n_lines,) bool array
        Lines that constrain the model.
    rms : (n_lines,) array
        RMS residual of each line's measurements about the warp model [px].
    """

    guesses: np.ndarray
    ref_positions: np.ndarray
    rows: np.ndarray
    positions: np.ndarray
    used: np.ndarray
    rms: np.ndarray


@dataclass(frozen=True, eq=False)
class WarpModel:
    """A fitted (or given) warp model; see the module docstring for the form.

    Use :func:`generate_warp_model` to fit one to an arc frame, or
    :meth:`from_tilt` / :meth:`identity` to build one directly.

    A model is immutable: its fields cannot be assigned and ``coefficients``
    is a read-only array, so the maps it caches (:meth:`effpix_map`,
    :meth:`edge_map`) always belong to its coefficients. Build a changed
    model with :meth:`replace`.

    Examples
    --------
    >>> model = WarpModel.from_tilt((40, 100), 3.0)
    >>> model.coefficients[0, 0] = 0.0
    Traceback (most recent call last):
    ...
    ValueError: assignment destination is read-only
    >>> straight = model.replace(coefficients=[[0.0]])
    >>> bool((straight.effpix_map()[0] == range(100)).all())
    True
    """

    shape: tuple[int, int]
    ref_row: int
    coefficients: np.ndarray
    row_scale: float
    col_centre: float
    col_scale: float
    traces: LineTraces | None = None
    #: Human-readable reasons to distrust this model (empty when it looks good).
    quality_warnings: tuple[str, ...] = ()
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        # Checked here, so that every constructor (identity, from_tilt, from_dict, replace) says what is wrong.
        try:
            shape = tuple(int(s) for s in self.shape)
        except (TypeError, ValueError):
            raise TypeError(f"the warp model's shape must be (rows, cols) integers; got {self.shape!r}") from None
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"the warp model's shape must be (rows, cols), both >= 1; got {self.shape!r}")
        if not 0 <= int(self.ref_row) < shape[0]:
            raise ValueError(f"ref_row {self.ref_row} is outside the frame's {shape[0]} rows (0 to {shape[0] - 1})")
        coefficients = np.array(np.atleast_2d(np.asarray(self.coefficients, dtype=float)))
        if coefficients.size == 0:
            coefficients = np.zeros((0, 1))
        if not np.isfinite(coefficients).all():
            raise ValueError("the warp model's coefficients hold NaN or infinite values (a tilt or curvature of NaN?)")
        for name in ("row_scale", "col_centre", "col_scale"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or (name != "col_centre" and value <= 0):
                raise ValueError(f"the warp model's {name} must be a finite number{'' if name == 'col_centre' else ' > 0'}; "
                                 f"got {getattr(self, name)!r}")
        coefficients.setflags(write=False)
        # Frozen: the normalised values go in through object.__setattr__.
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "ref_row", int(self.ref_row))
        object.__setattr__(self, "coefficients", coefficients)
        object.__setattr__(self, "quality_warnings", tuple(str(w) for w in self.quality_warnings))

    def replace(self, **changes) -> WarpModel:
        """A copy with some fields changed, e.g. ``model.replace(coefficients=c)``.

        Changing only ``traces`` or ``quality_warnings`` keeps the cached
        maps (they depend on the geometry alone); any other change starts a
        fresh cache.
        """
        unknown = set(changes) - {f.name for f in fields(self) if f.init}
        if unknown:
            raise TypeError(f"WarpModel has no field(s) {sorted(unknown)}")
        new = dataclasses.replace(self, **changes)
        if set(changes) <= {"traces", "quality_warnings"}:
            object.__setattr__(new, "_cache", self._cache)
        return new

    # ------------------------------------------------------------------ constructors
    @classmethod
    def identity(cls, shape: tuple[int, int], ref_row: int | None = None) -> WarpModel:
        """A model with straight, vertical lines: ``effpix_map[y, x] == x``."""
        n_rows, n_cols = _shape_pair(shape)
        ref = n_rows // 2 if ref_row is None else int(ref_row)
        return cls(shape, ref, np.zeros((0, 1)), float(n_rows), (n_cols - 1) / 2, max((n_cols - 1) / 2, 1.0))

    @classmethod
    def from_tilt(cls, shape: tuple[int, int], tilt, ref_row: int | None = None, curvature: float = 0.0) -> WarpModel:
        """Lines that shift by ``tilt`` columns from the bottom row to the top row.

        ``tilt`` may be a sequence ``(c0, c1, c2, ...)``: the tilt is then
        ``c0 + c1*u + c2*u**2 ...`` with ``u`` running from -1 at column 0 to
        +1 at the last column. ``curvature`` adds a quadratic bow: the line's
        column at both ends of the slit moves by ``curvature`` pixels relative
        to a straight line.
        """
        n_rows, n_cols = _shape_pair(shape)
        ref = n_rows // 2 if ref_row is None else int(ref_row)
        row_scale = float(n_rows)
        tilt_coeffs = np.atleast_1d(np.asarray(tilt, dtype=float))
        # t spans (n_rows - 1) / n_rows between the first and last rows.
        span = (n_rows - 1) / row_scale
        rows = [tilt_coeffs / span]
        if curvature:
            half = span / 2
            rows.append(np.r_[curvature / half**2, np.zeros(len(tilt_coeffs) - 1)])
        coeffs = np.array(rows)
        return cls(shape, ref, coeffs, row_scale, (n_cols - 1) / 2, max((n_cols - 1) / 2, 1.0))

    # ------------------------------------------------------------------ properties
    @property
    def line_order(self):
        return self.coefficients.shape[0]

    @property
    def warp_order(self):
        return self.coefficients.shape[1] - 1

    @property
    def line_rms(self):
        """RMS residual of each traced line about the model [px] (the fit-quality report)."""
        return None if self.traces is None else self.traces.rms

    @property
    def is_poor(self):
        return bool(self.quality_warnings)

    def __repr__(self):
        # The traces hold every measured position: the default repr ran to screens.
        traced = "given directly" if self.traces is None else (
            f"{int(self.traces.used.sum())} of {self.traces.used.size} traced lines used")
        poor = f", {len(self.quality_warnings)} quality warning(s)" if self.quality_warnings else ""
        return (f"WarpModel(shape={tuple(self.shape)}, ref_row={self.ref_row}, line_order={self.line_order}, "
                f"warp_order={self.warp_order}, {traced}{poor})")

    def report(self):
        """A table of the traced lines: guess, fitted position, used, RMS residual."""
        if self.traces is None:
            return "warp model given directly (no traced lines)"
        t = self.traces
        lines = [f"{'guess':>9} {'x_ref':>9} {'used':>5} {'rms [px]':>9}"]
        for g, x, u, r in zip(t.guesses, t.ref_positions, t.used, t.rms):
            lines.append(f"{g:9.2f} {x:9.3f} {str(bool(u)):>5} {r:9.4f}")
        for w in self.quality_warnings:
            lines.append(f"warning: {w}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ evaluation
    def _u(self, e):
        return (np.asarray(e, dtype=float) - self.col_centre) / self.col_scale

    def _t(self, y):
        return (np.asarray(y, dtype=float) - self.ref_row) / self.row_scale

    def column_of(self, effpix, rows):
        """Column ``x`` on which effective pixel ``effpix`` falls in row ``rows`` (broadcasts)."""
        e = np.asarray(effpix, dtype=float)
        t = self._t(rows)
        u = self._u(e)
        x = np.array(e, dtype=float, copy=True)
        tk = np.ones_like(t)
        for k in range(self.line_order):
            tk = tk * t
            x = x + np.polynomial.polynomial.polyval(u, self.coefficients[k]) * tk
        return x

    def effective_pixel(self, cols, rows, tol=1e-9, max_iter=30):
        return self._effective_pixel(cols, rows, tol, max_iter)[0]

    def _effective_pixel(self, cols, rows, tol=1e-9, max_iter=30, e=None, n_iter=None):
        """Effective pixel of column ``cols`` in row ``rows`` (broadcast): the inverse of :meth:`column_of`.

        In one row the model is a polynomial in ``e`` whose coefficients
        depend only on the row, so they are formed once per row and Newton's
        method runs on plain Horner evaluations (exact in one step for a
        linear ``warp_order``).

        Raises
        ------
        ValueError
            If the model folds over (columns map back onto themselves) so
            that it cannot be inverted there.

        Notes
        -----
        ``_effective_pixel`` returns ``(e, steps taken)``; given ``e`` (a
        result of an earlier call) it goes on from there, and ``n_iter``
        takes exactly that many steps: so a grid done in blocks can be brought
        to the very numbers one call on the whole grid gives.
        """
        x = np.asarray(cols, dtype=float)
        rows = np.asarray(rows, dtype=float)
        shape = np.broadcast_shapes(x.shape, rows.shape)
        if self.line_order == 0:
            return np.broadcast_to(x, shape).copy(), 0
        t = self._t(rows)
        powers = t[..., None] ** np.arange(1, self.line_order + 1)
        row_coeffs = powers @ self.coefficients  # rows.shape + (warp_order + 1,), lowest power first
        deriv = row_coeffs[..., 1:] * np.arange(1, row_coeffs.shape[-1]) / self.col_scale

        def horner(c, u):
            out = np.broadcast_to(c[..., -1], shape).copy()
            for j in range(c.shape[-1] - 2, -1, -1):
                out *= u
                out += c[..., j]
            return out

        if e is None:
            e = x - horner(row_coeffs, (x - self.col_centre) / self.col_scale)
        steps = 0
        for _ in range(max_iter if n_iter is None else n_iter):
            u = (e - self.col_centre) / self.col_scale
            slope = 1.0 + (horner(deriv, u) if deriv.shape[-1] else 0.0)
            if np.any(slope <= 0):
                raise ValueError(
                    "the warp model folds over (dx/de <= 0 somewhere on the detector), "
                    "so effective pixels are not unique: check the guesses, tolerance and orders"
                )
            step = (e + horner(row_coeffs, u) - x) / slope
            e -= step
            steps += 1
            if n_iter is None and np.nanmax(np.abs(step)) < tol:
                break
        return e, steps

    #: Rows per block of :meth:`_invert_grid` (its temporaries are a few arrays of this many rows).
    _GRID_BLOCK_ROWS = 64

    def _invert_grid(self, cols, n_rows):
        """Effective pixels of ``cols`` (1D) in every row: an ``(n_rows, len(cols))`` array.

        Done in blocks of rows, so the Newton iteration's temporaries are a
        few blocks, not a few full frames (on a 947 x 2030 frame: ~90 MB less
        at the peak). Blocks that converged in fewer steps than the slowest
        then take the missing steps, so the numbers are exactly those of one
        Newton iteration over the whole grid.
        """
        cols = np.asarray(cols, dtype=float)[None, :]
        out = np.empty((n_rows, cols.shape[1]))
        block = self._GRID_BLOCK_ROWS

        def invert(r0):
            r1 = min(r0 + block, n_rows)
            out[r0:r1], n = self._effective_pixel(cols, np.arange(r0, r1)[:, None])
            return n

        # The blocks side by side on the cores (NumPy's loops release the GIL).
        steps = map_in_threads(invert, range(0, n_rows, block))
        most = max(steps, default=0)
        for b, n in enumerate(steps):
            if n < most:
                r0, r1 = b * block, min((b + 1) * block, n_rows)
                out[r0:r1], _ = self._effective_pixel(cols, np.arange(r0, r1)[:, None], e=out[r0:r1].copy(), n_iter=most - n)
        return out

    def effpix_map(self, shape=None):
        """The effective pixel of every pixel centre, ``(n_rows, n_cols)``; cached."""
        shape = self._check_shape(shape)
        key = ("map", shape)
        if key not in self._cache:
            emap = self._invert_grid(np.arange(shape[1]), shape[0])
            emap.setflags(write=False)
            self._cache[key] = emap
        return self._cache[key]

    def edge_map(self, shape=None):
        """Effective pixel of every pixel's left edge, ``(n_rows, n_cols + 1)``; cached.

        Pixel ``(y, x)`` spans effective pixels ``edge[y, x] <= e < edge[y, x + 1]``.
        """
        shape = self._check_shape(shape)
        key = ("edges", shape)
        if key not in self._cache:
            edges = self._invert_grid(np.arange(shape[1] + 1) - 0.5, shape[0])
            edges.setflags(write=False)
            self._cache[key] = edges
        return self._cache[key]

    def line_curves(self, rows=None):
        """Model columns of each traced line at ``rows``: ``(n_lines, n_rows)`` for plotting."""
        if self.traces is None:
            return np.empty((0, 0))
        rows = np.arange(self.shape[0]) if rows is None else np.asarray(rows, dtype=float)
        e = self.traces.ref_positions[:, None]
        return self.column_of(e, rows[None, :])

    def _check_shape(self, shape):
        shape = self.shape if shape is None else tuple(int(s) for s in shape)
        if shape != self.shape:
            raise ValueError(
                f"the images have shape {shape} (rows, cols) but the warp model was fit "
                f"on shape {self.shape}: fit the warp model on an arc of the same crop"
                + (", binning and orientation (this is the other's shape turned: a DISPAXIS card in some files "
                   "only?)" if shape == self.shape[::-1] else
                   " and binning (CCDSUM or the like: a 2 x 2 arc has half the rows and columns of a 1 x 1 one)"
                   if any(a and b and max(a, b) % min(a, b) == 0 and a != b for a, b in zip(shape, self.shape))
                   else " and binning")
            )
        return shape

    def to_dict(self):
        """Plain values describing the model (for FITS headers and saving)."""
        return {
            "shape": list(self.shape),
            "ref_row": self.ref_row,
            "coefficients": self.coefficients.tolist(),
            "row_scale": self.row_scale,
            "col_centre": self.col_centre,
            "col_scale": self.col_scale,
        }

    @classmethod
    def from_dict(cls, values):
        """Rebuild a model written by :meth:`to_dict`."""
        missing = [k for k in ("shape", "ref_row", "coefficients", "row_scale", "col_centre", "col_scale")
                   if k not in values]
        if missing:
            raise ValueError(f"a warp model's dict needs {', '.join(missing)} (as WarpModel.to_dict writes it)")
        return cls(
            tuple(values["shape"]),
            int(values["ref_row"]),
            np.asarray(values["coefficients"], dtype=float),
            float(values["row_scale"]),
            float(values["col_centre"]),
            float(values["col_scale"]),
        )


def _shape_pair(shape):
    try:
        n_rows, n_cols = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (rows, cols); got {shape!r}") from None
    return n_rows, n_cols


# ---------------------------------------------------------------------- fitting


def _check_orders(line_order, warp_order, n_rows):
    for name, value in (("line_order", line_order), ("warp_order", warp_order)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer; got {value!r}")
    if line_order >= n_rows // 2:
        raise ValueError(f"line_order={line_order} is too high for an arc of {n_rows} rows")


def _check_guesses(guess, n_cols):
    if guess is None:
        raise TypeError("guess is None: give the arc lines' columns (the first value find_cal_lines returns)")
    try:
        arr = np.asarray(guess, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"guess must be a list of column positions; got {guess!r}") from None
    if arr.ndim == 0:
        arr = arr[None]
    if arr.ndim != 1:
        raise ValueError(f"guess must be a 1D list of column positions; got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("guess is empty: give at least one line position (see find_cal_lines)")
    if not np.all(np.isfinite(arr)):
        raise ValueError("guess holds NaN or infinite positions")
    inside = (arr >= 0) & (arr <= n_cols - 1)
    if not inside.any():
        raise ValueError(
            f"every guess ({arr.min():g}..{arr.max():g}) lies off the image, whose columns "
            f"run 0..{n_cols - 1}"
        )
    if not inside.all():
        warnings.warn(f"ignoring guesses off the image (columns 0..{n_cols - 1}): {arr[~inside]}", stacklevel=3)
    return np.unique(arr[inside])


#: Frames of at least this many pixels take their block means in one compiled pass.
_BLOCK_KERNEL_MIN_PIXELS = 1 << 20


@njit(cache=True, nogil=True, error_model="numpy")
def _block_nanmeans(image, block, blank, out):  # pragma: no cover - compiled
    """``out[b]``: np.nanmean of rows ``b * block ..`` (the last block takes the rest), as NumPy sums.

    NumPy replaces NaN by 0 and adds the rows one after the other to 0, then
    divides by the count of numbers: the same additions here, without its
    frame-sized copies. Rows where ``blank`` is true count as NaN (adding
    +0.0 changes no sum that starts at +0.0, so skipping them is the same).
    """
    n_rows, n_cols = image.shape
    n_out = out.shape[0]
    tot = np.empty(n_cols)
    cnt = np.empty(n_cols, np.int64)
    for b in range(n_out):
        r0 = b * block
        r1 = n_rows if b == n_out - 1 else r0 + block
        tot[:] = 0.0
        cnt[:] = 0
        for r in range(r0, r1):
            if blank[r]:
                continue
            for c in range(n_cols):
                v = image[r, c]
                if math.isnan(v):
                    tot[c] += 0.0
                else:
                    tot[c] += v
                    cnt[c] += 1
        for c in range(n_cols):
            # (0 / 0: the NaN NumPy's division gives, sign bit included.)
            out[b, c] = tot[c] / cnt[c]


def _block_kernel_takes(image):
    """Whether :func:`_block_profiles` takes ``image``'s block means in one compiled pass."""
    # (One column: NumPy would sum down it pairwise, another order of the additions.)
    return image.size >= _BLOCK_KERNEL_MIN_PIXELS and image.dtype == np.float64 and image.shape[1] > 1


def _block_profiles(image, block, blank_rows=None):
    """Mean of consecutive ``block`` rows (NaN-aware) and the mean row of each block.

    ``blank_rows`` (bool per row): rows read as NaN (copied blanked only
    for an image the compiled pass does not take: a small one).
    """
    n_rows = image.shape[0]
    n_blocks = n_rows // block
    rows = np.arange(n_blocks) * block + (block - 1) / 2
    if n_rows % block:
        rows = np.r_[rows, (n_blocks * block + n_rows - 1) / 2]
    if _block_kernel_takes(image):
        # np.nanmean made three frame-sized temporaries (the NaN-free copy,
        # its mask and the mask's inverse): 0.1-0.4 s on 4096 x 4096.
        profiles = np.empty((rows.size, image.shape[1]))
        blank = np.zeros(n_rows, np.bool_) if blank_rows is None else np.ascontiguousarray(blank_rows, np.bool_)
        _block_nanmeans(np.ascontiguousarray(image), block, blank, profiles)
        return profiles, rows
    if blank_rows is not None:
        image = image.copy()
        image[np.asarray(blank_rows, bool)] = np.nan
    cut = image[: n_blocks * block].reshape(n_blocks, block, -1)
    profiles = quiet_nanmean(cut, axis=1)
    if n_rows % block:
        profiles = np.vstack([profiles, quiet_nanmean(image[n_blocks * block :], axis=0)])
    return profiles, rows


def _ref_positions(image, guesses, tolerance, ref_row, half):
    """Each guess's line at the reference row, then a sub-pixel fit.

    The line is the significant local peak nearest the guess within
    ``tolerance`` (the brightest peak would pull a guess onto a bright
    neighbour); without one, the brightest pixel in reach.
    """
    profile, _ = row_profile(image, ref_row)
    n_cols = profile.size
    finite = np.isfinite(profile)
    filled = np.where(finite, profile, np.nanmedian(profile) if finite.any() else 0.0)
    excess = filled - median_filter(filled, size=min(51, n_cols | 1), mode="nearest")
    noise = max(robust_noise(profile), 1e-12)
    is_peak = np.zeros(n_cols, bool)
    is_peak[1:-1] = (excess[1:-1] >= excess[:-2]) & (excess[1:-1] > excess[2:]) & (excess[1:-1] > 5 * noise)

    reach = int(np.ceil(tolerance))
    search = np.arange(-reach, reach + 1)
    cand = np.rint(guesses).astype(int)[:, None] + search[None, :]
    inside = (cand >= 0) & (cand < n_cols) & (np.abs(cand - guesses[:, None]) <= tolerance)
    cand_c = np.clip(cand, 0, n_cols - 1)
    distance = np.where(inside & is_peak[cand_c], np.abs(cand - guesses[:, None]), np.inf)
    brightest = np.argmax(np.where(inside, excess[cand_c], -np.inf), axis=1)
    choice = np.where(np.isfinite(distance.min(axis=1)), np.argmin(distance, axis=1), brightest)
    peak = cand[np.arange(len(guesses)), choice]
    cols = window_indices(peak, half, n_cols)
    data = np.where(finite, profile, np.nan)[cols]
    mu, sigma, _, _, ok = fit_gaussian_windows(cols, data)
    ok &= np.abs(mu - guesses) <= tolerance + 0.5
    mu = np.where(ok, mu, np.nan)
    # Two guesses that landed on one line would count it twice.
    order = np.argsort(mu)
    dup = np.zeros(len(mu), bool)
    dup[order[1:]] = np.diff(mu[order]) < 1.0
    mu[dup] = np.nan
    return mu, sigma


def _track(profiles, block_rows, start, x_ref, half, tolerance):
    """Follow each line from the reference block outwards, block by block."""
    n_blocks, n_cols = profiles.shape
    positions = np.full((len(x_ref), n_blocks), np.nan)
    alive = np.isfinite(x_ref)
    seed = np.where(alive, x_ref, 0.0)
    for direction in (1, -1):
        pred = seed.copy()
        order = range(start, n_blocks) if direction == 1 else range(start - 1, -1, -1)
        for b in order:
            cols = window_indices(pred, half, n_cols)
            mu, _, _, _, ok = fit_gaussian_windows(cols, profiles[b][cols], n_iter=8)
            ok &= alive & (np.abs(mu - pred) < max(1.5, half / 2)) & (np.abs(mu - seed) <= tolerance)
            positions[ok, b] = mu[ok]
            pred = np.where(ok, mu, pred)
    return positions


def _clipped_polyfit(t, x, order, n_sigma=3.5, n_iter=5):
    """Polynomial fit with iterative sigma clipping; returns coefficients (low first) and the kept mask."""
    keep = np.isfinite(x)
    coef = None
    for _ in range(n_iter):
        if keep.sum() < order + 2:
            return None, keep
        coef = np.polynomial.polynomial.polyfit(t[keep], x[keep], order)
        resid = x - np.polynomial.polynomial.polyval(t, coef)
        scale = 1.4826 * np.median(np.abs(resid[keep])) + 1e-3
        new_keep = np.isfinite(x) & (np.abs(resid) < n_sigma * scale)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return coef, keep


def _fit_global(model, x0, rows, positions, used):
    """Least-squares warp coefficients from all measured points of the used lines."""
    line_order = model.line_order
    n_coef = model.coefficients.shape[1]
    if line_order == 0:
        return model.coefficients
    t = model._t(rows)[None, :] * np.ones_like(positions)
    u = model._u(x0)[:, None] * np.ones_like(positions)
    ok = np.isfinite(positions) & used[:, None]
    t, u = t[ok], u[ok]
    target = (positions - x0[:, None])[ok]
    design = np.empty((t.size, line_order * n_coef))
    for k in range(line_order):
        for j in range(n_coef):
            design[:, k * n_coef + j] = t ** (k + 1) * u**j
    sol, *_ = np.linalg.lstsq(design, target, rcond=None)
    return sol.reshape(line_order, n_coef)


def generate_warp_model(image: ArrayLike, guess: ArrayLike, tolerance: float = 16, line_order: int = 2,
                        warp_order: int = 1, ref_idx: int | None = None, debug: bool = False) -> WarpModel:
    """Fit a warp model to an arc frame: how each line's column changes along the slit.

    Parameters
    ----------
    image : (n_rows, n_cols) array_like
        Arc-lamp frame, bias subtracted, dispersion along columns.
    guess : sequence of float
        Approximate columns of arc lines at the reference row (for example
        the positions from :func:`find_cal_lines`).
    tolerance : float
        How far (columns) a line may lie from its guess, and drift from its
        reference position along the slit.
    line_order : int
        Polynomial order of a line's column as a function of row.
    warp_order : int
        Polynomial order, in column, of each of those coefficients.
    ref_idx : int, optional
        Reference row (default: the middle row, ``n_rows // 2``).
    debug : bool
        Print the per-line fit report.

    Returns
    -------
    WarpModel
        With ``traces`` holding every measurement and ``line_rms`` the
        residual RMS of each line about the model.

    Warns
    -----
    PoorWarpWarning
        When the model is probably poor (``quality_warnings``: too few
        lines, lines that scatter about it, lines traced over little of the
        slit or of the columns, a model that folds); the warnings name why.
        ``fit_sky`` can still refine such a model from the sky lines.

    Raises
    ------
    ValueError
        On a non-2D image, an empty guess list or guesses all off the image,
        bad orders or tolerance, or when too few lines can be traced.

    Examples
    --------
    >>> from specwidgets.io.synthetic import make_synthetic_longslit
    >>> from specwidgets import find_cal_lines
    >>> frames = make_synthetic_longslit(seed=1)
    >>> locs, _ = find_cal_lines(frames.arc)
    >>> model = generate_warp_model(frames.arc, locs)
    >>> model.effpix_map().shape == frames.arc.shape
    True
    """
    model = _generate_warp_model(image, guess, tolerance, line_order, warp_order, ref_idx, debug)
    if model.quality_warnings:
        # The model carries them, but a script that does not read them would
        # use a poor model as a good one.
        warnings.warn(
            "the warp model is probably poor: " + "; ".join(model.quality_warnings)
            + " (model.report() lists the traced lines)",
            PoorWarpWarning, stacklevel=2,
        )
    return model


class PoorWarpWarning(UserWarning):
    """``generate_warp_model`` made a model it judges probably poor (see ``WarpModel.quality_warnings``)."""


def _generate_warp_model(image, guess, tolerance=16, line_order=2, warp_order=1, ref_idx=None, debug=False, *,
                         check_fold=True, blank_rows=None):
    """:func:`generate_warp_model`; ``check_fold=False`` leaves out the fold-over check of its quality
    warnings (the edge map of the whole frame: 0.1-0.4 s and 134 MB on 4096 x 4096), for a model
    used only for its traces. ``blank_rows`` (bool per row): rows read as NaN, without a blanked
    copy of a large frame (a science frame's traces and dark rows, for its sky lines)."""
    image = as_image(image, "image (the arc frame)")
    n_rows, n_cols = image.shape
    if blank_rows is not None:
        blank_rows = np.asarray(blank_rows, bool)
        if blank_rows.shape != (n_rows,):
            raise ValueError(f"blank_rows must have one flag per row ({n_rows}); got shape {blank_rows.shape}")
        if not _block_kernel_takes(image):
            image = image.copy()
            image[blank_rows] = np.nan
            blank_rows = None
    if n_rows < 3:
        raise ValueError(f"the arc frame has {n_rows} rows; a warp model needs at least 3")
    _check_orders(line_order, warp_order, n_rows)
    # The limit (the image width) is checked before anything is allocated:
    # the candidate windows grow with the tolerance (1e7 ran out of memory).
    tolerance = check_number(tolerance, "tolerance", minimum=0, strict_minimum=True, maximum=n_cols,
                             unit=f" columns (the arc frame is {n_cols} columns wide)")
    guesses = _check_guesses(guess, n_cols)
    ref_row = n_rows // 2 if ref_idx is None else ref_idx
    if not isinstance(ref_row, (int, np.integer)) or not 0 <= ref_row < n_rows:
        raise ValueError(f"ref_idx must be a row index in 0..{n_rows - 1}; got {ref_idx!r}")
    ref_row = int(ref_row)

    # A fit window about three line widths across keeps neighbours out;
    # too narrow a window biases the centre of a broad line.
    if blank_rows is None:
        x_ref, sigma = _ref_positions(image, guesses, tolerance, ref_row, half=4)
    else:
        # The reference row's profile reads a few rows about it (row_profile): those, blanked.
        lo = max(0, ref_row - _PROFILE_ROWS // 2)
        near = image[lo : min(n_rows, lo + _PROFILE_ROWS)].copy()
        near[blank_rows[lo : lo + near.shape[0]]] = np.nan
        x_ref, sigma = _ref_positions(near, guesses, tolerance, ref_row - lo, half=4)
    found = np.isfinite(x_ref)
    if not found.any():
        raise ValueError(
            f"no line could be fit near any of the {len(guesses)} guesses within "
            f"tolerance={tolerance:g} columns at row {ref_row}: check the guesses"
        )
    half = int(np.clip(np.ceil(3.0 * np.nanmedian(sigma[found])), 3, 12))
    half = min(half, (n_cols - 1) // 2)

    block = max(1, n_rows // 48)
    profiles, block_rows = _block_profiles(image, block, blank_rows)
    start = int(np.argmin(np.abs(block_rows - ref_row)))
    coarse = _track(profiles, block_rows, start, x_ref, half, tolerance)

    # Second pass at full resolution along the slit (small blocks), each
    # window centred on the smooth path from the first pass.
    fine_block = max(1, n_rows // 240)
    fine_profiles, fine_rows = _block_profiles(image, fine_block, blank_rows)
    scratch = WarpModel.identity((n_rows, n_cols), ref_row)
    t_coarse = scratch._t(block_rows)
    t_fine = scratch._t(fine_rows)
    n_lines = len(guesses)
    positions = np.full((n_lines, fine_rows.size), np.nan)
    pred = np.full((n_lines, fine_rows.size), np.nan)
    for i in range(n_lines):
        coef, _ = _clipped_polyfit(t_coarse, coarse[i], min(line_order, 2))
        if coef is not None:
            pred[i] = np.polynomial.polynomial.polyval(t_fine, coef)
    have = np.isfinite(pred[:, 0])
    if have.any():
        idx_l, idx_r = np.nonzero(have)[0], np.arange(fine_rows.size)
        p = pred[idx_l]
        cols = window_indices(p.ravel(), half, n_cols)
        data = fine_profiles[np.repeat(idx_r[None, :], len(idx_l), 0).ravel()[:, None], cols]
        mu, _, _, _, ok = fit_gaussian_windows(cols, data, n_iter=8)
        mu = mu.reshape(p.shape)
        ok = ok.reshape(p.shape) & (np.abs(mu - p) < max(1.5, half / 2))
        ok &= np.abs(mu - x_ref[idx_l, None]) <= tolerance
        positions[idx_l] = np.where(ok, mu, np.nan)

    # Per-line smooth paths give each line's reference position and reject
    # stray points (cosmic rays, a neighbour caught in the window).
    x0 = np.full(n_lines, np.nan)
    # Coverage counts the row blocks that hold data at all: a science frame
    # whose trace rows are blanked (sky lines, no arc) has lines only there.
    n_blocks_with_data = int(np.count_nonzero(np.isfinite(fine_profiles).any(axis=1)))
    for i in range(n_lines):
        coef, keep = _clipped_polyfit(t_fine, positions[i], line_order)
        positions[i, ~keep] = np.nan
        if coef is not None and keep.sum() >= max(line_order + 2, 0.3 * n_blocks_with_data):
            x0[i] = coef[0]
    used = np.isfinite(x0)
    if not used.any():
        raise ValueError(
            f"none of the {n_lines} guessed lines could be traced along the slit within "
            f"tolerance={tolerance:g} columns: check the guesses (see find_cal_lines) and the tolerance"
        )
    # Too few lines for the asked warp_order: fit what they can support and
    # say so, as the seed does for its "bad warp model" example.
    lowered = None
    if used.sum() < warp_order + 1:
        lowered = warp_order
        warp_order = int(used.sum()) - 1
    n_needed = warp_order + 1

    model = WarpModel(
        (n_rows, n_cols),
        ref_row,
        np.zeros((line_order, warp_order + 1)),
        float(n_rows),
        (n_cols - 1) / 2,
        max((n_cols - 1) / 2, 1.0),
    )
    rms = np.full(n_lines, np.nan)
    for _ in range(4):
        model = model.replace(coefficients=_fit_global(model, np.where(used, x0, 0.0), fine_rows, positions, used))
        resid = positions - model.column_of(np.where(np.isfinite(x0), x0, 0.0)[:, None], fine_rows[None, :])
        rms = np.sqrt(quiet_nanmean(resid**2, axis=1))
        rms[~np.isfinite(x0)] = np.nan
        # Blends and lines on a bad column disagree with the rest: drop them
        # while enough lines remain to constrain the model.
        limit = 3.0 * np.nanmedian(rms[used]) + 0.02
        new_used = used & (rms <= limit)
        if new_used.sum() < n_needed or np.array_equal(new_used, used):
            break
        used = new_used

    model = model.replace(traces=LineTraces(guesses, x0, fine_rows, positions, used, rms))
    notes = _quality_warnings(model, n_needed, check_fold, tolerance)
    notes += _higher_order_notes(model, x0, fine_rows, positions, used)
    if lowered is not None:
        notes.insert(0, f"warp_order lowered from {lowered} to {warp_order}: only {int(used.sum())} line(s) could be traced")
    model = model.replace(quality_warnings=notes)
    if debug:
        print(model.report())
    return model


#: The model is uncertain (beyond its lines) or too low (within them) where one a warp_order higher differs
#: by this much [px] (:func:`_higher_order_notes`).
EXTRAPOLATION_LIMIT_PX = 0.25
#: The lines' shape along the slit is too simple where one a line_order higher fits them with half the
#: scatter and moves them by this much [px] (:func:`_higher_order_notes`).
LINE_ORDER_LIMIT_PX = 0.1


def _higher_order_notes(model, x0, rows, positions, used):
    """Warnings from a model one warp_order (or one line_order) higher, fit to the same lines: a list
    (empty when it agrees).

    * Beyond the used lines (when 10 % of the frame or more), the warp is
      the polynomial carried on. Lines in half the frame, their tilt
      changing as a square of the column, left the other half 2.1 px off
      with no word (the sky, with no bright lines to correct it, 9 sigma
      off there). Where the higher order differs there by
      :data:`EXTRAPOLATION_LIMIT_PX` or more, nothing measures the shape.
    * Within them, a higher order that fits the lines with less than half
      the scatter and moves them by that much says the order is too low
      (0.18 px RMS about warp_order=1 where 2 fits to 0.011 px; 0.7 px off
      at worst, under the 0.5 px per-line flag).
    * Along the slit, the same for one line_order higher, by
      :data:`LINE_ORDER_LIMIT_PX` (S-shaped lines).
    """
    n_rows, n_cols = model.shape
    ref = x0[used]
    n_coef = model.coefficients.shape[1]
    if model.line_order == 0 or ref.size < n_coef + 2:  # one spare line for the higher order
        return []
    higher = model.replace(coefficients=np.zeros((model.line_order, n_coef + 1)))
    higher = higher.replace(coefficients=_fit_global(higher, np.where(used, x0, 0.0), rows, positions, used))
    ends = np.array([0, n_rows - 1])

    def gap(cols):
        cols = np.asarray(cols, dtype=float)[:, None]
        return float(np.max(np.abs(higher.column_of(cols, ends[None, :]) - model.column_of(cols, ends[None, :]))))

    def scatter(m):
        resid = positions[used] - m.column_of(ref[:, None], rows[None, :])
        return float(np.sqrt(np.nanmean(resid**2)))

    lo, hi = float(ref.min()), float(ref.max())
    notes = []
    inside = gap(np.linspace(lo, hi, 32))
    before, after = scatter(model), scatter(higher)
    # Lines that curve along the slit beyond line_order (an S-shaped distortion): a trial's cubic of
    # 0.5-1 px at the slit's ends scattered 0.08-0.15 px about line_order=2, under the scatter flag,
    # and 0.014 about 3; the sky was 0.7-1.6 sigma off. (Goodman: 0.019 -> 0.019, 0.07 px at most.)
    bent = model.replace(coefficients=np.zeros((model.line_order + 1, n_coef)))
    bent = bent.replace(coefficients=_fit_global(bent, np.where(used, x0, 0.0), rows, positions, used))
    along = np.linspace(float(np.nanmin(rows)), float(np.nanmax(rows)), 64)[None, :]
    cols = np.linspace(lo, hi, 32)[:, None]
    bend = float(np.max(np.abs(bent.column_of(cols, along) - model.column_of(cols, along))))
    traced = np.isfinite(positions[used]).mean()  # (lines cut short by the tolerance bend no polynomial)
    if traced >= 0.6 and bend >= LINE_ORDER_LIMIT_PX and scatter(bent) < 0.5 * before:
        notes.append(f"the lines curve along the slit more than line_order={model.line_order} follows: they scatter "
                     f"{before:.3f} px RMS about it and {scatter(bent):.3f} px about line_order={model.line_order + 1}, "
                     f"which moves them by up to {bend:.2f} px: pass line_order={model.line_order + 1}")
    if inside >= EXTRAPOLATION_LIMIT_PX and after < 0.5 * before:
        notes.append(f"the lines' shape changes along the dispersion more than warp_order={n_coef - 1} follows: they "
                     f"scatter {before:.3f} px RMS about it and {after:.3f} px about warp_order={n_coef}, which "
                     f"moves them by up to {inside:.2f} px: pass warp_order={n_coef}")
    if not notes and lo + (n_cols - 1 - hi) >= 0.1 * n_cols:
        outside = np.r_[np.linspace(0, lo, 16) if lo >= 1 else [],
                        np.linspace(hi, n_cols - 1, 16) if hi <= n_cols - 2 else []]
        worst = gap(outside)
        if worst >= EXTRAPOLATION_LIMIT_PX:
            notes.append(
                f"the lines span columns {lo:.0f}-{hi:.0f} of {n_cols}: beyond them the model is extrapolated, and "
                f"one of warp_order={n_coef} fit to the same lines differs there by up to {worst:.2f} px (at the "
                "slit's ends), so the lines' shape there is not measured: an arc with lines there (another lamp) "
                "measures it (fit_sky corrects it on the science frame's own bright sky lines, where it has some)")
    return notes


def _quality_warnings(model, n_needed, check_fold=True, tolerance=None):
    t = model.traces
    out = []
    n_used = int(t.used.sum())
    if n_used < n_needed + 1:
        out.append(f"only {n_used} line(s) constrain the model, the fewest a warp_order of {n_needed - 1} needs "
                   f"({n_needed}): no spare line checks it")
    if n_used:
        worst = float(np.nanmax(t.rms[t.used]))
        med = float(np.nanmedian(t.rms[t.used]))
        if med > POOR_RMS_PX:
            out.append(f"lines scatter {med:.2f} px RMS about the model (good arcs: < 0.05 px)")
        elif worst > 2 * POOR_RMS_PX:
            out.append(f"the worst line scatters {worst:.2f} px RMS about the model")
        coverage = np.isfinite(t.positions[t.used]).mean()
        if coverage < 0.6:
            text = f"the lines were traced over only {coverage:.0%} of the slit"
            with np.errstate(invalid="ignore"):
                reach = np.abs(t.positions[t.used] - t.ref_positions[t.used][:, None])
            reach = float(np.nanmax(reach)) if np.isfinite(reach).any() else 0.0
            if tolerance is not None and reach >= 0.75 * tolerance:
                # A trial's lines tilted 60 px over the slit were cut where they left tolerance=16.
                text += (f", and they were followed up to {reach:.0f} px from their column at the reference row, "
                         f"near tolerance={tolerance:g}: lines that move farther along the slit are cut there; "
                         f"pass a larger tolerance (e.g. {math.ceil(max(2 * tolerance, 1.5 * reach / coverage)):d})")
            out.append(text)
        span = np.ptp(t.ref_positions[t.used]) if n_used > 1 else 0.0
        if span < 0.25 * model.shape[1]:
            out.append(
                f"the lines span only columns {np.nanmin(t.ref_positions[t.used]):.0f}-"
                f"{np.nanmax(t.ref_positions[t.used]):.0f} of {model.shape[1]}: the model is extrapolated elsewhere"
            )
    if check_fold:
        try:
            model.edge_map()
        except ValueError as exc:
            out.append(str(exc))
    return out
