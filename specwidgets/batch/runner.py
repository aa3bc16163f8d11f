"""Batch sky subtraction of many exposures on Dask, with resume.

The interactive session settles the warp model and the masks; the batch
runner applies them to every exposure of a night or a survey::

    specwidgets batch night1/sci_*.fits --arc night1/arc_*.fits --bias night1/bias_*.fits \\
        --crop 680:800 --mask 20:100 --out night1/sky --workers 4

or, from Python (a notebook gets an ipywidgets progress bar; a script keeps
the call under the ``__main__`` guard, as its worker processes run it again)::

    from specwidgets.batch.runner import run_batch

    if __name__ == "__main__":
        summary = run_batch(sci_files, arc_files, bias=bias_files, crop=(680, 800),
                            masks=[(20, 100)], out_dir="night1/sky", workers=4)

or with the settings tuned in the dashboard (its *Save session* file; see
:mod:`specwidgets.io.settings`): ``specwidgets batch --settings night1.json --out
night1/sky`` takes the masks, guesses, warp and sky options, noise model,
instrument, crop and the data folder from the file (options given on the
command line win) and, for the page's own exposures, gives the page's sky.

How it runs
-----------
The driver reads the calibrations (median bias; median flat minus bias,
normalised; median arc minus bias), fits the warp model once (guesses from
:func:`~specwidgets.core.lines.find_cal_lines` unless given), and sends the
workers the small shared things once: the warp model as
:meth:`~specwidgets.core.warp.WarpModel.to_dict`, the bias and flat arrays via
``client.scatter``. Each task gets a few file paths (up to
:data:`MAX_CHUNK` when there are many exposures, so Dask's own cost per task
is shared); for each, the worker reads the exposure, subtracts the bias,
divides by the flat, runs :func:`~specwidgets.core.sky.api.fit_sky` and writes
the output itself, then returns a small status record. At most a few tasks
per worker thread are in flight (``as_completed``), so the driver's memory
does not grow with the number of exposures. :attr:`BatchSummary.timings`
says where the wall time went.

By default a :class:`dask.distributed.LocalCluster` with one single-threaded
worker process per CPU (``workers=N`` to choose), forked from a fork server
that imported specwidgets once, each with one thread per numerical library
(``NUMBA_NUM_THREADS``, ``OMP_NUM_THREADS``, ... = 1); ``scheduler=ADDRESS``
connects to an existing cluster instead (its workers must see the input
and output paths).

Output, resume and interruption
-------------------------------
See :mod:`specwidgets.io.fits_output` for the file layout, header and mask bits.
Each file is written under a temporary name and renamed, so an output under
its final name is always complete. On start the runner removes temporary
files a killed run left in the output folder, and (without ``overwrite``)
skips every output that :func:`~specwidgets.io.fits_output.inspect_output`
finds complete with the same settings; an output made with *other* settings
is reported as a failure rather than silently replaced. A dashboard export
(the page's Export: no resume card) counts as this run's output when the
settings its header records (input, method, sky options, mask, noise model,
warp model, dtype) are this run's and its SCI + SKY is the calibrated input:
for the same settings the export and batch write the same numbers. A lock file
(``.specwidgets-batch.lock``, an ``flock`` the system releases even on ``kill -9``,
naming its holder) keeps two runs from writing to one folder at the same time;
it is removed when the run ends, and one left by a run that died is taken over.
The output folder is made only once the arguments and calibrations are accepted.

Flat fielding
-------------
The flats' median, minus the bias, is divided by its own running median
(``flat_norm="pixel"``, the default: keeps the pixel-to-pixel response only;
the sky fit models the slit's illumination from the sky, which a lamp lights
otherwise), by its median along the slit (``"column"``: keeps the lamp's
illumination of the slit, removes its spectrum) or by its overall median
(``"global"``); see :func:`~specwidgets.batch.calibrations.normalise_flat`.
Pixels whose normalised flat is not finite or below 0.05 are
set to NaN in the science frame (the sky fit ignores them) and flagged with
:data:`~specwidgets.io.fits_output.MASK_BADFLAT`. The arc is not flat-fielded.

Failures and suspect fits
-------------------------
A file that cannot be read or fit is reported by name; the others still
finish, and :attr:`BatchSummary.exit_code` (the command's exit code) is 1.
A fit that says it is probably wrong (``SkyResult.quality.suspect``) is
written, flagged in its header (``SWSUSP`` and the quality cards), named
in the report and counted apart ("fits: good N, suspect K"); the exit code
stays 0 unless ``fail_on_suspect`` (``--fail-on-suspect``) asks for 3.

Noise model
-----------
Each exposure carries its own gain and read noise (instrument header
keywords, see :mod:`specwidgets.io.instruments`) into :func:`fit_sky`;
``read_noise=``/``gain=`` (``--read-noise``/``--gain``) override them only
when given. Arcs are summed by default (``arc_combine``/``--arc-combine``).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import importlib
import json
import os
import re
import socket
import sys
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import filelock
import numpy as np
from astropy.io import fits

from ..core._warnings import _PACKAGE_DIR, warn_at_caller
from ..core.frames import ESTIMATE, NOISE_ATTRIBUTES, FrameArray, noise_setting, saturated_pixels, with_readout_of
from ..core.inputs import check_spatial_order
from ..core.lines import lines_along_rows
from ..core.rows import RowRanges
from ..core.sky.api import METHODS, fit_sky
from ..core.warp import WarpModel
from ..io.discovery import stem_clashes
from ..io.fits_output import (
    MASK_SATURATED,
    OUTPUT_SUFFIX,
    bad_flat_mask,
    clean_temporary_files,
    effective_options,
    export_result,
    fit_orientation,
    inspect_output,
    output_name,
    output_turn,
    settings_hash,
    write_exposure,
)
from ..io.instruments import OVERSCAN_HISTORY, Instrument, _is_2d_image, resolve_instrument
from ..io.loading import _arc_orientation, _crop_pair, input_gain, read_frame
from .calibrations import ARC_COMBINES, _expand, prepare_calibrations
from .outputs import BatchSummary, _flags_of_output, _quality_record

try:
    import fcntl
except ImportError:  # Windows: filelock's msvcrt lock instead
    fcntl = None

__all__ = ["BatchLockedError", "export_result", "file_fingerprint", "read_frame", "run_batch"]


LOCK_NAME = ".specwidgets-batch.lock"


#: run_batch's defaults for the arguments a session can set (None: not given).
_DEFAULTS = {
    "instrument": "generic", "crop": None, "masks": None, "guesses": None, "method": "bspline",
    "spatial_order": None, "sky_options": None, "read_noise": None, "gain": None, "arc_combine": "sum",
    "std_variation": 50.0, "line_order": 2, "warp_order": 1, "tolerance": 16.0,
}


class BatchLockedError(RuntimeError):
    """Another batch run holds the output folder's lock."""


# ------------------------------------------------------------------ inputs
_FINGERPRINTS: dict = {}


def file_fingerprint(path):
    """What a resumed run compares: ``{"name", "size", "sha256"}`` of a file's content.

    The SHA-256 of the bytes is cached by ``(real path, size, mtime, ctime,
    inode)``, so an unchanged file is hashed once per process, and a file
    rewritten in place (same name, new content, even the same size) is
    noticed: also when its modification time was put back (``cp -p``,
    ``rsync -t``, a restore), which the change time and inode still show
    (a worker kept across runs skipped such a file).

    Examples
    --------
    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = os.path.join(d, "a.fits")
    ...     _ = open(p, "wb").write(b"abc")
    ...     file_fingerprint(p)["sha256"][:12]
    'ba7816bf8f01'
    """
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    digest = _FINGERPRINTS.get(key)
    if digest is None:
        sha = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        digest = sha.hexdigest()
        if len(_FINGERPRINTS) > 10000:
            _FINGERPRINTS.clear()
        _FINGERPRINTS[key] = digest
    return {"name": path.name, "size": stat.st_size, "sha256": digest}




# ------------------------------------------------------------------ worker side
@dataclass(frozen=True)
class _Job:
    """Everything a worker needs besides the bias and flat arrays (sent once; small, but for the flat's
    noise map when there are flats)."""

    reader: object
    crop: tuple | None
    shape: tuple
    warp: dict
    warp_key: str
    masks: RowRanges
    method: str
    options: dict
    read_noise: float | None
    unit: str | None
    sky_gain: float | None
    dtype: str
    out_dir: str
    overwrite: bool
    provenance: dict
    settings: dict
    numba_threads: int = 1
    cal_content: dict = field(default_factory=dict)
    # The driver's process: a worker in another one sends its warnings back (see _relay_warnings).
    driver_pid: int = field(default_factory=os.getpid)
    # The flat's own noise (a FlatNoise: its frame-sized level map), added to each output's VAR.
    flat_noise: object = None
    # The master bias's noise model (gain, read noise, unit, frames combined): Dask sends the bias to
    # worker processes as a plain ndarray, without a FrameArray's attributes (see _bias_frame).
    bias_noise: dict = field(default_factory=dict)
    # What ``shape`` was read from, for the message of a frame of another shape.
    shape_of: str = "the arc and warp model"

    def config_for(self, path):
        """The resume key of one input: ``"<settings hash>-<data hash>"``.

        The settings part covers what the user chose (a mismatch refuses to
        replace the output without ``overwrite``); the data part covers the
        content of the input and of the calibration frames (a mismatch means
        the output is stale, and it is redone).
        """
        try:
            content = file_fingerprint(path)
        except OSError:
            content = None  # read_frame names the problem
        chosen = settings_hash({**self.settings, "input": Path(path).name})
        data = settings_hash({"input": content, **self.cal_content})
        return f"{chosen}-{data}"


