"""The session file's schema: what the page saves and what ``specwidgets batch --settings`` replays.

A session is a JSON object written by
:meth:`specwidgets.interactive.Dashboard.save_session` (see
:mod:`specwidgets.interactive.session`)::

    {
      "format": "specwidgets-session",
      "version": 2,
      "source": {"kind": "folder", "folder": "night1", "root": "data root",
                 "instrument": "goodman", "arc_tag": "lamp/", "bias_tag": "bias/",
                 "science_tag": "spec_", "flat_tag": "", "crop": "680:800",
                 "arc_combine": "sum"},
      "frames": {"shape": [120, 1024], "n_exposures": 2, "exposure_names": [...]},
      "state": {"mask_region": ["20:100"], "guesses": [...], "tolerance": 16.0,
                "std_variation": 50.0, "line_order": 2, "warp_order": 1,
                "method": "bspline", "spatial_order": null, "knot_spacing": null,
                "reject_sigma": null, "read_noise": null, "gain": null, "exposure": 0},
      "display": {...}, "preview": {...}
    }

``source`` is written by the page app (:class:`specwidgets.app.page.DashboardApp`):
``kind`` is ``"demo"``, ``"goodman"`` or ``"folder"``; a folder is written
relative to the page's data root when the page has one (``"root": "data
root"``), else as an absolute path (``"root": null``). ``read_noise`` and
``gain`` are a number, null (the frames' own) or ``"estimate"``.

This module checks a session (:func:`validate_session`: a
:class:`ValueError` naming the key at fault) and turns it into
:func:`specwidgets.batch.run_batch` arguments (:func:`batch_arguments`); the
page and batch share it, so what one writes the other reads.

Examples
--------
>>> data = {"format": SESSION_FORMAT, "version": SESSION_VERSION,
...         "state": {"mask_region": ["40:75"], "method": "median"}}
>>> batch_arguments(validate_session(data))["masks"]
RowRanges('40:75')
>>> validate_session({**data, "state": {"mask_region": ["75:40"]}})
Traceback (most recent call last):
...
ValueError: session key 'state.mask_region': mask (75, 40) is reversed: start must be below stop
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..core.rows import RowRanges

__all__ = [
    "SESSION_FORMAT",
    "SESSION_VERSION",
    "batch_arguments",
    "folder_roles",
    "mask_text",
    "mask_texts",
    "parse_mask",
    "row_ranges",
    "read_session",
    "validate_session",
]

SESSION_FORMAT = "specwidgets-session"
#: 2: masks as "a:b" text and the data source; version 1 files (masks as
#: pairs, no source) are still read.
SESSION_VERSION = 2
READABLE_VERSIONS = (1, 2)

TOP_KEYS = {"format", "version", "source", "frames", "state", "display", "preview"}
SOURCE_KINDS = ("demo", "goodman", "folder")
SOURCE_KEYS = {"kind", "folder", "root", "instrument", "arc_tag", "bias_tag", "science_tag", "flat_tag", "crop",
               "arc_combine"}
FRAMES_KEYS = {"shape", "n_exposures", "exposure_names"}
#: The state's inputs a session holds (SkyState traits).
STATE_KEYS = {
    "mask_region", "guesses", "tolerance", "std_variation", "line_order", "warp_order", "method",
    "spatial_order", "knot_spacing", "reject_sigma", "read_noise", "gain", "exposure",
}
ARC_COMBINES = ("sum", "median")


def _fail(key, message):
    raise ValueError(f"session key {key!r}: {message}")


def mask_text(pair):
    """``(start, stop)`` as slice text ``"start:stop"`` (a None end left blank).

    >>> mask_text((20, 100)), mask_text((None, 12))
    ('20:100', ':12')
    """
    return RowRanges([pair], name="mask").text


def mask_texts(ranges):
    """The session's ``mask_region``: one ``"start:stop"`` text per range of a :class:`RowRanges`.

    >>> mask_texts(RowRanges("20:34, 50:55"))
    ['20:34', '50:55']
    """
    return [mask_text(pair) for pair in RowRanges.coerce(ranges)]


def row_ranges(value, key="state.mask_region"):
    """A :class:`RowRanges` from the session's list of texts (or one text); ValueError naming ``key``.

    >>> row_ranges(["20:34", "50:55"])
    RowRanges('20:34,50:55')
    """
    try:
        return RowRanges(value, name="mask")
    except (TypeError, ValueError) as exc:
        _fail(key, str(exc))


def parse_mask(value, key="state.mask_region"):
    """One mask range from slice text ``"a:b"`` (or a ``[a, b]`` pair); ValueError naming ``key``.

    >>> parse_mask("20:100"), parse_mask(":12"), parse_mask([3, 9])
    ((20, 100), (None, 12), (3, 9))
    """
    ranges = row_ranges(value if isinstance(value, str) else [value], key)
    if len(ranges) != 1:
        _fail(key, f"expected one range start:stop; got {value!r}")
    return ranges[0]


def _number(key, value, *, allow_none=False, integer=False, positive=False, low=None, high=None):
    if value is None and allow_none:
        return None
    ok_type = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type):
        kind = "an integer" if integer else "a number"
        _fail(key, f"expected {kind}{' or null' if allow_none else ''}; got {value!r}")
    if not math.isfinite(value) or (positive and value <= 0):
        _fail(key, f"expected a {'positive ' if positive else ''}finite number; got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        _fail(key, f"expected {low}..{high}; got {value!r}")
    return value


def _noise(key, value, positive):
    if value is None or value == "estimate":
        return value
    return _number(key, value, positive=positive, low=0)


def _unknown(section, data, known):
    extra = sorted(set(data) - known)
    if extra:
        where = f"{section}.{extra[0]}" if section else extra[0]
        _fail(where, f"unknown key (this specwidgets knows {', '.join(sorted(known))})")


def validate_session(data):
    """Check a session dict; return it with masks as ``(start, stop)`` pairs. ValueError names the key.

    Checked: ``format``, ``version``, no unknown keys at the top, in
    ``source``, ``frames`` and ``state``; every state value's type and range.
    ``display`` and ``preview`` are the page's own (not checked here).
    """
    if not isinstance(data, dict):
        raise ValueError(f"a session is a JSON object; got {type(data).__name__}")
    if data.get("format") != SESSION_FORMAT:
        _fail("format", f"expected {SESSION_FORMAT!r}; got {data.get('format')!r} (not a specwidgets session)")
    version = data.get("version")
    if version not in READABLE_VERSIONS:
        _fail("version", f"this specwidgets reads session versions {', '.join(map(str, READABLE_VERSIONS))}; "
                         f"got {version!r}")
    _unknown("", data, TOP_KEYS)
    out = dict(data)
    source = data.get("source")
    if source is not None:
        if not isinstance(source, dict):
            _fail("source", f"expected an object; got {source!r}")
        _unknown("source", source, SOURCE_KEYS)
        if source.get("kind") not in SOURCE_KINDS:
            _fail("source.kind", f"expected one of {', '.join(SOURCE_KINDS)}; got {source.get('kind')!r}")
        for name in ("folder", "instrument", "arc_tag", "bias_tag", "science_tag", "flat_tag"):
            if source.get(name) is not None and not isinstance(source[name], str):
                _fail(f"source.{name}", f"expected text; got {source[name]!r}")
        if source["kind"] == "folder" and not source.get("folder"):
            _fail("source.folder", "a folder source needs the folder")
        if source.get("root") not in (None, "data root"):
            _fail("source.root", f"expected null or 'data root'; got {source['root']!r}")
        if source.get("crop") is not None:
            parse_mask(source["crop"], "source.crop")
        if source.get("arc_combine", "sum") not in ARC_COMBINES:
            _fail("source.arc_combine", f"expected one of {', '.join(ARC_COMBINES)}; got {source['arc_combine']!r}")
    frames = data.get("frames", {})
    if not isinstance(frames, dict):
        _fail("frames", f"expected an object; got {frames!r}")
    _unknown("frames", frames, FRAMES_KEYS)
    if "shape" in frames and not (
        isinstance(frames["shape"], list) and len(frames["shape"]) == 2
        and all(isinstance(n, int) and n > 0 for n in frames["shape"])
    ):
        _fail("frames.shape", f"expected [n_rows, n_cols]; got {frames['shape']!r}")
    state = data.get("state", {})
    if not isinstance(state, dict):
        _fail("state", f"expected an object; got {state!r}")
    _unknown("state", state, STATE_KEYS)
    state = dict(state)
    if "mask_region" in state:
        masks = state["mask_region"]
        if isinstance(masks, RowRanges):  # validated already
            masks = mask_texts(masks)
        if not isinstance(masks, list) or not all(isinstance(m, (str, list)) for m in masks):
            _fail("state.mask_region", f"expected a list of 'start:stop' texts; got {masks!r}")
        state["mask_region"] = row_ranges([m if isinstance(m, str) else tuple(m) for m in masks])
    if "guesses" in state:
        if not isinstance(state["guesses"], list):
            _fail("state.guesses", f"expected a list of columns; got {state['guesses']!r}")
        state["guesses"] = [float(_number("state.guesses", g)) for g in state["guesses"]]
    for name, kw in (("tolerance", dict(positive=True)), ("std_variation", dict(positive=True)),
                     ("line_order", dict(integer=True, low=0, high=10)),
                     ("warp_order", dict(integer=True, low=0, high=10)),
                     ("spatial_order", dict(integer=True, allow_none=True, low=0, high=4)),
                     ("knot_spacing", dict(allow_none=True, positive=True)),
                     ("reject_sigma", dict(allow_none=True, positive=True)),
                     ("exposure", dict(integer=True, low=0))):
        if name in state:
            state[name] = _number(f"state.{name}", state[name], **kw)
    if "method" in state:
        from ..core.sky.api import METHODS

        if state["method"] not in METHODS:
            _fail("state.method", f"expected one of {', '.join(METHODS)}; got {state['method']!r}")
    if "read_noise" in state:
        state["read_noise"] = _noise("state.read_noise", state["read_noise"], positive=False)
    if "gain" in state:
        state["gain"] = _noise("state.gain", state["gain"], positive=True)
    out["state"] = state
    return out


def read_session(path):
    """Read and check a session file; ValueError naming the file and the key at fault."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"no session file at {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a JSON session file: {exc}") from None
    try:
        return validate_session(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def folder_roles(folder, arc_tag="arc", bias_tag="bias", science_tag="", flat_tag=""):
    """The arc, bias, flat and science files of a folder chosen by tags, as the page's folder loader does.

    Returns ``{"arc": [...], "bias": [...], "flat": [...], "science": [...], "skipped": [...]}``
    (paths, and ``"path: reason"`` for the files left out), by
    :func:`specwidgets.io.folder.folder_files`, the page's own rule: a file
    claimed by an earlier role (arc, bias, flat) is not taken again, and an
    empty science tag leaves out flats, darks and specwidgets outputs.
    """
    from .folder import folder_files

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"the session's folder {str(folder)!r} does not exist")
    try:
        roles, skipped = folder_files(folder, arc_tag, bias_tag, science_tag or "", flat_tag or "")
    except FileNotFoundError as exc:
        raise ValueError(f"the session's tags: {exc}") from None
    return {**roles, "skipped": skipped}


def batch_arguments(session, data_root=None):
    """:func:`~specwidgets.batch.run_batch` keyword arguments from a checked session.

    Only what the session sets; a folder source also gives ``folder`` (the
    resolved path) and ``tags``. ``data_root`` resolves a folder written
    relative to the page's data root (default: the current folder).
    """
    state = session.get("state", {})
    out = {}
    if "mask_region" in state:
        out["masks"] = state["mask_region"]
    for name in ("guesses", "tolerance", "std_variation", "line_order", "warp_order", "method", "spatial_order"):
        if state.get(name) is not None:
            out[name] = state[name]
    options = {name: state[name] for name in ("knot_spacing", "reject_sigma") if state.get(name) is not None}
    if options:
        out["sky_options"] = options
    for name in ("read_noise", "gain"):
        if state.get(name) is not None:
            out[name] = state[name]
    source = session.get("source")
    if source:
        if source.get("arc_combine"):
            out["arc_combine"] = source["arc_combine"]
        if source["kind"] in ("folder", "goodman"):
            if source.get("instrument"):
                out["instrument"] = source["instrument"]
            if source.get("crop"):
                out["crop"] = parse_mask(source["crop"], "source.crop")
        if source["kind"] == "goodman":
            from .sample_data import goodman_path

            out["folder"] = Path(goodman_path())
        elif source["kind"] == "folder":
            folder = Path(source["folder"]).expanduser()
            if not folder.is_absolute():
                base = Path(data_root) if data_root is not None else Path.cwd()
                folder = base / folder
                if not folder.is_dir():
                    where = "the page's data root" if source.get("root") else "the page's folder"
                    raise ValueError(
                        f"session key 'source.folder': {source['folder']!r} is relative to {where}; "
                        f"{str(folder)!r} does not exist: pass the data root (--data-root DIR, data_root=...)"
                    )
            out["folder"] = folder
        if "folder" in out:
            out["tags"] = {k: source.get(f"{k}_tag", d) for k, d in (("arc", "arc"), ("bias", "bias"),
                                                                   ("science", ""), ("flat", ""))}
    return out
