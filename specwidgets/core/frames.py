"""Image arrays that carry their noise model: gain, read noise and where they came from.

The loaders (:func:`~specwidgets.io.loading.collect_images_array`,
:func:`~specwidgets.io.loading.average_matching_files`), the batch runner and the
synthetic data sets return :class:`FrameArray` objects: plain float64 numpy
arrays with a few extra attributes, so that what the headers say about the
detector reaches :func:`~specwidgets.core.sky.api.fit_sky` without the user
copying numbers by hand::

    science = collect_images_array(folder, instrument="goodman") - bias
    science.gain, science.read_noise, science.noise_source
    # (1.0, 4.74, 'header GAIN/RDNOISE of goodman frames')

Attributes
----------
gain : float or None
    Electrons per data unit. 1.0 for data already converted to electrons;
    None when unknown (data in ADU and no gain known).
read_noise : float or None
    Read noise **in electrons** (per data value: for combined frames it is the
    combination's), or None when unknown.
noise_source : str
    Where ``gain`` and ``read_noise`` came from, in words (e.g. ``"header
    GAIN/RDNOISE of goodman frames"``, ``"argument"``, ``"synthetic truth"``);
    ``""`` when nothing is known.
unit : str or None
    ``"electron"``, ``"adu"`` or None.
header : astropy.io.fits.Header or None
    The header of the first frame read, when there is one.
n_combined : float or None
    How many frames of the detector each value averages, as far as the read
    noise goes: 1 for a frame as read (and for a sum of frames, whose
    ``read_noise`` says the rest), N for a mean of N, :func:`median_frames`
    (about ``2N/pi``) for a median of N (see
    :func:`~specwidgets.io.loading.noise_of_frames`); None
    when not known (your own arrays, and results of scaling or reducing).

How the metadata travels
------------------------
* Slicing, views, copies, ``astype`` and in-place arithmetic keep it.
* Arithmetic between arrays (``science - bias``, ``image / flat``) keeps the
  metadata of the **left** operand, attribute by attribute, except that a
  None there is filled from the right operand (``plain - frames`` therefore
  keeps the frames' metadata). The numbers describe the detector, so they
  are not rescaled: after multiplying the data by a factor, set ``gain``
  yourself (or use :func:`with_noise`).
* One exception: adding or subtracting two frames whose ``n_combined`` and
  ``read_noise`` are known (what the loaders return) adds the right one's
  read noise to the result's, in the left one's units. ``science - bias``
  with a median of 5 bias frames carries the master bias's noise:
  ``read_noise`` grows from ``rn`` to ``rn * sqrt(1 + 1 / 3.46)``, and
  ``noise_source`` says so. Left out, the noise model was too low at faint
  levels: a gain estimated with the header's read noise came out 2.1 for
  2.5 (3 bias frames), and the output variance ~9 % low.
* Comparisons and other boolean results (masks) are plain arrays.
* ``np.stack`` and ``np.concatenate`` return plain arrays: wrap the result
  with :func:`frame_array` (``like=`` one of the inputs) to keep the metadata.
* Reductions that return a scalar (``.sum()``, ``np.median(a)``) return plain
  numbers; ``np.asarray(a)`` returns a plain ndarray (no metadata).

Examples
--------
>>> import numpy as np
>>> a = FrameArray(np.ones((2, 3)), gain=1.0, read_noise=4.0, noise_source="argument")
>>> b = a[:, 1:] - 0.5
>>> type(b).__name__, b.gain, b.read_noise, b.noise_source
('FrameArray', 1.0, 4.0, 'argument')
>>> type(a.sum()).__name__
'float64'
>>> plain = np.zeros((2, 3))
>>> (plain - a).read_noise       # None on the left is filled from the right
4.0
"""

from __future__ import annotations

import math
import numbers
import re

import numpy as np

