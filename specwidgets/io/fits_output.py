"""Sky-subtracted FITS files with provenance, written atomically.

One file per exposure, ``<input stem>_sky.fits``, holding

========  =====================================================================
HDU       content
========  =====================================================================
PRIMARY   no data; the header records the software version, the input file,
          the instrument and crop, the calibration files, the sky method and
          its parameters, the mask, the warp-model coefficients and the date
SCI       data minus sky (float32 by default)
SKY       the sky background of every pixel
VAR       variance of each SCI pixel (see :func:`sci_variance`)
MASK      uint8 bit mask (see :data:`MASK_BITS`)
========  =====================================================================

Files are written under a temporary name in the output folder
(``.<name>.tmp-<pid>-<random>``), flushed and fsync'ed, then renamed over
the final name with :func:`os.replace`, so a killed writer never leaves a
truncated file under a final name. Every HDU carries ``CHECKSUM``/``DATASUM``
cards, and the primary header ends with ``SWDONE = T``; :func:`inspect_output`
checks all of that, and :func:`clean_temporary_files` removes what a killed
writer left behind.

:func:`export_result` writes the same files from an in-memory
:class:`~specwidgets.core.sky.api.SkyResult` (the dashboard's export);
:mod:`specwidgets.batch` writes them for any number of exposures.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
import secrets
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..core.rows import RowRanges
from ..core.sky.quality import _fit_card
from ..core.warp import WarpModel
from .discovery import fits_stem

__all__ = [
    "EXTENSIONS",
    "MASK_BITS",
    "MASK_MASKED",
    "MASK_REJECTED",
    "MASK_NONFINITE",
    "MASK_BADCOLUMN",
    "MASK_BADFLAT",
    "MASK_SATURATED",
    "OUTPUT_SUFFIX",
    "OutputState",
    "bad_flat_mask",
    "clean_temporary_files",
    "export_result",
    "fit_orientation",
    "input_orientation",
    "inspect_output",
    "observation_cards",
    "mask_image",
    "output_name",
    "output_turn",
    "read_warp_model",
    "result_quality",
    "sci_variance",
    "settings_hash",
    "named_write_error",
    "sky_header",
    "write_exposure",
]

#: Image extensions of every output file, in order.
EXTENSIONS = ("SCI", "SKY", "VAR", "MASK")

#: Appended to the input's stem to name its output.
OUTPUT_SUFFIX = "_sky.fits"

#: Marks temporary files: ``.<final name>.tmp-<pid>-<random>``.
TMP_MARK = ".tmp-"

#: Row masked by the user (the trace): excluded from the sky fit.
MASK_MASKED = 1
#: Sky pixel rejected by the fit as an outlier (cosmic ray, hot pixel).
MASK_REJECTED = 2
#: Input pixel not finite (NaN or inf): ignored by the fit.
MASK_NONFINITE = 4
#: Flat-field pixel unusable (normalised flat not finite or <= the floor): science set to NaN.
MASK_BADFLAT = 8
#: Detector column the fit found dead or hot (``SkyQuality.bad_columns``): its data are not usable.
MASK_BADCOLUMN = 16
#: Input pixel at the frame's ceiling (saturated: a lower limit; ``specwidgets.core.frames.saturated_pixels``):
#: set to NaN before the sky fit.
MASK_SATURATED = 32

#: Bit -> meaning of the ``MASK`` extension (bits combine with OR).
MASK_BITS = {
    MASK_MASKED: "row masked by the user, excluded from the sky fit",
    MASK_REJECTED: "sky pixel rejected by the fit (cosmic ray, hot pixel)",
    MASK_NONFINITE: "input pixel not finite, ignored",
    MASK_BADFLAT: "flat-field pixel unusable, science set to NaN",
    MASK_BADCOLUMN: "detector column dead or hot, left out of the sky fit; data not usable",
    MASK_SATURATED: "input pixel at the frame's ceiling (saturated), set to NaN",
}

_OPTION_CARDS = {
    "spatial_order": ("SWSPORD", "B-spline sky: Legendre order along the slit"),
    "knot_spacing": ("SWKNOTSP", "B-spline sky: knot spacing (effective px)"),
    "reject_sigma": ("SWREJSIG", "B-spline sky: rejection threshold (sigma)"),
    "max_iterations": ("SWMAXIT", "B-spline sky: max reweight/reject iterations"),
}


# COMMENT cards that carry the sky fit's warnings, and the text width of one card.
WARNING_PREFIX = "sky fit warning: "
_COMMENT_WIDTH = 72
_CONTINUED = "  "


def output_name(path):
    """Output file name for an input path: the name without its FITS and compression endings, plus ``_sky.fits``.

    >>> output_name("night1/0069_PKS.fits.fz")
    '0069_PKS_sky.fits'
    >>> output_name("frame_001.FITS")
    'frame_001_sky.fits'
    >>> output_name("night1_sci.fits.bz2")
    'night1_sci_sky.fits'
    """
    return fits_stem(path) + OUTPUT_SUFFIX


# ------------------------------------------------------------------ content
def sci_variance(result, exposure=0, flat_noise=None):
    """Variance of each pixel of ``data - background``.

    The library's noise model applied to the data themselves (sky and source
    photons): ``max(data, 0) / gain + (read_noise / gain) ** 2``, plus the
    variance of the sky estimate (``SkyResult.variance``). For frames divided
    by a flat (``flat_noise``, a :class:`~specwidgets.core.flat.FlatNoise`),
    the photon and read noise of the counts before the division
    (:meth:`~specwidgets.core.flat.FlatNoise.photon_variance`), plus
    ``data**2`` times the flat's relative variance (its own noise). NaN where
    the data are NaN.

    A gain estimated from the flat-fielded frames' sky took in part of the
    flat's noise already, which this adds again: VAR is then up to 10-15 %
    high where the flat's noise is (a sky of thousands of electrons, flats of
    a few frames; a few % otherwise). Give the gain to avoid it.
    """
    data = result.data[exposure]
    if flat_noise is None:
        noise = np.clip(data, 0, None) / result.gain + (result.read_noise / result.gain) ** 2
    else:
        noise = flat_noise.photon_variance(data, result.gain, result.read_noise)
        noise = noise + data**2 * flat_noise.relative_variance(result.gain, result.read_noise)
    return noise + result.variance[exposure]


def bad_flat_mask(flat):
    """The uint8 ``extra`` mask of a normalised flat: :data:`MASK_BADFLAT` where it is not finite."""
    return np.where(np.isfinite(flat), 0, MASK_BADFLAT).astype(np.uint8)


def mask_image(result, exposure=0, extra=None):
    """The uint8 ``MASK`` image of one exposure (bits in :data:`MASK_BITS`).

    ``extra`` is OR'ed in (e.g. :data:`MASK_BADFLAT` where the flat was bad).
    """
    mask = np.zeros(result.data.shape[1:], np.uint8)
    mask[result.mask] |= MASK_MASKED
    if result.rejected is not None and np.size(result.rejected):
        mask[result.rejected[exposure]] |= MASK_REJECTED
    mask[~np.isfinite(result.data[exposure])] |= MASK_NONFINITE
    bad = list(getattr(result.quality, "bad_columns", ()))
    if bad:
        mask[:, bad] |= MASK_BADCOLUMN
    if extra is not None:
        mask |= np.asarray(extra, np.uint8)
    return mask


def effective_options(method, options):
    """The sky method's parameters with the defaults filled in (what the fit used).

    The same as :func:`specwidgets.core.sky.api.resolve_options`.
    """
    from ..core.sky.options import resolve_options

    return resolve_options(method, options)


def _card_value(value):
    if value is None:
        return "none"
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def _ranges_text(ranges):
    """The ``SWMASK`` card: :meth:`RowRanges.header_value` (``RowRanges.from_header`` reads it back)."""
    return RowRanges.coerce(ranges).header_value()


def _crop_text(crop):
    if crop is None:
        return "none"
    start, stop = crop
    return f"{'' if start is None else start}:{'' if stop is None else stop}"


def settings_hash(settings):
    """A short, stable hash of a JSON-able settings dict (floats rounded to 9 digits).

    Written as ``SWCONFIG``: a resumed run only skips an output made with the
    same settings.
    """

    def canon(value):
        if isinstance(value, dict):
            return {str(k): canon(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
        if isinstance(value, (list, tuple)):
            return [canon(v) for v in value]
        if isinstance(value, np.ndarray):
            return canon(value.tolist())
        if isinstance(value, (float, np.floating)):
            return float(f"{float(value):.9g}")
        if isinstance(value, np.integer):
            return int(value)
        return value

    text = json.dumps(canon(settings), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


#: Observation keywords of an input header carried into its output's primary header (those present).
#: Not GAIN/RDNOISE/BUNIT: the output is in other units (``SWUNIT``, ``SWGAIN``, ``SWRDNOIS`` say which).
OBSERVATION_KEYWORDS = (
    "OBJECT", "OBSTYPE", "IMAGETYP", "DATE-OBS", "TIME-OBS", "UT", "UTC", "MJD-OBS", "JD", "EXPTIME", "EXPOSURE",
    "RA", "DEC", "EQUINOX", "RADESYS", "EPOCH", "AIRMASS", "HA", "LST", "ZD", "ALT", "AZ", "INSTRUME", "TELESCOP",
    "OBSERVER", "OBSERVAT", "SITE", "PROPID", "PROGRAM", "FILTER", "GRATING", "WAVMODE", "SLIT", "CCDSUM", "CAM_TARG",
    "GRT_TARG", "DISPAXIS",
)


def observation_cards(header):
    """The :data:`OBSERVATION_KEYWORDS` cards of ``header`` (an astropy Header, a dict or None), in that order.

    Examples
    --------
    >>> from astropy.io import fits
    >>> [c[0] for c in observation_cards(fits.Header({"EXPTIME": 300.0, "NAXIS": 2, "OBJECT": "NGC 253"}))]
    ['OBJECT', 'EXPTIME']
    """
    if header is None:
        return []
    cards = []
    for key in OBSERVATION_KEYWORDS:
        if key in header:
            value = header[key]
            comment = header.comments[key] if isinstance(header, fits.Header) else ""
            if isinstance(value, (str, int, float, bool, np.integer, np.floating, np.bool_)):
                cards.append((key, value, comment))
    return cards


def sky_header(result, exposure=0, *, warp_model=None, provenance=None, config=None, input_header=None):
    """The primary header of an output file.

    Parameters
    ----------
    result : SkyResult
    exposure : int
    warp_model : WarpModel or dict, optional
        Its coefficients are written (``SWW*`` cards and ``SWWARP``, the
        :meth:`~specwidgets.core.warp.WarpModel.to_dict` JSON that
        :func:`read_warp_model` reads back).
    provenance : dict, optional
        ``input`` (path), ``instrument``, ``crop`` ((start, stop)), ``unit``,
        ``bias``, ``flat``, ``arc`` (lists of file names), ``flat_norm``,
        ``n_guesses``.
    config : str, optional
        The settings hash (``SWCONFIG``).
    input_header : astropy.io.fits.Header, optional
        The input file's header: its observation keywords
        (:data:`OBSERVATION_KEYWORDS`: OBJECT, DATE-OBS, EXPTIME, RA/DEC,
        AIRMASS, INSTRUME, TELESCOP, ...) are copied first.
    """
    from ..core._version import __version__

    prov = dict(provenance or {})
    hdr = fits.Header()
    for key, value, comment in observation_cards(input_header):
        hdr[key] = (value, comment)
    # What reading the file did to it (an overscan level subtracted, bad pixels set to NaN): the reader's
    # own HISTORY cards, which no output carried (trial J1).
    for text in (input_header.get("HISTORY", []) if input_header is not None else []):
        if str(text).startswith("specwidgets:"):
            hdr.add_history(str(text))
    hdr["SWVER"] = (__version__, "specwidgets version")
    hdr["DATE"] = (
        _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "UTC date this file was written",
    )
    if prov.get("input") is not None:
        path = Path(os.fspath(prov["input"]))
        hdr["SWINPUT"] = (path.name, "input file")
        # (A long path leaves no room for a comment: astropy would warn and cut it.)
        hdr["SWINPATH"] = (str(path), "input file path") if len(str(path)) <= 40 else str(path)
    hdr["SWEXPOS"] = (int(exposure), "exposure index within the fitted stack")
    if prov.get("instrument") is not None:
        hdr["SWINSTR"] = (str(prov["instrument"]), "instrument recipe used to read the frames")
    if prov.get("dispersion_axis") is not None:
        hdr["SWDISPAX"] = (int(prov["dispersion_axis"]), "dispersion_axis read with (0: transposed)")
    transposed, quarter = _turn_of(prov.get("turn"))
    if transposed or quarter:
        # The images are the input's way round; rows (SWMASK, SWCROP) and the warp model are the fit's.
        hdr["SWTRANSP"] = (transposed, "input transposed to fit; images turned back")
        hdr["SWROT90"] = (quarter, "then np.rot90 quarter turns; images turned back")
    if "crop" in prov:
        hdr["SWCROP"] = (_crop_text(prov["crop"]), "rows kept of each trimmed frame (start:stop)")
    unit = _unit_of(result, prov)
    if unit is not None:
        hdr["SWUNIT"] = (unit, "unit of SCI, SKY (VAR: squared)")
    if prov.get("input_gain") is not None:
        # GAIN (of the fit) is 1 for data in electrons: the raw file's own is kept here.
        hdr["SWINGAIN"] = (float(prov["input_gain"]), "input gain applied: data units -> e- (e-/unit)")
    for key, card, what in (("bias", "SWNBIAS", "bias"), ("flat", "SWNFLAT", "flat"), ("arc", "SWNARC", "arc")):
        if key in prov:
            how = prov.get("arc_combine", "median") if key == "arc" else "median"
            hdr[card] = (len(prov[key]), f"{what} frames combined ({how})")
    if prov.get("flat"):
        hdr["SWFLNORM"] = (str(prov.get("flat_norm", "pixel")), "flat normalisation")
    if prov.get("n_guesses") is not None:
        hdr["SWNGUESS"] = (int(prov["n_guesses"]), "arc-line guesses given to the warp fit")

    hdr["SWMETHOD"] = (result.method, "sky method (fit_sky)")
    for name, value in effective_options(result.method, result.options).items():
        card, comment = _OPTION_CARDS.get(name, (None, None))
        if card is None:
            hdr.add_history(f"sky option {name} = {value!r}")
        else:
            hdr[card] = (_card_value(value), comment)
    hdr["SWRDNOIS"] = (float(result.read_noise), "read noise used by the noise model (e-)")
    hdr["SWGAIN"] = (float(result.gain), "gain used by the noise model (e-/data unit)")
    mask_text = _ranges_text(result.mask_region)
    # Its comment cut where the value fits one card (five ranges did not
    # leave room for it: astropy warned "Card is too long" on every file);
    # a longer value goes on CONTINUE cards whole, as RowRanges reads it back.
    hdr["SWMASK"] = (_fit_card("SWMASK", mask_text, "masked rows start:stop (Python slices)")[1:]
                     if len(mask_text) <= 68 else (mask_text, "masked rows start:stop (Python slices)"))
    hdr["SWNMASK"] = (len(result.mask_region), "number of masked row ranges")
    if result.rejected is not None and np.size(result.rejected):
        hdr["SWNREJ"] = (int(result.rejected[exposure].sum()), "sky pixels rejected by the fit")
    _quality_cards(hdr, result, exposure)

    if warp_model is not None:
        values = warp_model.to_dict() if isinstance(warp_model, WarpModel) else dict(warp_model)
        coef = np.asarray(values["coefficients"], float)
        hdr["SWWSHAPE"] = ("x".join(str(s) for s in values["shape"]), "warp model: image rows x cols")
        hdr["SWWREF"] = (int(values["ref_row"]), "warp model: reference row")
        hdr["SWWRSCL"] = (float(values["row_scale"]), "warp model: t = (row - ref_row) / row_scale")
        hdr["SWWCCEN"] = (float(values["col_centre"]), "warp model: u = (e - col_centre) / col_scale")
        hdr["SWWCSCL"] = (float(values["col_scale"]), "warp model: column scale")
        hdr["SWWLORD"] = (int(coef.shape[0]), "warp model: line_order (powers of t)")
        hdr["SWWWORD"] = (int(coef.shape[1]) - 1 if coef.ndim == 2 else 0, "warp model: warp_order (powers of u)")
        for k in range(coef.shape[0]):
            for j in range(coef.shape[1] if coef.ndim == 2 else 0):
                hdr[f"SWW{k + 1:02d}{j:02d}"] = (float(coef[k, j]), f"warp coef of t^{k + 1} u^{j}")
        hdr["SWWARP"] = (json.dumps(values, separators=(",", ":")), "WarpModel.to_dict() as JSON")
    for bit, meaning in MASK_BITS.items():
        hdr.add_comment(f"MASK bit {bit}: {meaning}")
    for key in ("bias", "flat", "arc"):
        for name in prov.get(key, ()):
            hdr.add_history(f"{key}: {Path(os.fspath(name)).name}")
    if config is not None:
        hdr.append(("SWCONFIG", str(config), "resume: settings-data hashes"), end=True)
    # Last of ours: a reader that sees it knows the writer got to the end.
    hdr.append(("SWDONE", True, "file complete"), end=True)
    return hdr


def result_quality(result, exposure=0):
    """The fit's quality report (``SkyResult.quality``) for one exposure, or None when it has none.

    A list of per-exposure reports is indexed by ``exposure``.
    """
    quality = getattr(result, "quality", None)
    if isinstance(quality, (list, tuple)):
        quality = quality[exposure] if 0 <= exposure < len(quality) else None
    return quality


#: The COMMENT card that holds a noise source too long for ``SWNSRC`` starts with this.
NOISE_SOURCE_PREFIX = "specwidgets noise model: "


def _quality_cards(hdr, result, exposure):
    """``SWSUSP``, the quality's own ``header_cards()`` and its warnings as COMMENT cards."""
    quality = result_quality(result, exposure)
    if quality is None:
        return
    hdr["SWSUSP"] = (bool(getattr(quality, "suspect", False)), "the sky fit says it is probably wrong")
    source = getattr(quality, "noise_source", None)
    if source:
        # Cut to one card, as the quality's own cards are (no astropy warning per file).
        hdr["SWNSRC"] = _fit_card("SWNSRC", str(source), "where the noise model came from")[1:]
        if len(str(source)) > len(str(hdr["SWNSRC"])):
            # Whole, in COMMENT cards (trial M1: the card cut it mid-sentence, "... 5 e- plus the subtrac").
            for line in textwrap.wrap(f"{NOISE_SOURCE_PREFIX}{source}", _COMMENT_WIDTH, subsequent_indent=_CONTINUED,
                                      break_on_hyphens=False, break_long_words=False):
                hdr.add_comment(line)
    cards = getattr(quality, "header_cards", None)
    for key, value, comment in (cards() if callable(cards) else ()):
        value = _card_value(value)
        if isinstance(value, float) and not np.isfinite(value):
            value = str(value)  # FITS headers hold no NaN or infinity
        hdr[str(key)] = (value, str(comment or ""))
    for warning in getattr(quality, "warnings", ()) or ():
        # Wrapped here, not by astropy: its split cards lose a space at a cut
        # and cannot be told from other comments when read back.
        for line in textwrap.wrap(f"{WARNING_PREFIX}{warning}", _COMMENT_WIDTH, subsequent_indent=_CONTINUED,
                                  break_on_hyphens=False, break_long_words=False):
            hdr.add_comment(line)


