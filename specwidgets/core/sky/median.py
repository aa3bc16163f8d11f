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
from numba import njit
from numba.cpython.unsafe.numbers import leading_zeros, trailing_zeros

__all__ = ["median_of_bins"]

# Compile time matters as much as run time here: a user's first median fit
# waits for it. So the kernels are plain loops (numba's fancy indexing,
# ``np.argsort`` and ``parallel=True`` each cost seconds of compilation), one
# signature each (the wrapper fixes every dtype), and the blocks of columns
# are shared among Python threads (the kernel releases the GIL) instead of
# ``prange``.


_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)


@njit(cache=True, nogil=True)
def _next_present(bits, p, m):
    """The next rank above ``p`` that is in the bin (``m`` if none).

    ``bits`` holds one bit per rank (bit ``r & 63`` of word ``r >> 6``), so a
    run of absent ranks is skipped 64 at a time and the next present one is
    found by counting trailing zeros, instead of a byte check per rank.
    """
    q = p + 1
    if q >= m:
        return m
    wi = q >> 6
    w = bits[wi] & (_ALL << np.uint64(q & 63))
    n_words = bits.size
    while w == 0:
        wi += 1
        if wi >= n_words:
            return m
        w = bits[wi]
    return np.int64(wi * 64 + np.int64(trailing_zeros(w)))


@njit(cache=True, nogil=True)
def _prev_present(bits, p):
    """The next rank below ``p`` that is in the bin (-1 if none); see :func:`_next_present`."""
    q = p - 1
    if q < 0:
        return np.int64(-1)
    wi = q >> 6
    w = bits[wi] & (_ALL >> np.uint64(63 - (q & 63)))
    while w == 0:
        wi -= 1
        if wi < 0:
            return np.int64(-1)
        w = bits[wi]
    return np.int64(wi * 64 + 63 - np.int64(leading_zeros(w)))


@njit(cache=True, nogil=True, inline="always")
def _set_bit(bits, r):
    bits[r >> 6] |= np.uint64(1) << np.uint64(r & 63)


@njit(cache=True, nogil=True, inline="always")
def _clear_bit(bits, r):
    bits[r >> 6] &= ~(np.uint64(1) << np.uint64(r & 63))


@njit(cache=True, nogil=True, inline="always")
def _first_not_below(a, v):
    """``np.searchsorted(a, v)`` (the first index whose value is not below ``v``) in a sorted ``a``.

    Numba's ``np.searchsorted`` compiles generic comparisons (complex numbers
    included): 0.4 s of a first median fit's compilation, against next to
    nothing for this loop.
    """
    nan = v != v  # NaN sorts last, as in NumPy
    lo = 0
    hi = a.size
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < v or (nan and a[mid] == a[mid]):
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def _radix_argsort(vals, keys, tmp_keys, idx, tmp_idx, counts, bits):
    """Stable argsort of the float64 ``vals`` (no NaN) by LSD radix on their bits, into ``idx``.

    The bits of a float, with the sign bit flipped (all bits for negative
    numbers), sort like the numbers. Digits are ``bits`` wide; a pass whose
    digit is the same for every value is skipped. ``keys``, ``tmp_keys``
    (uint64), ``idx``, ``tmp_idx`` (int64, at least ``vals.size`` long) and
    ``counts`` (int64, ``2**bits`` long) are work space.
    """
    m = vals.size
    u = vals.view(np.uint64)
    sign = np.uint64(1) << np.uint64(63)
    for i in range(m):
        k = u[i]
        keys[i] = ~k if k & sign else k | sign
        idx[i] = i
    n_buckets = 1 << bits
    digit_mask = np.uint64(n_buckets - 1)
    src_keys, dst_keys, src_idx, dst_idx = keys, tmp_keys, idx, tmp_idx
    for shift in range(0, 64, bits):
        sh = np.uint64(shift)
        for d in range(n_buckets):
            counts[d] = 0
        for i in range(m):
            counts[np.intp((src_keys[i] >> sh) & digit_mask)] += 1
        if counts[np.intp((src_keys[0] >> sh) & digit_mask)] == m:
            continue
        total = 0
        for d in range(n_buckets):
            c = counts[d]
            counts[d] = total
            total += c
        for i in range(m):
            d = np.intp((src_keys[i] >> sh) & digit_mask)
            pos = counts[d]
            counts[d] = pos + 1
            dst_keys[pos] = src_keys[i]
            dst_idx[pos] = src_idx[i]
        src_keys, dst_keys = dst_keys, src_keys
        src_idx, dst_idx = dst_idx, src_idx
    if src_idx is not idx:
        for i in range(m):
            idx[i] = src_idx[i]


