"""Show a 2D image as a bqplot figure, like the specsuite tutorial's ``plot_image``.

The image is coloured in Python (:mod:`specwidgets.display.raster`) and sent to the
browser as one small PNG inside bqplot's own ``Image`` mark, at about the
resolution of the plot area; a ``ColorAxis`` draws the matching colorbar.

Examples
--------
>>> import numpy as np
>>> from specwidgets.display.plotting import plot_image
>>> frame = np.random.default_rng(0).normal(500.0, 30.0, (100, 400))
>>> fig = plot_image(frame, norm="log", vmin=1e2, vmax=4e3, title="Raw frame")
>>> import bqplot
>>> isinstance(fig, bqplot.Figure), fig.color_axis.label
(True, 'Counts')
>>> fig.update_image(frame * 2)  # same figure and mark, new picture
"""

from __future__ import annotations

import collections
import math
import time

import bqplot
import ipywidgets
import numpy as np

from ..core import _timing
from . import raster

__all__ = ["ImageFigure", "data_unit_label", "plot_image", "update_image"]



def data_unit_label(data, default="Counts"):
    """An axis label for the values of ``data``: its ``unit`` when it carries one (a FrameArray read with a
    gain is in electrons), else ``default``.

    >>> from specwidgets.core.frames import FrameArray
    >>> import numpy as np
    >>> data_unit_label(np.zeros(2)), data_unit_label(FrameArray(np.zeros(2), unit="electron"))
    ('Counts', 'Electrons')
    """
    unit = getattr(data, "unit", None)
    if not unit:
        return default
    return {"electron": "Electrons", "adu": "ADU"}.get(str(unit).lower(), str(unit))


# CSS pixels per inch: ``figsize`` is in inches, as in matplotlib.
_PX_PER_INCH = 96

_DEFAULT_HEIGHT_PX = 400
# Width of a figure whose width is left to the page ("auto"): a typical
# notebook cell.  Only used to choose the rendering resolution.
_ASSUMED_WIDTH_PX = 1000

# Room for the title (top), y tick labels and label (left), and the x axis
# plus the horizontal colorbar under it (bottom).  The colorbar goes under
# the image because bqplot draws a colorbar 200 px shorter than the plot
# area: a vertical one would nearly vanish on a wide, short spectrum.
_FIG_MARGIN = {"top": 50, "bottom": 115, "left": 80, "right": 30}

_MAX_LOG_TICKS = 9

# Distance of the y-axis label from the axis line.
_Y_LABEL_OFFSET = "48px"


class _Unchanged:
    """Marker for "keep the current setting" in :meth:`ImageFigure.update_image`."""

    def __repr__(self):
        return "UNCHANGED"


UNCHANGED = _Unchanged()


# --------------------------------------------------------------------------
# Colorbar ticks
# --------------------------------------------------------------------------


def _js_number(value):
    """Return the text JavaScript's ``String(value)`` gives for a float.

    bqplot looks tick labels up by that text, so the keys of ``tick_labels``
    must be spelled exactly like it.
    """
    value = float(value)
    if value == 0:
        return "0"
    if 1e-6 <= abs(value) < 1e21:
        return np.format_float_positional(value, unique=True, trim="-")
    return np.format_float_scientific(value, unique=True, trim="-", exp_digits=1)


def _tick_text(value):
    """Short label of a colorbar tick in data units, e.g. ``'200'``, ``'1e6'``."""
    if 1e-3 <= abs(value) < 1e5:
        return np.format_float_positional(value, precision=3, fractional=False, trim="-")
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _log_ticks(vmin, vmax):
    """Round values (1, 2, 5 x 10^k, ...) between ``vmin`` and ``vmax``."""
    first, last = math.floor(math.log10(vmin)), math.ceil(math.log10(vmax))
    tolerance = 1e-9 * (vmax - vmin)

    def ticks(mantissas):
        values = (m * 10.0**k for k in range(first, last + 1) for m in mantissas)
        return [v for v in values if vmin - tolerance <= v <= vmax + tolerance]

    preferred = ticks((1, 2, 5))
    if len(preferred) > _MAX_LOG_TICKS:
        decades = ticks((1,))
        # Many decades: label every n-th one so the labels do not collide.
        return decades[:: math.ceil(len(decades) / _MAX_LOG_TICKS)]
    if len(preferred) >= 3:
        return preferred
    # Less than about a decade: every digit, if that gives two ticks at least.
    dense = ticks(range(1, 10))
    return dense if len(dense) >= 2 else [vmin, vmax]


