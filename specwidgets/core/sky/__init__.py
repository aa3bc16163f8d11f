"""Sky models over the effective-pixel coordinate.

``api`` (fit_sky, extract_background, SkyResult), ``samples`` of the sky rows,
the estimators ``bspline`` (Kelson-style, default) and ``median`` (the
seed's median of bins), and ``quality`` (noise model, unlit rows, flexure,
the verdict that says when a fit is probably wrong).
"""

from .api import METHODS, SkyQuality, SkyResult, extract_background, fit_sky, seed_returns

__all__ = ["METHODS", "SkyQuality", "SkyResult", "extract_background", "fit_sky", "seed_returns"]
