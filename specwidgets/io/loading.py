"""Load stacks of raw long-slit frames from a folder of FITS files.

The two public functions follow the specsuite tutorial's signatures::

    bias = average_matching_files(CAL_PATH, tag="bias", crop_bds=(700, 800),
                                  instrument="kosmos")
    science = collect_images_array(DATA_PATH, tag="toi3884", crop_bds=(700, 800),
                                   instrument="kosmos") - bias

Every frame is read by an instrument (see :mod:`specwidgets.io.instruments`):
its image HDU is selected, trimmed, and turned so the dispersion runs along
columns; then rows ``crop_bds[0]:crop_bds[1]`` are kept, and the frame is
multiplied by the gain when the gain is known, so it is in electrons.

Both return a :class:`~specwidgets.core.frames.FrameArray`: a float64 array whose
``gain`` (1.0 once in electrons, None for ADU with no known gain),
``read_noise`` (electrons, or None), ``noise_source``, ``unit`` and ``header``
attributes carry what the headers (or the ``gain=``/``read_noise=``
arguments) said, so :func:`~specwidgets.core.sky.api.fit_sky` can use them::

    science.gain, science.read_noise, science.noise_source
    # (1.0, 4.74, 'header GAIN, header RDNOISE of goodman frames')
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from specwidgets.core.frames import FrameArray, median_frames
from specwidgets.io.discovery import COMPRESSION_SUFFIXES, FITS_SUFFIXES, find_fits_files, stem_clashes
from specwidgets.io.instruments import Instrument, _electron_unit, _scaled_unit, resolve_instrument

__all__ = [
    "arc_orientation",
    "FITS_EXTENSIONS",
    "COMBINE_MODES",
    "average_matching_files",
    "collect_images_array",
    "matching_files",
    "noise_of_frames",
    "read_frame",
    "unit_of",
]

#: File name endings read as FITS (compared case-insensitively); the rule
#: itself is :func:`specwidgets.io.discovery.is_fits_name`.
FITS_EXTENSIONS = tuple(f + c for f in FITS_SUFFIXES for c in ("",) + COMPRESSION_SUFFIXES)

#: Valid ``mode`` values of :func:`average_matching_files`.
COMBINE_MODES = ("median", "mean", "sum")


# ------------------------------------------------------------------ files
def _as_ignore_list(ignore):
    if ignore is None:
        return []
    # A lone string is one pattern, not a sequence of one-letter patterns.
    if isinstance(ignore, str):
        return [ignore] if ignore else []
    patterns = list(ignore)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"ignore must be a string or a list of strings; got the item {pattern!r}")
    return [p for p in patterns if p]


def matching_files(path, tag="", ignore=()):
    """Return the FITS files in folder ``path`` selected by ``tag`` and ``ignore``.

    Parameters
    ----------
    path : str or os.PathLike
        Folder to list (not recursive).
    tag : str
        Keep files whose name contains this text (case-sensitive); ``""``
        keeps every FITS file.
    ignore : str or iterable of str
        Drop files whose name contains any of these.

    Returns
    -------
    list of pathlib.Path
        Sorted by file name, each real file once. FITS names follow
        :func:`specwidgets.io.discovery.is_fits_name` (``.fits``, ``.fit``,
        ``.fts``, optionally ``.gz``, ``.bz2`` or ``.fz``); hidden files
        (``.name``) do not count.

    Raises
    ------
    FileNotFoundError
        If the folder does not exist, or no file matches (the message gives
        the tag, the folder and how many FITS files it holds).
    NotADirectoryError
        If ``path`` is a file.

    Examples
    --------
    >>> from specwidgets.io.sample_data import goodman_path
    >>> [p.name for p in matching_files(goodman_path() / "lamp", tag="0072")]  # doctest: +SKIP
    ['0072_PKSJ0049-5738_13-05-2023_comp.fits.fz']
    """
    folder = _check_folder(path)
    if not isinstance(tag, str):
        raise TypeError(f"tag must be a string; got {tag!r}")
    patterns = _as_ignore_list(ignore)
    chosen = find_fits_files(folder, tag, ignore=patterns)
    if not chosen:
        raise FileNotFoundError(_no_match_message(folder, tag, patterns, find_fits_files(folder)))
    return chosen


def _frame_files(path, tag, ignore):
    """:func:`matching_files`, refusing files that are one exposure stored twice.

    ``x.fits`` and ``x.fits.gz`` (a compressed copy left beside it) would be
    stacked as two exposures, the second's sky counted twice (trial F1);
    batch refuses the same files (their outputs would clash) by the same
    rule, :func:`~specwidgets.io.discovery.stem_clashes`.
    """
    files = matching_files(path, tag=tag, ignore=ignore)
    clash = stem_clashes(files)
    if clash:
        listing = "; ".join(", ".join(p.name for p in group) for group in clash.values())
        extra = [p.name for group in clash.values() for p in group[1:]]
        # ``ignore`` drops every name that contains a pattern: offered only when it drops these alone (trial
        # A2: ignore=['1.fits.gz'] would drop 11.fits.gz too).
        alone = all(sum(e in p.name for p in files) == 1 for e in extra)
        how = f"move the others away, or leave them out with ignore={extra!r}" if alone else "move the others away"
        raise ValueError(
            f"several files in folder {str(files[0].parent)!r} have the same name but for their FITS or compression "
            f"ending ({listing}): one exposure stored twice (one compressed?), which would be stacked as two. Keep "
            f"one: {how} (batch refuses them too: they would write the same output file)"
        )
    return files


def _check_folder(path):
    if path is None:
        raise TypeError("path is None; expected the folder that holds the FITS files")
    if isinstance(path, (list, tuple)):
        raise TypeError(
            f"path is a {type(path).__name__} of {len(path)} item(s); expected one folder that holds the FITS "
            "files (choose files with tag= and ignore=), or read files one by one with read_frame(path)"
        )
    folder = Path(os.fspath(path)).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(
            f"{str(folder)!r} is a file, not a folder; pass the folder that holds the FITS files "
            "and choose files with tag="
        )
    return folder


def _no_match_message(folder, tag, patterns, fits_files):
    if not fits_files:
        # (A night's top folder, its frames in subfolders: "tag ''" named nothing the user gave.)
        message = f"no FITS file in folder {str(folder)!r} (subfolders are not searched"
        holding = _subfolders_with_fits(folder)
        if holding:
            shown = ", ".join(f"{name}/" for name in holding[:6]) + (", ..." if len(holding) > 6 else "")
            message += f"; these hold FITS files: {shown}"
        return message + ")"
    message = f"no FITS file in folder {str(folder)!r} has a name containing tag {tag!r}"
    if patterns:
        message += f" and none of {patterns!r}"
    message += f" ({len(fits_files)} FITS file{'s' if len(fits_files) != 1 else ''} in the folder"
    shown = ", ".join(p.name for p in fits_files[:5])
    message += f", e.g. {shown}" + (", ..." if len(fits_files) > 5 else "")
    return message + ")"


def _subfolders_with_fits(folder):
    """Names of ``folder``'s subfolders (sorted) that hold FITS files directly."""
    try:
        subs = sorted(p for p in folder.iterdir() if p.is_dir())
    except OSError:
        return []
    return [p.name for p in subs if find_fits_files(p)]


