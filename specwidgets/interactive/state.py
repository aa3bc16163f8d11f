"""The state behind the widgets: inputs, results and the rules that recompute them.

:class:`SkyState` is a traitlets ``HasTraits`` object with no widget in it,
so everything the dashboard does can be driven and tested without a browser:
set an input trait and the dependent results follow. Widgets translate
between the user and these traits.

A failed recomputation never raises into the caller (an event handler in a
kernel): it sets :attr:`SkyState.error` and keeps the last good results.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import traitlets as tl

from ..core import _timing
from ..core._warnings import warnings_at_caller
from ..core.frames import ESTIMATE, frame_array, noise_setting
from ..core.inputs import as_image, as_image_stack
from ..core.lines import find_cal_lines
from ..core.rows import RowRanges
from ..core.sky.api import METHODS, SkyResult, assess_later, fit_sky
from ..core.warp import PoorWarpWarning, WarpModel, generate_warp_model

__all__ = ["SkyState"]




def _noise_value(value, name, positive):
    """None, ``"estimate"`` or a float (checked): the state's ``read_noise``/``gain``."""
    try:
        return noise_setting(value, name, positive=positive)
    except (TypeError, ValueError) as exc:
        raise tl.TraitError(str(exc)) from None


class SkyState(tl.HasTraits):
    """Inputs and results of one background-subtraction session.

    Parameters
    ----------
    science : array_like
        ``(n_rows, n_cols)`` or ``(n_exposures, n_rows, n_cols)``.
    arc : array_like, optional
        The arc frame of the same shape. Without one (and no ``warp_model=``)
        the warp is fit on the science frame's own sky lines
        (:func:`specwidgets.core.sky.sky_warp.sky_warp_model`, with the mask given).
    **traits
        Any of the input traits below (``mask_region``, ``guesses``,
        ``tolerance``, ``method``, ...).

    Examples
    --------
    >>> from specwidgets.io.synthetic import make_synthetic_longslit
    >>> frames = make_synthetic_longslit(shape=(60, 400), seed=1)
    >>> state = SkyState(frames.science, frames.arc, mask_region=[frames.trace_rows])
    >>> state.background.shape
    (1, 60, 400)
    >>> state.mask_region = [(0, 60)]   # every row: refused, last mask and result kept
    >>> "covers every" in state.error, state.mask_region == [frames.trace_rows]
    (True, True)
    >>> state.mask_region = "5:12, 40:"  # text, pairs or a RowRanges; held as one RowRanges
    >>> state.mask_region, state.result.mask_region is state.mask_region
    (RowRanges('5:12,40:60', n_rows=60), True)
    """

    # ------------------------------------------------------------------ inputs
    science = tl.Instance(np.ndarray)
    arc = tl.Instance(np.ndarray, allow_none=True)
    guesses = tl.List(tl.Float())
    tolerance = tl.Float(16.0)
    std_variation = tl.Float(50.0)
    line_order = tl.Int(2)
    warp_order = tl.Int(1)
    #: The masked rows, a :class:`~specwidgets.core.rows.RowRanges` resolved
    #: against the frame height. Assign text, a pair, a list of pairs or a
    #: RowRanges; a mask that cannot be used is refused at assignment (the
    #: state keeps its mask and result and ``error`` says why).
    mask_region = tl.Any(RowRanges())
    method = tl.Enum(METHODS, default_value="bspline")
    #: B-spline order along the slit; None: not passed, fit_sky chooses (auto).
    spatial_order = tl.Int(None, allow_none=True)
    knot_spacing = tl.Float(None, allow_none=True)  # None: bspline_sky.default_knot_spacing
    #: B-spline outlier threshold in sigma; None: fit_sky's default.
    reject_sigma = tl.Float(None, allow_none=True)
    #: Read noise in electrons: a number (the user's), None (the frames' own,
    #: else estimated by fit_sky) or "estimate" (estimated even if the frames have one).
    read_noise = tl.Any(None)
    #: Electrons per data unit: a number, None (the frames', else fit_sky's
    #: default/estimate) or "estimate".
    gain = tl.Any(None)
    exposure = tl.Int(0)

    # ----------------------------------------------------------------- results
    lines = tl.Instance(np.ndarray, allow_none=True)
    line_intensities = tl.Instance(np.ndarray, allow_none=True)
    warp_model = tl.Instance(WarpModel, allow_none=True)
    result = tl.Instance(SkyResult, allow_none=True)
    error = tl.Unicode("")
    busy = tl.Bool(False)
    last_duration = tl.Float(0.0)
    #: Counts of recomputations, so a test (or a user) can see what ran.
    n_line_searches = tl.Int(0)
    n_warp_fits = tl.Int(0)
    n_sky_fits = tl.Int(0)

    def __init__(self, science, arc=None, *, warp_model=None, **traits):
        stack, _ = as_image_stack(science, "science")
        # Keep the frames' noise model (loaders, datasets) on the stack, so
        # fit_sky finds it when read_noise/gain are left to the frames.
        stack = frame_array(stack, like=science)
        if arc is not None:
            arc = as_image(arc, "arc")
            if arc.shape != stack.shape[1:]:
                raise ValueError(f"the arc has shape {arc.shape} but the science frames {stack.shape[1:]}")
        self._hold = True
        self._hold_depth = 0
        self._constructing = True
        self._refused_mask = ""
        self._good_mask = RowRanges()
        self._last_fits = {}  # method -> (shared inputs, options, result): see _update_sky
        try:
            super().__init__(science=stack, arc=arc, **traits)
        finally:
            self._hold = False
            self._constructing = False
        if warp_model is not None:
            self.warp_model = warp_model
            self._update_sky()
        else:
            # A failed line search says why (no line in the arc); a warp fit
            # without guesses would only say that none were given.
            if self.guesses or arc is None or self._find_lines():
                self._update_warp()
        # After the first fit (which compiles its own method): the other
        # methods' kernels compile in the background, so that the first
        # switch of method does not wait for numba.
        from ..core._warmup import start_warm_up

        start_warm_up([m for m in METHODS if m != self.method])

    # ------------------------------------------------------------- properties
    @property
    def shape(self):
        return self.science.shape[1:]

    @property
    def n_exposures(self):
        return self.science.shape[0]

    @property
    def background(self):
        """The current background, the shape of the science stack (None before a first fit)."""
        return None if self.result is None else self.result.background

    @property
    def masks(self):
        """``mask_region`` as a list of ``(start, stop)`` tuples."""
        return self.mask_region.to_list()

    @property
    def frames_noise(self):
        """``(read_noise, gain, source)`` the science frames carry (None, None, "" when unknown)."""
        science = self.science
        return (
            getattr(science, "read_noise", None),
            getattr(science, "gain", None),
            getattr(science, "noise_source", "") or "",
        )

    @property
    def noise_model(self):
        """What the current fit used: ``{"read_noise", "gain", "source"}`` (None before a fit).

        Taken from the fit's quality report when it has one; otherwise from
        the result's numbers, with the source told from the inputs.
        """
        result = self.result
        if result is None:
            return None
        try:
            quality = result.quality
        except Exception:  # noqa: BLE001 - a failed report (assess_later): the result's own numbers
            quality = None
        if quality is not None and getattr(quality, "noise_source", None):
            # The state passes a number only when the user typed it, so the
            # fit's "argument" is the user's value.
            source = str(quality.noise_source).replace("argument", "set by you")
            return {
                "read_noise": getattr(quality, "read_noise", result.read_noise),
                "gain": getattr(quality, "gain", result.gain),
                "source": source,
            }
        frames_rn, frames_gain, frames_source = self.frames_noise
        parts = []
        for name, mine, theirs in (("read noise", self.read_noise, frames_rn), ("gain", self.gain, frames_gain)):
            if isinstance(mine, float):
                parts.append(f"{name} set by you")
            elif mine == ESTIMATE:
                parts.append(f"{name} estimated")
            elif theirs is not None:
                parts.append(f"{name} from {frames_source or 'the frames'}")
            else:
                parts.append(f"{name} not known (fit default)")
        return {"read_noise": result.read_noise, "gain": result.gain, "source": "; ".join(parts)}

    # ------------------------------------------------------------- validation
    @tl.validate("mask_region")
    def _valid_mask(self, proposal):
        # Validated here, once, against the frame height: the fit receives
        # this very object. A refused mask never lands in the state: the
        # assignment keeps the current mask (and result) and says why in
        # `error` instead of raising into a widget callback.
        try:
            value = RowRanges.coerce(proposal["value"]).resolve(self.science.shape[1])
        except (TypeError, ValueError) as exc:
            self.error = str(exc)
            if getattr(self, "_constructing", False):
                self._refused_mask = str(exc)  # the first fit waits for a usable mask
            return self._good_mask
        self._refused_mask = ""
        self._good_mask = value
        return value

    @tl.validate("science")
    def _valid_science(self, proposal):
        value = proposal["value"]
        stack, _ = as_image_stack(value, "science")
        # Keep the frames' noise model (loaders, datasets) on the stack.
        stack = frame_array(stack, like=value)
        arc = self._trait_values.get("arc")
        if arc is not None and arc.shape != stack.shape[1:]:
            raise tl.TraitError(f"the science frames have shape {stack.shape[1:]} but the arc {arc.shape}")
        return stack

    @tl.validate("arc")
    def _valid_arc(self, proposal):
        value = proposal["value"]
        if value is None:
            return None
        arc = as_image(value, "arc")
        science = self._trait_values.get("science")
        if science is not None and arc.shape != science.shape[1:]:
            raise tl.TraitError(f"the arc has shape {arc.shape} but the science frames {science.shape[1:]}")
        return arc

    @tl.validate("read_noise")
    def _valid_read_noise(self, proposal):
        return _noise_value(proposal["value"], "read_noise", positive=False)

    @tl.validate("gain")
    def _valid_gain(self, proposal):
        return _noise_value(proposal["value"], "gain", positive=True)

    @tl.validate("spatial_order")
    def _valid_spatial_order(self, proposal):
        value = proposal["value"]
        # 4: the highest order fit_sky's B-spline sky takes along the slit.
        if value is not None and not 0 <= value <= 4:
            raise tl.TraitError(f"spatial_order must be 0..4 or None (automatic); got {value}")
        return value

    @tl.validate("knot_spacing", "reject_sigma")
    def _valid_positive(self, proposal):
        value = proposal["value"]
        name = proposal["trait"].name
        if value is not None and not (np.isfinite(value) and value > 0):
            raise tl.TraitError(f"{name} must be a positive number or None (default); got {value}")
        return value

    @tl.validate("exposure")
    def _valid_exposure(self, proposal):
        value = proposal["value"]
        if not 0 <= value < self.science.shape[0]:
            raise tl.TraitError(f"exposure must be in 0..{self.science.shape[0] - 1}; got {value}")
        return value

    # -------------------------------------------------------------- reactions
    @tl.observe("std_variation")
    def _on_threshold(self, change):
        if not self._hold and self._find_lines():
            self._update_warp()

    @tl.observe("guesses", "tolerance", "line_order", "warp_order", "arc")
    def _on_warp_inputs(self, change):
        if not self._hold:
            self._update_warp()

    @tl.observe("science")
    def _on_science(self, change):
        # Fewer exposures: the one shown must still exist (before the refit's observers run).
        if self.exposure >= self.science.shape[0]:
            self.exposure = 0

    @tl.observe("mask_region", "method", "spatial_order", "knot_spacing", "reject_sigma", "read_noise", "gain",
                "science")
    def _on_sky_inputs(self, change):
        if not self._hold:
            self._update_sky()

    def hold(self):
        """Context manager: change several inputs, recompute once at the end.

        Holds nest: only the outermost one recomputes, once, for every input
        changed inside it.
        """
        return _Hold(self)

    # ------------------------------------------------------------ computation
    def _run(self, step):
        """Run one recomputation; on failure keep the last results and say why."""
        self.busy = True
        start = time.perf_counter()
        outcome = None
        try:
            outcome = step()
        except Exception as exc:  # noqa: BLE001 - the promise: nothing reaches the kernel
            # Input problems read as they are; anything else names its type,
            # so an unexpected failure is not mistaken for a bad setting.
            expected = (ValueError, TypeError, np.linalg.LinAlgError)
            self.error = str(exc) if isinstance(exc, expected) else f"{type(exc).__name__}: {exc}"
            return False
        finally:
            self.last_duration = time.perf_counter() - start
            self.busy = False
            # A fit shown again (see _update_sky) is logged as such, not as a computation.
            _timing.record("kept" if outcome is _KEPT else "compute", self.last_duration,
                           name=getattr(step, "__qualname__", "step"))
        self.error = ""
        return True

    def _find_lines(self):
        def step():
            if self.arc is None:
                raise ValueError("no arc frame: lines cannot be searched")
            # Its warnings (saturated lines left out) at the user's line, e.g.
            # the notebook cell that made the dashboard, not at this one.
            with warnings_at_caller():
                positions, intensities = find_cal_lines(self.arc, std_variation=self.std_variation)
            self.n_line_searches += 1
            # New detections become the guesses; the caller refits the warp once.
            held, self._hold = self._hold, True
            try:
                self.lines, self.line_intensities = positions, intensities
                self.guesses = [float(p) for p in positions]
            finally:
                self._hold = held

        return self._run(step)

    def _update_warp(self):
        def step():
            if self.arc is None:
                # No arc: the warp from the science frame's own sky lines
                # (the rows outside the current mask).
                from ..core.sky.sky_warp import sky_warp_model

                model = sky_warp_model(self.science, self.masks or (None, None), line_order=self.line_order,
                                       warp_order=self.warp_order)
                self.n_warp_fits += 1
                self.warp_model = model
                return
            with warnings.catch_warnings():
                # The picker shows a poor model's quality warnings itself.
                warnings.simplefilter("ignore", PoorWarpWarning)
                model = generate_warp_model(
                    self.arc,
                    self.guesses,
                    tolerance=self.tolerance,
                    line_order=self.line_order,
                    warp_order=self.warp_order,
                )
            model.edge_map()  # a folding model fails here, before it replaces a good one
            self.n_warp_fits += 1
            self.warp_model = model

        if self._run(step):
            self._update_sky()

    def _update_sky(self):
        def step():
            if self.warp_model is None:
                raise ValueError("no warp model yet")
            if self._refused_mask:
                raise ValueError(self._refused_mask)
            options = {}
            if self.method == "bspline":
                # Only what the user chose: None leaves fit_sky its own default.
                options = {
                    name: value
                    for name, value in (
                        ("spatial_order", self.spatial_order),
                        ("knot_spacing", self.knot_spacing),
                        ("reject_sigma", self.reject_sigma),
                    )
                    if value is not None
                }
            images, noise = self._sky_inputs()
            # Switching back to a method whose last fit had these very inputs
            # (frames and warp model by identity, mask, noise settings, options)
            # shows that fit again: the same result a new fit would give,
            # without its cost (a full frame's default fit takes a third of a
            # second). The noise keywords follow from read_noise and gain.
            shared = (self.science, self.warp_model, (tuple(self.mask_region), self.read_noise, self.gain))
            options_key = tuple(sorted(options.items()))
            last = self._last_fits.get(self.method)
            if last is not None and _same_inputs(last[0], shared) and last[1] == options_key:
                self.result = last[2]
                return _KEPT
            # The quality report is made when first read (the status bar,
            # after the picture has gone to the page): see assess_later.
            with assess_later():
                result = fit_sky(
                    images,
                    self.warp_model,
                    self.mask_region,
                    method=self.method,
                    # No warm start from the previous result: a warm start can stop at
                    # a slightly different rejected set (1.7e-4 of the sky measured
                    # after a mask drag), so the page's sky would depend on the
                    # slider's history and differ from batch's for the same settings.
                    # A fresh fit costs the same (about 0.09 s on the demo and on the
                    # Goodman crop).
                    **noise,
                    **options,
                )
            self.n_sky_fits += 1
            # Kept: this fit, and another method's last one while it had the
            # same frames, warp, mask and noise model; only for frames of up
            # to _KEEP_PIXELS pixels (a kept fit holds several frame-sized arrays).
            self._last_fits = {m: v for m, v in self._last_fits.items()
                               if m != self.method and _same_inputs(v[0], shared)}
            if self.science.size <= _KEEP_PIXELS:
                self._last_fits[self.method] = (shared, options_key, result)
            else:
                self._last_fits.clear()
            self.result = result

        self._run(step)

    def _sky_inputs(self):
        """The images and the ``read_noise``/``gain`` keywords for fit_sky.

        A number the user set is passed; None leaves fit_sky the frames'
        own value (an attribute of the images) or its estimate; "estimate"
        hides the frames' value so that fit_sky estimates it.
        """
        noise = {}
        hide = {}
        for name in ("read_noise", "gain"):
            value = getattr(self, name)
            if isinstance(value, float):
                noise[name] = value
            elif value == ESTIMATE:
                hide[name] = None
        images = frame_array(self.science, like=self.science, **hide) if hide else self.science
        return images, noise