def _stale(out, config):
    """True when ``out`` was made with the same settings but other data (an input or calibration changed)."""
    try:
        recorded = str(fits.getval(out, "SWCONFIG"))
    except (OSError, KeyError, ValueError):
        return False
    chosen, _, data = recorded.partition("-")
    ours, _, our_data = config.partition("-")
    return chosen == ours and bool(data) and data != our_data


def _export_mismatch(out, job, path):
    """Why the dashboard export ``out`` does not hold this run's output for ``path`` ("" when it may).

    A dashboard export carries no ``SWCONFIG`` resume card, but its header
    records the settings it was made with; batch and the export give the same
    files for the same settings (tests/test_session_batch.py), so an export
    whose input, method, sky options, mask, noise model, warp model and dtype
    are this run's is this run's output. Its data are checked after the input
    is read (:func:`_same_science`).
    """
    from ..io.fits_output import _OPTION_CARDS, _card_value

    try:
        header = fits.getheader(out)
        sci_header = fits.getheader(out, "SCI")
    except (OSError, ValueError, KeyError) as exc:
        return f"its header cannot be read ({exc})"
    if header.get("SWINPUT") != Path(path).name:
        return f"it was made from {header.get('SWINPUT')!r}"
    if header.get("SWMETHOD") != job.method:
        return f"method {header.get('SWMETHOD')!r}, this run's is {job.method!r}"
    try:
        mask = RowRanges.from_header(header)
    except ValueError as exc:
        return str(exc)
    if mask != job.masks:
        return f"mask {mask.text}, this run's is {job.masks.text}"
    for name, value in job.options.items():
        card = _OPTION_CARDS.get(name, (None, None))[0]
        if card is None or header.get(card) != _card_value(value):
            return f"{name} {header.get(card) if card else None!r}, this run's is {value!r}"
    for name, card, ours in (("read noise", "SWRDNOIS", job.read_noise), ("gain", "SWGAIN", job.sky_gain)):
        if isinstance(ours, float) and header.get(card) != ours:
            return f"{name} {header.get(card)!r}, this run's is {ours!r}"
    try:
        warp = json.loads(header.get("SWWARP", "null"))
    except ValueError:
        warp = None
    if warp != json.loads(json.dumps(job.warp)):
        return "another warp model"
    if sci_header.get("BITPIX") != {"float32": -32, "float64": -64}[job.dtype]:
        return f"BITPIX {sci_header.get('BITPIX')}, this run writes {job.dtype}"
    flats = _recorded_files(header, "flat")
    if flats != _as_recorded("flat", job.settings["flat"]):
        return f"flat frames {_names_text(flats)}, this run's are {_names_text(job.settings['flat'])}"
    if job.settings["flat"] and header.get("SWFLNORM") != job.settings["flat_norm"]:
        return f"flat normalisation {header.get('SWFLNORM')!r}, this run's is {job.settings['flat_norm']!r}"
    return ""


def _settings_differences(out, job):
    """``["mask was 12:26, now 10:28", ...]``: the settings ``out``'s header records that this run would write otherwise.

    What the primary header records (method, sky options, mask, crop,
    instrument, bias and flat files, flat normalisation, a given read noise or
    gain) and the SCI dtype; settings it cannot show (instrument options, a
    given warp model, options the fit chooses) are not listed, so an empty
    list means "not readable here", not "the same".
    """
    from ..io.fits_output import _OPTION_CARDS, _card_value, _crop_text

    try:
        header = fits.getheader(out)
        bitpix = fits.getval(out, "BITPIX", extname="SCI")
    except (OSError, ValueError, KeyError):
        return []
    found = []

    def differ(name, old, new):
        same = (isinstance(old, (int, float)) and isinstance(new, (int, float)) and not isinstance(old, bool)
                and np.isclose(old, new, rtol=1e-9, atol=0)) or old == new
        if not same:
            found.append(f"{name} was {old}, now {new}")

    differ("method", header.get("SWMETHOD"), job.method)
    if header.get("SWMETHOD") == job.method:
        history = [str(h) for h in header.get("HISTORY", [])]
        for name, value in effective_options(job.method, job.options).items():
            if value is None or value == "auto":
                continue  # the fit chooses it: the header holds what it chose, not what this run will
            card = _OPTION_CARDS.get(name, (None, None))[0]
            if card is not None:
                differ(name, header.get(card, "none"), _card_value(value))
            else:
                old = next((h.split(" = ", 1)[1] for h in history if h.startswith(f"sky option {name} = ")), None)
                differ(name, old, repr(value))
    try:
        differ("mask", RowRanges.from_header(header).text, job.masks.text)
    except ValueError:
        pass
    differ("crop", header.get("SWCROP", "none"), _crop_text(job.crop))
    differ("instrument", header.get("SWINSTR"), job.provenance.get("instrument"))
    for key in ("bias", "flat"):
        old = _recorded_files(header, key)
        if old != _as_recorded(key, job.settings[key]):
            found.append(f"{key} frames were {_names_text(old)}, now {_names_text(job.settings[key])}")
    if job.settings["flat"]:
        differ("flat normalisation", header.get("SWFLNORM"), job.settings["flat_norm"])
    for name, card, ours in (("read noise", "SWRDNOIS", job.read_noise), ("gain", "SWGAIN", job.sky_gain)):
        if isinstance(ours, float):  # one given for every frame: what the header records
            differ(name, header.get(card), ours)
    differ("dtype", {-32: "float32", -64: "float64"}.get(bitpix, f"BITPIX {bitpix}"), job.dtype)
    # A given warp model is not compared: SWWARP holds the warp the fit used,
    # which its sky-line refinement may have changed.
    return found


def _recorded_files(header, key):
    """The ``key`` ("bias", "flat") file names an output's header records (its ``"key: name"`` HISTORY cards)."""
    return [str(h)[len(key) + 2:] for h in header.get("HISTORY", []) if str(h).startswith(f"{key}: ")]


def _as_recorded(key, names):
    """``names`` as :func:`_recorded_files` reads them back: a HISTORY card holds 72 characters, so a longer
    name is compared by what it kept."""
    return [f"{key}: {name}"[:72][len(key) + 2:] for name in names]


def _names_text(names):
    """File names for a message: all of one or two, else the count and the first and last."""
    if len(names) > 2:
        return f"{len(names)} files ({names[0]} ... {names[-1]})"
    return ", ".join(names) or "none"


def _refusal_reason(out, state, job, path):
    """Why the existing ``out`` (state ``"different"``) is not this run's output; "" for an export kept.

    Other settings are named with their old and new values when the
    header shows them (:func:`_settings_differences`), else by the hashes.
    """
    if "dashboard's Export" in state.reason:
        why = _export_mismatch(out, job, path)
        return f"{state.reason}: {why}" if why else ""
    differences = _settings_differences(out, job)
    if differences:
        return f"made with other settings: {'; '.join(differences)}"
    return state.reason


def _same_science(out, image, job):
    """True when the export was made from ``image`` (the calibrated input): its SCI + SKY is ``image``.

    Both are stored in the output dtype, so equal to within a few of its
    rounding steps; another exposure, or a changed bias, is far above that.
    """
    try:
        with fits.open(out) as hdul:
            # (Turned back as the input lies: compared as the fit saw it.)
            turn = output_turn(hdul[0].header)
            sci = fit_orientation(np.asarray(hdul["SCI"].data, float), turn)
            sky = fit_orientation(np.asarray(hdul["SKY"].data, float), turn)
    except (OSError, ValueError, KeyError):
        return False
    image = np.asarray(image, float)
    if sci.shape != image.shape or sky.shape != image.shape:
        return False
    finite = np.isfinite(image)
    if not np.array_equal(finite, np.isfinite(sci)):
        return False
    tol = 4 * np.finfo(np.dtype(job.dtype)).eps * np.maximum(np.abs(image), np.abs(sky))
    return bool(np.all(np.abs(sci + sky - image)[finite] <= tol[finite]))


def _turn_of_frame(reader, frame, path):
    """How ``reader`` turned the frame read from ``path`` (its outputs are turned back); None for a reader function."""
    return reader.turn_of(frame.header or {}, path) if isinstance(reader, Instrument) else None


def _accept_export(record, out, path):
    record["status"] = "skipped"
    record["message"] = f"{Path(out).name}: a dashboard export with these settings and data, kept"
    record.update(_flags_of_output(out))


_WARP_CACHE: dict = {}


def _cached_warp(job):
    """The job's warp model, built once per worker process (its maps are cached on it).

    None without an arc: fit_sky then fits each frame's warp on its sky lines.
    """
    if not job.warp:
        return None
    model = _WARP_CACHE.get(job.warp_key)
    if model is None:
        model = WarpModel.from_dict(job.warp)
        model.effpix_map()
        if len(_WARP_CACHE) >= 4:
            _WARP_CACHE.clear()
        _WARP_CACHE[job.warp_key] = model
    return model


def _used_warp(result, job):
    """The warp the fit used, for the output's header: the arc's (as a dict), its refinement
    on the sky lines, or the frame's sky-line warp (no arc)."""
    used = getattr(result, "warp_model", None)
    if used is not None and (not job.warp or used.to_dict() != job.warp):
        return used
    return job.warp or None


def _bias_frame(bias, job):
    """The master ``bias`` as a FrameArray with its noise model (``job.bias_noise``), however it came.

    Dask serialises an ndarray subclass as a plain ndarray when it sends it to
    a worker process: the bias lost its read noise on the way, and the
    outputs' noise model left it out (trial of 2026-11-30: ``SWRDNOIS`` 4.74
    for the 5.38 e- of the page and the API). Not a copy.
    """
    if bias is None or isinstance(bias, FrameArray) or not job.bias_noise:
        return bias
    return FrameArray(bias, **job.bias_noise)


def _bias_noise(bias):
    """What :func:`_bias_frame` puts back: the bias's noise attributes but its header (the pixels' noise
    model only; the header would be pickled into every task)."""
    if not isinstance(bias, FrameArray):
        return {}
    return {name: getattr(bias, name) for name in NOISE_ATTRIBUTES if name != "header"}


