"""The algorithms: numpy, scipy, astropy and numba only.

Nothing here imports the other layers (``io``, ``display``, ``interactive``,
``app``, ``batch``), ipywidgets or bqplot; ``tests/test_layers.py`` checks it.

* :mod:`.inputs` - the one normaliser of images, stacks, row ranges, numbers
* :mod:`.frames` - :class:`FrameArray`, an image that carries gain, read noise, unit, header
* :mod:`.peaks`, :mod:`.lines` - arc-line finding
* :mod:`.warp` - :class:`WarpModel`, the curvature of lines and the effective-pixel map
* :mod:`.sky` - the sky fit and its quality verdict
* :mod:`.extract` - trace, boxcar/optimal extraction, sky-line residual score
"""

# First: numba reads its cache folder when first imported, and its default
# (beside the module) would write into the installed package.
from ._cache import configure_numba_cache

configure_numba_cache()

from .extract import (  # noqa: E402
    Extraction,
    SkyLineScore,
    Trace,
    extract_spectrum,
    guess_trace_rows,
    sky_line_residual_score,
    trace_spectrum,
)
from .frames import FrameArray  # noqa: E402
from .inputs import mask_ranges  # noqa: E402
from .lines import find_cal_lines  # noqa: E402
from .rows import RowRanges  # noqa: E402
from .sky import METHODS, SkyQuality, SkyResult, extract_background, fit_sky  # noqa: E402
from .warp import PoorWarpWarning, WarpModel, generate_warp_model  # noqa: E402

__all__ = [
    "METHODS",
    "Extraction",
    "FrameArray",
    "RowRanges",
    "SkyLineScore",
    "SkyQuality",
    "SkyResult",
    "Trace",
    "PoorWarpWarning",
    "WarpModel",
    "extract_background",
    "extract_spectrum",
    "find_cal_lines",
    "fit_sky",
    "generate_warp_model",
    "guess_trace_rows",
    "mask_ranges",
    "sky_line_residual_score",
    "trace_spectrum",
]
