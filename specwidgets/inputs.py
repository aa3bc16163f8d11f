"""Input normalisers shared by every public function.

Each turns what a user may pass into the one form the algorithms use, or
raises an exception that names what is wrong.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

__all__ = ["as_image_stack", "as_image", "mask_rows", "mask_ranges"]


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
    try:
        arr = np.asarray(images, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} could not be read as a numeric array: {exc}") from None
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
    try:
        arr = np.asarray(image, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} could not be read as a numeric array: {exc}") from None
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2D image (rows, cols); got {arr.ndim}D with shape {arr.shape}")
    if min(arr.shape) == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    return arr


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_pair(value):
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 2
        and all(v is None or _is_int(v) or isinstance(v, np.integer) for v in value)
    )


def mask_ranges(mask_region, n_rows):
    """Normalise ``mask_region`` to a sorted list of ``(start, stop)`` row ranges.

    ``mask_region`` is ``(start, stop)`` (rows ``start`` to ``stop - 1``, as a
    Python slice), a list of such pairs, or ``(None, None)`` / ``None`` / ``[]``
    for no mask. A ``None`` at one end of a pair means that edge of the image.

    Raises
    ------
    TypeError
        If it is not a pair or a list of pairs of integers.
    ValueError
        If a range is reversed, empty, outside ``0..n_rows``, or if the ranges
        together cover every row.
    """
    if mask_region is None:
        return []
    if _is_pair(mask_region):
        if mask_region[0] is None and mask_region[1] is None:
            return []
        pairs = [mask_region]
    elif isinstance(mask_region, Sequence) and not isinstance(mask_region, str):
        pairs = list(mask_region)
        for pair in pairs:
            if not _is_pair(pair):
                raise TypeError(
                    f"mask_region must be a (start, stop) pair of row indices or a list of "
                    f"such pairs; got the item {pair!r}"
                )
    else:
        raise TypeError(
            f"mask_region must be a (start, stop) pair of row indices or a list of such "
            f"pairs; got {mask_region!r}"
        )
    ranges = []
    for start, stop in pairs:
        if start is None and stop is None:
            continue
        start = 0 if start is None else int(start)
        stop = n_rows if stop is None else int(stop)
        if start < 0 or stop > n_rows:
            raise ValueError(
                f"mask_region ({start}, {stop}) is out of range: the images have "
                f"{n_rows} rows (valid rows 0..{n_rows})"
            )
        if stop < start:
            raise ValueError(f"mask_region ({start}, {stop}) is reversed: start must be below stop")
        if stop == start:
            raise ValueError(f"mask_region ({start}, {stop}) is empty: it masks no row")
        ranges.append((start, stop))
    ranges.sort()
    if ranges and _covered_rows(ranges, n_rows) >= n_rows:
        raise ValueError(
            f"mask_region {ranges} covers every one of the {n_rows} rows: "
            "no sky rows are left to estimate the background from"
        )
    return ranges


def _covered_rows(ranges, n_rows):
    covered = np.zeros(n_rows, bool)
    for start, stop in ranges:
        covered[start:stop] = True
    return int(covered.sum())


def mask_rows(mask_region, n_rows):
    """Return a boolean array of length ``n_rows``: True on masked rows."""
    masked = np.zeros(n_rows, bool)
    for start, stop in mask_ranges(mask_region, n_rows):
        masked[start:stop] = True
    return masked
