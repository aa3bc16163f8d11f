"""Read a folder of arc, bias and science frames, as the dashboard's folder form does.

The frames are found by name tags (:func:`~specwidgets.io.discovery.find_frames`)
and, for the default arc and bias tags, by their type cards (:func:`frame_kind`),
and read one file at a time by :func:`~specwidgets.io.loading.read_frame`,
the frame reader of the loaders and batch too. A file that cannot be read
is listed in :attr:`FolderData.skipped`, not raised.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..core.flat import FLAT_NORMS, FlatNoise, usable_flat
from ..core.frames import FrameArray, binning_text, median_frames, saturated_pixels, with_readout_of
from .discovery import find_frames, stem_clashes
from .instruments import _default_image, _is_2d_image, _merged_header, known_instruments
from .loading import _metadata, arc_orientation, input_gain, noise_of_frames, read_frame

__all__ = ["FolderData", "calibration_kind", "calibration_reason", "frame_kind", "load_folder"]


@dataclass
class FolderData:
    """What :func:`load_folder` read: bias-subtracted frames and what went wrong on the way.

    Attributes
    ----------
    science : (n_exposures, n_rows, n_cols) FrameArray
        Carries the science frames' ``gain``, ``read_noise`` and
        ``noise_source`` (see :mod:`specwidgets.core.frames`).
    arc : (n_rows, n_cols) array
        The sum of the arc frames, each minus the bias (arcs of different
        lamps keep all their lines), or their median (``arc_combine``).
    bias : (n_rows, n_cols) array or None
    read_noise : float or None
        Electrons, from the science headers (None when unknown: the fit
        estimates it).
    unit : str
        ``"electron"`` or ``"adu"``.
    files : dict
        Role (``"arc"``, ``"bias"``, ``"flat"``, ``"science"``) -> relative paths read.
    skipped : list of str
        ``"path: reason"`` for every file left out.
    headers : list of astropy.io.fits.Header
        Each science frame's header (its observation keywords go into the
        exported files).
    input_gains : list of float or None
        Each science frame's gain that took it from ADU to electrons (None
        when it stayed in ADU): ``SWINGAIN`` in the exported files.
    instrument_options : dict
        Options the frames were read with beyond the instrument's own rule:
        ``{"dispersion_axis": 0}`` when the arc's lines lay along the rows
        (:func:`~specwidgets.io.loading.arc_orientation`).
    notes : list of str
        What was decided for the user (the frames turned).
    flat : (n_rows, n_cols) array or None
        The normalised flat the science frames were divided by (NaN where
        unusable), or None.
    flat_norm : str or None
        Its normalisation (None without flats).
    flat_noise : specwidgets.core.flat.FlatNoise or None
        The flat's own noise, which exports add to ``VAR`` (None without flats).
    """

    science: np.ndarray
    arc: np.ndarray
    bias: np.ndarray | None
    read_noise: float | None
    unit: str
    files: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    arc_combine: str = "sum"
    headers: list = field(default_factory=list)
    input_gains: list = field(default_factory=list)
    instrument_options: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    flat: np.ndarray | None = None
    flat_norm: str | None = None
    flat_noise: FlatNoise | None = None


# Words in a file's path, or values of its frame-type card, that mark a
# calibration frame: "every other file" as science leaves these out.
_CALIBRATION_WORDS = ("flat", "dark")
# The cards observatories name a frame's type by (``ESO DPR TYPE``: ESO's
# HIERARCH card), in the order they are read.
_TYPE_CARDS = ("IMAGETYP", "OBSTYPE", "IMGTYPE", "IMTYPE", "FRAMETYP", "EXPTYPE", "ESO DPR TYPE")
# A type card's value -> the frame's kind: the first kind with a match, so a
# lamp flat ('LAMPFLAT', ESO's 'FLAT,LAMP') is a flat, not an arc. Letters
# anywhere in the value ('DOMEFLAT', 'Bias Frame', 'COMPARISON'), except
# 'LINE' and 'WAVE', which must be whole words ('LAMP,WAVE', 'Line').
_TYPE_KINDS = (
    ("flat", ("FLAT", "TWILIGHT"), ()),
    ("dark", ("DARK",), ()),
    ("bias", ("BIAS", "ZERO"), ()),
    ("arc", ("ARC", "COMP", "LAMP"), ("LINE", "WAVE", "WAVECAL")),
)


def _calibration_name(relative_path, words=_CALIBRATION_WORDS):
    """The calibration word in a file's path ("flat", "dark"; or one of ``words``), or "".

    Whole words of the path's names (``flat/``, ``dome_flat_3.fits``,
    ``Flats/``, ``darks.fits``), so ``darkcloud/`` or ``sci_flatfielded.fits``
    stay science.
    """
    found = re.split(r"[^a-z]+", relative_path.lower())
    return next((word for word in words if word in found or word + "s" in found), "")


def frame_kind(header):
    """The calibration kind a frame-type card names, and the card: ``("arc", "OBSTYPE = 'COMP'")``.

    Kinds are ``"flat"``, ``"dark"``, ``"bias"`` and ``"arc"``; ``("", "")``
    for a science frame, a frame without a type card, or no header. The
    cards read, in order: ``IMAGETYP``, ``OBSTYPE``, ``IMGTYPE``,
    ``IMTYPE``, ``FRAMETYP``, ``EXPTYPE`` and ESO's ``DPR TYPE``.

    Examples
    --------
    >>> from astropy.io import fits
    >>> frame_kind(fits.Header({"IMAGETYP": "Bias Frame"}))
    ('bias', "IMAGETYP = 'Bias Frame'")
    >>> frame_kind(fits.Header({"OBSTYPE": "LAMPFLAT"}))[0], frame_kind(fits.Header({"IMAGETYP": "comp"}))[0]
    ('flat', 'arc')
    >>> frame_kind(fits.Header({"IMAGETYP": "Line"}))[0], frame_kind(fits.Header({"IMAGETYP": "OBJECT"}))
    ('arc', ('', ''))
    """
    if header is None:
        return "", ""
    for card in _TYPE_CARDS:
        try:
            given = str(header.get(card, "")).strip()
        except (KeyError, ValueError):
            continue
        value = given.upper()
        if not value:
            continue
        words = re.split(r"[^A-Z]+", value)
        for kind, letters, whole in _TYPE_KINDS:
            if any(text in value for text in letters) or any(word in words for word in whole):
                return kind, f"{card} = {given!r}"
    return "", ""


#: The words by which a folder given to batch as science leaves out every
#: calibration frame (the page's form claims arcs and biases by their tags first).
ALL_CALIBRATION_WORDS = (*_CALIBRATION_WORDS, "bias", "zero", "arc", "lamp")


def calibration_reason(path, relative_path=None, header=None, words=_CALIBRATION_WORDS):
    """Why ``path`` is a calibration frame, not science (``"flat in its name"``, ``"IMAGETYP = 'BIAS'"``), or "".

    The rule by which "every other file" as science (the page's blank
    science tag, a folder given to batch as science) leaves a file out: a
    calibration word of :data:`_CALIBRATION_WORDS` as a whole word of
    ``relative_path`` (the path below the folder; default the file's name),
    or a frame-type card (``IMAGETYP``, ``OBSTYPE``, ...) naming a flat,
    dark, bias, zero, arc, comparison or lamp frame. ``words`` may be
    :data:`ALL_CALIBRATION_WORDS`; ``header`` spares a second read when the
    caller has it.

    Examples
    --------
    >>> calibration_reason("night/flats/f1.fits", "flats/f1.fits")
    'flat in its name'
    >>> calibration_reason("night/bias_01.fits", words=ALL_CALIBRATION_WORDS)
    'bias in its name'
    """
    return calibration_kind(path, relative_path, header, words)[1]


# A calibration word of a file's name -> the frame's kind.
_WORD_KINDS = {"flat": "flat", "dark": "dark", "bias": "bias", "zero": "bias", "arc": "arc", "lamp": "arc"}


def calibration_kind(path, relative_path=None, header=None, words=_CALIBRATION_WORDS):
    """``(kind, reason)``: what :func:`calibration_reason` says, and the kind of frame it names.

    ``kind`` is ``"flat"``, ``"dark"``, ``"bias"`` or ``"arc"`` (``"", ""``
    for a science frame): batch uses the folder's bias and arc frames.

    Examples
    --------
    >>> calibration_kind("night/zero_3.fits", words=ALL_CALIBRATION_WORDS)
    ('bias', 'zero in its name')
    """
    path = Path(path)
    word = _calibration_name(relative_path if relative_path is not None else path.name, words)
    if word:
        return _WORD_KINDS.get(word, ""), f"{word} in its name"
    return frame_kind(header if header is not None else _first_header(path))


def _first_header(path):
    """The header of the image the instruments read (primary, then the image's own, as they merge them);
    None if unreadable.

    The image is the one read when no ``hdu`` is given (:func:`~specwidgets.io.instruments._default_image`:
    a ``SCI`` extension before a preview in the primary): a frame-type card in its header counts (the primary
    alone was read when it held an image, a thumbnail's).
    """
    try:
        with fits.open(path, memmap=False) as hdul:
            return _merged_header(hdul, _image_index(hdul, Path(path)))
    except (OSError, ValueError, TypeError, IndexError, KeyError, EOFError):
        return None  # read later by its role, which says what is wrong


def _image_index(hdul, path):
    """The index of the HDU whose image a frame is read from: the instruments' choice, else the primary (the
    first extension when the primary holds no image: a .fz file)."""
    images = [i for i, h in enumerate(hdul) if _is_2d_image(h)]
    if not images:
        return 1 if not hdul[0].header.get("NAXIS") and len(hdul) > 1 else 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the frame's reading warns of what it passes over)
        try:
            return _default_image(hdul, images, path)
        except ValueError:
            return images[0]  # pieces of one exposure: refused when the frame is read


def _object_matches(header, tag):
    """Whether the frame's ``OBJECT`` card holds ``tag`` (case and spaces aside)."""
    if header is None or "OBJECT" not in header:
        return False
    squeeze = "".join
    return squeeze(str(tag).lower().split()) in squeeze(str(header["OBJECT"]).lower().split())


def folder_files(root, arc_tag="arc", bias_tag="bias", science_tag="", flat_tag=""):
    """The arc, bias, flat and science files of a folder chosen by tags: ``(roles, skipped)``.

    The one rule of the page's folder loader and of batch runs from a saved
    session. Roles are claimed in order (arc, bias, flat, science): a file claimed
    by an earlier role is not taken again. The tags ``"arc"``, ``"bias"``
    and ``"flat"`` also take the frames whose type card names an arc, a bias or a flat
    (:func:`frame_kind`: ``IMAGETYP = 'COMP'``, ``OBSTYPE = 'ZERO'``, ...);
    other tags match paths only. An empty bias (flat) tag means no bias
    (flat) frames; an empty science tag means every other file but the flats and
    darks ("flat"/"dark" as a word of the path, or a frame-type card such
    as ``IMAGETYP`` naming a calibration frame); a science tag also takes
    the frames whose ``OBJECT`` card holds it (calibration frames aside), for
    files numbered with the target in the header only. Outputs of specwidgets kept
    among the frames (``SWDONE`` in their header) are taken for no role.
    ``skipped`` says why each left-out file was left out.

    Raises
    ------
    FileNotFoundError
        When a role keeps no file, naming the tag and what the folder holds.
    """
    root = Path(root)

    def rel(path):
        return path.relative_to(root).as_posix()

    headers = {}

    def header_of(path):
        if path not in headers:
            headers[path] = _first_header(path)
        return headers[path]

    roles, claimed, skipped = {}, set(), []
    for role, tag in (("arc", arc_tag), ("bias", bias_tag), ("flat", flat_tag), ("science", science_tag)):
        if role in ("bias", "flat") and not tag:
            roles[role] = []
            continue
        found = [p for p in find_frames(root, tag or "") if p not in claimed]
        if role == "science" and tag:
            # Numbered files (night_0011.fits) name the target in OBJECT only: a tag that is
            # (part of) that name takes them too, calibration frames aside (trial J1).
            named = set(found)
            found = sorted(found + [p for p in find_frames(root, "")
                                    if p not in claimed and p not in named and _object_matches(header_of(p), tag)
                                    and not calibration_reason(p, rel(p), header_of(p))])
        if tag == role:
            # The default tags ("arc", "bias") also take the frames whose
            # type card says so: many instruments number their files
            # (r0012.fits) and name the type in IMAGETYP or OBSTYPE only.
            named = set(found)
            found = sorted(found + [p for p in find_frames(root, "")
                                    if p not in claimed and p not in named and frame_kind(header_of(p))[0] == role])
        files, left = [], []
        for path in found:
            header = header_of(path)
            if header is not None and ("SWDONE" in header or "SWMETHOD" in header):
                # A tag matched an output folder's name ("arc" in out_onearc/).
                why = "a specwidgets output (sky subtracted), not a raw frame"
            elif role == "science" and not tag:
                kind, why = calibration_kind(path, rel(path), header)
                if kind == "flat" and not flat_tag:
                    why = f"{why}, a flat, so not science (a flat tag, e.g. 'flat', divides the science frames by the flats)"
                elif why:
                    why = f"{why}, so not science (give a science tag to take it)"
            else:
                why = ""
            if why:
                left.append(path)
                skipped.append(f"{rel(path)}: {why}")
            else:
                files.append(path)
        if not files:
            if left:
                which = f"with {tag!r} in their path" if tag else "left"
                reasons = "; ".join(skipped[-len(left):][:4]) + ("; ..." if len(left) > 4 else "")
                raise FileNotFoundError(
                    f"no {role} frame in {str(root)!r}: the {len(left)} file(s) {which} are not {role} frames "
                    f"({reasons}); give a {role} tag that picks them"
                )
            every = find_frames(root, "")
            example = ", ".join(rel(p) for p in every[:6]) + (", ..." if len(every) > 6 else "")
            typed = f" or a type card (IMAGETYP, OBSTYPE, ...) naming {'an' if role == 'arc' else 'a'} {role} frame" \
                if tag == role else ""
            raise FileNotFoundError(
                f"no {role} frame: no FITS file in {str(root)!r} (or its subfolders) has {tag!r} in its path{typed}"
                + (" or its OBJECT card" if role == "science" else "")
                + (f"; it holds {len(every)}: {example}" if every else "; it holds no FITS file at all")
            )
        twice = list(stem_clashes(files, same_folder=True).values())
        if twice:
            # One exposure stored twice (x.fits and a compressed copy x.fits.gz), as the API loaders and batch
            # refuse it: stacked, its sky counts twice (trial F1).
            listing = "; ".join(", ".join(rel(p) for p in group) for group in twice)
            raise ValueError(
                f"{role} frames stored twice in {str(root)!r}: {listing} have the same name but for their FITS or "
                "compression ending (one exposure and a compressed copy?), which would be stacked as two. Keep "
                "one: move the others out of the folder."
            )
        roles[role] = files
        claimed.update(files)
    return roles, skipped


def load_folder(folder: str | os.PathLike, instrument: str = "generic", arc_tag: str = "arc", bias_tag: str = "bias",
                science_tag: str = "", crop_bds: tuple[int | None, int | None] | None = None,
                progress: Callable | None = None, arc_combine: str = "sum", flat_tag: str = "",
                flat_norm: str = "pixel") -> FolderData:
    """Read the arc, bias, flat and science frames of a folder, one file at a time.

    Parameters
    ----------
    folder : str or os.PathLike
    instrument : str
        A name from :func:`specwidgets.known_instruments`.
    arc_tag, bias_tag, science_tag : str
        Select the files (see :func:`find_frames`); the default ``"arc"`` and
        ``"bias"`` also take the frames whose type card (``IMAGETYP``,
        ``OBSTYPE``, ...) names an arc or a bias. An empty bias tag means
        no bias frames; an empty science tag takes every file that is
        neither arc nor bias, nor a flat or dark ("flat" or "dark" in its
        path, or a frame-type card such as ``IMAGETYP`` naming a calibration
        frame: these are listed in ``skipped``). A file matching an earlier
        role (arc, then bias) is never taken as science, and an output of
        specwidgets (a batch output or page export kept in the folder) is
        taken for no role.
    crop_bds : (int, int or None), optional
        Rows to keep of each trimmed, turned frame (all when None).
    progress : callable, optional
        Called as ``progress(done, total, relative_path)`` before each file
        and once more at the end (``relative_path`` None).
    arc_combine : {"sum", "median"}
        How the arc frames (each minus the bias) are combined: summed by
        default, so arcs of different lamps each keep their lines.
    flat_tag : str
        Selects the flat frames (blank, the default: no flat fielding; ``"flat"``
        also takes the frames whose type card names a flat). The science
        frames, minus the bias, are divided by the flats' median minus the
        bias, normalised by ``flat_norm`` (see
        :func:`~specwidgets.core.flat.normalise_flat`), as ``specwidgets batch
        --flat`` does; pixels where the flat is unusable become NaN. The arc
        is not flat-fielded.
    flat_norm : {"pixel", "column", "global"}

    Returns
    -------
    FolderData

    Raises
    ------
    FileNotFoundError, NotADirectoryError, ValueError
        With a message naming the folder, tag or files at fault. Unreadable
        files alone do not raise: they are listed in ``FolderData.skipped``,
        unless a role is left with no readable file.
    """
    if folder is None or not str(folder).strip():
        raise ValueError("type the folder that holds the FITS files")
    root = Path(str(folder).strip()).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{str(root)!r} is a file, not a folder")
    if instrument not in known_instruments():
        raise ValueError(f"unknown instrument {instrument!r}; choose one of {', '.join(known_instruments())}")
    if not arc_tag:
        raise ValueError("give a tag for the arc frames (text in their file or subfolder names)")
    if arc_combine not in ("sum", "median"):
        raise ValueError(f"arc_combine must be 'sum' or 'median'; got {arc_combine!r}")

    def rel(path):
        return path.relative_to(root).as_posix()

    if flat_norm not in FLAT_NORMS:
        raise ValueError(f"flat_norm must be one of {', '.join(FLAT_NORMS)}; got {flat_norm!r}")
    roles, skipped = folder_files(root, arc_tag, bias_tag, science_tag, flat_tag)
    # Frames whose wavelength runs down the rows are turned before any crop.
    options, note = arc_orientation(roles["arc"], instrument)
    notes = [note] if note else []

    total = sum(len(files) for files in roles.values())
    frames = {role: [] for role in roles}
    done = 0
    for role, files in roles.items():
        for path in files:
            if progress is not None:
                progress(done, total, rel(path))
            try:
                # One file at a time, by the instrument directly: selecting
                # it by name through the folder loaders listed the whole
                # folder for every file (quadratic: 33 s for 2000 files).
                image = read_frame(path, instrument, crop_bds, **options)
                frames[role].append((path, image, _metadata(path, image)))
            except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
                skipped.append(f"{rel(path)}: {exc}")
            done += 1
    if progress is not None:
        progress(total, total, None)

    for role in ("arc", "science"):
        if not frames[role]:
            raise ValueError(f"none of the {role} frames could be read or used:\n" + "\n".join(skipped))
    shapes, binnings = {}, {}
    for items in frames.values():
        for path, data, meta in items:
            shapes.setdefault(data.shape, []).append(rel(path))
            binnings.setdefault(data.shape, binning_text(meta["header"]))
    if len(shapes) > 1:
        # The binning cards say why, when they differ (as `science - bias` says it).
        listing = "; ".join(f"{shape[0]} x {shape[1]}" + (f" ({binnings[shape]})" if binnings[shape] else "")
                            + f": {', '.join(names)}" for shape, names in shapes.items())
        hint = (": frames of another binning? Use calibrations of the science frames' binning"
                if len(set(binnings.values()) - {""}) > 1 else "")
        raise ValueError(f"the frames differ in shape after trimming and cropping ({listing}){hint}")
    units = {}
    for role, items in frames.items():
        if role == "arc" and not frames["bias"]:
            continue  # (an arc's lines give the geometry alone: its unit binds nothing, unless a bias is taken off it)
        for path, _, meta in items:
            units.setdefault(meta["unit"], []).append(rel(path))
    if len(units) > 1:
        if set(units) == {"adu", "electron"}:
            raise ValueError(
                "some frames have a gain (so are in electrons) and some do not (so stay in ADU): "
                f"ADU in {', '.join(units.get('adu', []))}; pick the instrument that knows the gain"
            )
        listing = "; ".join(f"{unit} in {', '.join(paths)}" for unit, paths in units.items())
        raise ValueError(f"the frames are in different units ({listing}): use frames of one kind")

    bias = None
    if frames["bias"]:
        # The master bias's noise model too: subtracting it adds its read noise to the science frames'.
        bias = FrameArray(np.median(np.stack([d for _, d, _ in frames["bias"]]), axis=0),
                          **noise_of_frames([m for _, _, m in frames["bias"]], instrument, mode="median"))
    zero = 0.0 if bias is None else bias.view(np.ndarray)
    # Each arc minus the bias, then summed: lamps lit in one frame only keep their lines.
    arcs = np.stack([d for _, d, _ in frames["arc"]]) - zero
    arc = arcs.sum(axis=0) if arc_combine == "sum" else np.median(arcs, axis=0)
    flat = flat_noise = None
    if frames["flat"]:
        # As batch's calibrations: the flats' median minus the bias, normalised.
        raw_flat = np.median(np.stack([d for _, d, _ in frames["flat"]]), axis=0) - zero
        flat = usable_flat(raw_flat, flat_norm, [p for p, _, _ in frames["flat"]], "check the flat tag, or leave it blank")
        flat_noise = FlatNoise(np.asarray(raw_flat, dtype=float), median_frames(len(frames["flat"])), flat)
    science_meta = [m for _, _, m in frames["science"]]
    # Pixels at a frame's ceiling (saturated), found as read, before a flat spreads them (see the batch's
    # _calibrated): NaN, and said.
    saturated = [saturated_pixels(d) for _, d, _ in frames["science"]]
    pixels = np.stack([d for _, d, _ in frames["science"]]) - zero
    if flat is not None:
        pixels /= flat
    for k, at in enumerate(saturated):
        if at is not None:
            pixels[k][at] = np.nan
            notes.append(f"{rel(frames['science'][k][0])}: {int(np.count_nonzero(at))} pixel(s) at the frame's "
                         "ceiling (saturated: lower limits) set to NaN, out of the sky fit")
    science = FrameArray(pixels, **noise_of_frames(science_meta, instrument))
    if bias is not None:
        # As ``science - bias`` carries it (FrameArray arithmetic), without another pass over the pixels.
        science = with_readout_of(science, bias)
    return FolderData(
        science=science,
        arc=arc,
        bias=bias,
        read_noise=science.read_noise,
        unit=next(iter(units)),
        files={role: [rel(p) for p, _, _ in items] for role, items in frames.items()},
        skipped=skipped,
        arc_combine=arc_combine,
        headers=[m["header"] for m in science_meta],
        input_gains=[input_gain(instrument, d) for _, d, _ in frames["science"]],
        instrument_options=options,
        notes=notes,
        flat=flat,
        flat_norm=flat_norm if flat is not None else None,
        flat_noise=flat_noise,
    )