def _nice_ticks(vmin, vmax, n=6):
    """About ``n`` round values (1, 2, 5 x 10^k steps) between ``vmin`` and ``vmax``."""
    raw = (vmax - vmin) / n
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(vmin / step - 1e-9)
    ticks = [k * step for k in range(first, int(math.floor(vmax / step + 1e-9)) + 1)]
    # -0.0 and 1e-17 look wrong on a colorbar.
    return [0.0 if abs(t) < 1e-9 * step else t for t in ticks]


def _colorbar_ticks(norm, vmin, vmax):
    """``(min, max, tick_values, tick_labels)`` of the colorbar scale.

    bqplot 0.13's ColorScale is linear only, so a log colorbar is a linear
    scale over ``log10(value)``, and a sqrt or asinh one a linear scale over
    the stretched ``[0, 1]``, whose ticks are labelled with the values.
    """
    if norm == "log":
        ticks = _log_ticks(vmin, vmax)
        positions = np.log10(np.asarray(ticks, dtype=np.float64))
        c_min, c_max = math.log10(vmin), math.log10(vmax)
    elif norm in ("sqrt", "asinh"):
        ticks = _nice_ticks(vmin, vmax)
        positions = raster.stretch((np.asarray(ticks) - vmin) / (vmax - vmin), norm)
        c_min, c_max = 0.0, 1.0
    else:
        return vmin, vmax, None, None
    labels = {_js_number(p): _tick_text(t) for p, t in zip(positions, ticks)}
    return c_min, c_max, np.asarray(positions, dtype=np.float64), labels


# --------------------------------------------------------------------------
# Figure
# --------------------------------------------------------------------------


def _figure_size(figsize):
    """``(layout, max_shape)`` of a figure ``figsize`` inches large."""
    if figsize is None:
        width_px, height_px = None, _DEFAULT_HEIGHT_PX
    else:
        try:
            width_in, height_in = (float(v) for v in figsize)
        except (TypeError, ValueError):
            raise ValueError(
                f"figsize must be a (width, height) pair in inches; got {figsize!r}"
            ) from None
        if not (width_in > 0 and height_in > 0 and math.isfinite(width_in * height_in)):
            raise ValueError(f"figsize must be positive; got {figsize!r}")
        width_px, height_px = round(width_in * _PX_PER_INCH), round(height_in * _PX_PER_INCH)
    layout = ipywidgets.Layout(height=f"{height_px}px")
    if width_px is not None:
        layout.width = f"{width_px}px"
    # Render at about the plot area's size: more pixels would only be thrown
    # away by the browser, and with pixelated drawing that drops rows.
    plot_rows = height_px - _FIG_MARGIN["top"] - _FIG_MARGIN["bottom"]
    plot_cols = (width_px or _ASSUMED_WIDTH_PX) - _FIG_MARGIN["left"] - _FIG_MARGIN["right"]
    return layout, (max(plot_rows, 50), max(plot_cols, 50))