def _process_one(path, job, bias, flat):
    """Worker task: one exposure from its path to its output file. Returns a small record.

    numba's parallel kernels get ``job.numba_threads`` threads (default 1):
    the exposures already run in parallel, one per worker thread, and more
    threads per exposure would only oversubscribe the CPUs.
    """
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(job.numba_threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        return _process_one_inner(path, job, _bias_frame(bias, job), flat)
    finally:
        numba.set_num_threads(previous)


def _read_science(path, job):
    """One science frame as read (a FrameArray); ValueError when its shape, then its unit, is not the run's.

    The shape first: a frame of another camera is that, whatever its unit (a trial's bias frames of
    another camera were named for their unit)."""
    frame = read_frame(path, job.reader, job.crop)
    name = Path(path).name
    if frame.shape != tuple(job.shape):
        raise ValueError(f"{name} has shape {frame.shape} after trimming and cropping; {job.shape_of} "
                         f"{tuple(job.shape)}{_binning_hint(frame)}")
    if job.unit is not None and frame.unit != job.unit:
        raise ValueError(f"{name} is in {frame.unit} but the calibrations are in {job.unit}")
    return frame


def _calibrated(image, bias, flat):
    """``(image, extra, n_saturated)``: ``image`` (a frame as read; corrected in place) less ``bias``,
    divided by ``flat``, its pixels at the frame's ceiling set to NaN; the MASK bits that adds (bad flat,
    saturated; None without either); how many pixels were at the ceiling.

    The ceiling is found on the frame as read: divided by a flat, clipped values spread by its 1-2 % and
    the sky fit's own check no longer saw them (trial B1: 590 pixels at 65535 ADU under sky lines,
    "good", the sky 3.1 sigma RMS off). Left in, they are lower limits that pull the sky's lines down.
    """
    at = saturated_pixels(image)
    if bias is not None:
        image -= np.asarray(bias)
    extra = None
    if flat is not None:
        image /= flat
        extra = bad_flat_mask(flat)
    if at is None:
        return image, extra, 0
    image[at] = np.nan
    bits = np.where(at, MASK_SATURATED, 0).astype(np.uint8)
    return image, bits if extra is None else extra | bits, int(np.count_nonzero(at))


def _saturated_note(n):
    return (f"{n} pixel(s) at the frame's ceiling (saturated: lower limits) left out of the sky fit and set to "
            f"NaN (MASK bit {MASK_SATURATED})")


@contextmanager
def _relay_warnings(job, records):
    """In a worker process, the warnings raised go into the first record (``raised``) for the driver
    to show once (:func:`_show_relayed`), not to the worker's stderr with dask's source line."""
    if os.getpid() == job.driver_pid:  # (threads of the driver's process: shown there already)
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    raised = list(dict.fromkeys(
        (f"{w.category.__module__}:{w.category.__qualname__}", str(w.message), w.filename, w.lineno) for w in caught
    ))
    if raised and records:
        records[0]["raised"] = raised


def _warning_category(name):
    """The Warning class ``"module:qualname"`` names (a worker's), else UserWarning."""
    module, _, qualname = name.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError):
        return UserWarning
    return obj if isinstance(obj, type) and issubclass(obj, Warning) else UserWarning


def _show_relayed(record, shown):
    """Warn in the driver, once per message, of what a worker process's task raised: its own category,
    at the user's line for specwidgets' warnings and where it was raised for another library's, as the
    same run in this process would (a filter on astropy's category caught one in-process only before)."""
    for item in record.get("raised", ()):
        name, message, filename, lineno = item
        if (name, message) in shown:
            continue
        shown.add((name, message))
        category = _warning_category(name)
        if os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep):
            warn_at_caller(message, category)
        else:
            warnings.warn_explicit(message, category, filename, lineno)


def _process_many(paths, job, bias, flat):
    """Worker task: several exposures in a row (see :func:`_chunk_size`); a list of records.

    Each file succeeds or fails on its own, as with :func:`_process_one`.
    """
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(job.numba_threads, numba.config.NUMBA_NUM_THREADS)))
    records = []
    try:
        with _relay_warnings(job, records):
            bias = _bias_frame(bias, job)
            records.extend(_process_one_inner(path, job, bias, flat) for path in paths)
        return records
    finally:
        numba.set_num_threads(previous)


def _binning_hint(frame):
    """``": a different binning (CCDSUM '2 2' in this file) or trim section?"``, or the trim alone."""
    from ..core.frames import binning_text

    card = binning_text(getattr(frame, "header", None))
    return f": a different binning ({card} in this file) or trim section?" if card else ": a different binning or trim section?"


def _process_one_inner(path, job, bias, flat):
    t0 = time.perf_counter()
    c0 = time.thread_time()
    path = Path(path)
    out = Path(job.out_dir) / output_name(path)
    record = {"input": str(path), "output": str(out), "status": "failed", "message": ""}
    export = frame = None
    try:
        config = job.config_for(path)
        if not job.overwrite:
            state = inspect_output(out, job.shape, config)
            if state.complete:
                record["status"] = "skipped"
                record.update(_flags_of_output(out))
                return record
            if state.state == "different" and not _stale(out, config):
                # A dashboard export (no SWCONFIG) made with these settings is this run's output.
                reason = _refusal_reason(out, state, job, path)
                if reason:
                    record["message"] = f"{out.name} exists, {reason}; pass --overwrite (overwrite=True) to replace it"
                    return record
                export = out
        # A FrameArray: the pixels are corrected in place below; its unit,
        # noise model and header describe the file as read.
        image = frame = _read_science(path, job)
        # (The pixels only: the master bias's read noise joins the frame's in _with_frame_noise.)
        image, extra, n_saturated = _calibrated(image, bias, flat)
        if n_saturated:
            record["notes"] = [_saturated_note(n_saturated)]
        if export is not None:
            if _same_science(export, image, job):
                _accept_export(record, export, path)
                return record
            record["message"] = (f"{out.name} exists, a dashboard export of other data (its SCI is not "
                                 f"{path.name} now); pass --overwrite (overwrite=True) to replace it")
            return record
        # The frame's own noise model (header or instrument) rides on the
        # image; an explicit read_noise/gain of the user wins inside fit_sky.
        image = _with_frame_noise(image, frame, job, bias)
        warp = _cached_warp(job)
        result = fit_sky(image, warp, job.masks, method=job.method, **_noise_arguments(job), **job.options)
        prov = {**job.provenance, "input": str(path), "input_gain": input_gain(job.reader, frame),
                "turn": _turn_of_frame(job.reader, frame, path)}
        if prov.get("unit") is None:  # no calibration frames to tell it: the frame's own
            prov["unit"] = getattr(frame, "unit", None)
        write_exposure(result, 0, out, warp_model=_used_warp(result, job), provenance=prov, config=config, dtype=job.dtype,
                       extra_mask=extra, input_header=frame.header, flat_noise=job.flat_noise)
        record["status"] = "done"
        record.update(_quality_record(result))
    except Exception as exc:  # noqa: BLE001 - reported by name, the others go on
        record["message"] = _failure_message(exc, job, frame)
    finally:
        record["seconds"] = time.perf_counter() - t0
        # CPU of this task's thread only: wall minus this is waiting (disk, fsync, a busy machine).
        record["cpu_seconds"] = time.thread_time() - c0
    return record


def _process_cpu_seconds():
    """CPU seconds of this whole process so far (a worker: its start-up, tasks, Dask's own work)."""
    return time.process_time()


def _with_absolute_paths(reader):
    """``reader`` with its bad-pixel mask file as an absolute path: workers may run in another folder (an
    external cluster's read a relative path there: the file missing, or another one's mask applied)."""
    if isinstance(reader, Instrument) and reader.bad_pixels_file is not None:
        return dataclasses.replace(reader, bad_pixels=os.path.abspath(reader.bad_pixels_file))
    return reader


def _noise_source_of(frame, job):
    """Where a read frame's noise model came from, with the reader's name (``"header GAIN, ... of generic
    frames"``), or ""."""
    source = getattr(frame, "noise_source", "")
    return f"{source} of {getattr(job.reader, 'name', 'reader')} frames" if source else ""


def _with_frame_noise(image, frame, job, bias=None):
    """``image`` as a FrameArray with the frame's gain (1.0 once in electrons) and read noise, and the
    read noise of the master ``bias`` subtracted from it (when it carries its noise model)."""
    # "estimate" (a session's noise model): hide the frame's value so fit_sky estimates it.
    out = FrameArray(
        image,
        gain=None if frame.gain is None or job.sky_gain == ESTIMATE else 1.0,
        read_noise=None if job.read_noise == ESTIMATE else frame.read_noise,
        noise_source=_noise_source_of(frame, job),
        unit=frame.unit,
        header=getattr(frame, "header", None),  # (the fit names a header gain applied twice by its card)
        n_combined=getattr(frame, "n_combined", None),
    )
    return out if bias is None or not isinstance(bias, FrameArray) else with_readout_of(out, bias)


def _noise_arguments(job):
    """The ``read_noise``/``gain`` keywords for fit_sky: only what the user set."""
    out = {}
    if job.read_noise not in (None, ESTIMATE):
        out["read_noise"] = job.read_noise
    if job.sky_gain not in (None, ESTIMATE):
        out["gain"] = job.sky_gain
    return out




