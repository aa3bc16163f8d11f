"""The image viewer, the warp-guess picker and the SED explorer on one state.

Examples
--------
>>> from specwidgets.io.synthetic import make_synthetic_longslit
>>> frames = make_synthetic_longslit(shape=(40, 300), n_exposures=2, n_arc_lines=8, seed=1)
>>> dash = Dashboard(frames.science, frames.arc, mask_region=frames.trace_rows, read_noise=4.0)
>>> dash.viewer.mask_slider.value = (12, 26)
>>> dash.mask_region, dash.background.shape
([(12, 26)], (2, 40, 300))
>>> dash.sed.brush.brushing = True; dash.sed.brush.selected = [100.0, 110.0]
>>> dash.sed.brush.brushing = False
>>> dash.viewer.highlight
(100.0, 110.0)
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import ipywidgets
import traitlets as tl

from ..core.sky.api import METHODS
from .history import History
from .image_viewer import ImageViewer, ranges_of
from .navigation import KeyShortcuts
from .preview import SpectrumPreview
from .sed_explorer import SEDExplorer
from .sky_controls import SkyFitControls
from .state import SkyState
from .status import StatusBar
from .warp_picker import WarpGuessPicker

__all__ = ["Dashboard"]

# Rows of the Goodman trace in the full 947-row frame (the README's crop
# 680-800 masks 20-100 of it).
_GOODMAN_TRACE_ROWS = (700, 780)

# Seconds between a new result's picture and the redraw of the sky spectrum,
# the preview and the status (whose reading of the fit's quality report makes
# it: see assess_later), in a running kernel: time for the picture's message
# to leave the kernel (its output thread waits for the interpreter, which
# these would hold) and for the page to paint it (~20 ms), before their
# updates arrive and keep the page busy.
FOLLOW_DELAY = 0.04


class Dashboard(ipywidgets.VBox):
    """Interactive sky subtraction: mask, warp guesses and sky spectrum on one :class:`SkyState`.

    Parameters
    ----------
    science : array_like
        ``(n_rows, n_cols)`` or ``(n_exposures, n_rows, n_cols)``.
    arc : array_like, optional
        The arc frame (needed for the warp-guess picker).
    mask_region : (int, int) or list of (int, int)
        Rows ``start:stop`` to keep out of the sky (the trace).
    read_noise : float, "estimate" or None
        Electrons. None (the default): the frames' own (loaders and data sets
        attach it), else estimated by the fit; a number or ``"estimate"``
        overrides that. ``gain=`` (in ``**traits``) works the same way.
    method : {"bspline", "median"}
    state : SkyState, optional
        Use this state instead of building one (then the data arguments are ignored).
    figsize : (float, float), optional
        Size of the images in inches.
    exposure_names : list of str, optional
        Input file of each exposure, naming the exported files (default
        ``exposure_0``, ``exposure_1``, ...).
    input_headers : list of astropy.io.fits.Header, optional
        Header of each exposure's input file: its observation keywords
        (OBJECT, DATE-OBS, EXPTIME, ...) go into the exported files.
    **traits
        Further :class:`SkyState` inputs (``guesses``, ``tolerance``, ``gain``, ...).

    Attributes
    ----------
    state : SkyState
    viewer : ImageViewer
    picker : WarpGuessPicker or None
        None without an arc frame.
    sed : SEDExplorer
    preview : SpectrumPreview
        The extracted 1D spectrum beside the sky spectrum, with the sky-line score.
    history : History
        Undo/redo of mask and guess edits (``undo_button``, ``redo_button``, Ctrl-Z).
    status : StatusBar
    method : ipywidgets.ToggleButtons
        The sky estimator (``state.method``).
    sky_controls : SkyFitControls
        Spatial order, knot spacing, rejection threshold, gain and read noise.
    exposure_names : list of str
        The input file (or a name) of each exposure; exported files are
        named after them.
    export_folder, export_button : ipywidgets widgets
        Write the current result with :meth:`export`.

    Notes
    -----
    In a running kernel the sky spectrum, the preview and the status bar
    are redrawn :data:`FOLLOW_DELAY` seconds after the picture of a new
    fit; :meth:`flush` finishes them at once (e.g. before reading
    ``preview.score`` in the cell after a change).
    """

    def __init__(self, science=None, arc=None, mask_region=None, *, read_noise=None, method="bspline",
                 state=None, figsize=None, exposure_names=None, input_headers=None, **traits):
        super().__init__()
        if state is None:
            if science is None:
                raise TypeError("give the science frames (or a SkyState as state=)")
            if mask_region is not None:
                traits["mask_region"] = mask_region
            state = SkyState(science, arc, read_noise=read_noise, method=method, **traits)
        self.state = state
        n_exp = state.n_exposures
        self.exposure_names = list(exposure_names) if exposure_names is not None else [
            f"exposure_{k}" for k in range(n_exp)
        ]
        if len(self.exposure_names) != n_exp:
            raise ValueError(f"exposure_names has {len(self.exposure_names)} names for {n_exp} exposure(s)")
        self.input_headers = list(input_headers) if input_headers is not None else None
        if self.input_headers is not None and len(self.input_headers) != n_exp:
            raise ValueError(f"input_headers has {len(self.input_headers)} headers for {n_exp} exposure(s)")
        self.status = StatusBar(state, follow_delay=FOLLOW_DELAY)
        guard = self.status.guard
        labels = exposure_labels(self.exposure_names, self.input_headers) if exposure_names is not None else None
        self.viewer = ImageViewer(state, status=self.status, figsize=figsize, exposure_labels=labels)
        # The views beside the picture redraw a moment after it, so that the
        # page gets and paints the picture first (see SEDExplorer's follow_delay).
        self.sed = SEDExplorer(state, status=self.status, follow_delay=FOLLOW_DELAY)
        # The arc image and the 1D preview share the image's scales: zoom one, the others follow.
        image_scales = {"x": self.viewer.figure.x_scale, "y": self.viewer.figure.y_scale}
        self.picker = WarpGuessPicker(state, status=self.status, figsize=figsize,
                                      image_scales=image_scales) if state.arc is not None else None
        self.preview = SpectrumPreview(state, status=self.status, x_scale=self.viewer.figure.x_scale,
                                       follow_delay=FOLLOW_DELAY)
        self._build_history()
        self.method = ipywidgets.ToggleButtons(
            options=list(METHODS), value=state.method, description="Sky method", style={"button_width": "80px"}
        )
        self.method.observe(guard(self._on_method_widget), names="value")
        self.sky_controls = SkyFitControls(state, status=self.status)
        state.observe(guard(self._on_method_state), names="method")
        # Brushing the sky spectrum outlines the same effective pixels on the image.
        self._link = tl.dlink((self.sed, "selected_range"), (self.viewer, "highlight"))

        sky = ipywidgets.VBox([self.viewer, self.preview, self.sed])
        # The picker is put in its tab when the tab is first opened: a bqplot
        # figure drawn in a hidden tab has no size and sets negative widths
        # (console errors "<rect> attribute width: A negative value").
        self._picker_page = ipywidgets.VBox()
        pages = [sky] + ([self._picker_page] if self.picker is not None else [])
        self.tabs = ipywidgets.Tab(children=pages)
        for i, title in enumerate(["Sky", "Warp guesses"][: len(pages)]):
            self.tabs.set_title(i, title)
        self.tabs.observe(guard(self._on_tab), names="selected_index")
        #: Header entries an export records of the inputs (instrument, crop,
        #: unit, calibration files, input gain; see ``fits_output.sky_header``):
        #: one dict, or one per exposure, set by whoever loaded the frames (the
        #: page's folder form), else none.
        self.export_provenance = None
        #: MASK bits every exported exposure gets (the page sets MASK_BADFLAT where its flat was unusable).
        self.export_extra_mask = None
        #: The noise of the flat the frames were divided by (a ``FlatNoise``; the page's flat tag): added to VAR.
        self.export_flat_noise = None
        self.export_folder = ipywidgets.Text(value="specwidgets_sky", description="Export to")
        self.export_button = ipywidgets.Button(description="Export FITS", icon="download")
        self.export_message = ipywidgets.HTML()
        self.export_button.on_click(guard(lambda _: self.export(self.export_folder.value)))
        export_bar = ipywidgets.HBox([self.export_folder, self.export_button, self.export_message])
        session_bar = self._build_session_bar()
        # The controls keep their size; a long status (a suspect fit's
        # warnings) takes the rest of the row and wraps, instead of squeezing
        # the method buttons to "bs"/"me".
        for control in (self.method, self.undo_button, self.redo_button):
            control.layout.flex = "0 0 auto"
        self.status.layout.flex = "1 1 0%"
        self.status.layout.min_width = "0"
        self.children = [ipywidgets.HBox([self.method, self.undo_button, self.redo_button, self.status]),
                         self.sky_controls, self.tabs, export_bar, session_bar]

    # ------------------------------------------------------------ sessions
    def _build_session_bar(self):
        guard = self.status.guard
        #: Where the frames came from (a dict, see specwidgets.io.settings), saved
        #: in sessions so that ``specwidgets batch --settings`` finds them; the
        #: page app sets it.
        self.session_source = None
        self.session_path = ipywidgets.Text(value="specwidgets_session.json", description="Session")
        self.save_session_button = ipywidgets.Button(description="Save session", icon="save",
                                                     layout=ipywidgets.Layout(width="150px"))
        self.load_session_button = ipywidgets.Button(description="Load session", icon="folder-open",
                                                     layout=ipywidgets.Layout(width="150px"))
        self.session_message = ipywidgets.HTML()
        self.save_session_button.add_class("sw-save-session")
        self.load_session_button.add_class("sw-load-session")
        self.session_message.add_class("sw-session-message")
        self.save_session_button.on_click(guard(lambda _: self.save_session(self.session_path.value)))
        self.load_session_button.on_click(guard(lambda _: self.load_session(self.session_path.value)))
        return ipywidgets.HBox([self.session_path, self.save_session_button, self.load_session_button,
                                self.session_message])

    def save_session(self, path):
        """Save the settings (mask, guesses, warp and sky options, display, trace) to a JSON file.

        See :mod:`specwidgets.interactive.session`. Returns the path written.
        """
        from .session import save_session

        written = save_session(self, str(path).strip())
        self.session_message.value = f"saved the settings to {written}"
        return written

    def load_session(self, path):
        """Apply the settings of a session file saved by :meth:`save_session` (one recomputation).

        Returns the names of the settings this dashboard could not apply.
        """
        from .session import load_session

        try:
            skipped = load_session(self, str(path).strip())
        except ValueError as exc:  # the settings stay as they were; say why next to the buttons
            self.session_message.value = html.escape(f"could not load the session: {exc}", quote=False)
            raise
        note = f" (not applied: {', '.join(skipped)})" if skipped else ""
        self.session_message.value = f"loaded the settings of {str(path).strip()}{note}"
        return skipped

    def _on_tab(self, change):
        if change["new"] == 1 and self.picker is not None and not self._picker_page.children:
            self._picker_page.children = [self.picker]
            for figure in (self.picker.profile_figure, self.picker.arc_figure):
                self.shortcuts.add(figure)

    # ------------------------------------------------------------ history
    def _build_history(self):
        """Undo/redo of mask and guess edits: buttons, and Ctrl-Z / Ctrl-Y over the page."""
        guard = self.status.guard
        self.history = History(self.state)
        self.undo_button = ipywidgets.Button(description="Undo", icon="undo", disabled=True,
                                             tooltip="Undo the last mask or guess change (Ctrl-Z)",
                                             layout=ipywidgets.Layout(width="80px"))
        self.redo_button = ipywidgets.Button(description="Redo", icon="repeat", disabled=True,
                                             tooltip="Redo (Ctrl-Y or Ctrl-Shift-Z)",
                                             layout=ipywidgets.Layout(width="80px"))
        self.undo_button.add_class("sw-undo")
        self.redo_button.add_class("sw-redo")
        self.undo_button.on_click(guard(lambda _: self.undo()))
        self.redo_button.on_click(guard(lambda _: self.redo()))
        tl.dlink((self.history, "can_undo"), (self.undo_button, "disabled"), transform=lambda v: not v)
        tl.dlink((self.history, "can_redo"), (self.redo_button, "disabled"), transform=lambda v: not v)
        # Over the figures only: ipyevents swallows every key while the pointer
        # is over a watched widget, which would block typing in text fields.
        self.shortcuts = KeyShortcuts([self.viewer.figure, self.preview.figure, self.sed.figure],
                                      guard(self.undo), guard(self.redo))

    def flush(self):
        """Redraw now what waits to follow a new fit's picture (the sky spectrum, the preview, the status)."""
        for follower in (self.sed._follow, self.preview._follow, self.status._show_outcome):
            follower.flush()

    def undo(self):
        """Undo the last change of the mask or the guesses (what Undo and Ctrl-Z do)."""
        return self.history.undo()

    def redo(self):
        """Redo the last undone change."""
        return self.history.redo()

    def export(self, out_dir, overwrite=True, dtype="float32"):
        """Write the loaded exposures as the batch runner does: ``<out_dir>/<name>_sky.fits``.

        Each file holds ``SCI``, ``SKY``, ``VAR`` and ``MASK`` and a header
        with the method, mask and warp model (see :mod:`specwidgets.io.fits_output`).
        ``dtype`` (``"float32"`` or ``"float64"``) as for ``specwidgets batch --dtype``:
        for the same settings the files equal batch's.

        Returns
        -------
        list of pathlib.Path
        """
        from ..io.fits_output import export_result

        if self.result is None:
            raise ValueError("nothing to export: no sky has been fit yet")
        folder = str(out_dir).strip()
        if not folder:
            raise ValueError("type the folder to export to")
        folder = Path(folder).expanduser()
        if not folder.is_absolute():
            # Under Voila the kernel runs inside the installed package: a
            # relative folder means the one the launcher was started from.
            folder = Path(os.environ.get("SPECWIDGETS_DASHBOARD_CWD") or os.getcwd()) / folder
        n_exp = self.result.data.shape[0]
        given = self.export_provenance
        provenance = [dict(p or {}) for p in (given if isinstance(given, (list, tuple)) else [given] * n_exp)]
        # As batch records it: the arc lines the warp was fit to (none for a warp of the sky lines).
        state = self.state
        n_guesses = len(state.guesses) if state.arc is not None and state.guesses else None
        for prov in provenance:
            prov.setdefault("n_guesses", n_guesses)
        written = export_result(self.result, folder, self.exposure_names, warp_model=self.warp_model,
                                overwrite=overwrite, dtype=dtype, input_headers=self.input_headers,
                                provenance=provenance, extra_mask=self.export_extra_mask,
                                flat_noise=self.export_flat_noise)
        self.export_message.value = html.escape(f"wrote {len(written)} file(s) to {written[0].parent.resolve()}")
        return written

    # -------------------------------------------------------- constructors
    @classmethod
    def from_demo(cls, seed=2024, **kwargs):
        """The embedded synthetic demo (two 120 x 1024 exposures), trace masked.

        Examples
        --------
        >>> dash = Dashboard.from_demo()
        >>> dash.background.shape
        (2, 120, 1024)
        """
        from ..io.synthetic import load_demo

        frames = load_demo(seed=seed)
        kwargs.setdefault("mask_region", [frames.trace_rows])
        # The demo frames carry their read noise and gain (datasets.FrameArray).
        return cls(frames.science, frames.arc, **kwargs)

    @classmethod
    def from_goodman(cls, crop_bds=(680, 800), **kwargs):
        """The SOAR/Goodman sample (found locally or downloaded), trace masked.

        Parameters
        ----------
        crop_bds : (int, int or None)
            Rows of the 947-row frames to keep; ``(0, None)`` is the full frame.
        **kwargs
            As for :class:`Dashboard`; ``mask_region`` defaults to the trace rows.
        """
        from ..io.sample_data import load_goodman

        sample = load_goodman(crop_bds=crop_bds)
        start = crop_bds[0] or 0
        n_rows = sample.science.shape[1]
        a, b = (max(0, r - start) for r in _GOODMAN_TRACE_ROWS)
        kwargs.setdefault("mask_region", [(min(a, n_rows - 1), min(max(b, a + 1), n_rows))])
        # sample.science carries the headers' gain and read noise.
        return cls(sample.science, sample.arc, **kwargs)

    # ------------------------------------------------------------ results
    @property
    def mask_region(self):
        """The mask ranges, ``[(start, stop), ...]``; settable."""
        return ranges_of(self.state)

    @mask_region.setter
    def mask_region(self, value):
        self.state.mask_region = value

    @property
    def warp_model(self):
        """The current warp model (the last good one)."""
        return self.state.warp_model

    @property
    def background(self):
        """The current background, the shape of the science stack (the last good one)."""
        return self.state.background

    @property
    def result(self):
        """The current :class:`~specwidgets.core.sky.api.SkyResult`."""
        return self.state.result

    @property
    def error(self):
        """The state's last error ("" when the last step succeeded)."""
        return self.state.error

    def _on_method_widget(self, change):
        self.state.method = change["new"]

    def _on_method_state(self, change):
        self.method.value = change["new"]


def exposure_labels(names, headers=None):
    """The exposure menu's labels: each input's name and, from its header, the target.

    Examples
    --------
    >>> from astropy.io import fits
    >>> exposure_labels(["night/sci_012.fits", "sci_013.fits"], [fits.Header({"OBJECT": "NGC 253"}), None])
    ['0: sci_012.fits (NGC 253)', '1: sci_013.fits']
    """
    labels = []
    for k, name in enumerate(names):
        header = headers[k] if headers is not None else None
        target = str(header.get("OBJECT", "")).strip() if header is not None else ""
        labels.append(f"{k}: {Path(str(name)).name}" + (f" ({target})" if target else ""))
    return labels