def header_warnings(header):
    """The sky fit's warnings that :func:`sky_header` wrote as COMMENT cards, whole.

    A warning longer than a card goes on in the following cards, indented.
    Files written before that have astropy's split instead (72-character
    cards, continued by the next card); those are read too, though a space
    at a cut is lost.

    Examples
    --------
    >>> from astropy.io import fits
    >>> hdr = fits.Header()
    >>> _quality_cards(hdr, None, 0)  # no quality: no cards
    >>> for line in textwrap.wrap(WARNING_PREFIX + "word " * 40 + "end", 72, subsequent_indent=_CONTINUED):
    ...     hdr.add_comment(line)
    >>> hdr.add_comment(WARNING_PREFIX + "short")
    >>> header_warnings(hdr) == ["word " * 40 + "end", "short"]
    True
    """
    found, full = [], False
    for card in header.get("COMMENT", []) if "COMMENT" in header else []:
        text = str(card)
        if text.startswith(WARNING_PREFIX):
            found.append(text[len(WARNING_PREFIX):])
        elif found and text.startswith(_CONTINUED) and text.strip():
            found[-1] += " " + text.strip()
        elif found and full and not text.startswith("MASK bit "):
            found[-1] += text  # astropy's own split of a long card
        else:
            full = False
            continue
        full = len(text) >= _COMMENT_WIDTH
    return found


