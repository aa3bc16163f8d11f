"""One frame at a time, with the mask drawn on it and edited beside it.

:class:`ImageViewer` shows the science frame, the background, the corrected
frame or the chi image of one exposure, as a screen-resolution PNG
(:func:`specwidgets.display.plotting.plot_image`). Masked rows are shaded bands;
an ``IntRangeSlider`` ("Mask rows") edits the selected mask range, and
buttons add and remove ranges. Moving the mouse over the image reads out
the pixel, its value and its effective pixel.

Examples
--------
>>> from specwidgets.io.synthetic import make_synthetic_longslit
>>> from specwidgets.interactive.state import SkyState
>>> frames = make_synthetic_longslit(shape=(40, 300), n_arc_lines=8, seed=1)
>>> state = SkyState(frames.science, frames.arc, mask_region=[frames.trace_rows])
>>> viewer = ImageViewer(state)
>>> viewer.mask_slider.value = (10, 25)    # as the front end does on release
>>> state.masks
[(10, 25)]
>>> viewer.view = "corrected"
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import math

import bqplot
import ipywidgets
import numpy as np
import traitlets as tl

from ..display.aggregate import highlight_mask, iso_effpix_polygon
from ..display.debounce import Debounced, running_loop
from ..display.plotting import data_unit_label, plot_image
from ..display.raster import NORMS, display_limits
from .navigation import HAVE_IPYEVENTS, CursorReadout
from .state import require_state
from .status import StatusBar

__all__ = ["ImageViewer", "VIEWS"]

VIEWS = ("science", "background", "corrected", "chi")
_LABELS = {"science": "Science", "background": "Background", "corrected": "Corrected", "chi": "Chi"}
# Display defaults per view: counts on a log stretch; residuals (corrected,
# chi) on a diverging map with zscale limits symmetric about zero, so the
# sky residuals are visible next to a bright trace.
_DISPLAY = {
    "science": dict(norm="log", interval="auto", cmap="inferno", symmetric=False),
    "background": dict(norm="log", interval="auto", cmap="inferno", symmetric=False),
    "corrected": dict(norm="linear", interval="zscale", cmap="RdBu_r", symmetric=True),
    "chi": dict(norm="linear", interval="zscale", cmap="RdBu_r", symmetric=True),
}
_DEFAULT_NORM = {view: d["norm"] for view, d in _DISPLAY.items()}
_INTERVALS = [("1-99.5 %", "auto"), ("zscale", "zscale"), ("min-max", "minmax"), ("99.5 %", "99.5"),
              ("99 %", "99"), ("95 %", "95"), ("90 %", "90")]
_CMAPS = ["inferno", "magma", "viridis", "plasma", "gray", "RdBu_r", "coolwarm", "inferno_r", "gray_r"]
#: Seconds each picture of a blink stays.
BLINK_SECONDS = 0.8
_BLINK_MODES = [("science / corrected", "views"), ("exposures", "exposures")]
_UNITS = {"science": "Counts", "background": "Counts", "corrected": "Counts", "chi": "(data - sky) / sigma"}


def _unit_label(state, view):
    """The colour bar's label: the frames' unit when they carry one (electrons once read with a gain)."""
    return _UNITS[view] if view == "chi" else data_unit_label(state.science, _UNITS[view])

# Hover cells of about this many screen pixels: finer would only add SVG
# elements for the browser to hit-test.
_HOVER_CELL_PX = 8
_BAND_COLOR = "#9e9e9e"
_ACTIVE_BAND_COLOR = "#00bcd4"
_HIGHLIGHT_COLOR = "#00e5ff"


def ranges_of(state):
    """The state's mask ranges as a list of ``(start, stop)`` ints (the state holds them resolved)."""
    return state.mask_region.to_list()