class ImageFigure(bqplot.Figure):
    """A ``bqplot.Figure`` showing one image, with handles to update it in place.

    Made by :func:`plot_image`; displays like any bqplot figure.

    Attributes
    ----------
    image_mark : bqplot.Image
        The mark holding the PNG (``image_mark.image`` is an
        ``ipywidgets.Image``, replaced on every update).
    color_scale : bqplot.ColorScale
        Scale of the colorbar (over ``log10`` of the values under a log norm).
    color_axis : bqplot.ColorAxis
        The colorbar (replaced when its log ticks change).
    x_scale, y_scale : bqplot.LinearScale
        Column and row scales; their ``min``/``max`` are the visible range.
    limits : (float, float)
        The colour limits ``(vmin, vmax)`` in data units, after filling
        missing ones from the data.
    """

    def __init__(self, *, image_mark, color_axis, settings, crop=None, **kwargs):
        super().__init__(**kwargs)
        self.image_mark = image_mark
        self.color_axis = color_axis
        self.color_scale = color_axis.scale
        self.x_scale = image_mark.scales["x"]
        self.y_scale = image_mark.scales["y"]
        self._settings = settings
        self._crop = crop  # (xlim, ylim) the picture was rendered for, None: the settings' view
        self._setting_view = False
        self._follow = None
        self.n_zoom_renders = 0
        #: Pictures already rendered, keyed by image and settings (see
        #: :meth:`prerender`): showing one again sends it without re-rendering.
        self._renders = collections.OrderedDict()
        self.n_renders = 0
        self.n_cached_renders = 0
        for scale in (self.x_scale, self.y_scale):
            scale.observe(self._on_view_change, names=["min", "max"])

    # ---------------------------------------------------------- zoom/pan
    def _visible(self):
        """The visible ``(xlim, ylim)``, from the scales (which pan/zoom moves)."""
        return (self.x_scale.min, self.x_scale.max), (self.y_scale.min, self.y_scale.max)

    def _on_view_change(self, change):
        if self._setting_view or change["new"] is None:
            return
        if self._follow is None:
            # Deferred import: the widgets package imports this module.
            from .debounce import Debounced

            self._follow = Debounced(self._render_visible, delay=0.1)
        self._follow()

    def _render_visible(self):
        """Re-render the visible part at screen resolution after a zoom or pan.

        The picture covers the visible range plus half of it on each side
        (clipped to the image), so a short pan shows pixels at once.
        """
        (x0, x1), (y0, y1) = self._visible()
        if None in (x0, x1, y0, y1) or not (x1 > x0 and y1 > y0):
            return
        n_rows, n_cols = self._settings["image"].shape
        dx, dy = 0.5 * (x1 - x0), 0.5 * (y1 - y0)
        xlim = (max(-0.5, x0 - dx), min(n_cols - 0.5, x1 + dx))
        ylim = (max(-0.5, y0 - dy), min(n_rows - 0.5, y1 + dy))
        if not (xlim[1] > xlim[0] and ylim[1] > ylim[0]):
            return  # panned off the image: nothing to draw
        full = xlim == (-0.5, n_cols - 0.5) and ylim == (-0.5, n_rows - 0.5)
        crop = None if full else (xlim, ylim)
        if crop == self._crop:
            return
        state = _render(self._settings, crop=crop)
        _apply(self, state, reset_view=False)
        self._crop = crop
        self.n_zoom_renders += 1

    def reset_zoom(self):
        """Show the whole image (or the ``xlim``/``ylim`` it was made with) again."""
        state = _render(self._settings)
        _apply(self, state, reset_view=True)
        self._crop = None

    @property
    def max_shape(self):
        """``(rows, cols)`` of the rendered picture at most: about the plot area in screen pixels."""
        return self._settings["max_shape"]

    def update_image(
        self,
        image=None,
        *,
        xlim=UNCHANGED,
        ylim=UNCHANGED,
        cmap=UNCHANGED,
        norm=UNCHANGED,
        vmin=UNCHANGED,
        vmax=UNCHANGED,
        interval=UNCHANGED,
        symmetric=UNCHANGED,
    ):
        """Show a new image or new display settings without a new figure.

        The figure, its mark, scales and x/y axes stay the same objects; each
        changed widget is updated inside ``hold_sync()``, so the browser gets
        one message per widget.  The picture is a new ``ipywidgets.Image``
        each time (bqplot redraws only on a new one; the old one is closed),
        and the colorbar axis is replaced when its log ticks change.
        Settings not given keep their current value; ``None`` means what it
        means in :func:`plot_image` (e.g. ``vmin=None`` is "from the data").

        Parameters
        ----------
        image : array_like, shape (rows, cols), optional
            The new image; ``None`` re-renders the current one.
        xlim, ylim, cmap, norm, vmin, vmax, interval, symmetric
            As in :func:`plot_image`.  The visible range (a user's zoom)
            is kept unless ``xlim``/``ylim`` are given or the image
            changes shape.

        Raises
        ------
        ValueError, TypeError
            As :func:`plot_image`; the figure is then left unchanged.

        Examples
        --------
        >>> import numpy as np
        >>> fig = plot_image(np.ones((10, 20)))
        >>> mark = fig.image_mark
        >>> fig.update_image(xlim=(2, 5))
        >>> fig.image_mark is mark, fig.x_scale.min, fig.x_scale.max
        (True, 2.0, 5.0)
        """
        settings = dict(self._settings)
        changes = dict(
            xlim=xlim, ylim=ylim, cmap=cmap, norm=norm, vmin=vmin, vmax=vmax, interval=interval, symmetric=symmetric
        )
        settings.update({k: v for k, v in changes.items() if v is not UNCHANGED})
        if image is not None:
            settings["image"] = image
        old_shape = self._settings["image"].shape
        reset_view = xlim is not UNCHANGED or ylim is not UNCHANGED or np.shape(settings["image"]) != old_shape
        crop = None if reset_view else self._crop
        # Render first: a bad setting raises before any widget is touched.
        state = self._render_cached(settings, crop)
        _apply(self, state, reset_view=reset_view)
        self._settings = state["settings"]
        self._crop = crop


    # ------------------------------------------------------ render cache
    #: Pictures kept by :meth:`_render_cached` (each ~100 KB of PNG plus a
    #: reference to its image, which the caller usually holds anyway).
    render_cache_size = 8

    def _render_cached(self, settings, crop):
        key = _render_key(settings, crop)
        if key is not None:
            hit = self._renders.get(key)
            if hit is not None and hit[0] is settings["image"]:
                self._renders.move_to_end(key)
                self.n_cached_renders += 1
                return hit[1]
        state = _render(settings, crop=crop)
        self.n_renders += 1
        if key is not None:
            self._renders[key] = (settings["image"], state)
            while len(self._renders) > self.render_cache_size:
                self._renders.popitem(last=False)
        return state

    def prerender(self, image, **settings):
        """Render ``image`` with ``settings`` (as :meth:`update_image` would) into the cache, without showing it.

        A later :meth:`update_image` with the same image object and settings
        then only sends the picture. Used to have the other views of an
        image viewer ready before they are asked for.
        """
        full = dict(self._settings)
        full.update({k: v for k, v in settings.items() if v is not UNCHANGED})
        full["image"] = image
        crop = self._crop if np.shape(image) == self._settings["image"].shape else None
        self._render_cached(full, crop)

    def clear_render_cache(self, keep=None):
        """Forget the rendered pictures (e.g. when the images they show are replaced).

        ``keep(image)`` returning True keeps the pictures of that image.
        """
        for key, (image, _) in list(self._renders.items()):
            if keep is None or not keep(image):
                del self._renders[key]