def read_warp_model(header):
    """Rebuild the :class:`~specwidgets.core.warp.WarpModel` recorded in an output's primary header."""
    if "SWWARP" not in header:
        raise KeyError("the header records no warp model (no SWWARP card)")
    return WarpModel.from_dict(json.loads(header["SWWARP"]))


def _turn_of(turn):
    """``(transposed, quarter_turns)`` from a provenance's ``turn`` (None: not turned)."""
    if not turn:
        return False, 0
    transposed, quarter = turn
    return bool(transposed), int(quarter) % 4


def input_orientation(image, turn):
    """``image`` (in the fit's orientation, dispersion along columns) turned back as its input was stored.

    ``turn`` is how the input was turned to fit (:attr:`Frame.turn
    <specwidgets.io.instruments.Frame>`): transposed or not, then
    ``np.rot90`` by ``quarter_turns``. The inverse of
    :func:`fit_orientation`.

    Examples
    --------
    >>> stored = np.arange(6).reshape(2, 3)
    >>> fitted = np.rot90(stored.T, k=1)
    >>> bool(np.array_equal(input_orientation(fitted, (True, 1)), stored))
    True
    """
    transposed, quarter = _turn_of(turn)
    if quarter:
        image = np.rot90(image, k=-quarter)
    return image.T if transposed else image