__all__ = [
    "ESTIMATE",
    "FrameArray",
    "NOISE_ATTRIBUTES",
    "check_gain",
    "check_read_noise",
    "frame_array",
    "noise_of",
    "noise_setting",
    "with_noise",
    "with_readout_of",
    "median_frames",
    "saturated_pixels",
]

#: The metadata attributes of a :class:`FrameArray`, in the order they are merged.
NOISE_ATTRIBUTES = ("gain", "read_noise", "noise_source", "unit", "header", "n_combined")


#: The ``read_noise``/``gain`` setting that asks fit_sky to estimate it even
#: when the frames carry one (the dashboard's state, sessions and batch).
ESTIMATE = "estimate"

#: Texts of a field meaning "no value of my own": the frames', else fit_sky's default/estimate.
_BLANK = ("", "auto", "none", "header", "default", "from frames")


def check_gain(value: float | None, name: str = "gain") -> float | None:
    """``value`` as a float gain (electrons per data unit), or None for "unknown" (taken from the frames or estimated).
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of electrons per data unit or None; got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{name} must be a positive finite number of electrons per data unit "
            f"(or None to take it from the frames or estimate it); got {value!r}"
        )
    return value


def check_read_noise(value: float | None, name: str = "read_noise") -> float | None:
    """``value`` as a float read noise (electrons), or None for "unknown" (taken from the frames or estimated)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of electrons or None; got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"{name} must be a non-negative finite number of electrons "
            f"(or None to take it from the frames or estimate it); got {value!r}"
        )
    return value


def noise_setting(value, name: str = "read_noise", *, positive: bool | None = None) -> float | str | None:
    """A read-noise or gain *setting*: None (the frames' own, else fit_sky's), ``"estimate"`` or a checked float.

    Text is read as a form field is: blank, ``"auto"``, ``"header"``... mean
    None, ``"estimate"`` (any case) means :data:`ESTIMATE`, anything else
    must be a number. ``positive`` (default: ``name == "gain"``) refuses 0.

    Examples
    --------
    >>> noise_setting(" Estimate "), noise_setting(""), noise_setting("4.5"), noise_setting(2, "gain")
    ('estimate', None, 4.5, 2.0)
    >>> noise_setting("lots", "gain")
    Traceback (most recent call last):
    ...
    ValueError: gain must be a number, 'estimate' or blank (from the frames); got 'lots'
    """
    positive = name == "gain" if positive is None else positive
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _BLANK:
            return None
        if text == ESTIMATE:
            return ESTIMATE
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{name} must be a number, {ESTIMATE!r} or blank (from the frames); got {value!r}") from None
    return check_gain(value, name) if positive else check_read_noise(value, name)