# ------------------------------------------------------------------ crop
def _crop_pair(crop_bds):
    """Check ``crop_bds`` as far as possible without knowing the frame height."""
    if crop_bds is None:
        return 0, None
    if isinstance(crop_bds, str) or not hasattr(crop_bds, "__len__") or len(crop_bds) != 2:
        raise TypeError(f"crop_bds must be a (start, stop) pair of row indices; got {crop_bds!r}")
    start, stop = crop_bds
    for value in (start, stop):
        if value is not None and (not isinstance(value, numbers.Integral) or isinstance(value, bool)):
            raise TypeError(f"crop_bds must hold integers or None; got {crop_bds!r}")
    start = 0 if start is None else int(start)
    stop = None if stop is None else int(stop)
    if start < 0 or (stop is not None and stop < 0):
        raise ValueError(f"crop_bds {tuple(crop_bds)!r} is out of range: row indices must be >= 0")
    if stop is not None and stop < start:
        raise ValueError(f"crop_bds {tuple(crop_bds)!r} is reversed: start must be below stop")
    if stop is not None and stop == start:
        raise ValueError(f"crop_bds {tuple(crop_bds)!r} is empty: it keeps no row")
    return start, stop


def _crop_rows(start, stop, n_rows, source):
    stop = n_rows if stop is None else stop
    if start >= n_rows or stop > n_rows:
        raise ValueError(
            f"crop_bds ({start}, {stop}) is out of range: the trimmed, oriented frame "
            f"{source} has {n_rows} rows (valid 0..{n_rows})"
        )
    return slice(start, stop)


# ------------------------------------------------------------------ reading
def _iter_frames(files, reader, start, stop):
    """Yield ``(path, cropped ADU view, frame)`` one file at a time."""
    for path in files:
        frame = reader.read(path)
        rows = _crop_rows(start, stop, frame.data.shape[0], path.name)
        yield path, frame.data[rows], frame


