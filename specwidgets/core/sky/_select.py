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

import math

import numpy as np
from numba import njit

from .._threads import _n_threads, chunk_bounds, run_in_threads

__all__ = ["drop_flagged_rows", "pixel_order", "pixel_rows", "sorted_pixel_order", "unmasked_pixels"]

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


@njit(cache=True, nogil=True, inline="always")
def _quotient(p, n, inv_n):
    """``p // n`` for ``0 <= p < 2**53`` and ``n >= 1``, ``inv_n = 1 / n``: a multiplication, corrected.

    An integer division costs ~25 cycles, and these kernels make one per
    pixel (the row of a pixel index): the float quotient is within one of
    the true one, and the two comparisons make it exact.
    """
    q = np.int64(p * inv_n)
    if q * n > p:
        q -= 1
    elif (q + 1) * n <= p:
        q += 1
    return q


@njit(cache=True, nogil=True)
def _row_major(by_column, n_rows, n_cols, out):
    inv = 1.0 / n_rows
    for i in range(by_column.shape[0]):
        b = by_column[i]
        c = _quotient(b, n_rows, inv)
        out[i] = (b - c * n_rows) * n_cols + c


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
def _merge_row_major(values_a, order_a, values_b, order_b, offset_b, n_rows, n_cols, out):
    """Merge two stably sorted runs of column-major pixels into ``out`` as row-major pixel indices.

    ``order_a`` sorts ``values_a`` (column-major pixels ``0 ..``), ``order_b``
    sorts ``values_b`` (pixels ``offset_b ..``); on ties ``a``'s come first,
    as a stable sort of the whole would place them.
    """
    inv = 1.0 / n_rows
    i = j = m = 0
    n_a, n_b = order_a.shape[0], order_b.shape[0]
    while i < n_a or j < n_b:
        # (NaN sorts last: a's value before b's NaN.)
        if j >= n_b or (i < n_a and (values_a[order_a[i]] <= values_b[order_b[j]]
                                      or math.isnan(values_b[order_b[j]]))):
            b = order_a[i]
            i += 1
        else:
            b = order_b[j] + offset_b
            j += 1
        c = _quotient(b, n_rows, inv)
        out[m] = (b - c * n_rows) * n_cols + c
        m += 1


def sorted_pixel_order(effpix_map):
    """Row-major pixel indices in ascending effective pixel (stable in column-major order), int32 when they fit.

    The same values as ``pixel_order(np.argsort(effpix_map.T.ravel(), kind="stable"), *effpix_map.shape)``.
    A large map's two halves of columns are copied and sorted side by side
    (the copy and the sort release the GIL) and merged in one pass: the
    sort is once per warp model, but a large share of the first call
    (4096 x 4096: the transposed copy ~0.4 s, much of it the first touch of
    its memory, and the sort ~0.4 s).

    Examples
    --------
    >>> sorted_pixel_order(np.array([[0.0, 1.0, 2.0], [0.5, 1.5, 1.0]])).tolist()
    [0, 3, 1, 5, 4, 2]
    """
    n_rows, n_cols = effpix_map.shape
    if effpix_map.size < KERNEL_MIN_PIXELS or n_cols < 2 or _n_threads() < 2:
        return pixel_order(np.argsort(effpix_map.T.ravel(), kind="stable"), n_rows, n_cols)
    mid = n_cols // 2

    def half(cols):
        # Column by column the map is already nearly sorted, which timsort
        # (kind="stable") exploits: several times faster than row order.
        values = effpix_map[:, cols].T.ravel()
        return values, np.argsort(values, kind="stable")

    (values_a, order_a), (values_b, order_b) = run_in_threads([lambda: half(slice(0, mid)),
                                                              lambda: half(slice(mid, n_cols))])
    out = np.empty(effpix_map.size, np.int32 if effpix_map.size < 2**31 else np.int64)
    _merge_row_major(values_a, order_a, values_b, order_b, mid * n_rows, n_rows, n_cols, out)
    return out


@njit(cache=True, nogil=True)
def _count_unmasked(order, n_cols, masked_rows):
    inv = 1.0 / n_cols
    n = 0
    for i in range(order.shape[0]):
        if not masked_rows[_quotient(order[i], n_cols, inv)]:
            n += 1
    return n


@njit(cache=True, nogil=True)
def _copy_unmasked(order, n_cols, masked_rows, out):
    inv = 1.0 / n_cols
    m = 0
    for i in range(order.shape[0]):
        p = order[i]
        if not masked_rows[_quotient(p, n_cols, inv)]:
            out[m] = p
            m += 1


@njit(cache=True, nogil=True)
def _rows_of(index, n_cols, out):
    inv = 1.0 / n_cols
    for i in range(index.shape[0]):
        out[i] = _quotient(index[i], n_cols, inv)


def pixel_rows(index, n_cols):
    """The row of each flat pixel index: ``index // n_cols``, in ``index``'s dtype.

    Examples
    --------
    >>> pixel_rows(np.array([0, 2, 3, 7], np.int32), 3).tolist()
    [0, 0, 1, 2]
    """
    if index.size < KERNEL_MIN_PIXELS:
        return index // n_cols
    out = np.empty(index.shape[0], index.dtype)
    bounds = chunk_bounds(index.shape[0], _n_threads())
    run_in_threads([(lambda a=a, b=b: _rows_of(index[a:b], n_cols, out[a:b])) for a, b in bounds])
    return out


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
