"""The options a sky fit uses, every default filled in: what ``SkyResult.options`` records.

:func:`resolve_options` is also what batch hashes (before a fit) to decide
whether an existing output was made with the same settings, so two ways of
asking for the same fit must resolve alike.
"""

from __future__ import annotations

import inspect

__all__ = ["resolve_options"]

#: B-spline options that only :func:`fit_sky` reads (the rest go to ``fit_bspline_sky``).
_FIT_SKY_DEFAULTS = {"spatial_order": "auto", "unlit": "auto", "flexure": "auto", "sky_warp": "auto",
                     "slit_correction": "auto"}
#: ``fit_bspline_sky`` options whose defaults a resolved option set records.
_BSPLINE_DEFAULTED = ("reject_sigma", "max_iterations")


def resolve_options(method: str, options: dict | None = None, spatial_order: int | str | None = None,
                    knot_threshold: float | None = None) -> dict:
    """The sky options a fit with ``options`` uses, every default filled in.

    Two ways of asking for the same fit resolve to the same dict (so they
    hash alike); ``SkyResult.options`` is this dict for the order the fit
    chose. ``spatial_order`` (the order a fit chose) overrides an ``"auto"``
    one; while the order is ``"auto"``, the knot spacing that depends on it
    stays ``None`` (the default, :func:`~.bspline.default_knot_spacing`).
    Likewise ``knot_threshold`` (the one a fit chose on held-out rows)
    fills a ``None`` one of adaptive knots.

    Examples
    --------
    >>> resolve_options("bspline", {"spatial_order": 0}) == resolve_options(
    ...     "bspline", {"spatial_order": 0, "knot_spacing": 0.5, "knots": "adaptive"})
    True
    >>> resolve_options("bspline", {"knot_spacing": 0.5})["knots"]  # an explicit spacing: uniform knots
    'uniform'
    >>> resolve_options("median")
    {}
    """
    from .api import COARSE_SPACING
    from .bspline import default_knot_spacing, fit_bspline_sky

    given = dict(options or {})
    if method != "bspline":
        return given
    out = {**_FIT_SKY_DEFAULTS, **given}
    params = inspect.signature(fit_bspline_sky).parameters
    for name in _BSPLINE_DEFAULTED:
        out.setdefault(name, params[name].default)
    if out.get("knots") is None:
        out["knots"] = "adaptive" if given.get("knot_spacing") is None else "uniform"
    order = out["spatial_order"] if spatial_order is None else spatial_order
    out["spatial_order"] = order
    if out.get("knot_spacing") is None:
        out["knot_spacing"] = None if order == "auto" else default_knot_spacing(order)
    if out["knots"] == "adaptive":
        coarse = out.get("coarse_spacing", COARSE_SPACING)
        out["coarse_spacing"] = coarse if out["knot_spacing"] is None else max(coarse, out["knot_spacing"])
        if out.get("knot_threshold") is None:
            out["knot_threshold"] = None if knot_threshold is None else float(knot_threshold)
    else:
        out.pop("coarse_spacing", None)
        out.pop("knot_threshold", None)
    return out
