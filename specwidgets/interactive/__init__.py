"""Jupyter widgets for interactive sky subtraction (ipywidgets + bqplot).

Each compound widget translates between the user and a
:class:`specwidgets.interactive.state.SkyState`; the state does the work, the widgets
only draw and forward edits. The core package never imports this one.

* :class:`ImageViewer` - one frame at a time, mask bands and editor, pixel readout
* :class:`WarpGuessPicker` - arc profile, clickable guesses, line curves, residuals
* :class:`SEDExplorer` - the super-sampled sky spectrum, aggregated for display
* :class:`SkyFitControls` - spatial order, knot spacing, rejection, gain, read noise
* :class:`SpectrumPreview` - the extracted 1D spectrum, the sky spectrum, the sky-line score
* :class:`Dashboard` - all of them on one state, with undo/redo

Examples
--------
>>> from specwidgets.interactive import Dashboard
>>> dash = Dashboard.from_demo()
>>> dash.viewer.mask_slider.value = (40, 70)
>>> dash.mask_region
[(40, 70)]
"""

from ..display.aggregate import SEDAggregate, aggregate_sed, decimate_curve, leak_rows
from ..display.debounce import Debounced
from .dashboard import Dashboard
from .history import History
from .image_viewer import VIEWS, ImageViewer
from .preview import SpectrumPreview
from .sed_explorer import SEDExplorer
from .sky_controls import SkyFitControls
from .status import StatusBar
from .warp_picker import WarpGuessPicker

__all__ = [
    "VIEWS",
    "Dashboard",
    "Debounced",
    "History",
    "ImageViewer",
    "SEDAggregate",
    "SEDExplorer",
    "SkyFitControls",
    "SpectrumPreview",
    "StatusBar",
    "WarpGuessPicker",
    "aggregate_sed",
    "decimate_curve",
    "leak_rows",
]
