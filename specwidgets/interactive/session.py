"""Save the settings tuned in a dashboard to a JSON file, and load them back.

A session holds what the user chose, not the data: every input trait of the
:class:`~specwidgets.interactive.state.SkyState` (mask ranges, warp guesses, tolerance,
threshold, orders, sky method and options, noise model, exposure), the
image viewer's display settings, the 1D preview's method and trace, and the
frames' shape and exposure names so that a session is not applied to other
data by mistake. Loading applies the state's inputs at once (one
recomputation), so the same frames give the same sky as when it was saved.

Examples
--------
>>> import tempfile, pathlib
>>> from specwidgets.interactive import Dashboard
>>> dash = Dashboard.from_demo()
>>> dash.viewer.mask_slider.value = (40, 75)
>>> path = pathlib.Path(tempfile.mkdtemp()) / "night.json"
>>> _ = save_session(dash, path)
>>> other = Dashboard.from_demo()
>>> _ = load_session(other, path)
>>> other.mask_region
[(40, 75)]
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

__all__ = ["SESSION_FORMAT", "SESSION_VERSION", "apply_session", "load_session", "save_session",
           "session_settings"]

from ..io.settings import SESSION_FORMAT, SESSION_VERSION, mask_texts, read_session, validate_session

# SkyState traits that are results or bookkeeping, not user settings.
_NOT_SETTINGS = {
    "science", "arc", "lines", "line_intensities", "warp_model", "result", "error", "busy", "last_duration",
}


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _setting_names(state):
    return sorted(
        name for name in state.trait_names()
        if name not in _NOT_SETTINGS and not name.startswith(("_", "n_")) and not state.trait_metadata(name, "read_only")
    )


def session_settings(dash):
    """The dashboard's settings as a JSON-ready dict (see the module docstring)."""
    state = dash.state
    viewer = dash.viewer
    settings = {name: _jsonable(getattr(state, name)) for name in _setting_names(state)}
    # Slice text, as batch's --mask and the page's fields write rows.
    settings["mask_region"] = mask_texts(state.mask_region)
    out = {
        "format": SESSION_FORMAT,
        "version": SESSION_VERSION,
        "frames": {"shape": list(state.shape), "n_exposures": state.n_exposures,
                   "exposure_names": list(dash.exposure_names)},
        "state": settings,
        "display": {
            "view": viewer.view,
            "norm": viewer.stretch.value,
            "interval": viewer.interval.value,
            "cmap": viewer.cmap.value,
            "symmetric": bool(viewer.symmetric.value),
        },
    }
    source = getattr(dash, "session_source", None)
    if source:
        # Where the frames came from (set by the page app): batch --settings reads them from there.
        out["source"] = dict(source)
    preview = getattr(dash, "preview", None)
    if preview is not None:
        out["preview"] = {"method": preview.method.value, "shift": float(preview.shift.value),
                          "aperture": float(preview.aperture.value)}
        if preview.trace is not None:
            t = preview.trace
            out["preview"]["trace"] = {"coefficients": [float(c) for c in t.coefficients], "n_cols": t.n_cols,
                                       "fwhm": float(t.fwhm)}
    return out


def save_session(dash, path):
    """Write the dashboard's settings to ``path`` (JSON); returns the path."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give a file name such as {path / 'session.json'}")
    if not path.parent.exists():
        raise ValueError(f"the folder {path.parent} does not exist")
    path.write_text(json.dumps(session_settings(dash), indent=2) + "\n")
    return path


def _read(path):
    return read_session(path)


def apply_session(dash, data):
    """Apply a session dict to a dashboard; returns the setting names it could not apply.

    Raises
    ------
    ValueError
        If the session is malformed (wrong version, unknown key, invalid
        mask: the message names the key), was saved for frames of another
        shape, or a setting is refused by the state. The dashboard is then
        left as it was.
    """
    data = validate_session(data)
    state = dash.state
    frames = data.get("frames", {})
    shape = tuple(frames.get("shape", state.shape))
    if shape != tuple(state.shape):
        raise ValueError(f"the session was saved for frames of shape {shape}; these are {tuple(state.shape)}")
    settings = dict(data.get("state", {}))
    if "mask_region" in settings:
        # Resolved here, against these frames, so a mask the state would
        # refuse stops the whole session before any setting changes.
        try:
            settings["mask_region"] = settings["mask_region"].resolve(state.shape[0])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"session key 'state.mask_region': {exc}") from None
    known = set(_setting_names(state))
    skipped = sorted(set(settings) - known)
    exposure = settings.pop("exposure", None)
    if exposure is not None and not 0 <= int(exposure) < state.n_exposures:
        exposure = None
    before = {name: getattr(state, name) for name in settings if name in known}
    try:
        with state.hold():
            for name, value in settings.items():
                if name in known:
                    setattr(state, name, value)
    except Exception as exc:  # a trait refused a value: put the old ones back
        with state.hold():
            for name, value in before.items():
                setattr(state, name, value)
        raise ValueError(f"the session could not be applied: {exc}") from None
    # A changed threshold makes the state search the arc again and take the
    # lines it finds as guesses: the saved guesses go back on top of them.
    guesses = settings.get("guesses")
    if guesses is not None and list(state.guesses) != [float(g) for g in guesses]:
        state.guesses = guesses
    if exposure is not None:
        state.exposure = int(exposure)
    display = data.get("display", {})
    viewer = dash.viewer
    if display.get("view") in ("science", "background", "corrected", "chi"):
        viewer.view = display["view"]
    viewer._syncing = True
    try:
        for widget, key in ((viewer.stretch, "norm"), (viewer.interval, "interval"), (viewer.cmap, "cmap"),
                            (viewer.symmetric, "symmetric")):
            if key in display:
                try:
                    widget.value = display[key]
                except Exception:  # noqa: BLE001 - an unknown option: keep the current one
                    skipped.append(f"display.{key}")
    finally:
        viewer._syncing = False
    viewer.refresh_image()
    preview = getattr(dash, "preview", None)
    saved = data.get("preview", {})
    if preview is not None:
        if saved.get("method") in preview.method.options:
            preview.method.value = saved["method"]
        for widget, key in ((preview.shift, "shift"), (preview.aperture, "aperture")):
            if isinstance(saved.get(key), (int, float)):
                widget.value = float(saved[key])
    return skipped


def load_session(dash, path):
    """Read a session file written by :func:`save_session` and apply it; returns what was skipped."""
    return apply_session(dash, _read(path))