# Frames up to this many pixels (all exposures) keep the other method's
# last fit for a switch back (the two Goodman full frames: 3.8 M).
_KEEP_PIXELS = 8_000_000
_KEPT = object()  # what a sky step returns when it showed a kept fit


def _same_inputs(a, b):
    """``(frames, warp model, rest)`` of two fits alike: the same objects, the rest equal."""
    return a[0] is b[0] and a[1] is b[1] and a[2] == b[2]


def require_state(state, widget):
    """``state`` if it is a :class:`SkyState`, else a TypeError saying what ``widget`` takes."""
    if not isinstance(state, SkyState):
        raise TypeError(
            f"{widget} takes a SkyState, not {type(state).__name__}: build one with "
            "SkyState(science, arc, mask_region=...), or show everything with Dashboard(science, arc)"
        )
    return state


class _Hold:
    def __init__(self, state):
        self.state = state
        self.changed = set()

    def __enter__(self):
        state = self.state
        state._hold_depth += 1
        state._hold = True
        if state._hold_depth == 1:
            state._held_changes = self.changed
            state.observe(self._note, names=tl.All)
        return state

    def _note(self, change):
        self.state._held_changes.add(change["name"])

    def __exit__(self, *exc):
        state = self.state
        state._hold_depth -= 1
        if state._hold_depth > 0:
            return False  # an inner hold: the outermost one recomputes
        self.changed = state._held_changes
        state.unobserve(self._note, names=tl.All)
        state._hold = False
        if exc[0] is not None:
            return False
        if "std_variation" in self.changed:
            if self.state._find_lines():
                self.state._update_warp()
        elif self.changed & {"guesses", "tolerance", "line_order", "warp_order", "arc"}:
            self.state._update_warp()
        elif self.changed & {
            "mask_region", "method", "spatial_order", "knot_spacing", "reject_sigma", "read_noise", "gain", "science",
        }:
            self.state._update_sky()
        return False