class FrameArray(np.ndarray):
    """A numpy array with ``gain``, ``read_noise``, ``noise_source``, ``unit`` and ``header``.

    Parameters
    ----------
    data : array_like
        The pixel values (kept as given; no copy when already an ndarray).
    gain : float or None
        Electrons per data unit (1.0 when the data are electrons).
    read_noise : float or None
        Electrons.
    noise_source : str
        Where the two numbers came from.
    unit : str or None
        ``"electron"`` or ``"adu"``.
    header : astropy.io.fits.Header or None
    n_combined : float or None
        Frames each value averages (1 for a frame as read; None: not known).

    See the module documentation for how the metadata follows arithmetic.
    """

    gain = None
    read_noise = None
    noise_source = ""
    unit = None
    header = None
    n_combined = None

    def __new__(cls, data, gain=None, read_noise=None, noise_source="", unit=None, header=None, n_combined=None):
        obj = np.asarray(data).view(cls)
        obj.gain = check_gain(gain)
        obj.read_noise = check_read_noise(read_noise)
        obj.noise_source = str(noise_source or "")
        obj.unit = unit
        obj.header = header
        obj.n_combined = None if n_combined is None else check_gain(n_combined, "n_combined")
        return obj

    def __array_finalize__(self, obj):
        # Views, slices and copies of a FrameArray: same detector, same metadata.
        if obj is None:
            return
        for name in NOISE_ATTRIBUTES:
            setattr(self, name, getattr(obj, name, getattr(FrameArray, name)))

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        frames = [x for x in (*inputs, *(out or ())) if isinstance(x, FrameArray)]
        args = [x.view(np.ndarray) if isinstance(x, FrameArray) else x for x in inputs]
        if out is not None:
            kwargs["out"] = tuple(x.view(np.ndarray) if isinstance(x, FrameArray) else x for x in out)
        try:
            results = getattr(ufunc, method)(*args, **kwargs)
        except ValueError as exc:
            shaped = [x for x in inputs if isinstance(x, np.ndarray) and x.ndim >= 2]
            if len(shaped) < 2 or "broadcast" not in str(exc):
                raise
            raise ValueError(_mismatch_message(ufunc, shaped)) from None
        if results is NotImplemented:  # pragma: no cover - numpy decides
            return NotImplemented
        meta = _merge(frames)
        if method != "__call__" or (ufunc in _SCALING and any(np.ndim(x) == 0 for x in inputs)):
            # A reduction or a scaled frame: no longer what was read or combined.
            meta["n_combined"] = None
        readout = {}
        if method == "__call__" and ufunc in (np.add, np.subtract) and len(inputs) == 2:
            readout = _with_readout_of(ufunc, *inputs, meta)
            meta.update(readout)
        if method == "at":
            return None
        if ufunc.nout == 1:
            results = (results,)
        outs = out or (None,) * ufunc.nout
        wrapped = []
        for result, target in zip(results, outs):
            if target is not None:
                # In place: the caller's object, its metadata, with the read noise the other frame added.
                if readout and target is inputs[0]:
                    target.read_noise, target.noise_source = readout["read_noise"], readout["noise_source"]
                wrapped.append(target)
            elif isinstance(result, np.ndarray) and result.ndim > 0 and result.dtype != bool:
                wrapped.append(_attach(result.view(FrameArray), meta))
            elif isinstance(result, np.ndarray) and result.ndim > 0:
                wrapped.append(result)  # a mask (a > 0, np.isfinite) is not an image: plain
            else:
                wrapped.append(result[()] if isinstance(result, np.ndarray) else result)
        return wrapped[0] if len(wrapped) == 1 else tuple(wrapped)

    def __reduce__(self):
        # Pickling (Dask, multiprocessing) keeps the metadata.
        constructor, args, state = super().__reduce__()
        return constructor, args, (state, {n: getattr(self, n) for n in NOISE_ATTRIBUTES})

    def __setstate__(self, state):
        base, meta = state
        super().__setstate__(base)
        for name, value in meta.items():
            setattr(self, name, value)

    def __repr__(self):
        body = repr(self.view(np.ndarray))
        return (
            f"FrameArray({body}, gain={self.gain!r}, read_noise={self.read_noise!r}, "
            f"noise_source={self.noise_source!r}, unit={self.unit!r})"
        )


#: Header cards that give a frame's binning.
_BINNING_CARDS = ("CCDSUM", "BINNING", "CCDBIN", "XBINNING")


def binning_text(header):
    """The frame's binning card as ``"CCDSUM '2 2'"`` (the first of :data:`_BINNING_CARDS` it has), or "".

    >>> from astropy.io import fits
    >>> binning_text(fits.Header({"CCDSUM": "2 2"})), binning_text(None)
    ("CCDSUM '2 2'", '')
    """
    card = next((c for c in _BINNING_CARDS if header is not None and c in header), None)
    return f"{card} {header[card]!r}" if card else ""