# ------------------------------------------------------------------ progress
class _Progress:
    """One ``tqdm.auto`` bar (a widget in a notebook, text on stderr elsewhere), or nothing."""

    def __init__(self, total, enabled):
        self.bar = None
        self.counts = {"done": 0, "skipped": 0, "failed": 0}
        if enabled:
            import tqdm.auto

            self.bar = tqdm.auto.tqdm(total=total, unit="exp", desc="sky", file=sys.stderr, dynamic_ncols=True)

    def update(self, status):
        self.counts[status] += 1
        if self.bar is not None:
            self.bar.set_postfix_str(", ".join(f"{k} {v}" for k, v in self.counts.items() if v), refresh=False)
            self.bar.update(1)

    def write(self, message):
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------ lock
class _DirectoryLock:
    """An exclusive lock on ``DIR/.specwidgets-batch.lock``, which names its holder (pid and host).

    On POSIX the lock is an ``flock`` on that file: the system drops it when
    the holder dies, so a killed run never blocks the next one. The holder
    removes the file on release, while it still holds the lock, so a run
    that ends, or fails before it starts, leaves none; a run that finds
    one whose holder died (``kill -9``) takes it over and says so
    (:attr:`taken_over`). A run that opened the file just before its holder
    removed it locks a file no longer in the folder: it sees that and opens
    the path again. Where ``flock`` is refused (some network filesystems) the
    recorded holder decides: a process of this host that is not running
    holds nothing. Without ``fcntl`` (Windows) ``filelock`` (msvcrt) locks.
    """

    def __init__(self, folder):
        self.path = Path(folder) / LOCK_NAME
        #: Set when the file was left by a holder that is gone: the one line saying so.
        self.taken_over = ""
        self._fd = None
        self._filelock = None

    def __enter__(self):
        if fcntl is None:
            self._filelock = filelock.FileLock(self.path, timeout=0)
            try:
                self._filelock.acquire()
            except filelock.Timeout:
                raise BatchLockedError(self._busy("")) from None
            return self
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                locked = _flock(fd)
                holder = _read_holder(fd)
                if locked is False or (locked is None and holder and _holder_alive(holder)):
                    raise BatchLockedError(self._busy(holder, maybe_gone=locked is None))
                if locked and not _same_file(fd, self.path):
                    os.close(fd)  # its holder removed it on release: try the path again
                    continue
                if holder:
                    self.taken_over = (f"took over the lock {self.path} left by a run that is no longer running "
                                       f"({_holder_text(holder)})")
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return self
        raise BatchLockedError(self._busy(""))

    def __exit__(self, *exc):
        if self._filelock is not None:
            self._filelock.release()
            return False
        try:
            # Still locked: a run that opened it meanwhile sees it gone. Only
            # our own file: one deleted by hand may have been replaced by
            # another run's, which must stay.
            if _same_file(self._fd, self.path):
                self.path.unlink()
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)  # drops the flock
            self._fd = None
        return False

    def _busy(self, holder, maybe_gone=False):
        who = f" ({_holder_text(holder)})" if holder else ""
        message = f"another specwidgets batch run{who} is writing to {self.path.parent} (lock {self.path.name})"
        # Without flock a holder on another host cannot be checked: the user can tell.
        return message + (f"; if that run is gone, remove {self.path}" if maybe_gone else "")


def _flock(fd):
    """Lock ``fd`` at once: True, False when another holds it, None when the filesystem has no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            return False
        if exc.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            return None
        raise
    return True


def _same_file(fd, path):
    """True when ``path`` still names the file open as ``fd``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino)


def _read_holder(fd):
    """``(pid, host)`` recorded in the lock file, or None when it is empty or unreadable."""
    try:
        pid, host = os.pread(fd, 512, 0).decode("utf-8", "replace").split()
        return int(pid), host
    except (OSError, ValueError):
        return None


def _holder_text(holder):
    pid, host = holder
    return f"pid {pid}" + ("" if host == socket.gethostname() else f" on {host}")


def _holder_alive(holder):
    """False only for a process of this host that is not running (another host's cannot be checked)."""
    pid, host = holder
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)  # POSIX only (this path needs fcntl): signal 0 checks, it sends nothing
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. another user's process
    return True


# ------------------------------------------------------------------ driver
def _worker_environ(numba_threads=1):
    """Environment of local worker processes, set before they start (their libraries read it at import).

    One thread per library: the exposures already run in parallel, one per
    worker process, and a thread pool per process (numba's, OpenMP's, BLAS's)
    sized to every CPU would oversubscribe them. Dask's own defaults (OpenMP,
    MKL, OpenBLAS at 1) are kept; numba's pool is sized to ``numba_threads``.
    """
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    threads = max(1, int(numba_threads))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        environ.setdefault(name, 1)
    environ["NUMBA_NUM_THREADS"] = threads
    return environ


def _worker_start_method():
    """``"forkserver"`` with this module preloaded in the server, where the platform has it; else None.

    Dask spawns each local worker as a fresh interpreter, which then imports
    numpy, scipy, astropy, numba and this package itself (about 2 s of CPU
    each). A fork server imports them once and forks every worker from
    itself, so N workers cost one import, not N competing ones on the same
    CPUs. (Forking is safe there: the server process runs no threads.)
    """
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    import distributed.utils as dutils

    ctx = multiprocessing.get_context("forkserver")
    if not getattr(dutils, "_forkserver_preload_set", True):
        # Dask's own preload list is every package it knows (pandas, ...):
        # seconds of imports no sky fit needs. Ours: Dask and this module
        # (numpy, scipy, astropy, numba come with it).
        ctx.set_forkserver_preload(["distributed", "specwidgets.batch.runner"])
        dutils._forkserver_preload_set = True
    return "forkserver"


def _restore_environ(saved):
    """Put back the environment variables ``saved`` maps (None: was unset)."""
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


#: The local cluster's Dask dashboard: a free port on loopback. (None still
#: asks for 8787, and warns "Port 8787 is already in use" beside another run.)
_DASK_DASHBOARD = "127.0.0.1:0"


def _open_client(workers, scheduler, client, processes, numba_threads=1):
    """Return ``(client, things to close)``."""
    if client is not None:
        return client, []
    import dask
    from dask.distributed import Client, LocalCluster

    if scheduler is not None:
        c = Client(scheduler, set_as_default=False)
        return c, [c]
    import logging

    n = int(workers) if workers else max(1, os.cpu_count() or 1)
    if processes:
        config = {"distributed.nanny.pre-spawn-environ": _worker_environ(numba_threads)}
        method = _worker_start_method()
        if method is not None:
            config["distributed.worker.multiprocessing-method"] = method
        # The nanny writes these variables into *this* process's environment
        # before it spawns a worker, and leaves them there: a later numba
        # compile here would then see NUMBA_NUM_THREADS change under its
        # running thread pool and fail. The workers have them; we restore ours.
        saved = {name: os.environ.get(name) for name in config["distributed.nanny.pre-spawn-environ"]}
        saved.setdefault("PYTHONHASHSEED", os.environ.get("PYTHONHASHSEED"))
        try:
            with dask.config.set(config):
                cluster = LocalCluster(
                    n_workers=n, threads_per_worker=1, processes=True, dashboard_address=_DASK_DASHBOARD,
                    silence_logs=logging.ERROR,
                )
        except Exception as exc:
            main_module = sys.modules.get("__main__")
            script = getattr(main_module, "__file__", None)
            if (script is None or getattr(main_module, "__spec__", None) is not None
                    or getattr(getattr(main_module, "main", None), "__module__", "").startswith("specwidgets")):
                # Not a user's script (the `specwidgets` command, python -m, a notebook): as it came.
                raise
            # Each worker runs the main script again first: an unguarded
            # run_batch there fails in every worker (each says so above).
            raise RuntimeError(
                f"the local Dask workers did not start ({exc}); if {Path(script).name} calls run_batch at its "
                'top level, put that call under `if __name__ == "__main__":`'
            ) from exc
        finally:
            _restore_environ(saved)
    else:
        cluster = LocalCluster(
            n_workers=1, threads_per_worker=n, processes=False, dashboard_address=_DASK_DASHBOARD, silence_logs=logging.ERROR
        )
    c = Client(cluster, set_as_default=False)
    return c, [c, cluster]


def _science_files(science, out_dir, calibrations):
    """``(files, left_out, found)``: the science files of the arguments, why each other file they name is
    left out, and the calibration frames found in folders given as science (``{"bias": [(path, why)], ...}``).

    Not science: a file also given as a calibration (``--arc``, ``--bias``,
    ``--flat``), an output of an earlier run in the output folder, and, among
    the files of a *folder* given as science, a calibration frame
    (:func:`specwidgets.io.folder.calibration_reason`: "flat", "dark",
    "bias", "zero", "arc" or "lamp" as a word of its name, or ``IMAGETYP``
    naming a bias, arc, flat, ...) and a file holding no 2D image. A file
    named on its own (or by a pattern) is taken as the user gave it.
    """
    from ..io.folder import ALL_CALIBRATION_WORDS, calibration_kind

    given = {}
    for role, items in calibrations.items():
        try:
            for path in _expand(items, role, must_exist=False):
                given.setdefault(path, role)
        except FileNotFoundError:
            pass  # the calibrations' own reading names it
    items = [science] if isinstance(science, (str, os.PathLike)) else list(science or [])
    files, left_out, seen = [], [], set()
    found = {"bias": [], "arc": [], "flat": [], None: []}
    for item in items:
        from_folder = Path(os.fspath(item)).expanduser().is_dir()
        for path in _expand(item, "science", must_exist=False):
            if path in seen:
                continue
            seen.add(path)
            if path.parent == out_dir and path.name.endswith(OUTPUT_SUFFIX):
                continue  # an earlier run's output
            if path in given:
                left_out.append(f"{path.name}: given as {given[path]}, so not science")
                continue
            kind, why = calibration_kind(path, words=ALL_CALIBRATION_WORDS) if from_folder else ("", "")
            if why:
                found[kind if kind in found else None].append((path, why))
                continue
            if from_folder and _holds_no_image(path):
                left_out.append(f"{path.name}: holds no 2D image (a table?), so not science")
                continue
            files.append(path)
    return files, left_out, found


