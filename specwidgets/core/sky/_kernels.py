"""The numba kernels of the B-spline sky fit and their threaded drivers.

Kept apart from :mod:`specwidgets.core.sky.bspline` (the model, the fit and
the knot choice) so that the public code reads without the kernels' index
arithmetic, and so the kernels, which numba compiles and caches by file, change
only when the arithmetic does.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .._threads import _n_threads, chunk_bounds, run_in_threads

# Below this many samples (or points) one thread does the work.
_PARALLEL_MIN_SAMPLES = 200_000
#: Below this many samples the selection helpers use NumPy (the same results), not their kernels: no
#: compilation for them on a new machine's first, small fits.
KERNEL_MIN_SAMPLES = 1 << 20


# ---------------------------------------------------------------------------
# numba kernels
#
# Unknowns are interleaved by knot: coefficient (basis i, spatial term p) is
# unknown number i * n_terms + p, so the 4 * n_terms unknowns a sample touches
# are contiguous and the normal matrix is banded with 4 * n_terms diagonals
# (lower storage as for ``scipy.linalg.solveh_banded(lower=True)``:
# ``band[d, c] = A[c + d, c]``).
# ---------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _locate(e, lo, inv_h, n_int):
    """Knot interval ``j`` of ``e`` and the fractional position in it."""
    u = (e - lo) * inv_h
    j = int(math.floor(u))
    # Keeps a sample exactly at the upper end in the last interval (at t=1);
    # evaluation clamps e to the range before calling this.
    if j < 0:
        j = 0
    elif j > n_int - 1:
        j = n_int - 1
    return j, u - j


@njit(cache=True, nogil=True, inline="always")
def _cubic_basis(t):
    """The four non-zero uniform cubic B-splines at fractional position ``t``.

    Closed form for uniform knots: no de Boor recursion, no knot search.
    """
    s = 1.0 - t
    t2 = t * t
    t3 = t2 * t
    return (s * s * s / 6.0,
            (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0,
            (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0,
            t3 / 6.0)


@njit(cache=True, nogil=True, inline="always")
def _local_design(t, ys, n_terms, a):
    """Fill ``a`` with the 4 * n_terms non-zero design-matrix entries.

    Entry ``k * n_terms + p`` is B-spline ``k`` (of the four) times the
    Legendre polynomial ``P_p(ys)``.
    """
    b0, b1, b2, b3 = _cubic_basis(t)
    lp, lp_prev = 1.0, 0.0
    for p in range(n_terms):
        a[p] = b0 * lp
        a[n_terms + p] = b1 * lp
        a[2 * n_terms + p] = b2 * lp
        a[3 * n_terms + p] = b3 * lp
        # Bonnet's recurrence: (p+1) P_{p+1} = (2p+1) x P_p - p P_{p-1}.
        lp, lp_prev = ((2 * p + 1) * ys * lp - p * lp_prev) / (p + 1), lp


@njit(cache=True, nogil=True)
def _normal_pass_constant(e, f, excluded, rejected, lo, inv_h, n_int, coef,
                          use_model, inv_gain, rn_var, var_floor, sig2, acc):
    """``_normal_pass`` specialised to ``spatial_order == 0``.

    This is the hot loop of the common case, written out with scalars (about
    twice as fast as the general kernel). It accumulates per knot interval
    ``j`` into ``acc[j]`` (zeroed by the caller): the 10 distinct products
    ``w * b_k * b_l`` (k <= l, row-major over the upper triangle) then the 4
    ``w * b_k * flux``; ``_constant_to_band`` scatters them into the band.
    A row of ``acc`` per interval keeps each sample's updates in one or two
    cache lines.
    """
    n_used = 0
    n_changed = 0
    for i in range(e.shape[0]):
        if excluded[i]:
            continue
        j, t = _locate(e[i], lo, inv_h, n_int)
        b0, b1, b2, b3 = _cubic_basis(t)
        fi = f[i]
        if use_model:
            m = b0 * coef[j] + b1 * coef[j + 1] + b2 * coef[j + 2] + b3 * coef[j + 3]
            var = max(max(m, 0.0) * inv_gain + rn_var, var_floor)
            r = fi - m
            rej = r * r > sig2 * var
            if rej != rejected[i]:
                n_changed += 1
                rejected[i] = rej
            if rej:
                continue
        else:
            var = max(max(fi, 0.0) * inv_gain + rn_var, var_floor)
        w = 1.0 / var
        n_used += 1
        w0 = w * b0
        w1 = w * b1
        w2 = w * b2
        w3 = w * b3
        acc[j, 0] += w0 * b0
        acc[j, 1] += w0 * b1
        acc[j, 2] += w0 * b2
        acc[j, 3] += w0 * b3
        acc[j, 4] += w1 * b1
        acc[j, 5] += w1 * b2
        acc[j, 6] += w1 * b3
        acc[j, 7] += w2 * b2
        acc[j, 8] += w2 * b3
        acc[j, 9] += w3 * b3
        acc[j, 10] += w0 * fi
        acc[j, 11] += w1 * fi
        acc[j, 12] += w2 * fi
        acc[j, 13] += w3 * fi
    return n_used, n_changed


def _normal_pass_constant_chunked(e, f, excluded, rejected, lo, inv_h, n_int, coef,
                                  use_model, inv_gain, rn_var, var_floor, sig2, acc_chunks):
    """``_normal_pass_constant`` over contiguous chunks of samples in parallel.

    Each chunk sums into its own accumulator (no write conflicts); the
    caller adds them up. Returns the total number of changed rejection flags.
    The chunks run in Python threads (the kernel releases the GIL): numba's
    ``parallel=True`` would add seconds of compilation on first use.
    """
    n_chunks = acc_chunks.shape[0]

    def chunk(c, start, stop):
        return _normal_pass_constant(
            e[start:stop], f[start:stop], excluded[start:stop], rejected[start:stop],
            lo, inv_h, n_int, coef, use_model, inv_gain, rn_var, var_floor, sig2,
            acc_chunks[c],
        )[1]

    bounds = chunk_bounds(e.shape[0], n_chunks)
    return int(sum(run_in_threads([
        (lambda c=c, start=start, stop=stop: chunk(c, start, stop)) for c, (start, stop) in enumerate(bounds)
    ])))


@njit(cache=True, nogil=True)
def _exclude_pass(e, f, y, use_y, lo, hi, use_extent, out):
    """``out[i]``: sample ``i`` is not usable (``e``, ``f`` or, with ``use_y``, ``y`` not finite, or ``e``
    outside ``[lo, hi]`` with ``use_extent``); returns how many are, and the sum of the usable ``f > 0``."""
    n = 0
    positive = 0.0
    for i in range(e.shape[0]):
        ei = e[i]
        fi = f[i]
        bad = not (math.isfinite(ei) and math.isfinite(fi))
        if use_y and not math.isfinite(y[i]):
            bad = True
        if use_extent and (ei < lo or ei > hi):
            bad = True
        out[i] = bad
        n += bad
        if not bad and fi > 0.0:
            positive += fi
    return n, positive


def excluded_samples(e, f, y, extent):
    """``(excluded, n_excluded, positive_sum)``: the samples not to use (see :func:`_exclude_pass`) and the
    sum of the usable samples' positive ``f``, in one pass over them.

    ``y`` None: rows not read. The same flags as NumPy's ``~(isfinite(e) &
    isfinite(f))`` and the comparisons, without their temporaries (eleven
    passes over the samples with the sum: ~60 ms each fit on a 4096 x 4096
    frame, more on its first call, whose temporaries are fresh memory).
    """
    use_y, use_extent = y is not None, extent is not None
    if e.shape[0] < KERNEL_MIN_SAMPLES:
        # (NumPy below a million samples: its passes are quick there, and a new machine's first fit
        # would otherwise wait for this kernel's compilation.)
        excluded = ~(np.isfinite(e) & np.isfinite(f))
        if use_y:
            excluded |= ~np.isfinite(y)
        if use_extent:
            with np.errstate(invalid="ignore"):
                excluded |= (e < extent[0]) | (e > extent[1])
        usable = ~excluded
        return excluded, int(np.count_nonzero(excluded)), float(np.sum(f, where=usable & (f > 0)))
    out = np.empty(e.shape[0], np.bool_)
    y_in = y if use_y else e
    lo, hi = (float(extent[0]), float(extent[1])) if use_extent else (0.0, 0.0)
    n_chunks = 1 if e.shape[0] < _PARALLEL_MIN_SAMPLES else _n_threads()
    parts = run_in_threads([
        (lambda a=a, b=b: _exclude_pass(e[a:b], f[a:b], y_in[a:b], use_y, lo, hi, use_extent, out[a:b]))
        for a, b in chunk_bounds(e.shape[0], n_chunks)
    ])
    return out, int(sum(n for n, _ in parts)), float(sum(p for _, p in parts))


@njit(cache=True, nogil=True)
def _usable_in_rows(e, f, y, lo, hi, dropped_rows, out):
    """Indices of the samples with finite ``e`` and ``f``, ``lo <= e <= hi`` and row ``y`` not in
    ``dropped_rows`` into ``out`` (None: only counted); returns how many there are."""
    n = 0
    for i in range(e.shape[0]):
        ei = e[i]
        if (math.isfinite(ei) and math.isfinite(f[i]) and ei >= lo and ei <= hi
                and not dropped_rows[y[i]]):
            if out is not None:
                out[n] = i
            n += 1
    return n


def usable_in_rows(e, f, y, extent, dropped_rows, count_only=False):
    """The indices (ascending) of the samples with finite ``e`` and ``f`` within ``extent`` whose row is not
    in ``dropped_rows`` (flags by row); with ``count_only``, how many. One pass, no sample-sized temporaries."""
    dropped_rows = np.ascontiguousarray(dropped_rows, dtype=np.bool_)
    lo, hi = float(extent[0]), float(extent[1])
    if e.shape[0] < KERNEL_MIN_SAMPLES:  # (NumPy: as excluded_samples)
        ok = np.isfinite(e) & np.isfinite(f) & (e >= lo) & (e <= hi) & ~dropped_rows[y]
        return int(np.count_nonzero(ok)) if count_only else np.flatnonzero(ok)
    if count_only:
        return _usable_in_rows(e, f, y, lo, hi, dropped_rows, None)
    out = np.empty(_usable_in_rows(e, f, y, lo, hi, dropped_rows, None), np.int64)
    _usable_in_rows(e, f, y, lo, hi, dropped_rows, out)
    return out


# (k, l) of the columns 0..9 of ``acc`` in ``_normal_pass_constant``.
_PAIRS = [(k, l) for k in range(4) for l in range(k, 4)]


def _constant_to_band(acc, band, rhs):
    """Scatter ``_normal_pass_constant`` sums into the band and rhs.

    Interval ``j`` touches basis functions ``j..j+3``, so pair ``(k, l)``
    lands on diagonal ``l - k`` at column ``j + k``.
    """
    n_int = acc.shape[0]
    band[:] = 0.0
    rhs[:] = 0.0
    for col, (k, l) in enumerate(_PAIRS):
        band[l - k, k:k + n_int] += acc[:, col]
    for k in range(4):
        rhs[k:k + n_int] += acc[:, 10 + k]


def _general_to_band(acc, band, rhs, n_terms):
    """Scatter ``_normal_pass`` sums into the band and rhs.

    Local unknown ``q`` of interval ``j`` is global unknown
    ``j * n_terms + q``; pair ``(q, r)`` lands on diagonal ``r - q``.
    """
    n_int, n_loc = acc.shape[0], acc.shape[1]
    band[:] = 0.0
    rhs[:] = 0.0
    for q in range(n_loc):
        cols = slice(q, q + n_int * n_terms, n_terms)
        for r in range(q, n_loc):
            band[r - q, cols] += acc[:, q, r]
        rhs[cols] += acc[:, q, n_loc]


@njit(cache=True, nogil=True)
def _normal_pass(e, f, y, excluded, rejected, lo, inv_h, n_int, y_off, y_scale,
                 n_terms, coef, use_model, inv_gain, rn_var, var_floor, sig2,
                 acc):
    """One pass over the samples: reweight, reject and accumulate A^T W A.

    With ``use_model`` False the weights come from the data themselves and no
    sample is rejected (the initial fit). Otherwise each sample's variance
    comes from the model ``coef``, ``rejected`` is rewritten in place from
    |flux - model| against ``sqrt(sig2 * var)`` (so earlier rejections can be
    undone) and only accepted samples are accumulated.

    Sums are kept per knot interval ``j`` (``acc`` zeroed by the caller, shape
    ``(n_int, n_loc, n_loc + 1)``, ``n_loc = 4 * n_terms``): ``acc[j, q, r]``
    for ``r >= q`` is the normal-matrix entry between local unknowns ``q`` and
    ``r``, and ``acc[j, q, n_loc]`` the right-hand side; a contiguous block
    per interval is much more cache-friendly than writing into the band.
    ``_general_to_band`` scatters them.

    Returns ``(n_used, n_changed)``: how many samples entered the sums and
    how many changed their rejected flag.
    """
    n_loc = 4 * n_terms
    a = np.empty(n_loc)
    n_used = 0
    n_changed = 0
    for i in range(e.shape[0]):
        if excluded[i]:
            continue
        j, t = _locate(e[i], lo, inv_h, n_int)
        ys = (y[i] - y_off) * y_scale - 1.0
        _local_design(t, ys, n_terms, a)
        fi = f[i]
        if use_model:
            base = j * n_terms
            m = 0.0
            for q in range(n_loc):
                m += a[q] * coef[base + q]
            var = max(max(m, 0.0) * inv_gain + rn_var, var_floor)
            r = fi - m
            rej = r * r > sig2 * var
            if rej != rejected[i]:
                n_changed += 1
                rejected[i] = rej
            if rej:
                continue
        else:
            var = max(max(fi, 0.0) * inv_gain + rn_var, var_floor)
        w = 1.0 / var
        n_used += 1
        blk = acc[j]
        for q in range(n_loc):
            aw = a[q] * w
            for r2 in range(q, n_loc):
                blk[q, r2] += aw * a[r2]
            blk[q, n_loc] += aw * fi
    return n_used, n_changed


def _normal_pass_chunked(e, f, y, excluded, rejected, lo, inv_h, n_int, y_off, y_scale,
                         n_terms, coef, use_model, inv_gain, rn_var, var_floor, sig2,
                         acc_chunks):
    """``_normal_pass`` over contiguous chunks of samples in parallel (one accumulator each; Python threads)."""
    n_chunks = acc_chunks.shape[0]

    def chunk(c, start, stop):
        return _normal_pass(
            e[start:stop], f[start:stop], y[start:stop], excluded[start:stop],
            rejected[start:stop], lo, inv_h, n_int, y_off, y_scale, n_terms, coef,
            use_model, inv_gain, rn_var, var_floor, sig2, acc_chunks[c],
        )[1]

    bounds = chunk_bounds(e.shape[0], n_chunks)
    return int(sum(run_in_threads([
        (lambda c=c, start=start, stop=stop: chunk(c, start, stop)) for c, (start, stop) in enumerate(bounds)
    ])))


# ``_normal_pass`` written out with scalars for one and two spatial terms
# (``spatial_order`` 1 and 2, which "auto" picks often): the general kernel's
# runtime-length loops over a small array cost about 3x as much. Each does
# the same floating-point operations in the same order as ``_normal_pass``,
# so the sums agree to the last bit. Per knot interval ``j``, ``acc[j]`` holds
# the ``n_loc * (n_loc + 1) / 2`` products of local unknowns ``q <= r``
# (row-major over the upper triangle) then the ``n_loc`` right-hand sides;
# ``_scalar_to_band`` scatters them. (The bodies are regular: local unknown
# ``q = k * n_terms + p`` is ``b_k * P_p(ys)``.)


@njit(cache=True, nogil=True)
def _normal_pass_2(e, f, y, excluded, rejected, lo, inv_h, n_int, y_off, y_scale, coef,
                   use_model, inv_gain, rn_var, var_floor, sig2, acc):
    """``_normal_pass`` specialised to ``n_terms == 2`` (see ``_SCALAR_PASSES``)."""
    n_used = 0
    n_changed = 0
    for i in range(e.shape[0]):
        if excluded[i]:
            continue
        j, t = _locate(e[i], lo, inv_h, n_int)
        ys = (y[i] - y_off) * y_scale - 1.0
        b0, b1, b2, b3 = _cubic_basis(t)
        # The Legendre values as Bonnet's recurrence in ``_local_design`` gives them.
        l1 = ys
        a0 = b0
        a1 = b0 * l1
        a2 = b1
        a3 = b1 * l1
        a4 = b2
        a5 = b2 * l1
        a6 = b3
        a7 = b3 * l1
        fi = f[i]
        if use_model:
            base = j * 2
            m = (0.0 + a0 * coef[base] + a1 * coef[base + 1] + a2 * coef[base + 2] + a3 * coef[base + 3]
                 + a4 * coef[base + 4] + a5 * coef[base + 5] + a6 * coef[base + 6] + a7 * coef[base + 7])
            var = max(max(m, 0.0) * inv_gain + rn_var, var_floor)
            r = fi - m
            rej = r * r > sig2 * var
            if rej != rejected[i]:
                n_changed += 1
                rejected[i] = rej
            if rej:
                continue
        else:
            var = max(max(fi, 0.0) * inv_gain + rn_var, var_floor)
        w = 1.0 / var
        n_used += 1
        blk = acc[j]
        aw = a0 * w; blk[0] += aw * a0; blk[1] += aw * a1; blk[2] += aw * a2; blk[3] += aw * a3
        blk[4] += aw * a4; blk[5] += aw * a5; blk[6] += aw * a6; blk[7] += aw * a7; blk[36] += aw * fi
        aw = a1 * w; blk[8] += aw * a1; blk[9] += aw * a2; blk[10] += aw * a3; blk[11] += aw * a4
        blk[12] += aw * a5; blk[13] += aw * a6; blk[14] += aw * a7; blk[37] += aw * fi
        aw = a2 * w; blk[15] += aw * a2; blk[16] += aw * a3; blk[17] += aw * a4; blk[18] += aw * a5
        blk[19] += aw * a6; blk[20] += aw * a7; blk[38] += aw * fi
        aw = a3 * w; blk[21] += aw * a3; blk[22] += aw * a4; blk[23] += aw * a5; blk[24] += aw * a6
        blk[25] += aw * a7; blk[39] += aw * fi
        aw = a4 * w; blk[26] += aw * a4; blk[27] += aw * a5; blk[28] += aw * a6; blk[29] += aw * a7
        blk[40] += aw * fi
        aw = a5 * w; blk[30] += aw * a5; blk[31] += aw * a6; blk[32] += aw * a7; blk[41] += aw * fi
        aw = a6 * w; blk[33] += aw * a6; blk[34] += aw * a7; blk[42] += aw * fi
        aw = a7 * w; blk[35] += aw * a7; blk[43] += aw * fi
    return n_used, n_changed


@njit(cache=True, nogil=True)
def _normal_pass_3(e, f, y, excluded, rejected, lo, inv_h, n_int, y_off, y_scale, coef,
                   use_model, inv_gain, rn_var, var_floor, sig2, acc):
    """``_normal_pass`` specialised to ``n_terms == 3`` (see ``_SCALAR_PASSES``)."""
    n_used = 0
    n_changed = 0
    for i in range(e.shape[0]):
        if excluded[i]:
            continue
        j, t = _locate(e[i], lo, inv_h, n_int)
        ys = (y[i] - y_off) * y_scale - 1.0
        b0, b1, b2, b3 = _cubic_basis(t)
        # The Legendre values as Bonnet's recurrence in ``_local_design`` gives them.
        l1 = ys
        l2 = (3.0 * ys * l1 - 1.0) / 2.0
        a0 = b0
        a1 = b0 * l1
        a2 = b0 * l2
        a3 = b1
        a4 = b1 * l1
        a5 = b1 * l2
        a6 = b2
        a7 = b2 * l1
        a8 = b2 * l2
        a9 = b3
        a10 = b3 * l1
        a11 = b3 * l2
        fi = f[i]
        if use_model:
            base = j * 3
            m = (0.0 + a0 * coef[base] + a1 * coef[base + 1] + a2 * coef[base + 2] + a3 * coef[base + 3]
                 + a4 * coef[base + 4] + a5 * coef[base + 5] + a6 * coef[base + 6] + a7 * coef[base + 7]
                 + a8 * coef[base + 8] + a9 * coef[base + 9] + a10 * coef[base + 10] + a11 * coef[base + 11])
            var = max(max(m, 0.0) * inv_gain + rn_var, var_floor)
            r = fi - m
            rej = r * r > sig2 * var
            if rej != rejected[i]:
                n_changed += 1
                rejected[i] = rej
            if rej:
                continue
        else:
            var = max(max(fi, 0.0) * inv_gain + rn_var, var_floor)
        w = 1.0 / var
        n_used += 1
        blk = acc[j]
        aw = a0 * w; blk[0] += aw * a0; blk[1] += aw * a1; blk[2] += aw * a2; blk[3] += aw * a3
        blk[4] += aw * a4; blk[5] += aw * a5; blk[6] += aw * a6; blk[7] += aw * a7; blk[8] += aw * a8
        blk[9] += aw * a9; blk[10] += aw * a10; blk[11] += aw * a11; blk[78] += aw * fi
        aw = a1 * w; blk[12] += aw * a1; blk[13] += aw * a2; blk[14] += aw * a3; blk[15] += aw * a4
        blk[16] += aw * a5; blk[17] += aw * a6; blk[18] += aw * a7; blk[19] += aw * a8; blk[20] += aw * a9
        blk[21] += aw * a10; blk[22] += aw * a11; blk[79] += aw * fi
        aw = a2 * w; blk[23] += aw * a2; blk[24] += aw * a3; blk[25] += aw * a4; blk[26] += aw * a5
        blk[27] += aw * a6; blk[28] += aw * a7; blk[29] += aw * a8; blk[30] += aw * a9; blk[31] += aw * a10
        blk[32] += aw * a11; blk[80] += aw * fi
        aw = a3 * w; blk[33] += aw * a3; blk[34] += aw * a4; blk[35] += aw * a5; blk[36] += aw * a6
        blk[37] += aw * a7; blk[38] += aw * a8; blk[39] += aw * a9; blk[40] += aw * a10; blk[41] += aw * a11
        blk[81] += aw * fi
        aw = a4 * w; blk[42] += aw * a4; blk[43] += aw * a5; blk[44] += aw * a6; blk[45] += aw * a7
        blk[46] += aw * a8; blk[47] += aw * a9; blk[48] += aw * a10; blk[49] += aw * a11; blk[82] += aw * fi
        aw = a5 * w; blk[50] += aw * a5; blk[51] += aw * a6; blk[52] += aw * a7; blk[53] += aw * a8
        blk[54] += aw * a9; blk[55] += aw * a10; blk[56] += aw * a11; blk[83] += aw * fi
        aw = a6 * w; blk[57] += aw * a6; blk[58] += aw * a7; blk[59] += aw * a8; blk[60] += aw * a9
        blk[61] += aw * a10; blk[62] += aw * a11; blk[84] += aw * fi
        aw = a7 * w; blk[63] += aw * a7; blk[64] += aw * a8; blk[65] += aw * a9; blk[66] += aw * a10
        blk[67] += aw * a11; blk[85] += aw * fi
        aw = a8 * w; blk[68] += aw * a8; blk[69] += aw * a9; blk[70] += aw * a10; blk[71] += aw * a11
        blk[86] += aw * fi
        aw = a9 * w; blk[72] += aw * a9; blk[73] += aw * a10; blk[74] += aw * a11; blk[87] += aw * fi
        aw = a10 * w; blk[75] += aw * a10; blk[76] += aw * a11; blk[88] += aw * fi
        aw = a11 * w; blk[77] += aw * a11; blk[89] += aw * fi
    return n_used, n_changed



def _scalar_pass_chunked(kernel, e, f, y, excluded, rejected, lo, inv_h, n_int, y_off, y_scale,
                         coef, use_model, inv_gain, rn_var, var_floor, sig2, acc_chunks):
    """A ``_SCALAR_PASSES`` kernel over contiguous chunks of samples (one accumulator each; Python threads)."""
    n_chunks = acc_chunks.shape[0]

    def chunk(c, start, stop):
        return kernel(
            e[start:stop], f[start:stop], y[start:stop], excluded[start:stop],
            rejected[start:stop], lo, inv_h, n_int, y_off, y_scale, coef,
            use_model, inv_gain, rn_var, var_floor, sig2, acc_chunks[c],
        )[1]

    bounds = chunk_bounds(e.shape[0], n_chunks)
    return int(sum(run_in_threads([
        (lambda c=c, start=start, stop=stop: chunk(c, start, stop)) for c, (start, stop) in enumerate(bounds)
    ])))


def _scalar_to_band(acc, band, rhs, n_terms):
    """Scatter a ``_SCALAR_PASSES`` kernel's sums into the band and rhs.

    Same additions in the same order as ``_general_to_band``.
    """
    n_int, n_loc = acc.shape[0], 4 * n_terms
    band[:] = 0.0
    rhs[:] = 0.0
    col = 0
    for q in range(n_loc):
        cols = slice(q, q + n_int * n_terms, n_terms)
        for r in range(q, n_loc):
            band[r - q, cols] += acc[:, col]
            col += 1
        rhs[cols] += acc[:, n_loc * (n_loc + 1) // 2 + q]


_SCALAR_PASSES = {2: _normal_pass_2, 3: _normal_pass_3}


@njit(cache=True, nogil=True)
def _evaluate(e, y, lo, hi, inv_h, n_int, y_off, y_scale, n_terms, coef,
              first_term_only, out):
    """Model value at each ``(e, y)``; ``e`` is clamped to ``[lo, hi]``."""
    n_loc = 4 * n_terms
    a = np.empty(n_loc)
    for i in range(e.shape[0]):
        ei = e[i]
        if not math.isfinite(ei):
            out[i] = np.nan
            continue
        ei = min(max(ei, lo), hi)
        j, t = _locate(ei, lo, inv_h, n_int)
        ys = (y[i] - y_off) * y_scale - 1.0 if n_terms > 1 else 0.0
        _local_design(t, ys, n_terms, a)
        base = j * n_terms
        m = 0.0
        for q in range(n_loc):
            if first_term_only and q % n_terms != 0:
                continue
            m += a[q] * coef[base + q]
        out[i] = m


@njit(cache=True, nogil=True)
def _evaluate_small(e, y, lo, hi, inv_h, n_int, y_off, y_scale, n_terms, coef, out):
    """``_evaluate`` (all terms) written out with scalars for ``n_terms`` 1 to 3.

    Same operations in the same order as the general kernel (the sum over
    the local unknowns ``q = k * n_terms + p`` in increasing ``q``), so the
    values agree to the last bit; about twice as fast.
    """
    for i in range(e.shape[0]):
        ei = e[i]
        if not math.isfinite(ei):
            out[i] = np.nan
            continue
        ei = min(max(ei, lo), hi)
        j, t = _locate(ei, lo, inv_h, n_int)
        b0, b1, b2, b3 = _cubic_basis(t)
        base = j * n_terms
        if n_terms == 1:
            out[i] = (0.0 + b0 * coef[base] + b1 * coef[base + 1] + b2 * coef[base + 2]
                      + b3 * coef[base + 3])
            continue
        # The Legendre values as Bonnet's recurrence in ``_local_design`` gives them.
        l1 = (y[i] - y_off) * y_scale - 1.0
        if n_terms == 2:
            out[i] = (0.0 + b0 * coef[base] + b0 * l1 * coef[base + 1] + b1 * coef[base + 2]
                      + b1 * l1 * coef[base + 3] + b2 * coef[base + 4] + b2 * l1 * coef[base + 5]
                      + b3 * coef[base + 6] + b3 * l1 * coef[base + 7])
        else:
            l2 = (3.0 * l1 * l1 - 1.0) / 2.0
            out[i] = (0.0 + b0 * coef[base] + b0 * l1 * coef[base + 1] + b0 * l2 * coef[base + 2]
                      + b1 * coef[base + 3] + b1 * l1 * coef[base + 4] + b1 * l2 * coef[base + 5]
                      + b2 * coef[base + 6] + b2 * l1 * coef[base + 7] + b2 * l2 * coef[base + 8]
                      + b3 * coef[base + 9] + b3 * l1 * coef[base + 10] + b3 * l2 * coef[base + 11])


def _evaluate_any(e, y, lo, hi, inv_h, n_int, y_off, y_scale, n_terms, coef, first_term_only, out):
    """``_evaluate``, by ``_evaluate_small`` where it applies."""
    if n_terms <= 3 and not first_term_only:
        _evaluate_small(e, y, lo, hi, inv_h, n_int, y_off, y_scale, n_terms, coef, out)
    else:
        _evaluate(e, y, lo, hi, inv_h, n_int, y_off, y_scale, n_terms, coef, first_term_only, out)


def _evaluate_chunked(e, y, lo, hi, inv_h, n_int, y_off, y_scale, n_terms, coef,
                      first_term_only, out, n_chunks):
    """``_evaluate`` split over contiguous chunks of points, in parallel (Python threads, see above)."""
    n = e.shape[0]
    per_point_y = y.shape[0] == n

    def chunk(start, stop):
        yc = y[start:stop] if per_point_y else y
        _evaluate_any(e[start:stop], yc, lo, hi, inv_h, n_int, y_off, y_scale, n_terms,
                  coef, first_term_only, out[start:stop])

    run_in_threads([(lambda start=start, stop=stop: chunk(start, stop)) for start, stop in chunk_bounds(n, n_chunks)])


@njit(cache=True, nogil=True)
def _inverse_band(chol):
    """Band of ``A^-1`` from the lower banded Cholesky factor of ``A``.

    Takahashi et al. (1973) selected inversion: from ``L^T Z = L^-1`` (whose
    strict upper triangle is zero), for ``j >= i``::

        Z[i, j] = (delta_ij / L[i, i] - sum_{k=i+1}^{i+m} L[k, i] Z[k, j]) / L[i, i]

    Run from the last row up, every ``Z[k, j]`` needed lies inside the band
    already computed, so the band of the inverse costs O(n * m**2) instead of
    the O(n**3) of a dense inverse. Same storage as ``chol``:
    ``z[d, c] = Z[c + d, c]``.
    """
    nb, n = chol.shape
    m = nb - 1
    z = np.zeros((nb, n))
    for i in range(n - 1, -1, -1):
        lii = chol[0, i]
        kmax = min(i + m, n - 1)
        for jj in range(i + 1, kmax + 1):
            s = 0.0
            for k in range(i + 1, kmax + 1):
                if k >= jj:
                    zkj = z[k - jj, jj]
                else:
                    zkj = z[jj - k, k]
                s += chol[k - i, i] * zkj
            z[jj - i, i] = -s / lii
        s = 0.0
        for k in range(i + 1, kmax + 1):
            s += chol[k - i, i] * z[k - i, i]
        z[0, i] = (1.0 / lii - s) / lii
    return z


@njit(cache=True, nogil=True)
def _quadratic_form(e, y, lo, hi, inv_h, n_int, y_off, y_scale, n_terms, zband,
                    out):
    """``a^T Z a`` for each point's local design vector ``a``."""
    n_loc = 4 * n_terms
    a = np.empty(n_loc)
    for i in range(e.shape[0]):
        ei = e[i]
        if not math.isfinite(ei):
            out[i] = np.nan
            continue
        ei = min(max(ei, lo), hi)
        j, t = _locate(ei, lo, inv_h, n_int)
        ys = (y[i] - y_off) * y_scale - 1.0 if n_terms > 1 else 0.0
        _local_design(t, ys, n_terms, a)
        base = j * n_terms
        v = 0.0
        for q in range(n_loc):
            v += a[q] * a[q] * zband[0, base + q]
            cross = 0.0
            for r in range(q + 1, n_loc):
                cross += a[r] * zband[r - q, base + q]
            v += 2.0 * a[q] * cross
        out[i] = v