def _render_key(settings, crop):
    """A hashable key of what a picture depends on (None when a setting is not hashable)."""
    try:
        items = tuple(sorted((k, v) for k, v in settings.items() if k != "image"))
        key = (id(settings["image"]), items, crop)
        hash(key)
    except TypeError:
        return None
    return key


def _render(settings, crop=None):
    """Validate ``settings`` and compute every widget value that depends on them.

    ``crop`` = ``(xlim, ylim)`` renders only that part (after a zoom) while
    the view stays the settings' one.
    """
    image = raster._as_image(settings["image"])
    norm = raster._check_norm(settings["norm"])
    raster._check_interval(settings.get("interval"))
    xlim = raster._check_range(settings["xlim"], "xlim")
    ylim = raster._check_range(settings["ylim"], "ylim")
    render_x, render_y = crop if crop is not None else (xlim, ylim)
    start = time.perf_counter()
    rendered = raster.render_png(
        image,
        cmap=settings["cmap"],
        norm=norm,
        vmin=settings["vmin"],
        vmax=settings["vmax"],
        max_shape=settings["max_shape"],
        xlim=render_x,
        ylim=render_y,
        origin="lower",
        interval=settings.get("interval"),
        symmetric=bool(settings.get("symmetric")),
    )
    _timing.record("render", time.perf_counter() - start, png_bytes=len(rendered.png), shape=list(rendered.shape))
    c_min, c_max, tick_values, tick_labels = _colorbar_ticks(norm, rendered.vmin, rendered.vmax)
    return {
        "settings": dict(settings, image=image),
        "png": rendered.png,
        "mark_x": rendered.x,
        "mark_y": rendered.y,
        # Without limits the view is the whole image, not just the picture.
        "view_x": xlim or (-0.5, image.shape[1] - 0.5),
        "view_y": ylim or (-0.5, image.shape[0] - 0.5),
        "colors": raster.colormap_hex(settings["cmap"]),
        "c_min": c_min,
        "c_max": c_max,
        "tick_values": tick_values,
        "tick_labels": tick_labels,
        "limits": (rendered.vmin, rendered.vmax),
    }


def _picture(png):
    return ipywidgets.Image(value=png, format="png")


def _color_axis(scale, label, state):
    return bqplot.ColorAxis(
        scale=scale,
        label=label,
        side="bottom",
        tick_values=state["tick_values"],
        tick_labels=state["tick_labels"],
    )


def _set(widget, **values):
    """Set traits of one widget; the browser gets them in one message."""
    with widget.hold_sync():
        for name, value in values.items():
            setattr(widget, name, value)