def _mismatch_message(ufunc, arrays):
    """Why frames of different shapes cannot be combined, with their binning cards when the headers have them."""
    shapes = " and ".join(str(tuple(a.shape)) for a in arrays)
    if len(arrays) == 2 and all(np.ndim(a) >= 2 for a in arrays) and arrays[0].shape[-2:] == arrays[1].shape[-2:][::-1]:
        # One is the other turned: a DISPAXIS card in some files and not in others (trial L2: bias frames without it).
        cards = [getattr(a, "header", None) for a in arrays]
        dispaxis = ["DISPAXIS " + repr(h["DISPAXIS"]) if h is not None and "DISPAXIS" in h else "no DISPAXIS card"
                    for h in cards]
        return (f"frames of shapes {shapes} cannot be combined ({ufunc.__name__}): one is the other turned, so "
                f"they were read in different orientations ({'; '.join(dispaxis)}): pass dispersion_axis=0 to "
                "every loader to read all the frames transposed (dispersion along the stored rows), or 1 to read "
                "them as stored (batch and the page's folder form take the arc's orientation for every frame)")
    binning = []
    for a in arrays:
        header = getattr(a, "header", None)
        card = next((c for c in _BINNING_CARDS if header is not None and c in header), None)
        binning.append(f"{card} {header[card]!r}" if card else "no binning card")
    text = (f"frames of shapes {shapes} cannot be combined ({ufunc.__name__}): they do not cover the same "
            "pixels. Were they read with different crop_bds or trimsec, or taken with a different binning")
    if any(b != "no binning card" for b in binning):
        text += f" ({'; '.join(binning)})"
    return text + "? Read every frame of a night with the same settings, and use calibrations of the same binning."


#: Ufuncs that scale a frame by a number (its noise model no longer that of the frames read).
_SCALING = (np.multiply, np.divide, np.true_divide, np.floor_divide, np.power)


def median_frames(n):
    """How many frames' mean has the noise of the median of ``n`` frames (Gaussian noise, as a
    bias frame's read noise): ``n`` up to 2, then ``2 (n + c) / pi`` with ``c`` 0.44 for odd ``n``
    and 1.4 for even (the median of an even number is the mean of the middle two).

    Within 3 % of the exact value (the variance of the sample median, integrated from the order
    statistics' densities) for every ``n`` >= 3 (the exact n = 3: 2.229; 5: 3.486; 4: 3.354), and
    tending to the large-``n`` efficiency ``2 n / pi``, which made a median of 3 count as 1.91 frames.

    >>> [round(median_frames(n), 2) for n in (1, 2, 3, 4, 5, 10)]
    [1.0, 2.0, 2.19, 3.44, 3.46, 7.26]
    """
    n = int(n)
    if n <= 2:
        return float(max(n, 1))
    return 2.0 * (n + (1.4 if n % 2 == 0 else 0.44)) / math.pi


def combined_read_noise(read_noise, other, n_combined=1.0, other_combined=1.0):
    """The read noise (e-) of a frame plus or minus another: their read noises added in quadrature,
    the other's in this frame's units (a mean of ``n`` frames has ``n`` times the gain of one).

    Parameters
    ----------
    read_noise, other : float
        Read noise of each operand, electrons, as its metadata gives it (for a
        combination, the combination's: ``sqrt(n)`` times one frame's for a mean of ``n``).
    n_combined, other_combined : float
        Frames each operand's values average (:attr:`FrameArray.n_combined`).

    Examples
    --------
    A frame minus the mean of 4 bias frames (read noise 4 e- each): the mean's
    read noise is ``4 * sqrt(4)`` at 4 times the gain, so its variance per
    data value is a quarter of one frame's:

    >>> round(combined_read_noise(4.0, 8.0, 1.0, 4.0), 4), round(4.0 * (1 + 1 / 4) ** 0.5, 4)
    (4.4721, 4.4721)
    """
    scale = float(n_combined) / float(other_combined)
    return math.hypot(float(read_noise), float(other) * scale)