def unit_of(gain, header=None) -> str:
    """The unit of a frame read with this (instrument) gain: ``"electron"`` when known, else its ``header``'s
    ``BUNIT`` when that is a rate or a flux (``"e-/s"``: no gain is applied to it), else ``"adu"``."""
    if gain is not None:
        return "electron"
    return (_scaled_unit(header) if header is not None else "") or "adu"


def read_frame(path: str | os.PathLike, instrument: str | Instrument = "generic",
               crop: tuple[int | None, int | None] | None = None, **instrument_options) -> FrameArray:
    """Read one exposure: the frame reader of the loaders, the dashboard and batch.

    The instrument selects the image HDU, trims and turns it (dispersion
    along columns); rows ``crop[0]:crop[1]`` are kept and the data are
    multiplied by the gain when it is known, so they are in electrons.

    Parameters
    ----------
    path : str or os.PathLike
    instrument : str or Instrument
        A name from :func:`~specwidgets.io.instruments.known_instruments`, an
        :class:`~specwidgets.io.instruments.Instrument` or a resolved reader.
    crop : (int, int or None), optional
        Rows to keep of the trimmed, turned frame (all when None).
    **instrument_options
        Passed to the instrument (``gain=``, ``read_noise=``, ...).

    Returns
    -------
    FrameArray
        float64, with ``gain`` (1.0 once in electrons, None in ADU),
        ``read_noise`` (electrons or None), ``noise_source``, ``unit`` and
        the file's ``header``.
    """
    start, stop = _crop_pair(crop)
    reader = resolve_instrument(instrument, **instrument_options)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"FITS file {path} does not exist")
    ((_, data, frame),) = list(_iter_frames([path], reader, start, stop))
    return _as_frame_array(data, frame)


def arc_orientation(arc_paths, instrument="generic", **instrument_options):
    """``(options, note)``: the instrument options that turn frames whose arc lines lie along the rows.

    For an instrument that does not fix the frames' orientation (``generic``:
    none given), an arc frame's ``DISPAXIS`` card decides for every frame;
    without one, the arc frames
    ``arc_paths`` (one path or several) are read as stored and summed (each
    lamp's lines count); when the sum's lines lie along the rows
    (:func:`~specwidgets.core.lines.lines_along_rows`), the frames want
    ``dispersion_axis=0``, and ``note`` says so. An arc's card that its
    own lines contradict (read by it, they lie along the rows; read the
    other way, not) is not followed, and ``note`` says so too. Otherwise ``({}, "")``:
    the instrument's own rule, or arc frames that cannot be read or differ
    in shape (their reading later says what is wrong). The page's folder
    loader and batch both ask this before reading any frame, so crops and
    masks count the rows of the turned frames.
    """
    options, note, _ = _arc_orientation(arc_paths, instrument, **instrument_options)
    return options, note


def _arc_orientation(arc_paths, instrument="generic", **instrument_options):
    """:func:`arc_orientation`, and third what turned the frames when an arc's card did (``"the DISPAXIS = 2
    card of arc_1.fits"``), else "": batch names it when the turned frames' lines then lie across the frame.

    A card the arcs' own lines contradict is not followed (trial F1: frames stored as specwidgets wants them
    with a ``DISPAXIS = 2`` card were turned, and every fit failed): read by the card, the lines lie along
    the rows, and read the other way they do not. The frames are then read the other way, and ``note`` names
    the card and the option that follows it.
    """
    from specwidgets.core.lines import _lines_across_rows, lines_along_rows

    reader = resolve_instrument(instrument, **instrument_options)
    key = getattr(reader, "dispersion_keyword", None)
    paths = [arc_paths] if isinstance(arc_paths, (str, os.PathLike)) else list(arc_paths)
    if not key or not paths:
        return {}, "", ""
    total, card = None, None
    for path in paths:
        try:
            frame = reader.read(path)
        except (OSError, ValueError):
            return {}, "", ""
        if card is None and key in frame.header:
            # The arcs say how they lie: every frame follows them (science frames often lack the card).
            card = (Path(path).name, frame.header[key], reader._transposes(frame.header, Path(path)))
        data = np.asarray(frame.data, dtype=float)
        if total is not None and data.shape != total.shape:
            return ({"dispersion_axis": 0 if card[2] else 1}, "", _card_text(key, card)) if card else ({}, "", "")
        # Each frame less its median: a bias level left in adds no line.
        data = data - np.nanmedian(data)
        total = data if total is None else total + data
    names = ", ".join(Path(p).name for p in paths[:3]) + (", ..." if len(paths) > 3 else "")
    if card is not None:
        name, value, transposed = card
        # (Lines wider than a row: a correct card's frames with an arc of 1-2 lines and 8-12 hot columns
        # showed those as bright rows, and every frame was turned; trial A3.)
        if not (lines_along_rows(total) and not lines_along_rows(total.T)
                and _lines_across_rows(total, resolved=True) >= 3):
            return {"dispersion_axis": 0 if transposed else 1}, "", _card_text(key, card)
        return {"dispersion_axis": 1 if transposed else 0}, (
            f"the {key} = {value} card of {name} says the wavelength runs along the image's "
            f"{'y' if transposed else 'x'} axis, but the arc's lines ({names}) show it along "
            f"{'x' if transposed else 'y'}: the card is not followed, every frame is read "
            f"{'as stored (dispersion_axis=1)' if transposed else 'transposed (dispersion_axis=0)'}; pass "
            f"dispersion_axis={0 if transposed else 1} to follow the card"
        ), ""
    if not lines_along_rows(total):
        return {}, "", ""
    return {"dispersion_axis": 0}, (
        f"the arc's lines lie along the rows ({names}: wavelength changes with the row, and no {key} card says "
        "otherwise): every frame is read transposed, so that wavelength runs along the columns; pass "
        "dispersion_axis=1 to read them as stored"
    ), ""


