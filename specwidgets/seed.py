"""The seed tutorial's ``extract_background``, with its ``debug=True`` drawing.

The core's :func:`specwidgets.core.sky.api.extract_background` computes; drawing
needs the display layer (bqplot), which the core must not import, so the
seed's one-call interface that does both lives here, above both layers.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .core.sky.api import extract_background as _extract_background
from .core.warp import WarpModel


def extract_background(
    images: ArrayLike,
    warp_model: WarpModel,
    mask_region=(None, None),
    return_spectrum: bool = False,
    progress: bool = False,
    debug: bool = False,
    method: str = "bspline",
    **options,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Estimate the sky background in every pixel (the seed's interface).

    Parameters and returns are those of
    :func:`specwidgets.core.sky.api.extract_background`, plus:

    Parameters
    ----------
    debug : bool
        Show the original, background and corrected image of each exposure
        (in a notebook; elsewhere, print a line per exposure).

    Examples
    --------
    >>> import specwidgets as sw
    >>> frames = sw.datasets.make_synthetic_longslit(shape=(60, 400), seed=2)
    >>> bg = sw.extract_background(frames.science, frames.warp, mask_region=frames.trace_rows)
    >>> bg.shape
    (1, 60, 400)
    """
    if not debug:
        return _extract_background(
            images, warp_model, mask_region, return_spectrum=return_spectrum, progress=progress, method=method, **options
        )
    import numpy as np

    from .core.sky.api import fit_sky, seed_returns, warn_if_suspect
    from .display.debug import show_sky_debug

    result = fit_sky(images, warp_model, mask_region, method=method, progress=progress, **options)
    show_sky_debug(result)
    warn_if_suspect(result)
    return seed_returns(result, two_d=np.ndim(images) == 2, return_spectrum=return_spectrum)