# Above this many candidates 11-bit digits (six passes over 2048 buckets)
# beat 8-bit ones (eight passes over 256).
_WIDE_DIGITS_MIN = 4000

# Columns ranked together: one sort of their joint candidates is cheaper
# than a sort per column, but the bin of one pixel then holds only about
# 1/_BLOCK of the ranks, which the median pointer must step over.
_BLOCK = 8


@njit(cache=True, nogil=True)
def _median_blocks(e_sorted, flux_sorted, edges, out, counts, blk_start, blk_stop):
    """The medians of the columns in blocks ``blk_start:blk_stop`` (of ``_BLOCK`` columns each)."""
    n_exp = flux_sorted.shape[0]
    n_rows = edges.shape[0]
    n_cols = edges.shape[1] - 1
    n_s = e_sorted.size
    for blk in range(blk_start, blk_stop):
        x_start = blk * _BLOCK
        x_stop = min(n_cols, x_start + _BLOCK)
        nb = x_stop - x_start
        lo = np.empty((nb, n_rows), np.int64)
        hi = np.empty((nb, n_rows), np.int64)
        # The block's edges, column by column. The kernel walks down columns
        # but the images are stored by row: reading (and, below, writing) a
        # row's ``nb`` neighbouring values at once touches one memory page per
        # row and block instead of one per pixel.
        eb = np.empty((nb + 1, n_rows))
        for y in range(n_rows):
            for j in range(nb + 1):
                eb[j, y] = edges[y, x_start + j]
        ob = np.empty((nb, n_rows))
        for j in range(nb):
            # A binary search at each column's top: walking back from the
            # previous column's last row would step over the whole tilt.
            a = _first_not_below(e_sorted, eb[j, 0])
            b = a
            for y in range(n_rows):
                # Bin edges move little from pixel to pixel: walk from the
                # previous bounds instead of a fresh binary search.
                left = eb[j, y]
                right = eb[j + 1, y]
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
        for y in range(n_rows):
            for j in range(nb):
                counts[y, x_start + j] = hi[j, y] - lo[j, y]
        c0 = lo[0, 0]
        c1 = hi[0, 0]
        for j in range(nb):
            for y in range(n_rows):
                c0 = min(c0, lo[j, y])
                c1 = max(c1, hi[j, y])
        m = c1 - c0
        rank = np.empty(m, np.int64)
        present = np.zeros((m + 63) >> 6, np.uint64)  # one bit per rank
        bits = 11 if m >= _WIDE_DIGITS_MIN else 8
        vals = np.empty(m)
        finite = np.empty(m, np.bool_)
        ranked = np.empty(m)
        order = np.empty(m, np.int64)
        tmp_idx = np.empty(m, np.int64)
        keys = np.empty(m, np.uint64)
        tmp_keys = np.empty(m, np.uint64)
        buckets = np.empty(1 << bits, np.int64)
        for k in range(n_exp):
            # Rank the block's candidate samples once. Down a column a bin
            # gains and loses a sample or two per row, so the median moves by
            # a rank or two: a pointer ``p`` to the lower median and the count
            # of the bin's samples below it are updated in place, stepping
            # over ranks not in the bin.
            for i in range(m):
                v = flux_sorted[k, c0 + i]
                finite[i] = v == v
                vals[i] = v if v == v else np.inf
            _radix_argsort(vals, keys, tmp_keys, order, tmp_idx, buckets, bits)
            for r in range(m):
                rank[order[r]] = r
                ranked[r] = vals[order[r]]
            for j in range(nb):
                count = 0
                p = np.int64(-1)  # typed: a literal -1 would compile the helpers twice
                below = 0
                p_gone = False
                clo = lo[j, 0]
                chi = clo
                for y in range(n_rows):
                    a = lo[j, y]
                    b = hi[j, y]
                    if a >= chi or b <= clo:
                        for i in range(clo, chi):
                            _clear_bit(present, rank[i - c0])
                        count = 0
                        p = np.int64(-1)
                        below = 0
                        p_gone = False
                        clo = a
                        chi = a
                    # Samples leaving the bin (its start moved right, its end left) ...
                    # (``below``/``p_gone`` are updated without branches: whether a
                    # sample is below the median is a coin flip the CPU cannot predict.)
                    for i in range(clo, a):
                        if finite[i - c0]:
                            r = rank[i - c0]
                            _clear_bit(present, r)
                            count -= 1
                            below -= np.int64(r < p)
                            p_gone |= r == p
                    for i in range(b, chi):
                        if finite[i - c0]:
                            r = rank[i - c0]
                            _clear_bit(present, r)
                            count -= 1
                            below -= np.int64(r < p)
                            p_gone |= r == p
                    # ... and entering it.
                    for i in range(a, clo):
                        if finite[i - c0]:
                            r = rank[i - c0]
                            _set_bit(present, r)
                            count += 1
                            below += np.int64(r < p)
                    for i in range(chi, b):
                        if finite[i - c0]:
                            r = rank[i - c0]
                            _set_bit(present, r)
                            count += 1
                            below += np.int64(r < p)
                    clo = a
                    chi = b
                    if count == 0:
                        ob[j, y] = np.nan
                        p = np.int64(-1)
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
                        ob[j, y] = ranked[p]
                    else:
                        ob[j, y] = 0.5 * (ranked[p] + ranked[_next_present(present, p, m)])
                for i in range(clo, chi):
                    _clear_bit(present, rank[i - c0])
            for y in range(n_rows):
                for j in range(nb):
                    out[k, y, x_start + j] = ob[j, y]