def fit_orientation(image, turn):
    """``image`` as stored in an input (or an output turned back to it) turned as the fit saw it."""
    transposed, quarter = _turn_of(turn)
    if transposed:
        image = image.T
    return np.rot90(image, k=quarter) if quarter else image


def output_turn(header):
    """The turn an output's images were turned back from (its ``SWTRANSP`` and ``SWROT90`` cards)."""
    return bool(header.get("SWTRANSP", False)), int(header.get("SWROT90", 0) or 0)


def _unit_of(result, provenance):
    """The data unit: the provenance's (batch knows its reader's), else the one the fit's frames carried."""
    unit = provenance.get("unit")
    if unit is None:
        unit = getattr(result, "unit", None)
    return None if unit is None else str(unit)


def build_hdulist(result, exposure=0, *, warp_model=None, provenance=None, config=None, dtype="float32", extra_mask=None,
                  input_header=None, flat_noise=None):
    """The five HDUs of one output file, in memory (``flat_noise``: see :func:`sci_variance`)."""
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype("float32"), np.dtype("float64")):
        raise ValueError(f"dtype must be float32 or float64; got {dtype}")
    unit = _unit_of(result, provenance or {})
    primary = fits.PrimaryHDU(
        header=sky_header(result, exposure, warp_model=warp_model, provenance=provenance, config=config,
                          input_header=input_header)
    )
    sky = result.background[exposure]
    images = {
        "SCI": (result.data[exposure] - sky, "data minus sky"),
        "SKY": (sky, "sky background"),
        "VAR": (sci_variance(result, exposure, flat_noise), "variance of SCI"),
    }
    # The images as the input file holds them: a frame turned to fit
    # (dispersion along y, DISPAXIS = 2) is turned back, so that they lie on
    # the input pixel for pixel (they were transposed: trial L2).
    turn = (provenance or {}).get("turn")
    hdus = [primary]
    for name, (image, what) in images.items():
        hdu = fits.ImageHDU(np.ascontiguousarray(input_orientation(np.asarray(image, dtype=dtype), turn)), name=name)
        hdu.header["EXTNAME"] = (name, what)
        if unit is not None:
            hdu.header["BUNIT"] = (f"{unit}**2" if name == "VAR" else str(unit), "unit")
        hdus.append(hdu)
    mask = fits.ImageHDU(np.ascontiguousarray(input_orientation(mask_image(result, exposure, extra_mask), turn)),
                         name="MASK")
    for bit, meaning in MASK_BITS.items():
        mask.header[f"MASKB{bit}"] = meaning[:68]
    hdus.append(mask)
    return fits.HDUList(hdus)


