"""Numba kernels that pick the sky samples' pixels by row, one pass each.

NumPy's ``flux[:, keep]`` (a boolean mask on the samples' axis) made an
8-byte index of every kept sample, then gathered each exposure through it,
and returned the exposures interleaved in memory (Fortran order): every later
pass over one exposure's samples then read every other number. These copy
the kept samples, C-ordered, in one pass. The pixel order of a frame and its
unmasked part are likewise made in one pass each, instead of NumPy's four or
five over the whole frame (each a frame-sized temporary).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["drop_flagged_rows", "pixel_order", "unmasked_pixels"]

#: Frames of at least this many pixels take the kernels (smaller ones NumPy: no compilation for them).
KERNEL_MIN_PIXELS = 1 << 20


@njit(cache=True, nogil=True)
def _count_kept(rows, flagged):
    n = 0
    for i in range(rows.shape[0]):
        if not flagged[rows[i]]:
            n += 1
    return n


@njit(cache=True, nogil=True)
def _copy_kept(rows, flagged, effpix, flux, index, out_effpix, out_flux, out_index, out_rows):
    m = 0
    for i in range(rows.shape[0]):
        r = rows[i]
        if flagged[r]:
            continue
        out_effpix[m] = effpix[i]
        for k in range(flux.shape[0]):
            out_flux[k, m] = flux[k, i]
        out_index[m] = index[i]
        out_rows[m] = r
        m += 1


def drop_flagged_rows(effpix, flux, index, rows, flagged):
    """``(effpix, flux, index, rows)`` of the samples whose row is not ``flagged``, in their order.

    The same values as ``keep = ~flagged[rows]; effpix[keep], flux[:, keep], index[keep], rows[keep]``,
    with ``flux`` C-ordered.

    Examples
    --------
    >>> rows = np.array([0, 1, 2, 1], np.int32)
    >>> e, f, i, r = drop_flagged_rows(np.arange(4.0), np.arange(8.0).reshape(2, 4), rows * 10, rows,
    ...                                np.array([False, True, False]))
    >>> e.tolist(), f.tolist(), i.tolist(), r.tolist()
    ([0.0, 2.0], [[0.0, 2.0], [4.0, 6.0]], [0, 20], [0, 2])
    """
    flagged = np.ascontiguousarray(flagged, dtype=np.bool_)
    n = _count_kept(rows, flagged)
    out_effpix = np.empty(n, effpix.dtype)
    out_flux = np.empty((flux.shape[0], n), flux.dtype)
    out_index = np.empty(n, index.dtype)
    out_rows = np.empty(n, rows.dtype)
    _copy_kept(rows, flagged, effpix, flux, index, out_effpix, out_flux, out_index, out_rows)
    return out_effpix, out_flux, out_index, out_rows


@njit(cache=True, nogil=True)
def _row_major(by_column, n_rows, n_cols, out):
    for i in range(by_column.shape[0]):
        b = by_column[i]
        out[i] = (b % n_rows) * n_cols + b // n_rows


def pixel_order(by_column, n_rows, n_cols):
    """Flat (row-major) pixel indices from indices into the column-major pixels, int32 when they fit.

    The same values as ``r, c = by_column % n_rows, by_column // n_rows; r * n_cols + c``.

    Examples
    --------
    >>> pixel_order(np.array([0, 1, 2, 3, 4, 5]), 2, 3).tolist()  # column-major of a 2 x 3 frame
    [0, 3, 1, 4, 2, 5]
    """
    dtype = np.int32 if n_rows * n_cols < 2**31 else np.int64
    if by_column.size < KERNEL_MIN_PIXELS:
        by_column = by_column.astype(dtype)
        order = by_column % n_rows
        by_column //= n_rows
        order *= n_cols
        order += by_column
        return order
    out = np.empty(by_column.shape[0], dtype)
    _row_major(by_column, n_rows, n_cols, out)
    return out


@njit(cache=True, nogil=True)
def _count_unmasked(order, n_cols, masked_rows):
    n = 0
    for i in range(order.shape[0]):
        if not masked_rows[order[i] // n_cols]:
            n += 1
    return n


@njit(cache=True, nogil=True)
def _copy_unmasked(order, n_cols, masked_rows, out):
    m = 0
    for i in range(order.shape[0]):
        p = order[i]
        if not masked_rows[p // n_cols]:
            out[m] = p
            m += 1


def unmasked_pixels(order, n_cols, masked_rows):
    """``order`` without the pixels of ``masked_rows``: ``order[~masked_rows[order // n_cols]]``.

    Examples
    --------
    >>> unmasked_pixels(np.array([0, 3, 1, 4, 2, 5], np.int32), 3, np.array([False, True])).tolist()
    [0, 1, 2]
    """
    masked_rows = np.ascontiguousarray(masked_rows, dtype=np.bool_)
    if order.size < KERNEL_MIN_PIXELS:
        return order[~masked_rows[order // n_cols]]
    out = np.empty(_count_unmasked(order, n_cols, masked_rows), order.dtype)
    _copy_unmasked(order, n_cols, masked_rows, out)
    return out