def _holds_no_image(path):
    """Whether a readable FITS file has no HDU holding a 2D image (a table, a spectrum): not a frame.
    False when it cannot be read (its reading says what is wrong)."""
    try:
        with fits.open(path, memmap=True, lazy_load_hdus=False) as hdul:
            return not any(_is_2d_image(h) for h in hdul)
    except (OSError, ValueError, TypeError, IndexError, KeyError, EOFError):
        return False


#: The core's advice when an arc's lines lie along the rows (:func:`~specwidgets.core.lines.find_cal_lines`).
_TRANSPOSE_ADVICE = re.compile(r"transpose the frames \(np\.transpose, or load with dispersion_axis=0\)")


@contextmanager
def _turned_advice(turned_by):
    """Mend the advice "transpose the frames (dispersion_axis=0)" of an error raised in the block when the
    frames were read transposed already (``turned_by`` says why: an arc's ``DISPAXIS = 2`` card, the arcs'
    lines, ``--dispersion-axis 0``): transposed once more they are as stored, so the option that reads
    them right is ``--dispersion-axis 1`` (trial F1: the advice said 0, the way they were read, and never
    named the card)."""
    try:
        yield
    except ValueError as exc:
        text = str(exc)
        if not turned_by or "dispersion_axis=0" not in text:
            raise
        advice = (f"the frames were read transposed already ({turned_by}): read them as stored, with "
                  "--dispersion-axis 1 (instrument_options={'dispersion_axis': 1}), which overrides the frames' own cards")
        mended = _TRANSPOSE_ADVICE.sub(lambda _: advice, text)
        raise ValueError(mended if mended != text else f"{text}; but {advice}") from exc


def _no_bias_note(path, reader, crop):
    """The note of a run without bias frames: what is subtracted, by the first science frame ``path``.

    Each frame's overscan level when the instrument subtracts it (its
    ``HISTORY`` says so: trial F1's note said "nothing is subtracted" while
    the outputs recorded the overscan's), but no master bias; else nothing.
    A frame that cannot be read gets the note of nothing subtracted (its own
    failure says what is wrong).
    """
    overscan = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # each frame's warnings are told with its fit
            header = read_frame(path, reader, crop).header
        overscan = [str(h) for h in header.get("HISTORY", []) if str(h).startswith(OVERSCAN_HISTORY)]
    except (OSError, ValueError, TypeError):
        pass
    if overscan:
        # "specwidgets: overscan BIASSEC [1025:1056,1:100] median 1009.9 subtracted": its card and section.
        section = overscan[0][len(OVERSCAN_HISTORY):].split(" median ")[0].strip()
        return (f"no bias frames: each frame's overscan level ({section}, its median) is subtracted, as the outputs' "
                "HISTORY records, but no master bias: the bias pattern (its structure along rows and columns) stays "
                "in; give --bias to subtract it")
    return ("no bias frames: nothing is subtracted (give --bias unless the frames are bias-subtracted already: a "
            "bias level left in makes them scatter less than the noise model predicts)")


def _check_outputs_unique(files):
    # The API loaders refuse such files by the same rule (one exposure stored twice, one compressed).
    clash = stem_clashes(files)
    if clash:
        listing = "; ".join(f"{output_name(ps[0])} <- {', '.join(str(p) for p in ps)}" for ps in clash.values())
        raise ValueError(f"several inputs would write the same output file: {listing}")


def _apply_settings(settings, data_root, given, science, arc, bias, flat=(), has_warp_model=False):
    """Fill the arguments left at None from a session (then the defaults); files from its folder.

    Returns ``(arguments, science, arc, bias, flat)``.
    """
    from ..io.settings import batch_arguments, folder_roles, read_session, validate_session

    from_session = {}
    group = None
    left_out = []
    notes = []
    if settings is not None:
        if isinstance(settings, dict):
            session = validate_session(settings)
        elif isinstance(settings, (str, os.PathLike)):
            session = read_session(settings)
        else:
            raise TypeError(f"settings must be a session file's path or its dict; got {type(settings).__name__}")
        from_session = batch_arguments(session, data_root=data_root)
        folder, tags = from_session.pop("folder", None), from_session.pop("tags", None)
        kind = (session.get("source") or {}).get("kind")
        if folder is None and not _given_files(science):
            where = "the synthetic demo" if kind == "demo" else "no saved data source"
            raise ValueError(f"the session's frames come from {where}: give the SCIENCE files (and --arc)")
        if folder is not None:
            empty = {name: not _given_files(files) for name, files in
                     (("science", science), ("arc", arc), ("bias", bias))}
            empty["flat"] = not _given_files(flat) and bool(tags.get("flat"))
            if empty["science"] or (empty["arc"] and not has_warp_model) or empty["bias"] or empty["flat"]:
                roles = folder_roles(folder, **{f"{k}_tag": v for k, v in tags.items()})
                if empty["science"]:
                    science = roles["science"]
                    left_out = roles["skipped"]
                if empty["arc"] and not has_warp_model:
                    arc = roles["arc"]
                if empty["bias"] and _given_files(arc) and arc == roles["arc"]:
                    bias = roles["bias"]  # the folder's own bias goes with its own arcs
                if empty["flat"]:
                    flat = roles["flat"]  # the page's flat tag: the page divided by these flats
            names = (session.get("frames") or {}).get("exposure_names")
            if names:
                group = (Path(folder), [str(n) for n in names])
                if empty["science"]:
                    notes += _session_folder_check(session, folder, group[1], science, data_root)
    out = {}
    for name, default in _DEFAULTS.items():
        value = given.get(name)
        if value is None:
            value = from_session.get(name, default)
        out[name] = value
    if out["method"] != "bspline":
        # The session's B-spline options do not apply to another method chosen here.
        for name in ("spatial_order", "sky_options"):
            if given.get(name) is None:
                out[name] = None
    out["_group"] = group
    out["_left_out"] = left_out
    out["_notes"] = notes
    return out, science, arc, bias, flat


def _session_folder_check(session, folder, names, science, data_root):
    """Notes (a list) when the science files found in the session's folder are not its exposures; a
    ValueError when none of them is there and the folder was found from the current folder (no data root).

    A session names its folder relative to the page's data root; replayed
    from another folder, "." found a parent of the night, and with two
    nights below it mixed their calibrations (SWNBIAS 6 for 5, another
    night's arc), exit 0 (trial J1).
    """
    folder = Path(folder)
    missing = [n for n in names if not (folder / n).is_file()]
    source = session.get("source") or {}
    if missing and len(missing) == len(names) and data_root is None and source.get("root"):
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise ValueError(
            f"none of the session's {len(names)} exposure(s) ({shown}) is in {str(folder)!r}, the session's folder "
            f"{source.get('folder')!r} taken from the current folder: pass the page's data root (--data-root DIR, "
            "data_root=...), or give the SCIENCE files and calibrations"
        )
    found = set()
    for path in science:
        try:
            found.add(Path(path).resolve().relative_to(folder.resolve()).as_posix())
        except ValueError:
            pass
    notes = []
    if missing:
        notes.append(f"{len(missing)} of the session's {len(names)} exposure(s) are not in {str(folder)!r} "
                     f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''})")
    extra = sorted(found - set(names))
    if missing or extra:
        notes.append(f"the science files found ({len(found)}) are not the session's exposures ({len(names)}): "
                     "each is fit on its own, not together as the page fit them"
                     + (f" (more: {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''})" if extra else ""))
    return notes


def _page_group(files, group):
    """The science files in the page's order when they are exactly the session's exposures, else None.

    The page fits its exposures together (the noise model, the spatial
    order and the unlit rows are judged on all of them), so batch fits that
    same set together to give the same sky; any other set is fit exposure by
    exposure.
    """
    if group is None or len(files) != len(group[1]):
        return None
    folder = group[0].resolve()
    by_name = {}
    for path in files:
        try:
            by_name[path.resolve().relative_to(folder).as_posix()] = path
        except ValueError:
            return None
    if set(by_name) != set(group[1]):
        return None
    return [by_name[name] for name in group[1]]


#: The sky-line warp's failure (:func:`~specwidgets.core.sky.sky_warp.sky_warp_model`) that a frame read the wrong
#: way round also gives: its sky lines lie along the rows, and down a row at most one (the source's trace) stands out.
_NO_SKY_LINES = "sky lines could not be traced"


def _failure_message(exc, job, frame=None):
    """A failed exposure's message: the exception's, and when the warp could not be fit on the frame's sky lines
    (no arc) for an instrument whose frames the option turns, that the dispersion may run along the rows.

    Trial F1: frames stored with the dispersion along y and no arc failed with "only 1 sky line(s) found ...
    give an arc frame", not a word of the orientation. The arcs' orientation check is not applied to the sky
    lines to turn the frames (on the Goodman frames turned, it saw them so once in three): it only makes the
    hint firmer, when the frame's lines stand out down its columns (:func:`~specwidgets.core.lines.lines_along_rows`).
    """
    text = f"{type(exc).__name__}: {exc}"
    reader = job.reader
    if _NO_SKY_LINES not in str(exc) or not isinstance(reader, Instrument) or reader.rot90:
        return text
    try:
        # Read transposed already (an option, a DISPAXIS card): read as stored, the other way.
        header = getattr(frame, "header", None)  # (the frame as read: the pixels calibrated, its header kept)
        transposed = reader.turn_of(header)[0] if header is not None else reader.transpose
        along_rows = frame is not None and lines_along_rows(np.asarray(frame, dtype=float))
    except Exception:  # noqa: BLE001 - a hint: the failure's own message stands without it
        return text
    axis, how = (1, "reads them as stored") if transposed else (0, "reads them transposed")
    option = f"--dispersion-axis {axis} (instrument_options={{'dispersion_axis': {axis}}}) {how}"
    if along_rows:
        return (f"{text}; its lines stand out down its columns, each along a row: the dispersion seems to run "
                f"along the rows of the frames as read, not the columns: {option}")
    return f"{text}; or, if the dispersion runs along the rows of the frames as read (not the columns), {option}"


