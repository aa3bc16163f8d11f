"""Input normalisers shared by every public function.

Each turns what a user may pass into the one form the algorithms use, or
raises an exception that names what is wrong.
"""

from __future__ import annotations

import numbers

import numpy as np

from .rows import RowRanges

__all__ = [
    "MAX_IMAGE_PIXELS",
    "MAX_SPATIAL_ORDER",
    "as_image",
    "as_image_stack",
    "check_image_size",
    "check_number",
    "check_spatial_order",
    "mask_ranges",
    "mask_rows",
]

#: Highest ``spatial_order`` (Legendre order along the slit) a sky fit accepts:
#: beyond it the fit follows the noise and the trace's wings (orders 5 and 40
#: gave 20-sigma and 73-sigma sky errors on synthetic truth).
MAX_SPATIAL_ORDER = 4

#: Largest image (pixels) a reader accepts, checked on the header before the
#: data are read: 2**28 pixels is 2 GiB as float64, above any long-slit CCD
#: (a 10k x 10k mosaic is 1e8). A header claiming more is corrupt or hostile.
MAX_IMAGE_PIXELS = 2**28


def as_image_stack(images, name="images"):
    """Return ``(stack, was_2d)``: a float64 ``(n_exposures, n_rows, n_cols)`` array.

    Parameters
    ----------
    images : array_like
        One 2D image or a 3D stack of images.
    name : str
        The argument's name, used in error messages.
    """
    if images is None:
        raise TypeError(f"{name} is None; expected a 2D image or a 3D stack of images")
    arr = _real_array(images, name)
    if arr.ndim == 2:
        stack, was_2d = arr[None], True
    elif arr.ndim == 3:
        stack, was_2d = arr, False
    else:
        raise ValueError(
            f"{name} must be a 2D image (rows, cols) or a 3D stack "
            f"(exposures, rows, cols); got {arr.ndim}D with shape {arr.shape}"
        )
    if min(stack.shape) == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    return stack, was_2d


def as_image(image, name="image"):
    """Return a float64 2D array, or raise naming the problem."""
    if image is None:
        raise TypeError(f"{name} is None; expected a 2D image")
    arr = _real_array(image, name)
    if arr.ndim != 2:
        # Arcs of several lamps come as one frame per lamp: the first thing a user passes is all of them.
        several = (" Several arc frames (one per lamp, or repeats) make one arc when summed: np.sum(arcs, axis=0), "
                   "or specwidgets.average_matching_files(folder, ..., mode=\"sum\") from their files."
                   if arr.ndim == 3 and "arc" in name else "")
        raise ValueError(f"{name} must be a 2D image (rows, cols); got {arr.ndim}D with shape {arr.shape}.{several}")
    if min(arr.shape) == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    return arr


def _real_array(value, name):
    """``value`` as a float64 array, refusing what would convert silently but wrongly.

    Complex values would lose their imaginary part and booleans would be fit
    as 0/1 counts; a ragged nested list is not an image at all.
    """
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} is a {type(value).__name__}; expected an array of numbers")
    if isinstance(value, np.ma.MaskedArray):
        # Masked pixels are bad pixels: NaN, which every fit leaves out.
        if value.dtype.kind not in "iuf":
            raise TypeError(f"{name} is a masked array of {value.dtype}; expected numbers")
        return np.ma.filled(value.astype(np.float64), np.nan)
    try:
        raw = np.asarray(value)
    except ValueError as exc:
        raise _ragged(name, exc) from None
    if raw.dtype == object:
        try:
            raw = np.asarray(value, dtype=np.float64)
        except ValueError as exc:
            if "inhomogeneous" in str(exc) or "sequence" in str(exc):
                raise _ragged(name, exc) from None
            raise TypeError(f"{name} could not be read as a numeric array: {exc}") from None
        except TypeError as exc:
            raise TypeError(f"{name} could not be read as a numeric array: {exc}") from None
    kind = raw.dtype.kind
    if kind == "c":
        raise TypeError(
            f"{name} is complex ({raw.dtype}); a sky fit needs real values: pass "
            f"{name}.real (or np.abs({name})) if that is what you mean"
        )
    if kind == "b":
        raise TypeError(
            f"{name} is a boolean array; pass the image's counts (a mask of rows goes in mask_region)"
        )
    if kind not in "iuf":
        raise TypeError(f"{name} holds {raw.dtype} values, not numbers; expected a numeric (int or float) array")
    if kind == "u" and raw.size:
        _check_wrapped(raw, name)
    return raw.astype(np.float64, copy=False)