class ImageViewer(ipywidgets.VBox):
    """Image of one exposure with the mask, a mask editor, and a pixel readout.

    Parameters
    ----------
    state : SkyState
    status : StatusBar, optional
        Shared busy indicator and error banner; a new one is made (and
        shown above the image) when not given.
    figsize : (float, float), optional
        Figure size in inches, as in :func:`specwidgets.display.plotting.plot_image`.
    debounce : float
        Mask edits closer than this (seconds) are coalesced: the first is
        applied at once, the last of a burst when it is over (only in a
        running kernel; without an event loop edits apply at once).
    prerender_delay : float
        Seconds of quiet after a new result before the other views are
        rendered ahead, so that a view switch only sends a picture.
    exposure_labels : list of str, optional
        The exposure menu's labels (default "exposure 0", ...; the dashboard
        gives the input files and their targets).

    Attributes
    ----------
    view : {"science", "background", "corrected", "chi"}
        What is shown (also the ``view_buttons``).
    highlight : (float, float) or None
        Effective-pixel range outlined on the image (set by the SED explorer).
    readout : dict
        The last pixel under the mouse: ``x``, ``y``, ``value``, ``effpix``, ``masked``.
    active_range : int
        Index of the mask range the slider edits.
    figure : specwidgets.display.plotting.ImageFigure
    mask_slider : ipywidgets.IntRangeSlider
        Rows ``start:stop`` of the active range (``continuous_update=False``).
    mask_bands, highlight_mark : bqplot.Lines
        Shaded masked rows; outline of the highlighted effective-pixel range.
    hover_mark : bqplot.Scatter
        Invisible squares tiling the image; their hover events drive the readout.
    """

    view = tl.Enum(VIEWS, default_value="science")
    highlight = tl.Tuple(default_value=None, allow_none=True)
    readout = tl.Dict()
    active_range = tl.Int(0)

    def __init__(self, state, *, status=None, figsize=None, debounce=0.03, prerender_delay=0.15, exposure_labels=None,
                 **kwargs):
        require_state(state, "ImageViewer")
        super().__init__(**kwargs)
        self.state = state
        self.own_status = status is None
        self.status = StatusBar(state) if status is None else status
        guard = self.status.guard
        self._syncing = False
        self._cache = {}
        self._science_views = {}
        n_exp = state.n_exposures
        n_rows, n_cols = state.shape

        self.view_buttons = ipywidgets.ToggleButtons(
            options=[(_LABELS[v], v) for v in VIEWS], value=self.view, style={"button_width": "90px"}
        )
        labels = [f"exposure {i}" for i in range(n_exp)] if exposure_labels is None else list(exposure_labels)
        if len(labels) != n_exp:
            raise ValueError(f"exposure_labels has {len(labels)} labels for {n_exp} exposure(s)")
        self.exposure = ipywidgets.Dropdown(
            options=list(zip(labels, range(n_exp))), value=state.exposure, description="Exposure",
            disabled=n_exp == 1, layout=ipywidgets.Layout(width="200px" if exposure_labels is None else "340px"),
        )
        self.stretch = ipywidgets.ToggleButtons(
            options=list(NORMS), value=_DEFAULT_NORM[self.view], style={"button_width": "55px"},
            tooltips=["linear", "log10 of the value (<= 0: lowest colour)", "square root", "asinh"],
        )
        self.interval = ipywidgets.Dropdown(
            options=_INTERVALS, value=_DISPLAY[self.view]["interval"], description="Limits",
            style={"description_width": "45px"}, layout=ipywidgets.Layout(width="150px"),
        )
        self.cmap = ipywidgets.Combobox(
            options=_CMAPS, value=_DISPLAY[self.view]["cmap"], description="Colormap", ensure_option=False,
            continuous_update=False, style={"description_width": "65px"}, layout=ipywidgets.Layout(width="190px"),
        )
        self.symmetric = ipywidgets.Checkbox(value=_DISPLAY[self.view]["symmetric"], description="symmetric",
                                             indent=False, layout=ipywidgets.Layout(width="95px"))
        self.reset_zoom_button = ipywidgets.Button(description="Reset zoom", icon="expand",
                                                   layout=ipywidgets.Layout(width="110px"))
        self.blink_button = ipywidgets.ToggleButton(description="Blink", icon="eye", value=False,
                                                    layout=ipywidgets.Layout(width="80px"))
        self.blink_mode = ipywidgets.Dropdown(options=_BLINK_MODES, value="views",
                                              layout=ipywidgets.Layout(width="170px"))
        self.auto_limits = ipywidgets.Checkbox(value=True, description="auto limits", indent=False,
                                               layout=ipywidgets.Layout(width="110px"))
        self.vmin = ipywidgets.FloatText(description="vmin", disabled=True, layout=ipywidgets.Layout(width="160px"))
        self.vmax = ipywidgets.FloatText(description="vmax", disabled=True, layout=ipywidgets.Layout(width="160px"))

        ranges = ranges_of(state)
        first = ranges[0] if ranges else (0, max(1, n_rows // 10))
        # The slider's own readout says "38 – 71"; ours says "38:71", the
        # Python slice the range list, the form and the API use too.
        self.mask_slider = ipywidgets.IntRangeSlider(
            value=first, min=0, max=n_rows, step=1, description="Mask rows",
            continuous_update=False, readout=False, layout=ipywidgets.Layout(width="360px"),
        )
        self.mask_label = ipywidgets.HTML(layout=ipywidgets.Layout(width="70px"))
        self.mask_label.add_class("sw-mask-label")
        self.mask_select = ipywidgets.Dropdown(description="Range", layout=ipywidgets.Layout(width="220px"))
        #: Says when an edit made ranges overlap and they became one (else empty).
        self.mask_note = ipywidgets.HTML()
        self.mask_note.add_class("sw-mask-note")
        self.add_button = ipywidgets.Button(description="Add range", icon="plus", layout=ipywidgets.Layout(width="110px"))
        self.remove_button = ipywidgets.Button(description="Remove", icon="minus", layout=ipywidgets.Layout(width="100px"))
        hint = "wheel: zoom, drag: pan" + (", move the mouse for the pixel value" if HAVE_IPYEVENTS else
                                           ", click a pixel for its value")
        self.readout_label = ipywidgets.HTML(f"<i>{hint}</i>")

        self.figure = plot_image(
            self._view_array(), title=self._title(), figsize=figsize, cbar_label=_unit_label(self.state, self.view),
            **self._display_settings(),
        )
        scales = {"x": self.figure.x_scale, "y": self.figure.y_scale}
        self.image_mark = self.figure.image_mark
        self.mask_bands = bqplot.Lines(
            x=[], y=[], scales=scales, fill="inside", colors=[_BAND_COLOR], fill_colors=[_BAND_COLOR],
            fill_opacities=[0.45], stroke_width=1.5, interactions={}, preserve_domain={"x": True, "y": True},
        )
        self.highlight_mark = bqplot.Lines(
            x=[], y=[], scales=scales, fill="inside", colors=[_HIGHLIGHT_COLOR], fill_colors=[_HIGHLIGHT_COLOR],
            fill_opacities=[0.3], stroke_width=1.5, interactions={}, preserve_domain={"x": True, "y": True},
        )
        hx, hy, size = self._hover_grid()
        self.hover_mark = bqplot.Scatter(
            x=hx, y=hy, scales=scales, marker="square", default_size=size, opacities=[0.0],
            colors=["white"], interactions={}, preserve_domain={"x": True, "y": True},
        )
        # Under pan/zoom the hover squares get no events (the PanZoom layer is
        # on top); with ipyevents the readout follows mousemove instead, and
        # thousands of idle SVG squares would only slow the page.
        hover = [] if HAVE_IPYEVENTS else [self.hover_mark]
        self.figure.marks = [*self.figure.marks, self.mask_bands, self.highlight_mark, *hover]

        # Front end -> state. A slider release applies at once (leading edge);
        # only edits that follow within ``debounce`` seconds are coalesced.
        self._commit_mask = Debounced(self._commit_mask_now, delay=debounce, on_error=self.status.report,
                                      leading=True)
        self._prerender = Debounced(self._prerender_views, delay=prerender_delay, on_error=self.status.report)
        self.n_prerenders = 0
        #: Seconds of quiet after a result before the chi view is made ahead.
        self.prerender_chi_delay = 1.0
        self.view_buttons.observe(guard(self._on_view_button), names="value")
        self._exposure_link = tl.link((state, "exposure"), (self.exposure, "value"))
        self.stretch.observe(guard(self._on_display_setting), names="value")
        self.interval.observe(guard(self._on_display_setting), names="value")
        self.cmap.observe(guard(self._on_display_setting), names="value")
        self.symmetric.observe(guard(self._on_display_setting), names="value")
        self.reset_zoom_button.on_click(guard(lambda _: self.figure.reset_zoom()))
        self.blink_button.observe(guard(self._on_blink), names="value")
        self._blink_task = None
        self._blink_phase = 0
        # Under wheel zoom / drag pan the mark hovers get no events: the
        # readout follows the browser's mousemove instead (with ipyevents).
        self.cursor = CursorReadout(self.figure, self.figure.x_scale, self.figure.y_scale,
                                    guard(self._on_cursor))
        self.auto_limits.observe(guard(self._on_auto_limits), names="value")
        self.vmin.observe(guard(self._on_display_setting), names="value")
        self.vmax.observe(guard(self._on_display_setting), names="value")
        self.mask_slider.observe(guard(self._on_slider), names="value")
        self.mask_select.observe(guard(self._on_select), names="value")
        self.add_button.on_click(guard(lambda _: self.add_range()))
        self.remove_button.on_click(guard(lambda _: self.remove_range()))
        self.hover_mark.on_hover(guard(self._on_hover_msg))
        self.hover_mark.on_element_click(guard(self._on_hover_msg))
        self.hover_mark.observe(guard(self._on_hovered_point), names="hovered_point")
        self.image_mark.on_element_click(guard(self._on_image_click))
        # State -> views
        state.observe(guard(self._on_result), names="result")
        state.observe(guard(self._on_mask_state), names="mask_region")
        state.observe(guard(self._on_exposure_state), names="exposure")
        state.observe(guard(self._on_warp), names="warp_model")
        self.observe(guard(self._on_view), names="view")
        self.observe(guard(self._on_highlight), names="highlight")
        self.observe(guard(self._on_active), names="active_range")

        self._sync_mask_widgets()
        self._show_limits()
        mask_row = ipywidgets.HBox([self.mask_slider, self.mask_label, self.mask_select, self.add_button,
                                    self.remove_button, self.mask_note])
        display_row = ipywidgets.HBox([self.stretch, self.interval, self.cmap, self.symmetric])
        limits_row = ipywidgets.HBox([self.auto_limits, self.vmin, self.vmax, self.reset_zoom_button,
                                      self.blink_button, self.blink_mode])
        self.children = [
            *([self.status] if self.own_status else []),
            ipywidgets.HBox([self.view_buttons, self.exposure]),
            display_row,
            limits_row,
            self.figure,
            self.readout_label,
            mask_row,
        ]

    # ------------------------------------------------------------- images
    def _view_array(self, view=None, exposure=None):
        """The full-resolution image of a view (cached per result)."""
        view = self.view if view is None else view
        k = self.state.exposure if exposure is None else exposure
        result = self.state.result
        if view == "science" or result is None:
            # The same array object each time: rendered pictures are found by it.
            science = self.state.science
            cached = self._science_views.get(k)
            if cached is None or cached.base is not science:
                cached = self._science_views[k] = science[k]
            return cached
        key = (id(result), view, k)
        if key not in self._cache:
            if len(self._cache) > 16:
                self._cache.clear()
            if view == "background":
                image = result.background[k]
            elif view == "corrected":
                image = result.data[k] - result.background[k]
            else:
                image = result.exposure_chi(k)
            self._cache[key] = image
        return self._cache[key]

    def _title(self):
        missing = self.view != "science" and self.state.result is None
        suffix = " (no sky fit yet: showing the science frame)" if missing else ""
        return f"{_LABELS[self.view]}, exposure {self.state.exposure}{suffix}"

    def _display_settings(self, view=None):
        """``plot_image`` keywords of the display controls.

        With another ``view`` than the one shown: the keywords that view
        gets when switched to (its defaults, automatic limits).
        """
        if view is None or view == self.view:
            view = self.view
            norm, interval, cmap = self.stretch.value, self.interval.value, self.cmap.value.strip()
            symmetric, auto = self.symmetric.value, self.auto_limits.value
        else:
            defaults = _DISPLAY[view]
            norm, interval, cmap = defaults["norm"], defaults["interval"], defaults["cmap"]
            symmetric, auto = defaults["symmetric"], True
        interval = None if interval == "auto" else interval
        settings = dict(
            norm=norm,
            interval=interval,
            cmap=cmap or _DISPLAY[view]["cmap"],
            symmetric=symmetric and norm != "log",
            vmin=None if auto else self.vmin.value,
            vmax=None if auto else self.vmax.value,
        )
        if auto and view in ("corrected", "chi") and self.state.result is not None:
            # Residuals are judged in the sky: their limits come from the
            # unmasked rows, so the bright trace in the masked rows cannot
            # stretch them (it saturates instead). Kept per result: a view
            # switch recomputes nothing.
            ranges = tuple(self.mask_ranges)
            key = ("limits", id(self.state.result), view, self.state.exposure, ranges, norm, interval,
                   settings["symmetric"])
            if key not in self._cache:
                sky = np.ones(self.state.shape[0], bool)
                for a, b in ranges:
                    sky[a:b] = False
                limits = None
                if sky.sum() >= 2:
                    limits = display_limits(self._view_array(view)[sky], norm, interval=interval,
                                            symmetric=settings["symmetric"])
                self._cache[key] = limits
            if self._cache[key] is not None:
                settings["vmin"], settings["vmax"] = self._cache[key]
        return settings

    def refresh_image(self):
        """Re-render the current view with the current display settings."""
        with self.status.working():
            self.figure.update_image(self._view_array(), **self._display_settings())
        with self.figure.hold_sync():
            self.figure.title = self._title()
        label = _unit_label(self.state, self.view)
        if self.figure.color_axis.label != label:
            self.figure.color_axis.label = label
        self._show_limits()
        self._refresh_readout()

    def _show_limits(self):
        """Write the limits in use into the (disabled) vmin/vmax boxes."""
        if not self.auto_limits.value:
            return
        lo, hi = self.figure.limits
        self._syncing = True
        try:
            with self.vmin.hold_sync(), self.vmax.hold_sync():
                self.vmin.value, self.vmax.value = float(f"{lo:.4g}"), float(f"{hi:.4g}")
        finally:
            self._syncing = False

    def _on_view_button(self, change):
        self.view = change["new"]

    def _on_view(self, change):
        self.view_buttons.value = self.view
        controls = (self.stretch, self.interval, self.cmap, self.symmetric, self.auto_limits, self.vmin, self.vmax)
        # The controls' new values reach the page after the picture: it is
        # what the user waits for.
        with contextlib.ExitStack() as held:
            for control in controls:
                held.enter_context(control.hold_sync())
            self._syncing = True
            try:
                # Each view has its natural stretch, map and limits.
                defaults = _DISPLAY[self.view]
                self.stretch.value = defaults["norm"]
                self.interval.value = defaults["interval"]
                self.cmap.value = defaults["cmap"]
                self.symmetric.value = defaults["symmetric"]
                self.auto_limits.value = True
                self.vmin.disabled = self.vmax.disabled = True
            finally:
                self._syncing = False
            self.refresh_image()

    def _on_display_setting(self, change):
        if not self._syncing:
            self.refresh_image()

    def _on_auto_limits(self, change):
        self.vmin.disabled = self.vmax.disabled = change["new"]
        if not self._syncing:
            self.refresh_image()

    def _on_exposure_state(self, change):
        self.refresh_image()  # the dropdown follows by its link
        self._schedule_prerender()

    def _on_result(self, change):
        self._cache.clear()
        # Pictures of the science frames stay valid; the others showed the old result.
        science = {id(image) for image in self._science_views.values()}
        self.figure.clear_render_cache(keep=lambda image: id(image) in science)
        if self.view != "science":
            self.refresh_image()
        else:
            self._refresh_readout()
        self._schedule_prerender()

    # ---------------------------------------------------------- prerender
    def _schedule_prerender(self):
        """In a running kernel, once it is idle: render the other views of this exposure.

        A view switch then only sends a picture already made (no sky fit, no
        limits, no PNG encoding). One view per turn of the event loop, so a
        message from the page waits at most one rendering; a newer result or
        exposure drops the rest. Without an event loop (scripts, tests) nothing
        is done ahead.
        """
        if running_loop() is None:
            return
        self._prerender.cancel()
        self._prerender(id(self.state.result), self.state.exposure)

    def _prerender_views(self, result_id, exposure, waited=False):
        loop = running_loop()
        if loop is None or id(self.state.result) != result_id or self.state.exposure != exposure:
            return
        for view in ("background", "corrected", "science", "chi"):
            if view != "science" and self.state.result is None:
                continue
            if view == "chi" and not waited and (id(self.state.result), "chi", exposure) not in self._cache:
                # The chi image needs the model variance (about a second on a
                # full frame): only after a longer quiet spell, so that it
                # does not hold up the next edit.
                loop.call_later(self.prerender_chi_delay, self.status.guard(self._prerender_views), result_id,
                                exposure, True)
                return
            image = self._view_array(view)
            settings = self._display_settings(view)
            key = _render_key_for(self.figure, image, settings)
            if key in self.figure._renders:
                continue
            self.figure.prerender(image, **settings)
            self.n_prerenders += 1
            # The next view on a later turn: messages from the page go first.
            loop.call_soon(self.status.guard(self._prerender_views), result_id, exposure, waited)
            return

    # -------------------------------------------------------------- blink
    def blink_step(self):
        """Show the next picture of the blink: the other view or the next exposure."""
        if self.blink_mode.value == "exposures":
            n = self.state.n_exposures
            if n > 1:
                self.state.exposure = (self.state.exposure + 1) % n
        else:
            self.view = "corrected" if self.view == "science" else "science"
        self._blink_phase += 1

    def _on_blink(self, change):
        if not change["new"]:
            if self._blink_task is not None:
                self._blink_task.cancel()
                self._blink_task = None
            return
        if self.blink_mode.value == "exposures" and self.state.n_exposures < 2:
            self.blink_button.value = False
            raise ValueError("only one exposure: nothing to blink between (choose science / corrected)")
        loop = running_loop()
        if loop is None:
            self.blink_step()  # no event loop (a script, a test): one step per press
            self.blink_button.value = False
            return
        self._blink_task = loop.create_task(self._blink_loop())

    async def _blink_loop(self):
        try:
            while self.blink_button.value:
                await asyncio.sleep(BLINK_SECONDS)
                if self.blink_button.value:
                    self.status.guard(self.blink_step)()
        except asyncio.CancelledError:
            pass

    def _on_cursor(self, x, y):
        if x is None:
            return
        self.show_readout(x, y)

    # --------------------------------------------------------------- mask
    @property
    def mask_ranges(self):
        """The state's mask ranges, in the order the range selector lists them."""
        return ranges_of(self.state)

    def _on_slider(self, change):
        if self._syncing:
            return
        self._commit_mask(self.active_range, tuple(int(v) for v in change["new"]))

    def _commit_mask_now(self, index, value):
        ranges = self.state.mask_region
        index = min(index, max(len(ranges) - 1, 0))
        self._assign_mask(ranges.replace(index, value), value[0])

    def _resolved(self, ranges):
        """``ranges`` resolved for the frames, so the state and the fit keep this very object.

        A mask that cannot be resolved goes to the state as it is: the state
        refuses it and says why (in ``error``, shown in the banner).
        """
        try:
            return ranges.resolve(self.state.shape[0])
        except ValueError:
            return ranges

    def _assign_mask(self, ranges, row):
        """Give the state ``ranges`` (a RowRanges); the slider follows the range holding ``row``.

        The state sorts and merges ranges, so the edited one may move in the
        list; if the state refuses the mask, the widgets go back to its mask.
        """
        before = self.state.mask_region
        resolved = self._resolved(ranges)
        self.state.mask_region = resolved
        after = self.state.mask_region
        self.mask_note.value = _merge_note(ranges, after) if after is resolved else ""
        index = after.index_of(row)
        moved = index is not None and index != self.active_range
        if moved:
            self._syncing = True
            try:
                self.active_range = index
            finally:
                self._syncing = False
        if moved or after is before:
            self._sync_mask_widgets()

    def add_range(self, start=None, stop=None):
        """Add a mask range (by default a few rows in the largest unmasked gap)."""
        n_rows = self.state.shape[0]
        ranges = self.mask_ranges
        if start is None or stop is None:
            start, stop = _free_band(ranges, n_rows)
        self._assign_mask(self.state.mask_region.replace(len(ranges), (int(start), int(stop))), int(start))

    def remove_range(self, index=None):
        """Remove a mask range (default: the one the slider edits)."""
        ranges = self.mask_ranges
        if not ranges:
            return
        index = self.active_range if index is None else int(index)
        self._syncing = True
        try:
            self.active_range = max(0, min(index, len(ranges) - 2))
        finally:
            self._syncing = False
        self.state.mask_region = self.state.mask_region.remove(index)

    def _on_select(self, change):
        if not self._syncing and change["new"] is not None:
            self.active_range = int(change["new"])

    def _on_active(self, change):
        if not self._syncing:
            self._sync_mask_widgets()

    def _on_mask_state(self, change):
        self._sync_mask_widgets()

    def _sync_mask_widgets(self):
        """Slider, selector and bands follow the state's ranges."""
        ranges = self.mask_ranges
        self._syncing = True
        try:
            if ranges:
                self.active_range = min(self.active_range, len(ranges) - 1)
                options = [(f"{i + 1}: rows {a}:{b}", i) for i, (a, b) in enumerate(ranges)]
                with self.mask_select.hold_sync():
                    self.mask_select.options = options
                    self.mask_select.value = self.active_range
                self.mask_slider.value = ranges[self.active_range]
                a, b = ranges[self.active_range]
                self.mask_label.value = f"<code>{a}:{b}</code>"
            else:
                self.mask_label.value = ""
                self.mask_select.options = [("no mask", 0)]
            self.mask_slider.disabled = not ranges
            self.remove_button.disabled = not ranges
            self.mask_select.disabled = len(ranges) < 2
        finally:
            self._syncing = False
        self._draw_bands(ranges)

    def _draw_bands(self, ranges):
        n_cols = self.state.shape[1]
        if not ranges:
            with self.mask_bands.hold_sync():
                self.mask_bands.x, self.mask_bands.y = [], []
            return
        lo, hi = -0.5, n_cols - 0.5
        x = np.array([[lo, hi, hi, lo, lo]] * len(ranges), dtype=np.float32)
        y = np.array([[a - 0.5, a - 0.5, b - 0.5, b - 0.5, a - 0.5] for a, b in ranges], dtype=np.float32)
        colors = [_ACTIVE_BAND_COLOR if i == self.active_range else _BAND_COLOR for i in range(len(ranges))]
        with self.mask_bands.hold_sync():
            self.mask_bands.x, self.mask_bands.y = x, y
            self.mask_bands.colors = colors
            self.mask_bands.fill_colors = [_BAND_COLOR] * len(ranges)
            self.mask_bands.fill_opacities = [0.45] * len(ranges)

    # ---------------------------------------------------------- highlight
    def _on_highlight(self, change):
        self._draw_highlight()

    def _on_warp(self, change):
        self._draw_highlight()
        self._refresh_readout()

    def _draw_highlight(self):
        model = self.state.warp_model
        if self.highlight is None or model is None:
            with self.highlight_mark.hold_sync():
                self.highlight_mark.x, self.highlight_mark.y = [], []
            return
        e0, e1 = sorted(float(v) for v in self.highlight)
        x, y = iso_effpix_polygon(model, e0, e1)
        with self.highlight_mark.hold_sync():
            self.highlight_mark.x = x.astype(np.float32)
            self.highlight_mark.y = y.astype(np.float32)

    def highlight_pixels(self):
        """Boolean image: the pixels inside the highlighted effective-pixel range."""
        model = self.state.warp_model
        if self.highlight is None or model is None:
            return np.zeros(self.state.shape, bool)
        e0, e1 = sorted(float(v) for v in self.highlight)
        return highlight_mask(model.effpix_map(), e0, e1)

    # ------------------------------------------------------------ readout
    def _hover_grid(self):
        """Centres of the hover cells and the marker area (px^2) that tiles them."""
        n_rows, n_cols = self.state.shape
        plot_rows, plot_cols = self.figure.max_shape
        nx = max(1, min(n_cols, plot_cols // _HOVER_CELL_PX))
        ny = max(1, min(n_rows, plot_rows // _HOVER_CELL_PX))
        xs = -0.5 + (np.arange(nx) + 0.5) * n_cols / nx
        ys = -0.5 + (np.arange(ny) + 0.5) * n_rows / ny
        gx, gy = np.meshgrid(xs, ys)
        cell = max(plot_cols / nx, plot_rows / ny)
        # A little overlap: gaps between squares would blank the readout.
        size = int(math.ceil((1.15 * cell) ** 2))
        return gx.ravel().astype(np.float32), gy.ravel().astype(np.float32), size

    def _on_hover_msg(self, mark, content):
        data = content.get("data") or {}
        if "index" in data and data["index"] is not None:
            self.show_readout(float(self.hover_mark.x[int(data["index"])]), float(self.hover_mark.y[int(data["index"])]))
        elif "x" in data and "y" in data:
            self.show_readout(float(data["x"]), float(data["y"]))

    def _on_hovered_point(self, change):
        index = change["new"]
        if index is not None:
            self.show_readout(float(self.hover_mark.x[index]), float(self.hover_mark.y[index]))

    def _on_image_click(self, mark, content):
        data = content.get("data") or {}
        self.show_readout(float(data["click_x"]), float(data["click_y"]))

    def show_readout(self, x, y):
        """Read out the pixel at image coordinates ``(x, y)``; returns the readout dict."""
        n_rows, n_cols = self.state.shape
        col, row = int(round(x)), int(round(y))
        if not (0 <= col < n_cols and 0 <= row < n_rows):
            self.readout = {}
            self.readout_label.value = "<i>outside the image</i>"
            return self.readout
        value = float(self._view_array()[row, col])
        model = self.state.warp_model
        effpix = float(model.effpix_map()[row, col]) if model is not None else float("nan")
        masked = any(a <= row < b for a, b in self.mask_ranges)
        self.readout = {"x": col, "y": row, "value": value, "effpix": effpix, "masked": masked}
        note = " <span style='color:#777'>(masked row)</span>" if masked else ""
        self.readout_label.value = (
            f"<code>row {row}, col {col}: {self.view} = {value:.5g}, "
            f"effective pixel = {effpix:.3f}</code>{note}"
        )
        return self.readout

    def _refresh_readout(self):
        if self.readout:
            self.show_readout(self.readout["x"], self.readout["y"])


def _render_key_for(figure, image, settings):
    """The key :class:`~specwidgets.display.plotting.ImageFigure` files this picture under."""
    from ..display.plotting import UNCHANGED, _render_key

    full = dict(figure._settings)
    full.update({k: v for k, v in settings.items() if v is not UNCHANGED})
    full["image"] = image
    crop = figure._crop if np.shape(image) == figure._settings["image"].shape else None
    return _render_key(full, crop)


def _free_band(ranges, n_rows):
    """A few rows in the middle of the largest run of unmasked rows."""
    free = np.ones(n_rows, bool)
    for a, b in ranges:
        free[a:b] = False
    best, best_len, start = None, 0, None
    for i, f in enumerate(np.r_[free, False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            if i - start > best_len:
                best, best_len = start, i - start
            start = None
    if best is None or best_len < 2:
        raise ValueError("every row is masked already: no room for another mask range")
    width = max(1, min(best_len // 3, max(1, n_rows // 10)))
    begin = best + (best_len - width) // 2
    return begin, begin + width


def _merge_note(given, merged):
    """A note when ranges of ``given`` overlapped and ``merged`` holds them as one ("" otherwise).

    The state keeps overlapping ranges as one (they mask the same rows): a
    handle dragged over the next range took it in, which the selector then
    listed as one range without a word.
    """
    given_pairs = [tuple(p) for p in given]
    if len(merged) >= len(given_pairs):
        return ""
    joined = []
    for start, stop in merged:
        inside = [f"{a}:{b}" for a, b in given_pairs if a is not None and start <= a and (b is None or b <= stop)]
        if len(inside) > 1:
            joined.append(f"{' and '.join(inside)} overlap: now one range {start}:{stop}")
    text = "; ".join(joined) or "overlapping ranges became one"
    return f"<span style='font-size:85%;color:#6b4200'>{html.escape(text)}</span>"