def _process_group(paths, job, bias, flat):
    """Worker task: the page's exposures fit together as one stack; one output each. Returns records."""
    records = []
    with _relay_warnings(job, records):
        records.extend(_process_group_inner(paths, job, _bias_frame(bias, job), flat))
    return records


def _process_group_inner(paths, job, bias, flat):
    import numba

    t0 = time.perf_counter()
    records = [{"input": str(p), "output": str(Path(job.out_dir) / output_name(p)), "status": "failed",
                "message": ""} for p in paths]
    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(job.numba_threads, numba.config.NUMBA_NUM_THREADS)))
    exports, frames = set(), []
    try:
        configs = [job.config_for(p) for p in paths]
        if not job.overwrite:
            states = [inspect_output(r["output"], job.shape, c) for r, c in zip(records, configs)]
            if all(st.complete for st in states):
                for r in records:
                    r["status"] = "skipped"
                    r.update(_flags_of_output(r["output"]))
                return records
            blocked = [(r, st, p) for r, st, c, p in zip(records, states, configs, paths)
                       if st.state == "different" and not _stale(r["output"], c)]
            # Dashboard exports (no SWCONFIG) made with these settings are this run's outputs.
            reasons = [_refusal_reason(r["output"], st, job, p) for r, st, p in blocked]
            if any(reasons):
                for (r, st, _), reason in zip(blocked, reasons):
                    r["message"] = (f"{Path(r['output']).name} exists, {reason or st.reason}; pass --overwrite "
                                    "(overwrite=True) to replace it")
                return records
            exports = {r["output"] for r, _, _ in blocked}
        images, frames, extras = [], [], []
        for path in paths:
            image = frame = _read_science(path, job)
            # (The pixels only: the master bias's read noise joins the stack's below.)
            image, extra, n_saturated = _calibrated(image, bias, flat)
            if n_saturated:
                records[len(images)]["notes"] = [_saturated_note(n_saturated)]
            images.append(image)
            extras.append(extra)
            frames.append(frame)
        if exports:
            # Exports made with these settings: kept when each holds these data.
            if not all(_same_science(r["output"], image, job) for r, image in zip(records, images)
                       if r["output"] in exports):
                for r in records:
                    r["message"] = ("the dashboard exports in the output folder hold other data than the inputs "
                                    "now; pass --overwrite (overwrite=True) to replace them")
                return records
            if all(st.complete or r["output"] in exports for r, st in zip(records, states)):
                for r, path, st in zip(records, paths, states):
                    if st.complete:
                        r["status"] = "skipped"
                        r.update(_flags_of_output(r["output"]))
                    else:
                        _accept_export(r, r["output"], path)
                return records
            # Some outputs are missing: the group is fit again (the exports get the same numbers).
        # The stack's noise model as the page's folder loader sets it: the
        # median of the frames' read noises, gain 1 once in electrons.
        known = [f.read_noise for f in frames if f.read_noise is not None]
        stack = FrameArray(
            np.stack(images),
            gain=None if frames[0].gain is None or job.sky_gain == ESTIMATE else 1.0,
            read_noise=None if job.read_noise == ESTIMATE or not known else float(np.median(known)),
            noise_source=_noise_source_of(frames[0], job),
            unit=frames[0].unit,
            header=getattr(frames[0], "header", None),
            n_combined=getattr(frames[0], "n_combined", None),
        )
        if isinstance(bias, FrameArray):  # (its read noise joins the frames', as for one exposure)
            stack = with_readout_of(stack, bias)
        warp = _cached_warp(job)
        result = fit_sky(stack, warp, job.masks, method=job.method, **_noise_arguments(job), **job.options)
        quality = _quality_record(result)
        for k, (path, record, config) in enumerate(zip(paths, records, configs)):
            prov = {**job.provenance, "input": str(path), "fit_together": len(paths),
                    "input_gain": input_gain(job.reader, frames[k]), "turn": _turn_of_frame(job.reader, frames[k], path)}
            if prov.get("unit") is None:  # no calibration frames to tell it: the frame's own
                prov["unit"] = getattr(frames[k], "unit", None)
            write_exposure(result, k, record["output"], warp_model=_used_warp(result, job), provenance=prov, config=config,
                           dtype=job.dtype, extra_mask=extras[k], input_header=frames[k].header,
                           flat_noise=job.flat_noise)
            record["status"] = "done"
            record.update(quality)
    except Exception as exc:  # noqa: BLE001 - reported by name
        message = _failure_message(exc, job, frames[0] if frames else None)
        for record in records:
            if record["status"] != "done":
                record["message"] = message
    finally:
        numba.set_num_threads(previous)
        for record in records:
            record["seconds"] = (time.perf_counter() - t0) / len(paths)
    return records


def _run_group(client, files, job, cal, summary, report=False):
    """Run :func:`_process_group` as one task and count its records in ``summary`` (failures printed with ``report``)."""
    future = client.submit(_process_group, [str(p) for p in files], job, cal.bias, cal.flat, pure=False)
    try:
        records = future.result()
    except Exception as exc:  # noqa: BLE001 - e.g. the worker died
        records = [{"input": str(p), "status": "failed", "message": f"{type(exc).__name__}: {exc}"} for p in files]
    shown = set()
    for record in records:
        _show_relayed(record, shown)
        if report:
            for note in record.get("notes", ()):
                print(f"note: {Path(record['input']).name}: {note}", file=sys.stderr)
        if record["status"] == "done":
            summary.done.append(record["input"])
        elif record["status"] == "skipped":
            summary.skipped.append(record["input"])
        else:
            summary.failed.append((record["input"], record["message"]))
            if report:
                print(f"failed: {Path(record['input']).name}: {record['message']}", file=sys.stderr)
            continue
        if record.get("suspect"):
            summary.suspect.append((record["input"], list(record.get("warnings", []))))


def _refuse_outputs_as_science(files):
    """A folder of dashboard exports or batch outputs is not raw science: say so before any work."""
    outputs = []
    for path in files:
        if path.name.endswith(OUTPUT_SUFFIX):
            try:
                header = fits.getheader(path)
            except (OSError, ValueError):
                continue  # unreadable: it fails on its own, by name
            if "SWDONE" in header or "SWMETHOD" in header:
                outputs.append(path.name)
    if outputs:
        shown = ", ".join(outputs[:4]) + (", ..." if len(outputs) > 4 else "")
        raise ValueError(
            f"{len(outputs)} of the science files are specwidgets outputs (dashboard exports or batch "
            f"outputs: {shown}), not raw exposures; give the raw science frames, or the session saved in the "
            "page (--settings FILE) to take them from its folder"
        )


def _refuse_while_bootstrapping():
    """Raise when this process is a multiprocessing child still importing the main module.

    With the ``spawn`` and ``forkserver`` start methods (Dask's local workers
    use one of them) every child runs the parent's main script again, as
    ``__mp_main__``, before it starts; a script that calls :func:`run_batch`
    at its top level would start a run of its own in each worker, which then
    finds the parent's lock and fails with a misleading lock error.
    ``_inheriting`` is the flag multiprocessing itself checks for that phase
    (``multiprocessing.spawn._check_not_importing_main``).
    """
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise RuntimeError(
            "run_batch was called while a worker process was starting: Python starts each worker by "
            "importing the main script again, and this script calls run_batch at its top level. "
            'Put the run_batch call under `if __name__ == "__main__":` (see "Batch runs" in the README).'
        )


def _given_files(items):
    if items is None:
        return False
    if isinstance(items, (str, os.PathLike)):
        return True
    return len(list(items)) > 0