def _check_wrapped(raw, name):
    """Warn when unsigned values crowd both ends of their range: a subtraction that went below zero wrapped."""
    top = np.iinfo(raw.dtype).max
    rows = raw.reshape(-1, raw.shape[-1])
    rows = rows[:: max(1, rows.shape[0] // 200)]  # ~200 rows
    high, low = rows > top - top // 16, rows < top // 16
    n_high = int(np.count_nonzero(high))
    # Wrapped negatives sit beside small values (the noise about zero crosses
    # it pixel by pixel); a saturated source's pixels beside bright ones.
    beside_low = high[:, 1:] & low[:, :-1] | high[:, :-1] & low[:, 1:]
    mixed = np.count_nonzero(beside_low) > 0.3 * n_high and np.count_nonzero(low) > 0.01 * rows.size
    # Or most of the frame near the top, spread below it (a saturated
    # exposure piles up at one ceiling instead).
    tops = rows[high]
    spread_top = n_high > 0.5 * rows.size and np.count_nonzero(tops == tops.max()) < 0.5 * n_high
    if n_high > 0.01 * rows.size and (mixed or spread_top):
        from ._warnings import warn_at_caller

        warn_at_caller(
            f"{name} is {raw.dtype} with {100 * n_high / rows.size:.0f} % of its values near {top}, beside values "
            f"near 0: an unsigned subtraction (raw - bias) that went below zero "
            f"wraps around to {top}. Subtract in floating point: raw.astype(float) - bias"
        )


def _ragged(name, exc):
    return ValueError(
        f"{name} must be a rectangular array: every row of an image the same length and every "
        f"image the same shape (a nested list with rows of different lengths was given: {exc})"
    )


def check_number(value, name, *, minimum=None, maximum=None, strict_minimum=False, allow_none=False, unit=""):
    """Return ``value`` as a float, or raise naming ``name`` and the allowed range.

    Parameters
    ----------
    value : object
        What the user passed.
    name : str
        The argument's name, for the message.
    minimum, maximum : float, optional
        Allowed range (inclusive; ``strict_minimum`` excludes the minimum).
    allow_none : bool
        Return None for None instead of raising.
    unit : str
        Words after the number in messages (e.g. ``" columns"``).

    Raises
    ------
    TypeError
        ``value`` is not a real number (a string, None, a bool, an array).
    ValueError
        It is NaN, infinite or out of range.

    Examples
    --------
    >>> check_number(3, "tolerance", minimum=0, strict_minimum=True)
    3.0
    >>> check_number("3", "tolerance")
    Traceback (most recent call last):
    ...
    TypeError: tolerance must be a number; got the str '3'
    """
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.integer, np.floating)):
        if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
            value = value.item()
        else:
            raise TypeError(f"{name} must be a number; got the {type(value).__name__} {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    if minimum is not None and (value < minimum or (strict_minimum and value == minimum)):
        relation = "above" if strict_minimum else "at least"
        raise ValueError(f"{name} must be {relation} {minimum:g}{unit}; got {value:g}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum:g}{unit}; got {value:g}")
    return value


def check_spatial_order(value):
    """Return a valid ``spatial_order``: ``"auto"`` or an integer ``0..MAX_SPATIAL_ORDER``.

    Examples
    --------
    >>> check_spatial_order(2), check_spatial_order("auto")
    (2, 'auto')
    >>> check_spatial_order(5)
    Traceback (most recent call last):
    ...
    ValueError: spatial_order must be "auto" or an integer 0..4 (the limit is 4: higher orders follow the noise); got 5
    """
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return "auto"
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f'spatial_order must be "auto" or an integer 0..{MAX_SPATIAL_ORDER}; got {value!r}') from None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        else:
            raise TypeError(f'spatial_order must be "auto" or an integer 0..{MAX_SPATIAL_ORDER}; got {value!r}')
    value = int(value)
    if not 0 <= value <= MAX_SPATIAL_ORDER:
        raise ValueError(
            f'spatial_order must be "auto" or an integer 0..{MAX_SPATIAL_ORDER} (the limit is '
            f"{MAX_SPATIAL_ORDER}: higher orders follow the noise); got {value}"
        )
    return value


def check_image_size(shape, source, limit=None):
    """Raise ValueError naming ``source`` if an image of ``shape`` exceeds :data:`MAX_IMAGE_PIXELS`.

    Called on a header's ``NAXISn`` before the data are read, so a corrupt
    or hostile header cannot make the reader allocate hundreds of GiB.
    """
    limit = MAX_IMAGE_PIXELS if limit is None else limit
    n = 1
    for size in shape:
        n *= int(size)
    if n > limit:
        dims = " x ".join(str(int(s)) for s in shape)
        raise ValueError(
            f"{source} claims a {dims} image ({n:,} pixels), above the limit of {limit:,} pixels "
            "(specwidgets.core.inputs.MAX_IMAGE_PIXELS); the header is probably corrupt"
        )


def mask_ranges(mask_region, n_rows: int) -> list[tuple[int, int]]:
    """Normalise ``mask_region`` to a sorted list of ``(start, stop)`` row ranges.

    The seed's function, kept for its callers; the one implementation is
    :class:`specwidgets.core.rows.RowRanges` (ranges that share rows are
    merged into one).

    ``mask_region`` is ``(start, stop)`` (rows ``start`` to ``stop - 1``, as a
    Python slice), a list of such pairs, a :class:`RowRanges`, or
    ``(None, None)`` / ``None`` / ``[]`` for no mask. A ``None`` at one end of
    a pair means that edge of the image.

    Raises
    ------
    TypeError
        If it is not a pair or a list of pairs of integers.
    ValueError
        If a range is reversed, empty, outside ``0..n_rows``, or if the ranges
        together cover every row.

    Examples
    --------
    >>> mask_ranges([(6, 8), (None, 3)], 10)
    [(0, 3), (6, 8)]
    """
    return RowRanges.coerce(mask_region, text=False).resolve(n_rows).to_list()


def mask_rows(mask_region, n_rows):
    """Return a boolean array of length ``n_rows``: True on masked rows."""
    return RowRanges.coerce(mask_region, text=False).rows(n_rows)
