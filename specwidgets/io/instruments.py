"""How to read one raw long-slit frame from each supported instrument.

An :class:`Instrument` says which HDU holds the image, how to turn the frame
so that the dispersion runs along columns (x) and the slit along rows (y),
which part of the detector to keep (the trim section), and where the gain
and read noise come from. A registry maps names such as ``"goodman"`` to
instruments so the loading functions can take ``instrument="goodman"``.

Conventions
-----------
* Trim sections are FITS sections ``"[x1:x2,y1:y2]"`` (1-based, inclusive,
  x = column) in the coordinates of the *raw* file, as header keywords such
  as ``TRIMSEC`` state them. They are applied before the frame is turned.
* :meth:`Instrument.read` returns the frame in ADU; the loading functions
  multiply by the gain.
* Read noise is always in electrons.

Examples
--------
>>> from specwidgets.io.instruments import get_instrument, known_instruments
>>> "goodman" in known_instruments()
True
>>> get_instrument("goodman").gain_keyword
'GAIN'
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..core._warnings import warn_at_caller
from ..core.frames import check_gain, check_read_noise
from ..core.inputs import check_image_size

__all__ = [
    "Frame",
    "GENERIC_GAIN_KEYWORDS",
    "GENERIC_READ_NOISE_KEYWORDS",
    "Instrument",
    "INSTRUMENT_OPTIONS",
    "KOSMOS_GAIN",
    "get_instrument",
    "known_instruments",
    "parse_fits_section",
    "register_instrument",
    "resolve_instrument",
]

#: Keyword arguments the loading functions pass on to the instrument.
INSTRUMENT_OPTIONS = ("hdu", "dispersion_axis", "trimsec", "gain", "read_noise", "bad_pixels")

#: EXTNAMEs of the data-quality images pipelines put beside the science image
#: (Gemini's ``DQ``, LCO's ``BPM``); a file holding one is told of ``bad_pixels``.
QUALITY_EXTNAMES = ("DQ", "BPM", "BADPIX")

#: Header keywords the ``generic`` instrument reads the gain (e-/ADU) from, first found wins (ESO's
#: ``CONAD``, its "conversion from ADU", is e-/ADU).
GENERIC_GAIN_KEYWORDS = ("GAIN", "EGAIN", "ESO DET OUT1 CONAD")

#: Header keywords holding the gain the other way up (ADU/e-), read when none of the gain keywords is
#: there: ESO's ``DET OUTi GAIN`` (its e-/ADU is ``CONAD``), an ``INVGAIN``.
GENERIC_INVERSE_GAIN_KEYWORDS = ("ESO DET OUT1 GAIN", "INVGAIN")

#: Header keywords the ``generic`` instrument reads the read noise (e-) from, first found wins.
GENERIC_READ_NOISE_KEYWORDS = ("RDNOISE", "READNOIS", "RON", "ESO DET OUT1 RON")

#: A card's unit (its comment, or a string value's text after the number) that says ADU (or counts).
_ADU_UNIT = re.compile(r"\b(adus?|dn|counts?)\b", re.IGNORECASE)
_ELECTRON_WORD = re.compile(r"(\be-|\belectrons?\b|\be\b)", re.IGNORECASE)
#: ... that says ADU per electron (a gain the other way up).
_PER_ELECTRON = re.compile(r"\b(adus?|dn|counts?)\s*(/|per)\s*(e-?|electrons?)(\b|$|\s)", re.IGNORECASE)
_NUMBER_AND_TEXT = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(.*)$")

#: How the ``HISTORY`` card of a frame whose overscan level was subtracted begins (batch's notes read it).
OVERSCAN_HISTORY = "specwidgets: overscan"

#: KOSMOS gain in e-/ADU; it is not written in the KOSMOS headers.
KOSMOS_GAIN = 0.6

# Header cards that describe the primary HDU's own bytes; once the primary
# and image headers are merged they would describe neither, so they go.
_PER_HDU_CARDS = ("CHECKSUM", "DATASUM")

_SECTION_RE = re.compile(r"^\[\s*(\*|\d+\s*:\s*\d+)\s*,\s*(\*|\d+\s*:\s*\d+)\s*\]$")


@dataclass(frozen=True)
class Frame:
    """One raw frame, turned and trimmed, still in ADU.

    Attributes
    ----------
    data : numpy.ndarray
        2D image, dispersion along columns, in ADU. It may be a view on the
        file's data in its stored dtype; the loaders convert it to float64.
    header : astropy.io.fits.Header
        The primary header's cards followed by the image HDU's cards (the
        image HDU's value wins where both have a keyword).
    gain : float or None
        e-/ADU, or None when unknown (the frame then stays in ADU).
    read_noise : float or None
        Read noise in electrons, or None when unknown.
    hdu : int
        Index of the HDU the image was read from.
    noise_source : str
        Where ``gain`` and ``read_noise`` came from (e.g. ``"header GAIN,
        header RDNOISE"``, ``"gain argument"``); ``""`` when both are unknown.
    """

    data: np.ndarray
    header: fits.Header
    gain: float | None
    read_noise: float | None
    hdu: int = 0
    noise_source: str = ""


def parse_fits_section(section, shape, what="trim section"):
    """Turn a FITS section string into a ``(row_slice, col_slice)`` pair.

    Parameters
    ----------
    section : str
        ``"[x1:x2,y1:y2]"``: 1-based inclusive column range then row range,
        as in FITS headers; ``*`` stands for the whole axis.
    shape : tuple of int
        ``(n_rows, n_cols)`` of the raw image, to check the section fits.
    what : str
        Name used in error messages (e.g. ``"TRIMSEC of bias_01.fits"``).

    Returns
    -------
    tuple of slice
        0-based ``(rows, cols)`` slices for ``image[rows, cols]``.

    Raises
    ------
    ValueError
        If the string is not a section, is reversed, or exceeds ``shape``.

    Examples
    --------
    >>> parse_fits_section("[26:2055,2:948]", (948, 2071))
    (slice(1, 948, None), slice(25, 2055, None))
    >>> parse_fits_section("[*,10:20]", (100, 50))
    (slice(9, 20, None), slice(0, 50, None))
    """
    if not isinstance(section, str):
        raise TypeError(f"{what} must be a FITS section string like '[x1:x2,y1:y2]'; got {section!r}")
    match = _SECTION_RE.match(section.strip())
    if match is None:
        raise ValueError(
            f"{what} {section!r} is not a FITS section; expected '[x1:x2,y1:y2]' "
            "(1-based, inclusive, x = column)"
        )
    n_rows, n_cols = shape
    cols = _section_axis(match.group(1), n_cols, "columns", section, what)
    rows = _section_axis(match.group(2), n_rows, "rows", section, what)
    return rows, cols


def _section_axis(text, size, axis_name, section, what):
    if text == "*":
        return slice(0, size)
    first, last = (int(v) for v in text.split(":"))
    if first > last:
        # Reversed FITS ranges mean "flip the axis"; no instrument here needs
        # that, so it is far more likely a typo than an intent.
        raise ValueError(f"{what} {section!r} is reversed along {axis_name} ({first} > {last})")
    if first < 1 or last > size:
        raise ValueError(
            f"{what} {section!r} is out of range: the image has {size} {axis_name} "
            f"(valid 1..{size})"
        )
    return slice(first - 1, last)


def _overlap(a, b):
    """Whether the ``(rows, cols)`` slice pairs ``a`` and ``b`` share a pixel."""
    return all(min(x.stop, y.stop) > max(x.start, y.start) for x, y in zip(a, b))


def _data_section(header, shape, source="frame"):
    """``(rows, cols)`` of the header's DATASEC, or None (no card, or not a section of the frame)."""
    if "DATASEC" not in header:
        return None
    try:
        return parse_fits_section(str(header["DATASEC"]).strip(), shape, what=f"DATASEC of {source}")
    except (TypeError, ValueError):
        return None


def _header_trim(header, shape, source="frame"):
    """The ``generic`` rule: the header's TRIMSEC when it is a smaller section inside the stored frame.

    Every pixel is kept when there is no TRIMSEC, when the frame was trimmed
    before (IRAF's ``TRIM`` card, or a section the frame's own size or
    beyond it: the card was kept through an earlier trim), and when the
    section is malformed. A DATASEC alone is not applied (its meaning
    varies: one amplifier's data, unbinned pixels); when it is smaller than
    the frame a warning says how to trim.
    """
    every = slice(0, shape[0]), slice(0, shape[1])
    if "TRIMSEC" in header and "TRIM" not in header:
        text = str(header["TRIMSEC"]).strip()
        try:
            rows, cols = parse_fits_section(text, shape, what=f"TRIMSEC of {source}")
        except (TypeError, ValueError):
            numbers = re.fullmatch(r"\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]", text)
            if numbers is None or int(numbers[1]) > int(numbers[2]) or int(numbers[3]) > int(numbers[4]):
                # Not a stale section of a frame trimmed before (those lie beyond it): a broken card.
                warn_at_caller(
                    f"the frames' TRIMSEC {text!r} is not a FITS section [x1:x2,y1:y2] with x1 <= x2 and y1 <= y2; "
                    "instrument 'generic' keeps every pixel: pass trimsec='[x1:x2,y1:y2]' to trim",
                    UserWarning,
                )
            return every
        if (rows.stop - rows.start, cols.stop - cols.start) != tuple(shape):
            return rows, cols
        return every
    if "TRIMSEC" not in header and "TRIM" not in header and (data := _data_section(header, shape, source)):
        rows, cols = data
        if (rows.stop - rows.start, cols.stop - cols.start) != tuple(shape):
            # Not the file's name: one warning for every file with this section.
            warn_at_caller(
                f"the frames' DATASEC {str(header['DATASEC']).strip()} is smaller than the stored "
                f"{shape[0]} x {shape[1]} frame (an overscan or prescan?); instrument 'generic' keeps every "
                f"pixel: pass trimsec={str(header['DATASEC']).strip()!r} (batch: --trimsec "
                f"'{str(header['DATASEC']).strip()}') to keep only that section",
                UserWarning,
            )
    return every


def _kosmos_trim(header, shape, source="frame"):
    """Raw-frame slices that drop the KOSMOS overscan given by ``BSEC11``.

    After the clockwise turn, rotated row ``i`` is raw column ``i``, so dropping
    rotated rows ``x1 - 1`` onwards is dropping raw columns ``x1`` onwards.
    """
    if "BSEC11" not in header:
        raise ValueError(
            f"{source} has no BSEC11 header keyword, which the 'kosmos' instrument "
            "needs to find the overscan; pass trimsec='[x1:x2,y1:y2]' to trim by hand"
        )
    rows, cols = parse_fits_section(str(header["BSEC11"]), shape, what=f"BSEC11 of {source}")
    first_overscan = cols.start  # 0-based index of column x1
    if first_overscan < 1:
        raise ValueError(f"BSEC11 of {source} ({header['BSEC11']!r}) leaves no data columns")
    return slice(0, shape[0]), slice(0, first_overscan)


def _as_number(value, name):
    # Some headers write numbers as strings (GAIN = '1.4'); accept those.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{name} must be a number; got {value!r}") from None
    return value


def _card_number(header, key):
    """``(number or None, unit text)`` of a header card: a number, or a string that starts with one
    (``'2.0 e-/ADU'``: its text after the number is a unit); the unit text also holds the card's comment."""
    value = header[key]
    comment = str(header.comments[key] or "") if key in header else ""
    if isinstance(value, bool):
        return None, comment
    if isinstance(value, numbers.Real):
        return float(value), comment
    match = _NUMBER_AND_TEXT.match(str(value))
    if not match:
        return None, comment
    return float(match.group(1)), f"{match.group(2)} {comment}".strip()


def _usable_card(header, key, path, what):
    """:func:`_card_number` of a gain or read-noise card, the number None (with a warning) when it is no such
    value: 0, negative, not a number (a placeholder, a setting's name)."""
    number, unit = _card_number(header, key)
    if number is None or not math.isfinite(number) or number <= 0:
        option = what.replace(" ", "_")
        warn_at_caller(
            f"{key} = {header[key]!r} in {path.name} is not a {what} (a placeholder?): it is left out, and estimated "
            f"from the data instead; pass {option}= (batch: --{option.replace('_', '-')}) if you know it",
            UserWarning,
        )
        return None, unit
    return number, unit


def _says_adu(unit):
    """Whether a card's unit text says ADU (counts), not electrons."""
    return bool(_ADU_UNIT.search(unit)) and not _ELECTRON_WORD.search(_PER_ELECTRON.sub("", unit))


def _check_gain(value, name="gain"):
    return check_gain(_as_number(value, name), name)


def _check_read_noise(value, name="read_noise"):
    return check_read_noise(_as_number(value, name), name)


@dataclass(frozen=True)
class Instrument:
    """A recipe for reading one raw frame of a long-slit spectrograph.

    Parameters
    ----------
    name : str
        Short name, used in messages.
    hdu : int, str or None
        HDU index or EXTNAME holding the image; None means the HDU that
        holds a 2D image, or when several do, the one named ``SCI``, else the
        largest (a warning names it when other images are passed over); a
        cube of one plane (NAXIS3 = 1) counts as its 2D image.
    transpose : bool
        Transpose the raw image (for detectors whose dispersion runs along
        the raw rows, keeping wavelength order).
    rot90 : int
        Counter-clockwise quarter turns applied after ``transpose``, as
        ``np.rot90(data, k=rot90)``; 3 is one clockwise turn.
    trimsec : str or None
        Fixed FITS section ``"[x1:x2,y1:y2]"`` (raw coordinates) to keep, or
        None to keep everything. Used when ``trimsec_keyword`` is unset or
        missing from a header.
    trimsec_keyword : str or None
        Header keyword holding the trim section (e.g. ``"TRIMSEC"``).
    trim_function : callable or None
        ``trim_function(header, raw_shape, source) -> (row_slice, col_slice)``
        for instruments whose trim rule is not a single section (KOSMOS);
        when set it replaces ``trimsec`` and ``trimsec_keyword``.
    gain : float or None
        Gain in e-/ADU, used when ``gain_keyword`` is unset or missing; None
        leaves frames in ADU.
    gain_keyword : str, tuple of str, or None
        Header keyword holding the gain; with several, the first present wins.
    read_noise : float or None
        Read noise in electrons, used when ``read_noise_keyword`` is unset or
        missing.
    read_noise_keyword : str, tuple of str, or None
        Header keyword holding the read noise in electrons; with several, the
        first present wins.
    description : str
        One line shown by ``repr`` users and in docs.
    dispersion_keyword : str or None
        Header keyword that says along which raw axis the dispersion runs,
        as IRAF's ``DISPAXIS`` does (1: wavelength changes along x, the
        column index, as specwidgets wants; 2: along y, so the frame is
        transposed); when a frame has it, it replaces ``transpose``.
    overscan_keyword : str or None
        Header keyword holding the overscan section (``"BIASSEC"``): when a
        frame has it, in its stored image and apart from the part kept, the
        overscan's median is subtracted from the frame (each frame's own
        bias level, which drifts between frames; a master bias then takes
        only the pattern). A ``HISTORY`` card of the frame's header says so.
    bad_pixels : str, os.PathLike or None
        Pixels to leave out, set to NaN as the frame is read (``fit_sky``
        ignores NaN pixels): the EXTNAME of each file's own data-quality
        image (``"DQ"``, ``"BPM"``; of the same EXTVER as the science image
        when there are several), or the path of one FITS mask for every
        frame. Nonzero pixels are bad. The mask has the stored image's shape
        (trimmed and turned as the frame is) or the frame's shape once read.
        A ``HISTORY`` card says how many pixels it set.

    Examples
    --------
    A camera whose dispersion runs along the raw rows, with a fixed trim
    section and gain:

    >>> inst = Instrument("mycam", transpose=True, trimsec="[1:2000,5:200]", gain=1.2)
    >>> inst.gain
    1.2
    >>> inst.with_options(gain=None).gain is None
    True
    """

    name: str
    hdu: int | str | None = None
    transpose: bool = False
    rot90: int = 0
    trimsec: str | None = None
    trimsec_keyword: str | None = None
    trim_function: Callable | None = None
    gain: float | None = None
    gain_keyword: str | tuple | None = None
    read_noise: float | None = None
    read_noise_keyword: str | tuple | None = None
    description: str = ""
    #: Header keywords holding the gain in ADU/e-, read (inverted) when no ``gain_keyword`` is there.
    inverse_gain_keyword: str | tuple | None = None
    dispersion_keyword: str | None = None
    overscan_keyword: str | None = None
    bad_pixels: str | None = None
    #: Options given by the caller (``with_options``), so a frame can say its
    #: gain came from an argument rather than from the instrument's defaults.
    given: tuple = dataclasses.field(default=(), repr=False, compare=False)

    def __post_init__(self):
        _check_gain(self.gain, f"gain of instrument {self.name!r}")
        _check_read_noise(self.read_noise, f"read_noise of instrument {self.name!r}")
        if self.rot90 not in (0, 1, 2, 3):
            raise ValueError(f"rot90 of instrument {self.name!r} must be 0, 1, 2 or 3; got {self.rot90!r}")
        if self.hdu is not None and not isinstance(self.hdu, (str, numbers.Integral)):
            raise TypeError(f"hdu must be an index, an EXTNAME or None; got {self.hdu!r}")
        object.__setattr__(self, "bad_pixels", _check_bad_pixels(self.bad_pixels))

    # ----------------------------------------------------------- options
    def with_options(self, **options):
        """Return a copy with loading options applied.

        Parameters
        ----------
        **options
            Any of ``hdu``, ``dispersion_axis`` (1: dispersion already along
            columns; 0: along rows, so transpose), ``trimsec`` (a FITS section
            in raw coordinates, or None for no trim), ``gain`` (e-/ADU, or
            None for ADU output), ``read_noise`` (electrons) and
            ``bad_pixels`` (a data-quality EXTNAME or a mask file). A given
            value, None included, replaces the instrument's own rule.

        Raises
        ------
        TypeError
            For an option not in :data:`INSTRUMENT_OPTIONS`.

        Examples
        --------
        >>> get_instrument("goodman").with_options(gain=2.0).gain
        2.0
        """
        unknown = sorted(set(options) - set(INSTRUMENT_OPTIONS))
        if unknown:
            raise TypeError(
                f"unknown instrument option(s) {', '.join(unknown)}; "
                f"valid options are {', '.join(INSTRUMENT_OPTIONS)}"
            )
        changes = {}
        if "hdu" in options:
            changes["hdu"] = options["hdu"]
        if "dispersion_axis" in options:
            axis = options["dispersion_axis"]
            if axis not in (0, 1) or isinstance(axis, bool):
                raise ValueError(
                    f"dispersion_axis must be 1 (dispersion along columns, as stored) or "
                    f"0 (along rows: the frame is transposed); got {axis!r}"
                )
            changes.update(transpose=axis == 0, rot90=0, dispersion_keyword=None)
        if "trimsec" in options:
            trimsec = options["trimsec"]
            if trimsec is not None and not isinstance(trimsec, str):
                raise TypeError(f"trimsec must be a FITS section string like '[x1:x2,y1:y2]' or None; got {trimsec!r}")
            changes.update(trimsec=trimsec, trimsec_keyword=None, trim_function=None)
        if "gain" in options:
            changes.update(gain=_check_gain(options["gain"], "gain"), gain_keyword=None, inverse_gain_keyword=None)
        if "read_noise" in options:
            changes.update(read_noise=_check_read_noise(options["read_noise"]), read_noise_keyword=None)
        if "bad_pixels" in options:
            changes["bad_pixels"] = _check_bad_pixels(options["bad_pixels"])
        given = tuple(sorted(set(self.given) | ({"gain", "read_noise"} & set(options))))
        return dataclasses.replace(self, given=given, **changes)

    @property
    def bad_pixels_file(self):
        """The path of the ``bad_pixels`` mask file, or None (no mask, or a data-quality EXTNAME)."""
        return self.bad_pixels if self.bad_pixels is not None and _is_mask_path(self.bad_pixels) else None

    # ----------------------------------------------------------- reading
    def read(self, path):
        """Read one file: select the HDU, trim, turn, and find gain and read noise.

        Parameters
        ----------
        path : str or os.PathLike
            A FITS file (compressed ``.fits.fz`` files work too).

        Returns
        -------
        Frame
            Data in ADU, dispersion along columns.

        Raises
        ------
        ValueError
            Naming the file, when it is not readable FITS, holds no 2D image,
            or its trim section, gain or read noise is unusable.
        """
        path = Path(path)
        try:
            with fits.open(path, memmap=False) as hdul:
                index = self._image_index(hdul, path)
                header = _merged_header(hdul, index)
                _check_image_header(hdul[index], path)
                raw = hdul[index].data
                if self.bad_pixels is not None:
                    bad, bad_from = _bad_pixel_image(self.bad_pixels, hdul, index, path)
                elif raw is not None:
                    _note_quality_image(hdul, index)
        except (OSError, TypeError, IndexError, KeyError, EOFError) as exc:
            raise ValueError(f"could not read FITS file {path}: {exc}") from exc
        except ValueError as exc:
            if str(path) in str(exc):
                raise
            raise ValueError(f"could not read FITS file {path}: {exc}") from exc
        if raw is None or raw.ndim < 2 or any(n != 1 for n in raw.shape[:-2]):
            raise ValueError(f"HDU {index} of {path} holds no 2D image")
        # A cube of one plane (NAXIS3 = 1, as some cameras write): its one image.
        raw = _as_plane(raw)
        rows, cols = self._trim_slices(header, raw.shape, path.name)
        data = raw[rows, cols]
        level = self._overscan_level(header, raw, (rows, cols), path.name)
        if level is not None:
            data = data.astype(np.float64) - level
        if self.bad_pixels is not None:
            data = _set_bad(data, bad, raw.shape, (rows, cols), self._turn, header, path, bad_from)
        data = self._turn(data, header, path)
        gain, gain_from = self._gain_of(header, path)
        noise_value, noise_from = self._header_or_default(
            header, self.read_noise_keyword, self.read_noise, "read_noise"
        )
        if noise_from.startswith("header "):
            read_noise, noise_from = self._header_read_noise(header, noise_from[len("header "):], gain, path)
        else:
            read_noise = _check_read_noise(noise_value, f"read noise of {path.name}")
        scaled = _scaled_unit(header)
        if scaled and gain is not None and "gain" not in self.given:
            # A header gain turns ADU into electrons; these values are ADU (or electrons) per second, or
            # a flux: their noise is the gain times the exposure time (or a calibration) per unit.
            warn_at_caller(
                f"the frames are in {scaled!r} (BUNIT), not counts: the {gain_from} ({gain:g}) does not give "
                "their noise, so it is not applied and the noise model is estimated from the sky; for counts "
                "divided by the exposure time, pass gain=GAIN*EXPTIME (batch: --gain) to give it",
                UserWarning,
            )
            gain, gain_from = None, ""
        elif (electrons := _electron_unit(header)) and gain is None and "gain" not in self.given:
            # In electrons already and no gain card: their gain is 1 (estimated, it came out 0.996).
            gain, gain_from = 1.0, f"BUNIT {electrons!r} (in electrons)"
        elif (electrons := _electron_unit(header)) and gain is not None and gain != 1 and "gain" not in self.given:
            # Frames a pipeline turned into electrons often keep the camera's GAIN card: applied
            # again, the data were 2.2x too bright and the fit blamed the gain (trial K1).
            warn_at_caller(
                f"the frames are in electrons (BUNIT = {electrons!r}): the {gain_from} ({gain:g}) is the camera's, "
                "already applied, so it is not applied again (their gain is 1); pass gain=... (batch: --gain) if "
                "they are in ADU after all",
                UserWarning,
            )
            gain, gain_from = 1.0, f"BUNIT {electrons!r} (in electrons)"
        # (The gain of a header card only: frames in electrons by their BUNIT had each amplifier's applied.)
        self._note_unread_cards(header, gain is None, read_noise is None,
                                gain if gain_from.startswith("header ") and not _electron_unit(header) else None)
        sources = [f for f, v in ((gain_from, gain), (noise_from, read_noise)) if v is not None]
        return Frame(
            data=data, header=header, gain=gain, read_noise=read_noise, hdu=index, noise_source=", ".join(sources)
        )

    def _gain_of(self, header, path):
        """``(gain or None, source)``: the gain card (or the instrument's default), else an inverse-gain card
        inverted. A header card that is no gain (0, negative, not a number: a placeholder) is left out with a
        warning, the gain then estimated from the data; a card whose unit says ADU/e- is inverted."""
        value, source = self._header_or_default(header, self.gain_keyword, self.gain, "gain")
        inverse = False
        if not source.startswith("header "):
            keys = (self.inverse_gain_keyword,) if isinstance(self.inverse_gain_keyword, str) else tuple(
                self.inverse_gain_keyword or ())
            found = next((k for k in keys if k in header), None)
            if found is None or value is not None:
                return _check_gain(value, f"gain of {path.name}"), source
            source, inverse = f"header {found}", True
        key = source[len("header "):]
        number, unit = _usable_card(header, key, path, "gain")
        inverse = inverse or bool(_PER_ELECTRON.search(unit))
        if number is None:
            return None, ""
        if inverse:
            return 1.0 / number, f"header {key} ({number:g} ADU/e-, inverted)"
        return number, source

    def _header_read_noise(self, header, key, gain, path):
        """``(read noise in e- or None, source)`` of header card ``key``: in ADU when its unit says so (then
        times the gain); a placeholder (0, negative, not a number) is left out with a warning."""
        number, unit = _usable_card(header, key, path, "read noise")
        if number is None:
            return None, ""
        if _says_adu(unit):
            if gain is None:
                warn_at_caller(
                    f"{key} = {header[key]!r} in {path.name} is in ADU ({unit!r}) and no gain converts it to "
                    "electrons: it is left out, and the noise model is estimated from the data; pass gain= and "
                    "read_noise= (in electrons) if you know them",
                    UserWarning,
                )
                return None, ""
            return number * gain, f"header {key} ({number:g} ADU, times the gain)"
        return number, f"header {key}"

    def _note_unread_cards(self, header, no_gain, no_read_noise, gain=None):
        """Warn of header cards that look like the gain or read noise the instrument did not read
        (``CCDGAIN = 1.4`` where it reads ``GAIN``/``EGAIN``): the noise model is then estimated from the
        sky, which a known value would beat. Once per card and value (the warning's text).

        Cards of several amplifiers (``GAINA``/``GAINB`` of different values, ``BIASSECA``/``BIASSECB``)
        get their own warning: one gain, or no overscan, for a frame read through several amplifiers
        leaves parts of it in other units or at other levels (trial L2: an "ok" fit with half the frame
        0.67x its electrons, or its bias levels left in)."""
        if self._note_amplifier_cards(header, no_gain, no_read_noise, gain):
            no_gain = no_read_noise = False
        for missing, keyword, pattern, option in ((no_gain, self.gain_keyword, "GAIN", "gain"),
                                                   (no_read_noise, self.read_noise_keyword, "NOIS", "read_noise")):
            if not missing or not keyword:
                continue
            read = names = (keyword,) if isinstance(keyword, str) else tuple(keyword)
            if option == "gain" and self.inverse_gain_keyword:
                read += (self.inverse_gain_keyword,) if isinstance(self.inverse_gain_keyword, str) else tuple(
                    self.inverse_gain_keyword)
            for key in header:
                value = header.get(key) if key not in ("COMMENT", "HISTORY", "") else None
                if (pattern in key and key not in read and isinstance(value, numbers.Real)
                        and not isinstance(value, bool) and value > 0):
                    cli = option.replace("_", "-")
                    unit = str(header.comments[key] or "")
                    if option == "gain" and _PER_ELECTRON.search(unit):
                        # (ADU per electron: the gain is its inverse.)
                        value, said = 1.0 / value, f"{key} = {value:g} ({unit.strip()}, i.e. {1.0 / value:.4g} e-/ADU)"
                    else:
                        said = f"{key} = {value:g}"
                    warn_at_caller(
                        f"the frames have {said}, but instrument {self.name!r} reads the {option.replace('_', ' ')} "
                        f"from {'/'.join(names)}: pass {option}={value:.4g} (batch: --{cli} {value:.4g}) if that is "
                        "it; otherwise it is estimated from the sky",
                        UserWarning,
                    )
                    break

    def _note_amplifier_cards(self, header, no_gain, no_read_noise=False, gain=None):
        """Warn of per-amplifier gain cards of different values (when no gain was read, or beside the one
        ``gain`` read and applied to the whole frame) and of per-amplifier overscan sections the instrument
        does not read; True when the gains were named with no gain read (with the read noises of the
        amplifiers, when none was read)."""
        def numbers_of(keyword):
            prefixes = () if not keyword else (keyword,) if isinstance(keyword, str) else tuple(keyword)
            found = {}
            for key in header:
                value = header.get(key) if key not in ("COMMENT", "HISTORY", "") else None
                if (any(key.startswith(p) and len(key) > len(p) for p in prefixes) and isinstance(value, numbers.Real)
                        and not isinstance(value, bool) and value > 0):
                    found[key] = float(value)
            return found

        named = False
        gains = numbers_of(self.gain_keyword)
        if no_gain and len(set(gains.values())) > 1:
            noises = numbers_of(self.read_noise_keyword) if no_read_noise else {}
            listed = ", ".join(f"{k} = {v:g}" for k, v in {**gains, **noises}.items())
            warn_at_caller(
                f"the frames have {listed}: the gains of several amplifiers, each for its part of the frame, which "
                f"instrument {self.name!r} does not read (it applies one gain to a whole frame). Convert each "
                "part to electrons with its own gain (and subtract its own overscan) before the fit, or register "
                "an instrument whose reader does; one gain for all would leave the other parts in other units",
                UserWarning,
            )
            named = True
        elif gain is not None and "gain" not in self.given and len(gains) > 1 and max(gains.values()) > 1.03 * min(
                gains.values()):
            # Trial M2: GAIN = 1.4 beside GAINA = 1.4, GAINB = 1.6 left half the frame 12.5 % off, "ok", unsaid.
            listed = ", ".join(f"{k} = {v:g}" for k, v in gains.items())
            off = max(abs(v / gain - 1.0) for v in gains.values())
            warn_at_caller(
                f"the frames have {listed} beside the gain read ({gain:g}): the gains of several amplifiers, each "
                f"for its part of the frame, while instrument {self.name!r} applies one gain to a whole frame, so "
                f"the parts read through the others are up to {100 * off:.0f} % off in electrons. Convert each part "
                "to electrons with its own gain before the fit, or register an instrument whose reader does",
                UserWarning,
            )
        key = self.overscan_keyword
        sections = [k for k in header if key and k.startswith(key) and k != key and isinstance(header.get(k), str)]
        if key and key not in header and sections:
            warn_at_caller(
                f"the frames have {', '.join(sections)}: overscan sections of several amplifiers, which instrument "
                f"{self.name!r} does not read (it reads {key}): nothing is subtracted for them. Give bias frames "
                "(a master bias holds each amplifier's level), or subtract each amplifier's overscan before",
                UserWarning,
            )
        return named

    def turn_of(self, header, path="frame"):
        """``(transposed, quarter_turns)``: how :meth:`read` turns a frame with ``header`` (transposed or not,
        then ``np.rot90`` by that many quarter turns) so that its dispersion runs along the columns.

        Examples
        --------
        >>> Instrument("mycam", dispersion_keyword="DISPAXIS").turn_of({"DISPAXIS": 2})
        (True, 0)
        """
        return bool(self._transposes(header, Path(path))), int(self.rot90)

    def _turn(self, data, header, path):
        """``data`` turned so that the dispersion runs along columns."""
        if self._transposes(header, path):
            data = data.T
        if self.rot90:
            data = np.rot90(data, k=self.rot90)
        return data

    def _transposes(self, header, path):
        """Whether this frame is transposed: ``transpose``, or its ``dispersion_keyword`` card when it has one."""
        key = self.dispersion_keyword
        if not key or key not in header:
            return self.transpose
        value = header[key]
        try:
            axis = float(str(value).strip())  # (2, '2' and 2.0 alike)
        except ValueError:
            axis = None
        if axis not in (1.0, 2.0):
            raise ValueError(f"{key} = {value!r} in {path.name}: must be 1 (dispersion along the image's x axis) or 2 "
                             "(along y); pass dispersion_axis=1 or 0 to read the frame as stored or transposed")
        return axis == 2

    def _image_index(self, hdul, path):
        if self.hdu is None:
            images = [i for i, h in enumerate(hdul) if _is_2d_image(h)]
            if images:
                return _default_image(hdul, images, path)
            cubes = [i for i, h in enumerate(hdul) if h.is_image and _cube_text(h.header)]
            if cubes:
                raise ValueError(_cube_message(hdul, cubes[0], path))
            listing = ", ".join(f"{i}: {type(h).__name__} NAXIS={h.header.get('NAXIS')}" for i, h in enumerate(hdul))
            raise ValueError(f"{path} has no HDU holding a 2D image (HDUs: {listing})")
        try:
            index = hdul.index_of(self.hdu)
        except (KeyError, IndexError):
            names = ", ".join(f"{i}: {h.name}" for i, h in enumerate(hdul))
            raise ValueError(f"{path} has no HDU {self.hdu!r} (it has {names})") from None
        if index < 0:  # hdu=-1 means the last HDU; report it by its real index
            index += len(hdul)
        if not 0 <= index < len(hdul):
            names = ", ".join(f"{i}: {h.name}" for i, h in enumerate(hdul))
            raise ValueError(f"{path} has no HDU {self.hdu!r} (it has {names})")
        hdu = hdul[index]
        if not _is_2d_image(hdu):
            if hdu.is_image and _cube_text(hdu.header):
                raise ValueError(_cube_message(hdul, index, path, given=self.hdu))
            raise ValueError(f"HDU {self.hdu!r} of {path} holds no 2D image (NAXIS={hdu.header.get('NAXIS')})")
        return index

    def _overscan_level(self, header, raw, kept, source):
        """The median of the frame's overscan (``overscan_keyword``), or None: no card, a section not in
        the stored image (a frame trimmed already), overlapping the part kept, or holding no finite pixel.
        Adds a ``HISTORY`` card to ``header`` when there is one."""
        key = self.overscan_keyword
        if not key or key not in header:
            return None
        section = str(header[key]).strip()
        try:
            rows, cols = parse_fits_section(section, raw.shape, what=f"{key} of {source}")
        except ValueError:
            return None
        kept_too = _overlap((rows, cols), kept)
        if kept_too:
            # The overscan kept in the frame (nothing trimmed): its level is still the frame's own bias,
            # when a data section (DATASEC) says the overscan is not data. Left unsubtracted, each
            # frame's offset from the master bias (+-7 e-) went into its sky, "good" (trial B1).
            data = _data_section(header, raw.shape, source)
            if data is None or _overlap((rows, cols), data):
                return None
        pixels = np.asarray(raw[rows, cols], dtype=np.float64)
        if not np.isfinite(pixels).any():
            return None
        level = float(np.nanmedian(pixels))
        header.add_history(f"{OVERSCAN_HISTORY} {key} {section} median {level:.6g} subtracted"
                           + (" (its pixels kept in the frame: trimsec trims them)" if kept_too else ""))
        return level

    def _trim_slices(self, header, shape, source):
        if self.trim_function is not None:
            return self.trim_function(header, shape, source)
        if self.trimsec_keyword and self.trimsec_keyword in header:
            section, what = str(header[self.trimsec_keyword]), f"{self.trimsec_keyword} of {source}"
        elif self.trimsec_keyword and self.trimsec is None:
            # An instrument that trims by a header card and has no fallback
            # would otherwise keep the overscan silently, biasing every fit.
            raise ValueError(
                f"{source} has no {self.trimsec_keyword} card, so instrument {self.name!r} cannot tell "
                "the overscan from the image; pass trimsec='[x1:x2,y1:y2]' (a FITS section) to trim it, "
                "or trimsec=None to keep every pixel"
            )
        elif self.trimsec is not None:
            section, what = self.trimsec, f"trimsec for {source}"
        else:
            return slice(0, shape[0]), slice(0, shape[1])
        return parse_fits_section(section, shape, what=what)

    def _header_or_default(self, header, keyword, default, what):
        """``(value, source)``: the first of ``keyword`` (str or tuple) in the header, else ``default``."""
        keywords = (keyword,) if isinstance(keyword, str) else tuple(keyword or ())
        for key in keywords:
            if key in header:
                return header[key], f"header {key}"
        label = "gain" if what == "gain" else "read noise"
        if what in self.given:
            return default, f"{label} argument"
        return default, f"{self.name} default {label}"


#: EXTNAMEs of the images a pipeline writes beside the science image (not pieces of the detector).
_COMPANION_EXTNAME = re.compile(
    r"^(VAR|VARIANCE|IVAR|INVVAR|ERR|ERROR|ERRS|SIGMA|STDDEV|NOISE|UNC|UNCERT|UNCERTAINTY|DQ|BPM|BADPIX|MASK|FLAGS?|"
    r"WHT|WEIGHTS?|EXPMAP|EXPTIME|SKY|BKG|BACKGROUND|MODEL|RESID|CON|CTX|QUAL|QUALITY)\b", re.IGNORECASE)


def _plane_shape(header):
    """``(n_rows, n_cols)`` of an image HDU's header when it holds one 2D image, else None.

    NAXIS = 2, or more axes whose extra ones (NAXIS3, ...) all have length 1:
    a cube of one plane, which some cameras write (trial F1: refused as "no
    2D image"); :func:`_as_plane` squeezes its data on reading.
    """
    naxis = int(header.get("NAXIS", 0) or 0)
    if naxis < 2 or any(int(header.get(f"NAXIS{k}", 0) or 0) != 1 for k in range(3, naxis + 1)):
        return None
    return int(header.get("NAXIS2", 0) or 0), int(header.get("NAXIS1", 0) or 0)


def _is_2d_image(hdu):
    """Whether ``hdu`` holds one 2D image (:func:`_plane_shape`): the frames specwidgets reads."""
    return bool(hdu.is_image) and _plane_shape(hdu.header) is not None


def _as_plane(data):
    """``data`` with its extra axes of length 1 dropped (a view): a cube of one plane is its image."""
    return data.reshape(data.shape[-2:]) if data is not None and data.ndim > 2 else data


def _cube_text(header):
    """What an image HDU holding more than a 2D image is (``"a cube of 3 planes ..."``), or "" (no such HDU)."""
    naxis = int(header.get("NAXIS", 0) or 0)
    if naxis < 3 or _plane_shape(header) is not None:
        return ""
    sizes = [int(header.get(f"NAXIS{k}", 0) or 0) for k in range(1, naxis + 1)]
    plane = f"{sizes[1]} x {sizes[0]} pixels"
    if naxis == 3:
        return f"a cube of {sizes[2]} planes of {plane} (NAXIS3 = {sizes[2]})"
    extra = ", ".join(f"NAXIS{k} = {sizes[k - 1]}" for k in range(3, naxis + 1))
    return f"{naxis}-D data: {', '.join(map(str, reversed(sizes)))} ({extra}) planes of {plane}"


def _cube_message(hdul, index, path, given=None):
    """The refusal of a cube in HDU ``index`` (more than one plane): what it is, and how to read one plane."""
    which = f"HDU {given!r}" if given is not None else f"HDU {index}"
    header = hdul[index].header
    naxis = int(header.get("NAXIS", 0) or 0)
    planes = 1
    for k in range(3, naxis + 1):
        planes *= int(header.get(f"NAXIS{k}", 0) or 0)
    return (
        f"{which} of {path} holds no 2D image: it is {_cube_text(hdul[index].header)}. specwidgets reads one 2D "
        "image per file (a cube of one plane is read as its image): write the plane you want to a file of its "
        f"own (astropy: fits.writeto('plane.fits', fits.getdata(path, {index})[k], fits.getheader(path, {index})) "
        f"for plane k = 0..{planes - 1}), or give that plane's array (data[k]) to fit_sky directly"
    )


#: The EXTNAME of the science image, read first when a file holds several images (HST, Gemini, LCO: ``SCI``).
SCIENCE_EXTNAME = "SCI"


def _default_image(hdul, images, path):
    """The index of the image HDU read when no ``hdu`` is given; ``images`` are those holding a 2D image.

    One image: it. Several: the first named :data:`SCIENCE_EXTNAME`, else the
    largest (the first of the largest), so that a preview or thumbnail stored
    beside the frame is not read in its place (trial F1: a 10 x 10 primary
    thumbnail was read as the frame, and its SCI extension's GAIN lost).
    Pieces of one exposure are refused (:func:`_refuse_pieces`). When images
    other than the chosen one's companions (``VAR``, ``DQ``, ...) are passed
    over, a warning names the HDU read and how to read another.
    """
    if len(images) == 1:
        return images[0]

    def pixels(i):
        rows, cols = _plane_shape(hdul[i].header)
        return rows * cols

    named = [i for i in images if hdul[i].name == SCIENCE_EXTNAME]
    # Not a pipeline's companion of the frame (its variance, quality or weight), which can come first and be
    # as large (trial A2: a VARIANCE before the FLUX was read as "the largest image").
    frames = [i for i in images if not _COMPANION_EXTNAME.match(hdul[i].name or "")] or images
    chosen = named[0] if named else max(frames, key=pixels)
    if named:
        # Only several SCI images are pieces (SCI,1 and SCI,2): a primary image beside one SCI is not
        # (trial A2: a PRIMARY copy of the SCI frame's shape had the file refused as two amplifiers).
        pool = named
    else:
        # A primary image smaller than the one read is a preview, not a piece of the exposure (it has no
        # DETSEC, which would hide the pieces' own).
        pool = [chosen] + [i for i in images if i != chosen and not (i == 0 and pixels(0) < pixels(chosen))]
    _refuse_pieces(hdul, pool, path)
    passed = [i for i in images if i != chosen and not _COMPANION_EXTNAME.match(hdul[i].name or "")]
    if passed:
        def text(i):
            rows, cols = _plane_shape(hdul[i].header)
            return f"{i}: {hdul[i].name or '(no name)'} {rows} x {cols}"

        why = f"its EXTNAME is {SCIENCE_EXTNAME}" if named else "the largest image"
        # Not the file's name: one warning for every file laid out alike.
        warn_at_caller(
            f"the frames hold {len(images)} 2D images ({', '.join(text(i) for i in images)}): HDU {chosen} "
            f"({hdul[chosen].name or 'no name'}) is read, as {why}, and its header's cards (GAIN, ...) are used "
            f"with the primary header's; pass hdu= (an index or an EXTNAME) to read another",
            UserWarning,
        )
    return chosen


def _refuse_pieces(hdul, images, path):
    """Several image HDUs that are pieces of one exposure (amplifiers, CCDs): the first alone is part of it.

    Pieces share the first image's EXTNAME (``SCI,1``, ``SCI,2``, ...), or
    each say where on the detector they go (``DETSEC``, all different), or
    are images of the first's shape under names of their own (``AMP1``,
    ``AMP2``, ...); a file's other images (``VAR``, ``DQ``, ...) are none.
    """
    first = hdul[images[0]]
    same_name = [i for i in images if hdul[i].name == first.name]
    detsecs = {str(hdul[i].header.get("DETSEC", "")).strip() for i in images}
    pieces = same_name if len(same_name) > 1 else images if len(detsecs) == len(images) > 1 and "" not in detsecs else []
    if not pieces:
        # Images of the first's shape under names of their own (AMP1..AMP4, CCD1..CCD3) and no DETSEC:
        # the first alone was read as the whole exposure, a quarter of the detector (trial H).
        # (Not a pipeline's companions of the science image: its variance, quality or weight.)
        def shape(h):
            return h.header.get("NAXIS1"), h.header.get("NAXIS2")

        alike = [i for i in images if shape(hdul[i]) == shape(first) and not _COMPANION_EXTNAME.match(hdul[i].name or "")]
        pieces = alike if len(alike) > 1 else []
    if pieces:
        listing = ", ".join(f"{i}: {hdul[i].name or '(no name)'} {hdul[i].header.get('DETSEC', '')}".rstrip()
                            for i in pieces)
        raise ValueError(
            f"{path} holds {len(pieces)} images of one exposure ({listing}): amplifiers or CCDs, each a piece of "
            "the detector. specwidgets reads one 2D image per file, and the first alone is not the frame: join "
            "them into one image first (the instrument's own pipeline does this), or pass hdu= to read one piece "
            "on purpose"
        )


#: ``BUNIT`` values that are not counts: a rate (per second) or a calibrated flux.
_SCALED_UNIT = re.compile(r"(/\s*s(ec)?\b|\bs(ec)?\s*(\^|\*\*)?\s*-1|\bper\s+s|\berg|\bjy\b|\bw\s*/?\s*m|flam|fnu)",
                          re.IGNORECASE)


_ELECTRON_UNIT = re.compile(r"^\s*(e-?|electrons?|photoelectrons?)\s*$", re.IGNORECASE)


def _electron_unit(header):
    """The frame's ``BUNIT`` when it says electrons (``"ELECTRONS"``, ``"e-"``), else ""."""
    unit = str(header.get("BUNIT", "") or "").strip()
    return unit if unit and _ELECTRON_UNIT.match(unit) else ""


def _scaled_unit(header):
    """The frame's ``BUNIT`` when it is a rate or a flux (``"adu/s"``, ``"erg/s/cm2/Angstrom"``), else ""."""
    unit = str(header.get("BUNIT", "") or "").strip()
    return unit if unit and _SCALED_UNIT.search(unit) else ""


def _check_bad_pixels(value):
    """``bad_pixels`` as stored: None, an EXTNAME (upper case) or a mask file's path (a string)."""
    if value is None:
        return None
    if isinstance(value, os.PathLike) or (isinstance(value, str) and _is_mask_path(value)):
        path = Path(value).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"bad_pixels mask file {path} does not exist (or give a data-quality EXTNAME "
                                    "such as 'DQ')")
        return str(path)
    if isinstance(value, str) and value.strip():
        return value.strip().upper()
    raise TypeError(f"bad_pixels must be a data-quality EXTNAME (e.g. 'DQ') or the path of a FITS mask file; "
                    f"got {value!r}")


def _is_mask_path(text):
    """A ``bad_pixels`` string naming a file (a separator or a suffix), not an EXTNAME."""
    return os.sep in text or "/" in text or "." in text


def _bad_pixel_image(source, hdul, index, path):
    """``(bad, text)``: the boolean mask of ``source`` for the image HDU ``index`` of ``path``, as stored."""
    if _is_mask_path(source):
        try:
            stat = Path(source).stat()
        except OSError as exc:
            raise ValueError(f"could not read the bad_pixels mask file {source}: {exc}") from exc
        # (The change time and inode too: a mask rewritten with its old modification time, as by
        # ``cp -p``, kept the old mask in a process that read it before.)
        version = (os.path.abspath(source), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
        return _mask_file(source, version), f"mask {Path(source).name}"
    version = hdul[index].header.get("EXTVER")
    named = [h for h in hdul if h.name == source and h.is_image]
    same = [h for h in named if version is None or h.header.get("EXTVER", version) == version]
    if not (same or named):
        names = ", ".join(f"{i}: {h.name or '(no name)'}" for i, h in enumerate(hdul))
        raise ValueError(f"{path} has no {source} extension for bad_pixels (its HDUs: {names})")
    data = _as_plane((same or named)[0].data)
    if data is None or data.ndim != 2:
        raise ValueError(f"the {source} extension of {path} holds no 2D image")
    return np.asarray(data) != 0, f"{source} extension"


@functools.lru_cache(maxsize=4)
def _mask_file(path, _version):
    """A mask file's nonzero pixels (cached by path and the file's version: one mask serves every frame)."""
    try:
        with fits.open(path, memmap=False) as hdul:
            images = [h for h in hdul if _is_2d_image(h)]
            if not images:
                raise ValueError(f"bad_pixels mask file {path} holds no 2D image")
            bad = np.asarray(_as_plane(images[0].data)) != 0
    except OSError as exc:
        raise ValueError(f"could not read the bad_pixels mask file {path}: {exc}") from exc
    bad.setflags(write=False)
    return bad


def _set_bad(data, bad, raw_shape, kept, turn, header, path, source):
    """``data`` (trimmed, not turned) as float64 with the pixels ``bad`` marks set to NaN.

    ``bad`` has the stored image's shape (trimmed here as the data were) or the frame's
    shape once trimmed and turned (its pixels are then found in the stored layout)."""
    if bad.shape == tuple(raw_shape):
        bad = bad[kept]
    else:
        # Where each pixel of the turned frame lies in the stored one.
        where = turn(np.arange(data.size).reshape(data.shape), header, path)
        if where.shape != bad.shape:
            raise ValueError(f"the bad-pixel {source} of {path.name} has shape {bad.shape}; the stored image is "
                             f"{tuple(raw_shape)} and the frame read {where.shape}")
        flat = np.zeros(data.size, bool)
        flat[where[bad]] = True
        bad = flat.reshape(data.shape)
    data = np.array(data, dtype=np.float64)
    n = int(np.count_nonzero(bad & np.isfinite(data)))
    data[bad] = np.nan
    header.add_history(f"specwidgets: {n} pixels flagged in the {source} set to NaN")
    return data


def _note_quality_image(hdul, index):
    """Warn, once per EXTNAME, of a data-quality image beside the science image that is not applied."""
    for h in hdul:
        if h.name in QUALITY_EXTNAMES and _is_2d_image(h) and h is not hdul[index]:
            warn_at_caller(
                f"the frames have a {h.name} extension (data quality) that is not applied: pass "
                f"bad_pixels={h.name!r} (batch: --bad-pixels {h.name}) to leave the pixels it flags out of the sky fit",
                UserWarning,
            )
            return


def _check_image_header(hdu, path):
    """Refuse, before reading the data, an image too large to hold or scaled to nothing."""
    header = hdu.header
    # Tile-compressed HDUs describe the image in ZNAXISn; astropy exposes the
    # uncompressed header, whose NAXISn are the image's.
    naxis = int(header.get("NAXIS", 0) or 0)
    shape = [header.get(f"NAXIS{k}", 0) or 0 for k in range(1, naxis + 1)]
    check_image_size(shape, f"FITS file {path}")
    bscale = getattr(hdu, "_orig_bscale", None)
    if bscale is None:
        bscale = header.get("BSCALE", 1)
    try:
        zero_scale = float(bscale) == 0.0
    except (TypeError, ValueError):
        raise ValueError(f"FITS file {path} has a non-numeric BSCALE {bscale!r}") from None
    if zero_scale:
        raise ValueError(
            f"FITS file {path} has BSCALE = 0, which would scale every pixel to BZERO (an all-constant "
            "frame): the header is corrupt; fix BSCALE (usually 1)"
        )


def _merged_header(hdul, index):
    header = hdul[0].header.copy()
    if index != 0:
        header.extend(hdul[index].header, update=True, strip=False)
    for card in _PER_HDU_CARDS:
        header.remove(card, ignore_missing=True, remove_all=True)
    return header


# ------------------------------------------------------------------ readers
class _ReaderInstrument:
    """Adapts a user's ``reader(path, **options)`` callable to ``.read(path)``."""

    def __init__(self, name, reader, options=None):
        self.name = name
        self.reader = reader
        self.options = dict(options or {})

    def with_options(self, **options):
        return _ReaderInstrument(self.name, self.reader, {**self.options, **options})

    def read(self, path):
        path = Path(path)
        try:
            result = self.reader(path, **self.options)
        except (OSError, KeyError, IndexError, ValueError) as exc:
            if isinstance(exc, ValueError) and str(path.name) in str(exc):
                raise
            raise ValueError(f"instrument {self.name!r} could not read {path}: {exc}") from exc
        if isinstance(result, Frame):
            source = result.noise_source
            if not source and (result.gain is not None or result.read_noise is not None):
                source = f"reader {self.name}"
            frame = dataclasses.replace(result, data=np.asarray(result.data), noise_source=source)
        else:
            frame = Frame(data=np.asarray(result), header=fits.Header(), gain=None, read_noise=None)
        if frame.data.ndim != 2:
            raise ValueError(
                f"instrument {self.name!r} returned a {frame.data.ndim}D array for {path}; expected 2D"
            )
        return frame

    def __repr__(self):
        return f"_ReaderInstrument({self.name!r}, {self.reader!r})"


_BUILTINS = {
    "generic": Instrument(
        "generic",
        # A TRIMSEC card says where the image is: an overscan kept in would
        # pass for unlit columns and bend the sky at the image's edge.
        trim_function=_header_trim,
        # The usual names; a frame without any of them stays in ADU with an
        # unknown read noise (then fit_sky estimates the noise model).
        gain_keyword=GENERIC_GAIN_KEYWORDS,
        inverse_gain_keyword=GENERIC_INVERSE_GAIN_KEYWORDS,
        read_noise_keyword=GENERIC_READ_NOISE_KEYWORDS,
        # IRAF's card: frames whose dispersion runs along y say DISPAXIS = 2.
        dispersion_keyword="DISPAXIS",
        # Each frame's own bias level, from its overscan: it drifts between
        # frames (+4, -15, -7 ADU against the master bias went into the sky).
        overscan_keyword="BIASSEC",
        description=(
            "the 2D image HDU (SCI, else the largest, when several), its BIASSEC overscan's median subtracted, "
            "trimmed to its TRIMSEC when smaller, transposed when DISPAXIS = 2; gain "
            "from GAIN/EGAIN/ESO DET OUT1 CONAD (or the inverse of ESO DET OUT1 GAIN/INVGAIN), read noise from "
            "RDNOISE/READNOIS/RON/ESO DET OUT1 RON (a card in ADU times the gain); options set HDU, axis, trim "
            "(trimsec=None keeps every pixel), gain, read noise"
        ),
    ),
    "goodman": Instrument(
        "goodman",
        # None rather than 1: extension 1 in fpack files, primary once funpacked.
        hdu=None,
        trimsec_keyword="TRIMSEC",
        gain_keyword="GAIN",
        read_noise_keyword="RDNOISE",
        description="SOAR/Goodman HTS: TRIMSEC, GAIN and RDNOISE from the header",
    ),
    "kosmos": Instrument(
        "kosmos",
        hdu=None,
        rot90=3,
        trim_function=_kosmos_trim,
        gain=KOSMOS_GAIN,
        # KOSMOS headers do not reliably carry RDNOISE and no verified value
        # was at hand, so without the keyword the read noise stays unknown.
        read_noise_keyword="RDNOISE",
        read_noise=None,
        description="APO/KOSMOS: turned 90 deg clockwise, BSEC11 overscan dropped, gain 0.6",
    ),
}

_REGISTRY: dict = dict(_BUILTINS)


def _normalise_name(name):
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"an instrument name must be a non-empty string; got {name!r}")
    return name.strip().lower()


def register_instrument(name: str, instrument_or_reader: Instrument | Callable,
                        overwrite: bool = False) -> Instrument | Callable:
    """Add an instrument so the loaders accept ``instrument=name``.

    Parameters
    ----------
    name : str
        Case-insensitive name to register.
    instrument_or_reader : Instrument or callable
        An :class:`Instrument`, or a reader ``reader(path, **options)`` that
        returns a :class:`Frame` (or a bare 2D array in ADU, with no gain or
        read noise), with dispersion along columns. The loaders pass their
        extra keyword arguments to the reader as ``options``.
    overwrite : bool
        Replace an existing entry of that name. Without it, registering a
        name already in use raises, unless it is the same instrument again
        (so re-running a notebook cell is harmless).

    Returns
    -------
    Instrument or object
        What :func:`get_instrument` will return for ``name``.

    Raises
    ------
    ValueError
        If the name is taken and ``overwrite`` is False.
    TypeError
        If ``instrument_or_reader`` is neither an Instrument nor callable.

    Examples
    --------
    A camera with the dispersion along its raw rows, a fixed trim section,
    and its gain and read noise in the header:

    >>> from specwidgets.io.instruments import Instrument, register_instrument
    >>> mycam = Instrument(
    ...     "mycam",
    ...     transpose=True,
    ...     trimsec="[1:2048,10:500]",
    ...     gain_keyword="EGAIN",
    ...     read_noise_keyword="RDNOISE",
    ... )
    >>> _ = register_instrument("mycam", mycam, overwrite=True)

    Then ``collect_images_array(folder, instrument="mycam")`` reads with it.
    A reader function works as well:

    >>> from astropy.io import fits
    >>> def read_mycam(path, **options):
    ...     with fits.open(path) as hdul:
    ...         return hdul[0].data.T.copy()
    >>> _ = register_instrument("mycam-raw", read_mycam, overwrite=True)
    """
    key = _normalise_name(name)
    if isinstance(instrument_or_reader, Instrument):
        entry = instrument_or_reader
    elif callable(instrument_or_reader):
        entry = _ReaderInstrument(key, instrument_or_reader)
    else:
        raise TypeError(
            f"register_instrument needs an Instrument or a reader function for {name!r}; "
            f"got {type(instrument_or_reader).__name__}"
        )
    existing = _REGISTRY.get(key)
    if existing is not None and not overwrite and existing != entry:
        same_reader = isinstance(existing, _ReaderInstrument) and existing.reader is instrument_or_reader
        if not same_reader:
            raise ValueError(
                f"an instrument named {key!r} is already registered; "
                "pass overwrite=True to replace it"
            )
        return existing
    _REGISTRY[key] = entry
    return entry


def known_instruments() -> list[str]:
    """Return the registered instrument names, sorted.

    Examples
    --------
    >>> {"generic", "goodman", "kosmos"} <= set(known_instruments())
    True
    """
    return sorted(_REGISTRY)


def get_instrument(name: str) -> Instrument | _ReaderInstrument:
    """Return the instrument registered under ``name`` (case-insensitive).

    Raises
    ------
    ValueError
        For an unknown name, listing the known ones.

    Examples
    --------
    >>> get_instrument("Kosmos").gain
    0.6
    """
    key = _normalise_name(name)
    try:
        return _REGISTRY[key]
    except KeyError:
        raise ValueError(
            f"unknown instrument {name!r}; known instruments: {', '.join(known_instruments())} "
            "(add one with register_instrument)"
        ) from None


def resolve_instrument(instrument, **options):
    """Return a ready-to-use instrument from a name, Instrument or reader.

    Parameters
    ----------
    instrument : str, Instrument or callable
        A registered name, an :class:`Instrument`, or a reader function.
    **options
        Loading options (see :meth:`Instrument.with_options`), or for a reader
        function, keyword arguments passed on to it.

    Examples
    --------
    >>> resolve_instrument("generic", dispersion_axis=0).transpose
    True
    """
    if isinstance(instrument, str):
        entry = get_instrument(instrument)
    elif isinstance(instrument, (Instrument, _ReaderInstrument)):
        entry = instrument
    elif callable(instrument):
        entry = _ReaderInstrument(getattr(instrument, "__name__", "reader"), instrument)
    else:
        raise TypeError(
            f"instrument must be a name ({', '.join(known_instruments())}), an Instrument "
            f"or a reader function; got {instrument!r}"
        )
    return entry.with_options(**options) if options else entry