def run_batch(
    science=(),
    arc=(),
    *,
    out_dir,
    bias=(),
    flat=(),
    settings=None,
    data_root=None,
    instrument=None,
    instrument_options=None,
    bad_pixels=None,
    crop=None,
    masks=None,
    guesses=None,
    method=None,
    spatial_order=None,
    sky_options=None,
    read_noise=None,
    gain=None,
    arc_combine=None,
    fail_on_suspect=False,
    warp_model=None,
    std_variation=None,
    line_order=None,
    warp_order=None,
    tolerance=None,
    fit_together=None,
    flat_norm="pixel",
    dtype="float32",
    workers=None,
    scheduler=None,
    client=None,
    processes=True,
    max_in_flight=None,
    numba_threads=1,
    overwrite=False,
    progress=True,
    report=False,
) -> BatchSummary:
    """Subtract the sky from every exposure and write one FITS file each (see the module docs).

    Parameters
    ----------
    science : path, glob pattern, folder, or a list of them
        The exposures; a folder means its FITS files. A missing or unreadable
        file fails on its own; the others still run (a glob pattern that
        matches nothing raises FileNotFoundError). May be empty when the
        ``settings`` name a folder: its science files (by the session's tag).
    arc, bias, flat : same
        Calibration frames (median-combined; see :func:`prepare_calibrations`).
        ``arc`` may be empty when ``warp_model`` is given, or taken (with
        ``bias``) from the folder the ``settings`` name.
    out_dir : path
        Output folder (created); one ``<input stem>_sky.fits`` per exposure.
    settings : path or dict, optional
        A session saved by the dashboard (:mod:`specwidgets.io.settings`): its
        masks, guesses, warp orders, tolerance, threshold, sky method and
        options, noise model, arc combination, instrument, crop and data
        folder are used for every argument left at None here (an argument
        given here wins). The same frames then give the page's sky.
    data_root : path, optional
        Where a session's folder written relative to the page's data root
        lies (default: the current folder).
    fit_together : bool, optional
        Fit the exposures as one stack, as the page does (its noise model,
        spatial order and unlit rows are judged on all of them). Default
        None: when the science files are exactly the exposures the
        ``settings`` were saved with (so batch gives the page's sky);
        otherwise each exposure is fit on its own. True without
        ``settings``: every science file in one stack, in one task (the
        exposures of one target: the page's sky for the same files).
    instrument : str, Instrument or reader
        How to read every frame (see :mod:`specwidgets.io.instruments`;
        default ``"generic"``).
    instrument_options : dict, optional
        ``hdu``, ``dispersion_axis``, ``trimsec``, ``gain``, ``read_noise``,
        ``bad_pixels`` (for every frame, the calibrations too).
    bad_pixels : str or path, optional
        Pixels of each science frame to leave out of its sky fit (NaN in the
        fit; flagged "not finite" in MASK): the EXTNAME of each science
        file's data-quality image (``"DQ"``, ``"BPM"``: nonzero is bad), or
        a FITS mask file for every frame (see
        :class:`~specwidgets.io.instruments.Instrument`). The calibrations
        are read without it: a science pixel left out needs no bias.
    crop : (int, int), optional
        Rows kept of each trimmed frame.
    masks : (int, int) or list of them
        Rows excluded from the sky fit (the trace), as ``mask_region``.
    guesses : sequence of float, optional
        Arc-line columns for the warp fit; default :func:`find_cal_lines`.
    method : {"bspline", "median"}
        Default ``"bspline"``.
    spatial_order : int or None
        B-spline sky: Legendre order along the slit; None (the default)
        leaves it to :func:`fit_sky` (its own default / automatic choice).
    sky_options : dict, optional
        More :func:`fit_sky` options (``knot_spacing``, ``reject_sigma``, ...).
    read_noise : float or "estimate", optional
        Electrons, for every exposure. Default None: each science frame's
        own (its header via the instrument, carried on the image), else
        what :func:`fit_sky` does without one (estimate it); ``"estimate"``
        estimates it even when the frames carry one.
    gain : float, optional
        Electrons per data unit *of the data the sky is fit to*, passed to
        :func:`fit_sky` for every exposure. Default None: 1.0 for frames
        converted to electrons, else left to :func:`fit_sky`; ``"estimate"``
        lets :func:`fit_sky` estimate it. (To convert ADU frames to
        electrons, give ``instrument_options={"gain": G}``.)
    arc_combine : {"sum", "median"}
        How the arc frames are combined (each minus the bias): ``"sum"``
        keeps the lines of every lamp when the arcs are of different lamps
        (the default).
    fail_on_suspect : bool
        Exit code 3 when no exposure failed but some fit is suspect (default:
        0; the suspect outputs are counted and named in the report either way).
    warp_model : WarpModel or dict, optional
        Use this model instead of fitting one on the arcs.
    std_variation, line_order, warp_order, tolerance :
        Passed to :func:`find_cal_lines` and :func:`generate_warp_model`
        (defaults 50, 2, 1, 16).
    flat_norm : {"pixel", "column", "global"}
        How the flat is normalised (default "pixel": the pixel-to-pixel
        response only; see :func:`~specwidgets.batch.calibrations.normalise_flat`).
    dtype : {"float32", "float64"}
        Of the SCI, SKY and VAR images.
    workers : int, optional
        Local worker processes (default: one per CPU).
    scheduler : str, optional
        Address of a running Dask scheduler to use instead.
    client : dask.distributed.Client, optional
        An existing client to use (left open).
    processes : bool
        Local cluster of processes (default) or of threads in this process.
    max_in_flight : int, optional
        Tasks submitted at once (default: 4 per worker thread, at least 8).
    numba_threads : int
        Threads of numba's parallel kernels within one exposure's fit
        (default 1: the parallelism is across exposures).
    overwrite : bool
        Redo outputs that are already complete.
    progress : bool
        Show a progress bar (tqdm, or ipywidgets in a notebook).
    report : bool
        Print failures as they happen and the summary at the end.

    Returns
    -------
    BatchSummary

    Raises
    ------
    ValueError, TypeError, FileNotFoundError
        Bad arguments or unusable calibrations (before any exposure runs).
    BatchLockedError
        Another run is writing to ``out_dir``.
    """
    _refuse_while_bootstrapping()
    t0 = time.perf_counter()
    given = {
        "instrument": instrument, "crop": crop, "masks": masks, "guesses": guesses, "method": method,
        "spatial_order": spatial_order, "sky_options": sky_options, "read_noise": read_noise, "gain": gain,
        "arc_combine": arc_combine, "std_variation": std_variation, "line_order": line_order,
        "warp_order": warp_order, "tolerance": tolerance,
    }
    resolved, science, arc, bias, flat = _apply_settings(settings, data_root, given, science, arc, bias, flat,
                                                         has_warp_model=warp_model is not None)
    instrument, crop, masks, guesses = (resolved[k] for k in ("instrument", "crop", "masks", "guesses"))
    method, spatial_order, sky_options = resolved["method"], resolved["spatial_order"], resolved["sky_options"]
    read_noise, gain, arc_combine = resolved["read_noise"], resolved["gain"], resolved["arc_combine"]
    std_variation, line_order, warp_order = resolved["std_variation"], resolved["line_order"], resolved["warp_order"]
    tolerance, page_group = resolved["tolerance"], resolved["_group"]
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    options = dict(sky_options or {})
    if method == "bspline":
        if spatial_order is not None:
            options.setdefault("spatial_order", check_spatial_order(spatial_order))
    elif spatial_order not in (None, "auto") or options:
        raise ValueError("spatial_order and sky options apply to method='bspline' only")
    if np.dtype(dtype) not in (np.dtype("float32"), np.dtype("float64")):
        raise ValueError(f"dtype must be float32 or float64; got {dtype!r}")
    crop = None if crop is None else tuple(crop)
    _crop_pair(crop)
    out_dir = Path(os.fspath(out_dir)).expanduser().resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"the output folder {out_dir} is a file: give a folder (it is made when missing)")
    files, left_out, found = _science_files(science, out_dir, {"arc": arc, "bias": bias, "flat": flat})
    # A folder's own bias and arc frames serve when none are given, as the
    # page's folder form takes them; flats only when asked for (a noisy flat
    # adds its noise to every frame).
    use = {"bias": not _given_files(bias) and bool(found["bias"]),
           "arc": not _given_files(arc) and warp_model is None and bool(found["arc"])}
    if use["bias"]:
        bias = [path for path, _ in found["bias"]]
    if use["arc"]:
        arc = [path for path, _ in found["arc"]]
    used_notes = []
    for role, frames in found.items():
        if use.get(role):
            names = ", ".join(path.name for path, _ in frames[:6]) + (", ..." if len(frames) > 6 else "")
            used_notes.append(f"the science folder's {role} frame(s) used as --{role}: {names} "
                              f"({frames[0][1]}{', ...' if len(frames) > 1 else ''}; give --{role} to choose others)")
            continue
        for path, why in frames:
            take = f"give it as --{role} to use it, or " if role else ""
            left_out.append(f"{path.name}: {why}, so not science ({take}name the file to fit it as science)")
    if not files:
        if left_out:
            raise ValueError("no science files left: " + "; ".join(left_out[:6]) + ("; ..." if len(left_out) > 6 else ""))
        raise ValueError("no science files given")
    _refuse_outputs_as_science(files)
    # The page's own exposures: fit together, as the page does (same sky).
    grouped = _page_group(files, page_group) if fit_together is None or fit_together else None
    if fit_together and grouped is None:
        if page_group is not None:
            raise ValueError("fit_together=True with settings needs the science files to be exactly the session's "
                             "exposures")
        # All the science files as one stack (the exposures of one target, as the page fits them).
        grouped = list(files)
    if grouped is not None:
        files = grouped
    _check_outputs_unique(files)
    instrument_options = dict(instrument_options or {})
    turned = turned_by = ""
    if instrument_options.get("dispersion_axis") == 0:
        turned_by = "--dispersion-axis 0 (instrument_options={'dispersion_axis': 0}) asked for it"
    if warp_model is None and _given_files(arc):
        try:
            arc_files = _expand(arc, "arc")
        except (FileNotFoundError, ValueError):
            arc_files = []  # the calibrations' own reading names it
        if arc_files:
            # As the page's folder loader: frames whose wavelength runs down the rows are turned.
            turn, turned, card = _arc_orientation(arc_files, instrument, **instrument_options)
            instrument_options.update(turn)
            # What turned them, should their lines then lie across the frame (a wrong card).
            turned_by = f"{card} asked for it" if card else turned or turned_by
    reader = resolve_instrument(instrument, **instrument_options)
    science_reader = reader
    if bad_pixels is not None:
        if not isinstance(reader, Instrument):
            raise ValueError(f"bad_pixels needs an Instrument to read the frames; instrument {reader!r} is a reader "
                             "function: set the bad pixels to NaN in it")
        science_reader = reader.with_options(bad_pixels=bad_pixels)

    if arc_combine not in ARC_COMBINES:
        raise ValueError(f"arc_combine must be one of {', '.join(ARC_COMBINES)}; got {arc_combine!r}")
    gain = noise_setting(gain, "gain", positive=True)
    read_noise = noise_setting(read_noise, "read_noise", positive=False)
    summary = BatchSummary(out_dir=out_dir, n_inputs=len(files), fail_on_suspect=bool(fail_on_suspect))
    # The session folder's files not taken as science (flats, darks, outputs), as the page leaves them out.
    summary.notes += ([f"left out: {why}" for why in [*resolved["_left_out"], *left_out]] + used_notes
                      + resolved["_notes"])
    if turned:
        # The way back, in the command line's words.
        summary.notes.append(re.sub(r"pass dispersion_axis=(\d)", r"pass --dispersion-axis \1 "
                                    r"(instrument_options={'dispersion_axis': \1})", turned))
    # The calibrations and every argument are checked before the output
    # folder is made or locked: a refused run leaves nothing behind.
    t_cal = time.perf_counter()
    with _turned_advice(turned_by):
        cal = prepare_calibrations(
            arc,
            bias=bias,
            flat=flat,
            instrument=reader,
            crop=crop,
            guesses=guesses,
            warp_model=warp_model,
            flat_norm=flat_norm,
            std_variation=std_variation,
            line_order=line_order,
            warp_order=warp_order,
            arc_combine=arc_combine,
            tolerance=tolerance,
        )
    model = cal.warp_model
    summary.timings["calibrations"] = time.perf_counter() - t_cal
    if model is None:
        # No arc: the frames' shape from the calibrations or the first
        # science frame; each frame's warp is fit on its sky lines.
        known = next(((img, what) for img, what in ((cal.bias, "the bias frames"), (cal.flat, "the flat frames"))
                      if img is not None), None)
        if known is not None:
            shape, shape_of = known[0].shape, known[1]
        else:
            shape = read_frame(files[0], science_reader, crop).shape
            shape_of = f"the first science frame ({Path(files[0]).name})"
        warp_dict = {}
        summary.notes.append("no arc frames: each science frame's warp is fit on its own sky lines")
    else:
        shape, shape_of = tuple(model.shape), "the arc and warp model"
        warp_dict = model.to_dict()
        summary.warnings = list(model.quality_warnings) if model.traces is not None else []
    if cal.bias is None:
        summary.notes.append(_no_bias_note(files[0], science_reader, crop))
    # One value from here to every fit and output header (SWMASK).
    ranges = RowRanges.coerce(masks, "masks").resolve(shape[0], "masks")
    summary.warp_model = warp_dict
    names = {k: [p.name for p in v] for k, v in cal.files.items()}
    instrument_name = instrument if isinstance(instrument, str) else getattr(reader, "name", repr(reader))
    provenance = {
        "instrument": instrument_name,
        "dispersion_axis": instrument_options.get("dispersion_axis"),
        "crop": crop,
        "unit": cal.unit,
        "flat_norm": flat_norm,
        "arc_combine": arc_combine,
        "n_guesses": None if cal.guesses is None else int(cal.guesses.size),
        **names,
    }
    settings = {
        "instrument": instrument_name,
        "instrument_options": {k: repr(v) for k, v in instrument_options.items()},
        "crop": crop,
        "masks": ranges.pairs,
        "method": method,
        "options": effective_options(method, options),
        "read_noise": read_noise,
        **({} if gain is None else {"gain": gain if gain == ESTIMATE else float(gain)}),
        **({} if bad_pixels is None else {"bad_pixels": science_reader.bad_pixels}),
        "flat_norm": flat_norm if cal.flat is not None else None,
        "dtype": np.dtype(dtype).name,
        "warp": warp_dict,
        "bias": names["bias"],
        "flat": names["flat"],
    }
    # Content, not names: a calibration rewritten under the same name
    # must redo the outputs made with the old one.
    cal_content = {key: [file_fingerprint(p) for p in cal.files[key]] for key in ("bias", "flat", "arc")}
    if bad_pixels is not None and science_reader.bad_pixels_file is not None:
        cal_content["bad_pixels"] = file_fingerprint(science_reader.bad_pixels_file)
    if warp_model is None:
        # Fit on the arcs: the model follows their content (and the bias),
        # so a change in it means stale data, not other settings.
        cal_content["warp"] = settings.pop("warp")
    job = _Job(
        reader=_with_absolute_paths(science_reader),
        crop=crop,
        shape=tuple(shape),
        shape_of=shape_of,
        warp=warp_dict,
        warp_key=hashlib.sha256(json.dumps(warp_dict, sort_keys=True).encode()).hexdigest(),
        masks=ranges,
        method=method,
        options=options,
        read_noise=read_noise if read_noise in (None, ESTIMATE) else float(read_noise),
        unit=cal.unit,
        sky_gain=gain if gain in (None, ESTIMATE) else float(gain),
        dtype=np.dtype(dtype).name,
        out_dir=str(out_dir),
        overwrite=bool(overwrite),
        provenance=provenance,
        settings=settings,
        numba_threads=int(numba_threads),
        cal_content=cal_content,
        flat_noise=cal.flat_noise,
        bias_noise=_bias_noise(cal.bias),
    )
    if report:
        for n in summary.notes:
            print(f"note: {n}", file=sys.stderr)
        for w in summary.warnings:
            print(f"warp model warning: {w}", file=sys.stderr)

    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with _DirectoryLock(out_dir) as lock:
            if report and lock.taken_over:
                print(f"specwidgets batch: {lock.taken_over}", file=sys.stderr)
            summary.removed_temporary = len(clean_temporary_files(out_dir))
            t_start = time.perf_counter()
            dask_client, to_close = _open_client(workers, scheduler, client, processes, numba_threads)
            summary.timings["cluster_start"] = time.perf_counter() - t_start
            try:
                if grouped is not None:
                    _run_group(dask_client, files, job, cal, summary, report)
                else:
                    _run_tasks(dask_client, files, job, cal, summary, progress, report, max_in_flight)
            finally:
                t_stop = time.perf_counter()
                for thing in to_close:
                    try:
                        thing.close()
                    except Exception:  # noqa: BLE001 - closing is best effort
                        pass
                summary.timings["cluster_stop"] = time.perf_counter() - t_stop
                # Every task has ended: any temporary file now is debris of a crashed worker.
                clean_temporary_files(out_dir)
    except BaseException:
        if created:
            # A run that failed before writing anything (e.g. its cluster did
            # not start) leaves no empty folder either; rmdir keeps any file.
            try:
                out_dir.rmdir()
            except OSError:
                pass
        raise
    summary.wall_time = time.perf_counter() - t0
    if report:
        # The failures were printed as they happened: named once more here, without their reasons.
        print(summary.report(reasons=False), file=sys.stderr)
    return summary