def _card_text(key, card):
    """What turned the frames by an arc's card (``"the DISPAXIS = 2 card of arc_1.fits"``), or "" if it did not."""
    name, value, transposed = card
    return f"the {key} = {value} card of {name}" if transposed else ""


def input_gain(instrument, frame):
    """The gain (e-/ADU) that took ``frame`` from ADU to electrons, as ``instrument`` read it; None if not known.

    ``frame`` is a :func:`read_frame` result: in electrons its ``gain`` is 1,
    and the file's own gain is recorded in outputs as ``SWINGAIN``.
    """
    reader = resolve_instrument(instrument) if isinstance(instrument, (str, Instrument)) else instrument
    if getattr(frame, "unit", None) != "electron" or not hasattr(reader, "gain_keyword"):
        return None
    if "gain" not in getattr(reader, "given", ()) and _electron_unit(frame.header):
        return 1.0  # in electrons already (BUNIT): the header's GAIN was not applied
    value, _ = reader._header_or_default(frame.header, reader.gain_keyword, reader.gain, "gain")
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _as_frame_array(data, frame, out=None):
    """The cropped ADU view ``data`` of ``frame`` in electrons (when the gain is known), with its metadata.

    One multiply straight from the file's dtype (into ``out`` when given): no
    float64 temporary.
    """
    scale = 1.0 if frame.gain is None else frame.gain
    if out is None:
        out = np.multiply(data, scale, dtype=np.float64)
    else:
        np.multiply(data, scale, out=out, dtype=np.float64, casting="unsafe")
    return FrameArray(
        out,
        gain=None if frame.gain is None else 1.0,
        read_noise=frame.read_noise,
        noise_source=getattr(frame, "noise_source", ""),
        unit=unit_of(frame.gain, frame.header),
        header=frame.header,
        n_combined=1.0,
    )


def _metadata(path, frame):
    return {
        "file": path.name,
        "path": path,
        "hdu": getattr(frame, "hdu", None),
        "header": frame.header,
        "gain": frame.gain,
        "read_noise": frame.read_noise,
        "unit": frame.unit if isinstance(frame, FrameArray) else unit_of(frame.gain, frame.header),
        "noise_source": getattr(frame, "noise_source", ""),
    }