# ------------------------------------------------------------------ writing
def _tmp_name(final):
    return final.parent / f".{final.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse
        pass
    finally:
        os.close(fd)


def _commit(tmp, final):
    """Rename the finished temporary file over the final name (atomic on POSIX)."""
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _open_tmp(tmp):
    """Create the temporary file (never an existing one) and return it open for writing."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    return os.fdopen(fd, "wb")


#: errno -> what to call it: the words a user searches for.
_WRITE_ERRORS = {
    getattr(errno, "ENOSPC", None): "disk full",
    getattr(errno, "EDQUOT", None): "disk quota exceeded",
    getattr(errno, "EFBIG", None): "file too large for the file system",
    getattr(errno, "EACCES", None): "permission denied",
    getattr(errno, "EPERM", None): "permission denied",
    getattr(errno, "EROFS", None): "read-only file system",
}


def named_write_error(exc, path):
    """An :class:`OSError` saying in words what went wrong writing ``path`` (e.g. "disk full")."""
    what = _WRITE_ERRORS.get(exc.errno) or "could not write"
    if exc.errno is None and "requested and" in str(exc):
        # numpy's tofile reports a short write ("N requested and M written")
        # without an errno: the disk filled up under it.
        what = "disk full (short write)"
    detail = exc.strerror or str(exc)
    return OSError(exc.errno, f"{what} while writing {path}: {detail}")


def _os_error_in(exc):
    """The OSError behind ``exc`` (preferring one with an errno), or None.

    astropy's free-space check turns an OSError from the write into
    "AttributeError: 'list' object has no attribute '_file'" (it looks for a
    file name on a file object), or re-raises it without its errno: the
    real error is in the exception's context chain.
    """
    found, seen = None, set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError):
            if exc.errno is not None:
                return exc
            found = found or exc
        exc = exc.__cause__ or exc.__context__
    return found


def write_atomic(hdul, path):
    """Write an HDUList with checksums to ``path`` through a temporary file and a rename.

    Nothing is left behind on failure (the temporary file is removed, an
    existing ``path`` is untouched). A full disk or a refused permission
    raises :class:`OSError` saying so ("disk full while writing ...").
    """
    final = Path(os.fspath(path))
    tmp = _tmp_name(final)
    try:
        with _open_tmp(tmp) as handle:
            hdul.writeto(handle, checksum=True)
            handle.flush()
            os.fsync(handle.fileno())
        _commit(tmp, final)
    except BaseException as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        error = _os_error_in(exc)
        if error is not None:
            raise named_write_error(error, final) from exc
        raise
    return final


def write_exposure(result, exposure, path, *, warp_model=None, provenance=None, config=None, dtype="float32", extra_mask=None,
                   input_header=None, flat_noise=None):
    """Write one exposure of a :class:`SkyResult` as a ``_sky.fits`` file (atomically).

    ``input_header``: the input file's header, whose observation keywords
    are carried over (see :func:`sky_header`); ``flat_noise``: the noise of
    the flat the frames were divided by (see :func:`sci_variance`). Returns
    the path written.
    """
    hdul = build_hdulist(
        result, exposure, warp_model=warp_model, provenance=provenance, config=config, dtype=dtype, extra_mask=extra_mask,
        input_header=input_header, flat_noise=flat_noise,
    )
    return write_atomic(hdul, path)


def export_result(result, out_dir, names, *, warp_model=None, provenance=None, overwrite=True, dtype="float32",
                  input_headers=None, extra_mask=None, flat_noise=None):
    """Write every exposure of an in-memory :class:`SkyResult` as the batch runner would.

    Parameters
    ----------
    result : SkyResult
        From :func:`~specwidgets.core.sky.api.fit_sky`.
    out_dir : str or os.PathLike
        Folder for the files (created if needed).
    names : sequence of str or os.PathLike
        The input file of each exposure (its name gives the output name and
        the ``SWINPUT`` card), one per exposure.
    warp_model : WarpModel, optional
        The model the sky was fit with; its coefficients go in the header.
    provenance : dict or sequence of dict, optional
        Header entries (see :func:`sky_header`): one dict shared by every
        exposure, or one per exposure (an ``input_gain`` differs between
        files); ``input`` is set per file.
    overwrite : bool
        Replace existing files (default); with False, an existing output raises.
    dtype : {"float32", "float64"}
    input_headers : sequence of astropy.io.fits.Header, optional
        Each exposure's input header (None entries allowed): its observation
        keywords go into that output, as batch carries them.
    flat_noise : specwidgets.core.flat.FlatNoise, optional
        The noise of the flat the frames were divided by: added to ``VAR``.
    extra_mask : (n_rows, n_cols) uint8 array, optional
        Bits OR'ed into every exposure's ``MASK`` (:data:`MASK_BADFLAT` where
        the flat the frames were divided by was unusable, as batch marks them).

    Returns
    -------
    list of pathlib.Path
    """
    names = [names] if isinstance(names, (str, os.PathLike)) else list(names)
    n_exp = result.data.shape[0]
    if len(names) != n_exp:
        raise ValueError(f"names has {len(names)} entries but the result holds {n_exp} exposure(s)")
    headers = [None] * n_exp if input_headers is None else list(input_headers)
    if len(headers) != n_exp:
        raise ValueError(f"input_headers has {len(headers)} entries but the result holds {n_exp} exposure(s)")
    provs = [provenance] * n_exp if provenance is None or isinstance(provenance, dict) else list(provenance)
    if len(provs) != n_exp:
        raise ValueError(f"provenance has {len(provs)} entries but the result holds {n_exp} exposure(s)")
    outs = [output_name(n) for n in names]
    dups = sorted({o for o in outs if outs.count(o) > 1})
    if dups:
        raise ValueError(f"several exposures would write the same output file: {', '.join(dups)}")
    folder = Path(os.fspath(out_dir))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise named_write_error(exc, folder) from exc
    written = []
    for k, (name, out) in enumerate(zip(names, outs)):
        target = folder / out
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
        prov = {**(provs[k] or {}), "input": name}
        written.append(write_exposure(result, k, target, warp_model=warp_model, provenance=prov, dtype=dtype,
                                      input_header=headers[k], extra_mask=extra_mask, flat_noise=flat_noise))
    return written


# ------------------------------------------------------------------ checking
@dataclass(frozen=True)
class OutputState:
    """What :func:`inspect_output` found: ``state`` is one of
    ``"complete"``, ``"missing"``, ``"invalid"`` or ``"different"`` (complete,
    but made with other settings)."""

    state: str
    reason: str = ""

    @property
    def complete(self):
        return self.state == "complete"


def inspect_output(path, shape=None, config=None):
    """Is ``path`` a complete output file?

    Complete means: its size is a whole number of FITS blocks; astropy opens
    it with the HDUs PRIMARY, SCI, SKY, VAR, MASK in that order; every HDU's
    ``CHECKSUM`` and ``DATASUM`` verify; the images share one shape
    (``shape`` when given) and MASK is uint8; and the primary header holds
    ``SWDONE = T``. With ``config``, ``SWCONFIG`` must also equal it (else
    the state is ``"different"``).

    The checks do not rely on astropy's warnings (``warnings.catch_warnings``
    is not thread-safe, and workers may be threads).
    """
    path = Path(os.fspath(path))
    if not path.is_file():
        return OutputState("missing", "no such file")
    size = path.stat().st_size
    if size == 0 or size % 2880:
        return OutputState("invalid", f"truncated: {size} bytes is not a whole number of 2880-byte FITS blocks")
    try:
        with fits.open(path, checksum=False, lazy_load_hdus=False, memmap=False) as hdul:
            names = [h.name for h in hdul]
            if names != ["PRIMARY", *EXTENSIONS]:
                return OutputState("invalid", f"HDUs are {names}")
            header = hdul[0].header
            if header.get("SWDONE") is not True:
                return OutputState("invalid", "no SWDONE = T card")
            for hdu in hdul:
                if "CHECKSUM" not in hdu.header or "DATASUM" not in hdu.header:
                    return OutputState("invalid", f"no checksum in HDU {hdu.name}")
                if hdu.verify_datasum() != 1 or hdu.verify_checksum() != 1:
                    return OutputState("invalid", f"checksum of HDU {hdu.name} does not verify")
            shapes = {h.name: None if h.data is None else h.data.shape for h in hdul[1:]}
            # (``shape`` is the fit's; the images were turned back as the input lies.)
            want = shapes["SCI"] if shape is None else tuple(shape)
            transposed, quarter = output_turn(header)
            if transposed != bool(quarter % 2):  # (a transpose or an odd quarter turn swaps the axes)
                want = want[::-1]
            bad = {n: s for n, s in shapes.items() if s != want}
            if bad:
                return OutputState("invalid", f"image shapes {bad} differ from {want}")
            if hdul["MASK"].data.dtype != np.uint8:
                return OutputState("invalid", f"MASK is {hdul['MASK'].data.dtype}, not uint8")
            found_config = header.get("SWCONFIG")
    except Exception as exc:  # noqa: BLE001 - any failure to read means "not complete"
        return OutputState("invalid", f"{type(exc).__name__}: {exc}")
    if config is not None and found_config is None:
        # The page's Export writes no resume card: its settings are unknown to batch.
        return OutputState(
            "different", "written by the dashboard's Export (no SWCONFIG settings card, so batch cannot tell "
            "whether its settings match)"
        )
    if config is not None and found_config != config:
        return OutputState("different", f"made with other settings (SWCONFIG {found_config} != {config})")
    return OutputState("complete")


def clean_temporary_files(out_dir):
    """Remove temporary files a killed writer left in ``out_dir``; return their paths."""
    folder = Path(os.fspath(out_dir))
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.glob(f".*{TMP_MARK}*"):
        if entry.is_file() and OUTPUT_SUFFIX + TMP_MARK in entry.name:
            try:
                entry.unlink()
                removed.append(entry)
            except FileNotFoundError:
                pass
    return removed