def dither(index, offset, quantum, step=0.6180339887498949):
    """``quantum * (u - 0.5)`` for each flat pixel ``index`` (plus ``offset``, e.g. an exposure's),
    ``u`` spread evenly over [0, 1) by the golden ratio (a Weyl sequence of ``step``): the same for a
    pixel in every fit, whatever the mask, and uncorrelated with the values' own steps. Another
    ``step`` gives a sequence whose difference from this one is not constant along the pixels.

    >>> d = dither(np.arange(100_000), 0, 1.0)
    >>> bool(abs(d.mean()) < 1e-3 and abs(d.var() - 1 / 12) < 1e-3 and -0.5 <= d.min() and d.max() < 0.5)
    True
    """
    u = (np.asarray(index, dtype=float) + float(offset)) * step
    u -= np.floor(u)
    u -= 0.5
    u *= quantum
    return u


@njit(cache=True, nogil=True)
def _add_dither_pass(flux, index, offset, quantum):
    # (The same operations, in the same order, as dither.)
    for i in range(flux.shape[0]):
        u = (float(index[i]) + offset) * 0.6180339887498949
        u -= math.floor(u)
        u -= 0.5
        flux[i] += u * quantum


def add_dither(flux, index, offset, quantum):
    """``flux += dither(index, offset, quantum)`` in place (see :func:`dither`), in one pass per
    chunk on the cores for a large frame; NumPy below :data:`KERNEL_MIN_SAMPLES`."""
    if flux.shape[0] < KERNEL_MIN_SAMPLES:
        flux += dither(index, offset, quantum)
        return
    run_in_threads([
        (lambda a=a, b=b: _add_dither_pass(flux[a:b], index[a:b], float(offset), float(quantum)))
        for a, b in chunk_bounds(flux.shape[0], _n_threads())
    ])