def _same_ticks(axis, state):
    old, new = axis.tick_values, state["tick_values"]
    if (old is None) != (new is None) or (new is not None and not np.array_equal(old, new)):
        return False
    return (axis.tick_labels or {}) == (state["tick_labels"] or {})


def _apply(fig, state, reset_view=True):
    """Push a :func:`_render` result into an existing figure."""
    mark, old_picture, old_axis = fig.image_mark, fig.image_mark.image, fig.color_axis
    fig.limits = state["limits"]
    if reset_view:
        fig._setting_view = True
        try:
            _set(fig.x_scale, min=state["view_x"][0], max=state["view_x"][1])
            _set(fig.y_scale, min=state["view_y"][0], max=state["view_y"][1])
        finally:
            fig._setting_view = False
    # bqplot's Image view redraws when ``image`` becomes another widget, not
    # when that widget's value changes, so each picture is a new widget. It
    # goes first: the page draws it before it redraws the colorbar.
    _set(mark, image=_picture(state["png"]), x=state["mark_x"], y=state["mark_y"])
    old_picture.close()
    _set(fig.color_scale, colors=state["colors"], min=state["c_min"], max=state["c_max"])
    if not _same_ticks(old_axis, state):
        # The colorbar view reads tick values and labels only when it is
        # first drawn (bqplot 0.13.1), so new ticks need a new axis.
        new_axis = _color_axis(fig.color_scale, old_axis.label, state)
        fig.axes = [new_axis if axis is old_axis else axis for axis in fig.axes]
        fig.color_axis = new_axis
        old_axis.close()