#: The note :func:`_with_readout_of` appends to a noise source ("; 4.74 e- plus the subtracted frame's read noise ...").
_READOUT_NOTE = re.compile(r"(?:^|; )[^;]* e- plus the (?:subtracted|added) frame's read noise(?: \([^)]*\))?")


def without_readout_note(source):
    """``source`` without the note of a read noise that frame arithmetic added (for the gain's source,
    when the read noise is given another way).

    >>> without_readout_note("header GAIN; 4.74 e- plus the subtracted frame's read noise")
    'header GAIN'
    """
    return _READOUT_NOTE.sub("", source or "").strip("; ")


def _with_readout_of(ufunc, left, right, meta):
    """``read_noise``/``noise_source`` of ``left +/- right`` when both are frames whose read noise
    and ``n_combined`` are known ({} otherwise: the merged metadata stands)."""
    if not (isinstance(left, FrameArray) and isinstance(right, FrameArray)) or np.ndim(left) < 2 or np.ndim(right) < 2:
        return {}
    what = "subtracted" if ufunc is np.subtract else "added"
    if left.unit and right.unit and left.unit != right.unit:
        # (Trial M1: science in electrons less a bias in ADU passed, and the fit blamed "a bias level left in".)
        raise ValueError(
            f"frames in {right.unit} {what} {'from' if ufunc is np.subtract else 'to'} frames in {left.unit}: one "
            "set was read with a gain (so converted to electrons) and the other without. Read every frame with the "
            "same instrument and gain (e.g. gain=... to each loader)")
    if None in (left.read_noise, left.n_combined, right.n_combined):
        return {}
    assumed = right.read_noise is None
    if assumed:
        # Frames of the same detector, whose headers lack the read noise (trial M1: bias frames without
        # RDNOISE, the master bias's noise dropped: variance 1.10-1.35x too low on a faint sky, "ok").
        other = left.read_noise / math.sqrt(left.n_combined) * math.sqrt(right.n_combined)
    else:
        other = right.read_noise
    value = combined_read_noise(left.read_noise, other, left.n_combined, right.n_combined)
    if value == left.read_noise:
        return {}
    note = (f"{left.read_noise:.3g} e- plus the {what} frame's read noise"
            + (" (taken to be the same, its headers lacking one)" if assumed else ""))
    source = meta.get("noise_source") or ""
    return {"read_noise": value, "noise_source": f"{source}; {note}" if source else note}


def with_readout_of(frames, subtracted):
    """``frames`` (a FrameArray, not copied) with the read noise of ``frames - subtracted``, for pixels
    already subtracted: what the arithmetic carries, when the numbers are known (else unchanged).

    Examples
    --------
    >>> import numpy as np
    >>> science = FrameArray(np.zeros((3, 4)), gain=1.0, read_noise=4.0, noise_source="header", n_combined=1)
    >>> bias = FrameArray(np.zeros((3, 4)), gain=4.0, read_noise=8.0, noise_source="header", n_combined=4)
    >>> round(with_readout_of(science, bias).read_noise, 4)
    4.4721
    """
    readout = _with_readout_of(np.subtract, frames, subtracted, {"noise_source": frames.noise_source})
    if not readout:
        return frames
    return frame_array(frames, like=frames, **readout)


def _merge(frames):
    """Metadata of several FrameArrays: the first one's, None filled from the next ones."""
    meta = {}
    for name in NOISE_ATTRIBUTES:
        value = None
        for frame in frames:
            candidate = getattr(frame, name, None)
            if candidate is not None and candidate != "":
                value = candidate
                break
        meta[name] = value
    if meta["noise_source"] is None:
        meta["noise_source"] = ""
    return meta


def _attach(array, meta):
    for name, value in meta.items():
        setattr(array, name, value)
    return array


