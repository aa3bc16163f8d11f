"""specwidgets: interactive, exact sky-background subtraction for long-slit spectroscopy.

The core (loading, line finding, warp models, sky estimation) needs only
numpy, scipy, astropy and numba; the widgets and ``plot_image`` are loaded
on first use, so ``import specwidgets`` stays light.

Examples
--------
>>> import specwidgets as sw
>>> frames = sw.datasets.load_demo()
>>> locs, _ = sw.find_cal_lines(frames.arc)
>>> model = sw.generate_warp_model(frames.arc, locs)
>>> background = sw.extract_background(frames.science, model, mask_region=frames.trace_rows)
>>> background.shape == frames.science.shape
True
"""

# First: numba reads its cache folder when first imported, and its default
# (beside the module) would write into the installed package.
from .core._cache import configure_numba_cache
from .core._version import __version__  # noqa: F401 - the package version, re-exported

configure_numba_cache()

from importlib import import_module  # noqa: E402

from .core.extract import Extraction, SkyLineScore, Trace, extract_spectrum, sky_line_residual_score, trace_spectrum
from .core.inputs import mask_ranges
from .core.lines import find_cal_lines
from .core.rows import RowRanges
from .core.sky.api import METHODS, SkyQuality, SkyResult, SuspectSkyWarning, fit_sky
from .core.sky.sky_warp import sky_warp_model
from .core.warp import PoorWarpWarning, WarpModel, generate_warp_model
from .io import synthetic as datasets
from .io.instruments import Instrument, get_instrument, known_instruments, register_instrument
from .io.loading import average_matching_files, collect_images_array
from .seed import extract_background

# Widget-layer names, imported on first use (they pull in ipywidgets/bqplot).
_LAZY = {
    "plot_image": ".display.plotting",
    "Dashboard": ".interactive",
    "ImageViewer": ".interactive",
    "SEDExplorer": ".interactive",
    "WarpGuessPicker": ".interactive",
}

__all__ = [
    "Dashboard",
    "ImageViewer",
    "METHODS",
    "Extraction",
    "RowRanges",
    "SkyLineScore",
    "Trace",
    "SEDExplorer",
    "WarpGuessPicker",
    "Instrument",
    "SkyQuality",
    "SkyResult",
    "PoorWarpWarning",
    "SuspectSkyWarning",
    "WarpModel",
    "average_matching_files",
    "collect_images_array",
    "datasets",
    "extract_background",
    "extract_spectrum",
    "find_cal_lines",
    "fit_sky",
    "generate_warp_model",
    "get_instrument",
    "known_instruments",
    "mask_ranges",
    "plot_image",
    "register_instrument",
    "sky_line_residual_score",
    "sky_warp_model",
    "trace_spectrum",
]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'specwidgets' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
