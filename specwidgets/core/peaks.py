"""Sub-pixel line centres: batched least-squares fits of pixel-integrated Gaussians.

Every fit in a batch runs in lock-step (Gauss-Newton with Levenberg damping on
4x4 normal equations), so tracing thousands of line/row pairs costs a few
array operations rather than thousands of ``curve_fit`` calls.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from scipy.special import erf

from ._threads import _n_threads, chunk_bounds, run_in_threads

__all__ = ["fit_gaussian_windows", "window_indices"]

_SQRT2 = np.sqrt(2.0)
_INV_SQRT2PI = 1.0 / np.sqrt(2.0 * np.pi)


def window_indices(centres, half_width, n_cols):
    """Integer column windows ``centre - half_width .. centre + half_width``, shifted to stay inside."""
    centres = np.rint(np.asarray(centres, dtype=float)).astype(np.int64)
    width = 2 * half_width + 1
    if width > n_cols:
        raise ValueError(f"a fit window of {width} columns does not fit in {n_cols} columns")
    start = np.clip(centres - half_width, 0, n_cols - width)
    return start[:, None] + np.arange(width)[None, :]


def _integrated_gaussian(cols, mu, sigma):
    a = (cols - 0.5 - mu[:, None]) / sigma[:, None]
    b = (cols + 0.5 - mu[:, None]) / sigma[:, None]
    g = 0.5 * (erf(b / _SQRT2) - erf(a / _SQRT2))
    pa = np.exp(-0.5 * a * a) * _INV_SQRT2PI
    pb = np.exp(-0.5 * b * b) * _INV_SQRT2PI
    return g, a, b, pa, pb


#: Batches of at least this many sample-iterations go to the compiled kernel;
#: the array code below does the rest (a test sets this high to compare the two).
_NUMBA_MIN_WORK = 0
#: Calls with at least this many windows are split between threads.
_THREAD_MIN_WINDOWS = 1000


@njit(cache=True, nogil=True)
def _gauss_newton_windows(cols, d, wt, bg, flux, mu, sigma, chi2, lam, s_lo, s_hi, n_iter):  # pragma: no cover - compiled
    """:func:`fit_gaussian_windows`' damped Gauss-Newton steps, one window at a time, in place.

    Same model, Jacobian, damping and acceptance as the array code; the 4x4
    systems are solved by Gaussian elimination with partial pivoting, an
    exactly singular one giving no step (as the array code's fallback does).
    """
    n, w = d.shape
    jac = np.empty((w, 4))
    r = np.empty(w)
    A = np.empty((4, 4))
    y = np.empty(4)
    for i in range(n):
        for _ in range(n_iter):
            m, s, f, b0 = mu[i], sigma[i], flux[i], bg[i]
            for j in range(w):
                a = (cols[i, j] - 0.5 - m) / s
                b = (cols[i, j] + 0.5 - m) / s
                g = 0.5 * (math.erf(b / _SQRT2) - math.erf(a / _SQRT2))
                pa = math.exp(-0.5 * a * a) * _INV_SQRT2PI
                pb = math.exp(-0.5 * b * b) * _INV_SQRT2PI
                r[j] = (d[i, j] - b0 - f * g) * wt[i, j]
                jac[j, 0] = wt[i, j]
                jac[j, 1] = g * wt[i, j]
                jac[j, 2] = -(f / s) * (pb - pa) * wt[i, j]
                jac[j, 3] = -(f / s) * (b * pb - a * pa) * wt[i, j]
            for p in range(4):
                y[p] = 0.0
                for q in range(4):
                    A[p, q] = 0.0
            for j in range(w):
                for p in range(4):
                    y[p] += jac[j, p] * r[j]
                    for q in range(4):
                        A[p, q] += jac[j, p] * jac[j, q]
            for p in range(4):
                A[p, p] += lam[i] * (A[p, p] + 1e-12)
            # Gaussian elimination with partial pivoting.
            singular = False
            for k in range(4):
                piv = k
                big = abs(A[k, k])
                for p in range(k + 1, 4):
                    if abs(A[p, k]) > big:
                        big = abs(A[p, k])
                        piv = p
                if A[piv, k] == 0.0:
                    singular = True
                    break
                if piv != k:
                    for q in range(4):
                        A[k, q], A[piv, q] = A[piv, q], A[k, q]
                    y[k], y[piv] = y[piv], y[k]
                for p in range(k + 1, 4):
                    factor = A[p, k] / A[k, k]
                    for q in range(k, 4):
                        A[p, q] -= factor * A[k, q]
                    y[p] -= factor * y[k]
            if singular:
                for p in range(4):
                    y[p] = 0.0
            else:
                for k in range(3, -1, -1):
                    acc = y[k]
                    for q in range(k + 1, 4):
                        acc -= A[k, q] * y[q]
                    y[k] = acc / A[k, k]
            nb, nf, nm = b0 + y[0], f + y[1], m + y[2]
            ns = min(max(s + y[3], s_lo), s_hi)
            new_chi2 = 0.0
            for j in range(w):
                a = (cols[i, j] - 0.5 - nm) / ns
                b = (cols[i, j] + 0.5 - nm) / ns
                g = 0.5 * (math.erf(b / _SQRT2) - math.erf(a / _SQRT2))
                rr = (d[i, j] - nb - nf * g) * wt[i, j]
                new_chi2 += rr * rr
            if np.isfinite(new_chi2) and new_chi2 <= chi2[i]:
                bg[i], flux[i], mu[i], sigma[i], chi2[i] = nb, nf, nm, ns, new_chi2
                lam[i] *= 0.3
            else:
                lam[i] *= 10.0


def fit_gaussian_windows(cols, data, n_iter=12, sigma_bounds=(0.3, None)):
    """Fit ``bg + flux * integral of N(mu, sigma) over each pixel`` to many windows at once.

    Parameters
    ----------
    cols : (n, w) int array
        Column index of each sample in each window.
    data : (n, w) float array
        Counts; NaN samples are ignored.
    n_iter : int
        Gauss-Newton iterations.
    sigma_bounds : (float, float or None)
        Allowed Gaussian sigma in pixels; the upper default is the window width / 2.

    Returns
    -------
    mu, sigma, flux, background, ok : (n,) arrays
        ``ok`` is False where the fit failed (too few samples, no positive
        peak, a centre outside its window, or no convergence); ``mu`` is NaN there.

    Examples
    --------
    >>> import numpy as np
    >>> cols = np.arange(20)[None, :].astype(float)
    >>> from scipy.special import erf
    >>> f = lambda x: 0.5 * erf((x - 9.3) / (1.5 * np.sqrt(2)))
    >>> data = 10 + 500 * (f(cols + 0.5) - f(cols - 0.5))
    >>> mu, sigma, flux, bg, ok = fit_gaussian_windows(cols, data)
    >>> round(float(mu[0]), 6), round(float(sigma[0]), 6)
    (9.3, 1.5)
    """
    cols = np.asarray(cols, dtype=float)
    data = np.asarray(data, dtype=float)
    n, w = data.shape
    valid = np.isfinite(data)
    d = np.where(valid, data, 0.0)
    wt = valid.astype(float)
    s_lo = sigma_bounds[0]
    s_hi = sigma_bounds[1] if sigma_bounds[1] is not None else w / 2.0

    # Moments of the background-subtracted window give a start close enough
    # for Gauss-Newton to converge in a few steps.
    bg = np.nanmin(np.where(valid, data, np.inf), axis=1)
    bg = np.where(np.isfinite(bg), bg, 0.0)
    excess = np.clip(d - bg[:, None], 0.0, None) * wt
    total = excess.sum(axis=1)
    good = total > 0
    safe_total = np.where(good, total, 1.0)
    mu = (excess * cols).sum(axis=1) / safe_total
    var = (excess * (cols - mu[:, None]) ** 2).sum(axis=1) / safe_total
    sigma = np.clip(np.sqrt(np.clip(var, 0, None)) * 0.8, s_lo, s_hi)
    flux = total.copy()
    lam = np.full(n, 1e-3)

    def residual_sum(p_bg, p_flux, p_mu, p_sigma):
        g = _integrated_gaussian(cols, p_mu, p_sigma)[0]
        r = (d - p_bg[:, None] - p_flux[:, None] * g) * wt
        return (r * r).sum(axis=1)

    chi2 = residual_sum(bg, flux, mu, sigma)
    if n * w * n_iter >= _NUMBA_MIN_WORK:
        # The same iterations window by window in compiled code: the warp
        # tracks lines block by block with a few dozen windows per call,
        # where the array version is all call overhead (~70% of an arc fit).
        # Each window is fit on its own: a warp's fine pass (thousands of
        # windows in one call) is split between the cores.
        n_pieces = _n_threads() if n >= _THREAD_MIN_WINDOWS else 1

        def piece(a, b):
            _gauss_newton_windows(cols[a:b], d[a:b], wt[a:b], bg[a:b], flux[a:b], mu[a:b], sigma[a:b], chi2[a:b],
                                  lam[a:b], float(s_lo), float(s_hi), int(n_iter))

        run_in_threads([(lambda a=a, b=b: piece(a, b)) for a, b in chunk_bounds(n, n_pieces)])
        n_iter = 0
    for _ in range(n_iter):
        g, a, b, pa, pb = _integrated_gaussian(cols, mu, sigma)
        r = (d - bg[:, None] - flux[:, None] * g) * wt
        jac = np.empty((n, w, 4))
        jac[..., 0] = 1.0
        jac[..., 1] = g
        jac[..., 2] = -(flux / sigma)[:, None] * (pb - pa)
        jac[..., 3] = -(flux / sigma)[:, None] * (b * pb - a * pa)
        jac *= wt[..., None]
        jtj = np.einsum("nwi,nwj->nij", jac, jac)
        jtr = np.einsum("nwi,nw->ni", jac, r)
        diag = np.einsum("nii->ni", jtj)
        damped = jtj + (lam[:, None] * (diag + 1e-12))[:, :, None] * np.eye(4)
        try:
            step = np.linalg.solve(damped, jtr[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = np.zeros((n, 4))
            for i in range(n):
                try:
                    step[i] = np.linalg.solve(damped[i], jtr[i])
                except np.linalg.LinAlgError:
                    pass
        new_bg, new_flux = bg + step[:, 0], flux + step[:, 1]
        new_mu = mu + step[:, 2]
        new_sigma = np.clip(sigma + step[:, 3], s_lo, s_hi)
        new_chi2 = residual_sum(new_bg, new_flux, new_mu, new_sigma)
        better = np.isfinite(new_chi2) & (new_chi2 <= chi2)
        bg = np.where(better, new_bg, bg)
        flux = np.where(better, new_flux, flux)
        mu = np.where(better, new_mu, mu)
        sigma = np.where(better, new_sigma, sigma)
        chi2 = np.where(better, new_chi2, chi2)
        lam = np.where(better, lam * 0.3, lam * 10.0)

    lo = cols.min(axis=1) - 0.5
    hi = cols.max(axis=1) + 0.5
    ok = (
        good
        & (valid.sum(axis=1) >= 5)
        & (flux > 0)
        & np.isfinite(mu)
        & (mu > lo)
        & (mu < hi)
    )
    mu = np.where(ok, mu, np.nan)
    return mu, sigma, flux, bg, ok