def frame_array(data, like=None, **metadata):
    """Return ``data`` as a :class:`FrameArray` with ``like``'s metadata, updated by ``metadata``.

    Parameters
    ----------
    data : array_like
    like : object, optional
        Any object with some of the attributes ``gain``, ``read_noise``,
        ``noise_source``, ``unit``, ``header`` (a FrameArray, a loader's
        output); missing ones are None.
    **metadata
        Values that replace ``like``'s.

    Examples
    --------
    >>> import numpy as np
    >>> a = frame_array(np.zeros(3), gain=1.0, read_noise=3.0, noise_source="argument")
    >>> frame_array(np.ones(3), like=a).read_noise
    3.0
    """
    unknown = sorted(set(metadata) - set(NOISE_ATTRIBUTES))
    if unknown:
        raise TypeError(f"unknown metadata {', '.join(unknown)}; valid names are {', '.join(NOISE_ATTRIBUTES)}")
    meta = {name: getattr(like, name, None) for name in NOISE_ATTRIBUTES}
    meta.update(metadata)
    return FrameArray(data, **meta)


def with_noise(data, gain=None, read_noise=None, noise_source="argument"):
    """Attach a known noise model to an array of your own (a copy-free view).

    Examples
    --------
    >>> import numpy as np
    >>> frames = with_noise(np.zeros((4, 5)), gain=1.0, read_noise=3.5)
    >>> noise_of(frames)
    (3.5, 1.0, 'argument')
    """
    return frame_array(data, like=data, gain=gain, read_noise=read_noise, noise_source=noise_source)


def noise_of(images):
    """``(read_noise, gain, noise_source)`` an array carries (all None/"" for a plain array).

    Examples
    --------
    >>> import numpy as np
    >>> noise_of(np.zeros(3))
    (None, None, '')
    """
    return (
        getattr(images, "read_noise", None),
        getattr(images, "gain", None),
        getattr(images, "noise_source", "") or "",
    )


#: Pixels within this fraction of a frame's highest value count as at its ceiling, and this many of them
#: as a plateau: clipped (saturated). Photon noise scatters the brightest of real light (0.5 % at 40000
#: e-), so few pixels come that close to the frame's extreme; clipped ones all sit there. The sky fit
#: reads its sky samples the same way (``specwidgets.core.sky.api.SATURATION_BAND``).
CEILING_BAND = 2e-3
CEILING_PIXELS = 20
#: ... and a frame's ceiling stands this many of its pixels' robust standard deviations above their median.
CEILING_SIGMAS = 20.0


def saturated_pixels(image, band=CEILING_BAND, min_pixels=CEILING_PIXELS):
    """Where ``image`` (a frame as read: before a flat field spreads its ceiling) sits at its ceiling, a
    plateau of ``min_pixels`` or more within ``band`` of its highest finite value; None when there is none.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> frame = rng.normal(1000.0, 30.0, (50, 200))
    >>> saturated_pixels(frame) is None
    True
    >>> frame[20:23, 50:70] = 65535.0  # a sky line clipped at the ADC's ceiling
    >>> int(saturated_pixels(frame).sum())
    60
    >>> faint = np.round(rng.normal(1005.0, 1.5, (200, 1000)))  # a bias level and a faint sky: no ceiling
    >>> saturated_pixels(faint) is None
    True
    """
    image = np.asarray(image, dtype=float)
    finite = np.isfinite(image)
    if not finite.any():
        return None
    ceiling = float(np.max(image, where=finite, initial=-np.inf))
    if not ceiling > 0:
        return None
    at = finite & (image >= ceiling * (1.0 - band))
    if np.count_nonzero(at) < min_pixels:
        return None
    # A ceiling far above the frame's bulk: in a faint frame with a bias level in it, 0.2 % of the highest
    # value is a few ADU, where the top of the noise holds dozens of pixels (a trial: 38-79, "saturated").
    sample = image[finite][:: max(1, int(np.count_nonzero(finite)) // 200_000)]
    level = float(np.median(sample))
    spread = 1.4826 * float(np.median(np.abs(sample - level)))
    return at if ceiling - level > CEILING_SIGMAS * spread else None