def noise_of_frames(metadata, reader_name, mode=None):
    """The noise model of loaded frames (one per exposure, or combined by ``mode``).

    Parameters
    ----------
    metadata : list of dict
        One per frame, as the loaders return it.
    reader_name : str
        Instrument name, for the source text.
    mode : {None, "median", "mean", "sum"}
        None: the frames stay separate exposures. Otherwise how they were
        combined: the sum of N frames has N times the sky but sqrt(N) times the
        read noise; the mean of N has gain N times the frames' (electrons per
        data unit) and read noise sqrt(N) times theirs (so the variance per
        data value falls N times); the median is treated as a mean of
        :func:`~specwidgets.core.frames.median_frames` frames (about ``2N/pi``), which the
        source text calls approximate.

    Returns
    -------
    dict
        ``gain``, ``read_noise``, ``noise_source``, ``unit``, ``header``,
        ``n_combined``: the :class:`~specwidgets.core.frames.FrameArray`
        attributes (``n_combined``: 1 for separate exposures and a sum, ``n``
        for a mean, :func:`~specwidgets.core.frames.median_frames` for a median).
    """
    unit = metadata[0]["unit"]
    gain = 1.0 if unit == "electron" else None
    known = [m["read_noise"] for m in metadata if m["read_noise"] is not None]
    read_noise = None
    notes = []
    if known:
        read_noise = float(np.median(known))
        if len(set(known)) > 1:
            notes.append(f"median of read noises {min(known):.3g}-{max(known):.3g} e-")
        if len(known) < len(metadata):
            notes.append(f"read noise known for {len(known)} of {len(metadata)} frames")
    sources = sorted({m.get("noise_source", "") for m in metadata} - {""})
    n = len(metadata)
    n_eff = 1.0
    if mode is not None and n > 1:
        n_eff = float(n) if mode != "median" else median_frames(n)
        if read_noise is not None:
            read_noise *= float(np.sqrt(n if mode == "sum" else n_eff))
        if mode != "sum" and gain is not None:
            gain *= n_eff
        notes.append(f"{mode} of {n} frames" + (", noise approximate" if n_eff != n else ""))
    source = ""
    if sources:
        source = f"{'; '.join(sources)} of {reader_name} frames"
    elif gain is not None or read_noise is not None:
        source = f"{reader_name} frames"
    if source and notes:
        source += f" ({'; '.join(notes)})"
    return {"gain": gain, "read_noise": read_noise, "noise_source": source, "unit": unit, "header": metadata[0]["header"],
            "n_combined": 1.0 if mode == "sum" else float(n_eff)}


def _check_one_kind(metadata):
    """How many kinds; warn when the frames' type cards (IMAGETYP, OBSTYPE, ...) name more than one kind: a stack is one
    kind (bias, arc, flat, dark or science); fit as science, biases passed for a sky of 0 with no word."""
    from specwidgets.core._warnings import warn_at_caller
    from specwidgets.io.folder import frame_kind

    kinds = {}
    for meta in metadata:
        kinds.setdefault(frame_kind(meta.get("header"))[0] or "science", []).append(meta["file"])
    if len(kinds) > 1:
        listing = "; ".join(f"{len(names)} {kind} ({names[0]}{', ...' if len(names) > 1 else ''})"
                            for kind, names in kinds.items())
        warn_at_caller(
            f"the frames read are of {len(kinds)} kinds by their type cards (IMAGETYP, OBSTYPE, ...): {listing}. "
            "One stack is one kind: choose the files with tag= or ignore=",
            UserWarning,
        )
    return len(kinds)


def _check_same_shape(shapes, files):
    if len(set(shapes)) > 1:
        groups = {}
        for path, shape in zip(files, shapes):
            groups.setdefault(shape, []).append(path.name)
        listing = "; ".join(f"{shape} in {', '.join(names)}" for shape, names in groups.items())
        raise ValueError(f"the matching frames differ in shape after trimming and cropping: {listing}")


def _check_same_unit(metadata):
    units = {m["unit"] for m in metadata}
    if len(units) > 1:
        adu = [m["file"] for m in metadata if m["unit"] == "adu"]
        raise ValueError(
            f"some frames have no gain and would stay in ADU while the others are in electrons: "
            f"{', '.join(adu)}; pass gain=... to set one for all"
        )


def _print_table(metadata, shapes):
    print(f"{'#':>3}  {'file':<45} {'shape':>12}  {'gain':>6}  {'rdnoise':>7}  unit")
    for i, (meta, shape) in enumerate(zip(metadata, shapes)):
        gain = "-" if meta["gain"] is None else f"{meta['gain']:.3g}"
        noise = "-" if meta["read_noise"] is None else f"{meta['read_noise']:.3g}"
        print(f"{i:>3}  {meta['file']:<45} {str(shape):>12}  {gain:>6}  {noise:>7}  {meta['unit']}")