# Below this many samples x exposures one thread does the whole image.
_THREADS_MIN_WORK = 200_000


def _median_kernel(e_sorted, flux_sorted, edges, out, counts):
    """Run :func:`_median_blocks` over every block, split among numba's thread count."""
    import numba

    from specwidgets.core._threads import chunk_bounds, run_in_threads

    n_cols = edges.shape[1] - 1
    n_blocks = (n_cols + _BLOCK - 1) // _BLOCK
    # numba.get_num_threads() is per thread: the batch runner sets it to 1
    # in its workers, whose exposures already run in parallel.
    n_threads = min(numba.get_num_threads(), n_blocks)
    if e_sorted.size * flux_sorted.shape[0] < _THREADS_MIN_WORK:
        n_threads = 1
    run_in_threads([
        (lambda lo=lo, hi=hi: _median_blocks(e_sorted, flux_sorted, edges, out, counts, lo, hi))
        for lo, hi in chunk_bounds(n_blocks, max(n_threads, 1))
    ])


def _readonly(array):
    view = array.view()
    view.flags.writeable = False
    return view


def warm_up():
    """Compile (or load from the cache) the median kernel, on a tiny problem.

    The dashboard calls this in a background thread, so that the first
    switch to the median method does not wait for numba.
    """
    e = np.linspace(0.0, 4.0, 16)
    median_of_bins(e, np.ones((1, e.size)), np.array([[-0.5, 0.5, 1.5, 2.5, 3.5, 4.5]]))


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
    >>> edges = np.array([[-0.25, 0.75, 1.75, 2.75]])
    >>> bg, n = median_of_bins(e, flux, edges)
    >>> bg[0, 0].tolist(), n[0].tolist()
    ([1.5, 3.5, 5.5], [2, 2, 2])
    """
    # One signature for the kernel: C-contiguous float64 inputs, all read-only
    # views (numba compiles a writable and a read-only array apart).
    e_sorted, flux_sorted, edges = (
        _readonly(np.ascontiguousarray(a, dtype=np.float64))
        for a in (e_sorted, np.atleast_2d(flux_sorted), edges)
    )
    if e_sorted.size == 0:
        raise ValueError("no sky samples: every pixel is masked")
    n_rows, n_cols = edges.shape[0], edges.shape[1] - 1
    out = np.empty((flux_sorted.shape[0], n_rows, n_cols))
    counts = np.empty((n_rows, n_cols), np.int32)  # half an int64 map's memory
    _median_kernel(e_sorted, flux_sorted, edges, out, counts)
    return out, counts