def plot_image(
    image,
    xlim=None,
    ylim=None,
    xlabel="Dispersion axis [pix]",
    ylabel="Cross-dispersion axis [pix]",
    cbar_label="Counts",
    title="",
    cmap="inferno",
    norm=None,
    vmin=None,
    vmax=None,
    figsize=None,
    *,
    interval=None,
    symmetric=False,
    panzoom=True,
    scales=None,
):
    """Plot a 2D image with a colorbar, as an interactive bqplot figure.

    Columns run along x (dispersion axis), rows along y with row 0 at the
    bottom; pixel centres sit at integer coordinates.  Only the visible part
    is rendered, block-averaged to about the plot area's resolution, so even
    large frames send well under 1 MiB to the browser.  The mouse wheel
    zooms and a drag pans (``panzoom``); the zoomed part is then rendered
    again at screen resolution.  NaN pixels are transparent (white on a
    light page); pixels ``<= 0`` under ``norm='log'`` get the lowest colour.

    Parameters
    ----------
    image : array_like, shape (rows, cols)
        The image; masked entries of a ``numpy.ma.MaskedArray`` count as NaN.
    xlim, ylim : (float, float), optional
        Visible column / row range, e.g. ``xlim=(20, 30)``.
    xlabel, ylabel : str, optional
        Axis labels.
    cbar_label : str, optional
        Colorbar label.
    title : str, optional
        Figure title.
    cmap : str, optional
        Colormap name: ``'inferno'``, ``'magma'``, ``'plasma'``,
        ``'viridis'``, ``'gray'``, and the diverging ``'RdBu'`` and
        ``'coolwarm'``, each also reversed with ``'_r'``; any other
        matplotlib name when matplotlib is installed.
    norm : {None, 'linear', 'log', 'sqrt', 'asinh'}, optional
        Colour stretch (as in astropy.visualization; ``'log'`` as
        matplotlib's ``LogNorm``).  The colorbar follows the stretch.
    vmin, vmax : float, optional
        Colour limits; missing ones come from ``interval``.
    figsize : (float, float), optional
        ``(width, height)`` in inches (96 CSS pixels each); by default the
        figure is as wide as the page and 400 px high.
    interval : {None, 'minmax', 'zscale'} or float, optional
        How missing limits are found from the finite (for ``'log'``:
        positive) values of the whole image: by default the 1st / 99.5th
        percentiles; ``'zscale'`` is IRAF's (deterministic); a number such
        as 99.5 keeps that central percentage.
    symmetric : bool, optional
        Limits symmetric about zero: for residual and chi images, with a
        diverging ``cmap`` such as ``'RdBu_r'``.
    panzoom : bool, optional
        Wheel zoom and drag pan (``fig.interaction`` is a ``PanZoom``).
    scales : dict, optional
        ``{"x": LinearScale, "y": LinearScale}`` to share with another
        figure of the same detector: zooming one zooms the other.

    Returns
    -------
    ImageFigure
        A ``bqplot.Figure``; it displays when it is the last expression of a
        notebook cell.  Use :meth:`ImageFigure.update_image` to change it.

    Raises
    ------
    ValueError
        If the image is not 2D or is empty, ``norm`` or ``cmap`` is unknown,
        ``vmin >= vmax``, a limit is not positive under ``norm='log'``, or
        ``xlim``/``ylim`` are reversed or miss the image.
    TypeError
        If the image is not numeric.

    Examples
    --------
    The calls of the seed tutorial:

    >>> import numpy as np
    >>> science = np.random.default_rng(1).normal(600.0, 50.0, (100, 500))
    >>> fig = plot_image(science, norm="log", vmin=1e2, vmax=4e3)
    >>> effpix_map = np.tile(np.arange(500.0), (100, 1))
    >>> fig = plot_image(effpix_map, cbar_label="Effective Pixel Location",
    ...                  xlim=(20, 30), vmin=20, vmax=30)
    >>> fig.x_scale.min, fig.x_scale.max
    (20.0, 30.0)
    >>> fig = plot_image(science - 600.0, title="Resulting Correction", norm="log")

    A residual with a diverging map and zscale limits symmetric about zero:

    >>> fig = plot_image(science - 600.0, cmap="RdBu_r", interval="zscale", symmetric=True)
    >>> fig.color_scale.min == -fig.color_scale.max
    True
    """
    layout, max_shape = _figure_size(figsize)
    settings = {
        "image": image,
        "xlim": xlim,
        "ylim": ylim,
        "cmap": cmap,
        "norm": norm,
        "vmin": vmin,
        "vmax": vmax,
        "max_shape": max_shape,
        "interval": interval,
        "symmetric": bool(symmetric),
    }
    state = _render(settings)

    (x_min, x_max), (y_min, y_max) = state["view_x"], state["view_y"]
    if scales is not None:
        try:
            x_scale, y_scale = scales["x"], scales["y"]
        except (KeyError, TypeError):
            raise TypeError("scales must be a dict {'x': LinearScale, 'y': LinearScale}") from None
        with x_scale.hold_sync():
            x_scale.min, x_scale.max = x_min, x_max
        with y_scale.hold_sync():
            y_scale.min, y_scale.max = y_min, y_max
    else:
        x_scale = bqplot.LinearScale(min=x_min, max=x_max, allow_padding=False)
        y_scale = bqplot.LinearScale(min=y_min, max=y_max, allow_padding=False)
    color_scale = bqplot.ColorScale(colors=state["colors"], min=state["c_min"], max=state["c_max"])
    image_mark = bqplot.Image(
        image=_picture(state["png"]),
        x=state["mark_x"],
        y=state["mark_y"],
        scales={"x": x_scale, "y": y_scale},
    )
    axes = [
        bqplot.Axis(scale=x_scale, label=xlabel, grid_lines="none"),
        # Clear of 4-digit tick labels (the default offset overlaps 3-digit ones).
        bqplot.Axis(scale=y_scale, label=ylabel, side="left", grid_lines="none", label_offset=_Y_LABEL_OFFSET),
    ]
    color_axis = _color_axis(color_scale, cbar_label, state)
    interaction = bqplot.interacts.PanZoom(scales={"x": [x_scale], "y": [y_scale]}) if panzoom else None
    fig = ImageFigure(
        image_mark=image_mark,
        color_axis=color_axis,
        settings=state["settings"],
        marks=[image_mark],
        axes=[*axes, color_axis],
        title=title,
        fig_margin=dict(_FIG_MARGIN),
        padding_x=0.0,
        padding_y=0.0,
        layout=layout,
        interaction=interaction,
    )
    fig.limits = state["limits"]
    return fig


def update_image(fig, image=None, **settings):
    """Update a figure made by :func:`plot_image` in place.

    Same as ``fig.update_image(image, **settings)``; see
    :meth:`ImageFigure.update_image`.

    Examples
    --------
    >>> import numpy as np
    >>> fig = plot_image(np.ones((10, 20)))
    >>> update_image(fig, np.zeros((10, 20)), vmin=-1, vmax=1)
    """
    if not isinstance(fig, ImageFigure):
        raise TypeError(f"fig must be a figure made by plot_image; got {type(fig).__name__}")
    fig.update_image(image, **settings)