#: Most exposures one task runs in a row (see :func:`_chunk_size`).
MAX_CHUNK = 4


def _chunk_size(n_files, n_threads):
    """Exposures per task: several when there are many, so Dask's own cost per task is shared.

    Each task costs the scheduler and client (in the driver) ~5-10 ms of CPU
    and the worker a few ms more, against ~30-40 ms of work for a small
    exposure; with as many processes as CPUs that overhead competes with
    the fits. Up to :data:`MAX_CHUNK` per task while every thread still gets
    at least 16 tasks (so the last ones balance out across workers).
    """
    return int(max(1, min(MAX_CHUNK, n_files // (16 * max(1, n_threads)))))


def _run_tasks(client, files, job, cal, summary, progress, report, max_in_flight):
    from dask.distributed import as_completed

    n_threads = sum(client.nthreads().values()) or 1
    limit = max_in_flight or max(8, 4 * n_threads)
    chunk = _chunk_size(len(files), n_threads)
    job_f = client.scatter(job, broadcast=True, hash=False)
    bias_f = None if cal.bias is None else client.scatter(cal.bias, broadcast=True, hash=False)
    flat_f = None if cal.flat is None else client.scatter(cal.flat, broadcast=True, hash=False)
    run_id = uuid.uuid4().hex[:8]
    pending = {}
    queue = iter(enumerate(files[i: i + chunk] for i in range(0, len(files), chunk)))
    stream = as_completed(loop=client.loop)
    bar = _Progress(len(files), progress)
    timings = summary.timings
    timings.update(task_wall=0.0, task_cpu=0.0, exposures_per_task=chunk)
    t_submit = time.perf_counter()

    def submit_next():
        try:
            i, paths = next(queue)
        except StopIteration:
            return
        fut = client.submit(
            _process_many, [str(p) for p in paths], job_f, bias_f, flat_f, key=f"specwidgets-sky-{run_id}-{i}",
            pure=False, retries=1,
        )
        pending[fut.key] = (fut, paths)
        stream.add(fut)

    shown = set()

    def handle(record):
        _show_relayed(record, shown)
        timings["task_wall"] += record.get("seconds", 0.0)
        timings["task_cpu"] += record.get("cpu_seconds", 0.0)
        status = record["status"]
        if report:
            for note in record.get("notes", ()):
                bar.write(f"note: {Path(record['input']).name}: {note}")
        if status == "done":
            summary.done.append(record["input"])
            if record.get("suspect"):
                summary.suspect.append((record["input"], list(record.get("warnings", []))))
                if report:
                    # One reason a line: a fit's reasons run to a thousand characters together.
                    reasons = record.get("warnings", []) or ["no reason given"]
                    bar.write(f"suspect: {Path(record['input']).name}:" + "".join(f"\n  - {w}" for w in reasons))
        elif status == "skipped":
            summary.skipped.append(record["input"])
            if record.get("suspect"):
                summary.suspect.append((record["input"], list(record.get("warnings", []))))
        else:
            summary.failed.append((record["input"], record["message"]))
            if report:
                bar.write(f"failed: {Path(record['input']).name}: {record['message']}")
        bar.update(status)

    try:
        for _ in range(limit):
            submit_next()
        for fut in stream:
            _, paths = pending.pop(fut.key)
            try:
                records = fut.result()
            except Exception as exc:  # noqa: BLE001 - e.g. a worker died on one of these files
                message = f"{type(exc).__name__}: {exc}"
                records = [{"input": str(path), "status": "failed", "message": message} for path in paths]
            fut.release()
            if "first_result" not in timings:
                timings["first_result"] = time.perf_counter() - t_submit
            for record in records:
                handle(record)
            submit_next()
    except BaseException:
        try:
            client.cancel([f for f, _ in pending.values()])
        except Exception:  # noqa: BLE001 - the cluster may be gone already
            pass
        raise
    finally:
        timings["tasks"] = time.perf_counter() - t_submit
        try:
            timings["worker_cpu"] = sum(client.run(_process_cpu_seconds).values())
        except Exception:  # noqa: BLE001 - a figure for the record, never worth failing the run
            pass
        bar.close()
        for f in (job_f, bias_f, flat_f):
            if f is not None:
                f.release()


