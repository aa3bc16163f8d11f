"""The seed's sky estimator, exactly: each pixel's background is the median of
the super-sampled samples whose effective position lies within that pixel's
edges (``L <= e < R``).

Walking down a column, a pixel's bin differs from the previous row's by a
few samples, so the kernel marks the bin's samples by rank, adds and removes
only what changed, and moves a pointer to the median by the few ranks it
shifts instead of re-taking a median of every bin.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["median_of_bins"]


@njit(cache=True, inline="always")
def _next_present(present, p, m):
    """The next rank above ``p`` that is in the bin (``m`` if none)."""
    p += 1
    while p < m and present[p] == 0:
        p += 1
    return p


@njit(cache=True, inline="always")
def _prev_present(present, p):
    """The next rank below ``p`` that is in the bin (-1 if none)."""
    p -= 1
    while p >= 0 and present[p] == 0:
        p -= 1
    return p


# Above this many candidates a radix sort beats numba's comparison sort.
_RADIX_MIN = 1000


@njit(cache=True)
def _radix_argsort(vals):
    """Stable argsort of float64 values (no NaN) by LSD radix on their bits.

    The bits of a float, with the sign bit flipped (all bits for negative
    numbers), sort like the numbers; 11-bit digits take six passes, and a
    pass whose digit is the same for every value is skipped.
    """
    m = vals.size
    u = vals.view(np.uint64)
    sign = np.uint64(1) << np.uint64(63)
    keys = np.empty(m, np.uint64)
    for i in range(m):
        k = u[i]
        keys[i] = ~k if k & sign else k | sign
    idx = np.arange(m)
    tmp_keys = np.empty_like(keys)
    tmp_idx = np.empty_like(idx)
    counts = np.empty(2048, np.int64)
    digit_mask = np.uint64(2047)
    for shift in range(0, 64, 11):
        sh = np.uint64(shift)
        counts[:] = 0
        for i in range(m):
            counts[np.intp((keys[i] >> sh) & digit_mask)] += 1
        if counts.max() == m:
            continue
        total = 0
        for d in range(2048):
            c = counts[d]
            counts[d] = total
            total += c
        for i in range(m):
            d = np.intp((keys[i] >> sh) & digit_mask)
            pos = counts[d]
            counts[d] = pos + 1
            tmp_keys[pos] = keys[i]
            tmp_idx[pos] = idx[i]
        keys, tmp_keys = tmp_keys, keys
        idx, tmp_idx = tmp_idx, idx
    return idx


# Columns ranked together: one sort of their joint candidates is cheaper
# than a sort per column, but the bin of one pixel then holds only about
# 1/_BLOCK of the ranks, which the median pointer must step over.
_BLOCK = 8


@njit(parallel=True, cache=True)
def _median_kernel(e_sorted, flux_sorted, edges, out, counts):
    n_exp = flux_sorted.shape[0]
    n_rows = edges.shape[0]
    n_cols = edges.shape[1] - 1
    n_s = e_sorted.size
    n_blocks = (n_cols + _BLOCK - 1) // _BLOCK
    for blk in prange(n_blocks):
        x_start = blk * _BLOCK
        x_stop = min(n_cols, x_start + _BLOCK)
        nb = x_stop - x_start
        lo = np.empty((nb, n_rows), np.int64)
        hi = np.empty((nb, n_rows), np.int64)
        a = np.searchsorted(e_sorted, edges[0, x_start])
        b = a
        for j in range(nb):
            x = x_start + j
            for y in range(n_rows):
                # Bin edges move little from pixel to pixel: walk from the
                # previous bounds instead of a fresh binary search.
                left = edges[y, x]
                right = edges[y, x + 1]
                while a < n_s and e_sorted[a] < left:
                    a += 1
                while a > 0 and e_sorted[a - 1] >= left:
                    a -= 1
                if b < a:
                    b = a
                while b < n_s and e_sorted[b] < right:
                    b += 1
                while b > a and e_sorted[b - 1] >= right:
                    b -= 1
                lo_raw = a
                hi_raw = b
                if b <= a:
                    # An empty bin (at the image ends, or a masked-out gap)
                    # takes the two samples that straddle it.
                    lo_raw, hi_raw = max(a - 1, 0), min(a + 1, n_s)
                lo[j, y] = lo_raw
                hi[j, y] = hi_raw
                counts[y, x] = hi_raw - lo_raw
        c0 = lo.min()
        m = hi.max() - c0
        rank = np.empty(m, np.int64)
        present = np.zeros(m, np.uint8)
        for k in range(n_exp):
            # Rank the block's candidate samples once. Down a column a bin
            # gains and loses a sample or two per row, so the median moves by
            # a rank or two: a pointer ``p`` to the lower median and the count
            # of the bin's samples below it are updated in place, stepping
            # over ranks not in the bin.
            vals = flux_sorted[k, c0 : c0 + m].copy()
            finite = vals == vals
            vals[~finite] = np.inf
            order = _radix_argsort(vals) if m >= _RADIX_MIN else np.argsort(vals)
            rank[order] = np.arange(m)
            ranked = vals[order]
            for j in range(nb):
                x = x_start + j
                count = 0
                p = -1
                below = 0
                p_gone = False
                clo = lo[j, 0]
                chi = clo
                for y in range(n_rows):
                    a = lo[j, y]
                    b = hi[j, y]
                    if a >= chi or b <= clo:
                        for i in range(clo, chi):
                            present[rank[i - c0]] = 0
                        count = 0
                        p = -1
                        below = 0
                        p_gone = False
                        clo = a
                        chi = a
                    # Samples leaving the bin (its start moved right, its end left) ...
                    for i in range(clo, a):
                        if finite[i - c0]:
                            r = rank[i - c0]
                            present[r] = 0
                            count -= 1
                            if r < p:
                                below -= 1
                            elif r == p:
                                p_gone = True
                    for i in range(b, chi):
                        if finite[i - c0]:
                            r = rank[i - c0]
                            present[r] = 0
                            count -= 1
                            if r < p:
                                below -= 1
                            elif r == p:
                                p_gone = True
                    # ... and entering it.
                    for i in range(a, clo):
                        if finite[i - c0]:
                            r = rank[i - c0]
                            present[r] = 1
                            count += 1
                            if r < p:
                                below += 1
                    for i in range(chi, b):
                        if finite[i - c0]:
                            r = rank[i - c0]
                            present[r] = 1
                            count += 1
                            if r < p:
                                below += 1
                    clo = a
                    chi = b
                    if count == 0:
                        out[k, y, x] = np.nan
                        p = -1
                        below = 0
                        p_gone = False
                        continue
                    if p < 0:
                        # A new bin: start from its smallest sample.
                        p = m
                        for i in range(a, b):
                            if finite[i - c0] and rank[i - c0] < p:
                                p = rank[i - c0]
                        below = 0
                    elif p_gone:
                        q = _next_present(present, p, m)
                        if q < m:
                            p = q
                        else:
                            p = _prev_present(present, p)
                            below -= 1
                        p_gone = False
                    target = (count - 1) // 2
                    while below > target:
                        p = _prev_present(present, p)
                        below -= 1
                    while below < target:
                        p = _next_present(present, p, m)
                        below += 1
                    if count % 2:
                        out[k, y, x] = ranked[p]
                    else:
                        out[k, y, x] = 0.5 * (ranked[p] + ranked[_next_present(present, p, m)])
                for i in range(clo, chi):
                    present[rank[i - c0]] = 0


def median_of_bins(e_sorted, flux_sorted, edges):
    """Median of the samples in every pixel's effective-pixel bin.

    Parameters
    ----------
    e_sorted : (n_samples,) float array
        Effective positions of the sky samples, sorted ascending.
    flux_sorted : (n_exposures, n_samples) float array
        Each exposure's sample values in the same order; NaN values are skipped.
    edges : (n_rows, n_cols + 1) float array
        Effective position of every pixel's left edge (see ``WarpModel.edge_map``).

    Returns
    -------
    background : (n_exposures, n_rows, n_cols) array
    counts : (n_rows, n_cols) int array
        Samples in each pixel's bin (before dropping NaN values).

    Examples
    --------
    >>> import numpy as np
    >>> e = np.arange(6) * 0.5            # two samples per unit of e
    >>> flux = np.array([[1., 2., 3., 4., 5., 6.]])
    >>> edges = np.array([[-0.5, 0.5, 1.5, 2.5]])
    >>> bg, n = median_of_bins(e, flux, edges)
    >>> bg[0, 0].tolist(), n[0].tolist()
    ([1.5, 3.5, 5.5], [2, 2, 2])
    """
    e_sorted = np.ascontiguousarray(e_sorted, dtype=np.float64)
    flux_sorted = np.ascontiguousarray(np.atleast_2d(flux_sorted), dtype=np.float64)
    edges = np.ascontiguousarray(edges, dtype=np.float64)
    if e_sorted.size == 0:
        raise ValueError("no sky samples: every pixel is masked")
    n_rows, n_cols = edges.shape[0], edges.shape[1] - 1
    out = np.empty((flux_sorted.shape[0], n_rows, n_cols))
    counts = np.empty((n_rows, n_cols), np.int64)
    _median_kernel(e_sorted, flux_sorted, edges, out, counts)
    return out, counts