def _load(path, tag, instrument, ignore, crop_bds, debug, instrument_options, combine=None):
    """Shared core: read matching frames into a stack, or a running mean.

    ``combine`` None builds the full float64 stack; ``"mean"`` and ``"sum"``
    keep only a running sum, so combining many frames does not hold them all
    at once; ``"median"`` returns the median image, computed from a stack kept
    in the files' own type (raw 16-bit data: a quarter of a float64 stack).
    Returns ``(array, metadata, reader name)``.
    """
    if combine == "median":
        return _load_median(path, tag, instrument, ignore, crop_bds, debug, instrument_options)
    start, stop = _crop_pair(crop_bds)
    reader = resolve_instrument(instrument, **instrument_options)
    files = _frame_files(path, tag, ignore)

    out, shapes, metadata = None, [], []
    for i, (file, data, frame) in enumerate(_iter_frames(files, reader, start, stop)):
        shapes.append(data.shape)
        metadata.append(_metadata(file, frame))
        if out is None:
            out = np.zeros(data.shape if combine in ("mean", "sum") else (len(files), *data.shape), np.float64)
        if data.shape != shapes[0]:
            # Keep reading, storing nothing, so the error can list every shape.
            continue
        # One multiply-add straight from the file's dtype: no float64 temporary.
        if combine in ("mean", "sum"):
            out += _as_frame_array(data, frame)
        else:
            _as_frame_array(data, frame, out=out[i])
    _check_same_shape(shapes, files)
    _check_same_unit(metadata)
    _check_one_kind(metadata)
    if debug:
        _print_table(metadata, shapes)
    return out, metadata, getattr(reader, "name", "reader")


#: Rows per block of the median combination (its float64 work array is n_frames x this x n_cols).
_MEDIAN_BLOCK_ROWS = 64


def _load_median(path, tag, instrument, ignore, crop_bds, debug, instrument_options):
    """The median of the matching frames (in electrons when the gain is known), block by block.

    The same numbers as converting every frame to float64 and taking
    ``np.median(stack, axis=0)``: each block converts the stored values
    exactly as the full stack would, and the median is taken per pixel. Only
    the raw stack (in the files' dtype, widened exactly if they differ) and
    one float64 block are held, not a float64 copy of every frame.
    """
    start, stop = _crop_pair(crop_bds)
    reader = resolve_instrument(instrument, **instrument_options)
    files = _frame_files(path, tag, ignore)
    stack, scales, shapes, metadata = None, [], [], []
    for i, (file, data, frame) in enumerate(_iter_frames(files, reader, start, stop)):
        shapes.append(data.shape)
        metadata.append(_metadata(file, frame))
        scales.append(1.0 if frame.gain is None else frame.gain)
        if stack is None:
            stack = np.empty((len(files), *data.shape), data.dtype)
        if data.shape != shapes[0]:
            continue  # keep reading, storing nothing, so the error can list every shape
        wider = np.result_type(stack.dtype, data.dtype)
        if wider != stack.dtype:  # a safe (exact) widening: the values are unchanged
            stack = stack.astype(wider)
        stack[i] = data
    _check_same_shape(shapes, files)
    _check_same_unit(metadata)
    mixed = _check_one_kind(metadata) > 1
    if debug:
        _print_table(metadata, shapes)
    n_rows = stack.shape[1]
    out = np.empty(stack.shape[1:], np.float64)
    block = np.empty((len(files), min(_MEDIAN_BLOCK_ROWS, n_rows), stack.shape[2]), np.float64)
    # Each frame's and the median's column profile, to tell what the median lost.
    check_lost = len(files) >= 3
    profiles = np.zeros((len(files) + 1, stack.shape[2]))
    for r0 in range(0, n_rows, _MEDIAN_BLOCK_ROWS):
        r1 = min(r0 + _MEDIAN_BLOCK_ROWS, n_rows)
        work = block[:, : r1 - r0]
        for i, scale in enumerate(scales):
            np.multiply(stack[i, r0:r1], scale, out=work[i], dtype=np.float64, casting="unsafe")
        if check_lost:
            profiles[:-1] += _block_profile(work) * (r1 - r0)
        out[r0:r1] = np.median(work, axis=0, overwrite_input=True)
        if check_lost:
            profiles[-1] += _block_profile(out[None, r0:r1])[0] * (r1 - r0)
    if check_lost:
        lost = lost_lines(profiles[:-1] / n_rows, profiles[-1] / n_rows)
        # (One line may differ between frames of one lamp: a saturated one, a ray along it.)
        if len(lost) >= 3 and not mixed:  # (frames of other kinds lose lines too: said above)
            from specwidgets.core._warnings import warn_at_caller

            where = ", ".join(str(c) for c in lost[:6]) + (", ..." if len(lost) > 6 else "")
            warn_at_caller(
                f"the median of these {len(files)} frames loses {len(lost)} line(s) that single frames hold (near "
                f"columns {where}): arcs of different lamps? mode='sum' keeps every frame's lines (then subtract "
                f"{len(files)} x the bias)"
            )
    return out, metadata, getattr(reader, "name", "reader")


def _block_profile(work):
    """Each frame's column profile over a block of rows: the median of three row groups' means
    (a cosmic ray lands in one group; a lamp line is in all)."""
    n = work.shape[1]
    if n < 3:
        return work.mean(axis=1)
    cuts = [0, n // 3, 2 * n // 3, n]
    means = np.stack([work[:, a:b].mean(axis=1) for a, b in zip(cuts[:-1], cuts[1:])])
    return np.median(means, axis=0)


#: A frame's line is lost when it stands this many robust sigmas above the
#: frame's smooth profile, and the combination keeps less than half of it.
LOST_LINE_SIGMA = 10.0


def lost_lines(frames, combined, width=15):
    """Columns of the lines that single frames' profiles hold and ``combined`` keeps less than half of.

    ``frames`` is ``(n_frames, n_cols)`` (column profiles), ``combined`` the
    combination's profile. Each profile minus its running median over
    ``width`` columns holds the lines; a line (a run of columns at least
    :data:`LOST_LINE_SIGMA` noise sigmas up, and 5 % of the frame's brightest
    line) is lost where the combination keeps next to none of it: less than
    0.15 times the share it keeps of that frame's lines (the median ratio),
    or, when it keeps less than a quarter of most of them (a lamp the other
    frames lack), less than half. Returns one column per lost line.

    Examples
    --------
    >>> cols = np.arange(300)
    >>> lamp = lambda centres: sum(1000 * np.exp(-0.5 * ((cols - c) / 1.5) ** 2) for c in centres)
    >>> frames = np.stack([100 + lamp([50, 120]), 100 + lamp([200]), 100 + lamp([260])])
    >>> lost_lines(frames, np.median(frames, axis=0))
    [50, 120, 200, 260]
    >>> lost_lines(frames, frames.sum(axis=0))
    []
    """
    from scipy.ndimage import median_filter

    from specwidgets.core.lines import robust_noise
    from specwidgets.core.sky.quality import _ranges

    frames = np.atleast_2d(np.asarray(frames, float))
    combined = np.asarray(combined, float)
    lines_c = combined - median_filter(combined, width, mode="nearest")
    lost = np.zeros(frames.shape[1], bool)
    for profile in frames:
        lines = profile - median_filter(profile, width, mode="nearest")
        sigma = robust_noise(profile)  # from its column-to-column differences: robust to the lines
        # Lines that matter: well above the noise, and not faint beside the frame's brightest.
        strong = (lines > LOST_LINE_SIGMA * max(sigma, 1e-12)) & (lines > 0.05 * lines.max())
        if not strong.any():
            continue
        # The combination keeps a frame's lines at the frames' typical level
        # (one lamp exposed 10x longer than the others keeps a tenth to a third
        # of its heights, saturated lines more), but of a line another lamp
        # lacks, next to nothing.
        kept = np.median(lines_c[strong] / lines[strong])
        lost |= strong & (lines_c < (0.15 * kept if kept >= 0.25 else 0.5) * lines)
    return [int(a + np.argmax(frames[:, a:b].max(axis=0))) for a, b in _ranges(lost)]


def collect_images_array(
    path: str | os.PathLike,
    tag: str = "",
    instrument: str | Instrument = "generic",
    ignore: str | Sequence[str] = (),
    crop_bds: tuple[int | None, int | None] | None = (0, None),
    return_metadata: bool = False,
    debug: bool = False,
    **instrument_options,
) -> FrameArray | tuple[FrameArray, list[dict]]:
    """Load every matching FITS file of a folder as one float64 stack.

    Parameters
    ----------
    path : str or os.PathLike
        Folder holding the files (not searched recursively). Files ending in
        ``.fits``, ``.fit`` or ``.fts`` (any case), each optionally followed by
        ``.gz``, ``.bz2`` or ``.fz``, are read, in file-name order.
    tag : str
        Only files whose name contains this text (case-sensitive).
    instrument : str, Instrument or callable
        How to read a frame: ``"generic"``, ``"goodman"``, ``"kosmos"``, any
        name added with :func:`~specwidgets.io.instruments.register_instrument`,
        an :class:`~specwidgets.io.instruments.Instrument`, or a reader function.
    ignore : str or iterable of str
        Skip files whose name contains any of these.
    crop_bds : (int, int or None)
        Keep rows ``start:stop`` (``None`` = to the end) of each trimmed,
        oriented frame.
    return_metadata : bool
        Also return one dict per exposure (see Returns).
    debug : bool
        Print a table of the files read.
    **instrument_options
        ``hdu``, ``dispersion_axis``, ``trimsec``, ``gain``, ``read_noise``:
        override the instrument's rules (see
        :meth:`~specwidgets.io.instruments.Instrument.with_options`).

    Returns
    -------
    images : specwidgets.core.frames.FrameArray
        float64 ``(n_exposures, n_rows, n_cols)``, dispersion along columns;
        in electrons when the gain is known, else in ADU. Its ``gain`` (1.0
        in electrons, None in ADU), ``read_noise`` (electrons: the median of
        the frames' known values, or None), ``noise_source``, ``unit`` and
        ``header`` (the first frame's) attributes give the noise model.
    metadata : list of dict
        Only with ``return_metadata=True``. Keys: ``file`` (name), ``path``
        (:class:`pathlib.Path`), ``hdu`` (index read), ``header`` (an
        :class:`astropy.io.fits.Header`: primary cards then image-HDU cards,
        so ``meta["header"]["DATE-OBS"]`` works), ``gain`` (e-/ADU or None),
        ``read_noise`` (electrons or None) and ``unit`` (``"electron"`` or
        ``"adu"``).

    Raises
    ------
    FileNotFoundError
        Missing folder, or no file matching ``tag``.
    NotADirectoryError
        ``path`` is a file.
    ValueError
        Unknown instrument, bad ``crop_bds``, unreadable FITS file, file with
        no 2D image, frames of different shapes, frames mixing electrons
        and ADU, or files that are one exposure stored twice (``x.fits`` and
        ``x.fits.gz``). Each message names the file or value at fault.

    Examples
    --------
    >>> from specwidgets.io.sample_data import goodman_path
    >>> science = collect_images_array(
    ...     goodman_path() / "spec_PKSJ0049_5738", instrument="goodman", crop_bds=(680, 800)
    ... )  # doctest: +SKIP
    >>> science.shape  # doctest: +SKIP
    (2, 120, 2030)
    """
    images, metadata, name = _load(path, tag, instrument, ignore, crop_bds, debug, instrument_options)
    images = FrameArray(images, **noise_of_frames(metadata, name))
    return (images, metadata) if return_metadata else images


def average_matching_files(
    path: str | os.PathLike,
    tag: str = "",
    instrument: str | Instrument = "generic",
    ignore: str | Sequence[str] = (),
    crop_bds: tuple[int | None, int | None] | None = (0, None),
    mode: str = "median",
    return_metadata: bool = False,
    debug: bool = False,
    **instrument_options,
) -> FrameArray | tuple[FrameArray, list[dict]]:
    """Combine every matching FITS file of a folder into one image.

    Takes the same arguments as :func:`collect_images_array`, plus ``mode``.

    Parameters
    ----------
    mode : {"median", "mean", "sum"}
        How to combine the frames pixel by pixel. ``"median"`` (the default)
        suits biases and repeated exposures of one source; ``"sum"`` suits
        arcs taken with different lamps, whose lines each appear in only one
        frame (a median would drop them); ``"mean"`` averages. ``"mean"`` and
        ``"sum"`` keep a running sum, so they need the memory of one frame only.

    Returns
    -------
    image : specwidgets.core.frames.FrameArray
        float64 ``(n_rows, n_cols)``, with the combination's noise model as
        attributes (see :func:`noise_of_frames`). A sum of N frames holds N
        times their bias level: subtract ``N * bias`` from it (or bias-subtract
        each frame first), not one bias.
    metadata : list of dict
        Only with ``return_metadata=True``; as in :func:`collect_images_array`.

    Raises
    ------
    ValueError
        For a ``mode`` other than ``"median"``, ``"mean"`` or ``"sum"``, and as
        :func:`collect_images_array` does.

    Examples
    --------
    >>> from specwidgets.io.sample_data import goodman_path
    >>> bias = average_matching_files(
    ...     goodman_path() / "bias", instrument="goodman", crop_bds=(680, 800)
    ... )  # doctest: +SKIP
    >>> bias.shape  # doctest: +SKIP
    (120, 2030)
    """
    if mode not in COMBINE_MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes are {', '.join(map(repr, COMBINE_MODES))}")
    if mode in ("mean", "sum"):
        total, metadata, name = _load(path, tag, instrument, ignore, crop_bds, debug, instrument_options, combine=mode)
        image = total / len(metadata) if mode == "mean" else total
    else:
        image, metadata, name = _load(path, tag, instrument, ignore, crop_bds, debug, instrument_options, combine="median")
    image = FrameArray(image, **noise_of_frames(metadata, name, mode=mode))
    return (image, metadata) if return_metadata else image
